"""Does the engine give the paper's rows on a GPU, in fp32 and in bf16 with channels_last?

For each model (random weights spread so that confidences vary), on one device:
  reference   `GFNet.anytime` (fp32) + `simulate` with thresholds solved on the images' own scores;
  fp32        the engine in fp32: rows must match the reference, except images whose fp32 score
              lies within 1e-4 of a threshold (batch composition moves scores by float noise);
  bf16 + cl   the engine with bf16 autocast and channels_last: every image gets a row without an
              error, and the share of rows whose exit step and label agree with the fp32
              reference is reported (bf16 moves scores by ~1e-2, so some near-threshold images
              exit elsewhere; that is precision, not a bug).
Prints and writes bench/results/gpu_check.json (or $OUT/gpu_check.json when OUT is set).

    PYTHONPATH=. python bench/gpu_check.py --device cuda [--images 512 --batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, randomize_weights  # noqa: E402

from gfpipe.budget.costs import step_costs  # noqa: E402
from gfpipe.budget.scores import exit_scores  # noqa: E402
from gfpipe.budget.solver import simulate, solve_thresholds  # noqa: E402
from gfpipe.engine import EarlyExitEngine, batched  # noqa: E402
from gfpipe.model import GFNet, GFNetConfig  # noqa: E402

MODELS = {"resnet50": (96, 5), "mobilenetv3_large_100": (96, 3)}


def check(arch: str, device: torch.device, images: int, batch: int) -> dict:
    patch, T = MODELS[arch]
    torch.manual_seed(0)
    model = GFNet(GFNetConfig(backbone=arch, num_classes=1000, patch_size=patch, T=T)).eval()
    randomize_weights(model)
    model = model.to(device)
    x = torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    keys = [str(i) for i in range(images)]
    logits = torch.cat([model.anytime(x[i : i + batch]) for i in range(0, images, batch)], dim=1)  # (T, N, K)
    scores = exit_scores(logits).T.cpu().numpy()  # (N, T)
    labels = logits.argmax(-1).T.cpu().numpy()  # (N, T)
    costs = np.array(step_costs(model))
    eta = solve_thresholds(costs, scores, costs[0] + 0.35 * (costs[-1] - costs[0])).thresholds
    steps = simulate(scores, eta, costs).exit_steps

    def compare(rows: list[dict]) -> tuple[int, int, int]:
        """(rows, agreeing rows, disagreeing rows with a score within 1e-4 of a threshold)."""
        agree = near = 0
        for row in rows:
            i = int(row["key"])
            if row["error"] is None and (row["exit_step"], row["label"]) == (steps[i], labels[i, steps[i] - 1]):
                agree += 1
            elif row["error"] is None:
                first = min(row["exit_step"], int(steps[i])) - 1
                near += int(abs(scores[i, first] - eta[first]) < 1e-4)
        return len(rows), agree, near

    fp32 = list(EarlyExitEngine(model, eta, batch_size=batch, device=device).run(batched(keys, x, batch)))
    n, agree, near = compare(fp32)
    result = {
        "images": n,
        "exits": np.bincount(steps - 1, minlength=T).tolist(),
        "fp32_agree": agree,
        "fp32_disagree_near_threshold": near,
        "fp32_ok": n == images and agree + near == n,
    }
    if device.type == "cuda":
        fast = EarlyExitEngine(
            model, eta, batch_size=batch, device=device, autocast_dtype=torch.bfloat16, channels_last=True
        )
        rows = list(fast.run(batched(keys, x, batch)))
        n, agree, _ = compare(rows)
        result.update(
            bf16_rows=n,
            bf16_errors=sum(r["error"] is not None for r in rows),
            bf16_agree_share=agree / max(n, 1),
            bf16_exits=fast.stats.exits,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--arch", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    device = torch.device(args.device)
    results = {arch: check(arch, device, args.images, args.batch) for arch in args.arch}
    payload = {"results": results, "machine": machine(), "command": " ".join(["python", *sys.argv])}
    text = json.dumps(payload, indent=2)
    print(text)
    out = Path(os.environ.get("OUT") or Path(__file__).resolve().parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
