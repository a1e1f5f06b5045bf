"""Which row kernel runs: backend="auto" / "numpy" / "numba", and every fallback to the core.

Tests marked ``needs_numba`` skip where the kernels cannot run; the others run there too (the
suite's ``SOFTMAXCE_BLOCK_NUMBA=1`` run, see conftest.py).
"""

from __future__ import annotations

import importlib.abc
import subprocess
import sys
import warnings

import numpy as np
import pytest

import softmaxce as sc
from softmaxce import _dispatch
from softmaxce._core import rows as core_rows
from softmaxce._core import softmax as core_softmax

nk = _dispatch.numba_kernels()
needs_numba = pytest.mark.skipif(nk is None, reason="the numba kernels cannot run here")


@pytest.fixture
def calls(monkeypatch):
    """Spies on both kernels: the list of kernel names in the order they ran."""
    seen: list[str] = []

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            seen.append(name)
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(core_rows, "fused_rows", spy("numpy", core_rows.fused_rows))
    if nk is not None:
        monkeypatch.setattr(nk, "fused_rows", spy("numba", nk.fused_rows))
    return seen


def problem(n=64, c=10, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, c)) * 3).astype(dtype), rng.integers(0, c, n)


def test_explicit_numpy_runs_the_core(calls):
    x, t = problem(512, 100)
    sc.softmax_cross_entropy_with_grad(x, t, backend="numpy")
    assert calls == ["numpy"]


@needs_numba
@pytest.mark.parametrize("inplace", [False, True])
def test_explicit_numba_runs_the_kernel_and_agrees(calls, inplace):
    x, t = problem()
    ref_loss, ref_g = sc.softmax_cross_entropy_with_grad(x, t, backend="numpy")
    loss, g = sc.softmax_cross_entropy_with_grad(x.copy(), t, backend="numba", inplace=inplace)
    assert calls == ["numpy", "numba"]
    tol = 8 * np.finfo(np.float32).eps  # each sums its rows in its own order
    np.testing.assert_allclose(loss, ref_loss, rtol=tol)
    np.testing.assert_allclose(g, ref_g, rtol=tol, atol=tol)


@needs_numba
def test_auto_takes_the_kernel_for_a_large_problem(calls):
    x, t = problem(256, 1000)
    sc.softmax_cross_entropy_with_grad(x, t)
    assert calls == ["numba"]


@needs_numba
def test_non_contiguous_logits_fall_back_to_the_core(calls):
    x, t = problem(64, 20)
    view = x[:, ::2]  # classes last but strided: the kernel wants C-contiguous rows
    loss, g = sc.softmax_cross_entropy_with_grad(view, t % 10, backend="numba")
    assert calls == ["numpy"]
    ref_loss, ref_g = sc.softmax_cross_entropy_with_grad(np.ascontiguousarray(view), t % 10)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(g, ref_g, atol=1e-7)


@needs_numba
def test_longdouble_logits_fall_back_to_the_core(calls):
    x, t = problem(8, 5, dtype=np.longdouble)
    loss, _ = sc.softmax_cross_entropy_with_grad(x, t, backend="numba")
    assert calls == ["numpy"]
    assert loss.dtype == np.longdouble


def test_missing_numba_raises_for_explicit_and_falls_back_for_auto(calls, monkeypatch):
    monkeypatch.setattr(_dispatch, "numba_kernels", lambda: None)
    x, t = problem(256, 1000)
    with pytest.raises(ImportError, match="numba"):
        sc.softmax_cross_entropy(x, t, backend="numba")
    sc.softmax_cross_entropy(x, t, backend="auto")
    assert calls == ["numpy"]


class _BrokenKernels(importlib.abc.MetaPathFinder):
    """Makes importing the kernel module fail as a broken numba install might."""

    def find_spec(self, name, path=None, target=None):
        if name == _dispatch._KERNELS:
            msg = "LLVM ERROR: simulated"
            raise RuntimeError(msg)
        return None


def test_kernels_that_fail_to_import_warn_once_and_auto_falls_back(calls, monkeypatch):
    monkeypatch.delitem(sys.modules, _dispatch._KERNELS, raising=False)
    monkeypatch.delattr(sc, "_numba", raising=False)
    monkeypatch.setattr(_dispatch, "_loaded", None)
    monkeypatch.setattr(sys, "meta_path", [_BrokenKernels(), *sys.meta_path])
    monkeypatch.setattr(_dispatch, "_unavailable", None)
    x, t = problem(256, 1000)
    with pytest.warns(RuntimeWarning, match=r"numba kernels are off.*LLVM ERROR: simulated"):
        sc.softmax_cross_entropy(x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        sc.softmax_cross_entropy(x, t)
        sc.softmax(x)
        with pytest.raises(ImportError, match=r"backend='numba' cannot run: .*RuntimeError"):
            sc.softmax_cross_entropy(x, t, backend="numba")
    assert calls == ["numpy", "numpy"]


@needs_numba
def test_auto_takes_the_kernel_at_every_size(calls):
    # once loaded the kernel is faster than the core at every size; at 64 x 10 it is what keeps
    # a call within the cost of the tutorial NumPy formula (see _dispatch)
    x, t = problem(64, 10)
    sc.softmax_cross_entropy_with_grad(x, t)
    sc.softmax_cross_entropy_with_grad(x[:1, :2], t[:1] % 2)
    assert calls == ["numba", "numba"]


@needs_numba
def test_backend_numpy_never_imports_numba():
    """A fresh process calling with backend="numpy" never imports numba (the way to keep it
    out of a process); "auto" loads it on the first call."""
    code = (
        "import sys, numpy as np, softmaxce as sc\n"
        "x = np.zeros((64, 10), np.float32); t = np.zeros(64, np.int64)\n"
        "sc.softmax_cross_entropy_with_grad(x, t, backend='numpy')\n"
        "sc.softmax_cross_entropy(x, t, backend='numpy')\n"
        "print('numba' in sys.modules)\n"
        "sc.softmax_cross_entropy_with_grad(x, t)\n"
        "print('numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


ROWS = {"softmax": "softmax_rows", "log_softmax": "log_softmax_rows", "logsumexp": "logsumexp_rows"}


@pytest.fixture
def row_calls(monkeypatch):
    seen: list[str] = []
    for name in ROWS.values() if nk is not None else ():
        fn = getattr(nk, name)

        def spy(*args, _name=name, _fn=fn):
            seen.append(_name)
            return _fn(*args)

        monkeypatch.setattr(nk, name, spy)
    return seen


def extreme_rows(dtype):
    x = problem(64, 100, dtype=dtype, seed=3)[0] * 4
    x[0] = -np.inf  # a row of -inf: NaN softmax, -inf logsumexp (as the core)
    x[1, 5] = 1e30  # one dominant logit
    x[2, :3] = np.inf  # +inf: NaN
    x[3, 7] = np.nan
    x[4] = 0.0  # ties everywhere
    return x


@needs_numba
@pytest.mark.parametrize("fn", sorted(ROWS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_family_runs_the_kernel_and_agrees_with_the_core(fn, dtype, row_calls):
    x = extreme_rows(dtype)
    got = getattr(sc, fn)(x)
    assert row_calls == [ROWS[fn]]
    with np.errstate(all="ignore"):
        args = (x, 1, False, None) if fn == "logsumexp" else (x, 1, None)
        want = getattr(core_softmax, fn)(*args)
    assert got.dtype == want.dtype and got.shape == want.shape
    # Both sum rows of 100 exponentials, each in its own order and vector width.
    tol = 16 * np.finfo(dtype).eps
    np.testing.assert_allclose(got, want, equal_nan=True, rtol=tol, atol=tol)
    if fn == "logsumexp":
        np.testing.assert_array_equal(sc.logsumexp(x, keepdims=True), got[:, None])


@pytest.mark.parametrize(
    "case",
    ["where", "class axis first", "read-only", "float16", "non-contiguous"],
)
def test_softmax_family_falls_back_to_the_core(case, row_calls):
    x = extreme_rows(np.float32)
    kwargs = {}
    if case == "where":
        kwargs["where"] = np.ones(x.shape, dtype=bool)
    elif case == "class axis first":
        x = np.ascontiguousarray(x.T)
        kwargs["axis"] = 0
    elif case == "read-only":
        x.flags.writeable = False
    elif case == "float16":
        with np.errstate(over="ignore"):  # 1e30 becomes inf in float16
            x = x.astype(np.float16)
    else:
        x = np.repeat(x, 2, axis=1)[:, ::2]
    for fn in ROWS:
        getattr(sc, fn)(x, **kwargs)
    assert row_calls == []
