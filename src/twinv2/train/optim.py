"""The optimizer: Adam for dense parameters, SparseAdam for the sparse embedding tables.

A training step touches a few thousand rows of item/author/tag tables that can hold millions; dense Adam
would read and write every row every step. SparseAdam is "lazy Adam": a row's moments are updated only in
steps that touch it, which is the usual choice for large embedding tables (and changes nothing for rows
that appear in every step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SplitAdam:
    def __init__(self, model: nn.Module, lr: float) -> None:
        sparse = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]
        ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in ids]
        self.optimizers: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=lr)]
        if sparse:
            self.optimizers.append(torch.optim.SparseAdam(sparse, lr=lr))

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> list[dict[str, Any]]:
        return [o.state_dict() for o in self.optimizers]

    def load_state_dict(self, states: list[dict[str, Any]]) -> None:
        for o, s in zip(self.optimizers, states, strict=True):
            o.load_state_dict(s)
