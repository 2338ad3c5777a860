"""The streaming trainer: every model learns on the tiny world, runs are reproducible, checkpoints reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinv2.data.storage import Dataset
from twinv2.models.registry import MODELS, build_model
from twinv2.offline.store import ClusterSnapshot
from twinv2.train.features import CROSS_BUCKETS
from twinv2.train.metrics import auc
from twinv2.train.run import item_vectors
from twinv2.train.checkpoint import FORMAT_VERSION, load_checkpoint
from twinv2.train.trainer import StreamingTrainer, TrainConfig, item_tables


def trainer(world, snapshot, model, out=None, **kw):
    ds = Dataset(world)
    vectors = item_vectors(ds)  # as `train_one` does by default (item_init="auto" with the embed table present)
    return StreamingTrainer(ds, TrainConfig(model=model, **kw), [ClusterSnapshot(snapshot)],
                            item_vectors=vectors, out_dir=out, progress=False, init_vectors=vectors)


@pytest.fixture(scope="module")
def smoke_world(tmp_path_factory):
    """The tiny world with 4x the impressions: its five test hours then hold ~1,100 samples (enough for a
    pooled AUC whose noise is ~0.015, not ~0.03) and each day ~1,500 training samples."""
    from twinv2.data.generate import generate_world, preset
    from twinv2.offline.embed import EmbedConfig, embed
    from twinv2.offline.job import ClusterJobConfig, run_cluster_job

    root = tmp_path_factory.mktemp("smoke") / "tiny4x"
    generate_world(preset("tiny", impressions_per_day=(16.0, 32.0, 64.0)), root, progress=False)
    emb = embed(root, None, EmbedConfig(), progress=False)
    snap = run_cluster_job(root, Dataset(root).eval_days[0].start_ms, emb, ClusterJobConfig(workers=1),
                           progress=False)
    return root, snap


@pytest.mark.slow
@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_learns_on_the_tiny_world(smoke_world, model, tmp_path):
    # Batches of 64: ~120 steps over the five days instead of ~30 at the default 256.
    result = trainer(*smoke_world, model, out=tmp_path, batch_size=64).run()
    # Pool the five test hours: a single hour of the tiny world holds too few samples for a stable AUC.
    import pandas as pd

    pred = pd.concat([pd.read_parquet(tmp_path / f"predictions-day{d}.parquet") for d in range(5)])
    pooled = auc(pred["label"].to_numpy(), pred["score"].to_numpy())
    assert len(pred) > 1_000
    assert pooled > 0.5, (model, pooled, result["auc_mean"])
    assert np.isfinite(result["auc_mean"]) and len(result["days"]) == 5


def test_runs_are_reproducible_and_checkpoints_reload(tiny_world, tiny_snapshot, tmp_path):
    kw = dict(max_train_per_day=300)
    a = trainer(tiny_world, tiny_snapshot, "twin_v2", out=tmp_path / "a", **kw).run()
    b = trainer(tiny_world, tiny_snapshot, "twin_v2", out=tmp_path / "b", **kw).run()
    assert [d["auc"] for d in a["days"]] == [d["auc"] for d in b["days"]]
    ck = load_checkpoint(tmp_path / "a" / "checkpoint.pt")  # weights_only=True inside
    assert ck["model"] == "twin_v2" and ck["config"]["max_train_per_day"] == 300 and ck["day"] == 4
    assert ck["format_version"] == FORMAT_VERSION and ck["buckets"]["cross"] == CROSS_BUCKETS
    assert ck["config"]["model_cfg"]["seq_len"] == 10_000  # resolved: TWIN-V2's default, not the 0 sentinel
    t = trainer(tiny_world, tiny_snapshot, "twin_v2", **kw)
    fresh = build_model("twin_v2", item_tables(Dataset(tiny_world))[1], t.cfg.model_cfg, CROSS_BUCKETS)
    fresh.load_state_dict(ck["state_dict"])
    fresh.eval()
    ds = Dataset(tiny_world)
    last = ds.eval_days[-1]
    s = ds.samples()
    s = s[(s.ts >= last.test_start_ms) & (s.ts < last.end_ms)].iloc[:64]
    t.batcher.use_snapshot(ClusterSnapshot(tiny_snapshot), last)
    batch = t.batcher.batch(s.user_id.values, s.item_id.values, s.ts.values, s.label.values)
    pred = pd_read_scores(tmp_path / "a", s)
    with torch.no_grad():
        again = torch.sigmoid(fresh(batch)).numpy()
    np.testing.assert_allclose(again, pred, rtol=1e-5, atol=1e-6)


def pd_read_scores(run, s):
    import pandas as pd

    pred = pd.read_parquet(run / "predictions-day4.parquet")
    m = s.merge(pred, on=["user_id", "item_id", "ts"], how="left")
    assert m["score"].notna().all()
    return m["score"].to_numpy()


def test_oracle_metrics_come_from_p_true(tiny_world, tiny_snapshot):
    r = trainer(tiny_world, tiny_snapshot, "avg_pooling", max_train_per_day=50).run()
    ds = Dataset(tiny_world)
    s = ds.samples()
    d0 = ds.eval_days[0]
    test = s[(s.ts >= d0.test_start_ms) & (s.ts < d0.end_ms)]
    assert r["days"][0]["oracle_auc"] == pytest.approx(auc(test["label"].to_numpy(), test["p_true"].to_numpy()))
    assert r["days"][0]["n_test"] == len(test)


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="unknown model 'twin_v3'; known models: avg_pooling"):
        TrainConfig(model="twin_v3")


def test_checkpoints_rebuild_through_one_module_and_refuse_other_formats(tmp_path):
    from twinv2.serve.synthetic import synthetic_checkpoint
    from twinv2.train.checkpoint import load_model

    path = synthetic_checkpoint(tmp_path / "c.pt", 40, seed=2)
    model, vocab, ck = load_model(path)
    assert ck["config"]["model_cfg"]["seq_len"] == model.seq_len == model.cfg.seq_len == 10_000
    assert not model.training
    assert list(vocab.item_ids) == list(range(1, 40))
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck["state_dict"][k]), k
    for version in (None, FORMAT_VERSION + 1):
        bad = dict(ck)
        bad.pop("format_version")
        if version is not None:
            bad["format_version"] = version
        torch.save(bad, tmp_path / "old.pt")
        with pytest.raises(ValueError, match=f"old.pt: checkpoint format_version {version}"):
            load_checkpoint(tmp_path / "old.pt")


def test_the_one_per_day_summary_leaves_out_nan_days():
    from twinv2.train.metrics import summarise

    days = [{"auc": 0.6, "gauc": 0.55}, {"auc": float("nan"), "gauc": 0.57}, {"auc": 0.7, "gauc": 0.62}]
    s = summarise(days)
    assert s["auc_mean"] == pytest.approx(0.65) and s["auc_std"] == pytest.approx(0.05)  # NaN day left out
    assert s["gauc_std"] == pytest.approx(np.std([0.55, 0.57, 0.62])) and "oracle_auc_mean" not in s


def test_the_summary_counts_usable_days_and_says_so():
    """Issue 13 / #14 item 11: a mean over days whose test hours are tiny or one-class looks authoritative."""
    from twinv2.train.metrics import MIN_TEST_SAMPLES, day_problem, summarise, summary_line

    nan = float("nan")
    days = [{"auc": nan, "gauc": nan, "n_test": 0}, {"auc": 0.5, "gauc": 0.5, "n_test": 6},
            {"auc": 1.0, "gauc": nan, "n_test": 2}, {"auc": nan, "gauc": nan, "n_test": 1},
            {"auc": 0.65, "gauc": 0.6, "n_test": 61}, {"auc": 0.7, "gauc": 0.66, "n_test": 500}]
    s = summarise(days)
    assert (s["n_days"], s["auc_n_days"], s["n_usable_days"], s["min_test_samples"]) == (6, 4, 1, MIN_TEST_SAMPLES)
    line = summary_line({**s, "pooled_auc": 0.7012, "n_test_total": 570})
    assert line.startswith(f"AUC {s['auc_mean']:.4f} ± {s['auc_std']:.4f}")
    assert "over 4 of 6 days (5 days unusable: < 100 test samples or one class); pooled AUC 0.7012 over 570" in line
    one = summarise([{"auc": 1.0, "gauc": 1.0, "n_test": 300}] + [{"auc": nan, "gauc": nan, "n_test": 3}] * 4)
    assert "AUC 1.0000 ± 0.0000" in summary_line(one) and "over 1 of 5 days (4 days unusable" in summary_line(one)
    assert "unusable" not in summary_line(summarise([{"auc": 0.7, "gauc": 0.6, "n_test": 100}]))
    assert day_problem(0, 0) == "no test samples" and "one class" in day_problem(5, 5)
    assert "fewer than 100" in day_problem(99, 3) and day_problem(100, 3) is None


def test_small_test_hours_warn_and_a_pooled_auc_is_recorded(tiny_world, tiny_snapshot, capsys):
    r = trainer(tiny_world, tiny_snapshot, "avg_pooling", max_train_per_day=50).run()
    err = capsys.readouterr().err
    small = [d for d in r["days"] if d["n_test"] < 100]
    assert small and err.count("test hour unusable") == len(small)  # ~60 samples per tiny test hour
    assert r["n_usable_days"] == len(r["days"]) - len(small) and r["n_test_total"] == sum(d["n_test"] for d in r["days"])
    import pandas as pd

    ds = Dataset(tiny_world)
    s = ds.samples()
    test = pd.concat([s[(s.ts >= d.test_start_ms) & (s.ts < d.end_ms)] for d in ds.eval_days])
    assert len(test) == r["n_test_total"] and 0.0 < r["pooled_auc"] < 1.0
