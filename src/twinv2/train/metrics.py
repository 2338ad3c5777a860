"""AUC and GAUC, exact (ties get average ranks, as scikit-learn), vectorised over users."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

# metrics.json's integrity fields (written by the trainer, checked by the report): OUTPUTS maps each prediction
# file of the run to its {"bytes", "sha256"} (data/checksum.py), METRICS_SHA256 is the body's own checksum
# (data/storage.py `manifest_sha256`, that field left out); metrics.json is written last, so it vouches for all.
OUTPUTS = "outputs"
METRICS_SHA256 = "metrics_sha256"


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


# A test hour below this many samples gives an AUC whose sampling error is as large as the differences the
# report compares (at AUC 0.7 with 30% positives, the SE of one day's AUC at n = 100 is ~0.060, at 1,000 ~0.019;
# Hanley & McNeil 1982), and a day with one class has no AUC at all. Such a day is still trained on and its
# metrics are still recorded and averaged (the report recomputes the same means), but it is counted as not
# usable, warned about, and the summary says how many days were usable.
MIN_TEST_SAMPLES = 100


def day_problem(n_test: int, n_pos: int) -> str | None:
    """Why a test hour of `n_test` samples with `n_pos` clicks cannot be trusted, or None when it can."""
    n_test, n_pos = int(n_test), int(n_pos)
    if n_test == 0:
        return "no test samples"
    if n_pos == 0 or n_pos == n_test:
        return f"one class only ({n_test} samples, {n_pos} clicks)"
    if n_test < MIN_TEST_SAMPLES:
        return f"{n_test} test samples, fewer than {MIN_TEST_SAMPLES}"
    return None


def summarise(days: list[dict]) -> dict[str, float]:
    """Mean and std over days of every per-day metric (`mean_std`): the top level of a run's metrics.json.

    Also `n_days`, and `n_usable_days`: days whose test hour has at least MIN_TEST_SAMPLES samples and both
    classes (a day row without `n_test` counts as usable when its AUC is finite). The means are over the days
    with a finite value either way (`auc_n_days` of them for AUC)."""
    out: dict[str, float] = {}
    for key in ("auc", "gauc", "oracle_auc", "oracle_gauc", "zero_shot_auc", "zero_shot_gauc",
                "train_samples_per_s", "eval_samples_per_s"):
        if any(key in d for d in days):
            out[f"{key}_mean"], out[f"{key}_std"], n = mean_std(d[key] for d in days if key in d)
            if key == "auc":
                out["auc_n_days"] = n
    out["n_days"] = len(days)
    out["n_usable_days"] = sum(usable(d) for d in days)
    out["min_test_samples"] = MIN_TEST_SAMPLES
    return out


def usable(day: dict) -> bool:
    """A day row (metrics.json `days[i]`) whose test hour is big enough and has both classes (`day_problem`)."""
    a = day.get("auc")
    finite = a is not None and bool(np.isfinite(float(a)))
    if "n_test" not in day:
        return finite
    return finite and int(day["n_test"]) >= MIN_TEST_SAMPLES


def summary_line(s: dict) -> str:
    """One line for a run's summary (`summarise` output, plus `pooled_auc` when the trainer adds it), saying
    over how many days the means are and how many days were usable, e.g.
    "AUC 0.7172 ± 0.2093   GAUC 0.6012 ± 0.1010   over 3 of 5 days (2 days unusable: < 100 test samples or
    one class); pooled AUC 0.7012"."""
    def pm(key: str) -> str:
        m, sd = s.get(f"{key}_mean"), s.get(f"{key}_std")
        if m is None or not np.isfinite(float(m)):
            return f"{key.upper()} n/a"
        return f"{key.upper()} {float(m):.4f} ± {float(sd):.4f}"

    n = int(s.get("n_days", 0))
    n_auc = int(s.get("auc_n_days", n))
    bad = n - int(s.get("n_usable_days", n))
    line = f"{pm('auc')}   {pm('gauc')}   over {n_auc} of {n} days"
    if bad:
        line += (f" ({bad} day{'s' if bad != 1 else ''} unusable: < {int(s.get('min_test_samples', MIN_TEST_SAMPLES))}"
                 f" test samples or one class)")
    p = s.get("pooled_auc")
    if p is not None and np.isfinite(float(p)):
        line += f"; pooled AUC {float(p):.4f}"
        if s.get("n_test_total") is not None:
            line += f" over {int(s['n_test_total']):,} test samples"
    return line
