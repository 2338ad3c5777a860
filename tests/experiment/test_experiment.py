"""`twinv2 experiment`: config validation, and one end-to-end run on the tiny world checked against its runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from twinv2.config import from_dict
from twinv2.experiment.config import PRESETS, ExperimentConfig, experiment_preset
from twinv2.experiment.run import Experiment, run_experiment
from twinv2.models.registry import MODELS

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_resolve(name):
    cfg = experiment_preset(name)
    resolved = cfg.resolve()
    assert resolved["train"]["seed"] == cfg.seed
    assert set(cfg.models) == set(MODELS)
    assert [w["far_past_signal"] for w in resolved["sweep_worlds"].values()] == list(cfg.sweep_values)


@pytest.mark.parametrize("data, match", [
    ({"modles": ["din"]}, "unknown key"),
    ({"models": ["din", "twin_v3"]}, "twin_v3"),
    ({"train": {"lr_rate": 0.1}}, "lr_rate"),
    ({"world": {"n_user": 5}}, "n_user"),
    ({"embed": {"dims": 8}}, "dims"),
    ({"cluster": {"gama": 3}}, "gama"),
    ({"kuairand": "40k"}, "40k"),
    ({"sweep_values": [-1.0]}, "-1.0"),
    ({"dataset": "/somewhere", "sweep_values": [0.0]}, "sweep_values"),
])
def test_bad_config_names_the_bad_value(data, match):
    with pytest.raises(ValueError, match=match):
        from_dict(ExperimentConfig, data)


def test_unknown_preset():
    with pytest.raises(ValueError, match="nope"):
        experiment_preset("nope")


def test_ablations_change_only_log_n():
    cfg = experiment_preset("demo")
    full, gsu = cfg.train_config("twin_v2"), cfg.train_config("twin_v2", {"log_n_gsu": False})
    assert full.model_cfg.attention.log_n_gsu and not gsu.model_cfg.attention.log_n_gsu
    assert gsu.model_cfg.attention.log_n_esu and gsu.max_train_per_day == full.max_train_per_day == 2_500


def test_a_folder_with_another_config_is_refused(tmp_path):
    cfg = ExperimentConfig(world_preset="tiny", sweep_values=(), kuairand="")
    Experiment(cfg, tmp_path)._save()
    with pytest.raises(ValueError, match="different config"):
        Experiment(ExperimentConfig(world_preset="tiny", sweep_values=(), kuairand="", seed=1), tmp_path)


def _table_rows(md: str, heading: str) -> dict[str, list[str]]:
    """First markdown table after `heading`: first cell (bold stripped) → cells."""
    part = md[md.index(heading):]
    rows = {}
    for line in part.splitlines()[1:]:
        if line.startswith("|"):
            cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
        elif rows:
            break
    return rows


@pytest.mark.slow
def test_end_to_end_on_tiny(tmp_path, kuairand_dir):
    cfg = ExperimentConfig(
        name="e2e", world_preset="tiny", train={"max_train_per_day": 150, "eval_batch_size": 256},
        embed={"max_pairs": 50_000}, cluster={"workers": 1}, cluster_bench_users=2, seeds=2,
        sweep_values=(0.0, 1.0), sweep_world={"n_users": 24}, kuairand="27k", kuairand_src=str(kuairand_dir))
    report = run_experiment(cfg, tmp_path / "exp", progress=False)
    exp = tmp_path / "exp"
    md = report.read_text()
    record = json.loads((exp / "experiment.json").read_text())
    assert record["finished"] and "train main/twin_v2" in record["timings"]

    # Table 3: every model, with the numbers of its metrics.json
    for name in MODELS:
        m = json.loads((exp / "main" / "runs" / name / "metrics.json").read_text())
        assert len(m["days"]) == 5 and m["item_init"] == "embeddings"
        assert f"{m['auc_mean']:.4f}" in md and f"{m['gauc_mean']:.4f}" in md, name
        assert 0.0 <= m["zero_shot_auc_mean"] <= 1.0  # the zero-shot reference rides along every run
        assert ("retrieval" in m) == (name not in ("avg_pooling", "din", "sdim")), name  # GSU models only
    for name in ("twin", "twin_v2"):  # the headline models again with another training seed
        m = json.loads((exp / "main" / "runs" / f"{name}-seed1" / "metrics.json").read_text())
        assert m["config"]["seed"] == cfg.seed + 1 and len(m["days"]) == 5
    for section in ("ablation/no_ln_gsu", "ablation/no_ln_esu", "ablation/no_ln_both"):
        assert (exp / "main" / section / "metrics.json").exists()
    for v in ("0.0", "1.0"):
        for m in ("twin", "twin_v2"):
            assert (exp / "sweep" / f"fps-{v}" / "runs" / m / "metrics.json").exists()
    from twinv2.report import check_report

    assert check_report(exp) == []
    # a tampered metrics.json is caught
    p = exp / "main" / "runs" / "din" / "metrics.json"
    m = json.loads(p.read_text())
    m["auc_mean"] += 0.01
    p.write_text(json.dumps(m))
    assert check_report(exp)
    assert re.search(r"TWIN-V2", md) and (exp / "report" / "report.html").exists()

    # rerunning a finished experiment skips every stage but the report
    p.write_text(json.dumps({**m, "auc_mean": m["auc_mean"] - 0.01}))
    Experiment(cfg, exp, progress=False).run()
    after = json.loads((exp / "experiment.json").read_text())["timings"]
    assert {k: v for k, v in after.items() if k != "report"} == \
        {k: v for k, v in record["timings"].items() if k != "report"}
