"""Where a framework's way of forming the loss gives NaN although the mathematics does not.

These are per-row masks, for the rows of ``softmaxce._semantics.TABLE`` that reproduce a
framework exactly; softmaxce's own semantics uses none of them. Nothing here computes a loss.
"""

from __future__ import annotations

from typing import Any

from ._xp import NEG_INF, Array, acc_dtype, namespace
from .rows import RowContext, capped


def zero_log_zero_rows(
    x: Array,
    target: Array,
    opts: Any,
    ctx: RowContext,
    *,
    weight: Array | None = None,
    where: Array | None = None,
) -> Array:
    """Rows where a framework that multiplies ``log_softmax`` by coefficients meets
    ``0 * -inf``: a zero coefficient at a class whose (capped) logit is ``-inf``.

    The coefficients are those of the framework's formula (PyTorch's, which Chainer and optax
    share for probability targets): ``w_c q'_c`` per class for a probability target ``q``
    (``q' = (1 - eps) q + eps / C``); for a class index ``t``, ``(1 - eps) w_t`` on the label's
    term and, only when ``eps > 0``, ``(eps / C) w_c`` on each class's smoothing term. Only
    allowed classes of rows that count are considered. Returns (N,) bool.
    """
    xp = namespace(x, target, weight, where)
    acc = acc_dtype(xp, x.dtype)
    dead = capped(xp, x, acc, opts.softcap) == NEG_INF
    if where is not None:
        dead = dead & where
    eps = opts.label_smoothing
    w = None if weight is None else xp.astype(weight, acc)[None, :]
    if target.ndim == 2:
        coef = (1.0 - eps) * xp.astype(target, acc)
        if eps:
            coef = coef + ctx.spread[:, None]
        if w is not None:
            coef = coef * w
        return xp.any(dead & (coef == 0), axis=1) & ctx.keep
    safe = xp.where(ctx.keep, target, xp.zeros_like(target))
    dead_t = xp.take_along_axis(dead, safe[:, None], axis=1)[:, 0]
    w_t = 1.0 if weight is None else xp.take(xp.astype(weight, acc), safe)
    bad = dead_t & ((1.0 - eps) * w_t == 0)
    if eps and w is not None:
        bad = bad | xp.any(dead & (w == 0), axis=1)
    return bad & ctx.keep


def nonfinite_rows(x: Array) -> Array:
    """Rows whose log-softmax is NaN: a NaN or ``+inf`` logit, or every logit ``-inf``."""
    xp = namespace(x)
    m = xp.max(x, axis=1)
    return ~((m > NEG_INF) & (m < -NEG_INF))
