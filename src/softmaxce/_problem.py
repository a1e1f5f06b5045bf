"""A loss problem, validated once at the public boundary and flattened to (N, C) rows.

Any array that array-api-compat recognises is accepted (NumPy, PyTorch on any device, JAX,
CuPy, array-api-strict); the logits decide the namespace and device, and the other array
arguments must be of the same library (Python lists and scalars are converted). Checks that
need the data (labels in range, weights finite) run where the data can be read without a
device synchronisation or a trace: NumPy, and CPU-resident arrays outside a trace (``jax.jit``,
``torch.compile``). Elsewhere they are the caller's responsibility (documented).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import is_array_api_obj

from . import _validate as v
from ._core._xp import Array, acc_dtype, device, namespace, wide_dtype
from ._core._xp import is_numpy as is_numpy_namespace
from ._options import LossOptions


@dataclass(frozen=True)
class Problem:
    """The validated inputs of a softmax cross-entropy, classes last, as (N, C) rows."""

    xp: Any
    x: Array  # the validated float logits, original layout
    axis: int  # their class axis
    x2: Array  # (N, C) rows: a view of x when its class axis is last and contiguous
    target: Array  # (N,) integer class indices or (N, C) float probabilities
    weight: Array | None  # (C,) class weights
    where: Array | None  # (N, C) bool
    batch_shape: tuple[int, ...]
    opts: LossOptions

    @property
    def soft(self) -> bool:
        return self.target.ndim == 2

    @property
    def numpy(self) -> bool:
        return is_numpy_namespace(self.xp)

    def to_layout(self, rows2: Array) -> Array:
        """(N, C) gradient rows back to the layout of ``x``."""
        xp = self.xp
        moved = xp.reshape(rows2, (*self.batch_shape, rows2.shape[1]))
        last = moved.ndim - 1
        return moved if self.axis == last else xp.moveaxis(moved, last, self.axis)


def readable(a: Array) -> bool:
    """Whether ``a``'s values can be checked here: NumPy, or on the CPU and not traced."""
    if isinstance(a, np.ndarray):
        return True
    try:
        dev = device(a)
    except Exception:  # pragma: no cover - exotic array types
        return False
    if "Tracer" in type(a).__name__:  # jax.jit / jax.vmap tracers
        return False
    try:
        import torch

        if isinstance(a, torch.Tensor) and torch.compiler.is_compiling():
            return False
    except ImportError:
        pass
    # torch "cpu", JAX "cpu:0" (older: "TFRT_CPU_0"), array-api-strict "Device('CPU_DEVICE')"
    return "cpu" in str(dev).lower()


def as_float(x: Any, name: str) -> tuple[Any, Array]:
    """``(xp, x)`` with ``x`` an array of a real float dtype (integers promote to float64)."""
    if type(x) is np.ndarray and x.dtype.kind == "f":  # the common case, first and cheap
        return namespace(x), x
    if not is_array_api_obj(x) or isinstance(x, np.ndarray):
        arr = v.float_array(x, name)
        return namespace(arr), arr
    xp = namespace(x)
    if xp.isdtype(x.dtype, "real floating"):
        return xp, x
    if xp.isdtype(x.dtype, "bool"):
        msg = f"{name} must be a real float or integer array, got a bool array; cast it first"
        raise TypeError(msg)
    if xp.isdtype(x.dtype, "integral"):
        return xp, xp.astype(x, wide_dtype(xp, xp.float32))
    msg = f"{name} must be a real float or integer array, got dtype {x.dtype}"
    raise TypeError(msg)


_NUMPY = (np.ndarray, np.generic)


def as_array(xp: Any, like: Array, a: Any, name: str) -> Array:
    """``a`` as an array of ``like``'s library and device (lists and scalars converted).

    An array of another library is refused (TypeError naming ``name``): softmaxce converts
    nothing between libraries behind the caller's back (no host copies, no lost autograd).
    """
    numpy = is_numpy_namespace(xp)
    if not numpy and isinstance(a, type(like)):  # (first: torch.compile traces this path, and
        return a  # array-api-compat's type checks are lru_cache-wrapped, which dynamo warns of)
    if is_array_api_obj(a) and not isinstance(a, _NUMPY if numpy else type(like)):
        if not numpy and namespace(a) is xp:
            return a
        msg = (
            f"{name} must be an array of the same library as the first argument "
            f"({type(like).__module__}.{type(like).__name__}), got "
            f"{type(a).__module__}.{type(a).__name__}; convert it first"
        )
        raise TypeError(msg)
    if numpy:
        return v.as_array(a, name)
    if is_array_api_obj(a):
        return a
    # through NumPy: a Python float is float64 as for NumPy arrays (torch.asarray would round
    # it to float32, its default dtype), and a ragged list is named
    return xp.asarray(v.as_array(a, name), device=device(like))


def _classes_last(xp: Any, a: Array, axis: int) -> Array:
    """``a`` with its class axis last (itself when it already is: moveaxis costs ~10 us)."""
    return a if axis == a.ndim - 1 else xp.moveaxis(a, axis, -1)


def _target(xp: Any, x: Array, t: Any, axis: int, opts: LossOptions, name: str) -> Array:
    """A target of ``x``'s library: integer indices of the batch shape or floats of x's."""
    t = as_array(xp, x, t, name)
    if xp.isdtype(t.dtype, "bool"):
        msg = (
            f"{name} must be integer class indices or a float distribution, got a bool array; "
            "cast it to an integer dtype for indices or a float dtype for a distribution"
        )
        raise TypeError(msg)
    if xp.isdtype(t.dtype, "real floating") or v.is_bfloat16(t.dtype):
        if tuple(t.shape) != tuple(x.shape):
            msg = (
                f"{name}: a float (probability) target must have the logits' shape "
                f"{tuple(x.shape)}, got {tuple(t.shape)}"
            )
            raise ValueError(msg)
        return t
    if not xp.isdtype(t.dtype, "integral"):
        msg = f"{name} must be an integer or float array, got dtype {t.dtype}"
        raise TypeError(msg)
    batch = tuple(x.shape[:axis]) + tuple(x.shape[axis + 1 :])
    if tuple(t.shape) != batch:
        msg = (
            f"{name}: integer class indices must have the logits' shape without the class "
            f"axis {axis}, i.e. {batch}, got {tuple(t.shape)}"
        )
        raise ValueError(msg)
    if readable(t):
        v.check_labels(v.to_host(t), x.shape[axis], opts.ignore_index, name)
    return t


def _weight(xp: Any, x: Array, w: Any, n_classes: int, allow_negative: bool, name: str):
    if w is None:
        return None
    w = as_array(xp, x, w, name)
    if not (xp.isdtype(w.dtype, "real floating") or xp.isdtype(w.dtype, "integral")):
        msg = f"{name} must be a real array of shape ({n_classes},), got dtype {w.dtype}"
        raise TypeError(msg)
    if tuple(w.shape) != (n_classes,):
        msg = f"{name} must have shape ({n_classes},) (one per class), got shape {tuple(w.shape)}"
        raise ValueError(msg)
    if readable(w):
        host = v.to_host(w).astype(np.float64)
        v.class_weight(host, n_classes, name=name, allow_negative=allow_negative)
    return w


def where_array(xp: Any, x: Array, where: Any) -> Array | None:
    if where is None:
        return None
    mask = as_array(xp, x, where, "where")
    if is_numpy_namespace(xp):
        return v.where_mask(mask, x.shape)
    if not xp.isdtype(mask.dtype, "bool"):
        msg = f"where must be a bool array, got dtype {mask.dtype}"
        raise TypeError(msg)
    try:
        return xp.broadcast_to(mask, tuple(x.shape))
    except (ValueError, RuntimeError):
        msg = (
            f"where must be broadcastable to the logits' shape {tuple(x.shape)}, "
            f"got shape {tuple(mask.shape)}"
        )
        raise ValueError(msg) from None


def prepare(
    logits: Any,
    target: Any,
    opts: LossOptions,
    *,
    axis: Any = -1,
    weight: Any = None,
    where: Any = None,
    name: str = "logits",
) -> Problem:
    """Validate a loss problem once and flatten it to (N, C) rows with the classes last."""
    xp, x = as_float(logits, name)
    if is_numpy_namespace(xp):
        return _prepare_numpy(xp, x, target, opts, axis, weight, where, name)
    _softcap_fits(xp, x.dtype, opts.softcap)
    ax = v.class_axis(axis, x.ndim, array=name)
    n_classes = v.nonempty_classes(x, ax, name)
    t = _target(xp, x, target, ax, opts, "target")
    w = _weight(xp, x, weight, n_classes, opts.semantics.negative_weight, "weight")
    mask = where_array(xp, x, where)
    return problem_of(x, t, opts, axis=ax, weight=w, where=mask)


def problem_of(
    x: Array,
    target: Array,
    opts: LossOptions,
    *,
    axis: int,
    weight: Array | None = None,
    where: Array | None = None,
) -> Problem:
    """The ``Problem`` of arrays already validated (by ``prepare``, or by a compat
    mode's own checks under its framework's names): flattened to (N, C) rows, checking nothing.

    ``x``: float logits of any library; ``axis`` in ``[0, x.ndim)``; ``target``: integer
    class indices of ``x``'s shape without ``axis`` (labels in range) or floats of ``x``'s
    shape; ``weight``: (C,) or None (NumPy: float64, finite); ``where``: bool of ``x``'s shape
    or None.
    """
    xp = namespace(x)
    n_classes = x.shape[axis]
    if is_numpy_namespace(xp):
        moved = _classes_last(np, x, axis)
        x2 = moved.reshape(-1, n_classes)  # a view when possible, else a copy
        if target.dtype.kind == "f" or v.is_bfloat16(target.dtype):
            t2 = _classes_last(np, target, axis).reshape(-1, n_classes)
        else:
            t2 = target.reshape(-1).astype(np.int64, copy=False)
        m2 = None if where is None else _classes_last(np, where, axis).reshape(-1, n_classes)
        return Problem(xp, x, axis, x2, t2, weight, m2, moved.shape[:-1], opts)
    moved = _classes_last(xp, x, axis)
    x2 = xp.reshape(moved, (-1, n_classes))
    if target.ndim == x.ndim and xp.isdtype(target.dtype, "real floating"):
        t2 = xp.reshape(_classes_last(xp, target, axis), (-1, n_classes))
    else:  # (torch gathers with int64 only; no uint compares with a negative ignore_index)
        index = xp.__array_namespace_info__().default_dtypes()["indexing"]
        t2 = xp.astype(xp.reshape(target, (-1,)), index)
    m2 = None if where is None else xp.reshape(_classes_last(xp, where, axis), (-1, n_classes))
    return Problem(xp, x, axis, x2, t2, weight, m2, tuple(moved.shape[:-1]), opts)


def _softcap_fits(xp: Any, dtype: Any, cap: float | None) -> None:
    """``softcap`` and ``1 / softcap`` must be normal numbers of the accumulation dtype, where
    ``softcap * tanh(x / softcap)`` and its derivative are computed (else ``inf * 0``)."""
    if cap is None:
        return
    acc = acc_dtype(xp, dtype)
    tiny = float(xp.finfo(acc).smallest_normal)
    if not tiny <= cap <= 1.0 / tiny:
        msg = (
            f"softcap must be in [{tiny:.7g}, {1.0 / tiny:.7g}] for {dtype} logits, which are "
            f"computed in {acc} (softcap and 1/softcap must be normal {acc} numbers), "
            f"got {cap!r}"
        )
        raise ValueError(msg)


def _prepare_numpy(xp, x, target, opts, axis, weight, where, name) -> Problem:
    """``prepare`` for NumPy: the same checks, the fast way."""
    if opts.softcap is not None:
        v.softcap(opts.softcap, x.dtype)
    ax = v.class_axis(axis, x.ndim, array=name)
    n_classes = v.nonempty_classes(x, ax, name)
    if type(target) is not np.ndarray:
        target = as_array(xp, x, target, "target")
    t = v.target_array(target, x, ax, opts.ignore_index)
    w = None
    if weight is not None:
        weight = as_array(xp, x, weight, "weight")
        w = v.class_weight(weight, n_classes, allow_negative=opts.semantics.negative_weight)
    mask = where_array(xp, x, where)
    return problem_of(x, t, opts, axis=ax, weight=w, where=mask)
