"""`--format longctr`: the layout of FuxiCTR's LongCTR model zoo (SIM, ETA, SDIM, TWIN, DIN, ... on long
sequences).

Follows `model_zoo/LongCTR/longctr_dataloader.py` of github.com/reczoo/FuxiCTR (read at commit 0245987fdc1d,
2026-06-05; the zoo pins fuxictr 2.3.2 in `model_zoo/LongCTR/fuxictr_version.py`). What that loader reads:

- a sample file (train/valid/test `.parquet`): every column becomes one column of one numeric array
  (`np.column_stack`), and `user_index`, `item_index` and `seq_len` are then used as array indices, so every
  column must be an integer (one float column turns them all into floats and the indexing fails). Ours:
  `user_index`, `item_index`, `seq_len`, `label` (0/1), `ts`, `day` (evaluation day; warm-up days -W..-1),
  `raw_user_id`, `raw_item_id`, all int64. p_true and float sample features are left out for that reason
  (the sequences export has them, row for row in the same order).
- `user_info.parquet`: `full_item_seq` read by position, so row i is user_index i; the sample's history is
  `full_item_seq[:seq_len]`, of which the loader keeps the latest `max_len` (`padding="pre"` pads and truncates
  at the front). So `full_item_seq` is the user's whole behaviour sequence in time order and `seq_len` the
  number of those behaviours strictly before the sample: the batcher's rule, sliced the same way. Ours adds
  `user_index`, `raw_user_id` and `full_ts_seq` (the behaviours' times, aligned with full_item_seq).
- `item_info.parquet`: `set_index("item_index")` then `.iloc[...]`, i.e. by position: row k is item_index k,
  and row 0 is padding (the loader masks history positions whose item_index is 0). Item indices are our own
  item rows (models/embeddings.py `ItemVocab`: 1..I by raw item id, 0 = padding/unknown), so a pre-trained
  `twinv2 embed` table lines up row for row. Columns the loader embeds when the feature map declares them
  (`source: item`): `item_id` (= item_index), `author_id`, `tag` (our author/tag rows, 0 = unknown) and
  `duration` (our log2 duration bucket); and raw values for joining: `raw_item_id`, `raw_author_id`,
  `raw_tag`, `duration_ms`. Sample files carry no column of the same name, since the loader would embed it
  from both.

`fuxictr_dataset_config.yaml` is a dataset config for this export (rebuild_dataset: False; every column
already encoded, vocab sizes filled in); the zoo's model configs set the loader's `max_len` (50 in their
templates).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from twinv2.data.csr import concat_ranges, user_ranges
from twinv2.data.storage import Dataset, shard_of
from twinv2.models.embeddings import ItemVocab
from twinv2.schema import DataError
from twinv2.train.export.samples import SPLITS, ProtocolSamples, history_bounds
from twinv2.train.features import N_DUR
from twinv2.train.trainer import item_tables

SOURCE = "reczoo/FuxiCTR model_zoo/LongCTR/longctr_dataloader.py @ 0245987fdc1d (fuxictr 2.3.2)"


def item_info(ds: Dataset) -> tuple[ItemVocab, pd.DataFrame]:
    """The vocabulary and item_info's rows: row k = item_index k, row 0 padding. (I+1 rows)"""
    vocab, tables = item_tables(ds)  # the trainer's own item rows, author/tag rows and duration buckets
    items = ds.items().sort_values("item_id", kind="stable")
    assert np.array_equal(items["item_id"].to_numpy(), vocab.item_ids)
    index = np.arange(vocab.n_items, dtype=np.int64)
    raw = {c: np.r_[pad, items[c].to_numpy(np.int64)] for c, pad in
           (("item_id", -1), ("author_id", -1), ("tag", -1), ("duration_ms", 0))}
    return vocab, pd.DataFrame({
        "item_index": index, "item_id": index, "author_id": tables.author_of, "tag": tables.tag_of,
        "duration": tables.dur_of, "raw_item_id": raw["item_id"], "raw_author_id": raw["author_id"],
        "raw_tag": raw["tag"], "duration_ms": raw["duration_ms"]}).astype("int64")


def _known_rows(vocab: ItemVocab, item_id: np.ndarray, where: str) -> np.ndarray:
    """Item rows of raw ids; an id missing from items.parquet would become padding (masked): refused."""
    rows = vocab.rows(item_id)
    if len(rows) and not rows.all():
        bad = np.asarray(item_id)[rows == 0]
        raise DataError(f"{where}: item_id {int(bad[0])} ({len(bad)} rows) is not in items.parquet; LongCTR "
                        f"would read it as padding; re-import the dataset")
    return rows


def write_user_info(ds: Dataset, vocab: ItemVocab, users_of_samples: np.ndarray, path: Path,
                    on_shard: Callable[[int], None]) -> list[tuple[int, np.ndarray]]:
    """user_info.parquet, shard by shard (bounded memory): users of shard 0 by user_id, then shard 1, ...
    Returns per shard (its first user_index, its users (U_s,) sorted)."""
    sample_shard = shard_of(users_of_samples, ds.n_shards)
    blocks, base, writer = [], 0, None
    for s in range(ds.n_shards):
        csr = ds.csr(s)
        users = np.union1d(csr.user_ids, users_of_samples[sample_shard == s]).astype(np.int64)  # (U_s,)
        a, b = user_ranges(csr.user_ids, csr.offsets, users)
        lens = b - a
        if lens.sum() >= 2**31:
            raise ValueError(f"shard {s} of {ds.root} has {int(lens.sum())} behaviours, more than one Parquet "
                             f"list column chunk holds; re-import with more shards")
        rows = concat_ranges(a, lens)  # (N_s,) the users' behaviours, each user's in time order
        items = _known_rows(vocab, np.asarray(csr.columns["item_id"])[rows], ds.shard_path("behaviours", s))
        off = pa.array(np.r_[0, np.cumsum(lens)], pa.int32())
        table = pa.table({
            "user_index": pa.array(np.arange(base, base + len(users), dtype=np.int64)),
            "raw_user_id": pa.array(users),
            "full_item_seq": pa.ListArray.from_arrays(off, pa.array(items.astype(np.int32))),
            "full_ts_seq": pa.ListArray.from_arrays(off, pa.array(np.asarray(csr.columns["ts"])[rows])),
        })
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="zstd")
        writer.write_table(table)
        blocks.append((base, users))
        base += len(users)
        on_shard(1)
    writer.close()
    return blocks


def sample_table(ds: Dataset, vocab: ItemVocab, blocks: list[tuple[int, np.ndarray]], part: pd.DataFrame,
                 where: str) -> pd.DataFrame:
    """One split's sample file: integer columns only (module docstring)."""
    uid, ts = part["user_id"].to_numpy(np.int64), part["ts"].to_numpy(np.int64)
    shard, start, cut = history_bounds(ds, uid, ts)
    user_index = np.zeros(len(uid), np.int64)
    for s in np.unique(shard):
        i = np.flatnonzero(shard == s)
        base, users = blocks[int(s)]
        user_index[i] = base + np.searchsorted(users, uid[i])
    return pd.DataFrame({
        "user_index": user_index, "item_index": _known_rows(vocab, part["item_id"].to_numpy(), where),
        "seq_len": cut - start, "label": part["label"].to_numpy(np.int64), "ts": ts,
        "day": part["day"].to_numpy(np.int64), "raw_user_id": uid, "raw_item_id": part["item_id"].to_numpy(np.int64),
    })


def dataset_config(target: Path, vocab: ItemVocab, max_len: int) -> str:
    """A FuxiCTR dataset config (YAML) for the export at `target` (its final place, absolute)."""
    dataset_id = "twinv2_" + re.sub(r"\W", "_", target.name)

    def cat(name: str, vocab_size: int) -> str:
        return (f"    - {{name: {name}, active: True, dtype: int, type: categorical, source: item, "
                f"vocab_size: {vocab_size}}}")

    meta = [f"    - {{name: {c}, active: True, dtype: int, type: meta, remap: False}}"
            for c in ("user_index", "item_index", "seq_len")]
    return "\n".join([
        f"# FuxiCTR LongCTR dataset config for the twinv2 export in {target}",
        f"# (layout: {SOURCE}).",
        "# Copy this entry into the zoo's config/<model>_config/dataset_config.yaml, set dataset_id to it in",
        "# model_config.yaml, and set max_len there: the loader keeps each sample's latest max_len behaviours",
        f"# (the zoo's templates say 50; this export was made with --max-len {max_len}).",
        "# FuxiCTR writes feature_map.json into data_root/dataset_id. vocab_size = number of codes, 0 included.",
        f"{dataset_id}:",
        f"    data_root: {target.parent}",
        "    data_format: parquet",
        *(f"    {s}_data: {target / (s + '.parquet')}" for s in SPLITS),
        f"    user_info: {target / 'user_info.parquet'}",
        f"    item_info: {target / 'item_info.parquet'}",
        "    rebuild_dataset: False",
        "    feature_cols:",
        *meta,
        cat("item_id", vocab.n_items), cat("author_id", vocab.n_authors), cat("tag", vocab.n_tags),
        cat("duration", N_DUR),
        "    label_col: {name: label, dtype: float}",
        "",
    ])


def write_longctr(ds: Dataset, split: ProtocolSamples, root: Path, max_len: int, target: Path,
                  on_shard: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Write the LongCTR export into `root` (to be renamed to `target`); returns the manifest's
    format-specific fields."""
    vocab, items = item_info(ds)
    items.to_parquet(root / "item_info.parquet", index=False, compression="zstd")
    exported = np.concatenate([split.rows[s] for s in SPLITS])
    users = np.unique(split.samples["user_id"].to_numpy(np.int64)[exported])
    blocks = write_user_info(ds, vocab, users, root / "user_info.parquet", on_shard)
    for name in SPLITS:
        table = sample_table(ds, vocab, blocks, split.part(name), f"{ds.root}/samples")
        table.to_parquet(root / f"{name}.parquet", index=False, compression="zstd")
    (root / "fuxictr_dataset_config.yaml").write_text(dataset_config(target, vocab, max_len))
    return {"layout_source": SOURCE, "n_users": sum(len(u) for _, u in blocks), "n_items": vocab.n_items,
            "vocab_size": {"item_id": vocab.n_items, "author_id": vocab.n_authors, "tag": vocab.n_tags,
                           "duration": N_DUR}}
