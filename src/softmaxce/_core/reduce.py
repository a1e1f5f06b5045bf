"""From per-row losses to the reduced loss, and from the upstream gradient to per-row scales.

``"mean"`` divides by a denominator ``W`` whose definition is a choice of semantics
(``mean_by``):

* ``"mass"``: ``W = sum_i v_i sum_c w_c y_ic``, the weighted target mass before smoothing
  (``v_i`` = the row counts). Index targets and their one-hot float targets then agree, also
  with class weights.
* ``"valid"``: the number of rows that count (class weights not counted).
* ``"positions"``: the number of rows, ignored ones included.
* ``"batch"``: the size of the input's first axis.

and what ``W == 0`` gives (``empty``): ``"zero"`` (loss 0 and gradient 0, never NaN),
``"nan"`` (loss NaN, as PyTorch) or ``"one"`` (``W`` taken as 1, as Chainer and MXNet).
Everything stays on the arrays' device: no host synchronisation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._xp import Array, device, namespace, wide_dtype
from .rows import RowContext

MEAN_BY = ("mass", "valid", "positions", "batch")
EMPTY = ("zero", "nan", "one")


class Floats:
    """The namespace functions of the rules below, on Python floats: a NumPy problem reduces
    its few scalars (W, the sum of the rows, the row scale) without 0-d arrays, where each
    NumPy call costs about a microsecond (a whole fused call on 64 x 10 logits costs about
    fifteen). The rules are the same functions, given ``FLOATS`` instead of an array
    namespace. NumPy only: it reads its arrays with NumPy's reductions."""

    @staticmethod
    def where(cond: bool, a: float, b: float) -> float:
        return a if cond else b

    @staticmethod
    def total(a: Array) -> float:
        """The sum of a NumPy array, in float64 (an overflow to inf, or inf - inf, is the
        answer, not a warning)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return float(np.add.reduce(a, axis=None, dtype=np.float64))

    @staticmethod
    def count(mask: Array) -> float:
        return float(np.count_nonzero(mask))


FLOATS = Floats()


def target_mass(target: Array, weight: Array | None, ctx: RowContext, dtype: Any) -> Array:
    """Per row ``v_i * sum_c w_c y_ic`` (``y`` before smoothing), in ``dtype``."""
    xp = namespace(target, weight)
    keep = ctx.keep
    if target.ndim == 1:
        if weight is None:
            return xp.astype(keep, dtype)
        w_t = xp.take(xp.astype(weight, dtype), xp.where(keep, target, xp.zeros_like(target)))
        return xp.where(keep, w_t, 0.0)
    y = xp.astype(target, dtype)
    mass = xp.sum(y if weight is None else y * xp.astype(weight, dtype)[None, :], axis=1)
    return xp.where(keep, mass, 0.0)


def denominator(
    target: Array,
    weight: Array | None,
    ctx: RowContext,
    mean_by: str,
    empty: str,
    n_batch: int,
    dtype: Any,
    *,
    floats: bool = False,
) -> Any:
    """``W`` of the mean (a 0-d array of ``dtype``; a Python float with ``floats``, NumPy
    only), after the ``empty`` rule: 1 for ``"one"``, NaN for ``"nan"`` when it is 0;
    ``"zero"`` leaves 0 (see ``reduce``)."""
    xp = namespace(target, weight)
    if mean_by == "mass" and not (weight is None and target.ndim == 1):
        mass = target_mass(target, weight, ctx, dtype)
        total = FLOATS.total(mass) if floats else xp.sum(mass)
    elif mean_by in ("mass", "valid"):  # (index targets without weights: their mass is 1)
        # (the Array API sums no bools)
        total = FLOATS.count(ctx.keep) if floats else xp.sum(xp.astype(ctx.keep, dtype))
    else:
        count = float(target.shape[0] if mean_by == "positions" else n_batch)
        total = count if floats else xp.asarray(count, dtype=dtype, device=device(target))
    return empty_rule(FLOATS if floats else xp, total, empty)


def empty_rule(xp: Any, total: Any, empty: str) -> Any:
    """What ``W == 0`` becomes: 1 (``"one"``), NaN (``"nan"``), or itself (``"zero"``)."""
    if empty == "one":
        return xp.where(total == 0, 1.0, total)
    if empty == "nan":
        return xp.where(total == 0, math.nan, total)
    return total


def reduce(loss_rows: Array, reduction: str, total: Any, *, floats: bool = False) -> Any:
    """``"none"``: the rows; ``"sum"``; ``"mean"``: the sum over ``total`` (0 when it is 0).

    Sums are taken in float64 where the namespace has it (with ``floats``: a Python float).
    """
    if reduction == "none":
        return loss_rows
    if floats:
        return finish(FLOATS, FLOATS.total(loss_rows), reduction, total)
    xp = namespace(loss_rows)
    s = xp.sum(xp.astype(loss_rows, wide_dtype(xp, loss_rows.dtype), copy=False))
    return finish(xp, s, reduction, total)


def finish(xp: Any, s: Any, reduction: str, total: Any) -> Any:
    """The reduced loss from the sum ``s`` of the rows: ``"sum"``: ``s``; ``"mean"``: ``s /
    total``, 0 when ``total`` is 0 (see ``denominator`` for NaN and 1)."""
    if reduction == "sum":
        return s
    empty = total == 0
    return xp.where(empty, 0.0, s / xp.where(empty, 1.0, total))


def row_scale(dloss: Any, reduction: str, total: Any, n: int, *, floats: bool = False) -> Any:
    """The gradient's multipliers: ``dloss`` per row (``"none"``, shape (N,)), or one for every
    row (shape (); a Python float with ``floats``): ``dloss``, divided by ``W`` for
    ``"mean"``, 0 when ``W`` is 0 or NaN (nothing counts)."""
    xp = FLOATS if floats else namespace(dloss)
    if reduction == "none":
        return namespace(dloss).reshape(dloss, (n,))
    if reduction == "sum":
        return dloss
    ok = (total != 0) & (total == total)
    return xp.where(ok, dloss / xp.where(ok, total, 1.0), 0.0)
