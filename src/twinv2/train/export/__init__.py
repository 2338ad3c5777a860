"""`twinv2 export`: a dataset's samples, split by our protocol and each with its leak-free history, in files
other frameworks read, so their models train and test on exactly the samples ours do.

- `longctr` (export/longctr.py): FuxiCTR LongCTR's layout (user_info / item_info / train / valid / test
  Parquet, a per-sample `seq_len` into the user's full sequence) and a ready FuxiCTR dataset config.
- `sequences` (export/sequences.py): one Parquet row per sample with its label, target, time and the latest
  `max_len` behaviours before it as list columns.

Both take the splits and histories from export/samples.py: the trainer's day split (`EvalDay.train_mask` /
`test_mask`; valid = hour 22 of each evaluation day) and the batcher's history rule (behaviours with ts < the
sample's ts, `BehaviourCSR.ranges_before`). `max_len` (default 1,000) caps the sequences export's lists; the
longctr export stores whole sequences and records max_len for its loader config (FuxiCTR's zoo templates use
50; our TWIN reads 10,000, so pass `--max-len 10000` to give another framework TWIN's window). The folder is
written beside `out` and renamed into place (export/folder.py); its manifest.json names the format, the
source dataset and its checksum, max_len, the counts per split and every file's checksum.

This sits in train/ because it reuses the trainer's item rows (`item_tables`) and split, not because it trains.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from twinv2 import __version__
from twinv2.data.dirs import staged_dir
from twinv2.data.storage import Dataset
from twinv2.train.export import folder
from twinv2.train.export.longctr import write_longctr
from twinv2.train.export.samples import SPLITS, protocol_samples
from twinv2.train.export.sequences import write_sequences

FORMATS = ("longctr", "sequences")
DEFAULT_MAX_LEN = 1000


def export_dataset(dataset: str | Path, out: str | Path, fmt: str, max_len: int = DEFAULT_MAX_LEN,
                   overwrite: bool = False, progress: bool = True) -> Path:
    """Export the dataset at `dataset` to the folder `out` as `fmt` (one of FORMATS); returns `out`.
    Refuses (ValueError / FileNotFoundError / FileExistsError naming the value) an unknown format, a max_len
    that is not an integer >= 1, a missing dataset, an `out` inside the dataset, and an existing `out` unless
    `overwrite` and it is an earlier export holding only its own files."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len (--max-len) must be an integer >= 1, got {max_len!r}")
    if not Path(dataset).is_dir():
        raise FileNotFoundError(f"dataset {dataset} not found (a folder from `twinv2 generate` or `twinv2 import`)")
    ds = Dataset(dataset)
    target = Path(out).absolute()
    folder.check_out(ds.root, target)
    split = protocol_samples(ds)
    counts = {name: len(split.rows[name]) for name in SPLITS}
    with staged_dir(target, overwrite, owned=folder.foreign_entries, kind="export") as tmp:
        if fmt == "longctr":
            with tqdm(total=ds.n_shards, desc="export longctr: users", unit="shard", disable=not progress,
                      file=sys.stderr, leave=False) as bar:
                extra = write_longctr(ds, split, tmp, max_len, target, bar.update)
        else:
            with tqdm(total=sum(counts.values()), desc="export sequences", unit="sample", disable=not progress,
                      file=sys.stderr, leave=False) as bar:
                extra = write_sequences(ds, split, tmp, max_len, bar.update)
        folder.write_manifest(tmp, {
            "export_format": fmt, "max_len": max_len, "created_by": f"twinv2 {__version__}",
            "source": {"path": str(ds.root.absolute()), "manifest_sha256": ds.manifest.get("manifest_sha256")},
            "counts": {**counts, "outside_protocol_days": split.unused},
            "splits": {"train": "every hour of each warm-up day, each evaluation day's hours before its valid hour",
                       "valid": "the hour before each evaluation day's test hours (held out of train; hour 22 by "
                                "default)",
                       "test": "each evaluation day's test hours (the trainer's; hour 23 by default)",
                       "order": "time order (ts, user_id, item_id), as the trainer reads them"},
            "eval_days": ds.manifest["eval_days"], "warmup_days": ds.manifest.get("warmup_days", []),
            **extra,
        })
    return Path(out)
