"""The paper's findings on the cluttered-glyphs benchmark: does glance-and-focus work here too?

Trains, with gfpipe's own training stages (single process, in-memory data), on a train split:
  static_full      the tiny backbone on the whole image at full resolution (a plain classifier),
                   from scratch: it stands in for the paper's ImageNet-trained network, the
                   starting point of every other model's encoders;
  static_glance    static_full fine-tuned on the glance (the whole image, downsampled);
  learned          GFNet, stages 0-III (the model after stage II is `no_stage3`);
  no_glance        the same, but step 1 sees the centre patch at full resolution instead of the
                   downsampled whole image (Table 1's "w/o glance");
  shared_encoder   the same, with one encoder for the glance and the patches.
Then on a test split none of them saw:
  anytime accuracy per step for every variant, plus the learned model with a random policy
  (`random`) and with the centre-then-corners policy (`centre_corner`);
  glimpse hit rate: the share of focus patches that overlap the target's bounding box;
  budgeted accuracy vs mean MACs (thresholds solved on the val split's exit scores), against the
  static backbones, and the MACs GFNet needs to match static_full's accuracy, as a share of
  static_full's MACs.
Writes bench/results/fidelity.json and fidelity.png.

    PYTHONPATH=. .venv/bin/python bench/fidelity.py            # the recorded run (about 40 minutes)
    PYTHONPATH=. .venv/bin/python bench/fidelity.py --quick    # a smoke run of minutes
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_results  # noqa: E402

from gfpipe.budget.costs import part_costs, step_costs  # noqa: E402
from gfpipe.budget.scores import exit_scores  # noqa: E402
from gfpipe.budget.solver import simulate, solve_thresholds  # noqa: E402
from gfpipe.data import discover_shards, iter_shard_records  # noqa: E402
from gfpipe.data.labels import LabelMap  # noqa: E402
from gfpipe.data.synthetic import SynthConfig, write_dataset  # noqa: E402
from gfpipe.model import GFNet  # noqa: E402
from gfpipe.model.patches import patch_corners  # noqa: E402
from gfpipe.model.policy import PolicyOutput  # noqa: E402
from gfpipe.runtime import tune_allocator  # noqa: E402
from gfpipe.train.config import resolve_config  # noqa: E402
from gfpipe.train.data import decode_for_eval, normalise  # noqa: E402
from gfpipe.train.loops import Trainer  # noqa: E402

DATA_ROOT = Path(__file__).resolve().parent / "data"
QUIET_CLUTTER = (25.0, 60.0)
"""The recorded run's clutter contrast: targets stand out in the glance (see SynthConfig)."""
CLASSES = tuple(SynthConfig().classes)


def synth_config(args: argparse.Namespace) -> SynthConfig:
    return SynthConfig(image_size=128, small_font=(0.11, 0.14), seed=0, clutter_contrast=args.clutter_contrast)


def data_dir(args: argparse.Namespace) -> Path:
    """bench/data/fidelity (the default clutter of the glyph benchmark) or fidelity-clutterLO-HI."""
    low, high = args.clutter_contrast
    default = SynthConfig().clutter_contrast
    return DATA_ROOT / ("fidelity" if (low, high) == default else f"fidelity-clutter{low:g}-{high:g}")


class CentreFirst(GFNet):
    """Table 1's "w/o glance": step 1 reads the centre patch at full resolution."""

    def glance_input(self, images: torch.Tensor) -> torch.Tensor:
        p = self.config.glance_size
        offset = (self.config.input_size - p) // 2
        return images[:, :, offset : offset + p, offset : offset + p]


class SharedEncoder(GFNet):
    """One encoder for the glance and the patches."""

    def __init__(self, config, card=None):
        super().__init__(config, card)
        self.local_encoder = self.global_encoder


def recipe(args: argparse.Namespace, **model) -> dict:
    """The training config of one variant; `model` overrides the GFNet geometry."""
    adamw = {"optimizer": "adamw", "weight_decay": 0.0001}
    return {
        "model": {
            "backbone": "tiny",
            "tiny_width": 16,
            "input_size": 128,
            "glance_size": 48,
            "patch_size": args.patch_size,
            "T": args.T,
            "num_classes": len(CLASSES),
            **model,
        },
        "preprocessing": {"resize": 128, "crop": 128},
        "augment": {"random_resized_crop": False, "hflip": False},
        "data": {"train": str(data_dir(args) / "train"), "val": str(data_dir(args) / "val")},
        "batch_size": 64,
        "seed": args.seed,
        "stage0": {"epochs": args.stage0_epochs, "encoder_lr": 0.001, **adamw},
        "stage1": {"epochs": args.stage1_epochs, "encoder_lr": 0.001, "classifier_lr": 0.001, **adamw},
        "stage2": {"epochs": args.stage2_epochs, "update_epochs": 4, "lr": 0.001},
        "stage3": {"epochs": args.stage3_epochs, "encoder_lr": 0.0005, "classifier_lr": 0.0005, **adamw},
    }


def preprocessing():
    return resolve_config(recipe(build_parser().parse_args([]))).preprocessing


# ---------------------------------------------------------------------------------------------- data


def make_data(args: argparse.Namespace) -> None:
    """Each split once; a split written with other counts or knobs is written again."""
    synth = synth_config(args)
    for split, count in (("train", args.train_images), ("val", args.eval_images), ("test", args.eval_images)):
        manifest = data_dir(args) / split / "_manifest.json"
        if manifest.exists():
            old = json.loads(manifest.read_text())
            if old["count"] == count and old["config"] == json.loads(json.dumps(dataclasses.asdict(synth))):
                continue
        write_dataset(str(data_dir(args)), split, count, synth, shard_size=1000, overwrite=True)


def load(args: argparse.Namespace, split: str) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """All images of a split as uint8 (N, 3, 128, 128), labels, and their metadata (bbox, small)."""
    prep = preprocessing()
    labels = LabelMap.build(CLASSES)
    images, ys, meta = [], [], []
    for shard in discover_shards(str(data_dir(args) / split)):
        for record in iter_shard_records(shard):
            image, error = decode_for_eval(record.data, prep)
            assert error is None, error
            images.append(torch.from_numpy(image))
            ys.append(labels.record_label(record))
            meta.append(record.metadata)
    return torch.stack(images), torch.tensor(ys), meta


# ---------------------------------------------------------------------------------------------- training


def batches(x: torch.Tensor, y: torch.Tensor, epoch: int, size: int = 64):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
    for i in range(0, len(x), size):
        index = order[i : i + size]
        yield x[index], y[index]


def train(name: str, cls: type[GFNet], cfg, train_xy, log: list, init: GFNet | None = None):
    """Every stage of `cfg` with epochs on a fresh `cls` model whose encoders start from `init`'s
    encoder (the paper starts both from an ImageNet-trained network); returns the model and a copy
    of it after stage II (the `no_stage3` row)."""
    torch.manual_seed(cfg.seed)
    model = cls(cfg.model)
    if init is not None:
        pretrained = init.global_encoder.state_dict()
        model.global_encoder.load_state_dict(pretrained)
        model.local_encoder.load_state_dict(pretrained)
    trainer = Trainer(cfg, model, "cpu")
    after_stage2 = None
    for stage, epochs in trainer.plan():
        started = time.perf_counter()
        for epoch in range(epochs):
            sums = trainer.train_epoch(stage, epoch, batches(*train_xy, epoch))
        log.append(
            {
                "variant": name,
                "stage": stage,
                "epochs": epochs,
                "seconds": time.perf_counter() - started,
                "last_loss": sums["loss_sum"] / sums["images"],
            }
        )
        print(
            f"  {name} {stage}: {epochs} epochs, {log[-1]['seconds']:.0f} s, loss {log[-1]['last_loss']:.3f}",
            flush=True,
        )
        if stage == "stage2":
            after_stage2 = copy.deepcopy(model).eval()
    return model.eval(), after_stage2


def static(name: str, args, size: int, train_xy, log: list, init: GFNet | None = None) -> GFNet:
    """A plain classifier: the tiny backbone and its head on the whole image at `size` pixels,
    trained from scratch (`static_epochs`), or fine-tuned from `init` like GFNet's stage 0."""
    config = recipe(args, glance_size=size, patch_size=size, T=1)
    config["stage0"]["epochs"] = args.stage0_epochs if init is not None else args.static_epochs
    for stage in ("stage1", "stage2", "stage3"):
        config[stage]["epochs"] = 0
    model, _ = train(name, GFNet, resolve_config(config), train_xy, log, init)
    return model


# ---------------------------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def run_steps(model: GFNet, x: torch.Tensor, locations: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (T, N, K) and patch corners (T-1, N, 2) with the policy's mean, random or fixed locations."""
    prep = preprocessing()
    generator = torch.Generator().manual_seed(seed)
    cfg = model.config
    fixed = [(0.5, 0.5), (0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]  # centre, then the corners
    all_logits, all_corners = [], []
    for start in range(0, len(x), 250):
        images = normalise(x[start : start + 250], prep)
        logits, state = model.glance(images)
        step_logits, corners = [logits], []
        for t in range(1, cfg.T):
            if locations == "policy":
                location = model.locate(state)
            elif locations == "random":
                location = model.random_location(state, generator)
            else:
                action = torch.tensor(fixed[(t - 1) % len(fixed)]).expand(len(state), 2)
                location = PolicyOutput(action, state.pooled.new_zeros(len(state), 1), state.policy)
            corners.append(patch_corners(location.action, cfg.input_size, cfg.patch_size))
            logits, state = model.focus(images, state, location)
            step_logits.append(logits)
        all_logits.append(torch.stack(step_logits))
        all_corners.append(torch.stack(corners) if corners else torch.zeros(0, len(images), 2, dtype=torch.long))
    return torch.cat(all_logits, 1), torch.cat(all_corners, 1)


@torch.inference_mode()
def static_accuracy(model: GFNet, x: torch.Tensor, y: torch.Tensor) -> float:
    """A static classifier's accuracy: its encoder's own head on the whole image (no GFNet steps)."""
    prep = preprocessing()
    correct = 0
    for start in range(0, len(x), 250):
        _, state = model.glance(normalise(x[start : start + 250], prep))
        correct += int((model.encoder_logits(state).argmax(-1) == y[start : start + 250]).sum())
    return correct / len(x)


def accuracy_per_step(logits: torch.Tensor, y: torch.Tensor) -> list[float]:
    return (logits.argmax(-1) == y).float().mean(1).tolist()


def hit_rate(corners: torch.Tensor, meta: list[dict], patch: int) -> float:
    """Share of focus patches (row, col corners) that overlap the target's bbox [x0, y0, x1, y1)."""
    boxes = torch.tensor([m["bbox"] for m in meta])  # (N, 4)
    rows, cols = corners[..., 0], corners[..., 1]  # (T-1, N)
    hit = (rows < boxes[:, 3]) & (rows + patch > boxes[:, 1]) & (cols < boxes[:, 2]) & (cols + patch > boxes[:, 0])
    return float(hit.float().mean())


def budget_curve(model: GFNet, val_x, test_x, test_y, points: int) -> list[dict]:
    costs = np.asarray(step_costs(model))
    calibration = exit_scores(run_steps(model, val_x, "policy")[0]).T.numpy()
    logits = run_steps(model, test_x, "policy")[0]
    scores, predictions = exit_scores(logits).T.numpy(), logits.argmax(-1).T.numpy()
    curve = []
    for target in np.linspace(costs[0], costs[-1], points):
        eta = solve_thresholds(costs, calibration, float(target)).thresholds
        sim = simulate(scores, eta, costs, predictions, test_y.numpy())
        curve.append(
            {
                "target_macs": float(target),
                "mean_macs": sim.mean_cost,
                "accuracy": sim.accuracy,
                "exits": sim.counts.tolist(),
            }
        )
    return curve


def macs_at_accuracy(curve: list[dict], accuracy: float) -> float | None:
    """The least mean MACs on the curve at which GFNet reaches `accuracy` (linear between points)."""
    for low, high in zip(curve, curve[1:], strict=False):
        if low["accuracy"] >= accuracy:
            return low["mean_macs"]
        if high["accuracy"] >= accuracy:
            share = (accuracy - low["accuracy"]) / (high["accuracy"] - low["accuracy"])
            return low["mean_macs"] + share * (high["mean_macs"] - low["mean_macs"])
    return None


def plot(curve: list[dict], statics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        [c["mean_macs"] / 1e6 for c in curve],
        [100 * c["accuracy"] for c in curve],
        "-o",
        ms=3,
        label="GFNet (budgeted early exit)",
    )
    for name, item in statics.items():
        label = name.replace("_", " ") + " (a static network)"
        ax.plot(item["macs"] / 1e6, 100 * item["accuracy"], "s", ms=7, label=label)
    ax.set_xlabel("mean MMACs per image")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("cluttered glyphs, tiny backbone")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main


QUICK = {"static_epochs": 2, "stage0_epochs": 1, "stage1_epochs": 2, "stage2_epochs": 2, "stage3_epochs": 1}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=5, help="GFNet steps (glance + T-1 patches)")
    parser.add_argument("--patch-size", type=int, default=64, help="focus patch side in pixels (of 128)")
    parser.add_argument("--static-epochs", type=int, default=15, help="static_full, the encoders' starting point")
    parser.add_argument("--stage0-epochs", type=int, default=4, help="also static_glance's fine-tuning")
    parser.add_argument("--stage1-epochs", type=int, default=12)
    parser.add_argument("--stage2-epochs", type=int, default=20)
    parser.add_argument("--stage3-epochs", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--eval-images", type=int, default=2000, help="images in each of val and test")
    parser.add_argument("--points", type=int, default=41, help="budgets in the accuracy-vs-MACs sweep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-ablations", action="store_true", help="skip the no_glance and shared_encoder models (about half the time)"
    )
    parser.add_argument("--name", default=None, help="results name (default: fidelity, or fidelity-clutterLO-HI)")
    parser.add_argument(
        "--clutter-contrast",
        type=lambda text: tuple(float(v) for v in text.split(",")),
        default=QUIET_CLUTTER,
        metavar="LOW,HIGH",
        help="the fragments' contrast in grey levels (default %(default)s; 70,150 is the glyph "
        "benchmark's default, where a small target looks like a fragment in the glance)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1-2 epochs a stage, 2000 training images")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        vars(args).update(QUICK, train_images=2000, eval_images=500)
    tune_allocator()
    torch.set_num_threads(2)
    started = time.perf_counter()
    make_data(args)
    train_xy, (val_x, _, _), (test_x, test_y, test_meta) = (
        load(args, "train")[:2],
        load(args, "val"),
        load(args, "test"),
    )
    print(f"data: {len(train_xy[0])} train, {len(val_x)} val, {len(test_x)} test images", flush=True)

    log: list[dict] = []
    # The paper starts both encoders from an ImageNet-trained network; here, from static_full.
    static_full = static("static_full", args, 128, train_xy, log)
    statics = {
        "static_full": static_full,
        "static_glance": static("static_glance", args, 48, train_xy, log, static_full),
    }
    cfg = resolve_config(recipe(args))
    learned, no_stage3 = train("learned", GFNet, cfg, train_xy, log, static_full)
    ablations = []
    if not args.no_ablations:
        no_glance_cfg = resolve_config(recipe(args, glance_size=args.patch_size))
        no_glance, _ = train("no_glance", CentreFirst, no_glance_cfg, train_xy, log, static_full)
        shared, _ = train("shared_encoder", SharedEncoder, cfg, train_xy, log, static_full)
        ablations = [("no_glance", no_glance, "policy"), ("shared_encoder", shared, "policy")]

    anytime, hits = {}, {}
    for name, model, locations in (
        ("learned", learned, "policy"),
        ("random", learned, "random"),
        ("centre_corner", learned, "fixed"),
        *ablations,
        ("no_stage3", no_stage3, "policy"),
    ):
        logits, corners = run_steps(model, test_x, locations, seed=args.seed)
        anytime[name] = accuracy_per_step(logits, test_y)
        if name in ("learned", "random", "centre_corner"):
            hits[name] = hit_rate(corners, test_meta, model.config.patch_size)
        print(f"{name:15s} anytime accuracy per step {[round(100 * a, 1) for a in anytime[name]]}", flush=True)
    static_points = {}
    for name, model in statics.items():
        static_points[name] = {
            "accuracy": static_accuracy(model, test_x, test_y),
            "macs": part_costs(model).glance_encoder,
        }
        print(
            f"{name:15s} accuracy {100 * static_points[name]['accuracy']:.1f}% at "
            f"{static_points[name]['macs'] / 1e6:.2f} MMACs",
            flush=True,
        )
    curve = budget_curve(learned, val_x, test_x, test_y, args.points)
    full = static_points["static_full"]
    needed = macs_at_accuracy(curve, full["accuracy"])
    ratio = None if needed is None else needed / full["macs"]
    small = torch.tensor([m["small"] for m in test_meta])
    by_size = {
        name: {
            "small": (logits.argmax(-1) == test_y)[:, small].float().mean(1).tolist(),
            "large": (logits.argmax(-1) == test_y)[:, ~small].float().mean(1).tolist(),
        }
        for name, logits in (
            ("learned", run_steps(learned, test_x, "policy")[0]),
            ("random", run_steps(learned, test_x, "random", args.seed)[0]),
        )
    }
    print(
        f"hit rate: {hits}; GFNet matches static_full ({100 * full['accuracy']:.1f}%) at "
        f"{'never' if ratio is None else f'{ratio:.3f} of its MACs'}"
    )
    beats = all(
        anytime["learned"][t] > max(anytime["random"][t], anytime["centre_corner"][t])
        for t in range(1, learned.config.T)
    )
    figures = {
        "anytime": anytime,
        "hit_rate": hits,
        "macs_ratio_at_static_accuracy": ratio,
        "learned_beats_random_and_centre_corner_at_every_t_ge_2": beats,
        "accuracy_by_target_size": by_size,
        "static": static_points,
        "budget_curve": curve,
        "step_macs": step_costs(learned),
        "training": log,
        "config": {
            "synth": dataclasses.asdict(synth_config(args)),
            "train_images": args.train_images,
            "eval_images": args.eval_images,
            "epochs": {k: v for k, v in vars(args).items() if k.endswith("epochs")},
            "recipe": recipe(args),
        },
        "seconds": time.perf_counter() - started,
        "commands": ["PYTHONPATH=. .venv/bin/python " + " ".join(sys.argv)],
    }
    goals = {"learned_beats_random_and_centre_corner_at_every_t_ge_2": True, "macs_ratio_at_static_accuracy": "<= 0.5"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.name or ("fidelity" if args.clutter_contrast == QUIET_CLUTTER else data_dir(args).name)
    plot(curve, static_points, RESULTS / f"{name}.png")
    print(f"machine: {machine()}")
    print(f"wrote {write_results(name, figures, goals)} and {RESULTS / f'{name}.png'}")


if __name__ == "__main__":
    main()
