"""Wiring for one training run: find the snapshots and item vectors a model needs, then run the protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from twinv2.data.storage import Dataset
from twinv2.models.registry import model_class
from twinv2.offline.store import ClusterSnapshot, read_manifest
from twinv2.train.trainer import StreamingTrainer, TrainConfig, item_tables


def find_snapshots(ds: Dataset) -> list[ClusterSnapshot]:
    """Every complete snapshot under DATASET/clusters. Incomplete ones (a job still running or killed) are
    skipped; a damaged one stops the run (DataError naming the file) rather than being silently left out."""
    out = []
    for p in sorted((ds.root / "clusters").glob("*/manifest.json")):
        m = read_manifest(p.parent)
        if m is not None and m.get("complete"):
            out.append(ClusterSnapshot(p.parent))
    return out


def item_vectors(ds: Dataset, path: str | Path | None = None) -> np.ndarray:
    """Offline item embeddings by item row (row 0 = unknown, zeros), with the table's documented fallbacks."""
    from twinv2.offline.embed import EmbeddingTable

    path = Path(path) if path else ds.root / "embeddings" / "item_embeddings.parquet"
    if not path.exists():
        raise ValueError(f"item embeddings not found at {path}; run `twinv2 embed {ds.root}` first")
    vocab, _ = item_tables(ds)
    table = EmbeddingTable.load(path)
    return np.r_[np.zeros((1, table.dim), np.float32), table.lookup(vocab.item_ids, ds.items())]


def train_one(ds: Dataset, cfg: TrainConfig, out: str | Path | None, snapshots: list[str] | None = None,
              embeddings: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    cls = model_class(cfg.model)
    snaps = [ClusterSnapshot(s) for s in snapshots] if snapshots else find_snapshots(ds)
    needs = getattr(cls, "needs_item_vectors", False)
    table = Path(embeddings) if embeddings else ds.root / "embeddings" / "item_embeddings.parquet"
    wants = cfg.item_init == "embeddings" or (cfg.item_init == "auto" and table.exists())
    vectors = item_vectors(ds, table) if needs or wants else None
    return StreamingTrainer(ds, cfg, snaps, item_vectors=vectors if needs else None, out_dir=out,
                            progress=progress, init_vectors=vectors if wants else None).run()
