"""The one config loader: plain dicts (a JSON checkpoint's sections, a YAML recipe) to config
dataclasses, every key and value checked against the field types and refused by name in one
line; ranges are each dataclass's own `__post_init__`."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from typing import Any, Iterable, Literal, TypeVar, Union

from vocoder.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound="DictConfig")


class FieldError(ConfigError):
    """A field's value is out of range; raised by a dataclass's `__post_init__` so that the
    loader can name the field by its full dotted key (`train.max_steps`)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key} {problem}")
        self.key, self.problem = key, problem


def check_ranges(config: Any, positive: Iterable[str] = (), non_negative: Iterable[str] = ()) -> None:
    """Raise a `FieldError` for the first named field that is not > 0 (`positive`) or >= 0."""
    for name in positive:
        if getattr(config, name) <= 0:
            raise FieldError(name, f"must be positive, got {getattr(config, name)}")
    for name in non_negative:
        if getattr(config, name) < 0:
            raise FieldError(name, f"must not be negative, got {getattr(config, name)}")


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _unknown_key(key: str, known: Iterable[str], where: str) -> ConfigError:
    known = list(known)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"unknown config key {_key(where, key)!r}{hint}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Field name to resolved annotation (class variables such as labels left out)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _value(value: Any, hint: Any, name: str, yaml_forms: bool) -> Any:
    """`value` checked against the annotation `hint`; `yaml_forms` also accepts what YAML
    makes of a hand-written recipe: `1e-4` (a string to YAML 1.1) for a float, a number for
    a string, and an empty section."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _value(value, option, name, yaml_forms)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin is Literal:
        choices = typing.get_args(hint)
        # `type(...) is` as well as `==`: True must not pass for 1, nor 1 for 1.0.
        if not any(value == choice and type(value) is type(choice) for choice in choices):
            raise ConfigError(f"config key {name!r} must be one of {list(choices)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {name!r} must be a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_value(v, item, f"{name}[{i}]", yaml_forms) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return load(hint, value, name, yaml_forms=yaml_forms)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {name!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        # bool is an int to Python, and 12.5 must not become 12.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {name!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if yaml_forms and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {name!r} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if yaml_forms and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {name!r} must be a string, got {value!r}")
    raise TypeError(f"config key {name!r}: the loader does not handle the type {hint!r}")  # a bug, not input


def load(cls: type[Any], data: Any, where: str = "", *, yaml_forms: bool = False) -> Any:
    """The dataclass `cls` from the mapping `data` (fields left out take their defaults).

    `where` is the dotted key of `data` in its document (`model`, `train`), so every error
    names the full key. Unknown keys, values of the wrong type and the dataclass's own range
    checks all fail as one `ConfigError` line. `yaml_forms`: see `_value`.
    """
    if data is None and yaml_forms:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where or 'top level'!r} must be a mapping, got {data!r}")
    hints = _hints(cls)
    for key in data:
        if key not in hints:
            raise _unknown_key(str(key), hints, where)
    values = {key: _value(value, hints[key], _key(where, key), yaml_forms) for key, value in data.items()}
    try:
        return cls(**values)
    except FieldError as error:
        raise ConfigError(f"config key {_key(where, error.key)!r} {error.problem}") from None
    except ValueError as error:
        raise ConfigError(f"{where}: {error}" if where else str(error)) from None


class DictConfig:
    """Mixin for config dataclasses: `to_dict` for JSON and YAML, `from_dict` through `load`."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[ConfigT], data: Any, where: str = "", *, yaml_forms: bool = False) -> ConfigT:
        return load(cls, data, where, yaml_forms=yaml_forms)
