r"""Vocabulary-parallel softmax cross-entropy: each device holds a block of the classes.

Inside ``jax.shard_map`` with the class axis of the logits split over the mesh axis
``axis_name`` (equal blocks, in axis order), each device reduces its block to the core's
per-row statistics (``rows.row_stats`` with the block's column offset), and ONE collective,
an ``all_gather`` of the packed statistics (with the block's share of the mean's target mass
where class weights or a probability target make it a sum over classes), gives every device
the statistics of every block; they are combined with the core's ``merge`` in axis order, so
every device computes the same loss, equal to the unsharded one up to rounding. No ``pmax``
(it has no differentiation rule) and no second collective.

The backward needs no collective: each device turns the merged statistics into the gradient
of its own block (``rows.row_grad``), a ``jax.custom_vjp``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from .._core import reduce, rows
from .._core._xp import acc_dtype, wide_dtype
from .._options import LossOptions, loss_options
from .._problem import _softcap_fits
from ._vjp import zero_cotangent


def _offset(axis_name: Any, width: int) -> Any:
    return jax.lax.axis_index(axis_name) * width


def _gather(packed: Any, axis_name: Any) -> Any:
    """Every device's ``packed`` statistics, stacked in axis order: the result is the same on
    every device, and typed so (``to="invarying"``) where JAX has it, so that the loss may be
    declared replicated (``out_specs=P()``) under ``check_vma``."""
    try:
        return jax.lax.all_gather(packed, axis_name, to="invarying")
    except TypeError:  # (older JAX: no such argument, and no replication check to satisfy)
        return jax.lax.all_gather(packed, axis_name)


def _partial_mass(t2, weight, off, width, ctx, acc):
    """This block's share of each row's target mass ``v_i sum_c w_c y_ic`` (None when the
    mass is the row count, which every device knows whole)."""
    if t2.ndim == 2:
        return reduce.target_mass(t2, weight, ctx, acc)
    if weight is None:
        return None
    hit = (t2 >= off) & (t2 < off + width)
    return reduce.target_mass(t2 - off, weight, rows.RowContext(ctx.keep & hit, None), acc)


def _forward(opts: LossOptions, axis_name: Any, x2, t2, weight):
    """``(loss, (ctx, merged statistics, total))`` of this device's block."""
    n, width = x2.shape
    acc = acc_dtype(jnp, x2.dtype)
    n_shards = jax.lax.psum(1, axis_name)  # (a Python int: the axis size)
    ctx = rows.row_context(x2, t2, width * n_shards, opts)
    off = _offset(axis_name, width)
    mine = rows.row_stats(x2, t2, off, opts, ctx, weight=weight)
    mass = _partial_mass(t2, weight, off, width, ctx, acc)
    packed = jnp.stack([*mine, *(() if mass is None else (mass,))])
    every = _gather(packed, axis_name)  # (shards, 6 or 7, N): the one collective
    merged = rows.RowStats(*every[0, :6])
    for k in range(1, every.shape[0]):
        merged = rows.merge(merged, rows.RowStats(*every[k, :6]))
    total = None
    if opts.reduction == "mean":
        wide = wide_dtype(jnp, acc)
        sem = opts.semantics
        if mass is None:
            total = reduce.denominator(t2, None, ctx, "mass", sem.empty, n, wide)
        else:
            total = reduce.empty_rule(jnp, jnp.sum(every[:, 6].astype(wide)), sem.empty)
    loss = reduce.reduce(rows.row_loss(merged, opts, ctx), opts.reduction, total)
    return jnp.astype(loss, x2.dtype), (ctx, merged, total)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _sharded_loss(opts, axis_name, x2, t2, weight):
    return _forward(opts, axis_name, x2, t2, weight)[0]


def _fwd(opts, axis_name, x2, t2, weight):
    loss, state = _forward(opts, axis_name, x2, t2, weight)
    return loss, (x2, t2, weight, state)


def _bwd(opts, axis_name, res, g):
    x2, t2, weight, (ctx, merged, total) = res
    n, width = x2.shape
    wide = wide_dtype(jnp, acc_dtype(jnp, x2.dtype))
    scale = reduce.row_scale(jnp.astype(g, wide), opts.reduction, total, n)
    off = _offset(axis_name, width)
    grad = rows.row_grad(x2, t2, off, merged, scale, opts, ctx, weight=weight)
    if total is not None:
        grad = jnp.where((total != 0) & (total == total), grad, 0.0)
    return jnp.astype(grad, x2.dtype), zero_cotangent(t2), zero_cotangent(weight)


_sharded_loss.defvjp(_fwd, _bwd)


def vocab_parallel_cross_entropy(
    logits_shard: Any,
    target: Any,
    /,
    *,
    axis_name: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    soft_target_loss: str = "cross-entropy",
) -> jax.Array:
    r"""The softmax cross-entropy of logits whose classes are split over ``axis_name``.

    Call it inside ``jax.shard_map``: ``logits_shard`` is this device's ``(..., C / P)``
    block of the classes (the last axis; block ``k`` holds classes ``[k C/P, (k+1) C/P)``,
    the layout ``P(None, axis_name)`` gives), ``target`` the *global* class indices
    ``(...)`` (the same on every device) or this device's columns of a probability target,
    ``weight`` this device's ``(C / P,)`` class weights. Returns the loss of the whole rows,
    the same on every device (declare it replicated: ``out_specs=P()``), equal to
    ``softmaxce.jax.softmax_cross_entropy`` of the gathered logits. Options as there;
    ``where`` and ``axis`` are not supported. The gradient with respect to the logits is the
    core's, block by block, with no collective; no gradient flows to the target or the
    weights. Labels are not range-checked (the values are traced).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jax.sharding import PartitionSpec as P
    >>> import softmaxce.jax as scj
    >>> mesh = jax.make_mesh((1,), ("v",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> f = jax.shard_map(
    ...     lambda x, t: scj.vocab_parallel_cross_entropy(x, t, axis_name="v"),
    ...     mesh=mesh, in_specs=(P(None, "v"), P()), out_specs=P())
    >>> x = jnp.array([[1.0, 2.0, 3.0, 4.0]]); t = jnp.array([3])
    >>> bool(jnp.allclose(f(x, t), scj.softmax_cross_entropy(x, t)))
    True
    """
    opts = loss_options(
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        soft_target_loss=soft_target_loss,
    )
    from . import as_jax  # (the package's converter)

    x = as_jax(logits_shard)
    if x.ndim < 1 or not jnp.issubdtype(x.dtype, jnp.floating):
        msg = f"logits_shard must be a float array with classes last, got {x.dtype} {x.shape}"
        raise TypeError(msg)
    width = x.shape[-1]
    t = as_jax(target)
    soft = jnp.issubdtype(t.dtype, jnp.floating)
    want = tuple(x.shape) if soft else tuple(x.shape[:-1])
    if tuple(t.shape) != want:
        kind = "a probability target block" if soft else "integer class indices"
        msg = f"target: {kind} must have shape {want}, got {tuple(t.shape)}"
        raise ValueError(msg)
    w = as_jax(weight)
    if w is not None and tuple(w.shape) != (width,):
        msg = f"weight must have this block's shape ({width},), got shape {tuple(w.shape)}"
        raise ValueError(msg)
    _softcap_fits(jnp, x.dtype, opts.softcap)
    x2 = jnp.reshape(x, (-1, width))
    t2 = jnp.reshape(t, (-1, width)) if soft else jnp.reshape(t, (-1,))
    loss = _sharded_loss(opts, axis_name, x2, t2, w)
    return loss if opts.reduction != "none" else jnp.reshape(loss, x.shape[:-1])
