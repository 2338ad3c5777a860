"""A bounded load test against `python -m twinv2.serve serve` started on 127.0.0.1 (a free port) and stopped;
the serve bench in miniature; the command-line wiring."""

from __future__ import annotations

import argparse
import re

import httpx
import numpy as np
import pytest

from twinv2.bench.serve import add_bench_args, bench_serve
from twinv2.serve.commands import register
from twinv2.serve.loadtest import run_load
from twinv2.serve.server import ServerProcess


@pytest.mark.slow
def test_bounded_load_on_a_server_process_has_no_errors(tiny_checkpoint, tiny_store, request_ts, known_items):
    rng = np.random.default_rng(0)
    bodies = [{"user_id": int(u), "candidates": rng.choice(known_items, 200).tolist(), "ts": request_ts}
              for u in rng.integers(0, 110, 32)]  # some users are unknown to the snapshot
    srv = ServerProcess(["--checkpoint", str(tiny_checkpoint), "--store", str(tiny_store), "--threads", "2"])
    try:
        assert srv.url.startswith("http://127.0.0.1:")
        out = run_load(srv.url, lambda i: bodies[i % len(bodies)], seconds=6.0, max_requests=300, concurrency=4)
        assert out["errors"] == 0 and out["transport_failures"] == {}, out
        assert 0 < out["requests"] <= 300 and out["seconds"] < 6.0 + 30
        assert out["throughput_rps"] > 0 and 0 < out["latency_ms"]["p50"] <= out["latency_ms"]["p99"]
        text = httpx.get(srv.url + "/metrics", timeout=30).text
        n = int(re.search(r'twinv2_requests_total\{method="POST",path="/v1/score",status="200"\} (\d+)', text)[1])
        assert n == out["ok"]
        assert re.search(r'twinv2_request_errors_total\{path="/v1/score",kind="server"\} 0\n', text)
    finally:
        code = srv.stop()
    assert code in (0, -15)  # stopped by SIGTERM (uvicorn shuts down gracefully, then re-raises the signal)
    with pytest.raises(httpx.TransportError):
        httpx.get(srv.url + "/healthz", timeout=2)


def test_load_bounds_are_checked():
    with pytest.raises(ValueError, match="bad load bounds"):
        run_load("http://127.0.0.1:9", lambda i: {}, seconds=0)


def test_bench_serve_in_miniature():
    r = bench_serve(serve_candidates=20, serve_clusters=300, serve_items=1000, serve_reps=5, serve_threads=2,
                    serve_http_seconds=0, what="serve", json=None)  # other bench flags are ignored
    assert r["max_abs_diff_vs_offline"] <= 1e-5
    assert r["scorer_ms"]["p50"] > 0 and r["matmul_floor_ms"]["shape"] == "(20, 64) x (64, 300)"
    assert "http" not in r
    with pytest.raises(ValueError, match="unknown bench serve option"):
        bench_serve(serve_candidatez=3)
    with pytest.raises(ValueError, match="clusters must be"):
        bench_serve(serve_clusters=0)


def test_commands_register_and_validate(tmp_path, tiny_snapshot):
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    add_bench_args(p)
    a = p.parse_args(["serve", "--checkpoint", "c.pt", "--store", str(tmp_path / "s"), "--snapshot",
                      str(tiny_snapshot), "--load-only", "--quiet"])
    assert a.func(a) == 0  # loads the snapshot into the store and exits
    from twinv2.serve.store import ClusterStore

    assert ClusterStore(tmp_path / "s").version.startswith(tiny_snapshot.name)
    a = p.parse_args(["serve", "--checkpoint", "c.pt", "--store", str(tmp_path / "s"), "--threads", "0"])
    with pytest.raises(ValueError, match="--threads"):
        a.func(a)
    a = p.parse_args(["serve", "--checkpoint", "c.pt", "--store", str(tmp_path / "empty")])
    with pytest.raises(ValueError, match="holds no snapshot"):
        a.func(a)
    a = p.parse_args(["nearline", "D", "--checkpoint", "c", "--inbox", "i", "--out", "o", "--set", "window_minuts=3"])
    with pytest.raises(ValueError, match="unknown key"):
        a.func(a)
    assert p.parse_args(["--serve-clusters", "7"]).serve_clusters == 7
