"""``jax.custom_vjp`` wrappers over the core: the loss and the softmax family of JAX arrays.

The forward runs the core (``softmaxce._core``) on the arrays themselves, so it traces under
``jit`` and ``vmap``; the backward is the core's gradient formula (``row_grad`` from the (N,)
statistics kept by the forward, via ``_run.core_grad``), never autodiff through the
log-sum-exp. The options are static (``nondiff_argnums``): a ``LossOptions``
(``softmaxce._options``) is frozen and hashable, so ``jit`` caches one trace per option set.

On the CPU the forward may instead run the numba kernel behind XLA's typed FFI (``_ffi``),
which gives the loss and the gradient in one pass: the gradient is then the residual and the
backward only scales it.

Gradients with respect to a float (probability) target or float class weights are taken by
autodiff of the core's forward (``jax.vjp``) in the backward; under ``jit`` XLA drops that work
when they are not used.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from .. import _run
from .._core import rows
from .._core import softmax as _softmax
from .._options import LossOptions
from .._problem import Problem, problem_of


def problem(opts: LossOptions, x2: Any, t2: Any, weight: Any, where2: Any) -> Problem:
    """The core's problem of validated (N, C) rows (no checks: ``prepare`` ran before)."""
    return problem_of(x2, t2, opts, axis=1, weight=weight, where=where2)


def _floating(a: Any) -> bool:
    return a is not None and jnp.issubdtype(a.dtype, jnp.floating)


def zero_cotangent(a: Any) -> Any:
    """No gradient flows to ``a``: None (integers, bools, absent arrays) or zeros (floats)."""
    return jnp.zeros_like(a) if _floating(a) else None


def side_cotangents(opts, x2, t2, weight, where2, g):
    """Cotangents of a float target and float class weights: autodiff of the core's loss with
    the logits fixed (rows that do not count have their logits zeroed, ``for_autograd``)."""
    diff_t, diff_w = _floating(t2), _floating(weight)
    if not (diff_t or diff_w):
        return zero_cotangent(t2), zero_cotangent(weight)

    def loss_of(t, w):
        p = _run.for_autograd(
            problem(opts, x2, t if diff_t else t2, w if diff_w else weight, where2)
        )
        return _run.core_loss(p, _run.core_state(p))

    t_in = t2 if diff_t else jnp.zeros(())
    w_in = weight if diff_w else jnp.zeros(())
    _, vjp = jax.vjp(loss_of, t_in, w_in)
    ct_t, ct_w = vjp(g)
    return (ct_t if diff_t else None), (ct_w if diff_w else zero_cotangent(weight))


# --------------------------------------------------------------------------------------------
# The core in blocks of rows: every step of the row contract is row-local (the context, the
# statistics, the gradient from merged statistics); only the mean's W and the reduction sum
# over rows, and they run on the whole (N,) arrays. XLA on the CPU materialises the core's
# N x C intermediates (the exponentials, the ties, the terms of rest) in fresh buffers when
# the rows run in one piece; in blocks of ROW_BLOCK elements they stay in the cache, and the
# gradient is written once, block by block, into its one N x C buffer.
# --------------------------------------------------------------------------------------------

ROW_BLOCK = 1 << 18  # elements of logits per block of rows (1 MiB of float32)


def rows_per_block(n: int, c: int) -> int:
    """Rows per block for (n, c) logits (a static argument of ``core_rows_loss``)."""
    return max(1, min(n, ROW_BLOCK // max(c, 1)))


def _slice_rows(a: Any, lo: Any, size: int) -> Any:
    return None if a is None else jax.lax.dynamic_slice_in_dim(a, lo, size, 0)


def _block(p: Problem, ctx: rows.RowContext, lo: Any, size: int):
    """The problem and row context of rows ``[lo, lo + size)``."""
    blk = problem(p.opts, _slice_rows(p.x2, lo, size), _slice_rows(p.target, lo, size),
                  p.weight, _slice_rows(p.where, lo, size))  # fmt: skip
    return blk, rows.RowContext(_slice_rows(ctx.keep, lo, size), _slice_rows(ctx.spread, lo, size))


def _blocked_state(p: Problem, b: int) -> _run.CoreState:
    """``softmaxce._run.core_state``, its statistics computed ``b`` rows at a time."""
    n = p.x2.shape[0]
    if b >= n:
        return _run.core_state(p)
    ctx, total = _run._context(p)  # (the row context and W of the whole rows)

    def stats(lo, size):
        blk, bctx = _block(p, ctx, lo, size)
        return rows.row_stats(blk.x2, blk.target, 0, p.opts, bctx, weight=p.weight,
                              where=blk.where)  # fmt: skip

    nb, rem = divmod(n, b)
    full = jax.lax.map(lambda i: stats(i * b, b), jnp.arange(nb))
    parts = [jax.tree.map(lambda a: jnp.reshape(a, (nb * b,)), full)]
    if rem:
        parts.append(stats(nb * b, rem))
    merged = jax.tree.map(lambda *a: jnp.concatenate(a), *parts) if rem else parts[0]
    return _run.CoreState(ctx, total, rows.RowStats(*merged))


def _blocked_grad(p: Problem, b: int, state: _run.CoreState, g: Any) -> Any:
    """``softmaxce._run.core_grad``, ``b`` rows at a time into one (N, C) array."""
    n, c = p.x2.shape
    if b >= n:
        return _run.core_grad(p, state, g)
    per_row = p.opts.reduction == "none"

    def grad(lo, size):
        blk, bctx = _block(p, state.ctx, lo, size)
        st = _run.CoreState(bctx, state.total, rows.RowStats(*(
            _slice_rows(a, lo, size) for a in state.stats)))  # fmt: skip
        return _run.core_grad(blk, st, _slice_rows(g, lo, size) if per_row else g)

    nb, rem = divmod(n, b)
    out = jnp.zeros((n, c), p.x2.dtype)
    out = jax.lax.fori_loop(
        0, nb, lambda i, o: jax.lax.dynamic_update_slice_in_dim(o, grad(i * b, b), i * b, 0), out
    )
    if rem:
        out = jax.lax.dynamic_update_slice_in_dim(out, grad(nb * b, rem), nb * b, 0)
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def core_rows_loss(
    opts: LossOptions, block: int, x2: Any, t2: Any, weight: Any, where2: Any
) -> Any:
    """The loss of (N, C) rows by the core, ``block`` rows at a time: reduced, or (N,) for
    ``"none"``."""
    p = problem(opts, x2, t2, weight, where2)
    return _run.core_loss(p, _blocked_state(p, block))


def _core_fwd(opts, block, x2, t2, weight, where2):
    p = problem(opts, x2, t2, weight, where2)
    state = _blocked_state(p, block)
    return _run.core_loss(p, state), (x2, t2, weight, where2, state)


def _core_bwd(opts, block, res, g):
    x2, t2, weight, where2, state = res
    p = problem(opts, x2, t2, weight, where2)
    dx = _blocked_grad(p, block, state, g)
    ct_t, ct_w = side_cotangents(opts, x2, t2, weight, where2, g)
    return dx, ct_t, ct_w, None


core_rows_loss.defvjp(_core_fwd, _core_bwd)


# --------------------------------------------------------------------------------------------
# The softmax family: the core's forward, the core's VJPs
# --------------------------------------------------------------------------------------------


def _masked(dy: Any, where: Any) -> Any:
    return dy if where is None else jnp.where(where, dy, 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def softmax(axis: int, x: Any, where: Any) -> Any:
    return _softmax.softmax(x, axis, where)


def _softmax_fwd(axis, x, where):
    y = _softmax.softmax(x, axis, where)
    return y, (y, where)


def _softmax_bwd(axis, res, dy):
    y, where = res
    dx = _softmax.softmax_vjp(y, _masked(dy, where), axis)  # (0 where y = 0: masked entries)
    return jnp.astype(dx, y.dtype), None


softmax.defvjp(_softmax_fwd, _softmax_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def log_softmax(axis: int, x: Any, where: Any) -> Any:
    return _softmax.log_softmax(x, axis, where)


def _log_softmax_fwd(axis, x, where):
    out = _softmax.log_softmax(x, axis, where)
    return out, (out, where)


def _log_softmax_bwd(axis, res, dy):
    logp, where = res
    dx = _masked(_softmax.log_softmax_vjp(logp, _masked(dy, where), axis), where)
    return jnp.astype(dx, logp.dtype), None


log_softmax.defvjp(_log_softmax_fwd, _log_softmax_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def logsumexp(axis: int, keepdims: bool, x: Any, where: Any) -> Any:
    return _softmax.logsumexp(x, axis, keepdims, where)


def _logsumexp_fwd(axis, keepdims, x, where):
    return _softmax.logsumexp(x, axis, keepdims, where), (x, where)


def _logsumexp_bwd(axis, keepdims, res, dy):
    x, where = res
    d = dy if keepdims else jnp.expand_dims(dy, axis)
    return jnp.astype(_softmax.softmax(x, axis, where) * d, x.dtype), None


logsumexp.defvjp(_logsumexp_fwd, _logsumexp_bwd)
