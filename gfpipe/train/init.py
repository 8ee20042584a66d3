"""Where a training run's weights start: a GFNet checkpoint, pretrained backbone files, or scratch.

The paper starts both encoders from ImageNet-pretrained weights (f_G fine-tuned at glance size
first). gfpipe takes, in `TrainConfig.init`:
- `checkpoint`: a gfpipe or official GFNet checkpoint, e.g. the paper's published ImageNet model,
  to fine-tune on another archive. Its architecture must be the run's; every tensor is loaded,
  except that classifier and head tensors whose class count differs are left at their fresh
  initialisation (a new label set).
- `encoders`: a backbone state dict (torchvision ResNet / timm MobileNet-V3 layout, `.pth`) for
  both encoders, and `global_encoder` to give f_G its own (e.g. fine-tuned at glance size).
  An ImageNet head of another class count is skipped the same way.
All are URIs (local or object storage). Loading is strict otherwise: a missing or mis-shaped
tensor is an error that names it, since a silently half-loaded encoder trains to a worse model.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from gfpipe.model.gfnet import GFNet

_HEAD_PREFIXES = ("fc.", "classifier.")


def initialise(model: GFNet, init: Any, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Load what `init` (a `gfpipe.train.config.InitConfig`) names into `model`; returns notes
    on what was loaded and skipped, for the run's provenance."""
    notes = []
    if init.checkpoint:
        from gfpipe.checkpoint import load_checkpoint

        source = load_checkpoint(init.checkpoint, storage_options=storage_options)
        if source.config.backbone != model.config.backbone:
            raise ValueError(
                f"init.checkpoint {init.checkpoint} is a {source.config.backbone} GFNet; this run trains "
                f"{model.config.backbone}; use a checkpoint of the same backbone or init.encoders"
            )
        skipped = _load_matching(model, source.state_dict(), f"init.checkpoint {init.checkpoint}")
        notes.append(f"all weights from {init.checkpoint}" + (f" except {', '.join(skipped)}" if skipped else ""))
    for name, uri in (("encoders", init.encoders), ("global_encoder", init.global_encoder)):
        if not uri:
            continue
        state = _read_state(uri, storage_options)
        targets = ["global_encoder", "local_encoder"] if name == "encoders" else ["global_encoder"]
        for target in targets:
            skipped = _load_backbone(getattr(model, target), state, f"init.{name} {uri}")
            notes.append(f"{target} from {uri}" + (f" (head skipped: {', '.join(skipped)})" if skipped else ""))
    return notes


def _read_state(uri: str, storage_options: Mapping[str, Any] | None) -> dict[str, Tensor]:
    from gfpipe.data.io import read_bytes

    raw = torch.load(io.BytesIO(read_bytes(uri, storage_options)), map_location="cpu", weights_only=True)
    if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ValueError(f"{uri} is not a backbone state dict (a mapping of tensor names to tensors)")
    return {k.removeprefix("module."): v for k, v in raw.items()}


def _load_backbone(encoder: nn.Module, state: Mapping[str, Tensor], what: str) -> list[str]:
    want = encoder.state_dict()
    heads = [k for k in state if k.startswith(_HEAD_PREFIXES)]
    skipped = [k for k in heads if k not in want or want[k].shape != state[k].shape]
    body = {k: v for k, v in state.items() if k not in skipped}
    _check(want, body, what, ignore_missing=_HEAD_PREFIXES)
    encoder.load_state_dict({**want, **body})
    return skipped


def _load_matching(model: GFNet, state: Mapping[str, Tensor], what: str) -> list[str]:
    """All of `state`, except class-count-dependent tensors (heads, classifier) of another shape."""
    want = model.state_dict()
    skipped = [k for k, v in state.items() if k in want and want[k].shape != v.shape and _class_dependent(k)]
    body = {k: v for k, v in state.items() if k not in skipped}
    encoder_heads = tuple(f"{e}.{h}" for e in ("global_encoder", "local_encoder") for h in _HEAD_PREFIXES)
    _check(want, body, what, ignore_missing=tuple(skipped) + encoder_heads)
    model.load_state_dict({**want, **body})
    return skipped


def _class_dependent(key: str) -> bool:
    return key.startswith("classifier.") or any(f".{p}" in key for p in _HEAD_PREFIXES)


def _check(want: Mapping[str, Tensor], state: Mapping[str, Tensor], what: str, ignore_missing: tuple[str, ...]) -> None:
    missing = [k for k in want if k not in state and not _under(k, ignore_missing)]
    extra = [k for k in state if k not in want]
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(want[k].shape)}"
        for k in state
        if k in want and state[k].shape != want[k].shape
    ]
    problems = [
        f"{label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
        for label, items in (("missing", missing), ("unexpected", extra), ("mis-shaped", misshaped))
        if items
    ]
    if problems:
        raise ValueError(f"{what} does not fit this model ({'; '.join(problems)}); check the backbone and its layout")


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return key.startswith(prefixes)
