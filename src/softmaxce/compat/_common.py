"""The compatibility modes as data: a table of framework semantics and one shared validator.

Each framework's loss is the core's fused softmax cross-entropy (``softmaxce._api.fused``)
with a handful of choices made differently: which argument names appear in error messages,
which dtypes are accepted for logits and labels, what "mean" divides by and what an empty
denominator gives, whether class weights may be negative. Those choices are the rows of
:data:`TABLE`; :func:`run` validates an input once under them and calls the core. The
framework modules only map their options onto :func:`run` (and, where a framework has a
documented quirk that is not a choice of the core, such as PyTorch's ``0 * log 0 = NaN``,
patch the core's result); none of them computes a softmax or a cross-entropy itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .. import _api
from .. import _validate as v

# The ignore_index that no validated label can equal: "ignore nothing" (see _validate).
NO_IGNORE = v.NO_IGNORE


@dataclass(frozen=True)
class Semantics:
    """How one framework's softmax cross-entropy maps onto the core."""

    framework: str
    logits: str  # the name of the logits argument, for messages
    target: str  # the name of the labels argument
    weight: str  # the name of the class-weight argument
    ignore: str  # the name of the ignore-label argument
    int_logits: bool  # integer logits are promoted to float64 (True) or rejected (False)
    index_kinds: str  # numpy dtype kinds accepted for class indices ("iu", "i", ...)
    index_dtypes: tuple[str, ...] | None  # exact dtypes accepted for indices (None: any of kinds)
    mean_index: str  # what "mean" divides by for class indices (see _api.MEAN_BY)
    mean_soft: str  # ... for probability targets
    empty: str  # what a zero denominator gives (see _api.EMPTY)
    negative_weight: bool  # class weights may be negative


# The frameworks, side by side. "mass" = sum of the target's class weights over non-ignored
# positions, "valid" = count of non-ignored positions, "positions" = count of positions,
# "batch" = size of the first axis. "nan" = 0/0 gives NaN, "one" = the count is at least 1.
TABLE: dict[str, Semantics] = {
    "pytorch": Semantics(
        framework="PyTorch",
        ignore="ignore_index",
        logits="input",
        target="target",
        weight="weight",
        int_logits=False,
        index_kinds="iu",
        index_dtypes=("int64", "uint8"),  # torch: "expected target dtype to be Long or Byte"
        mean_index="mass",
        mean_soft="positions",
        empty="nan",
        negative_weight=True,
    ),
    "chainer": Semantics(
        framework="Chainer",
        ignore="ignore_label",
        logits="x",
        target="t",
        weight="class_weight",
        int_logits=False,
        index_kinds="i",  # Chainer takes dtype kind 'i' as labels; anything else as soft
        index_dtypes=None,
        mean_index="valid",  # normalize=True; normalize=False is "batch"
        mean_soft="positions",
        empty="one",
        negative_weight=True,
    ),
    "mygrad": Semantics(
        framework="mygrad",
        ignore="ignore_index",
        logits="x",
        target="y_true",
        weight="weight",
        int_logits=True,
        index_kinds="iu",
        index_dtypes=None,
        mean_index="batch",
        mean_soft="batch",
        empty="nan",
        negative_weight=False,
    ),
    "optax": Semantics(
        framework="optax",
        ignore="ignore_index",
        logits="logits",
        target="labels",
        weight="weight",
        int_logits=False,
        index_kinds="iu",
        index_dtypes=None,
        mean_index="valid",  # optax returns per-example losses: no mean is ever taken
        mean_soft="positions",
        empty="zero",
        negative_weight=False,
    ),
    "mxnet": Semantics(
        framework="MXNet",
        ignore="ignore_label",
        logits="data",
        target="label",
        weight="weight",
        int_logits=False,
        index_kinds="iu",
        index_dtypes=None,
        mean_index="valid",  # MXNet's normalisation is applied through dloss (reduction "sum")
        mean_soft="positions",
        empty="one",
        negative_weight=False,
    ),
}


class Prepared(NamedTuple):
    """The validated problem that :func:`run` handed to the core."""

    x: np.ndarray  # float logits
    axis: int  # class axis in [0, x.ndim)
    target: np.ndarray  # int64 class indices or float probabilities
    weight: np.ndarray | None  # float64 (C,)
    soft: bool
    ignore: int  # the validated ignore index (NO_IGNORE: nothing is ignored)


def logits_array(sem: Semantics, logits: Any) -> np.ndarray:
    """The logits as a float array, under the framework's dtype rule."""
    x = v.as_array(logits, sem.logits)
    if x.dtype.kind in "iu" and not sem.int_logits:
        msg = (
            f"{sem.logits} must be a floating-point array ({sem.framework} takes no integer "
            f"logits), got dtype {x.dtype}; cast it with .astype(float)"
        )
        raise TypeError(msg)
    return v.float_array(x, sem.logits)


def target_array(
    sem: Semantics, target: Any, x: np.ndarray, axis: int, ignore_index: int = NO_IGNORE
) -> np.ndarray:
    """Labels checked against ``x``: int64 class indices, or float probabilities.

    Raises TypeError for a dtype the framework does not take as labels and ValueError for a
    shape mismatch or a label outside ``[0, C)`` that is not ``ignore_index`` (a validated
    one: ``NO_IGNORE`` ignores nothing), naming the framework's argument.
    """
    t = v.as_array(target, sem.target)
    kind = t.dtype.kind
    if kind in "iu":
        if kind not in sem.index_kinds or (
            sem.index_dtypes is not None and t.dtype.name not in sem.index_dtypes
        ):
            allowed = (
                " or ".join(sem.index_dtypes)
                if sem.index_dtypes is not None
                else "a signed integer dtype"
            )
            msg = (
                f"{sem.target}: {sem.framework} takes class indices of dtype {allowed}, "
                f"got dtype {t.dtype}"
            )
            raise TypeError(msg)
        batch_shape = x.shape[:axis] + x.shape[axis + 1 :]
        if t.shape != batch_shape:
            msg = (
                f"{sem.target}: class indices must have the shape of {sem.logits} without its "
                f"class axis {axis}, i.e. {batch_shape}, got {t.shape}"
            )
            raise ValueError(msg)
        n_classes = x.shape[axis]
        bad = (t < 0) | (t >= n_classes)
        if ignore_index != NO_IGNORE:
            bad &= t != ignore_index
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            also = "" if ignore_index == NO_IGNORE else f" or {sem.ignore}={ignore_index}"
            msg = (
                f"{sem.target} must hold class indices in [0, {n_classes}){also}; got "
                f"{t[pos]} at position {pos}"
            )
            raise ValueError(msg)
        # int64, so that NO_IGNORE never meets a narrower integer dtype in the core.
        return t.astype(np.int64, copy=False)
    return v.target_array(t, x, axis, NO_IGNORE, name=sem.target)


def run(
    sem: Semantics,
    logits: Any,
    target: Any,
    *,
    axis: Any,
    want_grad: bool,
    dloss: Any = None,
    reduction: str = "mean",
    weight: Any = None,
    ignore_index: Any = None,
    label_smoothing: Any = 0.0,
    where: Any = None,
    kl: bool = False,
    mean_by: str | None = None,
) -> tuple[Any, np.ndarray | None, Prepared]:
    """Validate under ``sem`` and call the core's fused loss.

    ``ignore_index=None`` ignores nothing, as does any integer outside int64 (no label can
    equal it; see ``_validate.ignore_index``). ``mean_by`` overrides the table's denominator.
    Returns ``(loss, grad, prepared)``; ``grad`` is None unless ``want_grad``.
    """
    x = logits_array(sem, logits)
    ax = v.class_axis(axis, x.ndim, array=sem.logits)
    n_classes = v.nonempty_classes(x, ax, sem.logits)
    ignore = NO_IGNORE if ignore_index is None else v.ignore_index(ignore_index, sem.ignore)
    t = target_array(sem, target, x, ax, ignore)
    w = v.class_weight(weight, n_classes, name=sem.weight, allow_negative=sem.negative_weight)
    soft = t.dtype.kind == "f"
    if mean_by is None:
        mean_by = sem.mean_soft if soft else sem.mean_index
    loss, grad = _api.fused(
        x,
        t,
        want_grad=want_grad,
        dloss=dloss,
        inplace=False,
        backend="auto",
        axis=ax,
        weight=w,
        ignore_index=ignore,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=0.0,
        softcap=None,
        where=where,
        soft_target_loss="kl-divergence" if kl else "cross-entropy",
        mean_by=mean_by,
        empty=sem.empty,
        negative_weight=sem.negative_weight,
    )
    return loss, grad, Prepared(x, ax, t, w, soft, ignore)


def choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    """``value`` if it is one of ``allowed``, else a ValueError naming ``name``."""
    return v.choice(value, allowed, name)


def zero_times_log_zero(x_moved: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Positions where a framework's ``coef * log_softmax`` meets ``0 * -inf = NaN``.

    PyTorch, Chainer and optax multiply the log-softmax by the target (times a weight) before
    summing over the classes; a class with logit ``-inf`` (log-probability ``-inf``) and a zero
    coefficient makes that position's loss NaN, where the core (and the maths) take the term
    as 0. ``x_moved`` and ``coef`` have the classes last; returns a bool array of the batch
    shape. The gradient is not affected (it is finite in those frameworks too).
    """
    return np.any(np.isneginf(x_moved) & (coef == 0), axis=-1)


def with_nan(loss: Any, nan_pos: np.ndarray, reduction: str) -> Any:
    """``loss`` with NaN at ``nan_pos`` ("none"), or NaN if any position is NaN (reduced)."""
    if not nan_pos.any():
        return loss
    if reduction == "none":
        return np.where(nan_pos, np.nan, loss).astype(np.asarray(loss).dtype)
    return type(loss)(np.nan)
