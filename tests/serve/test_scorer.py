"""Online == offline: the scorer's scores equal the offline TWIN-V2 forward on the inputs the training
batcher builds for the same (user, item, time), to 1e-5, for every kind of user and item."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinv2.data.storage import Dataset, EvalDay
from twinv2.models import serving
from twinv2.models.frame import ModelConfig
from twinv2.offline.store import ClusterSnapshot
from twinv2.serve.projections import ProjectionCache
from twinv2.serve.scorer import Scorer, cluster_inputs
from twinv2.serve.store import ClusterStore
from twinv2.serve.synthetic import (
    synthetic_checkpoint,
    synthetic_clusters,
    write_snapshot,
)
from twinv2.train.batching import Batcher
from twinv2.train.trainer import item_tables

TOL = 1e-5


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint, tiny_store) -> Scorer:
    return Scorer(ProjectionCache(tiny_checkpoint), ClusterStore(tiny_store))


def offline_logits(model, batcher, users, items, ts) -> np.ndarray:
    batch = batcher.batch(np.asarray(users), np.asarray(items), np.asarray(ts), np.zeros(len(items)))
    with torch.no_grad():
        return model(batch).numpy()


@pytest.mark.parametrize("esu", ["dense", "gather"])
def test_online_equals_offline_across_users(tiny_world, tiny_snapshot, scorer, request_ts, known_items, esu,
                                            monkeypatch):
    if esu == "gather":  # the path for requests whose kept clusters hardly overlap
        monkeypatch.setattr(serving, "DENSE_UNION_MIN", 0)
        monkeypatch.setattr(serving, "DENSE_UNION_FRACTION", 0.0)
    ds = Dataset(tiny_world)
    mv = scorer.cache.current
    batcher = Batcher(ds, item_tables(ds)[0], "clusters", mv.seq_len)
    batcher.use_snapshot(ClusterSnapshot(tiny_snapshot), ds.eval_days[0])
    rng = np.random.default_rng(0)
    known = ClusterSnapshot(tiny_snapshot).user_ids()
    sizes = np.array([scorer.store.get(int(u)).size for u in known])
    # The 12 users with the most clusters (up to 662: the top 100 really selects), 12 others, 2 unknown users.
    users = list(known[np.argsort(-sizes)[:12]]) + list(rng.choice(known[np.argsort(-sizes)[12:]], 12, replace=False))
    users += [10**13, -4]
    assert sizes.max() > 100
    worst = 0.0
    for k, u in enumerate(users):
        items = rng.choice(known_items, 23)
        items[k % 23] = 10**14  # an unknown item: the fallback embedding, same row 0 as offline
        ts = request_ts + int(rng.integers(0, 20 * 3_600_000))
        online = scorer.score(int(u), items, ts)
        offline = offline_logits(mv.model, batcher, np.full(23, u), items, np.full(23, ts))
        worst = max(worst, float(np.abs(online.logits - offline).max()))
        np.testing.assert_allclose(online.scores, 1 / (1 + np.exp(-online.logits)), rtol=1e-6)
        assert online.unknown_items == 1
    assert worst <= TOL, worst


@pytest.mark.parametrize("which", ["scorer", "pair_scorer"])
def test_online_with_recent_behaviours_equals_offline(tiny_world, tiny_snapshot, request_ts, known_items, which,
                                                      request):
    """The request's `recent` behaviours (more than the model reads, some after the request time) give the
    offline score of a batch whose `recent` the batcher built from the dataset: TWIN-V2's short-term interest
    reads the latest short_len; the TWIN + TWIN-V2 pair's TWIN part reads the whole raw history (raw_len 10,000)
    and its short term the latest short_len."""
    scorer = request.getfixturevalue(which)
    ds = Dataset(tiny_world)
    mv = scorer.cache.current
    R = mv.model.recent_len
    assert R == (mv.model.raw_len if which == "pair_scorer" else mv.model.short_len) > 0
    batcher = Batcher(ds, item_tables(ds)[0], "clusters", mv.seq_len, recent_len=R)
    batcher.use_snapshot(ClusterSnapshot(tiny_snapshot), ds.eval_days[0])
    rng = np.random.default_rng(3)
    changed = 0
    for u in ClusterSnapshot(tiny_snapshot).user_ids()[:6]:
        h = ds.history(int(u))
        ts = int(h["ts"][-1]) - 1  # the last behaviour is at or after ts: the scorer must cut it
        ts = max(ts, request_ts)
        recent = {k: np.asarray(h[k])[-(R + 7):].astype(np.int64) for k in ("item_id", "ts", "play_ms", "duration_ms")}
        items = rng.choice(known_items, 9)
        online = scorer.score(int(u), items, ts, recent=recent)
        offline = offline_logits(mv.model, batcher, np.full(9, u), items, np.full(9, ts))
        assert np.abs(online.logits - offline).max() <= TOL
        changed += np.abs(online.logits - scorer.score(int(u), items, ts).logits).max() > 1e-4
    assert changed >= 5  # the recent behaviours move the scores: they are really read


def test_online_equals_a_mixed_offline_batch(tiny_world, tiny_snapshot, scorer):
    """The test-hour samples of day 0 as the trainer batches them (many users, padded): per sample equal."""
    ds = Dataset(tiny_world)
    mv = scorer.cache.current
    day = ds.eval_days[0]
    batcher = Batcher(ds, item_tables(ds)[0], "clusters", mv.seq_len)
    batcher.use_snapshot(ClusterSnapshot(tiny_snapshot), day)
    s = ds.samples()
    s = s[(s.ts >= day.test_start_ms) & (s.ts < day.end_ms)].iloc[:96]
    offline = offline_logits(mv.model, batcher, s.user_id.values, s.item_id.values, s.ts.values)
    online = np.array([scorer.score(int(r.user_id), [int(r.item_id)], int(r.ts)).logits[0]
                       for r in s.itertuples()])
    assert np.abs(online - offline).max() <= TOL


def test_unknown_user_is_an_empty_life_cycle(scorer, request_ts, known_items):
    r = scorer.score(10**13, known_items[:5], request_ts)
    assert r.clusters == 0 and r.unknown_items == 0
    mv = scorer.cache.current
    from twinv2.models.batch import Batch, Seq

    batch = Batch(target=torch.from_numpy(mv.vocab.rows(known_items[:5])),
                  seq=Seq(rows=torch.zeros(5, 1, dtype=torch.long), cross=torch.zeros(5, 1, 3, dtype=torch.long),
                          mask=torch.zeros(5, 1, dtype=torch.bool), log_n=torch.zeros(5, 1)),
                  label=torch.zeros(5), user_id=torch.zeros(5, dtype=torch.long), ts=torch.zeros(5, dtype=torch.long))
    with torch.no_grad():
        np.testing.assert_allclose(r.logits, mv.model(batch).numpy(), atol=TOL)


def test_requests_before_the_snapshot_are_refused_and_any_later_year_is_scored(scorer, tiny_snapshot, known_items):
    snap_ts = ClusterSnapshot(tiny_snapshot).snapshot_ts
    with pytest.raises(ValueError, match="before the served cluster snapshot") as e:
        scorer.score(1, known_items[:3], snap_ts - 1)
    assert "seconds instead of ms" not in str(e.value)
    with pytest.raises(ValueError, match="seconds instead of ms"):
        scorer.score(1, known_items[:3], snap_ts // 1000 + 1)  # seconds, not ms
    assert scorer.score(1, [], snap_ts).scores.shape == (0,)
    assert scorer.score(1, known_items[:3], 5_000_000_000_000).scores.shape == (3,)  # the year 2128


def test_users_beyond_seq_len_keep_their_latest_clusters_as_offline(tmp_path):
    """seq_len 50 and users of 7 to 130 clusters (D=24, H=3, d=8, top 10: mismatched on purpose)."""
    from twinv2.models.attention import AttentionConfig

    att = AttentionConfig(dim=24, heads=3, head_dim=8, out_dim=20, top_k=10)
    ckpt = synthetic_checkpoint(tmp_path / "c.pt", 301, seed=5, model_cfg=ModelConfig(dim=24, seq_len=50,
                                                                                      attention=att))
    ts0 = 1_712_534_400_000
    users = [3, 11, 12, 40]
    snap = write_snapshot(tmp_path / "snap", synthetic_clusters(users, [130, 7, 50, 51], 301, ts0, seed=1), ts0,
                          n_shards=2)
    store = ClusterStore(tmp_path / "store")
    store.load_snapshot(snap)
    scorer = Scorer(ProjectionCache(ckpt), store)
    mv = scorer.cache.current
    assert mv.seq_len == 50 and mv.cache.heads == 3 and mv.cache.head_dim == 8

    class _DS:  # the one attribute the clusters batcher reads
        n_shards = 2

    batcher = Batcher(_DS(), mv.vocab, "clusters", mv.seq_len)  # type: ignore[arg-type]
    batcher.use_snapshot(ClusterSnapshot(snap), EvalDay(index=0, label="d", start_ms=ts0))
    items = np.r_[np.arange(1, 300, 13), 0, 999]  # 0 and 999: not in the vocabulary
    for u in users:
        ts = ts0 + 7_200_000
        online = scorer.score(u, items, ts)
        offline = offline_logits(mv.model, batcher, np.full(len(items), u), items, np.full(len(items), ts))
        assert np.abs(online.logits - offline).max() <= TOL, u
        assert cluster_inputs(store.get(u), ts, mv.vocab, mv.seq_len).size == min(50, store.get(u).size)


@pytest.mark.parametrize("name", ["twin", "twin_v2"])
@pytest.mark.parametrize("esu", ["dense", "gather"])
def test_model_score_equals_forward_for_every_servable_model_with_user_features(name, esu, monkeypatch):
    """model.score (the serving path) against model.forward on the same padded batch, with user features,
    ties in the GSU (repeated elements), unknown items and a top-k that really selects. D=24, H=3, d=8, J=3,
    C=57 (23 of them padding in the batch), K=10, F=2: mismatched on purpose."""
    from twinv2.models.attention import AttentionConfig
    from twinv2.models.batch import Batch, Seq
    from twinv2.models.frame import ItemTables
    from twinv2.models.registry import build_model

    if esu == "gather":
        monkeypatch.setattr(serving, "DENSE_UNION_MIN", 0)
        monkeypatch.setattr(serving, "DENSE_UNION_FRACTION", 0.0)
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    I, C, P, N, buckets, user_buckets = 301, 57, 23, 13, [5, 7, 11], [4, 6]
    tables = ItemTables(author_of=np.r_[0, rng.integers(1, 30, I - 1)], tag_of=np.r_[0, rng.integers(1, 9, I - 1)],
                        dur_of=np.r_[0, rng.integers(1, 5, I - 1)], n_authors=30, n_tags=9, n_dur=5)
    att = AttentionConfig(dim=24, heads=3, head_dim=8, out_dim=20, top_k=10)
    model = build_model(name, tables, ModelConfig(dim=24, attention=att), buckets, user_buckets)
    with torch.no_grad():
        for p in model.parameters():  # every term matters: cross, ln n and user weights away from their init
            p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    rows = torch.from_numpy(rng.integers(1, I, C))
    cross = torch.stack([torch.from_numpy(rng.integers(0, n, C)) for n in buckets], -1)  # (C, J)
    rows[40:45], cross[40:45] = rows[3], cross[3]  # exact ties in the GSU
    log_n = torch.from_numpy(np.log(rng.integers(1, 20, C)).astype(np.float32)) if name == "twin_v2" else None
    user = torch.tensor([3, 1])
    target = torch.from_numpy(rng.integers(1, I, N))
    target[5] = 0  # an unknown item
    seq = Seq(rows=rows.view(1, C), cross=cross.view(1, C, 3), mask=torch.ones(1, C, dtype=torch.bool),
              log_n=None if log_n is None else log_n.view(1, C))
    online = model.score(model.precompute(), target, seq, user)

    def pad(x, v):  # P padding positions before the C elements, the same for all N samples
        return torch.cat([torch.full((P, *x.shape[1:]), v, dtype=x.dtype), x]).expand(N, *((-1,) * x.dim()))

    padded = Seq(rows=pad(rows, 0), cross=pad(cross, 0), mask=pad(torch.ones(C, dtype=torch.bool), False),
                 log_n=None if log_n is None else pad(log_n, 0.0))
    batch = Batch(target=target, seq=padded, label=torch.zeros(N), user_id=torch.zeros(N, dtype=torch.long),
                  ts=torch.zeros(N, dtype=torch.long), user=user.expand(N, 2))
    with torch.no_grad():
        offline = model(batch)
    assert (online - offline).abs().max() <= TOL
    other_user = model.score(model.precompute(), target, seq, torch.tensor([0, 5]))
    assert (online - other_user).abs().min() > 1e-4  # the user features reach every online score
    with pytest.raises(ValueError, match="reads 2 user feature"):
        model.score(model.precompute(), target, seq, None)



@pytest.fixture(scope="module")
def pair_scorer(tiny_world, tiny_snapshot, tiny_store, tmp_path_factory) -> Scorer:
    """The TWIN + TWIN-V2 pair trained as tiny_checkpoint is, served from the same store."""
    from tests.serve.conftest import train_tiny

    path = train_tiny("twin_pair", tiny_world, tiny_snapshot, tmp_path_factory.mktemp("pair") / "checkpoint.pt")
    return Scorer(ProjectionCache(path), ClusterStore(tiny_store))
