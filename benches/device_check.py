"""The Python side of `benches/device-check.sh`: writes the inputs of its ViT-B/32 rows (a
randomly initialised `transformers.CLIPModel` folder and a JSONL manifest of synthetic
images already at the model's size, so the trainer decodes but never resizes), times the
reference step (`transformers.CLIPModel`, AdamW with decay on matrices only, lr 1e-3, wd
0.1, symmetric contrastive loss, logit-scale clamp: benches/pytorch_clip_step.py's step, on
a device, optionally under bfloat16 autocast), compares two runs' weights and losses, and
turns what the script collected into its one markdown table.

Usage:
  python benches/device_check.py prepare <folder> <images> <vit-b32|smoke>
  python benches/device_check.py pytorch <config.json> <batch> <fp32|bf16> <warmup> <steps> <device> <reply.json>
  python benches/device_check.py compare <run_dir> <run_dir> <reply.json>
  python benches/device_check.py report <work folder>

`report` needs only the standard library, so the table comes out even where torch or
transformers cannot be imported.
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

SYNC_WARNING = "synchronizing CUDA operation"


def prepare(folder: Path, images: int, size: str) -> None:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    if size == "smoke":
        # OpenAI CLIP's vocabulary and context, which the trainer's tokenizer needs; tiny towers.
        config = CLIPConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
            vision_config=dict(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
            ),
            projection_dim=16,
        )
    elif size == "vit-b32":
        config = CLIPConfig()  # 224 px, patch 32, 12x768 vision, 12x512 text
    else:
        sys.exit(f"prepare: unknown size {size}")
    CLIPModel(config).save_pretrained(folder / "model")
    side = config.vision_config.image_size
    # 8x8 blocks of colour: cheap to decode, so the trainer's images/s is the model's rather
    # than the PNG decoder's.
    rng = np.random.default_rng(0)
    colours = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
    shapes = ["square", "circle", "stripe", "grid"]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.jsonl", "w") as manifest:
        for i in range(images):
            blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            pixels = np.kron(blocks, np.ones((side // 8 + 1, side // 8 + 1, 1), dtype=np.uint8))[:side, :side]
            name = f"images/{i:05d}.png"
            Image.fromarray(pixels).save(folder / name, compress_level=1)
            words = colours[i % len(colours)], shapes[(i // len(colours)) % len(shapes)]
            captions = [f"a photo of a {words[0]} {words[1]} number {i}.", f"{words[0]} {words[1]}, picture {i}"]
            manifest.write(json.dumps({"image": name, "captions": captions}) + "\n")
    print(json.dumps({"model": str(folder / "model"), "images": images, "image_size": side}))


def pytorch(config_path: str, batch: int, precision: str, warmup: int, steps: int, device_name: str, reply: str) -> None:
    import warnings

    import torch
    from pytorch_clip_step import clip_training_step
    from transformers import CLIPConfig

    device = torch.device(device_name)
    config = CLIPConfig.from_json_file(config_path)
    context = config.text_config.max_position_embeddings
    timed_step = clip_training_step(config, batch, context, device_name, bf16=precision == "bf16")

    def step() -> float:
        return sum(timed_step().values())

    for _ in range(warmup):
        step()
    seconds = [step() for _ in range(steps)]
    result = {
        "precision": precision,
        "batch": batch,
        "steps": steps,
        "images_per_second": [batch / s for s in seconds],
        "pid": os.getpid(),
    }
    if device.type == "cuda":
        result["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["max_memory_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
        # Counted on steps of their own: a warning per sync costs time the timed steps
        # should not carry. A warning raised where Python cannot take it goes to the C++
        # handler (stderr) instead; the table counts those from the log between the markers.
        sync_steps = 5
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        print("sync count: start", file=sys.stderr, flush=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(sync_steps):
                step()
        torch.cuda.set_sync_debug_mode("default")
        print("sync count: end", file=sys.stderr, flush=True)
        result["sync_steps"] = sync_steps
        result["syncs_python"] = sum(SYNC_WARNING in str(w.message) for w in caught)
    Path(reply).write_text(json.dumps(result))
    print(json.dumps({k: v for k, v in result.items() if k != "images_per_second"}))


def compare(a: Path, b: Path, reply: str) -> None:
    result: dict = {}
    losses = [{r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl")} for run in (a, b)]
    common = sorted(set(losses[0]) & set(losses[1]))
    result["steps_compared"] = len(common)
    if common:
        result["max_abs_loss_diff"] = max(abs(losses[0][s] - losses[1][s]) for s in common)
    weights = [run / "final" / "model.safetensors" for run in (a, b)]
    result["identical_bytes"] = weights[0].read_bytes() == weights[1].read_bytes()
    if not result["identical_bytes"]:
        from safetensors.torch import load_file

        first, second = (load_file(str(w)) for w in weights)
        shared = [name for name in first if name in second and first[name].shape == second[name].shape]
        result["max_abs_weight_diff"] = max(
            ((first[name].double() - second[name].double()).abs().max().item() for name in shared), default=None
        )
        result["tensors_not_compared"] = len(set(first) | set(second)) - len(shared)
    Path(reply).write_text(json.dumps(result))
    print(json.dumps(result))


NOTES = [
    "- wall s: the whole process (start-up, training, final save and evaluation).",
    "- images/s: median over the steps after the warm-up. The trainer's is metrics.jsonl's "
    "`images_per_second`: a step's images over the time from its start (batch fetch and upload "
    "included) to its optimizer step being queued; the step's one read-back waits for the GPU, so "
    "the optimizer's kernels fall in the next step's time. PyTorch's is a step on fixed GPU "
    "tensors up to `loss.item()` after the optimizer step.",
    "- peak GPU MiB: the largest of nvidia-smi's samples (every 200 ms) for the process's pid; "
    "'all processes' where nvidia-smi shows other pids (a container's), 'GPU used less idle' where "
    "it shows none.",
    "- host syncs/step: torch's sync debug mode (warn) counts blocking copies (`.item()`, `.to(cpu)`, "
    "uploads without non_blocking), stream and device syncs, not event waits or NCCL. PyTorch: "
    "`torch.cuda.set_sync_debug_mode` on 5 extra steps. Trainer: set by the preload "
    "sync_debug.so; the difference of two runs' counts over their difference in steps (its batch "
    "uploads included; the PyTorch side trains on tensors already on the GPU).",
]


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


class Row:
    """What the script recorded of one command: rows/<key>/{command,rc,start,end,pid,log,...}."""

    def __init__(self, work: Path, key: str):
        self.key = key
        self.dir = work / "rows" / key
        self.ran = (self.dir / "rc").exists()
        self.skipped = read(self.dir / "skipped")
        self.rc = int(read(self.dir / "rc", "-1") or -1)
        start, end = read(self.dir / "start"), read(self.dir / "end")
        self.wall = float(end) - float(start) if start and end else None
        self.pid = read(self.dir / "pid")

    @property
    def ok(self) -> bool:
        return self.ran and self.rc == 0

    @property
    def status(self) -> str:
        return "ok" if self.ok else "skipped" if self.skipped else "FAILED"

    def log(self) -> str:
        return read(self.dir / "log")

    def failure(self) -> str:
        """Why the row has no result: skipped, timed out, or the last lines of its log."""
        if self.skipped:
            return self.skipped
        if not self.ran:
            return "not run"
        lines = [line.strip() for line in self.log().splitlines() if line.strip() and SYNC_WARNING not in line]
        cause = " / ".join(lines[-3:])[-400:]
        if self.rc in (124, 137):
            return f"timed out (rc {self.rc}); {cause}"
        return f"rc {self.rc}: {cause}"

    def peak_memory(self) -> tuple:
        """The largest GPU memory (MiB) nvidia-smi saw for the row's process, and how it was
        matched: by pid, as the sum over all compute processes (a container may show the
        host's pids), or as the GPU's used memory less what was used before the row."""
        samples: dict = {}
        for line in read(self.dir / "apps.csv").splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                samples.setdefault(parts[0], []).append(int(parts[1]))
        if self.pid in samples:
            return max(samples[self.pid]), "pid"
        if samples:
            # Sampled together, one process at a time: the largest sum is a sample's.
            return sum(max(v) for v in samples.values()), "all processes"
        used = [int(x) for x in read(self.dir / "gpu.csv").split() if x.isdigit()]
        idle = [int(x) for x in read(self.dir / "gpu_idle").split() if x.isdigit()]
        if used:
            return max(used) - (min(idle) if idle else 0), "GPU used less idle"
        return None, ""


def median_after(values: list, warmup: int) -> float | None:
    kept = values[warmup:] if len(values) > warmup else values
    return statistics.median(kept) if kept else None


def metrics(run: Path) -> list:
    try:
        return read_jsonl(run / "metrics.jsonl")
    except (OSError, json.JSONDecodeError):
        return []


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def fmt(value, spec: str = ".0f", unit: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{unit}"


def report(work: Path) -> None:
    settings = json.loads(read(work / "settings.json", "{}") or "{}")
    warmup = int(settings.get("warmup", 0))
    rows: list = []
    speeds: dict = {}
    peaks: dict = {}

    def add(check, result="", wall=None, ips=None, memory="", syncs="", notes=""):
        rows.append([check, result, fmt(wall, ".1f"), fmt(ips), memory, syncs, notes])

    def memory_cell(row: Row) -> str:
        mib, how = row.peak_memory()
        return "" if mib is None else f"{mib} ({how})"

    def machine() -> None:
        line = read(work / "machine")
        add("machine", "ok" if line else "unknown", notes=line or "nvidia-smi and python gave nothing")

    def demo() -> None:
        row, label = Row(work, "demo"), settings.get("demo_label", "demo")
        if not row.ok:
            return add(label, row.status, row.wall, notes=row.failure())
        scores = json.loads(read(row.dir / "run" / "eval.json", "{}") or "{}")
        records = metrics(row.dir / "run")
        ips = median_after([r["images_per_second"] for r in records], warmup)
        top1, top5 = (scores.get(k) for k in ("zero_shot_top1", "zero_shot_top5"))
        notes = (
            f"{len(records)} steps; zero-shot top-1 {fmt(top1 and 100 * top1, '.2f', '%')}, "
            f"top-5 {fmt(top5 and 100 * top5, '.2f', '%')} on {scores.get('images')} test images (eval.json)"
        )
        add(label, "ok", row.wall, ips, memory_cell(row), notes=notes)

    def trainer() -> None:
        prepare_row = Row(work, "prepare")
        if not prepare_row.ok:
            add("ViT inputs (model folder, manifest)", prepare_row.status, prepare_row.wall, notes=prepare_row.failure())
        for precision in ("fp32", "bf16"):
            row = Row(work, f"trainer-{precision}")
            label = f"trainer {settings.get('vit_label', '')} {precision}"
            if not row.ok:
                add(label, row.status, row.wall, notes=row.failure())
                continue
            records = metrics(row.dir / "run")
            ips = median_after([r["images_per_second"] for r in records], warmup)
            speeds[("trainer", precision)] = ips
            peaks[("trainer", precision)] = row.peak_memory()
            skipped = sum(bool(r.get("skipped")) for r in records)
            notes = f"median of steps {warmup}-{len(records) - 1} (metrics.jsonl `images_per_second`)"
            if skipped:
                notes += f"; {skipped} steps skipped as non-finite"
            add(label, "ok", row.wall, ips, memory_cell(row), trainer_syncs(work, precision, settings), notes)

    def pytorch_side() -> None:
        for precision in ("fp32", "bf16"):
            row = Row(work, f"pytorch-{precision}")
            label = f"PyTorch CLIPModel {precision}" + (" (autocast)" if precision == "bf16" else "")
            reply = json.loads(read(row.dir / "reply.json", "{}") or "{}")
            if not row.ok or not reply:
                add(label, row.status if not row.ok else "FAILED", row.wall, notes=row.failure())
                continue
            ips = statistics.median(reply["images_per_second"])
            speeds[("pytorch", precision)] = ips
            peaks[("pytorch", precision)] = row.peak_memory()
            memory = memory_cell(row)
            if "max_memory_allocated_mib" in reply:
                memory += (
                    f"; torch: allocated {reply['max_memory_allocated_mib']:.0f}, "
                    f"reserved {reply['max_memory_reserved_mib']:.0f}"
                )
            if "sync_steps" in reply:
                # The C++ handler's lines between the markers: syncs outside Python's reach.
                log = row.log().split("sync count: start", 1)[-1].split("sync count: end", 1)[0]
                total = reply["syncs_python"] + log.count(SYNC_WARNING)
                syncs = f"{total / reply['sync_steps']:.1f} ({total} in {reply['sync_steps']} steps)"
            else:
                syncs = "n/a (no CUDA)"
            add(label, "ok", row.wall, ips, memory, syncs, f"median of {reply['steps']} timed steps after the warm-up")

    def ratios() -> None:
        for precision in ("fp32", "bf16"):
            ours, theirs = speeds.get(("trainer", precision)), speeds.get(("pytorch", precision))
            if ours and theirs:
                notes = f"{ours / theirs:.2f}x images/s"
                (our_mib, our_how), (their_mib, their_how) = (
                    peaks.get((who, precision), (None, "")) for who in ("trainer", "pytorch")
                )
                if our_mib and their_mib and our_how == their_how:
                    notes += f", {our_mib / their_mib:.2f}x peak GPU memory"
                add(f"ratio trainer/PyTorch {precision}", "ok", notes=notes)
            else:
                add(f"ratio trainer/PyTorch {precision}", "n/a", notes="a side has no images/s")

    def data_parallel() -> None:
        comparison = json.loads(read(work / "rows" / "dp-compare" / "reply.json", "{}") or "{}")
        repeat = json.loads(read(work / "rows" / "plain-repeat-compare" / "reply.json", "{}") or "{}")
        for key in ("plain", "dp"):
            row, label = Row(work, key), settings.get(f"{key}_label", key)
            if not row.ok:
                add(label, row.status, row.wall, notes=row.failure())
                continue
            records = metrics(row.dir / "run")
            ips = median_after([r["images_per_second"] for r in records], warmup)
            notes = f"{len(records)} steps"
            if key == "dp" and not comparison:
                notes += "; comparison failed: " + Row(work, "dp-compare").failure()
            elif key == "dp":
                if comparison["identical_bytes"]:
                    notes += "; final/model.safetensors identical to the single-process run's"
                else:
                    diff = comparison.get("max_abs_weight_diff")
                    notes += f"; weights differ from the single-process run's: max abs {fmt(diff, '.3g')}"
                if "max_abs_loss_diff" in comparison:
                    notes += (
                        f", max abs loss diff {comparison['max_abs_loss_diff']:.3g} "
                        f"over {comparison['steps_compared']} steps"
                    )
                if repeat:
                    diff = repeat.get("max_abs_weight_diff")
                    same = "identical" if repeat["identical_bytes"] else f"max abs {fmt(diff, '.3g')}"
                    notes += f" (two single-process runs: {same})"
            add(label, "ok", row.wall, ips, memory_cell(row), notes=notes)

    for section in (machine, demo, trainer, pytorch_side, ratios, data_parallel):
        try:
            section()
        except Exception as error:  # one broken reply must not cost the rest of the table
            add(f"report: {section.__name__}", "FAILED", notes=f"{type(error).__name__}: {error}")
    header = ["check", "result", "wall s", "images/s", "peak GPU MiB", "host syncs/step", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    lines += ["", *NOTES]
    print("\n".join(lines))


def trainer_syncs(work: Path, precision: str, settings: dict) -> str:
    """Syncs per step of the trainer: torch's sync debug mode set to warn by the preload
    (sync_debug.so), counted in two runs of different lengths, so that start-up, the final
    save and the evaluation cancel out."""
    sync_steps = settings.get("sync_steps", [])
    if len(sync_steps) != 2:
        return "see note"
    rows = [Row(work, f"syncs-{precision}-{steps}") for steps in sync_steps]
    if not all(row.ok for row in rows):
        failed = next((row for row in rows if not row.ok))
        return f"see note ({failed.failure()[:120]})"
    logs = [row.log() for row in rows]
    if any("sync debug: warn" not in log for log in logs):
        return "see note (preload did not set the mode)"
    counts = [log.count(SYNC_WARNING) for log in logs]
    per_step = (counts[1] - counts[0]) / (sync_steps[1] - sync_steps[0])
    return f"{per_step:.1f} ({counts[0]} in {sync_steps[0]} steps, {counts[1]} in {sync_steps[1]})"


def main() -> None:
    command, args = sys.argv[1], sys.argv[2:]
    if command == "prepare":
        prepare(Path(args[0]), int(args[1]), args[2])
    elif command == "pytorch":
        pytorch(args[0], int(args[1]), args[2], int(args[3]), int(args[4]), args[5], args[6])
    elif command == "compare":
        compare(Path(args[0]), Path(args[1]), args[2])
    elif command == "report":
        report(Path(args[0]))
    else:
        sys.exit(f"unknown command {command}; see the docstring")


if __name__ == "__main__":
    main()
