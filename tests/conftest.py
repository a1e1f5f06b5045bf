"""The implementations every core test runs on (the ``impl`` fixture), and the worst error seen
against the float64 reference (tests/reference.py), printed at the end.

``impl`` is one implementation of the public functions, parametrised over

* ``numpy-core``: NumPy arrays, ``backend="numpy"`` (the Array-API core on NumPy);
* ``numba``: NumPy arrays, ``backend="numba"`` (the kernels; skipped where they cannot run,
  e.g. under ``SOFTMAXCE_BLOCK_NUMBA=1``). Functions without ``backend=`` (the softmax
  family, cross-entropy on probabilities) pick their kernel by size: a test of those runs on
  the other four only (``@pytest.mark.impls("numpy-core", "torch", "jax", ...)``);
* ``torch``: CPU tensors through the same public functions (the core on torch);
* ``jax``: JAX arrays (the core on JAX). float64 needs ``jax_enable_x64``: this file turns it
  on for the session (``JAX_ENABLE_X64=1`` before jax is imported, or the config flag if it
  already is); where a user turned it off, float64 cases skip. XLA on the CPU flushes
  subnormal results to zero: tests of subnormals ``impl.need("subnormals")``;
* ``array-api-strict``: the strictest reading of the Array API (no float16).

torch, JAX and array-api-strict never reach numba: under ``SOFTMAXCE_BLOCK_NUMBA=1`` (the
second pass of ``make test``) they skip, having run the very same code in the first pass.

A test takes NumPy inputs and calls ``impl.softmax_cross_entropy(...)`` (any public function
by name): the arrays are converted to the implementation's kind, the result is checked to be of
that kind and on the input's device, and comes back as NumPy (0-d as a NumPy scalar) of the
same dtype. ``impl.need(...)`` skips what an implementation cannot do (``inplace`` and
read-only inputs are NumPy's; a dtype it does not have), and ``impl.sample(...)`` keeps the
slow ones (numba compiles per option set, JAX compiles per shape) to a representative part of
the big grids; ``SOFTMAXCE_TEST_FULL_GRID=1`` runs everything everywhere.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import settings
from reference import WORST_ERRORS

import softmaxce as sc

# Locally hypothesis explores new examples each run; CI (CI=true) draws the same ones every
# time, so that a red CI is always reproducible and never a roll of the dice.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

if "jax" in sys.modules:  # pragma: no cover - a plugin imported it first
    sys.modules["jax"].config.update("jax_enable_x64", True)
else:
    os.environ.setdefault("JAX_ENABLE_X64", "1")

IMPLS = ("numpy-core", "numba", "torch", "jax", "array-api-strict")
ARRAY_OPTIONS = ("weight", "where", "dloss")  # the keyword arguments that are arrays
FULL_GRID = os.environ.get("SOFTMAXCE_TEST_FULL_GRID", "") not in ("", "0")
NUMBA_BLOCKED = os.environ.get("SOFTMAXCE_BLOCK_NUMBA", "") not in ("", "0")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "impls(*names): run the test on these implementations only (conftest.IMPLS)"
    )
    # JAX warns at every fork that its threads may deadlock the child; the suite's fork tests
    # never touch JAX in the child, and the warning (an error here) is raised in an at-fork
    # hook where pytest reports it as unraisable, failing whichever test forked.
    config.addinivalue_line(
        "filterwarnings", "ignore:os.fork\\(\\) was called:RuntimeWarning"
    )


def pytest_generate_tests(metafunc):
    if "impl" in metafunc.fixturenames:
        mark = metafunc.definition.get_closest_marker("impls")
        names = mark.args if mark else IMPLS
        metafunc.parametrize("impl", names, indirect=True, scope="session")


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation of the public functions; see the module docstring."""

    name: str
    asarray: Callable[[np.ndarray], Any]  # NumPy -> this implementation's arrays
    array_type: type  # what its functions return
    dtypes: frozenset[str]  # float dtypes it has
    backend: str | None = None  # backend= of the NumPy implementations

    @property
    def numpy(self) -> bool:
        return self.backend is not None

    def __repr__(self) -> str:
        return self.name

    # -- capabilities ----------------------------------------------------------------------

    def has(self, what: Any) -> bool:
        if what in ("inplace", "read-only"):  # NumPy's: the others have no in-place API
            return self.numpy
        if what == "subnormals":  # XLA on the CPU flushes subnormal results to zero
            return self.name != "jax"
        return np.dtype(what).name in self.dtypes

    def need(self, *what: Any) -> None:
        """Skip the test unless this implementation has every one of ``what``."""
        for w in what:
            if not self.has(w):
                name = w if isinstance(w, str) else np.dtype(w).name
                pytest.skip(f"{self.name} has no {name}")

    def sample(self, **keep: bool) -> None:
        """``impl.sample(jax=cond, numba=cond)``: an implementation named runs this case of a
        grid only where its condition holds (every case with SOFTMAXCE_TEST_FULL_GRID=1)."""
        if not FULL_GRID and not keep.get(self.name.replace("-", "_"), True):
            pytest.skip(f"{self.name} runs a representative part of this grid (time)")

    # -- conversions -----------------------------------------------------------------------

    def to(self, a: Any) -> Any:
        """A NumPy array or scalar as this implementation's array (others pass unchanged)."""
        if self.numpy or not isinstance(a, np.ndarray | np.generic):
            return a
        if a.dtype.kind == "f":
            self.need(a.dtype)
        return self.asarray(np.asarray(a))

    def on(self, a: Any, device: str) -> Any:
        """A native array moved to the named ``device`` ("meta" for torch, "device1" for
        array-api-strict: devices every machine has)."""
        if self.name == "array-api-strict":
            import array_api_strict

            return array_api_strict.asarray(a, device=array_api_strict.Device(device))
        return a.to(device)

    def back(self, out: Any, like: Any) -> Any:
        """A result as NumPy, after checking it is of this implementation's kind and on the
        device of ``like`` (the first argument)."""
        if isinstance(out, tuple):
            return tuple(self.back(o, like) for o in out)
        if self.numpy or out is None:
            return out
        from array_api_compat import device

        assert isinstance(out, self.array_type), (self.name, type(out))
        assert device(out) == device(like), (device(out), device(like))
        a = np.asarray(out)
        return a[()] if a.ndim == 0 else a

    def __getattr__(self, fn_name: str) -> Callable[..., Any]:
        """``impl.<public function>``: NumPy in, NumPy out, run on this implementation."""
        if fn_name.startswith("_") or fn_name not in sc.__all__:
            raise AttributeError(fn_name)
        fn = getattr(sc, fn_name)

        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(self.to(a) for a in args)
            kwargs = {k: self.to(v) if k in ARRAY_OPTIONS else v for k, v in kwargs.items()}
            if self.backend and "backend" in inspect.signature(fn).parameters:
                kwargs.setdefault("backend", self.backend)
            return self.back(fn(*args, **kwargs), args[0])

        return call


def _numpy(name: str) -> Impl:
    backend = "numpy" if name == "numpy-core" else "numba"
    if backend == "numba":
        from softmaxce import _dispatch

        if _dispatch.numba_kernels() is None:
            pytest.skip(f"the numba kernels cannot run here: {_dispatch.unavailable()}")
    return Impl(name, np.asarray, np.ndarray, frozenset({"float16", "float32", "float64"}), backend)


def _torch() -> Impl:
    torch = pytest.importorskip("torch")
    dtypes = frozenset({"float16", "float32", "float64"})
    return Impl("torch", lambda a: torch.asarray(a.copy()), torch.Tensor, dtypes)


def _jax() -> Impl:
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    dtypes = {"float16", "float32"} | ({"float64"} if jax.config.jax_enable_x64 else set())
    return Impl("jax", jnp.asarray, jax.Array, frozenset(dtypes))


def _strict() -> Impl:
    xps = pytest.importorskip("array_api_strict")
    return Impl(
        "array-api-strict", xps.asarray, type(xps.asarray(0.0)),
        frozenset({"float32", "float64"}),
    )


_MAKE = {"torch": _torch, "jax": _jax, "array-api-strict": _strict}


@pytest.fixture(scope="session")
def impl(request) -> Impl:
    """One implementation of the public functions (see the module docstring)."""
    name = request.param
    if name in _MAKE and NUMBA_BLOCKED:
        pytest.skip(f"{name} runs the same code without numba: the first pass of make test ran it")
    return _MAKE[name]() if name in _MAKE else _numpy(name)


# Memory. JAX keeps what it compiles: one executable per shape and dtype of each jitted loss
# (softmaxce._run compiles the loss as one computation) and of each operation run eagerly (the
# softmax family, the tests' own), so the suite's many shapes grow the process. When the
# resident set has grown by more than JAX_CLEAR_MIB since the last clearing, JAX's caches are
# cleared and the freed memory is handed back to the system (glibc's malloc_trim); what JAX
# recompiles afterwards costs time only. (numba's compiled kernels cannot be released: they
# stay, about 4 MB per variant; scripts/run_tests.py runs the suite in a few processes.)
JAX_CLEAR_MIB = 300
_rss_at_clear: list[float] = []


def _rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def pytest_runtest_teardown(item, nextitem):
    jax = sys.modules.get("jax")
    rss = _rss_mib()
    if jax is None or rss is None:
        return
    if not _rss_at_clear:
        _rss_at_clear.append(rss)
    elif rss - _rss_at_clear[-1] > JAX_CLEAR_MIB:
        jax.clear_caches()
        gc.collect()
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass
        _rss_at_clear.append(_rss_mib() or rss)


def pytest_terminal_summary(terminalreporter):
    if not WORST_ERRORS:
        return
    terminalreporter.section("softmaxce: worst relative error vs the float64 reference")
    for (dtype, what), (err, where) in sorted(WORST_ERRORS.items()):
        terminalreporter.write_line(f"{dtype:>8} {what:<18} max rel err {err:.3e}   ({where})")
