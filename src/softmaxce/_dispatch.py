"""Choosing the row kernel for the fused loss: a plain ``if`` chain, numba imported lazily.

``"numpy"`` is the core; ``"numba"`` is the fused CPU kernel (``softmaxce._numba``) and raises
``ImportError`` saying why when it cannot run (numba missing, ``NUMBA_DISABLE_JIT=1``);
``"auto"`` takes the kernel whenever it can run and covers the input, at every size, else the
core. Inputs the kernel does not cover fall back to the core under ``"numba"`` too (the
kernels' ``supports`` says which).

Why at every size: once loaded, the kernel is faster than the core at every size, and at
small sizes it is what keeps a call within the cost of the tutorial NumPy formula (64 x 10
float32, loss and gradient, medians of interleaved rounds on a 2-core machine: about 21 us
through ``auto``, 22 us for the formula, 140 us on the core; softmax 7 us against 33 us). The
price is paid once per process, by the first call that needs a kernel: importing numba (about
0.25 s) and loading the compiled variant from numba's disk cache (about 0.5 s in all; a
variant not yet in the cache compiles once per install, 2 to 4 s). The same rule picks the
kernels of softmax, log_softmax and logsumexp (``rows_kernels``). A loss call that must
never import numba passes ``backend="numpy"``.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any

import numpy as np

_KERNELS = __name__.rpartition(".")[0] + "._numba"


# Why the kernel package cannot be loaded, once an import has failed (tried once per process).
_unavailable: str | None = None
# The kernel package once imported (no import statement per call).
_loaded: ModuleType | None = None


def numba_kernels() -> ModuleType | None:
    """The numba kernel package, or None when it cannot be loaded (``unavailable`` says why).

    An ``ImportError`` (numba not installed, ``NUMBA_DISABLE_JIT=1``) is quiet; any other
    failure of the import (numba installed but broken) warns once.
    """
    global _unavailable, _loaded
    if _loaded is not None:
        return _loaded
    if _unavailable is not None:
        return None
    try:
        from . import _numba
    except ModuleNotFoundError as exc:
        _unavailable = f"{exc} (pip install 'softmaxce[numba]')"
    except ImportError as exc:
        _unavailable = str(exc)
    except Exception as exc:  # numba installed but failing: fall back, once, loudly
        _unavailable = f"importing them failed with {type(exc).__name__}: {exc}"
        warnings.warn(
            f"softmaxce: the numba kernels are off, {_unavailable}; using the NumPy core",
            RuntimeWarning,
            stacklevel=2,
        )
    else:
        _loaded = _numba
        return _numba
    return None


def loaded() -> ModuleType | None:
    """The kernel package if a call has already loaded it (never imports numba)."""
    return _loaded


def unavailable() -> str:
    """Why ``backend="numba"`` cannot run here (call after ``numba_kernels`` gave None)."""
    return _unavailable or "numba is not installed (pip install 'softmaxce[numba]')"


def select(
    backend: str,
    x: np.ndarray,
    target: np.ndarray,
    *,
    where: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    out: np.ndarray | None = None,
    row_scale: Any = None,
):
    """The numba ``fused_rows`` (docs/internals.md) for this problem, or None for the core."""
    if backend == "numpy":
        return None
    kernels = numba_kernels()
    if kernels is None:
        if backend == "numba":
            msg = f"backend='numba' cannot run: {unavailable()}; use 'auto' or 'numpy'"
            raise ImportError(msg)
        return None
    ok = kernels.supports(x, target, where=where, weight=weight, out=out, row_scale=row_scale)
    return kernels.fused_rows if ok else None


def rows_kernels(x: np.ndarray, axis: int, where: np.ndarray | None) -> ModuleType | None:
    """The kernel package for softmax / log_softmax / logsumexp of ``x``, or None for the core.

    Taken (as under "auto" for the loss) when the kernels can run and ``x`` is float32/float64,
    C-contiguous, writable (numba types read-only arrays apart), with the class axis last and
    no ``where`` mask; anything else stays on the core.
    """
    if where is not None or axis != x.ndim - 1:
        return None
    if not (x.flags.c_contiguous and x.flags.writeable):
        return None
    if x.dtype not in (np.float32, np.float64):
        return None
    return numba_kernels()
