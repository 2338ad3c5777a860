"""Frozen config dataclasses loaded from dicts or YAML, rejecting unknown keys.

Every knob a user sets lives in a frozen dataclass with a documented default. Loading checks the keys against
the dataclass's fields, so a typo is an error that names it instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build the dataclass `cls` from `data`; unknown keys raise ValueError naming them and the valid ones."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, where=f"{where}.{name}")
        elif isinstance(value, list) and _is_tuple_hint(hint):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)  # type: ignore[call-arg]


def _is_tuple_hint(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Load a YAML file into `cls` (see `from_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return from_dict(cls, data, where=str(path))


def to_dict(obj: Any) -> dict[str, Any]:
    """The resolved config as plain data (tuples become lists), for manifests and checkpoints."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}
