"""How sure a comparison is: paired bootstrap over users, DeLong, and the label-noise-free expected AUC.

Torch-free numpy (the report imports it). Point estimates come from `train.metrics` (`auc`, `gauc`); the one
kernel here, `pair_sums`, counts weighted (positive, negative) pairs per group and serves the resampled AUCs and
the expected AUC under `p_true`; tests check it against `train.metrics` and against double loops.

- Resampling unit = the user (DESIGN.md, "Evaluation protocol"): a user's samples are correlated (one history,
  one taste), so samples are not independent draws; one multiplicity draw per user is shared by every model of
  a comparison (paired), and by every day of a user.
- The bootstrapped statistics are pooled over the test samples given: AUC over all of them; GAUC over
  `groups` (default: the user; pass (user, day) codes to keep the per-test-hour grouping of the protocol),
  each group weighted by its sample count. A resampled user brings every group of theirs with it.
- CI = percentile interval of the bootstrap replicates; SE = their std (ddof=1).
- Minimum resolvable difference (MRD) = 1.96 × SE of the paired difference: the smallest |difference| whose
  95% interval excludes 0, so "below the MRD" and "not resolved" (CI contains 0) say the same thing; the true
  difference the test detects with 80% power is 2.80 × SE = 1.43 × MRD (`MDE80_Z`).
- Expected AUC under p_true: labels ~ Bernoulli(p) independently; E[AUC] is taken as the ratio of the expected
  pair counts, Σ_{i≠j} p_i (1 − p_j) (1[s_i > s_j] + ½ 1[s_i = s_j]) / Σ_{i≠j} p_i (1 − p_j), which removes
  label noise from a model's score (and is what the AUC tends to as the test set grows).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import ndtr
from scipy.stats import rankdata

from twinv2.train.metrics import auc, gauc

Z95 = 1.959963984540054  # two-sided 95%
MDE80_Z = Z95 + 0.8416212335729143  # 95% two-sided test with 80% power
N_BOOT = 1000
CHUNK_CELLS = 4_000_000  # replicates × samples per block: bounds memory (~32 MB of float64) on big test sets


# ---- helpers ------------------------------------------------------------------------------------------------
def _vec(x, name: str, dtype=np.float64) -> np.ndarray:
    a = np.asarray(x, dtype=dtype)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    return a


def _same_len(**arrays: np.ndarray) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"arrays must have the same length, got {sizes}")
    return next(iter(sizes.values()))


def _labels(labels) -> np.ndarray:
    y = _vec(labels, "labels")
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise ValueError(f"labels must be 0 or 1, got {y[bad][:5].tolist()}")
    return y


def _codes(x) -> tuple[np.ndarray, int]:
    """Dense 0..k−1 codes of any id array."""
    _, inv = np.unique(np.asarray(x), return_inverse=True)
    return inv.reshape(-1).astype(np.int64), int(inv.max()) + 1 if len(inv) else 0


# ---- the pair-counting kernel ---------------------------------------------------------------------------------
def pair_sums(scores: np.ndarray, a: np.ndarray, b: np.ndarray, group: np.ndarray | None = None,
              n_groups: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per group g: num_g = Σ_{i,j ∈ g} a_i b_j (1[s_i > s_j] + ½ 1[s_i = s_j]) and den_g = Σ a_i · Σ b_j.

    `a`, `b` are (n,) or (R, n) weights (R replicates share the scores); i = j pairs are included (for 0/1 labels
    a_i b_i = 0, so they add nothing; `expected_auc` removes them). One sort by (group, score), O(n log n).
    Returns arrays of shape (G,) or (R, G).
    """
    s = _vec(scores, "scores")
    n = len(s)
    g = np.zeros(n, np.int64) if group is None else np.asarray(group, np.int64)
    G = (int(g.max()) + 1 if n else 0) if n_groups is None else n_groups
    order = np.lexsort((s, g))
    gs, ss = g[order], s[order]
    new_key = np.r_[True, (gs[1:] != gs[:-1]) | (ss[1:] != ss[:-1])] if n else np.zeros(0, bool)
    tie_start = np.flatnonzero(new_key)  # blocks of equal (group, score)
    tie_group = gs[tie_start]
    A, B = np.atleast_2d(a)[:, order], np.atleast_2d(b)[:, order]
    R = A.shape[0]
    num, den = np.zeros((R, G)), np.zeros((R, G))
    if n == 0:
        return (num[0], den[0]) if np.ndim(a) == 1 else (num, den)
    first_block = np.r_[True, tie_group[1:] != tie_group[:-1]]
    group_start = np.flatnonzero(first_block)  # blocks are sorted by group, so each group is one run of blocks
    present = tie_group[group_start]
    # b-weight strictly below each block within its group: a cumulative sum restarted at each group's start.
    base = np.maximum.accumulate(np.where(first_block, np.arange(len(tie_start)), 0))
    step = max(1, CHUNK_CELLS // n)
    for lo in range(0, R, step):
        hi = min(R, lo + step)
        Ab = np.add.reduceat(A[lo:hi], tie_start, axis=1)  # (r, blocks)
        Bb = np.add.reduceat(B[lo:hi], tie_start, axis=1)
        before = np.cumsum(Bb, axis=1) - Bb
        contrib = Ab * (before - before[:, base] + 0.5 * Bb)
        num[lo:hi, present] = np.add.reduceat(contrib, group_start, axis=1)
        den[lo:hi, present] = np.add.reduceat(Ab, group_start, axis=1) * np.add.reduceat(Bb, group_start, axis=1)
    return (num[0], den[0]) if np.ndim(a) == 1 else (num, den)


# ---- expected AUC / GAUC under p_true -------------------------------------------------------------------------
def expected_auc(p_true, scores) -> float:
    """E[AUC] of `scores` when labels ~ Bernoulli(p_true) (ratio of expected pair counts, i ≠ j; module doc)."""
    p = _vec(p_true, "p_true")
    _same_len(p_true=p, scores=_vec(scores, "scores"))
    if ((p < 0) | (p > 1) | ~np.isfinite(p)).any():
        raise ValueError(f"p_true must lie in [0, 1], got values in [{np.nanmin(p)}, {np.nanmax(p)}]")
    num, den = pair_sums(scores, p, 1 - p)
    self_pairs = p * (1 - p)
    num, den = num[0] - 0.5 * self_pairs.sum(), den[0] - self_pairs.sum()
    return float(num / den) if den > 0 else float("nan")


def expected_gauc(users, p_true, scores) -> tuple[float, int]:
    """Σ_u n_u E[AUC_u] / Σ_u n_u over users whose expected pair count is positive (≥ 2 samples, not all
    p ∈ {0, 1} alike); n_u = the user's sample count. Returns (value, users counted)."""
    p, s = _vec(p_true, "p_true"), _vec(scores, "scores")
    _same_len(users=np.asarray(users), p_true=p, scores=s)
    if ((p < 0) | (p > 1) | ~np.isfinite(p)).any():
        raise ValueError(f"p_true must lie in [0, 1], got values in [{np.nanmin(p)}, {np.nanmax(p)}]")
    g, G = _codes(users)
    num, den = pair_sums(s, p, 1 - p, g, G)
    self_pairs = np.bincount(g, weights=p * (1 - p), minlength=G)
    num, den = num - 0.5 * self_pairs, den - self_pairs
    n = np.bincount(g, minlength=G).astype(np.float64)
    ok = den > 1e-12
    if not ok.any():
        return float("nan"), 0
    return float(np.sum(n[ok] * num[ok] / den[ok]) / n[ok].sum()), int(ok.sum())


# ---- DeLong -----------------------------------------------------------------------------------------------------
def _delong_components(labels: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components V10 (per positive), V01 (per negative), via midranks
    (Sun & Xu 2014): V10_i = (R_i − R^pos_i) / n, V01_j = 1 − (R_j − R^neg_j) / m."""
    y = labels.astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    r_all = rankdata(scores)
    r_pos, r_neg = rankdata(scores[y]), rankdata(scores[~y])
    v10 = (r_all[y] - r_pos) / n
    v01 = 1.0 - (r_all[~y] - r_neg) / m
    return float(v10.mean()), v10, v01


def delong_variance(labels, scores) -> tuple[float, float]:
    """(AUC, DeLong's variance of it), O(n log n). Assumes independent samples (the bootstrap over users does
    not); NaN when one class is absent."""
    y, s = _labels(labels), _vec(scores, "scores")
    _same_len(labels=y, scores=s)
    m = int(y.sum())
    if m < 2 or len(y) - m < 2:
        return (auc(y, s) if 0 < m < len(y) else float("nan")), float("nan")
    a, v10, v01 = _delong_components(y, s)
    return a, float(v10.var(ddof=1) / len(v10) + v01.var(ddof=1) / len(v01))


def delong_paired(labels, scores_a, scores_b) -> dict[str, float]:
    """DeLong's test of AUC(a) − AUC(b) on the same samples: diff, se, z, two-sided p, 95% CI."""
    y, sa, sb = _labels(labels), _vec(scores_a, "scores_a"), _vec(scores_b, "scores_b")
    _same_len(labels=y, scores_a=sa, scores_b=sb)
    m = int(y.sum())
    nan = {"diff": float("nan"), "se": float("nan"), "z": float("nan"), "p": float("nan"),
           "ci_low": float("nan"), "ci_high": float("nan")}
    if m < 2 or len(y) - m < 2:
        return nan
    a1, x10, x01 = _delong_components(y, sa)
    a2, y10, y01 = _delong_components(y, sb)
    s10, s01 = np.cov(np.vstack([x10, y10])), np.cov(np.vstack([x01, y01]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / (len(y) - m)
    diff, se = a1 - a2, math.sqrt(max(var, 0.0))
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return {"diff": diff, "se": se, "z": z, "p": float(2 * ndtr(-abs(z))), "ci_low": diff - Z95 * se,
            "ci_high": diff + Z95 * se}


# ---- bootstrap over users ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UserDraws:
    """B multiplicity draws over the distinct users of a test set (multinomial: each draw keeps U users)."""

    users: np.ndarray  # (U,) sorted distinct user ids
    counts: np.ndarray  # (B, U) how often each user is drawn; each row sums to U
    seed: int


def draw_users(users, n_boot: int = N_BOOT, seed: int = 0) -> UserDraws:
    """Resample the distinct users with replacement `n_boot` times (numpy default_rng(seed))."""
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    u = np.unique(np.asarray(users))
    if len(u) == 0:
        raise ValueError("no users to resample: the test set is empty")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(u), np.full(len(u), 1.0 / len(u)), size=int(n_boot)).astype(np.float64)
    return UserDraws(users=u, counts=counts, seed=seed)


def _user_codes(draws: UserDraws, users) -> np.ndarray:
    users = np.asarray(users)
    idx = np.searchsorted(draws.users, users)
    idx = np.minimum(idx, len(draws.users) - 1)
    if len(users) and (draws.users[idx] != users).any():
        raise ValueError(f"user {users[draws.users[idx] != users][0].item()!r} is not among the drawn users")
    return idx


def boot_auc(draws: UserDraws, users, labels, scores) -> np.ndarray:
    """(B,) pooled AUC of each resample: every sample weighted by its user's multiplicity.

    pair_sums with integer weights, specialised: multiplicities and 0/1 labels make every pair count an integer,
    so the sums run exactly in int64 (2 × num, to keep the ½ of a tie whole), one sort for all replicates."""
    y, s = _labels(labels), _vec(scores, "scores")
    _same_len(users=np.asarray(users), labels=y, scores=s)
    order = np.argsort(s, kind="stable")
    ss, pos = s[order], y[order].astype(bool)
    codes = _user_codes(draws, np.asarray(users)[order])
    tie_start = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]]) if len(ss) else np.zeros(0, np.int64)
    ties = len(tie_start) < len(ss)
    counts_t = np.ascontiguousarray(draws.counts.T, dtype=np.int64)  # (U, B): sample-major, so the running
    out = np.empty(counts_t.shape[1])                                  # sums below are vectorised over replicates
    step = max(1, CHUNK_CELLS // max(len(y), 1))
    for lo in range(0, len(out), step):  # the (samples, replicates) weights are built one block at a time
        w = counts_t[codes, lo:lo + step]  # (n, r)
        wp, wn = np.where(pos[:, None], w, 0), np.where(pos[:, None], 0, w)
        if ties:
            wp, wn = np.add.reduceat(wp, tie_start, axis=0), np.add.reduceat(wn, tie_start, axis=0)
        before = np.cumsum(wn, axis=0) - wn
        num2 = (wp * (2 * before + wn)).sum(0)
        den = wp.sum(0) * wn.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[lo:lo + step] = num2 / (2.0 * den)
    return out


def boot_gauc(draws: UserDraws, users, labels, scores, groups=None) -> np.ndarray:
    """(B,) GAUC of each resample: a group's AUC does not change when its user is drawn, only its weight
    (sample count × multiplicity), so this is (counts @ Σ_g n_g AUC_g) / (counts @ Σ_g n_g) per user."""
    y, s = _labels(labels), _vec(scores, "scores")
    users = np.asarray(users)
    _same_len(users=users, labels=y, scores=s)
    g, G = _codes(users if groups is None else groups)
    num, den = pair_sums(s, y, 1 - y, g, G)
    n_g = np.bincount(g, minlength=G).astype(np.float64)
    ok = den > 0
    auc_g = np.where(ok, num / np.where(ok, den, 1), 0.0)
    # The user of each group (a group never spans users: groups refine users).
    user_of_group = np.zeros(G, np.int64)
    user_of_group[g] = _user_codes(draws, users)
    U = len(draws.users)
    top = np.bincount(user_of_group, weights=n_g * auc_g * ok, minlength=U)
    bottom = np.bincount(user_of_group, weights=n_g * ok, minlength=U)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (draws.counts @ top) / (draws.counts @ bottom)


@dataclass(frozen=True)
class Interval:
    """A statistic (or a difference) with its bootstrap 95% interval and standard error."""

    value: float
    ci_low: float
    ci_high: float
    se: float
    n_users: int
    n_samples: int
    n_boot: int

    @property
    def mrd(self) -> float:
        """Minimum resolvable difference, 1.96 × SE (module doc)."""
        return Z95 * self.se

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "mrd": self.mrd, "mde80": MDE80_Z * self.se}


def interval(value: float, reps: np.ndarray, n_users: int, n_samples: int) -> Interval:
    r = np.asarray(reps, np.float64)
    r = r[np.isfinite(r)]
    if len(r) < 2:
        return Interval(value, float("nan"), float("nan"), float("nan"), n_users, n_samples, len(r))
    lo, hi = np.quantile(r, [0.025, 0.975])
    return Interval(float(value), float(lo), float(hi), float(r.std(ddof=1)), n_users, n_samples, len(r))


def verdict(ci_low: float, ci_high: float) -> str:
    """'A better' / 'B better' for a difference A − B whose 95% CI excludes 0, else 'not resolved'."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "not resolved"
    if ci_low > 0:
        return "A better"
    if ci_high < 0:
        return "B better"
    return "not resolved"


def bootstrap_ci(users, labels, scores, groups=None, n_boot: int = N_BOOT, seed: int = 0,
                 draws: UserDraws | None = None) -> dict[str, Interval]:
    """One model's pooled AUC and GAUC with bootstrap-over-users 95% intervals."""
    draws = draws or draw_users(users, n_boot, seed)
    y, s = _labels(labels), _vec(scores, "scores")
    nu, ns = len(np.unique(np.asarray(users))), len(y)
    gid = np.asarray(users) if groups is None else groups
    return {"auc": interval(auc(y, s), boot_auc(draws, users, y, s), nu, ns),
            "gauc": interval(gauc(gid, y, s)[0], boot_gauc(draws, users, y, s, groups), nu, ns)}


def paired_bootstrap(users, labels, scores_a, scores_b, groups=None, n_boot: int = N_BOOT, seed: int = 0,
                     draws: UserDraws | None = None) -> dict[str, Interval]:
    """AUC(a) − AUC(b) and GAUC(a) − GAUC(b) on the same samples, one user resample shared by both models."""
    y, sa, sb = _labels(labels), _vec(scores_a, "scores_a"), _vec(scores_b, "scores_b")
    _same_len(users=np.asarray(users), labels=y, scores_a=sa, scores_b=sb)
    draws = draws or draw_users(users, n_boot, seed)
    nu, ns = len(np.unique(np.asarray(users))), len(y)
    gid = np.asarray(users) if groups is None else groups
    d_auc = auc(y, sa) - auc(y, sb)
    d_gauc = gauc(gid, y, sa)[0] - gauc(gid, y, sb)[0]
    r_auc = boot_auc(draws, users, y, sa) - boot_auc(draws, users, y, sb)
    r_gauc = boot_gauc(draws, users, y, sa, groups) - boot_gauc(draws, users, y, sb, groups)
    return {"auc": interval(d_auc, r_auc, nu, ns), "gauc": interval(d_gauc, r_gauc, nu, ns)}


def normal_p(value: float, se: float) -> float:
    """Two-sided p of value / se under a normal approximation (NaN without an SE)."""
    if not (math.isfinite(value) and math.isfinite(se)) or se <= 0:
        return float("nan")
    return float(2 * ndtr(-abs(value / se)))


__all__ = ["MDE80_Z", "N_BOOT", "Z95", "Interval", "UserDraws", "boot_auc", "boot_gauc", "bootstrap_ci",
           "delong_paired", "delong_variance", "draw_users", "expected_auc", "expected_gauc", "interval",
           "normal_p", "pair_sums", "paired_bootstrap", "verdict"]
