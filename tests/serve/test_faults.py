"""Faults a server must survive, against `twinv2 serve` started the way a user starts it (the full CLI)."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from twinv2.serve.server import ServerProcess

ABRUPT = (b'POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n'
          b'{"user_id": 1, "candidates": [1]}')


def _abrupt(host: str, port: int, payload: bytes, linger_reset: bool) -> None:
    """Send a request and close at once, before the answer (optionally with a TCP reset)."""
    s = socket.create_connection((host, port), timeout=10)
    if linger_reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.sendall(payload)
    s.close()


@pytest.mark.slow
def test_abrupt_disconnects_do_not_kill_twinv2_serve(tiny_checkpoint, tiny_store, request_ts):
    srv = ServerProcess(["--checkpoint", str(tiny_checkpoint), "--store", str(tiny_store), "--threads", "2"])
    try:
        url = urlsplit(srv.url)
        body = (b'{"user_id": 1, "candidates": [1, 2, 3], "ts": %d}' % request_ts)
        full = (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % len(body)) + body
        for i in range(40):  # the reproduction, then whole requests closed before the answer
            _abrupt(url.hostname, url.port, ABRUPT if i % 2 else full, linger_reset=i % 4 == 3)
        time.sleep(1.0)  # let the server try to write its answers into the closed sockets
        assert srv.proc.poll() is None, f"server exited with {srv.proc.returncode}:\n{srv.output()[-2000:]}"
        r = httpx.get(srv.url + "/healthz", timeout=30)
        assert r.status_code == 200
        ok = httpx.post(srv.url + "/v1/score", json={"user_id": 1, "candidates": [1, 2], "ts": request_ts},
                        timeout=30)
        assert ok.status_code == 200 and len(ok.json()["scores"]) == 2
    finally:
        srv.stop()


# ---- client aborts, slow clients, load (issue 14, item 9) ---------------------------------------------------
READ_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tiny_store):
    srv = ServerProcess(["--checkpoint", str(tiny_checkpoint), "--store", str(tiny_store), "--threads", "1",
                         "--read-timeout-s", str(READ_TIMEOUT_S)])
    yield srv
    srv.stop()


def _metrics(url: str) -> dict[str, float]:
    """/metrics as {'name{labels}': value}."""
    out = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _count(m: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in m.items() if k.split("{")[0] == name and all(w in k for w in want))


def _head(n_body: int) -> bytes:
    return (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % n_body)


def _abort_mid_body(host: str, port: int, reset: bool) -> None:
    s = socket.create_connection((host, port), timeout=10)
    if reset:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.sendall(_head(200) + b'{"user_id": 1, "candidates": [1, 2')
    time.sleep(0.05)  # the server has the head and part of the body, and waits for the rest
    s.close()


def _wait_for(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _alive_without_tracebacks(srv: ServerProcess) -> None:
    assert srv.proc.poll() is None, f"server exited with {srv.proc.returncode}:\n{srv.output()[-2000:]}"
    assert "Traceback" not in srv.output(), srv.output()[-3000:]


@pytest.mark.slow
def test_clients_aborting_mid_body_are_counted_as_aborts_not_server_errors(server):
    u = urlsplit(server.url)
    before = _metrics(server.url)
    n = 16
    for i in range(n):
        _abort_mid_body(u.hostname, u.port, reset=i % 2 == 1)
    aborted = lambda: _count(_metrics(server.url), "twinv2_request_errors_total", kind="aborted") \
        - _count(before, "twinv2_request_errors_total", kind="aborted")  # noqa: E731
    assert _wait_for(lambda: aborted() >= n) and aborted() == n
    after = _metrics(server.url)
    assert _count(after, "twinv2_request_errors_total", kind="server") == 0
    assert _count(after, "twinv2_requests_total", status="499") - _count(before, "twinv2_requests_total",
                                                                         status="499") == n
    assert _count(after, "twinv2_requests_total", status="500") == 0
    _alive_without_tracebacks(server)


@pytest.mark.slow
def test_a_body_that_never_finishes_gets_408_and_is_closed(server):
    u = urlsplit(server.url)
    s = socket.create_connection((u.hostname, u.port), timeout=READ_TIMEOUT_S + 10)
    t0 = time.monotonic()
    s.sendall(_head(100) + b'{"user_id": 1,')
    data = b""
    while chunk := s.recv(4096):  # the server answers, then closes: recv returns b"" at the end
        data += chunk
    elapsed = time.monotonic() - t0
    s.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"not complete after" in data and READ_TIMEOUT_S * 0.9 <= elapsed < READ_TIMEOUT_S + 5
    m = _metrics(server.url)
    assert _count(m, "twinv2_requests_total", status="408") >= 1
    assert _count(m, "twinv2_request_errors_total", kind="server") == 0
    _alive_without_tracebacks(server)


def _read_response(s: socket.socket) -> bytes:
    """One whole response with a Content-Length from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    n = int([h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0])
    while len(body) < n:
        body += s.recv(4096)
    return head


@pytest.mark.slow
@pytest.mark.parametrize("sent, after_a_request", [  # (an idle kept-alive one is uvicorn's keep-alive timer's)
    (b"", False), (b"POST /v1/score HTTP/1.1\r\nHost: x\r\n", False), (b"POST /v1/score HTTP/1.1\r\nHo", True)])
def test_a_connection_stalled_before_its_head_is_complete_is_closed(server, sent, after_a_request):
    u = urlsplit(server.url)
    before = _count(_metrics(server.url), "twinv2_header_timeouts_total")
    s = socket.create_connection((u.hostname, u.port), timeout=READ_TIMEOUT_S + 10)
    t0 = time.monotonic()  # the deadline starts when the connection opens ...
    if after_a_request:  # ... and again after each answer on a kept-alive connection
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(s).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        time.sleep(READ_TIMEOUT_S * 0.6)
    s.sendall(sent)
    assert s.recv(4096) == b""  # closed by the server, without an answer (there is no request to answer)
    assert READ_TIMEOUT_S * 0.9 <= time.monotonic() - t0 < READ_TIMEOUT_S + 5
    s.close()
    assert _count(_metrics(server.url), "twinv2_header_timeouts_total") == before + 1
    _alive_without_tracebacks(server)


@pytest.mark.slow
def test_bounded_concurrent_load_with_faulty_clients_has_no_crash_and_no_false_5xx(server, request_ts):
    import concurrent.futures as cf

    u = urlsplit(server.url)
    before = _metrics(server.url)
    body = {"user_id": 1, "candidates": [1, 2, 3], "ts": request_ts}

    def good(_):
        with httpx.Client(timeout=60) as c:
            return [c.post(server.url + "/v1/score", json=body).status_code for _ in range(10)]

    def faulty(i):
        for j in range(6):
            if j % 3 == 2:
                _abrupt(u.hostname, u.port, ABRUPT, linger_reset=bool(i % 2))
            else:
                _abort_mid_body(u.hostname, u.port, reset=bool((i + j) % 2))
        return []

    with cf.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(good, i) for i in range(8)] + [pool.submit(faulty, i) for i in range(4)]
        statuses = [s for f in futures for s in f.result(timeout=300)]
    assert statuses == [200] * 80
    n_aborts = 4 * 4  # the mid-body aborts; the abrupt ones closed with their whole (short) body sent
    got = lambda: _count(_metrics(server.url), "twinv2_request_errors_total", kind="aborted") \
        - _count(before, "twinv2_request_errors_total", kind="aborted")  # noqa: E731
    assert _wait_for(lambda: got() >= n_aborts)
    after = _metrics(server.url)
    assert _count(after, "twinv2_request_errors_total", kind="server") == 0
    assert _count(after, "twinv2_requests_total", status="200") - _count(before, "twinv2_requests_total",
                                                                         status="200") >= 80
    _alive_without_tracebacks(server)
    assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200
