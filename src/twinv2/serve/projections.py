"""The projection cache: the served model version, computed once per checkpoint (paper §3.4: the inherent
projections come from an embedding server refreshed from the latest model), and swapped atomically when a
newer checkpoint appears. What is cached and how a request is scored is the model's own code
(`TWIN.precompute` / `TWIN.score`, models/serving.py); this module only loads, versions and swaps.

Swapping: `ProjectionCache.current` is one reference, replaced by a single assignment after the new version is
fully built. A request reads it once and uses only that object, so requests in flight finish on the version
they started with and no request mixes two versions; the old version is freed when its last request ends.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from twinv2.models.embeddings import ItemVocab
from twinv2.models.serving import ItemCache
from twinv2.models.twin import TWIN
from twinv2.train.checkpoint import load_model, resolve_checkpoint


class ModelNotReady(RuntimeError):
    """No checkpoint could be loaded yet."""


@dataclass(frozen=True)
class ModelVersion:
    """One checkpoint, ready to serve. Never mutated after `load_model_version` returns it."""

    version: str  # "<model name>-<sha256 of the checkpoint file, 12 hex>"
    path: str
    stamp: tuple  # (path, size, mtime_ns) of the file it came from
    model: TWIN  # eval mode; scores requests (model.score) with `cache`
    vocab: ItemVocab  # raw item id -> row (0 = unknown item: the fallback)
    cache: ItemCache  # model.precompute(): the item-only parts, per item row and per cross bucket
    seq_len: int  # clusters per user the model reads (the latest by mean time beyond it)
    loaded_at: float
    info: dict[str, Any]  # extra checkpoint fields (day, nearline window, ...)


def file_stamp(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _sha12(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:12]


@torch.no_grad()
def load_model_version(path: str | Path) -> ModelVersion:
    """Load a checkpoint file and precompute its cache (the slow part of a swap, done off the request path)."""
    path = Path(path)
    stamp = file_stamp(path)  # before reading: a file replaced meanwhile is seen as new on the next poll
    model, vocab, ck = load_model(path)
    if not isinstance(model, TWIN) or model.sequence != "clusters":
        raise ValueError(f"{path}: model {ck['model']!r} is not served; the scorer serves cluster models with "
                         f"a target-attention GSU (twin_v2): the cluster store holds their sequences")
    extra = {k: v for k, v in ck.items() if k not in ("state_dict", "item_ids", "config")}
    return ModelVersion(version=f"{ck['model']}-{_sha12(path)}", path=str(path), stamp=stamp, model=model,
                        vocab=vocab, cache=model.precompute(), seq_len=model.seq_len, loaded_at=time.time(),
                        info=json.loads(json.dumps(extra, default=str)))


class ProjectionCache:
    """The served `ModelVersion`, reloaded when `source` (a checkpoint file or folder) points to a newer file.

    `refresh()` checks once; `start(poll_s)` checks in a daemon thread. A checkpoint that fails to load is
    reported (`reload_errors`, `last_error`) and the current version keeps serving.
    """

    def __init__(self, source: str | Path, load: bool = True) -> None:
        self.source = Path(source)
        self._current: ModelVersion | None = None
        self._reload_lock = threading.Lock()  # one load at a time; readers never take it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.reload_errors = 0
        self.last_error: str | None = None
        if load:
            self.swap(load_model_version(resolve_checkpoint(self.source)))

    @property
    def current(self) -> ModelVersion:
        mv = self._current  # one read of one reference: the whole request uses this object
        if mv is None:
            raise ModelNotReady(f"no checkpoint loaded from {self.source} yet")
        return mv

    @property
    def ready(self) -> bool:
        return self._current is not None

    def swap(self, mv: ModelVersion) -> None:
        self._current = mv  # a single reference assignment: atomic
        self.reloads += 1

    def refresh(self) -> bool:
        """Load the source's checkpoint if it is not the one served; True when a new version was swapped in."""
        with self._reload_lock:
            try:
                path = resolve_checkpoint(self.source)
                cur = self._current
                if cur is not None and cur.stamp == file_stamp(path):
                    return False
                mv = load_model_version(path)
            except (ValueError, OSError) as e:  # keep serving the old version; the next poll retries
                self.reload_errors += 1
                self.last_error = str(e)
                print(f"twinv2 serve: checkpoint reload failed: {e}", file=sys.stderr)
                return False
            self.swap(mv)
            return True

    def start(self, poll_s: float = 2.0) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.wait(poll_s):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="twinv2-checkpoint-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
