"""Bucketised features shared by training, evaluation and serving (paper Appendix A.2).

Cross features (user-item, per behaviour or per cluster) become small integer buckets, each later embedded
in 8 dims and reduced to one number. Bucket 0 always means "unknown or padding", so a padded position and an
unknown value embed the same way and padding never needs a special case.

- play:  log2 buckets of play seconds (<1 s, 1–2 s, 2–4 s, ... ≥ 2^14 s)
- ratio: completion ratio in steps of 0.1 up to 2, then one bucket for > 2 (NaN → 0)
- age:   log2 buckets of hours between the behaviour and the sample (< 1 h, 1–2 h, ... ≥ 2^16 h ≈ 7.5 y)
Inherent: duration, log2 buckets of seconds, per item.
"""

from __future__ import annotations

import numpy as np

CROSS_FEATURES = ("play", "ratio", "age")
N_PLAY = 17  # 0 unknown, 1 = < 1 s, ..., 16 = >= 2^14 s
N_RATIO = 23  # 0 unknown, 1..20 = [0, 0.1) .. [1.9, 2.0), 21 = [2, inf), 22 spare
N_AGE = 19  # 0 unknown, 1 = < 1 h, ..., 18 = >= 2^16 h
N_DUR = 17
CROSS_BUCKETS = [N_PLAY, N_RATIO, N_AGE]


def _log2_bucket(x: np.ndarray, unit: float, n: int) -> np.ndarray:
    """1 + floor(log2(x / unit)) + 1 clipped to [1, n-1] for x >= 0; 0 for NaN or negative."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x) & (x >= 0)
    v = np.where(ok, x, 0.0) / unit
    # frexp's exponent e satisfies 2^(e-1) <= v < 2^e: exact at powers of two and cheaper than log2.
    b = np.where(v < 1.0, 1, np.frexp(np.maximum(v, 1.0))[1] + 1)
    return np.where(ok, np.clip(b, 1, n - 1), 0).astype(np.int64)


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
    age = np.asarray(sample_ts, dtype=np.float64) - np.asarray(behaviour_ts, dtype=np.float64)
    return np.where(age > 0, _log2_bucket(age, 3_600_000.0, N_AGE), 0)
