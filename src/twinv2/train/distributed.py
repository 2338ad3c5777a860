"""Data-parallel training over `torch.distributed`: gloo on CPU, nccl on CUDA tensors.

Launch: `torchrun --nproc_per_node N -m twinv2.cli train ...` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT come from the environment) or `twinv2 train ... --nproc N`, which calls `launch`: N fresh local
processes (spawned, not forked, so each starts its own torch thread pool) that form one group on 127.0.0.1 and a
free port. The trainer's tensors live on the CPU, so `twinv2 train` joins with gloo; the gradient sync itself
works on CUDA tensors under nccl (`init_from_env("auto")` picks it when CUDA is there). The first rank to fail
ends the job: the others are terminated and its error is raised in the caller. Every collective has a timeout
(`init_process_group(timeout=...)`), so a rank that stops answering makes the others fail after `timeout_s`
instead of hanging.

What each rank trains on (`train_rows_sharded`): global batch i is rows [i·G, (i+1)·G) of the day's
time-ordered training table (G = TrainConfig.batch_size, the last batch may be shorter, n_i rows); rank r takes
the contiguous r-th part of it, rows [n_i·r/W, n_i·(r+1)/W). The rank's loss is the mean over its n_r rows, so
the single-process gradient of the global batch (a mean over n_i) is Σ_r (n_r / n_i) ∇loss_r: each rank scales
its gradient by n_r / n_i and the ranks SUM them (`sync_gradients`). That is exact for uneven and short last
batches, and a rank whose share is empty still joins the collectives with a zero gradient.

Gradients (`sync_gradients`, run by `SyncedOptimizer.step()` right before the wrapped optimizer steps, so the
one training step of train/step.py is unchanged):
- dense parameters: every rank's scaled gradients are packed into one flat buffer (per dtype) and
  all_reduce(SUM)ed once, then unpacked into `p.grad`;
- sparse embedding tables (nn.Embedding(sparse=True), stepped by SparseAdam): a rank's gradient only names the
  rows its batch touched, and different ranks touch different rows, so an all_reduce over the table would be
  both wrong in kind and O(table). Instead each rank coalesces its gradient (unique rows, summed values),
  scales the values, and all_gathers the row indices and values of every table (counts first, then one padded
  buffer of indices and one of values for all tables together); every rank concatenates what all ranks sent
  and coalesces it again, which sums the values of rows touched by several ranks. The result is the
  single-process sparse gradient of the global batch (up to float summation order), on every rank.
- a parameter with no gradient on some ranks (unused by their share) counts as zero there; one with no
  gradient on every rank keeps `grad = None`, as in a single process (Adam then skips it).

All ranks start from the same seed, and rank 0's parameters and buffers are broadcast once to be safe. Each
rank evaluates the contiguous r-th part of the test hour and the scores are all_gathered in rank order
(`evaluate_sharded`), so every rank computes the same metrics; rank 0 alone writes checkpoints, predictions
and metrics.json and shows progress. On CPU the TrainConfig.threads are split across the local ranks
(`Ranks.threads`, at least 1 each).
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from twinv2.train.batching import Batcher
from twinv2.train.step import batches, model_device, prefetched, train_step

DEFAULT_TIMEOUT_S = 600.0  # longest a rank waits for the others in one collective (day-end writes, slow shares)
BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group; (0, 1, 0, 1) when torch.distributed is not initialised."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @staticmethod
    def current() -> "Ranks":
        if not (dist.is_available() and dist.is_initialized()):
            return Ranks()
        world = dist.get_world_size()
        return Ranks(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                     int(os.environ.get("LOCAL_WORLD_SIZE", world)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def threads(self, total: int) -> int:
        """Torch threads for this rank: the machine's `total` split across the ranks on this host."""
        return max(1, total // self.local_world)

    def share(self, n: int) -> tuple[int, int]:
        """[lo, hi) of this rank's contiguous part of n rows (sizes differ by at most one)."""
        return n * self.rank // self.world, n * (self.rank + 1) // self.world


# ---- process groups ------------------------------------------------------------------------------------------
def _env_int(name: str) -> int:
    v = os.environ.get(name)
    if v is None or not v.strip().lstrip("-").isdigit():
        raise ValueError(f"environment variable {name}={v!r}: expected an integer (set by torchrun or launch)")
    return int(v)


def init_from_env(backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> Ranks:
    """Join the group described by RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (torchrun's
    variables). backend "auto": nccl when CUDA is available, else gloo."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    return Ranks.current()


@contextmanager
def group_from_env(backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Ranks]:
    """Under torchrun (WORLD_SIZE > 1 in the environment) join its group for the block and leave it after;
    otherwise (or when a group already exists) yield the current Ranks and change nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield Ranks.current()
        return
    ranks = init_from_env(backend, timeout_s)
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


def backend() -> str | None:
    """The current group's backend ("gloo", "nccl"), None outside a group."""
    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[..., Any], args: tuple, kwargs: dict, world: int, port: int, backend: str,
           timeout_s: float, threads: int | None, tmp: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        init_from_env(backend, timeout_s)
    except BaseException as e:
        _record(tmp, rank, e)
        raise
    try:
        result = fn(*args, **kwargs)
        dist.barrier()  # no rank leaves the group while another still talks to it
    except BaseException as e:
        _record(tmp, rank, e)  # before leaving the group: the others' errors are echoes of this one
        raise
    finally:
        dist.destroy_process_group()
    (Path(tmp) / f"{rank}.out").write_bytes(pickle.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()
    # Leave without interpreter finalization: C++ teardown of gloo/torch objects there aborted a rank
    # ("terminate called without an active exception", SIGABRT) once in a CI run, after its work was done.
    os._exit(0)


def _record(tmp: str, rank: int, e: BaseException) -> None:
    try:
        part = Path(tmp) / f"{rank}.err.part"
        part.write_bytes(pickle.dumps((time.time(), e, traceback.format_exc())))
        part.rename(part.with_suffix(""))  # whole or absent when the parent reads it
    except Exception:  # an exception that cannot be pickled: the parent shows torch's report instead
        pass


def launch(nproc: int, fn: Callable[..., Any], *args: Any, backend: str = "gloo",
           timeout_s: float = DEFAULT_TIMEOUT_S, threads: int | None = None, **kwargs: Any) -> list[Any]:
    """fn(*args, **kwargs) in `nproc` fresh local processes forming one group (127.0.0.1, a free port);
    returns every rank's return value in rank order. `fn` and its arguments must pickle (a module-level
    function). `threads`: torch threads per process (None: torch's default). A failing rank terminates the
    others; its exception is raised here (user errors keep their type, their message names the rank)."""
    import torch.multiprocessing as mp

    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive integer, got {nproc!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}  # see _child_env
    if threads is not None:  # read by each child's OpenMP at import, before torch.set_num_threads
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="twinv2-ddp-") as tmp:
        with _child_env(env):
            ctx = mp.start_processes(_entry, args=(fn, args, kwargs, nproc, free_port(), backend, timeout_s,
                                                   threads, tmp), nprocs=nproc, join=False, start_method="spawn")
        try:
            while not ctx.join(timeout=1.0):
                pass
        except mp.ProcessRaisedException as e:
            _raise_rank_error(Path(tmp), e.error_index, e)
        except mp.ProcessExitedException as e:
            raise RuntimeError(f"rank {e.error_index} of {nproc} died ({e}); the other ranks were stopped") from e
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
        return [pickle.loads((Path(tmp) / f"{r}.out").read_bytes()) for r in range(nproc)]


@contextmanager
def _child_env(env: dict[str, str]) -> Iterator[None]:
    """os.environ with `env` on top while the children are spawned (they copy it), restored after.
    OMP_WAIT_POLICY=PASSIVE unless the user chose one: a rank waiting in a collective must not keep spinning
    OpenMP workers on the cores the other ranks need (on a busy 2-core box a spinning 2-thread step was ~5x
    slower; serve/commands.py's prefer_passive_omp has the serving figures)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _raise_rank_error(tmp: Path, rank: int, raised: Exception) -> None:
    """Raise the first rank's error: the others' are mostly its echo (a peer closed the connection), and
    torch reports whichever process it noticed first."""
    errors = []
    for f in tmp.glob("*.err"):
        try:
            errors.append((*pickle.loads(f.read_bytes()), int(f.stem)))
        except Exception:  # half-written by a rank being terminated, or unpicklable: not the first error
            continue
    if not errors:
        raise RuntimeError(f"rank {rank} failed; the other ranks were stopped:\n{raised}") from raised
    _, original, tb, rank = min(errors, key=lambda e: e[0])
    cause = RuntimeError(f"rank {rank}:\n{tb}")  # the first failing rank's own traceback
    if type(original) in (ValueError, TypeError, FileNotFoundError, FileExistsError):
        raise type(original)(f"rank {rank}: {original}") from cause
    if isinstance(original, Exception):
        raise original from cause  # keeps its type (DataError, a torch error, ...)
    raise RuntimeError(f"rank {rank} failed with {original!r}; the other ranks were stopped") from cause


# ---- parameters and gradients --------------------------------------------------------------------------------
def broadcast_state(model: nn.Module, src: int = 0) -> None:
    """Every rank takes rank `src`'s parameters and buffers (in place)."""
    if Ranks.current().world == 1:
        return
    with torch.no_grad():
        for t in model.state_dict().values():
            dist.broadcast(t, src)


def sync_gradients(params: Sequence[nn.Parameter], weight: float) -> None:
    """Replace each parameter's gradient by Σ_ranks weight_r · grad_r (see the module docstring): dense ones by
    one all_reduce per dtype, sparse ones by all_gathering their coalesced rows and values."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1] (a rank's share of the global batch), got {weight}")
    if Ranks.current().world == 1:
        if weight != 1.0:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(weight)
        return
    kinds = _agree_kinds(params)
    _sum_dense([p for p, k in zip(params, kinds) if k == 1], weight)
    _sum_sparse([p for p, k in zip(params, kinds) if k == 2], weight)


def _device(params: Sequence[nn.Parameter]) -> torch.device:
    return params[0].device if params else torch.device("cpu")


def _agree_kinds(params: Sequence[nn.Parameter]) -> list[int]:
    """Per parameter 0 = no gradient on any rank, 1 = dense, 2 = sparse (MAX over ranks: the kind of the
    ranks that have one)."""
    local = [0 if p.grad is None else (2 if p.grad.is_sparse else 1) for p in params]
    t = torch.tensor(local, dtype=torch.int64, device=_device(params))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    kinds = t.tolist()
    for p, mine, k in zip(params, local, kinds):
        if mine and mine != k:
            raise RuntimeError(f"parameter of shape {tuple(p.shape)} has a {'sparse' if mine == 2 else 'dense'} "
                               f"gradient here and the other kind on another rank")
    return kinds


def _sum_dense(params: list[nn.Parameter], weight: float) -> None:
    by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
        flat.mul_(weight)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        at = 0
        for p in group:
            p.grad = flat[at:at + p.numel()].view_as(p)
            at += p.numel()


def _sum_sparse(params: list[nn.Parameter], weight: float) -> None:
    if not params:
        return
    world, dev = Ranks.current().world, _device(params)
    local = []
    for p in params:
        if p.grad is None:
            idx = torch.zeros((1, 0), dtype=torch.int64, device=dev)
            val = torch.zeros((0, *p.shape[1:]), dtype=p.dtype, device=dev)
        else:
            g = p.grad.coalesce()
            if g.sparse_dim() != 1:
                raise ValueError(f"sparse gradient of shape {tuple(p.shape)} has sparse_dim {g.sparse_dim()}; "
                                 f"only row-sparse (embedding) gradients are supported")
            idx, val = g.indices(), g.values() * weight
        local.append((idx.reshape(-1), val.reshape(-1)))
    counts = torch.tensor([i.numel() for i, _ in local], dtype=torch.int64, device=dev)
    all_counts = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(all_counts, counts)
    per_rank = torch.stack(all_counts).tolist()  # [rank][param] rows sent
    row = [int(np.prod(p.shape[1:])) for p in params]  # values per row
    n_idx = max(sum(c) for c in per_rank)
    n_val = max(sum(c * r for c, r in zip(cs, row)) for cs in per_rank)
    if n_idx == 0:
        for p in params:
            p.grad = torch.sparse_coo_tensor(torch.zeros((1, 0), dtype=torch.int64, device=dev),
                                             torch.zeros((0, *p.shape[1:]), dtype=p.dtype, device=dev), p.shape,
                                             check_invariants=False).coalesce()
        return
    idx_buf = _padded(torch.cat([i for i, _ in local]), n_idx)
    val_buf = _padded(torch.cat([v for _, v in local]), n_val)
    idx_all = [torch.empty_like(idx_buf) for _ in range(world)]
    val_all = [torch.empty_like(val_buf) for _ in range(world)]
    dist.all_gather(idx_all, idx_buf)
    dist.all_gather(val_all, val_buf)
    for j, p in enumerate(params):
        idx_parts, val_parts = [], []
        for r in range(world):
            c = per_rank[r]
            i0, v0 = sum(c[:j]), sum(cj * rj for cj, rj in zip(c[:j], row[:j]))
            idx_parts.append(idx_all[r][i0:i0 + c[j]])
            val_parts.append(val_all[r][v0:v0 + c[j] * row[j]])
        values = torch.cat(val_parts).view(-1, *p.shape[1:])
        p.grad = torch.sparse_coo_tensor(torch.cat(idx_parts).view(1, -1), values, p.shape,
                                         check_invariants=False).coalesce()


def _padded(x: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(n - x.numel())]) if x.numel() < n else x


class SyncedOptimizer:
    """Wraps an optimizer (SplitAdam): `step()` first sums the ranks' gradients, each scaled by `weight` (set
    by the caller before each step to this rank's share of the global batch), then steps it. Everything else
    is the wrapped optimizer's."""

    def __init__(self, inner: Any, model: nn.Module) -> None:
        self.inner = inner
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.weight = 1.0

    def zero_grad(self) -> None:
        self.inner.zero_grad()

    def step(self) -> None:
        sync_gradients(self.params, self.weight)
        self.inner.step()

    def state_dict(self) -> Any:
        return self.inner.state_dict()

    def load_state_dict(self, states: Any) -> None:
        self.inner.load_state_dict(states)


# ---- one pass and one evaluation, sharded ---------------------------------------------------------------------
def all_reduce(values: Sequence[float], op: str = "sum") -> list[float]:
    """Element-wise "sum" or "max" over the ranks (float64, on the CPU: gloo; use under nccl needs CUDA)."""
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
    if op not in ops:
        raise ValueError(f"op must be 'sum' or 'max', got {op!r}")
    t = torch.tensor(list(values), dtype=torch.float64)
    if Ranks.current().world > 1:
        if backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=ops[op])
    return t.cpu().tolist()


def train_rows_sharded(model: nn.Module, opt: Any, batcher: Batcher, df: pd.DataFrame,
                       batch_size: int, ranks: Ranks, on_batch: Callable[[int], None] | None = None
                       ) -> dict[str, float]:
    """train/step.py's `train_rows` over this rank's part of each global batch (module docstring); the loss and
    samples/s it returns are the whole group's, the same on every rank."""
    if not isinstance(opt, SyncedOptimizer):
        raise TypeError(f"train_rows_sharded needs a SyncedOptimizer, got {type(opt).__name__}")
    model.train()
    t0, total, seen = time.perf_counter(), 0.0, 0
    for n, part, batch in _my_parts(batcher, df, batch_size, ranks, model_device(model)):
        opt.weight = len(part) / n
        if batch is not None:
            total += train_step(model, opt, batch) * len(part)
            seen += len(part)
        else:  # nothing of this global batch here: join the step with a zero gradient
            opt.zero_grad()
            opt.step()
        if on_batch is not None:
            on_batch(n)
    total, seen_all = all_reduce([total, seen])
    (sec,) = all_reduce([time.perf_counter() - t0], "max")  # the slowest rank's: the same on every rank
    return {"train_loss": total / max(seen_all, 1), "train_seconds": sec,
            "train_samples_per_s": seen_all / max(sec, 1e-9)}


def _my_parts(batcher: Batcher, df: pd.DataFrame, size: int, ranks: Ranks, device: torch.device
              ) -> Iterator[tuple[int, pd.DataFrame, Any]]:
    """(global batch size n, this rank's rows, their Batch or None when empty) per global batch; like step.py's
    `batches`, one background thread builds the next Batch while the caller steps on this one."""
    def build(s: int) -> tuple[int, pd.DataFrame, Any]:
        n = min(size, len(df) - s)
        lo, hi = ranks.share(n)
        part = df.iloc[s + lo:s + hi]
        return n, part, next(batches(batcher, part, len(part), prefetch=False, device=device))[1] \
            if len(part) else None

    return prefetched(build, range(0, len(df), size))


def evaluate_sharded(evaluate: Callable[[pd.DataFrame], tuple], df: pd.DataFrame, ranks: Ranks) -> tuple:
    """`evaluate(df)` (StreamingTrainer.evaluate's result: scores, zero-shot scores or None, kept ids or None,
    samples/s) with each rank scoring its contiguous part of `df`, gathered in rank order on every rank."""
    lo, hi = ranks.share(len(df))
    mine = evaluate(df.iloc[lo:hi])
    parts: list[Any] = [None] * ranks.world
    dist.all_gather_object(parts, (hi - lo, *mine))
    sec = max((n / rate for n, *_, rate in parts if n), default=0.0)

    def joined(k: int) -> np.ndarray | None:
        got = [p[k] for p in parts if p[k] is not None and p[0]]
        if all(p[k] is None for p in parts):
            return None
        return np.concatenate(got) if got else next(p[k] for p in parts if p[k] is not None)

    return joined(1), joined(2), joined(3), len(df) / max(sec, 1e-9)
