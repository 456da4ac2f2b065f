"""The reference side of `cargo bench --workspace --bench shard_pipeline`: WebDataset shards
read as open_clip's training reads them: `webdataset.WebDataset` with a shuffle buffer, PIL
decoding, torchvision's `RandomResizedCrop(size, scale=(0.9, 1.0), bicubic)`, `ToTensor`,
`Normalize`, open_clip's tokenizer, and a `DataLoader` with the given workers; prints
images/s over the given number of batches as JSON (the workers' start included, as ours).

Usage: python benches/webdataset_pipeline.py <config.json (unused)> <shards> <size> <batch> <steps> <workers>
"""

import json
import sys
import time

import open_clip
import torch
import webdataset as wds
from torchvision import transforms

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def main() -> None:
    shards, (size, batch, steps, workers) = sys.argv[2], map(int, sys.argv[3:])
    torch.set_num_threads(1)
    preprocess = transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.9, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    started = time.perf_counter()
    dataset = (
        wds.WebDataset(shards, shardshuffle=False, nodesplitter=wds.split_by_node)
        .shuffle(1000)
        .decode("pil")
        .to_tuple("jpg", "txt")
        .map_tuple(preprocess, lambda text: tokenizer(text)[0])
        .batched(batch)
    )
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=workers)
    checksum, seen = 0.0, 0
    for images, texts in loader:
        checksum += images[0, 0, 0, 0].item() + texts[0, 0].item()
        seen += 1
        if seen == steps:
            break
    seconds = time.perf_counter() - started
    assert checksum == checksum and seen == steps, seen
    print(json.dumps({"images_per_second": steps * batch / seconds}))


if __name__ == "__main__":
    main()
