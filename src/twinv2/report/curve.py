"""Learning curves (issue 11): each run's test-day AUC/GAUC against the training samples it had seen by then
(warm-up days first, then each evaluation day's training hours, times its passes), read from metrics.json."""

from __future__ import annotations

from typing import Any

from twinv2.report.load import Experiment, Section, display_name


def points(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """[{day, seen, auc, gauc}] per evaluation day: `seen` = training samples before that day's test hour."""
    passes = int((metrics.get("config") or {}).get("passes_per_day", 1) or 1)
    seen = sum(int(w.get("n_train", 0)) for w in metrics.get("warmup_days") or [])
    out = []
    for d in metrics.get("days") or []:
        seen += int(d.get("n_train", 0)) * passes
        out.append({"day": int(d["day"]), "seen": seen, "auc": d.get("auc"), "gauc": d.get("gauc")})
    return out


def learning_curve(sec: Section, exp: Experiment) -> dict[str, Any]:
    rows = []
    for name, run in sec.runs.items():
        pts = points(run.metrics)
        rows.append({"model": name, "name": display_name(name), "source": exp.rel(run.dir / "metrics.json"),
                     "warmup_samples": sum(int(w.get("n_train", 0)) for w in run.metrics.get("warmup_days") or []),
                     "samples_total": pts[-1]["seen"] if pts else 0, "points": pts})
    return {"rows": rows}

