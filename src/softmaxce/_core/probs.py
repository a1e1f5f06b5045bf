"""Cross-entropy on probabilities (not logits): ``L_i = -sum_c w_c y_ic log p_ic``.

For a hand-made framework that chains a softmax node and a loss node; the fused loss in
``.rows`` is the better choice to train, since it never takes the log of a probability that
may have underflowed to 0. Terms with ``y_ic = 0`` are 0 even where ``p_ic = 0``.
"""

from __future__ import annotations

from typing import Any

from ._xp import Array, acc_dtype, device, namespace, xmul
from .rows import RowContext, _allowed_weight


def _wy(xp, acc, p, target, ctx, weight):
    """``w_c y_ic`` (N, C), dense; 0 on rows that do not count."""
    if target.ndim == 2:
        wy = xp.astype(target, acc)
        if weight is not None:
            wy = wy * xp.astype(weight, acc)[None, :]
    else:
        w = _allowed_weight(xp, acc, p.shape, weight, None, device(p))
        cols = xp.arange(p.shape[1], dtype=target.dtype, device=device(target))
        wy = xp.where(cols[None, :] == target[:, None], w, 0.0)
    return xp.where(ctx.keep[:, None], wy, 0.0)


def ce_rows(probs: Array, target: Array, ctx: RowContext, *, weight: Array | None = None):
    """Per-row cross-entropy of (N, C) probabilities, in the accumulation dtype."""
    xp = namespace(probs, target, weight)
    acc = acc_dtype(xp, probs.dtype)
    p = xp.astype(probs, acc)
    return -xp.sum(xmul(xp, _wy(xp, acc, p, target, ctx, weight), xp.log(p)), axis=1)


def ce_grad(
    probs: Array, target: Array, ctx: RowContext, row_scale: Array, *, weight: Any = None
) -> Array:
    """``d L_i / d p_ic = -row_scale_i w_c y_ic / p_ic`` (0 where ``y_ic = 0``)."""
    xp = namespace(probs, target, weight)
    acc = acc_dtype(xp, probs.dtype)
    p = xp.astype(probs, acc)
    wy = _wy(xp, acc, p, target, ctx, weight)
    r = xp.astype(row_scale, acc)
    # (0 - ...: a zero term is +0 whatever the signs of 1/p and the row scale)
    return 0.0 - xmul(xp, wy, 1.0 / p) * (r if r.ndim == 0 else r[:, None])
