"""Learned vs zero-shot reference (issue 11 part 1; DESIGN.md "Learning from the first step").

The reference of a model is the same model at step 0, started from the pre-trained item vectors, scoring
cos(e(target), its own retrieved interest): what the pre-trained similarity alone gives through that model's
retrieval. The trainer writes its score of every test sample beside the model's in the prediction files
(column `zero_shot`) and its per-day AUC/GAUC in metrics.json (`zero_shot_auc`, `zero_shot_gauc`); a run with
no pre-trained vectors has neither.

- The two score columns of the same prediction files are a paired comparison: model − reference in pooled
  AUC and GAUC with a paired bootstrap over users (power.Power.diff with score_a="score",
  score_b="zero_shot"), its MRD and verdict; the reference's own pooled AUC/GAUC with CI is power.Power.run
  with score="zero_shot". check.py recomputes both from the files they name, like every bootstrap record.
- The per-day means come from metrics.json (tables.summarise_metrics reads `zero_shot_auc`/`_gauc`), so
  check.py's run records re-derive them too.
"""

from __future__ import annotations

from typing import Any

from twinv2.report.compare import sources
from twinv2.report.load import Experiment, Section, display_name
from twinv2.report.power import Power
from twinv2.report.tables import num

COLUMN = "zero_shot"
WHAT = ("The zero-shot reference of a model is the same model at step 0, started from the pre-trained item "
        "vectors, scoring cos(e(target), its own retrieved interest) with no training: what the pre-trained "
        "similarity gives through that model's own retrieval, so a learned model that does not beat it has "
        "learned nothing the vectors did not already hold.")


def has_reference(run) -> bool:
    """A run whose prediction files carry the reference's score (the first file's schema decides)."""
    import pyarrow.parquet as pq

    files = run.prediction_files()
    return bool(files) and COLUMN in pq.read_schema(files[0]).names


def reference_table(sec: Section, exp: Experiment, power: Power, t3: dict[str, Any]) -> dict[str, Any]:
    """{rows: per model with a reference, without: models lacking it, beats/resolved counts}."""
    rows, without = [], []
    runs_pw = (t3.get("power") or {}).get("runs") or {}
    for model, run in sec.runs.items():
        src = sources(run, exp)
        if not src or not has_reference(run):
            without.append(model)
            continue
        rows.append({"model": model, "name": display_name(model),
                     "model_pooled": runs_pw.get(model) or power.run(model, src),
                     "reference_pooled": power.run(model, src, COLUMN),
                     "vs_reference": power.diff(model, f"{model} (zero-shot)", src, src, score_a="score",
                                                score_b=COLUMN)})
    return {"rows": rows, "without": without, **tally(rows)}


def tally(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Which models beat / lose to / are not resolved from their reference, read from the rows' verdicts."""
    out: dict[str, Any] = {}
    for m in ("auc", "gauc"):
        ok = [r for r in rows if "missing" not in r["vs_reference"]]
        out[f"beats_{m}"] = [r["model"] for r in ok if r["vs_reference"][m]["verdict"] == "A better"]
        out[f"loses_{m}"] = [r["model"] for r in ok if r["vs_reference"][m]["verdict"] == "B better"]
        out[f"unresolved_{m}"] = [r["model"] for r in ok if r["vs_reference"][m]["verdict"] == "not resolved"]
        out[f"above_{m}"] = [r["model"] for r in ok if num(r["vs_reference"][m]["value"]) > 0]
    out["n_compared"] = sum("missing" not in r["vs_reference"] for r in rows)
    return out


def summary_sentence(ref: dict[str, Any] | None) -> str | None:
    """'Learned vs zero-shot reference: k of n models beat it (resolved) in GAUC, ...' or None."""
    if not ref or not ref["n_compared"]:
        return None
    n = ref["n_compared"]

    def names(ms: list[str]) -> str:
        return ", ".join(display_name(m) for m in ms) or "none"

    return (f"Learned vs zero-shot reference (pooled, paired bootstrap over users): {len(ref['beats_gauc'])} of {n} "
            f"models beat their reference in GAUC and {len(ref['beats_auc'])} in AUC with the CI excluding 0; below "
            f"it (resolved) in GAUC: {names(ref['loses_gauc'])}; not resolved in GAUC: "
            f"{names(ref['unresolved_gauc'])}.")
