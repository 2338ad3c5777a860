"""Search helpers shared by the GSUs: per-item tables, target-to-sequence dot products without a (B, L, D)
tensor, and an exact, deterministic top-k."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # frame imports attention, which imports this module
    from twinv2.models.frame import ItemFeatures

MATMUL_ITEMS_PER_POSITION = 32  # pair_dots scores every item when U <= this × L (measured on CPU)


def item_table(items: ItemFeatures, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inherent embeddings once per item, never per (sample, position): for every vocabulary item when that
    is no more work than the batch's positions, else for the batch's unique items.
    Returns (table (U, D), rows (B, L) indexing it). Differentiable; callers choose no_grad."""
    if items.n_items <= rows.numel() and not torch.is_grad_enabled():
        return items.every_item(), rows  # (I, D); without gradient, so the tables' gradients stay sparse
    uniq, inv = torch.unique(rows, return_inverse=True)
    return items(uniq), inv  # (U, D)


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


def topk_exact(score: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k positions of float `score` (B, L) among `mask`ed-in positions, exact ties broken towards the
    later (more recent) position, distinct scores never reordered however close; padding is never chosen
    over a valid position and a chosen one is flagged invalid. Returns (idx (B, k'), valid (B, k'))."""
    B, L = score.shape
    k = min(k, L)
    # float32 bits → an integer key with the same order (negative floats get their magnitude bits flipped);
    # `+ 0.0` folds -0.0 into +0.0 so equal values get equal keys.
    bits = (score.float() + 0.0).contiguous().view(torch.int32)  # (B, L)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # (B, L) int32, monotone in the score
    key = key.long() * L + torch.arange(L, device=score.device)  # (B, L) lexicographic (score, position)
    key = key.masked_fill(~mask, torch.iinfo(torch.int64).min)
    idx = key.topk(k, dim=1).indices  # (B, k)
    return idx, mask.gather(1, idx)
