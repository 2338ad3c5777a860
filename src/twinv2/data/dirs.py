"""Dataset directories on disk: which entries twinv2 wrote, and creating or replacing a dataset atomically.

A dataset is written into a temporary sibling folder (`.NAME.twinv2-tmp-PID`) and renamed into place only once
complete (`staged_dir`), so a kill at any instant leaves either no dataset or a complete one; the next run to
the same folder removes the leftovers of dead runs. Replacing an existing dataset (`--overwrite`) swaps the two
folders in one step where the OS can (Linux renameat2 RENAME_EXCHANGE), then deletes the old one; and it only
ever replaces a folder whose every entry twinv2 wrote (`foreign_entries`): anything else there is named and
nothing is deleted.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from twinv2.data.checksum import MARKER

FAILPOINT_ENV = "TWINV2_FAILPOINT"
MANIFEST = "manifest.json"
JOURNAL = "manifest.json.next"  # a pending in-place update of some files (see storage.replace_files)

# Files of the dataset itself, listed (with checksums) in the manifest.
DATA_FILES = re.compile(r"(items\.parquet|users\.parquet|quarantine\.csv|(behaviours|samples)/part-\d{5}\.parquet"
                        r"|truth/[^/]+\.(npy|json|txt)|truth/(interests|impressions|behaviours)/part-\d{5}\.parquet)")
# What twinv2 itself writes beside them: the manifest and its journal, caches, and the later stages' sidecars
# (embeddings/, clusters/, premise.json), all derived from the data and stale once it is replaced.
OWN_FILES = re.compile(r"(manifest\.json|manifest\.json\.next|premise\.json|" + re.escape(MARKER) +
                       r"|behaviours/part-\d{5}\.csr(\.tmp\d+)?/[^/]+"
                       r"|embeddings/item_embeddings\.(parquet|json)"
                       r"|clusters/[^/]+/(manifest\.json|\.lock|" + re.escape(MARKER) + r"|part-\d{5}\.parquet)"
                       r"|clusters/[^/]+/(part-\d{5}\.csr(\.tmp\d+)?|embeddings\.resolved(\.tmp-\d+)?)/[^/]+)")
OWN_DIRS = re.compile(r"(behaviours|samples|truth|truth/(interests|impressions|behaviours)|embeddings|clusters"
                      r"|clusters/[^/]+|(behaviours|clusters/[^/]+)/part-\d{5}\.csr(\.tmp\d+)?"
                      r"|clusters/[^/]+/embeddings\.resolved(\.tmp-\d+)?)")
TEMP = re.compile(r"(.+?)\.tmp(\d+|-[0-9a-f-]+)?$")  # a writer's temporary name: the file it becomes, then .tmp...


def failpoint(name: str) -> None:
    """Kill this process (SIGKILL, no clean-up) when the environment asks for it at `name`: how the tests
    interrupt a writer at a chosen instant (TWINV2_FAILPOINT=name)."""
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def data_files(root: Path) -> list[str]:
    """Relative paths of the dataset's own files under `root` (what its manifest lists), sorted."""
    root = Path(root)
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if DATA_FILES.fullmatch(rel) and p.is_file():
            out.append(rel)
    return sorted(out)


def _read_manifest(root: Path) -> dict | None:
    """The manifest if it is a twinv2 dataset's; {} if present but unreadable; None if absent or another format."""
    p = root / MANIFEST
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}  # damaged: the layout alone decides what is ours
    if not isinstance(m, dict) or m.get("format") != "twinv2-dataset":
        return None
    return m


def foreign_entries(root: Path) -> list[str] | None:
    """Entries under `root` that twinv2 did not write ('dir/' for a folder), or None when `root` is not a twinv2
    dataset at all (no manifest.json). Files the manifest lists are ours; with an older manifest that lists
    none, or a damaged one, the dataset layout's names are."""
    root = Path(root)
    m = _read_manifest(root)
    if m is None:
        return None
    listed = set(m["files"]) if isinstance(m.get("files"), dict) else None
    out: list[str] = []

    def owned_file(rel: str) -> bool:
        t = TEMP.fullmatch(rel)
        base = t.group(1) if t else rel
        if DATA_FILES.fullmatch(base):
            return listed is None or base in listed or t is not None
        return bool(OWN_FILES.fullmatch(base))

    def walk(d: Path) -> None:
        for p in sorted(d.iterdir()):
            rel = p.relative_to(root).as_posix()
            if p.is_dir() and not p.is_symlink():
                if OWN_DIRS.fullmatch(rel) or (TEMP.fullmatch(rel) and OWN_DIRS.fullmatch(TEMP.fullmatch(rel)[1])):
                    walk(p)
                else:
                    out.append(rel + "/")
            elif not owned_file(rel):
                out.append(rel)

    walk(root)
    return out


def _describe(entries: list[str], n: int = 6) -> str:
    more = f" and {len(entries) - n} more" if len(entries) > n else ""
    return ", ".join(entries[:n]) + more


def check_replaceable(root: Path, overwrite: bool, owned: Callable[[Path], list[str] | None] | None = None,
                      kind: str = "dataset") -> None:
    """Raise FileExistsError unless `root` is absent, empty, or (with `overwrite`) a dataset holding only what
    twinv2 wrote. `owned` (default `foreign_entries`) lists what twinv2 did not write in a folder of another
    kind (e.g. an export folder), None when the folder is not of that kind at all; `kind` names it."""
    root = Path(root)
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder; refusing to replace it")
    if not any(root.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{root} exists and is not empty; pass --overwrite to replace it")
    foreign = (owned or foreign_entries)(root)
    if foreign is None:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
        raise FileExistsError(f"{root} is not a twinv2 {kind} (no {MANIFEST}); refusing to delete it "
                              f"(it holds {_describe(names)}); delete it yourself or choose another --out")
    if foreign:
        raise FileExistsError(f"{root} holds entries twinv2 did not write: {_describe(foreign)}; refusing to "
                              f"delete it; move them elsewhere or choose another --out")


def prepare_dir(root: Path, overwrite: bool) -> Path:
    """Make `root` an empty folder in place (for datasets assembled by hand, e.g. in tests); an existing
    dataset is emptied only with `overwrite`, and only if it holds nothing but what twinv2 wrote."""
    root = Path(root)
    check_replaceable(root, overwrite)
    if root.is_dir() and any(root.iterdir()):
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


# ---- atomic creation and replacement ----------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover (a previous call in this process that raised)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sibling(target: Path, kind: str, pid: int | None = None) -> Path:
    return target.parent / f".{target.name}.twinv2-{kind}-{os.getpid() if pid is None else pid}"


def clean_leftovers(target: Path) -> list[Path]:
    """Delete the temporary siblings of `target` left by killed runs (those of live processes are kept)."""
    removed = []
    pat = re.compile(re.escape(f".{target.name}.twinv2-") + r"(tmp|old)-(\d+)")
    if not target.parent.is_dir():
        return removed
    for p in target.parent.iterdir():
        mt = pat.fullmatch(p.name)
        if mt and not _pid_alive(int(mt[2])):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def clean_dead_temps(path: Path) -> list[Path]:
    """Delete the temporary files `NAME.tmpPID` beside `path` that writers killed before their rename left
    (those of live processes are kept): a per-process name never gets overwritten by the next run."""
    path = Path(path)
    pat = re.compile(re.escape(path.name) + r"\.tmp(\d+)")
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.iterdir():
        mt = pat.fullmatch(p.name)
        if mt and p.is_file() and not _pid_alive(int(mt[1])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _commit(tmp: Path, target: Path, overwrite: bool, owned: Callable[[Path], list[str] | None] | None,
            kind: str) -> None:
    failpoint("commit")
    if target.is_dir() and not any(target.iterdir()):
        os.replace(tmp, target)  # rename(2) replaces an empty folder in one step
        return
    if not target.exists():
        os.rename(tmp, target)
        return
    check_replaceable(target, overwrite, owned, kind)  # again: something may have arrived while we wrote
    if _exchange(tmp, target):
        failpoint("exchanged")
        shutil.rmtree(tmp)  # now the old dataset
        return
    old = _sibling(target, "old")
    os.rename(target, old)
    failpoint("moved-old")
    os.rename(tmp, target)
    shutil.rmtree(old)


@contextmanager
def staged_dir(out: str | Path, overwrite: bool, owned: Callable[[Path], list[str] | None] | None = None,
               kind: str = "dataset") -> Iterator[Path]:
    """A fresh temporary folder beside `out` to write a whole dataset into; on a clean exit it becomes `out`
    (replacing an existing dataset only with `overwrite`), on an exception it is removed. `out` is checked
    before anything is written, so a refusal costs nothing. `owned` / `kind`: see `check_replaceable`."""
    target = Path(out)
    if target.is_symlink():
        target = target.resolve()  # replace the folder the link names, keep the link
    target = target.absolute()
    check_replaceable(target, overwrite, owned, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    tmp = _sibling(target, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _commit(tmp, target, overwrite, owned, kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

