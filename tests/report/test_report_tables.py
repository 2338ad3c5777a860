"""Table 3, the paired test, the oracle, the ablation, cost, the sweep verdict and the KuaiRand note."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from report_experiment import MODELS, SWEEP_GAINS
from scipy.stats import ttest_rel

from twinv2.report import load, tables
from twinv2.report.tables import paired_values, sweep_verdict


def _metrics(exp: Path, *parts: str) -> dict:
    return json.loads(exp.joinpath(*parts, "metrics.json").read_text())


def _days(m: dict, key: str) -> np.ndarray:
    return np.array([d[key] for d in m["days"]], dtype=np.float64)


def test_model_order_is_the_one_torch_free_list():
    """The report reads models/names.py (torch-free), the registry builds every name in it."""
    from twinv2.models import names
    from twinv2.models.registry import model_class

    assert load.MODELS is names.MODELS and load.DISPLAY is names.DISPLAY
    assert [model_class(m).__name__ for m in MODELS] == ["AvgPooling", "DIN", "SIMHard", "ETA", "SIMCluster",
                                                        "SDIM", "SIMClusterPlus", "SIMSoft", "TWIN", "TWINV2",
                                                        "TWINPair"]


def test_table3_has_every_model_with_mean_and_std_over_days(experiment, tables):
    rows = tables["main"]["table3"]["rows"]
    assert [r["model"] for r in rows] == list(MODELS)
    assert [r["name"] for r in rows] == ["Avg-Pooling", "DIN", "SIM Hard", "ETA", "SIM Cluster", "SDIM",
                                         "SIM Cluster+", "SIM Soft", "TWIN", "TWIN-V2", "TWIN + TWIN-V2"]
    for r in rows:
        m = _metrics(experiment, "main", "runs", r["model"])
        for key in ("auc", "gauc"):
            v = _days(m, key)
            assert r[f"{key}_mean"] == pytest.approx(v.mean(), abs=1e-12)
            assert r[f"{key}_std"] == pytest.approx(v.std(ddof=0), abs=1e-12)
            assert r[f"{key}_n"] == 5
        assert (r["paper_auc"], r["paper_gauc"]) == tables_paper(r["model"])


def tables_paper(model):
    from twinv2.report.paper import TABLE3

    return TABLE3.get(model, (None, None))  # the deployed pair has no Table 3 row in the paper


def test_bold_sits_on_the_best_mean(tables, report_md):
    rows = tables["main"]["table3"]["rows"]
    t3_lines = report_md.split("### Table 3 analog")[1].split("TWIN-V2 − TWIN. Pooled")[0].splitlines()
    for key in ("auc", "gauc"):
        best = max(rows, key=lambda r: r[f"{key}_mean"])
        assert [r["model"] for r in rows if r[f"best_{key}"]] == [best["model"]]
        line = next(x for x in t3_lines if x.startswith(f"| {best['name']} |"))
        assert f"**{best[f'{key}_mean']:.4f} ± {best[f'{key}_std']:.4f}**" in line
    assert sum(x.count("**") for x in t3_lines if x.startswith("| ")) == 4  # two bold cells, two marks each


def test_oracle_row_from_p_true(experiment, tables, report_md):
    o = tables["main"]["table3"]["oracle"]
    m = _metrics(experiment, "main", "runs", "twin_v2")
    assert o["auc_mean"] == pytest.approx(_days(m, "oracle_auc").mean(), abs=1e-12)
    assert o["gauc_std"] == pytest.approx(_days(m, "oracle_gauc").std(), abs=1e-12)
    assert o["max_disagreement"] == pytest.approx(0.0, abs=1e-12)
    assert f"| Oracle (p_true) | {o['auc_mean']:.4f} ± {o['auc_std']:.4f}" in report_md


def test_paired_test_equals_scipy(experiment, tables, report_md):
    v2, tw = _metrics(experiment, "main", "runs", "twin_v2"), _metrics(experiment, "main", "runs", "twin")
    for key in ("auc", "gauc"):
        got = tables["main"]["table3"]["paired"][key]
        res = ttest_rel(_days(v2, key), _days(tw, key))
        assert got["t"] == pytest.approx(res.statistic, rel=1e-12)
        assert got["p"] == pytest.approx(res.pvalue, rel=1e-12)
        assert got["mean_diff"] == pytest.approx((_days(v2, key) - _days(tw, key)).mean(), abs=1e-12)
        assert got["n"] == 5
        line = next(x for x in report_md.splitlines() if x.startswith(f"| {key.upper()} | "))
        assert f"| {got['mean_diff']:+.4f} ± {got['std_diff']:.4f} | {res.statistic:.2f} | {res.pvalue:.3g} | 5 |" \
            in line


def test_paired_test_is_na_below_two_days_or_without_variation():
    one = paired_values({0: 0.71, 1: float("nan")}, {0: 0.70, 1: 0.69})
    assert one["n"] == 1 and np.isnan(one["t"]) and np.isnan(one["p"]) and one["note"].startswith("n/a")
    assert one["mean_diff"] == pytest.approx(0.01)
    const = paired_values({0: 0.71, 1: 0.72, 2: 0.73}, {0: 0.70, 1: 0.71, 2: 0.72})
    assert np.isnan(const["p"]) and "same every day" in const["note"]
    # Days are matched by index, not by position.
    shuffled = paired_values({2: 0.9, 0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.4, 2: 0.7})
    res = ttest_rel([0.5, 0.6, 0.9], [0.4, 0.4, 0.7])
    assert shuffled["t"] == pytest.approx(res.statistic) and shuffled["days"] == [0, 1, 2]


def test_ablation_rows_compare_with_the_full_model(experiment, tables):
    ab = tables["main"]["ablation"]
    assert [r["variant"] for r in ab["rows"]] == ["full", "no_ln_gsu", "no_ln_esu", "no_ln_both"]
    full = _metrics(experiment, "main", "runs", "twin_v2")
    for r in ab["rows"][1:]:
        m = _metrics(experiment, "main", "ablation", r["variant"])
        assert r["gauc_mean"] == pytest.approx(_days(m, "gauc").mean(), abs=1e-12)
        want = _days(m, "gauc") - _days(full, "gauc")
        assert r["vs_full"]["gauc"]["mean_diff"] == pytest.approx(want.mean(), abs=1e-12)
        assert r["vs_full"]["gauc"]["p"] == pytest.approx(ttest_rel(_days(m, "gauc"), _days(full, "gauc")).pvalue)


def test_table4_carries_the_benchmark_and_the_paper(experiment, tables):
    bench = json.loads((experiment / "main" / "cluster_bench.json").read_text())
    t4 = tables["main"]["table4"]
    assert [r["accuracy"] for r in t4["rows"]] == [r["accuracy"] for r in bench["rows"]]
    by = {r["variant"]: r for r in t4["rows"]}
    assert by["adaptive"]["paper_accuracy"] == 0.802 and by["balanced_binary"]["paper_sec"] == 1.010
    assert by["adaptive (scikit-learn k-means++)"]["paper_accuracy"] is None


def _behaviours_before(dataset: Path, ts: int) -> int:
    import pandas as pd

    return int(sum((pd.read_parquet(p)["ts"] < ts).sum() for p in (dataset / "behaviours").glob("part-*.parquet")))


def test_cost_storage_and_clustering(experiment, tables):
    c = tables["main"]["cost"]
    (snap,) = c["snapshots"]
    manifest = json.loads((experiment / snap["source"]).read_text())
    n = _behaviours_before(experiment / "main" / "dataset", manifest["snapshot_ts"])
    assert snap["behaviours"] == n
    assert snap["clusters"] == sum(e["rows"] for e in manifest["shards"].values())
    assert snap["bytes_before"] == n * c["raw_row_bytes"] == n * 40
    assert snap["bytes_after"] == snap["clusters"] * c["cluster_row_bytes"]
    assert snap["wall_seconds"] == 4.25 and snap["worker_seconds"] == pytest.approx(sum(0.5 + s for s in range(4)))
    assert c["cluster_timings"] == {"cluster": 30.0}
    m = _metrics(experiment, "main", "runs", "din")
    din = next(r for r in c["models"] if r["model"] == "din")
    assert din["train_samples_per_s_mean"] == pytest.approx(_days(m, "train_samples_per_s").mean())
    assert din["eval_samples_per_s_mean"] == pytest.approx(_days(m, "eval_samples_per_s").mean())


def test_cost_derives_counts_missing_from_the_manifest(experiment):
    exp = load.load_experiment(experiment)
    path, m = exp.main.snapshots[0]
    bare = {**m, "shards": {k: {x: y for x, y in e.items() if x not in ("rows", "behaviours")}
                            for k, e in m["shards"].items()}}
    got = tables.snapshot_cost(path, bare, exp.main, exp, 40, 61)
    assert got["behaviours"] == _behaviours_before(experiment / "main" / "dataset", m["snapshot_ts"])
    import pyarrow.parquet as pq

    # derived from the part files present: none in the fake snapshot, unless a session fixture (tiny_snapshot)
    # clustered the same shared dataset into a folder of the same name first
    parts = sorted(Path(path).glob("part-*.parquet"))
    assert got["clusters"] == sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
    assert len(got["derived"]) == 2


def _rows(gains: dict[float, list[float]]) -> list[dict]:
    return [{"value": v, "gain": {"gauc": paired_values(dict(enumerate(g)), dict(enumerate([0.0] * len(g))))}}
            for v, g in gains.items()]


def test_sweep_verdict_is_computed_from_the_gains():
    assert sweep_verdict(_rows(SWEEP_GAINS), "gauc").startswith("GAUC: yes")
    flat = {0.0: [0.02, 0.021, 0.019], 0.5: [0.01, 0.012, 0.011], 1.0: [0.02, 0.02, 0.021]}
    assert sweep_verdict(_rows(flat), "gauc").startswith("GAUC: no")
    partly = {0.0: [0.005, 0.006, 0.0055], 0.5: [0.01, 0.012, 0.011], 1.0: [0.02, 0.02, 0.021]}
    assert sweep_verdict(_rows(partly), "gauc").startswith("GAUC: partly")
    assert "cannot judge" in sweep_verdict(_rows({0.5: [0.01, 0.02]}), "gauc")
    noisy = {0.0: [-0.08, 0.05, -0.07], 0.5: [0.09, -0.04, 0.05], 1.0: [-0.05, 0.03, -0.04]}
    assert sweep_verdict(_rows(noisy), "gauc").startswith("GAUC: inconclusive")


def test_sweep_table(experiment, tables):
    sw = tables["sweep"]
    assert [r["value"] for r in sw["rows"]] == [0.0, 0.5, 1.0]
    for r in sw["rows"]:
        want = np.array(SWEEP_GAINS[r["value"]])
        assert r["gain"]["gauc"]["mean_diff"] == pytest.approx(want.mean(), abs=1e-9)
        assert r["gain"]["gauc"]["std_diff"] == pytest.approx(want.std(), abs=1e-9)
    assert sw["verdict"]["gauc"].startswith("GAUC: yes")


def test_kuairand_section(experiment, tables, report_md):
    k = tables["kuairand"]
    assert k["table3"]["oracle"] is None
    assert [r["model"] for r in k["table3"]["rows"]] == ["din", "sim_soft", "twin", "twin_v2"]
    stats = json.loads((experiment / "kuairand" / "stats.json").read_text())
    assert k["note"]["median"] == stats["history_length_at_sample"]["p50"]
    means = [r["auc_mean"] for r in k["table3"]["rows"]]
    assert k["note"]["spread"]["auc_all"] == pytest.approx(max(means) - min(means))
    assert f"{max(means) - min(means):.4f}" in k["note"]["text"]
    assert "## KuaiRand section" in report_md and "Oracle" not in report_md.split("## KuaiRand section")[1]
