"""Pool workers that live no longer than the job that started them (issue 14, item 6).

A ProcessPoolExecutor worker waits on its call queue, a pipe it holds both ends of, so when the job is killed
(SIGKILL: no clean-up runs) nothing tells it: it went on taking the queued tasks, wrote their files after the
job's lock was gone, then waited forever, and kept the forkserver (which lives while any worker does) alive
with it. A `Lifeline` ties them to the job: the job holds the only write end of a pipe, and each worker, as it
unpickles its initializer's arguments (before it imports the job's modules),

- starts a thread that blocks reading the other end and SIGKILLs the worker at end-of-file, which the kernel
  delivers the instant the last write end closes: when the job dies, however it dies, or calls `cut`;
- on Linux also asks for SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG; the parent is the job's thread
  that started the pool under spawn, the forkserver under forkserver): immediate even while the worker's
  Python thread is busy in C;

and then keeps open for its life the file descriptors given as `hold` (the job's lock: an flock belongs to the
open file, so it stays held until the last worker has exited, and no other job can start while a worker might
still write).

A check of the job's pid would not do: a killed job stays a zombie, alive to kill(pid, 0), until its own
parent reaps it, and its pid may be reused.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing import reduction
from typing import Any

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_HELD: tuple["_Fd", ...] = ()  # in a worker: the job's descriptors it keeps open for its life


class _Fd:
    """A file descriptor handed to a worker as it starts (multiprocessing duplicates it into the child); the
    lifeline's own is watched from the moment the worker unpickles it, before the worker imports the job's
    modules (seconds under spawn)."""

    def __init__(self, fd: int, watch: bool = False) -> None:
        self.fd, self.watch = fd, watch

    def __reduce__(self):
        return _rebuild, (reduction.DupFd(self.fd), self.watch)


def _rebuild(dup: Any, watch: bool) -> _Fd:
    fd = _Fd(dup.detach(), watch)
    if watch:
        _tie(fd.fd)
    return fd


class Lifeline:
    """The job's end of the lifeline; use it as a context manager around the pool (leaving it cuts it).

    `initializer(fn, args)` gives the pool's initializer and initargs: the worker is tied to this job, then
    runs `fn(*args)`. The pool must not use the `fork` start method (a forked worker would inherit the write
    end, and the pipe would never close).
    """

    def __init__(self, hold: Sequence[int] = ()) -> None:
        self._r, self._w = os.pipe()  # not inheritable: no other child of the job gets the write end
        self._hold = tuple(int(fd) for fd in hold)

    def initializer(self, fn: Callable[..., None] | None = None,
                    args: Sequence[Any] = ()) -> tuple[Callable[..., None], tuple[Any, ...]]:
        if self._r is None:
            raise ValueError("this Lifeline is closed; make a new one for a new pool")
        return _start, (_Fd(self._r, watch=True), tuple(_Fd(fd) for fd in self._hold), fn, tuple(args))

    def cut(self) -> None:
        """End every worker now (each dies within milliseconds); idempotent."""
        if self._w is not None:
            os.close(self._w)
            self._w = None

    def close(self) -> None:
        self.cut()
        if self._r is not None:
            os.close(self._r)
            self._r = None

    def __enter__(self) -> "Lifeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start(line: _Fd, hold: tuple[_Fd, ...], fn: Callable[..., None] | None, args: tuple[Any, ...]) -> None:
    global _HELD
    _HELD = (line, *hold)  # open for the worker's life
    if fn is not None:
        fn(*args)


def _tie(fd: int) -> None:
    _die_with_parent()
    # A job that died while this worker was starting has already closed its end: the first read returns
    # end-of-file at once.
    threading.Thread(target=_watch, args=(fd,), name="twinv2-lifeline", daemon=True).start()


def _watch(fd: int) -> None:
    try:
        while os.read(fd, 1):  # nobody writes: this returns only at end-of-file
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGKILL)  # no clean-up: the job that would use it is gone


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the lifeline thread still ends the worker
