"""`twinv2 bench train --nproc N`: data-parallel scaling of a training step (train/distributed.py).

For each (model, GSU length) the same two synthetic global batches (bench/train.py's `_synthetic`, batch 256,
full-length histories, 200,000 items) are trained on by
- one process with `threads // N` torch threads (the resources of one of the N ranks): rate_1;
- N processes of `threads // N` threads each, every rank taking its contiguous part of each global batch and
  the gradients summed before each step (dense all_reduce, sparse all_gather): rate_N;
- one process with all `threads` (what `twinv2 bench train` measures): rate_1_all.
Each runs in fresh spawned processes (train/distributed.py `launch`). A step's time is the slowest rank's
(every step starts at a barrier and ends after the gradient sync); rates are global samples over the median of
the timed steps after two warm-up steps. Scaling efficiency = rate_N / (N · rate_1): 1.0 is perfect. On a
machine with fewer free cores than N · threads_per_rank the ranks share cores and the efficiency says so; the
load average at the start is recorded for that reason.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import fields
from typing import Any

from twinv2.bench.train import _synthetic, _tables
from twinv2.train.distributed import launch


def _part(x: Any, lo: int, hi: int) -> Any:
    """Rows [lo, hi) of a Batch / Seq / tensor (None stays None)."""
    import torch

    from twinv2.models.batch import Batch, Seq

    if isinstance(x, torch.Tensor):
        return x[lo:hi]
    if isinstance(x, (Batch, Seq)):
        return type(x)(**{f.name: _part(getattr(x, f.name), lo, hi) for f in fields(x)})
    return x


def run_rank(model_name: str, L: int, n_items: int, B: int, steps: int, seed: int) -> dict[str, Any]:
    """This rank's share of `steps` timed global steps (called in every rank by `launch`)."""
    import torch
    import torch.distributed as dist

    from twinv2.models.frame import ModelConfig
    from twinv2.models.registry import build_model
    from twinv2.train.distributed import Ranks, SyncedOptimizer, all_reduce, broadcast_state
    from twinv2.train.features import CROSS_BUCKETS
    from twinv2.train.optim import SplitAdam
    from twinv2.train.step import train_step

    ranks = Ranks.current()
    torch.manual_seed(seed)
    model = build_model(model_name, _tables(n_items, seed), ModelConfig(seq_len=L), CROSS_BUCKETS)
    broadcast_state(model)
    opt: Any = SplitAdam(model, lr=1e-3)
    lo, hi = ranks.share(B)
    if ranks.world > 1:
        opt = SyncedOptimizer(opt, model)
        opt.weight = (hi - lo) / B
    parts = [_part(_synthetic(n_items, B, L, model.sequence == "clusters", seed + i), lo, hi) for i in range(2)]
    model.train()
    step, parts_ms = [], {"forward": [], "backward": [], "optimizer": []}
    for i in range(steps + 2):
        if ranks.world > 1:
            dist.barrier()  # every rank starts the step together, so a step's time is its slowest rank's
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        train_step(model, opt, parts[i % 2], times)
        if i >= 2:  # warm-up excluded
            step.append(time.perf_counter() - t0)
            for k in parts_ms:
                parts_ms[k].append(1000 * times[k])
    slowest = all_reduce(step, "max")
    return {"rank": ranks.rank, "rows": hi - lo, "threads": torch.get_num_threads(),
            "step_s": statistics.median(slowest), "own_step_s": statistics.median(step),
            "step_ms": {k: statistics.median(v) for k, v in parts_ms.items()}}


def _measure(nproc: int, threads: int, model_name: str, L: int, n_items: int, B: int, steps: int,
             seed: int) -> dict[str, Any]:
    ranks = launch(nproc, run_rank, model_name, L, n_items, B, steps, seed, threads=threads)
    step = ranks[0]["step_s"]  # the same on every rank (the max over ranks of each step)
    return {"nproc": nproc, "threads_per_rank": threads, "train_samples_per_s": B / step, "step_ms": 1000 * step,
            "rank0_step_ms": ranks[0]["step_ms"],  # optimizer includes the gradient sync
            "rows_per_rank": [r["rows"] for r in ranks]}


def bench_ddp(nproc: int = 2, models: tuple[str, ...] = ("twin_v2", "twin"), lengths: tuple[int, ...] = (1_000,),
              n_items: int = 200_000, B: int = 256, steps: int = 8, threads: int = 2, seed: int = 0
              ) -> dict[str, Any]:
    """Training samples/s with 1 and `nproc` processes and the scaling efficiency (module docstring)."""
    if not isinstance(nproc, int) or nproc < 2:
        raise ValueError(f"bench_ddp compares 1 process with nproc > 1 processes; got nproc={nproc!r}")
    if steps < 1 or threads < 1 or B < nproc:
        raise ValueError(f"bad bench_ddp settings: steps={steps}, threads={threads}, batch={B} (needs >= nproc)")
    load = os.getloadavg()
    per_rank = max(1, threads // nproc)
    rows = []
    for m in models:
        for L in lengths:
            args = (m, L, n_items, B, steps, seed)
            one = _measure(1, per_rank, *args)
            many = _measure(nproc, per_rank, *args)
            full = _measure(1, threads, *args) if threads != per_rank else one
            eff = many["train_samples_per_s"] / (nproc * one["train_samples_per_s"])
            rows.append({"model": m, "gsu_length": L, "batch": B, "steps": steps, "nproc": nproc,
                         "threads_per_rank": per_rank, "rate_1": one["train_samples_per_s"],
                         "rate_n": many["train_samples_per_s"], "rate_1_all_threads": full["train_samples_per_s"],
                         "scaling_efficiency": eff,
                         "speedup_vs_one_process_all_threads": many["train_samples_per_s"]
                         / full["train_samples_per_s"],
                         "runs": {"one": one, "n": many, "one_all_threads": full}})
            print(f"{m:8s} L={L:>6,}: 1 proc x {per_rank} thr {one['train_samples_per_s']:7.0f}/s   {nproc} proc "
                  f"{many['train_samples_per_s']:7.0f}/s   efficiency {eff:.2f}   (1 proc x {threads} thr "
                  f"{full['train_samples_per_s']:7.0f}/s)", file=sys.stderr)
    return {"rows": rows, "nproc": nproc, "threads": threads, "n_items": n_items,
            "efficiency": "rate_n / (nproc * rate_1); rate_1 = one process with threads_per_rank threads",
            "machine": {"cpus": os.cpu_count(), "load_avg_start": load, "load_avg_end": os.getloadavg()}}
