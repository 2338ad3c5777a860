"""The report of an experiment on one's own imported log (`dataset:`, issue 13): every section that real data
allows is computed, and the wording follows the data (no oracle, no generated-world caveats, Table 4 at the
data's own history lengths)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from report_experiment import imported_copy, make_own_data_experiment

from twinv2.report import build_report, check_report


@pytest.fixture(scope="session")
def imported(tiny_world, tmp_path_factory) -> Path:
    """The tiny world re-imported through `twinv2 import mapped`: a log without p_true or premise."""
    return imported_copy(tiny_world, tmp_path_factory.mktemp("imported"))


@pytest.fixture(scope="session")
def own(imported, tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("own-data") / "dataset"
    shutil.copytree(imported, data, ignore=shutil.ignore_patterns("*.csr"))
    root = make_own_data_experiment(tmp_path_factory.mktemp("own") / "exp", data)
    build_report(root)
    return root


def test_the_imported_copy_has_no_truth(imported):
    from twinv2.data.storage import Dataset

    ds = Dataset(imported)
    assert ds.manifest["source"] != "generated" and "p_true" not in ds.samples().columns
    assert not (imported / "premise.json").exists() and len(ds.eval_days) == 5


def test_every_section_real_data_allows_is_computed(own):
    t = json.loads((own / "report" / "tables.json").read_text())
    md = (own / "report" / "report.md").read_text()
    main = t["main"]
    assert main["truth"] is False and main["table3"]["oracle"] is None
    assert "rows" in main["history_groups"], main["history_groups"]  # Figure 5 needs the dataset
    assert "rows" in main["diversity"], main["diversity"]
    assert main["cost"]["snapshots"] and main["cost"]["behaviour_parquet_bytes"]
    assert main["ablation"] and main["reference"]["rows"]
    reach = t["premise"]["rows"][0]["reach"]
    assert reach["n_test_samples"] > 0 and reach["share_beyond_window"] == 0.0  # tiny histories: < 10,000
    assert "does it reach beyond TWIN's window" in md and "Reach (main data)" in md
    assert check_report(own) == []


def test_wording_follows_the_data(own):
    md = (own / "report" / "report.md").read_text()
    caveats = md[md.index("How to read this"):md.index("Appendix")]
    assert "generated world" not in caveats and "p_true" not in caveats and "oracle row" not in caveats
    assert "a log without ground truth" in caveats
    assert "Oracle (p_true)" not in md and "E[AUC] under p_true" not in md
    # Table 4: the caption names the data's lengths; the T = 14,500 time target is not judged at T = 1,200
    assert "T = 900 to 2,500 behaviours, median 1,200" in md
    assert "not comparable: adaptive median seconds per user <= 0.050, one core" in md
    assert "met: adaptive median seconds per user" not in md
    # the test hours' sizes stand beside Table 3 (these fake runs score whole days: every day usable)
    assert re.search(r"Test hours: [\d,]+, [\d,]+, [\d,]+, [\d,]+, [\d,]+ samples \(day 1 to 5\)\.\n", md)


def test_a_generated_report_keeps_its_caveats(report_md):
    caveats = report_md[report_md.index("How to read this"):report_md.index("Appendix")]
    assert "generated world" in caveats and "E[AUC], E[GAUC] under p_true" in caveats


@pytest.mark.slow
def test_experiment_on_an_imported_log(imported, tmp_path, monkeypatch):
    """The real pipeline on the imported log with no sweep or KuaiRand keys at all: it runs from an empty
    folder and its report computes Figure 5, diversity, snapshot cost and reach; a relative `dataset:` is
    found again when the report is rebuilt from another folder."""
    from twinv2.experiment.config import ExperimentConfig
    from twinv2.experiment.run import run_experiment

    shutil.copytree(imported, tmp_path / "dataset", ignore=shutil.ignore_patterns("*.csr"))
    monkeypatch.chdir(tmp_path)
    cfg = ExperimentConfig(name="own", dataset="dataset", models=("din", "twin", "twin_v2"), seeds=1,
                           ablation=False, cluster_bench_users=1, train={"max_train_per_day": 150},
                           embed={"max_pairs": 50_000}, cluster={"workers": 1})
    md = run_experiment(cfg, tmp_path / "exp", progress=False).read_text()
    t = json.loads((tmp_path / "exp" / "report" / "tables.json").read_text())
    assert "rows" in t["main"]["history_groups"] and "rows" in t["main"]["diversity"]
    assert t["main"]["cost"]["snapshots"] and t["premise"]["rows"][0]["reach"]["n_test_samples"] > 0
    assert not t["sweep"] and not t["kuairand"] and "Oracle (p_true)" not in md
    m = json.loads((tmp_path / "exp" / "main" / "runs" / "din" / "metrics.json").read_text())
    assert m["n_days"] == 5 and m["n_usable_days"] == 0 and 0 < m["pooled_auc"] < 1  # ~60 per test hour
    assert "none of the 5 days is usable" in md and "pooled AUC" in md
    monkeypatch.chdir(tmp_path / "exp")
    build_report(tmp_path / "exp")
    again = json.loads((tmp_path / "exp" / "report" / "tables.json").read_text())
    assert "rows" in again["main"]["history_groups"] and check_report(tmp_path / "exp") == []
