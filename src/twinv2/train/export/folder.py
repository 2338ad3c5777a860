"""An export folder on disk: its manifest, what in it twinv2 wrote, and where it may go.

An export is written into a staging folder beside `--out` and renamed into place (data/dirs.py `staged_dir`,
the same machinery as `generate` and `import`), so a kill leaves no export or a whole one. Its manifest.json
(written last) lists every file with its size and sha256; `--overwrite` replaces only a folder whose manifest
is an export's and that holds nothing but the files it lists (anything else is named and nothing is deleted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twinv2.data.checksum import file_entry
from twinv2.data.dirs import MANIFEST
from twinv2.data.sealed import write_sealed

FORMAT = "twinv2-export"
FORMAT_VERSION = 1


def foreign_entries(root: Path) -> list[str] | None:
    """Entries of `root` that its export manifest does not list ('dir/' for a folder); None when `root` holds
    no export manifest (not an export at all)."""
    try:
        m = json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
        return None
    listed = set(m["files"]) | {MANIFEST}
    return [p.name + "/" if p.is_dir() else p.name for p in sorted(Path(root).iterdir())
            if p.is_dir() or p.name not in listed]


def check_out(dataset_root: Path, out: Path) -> None:
    """Refuse an --out that is the dataset or lies inside it: the export would become a foreign entry of the
    dataset (and `--overwrite` of either would then refuse or, worse, replace the other)."""
    src, dst = Path(dataset_root).resolve(), Path(out).resolve()
    if dst == src or src in dst.parents:
        raise ValueError(f"--out {out} is the dataset {dataset_root} or inside it; choose a folder outside it")


def write_manifest(root: Path, body: dict[str, Any]) -> None:
    """manifest.json of the export at `root`: `body`, then every other file's size and sha256. Written last."""
    root = Path(root)
    files = {p.name: file_entry(p) for p in sorted(root.iterdir()) if p.is_file() and p.name != MANIFEST}
    write_sealed(root / MANIFEST, {"format": FORMAT, "version": FORMAT_VERSION, **body, "files": files})
