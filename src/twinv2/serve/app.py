"""The HTTP service (FastAPI): `POST /v1/score`, `GET /healthz`, `GET /metrics`.

`POST /v1/score` takes ``{"user_id": int, "candidates": [int, ...], "ts": int (optional, epoch ms)}`` and
returns ``{"scores": [float, ...], "model_version", "snapshot_version", "clusters", "user_known",
"unknown_items", "ts"}``, one click probability per candidate in request order. Ids are 64-bit signed
integers; `ts` defaults to the server's clock.

Bad input never reaches the scorer and never causes a 5xx: a body over `max_body_bytes` (1 MB) gets 413, a
body not complete within `read_timeout_s` (30 s) 408, a body that is not JSON 400, a wrong shape or type, an
unknown field, more than `max_candidates` (2,000) or an impossible `ts` 422, each with a message naming what is
wrong. 503 means no model or snapshot is loaded yet. 500 with "cluster store damaged" means the user's stored
clusters (or the store's metadata) fail their CRC (serve/store.py): that request gets no scores, the damaged
value is logged once and every such answer is counted (`twinv2_store_corrupt_values_total`); other users are
still served, and `/healthz` answers 503 "damaged" from then on, so the replica can be taken out and rebuilt.
An unknown user is scored with an empty life cycle and an unknown item with the fallback embedding (scorer.py).
A client that disconnects before its body is read is counted as an abort (status label 499, kind "aborted"),
neither a server error nor a traceback.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from fastapi.responses import PlainTextResponse, Response
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from twinv2.serve.metrics import ABORTED, Metrics
from twinv2.serve.projections import ModelNotReady
from twinv2.serve.scorer import Scorer
from twinv2.serve.store import StoreCorrupt, StoreNotReady

Int64 = Annotated[int, Field(ge=-(1 << 63), le=(1 << 63) - 1)]
PATHS = ("/v1/score", "/healthz", "/metrics")  # metric labels: anything else is "other" (bounded cardinality)


@dataclass(frozen=True)
class Limits:
    max_candidates: int = 2000  # candidates per request
    max_body_bytes: int = 1_000_000  # request body (1 MB)
    concurrency: int = 1  # requests scored at once; each uses torch's intra-op threads already
    # Seconds a client has to send a request's head, and again its whole body: a client that stalls (or trickles
    # bytes) holds a connection slot, and enough of them lock everyone else out (issue 14). 408 for a body.
    read_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_candidates", "max_body_bytes", "concurrency"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Limits.{name} must be an integer >= 1, got {v!r}")
        v = self.read_timeout_s
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 3600:
            raise ValueError(f"Limits.read_timeout_s must be a number of seconds in (0, 3600], got {v!r}")


class Behaviour(BaseModel):
    """One of the user's latest behaviours, as a real-time feature service supplies them (`recent`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: Int64
    ts: Annotated[int, Field(ge=0)]  # epoch ms
    play_ms: Annotated[int, Field(ge=-1)] = -1  # -1: unknown
    duration_ms: Annotated[int, Field(ge=0)] = 0  # 0: unknown


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: "1", 1.0 and true are not ids

    user_id: Int64
    candidates: list[Int64]
    ts: Annotated[int, Field(ge=0)] | None = None  # epoch ms, any year; the scorer refuses times before the snapshot
    # The user's latest raw behaviours, oldest first, for the model's short-term interest (ModelConfig.short_len;
    # the latest short_len before `ts` are read, as offline): the snapshot holds clusters, not raw behaviours.
    recent: Annotated[list[Behaviour], Field(max_length=10_000)] | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: list[str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.details, self.headers = status, message, details, headers


class ClientAborted(Exception):
    """The client closed the connection before its request was read: nobody to answer, nothing went wrong here."""


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def read_body(request: Request, limit: int, timeout_s: float = Limits.read_timeout_s) -> bytes:
    """The body, refusing (413) one over `limit` bytes without reading past the limit, and (408, closing the
    connection) one not complete within `timeout_s`. A client that disconnects first raises ClientAborted."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {int(declared)} bytes; the limit is {limit}")
    chunks, size = [], 0
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"request body not complete after {timeout_s:g} s ({size} bytes received)",
                       headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise ClientAborted() from None
    return b"".join(chunks)


def parse_request(body: bytes, limits: Limits) -> ScoreRequest:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise ApiError(400, f"request body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise ApiError(422, f"request body must be a JSON object, got {type(data).__name__}")
    cands = data.get("candidates")
    if isinstance(cands, list) and len(cands) > limits.max_candidates:
        raise ApiError(422, f"at most {limits.max_candidates} candidates per request, got {len(cands)}")
    try:
        return ScoreRequest.model_validate(data)
    except ValidationError as e:
        details = [f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}"
                   for err in e.errors(include_url=False, include_input=False, include_context=False)[:20]]
        raise ApiError(422, "invalid request: " + "; ".join(details[:3]), details) from None


class _CountRequests:
    """ASGI wrapper: every HTTP response is counted by method, path and status (also 404s and 405s)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            path = scope.get("path", "")
            self.metrics.request(scope.get("method", "?"), path if path in PATHS else "other", status)


def create_app(scorer: Scorer, limits: Limits = Limits(), metrics: Metrics | None = None) -> Any:
    """The ASGI app: the FastAPI app around a scorer (its cache and store may be swapped underneath at any
    time), wrapped so every response is counted; the FastAPI app itself is the wrapper's `.app`."""
    metrics = metrics or Metrics(info=lambda: _info(scorer))
    limiter = anyio.CapacityLimiter(limits.concurrency)
    logged: set[tuple[str, int]] = set()  # damaged store values already written to the log
    app = FastAPI(title="twinv2 scoring", version="1", docs_url=None, redoc_url=None)
    app.state.metrics, app.state.scorer, app.state.limits = metrics, scorer, limits

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, e: ApiError) -> Response:
        body: dict[str, Any] = {"error": e.message}
        if e.details:
            body["details"] = e.details
        return _json(e.status, body, e.headers)

    @app.exception_handler(ClientAborted)
    async def client_aborted(_request: Request, _e: ClientAborted) -> Response:  # no traceback: not a fault here
        return Response(status_code=ABORTED)  # never sent: the client is gone

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, e: Exception) -> Response:  # a bug, never bad input
        traceback.print_exception(e, file=sys.stderr)
        return _json(500, {"error": f"internal error ({type(e).__name__})"})

    @app.post("/v1/score")
    async def score(request: Request) -> Response:
        t0 = time.perf_counter()
        req = parse_request(await read_body(request, limits.max_body_bytes, limits.read_timeout_s), limits)

        def run():
            try:
                recent = None if req.recent is None else {
                    k: np.array([getattr(b, k) for b in req.recent], np.int64)
                    for k in ("item_id", "ts", "play_ms", "duration_ms")}
                return scorer.score(req.user_id, req.candidates, req.ts, recent=recent)
            except (ModelNotReady, StoreNotReady) as e:
                raise ApiError(503, str(e)) from None
            except StoreCorrupt as e:  # before ValueError: a DataError, but the server's fault, not the request's
                metrics.count("store_corrupt_values")
                if len(logged) < 100 and (e.version, e.user_id) not in logged:  # once per value, bounded
                    logged.add((e.version, e.user_id))
                    print(f"twinv2 serve: error: {e}", file=sys.stderr, flush=True)
                what = ("its metadata" if e.user_id is None else
                        f"the clusters of user {e.user_id} in version {e.version!r}")
                raise ApiError(500, f"cluster store damaged: {what} fail their checksum; no scores were "
                                    f"computed") from None
            except ValueError as e:  # the request's values (a time before the snapshot)
                raise ApiError(422, str(e)) from None

        r = await anyio.to_thread.run_sync(run, limiter=limiter)
        metrics.count("candidates", len(req.candidates))
        metrics.count("unknown_items", r.unknown_items)
        if r.clusters == 0:
            metrics.count("unknown_users")
        body = {"scores": r.scores.tolist(), "model_version": r.model_version,
                "snapshot_version": r.snapshot_version, "clusters": r.clusters, "user_known": r.clusters > 0,
                "unknown_items": r.unknown_items, "ts": r.ts}
        response = _json(200, body)
        metrics.observe(time.perf_counter() - t0)
        return response

    @app.get("/healthz")
    def healthz() -> Response:
        """200 "ok"; 503 "not ready" before a model and a snapshot are loaded; 503 "damaged" once the store's
        metadata or any user's value failed its checksum (a replica to take out of rotation and rebuild)."""
        try:
            body = {"status": "ok", "model_version": scorer.cache.current.version,
                    "snapshot_version": scorer.store.version or _no_snapshot(scorer)}
        except (ModelNotReady, StoreNotReady) as e:
            return _json(503, {"status": "not ready", "error": str(e)})
        except StoreCorrupt as e:
            return _json(503, {"status": "damaged", "error": f"cluster store damaged: {e}"})
        damaged = metrics.counters.get("store_corrupt_values", 0)
        if damaged:
            return _json(503, {**body, "status": "damaged", "store_corrupt_values": damaged,
                               "error": f"{damaged} request(s) met damaged values in the cluster store; rebuild it"})
        return _json(200, body)

    @app.get("/metrics")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return _CountRequests(app, metrics)  # type: ignore[return-value]


def _no_snapshot(scorer: Scorer) -> str:
    raise StoreNotReady(f"cluster store {scorer.store.path} holds no snapshot; load one first")


def _info(scorer: Scorer) -> list[tuple[str, str, dict[str, str], float]]:
    out: list[tuple[str, str, dict[str, str], float]] = []
    cache = scorer.cache
    if cache.ready:
        mv = cache.current
        out.append(("model_info", "gauge", {"version": mv.version, "path": mv.path}, 1))
        out.append(("model_loaded_timestamp_seconds", "gauge", {}, round(mv.loaded_at, 3)))
    out.append(("model_reloads_total", "counter", {}, cache.reloads))
    out.append(("model_reload_errors_total", "counter", {}, cache.reload_errors))
    try:
        version = scorer.store.version
    except Exception:  # noqa: BLE001 - metrics must render even if the store cannot be read
        version = None
    if version is not None:
        out.append(("snapshot_info", "gauge",
                    {"version": version, "snapshot_ts": str(scorer.snapshot_ts(version))}, 1))
    return out
