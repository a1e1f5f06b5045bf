"""Validation at the public boundary, done once.

Every check raises ``ValueError`` or ``TypeError`` with a message that names the argument, what
was expected and what was given. Nothing here uses ``assert`` (``python -O`` strips it).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ._core._xp import namespace

REDUCTIONS = ("none", "sum", "mean")
SOFT_TARGET_LOSSES = ("cross-entropy", "kl-divergence")
BACKENDS = ("auto", "numpy", "numba")

# The ignore_index the kernels receive when nothing is ignored: an ignore_index outside int64
# (no int64 label can equal it) becomes this, and no validated label may equal it (see
# target_array), so the kernels' ``t != ignore_index`` is then always true. -2**63 itself is
# therefore reserved: as an ignore_index it too ignores nothing.
NO_IGNORE = int(np.iinfo(np.int64).min)
_INT64_MAX = int(np.iinfo(np.int64).max)


def as_array(x: Any, name: str) -> np.ndarray:
    """``x`` as a NumPy array, refusing what ``np.asarray`` would silently get wrong.

    Every array argument of every public NumPy function comes through here: a masked array
    would lose its mask, a torch tensor that requires grad makes torch raise its own error,
    and a ragged nested list makes NumPy's message not say which argument it was.
    """
    if type(x) is np.ndarray:  # the common case, first and cheap
        return x
    if isinstance(x, np.ma.MaskedArray):
        msg = (
            f"{name} is a numpy masked array, whose mask softmaxce does not read (it would be "
            f"silently dropped); pass {name}.data and the mask as where=~{name}.mask (or, for "
            "masked class indices, replace them by ignore_index)"
        )
        raise TypeError(msg)
    if getattr(x, "requires_grad", False) is True:
        msg = (
            f"{name} is a {type(x).__name__} that requires grad; the NumPy API does not "
            f"track gradients: use softmaxce.torch for autograd, or pass {name}.detach()"
        )
        raise TypeError(msg)
    try:
        return np.asarray(x)
    except ValueError as exc:
        msg = (
            f"{name} must be an array or a rectangular (non-ragged) nested sequence; "
            f"converting it failed: {exc}"
        )
        raise ValueError(msg) from None


def is_bfloat16(dtype: Any) -> bool:
    """Whether ``dtype`` is NumPy's ``ml_dtypes.bfloat16`` (a float that NumPy sees as kind V)."""
    return getattr(dtype, "kind", None) == "V" and dtype.name == "bfloat16" and dtype.itemsize == 2


def float_array(x: Any, name: str) -> np.ndarray:
    """``x`` as an array of a float dtype (``ml_dtypes.bfloat16`` included); integers promote
    to float64."""
    arr = as_array(x, name)
    kind = arr.dtype.kind
    if kind == "f" or is_bfloat16(arr.dtype):
        return arr
    if kind in "iu":
        return arr.astype(np.float64)
    if kind == "b":
        msg = f"{name} must be a real float or integer array, got a bool array; cast it first"
        raise TypeError(msg)
    msg = f"{name} must be a real float or integer array, got dtype {arr.dtype}"
    raise TypeError(msg)


def class_axis(axis: Any, ndim: int, name: str = "axis", *, array: str = "x") -> int:
    """Normalise ``axis`` (the class axis of the argument called ``array``) to ``[0, ndim)``."""
    if type(axis) is int and -ndim <= axis < ndim:  # the common case, first and cheap
        return axis % ndim
    if isinstance(axis, bool | np.bool_):
        msg = f"{name} must be an int, got bool {axis!r}"
        raise TypeError(msg)
    try:
        ax = operator.index(axis)
    except TypeError:
        msg = f"{name} must be an int, got {type(axis).__name__} {axis!r}"
        raise TypeError(msg) from None
    if ndim == 0:
        msg = (
            f"{array} must have at least one dimension (the class axis, {name}={ax}), "
            "got a 0-d array"
        )
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
    mask = as_array(where, "where")
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
    dtype ``acc`` (at least float32, as ``_core._xp.acc_dtype``), where ``softcap * tanh(x /
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


def reduction(value: Any) -> str:
    return choice(value, REDUCTIONS, "reduction")


def soft_target_loss(value: Any) -> str:
    return choice(value, SOFT_TARGET_LOSSES, "soft_target_loss")


def backend(value: Any) -> str:
    return choice(value, BACKENDS, "backend")


def flag(value: Any, name: str) -> bool:
    """A switch: exactly a bool (``"yes"`` or 0 is refused, not read as truthy)."""
    if not isinstance(value, bool | np.bool_):
        msg = f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}"
        raise TypeError(msg)
    return bool(value)


def integer(value: Any, name: str) -> int:
    if isinstance(value, bool | np.bool_):
        msg = f"{name} must be an int, got bool {value!r}"
        raise TypeError(msg)
    try:
        return operator.index(value)
    except TypeError:
        msg = f"{name} must be an int, got {type(value).__name__} {value!r}"
        raise TypeError(msg) from None


def ignore_index(value: Any, name: str = "ignore_index") -> int:
    """``ignore_index`` as the int64 the kernels compare labels with.

    Any integer is valid. One outside int64 (``2**63``, the ``uint64`` maximum, ...) can
    equal no int64 label, so it ignores nothing: it becomes ``NO_IGNORE``, as ``-2**63``
    itself does.
    """
    if type(value) is not int:  # (an int needs no conversion: the common case, kept cheap)
        value = integer(value, name)
    return value if NO_IGNORE < value <= _INT64_MAX else NO_IGNORE


def class_weight(
    weight: Any, n_classes: int, name: str = "weight", allow_negative: bool = False
) -> np.ndarray | None:
    """Class weights as float64 of shape (C,): finite and non-negative.

    ``allow_negative`` (for the compat modes of frameworks that accept them) drops the sign
    check; the values must still be finite.
    """
    if weight is None:
        return None
    w = as_array(weight, name)
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
    target: Any,
    logits: np.ndarray,
    axis: int,
    ignore_index: int,
    name: str = "target",
    ignore_name: str = "ignore_index",
) -> np.ndarray:
    """Check a target against the logits: integer class indices or a float distribution.

    ``name`` and ``ignore_name`` are the caller's names of the target and of the ignore index
    (a compat mode's ``t``, ``ignore_label``), for the messages.
    """
    t = as_array(target, name)
    kind = t.dtype.kind
    if kind == "b":
        msg = (
            f"{name} must be integer class indices or a float distribution, got a bool array; "
            "use .astype(int) for indices or .astype(float) for a one-hot distribution"
        )
        raise TypeError(msg)
    if kind == "f" or is_bfloat16(t.dtype):
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
    check_labels(t, logits.shape[axis], ignore_index, name, ignore_name)
    return t


def check_labels(
    t: Any,
    n_classes: int,
    ignore_index: int,
    name: str = "target",
    ignore_name: str = "ignore_index",
) -> None:
    """THE label-range check of every front end: each integer label in ``[0, n_classes)`` or
    equal to ``ignore_index`` (``NO_IGNORE``: nothing is ignored), else a ValueError
    naming ``name``, the first bad label and its position.

    ``t`` is a NumPy array, or an array of another library whose values can be read without a
    device synchronisation or a trace (torch or JAX on the CPU; the caller decides, see
    ``_problem.readable``).
    """
    if isinstance(t, np.ndarray) and _all_in_range(t, n_classes):
        return
    bad = (t < 0) | (t >= n_classes)
    if ignore_index != NO_IGNORE:  # (the NO_IGNORE label is out of range: see NO_IGNORE)
        bad = bad & (t != ignore_index)
    if isinstance(t, np.ndarray):
        if not bad.any():
            return
        host = bad
    else:
        if not bool(namespace(bad).any(bad)):
            return
        host = to_host(bad)
    pos = tuple(int(i) for i in np.argwhere(host)[0])
    also = "" if ignore_index == NO_IGNORE else f" or {ignore_name}={ignore_index}"
    msg = (
        f"{name} must hold class indices in [0, {n_classes}){also}; got {int(t[pos])} at "
        f"position {pos}"
    )
    raise ValueError(msg)


def to_host(a: Any) -> np.ndarray:
    """A readable array of any library (NumPy; torch, JAX, array-api-strict on the CPU) as a
    NumPy array, without a copy where the library allows (DLPack), detached from autograd."""
    if isinstance(a, np.ndarray):
        return a
    detach = getattr(a, "detach", None)  # a torch tensor that may require grad
    return np.from_dlpack(detach() if detach is not None else a)


# Signed integer dtypes (native byte order) and their unsigned twins, for _all_in_range.
_UNSIGNED = {np.dtype(f"i{size}"): np.dtype(f"u{size}") for size in (1, 2, 4, 8)}
_MAX = np.maximum.reduce


def _all_in_range(t: np.ndarray, n_classes: int) -> bool:
    """Are all integer labels in ``[0, n_classes)``? One pass, the common case's fast path.

    Read as unsigned, a negative label becomes at least ``2**(bits - 1)``, so, when
    ``n_classes`` is not above that, one maximum finds every label outside the range. False
    may also mean "not sure" (e.g. int8 labels with 200 classes): the caller checks exactly.
    """
    if t.size == 0:
        return True
    if t.dtype.kind == "u":
        return int(_MAX(t, axis=None)) < n_classes
    unsigned = _UNSIGNED.get(t.dtype)
    if unsigned is None or n_classes > 1 << (8 * t.itemsize - 1):
        return False
    return int(_MAX(t.view(unsigned), axis=None)) < n_classes


def dloss_array(dloss: Any, loss_shape: tuple[int, ...]) -> np.ndarray:
    """The upstream gradient as float64 with exactly the loss's shape (None means ones)."""
    if dloss is None:
        return np.ones(loss_shape)
    d = as_array(dloss, "dloss")
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
    if logits.dtype.kind != "f" and not is_bfloat16(logits.dtype):
        msg = f"inplace=True needs float logits to hold the gradient, got dtype {logits.dtype}"
        raise TypeError(msg)
    if not logits.flags.writeable:
        msg = "inplace=True needs writable logits, got a read-only array"
        raise ValueError(msg)
    if not logits.flags.c_contiguous:
        msg = "inplace=True needs C-contiguous logits, got a non-contiguous array"
        raise ValueError(msg)
    return logits


def disjoint_from_buffer(buffer: np.ndarray, **others: Any) -> None:
    """With ``inplace=True``: no other argument may share memory with the logits.

    The gradient overwrites the logits row by row while the kernel still reads the others (a
    soft target that is the logits, a ``where`` or ``dloss`` view of them): the result would be
    silently wrong.
    """
    for name, other in others.items():
        if other is None or not np.may_share_memory(buffer, other):
            continue
        try:  # may_share_memory compares bounds only; confirm, within a bounded effort
            overlap = np.shares_memory(buffer, other, max_work=100_000)
        except np.exceptions.TooHardError:
            overlap = True
        if overlap:
            msg = (
                f"inplace=True writes the gradient into the logits, but {name} shares memory "
                f"with them; pass a copy of {name} (e.g. {name}.copy()) or use inplace=False"
            )
            raise ValueError(msg)


def positive_finite(value: Any, name: str) -> float:
    v = real_scalar(value, name)
    if not (v > 0 and math.isfinite(v)):
        msg = f"{name} must be a finite number > 0, got {v!r}"
        raise ValueError(msg)
    return v


def tolerance(value: Any, name: str) -> float:
    """A comparison tolerance: finite and >= 0 (NaN or inf would make every check pass)."""
    t = real_scalar(value, name)
    if not (t >= 0 and math.isfinite(t)):
        msg = f"{name} must be a finite number >= 0, got {t!r}"
        raise ValueError(msg)
    return t


# The options whose validity does not depend on the arrays, each with its validator: the ones
# the public functions call on every call, run early by the objects of softmaxce.ops when they
# are built. (weight and where depend on the arrays and are checked per call only.)
SCALAR_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "axis": lambda value: integer(value, "axis"),
    "ignore_index": ignore_index,
    "reduction": reduction,
    "label_smoothing": label_smoothing,
    "z_loss": z_loss,
    "softcap": softcap,
    "soft_target_loss": soft_target_loss,
    "backend": backend,
    "inplace": lambda value: flag(value, "inplace"),
}


def options(opts: dict[str, Any], allowed: Iterable[str], owner: str) -> None:
    """Keyword options given to ``owner``: known names, and valid values where that does not
    depend on the arrays (see ``SCALAR_OPTIONS``)."""
    allowed = sorted(allowed)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        msg = f"{owner} got unknown option(s) {unknown}; expected some of {allowed}"
        raise TypeError(msg)
    for name, value in opts.items():
        check = SCALAR_OPTIONS.get(name)
        if check is not None:
            check(value)
