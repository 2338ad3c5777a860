"""The command line: argument parsing, time parsing and user-facing errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from twinv2.cli import build_parser, main, parse_time
from twinv2.config import from_dict, parse_overrides, to_dict


def test_parse_time_forms():
    assert parse_time("1650000000000") == 1_650_000_000_000
    assert parse_time("2022-04-17") == 1_650_153_600_000
    assert parse_time("2022-04-17T01:00:00+08:00") == 1_650_128_400_000
    with pytest.raises(ValueError, match="cannot read 'yesterday-ish'"):
        parse_time("yesterday-ish")
    with pytest.raises(ValueError, match="needs a dataset"):
        parse_time("eval:0")


def test_overrides_are_yaml_scalars():
    assert parse_overrides(["a=0.5", "b=10", "c=true", "d=[1, 2]"]) == {"a": 0.5, "b": 10, "c": True, "d": [1, 2]}
    with pytest.raises(ValueError, match="--set expects key=value, got 'oops'"):
        parse_overrides(["oops"])
    with pytest.raises(ValueError, match="cannot read the value as YAML"):
        parse_overrides(["a=[1,"])


def test_dotted_overrides_nest_and_merge():
    got = parse_overrides(["model_cfg.eta.n_bits=16", "model_cfg.dim=24", "model_cfg.eta.lsh_seed=3", "lr=0.1"])
    assert got == {"model_cfg": {"eta": {"n_bits": 16, "lsh_seed": 3}, "dim": 24}, "lr": 0.1}
    with pytest.raises(ValueError, match="'lr' was already set"):
        parse_overrides(["lr=0.1", "lr.x=2"])


# ---- configs: every model hyper-parameter, unknown keys, bad values --------------------------------------------
def test_every_model_hyper_parameter_is_reachable_from_a_config_and_round_trips():
    from twinv2.train.trainer import TrainConfig

    data = {"model": "sdim", "model_cfg": {"dim": 16, "attention": {"dim": 16}, "eta": {"n_bits": 7},
                                           "sdim": {"n_hashes": 5, "n_bits": 2}, "sim_cluster": {"n_clusters": 9},
                                           "sim_cluster_plus": {"kmeans_iter": 3}}}
    cfg = from_dict(TrainConfig, data)
    m = cfg.model_cfg
    assert (m.eta.n_bits, m.sdim.n_hashes, m.sdim.n_bits, m.sim_cluster.n_clusters) == (7, 5, 2, 9)
    assert (m.sim_cluster_plus.n_clusters, m.sim_cluster_plus.kmeans_iter) == (10_000, 3)  # the rest: defaults
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg  # what a checkpoint stores rebuilds the same config


def test_a_configured_hyper_parameter_reaches_the_model():
    import numpy as np

    from twinv2.models.frame import ItemTables
    from twinv2.models.registry import build_model
    from twinv2.train.trainer import TrainConfig

    cfg = from_dict(TrainConfig, parse_overrides(["model=sdim", "model_cfg.sdim.n_hashes=5",
                                                  "model_cfg.sdim.n_bits=2", "model_cfg.dim=24",
                                                  "model_cfg.attention.dim=24"]))
    z = np.zeros(11, np.int64)
    tables = ItemTables(author_of=z, tag_of=z, dur_of=z, n_authors=3, n_tags=4, n_dur=5)
    model = build_model("sdim", tables, cfg.model_cfg, [3, 6])
    assert model.lsh.shape == (24, 5 * 2)


@pytest.mark.parametrize("pairs, message", [
    (["bach_size=3"], r"unknown key\(s\) \['bach_size'\]; valid keys are \[.*'batch_size'"),
    (["model_cfg.eta.nbits=3"], r"model_cfg.eta: unknown key\(s\) \['nbits'\]; valid keys are \['lsh_seed', 'n_bits'\]"),
    (["batch_size=abc"], r"batch_size: expected int, got 'abc'"),
    (["lr=true"], r"lr: expected float, got True"),
    (["model_cfg=3"], r"model_cfg: expected a mapping of ModelConfig fields, got 3"),
    (["model_cfg.mlp=[8, x]"], r"model_cfg.mlp\[1\]: expected int, got 'x'"),
    (["model_cfg.sdim.n_bits=9"], r"n_bits=9"),
    (["model=nope"], r"unknown model 'nope'"),
])
def test_a_bad_set_is_one_line_and_exit_2(pairs, message, capsys, tmp_path):
    import re

    argv = ["train", str(tmp_path / "never-read")]
    for p in pairs:
        argv += ["--set", p]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("twinv2: error:") and err.count("\n") == 1 and re.search(message, err), err


def test_lr_in_exponent_form_reads_as_a_float():
    from twinv2.train.trainer import TrainConfig

    assert from_dict(TrainConfig, parse_overrides(["lr=1e-3"])).lr == 1e-3  # YAML 1.1 gives the string '1e-3'


def test_set_applies_on_top_of_config(tmp_path, monkeypatch):
    import twinv2.data.generate as generate
    import twinv2.data.storage as storage
    import twinv2.train.run as run

    seen = {}
    monkeypatch.setattr(run, "train_one", lambda ds, cfg, out, **kw: seen.setdefault("train", cfg) and {
        "auc_mean": 0.5, "auc_std": 0.0, "gauc_mean": 0.5, "gauc_std": 0.0})
    monkeypatch.setattr(storage, "Dataset", lambda root: type("D", (), {"root": tmp_path})())
    monkeypatch.setattr(generate, "generate_world", lambda cfg, out, **kw: seen.setdefault("world", cfg) and out)
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text("model: eta\nlr: 0.5\nmodel_cfg: {eta: {n_bits: 8, lsh_seed: 5}}\n")
    assert main(["train", "d", "--config", str(train_yaml), "--set", "model_cfg.eta.n_bits=12",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 0
    cfg = seen["train"]
    assert (cfg.model, cfg.lr, cfg.model_cfg.eta.n_bits, cfg.model_cfg.eta.lsh_seed) == ("eta", 0.5, 12, 5)
    assert main(["train", "d", "--config", str(train_yaml), "--model", "din", "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0  # a flag wins too
    world_yaml = tmp_path / "world.yaml"
    world_yaml.write_text("name: mine\nn_users: 40\nseed: 3\n")
    assert main(["generate", "--config", str(world_yaml), "--set", "n_items=54321", "--seed", "9",
                 "--out", str(tmp_path / "w"), "--quiet"]) == 0
    w = seen["world"]
    assert (w.name, w.n_users, w.n_items, w.seed) == ("mine", 40, 54321, 9)
    assert main(["generate", "--config", str(world_yaml), "--set", "n_itemz=1"]) == 2


def test_every_subcommand_parses():
    p = build_parser()
    for argv in (["generate", "--preset", "tiny"], ["import", "kuairand", "--out", "x"], ["stats", "d"],
                 ["embed", "d"], ["cluster", "d", "--snapshot-before", "eval:0"], ["bench", "cluster"], ["demo"]):
        assert callable(p.parse_args(argv).func)


def test_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("twinv2: error:") and "no manifest.json" in err and err.count("\n") == 1


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "twinv2.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "generate" in r.stdout and "cluster" in r.stdout


def test_train_list_names_every_model(capsys):
    from twinv2.models.names import MODELS

    assert main(["train", "--list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(MODELS)
    assert "--list" in build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert main(["train"]) == 2 and "needs a DATASET" in capsys.readouterr().err


def test_embed_has_quiet():
    assert build_parser().parse_args(["embed", "d", "--quiet"]).quiet is True


def _fake_train(monkeypatch, seen):
    import twinv2.train.run as run

    def fake(ds, cfg, out, **kw):
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(f'{{"model": "{cfg.model}"}}')
        seen.append(cfg.model)
        nan = float("nan")
        return {"auc_mean": 1.0, "auc_std": 0.0, "gauc_mean": nan, "gauc_std": nan, "auc_n_days": 1, "n_days": 5,
                "n_usable_days": 1, "min_test_samples": 100, "pooled_auc": 0.61, "n_test_total": 250}

    monkeypatch.setattr(run, "train_one", fake)


def test_train_out_refuses_another_models_run_or_a_dataset(tiny_world, tmp_path, capsys, monkeypatch):
    """#14 item 11: --out silently overwrote another model's run or wrote into a dataset folder."""
    seen: list[str] = []
    _fake_train(monkeypatch, seen)
    run = tmp_path / "run"
    assert main(["train", str(tiny_world), "--model", "din", "--out", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    # the CLI line says over how many days the mean is and gives the pooled AUC (4 of 5 days NaN here)
    assert "AUC 1.0000 ± 0.0000" in out and "over 1 of 5 days (4 days unusable" in out and "pooled AUC 0.6100" in out
    assert main(["train", str(tiny_world), "--model", "din", "--out", str(run), "--device", "cpu"]) == 0  # rerun
    (run / "predictions-day0.parquet").write_text("old")
    assert main(["train", str(tiny_world), "--model", "twin", "--out", str(run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(run) in err and "model 'din'" in err and "--overwrite" in err
    assert main(["train", str(tiny_world), "--model", "twin", "--out", str(run), "--overwrite"]) == 0
    assert not (run / "predictions-day0.parquet").exists() and seen == ["din", "din", "twin"]
    assert main(["train", str(tiny_world), "--model", "din", "--out", str(tiny_world)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset folder" in err and "twinv2-dataset" in err and str(tiny_world) in err
    assert seen == ["din", "din", "twin"]


def test_experiment_with_a_missing_dataset_is_one_line_and_writes_nothing(tmp_path, capsys):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"dataset: {tmp_path / 'nope'}\n")
    assert main(["experiment", "--config", str(cfg), "--out", str(tmp_path / "exp"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`dataset: " in err and "nope" in err and not (tmp_path / "exp").exists()
