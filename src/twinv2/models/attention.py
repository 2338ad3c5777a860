"""Target attention with inherent/cross feature split (TWIN, paper Appendix A.2) and cluster-size reweighting
(TWIN-V2, Eq. 8–11).

For head h, a sequence element l (a behaviour, or a cluster's virtual item) and a target q:

    α_h,l  = (K_h W^h_h)_l · (q W^q_h) / sqrt(d)  +  Σ_j β_h,j · (E_j[c_l,j] · w_h,j)        (A.2)
    α'_h,l = α_h,l + ln n_l                                                                 (Eq. 10)

`K_h` holds the inherent (item-only) features, so `K_h W^h` is computed per item, never per
(sample, position). Each cross feature j has its own 8-dim embedding E_j reduced to one number by w_h,j, so
the cross term is a gather of per-bucket scalars. The ESU attends with softmax(α') over the kept elements,
with values `[K_h, K_c] W^v_h` and output `Concat(heads) W^o`.

GSU choice across heads: the GSU keeps the K elements with the largest mean over heads of α'. The mean is
the natural single relevance for "one selection shared by all heads" and is order-equivalent to summing the
heads' logits; the ESU then uses each head's own α'. The GSU runs without gradient (top-k is not
differentiable); GSU and ESU share every parameter, as in TWIN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from twinv2.models.search import relevance, select


def bucket_sum(tables: list[torch.Tensor] | tuple[torch.Tensor, ...], cross: torch.Tensor) -> torch.Tensor:
    """Σ_j tables[j][cross[..., j]]: per-bucket tables (n_j, ...) of J >= 1 cross features, gathered at the
    bucket ids (..., J) and summed (..., ...): the cross term of the ESU and of the serving cache alike."""
    out = gather_rows(tables[0], cross[..., 0])
    for j in range(1, len(tables)):
        out = out + gather_rows(tables[j], cross[..., j])
    return out


def gather_rows(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """table[ids] for table (n, ...) and ids (...) → (..., ...), by index_select: its backward (index_add) ran
    5x faster than indexing's accumulating index_put for (25,600, 128) rows of 13,000 on 2 threads (issue 12)."""
    return table.index_select(0, ids.reshape(-1)).view(*ids.shape, *table.shape[1:])


@dataclass(frozen=True)
class AttentionConfig:
    dim: int = 32  # D: item embedding dim (input)
    heads: int = 4  # H, the paper's 4 heads
    head_dim: int = 16  # d: per-head key/query/value dim
    out_dim: int = 32  # dim of Concat(heads) W^o
    cross_dim: int = 8  # E: per cross feature (paper A.2)
    top_k: int = 100  # K kept by the GSU (paper: 100)
    log_n_gsu: bool = True  # add ln n in the GSU (Figure 4 ablation switch)
    log_n_esu: bool = True  # add ln n in the ESU (Figure 4 ablation switch)
    gsu_chunk: int = 64  # samples per no-grad GSU chunk (also capped so a (chunk, U) block stays <= 64 MB)
    init_temperature: float = 10.0  # κ: at init the head-mean item term is κ × cos(target, item) (see
    #  `TargetAttention.start_item_term`); measured on demo, see the module docstring

    def __post_init__(self) -> None:
        for name in ("dim", "heads", "head_dim", "out_dim", "cross_dim", "top_k", "gsu_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"AttentionConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.init_temperature > 0:
            raise ValueError(f"AttentionConfig.init_temperature must be > 0, got {self.init_temperature}")


class TargetAttention(nn.Module):
    """The shared GSU/ESU attention. `cross_buckets[j]` is the bucket count of cross feature j."""

    def __init__(self, cfg: AttentionConfig, cross_buckets: list[int]) -> None:
        super().__init__()
        self.cfg = cfg
        H, d, D, E = cfg.heads, cfg.head_dim, cfg.dim, cfg.cross_dim
        J = len(cross_buckets)
        self.n_cross = J
        self.w_q = nn.Linear(D, H * d, bias=False)
        self.w_h = nn.Linear(D, H * d, bias=False)
        self.cross = nn.ModuleList(nn.Embedding(n, E) for n in cross_buckets)
        # W^c is block-diagonal: one w_h,j in R^E per head and feature, then β_h,j (A.2).
        self.w_c = nn.Parameter(torch.randn(H, max(J, 1), E) / math.sqrt(E))
        self.beta = nn.Parameter(torch.ones(H, max(J, 1)))
        # W^v acts on [K_h, K_c]; split so the item part is projected once per item: [K_h, K_c] W^v =
        # K_h W^v_h + K_c W^v_c.
        self.w_v = nn.Linear(D, H * d, bias=False)
        self.w_vc = nn.Linear(max(J, 1) * E, H * d, bias=False)
        self.w_o = nn.Linear(H * d, cfg.out_dim, bias=False)

    @torch.no_grad()
    def start_item_term(self, scale: float) -> None:
        """Initialise so that at step 0 the attention follows the item similarity, for item vectors of RMS
        norm `scale` (CTRModel.start_neutral passes the loaded vectors' norm).

        W^q = W^h = g Q with Q (H·d, D) orthonormal columns, so Σ_h W^h_h W^h_hᵀ = g² I and the head-mean item
        term is g² e_t · e_l / (H sqrt(d)) = κ cos(e_t, e_l) for vectors of norm `scale` when
        g² = κ H sqrt(d) / scale²: the GSU ranks by the item similarity. β = 0 and W^v_c = 0: the cross
        features start with no say in the score or the value (their tables still learn once β moves).
        W^v = Q' and W^o = Q'ᵀ (Q' orthonormal): the ESU's output starts as the attention-weighted mean of the
        item vectors (exactly so where the heads agree). Why: with torch's default init the item term had sd
        0.019 against 0.81 for the cross term and 0.66 for ln n, and the GSU's top 100 were 16.1% same-topic as
        the target (random 15.2%, a cosine top-100 59.4%; demo, issue 11)."""
        cfg = self.cfg
        H, d, D = cfg.heads, cfg.head_dim, cfg.dim
        g = math.sqrt(cfg.init_temperature * H * math.sqrt(d)) / max(scale, 1e-6)
        q = nn.init.orthogonal_(torch.empty(H * d, D))  # (H·d, D), orthonormal columns when H·d >= D
        self.w_q.weight.copy_(g * q)
        self.w_h.weight.copy_(g * q)
        self.beta.zero_()
        self.w_vc.weight.zero_()
        v = nn.init.orthogonal_(torch.empty(H * d, D))  # (H·d, D)
        self.w_v.weight.copy_(v)
        self.w_o.weight.copy_(torch.eye(cfg.out_dim, D) @ v.T)  # (out, H·d)

    # ---- pieces ----------------------------------------------------------------------------------------
    def query(self, target: torch.Tensor) -> torch.Tensor:
        """Target embeddings (B, D) → queries (B, H, d), pre-scaled by 1/sqrt(d)."""
        B = target.shape[0]
        H, d = self.cfg.heads, self.cfg.head_dim
        return self.w_q(target).view(B, H, d) / math.sqrt(d)  # (B, H, d)

    def keys(self, item_vecs: torch.Tensor) -> torch.Tensor:
        """Inherent projections K_h W^h for item vectors (..., D) → (..., H, d)."""
        H, d = self.cfg.heads, self.cfg.head_dim
        return self.w_h(item_vecs).unflatten(-1, (H, d))  # (..., H, d)

    def item_values(self, item_vecs: torch.Tensor) -> torch.Tensor:
        """Item part of the values K_h W^v_h for item vectors (..., D) → (..., H, d)."""
        return self.w_v(item_vecs).unflatten(-1, (self.cfg.heads, self.cfg.head_dim))  # (..., H, d)

    def cross_values(self) -> list[torch.Tensor]:
        """Per cross feature j, the value part E_j[b] W^v_c,j of every bucket: (n_j, H·d) (W^v_c acts on the
        concatenated cross embeddings, so feature j meets its own E columns)."""
        E = self.cfg.cross_dim
        return [emb.weight @ self.w_vc.weight[:, j * E:(j + 1) * E].T for j, emb in enumerate(self.cross)]

    def cross_scalars(self) -> list[torch.Tensor]:
        """Per cross feature j, the table β_h,j (E_j[b] · w_h,j): (n_j, H). Tiny; recomputed per call."""
        return [(emb.weight @ self.w_c[:, j].T) * self.beta[:, j] for j, emb in enumerate(self.cross)]

    def cross_term(self, cross: torch.Tensor) -> torch.Tensor:
        """Bucket ids (..., J) → Σ_j cross scalar (..., H) (needs at least one cross feature)."""
        return bucket_sum(self.cross_scalars(), cross)  # (..., H)

    # ---- GSU -------------------------------------------------------------------------------------------
    def _gsu_terms(self, q: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """u (B, D) = Σ_h W^h_hᵀ q_h / H and the head-mean cross scalar tables J × (n_j,) of the GSU."""
        B = q.shape[0]
        H, d = self.cfg.heads, self.cfg.head_dim
        u = q.reshape(B, H * d) @ self.w_h.weight / H  # (B, D)
        return u, [t.mean(-1) for t in self.cross_scalars()] if self.n_cross else []

    @torch.no_grad()
    def gsu_scores(self, q: torch.Tensor, item_table: torch.Tensor, seq_rows: torch.Tensor, cross: torch.Tensor,
                   log_n: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """Mean over heads of α' for every element (B, L); -inf at padding.

        q (B, H, d) queries; item_table (U, D) inherent embeddings of the unique items; seq_rows (B, L) rows
        into item_table; cross (B, L, J); log_n (B, L) or None; mask (B, L) bool, True = valid.

        The mean over heads of q_h · (e W^h_h) equals e · u with u = Σ_h W^h_hᵀ q_h / H, one D-dim vector per
        sample: each position's relevance is then one D-dim dot product with its item's embedding
        (search.relevance), plus a gather of per-bucket cross scalars averaged over heads beforehand.
        No (B, L, H, d) tensor is built and no key is projected.
        """
        u, tables = self._gsu_terms(q)
        return relevance(u, item_table, seq_rows, mask, self.cfg.gsu_chunk, cross, tables,
                         log_n if self.cfg.log_n_gsu else None)

    @torch.no_grad()
    def gsu_topk(self, q: torch.Tensor, item_table: torch.Tensor, seq_rows: torch.Tensor, cross: torch.Tensor,
                 log_n: torch.Tensor | None, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions of the top-K elements per sample by mean-over-heads α' (see `gsu_scores`).

        Returns (idx (B, K') long, valid (B, K') bool) with K' = min(K, L); padding is never chosen over a
        valid element, and a chosen padding slot is marked invalid. Exact ties go to the later (more recent)
        position (search.topk_exact); they arise between elements with the same item, buckets and n.
        """
        u, tables = self._gsu_terms(q)
        return select(u, item_table, seq_rows, mask, self.cfg.top_k, self.cfg.gsu_chunk, cross, tables,
                      log_n if self.cfg.log_n_gsu else None)  # (B, K') each; serving selects with topk_exact

    # ---- ESU -------------------------------------------------------------------------------------------
    def esu(self, q: torch.Tensor, item_table: torch.Tensor, rows: torch.Tensor, cross: torch.Tensor,
            log_n: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
        """Attention over the kept elements. q (B, H, d); item_table (U, D) inherent embeddings of the unique
        kept items and rows (B, K) into it; cross (B, K, J); log_n (B, K) or None; mask (B, K).
        Returns the long-term interest (B, out_dim); zeros for a sample with no valid element.

        The item-only projections K_h W^h and K_h W^v_h are computed once per unique item and gathered; only
        the cross-feature parts are per (sample, position)."""
        B, K = rows.shape
        H, d = self.cfg.heads, self.cfg.head_dim
        per_item = torch.cat([self.w_h(item_table), self.w_v(item_table)], dim=-1)  # (U, 2*H*d)
        k, v = gather_rows(per_item, rows).view(B, K, 2, H, d).unbind(2)  # (B, K, H, d) each
        a = torch.einsum("bkhd,bhd->bkh", k, q)  # (B, K, H)
        if self.n_cross:
            a = a + self.cross_term(cross)  # (B, K, H)
            # the tables' rows directly: nn.Embedding's backward (no padding_idx here) is the same sum, slower
            cross_emb = torch.cat([gather_rows(emb.weight, cross[..., j]) for j, emb in enumerate(self.cross)],
                                  -1)  # (B, K, J*E)
            v = v + self.w_vc(cross_emb).view(B, K, H, d)  # (B, K, H, d)
        if log_n is not None and self.cfg.log_n_esu:
            a = a + log_n.unsqueeze(-1)  # (B, K, H)
        a = a.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        w = torch.softmax(a, dim=1)  # (B, K, H)
        w = torch.nan_to_num(w, nan=0.0)  # all-padding rows: softmax of all -inf
        heads = torch.einsum("bkh,bkhd->bhd", w, v)  # (B, H, d)
        return self.w_o(heads.reshape(B, H * d))  # (B, out_dim)
