"""Import any CSV/TSV/Parquet log through a YAML column mapping (`twinv2 import mapped --mapping FILE`).

The mapping names the log file(s), which of their columns are the user, item, time, play time, duration and
label (or how to derive them), the extra features to keep, and the split rule. Paths are relative to the YAML
file's folder (or absolute). Unknown keys anywhere are an error naming them, and so is every bad value.
Example (see examples/kuairand27k.yaml)::

    name: my-log                      # dataset name (default: the YAML file's stem)
    inputs: [logs/day1.csv.gz, logs/day2.parquet]   # one or more files with the same columns, each once
    sep: null                         # CSV separator (one character); default tab for .tsv/.tab, comma otherwise
    encoding: utf-8                   # text encoding of every CSV (e.g. latin-1)
    columns:
      user: uid                       # integer ids, read exactly (up to 2^63 - 1)
      item: photo_id
      time: event_time
      time_unit: datetime             # ms | s | us | datetime (ISO strings; naive = UTC, offsets honoured)
      time_range: [2000, 2100]        # sanity check on parsed times: years [first, last); widen for older logs
      label: clicked                  # a 0/1 (or true/false) column, or a rule:
                                      #   {column: rating, ge: 4}  (ge | gt | le | lt | eq: a number)
                                      #   {column: action, in: [click, like]}  (values compared as text)
                                      #   {const: 1}  (every row is a click)
      play: watch_ms                  # optional; blank = unknown play time (-1); or {const: 30000};
                                      #   or {ratio: watch_frac}: play = round(fraction * duration)
      duration: video_ms              # optional; blank or 0 = unknown duration (ratio NaN, row kept); or {const: ..}
      duration_unit: ms               # ms | s, for play, duration and their constants
    cross_features: [liked, page]     # numeric, stored on behaviours (float32)
    sample_features: [page]           # numeric, stored on samples: only what is known at request time
    user_features: [age_bucket]       # numeric, per user from the log: the value on the user's latest valid row
    categorical: [genre]              # text columns (features, items.author/tag, users.features) stored as codes
    multi_value_sep: "|"              # a categorical cell "Action|Comedy" is coded by its first value, "Action"
    max_quarantine_share: 0.5         # a file with more of its rows quarantined stops the import
    split:
      last_days: 5                    # samples = every row in the last 5 days of the log (1..366)
      day_offset_hours: 8             # day boundaries at midnight UTC+8
      history: "label == 1"           # behaviours = rows with label 1 at any time; or "all", or "<col> == <int>"
      min_day_share: 0.1              # the log's last day: the last day with >= 0.1 x the median rows per day
      outlier_gap_days: 7             # rows more than 7 days after that day are quarantined as outliers
      test_hours: 1                   # each evaluation day tests its last 1 hour (23:00-24:00); 1..24, more
                                      #   for a sparse log (12: the second half of each day)
    items:                            # optional item features; without it every item is unknown (-1) and
      path: items.csv                 #   its duration is the median positive duration observed in the log
      item: photo_id
      author: author_id
      tag: tag                        # a list like "39,68" keeps the first tag
      duration: duration_s
      duration_unit: s
    users:                            # optional user features file (numeric or categorical columns)
      path: users.parquet
      user: uid
      features: [activity, age_bucket]

Codes of categorical columns: 0, 1, ... in order of first appearance (items and users files first, then the
log files in order), one table per column name; the tables are in the manifest's `codes`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import yaml

from twinv2.config import from_dict
from twinv2.data.importers.core import SplitRule, build_dataset
from twinv2.data.importers.reading import (Coder, check_encoding, iter_table, read_items, read_users, scaled,
                                           unit_factor)
from twinv2.data.importers.validation import CORE, TIME_UNITS, Checks, LogPart, to_epoch_ms
from twinv2.schema import DataError


@dataclass(frozen=True)
class Columns:
    """Which log column is which stored column (label/play/duration may also be derived: see `Source`)."""

    user: str
    item: str
    time: str
    label: Any
    time_unit: str = "ms"
    time_range: tuple[int, int] = (2000, 2100)
    play: Any = None
    duration: Any = None
    duration_unit: str = "ms"


@dataclass(frozen=True)
class Split:
    """The split rule (see core.SplitRule, kind "last_days")."""

    last_days: int = 5
    day_offset_hours: float = 0.0
    history: str = "label == 1"
    min_day_share: float = 0.1
    outlier_gap_days: int = 7
    test_hours: int = 1


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
    encoding: str = "utf-8"
    cross_features: tuple[str, ...] = ()
    sample_features: tuple[str, ...] = ()
    user_features: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    multi_value_sep: str = "|"
    max_quarantine_share: float = 0.5
    split: Split = field(default_factory=Split)
    items: ItemsFile | None = None
    users: UsersFile | None = None


# ---- where label, play and duration come from ---------------------------------------------------------
RULE_OPS = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt, "eq": operator.eq}
FORMS = {"label": "a 0/1 column name, a rule {column: rating, ge: 4} (ge, gt, le, lt, eq) or {column: action, "
                  "in: [click, like]}, or {const: 1}",
         "play": "a column name, {const: <ms>} or {ratio: <watch fraction column>}",
         "duration": "a column name or {const: <ms>}"}


@dataclass(frozen=True)
class Source:
    """Where one stored column's values come from: a file `column`, a constant, a label rule (`op`, `arg`:
    1 where `column op arg` holds, else 0), or (play) a watch fraction of the duration (`ratio`)."""

    column: str | None = None
    const: float | None = None
    op: str | None = None
    arg: Any = None
    ratio: bool = False

    def describe(self) -> str:
        if self.const is not None:
            return f"constant {self.const:g}"
        if self.op:
            return f"1 where {self.column} {self.op} {self.arg!r}, else 0"
        return f"round({self.column} x duration)" if self.ratio else str(self.column)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def parse_source(key: str, v: Any, where: str) -> Source | None:
    """`columns.<key>` of a mapping as a Source; ValueError naming the key and the value otherwise."""
    bad = f"{where}: columns.{key} = {v!r} is not {FORMS[key]}"
    if v is None and key != "label":
        return None
    if isinstance(v, str):
        if not v.strip():
            raise ValueError(bad)
        return Source(column=v)
    if not isinstance(v, dict) or not v:
        raise ValueError(bad)
    keys = set(v)
    if keys == {"const"}:
        c = v["const"]
        if key == "label" and c not in (0, 1) or isinstance(c, bool) or not _is_number(c) or c < 0:
            raise ValueError(f"{where}: columns.{key}.const must be {'0 or 1' if key == 'label' else 'a number >= 0'}"
                             f", got {c!r}")
        return Source(const=float(c))
    if key == "play" and keys == {"ratio"}:
        if not isinstance(v["ratio"], str) or not v["ratio"].strip():
            raise ValueError(f"{where}: columns.play.ratio must name the watch fraction column, got {v['ratio']!r}")
        return Source(column=v["ratio"], ratio=True)
    if key == "label" and "column" in keys:
        ops = sorted(keys - {"column"})
        if not isinstance(v["column"], str) or not v["column"].strip():
            raise ValueError(f"{where}: columns.label.column must be a column name, got {v['column']!r}")
        if len(ops) != 1 or ops[0] not in (*RULE_OPS, "in"):
            raise ValueError(f"{where}: columns.label rule {v!r} needs 'column' and exactly one of "
                             f"{', '.join([*RULE_OPS, 'in'])}; got {ops}")
        op, arg = ops[0], v[ops[0]]
        if op == "in":
            if not isinstance(arg, list) or not arg or not all(isinstance(x, (str, int, float)) for x in arg):
                raise ValueError(f"{where}: columns.label.in must be a non-empty list of values, got {arg!r}")
        elif not _is_number(arg) and not (op == "eq" and isinstance(arg, str)):
            raise ValueError(f"{where}: columns.label.{op} must be a number, got {arg!r}")
        return Source(column=v["column"], op=op, arg=arg)
    unknown = sorted(keys - {"const", "ratio", "column", *RULE_OPS, "in"})
    raise ValueError(bad + (f" (unknown key(s) {unknown})" if unknown else ""))


def _text(s: pd.Series) -> pd.Series:
    return s.astype(str).str.strip()


def _as_text(x: Any) -> set[str]:
    """How a YAML value of a label rule may be written in a file: true -> true/True/TRUE, 4 -> 4/4.0."""
    if isinstance(x, bool):
        return {str(x).lower(), str(x), str(x).upper()}
    if isinstance(x, float) and x.is_integer():
        return {str(x), str(int(x))}
    if isinstance(x, int):
        return {str(x), f"{x}.0"}
    return {str(x).strip()}


def label_values(raw: pd.DataFrame, src: Source) -> pd.Series:
    """The label per row: 1/0 from the rule or constant; from a column its own values (true/false read as
    1/0), which validation requires to be 0/1. Blank cells stay blank (quarantined as missing); a cell a
    numeric rule cannot read keeps its text (quarantined as unparsable)."""
    if src.const is not None:
        return pd.Series(int(src.const), index=raw.index, dtype="Int64")
    s = raw[src.column]
    if pd.api.types.is_bool_dtype(s.dtype):
        return s.astype("Int64")
    blank = (s.isna() | (_text(s) == "")).to_numpy(dtype=bool)
    if src.op is None:
        if pd.api.types.is_numeric_dtype(s.dtype):
            return s
        low = _text(s).str.lower()
        tf = low.isin(["true", "false"]).to_numpy(dtype=bool)
        out = s.astype(object)
        out[tf] = (low[tf] == "true").astype(int).to_numpy()
        return out
    if src.op == "in" or isinstance(src.arg, str):
        values = {t for x in (src.arg if src.op == "in" else [src.arg]) for t in _as_text(x)}
        hit = _text(s).isin(values).to_numpy(dtype=bool)
        out = pd.Series(hit.astype(np.int64), index=raw.index).astype(object)
    else:
        num = pd.to_numeric(s, errors="coerce")
        hit = RULE_OPS[src.op](num, src.arg).to_numpy(dtype=bool)
        out = pd.Series(hit.astype(np.int64), index=raw.index).astype(object)
        unread = ~blank & num.isna().to_numpy(dtype=bool)
        out[unread] = s[unread].astype(str)
    out[blank] = None
    return out


def amount_values(raw: pd.DataFrame, src: Source, factor: float, duration: pd.Series | None) -> pd.Series:
    """Play time or duration in ms (Int64, blank = NA) from a column, a constant, or (play) a watch fraction
    times the duration: unknown where the duration is unknown (blank or 0)."""
    if src.const is not None:
        return pd.Series(int(round(src.const * factor)), index=raw.index, dtype="Int64")
    s = raw[src.column]
    if not src.ratio:
        return scaled(s, factor) if factor != 1.0 else s
    frac = pd.to_numeric(s, errors="coerce").astype("float64")
    dur = pd.to_numeric(duration, errors="coerce").astype("float64")
    play = (frac * dur).round().where(dur > 0).astype("Int64")
    unread = (frac.isna() & s.notna() & (_text(s) != "")).to_numpy(dtype=bool)
    if not unread.any():
        return play
    out = play.astype(object)
    out[unread] = s[unread].astype(str)
    return out


# ---- loading ------------------------------------------------------------------------------------------
def _resolve(base: Path, p: str) -> Path:
    q = Path(p).expanduser()
    return (q if q.is_absolute() else base / q).resolve()


def _check_sep(sep: str | None, where: str) -> None:
    if sep is not None and len(sep) != 1:
        raise ValueError(f"{where} must be one character (e.g. ',', ';', '\\t' for TAB), got {sep!r}")


def load_mapping(path: str | Path) -> Mapping:
    """Parse and check a mapping YAML; ValueError naming the file and the bad key or value."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mapping file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: malformed YAML ({e})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
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
    m = from_dict(Mapping, {**data, **sections}, where=f"{path}: mapping")
    for key in ("inputs", "cross_features", "sample_features", "user_features", "categorical"):
        v = getattr(m, key)
        if not isinstance(v, tuple) or not all(isinstance(x, str) for x in v):
            raise ValueError(f"{path}: '{key}' must be a list of column names, got {v!r}")
    if not m.inputs:
        raise ValueError(f"{path}: 'inputs' names no file")
    base = path.resolve().parent
    seen: dict[Path, str] = {}
    for p in m.inputs:
        r = _resolve(base, p)
        if r in seen:
            raise ValueError(f"{path}: inputs lists the file {r} twice ({seen[r]!r} and {p!r}); each file once")
        seen[r] = p
    _check_sep(m.sep, f"{path}: sep")
    for key in ("items", "users"):
        if getattr(m, key) is not None:
            _check_sep(getattr(m, key).sep, f"{path}: {key}.sep")
    check_encoding(m.encoding, f"{path}: encoding")
    c = m.columns
    if c.time_unit not in TIME_UNITS:
        raise ValueError(f"{path}: columns.time_unit {c.time_unit!r} is not one of {', '.join(TIME_UNITS)}")
    unit_factor(c.duration_unit, f"{path}: columns.duration_unit")
    srcs = sources(m, path)
    if srcs["play"] is not None and srcs["play"].ratio and srcs["duration"] is None:
        raise ValueError(f"{path}: columns.play = {c.play!r} derives play time from the duration, but "
                         f"columns.duration is not given (a column, or {{const: <ms>}})")
    if not isinstance(m.multi_value_sep, str) or not m.multi_value_sep:
        raise ValueError(f"{path}: multi_value_sep must be a non-empty string, got {m.multi_value_sep!r}")
    try:
        rule_of(m)
        checks_of(m)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    mapped = {c.user, c.item, c.time} | {s.column for s in srcs.values() if s is not None and s.column}
    for f in (*m.cross_features, *m.sample_features, *m.user_features):
        if f in CORE and f not in mapped:
            raise ValueError(f"{path}: feature '{f}' has the name of a stored column {CORE}; rename it first")
        if f in mapped:
            raise ValueError(f"{path}: feature '{f}' is already mapped as a core column (user/item/time/...)")
    codable = {*m.cross_features, *m.sample_features, *m.user_features}
    if m.items is not None:
        codable |= {x for x in (m.items.author, m.items.tag) if x}
    if m.users is not None:
        codable |= set(m.users.features)
    for col in m.categorical:
        if col not in codable:
            raise ValueError(f"{path}: categorical: '{col}' is not a feature column, items.author/items.tag or a "
                             f"users feature of this mapping (ids, times and labels cannot be categorical)")
    return m


def sources(m: Mapping, where: Path | str) -> dict[str, Source | None]:
    c = m.columns
    return {k: parse_source(k, getattr(c, k), str(where)) for k in ("label", "play", "duration")}


def rule_of(m: Mapping) -> SplitRule:
    s = m.split
    return SplitRule(kind="last_days", last_days=s.last_days, day_offset_hours=s.day_offset_hours,
                     history=s.history, min_day_share=s.min_day_share, outlier_gap_days=s.outlier_gap_days,
                     test_hours=s.test_hours)


def checks_of(m: Mapping, max_quarantine_share: float | None = None) -> Checks:
    c = m.columns
    label = parse_source("label", c.label, "")
    shown = {"user_id": c.user, "item_id": c.item, "ts": c.time, "label": label.column or "label"}
    for k in ("play", "duration"):
        v = getattr(c, k)
        if isinstance(v, str):
            shown[f"{k}_ms"] = v
    return Checks(time_range=c.time_range, time_unit=c.time_unit, shown=shown, label_rule=label.column is None or
                  label.op is not None,
                  max_quarantine_share=m.max_quarantine_share if max_quarantine_share is None else max_quarantine_share)


def _history_extra(m: Mapping) -> list[str]:
    """A history filter on a log column that is not the label must be read as a (numeric) feature."""
    h = rule_of(m).history_column()
    if h is None or h[0] == "label":
        return []
    if h[0] in CORE:
        raise ValueError(f"split.history: column '{h[0]}' is a stored core column; filter on 'label' or a file column")
    return [h[0]]


def log_chunks(path: Path, m: Mapping, coders: dict[str, Coder]) -> Iterator[pd.DataFrame]:
    """One log file in chunks, renamed to stored names: times in ms, label/play/duration derived, units
    applied, categorical columns coded."""
    c = m.columns
    srcs = sources(m, path)
    extras = list(dict.fromkeys((*m.cross_features, *m.sample_features, *m.user_features, *_history_extra(m))))
    needed = [c.user, c.item, c.time, *(s.column for s in srcs.values() if s is not None and s.column), *extras]
    text = [c.user, c.item, *([c.time] if c.time_unit == "datetime" else []),
            *([srcs["label"].column] if srcs["label"].column else []), *(e for e in extras if e in coders)]
    factor = unit_factor(c.duration_unit, f"{path}: columns.duration_unit")
    for raw in iter_table(path, needed, m.sep, text_columns=text, encoding=m.encoding):
        df = pd.DataFrame({"user_id": raw[c.user], "item_id": raw[c.item]})
        df["ts"] = to_epoch_ms(raw[c.time], c.time_unit)
        df["label"] = label_values(raw, srcs["label"])
        if srcs["duration"] is not None:
            df["duration_ms"] = amount_values(raw, srcs["duration"], factor, None)
        if srcs["play"] is not None:
            df["play_ms"] = amount_values(raw, srcs["play"], factor, df.get("duration_ms"))
        for e in extras:
            df[e] = coders[e].encode(raw[e], str(path)) if e in coders else raw[e]
        yield df


def import_mapped(mapping: str | Path, out: str | Path, n_shards: int = 4, overwrite: bool = False,
                  max_quarantine_share: float | None = None) -> Path:
    """Import the log(s) a mapping YAML describes into a dataset directory at `out`; returns its path.

    Rows in the last `split.last_days` days are samples, rows passing `split.history` are behaviours (see
    core.SplitRule); the manifest records per input file rows in / stored / quarantined / unused.
    `max_quarantine_share` overrides the mapping's.
    """
    mapping = Path(mapping)
    m = load_mapping(mapping)
    base = mapping.resolve().parent
    try:
        checks = checks_of(m, max_quarantine_share)
    except ValueError as e:
        raise ValueError(f"{mapping}: {e}") from None
    coders = {col: Coder(col, m.multi_value_sep) for col in m.categorical}
    side_q: list[pd.DataFrame] = []
    side_in: list[dict] = []
    item_feats = user_feats = None
    if m.items is not None:
        ip = _resolve(base, m.items.path)
        item_feats, q, n = read_items(ip, m.items.item, m.items.author, m.items.tag, m.items.duration,
                                      m.items.duration_unit, m.items.sep, coders=coders, encoding=m.encoding)
        side_q.append(q)
        side_in.append({"file": str(ip), "role": "items", "rows_in": n, "rows_quarantined": len(q)})
    if m.users is not None and m.user_features:
        raise ValueError(f"{mapping}: give user features either in the log ('user_features') or in a "
                         f"'users' file, not both")
    if m.users is not None:
        up = _resolve(base, m.users.path)
        user_feats, q, n = read_users(up, m.users.user, list(m.users.features), m.users.sep, coders=coders,
                                      encoding=m.encoding)
        side_q.append(q)
        side_in.append({"file": str(up), "role": "users", "rows_in": n, "rows_quarantined": len(q)})
    parts = [LogPart(str(p), chunks=log_chunks(p, m, coders)) for p in (_resolve(base, x) for x in m.inputs)]
    derived = {k: s.describe() for k, s in sources(m, mapping).items() if s is not None and s.column is None
               or (s is not None and (s.op or s.ratio))}

    def extra() -> dict[str, Any]:  # after the log was read: only then are the code tables complete
        body: dict[str, Any] = {"mapping": {"file": str(mapping.resolve()), "columns": vars(m.columns),
                                            **({"derived": derived} if derived else {})}}
        codes = {col: cd.table for col, cd in coders.items() if cd.table}
        if codes:
            body["codes"] = codes
        return body

    return build_dataset(
        out, name=m.name or mapping.stem, source=f"mapping {mapping}", parts=parts, rule=rule_of(m),
        cross_features=list(m.cross_features), sample_features=list(m.sample_features), n_shards=n_shards,
        overwrite=overwrite, item_features=item_feats, user_features=user_feats, side_quarantine=side_q,
        side_inputs=side_in, log_features=_history_extra(m), users_from_log=list(m.user_features),
        extra_manifest=extra, checks=checks,
    )
