"""SDIM (Cao et al., "Sampling Is All You Need on Modeling Long-Term User Behaviors for CTR Prediction",
CIKM 2022): no attention at all. m hash functions, each a τ-bit SimHash signature (τ random hyperplanes);
for every hash function the behaviours whose signature equals the target's are gathered and their values
averaged; the long-term interest is the mean over the m hash functions (a hash function with no collision
contributes zero). In expectation this weights a behaviour by its collision probability with the target,
which SDIM shows approximates target attention with a SimHash-based kernel.

Over the latest 10,000 behaviours. Simplified: SDIM L2-normalises each hash function's bucket sum, we divide
by the colliding count; cross features are not used. Values are `W_v e` with a learned `Linear(D → D)` (no
bias) applied after averaging, which equals averaging the projected values (W_v is linear). The hyperplanes
are a seeded buffer and the hashing runs without gradient, so the output is deterministic; the embeddings
learn through the averaged values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twinv2.models.batch import Batch
from twinv2.models.frame import CTRModel
from twinv2.models.search import item_table


class SDIM(CTRModel):
    sequence = "recent"
    default_seq_len = 10_000

    def build_long_term(self) -> int:
        hp = self.cfg.sdim  # m, τ and the hyperplanes' seed (ModelConfig.sdim)
        self.n_hashes, self.n_bits = hp.n_hashes, hp.n_bits
        g = torch.Generator().manual_seed(hp.lsh_seed)
        planes = torch.randn(self.cfg.dim, self.n_hashes * self.n_bits, generator=g)  # (D, m τ)
        self.register_buffer("lsh", planes)
        self.register_buffer("bit_weights", 2 ** torch.arange(self.n_bits, dtype=torch.uint8), persistent=False)
        self.value = nn.Linear(self.cfg.dim, self.cfg.dim, bias=False)
        # Identity start: the interest is the collision-weighted mean item vector itself (a random map hid it:
        # demo SDIM GAUC 0.655 -> 0.729 with the identity, issue 11).
        nn.init.eye_(self.value.weight)
        return self.cfg.dim

    @torch.no_grad()
    def codes(self, vecs: torch.Tensor) -> torch.Tensor:
        """Item vectors (..., D) → each hash function's τ-bit signature as an integer, (..., m) uint8."""
        bits = (vecs @ self.lsh > 0).unflatten(-1, (self.n_hashes, self.n_bits))  # (..., m, τ)
        return (bits.to(torch.uint8) * self.bit_weights).sum(-1, dtype=torch.uint8)  # (..., m)

    @torch.no_grad()
    def weights(self, codes: torch.Tensor, t_codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-position weight (b, L) = (1/m) Σ_h [collides under h] / (colliding count under h), so that the
        interest is Σ_l weight_l e_l. codes (b, L, m), t_codes (b, m), mask (b, L)."""
        hit = (codes == t_codes[:, None, :]).float()  # (b, L, m); float once, then two BLAS products
        valid = mask.float()  # (b, L)
        count = torch.bmm(valid[:, None, :], hit).squeeze(1)  # (b, m) colliding real behaviours per hash
        per_hash = count.clamp_min(1.0).reciprocal() / self.n_hashes  # (b, m); no collision → no weight used
        return torch.bmm(hit, per_hash[:, :, None]).squeeze(-1) * valid  # (b, L)

    def long_term(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        seq = batch.seq
        B, L = seq.rows.shape
        table, rows = item_table(self.items, seq.rows)  # (U, D), (B, L); differentiable: values learn
        u_codes = self.codes(table.detach())  # (U, m)
        t_codes = self.codes(target.detach())  # (B, m)
        step = self.cfg.attention.gsu_chunk  # bounds the (chunk, L, m) collision tensor
        w = torch.empty(B, L, device=target.device)
        for s in range(0, B, step):
            e = min(B, s + step)
            codes = u_codes.index_select(0, rows[s:e].reshape(-1)).view(e - s, L, -1)  # (b, L, m)
            w[s:e] = self.weights(codes, t_codes[s:e], seq.mask[s:e])  # (b, L)
        # Σ_l w_l e_l as a weighted bag: no (B, L, D) tensor, and its backward scatters straight into `table`.
        pooled = F.embedding_bag(rows, table, per_sample_weights=w, mode="sum")  # (B, D)
        return self.value(pooled)  # (B, D)
