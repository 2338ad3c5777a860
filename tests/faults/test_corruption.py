"""Damaged dataset files are found, never read silently (issue 14, item 5): byte flips in every kind of file
(Parquet shards and side tables, truth arrays, the manifest, the .csr cache), a truncated file, an edited
n_shards; from the CLI each is one line naming the file, exit status 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twinv2.data import checksum
from twinv2.data.csr import BehaviourCSR
from twinv2.data.storage import Dataset, write_manifest
from twinv2.schema import DataError
from twinv2.serve.server import cli_command

DATA_FILES = ["behaviours/part-00001.parquet", "samples/part-00002.parquet", "items.parquet", "users.parquet",
              "truth/item_latent.npy", "truth/impressions/part-00000.parquet", "truth/calibration.json"]


@pytest.fixture
def world(tiny_world, tmp_path) -> Path:
    root = tmp_path / "tiny"
    shutil.copytree(tiny_world, root, ignore=shutil.ignore_patterns("*.csr", "clusters", "embeddings"))
    return root


def flip(path: Path, offset: int | None = None, n: int = 16) -> None:
    """XOR `n` bytes at `offset` (default: the middle of the file) with 0x01: same size, new content."""
    b = bytearray(path.read_bytes())
    at = len(b) // 2 if offset is None else offset
    for i in range(at, min(at + n, len(b))):
        b[i] ^= 0x01
    path.write_bytes(bytes(b))


@pytest.mark.parametrize("rel", DATA_FILES)
def test_a_flipped_data_file_is_found_and_named(world, rel):
    Dataset(world)  # verified once (and remembered in the marker)
    flip(world / rel)
    with pytest.raises(DataError, match=rf"{rel}: checksum mismatch"):
        Dataset(world)


def test_a_flip_is_found_even_with_the_mtime_put_back(world, monkeypatch):
    monkeypatch.setattr(checksum, "RACY_NS", 0)  # let the marker vouch for files just written
    Dataset(world)
    p = world / "behaviours" / "part-00000.parquet"
    st = p.stat()
    flip(p)
    import os

    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as verified; the ctime still moves
    with pytest.raises(DataError, match="part-00000.parquet: checksum mismatch"):
        Dataset(world)


def test_a_truncated_or_missing_file_is_found(world):
    p = world / "samples" / "part-00001.parquet"
    good = p.read_bytes()
    p.write_bytes(good[:-100])
    with pytest.raises(DataError, match=r"part-00001.parquet: \d+ bytes where .*manifest.json records"):
        Dataset(world)
    p.unlink()
    with pytest.raises(DataError, match="samples: n_shards is 4 but samples parts missing: part-00001.parquet"):
        Dataset(world)
    p.write_bytes(good)
    (world / "users.parquet").unlink()
    with pytest.raises(DataError, match="users.parquet: missing, but .*manifest.json lists it"):
        Dataset(world)


def test_opening_again_hashes_nothing(world, monkeypatch):
    monkeypatch.setattr(checksum, "RACY_NS", 0)
    Dataset(world).csr(0)  # verifies the data files and builds the cache (hashing both once)
    calls = []
    monkeypatch.setattr(checksum, "sha256_file", lambda p, *a: calls.append(p) or "")
    for _ in range(3):
        Dataset(world).csr(0)
    assert calls == []


def test_n_shards_edited_from_4_to_3_is_refused(world):
    mf = world / "manifest.json"
    text = mf.read_text()
    assert '"n_shards": 4' in text
    mf.write_text(text.replace('"n_shards": 4', '"n_shards": 3'))
    with pytest.raises(DataError, match="manifest.json: checksum mismatch"):
        Dataset(world)
    # Rewritten through write_manifest (checksums recomputed), the shard files still disagree with it.
    m = json.loads(text)
    write_manifest(world, {**m, "n_shards": 3})
    with pytest.raises(DataError, match=r"n_shards is 3 but behaviours parts beyond it: part-00003.parquet"):
        Dataset(world)


def test_a_version_1_manifest_with_n_shards_edited_is_refused(world):
    """Datasets written before checksums (format version 1) still get the shard-count check."""
    m = json.loads((world / "manifest.json").read_text())
    old = {k: v for k, v in m.items() if k not in ("files", "manifest_sha256")}
    (world / "manifest.json").write_text(json.dumps({**old, "version": 1}))
    assert Dataset(world).n_shards == 4
    (world / "manifest.json").write_text(json.dumps({**old, "version": 1, "n_shards": 3}))
    with pytest.raises(DataError, match="n_shards is 3 but behaviours parts beyond it"):
        Dataset(world)


def test_every_16_byte_flip_in_the_manifest_is_found(world):
    mf = world / "manifest.json"
    good = mf.read_bytes()
    offsets = np.linspace(0, len(good) - 16, 25).astype(int)
    for at in offsets:
        flip(mf, int(at))
        with pytest.raises(DataError, match="manifest.json"):
            Dataset(world)
        mf.write_bytes(good)
    Dataset(world)


def test_single_digit_edits_in_the_manifest_are_found(world):
    mf = world / "manifest.json"
    good = mf.read_text()
    for old, new in (('"behaviours": ', '"behaviours": 1'), ('"bias": -', '"bias": -1'), ('"seed": 0', '"seed": 1')):
        assert old in good
        mf.write_text(good.replace(old, new, 1))
        with pytest.raises(DataError, match="manifest.json: checksum mismatch"):
            Dataset(world)
    mf.write_text(good)


def _reference(world: Path, shard: int) -> dict[str, np.ndarray]:
    df = pd.read_parquet(world / "behaviours" / f"part-{shard:05d}.parquet")
    return {c: df[c].to_numpy() for c in df.columns if c != "user_id"}


@pytest.mark.parametrize("name", ["col.ts.npy", "offsets.npy", "user_ids.npy", "stamp.json"])
def test_a_flipped_csr_cache_is_found_and_rebuilt(world, name):
    Dataset(world).csr(1)
    cache = world / "behaviours" / "part-00001.csr"
    flip(cache / name, offset=(cache / name).stat().st_size - 24)  # in the data, past the .npy header
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        csr = Dataset(world).csr(1)
    if name != "stamp.json":  # a damaged stamp reads as no cache at all: rebuilt without a word
        assert any(f"{name}: checksum mismatch" in str(w.message) for w in caught), [str(w.message) for w in caught]
    ref = _reference(world, 1)
    for c, v in ref.items():
        np.testing.assert_array_equal(np.asarray(csr.columns[c]), v)
    assert (np.asarray(csr.columns["ts"]) > 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilt: clean now
        Dataset(world).csr(1)


def test_a_cache_of_another_shard_is_not_used(world):
    Dataset(world).csr(0)
    Dataset(world).csr(2)
    beh = world / "behaviours"
    shutil.rmtree(beh / "part-00000.csr")
    shutil.copytree(beh / "part-00002.csr", beh / "part-00000.csr")
    csr = Dataset(world).csr(0)
    np.testing.assert_array_equal(np.asarray(csr.columns["ts"]), _reference(world, 0)["ts"])
    # Without the manifest's sha256 (cluster snapshot parts), the source is hashed and compared too.
    csr = BehaviourCSR.open(beh / "part-00002.parquet")
    np.testing.assert_array_equal(np.asarray(csr.columns["ts"]), _reference(world, 2)["ts"])


@pytest.mark.slow
def test_cli_commands_stop_on_a_damaged_dataset_with_one_line_and_status_2(world):
    flip(world / "behaviours" / "part-00002.parquet")
    for args in (["stats", str(world)], ["cluster", str(world), "--snapshot-before", "eval:0", "--quiet"],
                 ["train", str(world), "--model", "din", "--quiet", "--out", str(world.parent / "run")]):
        r = subprocess.run([*cli_command(), *args], capture_output=True, text=True, timeout=120)
        err = r.stderr.strip()
        assert r.returncode == 2, (args, r.returncode, err[-2000:])
        assert err.startswith("twinv2: error:") and "\n" not in err, err[-2000:]
        assert "behaviours/part-00002.parquet: checksum mismatch" in err
