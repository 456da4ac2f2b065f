"""One RAM++ (or RAM) training step in PyTorch, the reference side of
`cargo bench --workspace --bench ram_plus_step`: the reference RAM++ of the parity tests
(`tests/fixtures/recognize_anything/make_reference.py`: timm's Swin and transformers' BERT
modules assembled as recognize-anything assembles them) built from the config the Rust side
wrote; image embeddings, the three loss terms (RAM's with its caption branch: `tag`,
`distill` and `t2t` of random tag strings of 40 tokens and captions of 20), backward and
torch's AdamW, `label_embed` frozen, dropout off (`eval()`: the trainer has no dropout yet).

Usage: python pytorch_ram_plus_step.py <config.json> <batch> <steps> <threads>
Prints {"seconds_per_step": median over the timed steps}.
"""

import json
import sys
from pathlib import Path

import torch
from step_timing import print_seconds_per_step

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests/fixtures/recognize_anything"))
from make_reference import EMBED, CaptionBranchReference, RamPlusReference, asymmetric_loss  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CAPTION_TOKENS = 20


def main() -> None:
    config_path, batch, steps, threads = sys.argv[1], *map(int, sys.argv[2:])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = json.load(open(config_path))
    model = RamPlusReference(config).eval()
    model.label_embed.requires_grad_(False)
    size = config["vision"]["image_res"]
    pixels = torch.randn(batch, 3, size, size)
    targets = (torch.rand(batch, config["tags"]) < 0.01).float()
    teacher = torch.randn(batch, EMBED)
    captions = torch.randn(batch, EMBED)
    text = config.get("text")
    if text is not None:
        caption = CaptionBranchReference(text, model.layers).eval()
        model.caption = caption
        tag_ids = torch.randint(text["vocab_size"], (batch, 40))
        caption_ids = torch.randint(text["vocab_size"], (batch, CAPTION_TOKENS))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)

    def terms():
        if text is None:
            return model.losses(pixels, targets, teacher, captions)
        embeds = model.embed(pixels)
        tag = asymmetric_loss(model.tag_logits(embeds), targets, gamma_neg=7)
        distill = F.l1_loss(embeds[:, 0, :], teacher)
        t2t, _, _ = caption.t2t(embeds, tag_ids, torch.ones_like(tag_ids), caption_ids, torch.ones_like(caption_ids), 4)
        return tag, distill, t2t

    def step():
        optimizer.zero_grad()
        sum(terms()).backward()
        optimizer.step()

    print_seconds_per_step(step, steps)


if __name__ == "__main__":
    main()
