"""ETA (Chen et al., "End-to-End User Behavior Retrieval in Click-Through Rate Prediction Model", 2021): the
GSU hashes the target and every behaviour with SimHash (locality-sensitive hashing, m random hyperplanes,
signature = sign(e W_lsh)) and keeps the top-100 of the latest 10,000 behaviours by smallest Hamming distance
to the target; the ESU attends over them.

End to end as in ETA: the signatures are recomputed from the current embeddings every step (no gradient,
hashing is not differentiable) and the embeddings learn through the ESU, so retrieval follows training.
Simplified: the ESU is the frame's shared target attention without ln n; Hamming ties go to the most recent
behaviour. The Hamming distance is computed as (m − s_t · s_l) / 2 on ±1 signatures, which is exact (small
integers in float32) and on CPU a BLAS product is faster than XOR + popcount. The hyperplanes are a buffer
drawn from a fixed seed, so evaluation is deterministic and a checkpoint carries them.
"""

from __future__ import annotations

import torch

from twinv2.models.batch import Batch
from twinv2.models.search import item_table, pair_dots, select
from twinv2.models.two_stage import TwoStage


class ETA(TwoStage):
    sequence = "recent"
    default_seq_len = 10_000

    def build_long_term(self) -> int:
        hp = self.cfg.eta  # m and the hyperplanes' seed (ModelConfig.eta)
        g = torch.Generator().manual_seed(hp.lsh_seed)
        self.register_buffer("lsh", torch.randn(self.cfg.dim, hp.n_bits, generator=g))  # (D, m)
        return super().build_long_term()

    def signature(self, vecs: torch.Tensor) -> torch.Tensor:
        """SimHash of item vectors (..., D) → ±1 signs (..., m); a projection of exactly 0 counts as -1."""
        return torch.where(vecs @ self.lsh > 0, 1.0, -1.0)  # (..., m)

    @torch.no_grad()
    def hamming(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        """Hamming distance between the target's and each behaviour's signature, (B, L) int64."""
        table, rows = item_table(self.items, batch.seq.rows)  # (U, D), (B, L)
        agree = pair_dots(self.signature(target), self.signature(table), rows, self.cfg.attention.gsu_chunk)
        return ((self.cfg.eta.n_bits - agree) / 2).round().long()  # (B, L)

    @torch.no_grad()
    def gsu(self, batch: Batch, target: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The K behaviours with the fewest differing bits (ties: the latest). The number of agreeing bits is the
        dot product of ±1 signatures, m - 2 · Hamming, an exact integer: search.select ranks by it, which is
        ranking by -Hamming with the same ties."""
        seq = batch.seq
        table, rows = item_table(self.items, seq.rows)  # (U, D), (B, L)
        return select(self.signature(target), self.signature(table), rows, seq.mask, self.cfg.attention.top_k,
                      self.cfg.attention.gsu_chunk)
