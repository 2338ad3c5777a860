"""Small JSON records that cannot be damaged silently: each carries the sha256 of its own canonical body.

The project's small records (an experiment's experiment.json, stats.json and cluster_bench.json, a dataset's
premise.json, the nearline trainer's LATEST and nearline_state.json, an export's manifest.json, every `--json`
output of `stats` and `bench`) are written by `write_sealed` and read back by `read_sealed`, which checks the
seal and raises DataError naming the file (the CLI: one line, exit 2). A report's tables.json is an end product
that nothing reads back but `check_report`, which re-derives every number in it from the runs. The seal is the
`manifest_sha256` of the body (its canonical JSON, the seal field left out), the same hash the dataset
manifests, cluster snapshots and a run's metrics.json carry under their own field names.

A record without a seal is refused too: a byte flip can garble the seal's key as well as any value, so
"no seal" cannot be told apart from damage. Records written before seals existed (twinv2 before 2026-12) are
therefore refused with a message saying so; each is cheap to write again (the message says how).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twinv2.data.storage import json_default, manifest_sha256, write_json_atomic
from twinv2.schema import DataError

SEAL = "record_sha256"


def sealed(body: dict[str, Any]) -> dict[str, Any]:
    """`body` as plain JSON types (so the checksum reads back equal) with its seal added (any old one replaced)."""
    if not isinstance(body, dict):
        raise TypeError(f"a sealed record is a JSON object, got {type(body).__name__}")
    out = json.loads(json.dumps({k: v for k, v in body.items() if k != SEAL}, default=json_default))
    out[SEAL] = manifest_sha256(out, SEAL)
    return out


def write_sealed(path: str | Path, body: dict[str, Any]) -> None:
    """Write `body` with its seal, atomically (storage.write_json_atomic)."""
    write_json_atomic(path, sealed(body))


def check_seal(path: str | Path, body: Any, fix: str, field: str = SEAL, required: bool = True) -> None:
    """DataError naming `path` unless `body` (parsed from it) is a JSON object whose `field` is the sha256 of
    the rest. `required=False` lets a body without the field pass (a manifest format from before it had one:
    cluster snapshot manifests of version 1)."""
    if not isinstance(body, dict):
        raise DataError(f"{path}: not a twinv2 record (a JSON {type(body).__name__}); {fix}")
    if field not in body and not required:
        return
    if field not in body:
        raise DataError(f"{path}: no checksum ({field}): the file is damaged, or was written by a twinv2 from "
                        f"before records carried one; {fix}")
    if body[field] != manifest_sha256(body, field):
        raise DataError(f"{path}: checksum mismatch ({field}): the file is damaged or was edited after it was "
                        f"written; {fix}")


def unseal(path: str | Path, body: Any, fix: str) -> dict[str, Any]:
    """`body` (parsed from `path`) without its seal, once the seal is checked (`check_seal`)."""
    check_seal(path, body, fix)
    return {k: v for k, v in body.items() if k != SEAL}


def read_json_file(path: str | Path, fix: str) -> Any:
    """Parsed JSON of `path`; DataError naming it when it cannot be read or parsed, FileNotFoundError when it
    does not exist (callers decide whether that is normal)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e.strerror or e}); {fix}") from None
    try:
        return json.loads(raw)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise DataError(f"{path}: unreadable ({str(e)[:120]}): the file is damaged; {fix}") from None


def read_sealed(path: str | Path, fix: str) -> dict[str, Any]:
    """The body of the sealed record at `path`, its seal checked. DataError naming the file when it is
    unreadable, not a record, unsealed or damaged (`fix`: what the user should do, e.g. "delete it and resume");
    FileNotFoundError when it does not exist."""
    return unseal(path, read_json_file(path, fix), fix)


def read_sealed_if_present(path: str | Path, fix: str) -> dict[str, Any] | None:
    """`read_sealed`, or None when the file does not exist."""
    try:
        return read_sealed(path, fix)
    except FileNotFoundError:
        return None
