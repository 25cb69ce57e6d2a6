"""Config dataclasses to and from plain dicts, the form they take in JSON checkpoints
and YAML recipes; unknown keys are refused by name rather than silently dropped."""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

ConfigT = TypeVar("ConfigT", bound="DictConfig")


class DictConfig:
    """Mixin for frozen config dataclasses; `config_label` names the config in errors."""

    config_label: ClassVar[str] = "config"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any]) -> ConfigT:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown {cls.config_label} config keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)
