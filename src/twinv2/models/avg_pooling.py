"""Avg-Pooling (the paper's weakest baseline, Table 3): the long-term interest is the plain mean of the latest
100 behaviours' inherent item embeddings, with no dependence on the target.

Simplified from the usual sum/mean-pooling baselines (e.g. YouTube DNN, Covington et al., RecSys 2016) to the
frame's inherent embedding only: cross features (play time, age, ...) do not enter the mean.
"""

from __future__ import annotations

import torch

from twinv2.models.batch import Batch
from twinv2.models.frame import CTRModel


class AvgPooling(CTRModel):
    short_term = False  # its own sequence is the short term
    sequence = "recent"
    default_seq_len = 100

    def build_long_term(self) -> int:
        return self.cfg.dim

    def long_term(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        seq = batch.seq
        weight = seq.mask.to(target.dtype)  # (B, L)
        total = torch.einsum("bl,bld->bd", weight, self.items(seq.rows))  # (B, D)
        # An empty history divides by 1, not 0: its interest is the zero vector, never NaN.
        return total / weight.sum(1, keepdim=True).clamp_min(1.0)  # (B, D)
