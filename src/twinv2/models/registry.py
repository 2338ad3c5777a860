"""Model names → classes. Every model shares the frame (frame.py) and differs only in its long-term module."""

from __future__ import annotations

import importlib

import numpy as np

from twinv2.models.frame import CTRModel, ItemTables, ModelConfig
from twinv2.models.names import CLASSES, MODELS

__all__ = ["MODELS", "build_model", "model_class"]


def model_class(name: str) -> type[CTRModel]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    module, cls = CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, tables: ItemTables, cfg: ModelConfig, cross_buckets: list[int],
                user_buckets: list[int] | None = None, item_vectors: np.ndarray | None = None) -> CTRModel:
    """Instantiate `name`. `item_vectors` (I, D) are the offline item embeddings by item row, needed by the
    models that cluster or hash items outside training (SIM Cluster/Cluster+)."""
    cls = model_class(name)
    model = cls(tables, cfg, cross_buckets, user_buckets)
    if getattr(cls, "needs_item_vectors", False):
        if item_vectors is None:
            raise ValueError(f"model {name!r} needs item_vectors (the `twinv2 embed` table by item row)")
        model.prepare(item_vectors)
    return model
