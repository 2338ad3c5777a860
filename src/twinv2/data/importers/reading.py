"""Reading input files (CSV/TSV/Parquet) and the optional item/user feature tables.

Every failure that makes a file unusable is a `DataError` naming the file (and the column where it applies):
a missing file, an empty file, a required column absent, a column with no value of the right type.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from twinv2.data.importers.core import require_columns, require_numeric
from twinv2.schema import ITEMS, USERS, DataError, validate

PARQUET_SUFFIXES = {".parquet", ".pq"}


def read_table(path: str | Path, columns: list[str], sep: str | None = None) -> pd.DataFrame:
    """The named columns of a CSV/TSV (separator by `sep`, else tab for .tsv/.tab and comma otherwise) or
    Parquet file. Raises DataError for a missing or empty file, an absent column or a malformed CSV."""
    path = Path(path)
    columns = list(dict.fromkeys(columns))
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from e
        require_columns(names, columns, str(path))
        df = pd.read_parquet(path, columns=columns)
    else:
        sep = sep or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
        try:
            header = pd.read_csv(path, sep=sep, nrows=0)
        except pd.errors.EmptyDataError as e:
            raise DataError(f"{path}: the file is empty (no header, no rows)") from e
        require_columns(list(header.columns), columns, str(path))
        try:
            df = pd.read_csv(path, sep=sep, usecols=columns, low_memory=False)
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: malformed CSV ({e})") from e
    if len(df) == 0:
        raise DataError(f"{path}: the file is empty (a header but no data rows)")
    return df


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
               ) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Item features: (valid ITEMS frame, quarantine, rows in). `tag` may hold a comma list (first tag kept);
    a blank author/tag is unknown (-1) and a blank duration is 0 (unknown)."""
    factor = unit_factor(duration_unit, f"{path}: items.duration_unit")
    cols = {"item_id": item, "author_id": author, "tag": tag, "duration_ms": duration}
    cols = {k: v for k, v in cols.items() if v}
    raw = read_table(path, list(cols.values()), sep)
    df = pd.DataFrame({k: raw[v] for k, v in cols.items()})
    if "tag" in df:
        df["tag"] = first_tag(df["tag"])
    require_numeric(df, list(cols), str(path), shown=cols)
    if "duration_ms" in df:
        df["duration_ms"] = scaled(df["duration_ms"], factor)
    v = validate(df, ITEMS, str(path))
    return v.clean, v.quarantine, v.rows_in


def read_users(path: str | Path, user: str, features: list[str], sep: str | None = None,
               codes: dict[str, dict[str, int]] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """User features: (valid USERS frame with float32 features, quarantine, rows in). `codes` maps the text
    values of a categorical column to integers (a value outside the map is quarantined as unparsable)."""
    raw = read_table(path, [user, *features], sep)
    df = pd.DataFrame({"user_id": raw[user]})
    for c in features:
        s = raw[c]
        if codes and c in codes:
            mapped = s.map(codes[c])
            s = mapped.where(mapped.notna(), s).astype(object)
        df[c] = s
    require_numeric(df, ["user_id", *features], str(path), shown={"user_id": user})
    v = validate(df, USERS, str(path), extras=list(features))
    return v.clean, v.quarantine, v.rows_in

