"""Row chunks on threads: a small fork-safe pool of Python threads running ``nogil`` kernels.

Rows are split in contiguous chunks, one per thread (``NUMBA_NUM_THREADS``, default the CPU
count); problems below 65536 elements run on the calling thread (a hand-off costs more). Python
threads rather than numba's ``prange``: the compile is about twice as fast, and concurrent
calls from several user threads are safe whatever numba's threading layer is.

The pool is fork-safe: a forked child (multiprocessing, PyTorch DataLoader workers, gunicorn
``--preload``) inherits the pool object but none of its threads (a fork copies only the
calling thread), so work handed to it would wait forever, and its lock may have been held by
another parent thread. An at-fork hook drops both in the child; its next threaded call makes a
new pool.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Callable

import numba

# Below this many elements a call runs on the calling thread only.
MIN_PARALLEL = 1 << 16
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """In a forked child: start afresh (see the module docstring)."""
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=_forget_pool)


def pool_started() -> bool:
    """Whether this process has a pool (for the tests of fork safety)."""
    return _pool is not None


def chunks(n: int, c: int) -> int:
    """How many row chunks (threads) for an (n, c) problem: ``NUMBA_NUM_THREADS`` (the CPU
    count unless set), 1 for small problems. Read from numba's config rather than
    ``numba.get_num_threads()``, which would start numba's own threading layer (unused here)
    beside the caller's, e.g. PyTorch's."""
    if n < 2 or n * c < MIN_PARALLEL:
        return 1
    return max(1, min(numba.config.NUMBA_NUM_THREADS, n))


def run(kernel: Callable, n: int, k: int, args_for: Callable[[int], tuple]) -> list:
    """``kernel(lo, hi, *args_for(j))`` over ``k`` contiguous row chunks, chunk 0 on the
    calling thread, the others on the pool (the kernels release the GIL); returns the
    kernel's results in chunk order."""
    if k <= 1:
        return [kernel(0, n, *args_for(0))]
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < k - 1:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=k - 1, thread_name_prefix="softmaxce"
            )
        pool = _pool
    bounds = [j * n // k for j in range(k + 1)]
    futures = [pool.submit(kernel, bounds[j], bounds[j + 1], *args_for(j)) for j in range(1, k)]
    first = kernel(bounds[0], bounds[1], *args_for(0))
    return [first, *(f.result() for f in futures)]
