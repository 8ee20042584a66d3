"""Frozen-dataclass configuration with strict loading from dicts and YAML.

The dataclasses hold the defaults; YAML files and checkpoint metadata hold only overrides.
A key that the dataclass does not know is an error that names the key and the known ones, so
a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message says which and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input: resize the shorter side, centre-crop, normalise.

    `resize` is the shorter-side size before the crop (ImageNet: 256 for a 224 crop).
    `interpolation` is a Pillow filter name: nearest, bilinear, bicubic, lanczos.
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.resize < self.crop:
            raise ConfigError(f"preprocessing needs 0 < crop <= resize, got crop={self.crop} resize={self.resize}")
        if self.interpolation not in ("nearest", "bilinear", "bicubic", "lanczos"):
            raise ConfigError(
                f"preprocessing.interpolation {self.interpolation!r} is not one of nearest, bilinear, bicubic, lanczos"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("preprocessing.mean and .std need 3 values each, std > 0")


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain dicts/lists, safe for YAML, JSON and weights-only torch files."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "", base: T | None = None) -> T:
    """Build dataclass `cls` from `data`, refusing unknown keys and converting nested values.

    Fields missing from `data` keep `base`'s values (default: the class defaults). A nested
    dataclass field is merged the same way into its own default, so an override of one key in
    a section never resets the section's other defaults.
    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {', '.join(prefix + k for k in unknown)}; known keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        current = getattr(base, name) if base is not None else fields[name].default
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            kwargs[name] = from_dict(type(current), value, key, base=current)
        else:
            kwargs[name] = _convert(hints[name], value, key)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(non_none[0], value, key) if len(non_none) == 1 else value
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_convert(item, v, key) for v in value)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(args[0] if args else Any, v, key) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def load_yaml(path: str, cls: type[T]) -> T:
    """Load overrides for dataclass `cls` from a local YAML file (strict keys)."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    return from_dict(cls, data, where="")
