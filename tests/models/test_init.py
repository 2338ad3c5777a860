"""Learning from the first step (issue 11): at step 0, started from pre-trained vectors, the GSUs rank by the
pre-trained cosine, the cross features and ln n are the only other say, the output maps are neutral, and the
zero-shot reference is the cosine with the model's own retrieved interest. Mismatched tiny dims on purpose."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinv2.models.attention import AttentionConfig
from twinv2.models.batch import Batch, Seq
from twinv2.models.frame import ItemTables, ModelConfig
from twinv2.models.registry import build_model
from twinv2.train.zero_shot import reference_model, zero_shot_scores

I, D, H, d, K = 41, 24, 3, 10, 5  # H·d = 30 >= D: the tied init is exact
B, L = 13, 9
BUCKETS = [6, 9, 4]
CFG = ModelConfig(dim=D, attention=AttentionConfig(dim=D, heads=H, head_dim=d, out_dim=D, top_k=K))


def tables() -> ItemTables:
    rng = np.random.default_rng(0)
    return ItemTables(author_of=np.r_[0, rng.integers(1, 5, I - 1)], tag_of=np.r_[0, rng.integers(1, 4, I - 1)],
                      dur_of=np.r_[0, rng.integers(1, 7, I - 1)], n_authors=5, n_tags=4, n_dur=7)


def vectors(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(I, D)) * rng.uniform(0.3, 3.0, size=(I, 1))  # norms vary: cosine is not the dot
    return v.astype(np.float32)


def batch(seed: int = 2, clusters: bool = False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(K + 1, L + 1, (B,), generator=g)
    mask = torch.arange(L)[None, :] >= (L - lengths)[:, None]  # (B, L) left-padded
    rows = torch.randint(1, I, (B, L), generator=g) * mask
    cross = torch.stack([torch.randint(1, n, (B, L), generator=g) for n in BUCKETS], -1) * mask[..., None]
    log_n = (torch.randint(1, 20, (B, L), generator=g).float().log() * mask) if clusters else None
    return Batch(target=torch.randint(1, I, (B,), generator=g), seq=Seq(rows=rows, cross=cross, mask=mask,
                 log_n=log_n), label=torch.zeros(B), user_id=torch.arange(B), ts=torch.zeros(B, dtype=torch.long))


def started(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(name, tables(), CFG, BUCKETS, item_vectors=vectors(7))
    model.load_pretrained(vectors())
    return model.eval()


def cosine_to_target(b: Batch) -> torch.Tensor:
    v = torch.from_numpy(vectors())
    return torch.nn.functional.cosine_similarity(v[b.target][:, None], v[b.seq.rows], dim=-1)  # (B, L)


def kept_sets(model, b: Batch) -> list[set[int]]:
    with torch.no_grad():
        target = model.items(b.target)
        idx, valid = model.gsu(b, target, model.attn.query(target))
    return [set(i[v].tolist()) for i, v in zip(idx, valid)]


def want_sets(score: torch.Tensor, mask: torch.Tensor) -> list[set[int]]:
    s = score.masked_fill(~mask, float("-inf"))
    return [set(r.topk(K).indices.tolist()) for r in s]


@pytest.mark.parametrize("name", ["twin", "sim_soft"])
def test_step0_gsu_ranks_by_the_pretrained_cosine(name):
    b = batch()
    assert kept_sets(started(name), b) == want_sets(cosine_to_target(b), b.seq.mask)


def test_step0_twin_v2_gsu_is_temperature_times_cosine_plus_ln_n():
    b = batch(clusters=True)
    kappa = CFG.attention.init_temperature
    want = want_sets(kappa * cosine_to_target(b) + b.seq.log_n, b.seq.mask)
    assert kept_sets(started("twin_v2"), b) == want
    # ...and without ln n it would be a different selection on this batch (the test can tell them apart)
    assert want != want_sets(cosine_to_target(b), b.seq.mask)


def test_step0_attention_item_term_dominates_and_cross_is_silent():
    m = started("twin")
    attn = m.attn
    assert float(attn.beta.detach().abs().max()) == 0.0 and float(attn.w_vc.weight.detach().abs().max()) == 0.0
    e = m.items.every_item()[1:]  # (I-1, D)
    q = attn.query(e)  # (I-1, H, d)
    u = q.reshape(len(e), -1) @ attn.w_h.weight / H  # (I-1, D): head-mean query
    got = u @ e.T  # (I-1, I-1) head-mean item term
    cos = torch.nn.functional.cosine_similarity(e[:, None], e[None], dim=-1)
    torch.testing.assert_close(got, CFG.attention.init_temperature * cos, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["avg_pooling", "sdim"])
def test_step0_output_maps_are_the_identity(name):
    m = started(name)
    assert torch.equal(m.bridge.weight, torch.eye(D))
    if name == "sdim":
        assert torch.equal(m.value.weight, torch.eye(D))


def test_zero_shot_reference_of_avg_pooling_is_the_cosine_with_the_mean_history():
    m = started("avg_pooling")
    b = batch()
    got = zero_shot_scores(reference_model(m), b)
    e = m.items.every_item()
    mean = (e[b.seq.rows] * b.seq.mask[..., None]).sum(1) / b.seq.mask.sum(1, keepdim=True)  # (B, D)
    want = torch.nn.functional.cosine_similarity(e[b.target], mean, dim=-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_zero_shot_reference_is_frozen_at_step_0():
    m = started("twin").train()
    ref = reference_model(m)
    b = batch()
    before = zero_shot_scores(ref, b)
    with torch.no_grad():
        m.items.emb.item.weight.mul_(-1.0)  # training moves the live model...
    torch.testing.assert_close(zero_shot_scores(ref, b), before)  # ...never the reference
    assert not any(p.requires_grad for p in ref.parameters())
