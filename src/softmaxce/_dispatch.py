"""Choosing the row kernel for the fused loss: a plain ``if`` chain, numba imported lazily.

``"numpy"`` is the core; ``"numba"`` is the fused CPU kernel and raises if numba is missing;
``"auto"`` takes the kernel when it is installed, covers the input and the problem is large
enough to pay for the call, else the core. Inputs the kernel does not cover fall back to the
core under ``"numba"`` too (the kernel's ``supports`` says which).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from . import _core

# Below this many logits (N * C) "auto" keeps the NumPy core: the kernel call's fixed cost is
# not worth it. Measured with benchmarks/bench_fused.py; see the README's table.
AUTO_MIN_SIZE = 4096


def numba_kernels() -> ModuleType | None:
    """The numba kernel module, or None when numba cannot be imported."""
    try:
        from . import _numba_kernels
    except ImportError:
        return None
    return _numba_kernels


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
    """The row kernel (``fused_rows`` of docs/internals.md) for this problem."""
    if backend == "numpy" or (backend == "auto" and x.size < AUTO_MIN_SIZE):
        return _core.fused_rows  # small problems never pay numba's import or compile
    kernels = numba_kernels()
    if kernels is None:
        if backend == "numba":
            msg = (
                "backend='numba' needs the numba package (pip install numba); use 'auto' or 'numpy'"
            )
            raise ImportError(msg)
        return _core.fused_rows
    if not kernels.supports(x, target, where=where, weight=weight, grad_out=grad_out):
        return _core.fused_rows
    return kernels.fused_rows
