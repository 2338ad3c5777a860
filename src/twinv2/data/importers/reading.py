"""Reading input files (CSV/TSV/Parquet, compressed or not) and the optional item/user feature tables.

Every failure that makes a file unusable is a `DataError` naming the file (and the column where it applies):
a missing file, an empty file, a required column absent, a column with no value of the right type, text that
is not in the declared encoding. Logs are read in chunks of at most `CHUNK_ROWS` rows (`iter_table`), so
memory does not grow with the size of a file (a small .gz can expand to gigabytes); id columns are read as
text and parsed exactly later (`schema.parse_int64`), never through float64.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from twinv2.data.importers.validation import require_columns, require_numeric
from twinv2.schema import ITEMS, USERS, DataError, validate

PARQUET_SUFFIXES = {".parquet", ".pq"}
COMPRESSED_SUFFIXES = {".gz", ".bz2", ".xz", ".zst", ".zip"}
CHUNK_ROWS = 200_000  # rows per chunk when reading a log: bounds memory whatever the file's size ...
CHUNK_BYTES = 32 << 20  # ... and fewer when rows are long: about this much memory per chunk of a CSV


def _suffix(path: Path) -> str:
    """The format suffix, looking through a compression suffix: "log.tsv.gz" -> ".tsv"."""
    sfx = [s.lower() for s in path.suffixes]
    while sfx and sfx[-1] in COMPRESSED_SUFFIXES:
        sfx.pop()
    return sfx[-1] if sfx else ""


def check_encoding(encoding: str, what: str) -> str:
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise ValueError(f"{what}: unknown text encoding {encoding!r} (e.g. utf-8, latin-1, cp1252)") from None
    return encoding


def _decode_error(path: Path, e: UnicodeDecodeError, encoding: str, where: str) -> DataError:
    return DataError(f"{path}: {where} is not {encoding} text ({e.reason}: byte 0x{e.object[e.start]:02x} at "
                     f"offset {e.start} of a block); re-save it as UTF-8 or set `encoding:` in the mapping "
                     f"(e.g. latin-1)")


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: {'a folder, not a file' if path.is_dir() else 'file not found'}")


def _csv_header(path: Path, sep: str, encoding: str) -> list[str]:
    try:
        header = pd.read_csv(path, sep=sep, nrows=0, encoding=encoding)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: the file is empty (no header, no rows)") from e
    except UnicodeDecodeError as e:
        raise _decode_error(path, e, encoding, "the header") from None
    except (pd.errors.ParserError, ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable CSV file ({str(e)[:200]})") from None
    return [str(c) for c in header.columns]


def iter_table(path: str | Path, columns: list[str], sep: str | None = None, text_columns: list[str] = (),
               encoding: str = "utf-8", chunk_rows: int | None = None) -> Iterator[pd.DataFrame]:
    """The named columns of a CSV/TSV (separator by `sep`, else tab for .tsv/.tab and comma otherwise; .gz
    and other compressions are read through) or Parquet file, in chunks of at most `chunk_rows` rows with a
    continuing index. `text_columns` of a CSV are read as text (ids: parsed exactly later). Raises DataError
    for a missing or empty file, an absent column, text not in `encoding` or a malformed CSV."""
    path = Path(path)
    columns = list(dict.fromkeys(columns))
    chunk_rows = chunk_rows or CHUNK_ROWS
    _check_file(path)
    if _suffix(path) in PARQUET_SUFFIXES:
        try:
            f = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from e
        require_columns(f.schema_arrow.names, columns, str(path))
        start = 0
        try:
            for batch in f.iter_batches(batch_size=chunk_rows, columns=columns):
                df = batch.to_pandas()
                df.index = pd.RangeIndex(start, start + len(df))
                start += len(df)
                yield df
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from e
        return
    sep = sep or ("\t" if _suffix(path) in (".tsv", ".tab") else ",")
    require_columns(_csv_header(path, sep, encoding), columns, str(path))
    text = {c: str for c in text_columns if c in columns}
    try:
        reader = pd.read_csv(path, sep=sep, usecols=columns, dtype=text, encoding=encoding, iterator=True)
        with reader:
            n = min(chunk_rows, 10_000)  # a first small chunk measures the row size; then ~CHUNK_BYTES a chunk
            while True:
                try:
                    df = reader.get_chunk(n)
                except StopIteration:
                    return
                yield df
                per_row = max(1, int(df.memory_usage(deep=True).sum()) // max(len(df), 1))
                n = int(min(chunk_rows, max(100, CHUNK_BYTES // per_row)))
    except UnicodeDecodeError as e:
        raise _decode_error(path, e, encoding, "a data row") from None
    except (pd.errors.ParserError, OSError, EOFError) as e:  # OSError: e.g. a truncated or corrupt .gz
        raise DataError(f"{path}: malformed CSV ({str(e)[:200]})") from e


def read_table(path: str | Path, columns: list[str], sep: str | None = None, text_columns: list[str] = (),
               encoding: str = "utf-8") -> pd.DataFrame:
    """The whole of `iter_table` as one frame (feature tables, the KuaiRand files); DataError if it has no rows."""
    chunks = list(iter_table(path, columns, sep, text_columns, encoding))
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise DataError(f"{path}: the file is empty (a header but no data rows)")
    return chunks[0] if len(chunks) == 1 else pd.concat(chunks)


class Coder:
    """A categorical text column as integer codes: 0, 1, ... in order of first appearance over every input
    (one table per column name, shared by every file that holds the column), or a `fixed` table where a value
    outside it keeps its text (and is quarantined as unparsable). Blank cells stay blank (NaN). With `sep`, a
    multi-valued cell ("Action|Comedy") is coded by its first value ("Action")."""

    MAX_CODES = 100_000  # more distinct values is an id column, not a category

    def __init__(self, name: str, sep: str | None = "|", fixed: dict[str, int] | None = None) -> None:
        self.name, self.sep, self.fixed = name, sep, fixed is not None
        self.table: dict[str, int] = dict(fixed or {})

    def encode(self, s: pd.Series, source: str) -> pd.Series:
        blank = s.isna().to_numpy(dtype=bool)
        t = s.astype(str).str.strip()
        if self.sep:
            t = t.str.split(self.sep, n=1).str[0].str.strip()
        blank = blank | (t == "").to_numpy(dtype=bool)
        if not self.fixed:
            for v in pd.unique(t[~blank]):
                if v not in self.table:
                    if len(self.table) >= self.MAX_CODES:
                        raise DataError(f"{source}: categorical column '{self.name}' has more than "
                                        f"{self.MAX_CODES} distinct values; is it an id column?")
                    self.table[v] = len(self.table)
        codes = t.map(self.table)
        out = codes.astype(object)
        unknown = ~blank & codes.isna().to_numpy(dtype=bool)
        out[unknown] = s[unknown].astype(str)
        out[blank] = np.nan
        return out if unknown.any() else codes.astype("float64")


def scaled(raw: pd.Series, factor: float) -> pd.Series:
    """Numbers times `factor`, rounded to integers (Int64, NA for blank); unparsable cells keep their raw text
    so that validation quarantines them with it."""
    num = pd.to_numeric(raw, errors="coerce")
    out = (num.astype("float64") * factor).round().astype("Int64")
    bad = num.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
    if not bad.any():
        return out
    obj = out.astype(object)
    obj[bad] = raw[bad].astype(str)
    return obj


def first_tag(raw: pd.Series) -> pd.Series:
    """A tag list like "39,68" -> "39" (the first tag); single tags and blanks unchanged."""
    if pd.api.types.is_numeric_dtype(raw.dtype):
        return raw
    return raw.astype("string").str.split(",").str[0].str.strip()


UNIT_FACTOR = {"ms": 1.0, "s": 1000.0}


def unit_factor(unit: str, what: str) -> float:
    """Milliseconds per `unit` ("ms" or "s"); ValueError naming `what` otherwise."""
    if unit not in UNIT_FACTOR:
        raise ValueError(f"{what}: unit {unit!r} is not one of {sorted(UNIT_FACTOR)}")
    return UNIT_FACTOR[unit]


def read_items(path: str | Path, item: str, author: str | None = None, tag: str | None = None,
               duration: str | None = None, duration_unit: str = "ms", sep: str | None = None,
               coders: dict[str, Coder] | None = None, encoding: str = "utf-8",
               ) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Item features: (valid ITEMS frame, quarantine, rows in). `tag` may hold a comma list (first tag kept);
    a blank author/tag is unknown (-1) and a blank duration is 0 (unknown). `coders` (by the file's column
    name) turn a text author or tag column into integer codes."""
    factor = unit_factor(duration_unit, f"{path}: items.duration_unit")
    cols = {"item_id": item, "author_id": author, "tag": tag, "duration_ms": duration}
    cols = {k: v for k, v in cols.items() if v}
    coders = coders or {}
    raw = read_table(path, list(cols.values()), sep, text_columns=[item, author, tag], encoding=encoding)
    df = pd.DataFrame({k: raw[v] for k, v in cols.items()})
    for k in ("author_id", "tag"):
        if k in df and cols[k] in coders:
            df[k] = coders[cols[k]].encode(df[k], str(path))
        elif k == "tag" and k in df:
            df["tag"] = first_tag(df["tag"])
    require_numeric(df, list(cols), str(path), shown=cols)
    if "duration_ms" in df:
        df["duration_ms"] = scaled(df["duration_ms"], factor)
    v = validate(df, ITEMS, str(path))
    return v.clean, v.quarantine, v.rows_in


def read_users(path: str | Path, user: str, features: list[str], sep: str | None = None,
               codes: dict[str, dict[str, int]] | None = None, coders: dict[str, Coder] | None = None,
               encoding: str = "utf-8") -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """User features: (valid USERS frame with float32 features, quarantine, rows in). `codes` maps the text
    values of a categorical column to fixed integers (a value outside the map is quarantined as unparsable);
    `coders` learn the codes of further text columns."""
    coders = {**{c: Coder(c, sep=None, fixed=t) for c, t in (codes or {}).items()}, **(coders or {})}
    raw = read_table(path, [user, *features], sep, text_columns=[user, *(c for c in features if c in coders)],
                     encoding=encoding)
    df = pd.DataFrame({"user_id": raw[user]})
    for c in features:
        df[c] = coders[c].encode(raw[c], str(path)) if c in coders else raw[c]
    require_numeric(df, ["user_id", *features], str(path), shown={"user_id": user})
    v = validate(df, USERS, str(path), extras=list(features))
    return v.clean, v.quarantine, v.rows_in
