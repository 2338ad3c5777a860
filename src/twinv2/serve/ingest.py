"""Reading the nearline inbox and appending new behaviours to a dataset's shards.

Inbox files are Parquet or CSV in the dataset's table layout (schema.py): `samples/` (user_id, item_id, ts,
label) and `behaviours/` (user_id, item_id, ts[, play_ms, duration_ms, cross features]). A file must be complete
when it becomes visible (write it under a temporary name, then rename it): names starting with "." or ending
in ".tmp" are not read. Rows that fail validation are written to the publish folder's quarantine.csv with a
reason each, never dropped silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from twinv2.data.storage import Dataset, part_name, replace_files, shard_of
from twinv2.schema import BEHAVIOURS, SAMPLES, TableSpec, validate

SUFFIXES = (".parquet", ".csv")


def inbox_files(inbox: Path, table: str) -> list[Path]:
    """Complete files of one inbox table, sorted by name (the order producers name them in)."""
    d = Path(inbox) / table
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith(".")
                  and not p.name.endswith(".tmp"))


def read_inbox_file(path: Path, spec: TableSpec, extras: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(valid typed rows sorted by (user_id, ts), quarantined rows with a reason each). DataError if unusable."""
    raw = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    v = validate(raw, spec, str(path), extras=extras)
    return v.clean, v.quarantine


def read_table(path: Path, table: str, extras: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An inbox file of `table` ("samples" or "behaviours"; `extras`: the behaviours' cross features)."""
    if table == "samples":
        return read_inbox_file(path, SAMPLES, [])
    return read_inbox_file(path, BEHAVIOURS, extras)


def append_behaviours(root: str | Path, rows: pd.DataFrame) -> dict[str, int]:
    """Merge typed behaviour rows into the dataset's shards (each rewritten atomically, sorted by
    (user_id, ts)); rows equal to a stored one on (user_id, item_id, ts) are skipped and counted.

    Returns {"appended": n, "duplicates": n, "shards": number of shards rewritten}.
    """
    ds = Dataset(root)
    if len(rows) == 0:
        return {"appended": 0, "duplicates": 0, "shards": 0}
    shards = shard_of(rows["user_id"].to_numpy(), ds.n_shards)
    appended = dups = 0
    pending: dict[str, Path] = {}  # shard file -> its finished replacement
    for s in np.unique(shards):
        path = ds.shard_path(BEHAVIOURS.name, int(s))
        old = pq.read_table(path)
        new = rows[shards == s]
        extra = [c for c in new.columns if c not in old.column_names]
        if extra:
            raise ValueError(f"new behaviours have column(s) {extra} that {path} lacks")
        new = new[[c for c in old.column_names if c in new.columns]]
        for c in old.column_names:  # a cross feature the file did not carry: unknown, stored as NaN/fill
            if c not in new.columns:
                new = new.assign(**{c: np.nan})
        key = ["user_id", "item_id", "ts"]
        old_keys = old.select(key).to_pandas()
        is_dup = new[key].merge(old_keys.drop_duplicates(), on=key, how="left", indicator=True)["_merge"].eq("both")
        new = new[~is_dup.to_numpy()]
        dups += int(is_dup.sum())
        if len(new) == 0:
            continue
        merged = pd.concat([old.to_pandas(), new], ignore_index=True).sort_values(["user_id", "ts"], kind="stable")
        table = pa.Table.from_pandas(merged, schema=old.schema, preserve_index=False)
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        pending[f"{BEHAVIOURS.name}/{path.name}"] = tmp
        appended += len(new)
    if appended:
        manifest = {k: v for k, v in ds.manifest.items() if k not in ("format", "version")}
        counts = dict(manifest.get("counts", {}))
        if "behaviours" in counts:
            counts["behaviours"] = int(counts["behaviours"]) + appended
        manifest["counts"] = counts
        # The shards and the manifest (their checksums, the counts) change together: a kill at any instant
        # leaves the old dataset or the new one, never new shards under the old checksums.
        replace_files(ds.root, pending, manifest)
    return {"appended": appended, "duplicates": dups, "shards": len(pending)}


__all__ = ["append_behaviours", "inbox_files", "part_name", "read_table"]
