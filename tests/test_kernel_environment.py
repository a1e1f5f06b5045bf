"""The numba kernels in the environments users run them in, not only in a test process.

After a fork (multiprocessing, PyTorch DataLoader workers, gunicorn ``--preload``) the child
must not inherit a thread pool without threads; a read-only install with no writable numba
cache, ``NUMBA_DISABLE_JIT=1`` and ``NUMBA_OPT=0`` must neither crash ``backend="auto"`` nor
warn. The environment-variable cases run a few lines of Python in a subprocess (numba reads
its configuration once, at import), on small problems: each compiles only what it calls.
"""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import softmaxce as sc  # noqa: E402
from softmaxce import _numba_kernels as nk  # noqa: E402

# Seconds before a hung child or subprocess counts as a failure (a kernel compile without the
# disk cache takes a few seconds; a hang takes forever).
TIMEOUT = 120
FORK_TIMEOUT = 60

# Python 3.12+ warns when a process with threads forks: the very situation tested here.
FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"


def large_problem(seed=0):
    """256 x 512 float32 logits (above the kernels' threading threshold) and labels."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((256, 512)) * 3).astype(np.float32)
    return x, rng.integers(0, 512, 256)


def agrees_with_the_core(loss, x, t) -> bool:
    ref = sc.softmax_cross_entropy(x, t, backend="numpy")
    return abs(float(loss) - ref) <= 8 * np.finfo(np.float32).eps * abs(ref)


def assert_finishes_in_forked_child(target) -> None:
    """Run ``target()`` in a child forked now; it must neither hang nor fail."""
    proc = multiprocessing.get_context("fork").Process(target=target)
    proc.start()
    proc.join(FORK_TIMEOUT)
    if proc.is_alive():
        proc.kill()
        proc.join()
        pytest.fail(f"the forked child hung (killed after {FORK_TIMEOUT} s)")
    assert proc.exitcode == 0, "the forked child failed (its traceback is on stderr)"


@pytest.fixture
def threaded(monkeypatch):
    """At least 4 row chunks for large problems, also on a machine with fewer CPUs."""
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", max(4, numba.config.NUMBA_NUM_THREADS))


def _large_call_agrees_with_the_core() -> None:
    x, t = large_problem(seed=1)
    assert agrees_with_the_core(sc.softmax_cross_entropy(x, t, backend="numba"), x, t)


@pytest.mark.filterwarnings(FORK_WARNING)
def test_fork_after_threaded_call_does_not_hang(threaded):
    x, t = large_problem()
    sc.softmax_cross_entropy(x, t, backend="numba")
    assert nk._chunks(*x.shape) > 1 and nk._pool is not None  # the parent ran on the pool
    assert_finishes_in_forked_child(_large_call_agrees_with_the_core)
    _large_call_agrees_with_the_core()  # and the parent's pool still works


def _torch_large_call_agrees_with_the_core() -> None:
    import torch

    from softmaxce.torch import cross_entropy

    x, t = large_problem(seed=1)
    assert agrees_with_the_core(cross_entropy(torch.from_numpy(x), torch.from_numpy(t)), x, t)


@pytest.mark.filterwarnings(FORK_WARNING)
def test_torch_fork_after_threaded_call_does_not_hang(threaded):
    torch = pytest.importorskip("torch")
    from softmaxce.torch import cross_entropy

    x, t = large_problem()
    cross_entropy(torch.from_numpy(x), torch.from_numpy(t))
    assert nk._pool is not None
    assert_finishes_in_forked_child(_torch_large_call_agrees_with_the_core)
