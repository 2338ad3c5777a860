"""Running the app: in the foreground (`twinv2 serve`), in a background thread (tests) or as a child process
(tests and `twinv2 bench serve`), always on a socket we bind ourselves so port 0 gives a free port without a
race."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def head_timeout_protocol(read_timeout_s: float, on_timeout: Callable[[], None] | None = None) -> type:
    """uvicorn's h11 protocol with a deadline for each request's head (request line and headers): a connection
    that has not sent a whole head `read_timeout_s` after it opened (or after its previous response) is closed.
    uvicorn only times out idle keep-alive connections, and any byte cancels that, so a client trickling a
    head would hold its connection slot forever. (The body has its own deadline in the app: a 408.)"""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeoutH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _bytes_since_arm = False

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._bytes_since_arm = True
            super().data_received(data)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._bytes_since_arm = False
            self._head_timer = self.loop.call_later(read_timeout_s, self._expired)

        def _expired(self) -> None:
            self._head_timer = None
            between = self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)
            # A kept-alive connection that has sent nothing since its last answer is uvicorn's keep-alive
            # timer's to close; a new connection, or a head begun and not finished, is ours.
            if between and (self.cycle is None or self._bytes_since_arm) and not self.transport.is_closing():
                if on_timeout is not None:
                    on_timeout()
                self.transport.close()

    return HeadTimeoutH11Protocol


def _server(app: Any, log_level: str, read_timeout_s: float | None = None):
    import uvicorn

    metrics = getattr(app, "metrics", None)
    limits = getattr(getattr(getattr(app, "app", None), "state", None), "limits", None)  # create_app's wrapper
    timeout = read_timeout_s or getattr(limits, "read_timeout_s", None) or 30.0
    http = head_timeout_protocol(timeout, (lambda: metrics.count("header_timeouts")) if metrics else None)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
                            limit_concurrency=512, backlog=512, http=http)
    return uvicorn.Server(config)


def serve_forever(app: Any, host: str = "127.0.0.1", port: int = 8000, port_file: str | Path | None = None,
                  log_level: str = "warning", read_timeout_s: float | None = None) -> None:
    """Serve until SIGINT/SIGTERM. `port_file` receives the bound port (useful with port 0) once listening;
    `read_timeout_s` (default 30) bounds the time a client may take to send a request's head."""
    if hasattr(signal, "SIGPIPE"):
        # Whoever started the server may have restored SIGPIPE's default (terminate; the CLI once did): a server
        # must not inherit it: one client closing its socket before the answer would kill the process (issue 14).
        # Ignored, a write to a closed socket raises an OSError that uvicorn handles per connection.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    server = _server(app, log_level, read_timeout_s)
    if port_file is not None:
        def announce() -> None:  # after uvicorn is accepting, so a reader of the file can connect at once
            while not server.started and not server.should_exit:
                time.sleep(0.01)
            p = Path(port_file)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(json.dumps({"host": host, "port": bound, "pid": os.getpid()}))
            os.replace(tmp, p)

        threading.Thread(target=announce, daemon=True).start()
    print(f"twinv2 serve: listening on http://{host}:{bound}", file=sys.stderr, flush=True)
    server.run(sockets=[sock])


class BackgroundServer:
    """The app served from a thread of this process on 127.0.0.1 and a free port (tests)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", log_level: str = "warning",
                 read_timeout_s: float | None = None) -> None:
        self.sock = bind(host, 0)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = _server(app, log_level, read_timeout_s)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server at {self.url} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def cli_command() -> list[str]:
    """How a user starts the CLI: the `twinv2` script installed beside this interpreter, else its module."""
    script = shutil.which("twinv2", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "twinv2.cli"]


class ServerProcess:
    """`twinv2 serve ARGS` (the way a user starts it, through the full CLI) as a child process on 127.0.0.1 and
    a free port; `stop()` ends it (SIGTERM, then SIGKILL after `grace` seconds)."""

    def __init__(self, args: list[str], host: str = "127.0.0.1", start_timeout: float = 120.0,
                 env: dict[str, str] | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="twinv2-serve-")
        self.port_file = Path(self._dir.name) / "port.json"
        self.log = open(Path(self._dir.name) / "server.log", "w+")
        cmd = [*cli_command(), "serve", *args, "--host", host, "--port", "0",
               "--port-file", str(self.port_file)]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + start_timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                out = self.output()
                self.stop()
                raise RuntimeError(f"server process did not start (exit {self.proc.returncode}):\n{out[-3000:]}")
            time.sleep(0.05)
        self.url = f"http://{host}:{json.loads(self.port_file.read_text())['port']}"

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, grace: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self._dir.cleanup()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
