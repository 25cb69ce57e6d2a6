"""Config dataclasses to and from plain dicts, the form they take in JSON checkpoints
and YAML recipes; unknown keys and values of the wrong type are refused by name rather
than silently dropped or carried into a model."""
from __future__ import annotations

import types
import typing
from dataclasses import asdict, fields
from typing import Any, ClassVar, Literal, TypeVar, Union

ConfigT = TypeVar("ConfigT", bound="DictConfig")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's type; types other than scalars, unions and
    literals are left to the dataclass's own checks."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        # JSON has no int/bool split in Python: True is an int, and 12.5 must not become 12.
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


class DictConfig:
    """Mixin for frozen config dataclasses; `config_label` names the config in errors."""

    config_label: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.config_label} config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.config_label} config keys {unknown}; expected a subset of {sorted(known)}")
        hints = typing.get_type_hints(cls)
        for name, value in data.items():
            if not _fits(value, hints[name]):
                hint = hints[name]
                expected = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
                raise TypeError(f"{cls.config_label} config key {name!r} must be {expected}, got {value!r}")
        return cls(**data)
