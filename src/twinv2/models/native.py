"""The GSU's relevance and top-k as one compiled pass (gsu_kernel.c), with the torch path as the fallback.

Why: at GSU length 10,000 the torch path scores every vocabulary item against every sample (a (B, 200,000)
product) and gathers L of them, adds the cross and ln n terms in three more (B, L) passes and runs a top-k over
the (B, L) scores: the GSU was ~60% of a TWIN-V2 step on this CPU. The kernel reads each position's item row
once (O(B·L·D) work) and selects the top k of each sample while its scores are still in cache
(`twinv2 bench train` has the figures).

The C file is compiled on first use with the machine's C compiler (`cc -O3 -march=native`, well under a
second) into a cache folder keyed by the source, the flags and the CPU, and loaded with ctypes; calls release
the GIL, so samples are split over `torch.get_num_threads()` Python threads. Without a compiler, on a
non-CPU tensor, or with TWINV2_NATIVE=0 the caller's torch path runs instead (same scores to float rounding;
tests/models/test_native.py checks both). TWINV2_NATIVE_DIR overrides the cache folder.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("gsu_kernel.c")
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared", "-std=c99"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None | bool = None  # None: not tried yet; False: unavailable
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (its workers, the pool)
P, I64 = ctypes.c_void_p, ctypes.c_int64


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    base = os.environ.get("TWINV2_NATIVE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "twinv2", "native")
    return Path(base)


def _build() -> ctypes.CDLL | bool:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if os.environ.get("TWINV2_NATIVE", "1") == "0" or not cc or sys.platform == "win32":
        return False
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join(FLAGS).encode() + _cpu_id().encode() + cc.encode()).hexdigest()[:16]
    so = _cache_dir() / f"gsu_kernel-{key}.so"
    tmp = None
    try:
        if not so.exists():
            so.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=so.parent)  # a concurrent build never reads half a file
            os.close(fd)
            subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], check=True, capture_output=True,
                           timeout=120)
            os.replace(tmp, so)
        lib = ctypes.CDLL(str(so))
    except (OSError, subprocess.SubprocessError) as e:
        err = getattr(e, "stderr", b"") or b""
        print(f"twinv2: the native GSU kernel did not build or load ({e}; {err.decode(errors='replace')[-300:]}); "
              f"using the torch path", file=sys.stderr)
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    lib.gsu_topk.restype = None
    lib.gsu_topk.argtypes = [I64, I64, I64, I64, P, P, P, I64, P, P, P, P, I64, P, P, P]
    return lib


def available() -> bool:
    global _lib
    with _lock:
        if _lib is None:
            _lib = _build()
    return _lib is not False


def gsu_topk(u: torch.Tensor, table: torch.Tensor, rows: torch.Tensor, cross: torch.Tensor | None,
             cross_tables: list[torch.Tensor], log_n: torch.Tensor | None, mask: torch.Tensor, k: int,
             scores: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None] | None:
    """The GSU's scores and top-k in one pass: score (B, L) = u (B, D) · table (U, D)[rows (B, L)] + Σ_j
    cross_tables[j] (n_j,)[cross (B, L, J)[..., j]] + log_n (B, L), -inf at ~mask (B, L); then the positions
    (B, min(k, L)) int64 that search.topk_exact(score, mask, k) returns, in its order. Returns (idx or None when
    k = 0, the scores when `scores`), or None when the kernel cannot run here (the caller's torch path computes
    the same). No gradient flows: the GSU's top-k is not differentiable."""
    if u.device.type != "cpu" or u.dtype != torch.float32 or not available():
        return None
    B, L = rows.shape
    D = u.shape[1]
    J = len(cross_tables)
    k = min(k, L)
    if table.shape[1] != D or (J and (cross is None or cross.shape[:2] != rows.shape or cross.shape[-1] != J)):
        raise ValueError(f"native GSU: u {tuple(u.shape)}, table {tuple(table.shape)}, rows {tuple(rows.shape)}, "
                         f"{J} cross tables and cross {None if cross is None else tuple(cross.shape)} do not fit")
    with torch.no_grad():  # int32 indices: what the batcher builds (no copy then), half the bytes of int64
        u_, table_ = u.contiguous(), table.contiguous().float()
        rows_, mask_ = rows.contiguous().to(torch.int32), mask.contiguous().to(torch.uint8)
        cross_ = cross.contiguous().to(torch.int32) if J else None
        ctabs = [t.contiguous().float() for t in cross_tables]
        ln = None if log_n is None else log_n.contiguous().float()
    out = torch.empty(B, L, dtype=torch.float32) if scores else None
    idx = torch.empty(B, k, dtype=torch.int64) if k else None
    ctab_p = (ctypes.c_void_p * max(J, 1))(*[t.data_ptr() for t in ctabs])
    n = max(1, min(torch.get_num_threads(), B))
    work = torch.empty(n, k + (L + 1) // 2, dtype=torch.int64)  # per thread: a heap of k keys, L float scores

    def run(t: int, b0: int, b1: int) -> None:
        _lib.gsu_topk(b0, b1, L, D, u_.data_ptr(), table_.data_ptr(), rows_.data_ptr(), J,
                      0 if cross_ is None else cross_.data_ptr(), ctab_p, 0 if ln is None else ln.data_ptr(),
                      mask_.data_ptr(), k, 0 if out is None else out.data_ptr(), 0 if idx is None else idx.data_ptr(),
                      work[t].data_ptr())

    if n == 1:
        run(0, 0, B)
        return idx, out
    global _pool
    with _lock:
        if _pool is None or _pool[0] < n:
            _pool = (n, ThreadPoolExecutor(max_workers=n, thread_name_prefix="twinv2-gsu"))
    cuts = [B * i // n for i in range(n + 1)]
    for f in [_pool[1].submit(run, i, cuts[i], cuts[i + 1]) for i in range(n)]:
        f.result()
    return idx, out
