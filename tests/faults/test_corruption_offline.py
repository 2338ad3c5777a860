"""Damaged files of the later stages are found, never read silently (issue 14, "byte flips in every kind of file
the project writes"): cluster snapshots (parts and manifest), item embedding tables (Parquet and sidecar),
checkpoints, and the cluster job's resolved embeddings. Each flip is of 16 bytes in the middle of the file (the
datasets' files are in test_corruption.py); the Python API raises DataError naming the file and, from the CLI,
a damaged snapshot or checkpoint is one line naming it, exit status 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.faults.test_corruption import flip
from twinv2.data import checksum
from twinv2.offline.embed import EmbeddingTable
from twinv2.offline.job import RESOLVED, resolve_embeddings
from twinv2.offline.store import ClusterSnapshot, write_manifest
from twinv2.schema import DataError
from twinv2.serve.server import cli_command


@pytest.fixture
def snap(tiny_snapshot, tmp_path) -> Path:
    """A private copy of the tiny snapshot (no reader caches)."""
    out = tmp_path / "clusters" / tiny_snapshot.name
    shutil.copytree(tiny_snapshot, out, ignore=shutil.ignore_patterns("*.csr", checksum.MARKER, ".lock"))
    return out


@pytest.fixture
def emb(tiny_snapshot, tmp_path) -> Path:
    """A private copy of the tiny world's item embeddings (Parquet + sidecar)."""
    src = tiny_snapshot.parents[1] / "embeddings" / "item_embeddings.parquet"
    out = tmp_path / "emb" / src.name
    out.parent.mkdir()
    for p in (src, src.with_suffix(".json")):
        shutil.copy(p, out.parent / p.name)
    return out


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    from twinv2.serve.synthetic import synthetic_checkpoint

    return synthetic_checkpoint(tmp_path_factory.mktemp("ck") / "checkpoint.pt", 40, seed=3)


@pytest.fixture
def ck(good_checkpoint, tmp_path) -> Path:
    out = tmp_path / "run" / "checkpoint.pt"
    out.parent.mkdir()
    shutil.copy(good_checkpoint, out)
    return out


# ---- cluster snapshots ------------------------------------------------------------------------------------
def test_a_flipped_snapshot_part_is_found_and_named(snap):
    ClusterSnapshot(snap)  # verified once (and remembered in the marker)
    part = snap / "part-00001.parquet"
    flip(part)
    with pytest.raises(DataError, match=rf"{part}: checksum mismatch .*manifest.json records"):
        ClusterSnapshot(snap)


def test_a_truncated_or_missing_snapshot_part_is_found(snap):
    part = snap / "part-00002.parquet"
    good = part.read_bytes()
    part.write_bytes(good[:-100])
    with pytest.raises(DataError, match=rf"{part}: {len(good) - 100} bytes where .*manifest.json records"):
        ClusterSnapshot(snap)
    part.unlink()
    with pytest.raises(DataError, match=rf"{part}: missing, but .*manifest.json lists it"):
        ClusterSnapshot(snap)


def test_every_16_byte_flip_in_the_snapshot_manifest_is_found(snap):
    mf = snap / "manifest.json"
    good = mf.read_bytes()
    for at in [len(good) // 2, *np.linspace(0, len(good) - 16, 12).astype(int)]:
        flip(mf, int(at))
        with pytest.raises(DataError, match=f"{mf}: "):
            ClusterSnapshot(snap)
        mf.write_bytes(good)
    ClusterSnapshot(snap)


def test_a_snapshot_opened_again_hashes_nothing_until_a_part_changes(snap, monkeypatch):
    monkeypatch.setattr(checksum, "RACY_NS", 0)  # let the marker vouch for files just written
    s = ClusterSnapshot(snap)
    s.clusters(int(s.user_ids()[0]))  # also builds a part's .csr cache: from the verified sha256, no new hash
    real, calls = checksum.sha256_file, []
    monkeypatch.setattr(checksum, "sha256_file", lambda p, *a: calls.append(Path(p).name) or real(p, *a))
    for _ in range(3):
        ClusterSnapshot(snap).clusters(int(s.user_ids()[0]))
    assert calls == []
    flip(snap / "part-00003.parquet")
    with pytest.raises(DataError, match="part-00003.parquet: checksum mismatch"):
        ClusterSnapshot(snap)
    assert calls == ["part-00003.parquet"]  # only the changed file was hashed again


def test_a_version_1_snapshot_without_a_manifest_checksum_is_read_with_its_parts_verified(snap):
    m = json.loads((snap / "manifest.json").read_text())
    (snap / "manifest.json").write_text(json.dumps({**{k: v for k, v in m.items() if k != "manifest_sha256"},
                                                    "version": 1}))
    ClusterSnapshot(snap)
    flip(snap / "part-00000.parquet")
    with pytest.raises(DataError, match="part-00000.parquet: checksum mismatch"):
        ClusterSnapshot(snap)


def test_an_edited_manifest_rewritten_with_its_checksum_still_meets_the_parts(snap):
    m = json.loads((snap / "manifest.json").read_text())
    m["shards"]["1"]["sha256"] = "0" * 64
    write_manifest(snap, m)
    with pytest.raises(DataError, match="part-00001.parquet: checksum mismatch"):
        ClusterSnapshot(snap)


def test_a_damaged_snapshot_is_not_silently_left_out_of_training(snap):
    from twinv2.train.run import find_snapshots

    ds = types.SimpleNamespace(root=snap.parents[1])  # find_snapshots only reads DATASET/clusters
    assert [s.path for s in find_snapshots(ds)] == [snap]
    flip(snap / "part-00001.parquet")
    with pytest.raises(DataError, match="part-00001.parquet: checksum mismatch"):
        find_snapshots(ds)
    m = json.loads((snap / "manifest.json").read_text())
    write_manifest(snap, {**m, "complete": False})  # an unfinished one is skipped, as before
    assert find_snapshots(ds) == []


def test_a_flipped_snapshot_part_cache_is_rebuilt(snap):
    s = ClusterSnapshot(snap)
    uid = int(s.user_ids()[0])
    want = s.clusters(uid)
    shard = next(i for i in range(s.n_shards) if s.shard(i).user_range(uid) != (0, 0))
    npy = snap / f"part-{shard:05d}.csr" / "col.item_id.npy"
    flip(npy, offset=npy.stat().st_size - 24)  # in the data, past the .npy header
    with pytest.warns(RuntimeWarning, match="col.item_id.npy: checksum mismatch"):
        got = ClusterSnapshot(snap).clusters(uid)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


# ---- item embeddings --------------------------------------------------------------------------------------
def test_a_flipped_embedding_table_is_found_and_named(emb):
    good = EmbeddingTable.load(emb)
    flip(emb)
    with pytest.raises(DataError, match=rf"{emb}: checksum mismatch .*item_embeddings.json records"):
        EmbeddingTable.load(emb)
    emb.write_bytes(emb.read_bytes()[:-50])
    with pytest.raises(DataError, match=rf"{emb}: \d+ bytes where .*item_embeddings.json records"):
        EmbeddingTable.load(emb)
    assert good.meta  # the sidecar's metadata was read when intact


def test_a_flipped_embedding_sidecar_is_found_and_named(emb):
    side = emb.with_suffix(".json")
    good = side.read_bytes()
    for at in [len(good) // 2, *np.linspace(0, len(good) - 16, 8).astype(int)]:
        flip(side, int(at))
        with pytest.raises(DataError, match=f"{side}: "):
            EmbeddingTable.load(emb)
        side.write_bytes(good)
    EmbeddingTable.load(emb)


def test_an_embedding_sidecar_from_before_checksums_is_accepted(emb):
    """Documented: a sidecar written before it recorded the table's sha256 cannot vouch for it; it is read as
    before (its metadata used when its row count matches)."""
    side = emb.with_suffix(".json")
    body = json.loads(side.read_text())
    old = {k: v for k, v in body.items() if k not in ("bytes", "sha256", "manifest_sha256")}
    side.write_text(json.dumps(old))
    t = EmbeddingTable.load(emb)
    assert t.meta == body["meta"]


def test_damaged_resolved_embeddings_are_rebuilt_on_resume(tiny_snapshot, emb, tmp_path):
    root = tiny_snapshot.parents[1]
    stamp = {"embeddings": checksum.sha256_file(emb), "items": checksum.sha256_file(root / "items.parquet")}
    d = resolve_embeddings(emb, root, tmp_path, stamp)
    want = (d / "vectors.npy").read_bytes()
    flip(d / "vectors.npy")
    with pytest.warns(RuntimeWarning, match="vectors.npy: checksum mismatch"):
        d = resolve_embeddings(emb, root, tmp_path, stamp)
    assert d == tmp_path / RESOLVED and (d / "vectors.npy").read_bytes() == want
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # intact now: reused without a word
        resolve_embeddings(emb, root, tmp_path, stamp)


# ---- checkpoints ------------------------------------------------------------------------------------------
def test_a_flipped_checkpoint_is_found_and_named(ck):
    """torch.load checks no CRC of the tensor data: without content_sha256 this loaded changed weights."""
    from twinv2.train.checkpoint import load_checkpoint, load_model

    load_model(ck)
    flip(ck)
    for read in (load_checkpoint, load_model):
        with pytest.raises(DataError, match=rf"{ck}: checksum mismatch \(content_sha256\)"):
            read(ck)


def test_a_truncated_checkpoint_is_found_and_named(ck):
    from twinv2.train.checkpoint import load_checkpoint

    good = ck.read_bytes()
    for n in (len(good) // 2, len(good) - 1, 10, 0):
        ck.write_bytes(good[:n])
        with pytest.raises(DataError, match=rf"{ck}: cannot read the checkpoint") as e:
            load_checkpoint(ck)
        assert "\n" not in str(e.value)


def test_no_flip_anywhere_in_a_checkpoint_loads_changed_weights(ck):
    import torch

    from twinv2.train.checkpoint import load_checkpoint

    good = ck.read_bytes()
    want = load_checkpoint(ck)
    found = 0
    for at in np.linspace(0, len(good) - 16, 60).astype(int):
        flip(ck, int(at))
        try:
            got = load_checkpoint(ck)
        except DataError as e:
            assert str(ck) in str(e)
            found += 1
        else:  # a flip in bytes that hold no content (zip padding): the very same checkpoint
            assert got["content_sha256"] == want["content_sha256"]
            assert all(torch.equal(got["state_dict"][k], v) for k, v in want["state_dict"].items())
        ck.write_bytes(good)
    assert found >= 50


def test_a_version_1_checkpoint_without_a_checksum_is_still_read(ck):
    """Documented: checkpoints written before content_sha256 (format version 1) load as they did."""
    import torch

    from twinv2.train.checkpoint import load_checkpoint, write_checkpoint

    body = load_checkpoint(ck)
    old = {k: v for k, v in body.items() if k != "content_sha256"}
    torch.save({**old, "format_version": 1}, ck)
    assert load_checkpoint(ck)["format_version"] == 1
    write_checkpoint(ck, {**body, "day": 9})  # a changed dict written through the module is stamped anew
    assert load_checkpoint(ck)["day"] == 9


# ---- the CLI ----------------------------------------------------------------------------------------------
def _cli(*args: str) -> str:
    r = subprocess.run([*cli_command(), *args], capture_output=True, text=True, timeout=120)
    err = r.stderr.strip()
    assert r.returncode == 2, (args, r.returncode, err[-2000:])
    assert err.startswith("twinv2: error:") and "\n" not in err, err[-2000:]
    return err


def test_serve_stops_on_a_damaged_snapshot_or_checkpoint_with_one_line_and_status_2(snap, ck, good_checkpoint,
                                                                                     tmp_path):
    part = snap / "part-00002.parquet"
    good = part.read_bytes()
    flip(part)
    err = _cli("serve", "--checkpoint", str(good_checkpoint), "--store", str(tmp_path / "store"),
               "--snapshot", str(snap), "--load-only", "--quiet")
    assert f"{part}: checksum mismatch" in err
    part.write_bytes(good)
    flip(ck)  # the store is loaded from the intact snapshot first, then the checkpoint is read
    err = _cli("serve", "--checkpoint", str(ck.parent), "--store", str(tmp_path / "store"), "--snapshot", str(snap),
               "--quiet")
    assert f"{ck}: checksum mismatch (content_sha256)" in err
