"""Search helpers shared by the GSUs: per-item tables, target-to-sequence relevance without a (B, L, D)
tensor (compiled where it can be: models/native.py), and an exact, deterministic top-k."""

from __future__ import annotations

import torch
from torch import nn

from twinv2.models import native

MATMUL_ITEMS_PER_POSITION = 32  # pair_dots scores every item when U <= this × L (measured on CPU)

@torch.no_grad()
def relevance(u: torch.Tensor, table: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor, chunk: int,
              cross: torch.Tensor | None = None, cross_tables: list[torch.Tensor] | tuple[torch.Tensor, ...] = (),
              log_n: torch.Tensor | None = None) -> torch.Tensor:
    """GSU scores (B, L): u (B, D) · table[rows] + Σ_j cross_tables[j][cross[..., j]] + log_n, -inf at ~mask,
    for table (U, D), rows (B, L) into it, cross (B, L, J) bucket ids with cross_tables J × (n_j,), log_n (B, L)
    or None. The compiled kernel when it can run (models/native.py), else the torch path below: the same sums
    in the same order, equal to float rounding (tests/models/test_native.py)."""
    fused = native.gsu_topk(u, table, rows, cross, list(cross_tables), log_n, mask, 0, scores=True)
    if fused is not None:
        return fused[1]
    scores = pair_dots(u, table, rows, chunk)  # (B, L)
    for j, t in enumerate(cross_tables):
        scores += t[cross[..., j]]  # (B, L)
    if log_n is not None:
        scores += log_n
    return scores.masked_fill_(~mask, float("-inf"))


def item_table(items: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inherent embeddings once per item, never per (sample, position): for every vocabulary item when that
    is no more work than the batch's positions, else for the batch's unique items (gathered from the cached
    every-item table in evaluation: one gather instead of four and three sums, the same sums bit for bit).
    `items` is the model's `frame.ItemFeatures`, not imported here: frame imports attention, which imports this.
    Returns (table (U, D), rows (B, L) indexing it). Differentiable; callers choose no_grad."""
    if not torch.is_grad_enabled() and items.n_items <= rows.numel():
        return items.every_item(), rows  # (I, D); without gradient, so the tables' gradients stay sparse
    uniq, inv = torch.unique(rows, return_inverse=True)
    if not torch.is_grad_enabled() and not items.training:
        return items.every_item().index_select(0, uniq), inv  # (U, D)
    return items(uniq), inv  # (U, D)


@torch.no_grad()
def select(u: torch.Tensor, table: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor, k: int, chunk: int,
           cross: torch.Tensor | None = None, cross_tables: list[torch.Tensor] | tuple[torch.Tensor, ...] = (),
           log_n: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """topk_exact(relevance(...), mask, k): the GSU's (idx (B, k'), valid (B, k')). The compiled kernel selects
    while each sample's scores are in cache and never writes the (B, L) scores; the torch path is the two calls."""
    fused = native.gsu_topk(u, table, rows, cross, list(cross_tables), log_n, mask, k)
    if fused is not None:
        idx = fused[0]
        return idx, mask.gather(1, idx)
    return topk_exact(relevance(u, table, rows, mask, chunk, cross, cross_tables, log_n), mask, k)


def pair_dots(t: torch.Tensor, table: torch.Tensor, rows: torch.Tensor, chunk: int) -> torch.Tensor:
    """out[b, l] = t[b] · table[rows[b, l]] for t (B, F), table (U, F), rows (B, L) → (B, L), `chunk` samples
    at a time so no (B, L, F) tensor exists."""
    B, L = rows.shape
    U, F = table.shape
    out = torch.empty(B, L, dtype=t.dtype, device=t.device)
    matmul = U <= MATMUL_ITEMS_PER_POSITION * L  # one BLAS product over every item beats a random gather
    step = max(1, min(chunk, (1 << 24) // max(U, 1))) if matmul else chunk  # a (b, U) block stays <= 64 MB
    for s in range(0, B, step):
        e = min(B, s + step)
        if matmul:
            out[s:e] = (t[s:e] @ table.T).gather(1, rows[s:e])  # (b, U) → (b, L)
        else:
            g = table.index_select(0, rows[s:e].reshape(-1)).view(e - s, L, F)  # (b, L, F)
            out[s:e] = torch.bmm(g, t[s:e, :, None]).squeeze(-1)  # (b, L)
    return out


def _order_key(score: torch.Tensor, pos: torch.Tensor, L: int) -> torch.Tensor:
    """int64 keys ordered as (score, position): float32 bits mapped to an integer of the same order (negative
    floats get their magnitude bits flipped; `+ 0.0` folds -0.0 into +0.0), times L, plus the position."""
    bits = (score + 0.0).contiguous().view(torch.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).long() * L + pos


def topk_exact(score: torch.Tensor, mask: torch.Tensor | None, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k positions of float `score` (B, L) among `mask`ed-in positions (None: all), the one top-k of every
    GSU, offline and online (models/serving.py). Deterministic: exact ties are broken towards the later (more
    recent) position, distinct scores are never reordered however close; padding is never chosen over a valid
    position and a chosen one is flagged invalid. Returns (idx (B, k'), valid (B, k')), k' = min(k, L), by
    descending (score, position).

    A top-(k+1) on the values gives the set when the k-th and (k+1)-th values differ (almost every row); rows
    with a tie across the cut are ranked by (score, position) keys. As fast as torch.topk; ranking every row by
    int64 keys was 2.5x slower at (256, 10,000)."""
    B, L = score.shape
    k = min(k, L)
    s = score.float()
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))  # (B, L)
    vals, idx = s.topk(min(k + 1, L), dim=1)  # (B, k or k+1)
    if k < L:
        # torch chose among the ties at the k-th value; padding (-inf) is exempt: it is never valid
        straddle = (vals[:, k] == vals[:, k - 1]) & torch.isfinite(vals[:, k - 1])  # (B,)
        vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()  # (B, k)
        if straddle.any():
            r = straddle.nonzero()[:, 0]
            sub = s.index_select(0, r)  # (R, L)
            idx[r] = _order_key(sub, torch.arange(L, device=s.device), L).topk(k, dim=1).indices  # (R, k)
            vals[r] = sub.gather(1, idx[r])
    idx = idx.gather(1, _order_key(vals, idx, L).argsort(dim=1, descending=True))  # (B, k)
    valid = torch.ones(B, k, dtype=torch.bool, device=s.device) if mask is None else mask.gather(1, idx)
    return idx, valid
