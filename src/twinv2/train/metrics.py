"""AUC and GAUC, exact (ties get average ranks, as scikit-learn), vectorised over users."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(np.asarray(scores, dtype=np.float64))
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """Σ_u w_u AUC_u / Σ_u w_u over users with both labels, w_u = the user's sample count (DESIGN.md).

    Returns (gauc, number of users counted); NaN when no user has both labels.
    """
    users = np.asarray(users)
    y = np.asarray(labels).astype(np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if len(users) == 0:
        return float("nan"), 0
    # Ranks within each user: rank the (user, score) pairs, ties averaged inside a user only.
    order = np.lexsort((s, users))
    u_sorted, s_sorted, y_sorted = users[order], s[order], y[order]
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
    ends = np.r_[starts[1:], len(u_sorted)]
    group = np.repeat(np.arange(len(starts)), ends - starts)
    key_change = np.r_[True, (u_sorted[1:] != u_sorted[:-1]) | (s_sorted[1:] != s_sorted[:-1])]
    tie_start = np.flatnonzero(key_change)
    tie_end = np.r_[tie_start[1:], len(s_sorted)]
    pos_in_group = np.arange(len(s_sorted)) - starts[group]  # 0-based position within user
    avg_rank = np.repeat((pos_in_group[tie_start] + pos_in_group[tie_end - 1]) / 2 + 1, tie_end - tie_start)
    n = (ends - starts).astype(np.float64)
    n_pos = np.bincount(group, weights=y_sorted)
    n_neg = n - n_pos
    rank_pos = np.bincount(group, weights=avg_rank * y_sorted)
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan"), 0
    per_user = (rank_pos[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2) / (n_pos[ok] * n_neg[ok])
    return float(np.sum(per_user * n[ok]) / np.sum(n[ok])), int(ok.sum())


def mean_std(values) -> tuple[float, float, int]:
    """Mean, population std (ddof=0) and count of the finite `values`: the per-day summary of a metric used by
    the trainer's metrics.json and by the report (a day whose metric is NaN, e.g. one class only, is left out)."""
    a = np.asarray(list(values), dtype=np.float64)
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return float("nan"), float("nan"), 0
    return float(a.mean()), float(a.std()), len(a)


def summarise(days: list[dict]) -> dict[str, float]:
    """Mean and std over days of every per-day metric (`mean_std`): the top level of a run's metrics.json."""
    out: dict[str, float] = {}
    for key in ("auc", "gauc", "oracle_auc", "oracle_gauc", "zero_shot_auc", "zero_shot_gauc",
                "train_samples_per_s", "eval_samples_per_s"):
        if any(key in d for d in days):
            out[f"{key}_mean"], out[f"{key}_std"], _ = mean_std(d[key] for d in days if key in d)
    return out
