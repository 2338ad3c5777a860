"""Which differences the report states, each with its paired-bootstrap CI (power.py), and the seed spread.

- Table 3: every run's pooled AUC/GAUC with a CI and, on generated data, its expected AUC/GAUC under p_true
  (and the oracle's: p_true as the score); TWIN-V2 − TWIN; every model − the best model ("best" = the bold
  mark, the largest mean over days, one per metric; with a tie, the first in the table's order).
- Figure 4: every ablation variant − the full TWIN-V2.
- Sweep: TWIN-V2 − TWIN per far_past_signal value.
- Seeds: a model with `runs/<model>-seed<k>` folders gets one row per seed (its mean-over-days AUC/GAUC, the
  trainer's numbers) and mean, std (ddof=1: an estimate of the seed variance from few seeds) and min–max over
  seeds; TWIN-V2 − TWIN over seeds is the difference of the seed means with a Welch t 95% interval.
A comparison without prediction files gets a record with `missing` (the report prints "n/a").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from twinv2.report import tables
from twinv2.report.load import Experiment, Run, Section, display_name
from twinv2.report.power import Power
from twinv2.train import significance as sig


def sources(run: Run | None, exp: Experiment) -> list[str]:
    return [exp.rel(p) for p in run.prediction_files()] if run is not None else []


def run_power(power: Power, run: Run | None, exp: Experiment, score: str = "score") -> dict[str, Any] | None:
    src = sources(run, exp)
    if not src:
        return None
    return power.run(run.name if score == "score" else "oracle", src, score)


def diff_power(power: Power, a: Run | None, b: Run | None, exp: Experiment) -> dict[str, Any]:
    sa, sb = sources(a, exp), sources(b, exp)
    if a is None or b is None:
        return {"kind": "boot_diff", "missing": "needs both runs"}
    if not sa or not sb:
        return {"kind": "boot_diff", "a": a.name, "b": b.name, "missing": "needs both runs' predictions-day*.parquet"}
    return power.diff(a.name, b.name, sa, sb)


def table3_power(sec: Section, exp: Experiment, t3: dict[str, Any], power: Power) -> dict[str, Any]:
    runs = sec.runs
    out: dict[str, Any] = {"runs": {m: run_power(power, r, exp) for m, r in runs.items()}}
    ref = runs.get("twin_v2") or next(iter(runs.values()), None)
    oracle = run_power(power, ref, exp, "p_true") if t3.get("oracle") is not None or sec.dataset else None
    out["oracle"] = oracle if oracle and "missing" not in oracle else None
    out["twin_v2_vs_twin"] = diff_power(power, runs.get("twin_v2"), runs.get("twin"), exp) \
        if "twin_v2" in runs and "twin" in runs else None
    out["vs_best"] = {}
    for col in ("auc", "gauc"):
        best = (t3["best"].get(col) or [None])[0]
        out["vs_best"][col] = {"best": best, "rows": {
            m: diff_power(power, r, runs[best], exp) for m, r in runs.items() if best is not None and m != best}}
    return out


def add_power(t3: dict[str, Any], sec: Section, exp: Experiment, power: Power) -> dict[str, Any]:
    """Table 3 (tables.table3) with its CIs (`power`) and the seed table (`seeds`)."""
    t3["power"] = table3_power(sec, exp, t3, power)
    t3["seeds"] = seed_table(sec, exp)
    return t3


def add_ablation_power(ab: dict[str, Any] | None, sec: Section, exp: Experiment, power: Power):
    """Each ablation row (tables.ablation) with variant − full as a paired bootstrap (`boot_vs_full`)."""
    full = sec.runs.get("twin_v2")
    for r in (ab or {}).get("rows", []):
        if r["variant"] != "full" and not r.get("missing") and full is not None:
            r["boot_vs_full"] = diff_power(power, sec.ablation.get(r["variant"]), full, exp)
    return ab


def add_sweep_power(sw: dict[str, Any] | None, exp: Experiment) -> dict[str, Any] | None:
    """Each sweep row (tables.sweep) with TWIN-V2 − TWIN as a paired bootstrap (`boot`); the verdict is redone
    so that it reads the bootstrap where there is one."""
    if not sw:
        return sw
    for r in sw["rows"]:
        sec = exp.sweep[r["value"]]
        a, b = sec.runs.get("twin_v2"), sec.runs.get("twin")
        if a and b:
            r["boot"] = diff_power(Power(exp.root, dataset=sec.dataset), a, b, exp)
        r["seeds"] = seed_table(sec, exp)
    sw["verdict"] = {m: tables.sweep_verdict(sw["rows"], m) for m in ("gauc", "auc")}
    return sw


def seed_table(sec: Section, exp: Experiment) -> dict[str, Any] | None:
    if not sec.seeds:
        return None
    rows = []
    for model, by_seed in sec.seeds.items():
        recs = [{**tables.run_record(r, exp), "seed": s} for s, r in by_seed.items()]
        row: dict[str, Any] = {"model": model, "name": display_name(model), "seeds": list(by_seed), "runs": recs}
        for col in ("auc", "gauc"):
            v = np.array([r.get(f"{col}_mean", float("nan")) for r in recs], np.float64)
            v = v[np.isfinite(v)]
            row[f"{col}_seed_mean"] = float(v.mean()) if len(v) else float("nan")
            row[f"{col}_seed_std"] = float(v.std(ddof=1)) if len(v) >= 2 else float("nan")
            row[f"{col}_seed_min"] = float(v.min()) if len(v) else float("nan")
            row[f"{col}_seed_max"] = float(v.max()) if len(v) else float("nan")
            row[f"{col}_seed_n"] = len(v)
        rows.append(row)
    by = {r["model"]: r for r in rows}
    gap = {col: welch(by["twin_v2"], by["twin"], col) for col in ("auc", "gauc")} \
        if "twin_v2" in by and "twin" in by else None
    return {"rows": rows, "twin_v2_vs_twin": gap}


def welch(a: dict[str, Any], b: dict[str, Any], col: str) -> dict[str, Any]:
    """Difference of the seed means of a and b with a Welch t 95% interval (NaN below 2 seeds each)."""
    na, nb = a[f"{col}_seed_n"], b[f"{col}_seed_n"]
    d = a[f"{col}_seed_mean"] - b[f"{col}_seed_mean"]
    out = {"diff": d, "n_a": na, "n_b": nb, "se": float("nan"), "df": float("nan"), "ci_low": float("nan"),
           "ci_high": float("nan"), "verdict": "not resolved"}
    if na < 2 or nb < 2:
        return out
    va, vb = a[f"{col}_seed_std"] ** 2 / na, b[f"{col}_seed_std"] ** 2 / nb
    se = math.sqrt(va + vb)
    if se == 0:
        return out
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    h = float(student_t.ppf(0.975, df)) * se
    out.update(se=se, df=df, ci_low=d - h, ci_high=d + h, verdict=sig.verdict(d - h, d + h))
    return out
