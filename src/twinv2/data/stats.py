"""Dataset statistics (`twinv2 stats DATASET [--plot DIR]`), computed in one streaming pass over the shards.

Memory is bounded by one shard's columns (behaviour histories come from the memory-mapped CSR of
`Dataset.csr(shard)`; lengths are differences of its offsets) plus small accumulators: history lengths are
kept as exact integer counts (`np.bincount`), so the percentiles are exact without holding one value per user.

Definitions:
- users: distinct user ids with a behaviour or a sample; `users_table`: rows of users.parquet (if any).
- history length per user: behaviours per user with at least one; at sample: behaviours of the sample's user
  with ts strictly before the sample's ts (what a model may see), zero included.
- percentiles use the "lower" rule: p_q = x[floor((n - 1) q)] of the sorted values (numpy method="lower").
- completion ratio p = play_ms / duration_ms, in bins [k/10, (k+1)/10) for k = 0..19 (the last bin is closed
  at 2.0), then ">2" and "NaN" (unknown duration or play time); bins are computed exactly in integers.
- samples per day: samples whose ts lies in each eval day of the manifest, and in its test hour (23).
- behaviours per activity level: when users.parquet has a column `activity` or `user_active_degree`
  (names from manifest `codes` where present).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from twinv2.data.storage import DAY_MS, Dataset
from twinv2.schema import SAMPLES

ACTIVITY_COLUMNS = ("activity", "user_active_degree")
CR_LABELS = [f"{k / 10:.1f}-{(k + 1) / 10:.1f}" for k in range(20)] + [">2", "NaN"]
PERCENTILES = (50, 90, 99)
CHUNK = 1 << 22


def _add_counts(acc: np.ndarray, values: np.ndarray) -> np.ndarray:
    c = np.bincount(np.asarray(values, dtype=np.int64), minlength=len(acc))
    if len(acc) < len(c):
        acc = np.pad(acc, (0, len(c) - len(acc)))
    acc[: len(c)] += c
    return acc


def _summary(counts: np.ndarray) -> dict[str, Any]:
    """n, mean, p50/p90/p99 (lower rule) and max of the values whose integer counts are `counts`."""
    n = int(counts.sum())
    if n == 0:
        return {"n": 0, "mean": None, **{f"p{q}": None for q in PERCENTILES}, "max": None}
    cum = np.cumsum(counts)
    values = np.arange(len(counts))
    out: dict[str, Any] = {"n": n, "mean": float((counts * values).sum() / n)}
    for q in PERCENTILES:
        k = int(math.floor((n - 1) * (q / 100)))
        out[f"p{q}"] = int(np.searchsorted(cum, k, side="right"))
    out["max"] = int(np.flatnonzero(counts)[-1])
    return out


def _log2_hist(counts: np.ndarray) -> dict[str, list[int]]:
    """Counts in bins [0,1), [1,2), [2,4), [4,8), ... covering the largest value."""
    top = max(len(counts) - 1, 1)
    edges = [0, 1] + [2 ** k for k in range(1, int(math.ceil(math.log2(top + 1))) + 1)]
    if edges[-1] <= top:
        edges.append(edges[-1] * 2)
    cum = np.r_[0, np.cumsum(counts)]
    at = np.minimum(np.asarray(edges), len(counts))
    return {"edges": edges, "counts": np.diff(cum[at]).astype(int).tolist()}


def completion_hist(play_ms: np.ndarray, duration_ms: np.ndarray) -> np.ndarray:
    """Counts over CR_LABELS (see the module docstring), exact in integer arithmetic."""
    play = np.asarray(play_ms, dtype=np.int64)
    dur = np.asarray(duration_ms, dtype=np.int64)
    known = (dur > 0) & (play >= 0)
    p, d = play[known], dur[known]
    k = (10 * p) // d
    over = p > 2 * d
    k = np.minimum(k[~over], 19)  # p == 2.0 exactly falls in the closed last bin
    out = np.zeros(len(CR_LABELS), dtype=np.int64)
    out[:20] = np.bincount(k, minlength=20)[:20]
    out[20], out[21] = int(over.sum()), int((~known).sum())
    return out


def seen_lengths(user_ids: np.ndarray, offsets: np.ndarray, beh_ts: np.ndarray,
                 s_uid: np.ndarray, s_ts: np.ndarray) -> np.ndarray:
    """Per sample, the number of its user's behaviours with ts < the sample's ts (one shard, vectorised).

    Behaviour rows are sorted by (user, ts), so key = user_rank * span + (ts - t_min) is sorted too and one
    searchsorted (side="left": strictly before) finds every sample's cut; minus the user's first row = count.
    """
    s_uid, s_ts = np.asarray(s_uid, np.int64), np.asarray(s_ts, np.int64)
    out = np.zeros(len(s_uid), np.int64)
    if len(user_ids) == 0 or len(s_uid) == 0:
        return out
    beh_ts = np.asarray(beh_ts, np.int64)
    i = np.searchsorted(user_ids, s_uid)
    found = i < len(user_ids)
    found[found] = user_ids[i[found]] == s_uid[found]
    t_min = min(int(beh_ts.min()), int(s_ts.min()))
    span = max(int(beh_ts.max()), int(s_ts.max())) - t_min + 1
    if len(user_ids) * span >= 2**62:
        raise ValueError(f"time span {span} ms x {len(user_ids)} users overflows the int64 sort key")
    rank = np.repeat(np.arange(len(user_ids), dtype=np.int64), np.diff(offsets))
    key_b = rank * span + (beh_ts - t_min)
    key_s = i[found] * span + (s_ts[found] - t_min)
    out[found] = np.searchsorted(key_b, key_s, side="left") - offsets[i[found]]
    return out


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted unique values of a and b (sort-based: numpy's hash-based unique is slow on large int arrays)."""
    c = np.sort(np.concatenate([np.asarray(a, np.int64), np.asarray(b, np.int64)]))
    return c[np.r_[True, c[1:] != c[:-1]]] if len(c) else c


def compute_stats(ds: Dataset) -> dict[str, Any]:
    """Statistics of a dataset, streaming over its shards (see the module docstring); JSON-serialisable."""
    days = ds.eval_days
    starts = np.array([d.start_ms for d in days], dtype=np.int64)
    test_starts = np.array([d.test_start_ms for d in days], dtype=np.int64)
    per_day = np.zeros((len(days), 3), dtype=np.int64)  # samples, positives, test-hour samples
    users_tbl = ds.users()
    act_col = next((c for c in ACTIVITY_COLUMNS if users_tbl is not None and c in users_tbl.columns), None)
    act = users_tbl.set_index("user_id")[act_col] if act_col else None
    act_beh: dict[float | None, int] = {}  # None: users without a level
    len_counts = np.zeros(1, np.int64)
    seen_counts = np.zeros(1, np.int64)
    cr = np.zeros(len(CR_LABELS), np.int64)
    n_users = n_samples = n_pos = outside = 0
    p_sum, p_n = 0.0, 0
    items_seen = np.zeros(0, np.int64)
    for shard in range(ds.n_shards):
        csr = ds.csr(shard)
        lengths = np.diff(csr.offsets)
        len_counts = _add_counts(len_counts, lengths)
        for a in range(0, csr.n_rows, CHUNK):
            cr += completion_hist(csr.columns["play_ms"][a:a + CHUNK], csr.columns["duration_ms"][a:a + CHUNK])
            items_seen = _union(items_seen, csr.columns["item_id"][a:a + CHUNK])
        path = ds.shard_path(SAMPLES.name, shard)
        cols = ["user_id", "ts", "label"] + (["p_true"] if "p_true" in pq.read_schema(path).names else [])
        t = pq.read_table(path, columns=cols)
        s_uid, s_ts = t.column("user_id").to_numpy(), t.column("ts").to_numpy()
        label = t.column("label").to_numpy()
        n_samples, n_pos = n_samples + len(label), n_pos + int(label.sum())
        if "p_true" in cols:
            pt = t.column("p_true").to_numpy()
            p_sum, p_n = p_sum + float(np.nansum(pt)), p_n + int(np.isfinite(pt).sum())
        d = np.searchsorted(starts, s_ts, side="right") - 1
        inside = (d >= 0) & (s_ts < starts[np.maximum(d, 0)] + DAY_MS) if len(days) else np.zeros(len(s_ts), bool)
        outside += int((~inside).sum())
        test = inside & (s_ts >= test_starts[np.maximum(d, 0)]) if len(days) else inside
        for j, vals in enumerate((inside, inside & (label == 1), test)):
            per_day[:, j] += np.bincount(d[vals], minlength=len(days))[: len(days)]
        seen_counts = _add_counts(seen_counts, seen_lengths(csr.user_ids, csr.offsets, csr.columns["ts"], s_uid, s_ts))
        n_users += len(_union(csr.user_ids, s_uid))
        if act is not None:
            levels = act.reindex(csr.user_ids).to_numpy(dtype=np.float64)
            for lv in np.unique(levels[~np.isnan(levels)]):
                act_beh[float(lv)] = act_beh.get(float(lv), 0) + int(lengths[levels == lv].sum())
            act_beh[None] = act_beh.get(None, 0) + int(lengths[np.isnan(levels)].sum())

    items_path = ds.root / "items.parquet"
    stats: dict[str, Any] = {
        "name": ds.manifest.get("name", ds.root.name), "root": str(ds.root), "n_shards": ds.n_shards,
        "users": n_users, "users_table": None if users_tbl is None else len(users_tbl),
        "items": pq.ParquetFile(items_path).metadata.num_rows if items_path.exists() else None,
        "items_in_behaviours": len(items_seen), "behaviours": int(len_counts @ np.arange(len(len_counts))),
        "samples": n_samples,
        "history_length": _summary(len_counts),  # CSR users have >= 1 behaviour: no zeros counted
        "history_length_hist": _log2_hist(len_counts),
        "history_length_at_sample": _summary(seen_counts),
        "completion_ratio": {"bins": CR_LABELS, "counts": cr.tolist()},
        "label_rate": n_pos / n_samples if n_samples else None,
        "p_true_mean": p_sum / p_n if p_n else None,
        "samples_per_day": [{"day": dd.label, "start_ms": dd.start_ms, "samples": int(r[0]), "positives": int(r[1]),
                             "test_hour_samples": int(r[2])} for dd, r in zip(days, per_day)],
        "samples_outside_eval_days": outside,
        "behaviours_per_activity": _activity_table(ds, users_tbl, act_col, act_beh),
    }
    return stats


def _activity_table(ds: Dataset, users_tbl: Any, col: str | None,
                    act_beh: dict[float | None, int]) -> list[dict] | None:
    """Users (of users.parquet) and behaviours per activity level; level None = no level known."""
    if col is None:
        return None
    names = {v: k for k, v in ds.manifest.get("codes", {}).get(col, {}).items()}
    lv = users_tbl[col].to_numpy(dtype=np.float64)
    levels: list[float | None] = sorted({float(x) for x in lv[~np.isnan(lv)]})
    if np.isnan(lv).any() or act_beh.get(None, 0):
        levels.append(None)
    rows = []
    for level in levels:
        n_u = int(np.isnan(lv).sum() if level is None else (lv == level).sum())
        beh = act_beh.get(level, 0)
        if level is None:
            name = "unknown"
        else:
            name = names.get(int(level), f"{level:g}") if level.is_integer() else f"{level:g}"
        rows.append({"level": level, "name": name, "users": n_u, "behaviours": beh,
                     "mean_per_user": beh / n_u if n_u else None})
    return rows


def _fmt(v: Any, digits: int = 4) -> str:
    """A table cell: "-" for None, thousands separators for ints, fixed decimals for floats."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def format_stats(stats: dict[str, Any]) -> str:
    """The statistics as a readable plain-text report (aligned tables)."""
    out = [f"dataset {stats['name']}  ({stats['root']}, {stats['n_shards']} shards)", ""]
    rows = [("users (with behaviours or samples)", stats["users"]), ("users in users.parquet", stats["users_table"]),
            ("items (items.parquet)", stats["items"]), ("items in behaviours", stats["items_in_behaviours"]),
            ("behaviours", stats["behaviours"]), ("samples", stats["samples"]),
            ("label rate", stats["label_rate"]),
            # generated worlds only: imported logs have no true click probability (issue 13: no such row there)
            *([("p_true mean", stats["p_true_mean"])] if stats.get("p_true_mean") is not None else []),
            ("samples outside eval days", stats["samples_outside_eval_days"])]
    out += [f"  {k:<36} {_fmt(v):>14}" for k, v in rows]
    out += ["", f"  {'history length':<28} {'n':>10} {'mean':>10} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}"]
    for key, title in (("history_length", "per user (>= 1 behaviour)"),
                       ("history_length_at_sample", "at sample (ts <)")):
        h = stats[key]
        mean = "-" if h["mean"] is None else f"{h['mean']:.2f}"
        out.append(f"  {title:<28} {_fmt(h['n']):>10} {mean:>10} " +
                   " ".join(f"{_fmt(h[c]):>8}" for c in ("p50", "p90", "p99", "max")))
    cr = stats["completion_ratio"]
    total = max(sum(cr["counts"]), 1)
    out += ["", f"  {'completion ratio':<16} {'behaviours':>12} {'share':>8}"]
    out += [f"  {b:<16} {_fmt(c):>12} {c / total:>8.2%}" for b, c in zip(cr["bins"], cr["counts"])]
    out += ["", f"  {'eval day':<12} {'samples':>10} {'positives':>10} {'label rate':>11} {'test hour':>10}"]
    for d in stats["samples_per_day"]:
        rate = d["positives"] / d["samples"] if d["samples"] else None
        out.append(f"  {d['day']:<12} {_fmt(d['samples']):>10} {_fmt(d['positives']):>10} {_fmt(rate):>11} "
                   f"{_fmt(d['test_hour_samples']):>10}")
    if stats["behaviours_per_activity"]:
        out += ["", f"  {'activity level':<22} {'users':>8} {'behaviours':>12} {'per user':>10}"]
        for r in stats["behaviours_per_activity"]:
            plain = r["level"] is None or r["name"] == f"{r['level']:g}"
            lv = r["name"] if plain else f"{r['name']} ({r['level']:g})"
            per = "-" if r["mean_per_user"] is None else f"{r['mean_per_user']:.1f}"
            out.append(f"  {lv:<22} {_fmt(r['users']):>8} {_fmt(r['behaviours']):>12} {per:>10}")
    return "\n".join(out) + "\n"


def plot_stats(ds: Dataset, stats: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """PNG plots (history length on log x, completion-ratio histogram, samples per day) in `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = stats.get("name", ds.root.name)
    paths = []

    h = stats["history_length_hist"]
    fig, ax = plt.subplots(figsize=(7, 4))
    edges, counts = h["edges"][1:], h["counts"][1:]  # per-user lengths are >= 1; bin [0, 1) is empty
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", edgecolor="black")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="behaviours per user (log2 bins)", ylabel="users", title=f"{name}: history length")
    paths.append(_save(fig, out / "history_length.png"))

    cr = stats["completion_ratio"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(range(len(cr["bins"])), cr["counts"], color=["C0"] * 20 + ["C1", "C7"])
    ax.set_xticks(range(len(cr["bins"])), cr["bins"], rotation=60, ha="right", fontsize=7)
    ax.set(xlabel="completion ratio play/duration", ylabel="behaviours", title=f"{name}: completion ratio")
    paths.append(_save(fig, out / "completion_ratio.png"))

    days = stats["samples_per_day"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(days))
    ax.bar(x - 0.2, [d["samples"] for d in days], width=0.4, label="samples")
    ax.bar(x + 0.2, [d["positives"] for d in days], width=0.4, label="positives")
    ax.set_xticks(x, [d["day"] for d in days])
    ax.set(xlabel="eval day", ylabel="samples", title=f"{name}: samples per eval day")
    ax.legend()
    paths.append(_save(fig, out / "samples_per_day.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
