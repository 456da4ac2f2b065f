"""One OWL-ViT detection training step in PyTorch, the reference side of
`cargo bench --workspace --bench detection_step`: transformers' OwlViTForObjectDetection built
from the config the Rust side wrote, the queries embedded once per step, per-image Hungarian
matching with scipy's linear_sum_assignment on the same cost (focal class cost, L1, GIoU),
the same losses (sigmoid focal, L1, GIoU, each per box), backward and torch's AdamW.

Usage: python pytorch_owlvit_step.py <config.json> <batch> <queries> <steps> <threads>
Prints {"seconds_per_step": median over the timed steps}.
"""

import json
import sys

import torch
from scipy.optimize import linear_sum_assignment
from step_timing import print_seconds_per_step
from transformers import OwlViTConfig, OwlViTForObjectDetection

ALPHA, GAMMA = 0.25, 2.0
COSTS = (1.0, 5.0, 2.0)


def corners(boxes):
    centre, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat([centre - size / 2, centre + size / 2], -1)


def generalized_iou(a, b):
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    lt, rb = torch.max(a[:, None, :2], b[None, :, :2]), torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a)[:, None] + area(b)[None, :] - inter
    lt, rb = torch.min(a[:, None, :2], b[None, :, :2]), torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = rb - lt
    enclosing = wh[..., 0] * wh[..., 1]
    return inter / union - (enclosing - union) / enclosing


def focal(logits, targets):
    p = logits.sigmoid()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    weight = ALPHA * targets + (1 - ALPHA) * (1 - targets)
    return (ce * (1 - p_t) ** GAMMA * weight).sum()


def targets(batch, queries):
    """Three boxes per image, laid out as the Rust side lays them out."""
    boxes, labels = [], []
    for image in range(batch):
        rows = []
        for k in range(3):
            n = image * 3 + k
            rows.append([0.2 + 0.6 * ((n * 0.37) % 1), 0.2 + 0.6 * ((n * 0.61) % 1), 0.1 + 0.2 * ((n * 0.13) % 1), 0.1 + 0.2 * ((n * 0.29) % 1)])
        boxes.append(torch.tensor(rows))
        labels.append(torch.tensor([(image + k) % queries for k in range(3)]))
    return boxes, labels


def main() -> None:
    config_path, batch, queries, steps, threads = sys.argv[1], *map(int, sys.argv[2:])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = OwlViTConfig(**json.load(open(config_path)))
    model = OwlViTForObjectDetection(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    size = config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size)
    ids = torch.zeros(queries, config.text_config.max_position_embeddings, dtype=torch.long)
    ids[:, 0], ids[:, 1:4], ids[:, 4] = 49406, torch.randint(1, 49000, (queries, 3)), 49407
    boxes, labels = targets(batch, queries)
    box_count = sum(len(l) for l in labels)

    def step():
        text = model.owlvit.text_model(input_ids=ids).pooler_output
        query_embeds = model.owlvit.text_projection(text)
        query_embeds = query_embeds / query_embeds.norm(dim=-1, keepdim=True)
        feature_map = model.image_embedder(pixel_values=pixels)[0]
        b, h, w, d = feature_map.shape
        features = feature_map.reshape(b, h * w, d)
        logits, _ = model.class_predictor(features, query_embeds[None].expand(b, -1, -1))
        predicted = model.box_predictor(features, feature_map)
        class_targets = torch.zeros_like(logits)
        matched, wanted = [], []
        with torch.no_grad():
            for image in range(b):
                p = logits[image].sigmoid()[:, labels[image]].double()
                positive = -(p + 1e-8).log() * (1 - p) ** GAMMA * ALPHA
                negative = -(1 - p + 1e-8).log() * p**GAMMA * (1 - ALPHA)
                l1 = torch.cdist(predicted[image].double(), boxes[image].double(), p=1)
                giou = generalized_iou(corners(predicted[image].double()), corners(boxes[image].double()))
                cost = COSTS[0] * (positive - negative) + COSTS[1] * l1 - COSTS[2] * giou
                rows, cols = linear_sum_assignment(cost.numpy())
                class_targets[image, rows, labels[image][cols]] = 1.0
                matched.append(predicted[image][rows])
                wanted.append(boxes[image][cols])
        matched, wanted = torch.cat(matched), torch.cat(wanted)
        loss = focal(logits, class_targets) / box_count
        loss = loss + (matched - wanted).abs().sum() / box_count
        loss = loss + (1 - generalized_iou(corners(matched), corners(wanted)).diagonal()).sum() / box_count
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    print_seconds_per_step(step, steps)


if __name__ == "__main__":
    main()
