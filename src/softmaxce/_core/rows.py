r"""Softmax cross-entropy of rows, split into mergeable statistics: the core's row contract.

The loss of row ``i`` (classes ``c``; ``z = softcap * tanh(x / softcap)`` or ``x``; ``A_i`` the
allowed classes; ``q`` the target after smoothing, ``w`` the class weights, ``zeta`` the
z-loss) is

.. math:: L_i = \sum_c w_c q_{ic} (\mathrm{lse}_i - z_{ic}) + \zeta\,\mathrm{lse}_i^2
          \;[+ \textstyle\sum_c w_c q_{ic} \log q_{ic}]

It needs, besides ``lse``, only sums over the classes. So a block of classes
``[col_offset, col_offset + width)`` is reduced to per-row statistics (``RowStats``), two
blocks' statistics combine with ``merge`` (associative and commutative, exact up to
rounding), ``row_loss`` turns merged statistics into the loss, and ``row_grad`` gives
the gradient of one block from them. One block holding every class is the plain fused loss;
blocks of a vocabulary are what a chunked linear + cross-entropy and a vocabulary-parallel loss
compute; the numba and Triton kernels implement the same four steps.

Statistics of a block (acc dtype, shape (N,)):

* ``m``: the maximum of the allowed ``z`` (``-inf`` when none); ``ref(m)`` is ``m``, or 0
  where ``m = -inf`` (see ``.softmax``).
* ``ties``, ``rest``: ``sum_c exp(z_c - ref(m))`` split into the entries equal to the maximum
  (each exactly 1) and the others, so that ``log s = log1p((ties - 1) + rest)``.
* ``mass`` ``S = sum_c w_c q_c`` and ``tz`` ``T = sum_c w_c q_c (z_c - ref(m))``: the loss is
  ``S log s - T``, with no cancellation of large logits (``lse - z_c`` is never formed).
  Terms with ``w_c q_c = 0`` are 0 even where ``z_c = -inf``.
* ``kl`` ``K = sum_c w_c q_c log q_c`` (with ``soft_target_loss="kl-divergence"``; else 0).

Merging rescales to the larger maximum ``m = max(m_a, m_b)``: the other block's terms are
multiplied by ``exp(ref(m_b) - ref(m))`` (its ties join ``rest``), and ``T`` moves with its
reference, ``T_b + S_b (ref(m_b) - ref(m))``. ``S`` and ``K`` add.

The smoothing mass ``eps`` spreads over the allowed classes of the *whole* row, so the spread
``eps / |A_i|`` is not a statistic of a block: it comes, with the rows that count (not ignored,
some class allowed), from ``row_context``, computed once per problem.

Gradient of ``L_i`` with respect to ``z_ic`` (exact also for targets that do not sum to 1):
``(S + 2 zeta lse) p_c - w_c q_c``. It is formed as ``(S + 2 zeta lse - w_c q_c) p_c
+ w_c q_c (p_c - 1)`` with ``p_c - 1 = -((ties - e_c) + rest) / s``, which is exact where
``p_c`` is close to 1 (``x = [40, 0, 0]`` with label 0 gives -8.5e-18, not 0). With a softcap
the chain rule multiplies by ``1 - tanh(x / cap)**2``, formed as ``4 e / (1 + e)**2`` with
``e = exp(-2 |x / cap|)``, which does not cancel for large ``|x / cap|``.

Three flags of ``opts.semantics`` (``softmaxce._semantics``) make the loss another function
of the same statistics, so blocks and ``merge`` are unchanged; each is off in softmaxce's
own semantics:

* ``kl_eps``: ``K = sum_c w_c q_c log(q_c + kl_eps)`` (Chainer's ``log(t + 1e-7)``).
* ``unit_mass``: ``S`` is taken as 1, ``L_i = lse_i - sum_c w_c q_c z_c = S log s - T
  + (1 - S) ref(m)``, gradient ``p_c - w_c q_c`` (MXNet's backward, right only for targets
  that sum to 1).
* ``label_keeps_logit``: an index label outside ``where`` enters ``T`` with its own (capped)
  logit, and its gradient column ``-w_t q_t`` is kept (optax's integer labels); otherwise its
  probability is 0 and the loss ``+inf``.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

from ._xp import NEG_INF, Array, acc_dtype, device, namespace, wide_dtype, xmul
from .softmax import log_sum, max_ref, split_sum


class RowStats(NamedTuple):
    """Per-row statistics of a block of classes (see the module docstring)."""

    m: Array
    ties: Array
    rest: Array
    mass: Array
    tz: Array
    kl: Array


class RowContext(NamedTuple):
    """What every block of a problem shares: which rows count, and the smoothing spread."""

    keep: Array  # (N,) bool: not ignored and with at least one allowed class
    spread: Array | None  # (N,) eps / |A_i| on kept rows, 0 elsewhere; None when eps == 0

    def rows(self, r0: int, r1: int) -> RowContext:
        """The context of the rows ``[r0, r1)`` (a block of rows of the problem)."""
        spread = None if self.spread is None else self.spread[r0:r1]
        return RowContext(self.keep[r0:r1], spread)


def row_context(
    x: Array, target: Array, n_classes: int, opts: Any, where: Array | None = None
) -> RowContext:
    """The ``RowContext`` of (N, C) logits ``x`` (or a block of them: only its dtype,
    namespace and N are used) with ``n_classes`` classes in all and the full ``where``."""
    xp = namespace(x, target, where)
    n = x.shape[0]
    index = target.ndim == 1
    if where is None:
        n_allowed = float(n_classes)
        if index:
            keep = target != opts.ignore_index
        else:
            keep = xp.ones((n,), dtype=xp.bool, device=device(x))
    else:
        counts = xp.sum(xp.astype(where, acc_dtype(xp, x.dtype)), axis=1)
        keep = counts > 0
        n_allowed = xp.where(keep, counts, 1.0)
        if index:
            keep = keep & (target != opts.ignore_index)
    eps = opts.label_smoothing
    if not eps:
        return RowContext(keep, None)
    share = xp.full((n,), eps, dtype=acc_dtype(xp, x.dtype), device=device(x)) / n_allowed
    return RowContext(keep, xp.where(keep, share, 0.0))


def capped(xp: Any, x: Array, acc: Any, softcap: float | None) -> Array:
    """``z = softcap * tanh(x / softcap)`` (or ``x``) in the accumulation dtype."""
    z = xp.astype(x, acc)
    if softcap is None:
        return z
    return softcap * xp.tanh(z / softcap)


def cap_slope(xp: Any, x: Array, acc: Any, softcap: float) -> Array:
    """``dz/dx = 1 - tanh(u)**2 = 4 e / (1 + e)**2``, ``u = x / softcap``, ``e = exp(-2|u|)``."""
    e = xp.exp(-2.0 * xp.abs(xp.astype(x, acc) / softcap))
    return 4.0 * e / ((1.0 + e) * (1.0 + e))


def _masked_z(xp, x, acc, opts, where):
    z = capped(xp, x, acc, opts.softcap)
    return z if where is None else xp.where(where, z, NEG_INF)


def _identity(xp: Any, n: int, acc: Any, device: Any) -> RowStats:
    """The statistics of an empty block: the neutral element of ``merge``."""
    zero = xp.zeros((n,), dtype=acc, device=device)
    return RowStats(xp.full((n,), NEG_INF, dtype=acc, device=device), zero, zero, zero, zero, zero)


def _gold(xp, target, col_offset, width, opts, ctx):
    """Index targets: (in-block column of the label, whether the label is in this block)."""
    t = target
    hit = (t >= col_offset) & (t < col_offset + width) & ctx.keep
    return xp.where(hit, t - col_offset, xp.zeros_like(t)), hit


def _take(xp, a, cols):
    """``a[i, cols[i]]`` for every row ``i``."""
    return xp.take_along_axis(a, cols[:, None], axis=1)[:, 0]


def _allowed_weight(xp, acc, shape, weight, where, device):
    """``w_c`` on allowed classes, 0 elsewhere, broadcast to the block's ``shape``."""
    w = xp.ones(shape[1:], dtype=acc, device=device) if weight is None else xp.astype(weight, acc)
    w = xp.broadcast_to(w[None, :], shape)
    return w if where is None else xp.where(where, w, 0.0)


def _log_q(xp: Any, q: Array, opts: Any) -> Array:
    """``log(q + kl_eps)``, the log of the K term: ``kl_eps`` is 0 but for a framework that
    offsets it (semantics flag ``kl_eps``: Chainer's ``log(t + 1e-7)``)."""
    kl_eps = opts.semantics.kl_eps
    return xp.log(q + kl_eps) if kl_eps else xp.log(q)


def _label_d(xp, acc, x, d, m, local, opts, where):
    """``z_t - ref(m)`` at each row's label ``local``: from the masked ``d``, or (semantics
    flag ``label_keeps_logit``, optax) from the label's own logit even outside ``where``."""
    if where is None or not opts.semantics.label_keeps_logit:
        return _take(xp, d, local)
    return capped(xp, _take(xp, x, local), acc, opts.softcap) - max_ref(xp, m)


def _index_sums(xp, acc, x, d, m, target, col_offset, opts, ctx, weight, where):
    """``(S, T, K)`` of a block for class-index targets, without a dense one-hot."""
    eps = opts.label_smoothing
    local, hit = _gold(xp, target, col_offset, d.shape[1], opts, ctx)
    if weight is None:
        w_t = xp.ones(local.shape, dtype=acc, device=device(d))
    else:
        w_t = xp.take(xp.astype(weight, acc), local)
    mass = xp.where(hit, (1.0 - eps) * w_t, 0.0)
    tz = xmul(xp, mass, _label_d(xp, acc, x, d, m, local, opts, where))
    kl = xp.zeros_like(mass)
    if eps:
        sp = ctx.spread
        w_allowed = _allowed_weight(xp, acc, d.shape, weight, where, device(d))
        sum_w = xp.sum(w_allowed, axis=1)
        mass = mass + sp * sum_w
        tz = tz + xmul(xp, sp, xp.sum(xmul(xp, w_allowed, d), axis=1))
    if opts.kl:
        t_allowed = hit if where is None else hit & _take(xp, where, local)
        sp = ctx.spread if eps else xp.zeros_like(mass)
        q_t = (1.0 - eps) + xp.where(t_allowed, sp, 0.0)
        kl = xmul(xp, xp.where(hit, w_t * q_t, 0.0), _log_q(xp, q_t, opts))
        if eps:
            other_w = sum_w - xp.where(t_allowed, w_t, 0.0)
            kl = kl + xmul(xp, sp * other_w, _log_q(xp, sp, opts))
    return mass, tz, kl


def _soft_q(xp, acc, y, opts, ctx, where):
    """The smoothed soft target block ``q = (1 - eps) y + eps / |A_i|`` on allowed classes."""
    q = xp.astype(y, acc)
    eps = opts.label_smoothing
    if not eps:
        return q
    sp = ctx.spread[:, None]
    return (1.0 - eps) * q + (sp if where is None else xp.where(where, sp, 0.0))


def _soft_wq(xp, acc, y, opts, ctx, weight, where):
    q = _soft_q(xp, acc, y, opts, ctx, where)
    wq = q if weight is None else q * xp.astype(weight, acc)[None, :]
    return q, wq


def _soft_sums(xp, acc, d, y, opts, ctx, weight, where):
    """``(S, T, K)`` of a block for probability targets."""
    q, wq = _soft_wq(xp, acc, y, opts, ctx, weight, where)
    mass = xp.sum(wq, axis=1)
    tz = xp.sum(xmul(xp, wq, d), axis=1)
    kl = xp.sum(xmul(xp, wq, _log_q(xp, q, opts)), axis=1) if opts.kl else xp.zeros_like(mass)
    return mass, tz, kl


def row_stats(
    x: Array,
    target: Array,
    col_offset: int,
    opts: Any,
    ctx: RowContext,
    *,
    weight: Array | None = None,
    where: Array | None = None,
) -> RowStats:
    """Statistics of the block ``x`` (N, width) of classes ``[col_offset, col_offset + width)``.

    ``target``: (N,) global class indices, or this block's (N, width) slice of a probability
    target; ``weight``, ``where``: this block's slices (or None); ``ctx`` from
    ``row_context``. ``opts`` supplies ``ignore_index``, ``label_smoothing``,
    ``softcap`` and ``kl``.
    """
    xp = namespace(x, target, weight, where)
    acc = acc_dtype(xp, x.dtype)
    n, width = x.shape
    if width == 0:
        return _identity(xp, n, acc, device(x))
    z = _masked_z(xp, x, acc, opts, where)
    m = xp.max(z, axis=1)
    d = z - max_ref(xp, m)[:, None]
    _, ties, rest = split_sum(xp, d, 1)
    if target.ndim == 1:
        sums = _index_sums(xp, acc, x, d, m, target, col_offset, opts, ctx, weight, where)
    else:
        sums = _soft_sums(xp, acc, d, target, opts, ctx, weight, where)
    return RowStats(m, ties[:, 0], rest[:, 0], *sums)


def merge(a: RowStats, b: RowStats) -> RowStats:
    """The statistics of two disjoint blocks of the same rows, combined.

    Commutative, and associative up to rounding: any split of the classes into blocks, merged
    in any order, gives the statistics of the whole row.
    """
    xp = namespace(a.m, b.m)
    m = xp.maximum(a.m, b.m)
    ref = max_ref(xp, m)
    ref_a, ref_b = max_ref(xp, a.m), max_ref(xp, b.m)
    # a side with no terms (m = -inf) is scaled by 1, not exp(0 - ref): inf below ref = -709,
    # and inf * 0 = NaN would poison the other side's row
    scale_a = xp.exp(xp.where(a.m == NEG_INF, 0.0, ref_a - ref))
    scale_b = xp.exp(xp.where(b.m == NEG_INF, 0.0, ref_b - ref))
    top_a, top_b = a.m == m, b.m == m
    ties = xp.where(top_a, a.ties, 0.0) + xp.where(top_b, b.ties, 0.0)
    rest = (a.rest + xp.where(top_a, 0.0, a.ties)) * scale_a + (
        b.rest + xp.where(top_b, 0.0, b.ties)
    ) * scale_b
    tz = a.tz + xmul(xp, a.mass, ref_a - ref) + (b.tz + xmul(xp, b.mass, ref_b - ref))
    return RowStats(m, ties, rest, a.mass + b.mass, tz, a.kl + b.kl)


def lse(stats: RowStats) -> Array:
    """``logsumexp`` of the allowed ``z`` of each row (``-inf`` for a row with none)."""
    xp = namespace(stats.m)
    return max_ref(xp, stats.m) + log_sum(xp, stats.ties, stats.rest)


def row_loss(stats: RowStats, opts: Any, ctx: RowContext) -> Array:
    """Per-row losses ``S log s - T (+ K) + zeta lse**2`` from merged statistics; 0 on rows
    that do not count (ignored, or no allowed class), whatever their logits. In float64
    where the array library has it (the per-row terms are in the accumulation dtype)."""
    xp = namespace(stats.m)
    log_s = log_sum(xp, stats.ties, stats.rest)
    if opts.semantics.unit_mass:  # S taken as 1 (MXNet): lse - sum w q z = L + (1 - S) lse
        loss = log_s - stats.tz + (1.0 - stats.mass) * max_ref(xp, stats.m)
    else:
        loss = stats.mass * log_s - stats.tz  # (a NaN logit makes log_s NaN: NaN, whatever S)
    if opts.kl:
        loss = loss + stats.kl
    loss = xp.astype(loss, wide_dtype(xp, loss.dtype))
    if opts.z_loss:
        loss = loss + _z_term(xp, stats, opts.z_loss, loss.dtype)
    return xp.where(ctx.keep, loss, 0.0)


def _z_term(xp: Any, stats: RowStats, z_loss: float, dtype: Any) -> Array:
    """``z_loss * lse**2`` in ``dtype`` (float64 where available): a z_loss beyond float32
    times a zero ``lse`` is 0, not ``inf * 0``."""
    lse_w = xp.astype(lse(stats), dtype)
    return z_loss * (lse_w * lse_w)


def _label_cols(xp, target, col_offset, width, opts, ctx):
    """(N, width) bool: the label's column of each row that counts, in this block."""
    local, hit = _gold(xp, target, col_offset, width, opts, ctx)
    cols = xp.arange(width, dtype=local.dtype, device=device(target))
    return (cols[None, :] == local[:, None]) & hit[:, None]


def _target_weight_block(xp, acc, shape, target, col_offset, opts, ctx, weight, where):
    """``w_c q_c`` of the block, dense (N, width)."""
    if target.ndim == 2:
        return _soft_wq(xp, acc, target, opts, ctx, weight, where)[1]
    eps = opts.label_smoothing
    onehot = _label_cols(xp, target, col_offset, shape[1], opts, ctx)
    w = _allowed_weight(xp, acc, shape, weight, None, device(target))
    wq = xp.where(onehot, (1.0 - eps) * w, 0.0)
    if eps:
        w_allowed = w if where is None else xp.where(where, w, 0.0)
        wq = wq + ctx.spread[:, None] * w_allowed
    return wq


def row_grad(
    x: Array,
    target: Array,
    col_offset: int,
    stats: RowStats,
    row_scale: Array,
    opts: Any,
    ctx: RowContext,
    *,
    weight: Array | None = None,
    where: Array | None = None,
) -> Array:
    """``row_scale_i * dL_i / dx_ic`` for the block ``x`` (N, width), from the *merged*
    statistics of the whole rows; accumulation dtype, 0 on rows that do not count and on
    masked classes. Arguments as for ``row_stats``. Returns a new array (the fast paths
    write in place; this reference never does)."""
    xp = namespace(x, target, weight, where)
    acc = acc_dtype(xp, x.dtype)
    d = _masked_z(xp, x, acc, opts, where) - max_ref(xp, stats.m)[:, None]
    e = xp.exp(d)
    ties, rest = stats.ties[:, None], stats.rest[:, None]
    s = ties + rest
    coef = xp.ones_like(stats.mass) if opts.semantics.unit_mass else stats.mass
    if opts.z_loss:  # S + 2 z_loss lse, formed in float64 where available (as _z_term)
        wide = wide_dtype(xp, acc)
        coef = xp.astype(
            xp.astype(coef, wide) + (2.0 * opts.z_loss) * xp.astype(lse(stats), wide), acc
        )
    wq = _target_weight_block(xp, acc, x.shape, target, col_offset, opts, ctx, weight, where)
    p = e / s
    g = (coef[:, None] - wq) * p - wq * (((ties - e) + rest) / s)
    r = xp.astype(row_scale, acc)
    g = g * (r if r.ndim == 0 else r[:, None])
    if opts.softcap is not None:
        g = g * cap_slope(xp, x, acc, opts.softcap)
    live = ctx.keep[:, None] if where is None else ctx.keep[:, None] & where
    if where is not None and target.ndim == 1 and opts.semantics.label_keeps_logit:
        live = live | _label_cols(xp, target, col_offset, x.shape[1], opts, ctx)  # optax
    return xp.where(live, g, 0.0)


def blocks(width: int, n_blocks: int) -> list[tuple[int, int]]:
    """``n_blocks`` contiguous, nearly equal ``(start, stop)`` column ranges of ``width``."""
    bounds = [k * width // n_blocks for k in range(n_blocks + 1)]
    return list(itertools.pairwise(bounds))


def fused_rows(
    x: Array,
    target: Array,
    opts: Any,
    ctx: RowContext,
    *,
    weight: Array | None = None,
    where: Array | None = None,
    row_scale: Array | None = None,
) -> tuple[Array, Array | None]:
    """One block holding every class: ``(row losses, gradient or None)`` of (N, C) rows."""
    stats = row_stats(x, target, 0, opts, ctx, weight=weight, where=where)
    loss = row_loss(stats, opts, ctx)
    if row_scale is None:
        return loss, None
    grad = row_grad(x, target, 0, stats, row_scale, opts, ctx, weight=weight, where=where)
    return loss, grad


__all__ = [
    "RowContext",
    "RowStats",
    "blocks",
    "cap_slope",
    "capped",
    "fused_rows",
    "lse",
    "merge",
    "row_context",
    "row_grad",
    "row_loss",
    "row_stats",
]
