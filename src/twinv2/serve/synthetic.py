"""Synthetic serving inputs of any size, for `twinv2 bench serve` and tests: a randomly initialised twin_v2
checkpoint over I items and a cluster snapshot (the offline job's on-disk format) with users of C clusters."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twinv2.data.storage import part_name, shard_of
from twinv2.offline import store as snapshot_store


def synthetic_checkpoint(path: str | Path, n_items: int, seed: int = 0, model_cfg=None) -> Path:
    """A twin_v2 checkpoint (random weights) whose raw item ids are 1..n_items-1 (= their rows)."""
    import torch

    from twinv2.models.embeddings import ItemVocab
    from twinv2.models.frame import ItemTables
    from twinv2.models.registry import build_model
    from twinv2.train.features import CROSS_BUCKETS, N_DUR
    from twinv2.train.checkpoint import save_checkpoint
    from twinv2.train.trainer import TrainConfig

    if n_items < 2:
        raise ValueError(f"n_items must be >= 2 (row 0 is the unknown item), got {n_items}")
    rng = np.random.default_rng(seed)
    n_authors, n_tags = max(2, n_items // 10), 44
    tables = ItemTables(author_of=np.r_[0, rng.integers(1, n_authors, n_items - 1)],
                        tag_of=np.r_[0, rng.integers(1, n_tags, n_items - 1)],
                        dur_of=np.r_[0, rng.integers(1, N_DUR, n_items - 1)], n_authors=n_authors, n_tags=n_tags,
                        n_dur=N_DUR)
    cfg = TrainConfig(model="twin_v2", seed=seed, **({"model_cfg": model_cfg} if model_cfg is not None else {}))
    torch.manual_seed(seed)
    model = build_model("twin_v2", tables, cfg.model_cfg, CROSS_BUCKETS)
    with torch.no_grad():  # non-trivial cross and ln n weights, so every term of α' matters
        for p in model.parameters():
            if p.dim() >= 2:
                p.add_(torch.randn_like(p) * 0.05)
            elif p.dim() == 0:  # the match weights: the short-term match (0 at a neutral start) counts too
                p.add_(0.1)
    vocab = ItemVocab(item_ids=np.arange(1, n_items, dtype=np.int64), author_ids=np.zeros(0, np.int64),
                      tag_ids=np.zeros(0, np.int64), author_of=tables.author_of, tag_of=tables.tag_of)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model, cfg, vocab, {"synthetic": True})
    return path


def synthetic_clusters(user_ids: list[int], clusters: int | list[int], n_items: int, snapshot_ts: int,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """Snapshot columns (store.COLUMNS) for users with `clusters` clusters each: Zipf-popular items, sizes
    1-19, mean times over the year before the snapshot, some unknown ratios."""
    rng = np.random.default_rng(seed)
    sizes = [clusters] * len(user_ids) if isinstance(clusters, int) else list(clusters)
    pop = 1.0 / np.arange(1, n_items) ** 0.9
    pop /= pop.sum()
    parts = []
    for uid, C in sorted(zip(user_ids, sizes)):
        n = rng.integers(1, 20, C).astype(np.int32)
        ratio = rng.uniform(0, 1.3, C).astype(np.float32)
        ratio[rng.random(C) < 0.05] = np.nan
        ts = snapshot_ts - rng.uniform(1.0, 365 * 86_400_000.0, C)
        parts.append({
            "user_id": np.full(C, uid, np.int64), "cluster": np.arange(C, dtype=np.int32), "n": n,
            "group": rng.integers(0, 6, C).astype(np.int8),
            "item_id": rng.choice(np.arange(1, n_items), C, p=pop).astype(np.int64),
            "author_id": np.full(C, -1, np.int64), "tag": np.full(C, -1, np.int64),
            "duration_ms": rng.uniform(5e3, 6e5, C).astype(np.float32),
            "play_ms": rng.lognormal(9.5, 1.5, C).astype(np.float32), "ratio": ratio, "ts": ts,
            "user_n": np.full(C, int(n.sum()), np.int64), "user_last_ts": np.full(C, int(ts.max()), np.int64),
        })
    return {k: np.concatenate([p[k] for p in parts]) if parts else v for k, v in snapshot_store.empty_columns().items()}


def write_snapshot(out: str | Path, cols: dict[str, np.ndarray], snapshot_ts: int, n_shards: int = 1) -> Path:
    """Write `cols` (sorted by user, then cluster) as a complete cluster snapshot folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shard = shard_of(cols["user_id"], n_shards) if len(cols["user_id"]) else np.zeros(0, np.int64)
    shards = {}
    for s in range(n_shards):
        sel = shard == s
        w = snapshot_store.PartWriter(out / part_name(s))
        w.append({k: v[sel] for k, v in cols.items()})
        digest = w.close()
        shards[str(s)] = {"shard": s, "file": part_name(s), "sha256": digest,
                          "bytes": (out / part_name(s)).stat().st_size, "rows": int(sel.sum())}
    snapshot_store.write_manifest(out, {"dataset": "synthetic", "n_shards": n_shards, "snapshot_ts": int(snapshot_ts),
                                        "config": {"synthetic": True}, "complete": True, "shards": shards})
    return out
