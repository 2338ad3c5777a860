"""The nearline trainer's model side (paper §3.4): continue a checkpoint's model on windows of new samples
with the one training step, and publish checkpoints a server swaps to. serve/nearline.py reads the inbox,
forms the windows and refreshes the clusters; it trains and publishes only through this class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twinv2.config import from_dict
from twinv2.data.sealed import write_sealed
from twinv2.data.storage import Dataset, EvalDay
from twinv2.offline.store import ClusterSnapshot
from twinv2.train.batching import Batcher
from twinv2.train.checkpoint import LATEST, load_model, save_checkpoint
from twinv2.train.optim import SplitAdam
from twinv2.train.step import train_rows
from twinv2.train.trainer import TrainConfig, item_tables


class NearlineTrainer:
    """The model of checkpoint `path`, trained on `ds`'s samples (its vocabulary must be the checkpoint's).
    `lr` / `batch_size` 0 = the checkpoint's TrainConfig values; the optimizer's moments start afresh."""

    def __init__(self, ds: Dataset, path: Path, lr: float = 0.0, batch_size: int = 0) -> None:
        self.model, self.vocab, ck = load_model(path)
        self.cfg = from_dict(TrainConfig, ck["config"], where=f"{path} config")
        if self.model.sequence != "clusters":
            raise ValueError(f"{path}: nearline trains cluster models (twin_v2), not {self.cfg.model!r}")
        ds_vocab, _ = item_tables(ds)
        if not np.array_equal(ds_vocab.item_ids, self.vocab.item_ids):
            raise ValueError(f"{ds.root}: its items differ from the checkpoint's vocabulary ({path}); a new "
                             f"vocabulary needs a model trained on it (`twinv2 train`)")
        self.opt = SplitAdam(self.model, lr or self.cfg.lr)
        self.batch_size = batch_size or self.cfg.batch_size
        self.batcher = Batcher(ds, ds_vocab, "clusters", self.model.seq_len, recent_len=self.model.recent_len)

    def train_window(self, df: pd.DataFrame, snapshot: ClusterSnapshot, start_ms: int) -> float:
        """One pass over the window's samples `df` (in time order) reading `snapshot` (taken at or before the
        window's start, `start_ms`); returns the mean loss."""
        self.batcher.use_snapshot(snapshot, EvalDay(index=0, label=f"window@{start_ms}", start_ms=start_ms))
        return train_rows(self.model, self.opt, self.batcher, df, self.batch_size)["train_loss"]

    def publish(self, out: Path, seq: int, info: dict[str, Any], keep: int) -> Path:
        """Write checkpoints/ckpt-<seq>.pt, then point LATEST at it (both atomic); keep the newest `keep`."""
        d = Path(out) / "checkpoints"
        d.mkdir(parents=True, exist_ok=True)
        name = f"ckpt-{seq:06d}.pt"
        save_checkpoint(d / name, self.model, self.cfg, self.vocab, {"nearline": info})
        write_sealed(Path(out) / LATEST, {"checkpoint": f"checkpoints/{name}", **info})
        for old in sorted(d.glob("ckpt-*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
        return d / name
