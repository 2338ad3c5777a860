"""The compiled GSU (models/native.py) against the torch path it replaces, and the cached item table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twinv2.models import native, search
from twinv2.models.frame import ItemFeatures, ItemTables

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the torch path runs instead")


def _torch_path(fn, *args):
    saved, native._lib = native._lib, False
    try:
        return fn(*args)
    finally:
        native._lib = saved


def _case(rng: torch.Generator, trial: int):
    """Integer-valued inputs, so both paths' sums are exact and ties are real ties."""
    B, L, D, U = (int(torch.randint(lo, hi, (), generator=rng)) for lo, hi in ((1, 6), (1, 200), (1, 37), (1, 40)))
    k = int(torch.randint(1, L + 20, (), generator=rng))  # also k > L and k > the valid count
    sizes = (5, 7, 3)[: trial % 4]
    table = torch.randint(-3, 4, (U, D), generator=rng).float()
    u = torch.randint(-2, 3, (B, D), generator=rng).float()
    rows = torch.randint(0, U, (B, L), generator=rng).to(torch.int32 if trial % 2 else torch.int64)
    tables = [torch.randint(-4, 5, (n,), generator=rng).float() for n in sizes]
    cross = torch.stack([torch.randint(0, n, (B, L), generator=rng) for n in sizes], -1) if sizes \
        else torch.zeros(B, L, 0, dtype=torch.long)
    log_n = torch.randint(0, 3, (B, L), generator=rng).float() if trial % 3 else None
    mask = torch.rand(B, L, generator=rng) < 0.7
    if trial % 5 == 0:
        mask[0] = False  # a sample with no valid element
    return u, table, rows, mask, k, 64, cross, tables, log_n


def test_scores_and_picks_equal_the_torch_path_exactly():
    rng = torch.Generator().manual_seed(0)
    for trial in range(200):
        args = _case(rng, trial)
        mask = args[3]
        assert torch.equal(search.relevance(*args[:4], *args[5:]), _torch_path(search.relevance, *args[:4], *args[5:]))
        idx, valid = search.select(*args)
        ref_idx, ref_valid = _torch_path(search.select, *args)
        assert idx.dtype == torch.int64 and idx.shape == ref_idx.shape
        assert torch.equal(valid, ref_valid)
        # valid picks: the same positions in the same order; which padding fills the rest is unspecified
        assert torch.equal(idx[valid], ref_idx[ref_valid])
        assert bool(mask.gather(1, idx)[valid].all())


def test_float_scores_agree_to_rounding_at_realistic_shapes():
    g = torch.Generator().manual_seed(1)
    B, L, D, U = 7, 3_000, 32, 5_000
    u, table = torch.randn(B, D, generator=g), torch.randn(U, D, generator=g)
    rows = torch.randint(0, U, (B, L), generator=g, dtype=torch.int32)
    cross = torch.randint(0, 9, (B, L, 2), generator=g, dtype=torch.int32)
    tables = [torch.randn(9, generator=g), torch.randn(9, generator=g)]
    log_n = torch.rand(B, L, generator=g)
    mask = torch.rand(B, L, generator=g) < 0.9
    args = (u, table, rows, mask, 64, cross, tables, log_n)
    a, b = search.relevance(*args), _torch_path(search.relevance, *args)
    assert torch.equal(torch.isinf(a), ~mask) and torch.equal(torch.isinf(b), ~mask)
    torch.testing.assert_close(a[mask], b[mask], rtol=1e-5, atol=1e-5)
    idx, valid = search.select(u, table, rows, mask, 100, 64, cross, tables, log_n)
    ref = torch.topk(a, 100, dim=1).indices  # distinct float scores: the plain top-100 of its own scores
    assert torch.equal(idx, ref) and bool(valid.all())


def test_refuses_mismatched_cross_columns():
    u, table = torch.zeros(2, 4), torch.zeros(3, 4)
    rows, mask = torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="do not fit"):
        search.select(u, table, rows, mask, 3, 64, torch.zeros(2, 5, 1, dtype=torch.long), [torch.zeros(2)] * 2)


def test_item_table_cache_follows_every_change():
    rng = np.random.default_rng(0)
    feats = ItemFeatures(ItemTables(author_of=np.r_[0, rng.integers(1, 5, 29)], tag_of=np.r_[0, rng.integers(1, 4, 29)],
                                    dur_of=np.r_[0, rng.integers(1, 6, 29)], n_authors=5, n_tags=4, n_dur=6), dim=3)
    rows = torch.arange(30)
    with torch.no_grad():
        first = feats.every_item()
        assert feats.every_item() is first  # unchanged tables: the kept table
        torch.testing.assert_close(first, feats(rows), rtol=0, atol=0)
    opt = torch.optim.SparseAdam([feats.emb.author.weight], lr=0.1)
    feats(rows[:7]).sum().backward()
    opt.step()  # an in-place update of one table
    with torch.no_grad():
        after = feats.every_item()
        assert after is not first
        torch.testing.assert_close(after, feats(rows), rtol=0, atol=0)
        feats.dur.weight.add_(1.0)
        torch.testing.assert_close(feats.every_item(), feats(rows), rtol=0, atol=0)
    assert feats.every_item().requires_grad  # with gradient: built afresh, never the kept one


def test_item_table_in_evaluation_gathers_the_kept_table_bit_for_bit():
    """In evaluation a small batch's unique items come from the kept every-item table (issue 12): the same
    vectors, bit for bit, as embedding them; in training (or with gradient) they are embedded, so gradients
    stay sparse and the table is never built for a few rows."""
    rng = np.random.default_rng(1)
    feats = ItemFeatures(ItemTables(author_of=np.r_[0, rng.integers(1, 5, 29)], tag_of=np.r_[0, rng.integers(1, 4, 29)],
                                    dur_of=np.r_[0, rng.integers(1, 6, 29)], n_authors=5, n_tags=4, n_dur=6), dim=3)
    torch.nn.init.normal_(feats.dur.weight)
    rows = torch.tensor([[3, 7, 3], [29, 0, 7]], dtype=torch.int32)  # (2, 3): 6 positions < 30 items
    with torch.no_grad():
        feats.eval()
        table, inv = search.item_table(feats, rows)
        assert table.shape[0] == 4 and "_every" in feats.__dict__
        torch.testing.assert_close(table[inv], feats(rows.long()), rtol=0, atol=0)
        feats.train()
        feats.__dict__.pop("_every")
        table, inv = search.item_table(feats, rows)
        assert "_every" not in feats.__dict__
        torch.testing.assert_close(table[inv], feats(rows.long()), rtol=0, atol=0)
