r"""Fused linear + softmax cross-entropy for JAX: the loss of ``input @ W.T + b`` in blocks of
classes, so that the ``N x V`` logits never exist.

The classes are cut into blocks of ``chunk_size``; ``lax.scan`` runs over the blocks: the
block's logits by one matrix product (float32 accumulation), the core's ``row_stats`` of the
block, merged into the running statistics with the core's ``merge``. The loss comes from the
merged statistics (``row_loss``). The backward (a ``jax.custom_vjp``) scans the blocks again:
the block's logits, the core's ``row_grad`` from the merged statistics, then
``dinput += g @ W_block`` and ``dW_block = g.T @ input``. Live memory: ``N x chunk_size``
logits and their gradient, never ``N x V``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _validate as v
from .._core import reduce, rows
from .._core._xp import acc_dtype, wide_dtype
from .._options import LossOptions, loss_options
from .._problem import _softcap_fits, readable
from ._vjp import zero_cotangent

# Default block of classes: N x chunk logits per step (4096 x 2048 float32 = 32 MB).
DEFAULT_CHUNK = 2048


class _Static(NamedTuple):
    opts: LossOptions
    chunk: int


def _block_logits(h, w_all, b_all, start, width, acc):
    wb = jax.lax.dynamic_slice_in_dim(w_all, start, width, 0)
    z = jnp.matmul(h, wb.T, preferred_element_type=acc)
    if b_all is not None:
        z = z + jax.lax.dynamic_slice_in_dim(b_all, start, width, 0).astype(acc)
    return z, wb


def _block_of(a, start, width, axis):
    return None if a is None else jax.lax.dynamic_slice_in_dim(a, start, width, axis)


def _spans(v_total: int, chunk: int) -> list[tuple[int, int, int]]:
    """``(first start, block width, count)`` runs covering ``[0, V)``: full blocks, then the
    remainder (a second, shorter run: ``lax.scan`` needs one shape per run)."""
    full = v_total // chunk
    out = [(0, chunk, full)] if full else []
    if v_total - full * chunk:
        out.append((full * chunk, v_total - full * chunk, 1))
    return out


def _target_block(t2, start, width):
    return t2 if t2.ndim == 1 else _block_of(t2, start, width, 1)


def _forward(st: _Static, h2, w_all, b_all, t2, weight):
    opts = st.opts
    n = h2.shape[0]
    acc = acc_dtype(jnp, h2.dtype)
    v_total = w_all.shape[0]
    ctx = rows.row_context(jnp.zeros((n, 0), acc), t2, v_total, opts)
    merged = rows.row_stats(jnp.zeros((n, 0), acc), t2, 0, opts, ctx)  # the empty block
    for first, width, count in _spans(v_total, st.chunk):

        def step(carry, start, width=width):
            z, _ = _block_logits(h2, w_all, b_all, start, width, acc)
            s = rows.row_stats(
                z, _target_block(t2, start, width), start, opts, ctx,
                weight=_block_of(weight, start, width, 0),
            )  # fmt: skip
            return rows.merge(carry, s), None

        starts = first + width * jnp.arange(count)
        merged, _ = jax.lax.scan(step, merged, starts)
    total = None
    if opts.reduction == "mean":
        sem = opts.semantics
        wide = wide_dtype(jnp, acc)
        total = reduce.denominator(t2, weight, ctx, sem.mean_by(t2.ndim == 2), sem.empty, n, wide)
    loss = reduce.reduce(rows.row_loss(merged, opts, ctx), opts.reduction, total)
    return jnp.astype(loss, h2.dtype), (ctx, merged, total)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _linear_loss(st, h2, w_all, b_all, t2, weight):
    return _forward(st, h2, w_all, b_all, t2, weight)[0]


def _fwd(st, h2, w_all, b_all, t2, weight):
    loss, state = _forward(st, h2, w_all, b_all, t2, weight)
    return loss, (h2, w_all, b_all, t2, weight, state)


def _bwd(st, res, g):
    h2, w_all, b_all, t2, weight, (ctx, merged, total) = res
    opts = st.opts
    n, d = h2.shape
    acc = acc_dtype(jnp, h2.dtype)
    scale = reduce.row_scale(jnp.astype(g, wide_dtype(jnp, acc)), opts.reduction, total, n)
    if total is not None:
        scale = jnp.where((total != 0) & (total == total), scale, 0.0)
    dh = jnp.zeros((n, d), acc)
    dws, dbs = [], []
    for first, width, count in _spans(w_all.shape[0], st.chunk):

        def step(dh, start, width=width):
            z, wb = _block_logits(h2, w_all, b_all, start, width, acc)
            gz = rows.row_grad(
                z, _target_block(t2, start, width), start, merged, scale, opts, ctx,
                weight=_block_of(weight, start, width, 0),
            )  # fmt: skip
            dh = dh + jnp.matmul(gz.astype(wb.dtype), wb, preferred_element_type=acc)
            dwb = jnp.matmul(gz.T.astype(h2.dtype), h2, preferred_element_type=acc)
            return dh, (dwb, jnp.sum(gz, axis=0))

        starts = first + width * jnp.arange(count)
        dh, (dwb, dbb) = jax.lax.scan(step, dh, starts)
        dws.append(jnp.reshape(dwb, (count * width, d)))
        dbs.append(jnp.reshape(dbb, (count * width,)))
    dw = jnp.concatenate(dws).astype(w_all.dtype)
    db = None if b_all is None else jnp.concatenate(dbs).astype(b_all.dtype)
    return dh.astype(h2.dtype), dw, db, zero_cotangent(t2), zero_cotangent(weight)


_linear_loss.defvjp(_fwd, _bwd)


def linear_cross_entropy(
    input: Any,
    linear_weight: Any,
    target: Any,
    /,
    *,
    linear_bias: Any = None,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    soft_target_loss: str = "cross-entropy",
    chunk_size: int | None = None,
) -> jax.Array:
    r"""``softmax_cross_entropy(input @ linear_weight.T + linear_bias, target, ...)`` without
    the logits: the classes in blocks of ``chunk_size`` (default 2048).

    ``input`` ``(..., D)``, ``linear_weight`` ``(V, D)`` (the ``torch.nn.Linear`` layout),
    ``linear_bias`` ``(V,)``, ``target`` integer ``(...)`` or float ``(..., V)``. Every
    option of ``softmaxce.jax.softmax_cross_entropy`` but ``where`` and ``axis``.
    Differentiable (``jax.custom_vjp``) with respect to ``input``, ``linear_weight`` and
    ``linear_bias``: the backward recomputes each block's logits and applies the core's
    gradient; no gradient flows to the target or the class weights (their cotangent is 0).
    The matrix products accumulate in float32 (float64 for float64 input).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, softmaxce.jax as scj
    >>> h = jnp.array([[1.0, 0.0], [0.0, 1.0]]); w = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> t = jnp.array([2, 0])
    >>> a = scj.linear_cross_entropy(h, w, t, chunk_size=2)
    >>> bool(jnp.allclose(a, scj.softmax_cross_entropy(h @ w.T, t)))
    True
    """
    from . import as_jax

    opts = loss_options(
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        soft_target_loss=soft_target_loss,
    )
    h, w_all = as_jax(input), as_jax(linear_weight)
    b_all, t, cw = as_jax(linear_bias), as_jax(target), as_jax(weight)
    _check(h, w_all, b_all, t, cw)
    _softcap_fits(jnp, h.dtype, opts.softcap)
    check_values(t, cw, w_all.shape[0], opts)
    v_total = w_all.shape[0]
    chunk = DEFAULT_CHUNK if chunk_size is None else int(chunk_size)
    if chunk < 1:
        msg = f"chunk_size must be a positive integer, got {chunk_size!r}"
        raise ValueError(msg)
    h2 = jnp.reshape(h, (-1, h.shape[-1]))
    soft = jnp.issubdtype(t.dtype, jnp.floating)
    t2 = jnp.reshape(t, (-1, v_total)) if soft else jnp.reshape(t, (-1,))
    loss = _linear_loss(_Static(opts, min(chunk, v_total)), h2, w_all, b_all, t2, cw)
    return loss if opts.reduction != "none" else jnp.reshape(loss, h.shape[:-1])


def check_values(t: Any, cw: Any, n_classes: int, opts: LossOptions) -> None:
    """The checks that need the values (labels in range, class weights finite and allowed),
    where the arrays are concrete (eager calls; under ``jit`` they cannot run)."""
    if not jnp.issubdtype(t.dtype, jnp.floating) and readable(t):
        v.check_labels(v.to_host(t), n_classes, opts.ignore_index, "target")
    if cw is not None and readable(cw):
        host = v.to_host(cw).astype(np.float64)
        v.class_weight(
            host, n_classes, name="weight", allow_negative=opts.semantics.negative_weight
        )


def _check(h, w_all, b_all, t, cw) -> None:
    """Shapes and dtypes, with messages naming the argument."""
    if h.ndim < 1 or not jnp.issubdtype(h.dtype, jnp.floating):
        msg = f"input must be a float array (..., D), got {h.dtype} with shape {h.shape}"
        raise TypeError(msg)
    if w_all.ndim != 2 or w_all.shape[1] != h.shape[-1] or w_all.shape[0] == 0:
        msg = f"linear_weight must have shape (V, {h.shape[-1]}) with V >= 1, got {w_all.shape}"
        raise ValueError(msg)
    v_total = w_all.shape[0]
    if b_all is not None and tuple(b_all.shape) != (v_total,):
        msg = f"linear_bias must have shape ({v_total},), got {tuple(b_all.shape)}"
        raise ValueError(msg)
    soft = jnp.issubdtype(t.dtype, jnp.floating)
    want = (*h.shape[:-1], v_total) if soft else tuple(h.shape[:-1])
    if tuple(t.shape) != want:
        msg = f"target must have shape {want}, got {tuple(t.shape)}"
        raise ValueError(msg)
    if cw is not None and tuple(cw.shape) != (v_total,):
        msg = f"weight must have shape ({v_total},) (one per class), got {tuple(cw.shape)}"
        raise ValueError(msg)
