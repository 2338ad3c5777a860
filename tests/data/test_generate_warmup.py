"""Warm-up days (train-only, before the evaluation days) and impressions as requests of several candidates."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from twinv2.data.checksum import MARKER
from twinv2.data.generate import generate_world, preset
from twinv2.data.storage import DAY_MS, Dataset

WARMUP, REQUEST = 3, 4


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file but the verified-marker (a cache of stat results)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MARKER}


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    cfg = preset("tiny", n_users=40, warmup_days=WARMUP, request_size=REQUEST)
    return generate_world(cfg, tmp_path_factory.mktemp("warm") / "w", workers=1, progress=False)


def test_warmup_days_come_right_before_the_eval_days_and_hold_samples(warm):
    ds = Dataset(warm)
    w, e = ds.warmup_days, ds.eval_days
    assert len(w) == WARMUP and len(e) == 5
    assert [d.start_ms for d in w] == [e[0].start_ms - (WARMUP - i) * DAY_MS for i in range(WARMUP)]
    assert [d.label for d in w] == ["2024-04-05", "2024-04-06", "2024-04-07"]
    assert ds.first_train_day_ms == w[0].start_ms
    assert w[0].test_start_ms == w[0].end_ms  # a warm-up day's test hour is empty
    ts = ds.samples()["ts"].to_numpy()
    assert ts.min() >= w[0].start_ms and ts.max() < e[-1].end_ms
    for d in w:
        assert ((ts >= d.start_ms) & (ts < d.end_ms)).sum() > 100
    # Every user lives through the warm-up days: no impression before its user's first behaviour.
    users = ds.users()
    assert (users["life_start_ms"].to_numpy() < w[0].start_ms).all()


def test_impressions_come_in_requests_of_request_size(warm):
    s = Dataset(warm).samples()
    sizes = s.groupby(["user_id", "ts"]).size()
    assert (sizes == REQUEST).all() and len(sizes) > 100
    # Candidates of one request are drawn independently from the mix, and a page never shows an item twice.
    assert (s.groupby(["user_id", "ts"])["item_id"].nunique() == REQUEST).mean() > 0.999


def test_same_config_same_bytes_with_warmup_and_requests(warm, tmp_path):
    cfg = preset("tiny", n_users=40, warmup_days=WARMUP, request_size=REQUEST)
    again = generate_world(cfg, tmp_path / "again", workers=2, progress=False)
    assert _digest(warm) == _digest(again)


def test_default_world_has_no_warmup_days(tiny_world):
    ds = Dataset(tiny_world)
    assert ds.warmup_days == [] and ds.first_train_day_ms == ds.eval_days[0].start_ms
    assert ds.manifest["warmup_days"] == []


def test_trainer_trains_on_warmup_days_and_never_evaluates_them(warm, tmp_path):
    from twinv2.train.trainer import StreamingTrainer, TrainConfig

    ds = Dataset(warm)
    s = ds.samples()
    ts = s["ts"].to_numpy()
    cfg = TrainConfig(model="avg_pooling", threads=1, item_init="random", max_train_per_day=300)
    out = StreamingTrainer(ds, cfg, out_dir=tmp_path / "run", progress=False).run()
    assert [r["label"] for r in out["warmup_days"]] == [d.label for d in ds.warmup_days]
    for r, d in zip(out["warmup_days"], ds.warmup_days):
        n_day = int(((ts >= d.start_ms) & (ts < d.end_ms)).sum())
        assert r["n_train"] == min(n_day, 300) and "auc" not in r
    assert len(out["days"]) == 5
    for r, d in zip(out["days"], ds.eval_days):
        assert r["n_test"] == int(((ts >= d.test_start_ms) & (ts < d.end_ms)).sum())
    import pandas as pd

    pred = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "run").glob("predictions-day*.parquet"))])
    assert len(pred) == sum(r["n_test"] for r in out["days"])
    assert (pred["ts"].to_numpy() >= ds.eval_days[0].start_ms).all()  # nothing of a warm-up day is scored


def test_clusters_model_needs_a_snapshot_before_the_first_warmup_day(warm):
    from twinv2.train.trainer import StreamingTrainer, TrainConfig

    ds = Dataset(warm)
    t = StreamingTrainer(ds, TrainConfig(model="twin_v2", threads=1, item_init="random"), snapshots=[],
                         item_vectors=np.zeros((ds.manifest["counts"]["items"] + 1, 16), np.float32),
                         progress=False)
    with pytest.raises(ValueError, match="warm-up day 2024-04-05"):
        t.run()
