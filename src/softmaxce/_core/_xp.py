"""The few array-namespace helpers the core needs (array-api-compat underneath).

The core is written against the Python Array API standard: ``xp`` is the namespace of its
inputs (NumPy, PyTorch on any device, JAX, CuPy, array-api-strict), found once per call by
``namespace``. Nothing here writes into an array: JAX arrays are immutable, and autograd
must see every step.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import array_namespace

Array = Any  # an array of whatever library the caller uses

NEG_INF = -math.inf


_BY_TYPES: dict[frozenset, Any] = {}
_NUMPY_IS_ARRAY_API = tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 1)


def namespace(*arrays: Any) -> Any:
    """The array namespace shared by the non-None ``arrays``.

    Cached by the arrays' types (the namespace depends on nothing else), since the core asks
    for it in every function and array-api-compat's lookup costs microseconds.
    """
    if _NUMPY_IS_ARRAY_API and arrays and type(arrays[0]) is np.ndarray:  # the common case
        for a in arrays:
            if a is not None and type(a) is not np.ndarray:
                break
        else:
            return np
    key = frozenset(type(a) for a in arrays if a is not None)
    xp = _BY_TYPES.get(key)
    if xp is None:
        xp = array_namespace(*(a for a in arrays if a is not None))
        if is_numpy(xp) and _NUMPY_IS_ARRAY_API:
            xp = np  # NumPy >= 2.1 is an Array API namespace itself: no wrappers to pay for
        _BY_TYPES[key] = xp
    return xp


def acc_dtype(xp: Any, dtype: Any) -> Any:
    """The accumulation dtype of ``dtype``: at least float32 (float16 and bfloat16 widen)."""
    return xp.result_type(dtype, xp.float32)


def wide_dtype(xp: Any, dtype: Any) -> Any:
    """float64 where the namespace has it (for sums over rows), else ``acc_dtype``.

    JAX has float64 only with ``jax_enable_x64``; without it a float64 request would be
    silently truncated, so the float32 accumulation is used openly instead.
    """
    if is_jax(xp):
        import jax

        if not jax.config.jax_enable_x64:
            return acc_dtype(xp, dtype)
    return xp.float64


def xmul(xp: Any, a: Array, b: Array) -> Array:
    """``a * b`` with ``0 * inf = 0`` (``q log q`` at ``q = 0``; ``q (z - m)`` at ``z = -inf``).

    Written as ``a * where((a == 0) & isinf(b), 0, b)``: autograd then never multiplies a
    zero upstream gradient by an infinite ``b`` (which gives NaN), and the derivative with
    respect to ``a`` stays ``b`` where ``b`` is finite, also at ``a = 0`` (the gradient of a
    probability target or a class weight at its zero entries). The sign of a zero product
    follows ``b``'s.
    """
    return a * xp.where((a == 0) & xp.isinf(b), 0.0, b)


def device(a: Array) -> Any:
    """The device of ``a`` (``a.device``; None for a JAX tracer under ``jit``, which has none,
    so that new arrays go to the default device; old JAX's ``device()`` method is called).

    Read from the attribute rather than through array-api-compat's ``device``, whose type
    checks are ``lru_cache``-wrapped: ``torch.compile`` traces through them with a warning.
    """
    d = getattr(a, "device", None)
    return d() if callable(d) else d


# Namespaces are told apart by name here, not by array-api-compat's ``is_*_namespace``, which
# are ``lru_cache``-wrapped (``torch.compile`` warns when it traces through them).
_NUMPY_NAMES = frozenset({"numpy", "array_api_compat.numpy"})
_JAX_NAMES = frozenset({"jax.numpy", "jax.experimental.array_api"})


def is_numpy(xp: Any) -> bool:
    """Whether ``xp`` is NumPy or array-api-compat's wrapper of it."""
    return xp is np or getattr(xp, "__name__", None) in _NUMPY_NAMES


def is_jax(xp: Any) -> bool:
    """Whether ``xp`` is ``jax.numpy``."""
    return getattr(xp, "__name__", None) in _JAX_NAMES
