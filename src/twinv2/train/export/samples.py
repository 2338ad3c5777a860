"""Which samples an export holds, in which split, and where each one's history lies in the CSR arrays.

Splits follow the trainer's protocol (train/trainer.py), asked of the same `EvalDay.train_mask` /
`EvalDay.test_mask`: every hour of a warm-up day and hours 0-22 of an evaluation day are training samples,
hour 23 of an evaluation day is test (by default: a sparse log's import may test more hours, `split.test_hours`).
FuxiCTR wants a validation set too (early stopping): it is the training hour right before each day's test
hours (hour 22 by default), held out of train, so valid sits on the
same days as test and has about its size; train.parquet + valid.parquet are exactly the trainer's training
samples and test.parquet exactly its test samples. The trainer's `max_train_per_day` subsample is a training
budget, not part of the split: an export holds every sample. Samples outside every protocol day (which the
trainer never reads) are counted, not exported.

A sample's history is its user's behaviours with ts < the sample's ts, found exactly as the batcher finds it
(`BehaviourCSR.ranges_before`: one binary search per sample on the shard's time column); rows keep the
shard's (user_id, ts) order, so the most recent behaviour is last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from twinv2.data.storage import HOUR_MS, Dataset, shard_of

SPLITS = ("train", "valid", "test")
VALID_HOURS = 1  # the training hour(s) right before each day's test hours held out as FuxiCTR's validation set


@dataclass(frozen=True)
class ProtocolSamples:
    """The dataset's samples in the trainer's order (ts, user_id, item_id), each with its protocol day."""

    samples: pd.DataFrame  # every sample column of the dataset, plus `day` (int64: evaluation day index,
    #  warm-up days -W..-1)
    rows: dict[str, np.ndarray]  # split name -> positions into `samples`, ascending (time order)
    unused: int  # samples outside every protocol day

    def part(self, split: str) -> pd.DataFrame:
        return self.samples.iloc[self.rows[split]]


def protocol_samples(ds: Dataset) -> ProtocolSamples:
    """Split the dataset's samples as the trainer does (module docstring), valid = the hour before each
    evaluation day's test hours."""
    samples = ds.samples()
    ts = samples["ts"].to_numpy()
    n = len(samples)
    which = np.full(n, -1, np.int8)  # index into SPLITS; -1 = outside every protocol day
    day = np.zeros(n, np.int64)
    warm = ds.warmup_days
    for d in warm:
        m = d.train_mask(ts)  # a warm-up day is all training
        assert not (which[m] >= 0).any(), "protocol days overlap"
        which[m], day[m] = 0, d.index - len(warm)
    for d in ds.eval_days:
        train, test = d.train_mask(ts), d.test_mask(ts)
        assert not (which[train | test] >= 0).any(), "protocol days overlap"
        valid = train & (ts >= d.test_start_ms - VALID_HOURS * HOUR_MS)
        which[train], which[valid], which[test] = 0, 1, 2
        day[train | test] = d.index
    samples = samples.assign(day=day)
    rows = {name: np.flatnonzero(which == k) for k, name in enumerate(SPLITS)}
    return ProtocolSamples(samples=samples, rows=rows, unused=int((which < 0).sum()))


def history_bounds(ds: Dataset, user_id: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(shard, start, cut) per sample, each (B,) int64: the user's behaviours are rows [start, end) of that
    shard's CSR and those strictly before the sample rows [start, cut), as the batcher slices them."""
    user_id = np.asarray(user_id, np.int64)
    ts = np.asarray(ts, np.int64)
    shard = shard_of(user_id, ds.n_shards)
    start = np.zeros(len(user_id), np.int64)
    cut = np.zeros(len(user_id), np.int64)
    for s in np.unique(shard):
        i = np.flatnonzero(shard == s)
        start[i], cut[i] = ds.csr(int(s)).ranges_before(user_id[i], ts[i])
    return shard, start, cut
