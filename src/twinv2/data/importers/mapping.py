"""Import any CSV/TSV/Parquet log through a YAML column mapping (`twinv2 import --mapping FILE`).

The mapping names the log file(s), which of their columns are the user, item, time, play time, duration and
label, the extra features to keep, and the split rule. Paths are relative to the YAML file's folder (or
absolute). Unknown keys anywhere are an error naming them. Example (see examples/kuairand27k.yaml)::

    name: my-log                      # dataset name (default: the YAML file's stem)
    inputs: [logs/day1.csv, logs/day2.parquet]   # one or more files with the same columns
    sep: null                         # CSV separator; default tab for .tsv/.tab, comma otherwise
    columns:
      user: uid
      item: photo_id
      time: event_time
      time_unit: datetime             # ms | s | datetime (ISO strings; naive = UTC, offsets honoured)
      label: clicked                  # 0/1 on every row
      play: watch_ms                  # optional; blank = unknown play time (-1)
      duration: video_ms              # optional; blank or 0 = unknown duration (ratio NaN, row kept)
      duration_unit: ms               # ms | s, for play and duration
    cross_features: [liked, page]     # numeric, stored on behaviours (float32)
    sample_features: [page]           # numeric, stored on samples: only what is known at request time
    user_features: [age_bucket]       # numeric, per user from the log: the value on the user's latest valid row
    split:
      last_days: 5                    # samples = every row in the last 5 days of the log
      day_offset_hours: 8             # day boundaries at midnight UTC+8
      history: "label == 1"           # behaviours = rows with label 1 at any time; or "all", or "<col> == <int>"
    items:                            # optional item features; without it every item is unknown (-1) and
      path: items.csv                 #   its duration is the median positive duration observed in the log
      item: photo_id
      author: author_id
      tag: tag                        # a list like "39,68" keeps the first tag
      duration: duration_s
      duration_unit: s
    users:                            # optional user features file (numeric columns)
      path: users.parquet
      user: uid
      features: [activity, age_bucket]
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from twinv2.config import from_dict
from twinv2.data.importers.core import (CORE, LogPart, SplitRule, build_dataset, require_numeric,
                                        to_epoch_ms)
from twinv2.data.importers.reading import read_items, read_table, read_users, scaled, unit_factor
from twinv2.schema import DataError


@dataclass(frozen=True)
class Columns:
    """Which log column is which stored column."""

    user: str
    item: str
    time: str
    label: str
    time_unit: str = "ms"
    play: str | None = None
    duration: str | None = None
    duration_unit: str = "ms"


@dataclass(frozen=True)
class Split:
    """The split rule (see core.SplitRule, kind "last_days")."""

    last_days: int = 5
    day_offset_hours: float = 0.0
    history: str = "label == 1"


@dataclass(frozen=True)
class ItemsFile:
    path: str
    item: str
    author: str | None = None
    tag: str | None = None
    duration: str | None = None
    duration_unit: str = "ms"
    sep: str | None = None


@dataclass(frozen=True)
class UsersFile:
    path: str
    user: str
    features: tuple[str, ...] = ()
    sep: str | None = None


@dataclass(frozen=True)
class Mapping:
    inputs: tuple[str, ...]
    columns: Columns
    name: str | None = None
    sep: str | None = None
    cross_features: tuple[str, ...] = ()
    sample_features: tuple[str, ...] = ()
    user_features: tuple[str, ...] = ()
    split: Split = field(default_factory=Split)
    items: ItemsFile | None = None
    users: UsersFile | None = None


def load_mapping(path: str | Path) -> Mapping:
    """Parse and check a mapping YAML; ValueError naming the file and the bad key or value."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mapping file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: malformed YAML ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level, got {type(data).__name__}")
    data = dict(data)
    if isinstance(data.get("inputs"), str):
        data["inputs"] = [data["inputs"]]
    unknown = sorted(set(data) - {f.name for f in fields(Mapping)})
    if unknown:  # before "required key missing": a misspelt 'colums' should be named as such
        raise ValueError(f"{path}: unknown key(s) {unknown}; valid keys are {sorted(f.name for f in fields(Mapping))}")
    for key in ("inputs", "columns"):
        if key not in data:
            raise ValueError(f"{path}: required key '{key}' missing")
    sections: dict[str, Any] = {}
    for key, cls in (("columns", Columns), ("split", Split), ("items", ItemsFile), ("users", UsersFile)):
        if key in data and data[key] is not None:
            if not isinstance(data[key], dict):
                raise ValueError(f"{path}: '{key}' must be a mapping, got {data[key]!r}")
            try:
                sections[key] = from_dict(cls, data.pop(key), where=f"{path}: {key}")
            except TypeError as e:  # a required key of the section is missing
                raise ValueError(f"{path}: section '{key}': {e}") from e
    m = from_dict(Mapping, {**data, **sections}, where=str(path))
    for key in ("inputs", "cross_features", "sample_features", "user_features"):
        v = getattr(m, key)
        if not isinstance(v, tuple) or not all(isinstance(x, str) for x in v):
            raise ValueError(f"{path}: '{key}' must be a list of column names, got {v!r}")
    if not m.inputs:
        raise ValueError(f"{path}: 'inputs' names no file")
    mapped = {m.columns.user, m.columns.item, m.columns.time, m.columns.label, m.columns.play, m.columns.duration}
    for f in (*m.cross_features, *m.sample_features, *m.user_features):
        if f in CORE and f not in mapped:
            raise ValueError(f"{path}: feature '{f}' has the name of a stored column {CORE}; rename it first")
        if f in mapped:
            raise ValueError(f"{path}: feature '{f}' is already mapped as a core column (user/item/time/...)")
    return m


def _resolve(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return (q if q.is_absolute() else base / q).resolve()


def _history_extra(m: Mapping) -> list[str]:
    """A history filter on a log column that is not the label must be read as a (numeric) feature."""
    rule = SplitRule(kind="last_days", last_days=m.split.last_days, day_offset_hours=m.split.day_offset_hours,
                     history=m.split.history)
    h = rule.history_column()
    if h is None or h[0] == "label":
        return []
    if h[0] in CORE:
        raise ValueError(f"split.history: column '{h[0]}' is a stored core column; filter on 'label' or a file column")
    return [h[0]]


def read_log_file(path: Path, m: Mapping) -> LogPart:
    """One log file renamed to stored names, times converted to ms, units applied."""
    c = m.columns
    extras = list(dict.fromkeys((*m.cross_features, *m.sample_features, *m.user_features, *_history_extra(m))))
    core = {"user_id": c.user, "item_id": c.item, "ts": c.time, "label": c.label,
            "play_ms": c.play, "duration_ms": c.duration}
    core = {k: v for k, v in core.items() if v}
    raw = read_table(path, [*core.values(), *extras], m.sep)
    numeric = [v for k, v in core.items() if k != "ts" or c.time_unit != "datetime"] + extras
    require_numeric(raw, list(dict.fromkeys(numeric)), str(path))
    factor = unit_factor(c.duration_unit, f"{path}: columns.duration_unit")
    df = pd.DataFrame({k: raw[v] for k, v in core.items()})
    df["ts"] = to_epoch_ms(raw[c.time], c.time_unit, str(path), c.time)
    for k in ("play_ms", "duration_ms"):
        if k in df and factor != 1.0:
            df[k] = scaled(df[k], factor)
    for e in extras:
        df[e] = raw[e]
    return LogPart(source=str(path), frame=df)


def import_mapped(mapping: str | Path, out: str | Path, n_shards: int = 4, overwrite: bool = False) -> Path:
    """Import the log(s) a mapping YAML describes into a dataset directory at `out`; returns its path.

    Rows in the last `split.last_days` days are samples, rows passing `split.history` are behaviours (see
    core.SplitRule); the manifest records per input file rows in / stored / quarantined / unused.
    """
    mapping = Path(mapping)
    m = load_mapping(mapping)
    base = mapping.resolve().parent
    rule = SplitRule(kind="last_days", last_days=m.split.last_days, day_offset_hours=m.split.day_offset_hours,
                     history=m.split.history)
    parts = [read_log_file(_resolve(base, p), m) for p in m.inputs]
    side_q: list[pd.DataFrame] = []
    side_in: list[dict] = []
    item_feats = user_feats = None
    if m.items is not None:
        ip = _resolve(base, m.items.path)
        item_feats, q, n = read_items(ip, m.items.item, m.items.author, m.items.tag, m.items.duration,
                                      m.items.duration_unit, m.items.sep)
        side_q.append(q)
        side_in.append({"file": str(ip), "role": "items", "rows_in": n, "rows_quarantined": len(q)})
    if m.users is not None and m.user_features:
        raise ValueError(f"{mapping}: give user features either in the log ('user_features') or in a "
                         f"'users' file, not both")
    if m.users is not None:
        up = _resolve(base, m.users.path)
        user_feats, q, n = read_users(up, m.users.user, list(m.users.features), m.users.sep)
        side_q.append(q)
        side_in.append({"file": str(up), "role": "users", "rows_in": n, "rows_quarantined": len(q)})
    return build_dataset(
        out, name=m.name or mapping.stem, source=f"mapping {mapping}", parts=parts, rule=rule,
        cross_features=list(m.cross_features), sample_features=list(m.sample_features), n_shards=n_shards,
        overwrite=overwrite, item_features=item_feats, user_features=user_feats, side_quarantine=side_q,
        side_inputs=side_in, log_features=_history_extra(m), users_from_log=list(m.user_features),
        extra_manifest={"mapping": {"file": str(mapping.resolve()), "columns": vars(m.columns)}},
    )

