"""The reference side of `cargo bench -p trainer --bench clip_step`: trains the same CLIP
(`transformers.CLIPModel` built from the config.json the Rust side wrote) on the same kind
of batch with the same AdamW (decay on matrices only, lr 1e-3, wd 0.1), PyTorch eager, and
prints images/s as JSON.

Usage: python benches/pytorch_clip_step.py <config.json> <batch> <context> <steps> <threads>
"""

import json
import sys
import time

import torch
from transformers import CLIPConfig, CLIPModel


def main() -> None:
    config_path, batch, context, steps, threads = sys.argv[1], *map(int, sys.argv[2:])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = CLIPConfig.from_json_file(config_path)
    model = CLIPModel(config).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "logit_scale" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3
    )
    size = config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size)
    ids = torch.randint(1, config.text_config.vocab_size - 1, (batch, context))
    ids[:, -1] = config.text_config.eos_token_id
    targets = torch.arange(batch)

    def step() -> float:
        out = model(pixel_values=pixels, input_ids=ids)
        logits = out.logits_per_image
        loss = (torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(logits.t(), targets)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        return loss.item()

    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    print(json.dumps({"images_per_second": batch * steps / seconds}))


if __name__ == "__main__":
    main()
