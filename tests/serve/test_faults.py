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
