"""Choosing the row kernel for the fused loss: a plain ``if`` chain, numba imported lazily.

``"numpy"`` is the core; ``"numba"`` is the fused CPU kernel and raises ``ImportError`` saying
why when it cannot run (numba missing, ``NUMBA_DISABLE_JIT=1``); ``"auto"`` takes the kernel
when it can run, covers the input, and is either already loaded or worth loading for a problem
this large; else the core. Inputs the kernel does not cover fall back to the core under
``"numba"`` too (the kernel's ``supports`` says which).
"""

from __future__ import annotations

import sys
import warnings
from types import ModuleType
from typing import Any

import numpy as np

# Below this many logits (N * C) "auto" keeps the NumPy core unless the kernel is already
# loaded: importing numba and loading the cached kernel costs about 0.75 s once, which a user
# of small problems should not pay. Once loaded, the kernel is faster at every size (72 us vs
# 216 us at 64 x 10; benchmarks/bench_fused.py).
AUTO_MIN_SIZE = 4096
_KERNELS = __name__.rpartition(".")[0] + "._numba_kernels"


# Why the kernel module cannot be loaded, once an import has failed (tried once per process).
_unavailable: str | None = None


def numba_kernels() -> ModuleType | None:
    """The numba kernel module, or None when it cannot be loaded (:func:`unavailable` says why).

    An ``ImportError`` (numba not installed, ``NUMBA_DISABLE_JIT=1``) is quiet; any other
    failure of the import (numba installed but broken) warns once.
    """
    global _unavailable
    if _unavailable is not None:
        return None
    try:
        from . import _numba_kernels
    except ModuleNotFoundError as exc:
        _unavailable = f"{exc} (pip install numba)"
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
        return _numba_kernels
    return None


def unavailable() -> str:
    """Why ``backend="numba"`` cannot run here (call after :func:`numba_kernels` gave None)."""
    return _unavailable or "numba is not installed (pip install numba)"


def select(
    backend: str,
    x: np.ndarray,
    target: np.ndarray,
    *,
    where: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    grad_out: np.ndarray | None = None,
    **_: Any,
):
    """The numba row kernel (``fused_rows`` of docs/internals.md) for this problem, or None
    for the core."""
    small = x.size < AUTO_MIN_SIZE and _KERNELS not in sys.modules
    if backend == "numpy" or (backend == "auto" and small):
        return None  # small problems never pay numba's import or compile
    kernels = numba_kernels()
    if kernels is None:
        if backend == "numba":
            msg = f"backend='numba' cannot run: {unavailable()}; use 'auto' or 'numpy'"
            raise ImportError(msg)
        return None
    if not kernels.supports(x, target, where=where, weight=weight, grad_out=grad_out):
        return None
    return kernels.fused_rows


def rows_kernels(x: np.ndarray, axis: int, where: np.ndarray | None) -> ModuleType | None:
    """The kernel module for softmax / log_softmax / logsumexp of ``x``, or None for the core.

    Taken (as under "auto" for the loss) when the kernels can run, the problem is large or the
    kernel already loaded, and ``x`` is float32/float64, C-contiguous, writable (numba types
    read-only arrays apart), with the class axis last and no ``where`` mask; anything else
    stays on the core.
    """
    if where is not None or axis != x.ndim - 1:
        return None
    if not (x.flags.c_contiguous and x.flags.writeable):
        return None
    if x.dtype not in (np.float32, np.float64):
        return None
    if x.size < AUTO_MIN_SIZE and _KERNELS not in sys.modules:
        return None
    return numba_kernels()
