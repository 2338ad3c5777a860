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
    assert [w["far_past_signal"] for w in resolved["sweep_worlds"].values()] == list(cfg.sweep) == [0.0, 0.5, 1.0]
    assert cfg.kuairand_layout == "27k" and resolved["experiment"]["kuairand"] == "27k"


def test_own_data_needs_no_magic_values(tmp_path):
    """With `dataset:` the sweep (a generator's knob) and the KuaiRand section are off unless asked for, and
    experiment.json records what runs; a generated-world experiment keeps both."""
    own = ExperimentConfig(dataset="/data/mine")
    assert own.sweep == () and own.kuairand_layout == ""
    assert own.resolve()["experiment"]["sweep_values"] == [] and "sweep_worlds" not in own.resolve()
    plan = [name for name, _ in Experiment(own, tmp_path / "own")._plan()]
    assert not [n for n in plan if "sweep" in n or "kuairand" in n] and "generate main" not in plan
    assert ExperimentConfig(dataset="/data/mine", kuairand="1k").kuairand_layout == "1k"
    for skip in ("none", ""):
        assert ExperimentConfig(kuairand=skip).kuairand_layout == ""
    gen = [name for name, _ in Experiment(ExperimentConfig(world_preset="tiny"), tmp_path / "gen")._plan()]
    assert "generate sweep 0.5" in gen and "import kuairand" in gen
    # a folder written when these were explicit values resumes under the new defaults
    (tmp_path / "old").mkdir()
    Experiment(ExperimentConfig(world_preset="tiny", sweep_values=(0.0, 0.5, 1.0), kuairand="27k"),
               tmp_path / "old")._save()
    Experiment(ExperimentConfig(world_preset="tiny"), tmp_path / "old")


def test_example_configs_load():
    from twinv2.experiment.config import load_experiment

    cfg = load_experiment(str(REPO / "examples" / "own-data.yaml"))
    assert cfg.dataset and cfg.sweep == () and cfg.kuairand_layout == ""
    text = (REPO / "examples" / "kuairand27k.yaml").read_text()
    assert "twinv2 import mapped --mapping" in text and "--kuairand" not in text


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
    ({"kuairand": "skip"}, "skip"),
    ({"cluster_cadence": "weekly"}, "weekly"),
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


@pytest.mark.slow
def test_dataset_experiment_from_an_empty_folder(tmp_path, tiny_world):
    """`dataset:` (a world used in place) from an empty --out: EXP/main/ did not exist when stats.json was
    written (issue 13); the report then finds the dataset (config.experiment.dataset) and computes Figure 5,
    diversity and the snapshot cost from it."""
    import shutil

    data = tmp_path / "mine"
    shutil.copytree(tiny_world, data, ignore=shutil.ignore_patterns("*.csr", "clusters", "embeddings"))
    cfg = ExperimentConfig(name="byo", dataset=str(data), models=("din", "twin", "twin_v2"), seeds=1,
                           ablation=False, cluster_bench_users=1, train={"max_train_per_day": 150},
                           embed={"max_pairs": 50_000}, cluster={"workers": 1})
    exp = tmp_path / "exp"
    md = run_experiment(cfg, exp, progress=False).read_text()
    assert (exp / "main" / "stats.json").is_file() and not (exp / "main" / "dataset").exists()
    assert not (exp / "sweep").exists() and not (exp / "kuairand").exists()  # defaults with `dataset:`
    tables = json.loads((exp / "report" / "tables.json").read_text())
    main = tables["main"]
    assert "rows" in main["history_groups"] and "rows" in main["diversity"], (main["history_groups"],
                                                                               main["diversity"])
    assert main["cost"]["snapshots"] and main["truth"] is True and main["table3"]["oracle"]
    # cluster_cadence "daily" (the default): a snapshot before each evaluation day, each refreshed from the last
    from twinv2.data.storage import Dataset

    snaps = sorted(main["cost"]["snapshots"], key=lambda r: r["snapshot_ts"])
    assert [r["snapshot_ts"] for r in snaps] == [d.start_ms for d in Dataset(data).eval_days]
    assert snaps[0]["base_snapshot"] is None and all(r["base_snapshot"] for r in snaps[1:])
    assert all(r["reused_users"] + r["clustered_users"] == r["users"] for r in snaps)
    assert "Oracle (p_true)" in md
    from twinv2.report import check_report

    assert check_report(exp) == []


def test_cluster_cadence_once_keeps_one_snapshot(tmp_path, tiny_world, tiny_snapshot):
    import shutil

    from twinv2.data.storage import Dataset

    data = tmp_path / "mine"
    shutil.copytree(tiny_world, data, ignore=shutil.ignore_patterns("*.csr", "clusters"))
    cfg = ExperimentConfig(dataset=str(data), cluster_cadence="once", cluster={"workers": 1})
    assert Experiment(cfg, tmp_path / "exp", progress=False)._cluster(data) is None
    assert [p.name for p in (data / "clusters").iterdir()] == [f"before-{Dataset(data).eval_days[0].start_ms}"]
