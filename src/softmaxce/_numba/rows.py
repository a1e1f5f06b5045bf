"""The row loops: one pass of the fused loss, and the statistics and gradient of a block.

Each kernel runs rows ``lo:hi`` of its arrays on one thread (``threads.run`` splits the rows)
and composes the concerns of ``segments.py``; numba compiles one machine-code variant per
combination of argument types it is called with (an optional input is an array or None, see
``segments``), so a variant contains only the work of its options.

* ``fused_kernel`` (the whole row in one block): per row, which rows count and the
  smoothing spread ``eps / |A_i|`` (the core's ``row_context``, computed inline), then the
  maximum, the statistics pass (each ``exp`` kept in the gradient row, or in a float32 scratch
  row for a float16 gradient), the loss, and with a row scale the gradient pass, which turns
  the kept exponentials into the gradient while the row is still in cache. The logits are read
  before they are overwritten, so the gradient may be written into them (``g`` None): nothing
  of size N x C is allocated.
* ``stats_kernel`` and ``grad_kernel``: the same concerns for a block of classes
  ``[off, off + width)``, with the rows that count and the spread from the caller's
  ``RowContext``; the gradient from merged statistics, one ``exp`` per class.
"""

from __future__ import annotations

import numpy as np
from numba import types

from .caching import by_type, inline, is_none, jit
from .elementary import log_sum
from .intrinsics import acc0, cast
from .segments import (
    fill,
    gold_fix,
    loss_terms,
    ref_max,
    row_of,
    seg_grad,
    seg_max,
    seg_sums,
    totals,
    z_at,
    z_fill,
    z_terms,
)


@by_type
def _label_state(t, ignore, i, n_cls):
    """``(state, t_i)`` of row i's label (see ``_row_state``); (1, -1) for a
    probability target. (Selects, no early returns: LLVM then inlines it.)"""
    if is_none(t):
        return lambda t, ignore, i, n_cls: (1, -1)

    def impl(t, ignore, i, n_cls):
        ti = t[i]
        inside = ti >= 0 and ti < n_cls
        return (0 if ti == ignore else (1 if inside else -1)), ti

    return impl


@by_type
def _allowed_count(whr, n_cls):
    """``|A_i|``, the number of allowed classes of the row."""
    if is_none(whr):
        return lambda whr, n_cls: n_cls

    def impl(whr, n_cls):
        count = 0
        for c in range(n_cls):
            count += 1 if whr[c] else 0
        return count

    return impl


@inline
def _row_state(t, whr, ignore, i, n_cls):
    """``(state, t_i, |A_i|)``: state 1 the row counts, 0 it does not (ignored, or no allowed
    class: loss 0, gradient 0), -1 an index outside ``[0, C)`` that is not ``ignore`` (never
    after validation; NaN rather than a read out of bounds)."""
    state, ti = _label_state(t, ignore, i, n_cls)
    count = _allowed_count(whr, n_cls)
    return (state if count > 0 or state < 0 else 0), ti, count


@by_type
def _spread(eps, count):
    """The row's smoothing spread ``eps / |A_i|``, None without smoothing."""
    if is_none(eps):
        return lambda eps, count: None
    return lambda eps, count: eps / count


@by_type
def _keep1m(eps):
    """``1 - eps``: the share of the target left by label smoothing."""
    if is_none(eps):
        return lambda eps: 1.0
    return lambda eps: 1.0 - eps


@by_type
def _out_row(g, xr, i):
    """Row i of the gradient: the logits' row itself in place (``g`` None: the loops then read
    and write one row view), else ``g[i]``."""
    if is_none(g):
        return lambda g, xr, i: xr
    return lambda g, xr, i: g[i]


@by_type
def _e_row(rs, gr, eb):
    """Where the statistics pass keeps the exponentials: nowhere without a gradient, else the
    scratch row ``eb`` (a gradient rounded to a narrower dtype), else the gradient row."""
    if is_none(rs):
        return lambda rs, gr, eb: None
    if is_none(eb):
        return lambda rs, gr, eb: gr
    return lambda rs, gr, eb: eb


@by_type
def _z_row(xr, whr, cap, zb, cb):
    """The row of ``z``: ``xr`` itself without a softcap and a mask (``zb`` None), else
    ``.segments.z_fill`` into the scratch row ``zb``."""
    if is_none(zb):
        return lambda xr, whr, cap, zb, cb: xr
    return lambda xr, whr, cap, zb, cb: z_fill(xr, whr, cap, zb, cb)


@by_type
def _scale(rs, i):
    """The row scale of row i: one number for every row, or one per row."""
    if isinstance(rs, types.Number):
        return lambda rs, i: np.float64(rs)
    return lambda rs, i: np.float64(rs[i])


@jit(nogil=True)
def fused_kernel(lo, hi, x, t, y, w, wh, eps, cap, kl, z_loss, ignore, rs, g, zb, cb, eb, loss):
    """Rows ``lo:hi`` of the fused loss: per-row losses into ``loss`` (returns their sum, in
    float64 row by row), with ``rs`` (the row scale) the gradient into ``g`` (None: into
    ``x``). ``t`` (N,) labels or ``y`` (N, C) a probability target; ``zb``, ``cb``, ``eb``
    this thread's scratch rows or None.

    The branches on ``rs`` (an argument of this function) are pruned by numba when it is
    None: without a row scale nothing of the gradient is compiled."""
    n_cls = x.shape[1]
    keep1m = _keep1m(eps)
    total = 0.0
    for i in range(lo, hi):
        xr = x[i]
        gr = _out_row(g, xr, i)
        whr = row_of(wh, i)
        yr = row_of(y, i)
        state, tl, count = _row_state(t, whr, ignore, i, n_cls)
        if state <= 0:
            loss[i] = np.nan if state < 0 else 0.0
            total += loss[i]
            if rs is not None:
                fill(gr, np.nan if state < 0 else 0.0)
            continue
        spread = _spread(eps, count)
        zr = _z_row(xr, whr, cap, zb, cb)
        zt = z_at(zr, tl)
        m = ref_max(seg_max(zr))
        ebr = _e_row(rs, gr, eb)
        xn = x[i + 1] if i + 1 < hi else xr
        rest, ties, S, T, K = seg_sums(zr, m, ebr, yr, w, whr, spread, keep1m, kl, xn)
        S, T, K = totals(S, T, K, yr, tl, zt, m, w, whr, spread, keep1m, kl)
        li, zl, s = loss_terms(S, T, K, rest, ties, m, z_loss)
        loss[i] = li
        total += li
        if rs is not None:
            r = _scale(rs, i)
            r_s = r / s
            seg_grad(gr, zr, m, ebr, r, r_s, S, zl, ties, rest, yr, w, whr, spread, keep1m, cb)
            gold_fix(gr, tl, zt, m, r_s, S, zl, ties, rest, w, whr, spread, keep1m, cb)
    return total


@by_type
def _block_label(t, i, off, width):
    """The in-block column of row i's label, -1 when it lies outside the block (or for a
    probability target)."""
    if is_none(t):
        return lambda t, i, off, width: -1

    def impl(t, i, off, width):
        tl = t[i] - off
        return tl if 0 <= tl < width else -1

    return impl


@jit(nogil=True)
def stats_kernel(lo, hi, x, t, y, off, w, wh, keep, sp, eps, cap, kl, zb, cb, out):
    """Rows ``lo:hi`` of the statistics of the block ``x`` of columns ``[off, off + width)``
    into ``out`` = (m, ties, rest, mass, tz, kl) arrays; rows that do not count (``keep``
    False) get the statistics of an empty block."""
    width = x.shape[1]
    keep1m = _keep1m(eps)
    m_out, ties_out, rest_out, s_out, t_out, k_out = out
    for i in range(lo, hi):
        if not keep[i]:
            m_out[i] = -np.inf
            ties_out[i] = rest_out[i] = s_out[i] = t_out[i] = k_out[i] = 0.0
            continue
        xr = x[i]
        whr = row_of(wh, i)
        yr = row_of(y, i)
        spread = row_of(sp, i)
        tl = _block_label(t, i, off, width)
        zr = _z_row(xr, whr, cap, zb, cb)
        zt = z_at(zr, tl)
        m_raw = seg_max(zr)
        m = ref_max(m_raw)
        xn = x[i + 1] if i + 1 < hi else xr
        rest, ties, S, T, K = seg_sums(zr, m, None, yr, w, whr, spread, keep1m, kl, xn)
        S, T, K = totals(S, T, K, yr, tl, zt, m, w, whr, spread, keep1m, kl)
        m_out[i] = m_raw
        ties_out[i] = ties
        rest_out[i] = rest
        s_out[i] = S
        t_out[i] = T
        k_out[i] = K


@jit(nogil=True)
def grad_kernel(lo, hi, x, t, y, off, w, wh, keep, sp, eps, cap, z_loss, stats, rs, g, zb, cb):
    """Rows ``lo:hi`` of the gradient of the block ``x`` from the merged ``stats`` = (m, ties,
    rest, mass) of the whole rows, into ``g`` (None: into ``x``); 0 on rows that do not
    count."""
    width = x.shape[1]
    keep1m = _keep1m(eps)
    zero = acc0(x)
    m_in, ties_in, rest_in, s_in = stats
    for i in range(lo, hi):
        xr = x[i]
        gr = _out_row(g, xr, i)
        if not keep[i]:
            fill(gr, 0.0)
            continue
        whr = row_of(wh, i)
        yr = row_of(y, i)
        spread = row_of(sp, i)
        tl = _block_label(t, i, off, width)
        m = ref_max(cast(zero, m_in[i]))
        ties = cast(zero, ties_in[i])
        rest = cast(zero, rest_in[i])
        S = np.float64(s_in[i])
        log_s, s = log_sum(rest, ties)
        zl = z_terms(m, log_s, z_loss)[1]
        zr = _z_row(xr, whr, cap, zb, cb)
        zt = z_at(zr, tl)
        r = _scale(rs, i)
        r_s = r / s
        seg_grad(gr, zr, m, None, r, r_s, S, zl, ties, rest, yr, w, whr, spread, keep1m, cb)
        gold_fix(gr, tl, zt, m, r_s, S, zl, ties, rest, w, whr, spread, keep1m, cb)


@jit()
def total_kernel(a):
    """The sum of 1-D float64 ``a`` (vectorised partial sums; inf and NaN propagate with no
    floating-point warning, as NumPy would give with one)."""
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i]
    return s
