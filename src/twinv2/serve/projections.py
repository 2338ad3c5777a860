"""The projection cache: everything a request needs that depends only on the model, computed once per
checkpoint (paper §3.4: the inherent projections come from an embedding server refreshed from the latest
model), and swapped atomically when a newer checkpoint appears.

A `ModelVersion` is immutable once built and holds, for every item row and head:
- `items`  e(item) = K_h, the inherent embeddings (I, D): the GSU ranks clusters with u · e (see scorer.py);
- `keys`   K_h W^h (I, H, d): the ESU's keys (A.2);
- `values` K_h W^v_h (I, H, d): the item part of the ESU's values;
and per cross feature j and bucket b the scalars β_h,j (E_j[b] · w_h,j) (n_j, H), their head mean (n_j,)
and the value part E_j[b] W^v_c,j (n_j, H·d). Memory: I · (D + 2·H·d) · 4 bytes (160 floats per item at the
defaults: 640 MB for a million items). Everything stays float32: the scorer must equal the offline forward.

Swapping: `ProjectionCache.current` is one reference, replaced by a single assignment after the new version is
fully built. A request reads it once and uses only that object, so requests in flight finish on the version
they started with and no request mixes two versions; the old version is freed when its last request ends.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinv2.models.embeddings import ItemVocab
from twinv2.models.frame import CTRModel, ItemTables

LATEST = "LATEST"  # pointer file of a checkpoint folder (nearline.publish_checkpoint writes it)


class ModelNotReady(RuntimeError):
    """No checkpoint could be loaded yet."""


@dataclass(frozen=True)
class ModelVersion:
    """One checkpoint, ready to serve. Never mutated after `load_model_version` returns it."""

    version: str  # "<model name>-<sha256 of the checkpoint file, 12 hex>"
    path: str
    stamp: tuple  # (path, size, mtime_ns) of the file it came from
    model: CTRModel  # eval mode: query, tower and the long-term module's small weights
    vocab: ItemVocab  # raw item id -> row (0 = unknown item: the fallback)
    items: torch.Tensor  # (I, D) inherent embeddings e(item)
    keys: torch.Tensor  # (I, H, d) K_h W^h
    values: torch.Tensor  # (I, H, d) K_h W^v_h
    cross_attn: tuple[torch.Tensor, ...]  # per feature j: (n_j, H) β_h,j (E_j[b] · w_h,j)
    cross_gsu: tuple[torch.Tensor, ...]  # per feature j: (n_j,) the same averaged over heads
    cross_value: tuple[torch.Tensor, ...]  # per feature j: (n_j, H·d) E_j[b] W^v_c,j
    seq_len: int  # clusters per user the model reads (the latest by mean time beyond it)
    loaded_at: float
    info: dict[str, Any]  # extra checkpoint fields (day, nearline window, ...)

    @property
    def heads(self) -> int:
        return self.keys.shape[1]

    @property
    def head_dim(self) -> int:
        return self.keys.shape[2]


def _tables_from_state(sd: dict[str, torch.Tensor]) -> ItemTables:
    """The item tables a model was built with, read back from its buffers and embedding shapes."""
    try:
        return ItemTables(author_of=sd["items.author_of"].numpy(), tag_of=sd["items.tag_of"].numpy(),
                          dur_of=sd["items.dur_of"].numpy(), n_authors=sd["items.emb.author.weight"].shape[0],
                          n_tags=sd["items.emb.tag.weight"].shape[0], n_dur=sd["items.dur.weight"].shape[0])
    except KeyError as e:
        raise ValueError(f"checkpoint state_dict lacks {e}; is it a twinv2 CTR model checkpoint?") from None


def build_model_from_checkpoint(ck: dict[str, Any], where: str = "checkpoint") -> tuple[CTRModel, ItemVocab, Any]:
    """(model in eval mode with the checkpoint's weights, its vocabulary, its TrainConfig)."""
    from twinv2.config import from_dict
    from twinv2.models.registry import build_model
    from twinv2.train.features import CROSS_BUCKETS
    from twinv2.train.trainer import TrainConfig

    for key in ("model", "config", "state_dict", "item_ids"):
        if key not in ck:
            raise ValueError(f"{where}: not a twinv2 checkpoint (no {key!r}); write one with `twinv2 train`")
    cfg = from_dict(TrainConfig, ck["config"], where=f"{where} config")
    sd = ck["state_dict"]
    if any(k.startswith("users.") for k in sd):
        raise ValueError(f"{where}: the model uses user features, which the scorer does not serve")
    tables = _tables_from_state(sd)
    model = build_model(cfg.model, tables, cfg.model_cfg, CROSS_BUCKETS)
    model.load_state_dict(sd)
    model.eval()
    item_ids = np.asarray(ck["item_ids"].numpy() if isinstance(ck["item_ids"], torch.Tensor) else ck["item_ids"],
                          dtype=np.int64)
    if len(item_ids) + 1 != tables.n_items:
        raise ValueError(f"{where}: {len(item_ids)} item ids for {tables.n_items} item rows (row 0 + one per id)")
    zero = np.zeros(1, np.int64)
    vocab = ItemVocab(item_ids=item_ids, author_ids=zero[:0], tag_ids=zero[:0], author_of=tables.author_of,
                      tag_of=tables.tag_of)
    return model, vocab, cfg


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
    """Load a checkpoint file and precompute its projections (the slow part of a swap, done off the
    request path)."""
    from twinv2.models.twin_v2 import TWINV2
    from twinv2.train.trainer import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    stamp = file_stamp(path)
    try:
        ck = load_checkpoint(path)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:  # truncated or foreign
        raise ValueError(f"{path}: cannot read the checkpoint ({e})") from e
    model, vocab, _ = build_model_from_checkpoint(ck, where=str(path))
    if not isinstance(model, TWINV2):
        raise ValueError(f"{path}: model {ck['model']!r} is not served; the scorer serves twin_v2 checkpoints")
    attn = model.attn
    H, d = attn.cfg.heads, attn.cfg.head_dim
    items = model.items.every_item().contiguous()  # (I, D)
    cross_attn = tuple(t.contiguous() for t in attn.cross_scalars())  # (n_j, H) each
    E = attn.cfg.cross_dim
    w_vc = attn.w_vc.weight  # (H·d, J·E): W^v_c acts on the concatenated cross embeddings
    cross_value = tuple((emb.weight @ w_vc[:, j * E:(j + 1) * E].T).contiguous()  # (n_j, H·d)
                        for j, emb in enumerate(attn.cross))
    extra = {k: v for k, v in ck.items() if k not in ("state_dict", "item_ids", "config")}
    return ModelVersion(
        version=f"{ck['model']}-{_sha12(path)}", path=str(path), stamp=stamp, model=model, vocab=vocab,
        items=items, keys=attn.keys(items).contiguous(), values=attn.w_v(items).unflatten(-1, (H, d)).contiguous(),
        cross_attn=cross_attn, cross_gsu=tuple(t.mean(-1).contiguous() for t in cross_attn),
        cross_value=cross_value, seq_len=model.seq_len, loaded_at=time.time(),
        info=json.loads(json.dumps(extra, default=str)))


def resolve_checkpoint(source: str | Path) -> Path:
    """The checkpoint file a source names: a file itself; a folder's `LATEST` pointer (nearline output), else
    the folder's `checkpoint.pt` (a `twinv2 train` run folder)."""
    source = Path(source)
    if source.is_file():
        return source
    if source.is_dir():
        latest = source / LATEST
        if latest.is_file():
            try:
                name = json.loads(latest.read_text())["checkpoint"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{latest}: unreadable pointer ({e})") from e
            return source / name
        if (source / "checkpoint.pt").is_file():
            return source / "checkpoint.pt"
        raise FileNotFoundError(f"{source} holds neither {LATEST} nor checkpoint.pt")
    raise FileNotFoundError(f"checkpoint not found: {source}")


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
