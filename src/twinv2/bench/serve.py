"""`twinv2 bench serve`: online scoring latency and an HTTP load test.

In-process: p50/p99 of `Scorer.score` for `candidates` candidates of a user with `clusters` clusters (defaults:
200 × 10,000, 4 heads, 2 threads, a 200,000-item vocabulary), with a bare matmul of the GSU's per-head shape
(N, H·d) × (H·d, C) timed in the same loop, interleaved with the scorer, as the floor to compare against. The
scorer's own GSU product is (N, D) × (D, C) (the head mean folded into u, scorer.py), half that work, so the
whole request can come close to the floor. Also: the cluster store lookup alone, the offline model's forward
on the same request, and their max abs difference.

HTTP: the service in a child process on 127.0.0.1 and a free port, loaded by `http_concurrency` keep-alive
clients until `http_requests` requests or `http_seconds` have passed; throughput, p50/p99, errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twinv2.serve.commands import prefer_passive_omp

TARGET_P99_MS = 15.0
SNAPSHOT_TS = 1_712_534_400_000  # 2024-04-08, as in the generated worlds


@dataclass(frozen=True)
class BenchServeConfig:
    candidates: int = 200
    clusters: int = 10_000
    items: int = 200_000
    users: int = 8  # users of `clusters` clusters each; requests cycle through them
    reps: int = 300  # timed in-process requests (after `warmup`)
    warmup: int = 20
    threads: int = 2
    http_seconds: float = 10.0  # 0 skips the HTTP test
    http_requests: int = 2000
    http_concurrency: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("candidates", "clusters", "items", "users", "reps", "threads", "http_requests",
                     "http_concurrency"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"bench serve: {name} must be an integer >= 1, got {v!r}")
        if self.http_seconds < 0:
            raise ValueError(f"bench serve: http_seconds must be >= 0, got {self.http_seconds}")
        if self.items < 2:
            raise ValueError(f"bench serve: items must be >= 2, got {self.items}")


def _ms(times: list[float]) -> dict[str, float]:
    from twinv2.serve.loadtest import percentiles_ms

    return percentiles_ms(times)


def run_bench_serve(cfg: BenchServeConfig = BenchServeConfig(), workdir: str | Path | None = None) -> dict[str, Any]:
    import torch

    from twinv2.serve.projections import ProjectionCache
    from twinv2.serve.scorer import Scorer, cluster_inputs
    from twinv2.serve.store import ClusterStore
    from twinv2.serve.synthetic import (
        synthetic_checkpoint,
        synthetic_clusters,
        write_snapshot,
    )

    torch.set_num_threads(cfg.threads)
    tmp = tempfile.TemporaryDirectory(prefix="twinv2-bench-serve-") if workdir is None else None
    root = Path(tmp.name if tmp else workdir)
    try:
        t0 = time.perf_counter()
        ckpt = synthetic_checkpoint(root / "checkpoint.pt", cfg.items, seed=cfg.seed)
        users = list(range(1, cfg.users + 1))
        snap = write_snapshot(root / "snapshot", synthetic_clusters(users, cfg.clusters, cfg.items, SNAPSHOT_TS,
                                                                    seed=cfg.seed), SNAPSHOT_TS)
        store = ClusterStore(root / "store")
        store.load_snapshot(snap)
        cache = ProjectionCache(ckpt)
        scorer = Scorer(cache, store)
        setup_s = time.perf_counter() - t0
        mv = cache.current
        H, d, D = mv.cache.heads, mv.cache.head_dim, mv.cache.items.shape[1]
        rng = np.random.default_rng(cfg.seed + 1)
        ts = SNAPSHOT_TS + 3_600_000

        def request(i: int) -> tuple[int, np.ndarray]:
            return users[i % len(users)], rng.integers(1, cfg.items, cfg.candidates)

        a = torch.randn(cfg.candidates, H * d)
        b = torch.randn(H * d, cfg.clusters)
        a_d = torch.randn(cfg.candidates, D)
        b_d = torch.randn(D, cfg.clusters)
        t_score, t_mm, t_mm_d, t_get = [], [], [], []
        with torch.inference_mode():
            for i in range(cfg.warmup + cfg.reps):
                u, items = request(i)
                s0 = time.perf_counter()
                scorer.score(u, items, ts)
                s1 = time.perf_counter()
                a @ b  # (N, H·d) × (H·d, C): the per-head GSU product
                s2 = time.perf_counter()
                a_d @ b_d  # (N, D) × (D, C): the scorer's GSU product
                s3 = time.perf_counter()
                store.get(u)
                s4 = time.perf_counter()
                if i >= cfg.warmup:
                    t_score.append(s1 - s0)
                    t_mm.append(s2 - s1)
                    t_mm_d.append(s3 - s2)
                    t_get.append(s4 - s3)
        offline = _offline_check(scorer, cluster_inputs, users[0], rng.integers(1, cfg.items, cfg.candidates), ts)
        score_ms = _ms(t_score)
        floor_ms = _ms(t_mm)
        result: dict[str, Any] = {
            "config": asdict(cfg),
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
            "setup_seconds": round(setup_s, 2),
            "scorer_ms": score_ms,
            "matmul_floor_ms": {**floor_ms, "shape": f"({cfg.candidates}, {H * d}) x ({H * d}, {cfg.clusters})"},
            # The machine's speed cancels out of these: compare them across machines, not the raw times.
            "scorer_over_floor": {q: round(score_ms[q] / max(floor_ms[q], 1e-9), 2) for q in ("p50", "p99")},
            "matmul_gsu_ms": {**_ms(t_mm_d), "shape": f"({cfg.candidates}, {D}) x ({D}, {cfg.clusters})"},
            "store_get_ms": _ms(t_get),
            **offline,
            "target_p99_ms": TARGET_P99_MS,
            "meets_target": bool(score_ms["p99"] <= TARGET_P99_MS),
        }
        if cfg.http_seconds > 0:
            result["http"] = _http(cfg, ckpt, root / "store", users, ts)
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def _offline_check(scorer, cluster_inputs, user: int, items: np.ndarray, ts: int) -> dict[str, Any]:
    """The offline model's forward on the same request (a batch of N samples of one user): time and diff."""
    import torch

    from twinv2.models.batch import Batch, Seq

    mv = scorer.cache.current
    inp = cluster_inputs(scorer.store.get(user), ts, mv.vocab, mv.seq_len)
    N, C = len(items), inp.size
    seq = Seq(rows=torch.from_numpy(inp.rows).expand(N, C), cross=torch.from_numpy(inp.cross).expand(N, C, 3),
              mask=torch.ones(N, C, dtype=torch.bool), log_n=torch.from_numpy(inp.log_n).expand(N, C))
    batch = Batch(target=torch.from_numpy(mv.vocab.rows(items)), seq=seq, label=torch.zeros(N),
                  user_id=torch.full((N,), user), ts=torch.full((N,), ts))
    times = []
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            ref = mv.model(batch)
            times.append(time.perf_counter() - t0)
    online = scorer.score(user, items, ts).logits
    return {"offline_forward_ms": _ms(times)["p50"],
            "max_abs_diff_vs_offline": float(np.abs(ref.numpy() - online).max())}


def _http(cfg: BenchServeConfig, ckpt: Path, store: Path, users: list[int], ts: int) -> dict[str, Any]:
    from twinv2.serve.loadtest import run_load
    from twinv2.serve.server import ServerProcess

    rng = np.random.default_rng(cfg.seed + 2)
    bodies = [{"user_id": users[i % len(users)], "candidates": rng.integers(1, cfg.items, cfg.candidates).tolist(),
               "ts": ts} for i in range(64)]
    t0 = time.perf_counter()
    with ServerProcess(["--checkpoint", str(ckpt), "--store", str(store), "--threads", str(cfg.threads)]) as srv:
        start_s = time.perf_counter() - t0
        run_load(srv.url, lambda i: bodies[i % len(bodies)], seconds=min(2.0, cfg.http_seconds), max_requests=50,
                 concurrency=1)  # warm-up: first requests pay for lazy initialisation
        out = run_load(srv.url, lambda i: bodies[i % len(bodies)], seconds=cfg.http_seconds,
                       max_requests=cfg.http_requests, concurrency=cfg.http_concurrency)
        import httpx

        metrics = httpx.get(srv.url + "/metrics", timeout=10).text
    out["server_start_seconds"] = round(start_s, 2)
    out["server_errors_in_metrics"] = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                                          if line.startswith("twinv2_request_errors_total") and 'kind="server"' in line)
    return out


# ---- CLI ---------------------------------------------------------------------------------------------------
def add_bench_args(parser: argparse.ArgumentParser) -> None:
    """The `--serve-*` flags of `twinv2 bench serve` (dest: serve_*)."""
    d = BenchServeConfig()
    g = parser.add_argument_group("bench serve")
    g.add_argument("--serve-candidates", type=int, default=d.candidates, help="serve: candidates per request")
    g.add_argument("--serve-clusters", type=int, default=d.clusters, help="serve: clusters per user")
    g.add_argument("--serve-items", type=int, default=d.items, help="serve: item vocabulary size")
    g.add_argument("--serve-reps", type=int, default=d.reps, help="serve: timed in-process requests")
    g.add_argument("--serve-threads", type=int, default=d.threads, help="serve: torch threads")
    g.add_argument("--serve-http-seconds", type=float, default=d.http_seconds,
                   help="serve: HTTP load test duration bound (0 = skip the HTTP test)")
    g.add_argument("--serve-http-requests", type=int, default=d.http_requests,
                   help="serve: HTTP load test request bound")
    g.add_argument("--serve-http-concurrency", type=int, default=d.http_concurrency,
                   help="serve: HTTP client connections")


def bench_serve(**kwargs: Any) -> dict[str, Any]:
    """Run `twinv2 bench serve` from `twinv2 bench`'s parsed arguments (`**vars(args)`): the `serve_*` keys are
    this benchmark's (unknown `serve_*` keys are an error); other keys belong to other benchmarks."""
    prefer_passive_omp()
    fields = {f.name for f in dataclasses.fields(BenchServeConfig)}
    mine = {k[len("serve_"):]: v for k, v in kwargs.items() if k.startswith("serve_")}
    unknown = sorted(set(mine) - fields)
    if unknown:
        raise ValueError(f"unknown bench serve option(s) {['serve_' + k for k in unknown]}; "
                         f"valid: {sorted('serve_' + f for f in fields)}")
    return run_bench_serve(BenchServeConfig(**mine))
