"""`twinv2 bench train`: training and inference samples/s and peak RSS of TWIN and TWIN-V2 at GSU lengths
1,000 and 10,000 (batch 256, 2 threads, 200,000 items), end to end (batch building included), with a
breakdown of where the time goes.

Each (model, length) runs in its own child process so its peak RSS is its own. The batches are built by the
trainer's Batcher from synthetic CSR arrays in place of a dataset, and are full: every sample has L valid
elements (Zipf-popular items, random cross buckets, cluster sizes 1–19 for TWIN-V2), which is the worst case
for the GSU and for batch building. `_synthetic` builds such a batch directly (other benchmarks use it).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

# FuxiCTR's TWIN measured on this machine with the same shapes (issue #4): samples/s and peak GB.
REFERENCE = {
    "fuxictr_twin_10000": {"train_samples_per_s": 16, "infer_samples_per_s": 50, "peak_rss_gb": 11.0},
    "fuxictr_twin_1000": {"train_samples_per_s": 181, "infer_samples_per_s": 600},
}
TARGETS = {"train_samples_per_s": 1000, "infer_samples_per_s": 4000, "peak_rss_gb": 6.0}  # twin_v2 at 10,000


def _synthetic(n_items: int, B: int, L: int, clusters: bool, seed: int):
    import torch

    from twinv2.models.batch import Batch, Seq
    from twinv2.train.features import CROSS_BUCKETS

    from twinv2.models.frame import ModelConfig

    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items) ** 0.9

    def seq(n: int, log_n: bool) -> Seq:
        rows = rng.choice(np.arange(1, n_items), size=(B, n), p=pop / pop.sum())
        cross = np.stack([rng.integers(1, k, (B, n)) for k in CROSS_BUCKETS], -1)
        return Seq(rows=torch.from_numpy(rows.astype(np.int32)), cross=torch.from_numpy(cross.astype(np.int32)),
                   mask=torch.ones(B, n, dtype=torch.bool),
                   log_n=torch.from_numpy(np.log(rng.integers(1, 20, (B, n))).astype(np.float32)) if log_n else None)

    return Batch(
        target=torch.from_numpy(rng.integers(1, n_items, B)),
        seq=seq(L, clusters),
        label=torch.from_numpy((rng.random(B) < 0.3).astype(np.float32)),
        user_id=torch.from_numpy(np.arange(B)), ts=torch.zeros(B, dtype=torch.long),
        recent=seq(ModelConfig().short_len, False) if clusters else None)  # a clusters model's short term


def _tables(n_items: int, seed: int):
    from twinv2.models.frame import ItemTables
    from twinv2.train.features import N_DUR

    rng = np.random.default_rng(seed)
    return ItemTables(author_of=np.r_[0, rng.integers(1, 20_001, n_items - 1)],
                      tag_of=np.r_[0, rng.integers(1, 44, n_items - 1)],
                      dur_of=np.r_[0, rng.integers(1, N_DUR, n_items - 1)], n_authors=20_001, n_tags=44, n_dur=N_DUR)


def _batcher(sequence: str, L: int, B: int, n_items: int, seed: int, n_users: int, S: int):
    """A Batcher over synthetic CSR columns in place of a dataset, every sample's sequence full: `n_users` users
    with L + 10 raw behaviours in time order, or L clusters (sizes 1-19, random mean times; a user with more
    than L clusters, ~10^5 behaviours at L = 10,000, is rare), Zipf-popular items; for a clusters model with a
    short term (S > 0), S + 10 raw recent behaviours per user."""
    from twinv2.train.batching import Batcher, _Columns
    from twinv2.train.features import Features

    rng = np.random.default_rng(seed)
    per = L if sequence == "clusters" else L + 10
    n = n_users * per
    pop = 1.0 / np.arange(1, n_items) ** 0.9
    rows = rng.choice(np.arange(1, n_items), size=n, p=pop / pop.sum())
    ts = np.tile(np.arange(per) * 1000.0, n_users)
    log_n = None
    if sequence == "clusters":
        ts = rng.permutation(ts)  # clusters are stored by group, not by time
        log_n = np.log(rng.integers(1, 20, n)).astype(np.float32)
    cross = [rng.integers(1, 17, n), rng.integers(1, 23, n), ts]  # play, ratio buckets; the age's source
    cols = _Columns.of(np.arange(n_users), np.arange(n_users + 1) * per, rows, ts, cross, log_n)

    class _DS:  # the attribute Batcher reads
        n_shards = 1

    batcher = Batcher(_DS(), None, sequence, L, features=Features.of(sequence),  # type: ignore[arg-type]
                      recent_len=S)
    batcher._cache[(sequence, 0)] = cols
    if sequence == "clusters" and S:  # the short term's raw behaviours: S + 10 per user, in time order
        m = n_users * (S + 10)
        t = np.tile(np.arange(S + 10) * 1000.0, n_users)
        batcher._cache[("recent", 0)] = _Columns.of(
            np.arange(n_users), np.arange(n_users + 1) * (S + 10), rng.choice(np.arange(1, n_items), size=m),
            t, [rng.integers(1, 17, m), rng.integers(1, 23, m), t])
    batcher.vocab = type("V", (), {"rows": staticmethod(lambda ids: np.array(ids, np.int64))})()
    return batcher


def _samples(n_users: int, n: int, L: int, n_items: int, seed: int):
    """n samples over the users, in order, each after its user's whole history (full-length sequences)."""
    import pandas as pd

    rng = np.random.default_rng(seed + 1)
    return pd.DataFrame({"user_id": np.arange(n) % n_users, "item_id": rng.integers(1, n_items, n),
                         "ts": np.full(n, (L + 20) * 1000, np.int64),
                         "label": (rng.random(n) < 0.3).astype(np.float32)})


def run_one(model_name: str, L: int, n_items: int = 200_000, B: int = 256, threads: int = 2, steps: int = 8,
            seed: int = 0, device: str = "cpu", short_len: int | None = None) -> dict[str, Any]:
    """One configuration in this process (called in a child by `bench_train`).

    End to end (the headline): the trainer's own loop, train/step.py's `batches` (batch building from CSR
    arrays, overlapped with the model by its prefetch thread) feeding `train_step`, or the model's forward
    for inference, timed over `steps` batches after 2 warm-up ones. Then the parts, each timed alone: batch
    building, the no-grad GSU, and the forward / backward / optimizer of a step on a prebuilt batch.
    `short_len`: ModelConfig.short_len (None: its default), e.g. 0 to time the models without a short term."""
    import torch

    from twinv2.models.frame import ModelConfig
    from twinv2.models.registry import build_model
    from twinv2.train.features import CROSS_BUCKETS
    from twinv2.train.optim import SplitAdam
    from twinv2.train.step import batches, train_step

    from twinv2.train.trainer import resolve_device

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = resolve_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)  # time finished work only
    cfg = ModelConfig(seq_len=L, **({} if short_len is None else {"short_len": short_len}))
    model = build_model(model_name, _tables(n_items, seed), cfg, CROSS_BUCKETS).to(dev)
    opt = SplitAdam(model, lr=1e-3)
    n_users = 4 * B
    batcher = _batcher(model.sequence, L, B, n_items, seed, n_users, model.recent_len)
    df = _samples(n_users, (steps + 2) * B, L, n_items, seed)

    def end_to_end(step) -> float:
        t0 = 0.0
        for i, (_, batch) in enumerate(batches(batcher, df, B, device=dev)):
            if i == 2:  # warm-up excluded
                sync()
                t0 = time.perf_counter()
            step(batch)
        sync()
        return steps * B / (time.perf_counter() - t0)

    model.train()
    train_rate = end_to_end(lambda batch: train_step(model, opt, batch))
    model.eval()
    with torch.no_grad():
        infer_rate = end_to_end(model)

    prebuilt = [batch for _, batch in batches(batcher, df.iloc[:2 * B], B, prefetch=False, device=dev)]
    parts: dict[str, list[float]] = {"collate": [], "gsu": [], "forward": [], "backward": [], "optimizer": [],
                                     "step": [], "infer": []}
    for i in range(steps + 2):
        rows = df.iloc[(i % 4) * B:(i % 4 + 1) * B]
        t0 = time.perf_counter()
        batcher.batch(rows["user_id"].to_numpy(), rows["item_id"].to_numpy(), rows["ts"].to_numpy(),
                      rows["label"].to_numpy())
        t1 = time.perf_counter()
        batch = prebuilt[i % 2]
        model.train()
        with torch.no_grad():
            target = model.items(batch.target)
            model.gsu(batch, target, model.attn.query(target))
        sync()
        t2 = time.perf_counter()
        times: dict[str, float] = {}
        train_step(model, opt, batch, times)  # its parts are timed without a sync: on a GPU only `step` is exact
        sync()
        t3 = time.perf_counter()
        if i >= 2:  # warm-up excluded
            for k, v in (("collate", t1 - t0), ("gsu", t2 - t1), *times.items(), ("step", t3 - t2)):
                parts[k].append(v)
    model.eval()
    with torch.no_grad():  # inference alone, after training: the weights (and the cached item table) stay put
        for i in range(steps + 2):
            t0 = time.perf_counter()
            model(prebuilt[i % 2])
            sync()
            if i >= 2:
                parts["infer"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in parts.items()}
    return {
        "model": model_name, "gsu_length": L, "short_len": model.short_len, "batch": B, "threads": threads,
        "n_items": n_items, "steps": steps,
        "train_samples_per_s": train_rate,
        "infer_samples_per_s": infer_rate,
        "train_samples_per_s_model_only": B / med["step"],
        "infer_samples_per_s_model_only": B / med["infer"],
        "collate_samples_per_s": B / med["collate"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "step_ms": {k: 1000 * v for k, v in med.items()},
        "native_gsu": _native() and dev.type == "cpu", "device": str(dev),
        "note": "train/infer_samples_per_s: end to end, batch building included (prefetched in a thread, as the "
                "trainer does); step_ms: medians of each part alone ('gsu' is the no-grad GSU the forward runs, "
                "'step' = forward + backward + optimizer, 'infer' a no-grad forward)",
    }


def _native() -> bool:
    from twinv2.models import native

    return native.available()


def bench_train(models: tuple[str, ...] = ("twin", "twin_v2"), lengths: tuple[int, ...] = (1_000, 10_000),
                n_items: int = 200_000, steps: int = 8, threads: int = 2, device: str = "cpu",
                short_lens: tuple[int | None, ...] = (None,)) -> dict[str, Any]:
    """Every (model, length, short_len) in its own child process; `short_lens` None = ModelConfig's default
    (several, e.g. (0, 50), put the cost of the short-term interest side by side)."""
    load = os.getloadavg()  # at the start: a busy machine explains slow figures
    rows = []
    for m, L, S in ((m, L, S) for m in models for L in lengths for S in short_lens):
        args = json.dumps({"model_name": m, "L": L, "n_items": n_items, "steps": steps, "threads": threads,
                           "device": device, "short_len": S})
        out = subprocess.run([sys.executable, "-m", "twinv2.bench.train", args], capture_output=True,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        if out.returncode != 0:
            raise RuntimeError(f"bench train {m} L={L} short_len={S} failed:\n{out.stderr[-2000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{m:8s} L={L:>6,} S={rows[-1]['short_len']:>3}: train {rows[-1]['train_samples_per_s']:8.0f}/s  "
              f"infer {rows[-1]['infer_samples_per_s']:8.0f}/s  peak {rows[-1]['peak_rss_gb']:.2f} GB (end to end)",
              file=sys.stderr)
    targets = {}  # TWIN and TWIN-V2 at L = 10,000, end to end; a miss is reported with its number
    for r in rows:
        if r["gsu_length"] == 10_000:
            tr, inf, rss = r["train_samples_per_s"], r["infer_samples_per_s"], r["peak_rss_gb"]
            key = r["model"] if len(short_lens) == 1 else f"{r['model']}_short{r['short_len']}"
            targets[key] = {  # [measured, met]
                "train_samples_per_s": [round(tr), tr >= TARGETS["train_samples_per_s"]],
                "infer_samples_per_s": [round(inf), inf >= TARGETS["infer_samples_per_s"]],
                "peak_rss_gb": [round(rss, 2), rss <= TARGETS["peak_rss_gb"]],
            }
    return {"rows": rows, "targets": TARGETS, "targets_met": targets, "reference": REFERENCE,
            "machine": {"cpus": os.cpu_count(), "load_avg_at_start": load, "load_avg_at_end": os.getloadavg(),
                        "device": device}}


if __name__ == "__main__":
    print(json.dumps(run_one(**json.loads(sys.argv[1]))))
