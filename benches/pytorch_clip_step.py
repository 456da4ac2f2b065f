"""The reference side of `cargo bench --workspace --bench clip_step`: trains the same CLIP
(`transformers.CLIPModel` built from the config.json the Rust side wrote) on the same kind
of batch with the same AdamW (decay on matrices only, lr 1e-3, wd 0.1), PyTorch eager, and
prints images/s and the seconds per step spent in forward (with the loss), backward and the
optimizer, as JSON; also the process's peak resident memory before the first step and
after the last (for the `memory` benchmark). `benches/device_check.py` runs the same step
on a GPU through `clip_training_step`.

Usage: python benches/pytorch_clip_step.py <config.json> <batch> <context> <steps> <threads>
"""

import json
import resource
import sys
import time

import torch
from transformers import CLIPConfig, CLIPModel


def clip_training_step(config: CLIPConfig, batch: int, context: int, device: str = "cpu", bf16: bool = False):
    """A fresh `CLIPModel` of `config` on `device` with its AdamW and a random batch; returns
    a function that trains one step (under bfloat16 autocast with `bf16`) and returns the
    seconds of its phases: forward with the loss, backward, optimizer (which ends with the
    loss read back, the step's one sync)."""
    device = torch.device(device)
    torch.manual_seed(0)
    model = CLIPModel(config).train().to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "logit_scale" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3
    )
    size = config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, device=device)
    ids = torch.randint(1, config.text_config.vocab_size - 1, (batch, context), device=device)
    ids[:, -1] = config.text_config.eos_token_id
    targets = torch.arange(batch, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> dict:
        started = time.perf_counter()
        with autocast:
            logits = model(pixel_values=pixels, input_ids=ids).logits_per_image
            loss = (
                torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(logits.t(), targets)
            ) / 2
        forward = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        loss.item()
        done = time.perf_counter()
        return {"forward": forward - started, "backward": backward - forward, "optimizer": done - backward}

    return step


def main() -> None:
    config_path, batch, context, steps, threads = sys.argv[1], *map(int, sys.argv[2:])
    torch.set_num_threads(threads)
    peak_mib_before_steps = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step = clip_training_step(CLIPConfig.from_json_file(config_path), batch, context)
    for _ in range(2):
        step()
    phases = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    started = time.perf_counter()
    for _ in range(steps):
        for name, seconds in step().items():
            phases[name] += seconds
    seconds = time.perf_counter() - started
    reply = {name: total / steps for name, total in phases.items()}
    reply["images_per_second"] = batch * steps / seconds
    reply["peak_mib_before_steps"] = peak_mib_before_steps
    reply["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(reply))


if __name__ == "__main__":
    main()
