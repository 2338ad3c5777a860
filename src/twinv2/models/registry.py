"""Model names → classes. Every model shares the frame (frame.py) and differs only in its long-term module."""

from __future__ import annotations

import importlib

import numpy as np

from twinv2.models.frame import CTRModel, ItemTables, ModelConfig

# Ordered as the paper's Table 3.
MODELS: dict[str, str] = {
    "avg_pooling": "twinv2.models.avg_pooling:AvgPooling",
    "din": "twinv2.models.din:DIN",
    "sim_hard": "twinv2.models.sim_hard:SIMHard",
    "eta": "twinv2.models.eta:ETA",
    "sim_cluster": "twinv2.models.sim_cluster:SIMCluster",
    "sdim": "twinv2.models.sdim:SDIM",
    "sim_cluster_plus": "twinv2.models.sim_cluster:SIMClusterPlus",
    "sim_soft": "twinv2.models.sim_soft:SIMSoft",
    "twin": "twinv2.models.twin:TWIN",
    "twin_v2": "twinv2.models.twin_v2:TWINV2",
}


def model_class(name: str) -> type[CTRModel]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    module, cls = MODELS[name].split(":")
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
