"""Every number the report prints that comes from metrics.json files, the cluster benchmark and the manifests.

Conventions (the report's "how to read this" repeats them):
- mean ± std over the evaluation days; std is the population std (ddof=0), as the trainer's own summary
  (train/metrics.py `mean_std`); days with a NaN metric are left out and the count says how many remain.
- paired test: scipy.stats.ttest_rel on the per-day values of two runs, matched by day index (days where
  both are finite); "n/a" below 2 days or when the daily difference never varies (t undefined).
- "best" = the largest mean among the models (the oracle and the paper's columns are not competitors).
- confidence intervals: from the prediction files, paired bootstrap over users (power.py, compare.py); the
  daily t-test stays beside them for the per-day view.

Every record that is derived from one metrics.json carries `source` (its path relative to the experiment
folder) so that check.py can recompute it; paired records carry `source_a` / `source_b`.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
from scipy.stats import ttest_rel

from twinv2.report import paper
from twinv2.report.load import (
    ABLATIONS,
    MODELS,
    Experiment,
    Run,
    Section,
    day_values,
    display_name,
    finite,
)
from twinv2.train.metrics import mean_std, usable  # the one per-day summary (the trainer writes it too)

RUN_FIELDS = ("auc", "gauc", "oracle_auc", "oracle_gauc", "zero_shot_auc", "zero_shot_gauc", "train_samples_per_s",
              "eval_samples_per_s")
LONG_SEQUENCE = tuple(m for m in MODELS if m not in ("avg_pooling", "din"))
# The short-window baselines' default (models/din.py and avg_pooling.py `default_seq_len`), used only when a
# run's config does not set seq_len; it frames the KuaiRand history note, it is not a result.
DEFAULT_RECENT_WINDOW = 100
ALPHA = 0.05


def clean(x: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return [clean(v) for v in x.tolist()]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def num(x: Any) -> float:
    """A table value as float (None → NaN)."""
    return float("nan") if x is None else float(x)


def signed(x: Any, d: int = 4) -> str:
    """A difference with its sign; a value that rounds to zero prints as +0.0000, never -0.0000."""
    v = round(num(x), d)
    return f"{v if v != 0 else 0.0:+.{d}f}"


# ---- one run --------------------------------------------------------------------------------------------
def summarise_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Mean, std and day count of every per-day metric present, plus totals; from the per-day rows only."""
    days = metrics.get("days") or []
    out: dict[str, Any] = {"n_days": len(days)}
    for key in RUN_FIELDS:
        if not any(key in d for d in days):
            continue
        vals = day_values(metrics, key)
        m, s, n = mean_std(vals.values())
        out[f"{key}_mean"], out[f"{key}_std"], out[f"{key}_n"] = m, s, n
    for key in ("train_seconds", "n_train", "n_test"):
        if any(key in d for d in days):
            out[f"{key}_total"] = float(sum(num(d.get(key)) for d in days if d.get(key) is not None))
    out["n_test_days"] = [None if d.get("n_test") is None else int(d["n_test"]) for d in days]
    out["usable_days"] = sum(usable(d) for d in days)  # >= MIN_TEST_SAMPLES test samples and both labels
    out["days"] = [int(d.get("day", i)) for i, d in enumerate(days)]
    out["auc_days"] = [day_values(metrics, "auc")[k] for k in out["days"]]
    out["gauc_days"] = [day_values(metrics, "gauc")[k] for k in out["days"]]
    return out


def summary_mismatches(metrics: dict[str, Any], where: str, tol: float = 1e-9) -> list[str]:
    """Where metrics.json's own top-level mean/std disagree with its per-day rows."""
    out = []
    mine = summarise_metrics(metrics)
    for key in RUN_FIELDS:
        for stat in ("mean", "std"):
            k = f"{key}_{stat}"
            if k in metrics and k in mine and not same(metrics[k], mine[k], tol):
                out.append(f"{where}: top-level {k} = {metrics[k]} but the per-day rows give {mine[k]}")
    return out


def same(a: Any, b: Any, tol: float = 1e-9) -> bool:
    a, b = num(a), num(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def run_record(run: Run, exp: Experiment) -> dict[str, Any]:
    return {"kind": "run", "source": exp.rel(run.dir / "metrics.json"), "model": run.name,
            "name": display_name(run.name), **summarise_metrics(run.metrics)}


# ---- paired test ----------------------------------------------------------------------------------------
def paired_values(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """a − b over the days where both are finite, with scipy's paired t-test."""
    days = sorted(d for d in set(a) & set(b) if math.isfinite(a[d]) and math.isfinite(b[d]))
    x = np.array([a[d] for d in days], dtype=np.float64)
    y = np.array([b[d] for d in days], dtype=np.float64)
    diff = x - y
    out: dict[str, Any] = {"n": len(days), "days": days, "diff_days": diff.tolist(),
                           "mean_diff": float(diff.mean()) if len(days) else float("nan"),
                           "std_diff": float(diff.std()) if len(days) else float("nan"),
                           "t": float("nan"), "p": float("nan"), "note": ""}
    if len(days) < 2:
        out["note"] = f"n/a: {len(days)} day(s) with both values, a paired test needs 2"
    elif np.ptp(diff) == 0:
        out["note"] = "n/a: the difference is the same every day (t undefined)"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = ttest_rel(x, y)
        out["t"], out["p"] = float(res.statistic), float(res.pvalue)
    return out


def paired(a: Run, b: Run, metric: str, exp: Experiment) -> dict[str, Any]:
    """Paired test of run a minus run b on a per-day metric."""
    return {"kind": "paired", "metric": metric, "a": a.name, "b": b.name,
            "source_a": exp.rel(a.dir / "metrics.json"), "source_b": exp.rel(b.dir / "metrics.json"),
            **paired_values(a.day_values(metric), b.day_values(metric))}


# ---- Table 3 --------------------------------------------------------------------------------------------
def table3(sec: Section, exp: Experiment) -> dict[str, Any]:
    rows = [run_record(r, exp) for r in sec.runs.values()]
    best: dict[str, list[str]] = {}
    for col in ("auc", "gauc"):
        means = [num(r.get(f"{col}_mean")) for r in rows]
        top = max((m for m in means if math.isfinite(m)), default=float("nan"))
        best[col] = [r["model"] for r, m in zip(rows, means) if math.isfinite(m) and m == top]
        for r, m in zip(rows, means):
            r[f"best_{col}"] = r["model"] in best[col]
    for r in rows:
        p = paper.TABLE3.get(r["model"])
        r["paper_auc"], r["paper_gauc"] = (p if p else (None, None))
    out: dict[str, Any] = {"rows": rows, "best": best, "oracle": oracle(sec, exp), "paired": None, "spread": {}}
    if "twin" in sec.runs and "twin_v2" in sec.runs:
        out["paired"] = {m: paired(sec.runs["twin_v2"], sec.runs["twin"], m, exp) for m in ("auc", "gauc")}
    for col in ("auc", "gauc"):
        for name, subset in (("all", rows), ("long_sequence", [r for r in rows if r["model"] in LONG_SEQUENCE])):
            v = finite(num(r.get(f"{col}_mean")) for r in subset)
            out["spread"][f"{col}_{name}"] = float(v.max() - v.min()) if len(v) >= 2 else float("nan")
    return out


def oracle(sec: Section, exp: Experiment) -> dict[str, Any] | None:
    """The oracle AUC/GAUC from p_true (generated data), taken from TWIN-V2's run (else the first with it);
    `max_disagreement` is the largest difference between runs' per-day oracle values (0: same test sets)."""
    have = [r for r in sec.runs.values() if any("oracle_auc" in d for d in r.days)]
    if not have:
        return None
    src = next((r for r in have if r.name == "twin_v2"), have[0])
    out: dict[str, Any] = {"kind": "oracle", "source": exp.rel(src.dir / "metrics.json"), "model": src.name}
    for key in ("auc", "gauc"):
        m, s, n = mean_std(src.day_values(f"oracle_{key}").values())
        out[f"{key}_mean"], out[f"{key}_std"], out[f"{key}_n"] = m, s, n
    gap = 0.0
    for r in have:
        for key in ("oracle_auc", "oracle_gauc"):
            a, b = r.day_values(key), src.day_values(key)
            diffs = [abs(a[d] - b[d]) for d in set(a) & set(b) if math.isfinite(a[d]) and math.isfinite(b[d])]
            gap = max([gap, *diffs])
    out["max_disagreement"] = gap
    return out


# ---- Table 4 --------------------------------------------------------------------------------------------
def table4(sec: Section, exp: Experiment) -> dict[str, Any] | None:
    b = sec.cluster_bench
    if not isinstance(b, dict) or not b.get("rows"):
        return None
    rows = []
    for r in b["rows"]:
        p = paper.TABLE4.get(r.get("variant")) if r.get("backend") != "sklearn" else None
        rows.append({k: r.get(k) for k in ("variant", "backend", "delta", "accuracy", "sec_per_user_median",
                                          "sec_per_user_p90", "cpu_sec_per_user_median", "clusters_per_user",
                                          "mean_cluster_size", "compression", "bytes_before", "bytes_after")}
                    | {"paper_label": p[0] if p else None, "paper_delta": p[1] if p else None,
                       "paper_accuracy": p[2] if p else None, "paper_sec": p[3] if p else None})
    return {"kind": "bench", "source": exp.rel(sec.root / "cluster_bench.json"), "rows": rows,
            "setup": b.get("setup"), "targets": b.get("targets"), "big_user_seconds": b.get("big_user_seconds"),
            "big_user_T": b.get("big_user_T")}


# ---- Figure 4 -------------------------------------------------------------------------------------------
def ablation(sec: Section, exp: Experiment) -> dict[str, Any] | None:
    full = sec.runs.get("twin_v2")
    if not sec.ablation:
        return None
    rows = []
    for name, run in [("full", full), *[(v, sec.ablation.get(v)) for v in ABLATIONS]]:
        if run is None:
            rows.append({"variant": name, "name": display_name(name), "missing": True})
            continue
        rec = {**run_record(run, exp), "variant": name, "name": display_name(name), "missing": False}
        if name != "full" and full is not None:
            rec["vs_full"] = {m: paired(run, full, m, exp) for m in ("auc", "gauc")}
        rows.append(rec)
    return {"rows": rows, "full_present": full is not None}


# ---- cost -----------------------------------------------------------------------------------------------
def cost(sec: Section, exp: Experiment) -> dict[str, Any]:
    from twinv2.schema import BEHAVIOUR_ROW_BYTES as RAW_ROW_BYTES, CLUSTER_ROW_BYTES as ROW_BYTES

    models = [{**run_record(r, exp)} for r in sec.runs.values()]
    snaps = [snapshot_cost(path, m, sec, exp, RAW_ROW_BYTES, ROW_BYTES) for path, m in sec.snapshots]
    timings = exp.meta.get("timings") or {}
    cluster_timings = {k: v for k, v in timings.items() if k.lower().startswith("cluster")}  # not "train ../sim_cluster"
    beh_disk = None
    if sec.dataset is not None and (sec.dataset / "behaviours").is_dir():
        beh_disk = float(sum(p.stat().st_size for p in (sec.dataset / "behaviours").glob("part-*.parquet")))
    bench = None
    bt = exp.bench_train
    if isinstance(bt, dict) and bt.get("rows"):
        bench = {"source": "bench_train.json", "rows": [
            {k: r.get(k) for k in ("model", "gsu_length", "batch", "threads", "train_samples_per_s",
                                   "infer_samples_per_s", "train_samples_per_s_model_only",
                                   "infer_samples_per_s_model_only", "peak_rss_gb")} for r in bt["rows"]],
            "targets_met": bt.get("targets_met"), "machine": bt.get("machine")}
    return {"models": models, "snapshots": snaps, "cluster_timings": cluster_timings,
            "behaviour_parquet_bytes": beh_disk, "raw_row_bytes": RAW_ROW_BYTES, "cluster_row_bytes": ROW_BYTES,
            "bench_train": bench}


def snapshot_cost(path, m: dict[str, Any], sec: Section, exp: Experiment, raw_row: int,
                  row_bytes: int) -> dict[str, Any]:
    """Users, behaviours, clusters, time and bytes of one cluster snapshot, from its manifest; behaviours and
    cluster rows are derived from the dataset / part files when the manifest lacks them (`derived` says so)."""
    import pyarrow.parquet as pq

    shards = m.get("shards") or {}
    derived = []
    rows = [e.get("rows") for e in shards.values()]
    if rows and all(r is not None for r in rows):
        clusters = float(sum(rows))
    else:
        clusters = float(sum(pq.ParquetFile(p).metadata.num_rows for p in path.glob("part-*.parquet")))
        derived.append("clusters: rows of the part files")
    beh = [e.get("behaviours") for e in shards.values()]
    if beh and all(b is not None for b in beh):
        behaviours = float(sum(beh))
    else:
        behaviours = float(behaviours_before(sec, int(m["snapshot_ts"]))) if sec.dataset is not None \
            and "snapshot_ts" in m else float("nan")
        derived.append("behaviours: counted in the dataset before snapshot_ts")
    users = [e.get("users") for e in shards.values()]
    disk = [e.get("bytes") for e in shards.values()]
    shard_sec = [e.get("seconds") for e in shards.values()]
    return {
        "snapshot": path.name, "source": exp.rel(path / "manifest.json"), "snapshot_ts": m.get("snapshot_ts"),
        "complete": bool(m.get("complete")), "config": m.get("config"),
        "users": float(sum(users)) if users and None not in users else None,
        "behaviours": behaviours, "clusters": clusters,
        "compression": clusters / behaviours if behaviours else float("nan"),
        "wall_seconds": (m.get("last_run") or {}).get("seconds"),
        # a refresh (experiment cluster_cadence "daily") clusters only users with new behaviours again
        "base_snapshot": m.get("base_snapshot"),
        "clustered_users": (m.get("last_run") or {}).get("clustered_users"),
        "reused_users": (m.get("last_run") or {}).get("reused_users"),
        "worker_seconds": float(sum(shard_sec)) if shard_sec and None not in shard_sec else None,
        "bytes_before": behaviours * raw_row, "bytes_after": clusters * row_bytes,
        "parquet_bytes_after": float(sum(disk)) if disk and None not in disk else None,
        "derived": derived,
    }


def behaviours_before(sec: Section, ts: int) -> int:
    from twinv2.data.csr import cuts_before
    from twinv2.data.storage import Dataset

    ds = Dataset(sec.dataset)
    total = 0
    for s in range(ds.n_shards):
        csr = ds.csr(s)
        starts = np.asarray(csr.offsets[:-1], np.int64)
        total += int((cuts_before(csr.columns["ts"], starts, csr.offsets[1:], ts) - starts).sum())
    return total


# ---- far-past-signal sweep ------------------------------------------------------------------------------
def sweep(exp: Experiment) -> dict[str, Any] | None:
    """Per value: TWIN-V2 − TWIN per day (compare.add_sweep_power adds the bootstrap and redoes the verdict)."""
    if not exp.sweep:
        return None
    rows = []
    for value, sec in exp.sweep.items():
        a, b = sec.runs.get("twin_v2"), sec.runs.get("twin")
        row: dict[str, Any] = {"value": value, "section": sec.key,
                               "twin": run_record(b, exp) if b else None, "twin_v2": run_record(a, exp) if a else None}
        row["gain"] = {m: paired(a, b, m, exp) for m in ("auc", "gauc")} if a and b else None
        rows.append(row)
    return {"rows": rows, "verdict": {m: sweep_verdict(rows, m) for m in ("gauc", "auc")},
            "planned": (exp.meta.get("sweep") or {}).get("values")}


def _zero_like(g: dict[str, Any]) -> bool:
    """A gain indistinguishable from zero: paired p ≥ 0.05, or (no test possible) |mean| ≤ its daily std."""
    if math.isfinite(num(g["p"])):
        return num(g["p"]) >= ALPHA
    return abs(num(g["mean_diff"])) <= num(g["std_diff"])


def _gain(row: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """The gain the verdict reads: the pooled paired-bootstrap difference and its CI where the predictions
    gave one (zero-like = "not resolved"), else the daily paired t-test's mean difference."""
    boot = (row.get("boot") or {}).get(metric)
    if boot and math.isfinite(num(boot.get("value"))):
        return {"diff": num(boot["value"]), "zero": boot["verdict"] == "not resolved",
                "text": f"{signed(boot['value'])} [95% CI {signed(boot['ci_low'])}, {signed(boot['ci_high'])}]"}
    g = (row.get("gain") or {}).get(metric)
    if not g or not math.isfinite(num(g["mean_diff"])):
        return None
    p = "" if not math.isfinite(num(g["p"])) else f", p = {num(g['p']):.3g}"
    return {"diff": num(g["mean_diff"]), "zero": _zero_like(g),
            "text": f"{signed(g['mean_diff'])} ± {num(g['std_diff']):.4f}{p}"}


def sweep_verdict(rows: list[dict[str, Any]], metric: str) -> str:
    """One sentence, generated from the numbers, on whether TWIN-V2's gain shrinks toward zero at 0."""
    name = metric.upper()
    have = [(r["value"], _gain(r, metric)) for r in rows]
    have = [(v, g) for v, g in have if g is not None]
    zero = [g for v, g in have if v == 0.0]
    others = [(v, g) for v, g in have if v > 0.0]
    if not zero:
        return f"{name}: cannot judge whether the gain shrinks at far_past_signal = 0: no finished run there."
    g0 = zero[0]
    d0 = g0["text"]
    if not others:
        return f"{name}: only far_past_signal = 0 finished; the gain there is {d0}."
    rest = ", ".join(f"{signed(g['diff'])} at {v:g}" for v, g in others)
    lowest = min(g["diff"] for _, g in others)
    zl = g0["zero"]
    order = [g["diff"] for _, g in sorted([(0.0, g0), *others], key=lambda x: x[0])]
    mono = all(x <= y for x, y in itertools.pairwise(order))
    tail = (" The gain rises monotonically with far_past_signal." if mono and len(order) >= 3 else
            " The gain does not rise monotonically with far_past_signal." if len(order) >= 3 else "")
    if zl and all(g["zero"] for _, g in others):
        return (f"{name}: inconclusive: no far_past_signal value gives TWIN-V2 a gain distinguishable from zero "
                f"({d0} at 0 vs {rest}), so this run cannot show whether the gain depends on the far "
                f"past; more days, seeds or samples are needed.{tail}")
    if g0["diff"] < lowest and zl:
        return (f"{name}: yes, the gain shrinks toward zero when the far past carries no signal: {d0} at 0 "
                f"(indistinguishable from zero) vs {rest}.{tail}")
    if g0["diff"] < lowest:
        return (f"{name}: partly: the gain is smallest at 0 ({d0}) vs {rest}, but it is still distinguishable "
                f"from zero there, so TWIN-V2 gains from something other than the far-past signal; a finding to "
                f"investigate.{tail}")
    return (f"{name}: no, the gain does not shrink when the far past carries no signal: {d0} at 0 vs {rest}; "
            f"a finding to investigate, not an expected result.{tail}")


# ---- KuaiRand note --------------------------------------------------------------------------------------
def history_note(sec: Section, t3: dict[str, Any], main_t3: dict[str, Any] | None) -> dict[str, Any]:
    """The data's history lengths at sample time against the short-window models' window, with the spread
    of the models' AUC/GAUC means; the sentence is generated from these numbers."""
    h = (sec.stats or {}).get("history_length_at_sample") or {}
    window = DEFAULT_RECENT_WINDOW
    for m in ("din", "avg_pooling"):
        r = sec.runs.get(m)
        seq = (((r.metrics.get("config") or {}).get("model_cfg") or {}).get("seq_len") if r else None)
        if seq:
            window = int(seq)
            break
    out = {"median": h.get("p50"), "mean": h.get("mean"), "p90": h.get("p90"), "window": window,
           "spread": t3["spread"], "main_spread": (main_t3 or {}).get("spread"), "n_models": len(t3["rows"])}
    parts = []
    if h.get("p50") is None:
        parts.append("History lengths at sample time are unknown (no stats.json, or no samples in it).")
    else:
        short = h["p50"] <= window
        parts.append(f"The median history length at a sample is {h['p50']:,} behaviours (mean {num(h['mean']):,.1f}, "
                     f"p90 {h['p90']:,}), {'within' if short else 'beyond'} the {window} most recent behaviours "
                     f"that DIN and Avg-Pooling see.")
        parts.append("With histories this short the long-sequence models see nearly the same behaviours as DIN, "
                     "so they are expected to land close together." if short else
                     "Histories are long enough here for the long-sequence models to differ.")
    sp = t3["spread"]
    if math.isfinite(num(sp.get("auc_all"))):
        s = (f"Measured spread (max − min of the mean) across the {len(t3['rows'])} models: AUC "
             f"{num(sp['auc_all']):.4f}, GAUC {num(sp['gauc_all']):.4f}")
        if math.isfinite(num(sp.get("auc_long_sequence"))):
            s += (f"; across the long-sequence models only: AUC {num(sp['auc_long_sequence']):.4f}, GAUC "
                  f"{num(sp['gauc_long_sequence']):.4f}")
        ms = out["main_spread"] or {}
        if math.isfinite(num(ms.get("auc_all"))):
            s += f" (main section: AUC {num(ms['auc_all']):.4f}, GAUC {num(ms['gauc_all']):.4f})"
        parts.append(s + ".")
    out["text"] = " ".join(parts)
    return out
