"""`twinv2 bench train`: training and inference samples/s and peak RSS of TWIN and TWIN-V2 at GSU lengths
1,000 and 10,000 (batch 256, 2 threads, 200,000 items), with a breakdown of where a training step's time goes.

Each (model, length) runs in its own child process so its peak RSS is its own. Batches are synthetic but
full: every sample has L valid elements (Zipf-popular items, random cross buckets, cluster sizes 1–19 for
TWIN-V2), which is the worst case for the GSU; the collate is timed separately on CSR arrays of the same size.
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

    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items) ** 0.9
    rows = rng.choice(np.arange(1, n_items), size=(B, L), p=pop / pop.sum())
    cross = np.stack([rng.integers(1, n, (B, L)) for n in CROSS_BUCKETS], -1)
    return Batch(
        target=torch.from_numpy(rng.integers(1, n_items, B)),
        seq=Seq(rows=torch.from_numpy(rows), cross=torch.from_numpy(cross), mask=torch.ones(B, L, dtype=torch.bool),
                log_n=torch.from_numpy(np.log(rng.integers(1, 20, (B, L))).astype(np.float32)) if clusters else None),
        label=torch.from_numpy((rng.random(B) < 0.3).astype(np.float32)),
        user_id=torch.from_numpy(np.arange(B)), ts=torch.zeros(B, dtype=torch.long))


def _tables(n_items: int, seed: int):
    from twinv2.models.frame import ItemTables
    from twinv2.train.features import N_DUR

    rng = np.random.default_rng(seed)
    return ItemTables(author_of=np.r_[0, rng.integers(1, 20_001, n_items - 1)],
                      tag_of=np.r_[0, rng.integers(1, 44, n_items - 1)],
                      dur_of=np.r_[0, rng.integers(1, N_DUR, n_items - 1)], n_authors=20_001, n_tags=44, n_dur=N_DUR)


def _collate_rate(L: int, B: int, n_items: int, seed: int, reps: int) -> float:
    """Samples/s of Batcher.batch for full-length raw histories held as CSR arrays (the "recent" path)."""
    from twinv2.train.batching import Batcher, _Columns
    from twinv2.train.features import Features

    rng = np.random.default_rng(seed)
    n = B * (L + 10)
    ts = np.tile(np.arange(L + 10) * 1000.0, B)
    cols = _Columns.padded(np.arange(B), np.arange(B + 1) * (L + 10), rng.integers(1, n_items, n), ts,
                           [rng.integers(1, 17, n), rng.integers(1, 23, n), ts])  # play, ratio, age's source

    class _DS:  # the attribute Batcher reads
        n_shards = 1

    batcher = Batcher(_DS(), None, "recent", L, features=Features.of("recent"))  # type: ignore[arg-type]
    batcher._cache[("recent", 0)] = cols
    batcher.vocab = type("V", (), {"rows": staticmethod(lambda ids: np.asarray(ids, np.int64))})()
    ts = np.full(B, (L + 20) * 1000, np.int64)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        batcher.batch(np.arange(B), np.ones(B, np.int64), ts, np.zeros(B))
        times.append(time.perf_counter() - t0)
    return B / statistics.median(times)


def run_one(model_name: str, L: int, n_items: int = 200_000, B: int = 256, threads: int = 2, steps: int = 8,
            seed: int = 0) -> dict[str, Any]:
    """One configuration in this process (called in a child by `bench_train`)."""
    import torch

    from twinv2.models.attention import AttentionConfig
    from twinv2.models.frame import ModelConfig
    from twinv2.models.registry import build_model
    from twinv2.train.features import CROSS_BUCKETS
    from twinv2.train.optim import SplitAdam
    from twinv2.train.step import train_step

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = ModelConfig(seq_len=L, attention=AttentionConfig())
    model = build_model(model_name, _tables(n_items, seed), cfg, CROSS_BUCKETS)
    opt = SplitAdam(model, lr=1e-3)
    batches = [_synthetic(n_items, B, L, model.sequence == "clusters", seed + i) for i in range(2)]
    parts: dict[str, list[float]] = {"gsu": [], "forward": [], "backward": [], "optimizer": [], "step": []}
    model.train()
    for i in range(steps + 2):
        batch = batches[i % 2]
        t0 = time.perf_counter()
        with torch.no_grad():
            target = model.items(batch.target)
            model.gsu(batch, target, model.attn.query(target))
        t1 = time.perf_counter()
        times: dict[str, float] = {}
        train_step(model, opt, batch, times)
        t2 = time.perf_counter()
        if i >= 2:  # warm-up excluded
            for k, v in (("gsu", t1 - t0), *times.items(), ("step", t2 - t1)):
                parts[k].append(v)
    model.eval()
    infer = []
    with torch.no_grad():
        for i in range(steps + 2):
            t0 = time.perf_counter()
            model(batches[i % 2])
            if i >= 2:
                infer.append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in parts.items()}
    collate = _collate_rate(L, B, n_items, seed, reps=5)
    step = med["step"]
    return {
        "model": model_name, "gsu_length": L, "batch": B, "threads": threads, "n_items": n_items, "steps": steps,
        "train_samples_per_s": B / step,
        "train_samples_per_s_with_collate": B / (step + B / collate),
        "infer_samples_per_s": B / statistics.median(infer),
        "infer_samples_per_s_with_collate": B / (statistics.median(infer) + B / collate),
        "collate_samples_per_s": collate,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "step_ms": {k: 1000 * v for k, v in med.items()},
        "note": "forward includes its own no-grad GSU; 'gsu' is that GSU timed alone",
    }


def bench_train(models: tuple[str, ...] = ("twin", "twin_v2"), lengths: tuple[int, ...] = (1_000, 10_000),
                n_items: int = 200_000, steps: int = 8, threads: int = 2) -> dict[str, Any]:
    rows = []
    for m in models:
        for L in lengths:
            args = json.dumps({"model_name": m, "L": L, "n_items": n_items, "steps": steps, "threads": threads})
            out = subprocess.run([sys.executable, "-m", "twinv2.bench.train", args], capture_output=True,
                                 text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
            if out.returncode != 0:
                raise RuntimeError(f"bench train {m} L={L} failed:\n{out.stderr[-2000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{m:8s} L={L:>6,}: train {rows[-1]['train_samples_per_s']:8.0f}/s  infer "
                  f"{rows[-1]['infer_samples_per_s']:8.0f}/s  peak {rows[-1]['peak_rss_gb']:.2f} GB", file=sys.stderr)
    v2 = next((r for r in rows if r["model"] == "twin_v2" and r["gsu_length"] == 10_000), None)
    targets = {}
    if v2:
        targets = {
            "train_ge_1000": v2["train_samples_per_s"] >= TARGETS["train_samples_per_s"],
            "infer_ge_4000": v2["infer_samples_per_s"] >= TARGETS["infer_samples_per_s"],
            "peak_rss_le_6gb": v2["peak_rss_gb"] <= TARGETS["peak_rss_gb"],
        }
    return {"rows": rows, "targets": TARGETS, "targets_met": targets, "reference": REFERENCE,
            "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}}


if __name__ == "__main__":
    print(json.dumps(run_one(**json.loads(sys.argv[1]))))
