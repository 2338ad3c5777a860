"""Frozen config dataclasses loaded from dicts or YAML, rejecting unknown keys.

Every knob a user sets lives in a frozen dataclass with a documented default. Loading checks the keys against
the dataclass's fields, so a typo is an error that names it instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build the dataclass `cls` from `data`; unknown keys raise ValueError naming them and the valid ones, and
    a value of the wrong type (a string for an int, a scalar for a nested config) raises ValueError naming it."""
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _typed(hints.get(name, Any), value, f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)  # type: ignore[call-arg]


def _typed(hint: Any, value: Any, where: str) -> Any:
    """`value` checked against the type hint `hint` (nested dataclasses built, lists read as tuples);
    hints this does not know (Any, arrays, ...) accept anything and leave the check to the dataclass."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return from_dict(hint, value, where=where)
    elif origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _typed(arm, value, where)
            except ValueError:
                continue
    elif hint is type(None):
        if value is None:
            return value
    elif origin is tuple or hint is tuple:
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_typed(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
            if not args:
                return tuple(value)
            if len(args) == len(value):
                return tuple(_typed(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    elif origin is typing.Literal:
        if value in args:
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint in (str, dict, list):
        if isinstance(value, hint):
            return value
    elif origin in (dict, list):
        if isinstance(value, origin):
            return value
    else:
        return value
    raise ValueError(f"{where}: expected {_name(hint)}, got {value!r}")


def _name(hint: Any) -> str:
    """How an error names the expected type, in YAML's words (a tuple is written as a list)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields"
    if origin is tuple or hint is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_name(args[0])}"
        return f"a list [{', '.join(_name(a) for a in args)}]" if args else "a list"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_name(a) for a in args)
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`--set key=value` pairs as a nested mapping for `from_dict` / `load_yaml`. Values are YAML scalars (0.5,
    10, true, [1, 2], {a: 1}); a dotted key reaches into a nested config: `model_cfg.eta.n_bits=32`."""
    out: dict[str, Any] = {}
    for p in pairs or []:
        key, sep, text = p.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {p!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {p!r}: cannot read the value as YAML ({str(e).splitlines()[0]})") from None
        *parents, last = key.strip().split(".")
        at = out
        for name in parents:
            if not isinstance(at.setdefault(name, {}), dict):
                raise ValueError(f"--set {p!r}: {name!r} was already set to a value, not a mapping")
            at = at[name]
        at[last] = merge(at[last], value) if isinstance(at.get(last), dict) and isinstance(value, dict) else value
    return out


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied; nested mappings merge key by key (so `model_cfg.dim` keeps the rest of
    `model_cfg`), anything else is replaced."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Load a YAML file into `cls` (see `from_dict`), with `overrides` (e.g. from `--set`) merged on top."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    with path.open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return from_dict(cls, merge(data, overrides or {}), where=str(path))


def to_dict(obj: Any) -> dict[str, Any]:
    """The resolved config as plain data (tuples become lists), for manifests and checkpoints."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}
