"""Checkpoints: the one place that writes, reads and rebuilds them (training, nearline and serving).

A checkpoint is a `torch.save`d dict of tensors and plain data, readable with `torch.load(weights_only=True)`:

    format_version  int, FORMAT_VERSION (2); a reader also takes 1 (the same fields without content_sha256)
                    and refuses any other
    content_sha256  sha256 of everything else in the dict (`content_sha256`): torch.load checks no CRC of the
                    tensor data, so without it a flipped byte would load as a changed weight
    model           the registry name
    config          the *resolved* TrainConfig (model_cfg.seq_len is the length the model reads, never 0)
    buckets         {"cross": [n_j], "user": [n_f]}: the bucket counts the model was built with
    state_dict      the weights (the item tables' author/tag/duration rows are buffers in it)
    item_ids        (I-1,) int64 raw item ids of rows 1..I-1 (row 0 is the unknown item)
    ...             extra fields of the writer (day, nearline window, ...)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinv2.config import from_dict, to_dict
from twinv2.data.sealed import read_sealed
from twinv2.models.embeddings import ItemVocab
from twinv2.models.frame import CTRModel, ItemTables, ModelConfig
from twinv2.models.registry import build_model
from twinv2.schema import DataError

FORMAT_VERSION = 2  # 2: content_sha256
READS = (1, 2)  # version 1 files have no checksum: read as they are (written before 2, nothing to check)
LATEST = "LATEST"  # pointer file of a checkpoint folder (train/nearline.NearlineTrainer.publish writes it)


def resolved_config(cfg: Any, model: CTRModel) -> Any:
    """`cfg` (a TrainConfig) with the lengths the model resolved (seq_len 0 = the model's default)."""
    return dataclasses.replace(cfg, model_cfg=dataclasses.replace(cfg.model_cfg, seq_len=model.seq_len))


def save_checkpoint(path: str | Path, model: CTRModel, cfg: Any, vocab: ItemVocab, extra: dict[str, Any]) -> None:
    """Atomic write (temp file + rename) of weights, resolved config and vocabulary (see the module docstring)."""
    body = {**extra, "model": cfg.model,
            "config": to_dict(resolved_config(cfg, model)),
            "buckets": {"cross": list(model.cross_buckets), "user": [e.num_embeddings for e in model.users]},
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},  # loads on any device
            "item_ids": torch.from_numpy(vocab.item_ids.copy())}
    write_checkpoint(path, body)


def write_checkpoint(path: str | Path, body: dict[str, Any]) -> None:
    """Atomic write of a checkpoint dict (e.g. one read with `load_checkpoint` and changed), stamped with this
    format version and its content checksum."""
    path = Path(path)
    body = {k: v for k, v in body.items() if k not in ("format_version", "content_sha256")}
    body["format_version"] = FORMAT_VERSION
    body["content_sha256"] = content_sha256(body)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(body, tmp)
    os.replace(tmp, path)


def content_sha256(ck: dict[str, Any]) -> str:
    """sha256 of a checkpoint dict but its content_sha256: keys, plain values, and each tensor's dtype, shape
    and bytes, so the same dict hashes the same before torch.save and after torch.load."""
    h = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(v.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy())  # no copy: hashlib reads the buffer
        elif isinstance(v, dict):
            h.update(f"D{len(v)}:".encode())
            for k in sorted(v, key=repr):
                feed(k)
                feed(v[k])
        elif isinstance(v, (list, tuple)):  # pickling may turn one into the other
            h.update(f"L{len(v)}:".encode())
            for x in v:
                feed(x)
        else:  # str, int, float, bool, None (what weights_only reads back)
            h.update(f"{type(v).__name__}:{v!r};".encode())

    feed({k: v for k, v in ck.items() if k != "content_sha256"})
    return h.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict; DataError (a ValueError) naming the file when it is unreadable, foreign, damaged
    (its content checksum differs) or of another format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, IndexError, KeyError, TypeError,
            AttributeError) as e:  # truncated, damaged (a flipped pickle opcode can raise any of these) or foreign
        why = " ".join(str(e).split())[:200]  # torch's messages span lines; the CLI prints one
        raise DataError(f"{path}: cannot read the checkpoint (damaged, truncated or not a checkpoint: {why})") \
            from e
    if not isinstance(ck, dict) or "state_dict" not in ck:
        raise DataError(f"{path}: not a twinv2 checkpoint (no state_dict); write one with `twinv2 train`")
    if ck.get("format_version") not in READS:  # a version-1 file holds every field of the docstring but one
        raise DataError(f"{path}: checkpoint format_version {ck.get('format_version')!r}, this twinv2 reads "
                        f"{' and '.join(map(str, READS))}; retrain it with `twinv2 train`")
    if ck["format_version"] >= 2 and ck.get("content_sha256") != content_sha256(ck):
        raise DataError(f"{path}: checksum mismatch (content_sha256): the checkpoint is damaged or was changed "
                        f"after it was written; retrain it with `twinv2 train` or restore a good copy")
    return ck


def _tables_from_state(sd: dict[str, torch.Tensor], where: str) -> ItemTables:
    """The item tables a model was built with, read back from its buffers and embedding shapes."""
    try:
        return ItemTables(author_of=sd["items.author_of"].numpy(), tag_of=sd["items.tag_of"].numpy(),
                          dur_of=sd["items.dur_of"].numpy(), n_authors=sd["items.emb.author.weight"].shape[0],
                          n_tags=sd["items.emb.tag.weight"].shape[0], n_dur=sd["items.dur.weight"].shape[0])
    except KeyError as e:
        raise ValueError(f"{where}: the state_dict lacks {e}; is it a twinv2 CTR model checkpoint?") from None


def load_model(path: str | Path) -> tuple[CTRModel, ItemVocab, dict[str, Any]]:
    """(model in eval mode with the checkpoint's weights, its vocabulary, the checkpoint dict)."""
    ck = load_checkpoint(path)
    saved = dict(ck["config"]["model_cfg"])
    saved.setdefault("short_len", 0)  # written before the frame had a short-term interest: the model had none
    model_cfg = from_dict(ModelConfig, saved, where=f"{path} config.model_cfg")
    sd = ck["state_dict"]
    tables = _tables_from_state(sd, str(path))
    model = build_model(ck["model"], tables, model_cfg, ck["buckets"]["cross"], ck["buckets"]["user"])
    model.load_state_dict(sd)
    model.eval()
    item_ids = np.asarray(ck["item_ids"].numpy(), dtype=np.int64)
    if len(item_ids) + 1 != tables.n_items:
        raise ValueError(f"{path}: {len(item_ids)} item ids for {tables.n_items} item rows (row 0 + one per id)")
    none = np.zeros(0, np.int64)
    vocab = ItemVocab(item_ids=item_ids, author_ids=none, tag_ids=none, author_of=tables.author_of,
                      tag_of=tables.tag_of)
    return model, vocab, ck


def resolve_checkpoint(source: str | Path) -> Path:
    """The checkpoint file a source names: a file itself; a folder's `LATEST` pointer (nearline output), else
    the folder's `checkpoint.pt` (a `twinv2 train` run folder)."""
    source = Path(source)
    if source.is_file():
        return source
    if source.is_dir():
        latest = source / LATEST
        if latest.is_file():
            fix = "delete it to serve the folder's newest checkpoint, or name a checkpoint file"
            name = read_sealed(latest, fix).get("checkpoint")
            if not isinstance(name, str) or not name:
                raise DataError(f"{latest}: no 'checkpoint' name in it; {fix}")
            return source / name
        if (source / "checkpoint.pt").is_file():
            return source / "checkpoint.pt"
        raise FileNotFoundError(f"{source} holds neither {LATEST} nor checkpoint.pt")
    raise FileNotFoundError(f"checkpoint not found: {source}")
