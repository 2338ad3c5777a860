"""The report's files, missing parts, and check_report catching tampered tables or metrics."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from report_experiment import write_value_run

from twinv2.data.sealed import write_sealed
from twinv2.report import build_report, check_report


def test_report_files_and_self_contained_html(experiment, report_md):
    out = experiment / "report"
    figs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figs == ["diversity.png", "figure4_ablation.png", "figure5_history_groups.png", "kuairand_table3.png",
                    "learning_curve.png", "retrieval.png", "sweep_far_past_signal.png", "table3.png", "table3_vs_best.png"]
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report_md):
        assert (out / link).is_file()
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == len(figs)
    assert "src='figures/" not in page and "Resolved configuration" not in page
    assert "<b>" in page and "**" not in page.split("<pre>")[0]
    order = ["## Summary", "### Table 3 analog", "### Learned vs zero-shot reference",
             "### Learning curve", "### Figure 4 analog",
             "### Figure 5 analog", "### Retrieval diagnostics", "### Diversity", "### Table 4 analog", "### Cost",
             "## The premise, measured", "## Far-past-signal sweep", "## KuaiRand section", "## How to read this",
             "## Appendix: what was run", "### Data statistics (main)", "### Data statistics (KuaiRand)"]
    at = [report_md.find(h) for h in order]
    assert -1 not in at and at == sorted(at), dict(zip(order, at))  # results first, the appendix last
    assert "Seed: 7." in report_md and "Not run in this experiment" not in report_md
    assert "| **total (sum of stages)** | **5 min 44 s** |" in report_md


def test_configuration_lives_beside_the_report_not_in_it(experiment, report_md):
    """Issue 10 part 7: a person reads the report top to bottom; the resolved config is data for machines."""
    cfg = json.loads((experiment / "report" / "config.json").read_text())
    assert cfg == json.loads((experiment / "experiment.json").read_text())["config"]
    assert '"preset"' not in report_md and "`config.json` beside this report" in report_md
    first_table = next(i for i, x in enumerate(report_md.splitlines()) if x.startswith("| "))
    assert report_md.splitlines().index("### Table 3 analog") < first_table  # the first table is Table 3


def test_check_report_is_clean_on_a_fresh_report(experiment):
    assert check_report(experiment) == []


@pytest.fixture
def copy(experiment, tmp_path) -> Path:
    """The experiment without its dataset (check_report reads only JSON), safe to tamper with."""
    dst = tmp_path / "exp"
    shutil.copytree(experiment, dst, ignore=shutil.ignore_patterns("dataset", "*.parquet", "*.png"))
    return dst


def _edit(path: Path, fn) -> None:
    body = json.loads(path.read_text())
    fn(body)
    path.write_text(json.dumps(body))


def test_check_report_catches_a_tampered_tables_json(copy):
    t = copy / "report" / "tables.json"
    _edit(t, lambda b: b["main"]["table3"]["rows"][3].__setitem__("auc_mean", 0.99))
    problems = check_report(copy)
    assert any("auc_mean" in p for p in problems), problems


def test_check_report_catches_a_moved_bold_mark(copy):
    t = copy / "report" / "tables.json"
    _edit(t, lambda b: b["main"]["table3"]["rows"][0].__setitem__("best_gauc", True))
    assert any("bold" in p for p in check_report(copy))


def test_check_report_catches_a_tampered_paired_test(copy):
    t = copy / "report" / "tables.json"
    _edit(t, lambda b: b["main"]["table3"]["paired"]["gauc"].__setitem__("p", 0.001))
    assert any(": p = 0.001" in p for p in check_report(copy))


@pytest.mark.parametrize("where", ["day", "top"])
def test_check_report_catches_a_tampered_metrics_json(copy, where):
    m = copy / "main" / "runs" / "din" / "metrics.json"
    if where == "day":
        _edit(m, lambda b: b["days"][2].__setitem__("gauc", b["days"][2]["gauc"] + 0.05))
    else:
        _edit(m, lambda b: b.__setitem__("auc_mean", b["auc_mean"] + 0.01))
    problems = check_report(copy)
    assert any("main/runs/din/metrics.json" in p for p in problems), problems


def test_check_report_catches_runs_missing_from_the_tables(copy):
    write_value_run(copy / "main" / "runs" / "extra", "extra", [0.7, 0.71], [0.6, 0.61])
    write_value_run(copy / "sweep" / "fps-2.0" / "runs" / "twin", "twin", [0.7, 0.71], [0.6, 0.61])
    problems = check_report(copy)
    assert any("extra" in p for p in problems) and any("far_past_signal" in p for p in problems)


def test_missing_parts_give_a_line_not_a_crash(tmp_path):
    exp = tmp_path / "exp"
    runs = exp / "main" / "runs"
    # No experiment.json, dataset, stats, ablation, bench, sweep or KuaiRand; TWIN/TWIN-V2 have one day only;
    # the best AUC and the best GAUC are different models and the GAUC best is a tie.
    write_value_run(runs / "sim_soft", "sim_soft", [0.80, 0.82], [0.70, 0.70])
    write_value_run(runs / "din", "din", [0.70, 0.71], [0.75, 0.75])
    write_value_run(runs / "twin", "twin", [0.75], [0.74])
    write_value_run(runs / "twin_v2", "twin_v2", [0.76], [0.75])
    (exp / "main" / "runs" / "eta").mkdir()
    (exp / "main" / "runs" / "eta" / "metrics.json").write_text("{not json")
    md = build_report(exp).read_text()
    t = json.loads((exp / "report" / "tables.json").read_text())
    best = {k: [r["model"] for r in t["main"]["table3"]["rows"] if r[f"best_{k}"]] for k in ("auc", "gauc")}
    assert best == {"auc": ["sim_soft"], "gauc": ["din", "twin_v2"]}
    assert "| SIM Soft | **0.8100 ± 0.0100** | 0.7000 ± 0.0000 |" in md
    assert "| DIN | 0.7050 ± 0.0050 | **0.7500 ± 0.0000** |" in md
    assert "n/a: 1 day(s) with both values" in md
    assert md.count("Not run in this experiment") >= 6
    assert "experiment.json is missing" in md and "eta/metrics.json: unreadable" in md
    assert "not run: Avg-Pooling, SIM Hard, ETA" in md
    assert check_report(exp) == []


def test_an_empty_folder_still_gives_a_report(tmp_path):
    md = build_report(tmp_path, tmp_path / "out").read_text()
    assert "Nothing was run." in md and (tmp_path / "out" / "report.html").is_file()
    assert check_report(tmp_path, tmp_path / "out") == []
    with pytest.raises(ValueError, match="not found"):
        build_report(tmp_path / "nope")


def test_external_dataset_and_an_unfinished_experiment(tmp_path, tiny_world):
    """The orchestrator may use an existing dataset (config `dataset`) and builds the report before it
    records `finished`."""
    exp = tmp_path / "exp"
    write_value_run(exp / "main" / "runs" / "twin", "twin", [0.7, 0.72], [0.6, 0.63])
    write_sealed(exp / "experiment.json", {
        "config": {"dataset": str(tiny_world)}, "seed": 1, "machine": {"cpus": 2}, "started": "2024-01-01T00:00:00",
        "finished": None, "timings": {"train main/twin": 12.0}})
    md = build_report(exp).read_text()
    t = json.loads((exp / "report" / "tables.json").read_text())
    assert t["main"]["cost"]["behaviour_parquet_bytes"] > 0  # the external dataset was found
    assert t["main"]["diversity"] == {"missing": "no predictions-day*.parquet files"}
    assert "not finished when this report was built" in md and "TWIN-V2 − TWIN paired test: needs both" in md
    assert check_report(exp) == []


def test_stage_timings_are_listed_in_run_order_not_alphabetically():
    from twinv2.report.build import header
    from twinv2.report.load import Experiment

    meta = {"timings": {"a report": 1.0, "generate main": 2.0, "train main/twin": 3.0, "zz unplanned": 4.0},
            "stage_order": ["generate main", "train main/twin", "a report"]}
    exp = Experiment(root=Path("."), meta=meta, main=None, kuairand=None, sweep={}, bench_train=None, problems=[])
    assert list(header(exp)["timings"]) == ["generate main", "train main/twin", "a report", "zz unplanned"]
