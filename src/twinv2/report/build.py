"""`build_report(EXP)`: experiment folder → EXP/report/{report.md, report.html, figures/*.png, tables.json}."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from twinv2.report import compare, curve, figures, groups, premise, reference, retrieval, tables
from twinv2.report.document import build_document
from twinv2.report.load import Experiment, load_experiment
from twinv2.report.power import Power
from twinv2.report.render import to_html, to_markdown

FORMAT = "twinv2-report-tables"
FORMAT_VERSION = 1


def header(exp: Experiment) -> dict[str, Any]:
    m = exp.meta
    timings = {k: float(v) for k, v in (m.get("timings") or {}).items() if isinstance(v, (int, float))}
    order = {name: i for i, name in enumerate(m.get("stage_order") or [])}  # run order (JSON sorts the keys)
    timings = dict(sorted(timings.items(), key=lambda kv: order.get(kv[0], len(order))))
    elapsed = None
    try:
        elapsed = (datetime.fromisoformat(m["finished"]) - datetime.fromisoformat(m["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        pass
    return {"present": bool(m), "seed": m.get("seed"), "machine": m.get("machine"), "started": m.get("started"),
            "finished": m.get("finished"), "elapsed_seconds": elapsed, "timings": timings,
            "timings_total": sum(timings.values()) if timings else None, "config": m.get("config"),
            "sections": m.get("sections"), "sweep": m.get("sweep")}


def compute_tables(exp: Experiment) -> dict[str, Any]:
    """Every table of the report as plain data (before `tables.clean`)."""
    out: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "header": header(exp), "main": None,
                           "sweep": compare.add_sweep_power(tables.sweep(exp), exp), "kuairand": None,
                           "premise": None,
                           "problems": list(exp.problems)}
    main_t3 = None
    if exp.main is not None:
        sec = exp.main
        power = Power(exp.root, dataset=sec.dataset)  # one user resample shared by every run of the section
        main_t3 = compare.add_power(tables.table3(sec, exp), sec, exp, power)
        ab = compare.add_ablation_power(tables.ablation(sec, exp), sec, exp, power)
        out["main"] = {"label": sec.label, "stats": sec.stats, "table3": main_t3, "table4": tables.table4(sec, exp),
                       "ablation": ab, "history_groups": groups.history_groups(sec, exp, power=power),
                       "diversity": groups.diversity(sec, exp), "cost": tables.cost(sec, exp),
                       "item_init": item_inits(sec),
                       "reference": reference.reference_table(sec, exp, power, main_t3),
                       "retrieval": retrieval.retrieval_table(sec, exp),
                       "learning_curve": curve.learning_curve(sec, exp),
                       "truth": has_truth(sec, main_t3)}
    if exp.kuairand is not None:
        sec = exp.kuairand
        kpower = Power(exp.root, dataset=sec.dataset)
        t3 = compare.add_power(tables.table3(sec, exp), sec, exp, kpower)
        out["kuairand"] = {"label": sec.label, "stats": sec.stats, "table3": t3,
                           "reference": reference.reference_table(sec, exp, kpower, t3),
                           "note": tables.history_note(sec, t3, main_t3), "cost": tables.cost(sec, exp)}
    if exp.main is not None or exp.sweep:
        out["premise"] = premise.premise_table(
            exp, (main_t3 or {}).get("power", {}).get("twin_v2_vs_twin"), out["sweep"])
    # metrics.json files whose own summary disagrees with their per-day rows are worth a line in the report.
    for sec in [exp.main, exp.kuairand, *exp.sweep.values()]:
        if sec is None:
            continue
        seed_runs = [r for by in sec.seeds.values() for r in by.values() if r.name not in sec.runs]
        for run in [*sec.runs.values(), *sec.ablation.values(), *seed_runs]:
            out["problems"] += tables.summary_mismatches(run.metrics, exp.rel(run.dir / "metrics.json"), tol=1e-6)
    return out


def has_truth(sec, t3: dict[str, Any]) -> bool:
    """Whether the section's data has a ground truth (a generated world: p_true, premise, interests); the
    report's wording follows it (no oracle or generated-world caveats on an imported log)."""
    if t3.get("oracle") is not None:
        return True
    if sec.dataset is None:
        return False
    try:
        return json.loads((sec.dataset / "manifest.json").read_text()).get("source") == "generated"
    except (OSError, ValueError, AttributeError):
        return False


def make_figures(t: dict[str, Any], fig_dir: Path) -> dict[str, Path]:
    figs: dict[str, Path | None] = {}
    main = t.get("main")
    if main:
        figs["table3"] = figures.table3_figure(main["table3"], fig_dir / "table3.png", main["label"])
        figs["vs_best"] = figures.vs_best_figure(main["table3"], fig_dir / "table3_vs_best.png")
        if main["ablation"]:
            figs["ablation"] = figures.ablation_figure(main["ablation"], fig_dir / "figure4_ablation.png")
        if main["history_groups"] and "rows" in main["history_groups"]:
            figs["groups"] = figures.groups_figure(main["history_groups"], fig_dir / "figure5_history_groups.png")
        if main["diversity"] and "rows" in main["diversity"]:
            figs["diversity"] = figures.diversity_figure(main["diversity"], fig_dir / "diversity.png")
        if (main.get("learning_curve") or {}).get("rows"):
            figs["curve"] = figures.curve_figure(main["learning_curve"], fig_dir / "learning_curve.png")
        rt = main.get("retrieval") or {}
        if "rows" in rt:
            figs["retrieval"] = figures.retrieval_figure(rt, fig_dir / "retrieval.png")
    if t.get("sweep"):
        figs["sweep"] = figures.sweep_figure(t["sweep"], fig_dir / "sweep_far_past_signal.png")
    if t.get("kuairand"):
        figs["kuairand"] = figures.table3_figure(t["kuairand"]["table3"], fig_dir / "kuairand_table3.png",
                                                 t["kuairand"]["label"])
    return {k: v for k, v in figs.items() if v is not None}


def build_report(exp_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write report.md, report.html (self-contained), figures/*.png and tables.json; returns report.md's path.

    Every number comes from files in `exp_dir` (see tables.py and groups.py for the definitions) except the
    paper's (paper.py). Missing parts of the experiment give a "not run in this experiment" line.
    """
    exp = load_experiment(exp_dir)
    out = Path(out_dir) if out_dir is not None else exp.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = out / "figures"
    shutil.rmtree(fig_dir, ignore_errors=True)  # a figure not made this time must not linger from an old run
    t = compute_tables(exp)
    figs = make_figures(t, fig_dir)
    doc = build_document(exp, t, figs)
    clean = tables.clean(t)
    _write(out / "tables.json", json.dumps(clean, indent=1, sort_keys=False, allow_nan=False) + "\n")
    # The resolved configuration is for machines and audits, not for reading top to bottom: it lives here.
    _write(out / "config.json", json.dumps(clean["header"].get("config"), indent=2, allow_nan=False) + "\n")
    _write(out / "report.md", to_markdown(doc, out))
    _write(out / "report.html", to_html(doc))
    return out / "report.md"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def item_inits(sec) -> dict[str, list[str]]:
    """{how the item tables were initialised: [runs]} from metrics.json `item_init` (absent in older runs)."""
    out: dict[str, list[str]] = {}
    for run in sec.runs.values():
        if run.metrics.get("item_init"):
            out.setdefault(str(run.metrics["item_init"]), []).append(run.name)
    return out
