"""Validation at the public boundary, done once.

Every check raises ``ValueError`` or ``TypeError`` with a message that names the argument, what
was expected and what was given. Nothing here uses ``assert`` (``python -O`` strips it).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

REDUCTIONS = ("none", "sum", "mean")
SOFT_TARGET_LOSSES = ("cross-entropy", "kl-divergence")
BACKENDS = ("auto", "numpy", "numba")


def float_array(x: Any, name: str) -> np.ndarray:
    """``x`` as an array of a float dtype; integers promote to float64."""
    arr = np.asarray(x)
    kind = arr.dtype.kind
    if kind == "f":
        return arr
    if kind in "iu":
        return arr.astype(np.float64)
    if kind == "b":
        msg = f"{name} must be a real float or integer array, got a bool array; cast it first"
        raise TypeError(msg)
    msg = f"{name} must be a real float or integer array, got dtype {arr.dtype}"
    raise TypeError(msg)


def class_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """Normalise ``axis`` to ``[0, ndim)``."""
    if isinstance(axis, bool | np.bool_):
        msg = f"{name} must be an int, got bool {axis!r}"
        raise TypeError(msg)
    try:
        ax = operator.index(axis)
    except TypeError:
        msg = f"{name} must be an int, got {type(axis).__name__} {axis!r}"
        raise TypeError(msg) from None
    if ndim == 0:
        msg = f"the input must have at least one dimension (the class axis {name}), got a 0-d array"
        raise ValueError(msg)
    if not -ndim <= ax < ndim:
        msg = f"{name}={ax} is out of range for an array of {ndim} dimension(s)"
        raise ValueError(msg)
    return ax % ndim


def nonempty_classes(x: np.ndarray, axis: int, name: str) -> int:
    n_classes = x.shape[axis]
    if n_classes == 0:
        msg = f"{name} must have at least one class along axis {axis}, got shape {x.shape}"
        raise ValueError(msg)
    return n_classes


def same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        msg = f"{name_b} must have the shape of {name_a} {a.shape}, got {b.shape}"
        raise ValueError(msg)


def where_mask(where: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """``where`` broadcast to ``shape`` (a read-only view), or None."""
    if where is None:
        return None
    mask = np.asarray(where)
    if mask.dtype != np.bool_:
        msg = f"where must be a bool array, got dtype {mask.dtype}"
        raise TypeError(msg)
    try:
        return np.broadcast_to(mask, shape)
    except ValueError:
        msg = f"where must be broadcastable to the logits' shape {shape}, got shape {mask.shape}"
        raise ValueError(msg) from None


def real_scalar(value: Any, name: str) -> float:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        msg = f"{name} must be a real number, got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    if isinstance(value, complex | np.complexfloating):
        msg = f"{name} must be a real number, got complex {value!r}"
        raise TypeError(msg)
    return float(value)


def label_smoothing(value: Any) -> float:
    eps = real_scalar(value, "label_smoothing")
    if not 0.0 <= eps <= 1.0:
        msg = f"label_smoothing must be in [0, 1], got {eps!r}"
        raise ValueError(msg)
    return eps


def z_loss(value: Any) -> float:
    z = real_scalar(value, "z_loss")
    # Comparisons, not math.isfinite: torch.compile(dynamic=True) traces the torch front end's
    # float options symbolically and cannot trace math.isfinite on them. NaN fails both.
    if not (z >= 0.0 and z < math.inf):
        msg = f"z_loss must be a finite number >= 0, got {z!r}"
        raise ValueError(msg)
    return z


def softcap(value: Any, dtype: np.dtype | None = None) -> float | None:
    """``softcap`` as a float, or None.

    With the logits' ``dtype`` (known once the logits are) it must also fit the accumulation
    dtype ``acc`` (at least float32, as ``_core.acc_dtype``), where ``softcap * tanh(x /
    softcap)`` and its derivative are computed: ``softcap`` and ``1 / softcap`` must be normal
    ``acc`` numbers, i.e. ``tiny <= softcap <= 1 / tiny``. Beyond that the cap is ``inf`` (and
    ``inf * 0`` NaN) or its reciprocal is.
    """
    if value is None:
        return None
    cap = real_scalar(value, "softcap")
    if not (cap > 0.0 and cap < math.inf):  # (as in z_loss)
        msg = f"softcap must be None or a finite number > 0, got {cap!r}"
        raise ValueError(msg)
    if dtype is not None:
        acc = np.promote_types(dtype, np.float32)
        tiny = float(np.finfo(acc).tiny)
        if not tiny <= cap <= 1.0 / tiny:
            msg = (
                f"softcap must be in [{tiny:.7g}, {1.0 / tiny:.7g}] for {np.dtype(dtype).name} "
                f"logits, which are computed in {acc.name} (softcap and 1/softcap must be "
                f"normal {acc.name} numbers), got {cap!r}"
            )
            raise ValueError(msg)
    return cap


def choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        msg = f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}"
        raise ValueError(msg)
    return value


def integer(value: Any, name: str) -> int:
    if isinstance(value, bool | np.bool_):
        msg = f"{name} must be an int, got bool {value!r}"
        raise TypeError(msg)
    try:
        return operator.index(value)
    except TypeError:
        msg = f"{name} must be an int, got {type(value).__name__} {value!r}"
        raise TypeError(msg) from None


def class_weight(
    weight: Any, n_classes: int, name: str = "weight", allow_negative: bool = False
) -> np.ndarray | None:
    """Class weights as float64 of shape (C,): finite and non-negative.

    ``allow_negative`` (for the compat modes of frameworks that accept them) drops the sign
    check; the values must still be finite.
    """
    if weight is None:
        return None
    w = np.asarray(weight)
    if w.dtype.kind not in "iuf":
        msg = f"{name} must be a real array of shape ({n_classes},), got dtype {w.dtype}"
        raise TypeError(msg)
    if w.shape != (n_classes,):
        msg = f"{name} must have shape ({n_classes},) (one per class), got shape {w.shape}"
        raise ValueError(msg)
    w = w.astype(np.float64)
    bad = ~(np.isfinite(w) & (allow_negative | (w >= 0)))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        what = "finite" if allow_negative else "finite and >= 0"
        msg = f"{name} must be {what}, got {name}[{k}] = {w[k]!r}"
        raise ValueError(msg)
    return w


def target_array(
    target: Any, logits: np.ndarray, axis: int, ignore_index: int, name: str = "target"
) -> np.ndarray:
    """Check a target against the logits: integer class indices or a float distribution."""
    t = np.asarray(target)
    kind = t.dtype.kind
    if kind == "b":
        msg = (
            f"{name} must be integer class indices or a float distribution, got a bool array; "
            "use .astype(int) for indices or .astype(float) for a one-hot distribution"
        )
        raise TypeError(msg)
    if kind == "f":
        if t.shape != logits.shape:
            msg = (
                f"{name}: a float (probability) target must have the logits' shape "
                f"{logits.shape}, got {t.shape}"
            )
            raise ValueError(msg)
        return t
    if kind not in "iu":
        msg = f"{name} must be an integer or float array, got dtype {t.dtype}"
        raise TypeError(msg)
    batch_shape = logits.shape[:axis] + logits.shape[axis + 1 :]
    if t.shape != batch_shape:
        msg = (
            f"{name}: integer class indices must have the logits' shape without the class "
            f"axis {axis}, i.e. {batch_shape}, got {t.shape}"
        )
        raise ValueError(msg)
    n_classes = logits.shape[axis]
    bad = ((t < 0) | (t >= n_classes)) & (t != ignore_index)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        msg = (
            f"{name} must hold class indices in [0, {n_classes}) or ignore_index="
            f"{ignore_index}; got {t[pos]} at position {pos}"
        )
        raise ValueError(msg)
    return t


def dloss_array(dloss: Any, loss_shape: tuple[int, ...]) -> np.ndarray:
    """The upstream gradient as float64 with exactly the loss's shape (None means ones)."""
    if dloss is None:
        return np.ones(loss_shape)
    d = np.asarray(dloss)
    if d.dtype.kind not in "iuf":
        msg = f"dloss must be a real array or number, got dtype {d.dtype}"
        raise TypeError(msg)
    if d.shape != loss_shape:
        what = "a scalar" if loss_shape == () else f"an array of the loss's shape {loss_shape}"
        msg = f"dloss must be {what}, got shape {d.shape}"
        raise ValueError(msg)
    return d.astype(np.float64)


def inplace_buffer(logits: Any) -> np.ndarray:
    """Check that the logits can receive the gradient in place."""
    if not isinstance(logits, np.ndarray):
        msg = f"inplace=True needs logits as a numpy.ndarray, got {type(logits).__name__}"
        raise TypeError(msg)
    if logits.dtype.kind != "f":
        msg = f"inplace=True needs float logits to hold the gradient, got dtype {logits.dtype}"
        raise TypeError(msg)
    if not logits.flags.writeable:
        msg = "inplace=True needs writable logits, got a read-only array"
        raise ValueError(msg)
    if not logits.flags.c_contiguous:
        msg = "inplace=True needs C-contiguous logits, got a non-contiguous array"
        raise ValueError(msg)
    return logits


def positive_finite(value: Any, name: str) -> float:
    v = real_scalar(value, name)
    if not (v > 0 and math.isfinite(v)):
        msg = f"{name} must be a finite number > 0, got {v!r}"
        raise ValueError(msg)
    return v
