"""TWIN + TWIN-V2, the deployed pair (models/twin_pair.py), on mismatched tiny dims (B=13, L=7 clusters and raw
behaviours, D=32, H=3, d=5, out 11): its long-term interest is a TWIN-V2 over the clusters beside a TWIN over
the recent raw behaviours, each with its own weights; it starts from the mean of the two; serving equals the
offline forward."""

from __future__ import annotations

import torch

from tests.models.test_baselines import BUCKETS, CFG, TABLES, B, make_batch
from tests.models.test_short_term import S, SHORT, build, clusters_batch
from twinv2.models.batch import Batch, Seq
from twinv2.models.registry import build_model
from twinv2.models.twin_pair import TWINPair
from twinv2.train.zero_shot import reference_model, zero_shot_scores


def with_recent(seed: int = 0) -> Batch:
    batch, raw = clusters_batch(seed)
    batch.recent = raw
    return batch


def twins_of(pair: TWINPair):
    """A TWIN-V2 and a TWIN holding the pair's item tables and, each, one of its two attentions."""
    v2, tw = build("twin_v2"), build("twin")
    for m, attn in ((v2, pair.attn), (tw, pair.raw_attn)):
        m.items.load_state_dict(pair.items.state_dict())
        m.attn.load_state_dict(attn.state_dict())
    return v2, tw


def test_the_pair_is_twin_v2_over_clusters_beside_twin_over_the_recent_behaviours():
    pair = build("twin_pair")
    assert isinstance(pair, TWINPair) and pair.sequence == "clusters" and pair.recent_len == pair.raw_len > S
    assert pair.interest_dim == 2 * CFG.attention.out_dim
    with torch.no_grad():
        for p in pair.raw_attn.parameters():  # its own weights, not TWIN-V2's
            p.add_(0.1 * torch.randn_like(p))
    batch = with_recent(1)
    v2, tw = twins_of(pair)
    with torch.no_grad():
        target = pair.items(batch.target)
        got = pair.long_term(batch, target)
        raw = Batch(target=batch.target, seq=batch.recent, label=batch.label, user_id=batch.user_id, ts=batch.ts)
        want = torch.cat([v2.long_term(batch, target), tw.long_term(raw, target)], dim=-1)
    torch.testing.assert_close(got, want)
    assert got[:, CFG.attention.out_dim:].abs().sum() > 0


def test_without_recent_behaviours_the_twin_part_is_zero_and_the_rest_is_twin_v2():
    pair = build("twin_pair")
    batch = with_recent(2)
    batch.recent = None
    v2, _ = twins_of(pair)
    with torch.no_grad():
        target = pair.items(batch.target)
        got = pair.long_term(batch, target)
        torch.testing.assert_close(got[:, :CFG.attention.out_dim], v2.long_term(batch, target))
    assert torch.count_nonzero(got[:, CFG.attention.out_dim:]) == 0


def test_the_pair_starts_from_the_mean_of_its_two_interests():
    """The bridge starts as [I, I] / 2: the step-0 match and the zero-shot reference read (life + months) / 2."""
    pair = build("twin_pair")
    batch = with_recent(3)
    with torch.no_grad():
        target = pair.items(batch.target)
        both = pair.long_term(batch, target)
        o = CFG.attention.out_dim
        mean = torch.zeros(B, CFG.dim)
        mean[:, :o] = (both[:, :o] + both[:, o:]) / 2  # out 11 < D 32: the rectangular identity's columns
        torch.testing.assert_close(pair.bridge(both), mean)
        ref = zero_shot_scores(reference_model(pair), batch)
        torch.testing.assert_close(ref, torch.nn.functional.cosine_similarity(target, mean, dim=-1, eps=1e-12))


def test_serving_scores_equal_the_offline_forward():
    torch.manual_seed(4)
    pair = build_model("twin_pair", TABLES, SHORT, BUCKETS)
    with torch.no_grad():  # away from the neutral start, so every part counts (in place: the kept item table
        for p in pair.parameters():  # follows, as after an optimizer step; `.data` writes would not bump it)
            p.add_(0.05 * torch.randn_like(p))
    pair.eval()
    batch = with_recent(5)
    u, N = 1, 6  # one user (a full history), six candidates
    seq, recent = batch.seq, batch.recent
    one = Seq(rows=seq.rows[u:u + 1], cross=seq.cross[u:u + 1], mask=seq.mask[u:u + 1], log_n=seq.log_n[u:u + 1])
    mine = Seq(rows=recent.rows[u:u + 1], cross=recent.cross[u:u + 1], mask=recent.mask[u:u + 1])
    cand = make_batch(6).target[:N]
    offline = Batch(target=cand, seq=Seq(rows=one.rows.expand(N, -1), cross=one.cross.expand(N, -1, -1),
                                         mask=one.mask.expand(N, -1), log_n=one.log_n.expand(N, -1)),
                    label=torch.zeros(N), user_id=torch.zeros(N, dtype=torch.long),
                    ts=torch.zeros(N, dtype=torch.long),
                    recent=Seq(rows=mine.rows.expand(N, -1), cross=mine.cross.expand(N, -1, -1),
                               mask=mine.mask.expand(N, -1)))
    with torch.no_grad():
        want = pair(offline)
        got = pair.score(pair.precompute(), cand, one, None, recent=mine)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
