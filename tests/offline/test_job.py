"""The offline clustering job: per-user function, engines, resume, corruption, refresh, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twinv2.config import from_dict
from twinv2.data.storage import Dataset, ShardedWriter, eval_days, part_name, prepare_dir, write_manifest, write_table
from twinv2.offline.embed import EmbeddingTable
from twinv2.offline.hierarchical import HierarchicalClusterer
from twinv2.offline.job import ClusterJobConfig, cluster_user, run_cluster_job, user_seed
from twinv2.offline.store import COLUMNS, ClusterSnapshot, read_manifest, sha256_file
from twinv2.offline.store import write_manifest as write_manifest_of_snapshot
from twinv2.schema import BEHAVIOURS, DataError

T0 = 1_650_000_000_000
DAY = 86_400_000
SNAP = T0 + 5 * DAY
D = 13  # deliberately odd so a swapped axis fails
CFG = ClusterJobConfig(workers=1)
UNKNOWN_GROUP = len(CFG.edges) + 1


# ---- data -------------------------------------------------------------------------------------------------
def make_log(n_users: int, seed: int, lengths=(0, 1, 5, 19, 20, 60, 150, 400), span_days: int = 10) -> pd.DataFrame:
    """Users of many lengths; 5% zero durations, 5% unknown play times, items 501+ unknown everywhere."""
    rng = np.random.default_rng(seed)
    parts = []
    for u in range(n_users):
        n = int(rng.choice(lengths))
        ts = np.sort(rng.integers(T0, T0 + span_days * DAY, n))
        dur = rng.integers(1000, 60000, n)
        play = (dur * rng.uniform(0, 1.3, n)).astype(np.int64)
        dur[rng.random(n) < 0.05] = 0
        play[rng.random(n) < 0.05] = -1
        parts.append(pd.DataFrame({"user_id": u * 7 + 3, "item_id": rng.integers(1, 560, n), "ts": ts,
                                   "play_ms": play, "duration_ms": dur}))
    parts.append(pd.DataFrame({"user_id": 999_999, "item_id": [5, 6], "ts": [SNAP, SNAP + 5],  # only after SNAP
                               "play_ms": [1, 1], "duration_ms": [10, 10]}))
    dup = pd.DataFrame({"user_id": 888_888, "item_id": 7, "ts": T0 + 1000, "play_ms": 500, "duration_ms": 1000},
                       index=range(45))  # 45 copies of one behaviour
    parts.append(dup)
    return pd.concat(parts, ignore_index=True).astype("int64")


def write_ds(root: Path, df: pd.DataFrame, n_shards: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root = prepare_dir(root, overwrite=True)
    w = ShardedWriter(root, BEHAVIOURS, n_shards)
    w.append_frame(df)
    w.close()
    items = pd.DataFrame({"item_id": np.arange(1, 501), "author_id": rng.integers(0, 40, 500),
                          "tag": rng.integers(0, 9, 500), "duration_ms": rng.integers(1000, 60000, 500)})
    write_table(root / "items.parquet", items)
    write_manifest(root, {"n_shards": n_shards, "eval_days": [d.__dict__ for d in eval_days(T0 + 8 * DAY, 2)]})
    return root


def write_embeddings(path: Path, seed: int = 0) -> Path:
    """Items 1..450 only: 451..500 fall back on their author/tag, 501+ on the global mean."""
    rng = np.random.default_rng(seed)
    cent = rng.normal(size=(12, D))
    ids = np.arange(1, 451)
    return EmbeddingTable(ids, (cent[ids % 12] + 0.3 * rng.normal(size=(450, D))).astype(np.float32)).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("world")
    df = make_log(40, seed=0)
    return {"root": write_ds(base / "ds", df, n_shards=4), "df": df, "emb": write_embeddings(base / "emb.parquet"),
            "base": base}


@pytest.fixture(scope="module")
def reference(world):
    """One finished snapshot (local engine, in this process) the other tests compare against."""
    return run_cluster_job(world["root"], SNAP, world["emb"], CFG, out=world["base"] / "ref", progress=False)


def part_hashes(snap: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(Path(snap).glob("part-*.parquet"))}


def manifest(snap: Path) -> dict:
    return json.loads((Path(snap) / "manifest.json").read_text())


# ---- one user ---------------------------------------------------------------------------------------------
def user_history(rng, T, dup_item=None):
    dur = rng.integers(1000, 60000, T).astype(np.float64)
    return {"item_id": rng.integers(1, 10**6, T) if dup_item is None else np.full(T, dup_item),
            "ts": np.sort(rng.integers(T0, SNAP, T)), "play_ms": dur * rng.uniform(0, 1.3, T), "duration_ms": dur}


def test_cluster_user_matches_reference_virtual_items():
    rng = np.random.default_rng(1)
    T = 237
    h = user_history(rng, T)
    emb = (rng.normal(size=(7, D))[rng.integers(0, 7, T)] + 0.1 * rng.normal(size=(T, D))).astype(np.float32)
    author, tag = rng.integers(0, 30, T), rng.integers(0, 5, T)
    out = cluster_user(42, h, emb, CFG, author, tag)
    km = HierarchicalClusterer(seed=user_seed(CFG.seed, 42)).fit(emb, h["play_ms"], h["duration_ms"])
    C = km.n_clusters_
    assert set(out) == set(COLUMNS) and all(out[k].dtype == np.dtype(v) and out[k].shape == (C,)
                                            for k, v in COLUMNS.items())
    assert out["n"].sum() == T and out["n"].max() < CFG.gamma and C > T / CFG.gamma
    np.testing.assert_array_equal(out["n"], np.bincount(km.labels_))
    np.testing.assert_array_equal(out["group"], km.group_of_cluster_)
    # Eq. 5 with pandas as the reference; Eq. 6-7 by brute force over each cluster's members.
    df = pd.DataFrame({"c": km.labels_, "ts": h["ts"].astype(float), "play": h["play_ms"], "dur": h["duration_ms"],
                       "ratio": h["play_ms"] / h["duration_ms"]}).groupby("c").mean()
    np.testing.assert_allclose(out["ts"], df["ts"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(out["play_ms"], df["play"], rtol=1e-6)
    np.testing.assert_allclose(out["duration_ms"], df["dur"], rtol=1e-6)
    np.testing.assert_allclose(out["ratio"], df["ratio"], rtol=1e-5)
    for c in range(C):
        members = np.flatnonzero(km.labels_ == c)
        d = ((emb[members] - emb[members].mean(0)) ** 2).sum(1)
        best = members[np.argmin(d)]
        assert (out["item_id"][c], out["author_id"][c], out["tag"][c]) == (h["item_id"][best], author[best], tag[best])
    assert (out["user_n"] == T).all() and (out["user_last_ts"] == h["ts"].max()).all()
    again = cluster_user(42, h, emb, CFG, author, tag)
    assert all(np.array_equal(out[k], again[k], equal_nan=True) for k in COLUMNS)


@pytest.mark.parametrize("T", [0, 1, 7, 19])
def test_cluster_user_zero_one_and_fewer_than_gamma(T):
    rng = np.random.default_rng(T)
    h = user_history(rng, T)
    emb = rng.normal(size=(T, D)).astype(np.float32)
    out = cluster_user(5, h, emb, CFG)
    assert all(out[k].dtype == np.dtype(v) for k, v in COLUMNS.items())
    groups = HierarchicalClusterer().fit(emb, h["play_ms"], h["duration_ms"]).group_of_cluster_ if T else []
    # Below γ nothing is split: one cluster per completion group present.
    assert len(out["n"]) == len(set(groups)) and out["n"].sum() == T
    assert sorted(out["group"].tolist()) == sorted(set(groups))
    if T == 1:
        assert out["item_id"][0] == h["item_id"][0] and out["ts"][0] == h["ts"][0]
        assert (out["author_id"] == -1).all() and (out["tag"] == -1).all()


def test_cluster_user_unknown_and_zero_durations():
    rng = np.random.default_rng(3)
    T = 120
    h = user_history(rng, T)
    h["duration_ms"][:30] = 0
    h["duration_ms"][30:50] = np.nan
    h["play_ms"][50:60] = -1
    h["play_ms"][60:70] = np.nan
    emb = rng.normal(size=(T, D)).astype(np.float32)
    out = cluster_user(9, h, emb, CFG)
    assert out["n"].sum() == T
    unknown = out["group"] == UNKNOWN_GROUP
    assert out["n"][unknown].sum() == 70
    assert np.isnan(out["ratio"][unknown]).all() and np.isfinite(out["ratio"][~unknown]).all()
    # Means skip unknown values: durations are never 0 or NaN where a member has a known one.
    assert np.nanmin(out["duration_ms"]) > 0 and np.nanmin(out["play_ms"]) >= 0
    assert np.isfinite(out["duration_ms"][~unknown]).all()


def test_cluster_user_duplicated_behaviours_still_split_below_gamma():
    rng = np.random.default_rng(4)
    T = 301
    h = user_history(rng, T, dup_item=77)
    h["ts"][:] = T0
    h["play_ms"][:], h["duration_ms"][:] = 500.0, 1000.0
    emb = np.tile(rng.normal(size=(1, D)), (T, 1)).astype(np.float32)
    out = cluster_user(1, h, emb, CFG)
    assert out["n"].sum() == T and out["n"].max() < CFG.gamma and (out["item_id"] == 77).all()


def test_cluster_user_rejects_mismatched_inputs():
    rng = np.random.default_rng(5)
    h = user_history(rng, 30)
    with pytest.raises(ValueError, match=r"user 3: embeddings have shape \(29, 13\), expected \(30, D\)"):
        cluster_user(3, h, np.zeros((29, D), np.float32), CFG)
    h["ts"] = h["ts"][:10]
    with pytest.raises(ValueError, match=r"user 3: ts has shape \(10,\)"):
        cluster_user(3, h, np.zeros((30, D), np.float32), CFG)


@pytest.mark.slow
def test_cluster_user_million_behaviours():
    rng = np.random.default_rng(6)
    T = 1_000_000
    h = user_history(rng, T)
    emb = (rng.normal(size=(300, 16))[rng.integers(0, 300, T)] + 0.5 * rng.normal(size=(T, 16))).astype(np.float32)
    t0 = time.perf_counter()
    out = cluster_user(1, h, emb, CFG)
    took = time.perf_counter() - t0
    assert out["n"].sum() == T and out["n"].max() < CFG.gamma
    assert 0.05 < len(out["n"]) / T < 0.2
    assert took < 300, f"one 10^6-behaviour user took {took:.1f} s"  # the 5 s target is bench_cluster's


# ---- config -----------------------------------------------------------------------------------------------
def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="engine must be one of"):
        ClusterJobConfig(engine="spark")
    with pytest.raises(ValueError, match="workers must be an integer >= 0"):
        ClusterJobConfig(workers=-1)
    with pytest.raises(ValueError, match="only used with engine='dask'"):
        ClusterJobConfig(scheduler="tcp://x:1")
    with pytest.raises(ValueError, match="gamma must be an integer >= 2"):
        ClusterJobConfig(gamma=1)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['gama'\]"):
        from_dict(ClusterJobConfig, {"gama": 3})
    assert from_dict(ClusterJobConfig, {"edges": [0.5], "engine": "dask"}).edges == (0.5,)


def test_job_rejects_bad_arguments(world, tmp_path):
    with pytest.raises(ValueError, match="seconds instead of ms"):
        run_cluster_job(world["root"], SNAP // 1000, world["emb"], CFG, out=tmp_path / "a", progress=False)
    with pytest.raises(FileNotFoundError, match="embeddings not found"):
        run_cluster_job(world["root"], SNAP, tmp_path / "nope.parquet", CFG, out=tmp_path / "b", progress=False)
    with pytest.raises(DataError, match="no manifest.json"):
        run_cluster_job(tmp_path, SNAP, world["emb"], CFG, out=tmp_path / "c", progress=False)


# ---- the job ----------------------------------------------------------------------------------------------
def test_job_clusters_only_history_before_snapshot(world, reference):
    df, snap = world["df"], ClusterSnapshot(reference)
    f = snap.frame()
    before = df[df["ts"] < SNAP]
    assert f["n"].sum() == len(before)
    np.testing.assert_array_equal(f.groupby("user_id")["n"].sum().sort_index(), before.groupby("user_id").size())
    assert 999_999 not in set(f["user_id"])  # behaviours only after the snapshot
    assert (f["user_last_ts"] < SNAP).all() and (f["ts"] < SNAP).all() and (f["n"] < CFG.gamma).all()
    # Items without an embedding of their own (451+) and without an items row (501+) are still clustered.
    assert (f["item_id"] > 500).any() and (f.loc[f["item_id"] > 500, "author_id"] == -1).all()
    for p in sorted(Path(reference).glob("part-*.parquet")):
        key = pd.read_parquet(p)[["user_id", "cluster"]].to_numpy()
        assert (np.lexsort((key[:, 1], key[:, 0])) == np.arange(len(key))).all()
    m = manifest(reference)
    assert m["complete"] and m["snapshot_ts"] == SNAP and m["config"]["gamma"] == 20 and len(m["shards"]) == 4
    # The job's rows for a user are exactly cluster_user on that user's looked-up history.
    uid = int(before.groupby("user_id").size().idxmax())
    h = before[before["user_id"] == uid]
    items = Dataset(world["root"]).items()
    emb = EmbeddingTable.load(world["emb"]).lookup(h["item_id"].to_numpy(), items)
    lut = items.set_index("item_id")
    author = lut["author_id"].reindex(h["item_id"]).fillna(-1).to_numpy(np.int64)
    tag = lut["tag"].reindex(h["item_id"]).fillna(-1).to_numpy(np.int64)
    want = cluster_user(uid, {k: h[k].to_numpy() for k in ("item_id", "ts", "play_ms", "duration_ms")}, emb, CFG,
                        author, tag)
    got = snap.clusters(uid)
    for k in COLUMNS:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_snapshot_reader(world, reference, tmp_path):
    snap = ClusterSnapshot(reference)
    assert snap.snapshot_ts == SNAP and snap.config["variant"] == "adaptive"
    f = snap.frame()
    for uid in f["user_id"].unique()[:5]:
        rows = f[f["user_id"] == uid]
        got = snap.clusters(int(uid))
        np.testing.assert_array_equal(got["n"], rows["n"].to_numpy())
        np.testing.assert_array_equal(got["cluster"], np.arange(len(rows)))
    assert len(snap.clusters(123_456_789)["n"]) == 0
    np.testing.assert_array_equal(snap.user_ids(), np.sort(f["user_id"].unique()))
    write_manifest_of_snapshot(tmp_path, {**manifest(reference), "complete": False})
    with pytest.raises(DataError, match="snapshot incomplete"):
        ClusterSnapshot(tmp_path)


def test_no_future_data_reaches_the_snapshot(world, reference, tmp_path):
    """The same snapshot of a dataset cut at the snapshot time is byte-identical."""
    cut = world["df"][world["df"]["ts"] < SNAP]
    root = write_ds(tmp_path / "cut", cut, n_shards=4)
    out = run_cluster_job(root, SNAP, world["emb"], CFG, out=tmp_path / "s", progress=False)
    assert part_hashes(out) == part_hashes(reference)


def test_engines_and_worker_counts_write_identical_bytes(world, reference, tmp_path):
    from distributed import LocalCluster

    want = part_hashes(reference)
    out = run_cluster_job(world["root"], SNAP, world["emb"], replace(CFG, workers=2), out=tmp_path / "pool",
                          progress=False)
    assert part_hashes(out) == want
    # Dask through a scheduler address; the cluster runs in this process (threads), which starts in a
    # fraction of a second. Worker processes: test_dask_local_cluster_processes below (slow).
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc:
        cfg = replace(CFG, engine="dask", scheduler=lc.scheduler_address)
        out = run_cluster_job(world["root"], SNAP, world["emb"], cfg, out=tmp_path / "sched", progress=False)
    assert part_hashes(out) == want


@pytest.mark.slow
def test_dask_local_cluster_processes(world, reference, tmp_path):
    cfg = replace(CFG, engine="dask", workers=2)
    out = run_cluster_job(world["root"], SNAP, world["emb"], cfg, out=tmp_path / "dask", progress=False)
    assert part_hashes(out) == part_hashes(reference)


def test_progress_and_output_folder_message(world, tmp_path, capsys):
    out = run_cluster_job(world["root"], SNAP, world["emb"], CFG, out=tmp_path / "p", progress=True)
    err = capsys.readouterr().err
    assert "user/s" in err and f"clusters written to {out}" in err
    # A bare name lands under <dataset>/clusters/.
    named = run_cluster_job(world["root"], SNAP, world["emb"], CFG, out="mysnap", progress=False)
    assert named == world["root"] / "clusters" / "mysnap" and part_hashes(named) == part_hashes(out)


def test_corrupt_truncated_or_missing_shards_are_redone(world, reference, tmp_path):
    import shutil

    snap = tmp_path / "snap"
    shutil.copytree(reference, snap)
    want = part_hashes(reference)
    p1, p2, p3 = (snap / part_name(s) for s in (1, 2, 3))
    p1.write_bytes(p1.read_bytes()[: p1.stat().st_size // 2])  # truncated
    b = bytearray(p2.read_bytes())
    b[len(b) // 2] ^= 0xFF  # one flipped byte, same size
    p2.write_bytes(bytes(b))
    p3.unlink()
    (snap / (part_name(0) + ".tmp-123-abc")).write_bytes(b"half a file")  # left by a killed run
    run_cluster_job(world["root"], SNAP, world["emb"], CFG, out=snap, progress=False)
    last = manifest(snap)["last_run"]
    assert last["done_shards"] == [1, 2, 3] and last["skipped_shards"] == [0]
    assert part_hashes(snap) == want and not list(snap.glob("*.tmp-*"))
    run_cluster_job(world["root"], SNAP, world["emb"], CFG, out=snap, progress=False)
    assert manifest(snap)["last_run"]["skipped_shards"] == [0, 1, 2, 3]


def test_existing_snapshot_with_other_settings_is_refused(world, reference):
    with pytest.raises(ValueError, match=r"different \['config'\]"):
        run_cluster_job(world["root"], SNAP, world["emb"], replace(CFG, gamma=10), out=reference, progress=False)


def test_refresh_reclusters_only_changed_users(world, reference, tmp_path):
    later = SNAP + 2 * DAY
    df = world["df"]
    full = run_cluster_job(world["root"], later, world["emb"], CFG, out=tmp_path / "full", progress=False)
    refreshed = run_cluster_job(world["root"], later, world["emb"], CFG, out=tmp_path / "refresh",
                                base_snapshot=reference, progress=False)
    assert part_hashes(refreshed) == part_hashes(full)
    changed = df[(df["ts"] >= SNAP) & (df["ts"] < later)]["user_id"].nunique()
    users = df[df["ts"] < later]["user_id"].nunique()
    last = manifest(refreshed)["last_run"]
    assert 0 < changed < users
    assert last["clustered_users"] == changed and last["reused_users"] == users - changed
    # Other embeddings: the base cannot be reused, so every user is clustered again (with a warning).
    emb2 = write_embeddings(tmp_path / "emb2.parquet", seed=1)
    with pytest.warns(UserWarning, match="different \\['embeddings'\\]"):
        out = run_cluster_job(world["root"], later, emb2, CFG, out=tmp_path / "r2", base_snapshot=reference,
                              progress=False)
    assert manifest(out)["last_run"]["clustered_users"] == users


@pytest.mark.slow
def test_killed_run_resumes_to_identical_output(tmp_path):
    df = make_log(240, seed=7, lengths=(150, 400, 800), span_days=6)
    root = write_ds(tmp_path / "ds", df, n_shards=8)
    emb = write_embeddings(tmp_path / "emb.parquet")
    whole = run_cluster_job(root, SNAP, emb, CFG, out=tmp_path / "whole", progress=False)
    snap = tmp_path / "killed"
    code = (f"from twinv2.offline.job import *; run_cluster_job({str(root)!r}, {SNAP}, {str(emb)!r}, "
            f"ClusterJobConfig(workers=1), out={str(snap)!r}, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            m = read_manifest(snap) if (snap / "manifest.json").exists() else None
            if m and m.get("shards"):
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed = manifest(snap)
    assert not killed["complete"], "the run finished before it could be killed; make the shards bigger"
    finished = sorted(int(s) for s in killed["shards"])
    assert finished
    run_cluster_job(root, SNAP, emb, CFG, out=snap, progress=False)
    last = manifest(snap)["last_run"]
    assert last["skipped_shards"] == finished and sorted(last["done_shards"] + finished) == list(range(8))
    assert part_hashes(snap) == part_hashes(whole) and manifest(snap)["complete"]
