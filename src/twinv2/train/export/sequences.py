"""`--format sequences`: plain per-sample Parquet, one row per sample with its history inline.

Files: train.parquet, valid.parquet, test.parquet (splits: export/samples.py), items.parquet (the dataset's
items table as it is: item_id, author_id, tag, duration_ms), manifest.json. Each sample row holds

- every sample column of the dataset (user_id, item_id, ts, label, and p_true / sample features where the
  dataset has them), `day` (evaluation day index; warm-up days -W..-1) and `hist_len` (the number of the
  user's behaviours strictly before ts, uncapped);
- the history as list columns, the latest min(hist_len, max_len) behaviours with ts < the sample's ts,
  oldest first and most recent last (the batcher's right-aligned order): `hist_item_id`, `hist_ts`,
  `hist_play_ms` (-1 = unknown), `hist_duration_ms` (0 = unknown) and `hist_<column>` for each extra
  behaviour column of an imported log (the manifest's cross_features). Raw values, not our buckets: the
  batcher's inputs are functions of these (train/features.py).

Rows are written a chunk at a time (about 4M history elements per chunk), so memory stays bounded whatever
the number of samples.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from twinv2.data.csr import concat_ranges
from twinv2.data.storage import Dataset
from twinv2.train.export.samples import SPLITS, ProtocolSamples, history_bounds

HISTORY = ("item_id", "ts", "play_ms", "duration_ms")  # behaviour columns every dataset has
CHUNK_ELEMENTS = 1 << 22


def history_columns(ds: Dataset) -> list[str]:
    """The behaviour columns exported as hist_<column>: the built-in ones, then the dataset's extra ones."""
    return [*HISTORY, *(c for c in ds.cross_features if c not in HISTORY)]


def sequence_table(ds: Dataset, part: pd.DataFrame, max_len: int) -> pa.Table:
    """One chunk of samples (rows of ProtocolSamples.samples) with their histories as list columns."""
    cols = history_columns(ds)
    clash = [f"hist_{c}" for c in cols if f"hist_{c}" in part.columns] + [c for c in ("hist_len",) if c in part]
    if clash:
        raise ValueError(f"the dataset's samples have column(s) {clash}, which the export's history columns use")
    shard, start, cut = history_bounds(ds, part["user_id"].to_numpy(), part["ts"].to_numpy())
    lo = np.maximum(start, cut - max_len)
    n = cut - lo  # (B,) elements kept per sample
    offsets = np.r_[0, np.cumsum(n)].astype(np.int64)  # (B+1,); < 2^31 by the chunk size
    values: dict[str, np.ndarray] = {}
    for s in np.unique(shard):
        i = np.flatnonzero(shard == s)
        csr = ds.csr(int(s))
        src, dst = concat_ranges(lo[i], n[i]), concat_ranges(offsets[:-1][i], n[i])
        for c in cols:
            col = csr.columns[c]
            out = values.setdefault(c, np.empty(int(offsets[-1]), col.dtype))
            out[dst] = col[src]
    if not values:  # no shard at all (an empty chunk): typed empty lists, from any shard's dtypes
        csr = ds.csr(0)
        values = {c: np.empty(0, csr.columns[c].dtype) for c in cols}
    table = pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False)
    table = table.append_column("hist_len", pa.array(cut - start, pa.int64()))
    off = pa.array(offsets, pa.int32())
    for c in cols:
        table = table.append_column(f"hist_{c}", pa.ListArray.from_arrays(off, pa.array(values[c])))
    return table


def chunks(ds: Dataset, part: pd.DataFrame, max_len: int) -> list[tuple[int, int]]:
    """Consecutive [a, b) row ranges of `part` holding about CHUNK_ELEMENTS history elements each (at least
    one row; one empty range for an empty part, so an empty split still gets a typed, empty file)."""
    if len(part) == 0:
        return [(0, 0)]
    _, start, cut = history_bounds(ds, part["user_id"].to_numpy(), part["ts"].to_numpy())
    total = np.cumsum(np.minimum(cut - start, max_len))  # (B,) elements up to and including each row
    out, a = [], 0
    while a < len(part):
        before = int(total[a - 1]) if a else 0
        b = max(a + 1, int(np.searchsorted(total, before + CHUNK_ELEMENTS, side="right")))
        out.append((a, b))
        a = b
    return out


def write_sequences(ds: Dataset, split: ProtocolSamples, root: Path, max_len: int,
                    on_rows: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """Write the sequences export into `root`; returns the manifest's format-specific fields."""
    for name in SPLITS:
        part = split.part(name)
        writer = None
        for a, b in chunks(ds, part, max_len):
            table = sequence_table(ds, part.iloc[a:b], max_len)
            if writer is None:
                writer = pq.ParquetWriter(root / f"{name}.parquet", table.schema, compression="zstd")
            writer.write_table(table)
            on_rows(table.num_rows)
        writer.close()
    ds.items().to_parquet(root / "items.parquet", index=False, compression="zstd")
    return {"history_columns": [f"hist_{c}" for c in history_columns(ds)], "history_order": "oldest first, "
            "most recent last", "history_rule": "behaviours with ts < the sample's ts, the latest max_len"}
