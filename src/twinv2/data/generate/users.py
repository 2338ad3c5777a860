"""Users of a generated world: life-cycle lengths and spans, activity levels, and interests with timelines.

Lengths are a truncated log-normal whose location is solved so the mean is `length_mean` (heavy tailed: the
median is well below the mean). Each user's interests are topics with a timeline:

- persistent: active over the whole life;
- seasonal: active in periodic windows, dormant for months between them, then back;
- old: active only in the first part of the life cycle;
- recent: started in the last weeks.

At an event time, a behaviour picks an interest in proportion to strength among the active ones. Old and
out-of-season interests are therefore visible only far back in the history, which is the point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twinv2.data.generate.config import WorldConfig
from twinv2.data.generate.items import ItemWorld, world_rng
from twinv2.data.storage import DAY_MS

LENGTH_STREAM = 0x1E46  # world_rng(seed, LENGTH_STREAM): every user's length and span, as one vector
KINDS = ("persistent", "seasonal", "old", "recent")
PERSISTENT, SEASONAL, OLD, RECENT = range(4)
BLOCK = 1 << 16  # rows per block in (rows x interests) work: bounds memory for a 10^6-behaviour user


def end_ms(cfg: WorldConfig) -> int:
    """End of the last evaluation day: every life cycle runs up to here."""
    return cfg.eval_start_ms + cfg.n_eval_days * DAY_MS


def history_days(cfg: WorldConfig) -> int:
    """Days from the earliest possible life start to the end of the last evaluation day."""
    return int(round(cfg.history_years * 365)) + cfg.n_eval_days


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def lognormal_mu(mean: float, sigma: float, lo: float, hi: float) -> float:
    """Location mu of a log-normal(mu, sigma) truncated to [lo, hi] whose mean is `mean` (bisection)."""
    a, b = math.log(lo), math.log(hi)

    def trunc_mean(mu: float) -> float:
        den = _phi((b - mu) / sigma) - _phi((a - mu) / sigma)
        num = _phi((b - mu - sigma**2) / sigma) - _phi((a - mu - sigma**2) / sigma)
        return math.exp(mu + sigma**2 / 2) * num / den if den > 0 else (hi if mu > b else lo)

    left, right = a - 10 * sigma, b + 10 * sigma  # the truncated mean rises from ~lo to ~hi across this range
    for _ in range(200):
        mid = 0.5 * (left + right)
        left, right = (mid, right) if trunc_mean(mid) < mean else (left, mid)
    return 0.5 * (left + right)


@dataclass
class UserTable:
    """One row per user: what users.parquet stores plus the life start used by the generator."""

    user_id: np.ndarray  # (U,) int64
    length: np.ndarray  # (U,) int64 behaviours over the whole life, evaluation days included
    life_start_ms: np.ndarray  # (U,) int64, a midnight
    level: np.ndarray  # (U,) int8 activity 0 low / 1 medium / 2 high
    thresholds: tuple[float, float]  # length cut points of the levels

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"user_id": self.user_id, "activity": self.level, "life_length": self.length,
                             "life_start_ms": self.life_start_ms})


def draw_lengths_spans(rng: np.random.Generator, n: int, cfg: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, life start ms) of `n` users: truncated log-normal lengths, Beta(2, 1) spans in days."""
    mu = lognormal_mu(cfg.length_mean, cfg.length_sigma, cfg.length_min, cfg.length_max)
    lengths = np.empty(n, dtype=np.float64)
    todo = np.arange(n)
    while len(todo):  # rejection keeps exactly the truncated law; a redraw is rare for sane settings
        x = np.exp(mu + cfg.length_sigma * rng.standard_normal(len(todo)))
        ok = (x >= cfg.length_min) & (x <= cfg.length_max)
        lengths[todo[ok]] = x[ok]
        todo = todo[~ok]
    lengths = np.clip(np.rint(lengths), cfg.length_min, cfg.length_max).astype(np.int64)
    total = history_days(cfg)
    span = np.ceil(total * rng.beta(2.0, 1.0, n)).astype(np.int64)
    # A heavy user cannot fit in a week; every user lives through the warm-up and evaluation days and a day
    # before them (so no impression comes before its user's first behaviour).
    span = np.clip(np.maximum(span, np.ceil(lengths / cfg.max_daily_behaviours).astype(np.int64)),
                   cfg.warmup_days + cfg.n_eval_days + 1, total)
    return lengths, end_ms(cfg) - span * DAY_MS


def user_table(cfg: WorldConfig) -> UserTable:
    """Every user's length, life start and activity level, from one vectorised stream."""
    rng = world_rng(cfg.seed, LENGTH_STREAM)
    lengths, start = draw_lengths_spans(rng, cfg.n_users, cfg)
    q1, q2 = (float(x) for x in np.quantile(lengths, cfg.activity_quantiles))
    level = (lengths > q1).astype(np.int8) + (lengths > q2).astype(np.int8)
    return UserTable(user_id=np.arange(cfg.n_users, dtype=np.int64), length=lengths, life_start_ms=start,
                     level=level, thresholds=(q1, q2))


@dataclass
class Interests:
    """A user's K interests. Windows are [start, end); seasonal ones are also on for `on_ms` per period."""

    kind: np.ndarray  # (K,) int8, index into KINDS
    topic: np.ndarray  # (K,) int64
    strength: np.ndarray  # (K,) float64
    start_ms: np.ndarray  # (K,) int64
    end_ms: np.ndarray  # (K,) int64
    period_ms: np.ndarray  # (K,) int64, 0 = not periodic
    phase_ms: np.ndarray  # (K,) int64
    on_ms: np.ndarray  # (K,) int64
    fav_author: np.ndarray  # (K,) int64, -1 = none
    first_on_ms: np.ndarray  # (K,) int64 first active time (>= end_ms: never active)

    @property
    def weight(self) -> np.ndarray:
        """Affinity scale sqrt(strength / strongest): the main interest's items are liked most."""
        return np.sqrt(self.strength / self.strength.max())

    def active(self, ts: np.ndarray) -> np.ndarray:
        """(len(ts), K) bool: is interest k active at each time."""
        out = np.empty((len(ts), len(self.kind)), dtype=bool)
        periodic = self.period_ms > 0
        period = np.where(periodic, self.period_ms, 1)
        for a in range(0, len(ts), BLOCK):
            t = ts[a:a + BLOCK, None]
            on = (t >= self.start_ms) & (t < self.end_ms)
            if periodic.any():
                on &= ~periodic | (((t - self.phase_ms) % period) < self.on_ms)
            out[a:a + BLOCK] = on
        return out

    def dormant(self, ts: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """(len(ts), K) bool: quiet at ts but active at some time before it (old, out of season). An
        interest that has not started yet is neither active nor dormant: the future is no part of the past."""
        act = self.active(ts) if active is None else active
        return ~act & (ts[:, None] > self.first_on_ms[None, :])

    def segments(self, life_start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """(bounds, seg_active): times where any interest switches, and (n_seg, K) activity on each segment
        [bounds[i], bounds[i+1]). Activity is piecewise constant, so a behaviour stream needs only a lookup
        of its segment instead of an (L, K) evaluation."""
        cuts = [np.array([life_start]), self.start_ms, self.end_ms]
        for k in np.flatnonzero(self.period_ms > 0):
            p, ph = int(self.period_ms[k]), int(self.phase_ms[k])
            j = np.arange((life_start - ph) // p, (end - ph) // p + 1)
            cuts += [ph + j * p, ph + j * p + int(self.on_ms[k])]
        b = np.unique(np.concatenate(cuts))
        bounds = b[(b >= life_start) & (b < end)]
        return bounds, self.active(bounds)


def draw_interests(rng: np.random.Generator, life_start: int, world: ItemWorld, cfg: WorldConfig,
                   topic_mass: np.ndarray) -> Interests:
    """A user's interests. Topics are drawn without replacement in proportion to topic mass (big topics
    have more fans); every parameter array is drawn at full length K so the stream layout is fixed."""
    counts = np.array([1 + rng.poisson(cfg.persistent_mean), rng.poisson(cfg.seasonal_mean),
                       rng.poisson(cfg.old_mean), int(rng.random() < cfg.recent_prob)])
    kind = np.repeat(np.arange(4, dtype=np.int8), counts)[: world.n_topics]
    k = len(kind)
    topic = rng.choice(world.n_topics, size=k, replace=False, p=topic_mass).astype(np.int64)
    strength = rng.lognormal(0.0, cfg.strength_sigma, k)
    end = end_ms(cfg)
    span = end - life_start
    u_period, u_duty, u_phase, u_old, u_recent = rng.random((5, k))
    period = (cfg.season_period_days[0] + u_period * np.diff(cfg.season_period_days)[0]) * DAY_MS
    duty = cfg.season_duty[0] + u_duty * np.diff(cfg.season_duty)[0]
    old_end = life_start + (cfg.old_end_frac[0] + u_old * np.diff(cfg.old_end_frac)[0]) * span
    recent_start = end - (cfg.recent_days[0] + u_recent * np.diff(cfg.recent_days)[0]) * DAY_MS
    seasonal, old, recent = kind == SEASONAL, kind == OLD, kind == RECENT
    start_ms = np.where(recent, np.maximum(recent_start, life_start), life_start).astype(np.int64)
    end_ms_ = np.where(old, old_end, end).astype(np.int64)
    period_ms = np.where(seasonal, period, 0).astype(np.int64)
    phase_ms = np.where(seasonal, life_start - u_phase * period, 0).astype(np.int64)
    on_ms = np.where(seasonal, duty * period, 0).astype(np.int64)
    # First active time: the start, or for a seasonal interest out of season at the start, its next window.
    into = np.where(seasonal, (start_ms - phase_ms) % np.maximum(period_ms, 1), 0)
    first_on = np.where(seasonal & (into >= on_ms), start_ms + period_ms - into, start_ms)
    has_fav, u_author = rng.random((2, k))
    fav = world.draw_author_of_topic(topic, u_author)
    fav = np.where(has_fav < cfg.fav_author_prob, fav, -1).astype(np.int64)
    return Interests(kind=kind, topic=topic, strength=strength, start_ms=start_ms, end_ms=end_ms_,
                     period_ms=period_ms, phase_ms=phase_ms, on_ms=on_ms, fav_author=fav,
                     first_on_ms=first_on.astype(np.int64))


def choose(active: np.ndarray, strength: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, an interest index drawn in proportion to strength among the True columns; -1 if none."""
    out = np.empty(len(active), dtype=np.int64)
    for a in range(0, len(active), BLOCK):
        cum = np.cumsum(active[a:a + BLOCK] * strength, axis=1)
        tot = cum[:, -1]
        k = (cum <= (u[a:a + BLOCK] * tot)[:, None]).sum(axis=1)
        out[a:a + BLOCK] = np.where(tot > 0, np.minimum(k, active.shape[1] - 1), -1)
    return out
