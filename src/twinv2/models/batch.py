"""The typed model input. Targets are separate from the history; masks are bool with True = valid."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Seq:
    """A long-term sequence: raw behaviours (latest L before the sample) or a user's clusters."""

    rows: torch.Tensor  # (B, L) int32 (the batcher's) or int64 item rows of the vocabulary; 0 where padded
    cross: torch.Tensor  # (B, L, J) int32 or int64 cross-feature bucket ids (0 where padded)
    mask: torch.Tensor  # (B, L) bool, True = a real element
    log_n: torch.Tensor | None = None  # (B, L) float ln(cluster size); None for raw behaviours

    @property
    def length(self) -> int:
        return self.rows.shape[1]

    def last(self, n: int) -> "Seq":
        """The latest `n` elements (B, n') of a right-aligned sequence (the batcher's layout: latest last)."""
        return Seq(rows=self.rows[:, -n:], cross=self.cross[:, -n:], mask=self.mask[:, -n:],
                   log_n=None if self.log_n is None else self.log_n[:, -n:])

    def expand(self, n: int) -> "Seq":
        """One user's sequence (1, L) as the same sequence for `n` candidates (n, L), without copying."""
        return Seq(rows=self.rows.expand(n, -1), cross=self.cross.expand(n, -1, -1), mask=self.mask.expand(n, -1),
                   log_n=None if self.log_n is None else self.log_n.expand(n, -1))


@dataclass
class Batch:
    target: torch.Tensor  # (B,) int64 item rows of the candidates
    seq: Seq  # the model's long-term input
    label: torch.Tensor  # (B,) float32 0/1
    user_id: torch.Tensor  # (B,) int64 raw user ids (for GAUC)
    ts: torch.Tensor  # (B,) int64 sample times (ms)
    user: torch.Tensor | None = None  # (B, F) int64 user-feature bucket ids, when the data has them
    recent: Seq | None = None  # the latest raw behaviours (B, S) for the short-term interest of a model whose
    #  `seq` is clusters; None when `seq` itself is raw behaviours (its last S columns are read)

    @property
    def size(self) -> int:
        return self.target.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        def move(x):
            if isinstance(x, torch.Tensor):
                return x.to(device)
            if isinstance(x, Seq):  # a Seq's None log_n stays None
                return Seq(**{f.name: move(getattr(x, f.name)) for f in fields(Seq)})
            return x

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(Batch)})
