"""Nearline: event-time windows over new inbox files train the model and publish checkpoints a server picks
up; cluster refreshes re-cluster only users with new behaviours and reach the cluster store; late and bad
rows are counted, never silently dropped; a restart resumes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from twinv2.data.storage import Dataset, write_manifest
from twinv2.offline.store import ClusterSnapshot
from twinv2.serve.nearline import NearlineConfig, run_nearline
from twinv2.serve.projections import ProjectionCache, load_model_version
from twinv2.serve.store import ClusterStore
from twinv2.train.checkpoint import load_checkpoint

MIN = 60_000


@pytest.fixture
def live(tiny_world, tiny_snapshot, tmp_path):
    """A copy of the tiny world holding only behaviours before day 0; the first hour of day 0 (behaviours and
    samples) waits in the inbox, as if it had just been logged."""
    root = tmp_path / "live"
    shutil.copytree(tiny_world, root, ignore=shutil.ignore_patterns("*.csr", "*.tmp*", "embeddings.resolved"))
    ds = Dataset(root)
    t0 = ds.eval_days[0].start_ms
    t1 = t0 + 60 * MIN
    new = []
    for s in range(ds.n_shards):
        path = ds.shard_path("behaviours", s)
        df = pd.read_parquet(path)
        new.append(df[(df.ts >= t0) & (df.ts < t1)])
        pq.write_table(pq.read_table(path).filter(pq.read_table(path)["ts"].to_numpy() < t0), path)
    kept = sum(pq.read_metadata(ds.shard_path("behaviours", s)).num_rows for s in range(ds.n_shards))
    manifest = {k: v for k, v in ds.manifest.items() if k not in ("format", "version")}
    write_manifest(root, {**manifest, "counts": {**manifest["counts"], "behaviours": kept}})
    inbox = tmp_path / "inbox"
    (inbox / "behaviours").mkdir(parents=True)
    (inbox / "samples").mkdir()
    beh = pd.concat(new, ignore_index=True)
    beh.to_parquet(inbox / "behaviours" / "b-000.parquet", index=False)
    smp = ds.samples()
    smp = smp[(smp.ts >= t0) & (smp.ts < t1)][["user_id", "item_id", "ts", "label"]]
    smp.to_parquet(inbox / "samples" / "s-000.parquet", index=False)
    bad = pd.DataFrame({"user_id": [1, 2], "item_id": [5, 6], "ts": [t0 + MIN, t0 + 2 * MIN], "label": [2, 1]})
    bad.loc[1, "ts"] = -5
    bad.to_csv(inbox / "samples" / "s-001.csv", index=False)  # two invalid rows: quarantined with a reason
    (inbox / "samples" / "s-002.parquet.tmp").write_text("being written")  # not complete: never read
    store = tmp_path / "store"
    snap = root / "clusters" / ClusterSnapshot(tiny_snapshot).path.name
    ClusterStore(store).load_snapshot(snap)
    return {"root": root, "inbox": inbox, "t0": t0, "t1": t1, "beh": beh, "samples": smp, "store": store,
            "snapshot": snap, "out": tmp_path / "pub"}


def test_nearline_trains_windows_publishes_and_refreshes(live, tiny_checkpoint):
    cfg = NearlineConfig(window_minutes=8, refresh_minutes=24, threads=2)
    state = run_nearline(live["root"], tiny_checkpoint, live["inbox"], live["out"], cfg, snapshot=live["snapshot"],
                         store=live["store"], once=True, progress=False)
    t0, out = live["t0"], live["out"]
    assert state["samples_trained"] == len(live["samples"]) and state["late_samples"] == 0
    assert state["quarantined"] == 2 and len(pd.read_csv(out / "quarantine.csv")) == 2
    assert state["processed_until"] >= live["samples"]["ts"].max() and state["processed_until"] % (8 * MIN) == 0
    assert state["seq"] >= 5 and len(list((out / "checkpoints").glob("ckpt-*.pt"))) == min(state["seq"], 5)

    # Refreshes: on window starts, >= 24 min apart, only when behaviours arrived; each re-clusters exactly the
    # users with new behaviours since the previous snapshot and copies the others.
    beh = live["beh"]
    assert len(state["refreshes"]) >= 1
    prev = t0
    for r in state["refreshes"]:
        assert r["at"] % (8 * MIN) == 0 and r["at"] - prev >= 24 * MIN
        new = beh[(beh.ts >= prev) & (beh.ts < r["at"])]
        assert r["appended"] == len(new) > 0
        assert r["clustered_users"] == new.user_id.nunique() and r["reused_users"] == 96 - r["clustered_users"]
        prev = r["at"]
    assert not (beh[(beh.ts >= prev) & (beh.ts < state["processed_until"] - 24 * MIN)]).size  # none missed
    last = ClusterSnapshot(state["refreshes"][-1]["snapshot"])
    assert last.snapshot_ts == prev
    store = ClusterStore(live["store"])
    assert store.version == state["refreshes"][-1]["store_version"]
    u = int(beh[beh.ts < prev].user_id.iloc[0])
    np.testing.assert_array_equal(store.get(u).item_id, last.clusters(u)["item_id"])
    assert last.clusters(u)["user_n"][0] > ClusterSnapshot(live["snapshot"]).clusters(u)["user_n"][0]
    kept = sum(len(Dataset(live["root"]).csr(s).columns["ts"]) for s in range(4))
    assert Dataset(live["root"]).manifest["counts"]["behaviours"] == kept

    # The newest checkpoint: a trained model, published atomically, read by the serving cache.
    latest = json.loads((out / "LATEST").read_text())
    assert latest["seq"] == state["seq"] and (out / latest["checkpoint"]).is_file()
    ck = load_checkpoint(out / latest["checkpoint"])
    assert ck["nearline"]["window_end"] <= state["processed_until"]
    assert ClusterSnapshot(ck["nearline"]["snapshot"]).snapshot_ts <= ck["nearline"]["window_start"]  # no leak
    start = load_checkpoint(tiny_checkpoint)["state_dict"]["tower.0.weight"]
    assert not torch.equal(ck["state_dict"]["tower.0.weight"], start)
    cache = ProjectionCache(out)
    assert cache.current.version != load_model_version(tiny_checkpoint).version

    # A restart resumes: new samples train on from the last checkpoint; samples of trained windows are late.
    more = live["samples"].copy()
    more["ts"] = more["ts"] + state["processed_until"] - t0  # after the last (flushed) window
    more.to_parquet(live["inbox"] / "samples" / "s-003.parquet", index=False)
    live["samples"].iloc[:3].to_parquet(live["inbox"] / "samples" / "s-004.parquet", index=False)
    state2 = run_nearline(live["root"], tiny_checkpoint, live["inbox"], out, cfg, store=live["store"], once=True,
                          progress=False)
    assert state2["late_samples"] == 3 and state2["seq"] > state["seq"]
    assert state2["samples_trained"] == state["samples_trained"] + len(more)
    assert cache.refresh() is True  # a running server would swap to it on its next poll


def test_nearline_rejects_bad_settings(tmp_path, tiny_world):
    with pytest.raises(ValueError, match="window_minutes must be > 0"):
        NearlineConfig(window_minutes=0)
    with pytest.raises(ValueError, match="publish_every"):
        NearlineConfig(publish_every=0)
    with pytest.raises(ValueError, match="inbox folder not found"):
        from twinv2.serve.nearline import Nearline

        Nearline(tiny_world, tmp_path, tmp_path / "none", tmp_path / "out")
