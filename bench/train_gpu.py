"""One stage-I epoch of the ResNet-50 recipe on a GPU, in plain torch: images/s and memory.

The recipe is configs/resnet50.yaml (p = 96, T = 5, SGD + Nesterov, 1000 classes), run by the
same `gfpipe.train.loops.Trainer` that each Ray Train worker runs, on one device. The data are
random uint8 images at the recipe's crop size held in pinned host memory, so the figure is the
model's training speed (augmentation on the device included, decoding excluded: decoding runs
on Ray Data's CPU tasks, see bench/decode.py). For each per-GPU batch size and precision:
`--warmup` batches, then one "epoch" of `--batches` batches, timed with the device synchronised;
peak memory is `torch.cuda.max_memory_allocated` over that epoch.

    PYTHONPATH=. python bench/train_gpu.py --device cuda [--batches 40 --sizes 32,128,256]

Writes bench/results/train_gpu.json (or $OUT/train_gpu.json when OUT is set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402

from gfpipe.model import GFNet  # noqa: E402
from gfpipe.train.config import load_config  # noqa: E402
from gfpipe.train.loops import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGENET_TRAIN_IMAGES = 1_281_167


def measure(batch: int, bf16: bool, device: torch.device, warmup: int, batches: int) -> dict:
    sets = [
        "model.num_classes=1000",
        f"batch_size={batch}",
        f"bf16={str(bf16).lower()}",
        f"channels_last={str(bf16).lower()}",
    ]
    cfg = load_config(str(ROOT / "configs" / "resnet50.yaml"), sets)
    torch.manual_seed(0)
    trainer = Trainer(cfg, GFNet(cfg.model), device)
    size = cfg.preprocessing.crop
    generator = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator).pin_memory()
    labels = torch.randint(0, cfg.model.num_classes, (batch,), generator=generator)

    trainer.train_epoch("stage1", 0, ((raw, labels) for _ in range(warmup)))
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    sums = trainer.train_epoch("stage1", 1, ((raw, labels) for _ in range(batches)))
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    images_per_s = sums["images"] / seconds
    result = {
        "batch_per_gpu": batch,
        "precision": "bf16 autocast + channels_last" if bf16 else "fp32",
        "images": int(sums["images"]),
        "seconds": seconds,
        "images_per_s": images_per_s,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
        "imagenet_epoch_hours_one_gpu": IMAGENET_TRAIN_IMAGES / images_per_s / 3600,
        "loss_finite": bool(torch.isfinite(torch.tensor(sums["loss_sum"]))),
    }
    del trainer
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default="32,128,256", help="per-GPU batch sizes")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--fp32", action="store_true", help="also measure fp32 (no autocast, NCHW)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise SystemExit("bench/train_gpu.py needs a CUDA device (--device cuda)")
    torch.backends.cudnn.benchmark = True
    runs = []
    for batch in (int(s) for s in args.sizes.split(",")):
        for bf16 in (True, False) if args.fp32 else (True,):
            result = measure(batch, bf16, device, args.warmup, args.batches)
            runs.append(result)
            print(json.dumps(result), flush=True)
    figures = {"device_name": torch.cuda.get_device_name(device), "torch": torch.__version__, "runs": runs}
    print(f"machine: {machine()}")
    path = write_results("train_gpu", figures)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "train_gpu.json").write_text(path.read_text())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
