"""The one training step (BCE on the logits, then the optimizer) and the one pass over a table of samples in
its order; the streaming trainer, the nearline trainer and `twinv2 bench train` all call these."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pandas as pd
import torch
from torch.nn import functional as F

from twinv2.models.batch import Batch
from twinv2.models.frame import CTRModel
from twinv2.train.batching import Batcher
from twinv2.train.optim import SplitAdam

T = TypeVar("T")


def train_step(model: CTRModel, opt: SplitAdam, batch: Batch, times: dict[str, float] | None = None) -> float:
    """One step on `batch`; returns its mean loss. `times` (optional) receives the seconds of the forward (with
    the loss), the backward and the optimizer."""
    t0 = time.perf_counter()
    loss = F.binary_cross_entropy_with_logits(model(batch), batch.label)
    t1 = time.perf_counter()
    opt.zero_grad()
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    if times is not None:
        times.update(forward=t1 - t0, backward=t2 - t1, optimizer=time.perf_counter() - t2)
    return float(loss.detach())


def prefetched(build: Callable[[int], T], keys: Sequence[int]) -> Iterator[T]:
    """build(k) for each of `keys` in order, with one background thread building the next while the caller
    works on this one (numpy's copies and torch's kernels release the GIL, so batch building overlaps the
    model's step). The results and their order are those of a plain loop."""
    if len(keys) < 2:
        yield from map(build, keys)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="twinv2-batches") as pool:
        nxt = pool.submit(build, keys[0])
        for i in range(len(keys)):
            got = nxt.result()
            if i + 1 < len(keys):
                nxt = pool.submit(build, keys[i + 1])
            yield got


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def batches(batcher: Batcher, df: pd.DataFrame, size: int, prefetch: bool = True,
            device: torch.device | str | None = None) -> Iterator[tuple[pd.DataFrame, Batch]]:
    """(rows, Batch) for consecutive `size`-row slices of `df` (user_id, item_id, ts, label), in order, each
    Batch on `device` (None: where the batcher builds it, the CPU). With `prefetch` the next batch is built
    (and copied to the device) in a background thread; the batcher is used by that thread only meanwhile."""
    move = device is not None and torch.device(device).type != "cpu"

    def build(s: int) -> tuple[pd.DataFrame, Batch]:
        part = df.iloc[s:s + size]
        batch = batcher.batch(part["user_id"].to_numpy(), part["item_id"].to_numpy(), part["ts"].to_numpy(),
                              part["label"].to_numpy())
        return part, batch.to(device) if move else batch

    starts = range(0, len(df), size)
    return prefetched(build, starts) if prefetch else map(build, starts)


def train_rows(model: CTRModel, opt: SplitAdam, batcher: Batcher, df: pd.DataFrame, batch_size: int,
               on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    """One pass over `df` in its order, `batch_size` samples a step; returns the sample-weighted mean loss, the
    seconds and samples/s. `on_batch(n)` is called after each step (progress bars)."""
    model.train()
    t0, seen, total = time.perf_counter(), 0, 0.0
    for part, batch in batches(batcher, df, batch_size, device=model_device(model)):
        total += train_step(model, opt, batch) * len(part)
        seen += len(part)
        if on_batch is not None:
            on_batch(len(part))
    sec = time.perf_counter() - t0
    return {"train_loss": total / max(seen, 1), "train_seconds": sec, "train_samples_per_s": seen / max(sec, 1e-9)}

