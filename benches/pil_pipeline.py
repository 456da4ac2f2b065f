"""The reference side of `cargo bench --workspace --bench data_pipeline`: CLIP's image
preprocessing as PyTorch users write it, PIL and torchvision transforms on one thread, over
every JPEG of a folder, in batches; prints images/s as JSON.

Usage: python benches/pil_pipeline.py <config.json (unused)> <folder> <size> <batch> <passes>
"""

import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def main() -> None:
    folder, size, batch, passes = Path(sys.argv[2]), *map(int, sys.argv[3:])
    torch.set_num_threads(1)
    preprocess = transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    paths = sorted(folder.glob("*.jpg"))
    started = time.perf_counter()
    checksum = 0.0
    for _ in range(passes):
        for first in range(0, len(paths), batch):
            images = [preprocess(Image.open(path).convert("RGB")) for path in paths[first : first + batch]]
            checksum += torch.stack(images)[0, 0, 0, 0].item()
    seconds = time.perf_counter() - started
    assert checksum == checksum
    print(json.dumps({"images_per_second": passes * len(paths) / seconds}))


if __name__ == "__main__":
    main()
