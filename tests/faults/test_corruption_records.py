"""Damaged small records are found, never read silently (issue 14): the sealed JSON records (data/sealed.py:
experiment.json, stats.json, cluster_bench.json, bench_train.json, premise.json, nearline_state.json, LATEST)
and the cluster snapshots' manifests as the report reads them. A flip of any byte is found; from the CLI each
is one line naming the file, exit status 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.faults.test_corruption import flip
from tests.report.report_experiment import make_experiment
from twinv2.cli import main as cli_main
from twinv2.data.sealed import SEAL, read_sealed, sealed, write_sealed
from twinv2.schema import DataError
from twinv2.train.checkpoint import resolve_checkpoint

BODY = {"checkpoint": "checkpoints/ckpt-000005.pt", "seq": 5, "trained": [1.5, None, -2], "at": "2026-12-02"}


def test_a_sealed_record_reads_back_as_written(tmp_path):
    p = tmp_path / "r.json"
    write_sealed(p, BODY)
    assert read_sealed(p, fix="x") == BODY and SEAL in json.loads(p.read_text())
    write_sealed(p, {**read_sealed(p, fix="x"), "seq": 6})  # read, change, write: sealed anew
    assert read_sealed(p, fix="x")["seq"] == 6


def test_every_single_byte_flip_in_a_sealed_record_is_found(tmp_path):
    p = tmp_path / "LATEST"
    write_sealed(p, BODY)
    good = p.read_bytes()
    for at in range(len(good)):  # the seal's own key and value included
        flip(p, at, n=1)
        with pytest.raises(DataError, match=r"LATEST: (checksum mismatch|unreadable|no checksum|not a twinv2)"):
            read_sealed(p, fix="rewrite it")
        p.write_bytes(good)


def test_a_record_without_a_seal_or_with_an_edited_value_is_refused(tmp_path):
    p = tmp_path / "stats.json"
    p.write_text(json.dumps(BODY))  # as written before records were sealed
    with pytest.raises(DataError, match=rf"stats.json: no checksum \({SEAL}\).*; delete it"):
        read_sealed(p, fix="delete it")
    p.write_text(json.dumps({**sealed(BODY), "seq": 4}))  # a value edited, the old seal kept
    with pytest.raises(DataError, match="stats.json: checksum mismatch"):
        read_sealed(p, fix="delete it")
    p.write_text(json.dumps([sealed(BODY)]))
    with pytest.raises(DataError, match="not a twinv2 record"):
        read_sealed(p, fix="delete it")


# ---- each record where it is read ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tiny_world, tmp_path_factory) -> Path:
    return make_experiment(tmp_path_factory.mktemp("records") / "exp", tiny_world)


@pytest.fixture
def exp(built, tmp_path) -> Path:
    root = tmp_path / "exp"
    shutil.copytree(built, root)
    return root


def _snapshot_manifest(exp: Path) -> str:
    return next((exp / "main" / "dataset" / "clusters").glob("*/manifest.json")).relative_to(exp).as_posix()


@pytest.mark.parametrize("rel", ["experiment.json", "main/stats.json", "main/cluster_bench.json",
                                 "bench_train.json", "kuairand/stats.json", "main/dataset/premise.json",
                                 "sweep/fps-1.0/dataset/premise.json", "snapshot"])
def test_a_flipped_record_stops_the_report_naming_it(exp, rel, capsys):
    rel = _snapshot_manifest(exp) if rel == "snapshot" else rel
    assert (exp / rel).is_file(), rel
    flip(exp / rel)
    assert cli_main(["report", str(exp)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{rel}:" in err[0] and ("damaged" in err[0] or "edited" in err[0]), err


def test_an_intact_experiment_reports(exp):
    assert cli_main(["report", str(exp)]) in (0, 1)  # built (1: only the report's own consistency notes)


def test_a_flipped_experiment_record_stops_the_resume_naming_it(tmp_path):
    from twinv2.experiment.config import ExperimentConfig
    from twinv2.experiment.run import Experiment

    cfg = ExperimentConfig(name="rec", world_preset="tiny", models=["avg_pooling"], kuairand="none")
    out = tmp_path / "exp"
    out.mkdir()
    Experiment(cfg, out, progress=False)._save()
    Experiment(cfg, out, progress=False)  # an intact record resumes
    flip(out / "experiment.json")
    with pytest.raises(DataError, match="experiment.json: (checksum mismatch|unreadable|no checksum)"):
        Experiment(cfg, out, progress=False)


def test_a_flipped_latest_pointer_is_found(tmp_path):
    from twinv2.serve.synthetic import synthetic_checkpoint

    pub = tmp_path / "pub"
    (pub / "checkpoints").mkdir(parents=True)
    for seq in (4, 5):
        synthetic_checkpoint(pub / "checkpoints" / f"ckpt-00000{seq}.pt", 40, seed=seq)
    write_sealed(pub / "LATEST", {"checkpoint": "checkpoints/ckpt-000005.pt"})
    assert resolve_checkpoint(pub).name == "ckpt-000005.pt"
    text = (pub / "LATEST").read_text()
    (pub / "LATEST").write_text(text.replace("ckpt-000005", "ckpt-000004"))  # "5" ^ 0x01: an older checkpoint
    with pytest.raises(DataError, match="LATEST: checksum mismatch"):
        resolve_checkpoint(pub)


def test_a_flipped_nearline_state_is_found(tiny_world, tmp_path):
    from twinv2.serve.nearline import STATE, Nearline

    out, inbox = tmp_path / "out", tmp_path / "inbox"
    out.mkdir()
    inbox.mkdir()
    write_sealed(out / STATE, {"processed_until": 123, "seq": 2, "files": {}})
    flip(out / STATE)
    with pytest.raises(DataError, match=f"{STATE}: (checksum mismatch|unreadable)"):
        Nearline(tiny_world, tmp_path / "checkpoint.pt", inbox, out, progress=False)  # the state is read first
