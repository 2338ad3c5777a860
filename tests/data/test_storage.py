"""Sharded storage and the CSR reader, checked against plain pandas references."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from twinv2.data.csr import BehaviourCSR, concat_ranges
from twinv2.data.storage import (Dataset, ShardedWriter, eval_days, prepare_dir, shard_of, warmup_days,
                                 write_manifest)
from twinv2.schema import BEHAVIOURS, DataError

T0 = 1_650_000_000_000


def random_log(n_users=13, max_len=57, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in rng.choice(10_000, n_users, replace=False):
        n = int(rng.integers(0, max_len))
        ts = np.sort(rng.integers(T0, T0 + 10**9, n))
        rows.append(pd.DataFrame({"user_id": u, "item_id": rng.integers(1, 500, n), "ts": ts,
                                  "play_ms": rng.integers(0, 9000, n), "duration_ms": rng.integers(0, 9000, n)}))
    return pd.concat(rows, ignore_index=True).astype("int64")


def write_dataset(tmp_path, df, n_shards=3):
    root = prepare_dir(tmp_path / "ds", overwrite=False)
    w = ShardedWriter(root, BEHAVIOURS, n_shards)
    w.append_frame(df)
    w.close()
    write_manifest(root, {"n_shards": n_shards, "eval_days": [d.__dict__ for d in eval_days(T0, 5)]})
    return Dataset(root)


def _splitmix64_ref(x: int) -> int:
    """Plain-Python splitmix64 finaliser, the reference for the vectorised numpy version."""
    m = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_shard_of_matches_reference_and_spreads():
    ids = [0, 1, 2, 3, 4, 123456789, 2**40 + 17]
    assert shard_of(ids, 7).tolist() == [_splitmix64_ref(i) % 7 for i in ids]
    s = shard_of(np.arange(100_000), 8)
    counts = np.bincount(s, minlength=8)
    assert counts.min() > 0.9 * 100_000 / 8  # roughly uniform


def test_shard_of_rejects_zero_shards():
    with pytest.raises(ValueError, match="n_shards must be >= 1, got 0"):
        shard_of([1], 0)


def test_round_trip_every_user_in_its_shard_and_sorted(tmp_path):
    df = random_log()
    ds = write_dataset(tmp_path, df)
    total = 0
    for s in range(ds.n_shards):
        part = ds.behaviours_frame(s)
        total += len(part)
        assert (shard_of(part["user_id"].to_numpy(), ds.n_shards) == s).all()
        key = part[["user_id", "ts"]].to_numpy()
        assert (np.lexsort((key[:, 1], key[:, 0])) == np.arange(len(key))).all()
    assert total == len(df)


def test_csr_slicing_matches_pandas(tmp_path):
    df = random_log(n_users=29, seed=1)
    ds = write_dataset(tmp_path, df)
    rng = np.random.default_rng(2)
    for u in list(df["user_id"].unique()) + [424242]:  # plus a user that does not exist
        ref = df[df["user_id"] == u].sort_values("ts", kind="stable")
        got = ds.history(int(u))
        np.testing.assert_array_equal(got["item_id"], ref["item_id"].to_numpy())
        for t in rng.integers(T0 - 10, T0 + 10**9 + 10, 5).tolist() + (ref["ts"].tolist()[:2]):
            before = ref[ref["ts"] < t]
            got = ds.history(int(u), before_ts=int(t))
            np.testing.assert_array_equal(got["ts"], before["ts"].to_numpy())
            np.testing.assert_array_equal(got["play_ms"], before["play_ms"].to_numpy())


def test_vectorised_ranges_match_scalar(tmp_path):
    df = random_log(n_users=17, seed=4)
    ds = write_dataset(tmp_path, df, n_shards=1)
    csr = ds.csr(0)
    rng = np.random.default_rng(5)
    users = np.r_[rng.choice(df["user_id"].unique(), 40), [-7, 99_999]]
    ts = rng.integers(T0, T0 + 10**9, len(users))
    starts, ends = csr.ranges_before(users, ts)
    for u, t, s, e in zip(users, ts, starts, ends):
        assert (s, e) == csr.range_before(int(u), int(t))


def test_csr_cache_is_memory_mapped_and_refreshed(tmp_path):
    df = random_log(seed=6)
    ds = write_dataset(tmp_path, df, n_shards=1)
    first = BehaviourCSR.open(ds.shard_path("behaviours", 0))
    assert isinstance(first.columns["ts"], np.memmap)
    # Rewrite the shard with different content: the stale cache must not be used.
    df2 = df.assign(item_id=df["item_id"] + 1)
    w = ShardedWriter(ds.root, BEHAVIOURS, 1)
    w.append_frame(df2)
    w.close()
    again = BehaviourCSR.open(ds.shard_path("behaviours", 0))
    np.testing.assert_array_equal(np.asarray(again.columns["item_id"]),
                                  df2.sort_values(["user_id", "ts"], kind="stable")["item_id"].to_numpy())


def test_one_user_with_a_million_behaviours():
    n = 1_000_000
    ts = np.arange(n, dtype=np.int64) * 7 + T0
    csr = BehaviourCSR.from_columns({"user_id": np.full(n, 3, np.int64), "item_id": np.arange(n), "ts": ts})
    s, e = csr.range_before(3, int(ts[654_321]))
    assert (s, e) == (0, 654_321)
    assert csr.history(3, int(ts[-1]) + 1)["item_id"].shape == (n,)


def test_writer_rejects_out_of_order_chunks(tmp_path):
    w = ShardedWriter(tmp_path, BEHAVIOURS, 1)
    cols = {c: np.array([5]) for c in BEHAVIOURS.names}
    cols["ts"] = np.array([T0 + 10])
    w.append(0, cols)
    cols2 = dict(cols, user_id=np.array([4]))
    with pytest.raises(ValueError, match="before"):
        w.append(0, cols2)


def test_incomplete_dataset_is_refused(tmp_path):
    (tmp_path / "behaviours").mkdir()
    with pytest.raises(DataError, match="no manifest.json"):
        Dataset(tmp_path)


def test_prepare_dir_refuses_to_clobber(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        prepare_dir(d, overwrite=False)
    with pytest.raises(FileExistsError, match="not a twinv2 dataset"):
        prepare_dir(d, overwrite=True)
    assert (d / "precious.txt").exists()


def test_eval_days_are_consecutive_and_hour_23_is_test():
    days = eval_days(T0 - T0 % 86_400_000, 5)
    assert [d.index for d in days] == [0, 1, 2, 3, 4]
    assert all(b.start_ms - a.start_ms == 86_400_000 for a, b in zip(days, days[1:]))
    assert days[0].end_ms - days[0].test_start_ms == 3_600_000
    manifest = json.loads(json.dumps([d.__dict__ for d in days]))
    assert manifest[0]["label"] == days[0].label


def test_concat_ranges_lists_each_range_in_turn_and_skips_empty_ones():
    got = concat_ranges(np.array([5, 0, 9, 2]), np.array([3, 0, 1, 2]))
    assert got.tolist() == [5, 6, 7, 9, 2, 3] and got.dtype == np.int64
    assert concat_ranges(np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []


def test_eval_day_masks_split_a_day_into_hours_0_22_and_23():
    (day,) = eval_days(1_712_534_400_000, 1)
    hour = 3_600_000
    ts = day.start_ms + np.array([-1, 0, 23 * hour - 1, 23 * hour, 24 * hour - 1, 24 * hour])
    assert day.train_mask(ts).tolist() == [False, True, True, False, False, False]
    assert day.test_mask(ts).tolist() == [False, False, False, True, True, False]
    (warm,) = warmup_days(day.end_ms, 1)  # the same day as a warm-up day: every hour trains, none tests
    assert warm.train_mask(ts).tolist() == [False, True, True, True, True, False] and not warm.test_mask(ts).any()
