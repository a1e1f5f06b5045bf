"""Running a validated ``softmaxce._problem.Problem``: the one path of every fused loss.

Public functions, ops objects, compat modes and front ends all end here: the row context and
the mean's denominator from the core, the rows by the numba kernel (NumPy arrays, when
available) or the core (any array library), the framework's NaN quirks when its semantics asks
for them, then the reduction and the layout of the gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import numpy as np

from . import _dispatch
from . import _validate as v
from ._core import probs, quirks, reduce, rows
from ._core._xp import Array, device, is_jax, wide_dtype
from ._problem import Problem, as_array, readable

_ERRSTATE = {"divide": "ignore", "invalid": "ignore", "over": "ignore", "under": "ignore"}


def _dloss(p: Problem, dloss: Any, dtype: Any, *, floats: bool = False) -> Array:
    """The upstream gradient, checked against the loss's shape, as an array of ``dtype``;
    with ``floats`` (a NumPy problem whose rows share one scale) a Python float."""
    xp = p.xp
    rows_ = p.opts.reduction == "none"
    shape = p.batch_shape if rows_ else ()
    if floats and dloss is None and not rows_:
        return 1.0
    if p.numpy:
        d = v.dloss_array(None if dloss is None else as_array(xp, p.x2, dloss, "dloss"), shape)
        return float(d) if floats and not rows_ else d
    if dloss is None:
        return xp.ones(shape, dtype=dtype, device=device(p.x2))
    d = as_array(xp, p.x2, dloss, "dloss")
    if not (xp.isdtype(d.dtype, "real floating") or xp.isdtype(d.dtype, "integral")):
        msg = f"dloss must be a real array or number, got dtype {d.dtype}"  # (not cast away)
        raise TypeError(msg)
    if tuple(d.shape) != tuple(shape):
        what = "a scalar" if shape == () else f"an array of the loss's shape {shape}"
        msg = f"dloss must be {what}, got shape {tuple(d.shape)}"
        raise ValueError(msg)
    return xp.astype(d, dtype)


def _nan_rows(xp: Any, a: Array, bad: Array) -> Array:
    """``a`` (rows, or (N, C) rows) with NaN on the rows where ``bad``."""
    b = bad if a.ndim == 1 else bad[:, None]
    return xp.where(b, xp.nan, a)


def _quirky_loss(p: Problem, ctx: rows.RowContext, loss_rows: Array) -> Array:
    scope = p.opts.semantics.nan_zero_log_zero
    if not scope:
        return loss_rows
    if scope == "all" or (scope == "soft" and p.soft):
        bad = quirks.zero_log_zero_rows(p.x2, p.target, p.opts, ctx, weight=p.weight, where=p.where)
        loss_rows = _nan_rows(p.xp, loss_rows, bad)
    return loss_rows


def _counts_nothing(total: Any) -> Any:
    """``W`` is 0 or NaN: a bool for a NumPy problem's float ``W``, else an array."""
    ok = (total != 0) & (total == total)
    return (not ok) if isinstance(ok, bool) else ~ok


def _quirky_grad(p: Problem, ctx: rows.RowContext, total: Array | None, grad2: Array) -> Array:
    sem, xp = p.opts.semantics, p.xp
    if sem.nan_zero_mass_grad and total is not None and not p.soft:
        # (1 / 0) * 0: every row that counts gets NaN (the rows ignored stay 0)
        grad2 = _nan_rows(xp, grad2, ctx.keep & _counts_nothing(total))
    if sem.nan_nonfinite_row_grad:
        grad2 = _nan_rows(xp, grad2, quirks.nonfinite_rows(p.x2))
    return grad2


_FLOAT_MAX: dict[Any, float] = {}  # the largest finite value of each float dtype


def _output(p: Problem, loss: Any, numpy: bool | None = None) -> Any:
    """The loss in the logits' dtype: a NumPy scalar (or array for "none") for NumPy (whose
    reduced loss may be a Python float or a 0-d array)."""
    if not (p.numpy if numpy is None else numpy):
        out = loss if p.opts.reduction != "none" else p.xp.reshape(loss, p.batch_shape)
        return p.xp.astype(out, p.x.dtype)
    dtype = p.x.dtype
    if p.opts.reduction != "none":
        big = _FLOAT_MAX.get(dtype)
        if big is None:
            big = _FLOAT_MAX[dtype] = float(np.finfo(dtype).max)
        if not abs(loss) > big:
            return dtype.type(loss)  # (NaN passes too)
    with np.errstate(over="ignore"):  # float16 overflow to inf is the float16 answer
        if p.opts.reduction == "none":
            return np.asarray(loss).reshape(p.batch_shape).astype(dtype)
        return dtype.type(float(loss))


def run(
    p: Problem,
    *,
    want_grad: bool,
    dloss: Any = None,
    inplace: bool = False,
    backend: str = "auto",
    grad_dtype: Any = None,
) -> tuple[Any, Array | None]:
    """``(loss, gradient or None)`` of a validated problem.

    ``inplace`` (NumPy logits only, checked by the caller) writes the gradient into the
    logits and returns them; ``grad_dtype`` overrides the gradient's dtype.
    """
    numpy = p.numpy
    if is_jax(p.xp):
        return _run_jax(p, want_grad, dloss, grad_dtype)
    if not numpy or _meets_non_finite(p):  # (array-api-strict computes with NumPy underneath)
        with np.errstate(**_ERRSTATE):
            return _run(p, numpy, want_grad, dloss, inplace, backend, grad_dtype)
    return _run(p, numpy, want_grad, dloss, inplace, backend, grad_dtype)


class _JaxStatic(NamedTuple):
    """What a JAX problem's compiled path is specialised on (besides the arrays' types)."""

    xp: Any
    axis: int
    batch_shape: tuple[int, ...]
    opts: Any
    want_grad: bool
    grad_dtype: Any


def _run_jax(p: Problem, want_grad: bool, dloss: Any, grad_dtype: Any) -> tuple[Any, Any]:
    """The one path on JAX arrays, compiled as one ``jax.jit`` computation.

    Run operation by operation, JAX compiles each of the core's ~60 operations for every new
    shape and dtype (seconds, and ~100 MB of executables, per new shape); compiled whole, it is
    one executable, and a call at a known shape one dispatch. What reads values is done before
    tracing: the weights' power-of-two scale (``_unit_weights``) and the checks of ``dloss``
    (in the loss's wide dtype, as the uncompiled path). Under a caller's own ``jax.jit`` this
    one is inlined.
    """
    if p.weight is not None:
        p = _unit_weights(p)  # (inside the trace the weights are not readable: not rescaled)
    if want_grad and dloss is not None:
        dloss = _dloss(p, dloss, wide_dtype(p.xp, p.x2.dtype))
    static = _JaxStatic(p.xp, p.axis, p.batch_shape, p.opts, want_grad, grad_dtype)
    return _jax_compiled()(static, (p.x, p.x2, p.target, p.weight, p.where, dloss))


@functools.cache
def _jax_compiled() -> Any:
    import jax

    def traced(static: _JaxStatic, arrays: tuple) -> tuple[Any, Any]:
        x, x2, target, weight, where, dloss = arrays
        p = Problem(
            xp=static.xp, x=x, axis=static.axis, x2=x2, target=target, weight=weight,
            where=where, batch_shape=static.batch_shape, opts=static.opts,
        )  # fmt: skip
        return _run(p, False, static.want_grad, dloss, False, "numpy", static.grad_dtype)

    return jax.jit(traced, static_argnums=0)


def _meets_non_finite(p: Problem) -> bool:
    """Whether NumPy steps of this problem outside the rows may meet inf or NaN (weights,
    ``where``, a probability target, a framework's NaN quirks), so that NumPy's warnings
    must be off. Index targets without them need only integer comparisons and counts; the
    rows and the sum quiet themselves (``_numpy_rows``, ``_row_sum``)."""
    sem = p.opts.semantics
    quirks = sem.nan_zero_log_zero or sem.nan_zero_mass_grad or sem.nan_nonfinite_row_grad
    return bool(quirks) or p.weight is not None or p.where is not None or p.soft


def _unit_weights(p: Problem) -> Problem:
    """A "mean" over the weight mass: the weights (and ``z_loss``) scaled by the power of two
    ``2**-e`` that puts their largest magnitude in [1, 2).

    The scale cancels exactly in such a mean (each loss row and W scale by ``2**-e``), and the
    kernels never see weights beyond the accumulation dtype's range: weights below float32's
    smallest subnormal would round to 0 while ``1 / W`` overflows (loss 0, NaN gradients).
    ``z_loss`` may then exceed the float32 range: its terms are formed in float64. With
    "sum" and "none" the losses are proportional to the weights, and nothing is scaled.
    Weights of other libraries are scaled where their values can be read without a device
    synchronisation (``softmaxce._problem.readable``: on the CPU, not traced); elsewhere
    they are used as given.
    """
    sem, w = p.opts.semantics, p.weight
    if w is None or p.opts.reduction != "mean" or sem.mean_by(p.soft) != "mass":
        return p
    if sem.empty == "one" or sem.unit_mass:  # W == 0 would become 1, or a row's loss is not
        return p  # proportional to the weights (lse - sum w q z): the scale would not cancel
    if not (p.numpy or readable(w)):
        return p
    big = p.xp.max(p.xp.abs(w))
    big = float(big.detach() if hasattr(big, "detach") else big)  # (torch: no autograd here)
    if big == 0 or not math.isfinite(big):
        return p
    e = math.frexp(big)[1] - 1
    try:
        z_loss = math.ldexp(p.opts.z_loss, -e)
    except OverflowError:  # z_loss / W beyond float64: leave everything as it is
        return p
    opts = dataclasses.replace(p.opts, z_loss=z_loss)
    if p.numpy:
        return dataclasses.replace(p, weight=np.ldexp(w, -e), opts=opts)
    half = -e // 2  # (two exact power-of-two factors: 2**-e alone may overflow a float)
    return dataclasses.replace(p, weight=w * 2.0**half * 2.0 ** (-e - half), opts=opts)


def _run(p, numpy, want_grad, dloss, inplace, backend, grad_dtype):
    """The one path; ``numpy``: W, the row scale and the reduced loss are Python floats
    (``reduce.FLOATS``) and the rows come from ``_numpy_rows``."""
    if p.weight is not None:
        p = _unit_weights(p)
    sem, masked = p.opts.semantics, p.where is not None
    if numpy and sem.core_only(p.opts, soft=p.soft, weighted=p.weight is not None, masked=masked):
        backend = "numpy"  # (a framework's rule that only the core implements)
    xp, opts, target = p.xp, p.opts, p.target
    reduction = opts.reduction
    n, c = p.x2.shape
    wide = np.float64 if numpy else wide_dtype(xp, p.x2.dtype)
    ctx = rows.row_context(p.x2, target, c, opts, p.where)
    total = None
    if reduction == "mean":
        total = reduce.denominator(
            target, p.weight, ctx, sem.mean_by(target.ndim == 2), sem.empty, p.x.shape[0], wide,
            floats=numpy,
        )  # fmt: skip
    scale = None
    if want_grad:
        d = _dloss(p, dloss, wide, floats=numpy)
        scale = reduce.row_scale(d, reduction, total, n, floats=numpy)
    row_sum = None  # the sum of the loss rows when the kernel gives it
    if numpy:
        loss_rows, grad2, row_sum = _numpy_rows(p, ctx, scale, inplace, backend, grad_dtype)
    else:
        loss_rows, grad2 = rows.fused_rows(
            p.x2, target, opts, ctx, weight=p.weight, where=p.where, row_scale=scale
        )
    if sem.nan_zero_log_zero:
        loss_rows, row_sum = _quirky_loss(p, ctx, loss_rows), None
    if numpy and reduction != "none":
        s = _row_sum(loss_rows) if row_sum is None else row_sum
        loss = reduce.finish(reduce.FLOATS, s, reduction, total)
    else:
        loss = reduce.reduce(loss_rows, reduction, total)
    loss = _output(p, loss, numpy)
    if grad2 is None:
        return loss, None
    if total is not None and not (numpy and total != 0 and total == total):
        grad2 = _zero_if_empty(p, total, grad2)  # (a NumPy W that counts: nothing to do)
    if sem.nan_zero_mass_grad or sem.nan_nonfinite_row_grad:
        grad2 = _quirky_grad(p, ctx, total, grad2)
    if numpy:
        return loss, _numpy_grad(p, grad2, inplace)
    return loss, p.to_layout(xp.astype(grad2, grad_dtype or p.x.dtype))


def _numpy_rows(p: Problem, ctx, scale, inplace, backend, grad_dtype):
    """``(loss rows, gradient or None, sum of the rows or None)`` of a NumPy problem: the
    numba kernel when the dispatcher picks it (it sums the rows in the same pass), else the
    core.
    In place, the gradient overwrites ``x2`` (a view of the logits when the classes are last,
    checked writeable and C-contiguous by the caller)."""
    x2, target, weight, where = p.x2, p.target, p.weight, p.where
    out = None
    if scale is not None:
        out = x2 if inplace else np.empty(x2.shape, dtype=grad_dtype or p.x.dtype)
    # the kernel takes x2 itself or a fresh array: only a chosen dtype needs its check
    vet = out if grad_dtype is not None else None
    kernel = _dispatch.select(
        backend, x2, target, where=where, weight=weight, out=vet, row_scale=scale
    )
    if kernel is not None:
        loss_rows, row_sum = kernel(
            x2, target, p.opts, weight=weight, where=where, row_scale=scale, out=out,
            with_total=True,
        )  # fmt: skip
        return loss_rows, out, row_sum
    rs = None if scale is None else np.asarray(scale, dtype=np.float64)  # (a float: FLOATS)
    n, c = x2.shape
    step = max(1, CORE_BLOCK // max(c, 1))
    parts = []
    with np.errstate(**_ERRSTATE):
        for r0 in range(0, max(n, 1), step):  # (one block, also for N == 0)
            r1 = min(n, r0 + step)
            block_scale = rs if rs is None or rs.ndim == 0 else rs[r0:r1]
            loss_block, g = rows.fused_rows(
                x2[r0:r1], target[r0:r1], p.opts, ctx.rows(r0, r1), weight=weight,
                where=None if where is None else where[r0:r1], row_scale=block_scale,
            )  # fmt: skip
            parts.append(loss_block)
            if out is not None:
                np.copyto(out[r0:r1], g, casting="same_kind")
    return parts[0] if len(parts) == 1 else np.concatenate(parts), out, None


# The core on NumPy runs a block of rows of at most this many logits at a time: its
# temporaries (a few per logit, in the accumulation dtype) then stay in the caches, and the
# memory beyond the gradient stays a few MB instead of several times the logits.
CORE_BLOCK = 1 << 18


def _row_sum(loss_rows: np.ndarray) -> float:
    """The sum of a NumPy problem's loss rows in float64: by the kernel package once loaded
    (no import here), else by NumPy (see ``reduce.Floats``)."""
    kernels = _dispatch.loaded()
    if kernels is None or loss_rows.dtype != np.float64 or loss_rows.ndim != 1:
        return reduce.FLOATS.total(loss_rows)
    return kernels.loss_total(loss_rows)


def _zero_if_empty(p: Problem, total: Any, grad2: Array) -> Array:
    """W == 0 (nothing counts): the gradient is exactly 0, even where the logits are NaN."""
    if p.numpy:
        if _counts_nothing(total):
            grad2[...] = 0.0  # our buffer, or the logits in place
        return grad2
    return p.xp.where(_counts_nothing(total), 0.0, grad2)


def _numpy_grad(p: Problem, grad2: np.ndarray, inplace: bool) -> np.ndarray:
    if not inplace:
        return grad2 if grad2.shape == p.x.shape and p.axis == p.x.ndim - 1 else p.to_layout(grad2)
    if not np.may_share_memory(grad2, p.x):
        np.copyto(p.x, p.to_layout(grad2))
    return p.x


def run_probs(p: Problem, *, want_grad: bool, dloss: Any = None) -> Any:
    """Cross-entropy on probabilities ``p.x``: the loss, or its gradient with ``want_grad``."""
    with np.errstate(**_ERRSTATE):
        return _run_probs(p, want_grad, dloss)


def _run_probs(p: Problem, want_grad: bool, dloss: Any) -> Any:
    if p.weight is not None:
        p = _unit_weights(p)
    xp, opts = p.xp, p.opts
    n, c = p.x2.shape
    wide = wide_dtype(xp, p.x2.dtype)
    ctx = rows.row_context(p.x2, p.target, c, opts)
    total = None
    if opts.reduction == "mean":
        total = reduce.denominator(p.target, p.weight, ctx, "mass", "zero", n, wide)
    if not want_grad:
        loss_rows = probs.ce_rows(p.x2, p.target, ctx, weight=p.weight)
        return _output(p, reduce.reduce(loss_rows, opts.reduction, total))
    scale = reduce.row_scale(_dloss(p, dloss, wide), opts.reduction, total, n)
    grad = probs.ce_grad(p.x2, p.target, ctx, scale, weight=p.weight)
    return p.to_layout(xp.astype(grad, p.x.dtype))


# --------------------------------------------------------------------------------------------
# The core path in two halves, for front ends that own their backward (an autograd Function):
# the forward keeps the per-row statistics (O(N)), the backward turns them into the gradient.
# --------------------------------------------------------------------------------------------


class CoreState(NamedTuple):
    """What the gradient of a problem needs from its forward: all (N,) or 0-d arrays."""

    ctx: rows.RowContext
    total: Array | None  # the mean's W (after the empty rule), None unless "mean"
    stats: rows.RowStats


def _context(p: Problem) -> tuple[rows.RowContext, Array | None]:
    """The row context and the mean's denominator of ``p``."""
    ctx = rows.row_context(p.x2, p.target, p.x2.shape[1], p.opts, p.where)
    if p.opts.reduction != "mean":
        return ctx, None
    sem = p.opts.semantics
    wide = wide_dtype(p.xp, p.x2.dtype)
    total = reduce.denominator(
        p.target, p.weight, ctx, sem.mean_by(p.soft), sem.empty, p.x.shape[0], wide
    )
    return ctx, total


def core_state(p: Problem) -> CoreState:
    """The statistics of every row of ``p`` by the core (one block of all the classes)."""
    ctx, total = _context(p)
    stats = rows.row_stats(p.x2, p.target, 0, p.opts, ctx, weight=p.weight, where=p.where)
    return CoreState(ctx, total, stats)


def core_loss(p: Problem, state: CoreState) -> Any:
    """The loss of ``p`` from its ``core_state`` (quirks and reduction included)."""
    loss_rows = _quirky_loss(p, state.ctx, rows.row_loss(state.stats, p.opts, state.ctx))
    return _output(p, reduce.reduce(loss_rows, p.opts.reduction, state.total))


def core_grad(p: Problem, state: CoreState, dloss: Any = None, grad_dtype: Any = None) -> Array:
    """``dloss * d loss / d logits`` of ``p`` from its ``core_state``, in the logits'
    layout; the same as ``run``'s gradient on the core."""
    n = p.x2.shape[0]
    wide = wide_dtype(p.xp, p.x2.dtype)
    scale = reduce.row_scale(_dloss(p, dloss, wide), p.opts.reduction, state.total, n)
    g = rows.row_grad(
        p.x2, p.target, 0, state.stats, scale, p.opts, state.ctx, weight=p.weight, where=p.where
    )
    if state.total is not None:
        g = _zero_if_empty(p, state.total, g)
    g = _quirky_grad(p, state.ctx, state.total, g)
    return p.to_layout(p.xp.astype(g, grad_dtype or p.x.dtype))


def for_autograd(p: Problem) -> Problem:
    """``p`` with the logits of the rows that carry no weight set to 0, for a caller that
    differentiates the core with autograd (gradients of a target or of class weights, double
    backward).

    Such rows (ignored, no class allowed, or every row when the mean's W is 0) have loss 0 and
    gradient 0 whatever their logits; but a zero upstream gradient does not stop a NaN logit
    in a backward (``0 * NaN``), so they are zeroed before the core sees them. Semantics that
    keep a framework's NaN gradients on such rows (``nan_nonfinite_row_grad``) are left alone.
    """
    if p.opts.semantics.nan_nonfinite_row_grad:
        return p
    ctx, total = _context(p)
    live = ctx.keep
    if total is not None:
        live = live & (total != 0) & (total == total)
    return dataclasses.replace(p, x2=p.xp.where(live[:, None], p.x2, 0.0))
