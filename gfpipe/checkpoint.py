"""One self-describing checkpoint file per model, plus import of official GFNet-Pytorch files.

gfpipe's format is a dict saved with `torch.save` that holds only tensors, strings, numbers,
lists and dicts, so it loads with `torch.load(weights_only=True)`: no pickled code ever runs.
It carries everything the nightly job needs: architecture, class names, preprocessing, weights,
per-step costs, calibration confidences (for the budget solver) and provenance.

Official files (`model_state_dict`, `model_prime_state_dict`, `fc`, `policy`, ...; see
shared/reference/official_gfnet/README.md) load through the same `load_checkpoint`. Files
written by the official training script carry no metadata; pass `arch`, `patch_size` and `T`.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import torch
from torch import Tensor

from gfpipe.budget.costs import step_costs
from gfpipe.config import ConfigError, Preprocessing, from_dict, to_dict
from gfpipe.model.gfnet import GFNet, GFNetConfig, ModelCard

log = logging.getLogger(__name__)

FORMAT = "gfpipe-checkpoint"
FORMAT_VERSION = 1
OFFICIAL_KEYS = ("model_state_dict", "model_prime_state_dict", "fc", "policy")
OFFICIAL_ARCHS = (
    "resnet50",
    "mobilenetv3_large_100",
    "densenet121",
    "densenet169",
    "densenet201",
    "regnety_600m",
    "regnety_800m",
    "regnety_1.6g",
    "mobilenetv3_large_125",
    "efficientnet_b2",
    "efficientnet_b3",
)
IMAGENET_PREPROCESSING = Preprocessing(resize=256, crop=224, interpolation="bilinear")
# Archs whose official inference.py input differs from IMAGENET_PREPROCESSING: S = image_size,
# resize the shorter side to int(S / crop_pct), bicubic, centre-crop S. The official train.py
# trains and validates these on 224 crops (Resize(256), bilinear) instead; gfpipe follows
# inference.py, which made the published results, for imported files.
OFFICIAL_PREPROCESSING = {
    "efficientnet_b2": Preprocessing(resize=297, crop=260, interpolation="bicubic"),  # crop_pct 0.875
    "efficientnet_b3": Preprocessing(resize=331, crop=300, interpolation="bicubic"),  # crop_pct 0.904
}
BUILTIN = {"demo": "assets/demo.pt"}
"""Models that ship with gfpipe, by name: the demo GFNet (configs/demo.yaml, BENCHMARKS.md)."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message says which part is wrong and what to do."""


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_checkpoint(
    model: GFNet,
    dest: str | os.PathLike | BinaryIO,
    provenance: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write `model` (weights + its card) to a local path, an fsspec URI or a binary file object.

    Local files are written to a temporary name and renamed, remote ones uploaded in one piece,
    so a crash never leaves a half-written checkpoint under the final name.
    """
    card = model.card
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": to_dict(model.config),
        "class_names": list(card.class_names),
        "preprocessing": to_dict(card.preprocessing),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "step_costs": step_costs(model),
        "calibration": _cpu(card.calibration),
        "provenance": {
            **card.provenance,
            **(provenance or {}),
            "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch_version": str(torch.__version__),
        },
    }
    if not isinstance(dest, (str, os.PathLike)):
        torch.save(payload, dest)
        return
    path = os.fspath(dest)
    if path.startswith("file://"):
        path = path[len("file://") :]
    if "://" in path:
        from gfpipe.data.io import open_file  # storage only when a remote URI is asked for

        buffer = io.BytesIO()
        torch.save(payload, buffer)
        with open_file(path, "wb", storage_options) as fh:
            fh.write(buffer.getvalue())
        return
    tmp = f"{path}.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_cpu(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_checkpoint(
    source: str | os.PathLike | BinaryIO | bytes,
    *,
    device: torch.device | str = "cpu",
    storage_options: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> GFNet:
    """Load a gfpipe or official GFNet checkpoint into an eval-mode `GFNet` on `device`.

    `source` is a local path, a `file://` or other fsspec URI (e.g. `s3://bucket/model.pt`, with
    `storage_options` such as `endpoint_url`), a binary file object, raw bytes, or the name of a
    model that ships with gfpipe (`BUILTIN`: "demo"), unless a file of that name exists. `overrides`
    supply what official files lack: `arch`, `patch_size`, `T`, `class_names` (a list or a path
    to a text file with one name per line); for gfpipe files only `class_names` may be given.
    """
    raw = _read(source, storage_options)
    name = source if isinstance(source, (str, os.PathLike)) else "checkpoint"
    if isinstance(raw, dict) and all(k in raw for k in OFFICIAL_KEYS):
        model = _import_official(raw, name, **overrides)
    elif isinstance(raw, dict) and raw.get("format") == FORMAT:
        model = _load_gfpipe(raw, name, **overrides)
    else:
        keys = sorted(map(str, raw))[:12] if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{name} is neither a gfpipe checkpoint (format {FORMAT!r}) nor an official GFNet "
            f"checkpoint (keys {', '.join(OFFICIAL_KEYS)}); it holds: {keys}"
        )
    return model.to(device).eval()


def builtin_path(name: str) -> str | None:
    """The packaged file of a built-in model name ("demo"), or None for any other name."""
    if name not in BUILTIN:
        return None
    from importlib import resources

    return str(resources.files("gfpipe").joinpath(BUILTIN[name]))


def _read(source: Any, storage_options: Mapping[str, Any] | None) -> Any:
    if isinstance(source, str) and source in BUILTIN and not os.path.exists(source):
        source = builtin_path(source)
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if path.startswith("file://"):
            path = path[len("file://") :]
        if "://" in path:
            # Remote URIs go through the storage layer; imported here so the model core stays
            # free of fsspec unless a remote checkpoint is actually asked for.
            from gfpipe.data.io import open_file

            with open_file(path, "rb", storage_options) as fh:
                source = io.BytesIO(fh.read())
        else:
            if not os.path.isfile(path):
                raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
            source = path
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for garbage; all mean "not loadable"
        name = source if isinstance(source, str) else "checkpoint"
        raise CheckpointError(
            f"{name} could not be read as a weights-only torch checkpoint ({_reason(exc)}); "
            "is it truncated, another file type, or a file that needs pickled code to load?"
        ) from None


def _reason(exc: Exception) -> str:
    """The informative line of torch's (often long) load error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    specific = [line for line in lines if "Unsupported global" in line]
    text = (specific or lines or [""])[0]
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _load_gfpipe(raw: dict, name: Any, class_names: Any = None, **overrides: Any) -> GFNet:
    if overrides:
        raise CheckpointError(
            f"{name} is a gfpipe checkpoint, which describes its own architecture; unexpected "
            f"overrides {sorted(overrides)} (only class_names may be given)"
        )
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{name} has format version {version!r}; this gfpipe reads version {FORMAT_VERSION}. "
            "Re-save it with a matching gfpipe version."
        )
    for key in ("arch", "class_names", "preprocessing", "state_dict"):
        if key not in raw:
            raise CheckpointError(f"{name} is missing the {key!r} entry of the gfpipe format")
    try:
        config = from_dict(GFNetConfig, raw["arch"], "arch")
        card = ModelCard(
            class_names=tuple(_class_names(class_names) if class_names is not None else raw["class_names"]),
            preprocessing=from_dict(Preprocessing, raw["preprocessing"], "preprocessing"),
            calibration=raw.get("calibration"),
            provenance=dict(raw.get("provenance") or {}),
        )
        model = GFNet(config, card)
    except ConfigError as exc:
        raise CheckpointError(f"{name}: {exc}") from None
    _load_state(model, raw["state_dict"], name)
    return model


def _load_state(model: GFNet, state: Mapping[str, Tensor], name: Any) -> None:
    """Strict load that names every missing, unexpected and mis-shaped tensor."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    misshaped = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(want[k].shape)})"
        for k in want
        if k in state and (not isinstance(state[k], Tensor) or state[k].shape != want[k].shape)
    ]
    problems = []
    for label, items in (
        ("missing tensors", missing),
        ("unexpected tensors", extra),
        ("mis-shaped tensors", misshaped),
    ):
        if items:
            shown = ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{name} does not match its architecture {model.config.backbone}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _class_names(value: Any) -> list[str]:
    if isinstance(value, (str, os.PathLike)):
        with open(value, encoding="utf-8") as fh:
            return [line.strip() for line in fh if line.strip()]
    return [str(v) for v in value]


# ---------------------------------------------------------------------------------------------
# Official GFNet-Pytorch files
# ---------------------------------------------------------------------------------------------


def _strip_module(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def _official_value(raw: dict, key: str, override: Any, what: str, name: Any) -> Any:
    value = raw.get(key)
    if value is not None and override is not None and value != override:
        raise CheckpointError(f"{name} says {what} is {value!r} but {override!r} was passed")
    result = override if override is not None else value
    if result is None:
        raise CheckpointError(
            f"{name} is an official GFNet checkpoint without metadata (written by the training "
            "script); give its arch, patch_size and T (--arch resnet50 --patch-size 96 --T 5 on the "
            "command line; load_checkpoint(path, arch='resnet50', patch_size=96, T=5) in Python)"
        )
    return result


def _import_official(
    raw: dict,
    name: Any,
    arch: str | None = None,
    patch_size: int | None = None,
    T: int | None = None,
    class_names: Sequence[str] | str | None = None,
) -> GFNet:
    arch = _official_value(raw, "model_name", arch, "arch", name)
    if arch not in OFFICIAL_ARCHS:
        raise CheckpointError(
            f"{name}: official arch {arch!r} is not supported; supported: {', '.join(OFFICIAL_ARCHS)}"
        )
    patch_size = int(_official_value(raw, "patch_size", patch_size, "patch_size", name))
    flops = raw.get("flops")
    T = int(_official_value({"T": len(flops)} if flops else {}, "T", T, "T", name))
    prime = _strip_module(raw["model_prime_state_dict"])
    local = _strip_module(raw["model_state_dict"])
    fc, policy = dict(raw["fc"]), dict(raw["policy"])
    cascade = arch.startswith(("mobilenet", "efficientnet"))
    head = "classifier" if cascade else "fc"
    try:
        num_classes = prime[f"{head}.weight"].shape[0] if cascade else fc["fc.weight"].shape[0]
        policy_hidden = policy["gru.weight_hh_l0"].shape[1]
        classifier_hidden = 0 if cascade else fc["rnn.weight_hh_l0"].shape[1]
    except KeyError as exc:
        raise CheckpointError(f"{name}: official checkpoint lacks tensor {exc.args[0]}") from None
    if cascade and T > 5:
        raise CheckpointError(f"{name}: the official cascade classifier has fc_2..fc_5, so T <= 5; got T={T}")
    names = _class_names(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    preprocessing = OFFICIAL_PREPROCESSING.get(arch, IMAGENET_PREPROCESSING)
    config = GFNetConfig(
        backbone=arch,
        num_classes=num_classes,
        input_size=preprocessing.crop,
        patch_size=patch_size,
        T=T,
        classifier_hidden=classifier_hidden or None,
        policy_hidden=policy_hidden,
        # The official inference.py's `prime_interpolation`: bilinear for DenseNet and RegNet,
        # bicubic for the rest. Its train.py glances bicubic for every family; gfpipe follows
        # inference.py for imported files (as it does for RegNet's step-1 logits, the family's
        # glance_logits="encoder_head" default).
        glance_interpolation="bilinear" if arch.startswith(("densenet", "regnety")) else "bicubic",
        encoder_heads=True,  # the files carry both encoders' heads: kept for fine-tuning (Eq. 3)
    )
    card = ModelCard(
        class_names=tuple(names),
        preprocessing=preprocessing,
        provenance={
            "source": "official GFNet-Pytorch checkpoint",
            "file": str(name),
            "official_flops": [float(f) for f in flops] if flops else None,
        },
    )
    try:
        model = GFNet(config, card)
    except ConfigError as exc:
        raise CheckpointError(f"{name}: {exc}") from None

    state: dict[str, Tensor] = {}
    for prefix, encoder in (("global_encoder", prime), ("local_encoder", local)):
        for k, v in encoder.items():
            state[f"{prefix}.{k}"] = v  # the encoder's own head included (training's aux term)
            if cascade and prefix == "global_encoder" and k.startswith(f"{head}."):
                # MobileNet's and EfficientNet's step-1 logits are the global encoder's own head.
                state[f"classifier.fc_1.{k.split('.', 1)[1]}"] = v
    for k, v in fc.items():
        step = k.split(".")[0].removeprefix("fc_")
        if cascade and step.isdigit() and int(step) > T:
            continue  # the official cascade always holds fc_2..fc_5; steps past T are unused
        state[f"classifier.{k}"] = v
    state.update({f"policy.{k}": v for k, v in policy.items()})
    _load_state(model, state, name)
    return model
