"""Target attention: top-k with K >= C equals full attention, ln n equals an n-weighted softmax, padding is
never chosen, and deliberately mismatched tiny dims so a swapped axis fails."""

from __future__ import annotations

import math

import pytest
import torch

from twinv2.models.attention import AttentionConfig, TargetAttention

B, L, D, H, d, J, OUT = 13, 7, 32, 3, 5, 2, 11
BUCKETS = [6, 9]


def make(top_k=100, **kw):
    torch.manual_seed(0)
    cfg = AttentionConfig(dim=D, heads=H, head_dim=d, out_dim=OUT, top_k=top_k, **kw)
    return TargetAttention(cfg, BUCKETS)


def inputs(seed=1, pad_from=None):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(B, D, generator=g)
    items = torch.randn(B, L, D, generator=g)
    cross = torch.stack([torch.randint(0, n, (B, L), generator=g) for n in BUCKETS], -1)
    n = torch.randint(1, 20, (B, L), generator=g).float()
    mask = torch.ones(B, L, dtype=torch.bool)
    if pad_from is not None:
        mask[:, pad_from:] = False
    return target, items, cross, n, mask


def reference(attn: TargetAttention, target, items, cross, n, mask, use_n=True):
    """Plain per-head loop: softmax weights n·exp(α) / Σ n·exp(α) over valid positions (Eq. 10–11)."""
    q = attn.w_q(target).view(B, H, d)
    k = attn.w_h(items).view(B, L, H, d)
    cross_emb = [emb(cross[..., j]) for j, emb in enumerate(attn.cross)]
    v = (attn.w_v(items) + attn.w_vc(torch.cat(cross_emb, -1))).view(B, L, H, d)  # [K_h, K_c] W^v
    heads = []
    for h in range(H):
        alpha = (k[:, :, h] * q[:, None, h]).sum(-1) / math.sqrt(d)  # (B, L)
        for j in range(J):
            alpha = alpha + attn.beta[h, j] * (cross_emb[j] @ attn.w_c[h, j])
        weight = torch.exp(alpha) * (n if use_n else 1.0) * mask
        weight = weight / weight.sum(1, keepdim=True)
        heads.append((weight.unsqueeze(-1) * v[:, :, h]).sum(1))  # (B, d)
    return attn.w_o(torch.cat(heads, -1))


def run(attn, target, items, cross, n, mask, with_n=True):
    q = attn.query(target)
    table = items.reshape(B * L, D)  # every position its own "item"
    rows = torch.arange(B * L).view(B, L)
    log_n = n.log() if with_n else None
    idx, valid = attn.gsu_topk(q, table, rows, cross, log_n, mask)
    g = lambda x: x.gather(1, idx)  # noqa: E731
    sel_cross = cross.gather(1, idx.unsqueeze(-1).expand(-1, -1, J))
    return attn.esu(q, table, rows.gather(1, idx), sel_cross, None if log_n is None else g(log_n),
                    valid & g(mask)), idx, valid


def test_shapes_with_mismatched_dims():
    attn = make()
    out, idx, valid = run(attn, *inputs())
    assert out.shape == (B, OUT) and idx.shape == (B, L) and valid.dtype == torch.bool


def test_topk_with_k_at_least_c_equals_full_attention_with_log_n():
    attn = make(top_k=L + 5)
    t, items, cross, n, mask = inputs()
    out, _, _ = run(attn, t, items, cross, n, mask)
    torch.testing.assert_close(out, reference(attn, t, items, cross, n, mask), rtol=1e-5, atol=1e-5)


def test_esu_and_its_gradients_equal_the_per_position_reference():
    """The ESU projects once per item and gathers projections and per-bucket cross rows by index_select (issue
    12); its output and every gradient (the item table's, each parameter's) equal the plain per-position
    computation, with 4 items repeated over the B·L positions so the gathers' backward sums duplicates."""
    attn = make(top_k=L)
    t, _, cross, n, mask = inputs(seed=5)
    mask[2, 3:] = False
    g = torch.Generator().manual_seed(6)
    table = torch.randn(4, D, generator=g, requires_grad=True)  # (U, D)
    rows = torch.randint(0, 4, (B, L), generator=g)  # (B, L) into it
    out = attn.esu(attn.query(t), table, rows, cross, n.log(), mask)
    ref = reference(attn, t, table[rows], cross, n, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn(B, OUT, generator=g)
    wrt = [table, *attn.parameters()]
    for got, want in zip(torch.autograd.grad((out * w).sum(), wrt), torch.autograd.grad((ref * w).sum(), wrt),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_without_log_n_equals_plain_softmax():
    attn = make(top_k=L, log_n_esu=False, log_n_gsu=False)
    t, items, cross, n, mask = inputs(seed=3)
    out, _, _ = run(attn, t, items, cross, n, mask)
    torch.testing.assert_close(out, reference(attn, t, items, cross, n, mask, use_n=False), rtol=1e-5, atol=1e-5)


def test_log_n_is_an_n_weighted_softmax_with_padding():
    attn = make(top_k=L)
    t, items, cross, n, mask = inputs(seed=4, pad_from=4)
    out, _, _ = run(attn, t, items, cross, n, mask)
    torch.testing.assert_close(out, reference(attn, t, items, cross, n, mask), rtol=1e-5, atol=1e-5)


def test_padding_never_enters_topk_even_with_huge_scores():
    attn = make(top_k=3)
    t, items, cross, n, mask = inputs(seed=5)
    mask[:, :L - 2] = False  # only 2 valid positions per sample; K = 3
    items[:, :L - 2] *= 1000  # padded positions would dominate any unmasked score
    n[:, :L - 2] = 1e6
    _, idx, valid = run(attn, t, items, cross, n, mask)
    chosen_valid = idx[valid]
    assert valid.sum(1).tolist() == [2] * B
    assert (chosen_valid >= L - 2).all()


def test_all_padding_gives_zero_interest_not_nan():
    attn = make(top_k=4)
    t, items, cross, n, mask = inputs(seed=6)
    mask[:] = False
    out, _, valid = run(attn, t, items, cross, n, mask)
    assert not valid.any()
    assert torch.isfinite(out).all() and out.abs().max() == 0


def test_gsu_choice_uses_log_n():
    t, items, cross, n, mask = inputs(seed=7)
    n[:] = 1.0
    off = make(top_k=1, log_n_gsu=False)
    _, best, _ = run(off, t, items, cross, n, mask)  # argmax of α alone
    other = (best[:, 0] + 1) % L
    n[torch.arange(B), other] = 1e30  # ln n = 69 outweighs any α gap here
    _, idx_on, _ = run(make(top_k=1), t, items, cross, n, mask)
    _, idx_off, _ = run(off, t, items, cross, n, mask)
    assert (idx_on[:, 0] == other).all()
    assert (idx_off[:, 0] == best[:, 0]).all()


def test_gsu_chunking_does_not_change_choice():
    t, items, cross, n, mask = inputs(seed=8)
    a1 = make(top_k=3, gsu_chunk=1)
    a2 = make(top_k=3, gsu_chunk=64)
    torch.testing.assert_close(run(a1, t, items, cross, n, mask)[0], run(a2, t, items, cross, n, mask)[0])


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="AttentionConfig.top_k must be >= 1, got 0"):
        AttentionConfig(top_k=0)


def test_gsu_ties_go_to_the_later_position():
    """The GSU keeps exact ties deterministically (search.topk_exact): the later, more recent, position."""
    attn = make(top_k=2)
    t, items, cross, n, mask = inputs(seed=9)
    items[:] = items[:, :1]  # every position the same element: all scores tie
    cross[:] = cross[:, :1]
    n[:] = 3.0
    _, idx, valid = run(attn, t, items, cross, n, mask)
    assert idx.tolist() == [[L - 1, L - 2]] * B and valid.all()


@pytest.mark.parametrize("k", [1, 5, 40, 57, 60])
def test_topk_exact_equals_brute_force_with_many_ties(k):
    """Scores on a coarse grid (ties everywhere, also across the k-th value), padding, -0.0 and +0.0."""
    from twinv2.models.search import topk_exact

    g = torch.Generator().manual_seed(11)
    score = torch.randint(-3, 4, (B, 57), generator=g).float() / 2  # (B, 57)
    score[0, :10] = -0.0
    mask = torch.rand(B, 57, generator=g) > 0.2
    mask[1] = False
    idx, valid = topk_exact(score, mask, k)
    for b in range(B):
        want = sorted((p for p in range(57) if mask[b, p]), key=lambda p: (-float(score[b, p]), -p))[:k]
        assert idx[b][valid[b]].tolist() == want
    idx_all, valid_all = topk_exact(score, None, k)
    assert valid_all.all() and idx_all[2].tolist() == sorted(range(57), key=lambda p: (-float(score[2, p]), -p))[:k]
