"""Damaged outputs are found, never read silently (issue 14): a byte flip in a run's prediction file or its
metrics.json stops `twinv2 report` (exit 2, the file named) instead of a report from changed numbers; a damaged
value in the serving store's LMDB fails its CRC32 and that request gets a 500, no scores."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import lmdb
import pytest

from tests.faults.test_corruption import flip
from twinv2.cli import main as cli_main
from twinv2.data.storage import Dataset
from twinv2.report.load import load_run
from twinv2.schema import DataError
from twinv2.serve.store import CURRENT, FORMAT_KEY, INFO, NEXT_ID, ClusterStore, StoreCorrupt, user_key
from twinv2.serve.synthetic import synthetic_clusters, write_snapshot
from twinv2.train.metrics import METRICS_SHA256, OUTPUTS

SNAP_TS = 1_712_534_400_000


@pytest.fixture(scope="module")
def run_dir(tiny_world, tmp_path_factory) -> Path:
    """A real (tiny) training run: avg_pooling needs no cluster snapshot; 50 training samples a day."""
    from twinv2.train.trainer import StreamingTrainer, TrainConfig

    out = tmp_path_factory.mktemp("run") / "avg_pooling"
    StreamingTrainer(Dataset(tiny_world), TrainConfig(model="avg_pooling", max_train_per_day=50), [],
                     out_dir=out, progress=False).run()
    return out


@pytest.fixture
def exp(run_dir, tmp_path) -> Path:
    """An experiment folder holding only that run (a copy: each test damages its own)."""
    root = tmp_path / "exp"
    shutil.copytree(run_dir, root / "main" / "runs" / "avg_pooling", ignore=shutil.ignore_patterns("checkpoint.pt"))
    return root


def _run(exp: Path) -> Path:
    return exp / "main" / "runs" / "avg_pooling"


def test_the_run_records_its_outputs_and_an_intact_one_reads(exp):
    run = load_run(_run(exp), problems := [])
    assert not problems and run.metrics[METRICS_SHA256]
    assert sorted(run.metrics[OUTPUTS]) == [f"predictions-day{d}.parquet" for d in range(5)]
    assert len(run.predictions()) > 0
    assert cli_main(["report", str(exp)]) in (0, 1)  # built (1: only the report's own consistency notes)


@pytest.mark.parametrize("name", ["predictions-day2.parquet", "metrics.json"])
def test_a_flipped_run_output_stops_the_report_naming_it(exp, name, capsys):
    load_run(_run(exp), [])  # verified once (the marker), so the flip must beat the cache
    flip(_run(exp) / name)
    with pytest.raises(DataError, match=rf"{name}: (checksum mismatch|unreadable)"):
        load_run(_run(exp), [])
    assert cli_main(["report", str(exp)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"avg_pooling/{name}:" in err[0] and "damaged" in err[0], err


def test_a_run_from_before_checksums_is_read_as_it_is(exp):
    import json

    mf = _run(exp) / "metrics.json"
    body = json.loads(mf.read_text())
    del body[OUTPUTS], body[METRICS_SHA256]
    mf.write_text(json.dumps(body))
    flip(_run(exp) / "predictions-day2.parquet", n=1)  # nothing vouches for it: not detectable, by design
    run = load_run(_run(exp), problems := [])
    assert run is not None and not problems and len(run.prediction_files()) == 5


# ---- the serving store -------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path) -> ClusterStore:
    snap = write_snapshot(tmp_path / "snap", synthetic_clusters([1, 2, 3, 4], 5, 500, SNAP_TS, seed=1), SNAP_TS)
    s = ClusterStore(tmp_path / "store")
    s.load_snapshot(snap)
    return s


def _key(store: ClusterStore, user: int) -> bytes:
    with store.env.begin() as txn:
        return txn.get(b"\0\0\0\0current")[:4] + user_key(user)


def test_a_damaged_store_value_raises_naming_the_store_and_user(store):
    key = _key(store, 2)
    with store.env.begin(write=True) as txn:  # one byte of user 2's value changed behind the store's back
        v = bytearray(txn.get(key))
        v[len(v) // 2] ^= 0x01
        txn.put(key, bytes(v))
    with pytest.raises(DataError, match=rf"{store.path}: the stored clusters of user 2 .* fail their CRC32"):
        store.get(2)
    assert store.get(1).size == 5 and store.get(99).size == 0  # the rest of the store still serves


def test_bytes_flipped_in_data_mdb_are_found(store):
    with store.env.begin() as txn:
        value = bytes(txn.get(_key(store, 3)))
    mdb = store.path / "data.mdb"
    raw = mdb.read_bytes()
    at = raw.find(value)
    assert at > 0
    while at >= 0:  # every copy (copy-on-write leaves old ones in free pages): the live one is among them
        flip(mdb, at + len(value) // 2, n=16)  # in the file, as a disk would damage it
        at = raw.find(value, at + 1)
    with pytest.raises(StoreCorrupt, match="user 3"):
        store.get(3)


def test_the_server_answers_500_counts_it_and_serves_no_scores(store, capsys):
    from fastapi.testclient import TestClient

    from twinv2.serve.app import create_app
    from twinv2.serve.scorer import Scorer

    key = _key(store, 4)
    with store.env.begin(write=True) as txn:
        v = bytearray(txn.get(key))
        v[10] ^= 0xFF
        txn.put(key, bytes(v))
    cache = SimpleNamespace(current=SimpleNamespace(version="m"), ready=False, reloads=0, reload_errors=0)
    with TestClient(create_app(Scorer(cache, store))) as c:  # the store is read before the model
        for _ in range(2):
            r = c.post("/v1/score", json={"user_id": 4, "candidates": [1, 2], "ts": SNAP_TS + 1})
            assert r.status_code == 500 and "cluster store damaged" in r.json()["error"], r.text
            assert "scores" not in r.json() and str(store.path) not in r.text  # no server paths to clients
        assert "twinv2_store_corrupt_values_total 2" in c.get("/metrics").text
        h = c.get("/healthz")  # one damaged value is enough: the replica is to be rebuilt
        assert h.status_code == 503 and h.json()["store_corrupt_values"] == 2, h.text
    logged = [ln for ln in capsys.readouterr().err.splitlines() if "user 4" in ln]
    assert len(logged) == 1 and str(store.path) in logged[0]  # logged once, with the store's path


def test_a_store_from_before_metadata_checksums_is_refused(store):
    with store.env.begin(write=True) as txn:  # as a store written before the format key and the metadata CRCs
        txn.delete(FORMAT_KEY)
    with pytest.raises(DataError, match=rf"{store.path}: a cluster store without a format key"):
        ClusterStore(store.path)


@pytest.mark.parametrize("key", [CURRENT, NEXT_ID, "info"])
def test_damaged_store_metadata_is_found_naming_the_key(store, key):
    with store.env.begin(write=True) as txn:
        key = next(k for k, _ in txn.cursor() if k.startswith(INFO)) if key == "info" else key
        v = bytearray(txn.get(key))
        v[len(v) // 2] ^= 0x01
        txn.put(key, bytes(v))
    with pytest.raises(StoreCorrupt, match=rf"{store.path}: the store's metadata '{key[4:].decode()}' fails its CRC32"):
        if key == NEXT_ID:
            store.load_snapshot(write_snapshot(store.path.parent / "snap2",
                                               synthetic_clusters([7], 2, 500, SNAP_TS, seed=3), SNAP_TS))
        elif key == CURRENT:
            store.get(1)
        else:
            store.versions()


def test_damaged_store_metadata_answers_500_and_healthz_503(store):
    from fastapi.testclient import TestClient

    from twinv2.serve.app import create_app
    from twinv2.serve.scorer import Scorer

    cache = SimpleNamespace(current=SimpleNamespace(version="m"), ready=False, reloads=0, reload_errors=0)
    with TestClient(create_app(Scorer(cache, store))) as c:
        assert c.get("/healthz").status_code == 200
        with store.env.begin(write=True) as txn:
            v = bytearray(txn.get(CURRENT))
            v[-1] ^= 0x01
            txn.put(CURRENT, bytes(v))
        r = c.post("/v1/score", json={"user_id": 1, "candidates": [1, 2], "ts": SNAP_TS + 1})
        assert r.status_code == 500 and "its metadata" in r.json()["error"] and "scores" not in r.json(), r.text
        h = c.get("/healthz")
        assert h.status_code == 503 and h.json()["status"] == "damaged", h.text
