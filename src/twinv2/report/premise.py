"""The premise, measured (issue 11 part 4): does this world need the far past, and does the gain follow it?

Per world (the main one and each sweep world) DATASET/premise.json (twinv2.data.premise, from the generated
world's truth) gives the share of test samples whose evidence lies only beyond the latest `window` (10,000)
behaviours, and the oracle's ceiling for a life-cycle model's gain: AUC of the oracle that may use every
interest with evidence in the history minus the one limited to the latest `window` behaviours (sampled
labels, `ceiling_auc`, and label-noise-free, `ceiling_expected_auc`). Beside it the measured TWIN-V2 − TWIN,
the pooled paired-bootstrap record the report already holds for that world (compare.py). A world without
premise.json (imported data, or one not measured) reads "not measured".

Does the measured gain follow the ceiling across the sweep's far_past_signal values (`follows`)?
- Spearman's ρ between the ceilings and the measured AUC gains (the ranking agrees: ρ > 0).
- The decisive comparison: gain at the world with the highest ceiling minus gain at the one with the lowest,
  with a 95% normal interval from the two bootstrap SEs (independent worlds and test sets, so they add):
  "follows" when ρ > 0 and that interval lies above 0, "does not follow" when ρ ≤ 0 or it lies below 0,
  and "not resolved" when it contains 0 (or no CI exists: runs without prediction files).
- Consistency per world: the gain's CI overlaps [min(0, c), max(0, c)] (c = the ceiling): the gain is
  neither resolved below 0 nor resolved above what the far past can give.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from twinv2.data.premise import REMEASURE
from twinv2.data.sealed import read_sealed_if_present
from twinv2.report.load import Experiment, Section
from twinv2.report.tables import num, signed
from twinv2.train import significance as sig

FILE = "premise.json"  # twinv2.data.premise.PREMISE_FILE (not imported: the report reads files only)
KEYS = ("window", "n_test_samples", "share_beyond_window", "ceiling_auc", "ceiling_expected_auc",
        "oracle_auc_life", "oracle_auc_window", "expected_auc_life", "expected_auc_window", "evidence")


def premise_file(sec: Section) -> Path:
    return (sec.dataset if sec.dataset is not None else sec.root / "dataset") / FILE


def record(body: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """The premise numbers the report prints, from one premise.json body (None: not measured)."""
    if not isinstance(body, dict):
        return {"kind": "premise", "source": source, "missing": "not measured (no premise.json)"}
    out: dict[str, Any] = {"kind": "premise", "source": source, **{k: body.get(k) for k in KEYS}}
    wd = body.get("window_days") if isinstance(body.get("window_days"), dict) else {}
    out["window_days_median_heavy"] = wd.get("median_heavy")
    out["window_days_median_all"] = wd.get("median_all")
    return out


def from_file(body: dict[str, Any] | None, node: dict[str, Any]) -> dict[str, Any]:
    return record(body, node["source"])


def gain_of(boot: dict[str, Any] | None, metric: str) -> dict[str, Any] | None:
    iv = (boot or {}).get(metric) if boot and "missing" not in boot else None
    return iv if iv and math.isfinite(num(iv.get("value"))) else None


def follows(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the measured AUC gain follows the ceiling (module doc); `points`: {value, ceiling, gain} with
    gain a bootstrap interval dict (value, se, ci_low, ci_high) or None."""
    have = [p for p in points if p.get("ceiling") is not None and math.isfinite(num(p["ceiling"]))]
    out: dict[str, Any] = {"n_values": len(have), "rho": None, "high_minus_low": None, "consistent": [],
                           "verdict": "not resolved"}
    for p in have:
        g, c = p.get("gain"), num(p["ceiling"])
        if g is None or not math.isfinite(num(g.get("ci_low"))):
            out["consistent"].append(None)
        else:
            out["consistent"].append(bool(num(g["ci_high"]) >= min(0.0, c) and num(g["ci_low"]) <= max(0.0, c)))
    withgain = [p for p in have if p.get("gain") is not None]
    if len(withgain) < 2:
        out["why"] = (f"{len(withgain)} sweep world(s) with both a ceiling and a measured gain with a CI (that "
                      f"needs TWIN's and TWIN-V2's prediction files); needs 2")
        return out
    c = np.array([num(p["ceiling"]) for p in withgain])
    g = np.array([num(p["gain"]["value"]) for p in withgain])
    if len(withgain) >= 3 and np.ptp(c) > 0 and np.ptp(g) > 0:
        out["rho"] = float(spearmanr(c, g).statistic)
    hi_p, lo_p = withgain[int(np.argmax(c))], withgain[int(np.argmin(c))]
    if np.ptp(c) == 0:
        out["why"] = "every world has the same ceiling, so there is nothing to follow"
        return out
    d = num(hi_p["gain"]["value"]) - num(lo_p["gain"]["value"])
    se = math.sqrt(num(hi_p["gain"].get("se")) ** 2 + num(lo_p["gain"].get("se")) ** 2)
    hm = {"high": hi_p["value"], "low": lo_p["value"], "value": d, "se": se, "ci_low": d - sig.Z95 * se,
          "ci_high": d + sig.Z95 * se}
    out["high_minus_low"] = hm
    rho_sign = out["rho"] if out["rho"] is not None else float(np.sign(d))
    v = sig.verdict(hm["ci_low"], hm["ci_high"]) if math.isfinite(se) else "not resolved"
    if v == "not resolved":
        out["verdict"] = "not resolved"
    elif v == "A better" and rho_sign > 0:
        out["verdict"] = "follows"
    else:
        out["verdict"] = "does not follow"
    return out


# ---- reach: what a log without ground truth can say -----------------------------------------------------
WINDOW = 10_000  # TWIN's GSU window (its default; a TWIN run's resolved model_cfg.seq_len wins): what it reads
REACH_RUNS = ("twin_v2", "twin")  # whose test predictions give the test samples (the same in every run)


def reach(sec: Section, exp: Experiment) -> dict[str, Any] | None:
    """On a section without premise.json (an imported log): the share of its test samples whose user has more
    than WINDOW behaviours strictly before the sample, the only samples where a life-cycle model reads
    behaviours TWIN's latest WINDOW cannot; with the median and p90 history length at a test sample. None
    without the dataset or prediction files."""
    run = next((sec.runs[m] for m in REACH_RUNS if m in sec.runs), next(iter(sec.runs.values()), None))
    if sec.dataset is None or run is None or not run.prediction_files():
        return None
    twin = sec.runs.get("twin")
    seq = (((twin.metrics.get("config") or {}).get("model_cfg") or {}).get("seq_len") if twin else None)
    return reach_from(exp.root, {"sources": [exp.rel(p) for p in run.prediction_files()],
                                 "dataset": exp.rel(sec.dataset), "window": int(seq) if seq else WINDOW})


def reach_from(root: Path, node: dict[str, Any]) -> dict[str, Any]:
    """The `reach` record of `node`'s prediction files and dataset (check.py recomputes it the same way)."""
    import pandas as pd

    from twinv2.data.storage import Dataset

    ds = Path(node["dataset"])
    ds = ds if ds.is_absolute() else root / ds
    df = pd.concat([pd.read_parquet(root / f, columns=["user_id", "ts"]) for f in node["sources"]],
                   ignore_index=True)
    lengths = Dataset(ds).history_lengths(df["user_id"].to_numpy(np.int64), df["ts"].to_numpy(np.int64))
    n = len(lengths)
    return {"kind": "reach", "sources": list(node["sources"]), "dataset": node["dataset"], "window": node["window"],
            "n_test_samples": n, "share_beyond_window": float((lengths > node["window"]).mean()) if n else None,
            "median_length": float(np.quantile(lengths, 0.5, method="lower")) if n else None,
            "p90_length": float(np.quantile(lengths, 0.9, method="lower")) if n else None,
            "max_length": int(lengths.max()) if n else None}


def premise_table(exp: Experiment, main_boot: dict[str, Any] | None, sweep: dict[str, Any] | None) -> dict[str, Any]:
    """Rows: the main world, then each sweep world (premise record + the measured TWIN-V2 − TWIN, taken from
    `main_boot` / the sweep rows' `boot`); `follows`: over the sweep worlds. A main section without
    premise.json also gets its `reach` (an imported log: what can be measured without ground truth)."""
    rows = []
    if exp.main is not None:
        rows.append(_row("main", None, exp.main, exp, main_boot))
        if "missing" in rows[-1]["premise"]:
            rows[-1]["reach"] = reach(exp.main, exp)
    boots = {float(r["value"]): r.get("boot") for r in (sweep or {}).get("rows", [])}
    for v, sec in exp.sweep.items():
        rows.append(_row(sec.key, float(v), sec, exp, boots.get(float(v))))
    sw = [r for r in rows if r["far_past_signal"] is not None]
    points = [{"value": r["far_past_signal"], "ceiling": (r["premise"].get("ceiling_auc")),
               "gain": gain_of(r["measured"], "auc")} for r in sw if "missing" not in r["premise"]]
    return {"rows": rows, "follows": follows(points) if sw else None}


def read(path: Path) -> dict[str, Any] | None:
    """premise.json's body; None when absent ("not measured"); DataError naming it when damaged."""
    return read_sealed_if_present(path, fix=REMEASURE)


def _row(key: str, value: float | None, sec: Section, exp: Experiment, boot: dict[str, Any] | None) -> dict[str, Any]:
    path = premise_file(sec)
    body = read(path)
    return {"section": key, "far_past_signal": value, "label": sec.label, "premise": record(body, exp.rel(path)),
            "measured": measured_of(boot)}


def measured_of(boot: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of a TWIN-V2 − TWIN boot_diff record that the premise table prints (None: no record)."""
    if not boot:
        return None
    if "missing" in boot:
        return {"missing": boot["missing"]}
    return {k: {f: boot[k].get(f) for f in ("value", "ci_low", "ci_high", "se", "mrd", "verdict")}
            for k in ("auc", "gauc")}


def verdict_sentence(pt: dict[str, Any] | None) -> str | None:
    """The sweep's verdict on whether the gain follows the ceiling, generated from `follows`."""
    f = (pt or {}).get("follows")
    if not f:
        return None
    if f["n_values"] == 0:
        return "Gain vs ceiling: not measured (no sweep world has premise.json)."
    cons = [c for c in f["consistent"] if c is not None]
    tail = (f" The measured gain's CI is consistent with [0, ceiling] at {sum(cons)} of {len(cons)} world(s)."
            if cons else "")
    hm = f.get("high_minus_low")
    if not hm:
        return f"Gain vs ceiling: not resolved ({f.get('why', 'no comparison')}).{tail}"
    rho = "n/a (< 3 worlds or no spread)" if f["rho"] is None else f"{f['rho']:+.2f}"
    ci = (f"{signed(hm['value'])} [95% CI {signed(hm['ci_low'])}, {signed(hm['ci_high'])}]"
          if math.isfinite(num(hm["ci_low"])) else f"{signed(hm['value'])} (no CI: no prediction files)")
    word = {"follows": "the measured TWIN-V2 − TWIN AUC gain follows the oracle's ceiling",
            "does not follow": "the measured TWIN-V2 − TWIN AUC gain does not follow the oracle's ceiling",
            "not resolved": "not resolved: the test sets cannot tell whether the measured gain follows the "
                            "oracle's ceiling"}[f["verdict"]]
    return (f"Gain vs ceiling across far_past_signal: {word} (Spearman ρ {rho} over {f['n_values']} world(s); gain "
            f"at the highest-ceiling world (far_past_signal {hm['high']:g}) minus at the lowest ({hm['low']:g}): "
            f"{ci}).{tail}")
