"""The frame's short-term interest (ModelConfig.short_len): a target attention over the latest S raw
behaviours beside every long-sequence model's long-term module, on mismatched tiny dims (B=13, L=7, S=3,
D=32, H=3, d=5, out 11)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.models.test_baselines import BUCKETS, CFG, TABLES, B, L, make_batch
from twinv2.models.batch import Batch, Seq
from twinv2.models.registry import MODELS, build_model
from twinv2.models.search import item_table

S = 3
SHORT = replace(CFG, short_len=S)


def build(name: str, cfg=SHORT, seed: int = 0):
    torch.manual_seed(seed)
    from tests.models.test_baselines import VECTORS
    return build_model(name, TABLES, cfg, BUCKETS, item_vectors=VECTORS)


def clusters_batch(seed: int = 0) -> tuple[Batch, Seq]:
    """A clusters batch (log_n set) and, separately, raw recent behaviours of the same samples."""
    raw = make_batch(seed, copies=False).seq
    clusters = make_batch(seed + 1).seq
    clusters.log_n = torch.rand(B, L) * clusters.mask
    b = make_batch(seed + 1)
    return Batch(target=b.target, seq=clusters, label=b.label, user_id=b.user_id, ts=b.ts), raw


def test_which_models_read_a_short_term():
    for name in MODELS:
        m = build(name)
        expect = name not in ("din", "avg_pooling")  # their own sequence is the recent 100
        assert (m.short_len == S) == expect, name
        assert hasattr(m, "short") == expect
    assert build("twin", replace(CFG, short_len=0)).short_len == 0
    with pytest.raises(ValueError, match="short_len=-1"):
        replace(CFG, short_len=-1)


def test_the_short_term_is_the_attention_over_the_last_S_behaviours():
    m = build("twin")
    batch = make_batch(2)
    target = m.items(batch.target)
    seq = batch.seq
    table, rows = item_table(m.items, seq.rows[:, -S:])
    ref = m.short.esu(m.short.query(target), table, rows, seq.cross[:, -S:], None, seq.mask[:, -S:])
    torch.testing.assert_close(m.short_interest(seq, target), ref)
    # Changing a behaviour older than the last S leaves it alone; changing one of the last S does not.
    older = Seq(rows=seq.rows.clone(), cross=seq.cross, mask=seq.mask)
    older.rows[1, 0] = (older.rows[1, 0] % 30) + 1
    torch.testing.assert_close(m.short_interest(older, target), ref)
    newer = Seq(rows=seq.rows.clone(), cross=seq.cross, mask=seq.mask)
    newer.rows[1, -1] = (newer.rows[1, -1] % 30) + 1
    assert not torch.allclose(m.short_interest(newer, target)[1], ref[1])


def test_a_neutral_start_ranks_as_without_the_short_term():
    """At step 0 (tower output layer at zero, short match weight 0) the short term adds nothing: the zero-shot
    reference and the step-0 ranking stay those of the long-term match."""
    with_short, without = build("twin"), build("twin", replace(CFG, short_len=0))
    without.load_state_dict({k: v for k, v in with_short.state_dict().items()
                             if not k.startswith(("short", "tower.0"))}, strict=False)
    without.tower[0].weight.data.copy_(with_short.tower[0].weight.data[:, :without.tower[0].in_features])
    batch = make_batch(3)
    with torch.no_grad():
        torch.testing.assert_close(with_short(batch), without(batch))
    assert float(with_short.short_match.detach()) == 0.0


def test_a_clusters_model_reads_batch_recent_and_none_means_no_behaviours():
    m = build("twin_v2")
    batch, raw = clusters_batch(4)
    with torch.no_grad():
        none = m(batch)
        empty = Batch(**{**batch.__dict__, "recent": Seq(rows=torch.zeros(B, 1, dtype=torch.long),
                                                         cross=torch.zeros(B, 1, len(BUCKETS), dtype=torch.long),
                                                         mask=torch.zeros(B, 1, dtype=torch.bool))})
        torch.testing.assert_close(m(empty), none)  # None = an all-padding short term
        m.short_match.fill_(0.7)  # a trained model reads it
        given = m(Batch(**{**batch.__dict__, "recent": raw}))
        assert not torch.allclose(given, m(batch))
    with pytest.raises(ValueError, match="raw behaviours"):
        m.short_interest(batch.seq, m.items(batch.target))


def test_the_short_term_learns_from_the_first_step():
    m = build("twin")
    batch = make_batch(5)
    batch.label = (torch.arange(B) % 2).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(m(batch), batch.label)
    loss.backward()
    assert float(m.short_match.grad.abs()) > 0  # the short match weight moves at once (it starts at 0)
    assert float(m.tower[-1].weight.grad.abs().sum()) > 0  # and the silent tower starts to listen
