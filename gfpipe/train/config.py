"""Training configuration: frozen dataclasses hold the defaults, family presets and YAML hold overrides.

How a run's configuration is resolved, last one winning:
1. the dataclass defaults below (the paper's ResNet recipe where one applies);
2. the backbone family's preset (`FAMILY_PRESETS`: TRAINING_SPEC.md's lambda, learning rates,
   weight decay, epochs, frozen global encoder, no stage III for EfficientNet, DenseNet's and
   RegNet's bilinear glance); dropout and drop-connect are the model family's defaults
   (`GFNetConfig`), filled in when the model is built;
3. the YAML file (`--config`: a path, or a name such as `densenet121` for configs/densenet121.yaml),
   holding only overrides, with strict keys;
4. `--set key.path=value` overrides from the command line (values parsed as YAML).
The resolved configuration is saved with every checkpoint (`to_dict`), so a model says exactly
how it was trained. Storage credentials never enter it (they come from flags or the
environment).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from gfpipe.config import ConfigError, Preprocessing, from_dict, to_dict
from gfpipe.model.backbones import BACKBONES
from gfpipe.model.gfnet import GFNetConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the labelled images are. URIs take everything a reader takes (folders, prefixes,
    globs, brace patterns, s3://). Class names come from the data (classes.txt, class folders)
    unless given; train and val must agree."""

    train: str = ""
    val: str = ""
    calibration: str | None = None  # held-out data for the final calibration pass (default: val)
    format: str = "auto"
    class_folders: bool = False
    class_names: tuple[str, ...] | None = None
    max_val_images: int | None = None  # cap per validation pass (None: all of val)
    max_calibration_images: int | None = None


@dataclasses.dataclass(frozen=True)
class InitConfig:
    """Where the weights start (`gfpipe.train.init`): scratch when all are empty. URIs, local
    or object storage: `checkpoint` a gfpipe or official GFNet file (fine-tuning; heads of
    another class count start fresh), `encoders` a backbone state dict (torchvision ResNet or
    timm MobileNet-V3 layout) for both encoders, `global_encoder` one for f_G alone (e.g.
    fine-tuned at glance size, as the paper starts f_G)."""

    checkpoint: str | None = None
    encoders: str | None = None
    global_encoder: str | None = None


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation on the worker: random-resized crop to the model input and a
    horizontal flip (TRAINING_SPEC: every family). Validation uses resize + centre crop."""

    random_resized_crop: bool = True
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True


@dataclasses.dataclass(frozen=True)
class SupervisedStage:
    """Stages 0, I and III: SGD with Nesterov momentum, a cosine schedule per epoch, Eq. 3's loss.

    `locations`: where focus steps look: "random" (stage I), "policy" (stage III: sampled from
    the frozen policy with `policy_std`; validation always uses the policy's mean).
    `freeze_global`: keep the global encoder (and its head) frozen in eval mode (MobileNet-V3,
    EfficientNet)."""

    epochs: int = 0
    encoder_lr: float = 0.01
    classifier_lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    optimizer: str = "sgd"  # "sgd" (the paper: Nesterov, for fine-tuning pretrained encoders) | "adamw"
    aux_weight: float = 1.0  # lambda of Eq. 3
    freeze_global: bool = False
    locations: str = "random"
    policy_std: float = 0.1


@dataclasses.dataclass(frozen=True)
class PolicyStage:
    """Stage II: the patch policy by PPO, everything else frozen (TRAINING_SPEC.md)."""

    epochs: int = 15
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    std: float = 0.1  # fixed std of the Gaussian around the actor's mean
    gamma: float = 0.7  # discount of the reward-to-go
    clip: float = 0.2  # PPO ratio clip
    value_weight: float = 0.5
    entropy_weight: float = 0.01
    update_epochs: int = 1  # 1 = the official code (ratio 1 at the update); > 1 = proper PPO


@dataclasses.dataclass(frozen=True)
class ScalingSettings:
    """Ray Train workers. `cpus_per_worker` None: sized from the cluster so workers plus the
    data stages fit (see RAY_NOTES.md: over-asking CPUs deadlocks a small cluster)."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float | None = None


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Where the run lives. Re-running with the same `name` and `storage` resumes it."""

    name: str = "gfpipe-train"
    storage: str = "runs"  # local folder or s3://bucket/prefix
    output: str | None = None  # final checkpoint URI (default: STORAGE/NAME/model.pt)
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    keep_checkpoints: int = 2


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (see the module doc for how it is resolved)."""

    model: GFNetConfig = GFNetConfig(encoder_heads=True)
    init: InitConfig = InitConfig()
    preprocessing: Preprocessing = Preprocessing()
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    batch_size: int = 256  # global: divided among the workers
    stage0: SupervisedStage = SupervisedStage(epochs=0, locations="random")
    stage1: SupervisedStage = SupervisedStage(epochs=60)
    stage2: PolicyStage = PolicyStage()
    stage3: SupervisedStage = SupervisedStage(epochs=60, classifier_lr=0.01, locations="policy")
    seed: int = 0
    bf16: bool = True  # autocast on CUDA (ignored on CPU)
    channels_last: bool = True  # on CUDA (ignored on CPU)
    log_every: int = 50  # batches between progress lines within an epoch
    scaling: ScalingSettings = ScalingSettings()
    run: RunSettings = RunSettings()

    def check(self) -> TrainConfig:
        """Values that no dataclass can check alone; returns self."""
        if not self.data.train or not self.data.val:
            raise ConfigError("data.train and data.val are required (URIs of labelled images)")
        if self.batch_size < self.scaling.num_workers:
            raise ConfigError(
                f"batch_size {self.batch_size} is below num_workers {self.scaling.num_workers}: "
                "each worker needs at least one image per batch"
            )
        if not self.model.encoder_heads:
            raise ConfigError("model.encoder_heads must be true for training (the auxiliary loss of Eq. 3)")
        for name in ("stage0", "stage1", "stage3"):
            stage = getattr(self, name)
            if stage.locations not in ("random", "policy"):
                raise ConfigError(f"{name}.locations must be 'random' or 'policy', got {stage.locations!r}")
            if stage.optimizer not in ("sgd", "adamw"):
                raise ConfigError(f"{name}.optimizer must be 'sgd' or 'adamw', got {stage.optimizer!r}")
        if self.stage0.epochs and self.stage0.freeze_global:
            raise ConfigError("stage0 trains the global encoder; it cannot also freeze it")
        for name in ("stage0", "stage1", "stage2", "stage3"):
            if getattr(self, name).epochs < 0:
                raise ConfigError(f"{name}.epochs must be >= 0")
        if self.scaling.num_workers < 1:
            raise ConfigError("scaling.num_workers must be >= 1")
        return self


# Per-family recipe overrides (TRAINING_SPEC.md), keyed by backbone-name prefix (`family_of`).
# The dataclass defaults are ResNet's recipe: lambda 1, encoder LR 0.01, classifier LR 0.1 (0.01
# in stage III), weight decay 1e-4, 60 epochs in stages I and III, 15 in stage II. Dropout and
# drop-connect are architecture defaults (`gfpipe.model.gfnet._FAMILY_DEFAULTS`: MobileNet-V3
# 0.2 / 0.2, EfficientNet 0.3 / 0.2, none elsewhere), resolved when the model is built.
# Stage 0 (f_G fine-tuned at glance size; no official script) uses the family's encoder LR and
# weight decay. `tiny` follows ResNet's recipe.
_BILINEAR_GLANCE = {"model": {"glance_interpolation": "bilinear"}}  # as inference.py evaluates DenseNet/RegNet
_FROZEN_GLOBAL = {"encoder_lr": 0.005, "aux_weight": 5.0, "freeze_global": True}
FAMILY_PRESETS: dict[str, dict[str, Any]] = {
    "resnet": {},
    "densenet": {**_BILINEAR_GLANCE},
    "regnety": {
        **_BILINEAR_GLANCE,
        "stage0": {"encoder_lr": 0.02, "weight_decay": 5e-5},
        "stage1": {"encoder_lr": 0.02, "weight_decay": 5e-5},
        "stage3": {"encoder_lr": 0.02, "weight_decay": 5e-5},
    },
    "mobilenetv3": {
        "stage0": {"encoder_lr": 0.005},
        "stage1": {"epochs": 90, **_FROZEN_GLOBAL},
        "stage3": {"epochs": 90, **_FROZEN_GLOBAL},
    },
    # As MobileNet-V3 with 30 epochs; the paper skips stage III for EfficientNet (set
    # stage3.epochs to run it with the same recipe).
    "efficientnet": {
        "stage0": {"encoder_lr": 0.005},
        "stage1": {"epochs": 30, **_FROZEN_GLOBAL},
        "stage3": {"epochs": 0, **_FROZEN_GLOBAL},
    },
    "tiny": {},
}


def family_of(backbone: str) -> str:
    """The recipe family (a `FAMILY_PRESETS` key) of a registered backbone: the longest key its
    name starts with. An unknown backbone, or one without a recipe, is a ConfigError."""
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; known backbones: {', '.join(sorted(BACKBONES))}")
    families = [f for f in FAMILY_PRESETS if backbone.startswith(f)]
    if not families:
        raise ConfigError(
            f"backbone {backbone!r} has no training recipe; families with one: {', '.join(sorted(FAMILY_PRESETS))}"
        )
    return max(families, key=len)


def resolve_config(overrides: Mapping[str, Any] | None = None, sets: Sequence[str] = ()) -> TrainConfig:
    """The run's TrainConfig from YAML-style overrides and `key.path=value` strings."""
    data = copy.deepcopy(dict(overrides or {}))
    for item in sets:
        _apply_set(data, item)
    section = data.get("model") or {}
    backbone = section.get("backbone", GFNetConfig().backbone) if isinstance(section, Mapping) else "tiny"
    preset = copy.deepcopy(FAMILY_PRESETS[family_of(str(backbone))])
    merged = _deep_merge(preset, data)
    model = merged.setdefault("model", {})
    model.setdefault("encoder_heads", True)
    return from_dict(TrainConfig, merged)


def load_config(path: str | None, sets: Sequence[str] = ()) -> TrainConfig:
    """`resolve_config` from a YAML file of overrides (or none) plus `--set` strings. `path` is a
    local file, or a config's name (`find_config`: "densenet121" is configs/densenet121.yaml)."""
    overrides: dict[str, Any] = {}
    if path:
        path = find_config(path)
        try:
            with open(path, encoding="utf-8") as fh:
                overrides = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(overrides, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys, got {type(overrides).__name__}")
    return resolve_config(overrides, sets)


def config_dirs() -> list[Path]:
    """Where a config given by name is looked for: ./configs, then the configs/ folder of the
    source checkout gfpipe runs from (a folder beside the package with a pyproject.toml)."""
    dirs = [Path.cwd().resolve() / "configs"]
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and checkout / "configs" != dirs[0]:
        dirs.append(checkout / "configs")
    return dirs


def find_config(value: str) -> str:
    """A `--config` value as a file: a path (with a folder, a .yaml/.yml suffix, or an existing
    file) as given; a bare name as NAME.yaml in the first of `config_dirs()` that has it."""
    if "/" in value or os.sep in value or value.endswith((".yaml", ".yml")) or os.path.isfile(value):
        return value
    dirs = config_dirs()
    for folder in dirs:
        if (folder / f"{value}.yaml").is_file():
            return str(folder / f"{value}.yaml")
    names = sorted({f.stem for folder in dirs if folder.is_dir() for f in folder.glob("*.yaml")})
    raise ConfigError(
        f"no config named {value!r} in {' or '.join(map(str, dirs))}; "
        f"named configs: {', '.join(names) or 'none'} (or give the path of a YAML file)"
    )


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """The resolved configuration as plain data, for checkpoints and logs."""
    return to_dict(config)


def _apply_set(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. stage1.epochs=3")
    path, text = item.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {item!r}: the key is empty")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {key} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base
