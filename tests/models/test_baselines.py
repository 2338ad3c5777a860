"""Baseline long-term modules (paper Table 3): every model in the shared frame, plus per-model reference checks
(brute-force rankings and slow loops) on deliberately mismatched tiny dims (B=13, L=7, D=32, H=3, d=5)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from twinv2.models.attention import AttentionConfig
from twinv2.models.avg_pooling import AvgPooling
from twinv2.models.batch import Batch, Seq
from twinv2.models.din import DIN
from twinv2.models.eta import ETA
from twinv2.models.frame import (ETAConfig, ItemTables, ModelConfig, SDIMConfig, SIMClusterConfig,
                                 SIMClusterPlusConfig)
from twinv2.models.registry import build_model
from twinv2.models.sdim import SDIM
from twinv2.models.sim_cluster import SIMCluster, SIMClusterPlus
from twinv2.models.sim_hard import SIMHard
from twinv2.models import search
from twinv2.models.search import topk_exact
from twinv2.models.sim_soft import SIMSoft
from twinv2.models.twin import TWIN

I, N_AUTHORS, N_TAGS, N_DUR = 37, 5, 4, 17
B, L, D, K = 13, 7, 32, 4
BUCKETS = [6, 9, 4]
UNKNOWN_TAG_ITEMS = [5, 11, 23]
CFG = ModelConfig(dim=D, attention=AttentionConfig(dim=D, heads=3, head_dim=5, out_dim=11, top_k=K))

NAMES = {"avg_pooling": AvgPooling, "din": DIN, "sim_hard": SIMHard, "sim_soft": SIMSoft, "eta": ETA,
         "sdim": SDIM, "sim_cluster": SIMCluster, "sim_cluster_plus": SIMClusterPlus}
TWO_STAGE = [SIMHard, SIMSoft, ETA, SIMCluster, SIMClusterPlus]


def make_tables() -> ItemTables:
    rng = np.random.default_rng(0)
    tag = rng.integers(1, N_TAGS, I)
    tag[[0, *UNKNOWN_TAG_ITEMS]] = 0
    author = rng.integers(0, N_AUTHORS, I)
    dur = rng.integers(0, N_DUR, I)
    author[0] = dur[0] = 0
    return ItemTables(author_of=author, tag_of=tag, dur_of=dur, n_authors=N_AUTHORS, n_tags=N_TAGS, n_dur=N_DUR)


TABLES = make_tables()
VECTORS = np.random.default_rng(1).standard_normal((I, 24)).astype(np.float32)  # offline K_s, own dim


def build(cls, seed: int = 0, cfg: ModelConfig = CFG):
    torch.manual_seed(seed)
    model = cls(TABLES, cfg, BUCKETS)
    if getattr(cls, "needs_item_vectors", False):
        model.prepare(VECTORS)
    return model


def make_batch(seed: int = 0, copies: bool = True, lengths=None) -> Batch:
    """Left-padded histories (oldest first) of random lengths (one empty, one full). With `copies`, every
    other sample repeats its target at a few positions, so exact-match GSUs have something to find."""
    g = torch.Generator().manual_seed(seed)
    if lengths is None:
        lengths = torch.randint(0, L + 1, (B,), generator=g)
        lengths[0], lengths[1] = 0, L
    mask = torch.arange(L)[None, :] >= (L - torch.as_tensor(lengths))[:, None]  # (B, L)
    rows = torch.randint(1, I, (B, L), generator=g)
    target = torch.randint(1, I, (B,), generator=g)
    if copies:
        pick = torch.rand(B, L, generator=g) < 0.5
        pick[1::2] = False
        rows = torch.where(pick, target[:, None], rows)
    rows = rows * mask
    cross = torch.stack([torch.randint(1, n, (B, L), generator=g) for n in BUCKETS], -1) * mask[..., None]
    return Batch(target=target, seq=Seq(rows=rows, cross=cross, mask=mask), label=torch.zeros(B),
                 user_id=torch.arange(B), ts=torch.zeros(B, dtype=torch.long))


def gsu(model, batch):
    with torch.no_grad():
        target = model.items(batch.target)
        return model.gsu(batch, target, model.attn.query(target))


def picks(idx, valid, b) -> list[int]:
    return idx[b][valid[b]].tolist()


def latest(positions: list[int], k: int = K) -> list[int]:
    """The k most recent of `positions`, most recent first (the order of a top-k with a recency tie-break)."""
    return sorted(positions, reverse=True)[:k]


# ---- every model -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_smoke_shape_finite_and_gradient_reaches_history_items(name):
    torch.manual_seed(0)
    model = build_model(name, TABLES, CFG, BUCKETS, item_vectors=VECTORS)
    assert type(model) is NAMES[name]
    batch = make_batch()
    logits = model(batch)
    assert logits.shape == (B,) and torch.isfinite(logits).all()
    # Through the long-term module alone (target detached), history items must get gradient.
    model.zero_grad()
    model.long_term(batch, model.items(batch.target).detach()).sum().backward()
    grad = model.items.emb.item.weight.grad.to_dense()  # the item table has sparse gradients
    hist = batch.seq.rows[batch.seq.mask].unique()
    assert grad[hist].abs().sum(1).gt(0).any()
    assert grad[0].abs().sum() == 0  # padding row stays zero


@pytest.mark.parametrize("cls", NAMES.values())
def test_deterministic_at_evaluation_and_across_rebuilds(cls):
    batch = make_batch(seed=3)
    a = build(cls, seed=7).eval()
    with torch.no_grad():
        first, second = a(batch), a(batch)
        again = build(cls, seed=7).eval()(batch)
    assert torch.equal(first, second) and torch.equal(first, again)


@pytest.mark.parametrize("cls", NAMES.values())
def test_all_padding_gives_zero_interest_and_finite_logits(cls):
    model = build(cls)
    batch = make_batch(seed=4, lengths=[0] * B)
    batch.seq.rows = torch.where(batch.seq.mask, batch.seq.rows, batch.target[:, None])  # junk under the mask
    logits = model(batch)
    interest = model.long_term(batch, model.items(batch.target))
    assert torch.isfinite(logits).all() and interest.abs().max() == 0


def test_avg_pooling_is_the_masked_mean():
    model = build(AvgPooling)
    batch = make_batch(seed=5)
    out = model.long_term(batch, model.items(batch.target))
    for b in range(B):
        rows = batch.seq.rows[b][batch.seq.mask[b]]
        want = model.items(rows).mean(0) if len(rows) else torch.zeros(D)
        torch.testing.assert_close(out[b], want)


def test_din_attends_over_every_valid_position():
    # Full attention = the ESU over all positions; a two-stage ESU with K >= L must give the same thing.
    din, soft = build(DIN), build(SIMSoft)
    soft.attn.load_state_dict(din.attn.state_dict())
    batch = make_batch(seed=6)
    target = din.items(batch.target)
    soft.cfg = ModelConfig(dim=D, attention=AttentionConfig(dim=D, heads=3, head_dim=5, out_dim=11, top_k=L))
    torch.testing.assert_close(din.long_term(batch, target), soft.long_term(batch, target))


# ---- two-stage GSUs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", TWO_STAGE)
def test_gsu_never_selects_padding_even_if_it_would_score_highest(cls):
    model = build(cls)
    batch = make_batch(seed=8, lengths=[2] * B)
    seq = batch.seq
    with torch.no_grad():
        every = model.items(torch.arange(I))
        best = (model.items(batch.target) @ every.T)[:, 1:].argmax(1) + 1  # top inner product per target
    junk = best if cls is SIMSoft else batch.target  # the best possible match for each GSU
    seq.rows = torch.where(seq.mask, seq.rows, junk[:, None])
    idx, valid = gsu(model, batch)
    assert idx.shape == (B, K)
    assert seq.mask.gather(1, idx)[valid].all()
    if cls in (SIMSoft, ETA):  # rank every valid behaviour: both of them are kept
        assert valid.sum(1).tolist() == [2] * B


def test_sim_hard_keeps_the_latest_same_tag_behaviours():
    model = build(SIMHard)
    tag = torch.as_tensor(TABLES.tag_of)
    batch = make_batch(seed=9, copies=False)
    seq = batch.seq
    # Half the samples get histories drawn from the target's tag, so more than K match.
    same = [torch.nonzero(tag == t).flatten() for t in range(N_TAGS)]
    for b in range(0, B, 2):
        pool = same[int(tag[batch.target[b]])]
        seq.rows[b] = pool[torch.randint(0, len(pool), (L,))] * seq.mask[b]
    batch.target[3] = UNKNOWN_TAG_ITEMS[0]  # unknown tag: must match nothing, not other unknown tags
    seq.rows[3] = torch.as_tensor(UNKNOWN_TAG_ITEMS * 3)[:L] * seq.mask[3]
    batch.target[1] = 0  # an unknown item as target, and as real behaviours of the full sample 1
    seq.rows[1, -2:] = 0
    idx, valid = gsu(model, batch)
    n_more_than_k = 0
    for b in range(B):
        t = int(tag[batch.target[b]])
        match = [pos for pos in range(L) if seq.mask[b, pos] and t != 0 and int(tag[seq.rows[b, pos]]) == t]
        n_more_than_k += len(match) > K
        assert picks(idx, valid, b) == latest(match), b
    assert not valid[3].any() and not valid[1].any() and n_more_than_k >= 2


def brute_rank(score: np.ndarray, mask: torch.Tensor, k: int = K) -> list[list[int]]:
    """Per sample, valid positions by score descending, ties to the later position; the first k."""
    return [sorted((p for p in range(score.shape[1]) if mask[b, p]), key=lambda p: (-score[b, p], -p))[:k]
            for b in range(score.shape[0])]


@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_sim_soft_equals_brute_force_inner_product_ranking(scale):
    model = build(SIMSoft)
    batch = make_batch(seed=10)
    with torch.no_grad():
        for p in model.items.parameters():
            p.mul_(scale)  # small embeddings: scores closer than any position-based tie-break term
        e = model.items(batch.seq.rows).double().numpy()
        t = model.items(batch.target).double().numpy()
    want = brute_rank(np.einsum("bld,bd->bl", e, t), batch.seq.mask)
    idx, valid = gsu(model, batch)
    assert [picks(idx, valid, b) for b in range(B)] == want


def test_topk_exact_breaks_only_exact_ties_towards_recency():
    score = torch.tensor([[0.30, 0.31, 0.30, -0.0, 0.0, -1e-3, 5.0],
                          [-2.0, -2.0, -1.0, -1.0, 7.0, 7.0, 7.0]])
    mask = torch.ones_like(score, dtype=torch.bool)
    mask[1, 6] = False
    idx, valid = topk_exact(score, mask, 6)
    want = brute_rank(score.double().numpy(), mask, 6)
    assert [picks(idx, valid, b) for b in range(2)] == want == [[6, 1, 2, 0, 4, 3], [5, 4, 3, 2, 1, 0]]


@pytest.mark.parametrize("n_bits", [64, 13])
def test_eta_topk_equals_brute_force_hamming_ranking(n_bits):
    model = build(ETA, cfg=replace(CFG, eta=ETAConfig(n_bits=n_bits)))
    assert model.lsh.shape == (D, n_bits)
    batch = make_batch(seed=11)
    with torch.no_grad():
        model.items.emb.item.weight.mul_(3.0)  # signatures follow the current embeddings
        planes = model.lsh.double().numpy()
        e = model.items(batch.seq.rows).double().numpy() @ planes > 0  # (B, L, m)
        t = model.items(batch.target).double().numpy() @ planes > 0  # (B, m)
    dist = (e != t[:, None, :]).sum(-1)  # (B, L)
    assert np.array_equal(model.hamming(batch, model.items(batch.target)).numpy()[batch.seq.mask.numpy()],
                          dist[batch.seq.mask.numpy()])
    idx, valid = gsu(model, batch)
    assert [picks(idx, valid, b) for b in range(B)] == brute_rank(-dist, batch.seq.mask)


def test_eta_hyperplanes_ignore_the_global_seed_and_live_in_the_checkpoint():
    a, b = build(ETA, seed=1), build(ETA, seed=2)
    assert torch.equal(a.lsh, b.lsh) and "lsh" in a.state_dict()


def test_sim_cluster_with_at_least_as_many_clusters_as_items_keeps_only_the_same_item():
    model = build(SIMCluster)
    assert CFG.sim_cluster.n_clusters >= I
    assert model.cluster_of[0] == -1 and len(set(model.cluster_of[1:].tolist())) == I - 1
    batch = make_batch(seed=12)
    idx, valid = gsu(model, batch)
    for b in range(B):
        same = [p for p in range(L) if batch.seq.mask[b, p] and batch.seq.rows[b, p] == batch.target[b]]
        assert picks(idx, valid, b) == latest(same)
    assert valid.any()


def test_sim_cluster_kmeans_labels_items_by_row_and_gsu_keeps_the_targets_cluster():
    cfg5 = replace(CFG, sim_cluster=SIMClusterConfig(n_clusters=5))
    vectors = VECTORS.copy()
    twin = torch.randperm(36, generator=torch.Generator().manual_seed(0)).numpy() + 1
    first, second = twin[:18], twin[18:]
    vectors[second] = vectors[first]  # rows first[i] and second[i] hold the same item vector: same cluster
    vectors[0] = 1e3  # row 0 (unknown) is far away and must be ignored
    torch.manual_seed(0)
    model = SIMCluster(TABLES, cfg5, BUCKETS).prepare(vectors)
    labels = model.cluster_of.numpy()
    assert labels[0] == -1 and set(labels[1:]) == set(range(5))
    assert np.array_equal(labels[first], labels[second])
    again = SIMCluster(TABLES, cfg5, BUCKETS).prepare(vectors)
    assert torch.equal(model.cluster_of, again.cluster_of)
    batch = make_batch(seed=13)
    batch.target[1] = 0  # an unknown target has no cluster, not the unknown behaviours' one
    batch.seq.rows[1, -3:] = 0  # unknown items among the real behaviours of the full sample 1
    idx, valid = gsu(model, batch)
    assert not valid[1].any()
    for b in range(B):
        c = labels[batch.target[b]]
        same = [p for p in range(L) if batch.seq.mask[b, p] and labels[batch.seq.rows[b, p]] == c and c >= 0]
        assert picks(idx, valid, b) == latest(same)


def test_sim_cluster_and_plus_read_their_own_cluster_count_from_the_config():
    assert (CFG.sim_cluster.n_clusters, CFG.sim_cluster_plus.n_clusters) == (1_000, 10_000)  # paper §4.1
    cfg = replace(CFG, sim_cluster=SIMClusterConfig(n_clusters=3), sim_cluster_plus=SIMClusterPlusConfig(n_clusters=6))
    for cls, k in ((SIMCluster, 3), (SIMClusterPlus, 6)):
        labels = build(cls, cfg=cfg).cluster_of.numpy()
        assert set(labels[1:]) == set(range(k)), cls


def test_model_hyper_parameters_are_checked_when_configured():
    with pytest.raises(ValueError, match="n_bits"):
        ETAConfig(n_bits=0)
    with pytest.raises(ValueError, match="n_bits=9"):
        SDIMConfig(n_bits=9)
    with pytest.raises(ValueError, match="n_clusters=0"):
        SIMClusterConfig(n_clusters=0)


def test_sim_cluster_rejects_bad_vectors_and_an_unprepared_model():
    torch.manual_seed(0)
    model = SIMCluster(TABLES, CFG, BUCKETS)
    with pytest.raises(RuntimeError, match="prepare"):
        model(make_batch())
    with pytest.raises(ValueError, match=r"\(37, D\)"):
        model.prepare(VECTORS[1:])
    bad = VECTORS.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.prepare(bad)


def head(batch: Batch, n: int) -> Batch:
    seq = batch.seq
    return Batch(target=batch.target[:n], seq=Seq(rows=seq.rows[:n], cross=seq.cross[:n], mask=seq.mask[:n]),
                 label=batch.label[:n], user_id=batch.user_id[:n], ts=batch.ts[:n])


@pytest.mark.parametrize("cls", [SIMSoft, ETA, SDIM, TWIN])
def test_unique_item_and_gather_paths_equal_the_every_item_matmul_path(cls, monkeypatch):
    # The reference tests above run with every item scored by one matmul (I <= B L); 4 samples have fewer
    # positions than items (unique-item path), and a zero threshold forces the per-position gather.
    model = build(cls).eval()
    batch = make_batch(seed=16)
    small = head(batch, 4)
    assert small.seq.rows.numel() < I <= batch.seq.rows.numel()
    with torch.no_grad():
        want = model(batch)[:4]
        got = [model(small)]
        monkeypatch.setattr(search, "MATMUL_ITEMS_PER_POSITION", 0)
        got += [model(small), model(batch)[:4]]
    for g in got:
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-6)


# ---- SDIM --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_hashes, n_bits", [(48, 3), (5, 2)])
def test_sdim_equals_a_per_sample_per_hash_loop(n_hashes, n_bits):
    model = build(SDIM, cfg=replace(CFG, sdim=SDIMConfig(n_hashes=n_hashes, n_bits=n_bits)))
    batch = make_batch(seed=14)
    target = model.items(batch.target)
    out = model.long_term(batch, target)
    with torch.no_grad():
        e = model.items(batch.seq.rows).double().numpy()  # (B, L, D)
        t = target.double().numpy()
        planes = model.lsh.double().numpy()
        w_v = model.value.weight.double().numpy()
    want = np.zeros((B, D))
    hits = []
    for b in range(B):
        for h in range(n_hashes):
            cols = planes[:, h * n_bits:(h + 1) * n_bits]
            code_t = tuple(t[b] @ cols > 0)
            coll = [p for p in range(L) if batch.seq.mask[b, p] and tuple(e[b, p] @ cols > 0) == code_t]
            hits.append(len(coll))
            if coll:
                want[b] += e[b, coll].mean(0) / n_hashes
    want = want @ w_v.T
    assert 0 in hits and max(hits) >= 2  # the data exercises both empty and multi-behaviour buckets
    torch.testing.assert_close(out.double(), torch.from_numpy(want), rtol=1e-5, atol=1e-6)


def test_sdim_chunking_does_not_change_the_interest():
    model = build(SDIM)
    batch = make_batch(seed=15)
    target = model.items(batch.target)
    whole = model.long_term(batch, target)
    model.cfg = ModelConfig(dim=D, attention=AttentionConfig(dim=D, heads=3, head_dim=5, out_dim=11, top_k=K,
                                                             gsu_chunk=2))
    torch.testing.assert_close(model.long_term(batch, target), whole)
