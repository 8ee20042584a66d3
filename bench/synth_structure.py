"""Is the cluttered-glyphs structure real? A static CNN on the glance vs. on an oracle crop.

Trains one small plain-torch CNN on downsampled whole images (224 -> 96, what GFNet's glance
sees) and the same architecture on a 96 x 96 full-resolution crop centred on the target (what a
perfect focus step sees), then reports test accuracy separately on small-target and
large-target images. The dataset is right when the glance model is clearly worse on small
targets than on large ones and the oracle-crop model is good on both.

    .venv/bin/python bench/synth_structure.py            # ~4-5 minutes on 2 CPU cores
    .venv/bin/python bench/synth_structure.py --quick    # smoke run, not recorded

Writes bench/results/synth_structure.json (figures, goals, machine, command).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from gfpipe.config import Preprocessing  # noqa: E402
from gfpipe.data.decode import decode, preprocess
from gfpipe.data.synthetic import SynthConfig, encode_image, generate, oracle_crop

GLANCE = 96  # GFNet's glance input side for 224 images
PATCH = 96  # focus patch side
PREP = Preprocessing(resize=GLANCE, crop=GLANCE)
GOALS = {"glance_small_minus_large_at_most": -0.25, "oracle_min_accuracy": 0.85}


class SmallCNN(nn.Module):
    """A lossless 2x2 space-to-depth stem (no pixel is thrown away, so small glyphs keep their
    detail) and four 3x3 conv blocks, then global max + average pooling and a linear head."""

    def __init__(self, classes: int, width: int = 24) -> None:
        super().__init__()
        chans = [12, width, 2 * width, 4 * width, 6 * width]
        layers: list[nn.Module] = [nn.PixelUnshuffle(2)]  # (N, 3, 96, 96) -> (N, 12, 48, 48)
        for i in range(4):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * chans[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, 96, 96)
        f = self.features(x)  # (N, C, 6, 6)
        pooled = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)  # (N, 2C)
        return self.head(pooled)  # (N, classes)


def build_inputs(split: str, count: int, config: SynthConfig) -> dict[str, np.ndarray]:
    """Glance and oracle-crop tensors of `count` images, through the stored JPEG round trip."""
    glance, crops, labels, small = [], [], [], []
    for sample in generate(count, split, config):
        image, error, _ = decode(encode_image(sample.image, config))
        assert error is None, error
        glance.append(preprocess(image, PREP))
        crops.append(preprocess(np.ascontiguousarray(oracle_crop(image, sample.bbox, PATCH)), PREP))
        labels.append(sample.label)
        small.append(sample.small)
    return {
        "glance": np.stack(glance),
        "oracle": np.stack(crops),
        "labels": np.asarray(labels, dtype=np.int64),
        "small": np.asarray(small, dtype=bool),
    }


def train(x: np.ndarray, y: np.ndarray, classes: int, epochs: int, seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN(classes)
    steps = epochs * ((len(x) + 63) // 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(f"  epoch {epoch + 1}/{epochs} loss {total / len(xt):.3f}", flush=True)
    return model


@torch.no_grad()
def accuracy(model: SmallCNN, x: np.ndarray, y: np.ndarray, small: np.ndarray) -> dict[str, float]:
    model.eval()
    pred = torch.cat([model(torch.from_numpy(x[i : i + 256])).argmax(1) for i in range(0, len(x), 256)]).numpy()
    hit = pred == y
    return {
        "all": round(float(hit.mean()), 4),
        "small": round(float(hit[small].mean()), 4),
        "large": round(float(hit[~small].mean()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=8000, help="training images")
    parser.add_argument("--test", type=int, default=2000, help="test images")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run; does not write results")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "synth_structure.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.test, args.epochs = 600, 300, 2
    torch.set_num_threads(os.cpu_count() or 1)
    torch.set_flush_denormal(True)
    config = SynthConfig(seed=args.seed)
    started = time.perf_counter()
    train_set = build_inputs("train", args.train, config)
    test_set = build_inputs("test", args.test, config)
    data_s = time.perf_counter() - started
    print(f"data: {args.train} train + {args.test} test images in {data_s:.1f} s", flush=True)

    results: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    for view in ("glance", "oracle"):
        t0 = time.perf_counter()
        print(f"training on {view} inputs (96 x 96)", flush=True)
        model = train(train_set[view], train_set["labels"], len(config.classes), args.epochs, args.seed)
        results[view] = accuracy(model, test_set[view], test_set["labels"], test_set["small"])
        timings[view] = round(time.perf_counter() - t0, 1)
        print(f"  {view}: {results[view]}", flush=True)

    gap = results["glance"]["small"] - results["glance"]["large"]
    checks = {
        "glance_small_clearly_worse": gap <= GOALS["glance_small_minus_large_at_most"],
        "oracle_good_on_small": results["oracle"]["small"] >= GOALS["oracle_min_accuracy"],
        "oracle_good_on_large": results["oracle"]["large"] >= GOALS["oracle_min_accuracy"],
    }
    print(
        f"glance small/large accuracy ratio {results['glance']['small'] / max(results['glance']['large'], 1e-9):.2f}; "
        f"oracle/glance on small targets {results['oracle']['small'] / max(results['glance']['small'], 1e-9):.2f}x"
    )
    print("checks:", checks)
    report = {
        "benchmark": "synth_structure",
        "accuracy": results,
        "glance_small_minus_large": round(gap, 4),
        "goals": GOALS,
        "checks": checks,
        "chance": round(1.0 / len(config.classes), 4),
        "setup": {
            "train_images": args.train,
            "test_images": args.test,
            "small_targets_in_test": int(test_set["small"].sum()),
            "epochs": args.epochs,
            "glance": f"224 -> {GLANCE} bilinear",
            "oracle": f"{PATCH} x {PATCH} full-resolution crop centred on the target bbox",
            "model": "SmallCNN width 24 (space-to-depth stem, 4 conv blocks, max+avg pool), "
            "AdamW one-cycle 3e-3, batch 64",
            "synth_config": {k: v for k, v in vars(config).items()},
        },
        "seconds": {"data": round(data_s, 1), **timings},
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0 if all(checks.values()) or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
