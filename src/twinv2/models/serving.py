"""Serving math of the target-attention models (TWIN, TWIN-V2, paper §3.4): one user's sequence of C elements
against N candidates with the item-only parts cached per item (`TWIN.precompute`), equal to the offline
forward (`TWIN.score`; tests/serve/test_scorer.py checks 1e-5). serve/ only holds and swaps the cache.

1. GSU: the head mean of α' is e · u with u = Σ_h W^h_hᵀ q_h / H (as attention.gsu_scores), so relevance is one
   (N, D) × (D, C) product plus a per-element bias (head-mean cross scalars and ln n, Eq. 10) shared by all
   candidates (same user, same time); the top K per candidate by search.topk_exact, the offline selection.
2. ESU: softmax(α') over each candidate's picks (Eq. 11). One request's candidates mostly keep the same
   elements, so when their union U is small it is two dense products per head over U with the cached keys,
   values and cross terms; a large union runs the offline ESU itself (attention.esu) over the U elements.
An empty sequence gives a zero interest, as the offline ESU's all-padding softmax does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from twinv2.models.attention import TargetAttention, bucket_sum
from twinv2.models.batch import Seq
from twinv2.models.search import topk_exact

# The ESU runs dense over the union U of kept elements when U <= max(MIN, FRACTION · N · K). Measured at
# N = 200, K = 100 on 2 threads: 1.9 ms at U = 300 (typical: one user's candidates keep mostly the same
# clusters, U ~ 310 in `twinv2 bench serve`), 5.2 ms at 1,000, 11.5 ms at 2,500; a per-pick gather was about
# 9 ms at any U, attention.esu about twice that (measured under load), for the rare large unions only.
DENSE_UNION_MIN = 512
DENSE_UNION_FRACTION = 0.1


@dataclass(frozen=True)
class ItemCache:
    """What a request needs that depends only on the model: per item row and per cross-feature bucket.
    Memory: I · (D + 2·H·d) · 4 bytes (160 floats per item at the defaults: 640 MB for a million items)."""

    items: torch.Tensor  # (I, D) inherent embeddings e(item) = K_h
    keys: torch.Tensor  # (I, H, d) K_h W^h
    values: torch.Tensor  # (I, H, d) K_h W^v_h
    cross_attn: tuple[torch.Tensor, ...]  # per feature j: (n_j, H) β_h,j (E_j[b] · w_h,j)
    cross_gsu: tuple[torch.Tensor, ...]  # per feature j: (n_j,) the same averaged over heads
    cross_value: tuple[torch.Tensor, ...]  # per feature j: (n_j, H·d) E_j[b] W^v_c,j

    @property
    def heads(self) -> int:
        return self.keys.shape[1]

    @property
    def head_dim(self) -> int:
        return self.keys.shape[2]


@torch.no_grad()
def item_cache(attn: TargetAttention, items: torch.Tensor) -> ItemCache:
    """The cache for inherent embeddings `items` (I, D) of every item row."""
    cross_attn = tuple(t.contiguous() for t in attn.cross_scalars())  # (n_j, H) each
    return ItemCache(items=items.contiguous(), keys=attn.keys(items).contiguous(),
                     values=attn.item_values(items).contiguous(), cross_attn=cross_attn,
                     cross_gsu=tuple(t.mean(-1).contiguous() for t in cross_attn),
                     cross_value=tuple(t.contiguous() for t in attn.cross_values()))


def _esu_dense(attn: TargetAttention, cache: ItemCache, q: torch.Tensor, rows: torch.Tensor, cross: torch.Tensor,
               log_n: torch.Tensor | None, union: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    """Heads (N, H, d): α' of every candidate for every element of U by one product per head, picked at the
    candidate's own K elements (`inv` (N, K) into U), softmax, then the weights spread back over U times the
    values. Weights of elements a candidate did not keep are exact zeros, so they add nothing."""
    N, K = inv.shape
    H, d = attn.cfg.heads, attn.cfg.head_dim
    U = union.shape[0]
    r = rows.index_select(0, union)  # (U,) item rows
    keys = cache.keys.index_select(0, r)  # (U, H, d)
    values = cache.values.index_select(0, r).view(U, H * d)  # (U, H·d)
    bias = torch.zeros(U, H)  # (U, H)
    if attn.n_cross:
        c = cross.index_select(0, union)  # (U, J)
        bias += bucket_sum(cache.cross_attn, c)
        values = values + bucket_sum(cache.cross_value, c)  # [K_h, K_c] W^v = K_h W^v_h + K_c W^v_c
    if log_n is not None and attn.cfg.log_n_esu:
        bias += log_n.index_select(0, union)[:, None]
    a = torch.bmm(q.transpose(0, 1), keys.permute(1, 2, 0))  # (H, N, U)
    a += bias.T.unsqueeze(1)
    pick = inv.unsqueeze(0).expand(H, N, K)  # (H, N, K)
    w = torch.softmax(a.gather(2, pick), dim=2)  # (H, N, K)
    spread = torch.zeros(H, N, U).scatter_(2, pick, w)  # (H, N, U); a candidate's picks are distinct
    heads = torch.bmm(spread, values.view(U, H, d).transpose(0, 1))  # (H, N, d)
    return heads.transpose(0, 1)  # (N, H, d)


@torch.no_grad()
def interest(attn: TargetAttention, cache: ItemCache, q: torch.Tensor, seq: Seq) -> torch.Tensor:
    """Long-term interest (N, out_dim) of N candidates with queries `q` (N, H, d) for one user's `seq`
    (rows, cross, mask, log_n of batch size 1; its padding is dropped): the offline GSU + ESU's output."""
    N = q.shape[0]
    H, d = attn.cfg.heads, attn.cfg.head_dim
    rows, cross, log_n = seq.rows[0], seq.cross[0], None if seq.log_n is None else seq.log_n[0]  # (C,), (C, J)
    if not seq.mask.all():
        keep = seq.mask[0]
        rows, cross, log_n = rows[keep], cross[keep], None if log_n is None else log_n[keep]
    C = rows.shape[0]
    if C == 0 or N == 0:
        return q.new_zeros(N, attn.cfg.out_dim)
    u = q.reshape(N, H * d) @ attn.w_h.weight / H  # (N, D)
    bias = bucket_sum(cache.cross_gsu, cross) if attn.n_cross else torch.zeros(C)  # (C,)
    if log_n is not None and attn.cfg.log_n_gsu:
        bias += log_n
    # The bias rides in the product as an extra dimension (u' = [u, 1], e' = [e, bias]): one pass over the
    # (N, C) scores instead of a broadcast copy and an accumulation. A zero query (the unknown item) gets the
    # bias bit for bit (adding exact zeros), as offline, so exact ties break the same way.
    e_bias = torch.cat([cache.items.index_select(0, rows), bias.unsqueeze(1)], dim=1)  # (C, D+1)
    gsu = torch.cat([u, u.new_ones(N, 1)], dim=1) @ e_bias.T  # (N, C)
    K = min(attn.cfg.top_k, C)
    idx = topk_exact(gsu, None, K)[0].reshape(-1)  # (N·K,)
    mark = torch.zeros(C, dtype=torch.bool)
    mark[idx] = True
    union = mark.nonzero()[:, 0]  # (U,) element positions
    inv = (mark.cumsum(0) - 1).index_select(0, idx).view(N, K)  # (N, K) position of each pick in U
    if union.shape[0] <= max(DENSE_UNION_MIN, int(DENSE_UNION_FRACTION * N * K)):
        heads = _esu_dense(attn, cache, q, rows, cross, log_n, union, inv)  # (N, H, d)
        return attn.w_o(heads.reshape(N, H * d))  # (N, out_dim)
    table = cache.items.index_select(0, rows.index_select(0, union))  # (U, D): the offline ESU over U
    return attn.esu(q, table, inv, cross.index_select(0, idx).view(N, K, -1),
                    None if log_n is None else log_n.index_select(0, idx).view(N, K),
                    torch.ones(N, K, dtype=torch.bool))  # (N, out_dim)
