"""Dataset statistics equal a straightforward pandas computation on an imported dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from twinv2.data.importers import import_mapped
from twinv2.data.stats import CR_LABELS, compute_stats, format_stats, plot_stats
from twinv2.data.storage import DAY_MS, Dataset, ShardedWriter, eval_days, prepare_dir, write_manifest, write_table
from twinv2.schema import BEHAVIOURS, SAMPLES

T0 = 1_649_548_800_000  # 2022-04-10 00:00 UTC


def random_log(seed: int = 3, n_users: int = 37) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for u in range(n_users):
        n = int(rng.pareto(1.2) * 8) + 1  # heavy-tailed history lengths
        dur = rng.integers(0, 20_000, n)
        dur[rng.random(n) < 0.1] = 0  # unknown durations
        play = (dur * rng.uniform(0, 2.6, n)).astype(np.int64)
        parts.append(pd.DataFrame({"u": 1000 + 7 * u, "i": rng.integers(1, 60, n),
                                   "t": np.sort(rng.choice(6 * 86_400_000, n, replace=False)) + T0,
                                   "p": play, "d": dur, "y": (rng.random(n) < 0.4).astype(int)}))
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Dataset, pd.DataFrame]:
    d = tmp_path_factory.mktemp("stats")
    log = random_log()
    log.to_csv(d / "log.csv", index=False)
    users = pd.DataFrame({"u": log["u"].unique()})
    users["activity"] = np.arange(len(users)) % 3
    users.loc[users.index % 5 == 4, "activity"] = np.nan  # users without a level
    users.to_csv(d / "users.csv", index=False)
    body = {"inputs": ["log.csv"], "columns": {"user": "u", "item": "i", "time": "t", "label": "y", "play": "p",
                                               "duration": "d"},
            "split": {"last_days": 3, "history": "label == 1"},
            "users": {"path": "users.csv", "user": "u", "features": ["activity"]}}
    (d / "map.yaml").write_text(yaml.safe_dump(body))
    return Dataset(import_mapped(d / "map.yaml", d / "ds", n_shards=3)), users


def frames(ds: Dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    b = pd.concat([ds.behaviours_frame(s) for s in range(ds.n_shards)], ignore_index=True)
    return b, ds.samples()


def test_counts_and_history_lengths(imported):
    ds, _ = imported
    st = compute_stats(ds)
    b, s = frames(ds)
    assert st["behaviours"] == len(b) and st["samples"] == len(s)
    assert st["users"] == len(set(b["user_id"]) | set(s["user_id"]))
    assert st["items"] == len(ds.items()) and st["items_in_behaviours"] == b["item_id"].nunique()
    lengths = b.groupby("user_id").size().to_numpy()
    h = st["history_length"]
    assert h["n"] == len(lengths) and h["mean"] == pytest.approx(lengths.mean()) and h["max"] == lengths.max()
    for q in (50, 90, 99):
        assert h[f"p{q}"] == np.percentile(lengths, q, method="lower")
    assert h["p99"] > h["p50"]  # the fixture is heavy-tailed: a test that can tell percentiles apart
    assert sum(st["history_length_hist"]["counts"]) == len(lengths)


def test_history_length_at_sample_is_strictly_before(imported):
    ds, _ = imported
    st = compute_stats(ds)
    b, s = frames(ds)
    seen = np.array([((b["user_id"] == u) & (b["ts"] < t)).sum() for u, t in zip(s["user_id"], s["ts"])])
    h = st["history_length_at_sample"]
    assert h["n"] == len(s) and h["mean"] == pytest.approx(seen.mean()) and h["max"] == seen.max()
    assert h["p50"] == np.percentile(seen, 50, method="lower")
    assert (b.merge(s, on=["user_id", "ts"]).shape[0]) > 0  # clicked samples are behaviours at the same ts


def test_completion_ratio_histogram(imported):
    ds, _ = imported
    b, _ = frames(ds)
    counts = dict(zip(CR_LABELS, compute_stats(ds)["completion_ratio"]["counts"]))
    known = (b["duration_ms"] > 0) & (b["play_ms"] >= 0)
    k = b[known]
    over = k["play_ms"] > 2 * k["duration_ms"]
    binned = (10 * k.loc[~over, "play_ms"] // k.loc[~over, "duration_ms"]).clip(upper=19)
    ref = binned.value_counts()
    assert counts["NaN"] == (~known).sum() > 0 and counts[">2"] == over.sum() > 0
    assert [counts[CR_LABELS[j]] for j in range(20)] == [int(ref.get(j, 0)) for j in range(20)]


def test_label_rate_days_and_activity(imported):
    ds, users = imported
    st = compute_stats(ds)
    b, s = frames(ds)
    assert st["label_rate"] == pytest.approx(s["label"].mean())
    assert st["p_true_mean"] is None
    day = (s["ts"] - ds.eval_days[0].start_ms) // DAY_MS
    hour = (s["ts"] - ds.eval_days[0].start_ms) % DAY_MS // 3_600_000
    assert [d["samples"] for d in st["samples_per_day"]] == [int((day == i).sum()) for i in range(3)]
    assert [d["positives"] for d in st["samples_per_day"]] == [int(s.loc[day == i, "label"].sum()) for i in range(3)]
    assert [d["test_hour_samples"] for d in st["samples_per_day"]] == \
        [int(((day == i) & (hour == 23)).sum()) for i in range(3)]
    per_user = b.groupby("user_id").size()
    lv = users.set_index("u")["activity"]
    lv = lv[lv.index.isin(ds.users()["user_id"])]  # users.parquet holds the users with stored rows
    assert len(lv) < len(users)  # some fixture user has only unused rows
    got = {r["level"]: (r["users"], r["behaviours"]) for r in st["behaviours_per_activity"]}
    for level in (0.0, 1.0, 2.0):
        ids = lv.index[lv == level]
        assert got[level] == (len(ids), int(per_user.reindex(ids).fillna(0).sum()))
    ids = lv.index[lv.isna()]
    assert got[None] == (len(ids), int(per_user.reindex(ids).fillna(0).sum()))


def test_p_true_and_samples_outside_eval_days(tmp_path):
    root = prepare_dir(tmp_path / "gen", overwrite=False)
    days = eval_days(T0, 2)
    beh = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [5, 6, 5], "ts": [T0 - 5, T0 - 4, T0 - 3],
                        "play_ms": [1, 2, 3], "duration_ms": [10, 10, 0]})
    smp = pd.DataFrame({"user_id": [1, 2, 2], "item_id": [7, 7, 8], "ts": [T0 + 1, T0 + DAY_MS + 5, T0 + 9 * DAY_MS],
                        "label": np.array([1, 0, 0], np.int8), "p_true": np.array([0.5, 0.25, 0.0], np.float32)})
    for spec, frame, extras in ((BEHAVIOURS, beh, {}), (SAMPLES, smp, {"p_true": "float32"})):
        w = ShardedWriter(root, spec, 2, extras=extras)
        w.append_frame(frame)
        w.close()
    write_table(root / "items.parquet", pd.DataFrame({"item_id": [5, 6, 7, 8], "author_id": -1, "tag": -1,
                                                      "duration_ms": 0}))
    write_manifest(root, {"n_shards": 2, "eval_days": [d.__dict__ for d in days]})
    st = compute_stats(Dataset(root))
    assert st["p_true_mean"] == pytest.approx(0.25)
    assert [d["samples"] for d in st["samples_per_day"]] == [1, 1] and st["samples_outside_eval_days"] == 1
    assert st["history_length_at_sample"]["max"] == 2 and st["behaviours_per_activity"] is None
    assert "p_true mean" in format_stats(st)


def test_format_and_plots(imported, tmp_path):
    ds, _ = imported
    st = compute_stats(ds)
    text = format_stats(st)
    for needle in ("behaviours", "p50", "1.9-2.0", ">2", "NaN", ds.eval_days[0].label, "activity level"):
        assert needle in text
    paths = plot_stats(ds, st, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["completion_ratio.png", "history_length.png", "samples_per_day.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
