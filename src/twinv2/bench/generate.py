"""Benchmark of `twinv2 generate`: wall time, behaviours per second and peak memory of the process tree.

Not a timed test: numbers depend on the machine and on what else runs on it, so `machine` records the CPU
count, memory and the load average at the start. Run: `python -m twinv2.bench.generate [preset] [workers]`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from twinv2.data.generate import generate_world, preset
from twinv2.data.generate.world import _n_workers


class PeakRSS:
    """Samples the summed RSS of this process and all its descendants every `interval` seconds.

    Shared pages (the memory-mapped item vectors) are counted once per process, so this over- rather than
    under-states the peak.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):  # a worker that just exited
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def _machine() -> str:
    mem = psutil.virtual_memory().total / 2**30
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, "
            f"Python {platform.python_version()}, load average {load:.1f} at start")


def bench_generate(preset_name: str = "small", out: Path | None = None, workers: int | None = None) -> dict:
    """Generate the preset world (into a temporary directory, removed after, unless `out` is given).

    Returns {preset, users, behaviours, samples, seconds, behaviours_per_s, peak_rss_mb, workers, machine};
    peak_rss_mb is the largest of the sampled process-tree sum and the kernel's max RSS of this process and
    of its finished children.
    """
    cfg = preset(preset_name)
    n_workers = _n_workers(workers, cfg.n_shards)
    tmp = Path(tempfile.mkdtemp(prefix="twinv2-bench-generate-")) if out is None else None
    target = tmp / preset_name if tmp is not None else Path(out)  # type: ignore[arg-type]
    machine = _machine()
    try:
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            root = generate_world(cfg, target, overwrite=True, workers=n_workers, progress=False)
            seconds = time.perf_counter() - t0
        counts = json.loads((root / "manifest.json").read_text())["counts"]
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    kernel_peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024  # Linux reports KiB
    return {
        "preset": preset_name,
        "users": int(counts["users"]),
        "behaviours": int(counts["behaviours"]),
        "samples": int(counts["samples"]),
        "seconds": round(seconds, 2),
        "behaviours_per_s": round(counts["behaviours"] / seconds),
        "peak_rss_mb": round(max(rss.peak, kernel_peak) / 2**20, 1),
        "workers": n_workers,
        "machine": machine,
    }


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "small"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else None
    print(json.dumps(bench_generate(name, workers=n), indent=2))
