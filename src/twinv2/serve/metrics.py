"""Prometheus text exposition (format 0.0.4) for the scoring service: counters, one latency histogram and
info gauges, thread-safe, no client library needed."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

# Seconds; around the 15 ms p99 target.
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5,
                   1.0, 2.5)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    esc = (str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, esc)) + "}"


ABORTED = 499  # nginx's "client closed request"


def error_kind(status: int) -> str:
    """client (4xx), server (5xx), or aborted (499: the client went away; no response was sent)."""
    return "aborted" if status == ABORTED else "server" if status >= 500 else "client"


class Metrics:
    """The service's metrics. `render()` returns the /metrics body; `info()` is called at render time and
    returns extra samples as (name, type, labels, value): model and snapshot versions, reload counts."""

    def __init__(self, info: Callable[[], list[tuple[str, str, dict[str, str], float]]] | None = None) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}  # (method, path, status) -> count
        self.errors: dict[tuple[str, str], int] = {}  # (path, kind) -> count; kind = client | server | aborted
        self.counters: dict[str, int] = {"candidates": 0, "unknown_users": 0, "unknown_items": 0,
                                         "header_timeouts": 0}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.info = info

    def request(self, method: str, path: str, status: int) -> None:
        with self._lock:
            key = (method, path, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            if status >= 400:
                kind = (path, error_kind(status))
                self.errors[kind] = self.errors.get(kind, 0) + 1

    def observe(self, seconds: float) -> None:
        with self._lock:
            self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum += seconds
            self.latency_count += 1

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def render(self) -> str:
        with self._lock:
            requests = dict(self.requests)
            errors = dict(self.errors)
            counters = dict(self.counters)
            buckets = list(self.buckets)
            total, count = self.latency_sum, self.latency_count
        out = ["# HELP twinv2_requests_total HTTP requests by method, path and status.",
               "# TYPE twinv2_requests_total counter"]
        for (m, p, s), v in sorted(requests.items()):
            out.append(f"twinv2_requests_total{_labels({'method': m, 'path': p, 'status': str(s)})} {v}")
        out += ["# HELP twinv2_request_errors_total Responses with status >= 400 (client: 4xx, server: 5xx, "
                "aborted: the client disconnected before its request was read, status 499).",
                "# TYPE twinv2_request_errors_total counter"]
        for kind in ("client", "server", "aborted"):  # always present, so a dashboard can alert on server errors > 0
            paths = sorted({p for p, k in errors if k == kind}) or ["/v1/score"]
            for p in paths:
                out.append(f"twinv2_request_errors_total{_labels({'path': p, 'kind': kind})} "
                           f"{errors.get((p, kind), 0)}")
        out += ["# HELP twinv2_score_latency_seconds Time to answer POST /v1/score (successful requests).",
                "# TYPE twinv2_score_latency_seconds histogram"]
        cum = 0
        for le, n in zip(LATENCY_BUCKETS, buckets):
            cum += n
            out.append(f'twinv2_score_latency_seconds_bucket{{le="{le}"}} {cum}')
        out.append(f'twinv2_score_latency_seconds_bucket{{le="+Inf"}} {cum + buckets[-1]}')
        out.append(f"twinv2_score_latency_seconds_sum {total:.6f}")
        out.append(f"twinv2_score_latency_seconds_count {count}")
        for name, v in sorted(counters.items()):
            out += [f"# TYPE twinv2_{name}_total counter", f"twinv2_{name}_total {v}"]
        for name, kind, labels, value in (self.info() if self.info else []):
            out += [f"# TYPE twinv2_{name} {kind}", f"twinv2_{name}{_labels(labels)} {value}"]
        return "\n".join(out) + "\n"
