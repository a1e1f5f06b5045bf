"""The numba kernels in the environments users run them in, not only in a test process.

After a fork (multiprocessing, PyTorch DataLoader workers, gunicorn ``--preload``) the child
must not inherit a thread pool without threads; a read-only install with no writable numba
cache, ``NUMBA_DISABLE_JIT=1`` and ``NUMBA_OPT=0`` must neither crash ``backend="auto"`` nor
warn. The environment-variable cases run a few lines of Python in a subprocess (numba reads
its configuration once, at import), on small problems: each compiles only what it calls.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import softmaxce as sc  # noqa: E402
from softmaxce import _numba_kernels as nk  # noqa: E402

PACKAGE = Path(sc.__file__).parent
# Seconds before a hung child or subprocess counts as a failure (a kernel compile without the
# disk cache takes a few seconds; a hang takes forever).
TIMEOUT = 120
FORK_TIMEOUT = 60

# Python 3.12+ warns when a process with threads forks: the very situation tested here.
FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"
# JAX, when another test has loaded it, warns at every fork of this process (its threads are
# not the ones under test: the child here never touches JAX).
JAX_FORK_WARNING = "ignore:os.fork\\(\\) was called:RuntimeWarning"
UNRAISABLE = "ignore::pytest.PytestUnraisableExceptionWarning"
needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform"
)


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


@needs_fork
@pytest.mark.filterwarnings(FORK_WARNING)
@pytest.mark.filterwarnings(JAX_FORK_WARNING)
@pytest.mark.filterwarnings(UNRAISABLE)
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


@needs_fork
@pytest.mark.filterwarnings(FORK_WARNING)
@pytest.mark.filterwarnings(JAX_FORK_WARNING)
@pytest.mark.filterwarnings(UNRAISABLE)
def test_torch_fork_after_threaded_call_does_not_hang(threaded):
    torch = pytest.importorskip("torch")
    from softmaxce.torch import cross_entropy

    x, t = large_problem()
    cross_entropy(torch.from_numpy(x), torch.from_numpy(t))
    assert nk._pool is not None
    assert_finishes_in_forked_child(_torch_large_call_agrees_with_the_core)


# ----------------------------------------------------------------------------------------------
# environment variables and installs, each in a subprocess

CHECK = """
import warnings
warnings.simplefilter("error")  # no warning either, as under the test suite's filterwarnings
import numpy as np, softmaxce as sc
from softmaxce import _core
x = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32) * 3
t = np.array([0, 4, 2, 1, 3, 0, 4, 2])
ref = sc.softmax_cross_entropy(x, t, backend="numpy")
close = lambda loss: abs(loss - ref) <= 8 * np.finfo(np.float32).eps * ref
"""


def run_python(code: str, env: dict[str, str | None], pythonpath: Path = PACKAGE.parent):
    """Run ``code`` in a fresh interpreter with the environment changed by ``env`` (None
    removes a variable); returns the completed process, stdout and stderr as text."""
    full = dict(os.environ)
    for key, value in {**env, "PYTHONPATH": str(pythonpath)}.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    script = textwrap.dedent(CHECK) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script], env=full, capture_output=True, text=True,
        timeout=TIMEOUT,
    )


def assert_ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr


def read_only_copy(tmp_path: Path) -> Path:
    """A copy of the package where numba finds no cache directory: the files read-only, and
    a plain file where its ``__pycache__`` would go (which stops root too)."""
    site = tmp_path / "site"
    pkg = site / "softmaxce"
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in [pkg, *[p for p in pkg.rglob("*") if p.is_dir()]]:
        (folder / "__pycache__").write_text("not a folder\n")
    for path in [*sorted(pkg.rglob("*"), reverse=True), pkg]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return site


NO_CACHE = {
    "NUMBA_CACHE_DIR": None,
    "XDG_CACHE_HOME": "/dev/null/no-cache",  # numba's user-wide cache: cannot be created
    "PYTHONDONTWRITEBYTECODE": "1",
}


def test_read_only_install_without_a_cache_still_runs_the_kernel(tmp_path):
    site = read_only_copy(tmp_path)
    try:
        proc = run_python(
            """
            from softmaxce import _dispatch, _numba_kernels as nk
            assert not nk._CACHE
            assert close(sc.softmax_cross_entropy(x, t, backend="numba"))
            big, tt = np.tile(x, (1024, 1)), np.tile(t, 1024)  # "auto" takes the kernel
            assert _dispatch.select("auto", big, tt) is nk.fused_rows
            assert close(sc.softmax_cross_entropy(big, tt))
            print("ok")
            """,
            NO_CACHE,
            pythonpath=site,
        )
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert_ok(proc)
    assert proc.stdout.split() == ["ok"]


def test_disable_jit_falls_back_under_auto_and_explains_under_numba():
    proc = run_python(
        """
        from softmaxce import _dispatch
        big = np.tile(x, (1024, 1))
        assert _dispatch.select("auto", big, np.tile(t, 1024)) is None
        assert _dispatch.rows_kernels(big, 1, None) is None
        for fn in (sc.softmax, sc.log_softmax, sc.logsumexp):  # run on the core
            fn(big)
        try:
            sc.softmax_cross_entropy(x, t, backend="numba")
        except ImportError as exc:
            print(exc)
        """,
        {"NUMBA_DISABLE_JIT": "1"},
    )
    assert_ok(proc)
    assert "NUMBA_DISABLE_JIT" in proc.stdout
    assert "backend='numba'" in proc.stdout


def test_numba_opt_0_gives_no_cache_warning(tmp_path):
    proc = run_python(
        """
        assert close(sc.softmax_cross_entropy(x, t, backend="numba"))
        """,
        {"NUMBA_OPT": "0", "NUMBA_CACHE_DIR": str(tmp_path)},
    )
    assert_ok(proc)
