"""Numbers computed from the prediction files and the dataset: Figure 5's history-length groups and diversity.

History-length groups (Figure 5 analog):
- the users are every user in TWIN's or TWIN-V2's test predictions (all evaluation days);
- a user's length is the number of their behaviours with ts before the start of the first evaluation day
  (what a snapshot taken then would compress), 0 for a user without behaviours;
- terciles: t1 and t2 are the 1/3 and 2/3 quantiles of those lengths with numpy's "lower" rule (an observed
  length); low = length ≤ t1, medium = t1 < length ≤ t2, high = length > t2. The groups partition the users;
  ties at a threshold go to the lower group, so shares need not be exactly a third (they are printed);
- per group, GAUC (train/metrics.gauc) is computed per day on that group's test samples, then averaged over
  the days, as in Table 3; the gain is TWIN-V2 − TWIN per day, with the same paired test.

Diversity:
- per (user, test day): the user's test candidates of that day, ranked by the model's score (ties broken by
  item_id); the top 10 (all of them if fewer); the number of distinct tags (items.parquet; an item missing
  there counts as one "unknown" tag); the reported value is the mean over (user, day) pairs;
- references on the same candidates: all candidates; the expected value for 10 drawn uniformly at random
  (exact: Σ_tags 1 − C(N−c, k)/C(N, k)); the top 10 by p_true where the samples carry it (generated data).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import gammaln

from twinv2.report.load import Experiment, Section, display_name
from twinv2.report.tables import mean_std, paired_values, signed
from twinv2.train.metrics import gauc

GROUPS = ("low", "medium", "high")
TOP_K = 10
KEYS = ["user_id", "item_id", "ts"]


def history_lengths(dataset, users: np.ndarray, before_ts: int) -> np.ndarray:
    """Behaviours of each user with ts < before_ts (0 for a user with none): `Dataset.history_lengths`."""
    from twinv2.data.storage import Dataset

    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    return ds.history_lengths(users, before_ts)


def tercile_groups(lengths: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(group index 0/1/2 per user, t1, t2); see the module docstring."""
    lengths = np.asarray(lengths)
    t1, t2 = (float(x) for x in np.quantile(lengths, [1 / 3, 2 / 3], method="lower"))
    return np.where(lengths <= t1, 0, np.where(lengths <= t2, 1, 2)), t1, t2


def _per_day_gauc(df: pd.DataFrame) -> dict[int, float]:
    out = {}
    for d, part in df.groupby("day", sort=True):
        out[int(d)] = gauc(part["user_id"].to_numpy(), part["label"].to_numpy(), part["score"].to_numpy())[0]
    return out


def history_groups(sec: Section, exp: Experiment, a: str = "twin_v2", b: str = "twin",
                   power=None) -> dict[str, Any] | None:
    """Figure 5 analog, or None (with the reason in `missing`) when a part is absent. `power`
    (report.power.Power): each group's gain also as a paired bootstrap over the group's users (`boot`)."""
    from twinv2.data.storage import Dataset

    if sec.dataset is None or a not in sec.runs or b not in sec.runs:
        return {"missing": "needs the dataset and both TWIN and TWIN-V2 runs"}
    pa, pb = sec.runs[a].predictions(), sec.runs[b].predictions()
    if pa is None or pb is None:
        return {"missing": "needs TWIN's and TWIN-V2's predictions-day*.parquet files"}
    ds = Dataset(sec.dataset)
    start = ds.eval_days[0].start_ms
    users = np.union1d(pa["user_id"].to_numpy(np.int64), pb["user_id"].to_numpy(np.int64))
    if len(users) == 0:
        return {"missing": "the prediction files are empty"}
    lengths = history_lengths(ds, users, start)
    group, t1, t2 = tercile_groups(lengths)
    g_of = pd.Series(group, index=users)
    n_samples = len(pa)
    rows = []
    for gi, name in enumerate(GROUPS):
        members = users[group == gi]
        la = lengths[group == gi]
        sa, sb = pa[pa["user_id"].map(g_of) == gi], pb[pb["user_id"].map(g_of) == gi]
        va, vb = _per_day_gauc(sa), _per_day_gauc(sb)
        ma, sda, _ = mean_std(va.values())
        mb, sdb, _ = mean_std(vb.values())
        rows.append({
            "group": name, "users": len(members), "share_users": len(members) / len(users),
            "share_samples": len(sa) / n_samples if n_samples else float("nan"),
            "length_min": int(la.min()) if len(la) else None, "length_max": int(la.max()) if len(la) else None,
            "length_mean": float(la.mean()) if len(la) else float("nan"),
            f"{a}_gauc_mean": ma, f"{a}_gauc_std": sda, f"{b}_gauc_mean": mb, f"{b}_gauc_std": sdb,
            f"{a}_gauc_days": va, f"{b}_gauc_days": vb,
            "gain": paired_values(va, vb),
        })
        if power is not None and len(members):
            src_a = [exp.rel(p) for p in sec.runs[a].prediction_files()]
            src_b = [exp.rel(p) for p in sec.runs[b].prediction_files()]
            rows[-1]["boot"] = power.diff(a, b, src_a, src_b, users=np.sort(members).tolist())
    return {"a": a, "b": b, "name_a": display_name(a), "name_b": display_name(b), "users": len(users),
            "before_ts": int(start), "t1": t1, "t2": t2, "rows": rows,
            "user_ids": users.tolist(), "user_groups": group.tolist(), "user_lengths": lengths.tolist()}


# ---- diversity ------------------------------------------------------------------------------------------
def distinct_top_k(df: pd.DataFrame, score: str, k: int = TOP_K) -> pd.Series:
    """Distinct tags among the top-k candidates by `score` per (user_id, day); df needs a `tag` column."""
    d = df.sort_values(["user_id", "day", score, "item_id"], ascending=[True, True, False, True], kind="stable")
    rank = d.groupby(["user_id", "day"], sort=False).cumcount()
    return d[rank.to_numpy() < k].groupby(["user_id", "day"])["tag"].nunique()


def expected_random_distinct(df: pd.DataFrame, k: int = TOP_K) -> pd.Series:
    """Expected distinct tags among k candidates drawn without replacement, per (user_id, day), exactly."""
    c = df.groupby(["user_id", "day", "tag"]).size().rename("c").reset_index()
    n = df.groupby(["user_id", "day"]).size().rename("N")
    c = c.join(n, on=["user_id", "day"])
    N, cc = c["N"].to_numpy(np.float64), c["c"].to_numpy(np.float64)
    kk = np.minimum(k, N)
    # P(tag absent) = C(N − c, k) / C(N, k); zero when N − c < k.
    ok = N - cc >= kk
    log_absent = np.where(ok, gammaln(N - cc + 1) - gammaln(N - cc - kk + 1) - gammaln(N + 1) + gammaln(N - kk + 1),
                          -np.inf)
    c["present"] = 1.0 - np.exp(log_absent)
    return c.groupby(["user_id", "day"])["present"].sum()


def _tag_map(sec: Section) -> pd.Series | None:
    from twinv2.data.storage import Dataset

    if sec.dataset is None:
        return None
    items = Dataset(sec.dataset).items()
    return pd.Series(items["tag"].to_numpy(), index=items["item_id"].to_numpy())


def _with_tags(df: pd.DataFrame, tags: pd.Series) -> pd.DataFrame:
    return df.assign(tag=df["item_id"].map(tags).fillna(-1).astype(np.int64))


def diversity(sec: Section, exp: Experiment) -> dict[str, Any]:
    tags = _tag_map(sec)
    if tags is None:
        return {"missing": "needs the dataset's items.parquet"}
    preds = {}
    for name, run in sec.runs.items():
        p = run.predictions()
        if p is not None and len(p):
            preds[name] = _with_tags(p, tags)
    if not preds:
        return {"missing": "no predictions-day*.parquet files"}
    rows = []
    for name, p in preds.items():
        v = distinct_top_k(p, "score")
        rows.append({"model": name, "name": display_name(name), "kind": "model", "mean": float(v.mean()),
                     "user_days": len(v)})
    ref_name = "twin_v2" if "twin_v2" in preds else next(iter(preds))
    cand = preds[ref_name]
    per = cand.groupby(["user_id", "day"])
    sizes = per.size()
    refs = [{"model": "all_candidates", "name": "all candidates (no ranking)", "kind": "reference",
             "mean": float(per["tag"].nunique().mean()), "user_days": len(sizes)},
            {"model": "random_10", "name": f"{TOP_K} random candidates (expected)", "kind": "reference",
             "mean": float(expected_random_distinct(cand).mean()), "user_days": len(sizes)}]
    pt = _p_true(sec, cand)
    if pt is not None:
        v = distinct_top_k(pt, "p_true")
        refs.append({"model": "p_true", "name": f"top {TOP_K} by p_true (ground truth)", "kind": "reference",
                     "mean": float(v.mean()), "user_days": len(v)})
    return {"rows": rows + refs, "candidates_from": ref_name, "k": TOP_K,
            "candidates_mean": float(sizes.mean()), "share_over_k": float((sizes > TOP_K).mean()),
            "n_tags_in_candidates": int(cand["tag"].nunique())}


def _p_true(sec: Section, cand: pd.DataFrame) -> pd.DataFrame | None:
    from twinv2.data.storage import Dataset

    if "p_true" in cand.columns and cand["p_true"].notna().all():  # the trainer writes it into predictions
        return cand

    ds = Dataset(sec.dataset)
    import pyarrow.parquet as pq

    first = ds.shard_path("samples", 0)
    if not first.exists() or "p_true" not in pq.read_schema(first).names:
        return None
    s = ds.samples()[KEYS + ["p_true"]].drop_duplicates(KEYS)
    out = cand.merge(s, on=KEYS, how="left")
    return out if out["p_true"].notna().any() else None


def group_summary_sentence(hg: dict[str, Any]) -> str:
    """A sentence on whether the gain grows with history length and is positive in every group."""
    rows = [r for r in hg["rows"] if math.isfinite(r["gain"]["mean_diff"])]
    if not rows:
        return "No group has a GAUC for both models."
    gains = [r["gain"]["mean_diff"] for r in rows]
    listed = ", ".join(f"{r['group']} {signed(r['gain']['mean_diff'])}" for r in rows)
    head = f"{hg['name_a']} − {hg['name_b']} GAUC by group: {listed}."
    # Only groups with a GAUC for both models speak: with one of them, "grows" would be vacuously true (a sparse
    # log, issue 13: one user per group with both labels in a test hour), and "every group" would skip the rest.
    lacking = [r["group"] for r in hg["rows"] if r not in rows]
    if len(rows) < 2:
        return (f"{head} Whether the gain grows with history length cannot be said: only the {rows[0]['group']} "
                f"group has a GAUC for both models.")
    grows = all(x <= y for x, y in itertools.pairwise(gains))
    pos = all(g > 0 for g in gains)
    where = "every group" if not lacking else f"every group with a GAUC for both ({', '.join(lacking)}: none)"
    return (f"{head} The gain {'grows' if grows else 'does not grow'} with history length and is "
            f"{'positive' if pos else 'not positive'} in {where}.")
