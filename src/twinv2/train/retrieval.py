"""Retrieval diagnostics from a generated world's ground truth (issue 11): what a two-stage model's GSU keeps.

For each test sample whose candidate came from one of the user's interests (the impression's `source`: 0 a
current interest, 1 a dormant one; popular and random candidates have no interest to find), the share of the
kept top-K whose hidden topic is the target's, and whether any is. TWIN-V2 keeps clusters: a cluster counts by
its virtual item (the member nearest the centroid, Eq. 6-7). Split by current vs dormant interest and by the
user's history length at the sample (terciles over the test samples): TWIN vs TWIN-V2 on dormant-interest
targets is the paper's mechanism made visible (§1, Figure 1). Reads `DATASET/truth/` (never given to a model).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

import torch

from twinv2.data.storage import Dataset
from twinv2.models.batch import Batch
from twinv2.models.frame import CTRModel
from twinv2.models.two_stage import TwoStage, take

SOURCES = {0: "current", 1: "dormant"}


def has_truth(ds: Dataset) -> bool:
    return (ds.root / "truth" / "item_topic.npy").is_file() and (ds.root / "truth" / "impressions").is_dir()


def impression_sources(ds: Dataset, keys: pd.DataFrame) -> np.ndarray:
    """The truth's `source` of each (user_id, item_id, ts) row of `keys`; -1 where not found. (n,) int8"""
    parts = sorted((ds.root / "truth" / "impressions").glob("*.parquet"))
    imp = pd.concat([pd.read_parquet(p, columns=["user_id", "item_id", "ts", "source"]) for p in parts],
                    ignore_index=True).drop_duplicates(["user_id", "item_id", "ts"])
    got = keys[["user_id", "item_id", "ts"]].merge(imp, how="left", on=["user_id", "item_id", "ts"])
    return got["source"].fillna(-1).to_numpy(np.int8)


def retrieval_diagnostics(ds: Dataset, keys: pd.DataFrame, kept: np.ndarray) -> dict[str, Any]:
    """`keys` (n rows: user_id, item_id, ts) and the raw item ids `kept` (n, K) by the GSU (-1 = nothing kept
    there) → per group {n, share, hit} and the rows behind them."""
    if len(keys) != len(kept):
        raise ValueError(f"{len(keys)} samples but {len(kept)} rows of kept items")
    topic = np.load(ds.root / "truth" / "item_topic.npy")  # row i = item_id i + 1

    def topic_of(ids: np.ndarray) -> np.ndarray:
        ok = (ids >= 1) & (ids <= len(topic))
        return np.where(ok, topic[np.clip(ids - 1, 0, len(topic) - 1)], -1)

    source = impression_sources(ds, keys)
    length = ds.history_lengths(keys["user_id"].to_numpy(), keys["ts"].to_numpy())
    t = topic_of(keys["item_id"].to_numpy(np.int64))  # (n,)
    valid = kept >= 0  # (n, K)
    same = (topic_of(kept) == t[:, None]) & valid & (t[:, None] >= 0)  # (n, K)
    n_kept = valid.sum(1)
    share = np.where(n_kept > 0, same.sum(1) / np.maximum(n_kept, 1), 0.0)  # (n,)
    hit = same.any(1)
    interest = np.isin(source, list(SOURCES))
    cuts = np.quantile(length[interest], [1 / 3, 2 / 3]) if interest.any() else np.zeros(2)
    tercile = np.searchsorted(cuts, length, side="right")  # 0 short, 1 medium, 2 long
    rows = []
    for src, src_name in [(None, "all"), *SOURCES.items()]:
        for ter, ter_name in [(None, "all"), (0, "short"), (1, "medium"), (2, "long")]:
            sel = interest & (source == src if src is not None else True) & (tercile == ter if ter is not None else True)
            n = int(sel.sum())
            rows.append({"interest": src_name, "history": ter_name, "n": n,
                         "share": float(share[sel].mean()) if n else float("nan"),
                         "hit": float(hit[sel].mean()) if n else float("nan")})
    return {"groups": rows, "length_terciles": [float(c) for c in cuts], "n_samples": int(len(keys)),
            "n_interest_samples": int(interest.sum()), "k": int(kept.shape[1]) if kept.ndim == 2 else 0}


@torch.no_grad()
def kept_item_ids(model: CTRModel, batch: Batch, item_ids: np.ndarray) -> np.ndarray | None:
    """Raw item ids (B, K) the model's GSU keeps for each sample of `batch` (-1 where nothing is kept); None
    for a model without a GSU. `item_ids[r - 1]` is the raw id of item row r."""
    if not isinstance(model, TwoStage):
        return None
    target = model.items(batch.target)  # (B, D)
    sel = take(batch.seq, *model.gsu(batch, target, model.attn.query(target)))  # the ESU's input, (B, K')
    ids = np.where(sel.mask.cpu().numpy(), item_ids[np.maximum(sel.rows.cpu().numpy() - 1, 0)], -1)  # (B, K')
    return np.pad(ids, ((0, 0), (0, model.cfg.attention.top_k - ids.shape[1])), constant_values=-1)
