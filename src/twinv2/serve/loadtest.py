"""A bounded HTTP load generator: `concurrency` keep-alive connections send requests until `max_requests` have
been sent or `seconds` have passed, whichever comes first; reports throughput, latency percentiles and
errors (any status other than 200, or a transport failure)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np


def percentiles_ms(seconds: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(seconds, dtype=np.float64) * 1000
    if len(a) == 0:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "mean": float("nan")}
    return {"p50": round(float(np.percentile(a, 50)), 3), "p90": round(float(np.percentile(a, 90)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "mean": round(float(a.mean()), 3)}


def run_load(url: str, body: Callable[[int], dict[str, Any]], seconds: float = 10.0, max_requests: int = 2000,
             concurrency: int = 4, path: str = "/v1/score", timeout: float = 30.0) -> dict[str, Any]:
    """POST `body(i)` (JSON) to url+path for i = 0, 1, ... within the bounds; returns the summary."""
    import httpx

    if seconds <= 0 or max_requests < 1 or concurrency < 1:
        raise ValueError(f"bad load bounds: seconds={seconds}, max_requests={max_requests}, "
                         f"concurrency={concurrency}")
    lock = threading.Lock()
    state = {"next": 0}
    latencies: list[float] = []
    statuses: Counter = Counter()
    failures: Counter = Counter()
    t_start = time.perf_counter()
    deadline = t_start + seconds

    def take() -> int | None:
        with lock:
            i = state["next"]
            if i >= max_requests or time.perf_counter() >= deadline:
                return None
            state["next"] = i + 1
            return i

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=timeout) as client:
            while (i := take()) is not None:
                payload = body(i)
                t0 = time.perf_counter()
                try:
                    r = client.post(path, json=payload)
                    status, err = r.status_code, None
                except httpx.HTTPError as e:
                    status, err = 0, type(e).__name__
                dt = time.perf_counter() - t0
                with lock:
                    statuses[status] += 1
                    if err:
                        failures[err] += 1
                    elif status == 200:
                        latencies.append(dt)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + timeout + 10)
    wall = time.perf_counter() - t_start
    sent = sum(statuses.values())
    return {
        "requests": sent,
        "ok": statuses.get(200, 0),
        "errors": sent - statuses.get(200, 0),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "transport_failures": dict(failures),
        "seconds": round(wall, 3),
        "throughput_rps": round(statuses.get(200, 0) / max(wall, 1e-9), 1),
        "latency_ms": percentiles_ms(latencies),
        "bounds": {"seconds": seconds, "max_requests": max_requests, "concurrency": concurrency},
    }
