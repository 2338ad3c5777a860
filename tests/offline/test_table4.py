"""`twinv2 bench cluster` (Table 4): structure, the same users for every row, target bookkeeping."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from twinv2.offline.table4 import (RAW_ROW_BYTES, SyntheticWorld, _targets, bench_cluster, format_bench,
                                    kuairand_like_ratios)
from twinv2.data.storage import ShardedWriter, eval_days, prepare_dir, write_manifest, write_table
from twinv2.offline.embed import EmbeddingTable
from twinv2.offline.store import ROW_BYTES
from twinv2.schema import BEHAVIOURS

T0 = 1_650_000_000_000
KEYS = {"variant", "delta", "accuracy", "sec_per_user_median", "sec_per_user_p90", "clusters_per_user",
        "mean_cluster_size", "compression", "bytes_before", "bytes_after"}


def test_synthetic_bench_rows_and_targets():
    r = bench_cluster(None, None, n_users=3, big_user=True, seed=0, T=700, big_T=5_000, progress=False)
    json.dumps(r)  # plain data for --json
    variants = [row["variant"] for row in r["rows"]]
    assert variants == ["adaptive", "binary", "balanced_binary", "adaptive (scikit-learn k-means++)"]
    for row in r["rows"]:
        assert KEYS <= set(row)
        assert 0.5 < row["accuracy"] <= 1.0 and 0 < row["sec_per_user_median"] <= row["sec_per_user_p90"]
        assert row["mean_cluster_size"] < 20 and row["compression"] == pytest.approx(1 / row["mean_cluster_size"])
        assert row["bytes_before"] == 700 * RAW_ROW_BYTES
        assert row["bytes_after"] == pytest.approx(row["clusters_per_user"] * ROW_BYTES)
    assert r["rows"][0]["delta"] == "floor(n^0.3)" and r["rows"][1]["delta"] == 2
    # Balanced halves cannot follow the data, so they are never more accurate than free binary splits here.
    assert r["rows"][2]["accuracy"] <= r["rows"][1]["accuracy"] + 0.02
    assert r["big_user_T"] == 5_000 and r["big_user_seconds"] > 0 and len(r["targets"]) == 4
    assert r["setup"]["T_median"] == 700 and r["setup"]["threads"] == 1
    text = format_bench(r)
    assert "| adaptive |" in text and "5,000 behaviours" in text
    # T=700 is not the targets' setting, and the note says so.
    assert "not 14,500" in r["targets"][0]["note"]


def test_targets_can_be_missed():
    row = {"variant": "adaptive", "backend": "numpy", "accuracy": 0.70, "sec_per_user_median": 0.2,
           "cpu_sec_per_user_median": 0.19, "compression": 0.3, "mean_cluster_size": 3.3}
    ref = {**row, "variant": "adaptive (scikit-learn k-means++)", "backend": "sklearn", "accuracy": 0.80}
    t = _targets({"rows": [row, ref], "big_user_seconds": 6.0, "big_user_cpu_seconds": 5.9,
                  "setup": {"T_median": 14_500}})
    assert [x["met"] for x in t] == [False, False, False, False]
    row.update(accuracy=0.795, sec_per_user_median=0.04, compression=0.1)
    t = _targets({"rows": [row, ref], "big_user_seconds": None, "setup": {"T_median": 14_500}})
    assert [x["met"] for x in t] == [True, None, True, True]


def test_a_near_miss_is_reported_with_its_number():
    row = {"variant": "adaptive", "backend": "numpy", "accuracy": 0.80, "sec_per_user_median": 0.05004,
           "cpu_sec_per_user_median": 0.049, "compression": 0.1, "mean_cluster_size": 10.0}
    ref = {**row, "variant": "adaptive (scikit-learn k-means++)", "backend": "sklearn"}
    result = {"rows": [row, ref], "big_user_seconds": 5.004, "big_user_cpu_seconds": 4.9, "big_user_T": 10**6,
              "setup": {"T_median": 14_500}}
    result["targets"] = _targets(result)
    assert [x["met"] for x in result["targets"]][:2] == [False, False]
    for r in result["rows"]:
        r.update(delta=2, sec_per_user_p90=0.06, clusters_per_user=1450.0, bytes_before=1.0, bytes_after=1.0)
    text = format_bench(result)
    assert "MISSED: adaptive median seconds per user <= 0.050 at T=14,500, one core (value 0.05004" in text
    assert "MISSED: one user of 10^6 behaviours <= 5 s (value 5.004" in text


def test_synthetic_users_are_kuairand_like():
    rng = np.random.default_rng(0)
    p = kuairand_like_ratios(rng, 100_000)
    assert (p >= 0).all() and 0.25 < (p < 0.2).mean() < 0.5 and 0.05 < (p > 1.05).mean() < 0.2
    hist, emb, author, tag = SyntheticWorld(0, n_items=5_000).user(1_000)
    assert emb.shape == (1_000, 32) and len(author) == len(tag) == len(hist["item_id"]) == 1_000
    assert (np.diff(hist["ts"]) >= 0).all()


def test_bench_on_a_dataset_uses_its_longest_histories(tmp_path):
    rng = np.random.default_rng(1)
    lengths = {11: 300, 12: 40, 13: 250, 14: 5}
    df = pd.concat([pd.DataFrame({"user_id": u, "item_id": rng.integers(1, 200, n), "ts": T0 + np.arange(n),
                                  "play_ms": rng.integers(0, 9000, n), "duration_ms": 9000})
                    for u, n in lengths.items()], ignore_index=True)
    root = prepare_dir(tmp_path / "ds", overwrite=False)
    w = ShardedWriter(root, BEHAVIOURS, 2)
    w.append_frame(df)
    w.close()
    write_table(root / "items.parquet", pd.DataFrame({"item_id": np.arange(1, 200), "author_id": 1, "tag": 2,
                                                     "duration_ms": 9000}))
    write_manifest(root, {"n_shards": 2, "eval_days": [d.__dict__ for d in eval_days(T0 + 86_400_000, 1)]})
    emb = EmbeddingTable(np.arange(1, 150), rng.normal(size=(149, 8)).astype(np.float32)).save(tmp_path / "e.parquet")
    r = bench_cluster(root, emb, n_users=2, big_user=False, progress=False)
    assert r["setup"]["n_users"] == 2 and (r["setup"]["T_min"], r["setup"]["T_max"]) == (250, 300)
    assert r["rows"][0]["bytes_before"] == 275 * RAW_ROW_BYTES
    with pytest.raises(ValueError, match="needs its embeddings file"):
        bench_cluster(root, None, n_users=2, big_user=False, progress=False)
