"""Issue 11 parts 1, 4, 5 in the report: learned vs zero-shot reference, retrieval diagnostics, the premise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_experiment import (
    RETRIEVAL,
    predictions,
    retrieval_block,
    write_predicted_run,
    write_premise,
    write_value_run,
)

from twinv2.data.storage import Dataset
from twinv2.models.names import MODELS
from twinv2.report import build_report, check_report
from twinv2.report.power import N_BOOT, SEED, Power
from twinv2.report.premise import follows
from twinv2.report.retrieval import gap
from twinv2.train import significance as S


def _groups(df: pd.DataFrame) -> np.ndarray:
    return df["user_id"].to_numpy() * 100 + df["day"].to_numpy()


def _edit(path: Path, fn) -> None:
    body = json.loads(path.read_text())
    fn(body)
    path.write_text(json.dumps(body))


@pytest.fixture
def copy(experiment, tmp_path) -> Path:
    dst = tmp_path / "exp"
    shutil.copytree(experiment, dst, ignore=shutil.ignore_patterns("*.png", "*.csr"))
    return dst


# ---- learned vs zero-shot reference -------------------------------------------------------------------------
def test_reference_is_the_paired_bootstrap_of_the_two_score_columns(experiment, tables, report_md):
    ref = tables["main"]["reference"]
    by = {r["model"]: r for r in ref["rows"]}
    assert list(by) == [m for m in MODELS if m != "sim_hard"] and ref["without"] == ["sim_hard"]
    for model in ("avg_pooling", "twin_v2"):
        df = predictions(experiment / "main" / "runs" / model)
        u, y = df["user_id"].to_numpy(), df["label"].to_numpy()
        want = S.paired_bootstrap(u, y, df["score"].to_numpy(), df["zero_shot"].to_numpy(), groups=_groups(df),
                                  n_boot=N_BOOT, seed=SEED)
        zs = S.bootstrap_ci(u, y, df["zero_shot"].to_numpy(), groups=_groups(df), n_boot=N_BOOT, seed=SEED)
        for m in ("auc", "gauc"):
            got = by[model]["vs_reference"][m]
            for k in ("value", "ci_low", "ci_high", "se"):
                assert got[k] == pytest.approx(getattr(want[m], k), abs=1e-12), (model, m, k)
                assert by[model]["reference_pooled"][m][k] == pytest.approx(getattr(zs[m], k), abs=1e-12)
            assert got["verdict"] == S.verdict(got["ci_low"], got["ci_high"])
    assert by["avg_pooling"]["vs_reference"]["gauc"]["verdict"] == "B better"  # the fixture's better reference
    assert by["twin_v2"]["vs_reference"]["gauc"]["verdict"] == "A better"
    assert "avg_pooling" in ref["loses_gauc"] and "twin_v2" in ref["beats_gauc"]
    # The per-day means are read from metrics.json like every other per-day metric.
    row = next(r for r in tables["main"]["table3"]["rows"] if r["model"] == "twin_v2")
    days = json.loads((experiment / "main" / "runs" / "twin_v2" / "metrics.json").read_text())["days"]
    assert row["zero_shot_gauc_mean"] == pytest.approx(np.mean([d["zero_shot_gauc"] for d in days]))
    sec = report_md.split("### Learned vs zero-shot reference")[1].split("\n### ")[0]
    assert "same model at step 0" in sec.split("|")[0]  # the sentence saying what the reference is, above it
    assert any(x.startswith("| Avg-Pooling |") and "reference better" in x for x in sec.splitlines())
    assert "No reference for SIM Hard" in sec


def test_check_report_recomputes_the_reference(copy):
    t = copy / "report" / "tables.json"
    _edit(t, lambda b: b["main"]["reference"]["rows"][-1]["vs_reference"]["gauc"].__setitem__("value", 0.5))
    _edit(t, lambda b: b["main"]["reference"]["rows"][0]["reference_pooled"]["auc"].__setitem__("ci_high", 0.99))
    _edit(t, lambda b: b["main"]["reference"]["beats_gauc"].append("avg_pooling"))
    problems = check_report(copy)
    assert any("main.reference: beats_gauc" in p for p in problems), problems
    assert any("reference.rows[9].vs_reference" in p and "value" in p for p in problems), problems
    assert any("reference.rows[0].reference_pooled" in p and "ci_high" in p for p in problems), problems


def test_check_report_catches_a_tampered_zero_shot_in_metrics(copy):
    _edit(copy / "main" / "runs" / "twin" / "metrics.json",
          lambda b: b["days"][1].__setitem__("zero_shot_auc", b["days"][1]["zero_shot_auc"] + 0.03))
    problems = check_report(copy)
    assert any("main/runs/twin/metrics.json" in p and "zero_shot_auc" in p for p in problems), problems


def test_check_report_catches_runs_missing_from_the_new_tables(copy):
    _edit(copy / "report" / "tables.json", lambda b: b["main"]["reference"]["rows"].pop(2))
    _edit(copy / "report" / "tables.json", lambda b: b["main"]["retrieval"]["rows"].pop(0))
    problems = check_report(copy)
    assert any("zero-shot reference table lacks the run(s) ['eta']" in p for p in problems), problems
    assert any("retrieval: the table lacks the run(s) ['sim_hard']" in p for p in problems), problems


def test_power_diff_of_a_missing_score_column(experiment):
    src = ["main/runs/sim_hard/predictions-day0.parquet"]
    rec = Power(experiment).diff("sim_hard", "ref", src, src, score_b="zero_shot")
    assert "no 'zero_shot' column" in rec["missing"]
    assert "missing" in Power(experiment).run("sim_hard", src, "zero_shot")


# ---- retrieval diagnostics ----------------------------------------------------------------------------------
def test_retrieval_table_and_twin_gaps(experiment, tables, report_md):
    rt = tables["main"]["retrieval"]
    assert [r["model"] for r in rt["rows"]] == [m for m in MODELS if m in RETRIEVAL]
    v2 = next(r for r in rt["rows"] if r["model"] == "twin_v2")
    block = retrieval_block(RETRIEVAL["twin_v2"])
    want = {f"{g['interest']}/{g['history']}": g for g in block["groups"]}
    assert v2["groups"]["dormant/long"]["share"] == want["dormant/long"]["share"]
    assert v2["length_terciles"] == [1200.0, 5400.0] and v2["k"] == 100
    g = rt["twin_v2_vs_twin"]["dormant/all"]["share"]
    assert g["value"] == pytest.approx(RETRIEVAL["twin_v2"] - RETRIEVAL["twin"])
    # The conservative SE: a share in [0, 1] has variance at most m(1 − m).
    a, b = RETRIEVAL["twin_v2"], RETRIEVAL["twin"]
    assert g["se"] == pytest.approx(np.sqrt(a * (1 - a) / 600 + b * (1 - b) / 600))
    assert g["verdict"] == "A better" and rt["twin_v2_vs_twin"]["current/all"]["share"]["verdict"] == "not resolved"
    sec = report_md.split("### Retrieval diagnostics")[1].split("\n### ")[0]
    assert "TWIN vs TWIN-V2 on dormant-interest targets is the paper's mechanism made visible" in sec
    assert "| TWIN-V2 | 100 | 0.500 / 1.000 | 0.300 / 0.660 |" in sec
    assert "figures/retrieval.png" in sec and (experiment / "report" / "figures" / "retrieval.png").is_file()


def test_retrieval_gap_without_data():
    assert gap(None, {"n": 5, "share": 0.2}, "share") is None
    assert gap({"n": 0, "share": 0.2}, {"n": 5, "share": 0.2}, "share") is None
    same = gap({"n": 50, "share": 0.2}, {"n": 50, "share": 0.2}, "share")
    assert same["value"] == 0 and same["verdict"] == "not resolved"


def test_check_report_recomputes_the_retrieval_table(copy):
    t = copy / "report" / "tables.json"
    _edit(t, lambda b: b["main"]["retrieval"]["rows"][0]["groups"]["dormant/short"].__setitem__("hit", 0.99))
    _edit(t, lambda b: b["main"]["retrieval"]["twin_v2_vs_twin"]["dormant/long"]["share"].__setitem__("value", 0.5))
    problems = check_report(copy)
    assert any("retrieval.rows[0]" in p and "groups" in p for p in problems), problems
    assert any("twin_v2_vs_twin.dormant/long.share" in p for p in problems), problems


def test_check_report_catches_a_tampered_retrieval_block(copy):
    _edit(copy / "main" / "runs" / "eta" / "metrics.json",
          lambda b: b["retrieval"]["groups"][4].__setitem__("share", 0.9))
    problems = check_report(copy)
    assert any("retrieval.rows[1]" in p for p in problems), problems


# ---- the premise --------------------------------------------------------------------------------------------
def test_premise_rows_for_the_main_and_the_sweep_worlds(experiment, tables, report_md):
    pt = tables["premise"]
    rows = {r["section"]: r for r in pt["rows"]}
    assert list(rows) == ["main", "sweep/fps-0.0", "sweep/fps-0.5", "sweep/fps-1.0"]
    main = json.loads((experiment / "main" / "dataset" / "premise.json").read_text())
    for k in ("share_beyond_window", "ceiling_auc", "ceiling_expected_auc", "n_test_samples"):
        assert rows["main"]["premise"][k] == main[k]
    boot = tables["main"]["table3"]["power"]["twin_v2_vs_twin"]
    assert rows["main"]["measured"]["auc"]["value"] == boot["auc"]["value"]
    assert "missing" in rows["sweep/fps-0.0"]["premise"]  # the fixture wrote no premise.json there
    assert rows["sweep/fps-1.0"]["premise"]["ceiling_auc"] == pytest.approx(0.02)
    assert pt["follows"]["verdict"] == "not resolved"  # the fixture's sweep runs have no prediction files
    sec = report_md.split("## The premise, measured")[1].split("\n## ")[0]
    assert "| sweep, far_past_signal 0 | not measured |" in sec
    assert "| sweep, far_past_signal 1 | 5.00% | +0.0200 | +0.0180 | 500 | 90 |" in sec
    assert "Gain vs ceiling" in report_md.split("## Far-past-signal sweep")[1]


def test_check_report_catches_a_tampered_or_removed_premise(copy):
    t = copy / "report" / "tables.json"
    _edit(t, lambda b: b["premise"]["rows"][3]["premise"].__setitem__("ceiling_auc", 0.5))
    _edit(t, lambda b: b["premise"]["rows"][0]["measured"]["auc"].__setitem__("value", 0.5))
    (copy / "sweep" / "fps-0.5" / "dataset" / "premise.json").unlink()
    problems = check_report(copy)
    assert any("premise.rows[3].premise" in p and "ceiling_auc" in p for p in problems), problems
    assert any("premise.rows[0] (main)" in p for p in problems), problems
    assert any("premise.rows[2].premise" in p and "absent" in p for p in problems), problems


def _pt(value, ceiling, d, se):
    return {"value": value, "ceiling": ceiling,
            "gain": None if d is None else {"value": d, "se": se, "ci_low": d - 1.96 * se, "ci_high": d + 1.96 * se}}


def test_follows_verdicts_on_hand_built_sweeps():
    up = [_pt(0.0, 0.0, 0.0005, 0.002), _pt(0.5, 0.01, 0.006, 0.002), _pt(1.0, 0.03, 0.02, 0.002)]
    f = follows(up)
    assert f["verdict"] == "follows" and f["rho"] == pytest.approx(1.0)
    assert f["high_minus_low"]["value"] == pytest.approx(0.0195)
    assert f["high_minus_low"]["se"] == pytest.approx(np.sqrt(2) * 0.002)
    assert f["consistent"] == [True, True, True]
    down = [_pt(0.0, 0.0, 0.02, 0.002), _pt(0.5, 0.01, 0.01, 0.002), _pt(1.0, 0.03, 0.0, 0.002)]
    f = follows(down)
    assert f["verdict"] == "does not follow" and f["rho"] == pytest.approx(-1.0)
    assert f["consistent"] == [False, True, True]  # a resolved gain where the ceiling is 0
    noisy = [_pt(0.0, 0.0, 0.001, 0.01), _pt(0.5, 0.01, 0.004, 0.01), _pt(1.0, 0.03, 0.009, 0.01)]
    assert follows(noisy)["verdict"] == "not resolved"
    assert follows([_pt(0.0, 0.0, None, 0), _pt(1.0, 0.03, 0.01, 0.002)])["verdict"] == "not resolved"
    assert follows([_pt(0.0, 0.01, 0.0, 0.001), _pt(1.0, 0.01, 0.02, 0.001)])["verdict"] == "not resolved"


@pytest.mark.parametrize("direction", ["follows", "does not follow"])
def test_sweep_with_predictions_states_whether_the_gain_follows_the_ceiling(tmp_path, tiny_world, direction):
    exp = tmp_path / "exp"
    ds = Dataset(tiny_world)
    ceilings = {0.0: 0.0, 0.5: 0.01, 1.0: 0.03}
    for v, noise_v2 in ((0.0, 0.2), (0.5, 0.12), (1.0, 0.04)):
        root = exp / "sweep" / f"fps-{v}"
        write_predicted_run(root / "runs" / "twin", "twin", ds, noise=0.2, seed=1, n_days=2)
        write_predicted_run(root / "runs" / "twin_v2", "twin_v2", ds, noise=noise_v2, seed=11, n_days=2)
        c = ceilings[v] if direction == "follows" else ceilings[1.0 - v]
        write_premise(root / "dataset", share=c * 2, ceiling=c)
    md = build_report(exp).read_text()
    t = json.loads((exp / "report" / "tables.json").read_text())
    f = t["premise"]["follows"]
    assert f["verdict"] == direction and f["n_values"] == 3
    boots = {r["value"]: r["boot"]["auc"] for r in t["sweep"]["rows"]}
    hi, lo = (1.0, 0.0) if direction == "follows" else (0.0, 1.0)
    assert f["high_minus_low"]["value"] == pytest.approx(boots[hi]["value"] - boots[lo]["value"])
    assert f"the measured TWIN-V2 − TWIN AUC gain {direction} the oracle's ceiling" in md
    assert check_report(exp) == []
    _edit(exp / "report" / "tables.json", lambda b: b["premise"]["follows"].__setitem__("verdict", "follows!"))
    assert any("premise.follows" in p for p in check_report(exp))


# ---- each section skipped, with a line, when its data is missing --------------------------------------------
def test_sections_say_not_measured_without_their_data(tmp_path):
    exp = tmp_path / "exp"
    write_value_run(exp / "main" / "runs" / "twin", "twin", [0.7, 0.72], [0.6, 0.63])
    write_value_run(exp / "main" / "runs" / "twin_v2", "twin_v2", [0.71, 0.73], [0.61, 0.64])
    md = build_report(exp).read_text()
    t = json.loads((exp / "report" / "tables.json").read_text())
    assert "Zero-shot reference: not measured" in md and t["main"]["reference"]["rows"] == []
    assert "Retrieval diagnostics: not measured" in md and "missing" in t["main"]["retrieval"]
    assert "| main | not measured |" in md and "missing" in t["premise"]["rows"][0]["premise"]
    assert not (exp / "report" / "figures" / "retrieval.png").exists()
    assert check_report(exp) == []
    # The same runs with the new blocks: the sections appear.
    body = json.loads((exp / "main" / "runs" / "twin" / "metrics.json").read_text())
    body["retrieval"] = retrieval_block(0.2)
    (exp / "main" / "runs" / "twin" / "metrics.json").write_text(json.dumps(body))
    write_premise(exp / "main" / "dataset", share=0.1, ceiling=0.004)
    md = build_report(exp).read_text()
    assert "Retrieval diagnostics: not measured" not in md and "| TWIN | 100 |" in md
    assert "| main | 10.00% | +0.0040 |" in md
    assert check_report(exp) == []


# ---- learning curve ----------------------------------------------------------------------------------------
def test_learning_curve_counts_the_samples_each_run_saw(experiment, tables, report_md):
    rows = {r["model"]: r for r in tables["main"]["learning_curve"]["rows"]}
    assert set(rows) == set(MODELS)
    for model, r in rows.items():
        m = json.loads((experiment / "main" / "runs" / model / "metrics.json").read_text())
        warm = sum(w["n_train"] for w in m.get("warmup_days") or [])
        per_day = np.cumsum([d["n_train"] * m["config"].get("passes_per_day", 1) for d in m["days"]]) + warm
        assert [p["seen"] for p in r["points"]] == per_day.tolist() and r["samples_total"] == per_day[-1]
        assert [p["auc"] for p in r["points"]] == [d["auc"] for d in m["days"]]
    assert "Learning curve: AUC against training samples seen" in report_md
    assert (experiment / "report" / "figures" / "learning_curve.png").exists()


def test_a_tampered_learning_curve_is_caught(copy):
    p = copy / "report" / "tables.json"
    _edit(p, lambda t: t["main"]["learning_curve"]["rows"][0].__setitem__("samples_total", 1))
    assert any("learning_curve" in x and "samples_total" in x for x in check_report(copy))
