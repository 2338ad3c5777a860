"""The pilot: world-level constants solved from a few extra users before the real ones are generated.

Two quantities cannot be written down in closed form because they depend on the whole generative process:
the distribution of the latent watch score (needed to map it onto KuaiRand's completion-ratio quantiles) and
the click bias that makes mean p_true equal `target_ctr`. The pilot draws `PILOT_USERS` users from their own
streams (never written, never real users), then solves both. It is deterministic in the seed and the config,
so the world stays byte-identical across runs and worker counts.
"""

from __future__ import annotations

import numpy as np

from twinv2.data.generate.config import WorldConfig
from twinv2.data.generate.items import ItemWorld, world_rng
from twinv2.data.generate.reference import QUANTILE_PROBS
from twinv2.data.generate.streams import LOGIT_CLIP, Calibration, click_logit, simulate_user, watch_score
from twinv2.data.generate.users import draw_lengths_spans

PILOT_STREAM = 0x9170  # lengths: world_rng(seed, PILOT_STREAM); pilot user j: world_rng(seed, PILOT_STREAM, 1 + j)
PILOT_USERS = 256
# Caps the pilot's cost. A capped user's behaviours are weighted by length / cap, so heavy users weigh in the
# pilot as much as in the world (where most behaviours belong to them).
PILOT_MAX_LENGTH = 4000


def topic_mass(world: ItemWorld) -> np.ndarray:
    """Share of all popularity in each topic: how likely a user is to take up the topic as an interest."""
    m = np.bincount(world.topic, weights=world.popularity, minlength=world.n_topics)
    return m / m.sum()


def solve_bias(x: np.ndarray, target: float) -> float:
    """b such that mean(sigmoid(clip(b + x))) = target (bisection; the mean rises with b)."""
    lo, hi = -40.0, 40.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        logit = np.clip(mid + x, -LOGIT_CLIP, LOGIT_CLIP)
        if np.mean(1.0 / (1.0 + np.exp(-logit))) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def weighted_quantiles(x: np.ndarray, w: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Quantiles of `x` with row weights `w` (linear between the weighted ranks)."""
    order = np.argsort(x, kind="stable")
    cw = np.cumsum(w[order])
    return np.interp(probs, (cw - 0.5 * w[order]) / cw[-1], x[order])


def calibrate(cfg: WorldConfig, world: ItemWorld, thresholds: tuple[float, float]) -> Calibration:
    """Run the pilot and solve the watch-score quantiles and the click bias."""
    rng = world_rng(cfg.seed, PILOT_STREAM)
    full, starts = draw_lengths_spans(rng, PILOT_USERS, cfg)
    level = (full > thresholds[0]).astype(int) + (full > thresholds[1]).astype(int)
    lengths = np.minimum(full, PILOT_MAX_LENGTH)
    mass = topic_mass(world)
    draws = [simulate_user(world_rng(cfg.seed, PILOT_STREAM, 1 + j), int(lengths[j]), int(starts[j]),
                           int(level[j]), world, cfg, mass) for j in range(PILOT_USERS)]
    w = np.repeat(full / lengths, lengths)
    aff = np.concatenate([d.b_affinity for d in draws])
    mean = float(np.average(aff, weights=w))
    std = float(max(np.sqrt(np.average((aff - mean) ** 2, weights=w)), 1e-6))
    z = np.concatenate([watch_score(d, cfg, mean, std) for d in draws])
    zq = weighted_quantiles(z, w, QUANTILE_PROBS)
    # np.interp needs increasing x; ties can only come from a degenerate pilot, so nudge them apart.
    zq = zq + np.arange(len(zq)) * 1e-9
    x = np.concatenate([click_logit(d.s_terms, cfg, 0.0, clip=False) for d in draws if len(d.s_ts)] or [np.zeros(1)])
    bias = solve_bias(x, cfg.target_ctr)
    return Calibration(affinity_mean=mean, affinity_std=std, z_quantiles=tuple(float(v) for v in zq), bias=bias)
