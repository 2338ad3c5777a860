"""The feature contract: every model input feature is declared here once, as a `FeatureSpec` (name, source
column, bucketing, vocabulary size, kind), and every path builds its inputs by iterating the specs: the
batcher (train/batching.py) for training and evaluation, the serving path (serve/scorer.py `cluster_inputs`),
and through them nearline and the benchmarks (paper Appendix A.2).

Kinds:
- inherent: per item (the model looks them up from the item row): duration, log2 buckets of seconds.
- cross: per sequence element (a behaviour or a cluster's virtual item), user-item. Each is later embedded in
  8 dims and reduced to one number. Built in, in this order (the model's cross columns 0, 1, 2):
  - play:  log2 buckets of play seconds (<1 s, 1–2 s, 2–4 s, ... ≥ 2^14 s)
  - ratio: completion ratio in steps of 0.1 up to 2, then one bucket for > 2 (NaN → 0)
  - age:   log2 buckets of hours between the element and the sample (< 1 h, 1–2 h, ... ≥ 2^16 h ≈ 7.5 y)
  then, for raw behaviours only, one per extra behaviour column of the dataset (an imported log's
  `cross_features`, e.g. KuaiRand's `is_follow`), log2-bucketed: cluster snapshots do not carry them.
- user: per user, one per column the dataset declares in its manifest's `user_features` (`users.parquet`),
  log2-bucketed. A generated world declares none: its users.parquet is the generator's ground truth (e.g.
  `life_length` counts behaviours after the sample time), not a feature.

Bucket 0 always means "unknown or padding", so a padded position and an unknown value embed the same way and
padding never needs a special case.

A cross feature's source is a column of the sequence's elements: a raw behaviour offers `play_ms` (NaN when
unknown), `ratio` (the completion ratio), `ts`, `duration_ms` and the dataset's extra columns; a cluster offers
its snapshot's columns (`play_ms`, `ratio`, `ts` are means over the members, Eq. 5; `n`, `duration_ms`, ...).
A spec with `since_sample` buckets `sample ts - source` (an age), computed per sample.
`register_cross_feature` adds a cross feature for every model (both sequences): training, evaluation and
serving pick it up with no other change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from twinv2.data.storage import Dataset

INHERENT, CROSS, USER = "inherent", "cross", "user"
N_PLAY = 17  # 0 unknown, 1 = < 1 s, ..., 16 = >= 2^14 s
N_RATIO = 23  # 0 unknown, 1..20 = [0, 0.1) .. [1.9, 2.0), 21 = [2, inf), 22 spare
N_AGE = 19  # 0 unknown, 1 = < 1 h, ..., 18 = >= 2^16 h
N_DUR = 17
N_NUMERIC = 33  # 0 unknown (NaN or negative), 1 = < 1, 2 = [1, 2), ..., 32 = >= 2^30


def _log2_bucket(x: np.ndarray, unit: float, n: int, zero: int = 1) -> np.ndarray:
    """1 + floor(log2(x / unit)) + 1 clipped to [1, n-1] for x >= 0 (so x < unit → 1); 0 for NaN, ±inf and
    negative x; `zero` for x == 0 (and -0.0). (...) int64

    The bucket is a function of the float64 exponent field alone (2^(e-1) <= v < 2^e is exact at powers of
    two), read through a 4,096-entry table indexed by the top 12 bits (sign + exponent): four passes over x,
    ~4x faster than isfinite/frexp/clip/where (the batcher's age column at L = 10,000 is 2.6M values a batch)."""
    v = np.asarray(x, dtype=np.float64) / unit  # a fresh array: -0.0 folds into +0.0 below, in place
    v += 0.0
    return _exponent_table(n, zero)[v.view(np.uint64) >> np.uint64(52)]


@functools.lru_cache(maxsize=None)
def _exponent_table(n: int, zero: int) -> np.ndarray:
    """(4096,) int64: the bucket of each (sign, biased exponent) of v: exponent e_b gives floor(log2 v) =
    e_b - 1023 for normal v, so 1 + floor(log2 v) + 1 = e_b - 1021 (<= 1 for v < 1); e_b = 0 is zero or a
    subnormal (`zero`), 2047 is inf/NaN and the sign bit (>= 2048) a negative value: 0."""
    e = np.arange(4096, dtype=np.int64)
    out = np.where(e < 2047, np.clip(e - 1021, 1, n - 1), 0)
    out[0] = zero
    return out


def play_bucket(play_ms: np.ndarray) -> np.ndarray:
    return _log2_bucket(play_ms, 1000.0, N_PLAY)


def duration_bucket(duration_ms: np.ndarray) -> np.ndarray:
    d = np.asarray(duration_ms, dtype=np.float64)
    return np.where(d > 0, _log2_bucket(d, 1000.0, N_DUR), 0)


def ratio_bucket(ratio: np.ndarray) -> np.ndarray:
    r = np.asarray(ratio, dtype=np.float64)
    ok = np.isfinite(r) & (r >= 0)
    b = np.minimum(np.floor(np.where(ok, r, 0.0) * 10).astype(np.int64), 20) + 1
    return np.where(ok, b, 0).astype(np.int64)


def age_bucket(sample_ts: np.ndarray, behaviour_ts: np.ndarray) -> np.ndarray:
    """Age of a behaviour at the sample's time. A behaviour at or after the sample time would be a leak:
    callers never pass one, and it maps to 0 (unknown) rather than to a bucket."""
    return _age(np.asarray(sample_ts, dtype=np.float64) - np.asarray(behaviour_ts, dtype=np.float64))


def numeric_bucket(x: np.ndarray) -> np.ndarray:
    """A numeric column of unknown meaning (an imported log's extra column, a user feature): log2 buckets, so
    flags (0 → 1, 1 → 2), counts and milliseconds all get a few buckets each; NaN or negative → 0."""
    return _log2_bucket(x, 1.0, N_NUMERIC)


def _age(age: np.ndarray) -> np.ndarray:
    return _log2_bucket(age, 3_600_000.0, N_AGE, zero=0)  # NaN (padding) and <= 0 → 0


@dataclass(frozen=True)
class FeatureSpec:
    """One model input feature. `bucket` maps values of `source` to ids in [0, buckets), 0 = unknown."""

    name: str
    kind: str  # INHERENT (per item), CROSS (per sequence element, user-item) or USER (per user)
    source: str  # the column it is computed from (see the module docstring for what each kind can read)
    buckets: int  # vocabulary size, bucket 0 included
    bucket: Callable[[np.ndarray], np.ndarray]
    since_sample: bool = False  # cross only: bucket `sample ts - source` (an age at the sample's time); its
    #  `bucket` must map NaN and -inf (a padded position) to 0

    def __post_init__(self) -> None:
        if self.kind not in (INHERENT, CROSS, USER):
            raise ValueError(f"feature {self.name!r}: kind must be {INHERENT!r}, {CROSS!r} or {USER!r}, "
                             f"got {self.kind!r}")
        if self.buckets < 2:
            raise ValueError(f"feature {self.name!r}: buckets must be >= 2 (0 = unknown), got {self.buckets}")
        if self.since_sample and self.kind != CROSS:
            raise ValueError(f"feature {self.name!r}: only a cross feature can be relative to the sample")


DURATION = FeatureSpec("duration", INHERENT, "duration_ms", N_DUR, duration_bucket)
CROSS_SPECS: list[FeatureSpec] = [
    FeatureSpec("play", CROSS, "play_ms", N_PLAY, play_bucket),
    FeatureSpec("ratio", CROSS, "ratio", N_RATIO, ratio_bucket),
    FeatureSpec("age", CROSS, "ts", N_AGE, _age, since_sample=True),
]
# The cross bucket counts of every model on data without extra columns (the registered specs, in order).
CROSS_BUCKETS: list[int] = [s.buckets for s in CROSS_SPECS]


def register_cross_feature(spec: FeatureSpec) -> None:
    """Add a cross feature for every model built from now on (its source must exist in raw behaviours and in
    cluster snapshots alike). CROSS_BUCKETS is updated in place, so every importer of it sees the change."""
    if spec.kind != CROSS:
        raise ValueError(f"feature {spec.name!r} is {spec.kind!r}, not {CROSS!r}")
    if spec.name in {s.name for s in CROSS_SPECS}:
        raise ValueError(f"a cross feature named {spec.name!r} is already registered")
    CROSS_SPECS.append(spec)
    CROSS_BUCKETS.append(spec.buckets)


def unregister_cross_feature(name: str) -> None:
    """Remove a cross feature added by `register_cross_feature`."""
    i = [s.name for s in CROSS_SPECS].index(name)
    del CROSS_SPECS[i], CROSS_BUCKETS[i]


@dataclass(frozen=True)
class Features:
    """The features one model reads from one dataset: its cross specs (in column order) and user specs."""

    cross: tuple[FeatureSpec, ...]
    user: tuple[FeatureSpec, ...] = ()

    @property
    def cross_buckets(self) -> list[int]:
        return [s.buckets for s in self.cross]

    @property
    def user_buckets(self) -> list[int]:
        return [s.buckets for s in self.user]

    @classmethod
    def of(cls, sequence: str, extra_columns: Sequence[str] = (), user_columns: Sequence[str] = ()) -> "Features":
        """The registered cross features, then (raw behaviours only) one per extra behaviour column; one user
        feature per user column."""
        if sequence not in ("recent", "clusters"):
            raise ValueError(f"sequence must be 'recent' or 'clusters', got {sequence!r}")
        extras = [FeatureSpec(c, CROSS, c, N_NUMERIC, numeric_bucket) for c in extra_columns] \
            if sequence == "recent" else []
        return cls(tuple(CROSS_SPECS) + tuple(extras),
                   tuple(FeatureSpec(c, USER, c, N_NUMERIC, numeric_bucket) for c in user_columns))

    @classmethod
    def for_dataset(cls, ds: "Dataset", sequence: str) -> "Features":
        """What `ds` offers: its manifest's `cross_features` (extra behaviour columns) and `user_features`
        (a stand-in without a manifest, as in benchmarks, offers neither)."""
        m = getattr(ds, "manifest", None) or {}
        return cls.of(sequence, m.get("cross_features") or [], m.get("user_features") or [])


class UserTable:
    """User-feature bucket ids by user id, from the dataset's users.parquet; an unknown user gets zeros."""

    def __init__(self, users, specs: Sequence[FeatureSpec]) -> None:
        self.specs = tuple(specs)
        if not self.specs:
            self.user_ids, self.ids = np.zeros(0, np.int64), np.zeros((1, 0), np.int64)
            return
        missing = [s.source for s in self.specs if users is None or s.source not in users.columns]
        if missing:
            raise ValueError(f"user features {missing} are declared but users.parquet lacks them")
        order = np.argsort(users["user_id"].to_numpy(), kind="stable")
        self.user_ids = users["user_id"].to_numpy()[order].astype(np.int64)
        ids = np.stack([s.bucket(users[s.source].to_numpy()[order]) for s in self.specs], -1)  # (U, F)
        self.ids = np.r_[ids, np.zeros((1, len(self.specs)), np.int64)]  # last row: unknown user

    def lookup(self, user_id: np.ndarray) -> np.ndarray:
        """(B,) user ids → (B, F) int64 bucket ids."""
        user_id = np.asarray(user_id, np.int64)
        i = np.searchsorted(self.user_ids, user_id)
        found = (i < len(self.user_ids)) & (self.user_ids[np.minimum(i, len(self.user_ids) - 1)] == user_id) \
            if len(self.user_ids) else np.zeros(len(user_id), bool)
        return self.ids[np.where(found, i, len(self.user_ids))]
