"""The HTTP API: responses, limits, errors and metrics; bad input of any shape gets a 4xx, never a 5xx
(hypothesis fuzz), and a running server picks up a newer checkpoint."""

from __future__ import annotations

import json
import re
import shutil

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twinv2.data.sealed import write_sealed
from twinv2.serve.app import Limits, create_app
from twinv2.serve.projections import ProjectionCache
from twinv2.serve.scorer import Scorer
from twinv2.serve.server import BackgroundServer
from twinv2.serve.store import ClusterStore


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint, tiny_store) -> Scorer:
    return Scorer(ProjectionCache(tiny_checkpoint), ClusterStore(tiny_store))


@pytest.fixture(scope="module")
def client(scorer):
    with TestClient(create_app(scorer, Limits(max_candidates=2000, max_body_bytes=1_000_000))) as c:
        yield c


def test_score_returns_the_scorers_scores(client, scorer, request_ts, known_items):
    items = [int(i) for i in known_items[:7]] + [10**15]
    r = client.post("/v1/score", json={"user_id": 3, "candidates": items, "ts": request_ts})
    assert r.status_code == 200, r.text
    body = r.json()
    want = scorer.score(3, items, request_ts)
    np.testing.assert_allclose(body["scores"], want.scores, rtol=1e-6)
    assert body["model_version"] == want.model_version and body["snapshot_version"] == scorer.store.version
    assert body["user_known"] and body["clusters"] > 0 and body["unknown_items"] == 1 and body["ts"] == request_ts
    r = client.post("/v1/score", json={"user_id": 10**15, "candidates": items[:2]})  # ts: now
    assert r.status_code == 200 and r.json()["user_known"] is False and len(r.json()["scores"]) == 2


@pytest.mark.parametrize("body, status, message", [
    ({"user_id": "3", "candidates": [1]}, 422, "user_id"),
    ({"user_id": 3.0, "candidates": [1]}, 422, "user_id"),
    ({"user_id": True, "candidates": [1]}, 422, "user_id"),
    ({"user_id": 1 << 63, "candidates": [1]}, 422, "user_id"),
    ({"user_id": 3, "candidates": [1, "2"]}, 422, "candidates.1"),
    ({"user_id": 3, "candidates": 5}, 422, "candidates"),
    ({"user_id": 3, "candidates": [[1]]}, 422, "candidates.0"),
    ({"user_id": 3}, 422, "candidates"),
    ({"user_id": 3, "candidates": [1], "extra": 1}, 422, "extra"),
    ({"user_id": 3, "candidates": [1], "ts": 1712534400}, 422, "ts"),  # seconds, not ms
    ({"user_id": 3, "candidates": [1], "ts": 1000000000000}, 422, "before the served cluster snapshot"),
    ({"user_id": 3, "candidates": list(range(2001))}, 422, "at most 2000 candidates"),
    ([1, 2], 422, "JSON object"),
])
def test_bad_requests_get_a_4xx_with_a_message(client, body, status, message):
    r = client.post("/v1/score", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"] + " ".join(r.json().get("details", []))


@pytest.mark.parametrize("raw, status", [
    (b"{", 400), (b"", 400), (b"\xff\xfe\x00", 400), (b"[" * 100_000 + b"]" * 100_000, 400),
    (b'{"user_id": 1' + b"0" * 5000 + b', "candidates": []}', 400),
    (b'{"user_id": NaN, "candidates": []}', 422),
    (b'{"user_id": 3, "candidates": [1e400]}', 422),
])
def test_unparsable_bodies_get_400(client, raw, status):
    r = client.post("/v1/score", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text


def test_bodies_over_the_limit_get_413(client):
    big = b'{"user_id": 1, "candidates": [' + b"1," * 600_000 + b"1]}"
    r = client.post("/v1/score", content=big)
    assert r.status_code == 413 and "limit" in r.json()["error"]


def test_chunked_body_over_the_limit_gets_413_from_a_real_server(scorer):
    app = create_app(scorer, Limits(max_body_bytes=10_000))
    with BackgroundServer(app) as srv:
        def chunks():
            yield b'{"user_id": 1, "candidates": ['
            for _ in range(100):
                yield b"1," * 100  # no Content-Length: the limit is enforced while reading
            yield b"1]}"

        r = httpx.post(srv.url + "/v1/score", content=chunks(), timeout=30)
        assert r.status_code == 413
        assert httpx.get(srv.url + "/healthz", timeout=30).status_code == 200


def test_healthz_and_metrics(client, scorer, request_ts):
    client.post("/v1/score", json={"user_id": 5, "candidates": [1, 2], "ts": request_ts})
    client.post("/v1/score", json={"user_id": "x"})
    client.get("/nope")
    h = client.get("/healthz")
    assert h.status_code == 200 and h.json()["model_version"] == scorer.cache.current.version
    m = client.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    text = m.text
    assert re.search(r'twinv2_requests_total\{method="POST",path="/v1/score",status="200"\} [1-9]', text)
    assert re.search(r'twinv2_requests_total\{method="GET",path="other",status="404"\} [1-9]', text)
    assert re.search(r'twinv2_request_errors_total\{path="/v1/score",kind="client"\} [1-9]', text)
    assert re.search(r'twinv2_request_errors_total\{path="/v1/score",kind="server"\} 0\n', text)
    assert re.search(r'twinv2_score_latency_seconds_bucket\{le="\+Inf"\} [1-9]', text)
    assert f'twinv2_model_info{{version="{scorer.cache.current.version}"' in text
    assert f'twinv2_snapshot_info{{version="{scorer.store.version}"' in text
    count = int(re.search(r"twinv2_score_latency_seconds_count (\d+)", text).group(1))
    inf = int(re.search(r'twinv2_score_latency_seconds_bucket\{le="\+Inf"\} (\d+)', text).group(1))
    assert count == inf


def test_not_ready_is_503(tiny_checkpoint, tmp_path):
    app = create_app(Scorer(ProjectionCache(tiny_checkpoint), ClusterStore(tmp_path / "empty")))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 503
        r = c.post("/v1/score", json={"user_id": 1, "candidates": [1]})
        assert r.status_code == 503 and "no snapshot" in r.json()["error"]


# ---- fuzz: any JSON, any bytes, near-valid bodies -------------------------------------------------------------
scalars = st.none() | st.booleans() | st.integers(min_value=-(1 << 70), max_value=1 << 70) | st.floats()
json_values = st.recursive(
    scalars | st.text(max_size=8),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20)
near_valid = st.fixed_dictionaries(
    {"user_id": json_values | st.integers(min_value=-(1 << 64), max_value=1 << 64)},
    optional={"candidates": st.lists(st.integers(min_value=-(1 << 64), max_value=1 << 64) | json_values,
                                     max_size=30) | json_values,
              "ts": st.integers(min_value=-(1 << 64), max_value=1 << 64) | json_values,
              "extra": json_values})

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _ok_or_4xx(r):
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert "error" in r.json() or r.status_code == 200


@FUZZ
@given(body=json_values | near_valid)
def test_fuzz_json_bodies_never_500(client, body):
    _ok_or_4xx(client.post("/v1/score", content=json.dumps(body, allow_nan=True)))


@FUZZ
@given(raw=st.binary(max_size=300))
def test_fuzz_raw_bytes_never_500(client, raw):
    _ok_or_4xx(client.post("/v1/score", content=raw))


def test_fuzzing_left_no_server_errors(client):
    text = client.get("/metrics").text
    assert re.search(r'twinv2_request_errors_total\{path="/v1/score",kind="server"\} 0\n', text)


def test_a_running_server_picks_up_a_newer_checkpoint(tiny_checkpoint, tiny_store, tmp_path, request_ts, perturbed):
    pub = tmp_path / "pub"
    (pub / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, pub / "checkpoints" / "ckpt-000001.pt")
    write_sealed(pub / "LATEST", {"checkpoint": "checkpoints/ckpt-000001.pt"})
    cache = ProjectionCache(pub)
    cache.start(poll_s=0.1)
    try:
        with BackgroundServer(create_app(Scorer(cache, ClusterStore(tiny_store)))) as srv:
            body = {"user_id": 3, "candidates": [1, 2, 3], "ts": request_ts}
            first = httpx.post(srv.url + "/v1/score", json=body, timeout=30).json()
            perturbed(tiny_checkpoint, pub / "checkpoints" / "ckpt-000002.pt")
            write_sealed(pub / "LATEST", {"checkpoint": "checkpoints/ckpt-000002.pt"})  # atomic
            import time

            deadline = time.monotonic() + 30
            while httpx.get(srv.url + "/healthz", timeout=30).json()["model_version"] == first["model_version"]:
                assert time.monotonic() < deadline, "the server did not pick up the new checkpoint"
                time.sleep(0.1)
            second = httpx.post(srv.url + "/v1/score", json=body, timeout=30).json()
            assert second["model_version"] != first["model_version"] and second["scores"] != first["scores"]
    finally:
        cache.stop()
