"""The report's confidence intervals, expected AUCs, verdicts and seed table against train/significance.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_experiment import predictions, write_metrics, write_predicted_run

from twinv2.data.storage import Dataset
from twinv2.report import build_report, check_report
from twinv2.report.power import N_BOOT, SEED
from twinv2.report.tables import sweep_verdict
from twinv2.train import significance as S
from twinv2.train.metrics import auc


def _pooled(exp: Path, *parts: str) -> pd.DataFrame:
    return predictions(exp.joinpath(*parts))


def _groups(df: pd.DataFrame) -> np.ndarray:
    return df["user_id"].to_numpy() * 100 + df["day"].to_numpy()


def test_table3_pooled_ci_equals_the_bootstrap_on_the_pooled_predictions(experiment, tables):
    pw = tables["main"]["table3"]["power"]
    for model in ("din", "twin_v2"):
        df = _pooled(experiment, "main", "runs", model)
        u, y, s = df["user_id"].to_numpy(), df["label"].to_numpy(), df["score"].to_numpy()
        want = S.bootstrap_ci(u, y, s, groups=_groups(df), n_boot=N_BOOT, seed=SEED)
        rec = pw["runs"][model]
        assert rec["auc"]["value"] == pytest.approx(auc(y, s), abs=1e-12)
        for m in ("auc", "gauc"):
            for k in ("value", "ci_low", "ci_high", "se"):
                assert rec[m][k] == pytest.approx(getattr(want[m], k), abs=1e-12), (model, m, k)
            assert rec[m]["n_users"] == len(np.unique(u)) and rec[m]["n_samples"] == len(df)
            assert rec[m]["ci_low"] < rec[m]["value"] < rec[m]["ci_high"]


def test_twin_pair_is_the_paired_bootstrap_with_delong(experiment, tables, report_md):
    rec = tables["main"]["table3"]["power"]["twin_v2_vs_twin"]
    a, b = _pooled(experiment, "main", "runs", "twin_v2"), _pooled(experiment, "main", "runs", "twin")
    keys = ["user_id", "item_id", "ts", "day"]
    assert (a[keys].to_numpy() == b[keys].to_numpy()).all()
    y = a["label"].to_numpy()
    want = S.paired_bootstrap(a["user_id"].to_numpy(), y, a["score"].to_numpy(), b["score"].to_numpy(),
                              groups=_groups(a), n_boot=N_BOOT, seed=SEED)
    for m in ("auc", "gauc"):
        for k in ("value", "ci_low", "ci_high", "se"):
            assert rec[m][k] == pytest.approx(getattr(want[m], k), abs=1e-12)
        assert rec[m]["mrd"] == pytest.approx(S.Z95 * rec[m]["se"])
        assert rec[m]["verdict"] == S.verdict(rec[m]["ci_low"], rec[m]["ci_high"])
    dl = S.delong_paired(y, a["score"].to_numpy(), b["score"].to_numpy())
    assert rec["delong"]["p"] == pytest.approx(dl["p"])
    g = rec["gauc"]
    cell = f"{g['value']:+.4f} [{g['ci_low']:+.4f}, {g['ci_high']:+.4f}] | {g['mrd']:.4f} |"
    assert any(x.startswith("| GAUC | ") and cell in x for x in report_md.splitlines())


def test_expected_auc_under_p_true_from_predictions_and_from_the_dataset(experiment, tables):
    pw = tables["main"]["table3"]["power"]
    df = _pooled(experiment, "main", "runs", "sdim")
    p, s = df["p_true"].to_numpy(), df["score"].to_numpy()
    rec = pw["runs"]["sdim"]
    assert rec["p_true_from"] == "predictions"
    assert rec["expected_auc"] == pytest.approx(S.expected_auc(p, s), abs=1e-12)
    assert rec["expected_gauc"] == pytest.approx(S.expected_gauc(_groups(df), p, s)[0], abs=1e-12)
    assert pw["oracle"]["expected_auc"] == pytest.approx(S.expected_auc(p, p), abs=1e-12)
    assert max(r["expected_auc"] for r in pw["runs"].values()) < pw["oracle"]["expected_auc"]
    # Ablation runs were written without p_true (older trainer): the report reads it from the dataset.
    ab = next(r for r in tables["main"]["ablation"]["rows"] if r["variant"] == "no_ln_esu")["boot_vs_full"]
    assert ab["a"] == "no_ln_esu" and ab["b"] == "twin_v2"
    samples = Dataset(experiment / "main" / "dataset").samples()
    v = _pooled(experiment, "main", "ablation", "no_ln_esu").merge(samples[["user_id", "item_id", "ts", "p_true"]])
    e = S.expected_auc(v["p_true"].to_numpy(), v["score"].to_numpy())
    assert 0.5 < e < pw["oracle"]["expected_auc"]


def test_every_stated_difference_carries_a_ci_and_a_verdict(tables, report_md):
    t3 = tables["main"]["table3"]
    vb = t3["power"]["vs_best"]
    assert vb["auc"]["best"] == "twin_v2" and set(vb["auc"]["rows"]) == {r["model"] for r in t3["rows"]} - {"twin_v2"}
    for r in tables["main"]["ablation"]["rows"][1:]:
        for m in ("auc", "gauc"):
            iv = r["boot_vs_full"][m]
            assert iv["verdict"] == ("not resolved" if iv["ci_low"] <= 0 <= iv["ci_high"] else
                                     "A better" if iv["ci_low"] > 0 else "B better")
    lines = report_md.split("### Figure 4 analog")[1].split("###")[0].splitlines()
    gsu = next(x for x in lines if x.startswith("| no ln n in GSU |"))
    assert "not resolved" in gsu  # the fixture's mildest ablation: its CI contains 0
    assert "| TWIN | " in report_md and "(best)" in report_md


def test_seed_runs_form_the_seed_table_not_table3_rows(experiment, tables, report_md):
    t3 = tables["main"]["table3"]
    assert all("seed" not in r["model"] for r in t3["rows"])
    rows = {r["model"]: r for r in t3["seeds"]["rows"]}
    assert set(rows) == {"twin", "twin_v2"} and rows["twin"]["seeds"] == [0, 1, 2]
    per = [json.loads((experiment / "main" / "runs" / d / "metrics.json").read_text())["auc_mean"]
           for d in ("twin", "twin-seed1", "twin-seed2")]
    assert rows["twin"]["auc_seed_mean"] == pytest.approx(np.mean(per))
    assert rows["twin"]["auc_seed_std"] == pytest.approx(np.std(per, ddof=1))
    gap = t3["seeds"]["twin_v2_vs_twin"]["gauc"]
    assert gap["diff"] == pytest.approx(rows["twin_v2"]["gauc_seed_mean"] - rows["twin"]["gauc_seed_mean"])
    assert gap["ci_low"] < gap["diff"] < gap["ci_high"]
    assert "| TWIN | 0, 1, 2 |" in report_md


def _rows(spec):
    out = []
    for v, (mean, lo, hi) in spec.items():
        boot = {"gauc": {"value": mean, "ci_low": lo, "ci_high": hi, "verdict": S.verdict(lo, hi)}}
        # The daily t-test says "significant" everywhere; the verdict must read the bootstrap instead.
        gain = {"gauc": {"mean_diff": mean, "std_diff": 1e-4, "p": 1e-4}}
        out.append({"value": v, "gain": gain, "boot": boot})
    return out


def test_sweep_verdict_reads_the_bootstrap_when_it_exists():
    unresolved = {0.0: (0.001, -0.01, 0.012), 0.5: (0.004, -0.006, 0.014), 1.0: (0.009, -0.001, 0.019)}
    assert sweep_verdict(_rows(unresolved), "gauc").startswith("GAUC: inconclusive")
    yes = {0.0: (0.001, -0.01, 0.012), 0.5: (0.02, 0.01, 0.03), 1.0: (0.03, 0.02, 0.04)}
    text = sweep_verdict(_rows(yes), "gauc")
    assert text.startswith("GAUC: yes") and "95% CI" in text


def test_identical_models_are_not_resolved(tmp_path, tiny_world):
    """Same scores for TWIN and TWIN-V2: every interval contains 0 and the report says so."""
    exp = tmp_path / "exp"
    shutil.copytree(tiny_world, exp / "main" / "dataset", ignore=shutil.ignore_patterns("*.csr"))
    ds = Dataset(exp / "main" / "dataset")
    for m in ("twin", "twin_v2"):
        write_predicted_run(exp / "main" / "runs" / m, m, ds, noise=0.2, seed=5, n_days=2)
    build_report(exp)
    t = json.loads((exp / "report" / "tables.json").read_text())
    rec = t["main"]["table3"]["power"]["twin_v2_vs_twin"]
    for m in ("auc", "gauc"):
        assert rec[m]["value"] == 0 and rec[m]["verdict"] == "not resolved"
    md = (exp / "report" / "report.md").read_text()
    assert md.count("not resolved") >= 2
    assert check_report(exp) == []


def test_check_report_recomputes_the_intervals(experiment, tmp_path):
    dst = tmp_path / "exp"
    shutil.copytree(experiment, dst, ignore=shutil.ignore_patterns("*.png"))
    t = dst / "report" / "tables.json"
    body = json.loads(t.read_text())
    body["main"]["table3"]["power"]["twin_v2_vs_twin"]["gauc"]["ci_low"] = -0.5
    body["main"]["table3"]["power"]["runs"]["din"]["expected_auc"] = 0.99
    t.write_text(json.dumps(body))
    problems = check_report(dst)
    assert any("twin_v2_vs_twin" in p and "ci_low" in p for p in problems), problems
    assert any("runs.din" in p and "expected_auc" in p for p in problems), problems
    # A seed run that the seed table does not list is reported.
    write_metrics(dst / "main" / "runs" / "twin-seed3", "twin", json.loads(
        (dst / "main" / "runs" / "twin" / "metrics.json").read_text())["days"], seed=3)
    assert any("seed table lacks" in p and "twin-seed3" in p for p in check_report(dst))


def test_history_group_gains_are_bootstrapped_over_the_groups_users(experiment, tables):
    hg = tables["main"]["history_groups"]
    a, b = _pooled(experiment, "main", "runs", "twin_v2"), _pooled(experiment, "main", "runs", "twin")
    users = np.array(hg["user_ids"])
    for gi, row in enumerate(hg["rows"]):
        members = users[np.array(hg["user_groups"]) == gi]
        assert row["boot"]["users"] == sorted(members.tolist())
        ma, mb = a[a["user_id"].isin(members)], b[b["user_id"].isin(members)]
        want = S.paired_bootstrap(ma["user_id"].to_numpy(), ma["label"].to_numpy(), ma["score"].to_numpy(),
                                  mb["score"].to_numpy(), groups=_groups(ma), n_boot=N_BOOT, seed=SEED)["gauc"]
        got = row["boot"]["gauc"]
        assert (got["value"], got["ci_low"], got["ci_high"]) == pytest.approx((want.value, want.ci_low, want.ci_high),
                                                                              abs=1e-12)
        assert got["n_users"] == len(members)


def test_sweep_rows_with_predictions_and_seeds(tmp_path, tiny_world):
    exp = tmp_path / "exp"
    for v, noise_v2 in ((0.0, 0.2), (1.0, 0.05)):
        root = exp / "sweep" / f"fps-{v}"
        shutil.copytree(tiny_world, root / "dataset", ignore=shutil.ignore_patterns("*.csr"))
        ds = Dataset(root / "dataset")
        for k, suffix in enumerate(("", "-seed1")):
            write_predicted_run(root / "runs" / f"twin{suffix}", "twin", ds, noise=0.2, seed=1 + k, n_days=2,
                                train_seed=k)
            write_predicted_run(root / "runs" / f"twin_v2{suffix}", "twin_v2", ds, noise=noise_v2, seed=11 + k,
                                n_days=2, train_seed=k)
    md = build_report(exp).read_text()
    sw = json.loads((exp / "report" / "tables.json").read_text())["sweep"]
    by = {r["value"]: r for r in sw["rows"]}
    assert by[1.0]["boot"]["gauc"]["verdict"] == "A better"  # TWIN-V2's scores are far less noisy there
    assert by[0.0]["boot"]["gauc"]["n_users"] == 96
    assert by[1.0]["seeds"]["twin_v2_vs_twin"]["gauc"]["n_a"] == 2
    assert "95% CI" in sw["verdict"]["gauc"]
    assert "TWIN-V2 − TWIN over training seeds" in md and "(MRD " in md.split("## Far-past-signal sweep")[1]
    assert check_report(exp) == []
