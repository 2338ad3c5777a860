"""The one training step (BCE on the logits, then the optimizer) and the one pass over a table of samples in
its order; the streaming trainer, the nearline trainer and `twinv2 bench train` all call these."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from torch.nn import functional as F

from twinv2.models.batch import Batch
from twinv2.models.frame import CTRModel
from twinv2.train.batching import Batcher
from twinv2.train.optim import SplitAdam


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


def batches(batcher: Batcher, df: pd.DataFrame, size: int, prefetch: bool = True) -> Iterator[tuple[pd.DataFrame, Batch]]:
    """(rows, Batch) for consecutive `size`-row slices of `df` (user_id, item_id, ts, label), in order.

    With `prefetch`, one background thread builds the next batch while the caller works on this one (numpy's
    copies and torch's kernels release the GIL, so batch building overlaps the model's step); the batches and
    their order are the same either way. The batcher is used by that one thread only while iterating."""
    def build(s: int) -> tuple[pd.DataFrame, Batch]:
        part = df.iloc[s:s + size]
        return part, batcher.batch(part["user_id"].to_numpy(), part["item_id"].to_numpy(), part["ts"].to_numpy(),
                                   part["label"].to_numpy())

    starts = range(0, len(df), size)
    if not prefetch or len(starts) < 2:
        yield from map(build, starts)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="twinv2-batches") as pool:
        nxt = pool.submit(build, starts[0])
        for i in range(len(starts)):
            part, batch = nxt.result()
            if i + 1 < len(starts):
                nxt = pool.submit(build, starts[i + 1])
            yield part, batch


def train_rows(model: CTRModel, opt: SplitAdam, batcher: Batcher, df: pd.DataFrame, batch_size: int,
               on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    """One pass over `df` in its order, `batch_size` samples a step; returns the sample-weighted mean loss, the
    seconds and samples/s. `on_batch(n)` is called after each step (progress bars)."""
    model.train()
    t0, seen, total = time.perf_counter(), 0, 0.0
    for part, batch in batches(batcher, df, batch_size):
        total += train_step(model, opt, batch) * len(part)
        seen += len(part)
        if on_batch is not None:
            on_batch(len(part))
    sec = time.perf_counter() - t0
    return {"train_loss": total / max(seen, 1), "train_seconds": sec, "train_samples_per_s": seen / max(sec, 1e-9)}

