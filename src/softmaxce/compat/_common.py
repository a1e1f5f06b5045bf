"""What the compat modes share: each framework's input checking, and the one way to the core.

A framework's *semantics* (what "mean" divides by, what an empty batch gives, its NaN quirks,
the few places where its loss is another function of the row statistics) is a row of
``softmaxce._semantics.TABLE``. What is here is only how a framework *checks its
arguments*: their names in error messages and the dtypes it accepts (``CHECKS``, keyed by
the same names). A compat module checks its arguments once, under these names, then
``run`` builds the options and the problem from the validated arrays and runs the core
(``softmaxce._run.run``); no module computes a softmax, a log-sum-exp or a gradient itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _run
from .. import _validate as v
from .._options import LossOptions
from .._problem import problem_of
from .._semantics import TABLE as _TABLE

# The ignore_index that no validated label can equal: "ignore nothing" (see _validate).
NO_IGNORE = v.NO_IGNORE


@dataclass(frozen=True)
class Checks:
    """How one framework names and checks its arguments (not its semantics: see TABLE)."""

    framework: str
    logits: str  # the name of the logits argument, for messages
    target: str  # the name of the labels argument
    weight: str  # the name of the class-weight argument
    ignore: str  # the name of the ignore-label argument
    int_logits: bool  # integer logits are promoted to float64 (True) or rejected (False)
    index_kinds: str  # numpy dtype kinds accepted for class indices ("iu", "i", ...)
    index_dtypes: tuple[str, ...] | None  # exact dtypes accepted for indices (None: any of kinds)


CHECKS: dict[str, Checks] = {
    "torch": Checks(
        "PyTorch",
        logits="input",
        target="target",
        weight="weight",
        ignore="ignore_index",
        int_logits=False,
        index_kinds="iu",
        index_dtypes=("int64", "uint8"),  # torch: "expected target dtype to be Long or Byte"
    ),
    # Chainer takes dtype kind 'i' as labels; anything else as soft targets.
    "chainer": Checks("Chainer", "x", "t", "class_weight", "ignore_label", False, "i", None),
    "mygrad": Checks("mygrad", "x", "y_true", "weight", "ignore_index", True, "iu", None),
    "optax": Checks("optax", "logits", "labels", "weight", "ignore_index", False, "iu", None),
    "mxnet": Checks("MXNet", "data", "label", "weight", "ignore_label", False, "iu", None),
}


def logits_array(chk: Checks, logits: Any) -> np.ndarray:
    """The logits as a float array, under the framework's dtype rule."""
    x = v.as_array(logits, chk.logits)
    if x.dtype.kind in "iu" and not chk.int_logits:
        msg = (
            f"{chk.logits} must be a floating-point array ({chk.framework} takes no integer "
            f"logits), got dtype {x.dtype}; cast it with .astype(float)"
        )
        raise TypeError(msg)
    return v.float_array(x, chk.logits)


def target_array(
    chk: Checks, target: Any, x: np.ndarray, axis: int, ignore_index: int = NO_IGNORE
) -> np.ndarray:
    """Labels checked against ``x``: class indices of a dtype the framework takes, in range
    (or ``ignore_index``), or float probabilities of ``x``'s shape; messages name the
    framework's arguments."""
    t = v.as_array(target, chk.target)
    kind = t.dtype.kind
    if kind in "iu" and (
        kind not in chk.index_kinds
        or (chk.index_dtypes is not None and t.dtype.name not in chk.index_dtypes)
    ):
        allowed = (
            " or ".join(chk.index_dtypes)
            if chk.index_dtypes is not None
            else "a signed integer dtype"
        )
        msg = (
            f"{chk.target}: {chk.framework} takes class indices of dtype {allowed}, "
            f"got dtype {t.dtype}"
        )
        raise TypeError(msg)
    return v.target_array(t, x, axis, ignore_index, name=chk.target, ignore_name=chk.ignore)


def call(
    chk: Checks,
    semantics: str,
    x: np.ndarray,
    target: Any,
    *,
    axis: int,
    weight: Any = None,
    ignore: int = NO_IGNORE,
    **run_kw: Any,
) -> tuple[Any, np.ndarray | None]:
    """Check the class axis, the target and the class weights of the float logits ``x``
    under ``chk``'s names (once), then ``run`` them under the row ``semantics``."""
    ax = v.class_axis(axis, x.ndim, array=chk.logits)
    n_classes = v.nonempty_classes(x, ax, chk.logits)
    t = target_array(chk, target, x, ax, ignore)
    allow_negative = _TABLE[semantics].negative_weight
    w = v.class_weight(weight, n_classes, name=chk.weight, allow_negative=allow_negative)
    return run(semantics, x, t, axis=ax, weight=w, ignore=ignore, **run_kw)


def run(
    semantics: str,
    x: np.ndarray,
    t: np.ndarray,
    *,
    axis: int,
    want_grad: bool,
    dloss: Any = None,
    reduction: str = "mean",
    weight: np.ndarray | None = None,
    where: np.ndarray | None = None,
    ignore: int = NO_IGNORE,
    label_smoothing: float = 0.0,
    kl: bool = False,
) -> tuple[Any, np.ndarray | None]:
    """``(loss, gradient or None)`` of *validated* arrays under the row ``semantics`` of
    ``softmaxce._semantics.TABLE``: the options built here, no second validation.

    ``axis`` in ``[0, x.ndim)``; the options already checked by the caller (``ignore`` as
    ``_validate.ignore_index`` returns it: ``NO_IGNORE`` ignores nothing).
    """
    opts = LossOptions(
        reduction=reduction,
        ignore_index=ignore,
        label_smoothing=label_smoothing,
        kl=kl,
        semantics=_TABLE[semantics],
    )
    problem = problem_of(x, t, opts, axis=axis, weight=weight, where=where)
    return _run.run(problem, want_grad=want_grad, dloss=dloss)
