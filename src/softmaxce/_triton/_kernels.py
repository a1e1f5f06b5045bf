r"""The Triton twin of the core's row contract (``softmaxce._core.rows``): the kernels.

One program per row. A row is read in chunks of ``BLOCK`` classes; each chunk is reduced to
the statistics of ``softmaxce._core.rows.RowStats`` (``m``, ``ties``, ``rest``, ``S``,
``T``, ``K``, relative to the chunk's own maximum) and folded into the row's running
statistics by the same ``_merge`` as ``rows.merge``: the online softmax of Milakov &
Gimelshein (2018), with the maximum's ties kept apart so that ``log s = log1p((ties - 1) +
rest)`` stays exact near a dominant logit. The fused kernel then reads the row a second time
(from L2 on a GPU) and writes the gradient ``row_scale * ((S + 2 zeta lse - w q) p - w q
((ties - e) + rest) / s)`` (times ``4 e / (1 + e)**2`` with a softcap); a row that fits in
one chunk is kept in registers and read once.

Every per-class quantity is formed densely per chunk: ``q_c = (1 - eps) [c == t] + spread
[c allowed]`` for an index target (``(1 - eps) y_c + spread [c allowed]`` for a probability
target), ``w q`` with the class weights, and ``S = sum w q``, ``T = sum w q (z - ref(m))``,
``K = sum w q log(q + kl_eps)``, with ``0 * inf = 0`` (``_xmul``). Accumulation is fp32
whatever the logits' dtype; the z-loss factor ``S + 2 zeta lse`` is formed in fp64. Row
offsets are int64 (``N * V`` beyond ``2**31``).

Only ``exp2``, ``log`` and ``fma`` are used (Triton's interpreter has no libdevice): ``exp``
is ``exp2`` with the rounding error of ``x log2 e`` put back (``_exp``), and ``tanh``,
``expm1`` and ``log1p`` are built with Kahan's and Goldberg's corrections, accurate to a few
ulps when ``exp2`` and ``log`` are. On a GPU ``exp2`` is the hardware's approximate one (2 ulps):
its subnormal results are whatever the GPU gives (the core and the numba kernel keep them;
docs/gpu.md).
"""

from __future__ import annotations

import triton
import triton.language as tl

_INF = tl.constexpr(float("inf"))
_LOG2E_HI = tl.constexpr(1.44269502162933349609375)  # log2(e) = _HI + _LO, _HI an fp32
_LOG2E_LO = tl.constexpr(1.9259629911265925e-08)
_LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _exp(x):
    """``exp(x)`` to a few ulps for any ``x``: ``2**t (1 + r ln 2)`` with ``t = fl(x log2 e)``
    and ``r`` its rounding error (an fma). A GPU's ``exp`` is ``exp2(fl(x log2 e))``, which
    loses ``|x|`` ulps (40 for ``exp(-40)``, the tail of a confident row)."""
    t = x * _LOG2E_HI
    r = tl.fma(x, _LOG2E_HI, -t) + x * _LOG2E_LO
    r = tl.where(tl.abs(t) < _INF, r, 0.0)  # (t = +-inf or NaN: exp2 alone is right)
    return tl.exp2(t) * (1.0 + r * _LN2)


@triton.jit
def _xmul(a, b):
    """``a * b`` with ``0 * inf = 0`` (the core's ``xmul``)."""
    return a * tl.where((a == 0.0) & (tl.abs(b) == _INF), 0.0, b)


@triton.jit
def _ref(m):
    """``max_ref``: the shift of a maximum, 0 where it is ``-inf``."""
    return tl.where(m == -_INF, 0.0, m)


@triton.jit
def _log1p(a):
    """``log(1 + a)`` for ``a >= 0``, exact to a few ulps (Goldberg 1991, Theorem 4)."""
    u = 1.0 + a
    r = tl.log(u) * (a / tl.where(u == 1.0, 1.0, u - 1.0))
    return tl.where(u == 1.0, a, tl.where(u == _INF, u, r))


@triton.jit
def _log_sum(ties, rest):
    """``log(ties + rest)`` as ``log1p((ties - 1) + rest)`` when the maximum is present."""
    one = ties >= 1.0
    return tl.where(one, _log1p(tl.where(one, ties - 1.0, 0.0) + rest), tl.log(ties + rest))


@triton.jit
def _expm1(v):
    """``exp(v) - 1`` for ``v <= 0``, with Kahan's correction ``(u - 1) v / log u``."""
    u = _exp(v)
    lu = tl.log(u)
    r = (u - 1.0) * (v / tl.where(lu == 0.0, 1.0, lu))
    return tl.where(u == 1.0, v, tl.where(u == 0.0, -1.0, r))


@triton.jit
def _tanh(u):
    """``tanh(u) = -expm1(-2|u|) / (2 + expm1(-2|u|))``, signed: no cancellation near 0."""
    em = _expm1(-2.0 * tl.abs(u))
    t = -em / (2.0 + em)
    return tl.where(u < 0.0, -t, t)


@triton.jit
def _cap_slope(x, cap):
    """``1 - tanh(x / cap)**2 = 4 e / (1 + e)**2``, ``e = exp(-2 |x / cap|)``."""
    e = _exp(-2.0 * tl.abs(x / cap))
    return 4.0 * e / ((1.0 + e) * (1.0 + e))


@triton.jit
def _merge(m_a, t_a, r_a, s_a, tz_a, k_a, m_b, t_b, r_b, s_b, tz_b, k_b):
    """``rows.merge`` of two blocks' statistics (scalars or tensors)."""
    m = tl.maximum(m_a, m_b)
    ref = _ref(m)
    ref_a = _ref(m_a)
    ref_b = _ref(m_b)
    scale_a = _exp(tl.where(m_a == -_INF, 0.0, ref_a - ref))
    scale_b = _exp(tl.where(m_b == -_INF, 0.0, ref_b - ref))
    top_a = m_a == m
    top_b = m_b == m
    ties = tl.where(top_a, t_a, 0.0) + tl.where(top_b, t_b, 0.0)
    rest = (r_a + tl.where(top_a, 0.0, t_a)) * scale_a + (r_b + tl.where(top_b, 0.0, t_b)) * scale_b
    tz = tz_a + _xmul(s_a, ref_a - ref) + (tz_b + _xmul(s_b, ref_b - ref))
    return m, ties, rest, s_a + s_b, tz, k_a + k_b


@triton.jit
def _chunk(
    x_row, t_row, w_ptr, mask_row, cols, width, col_offset, label, keep, spread, lab_wq,
    one_minus_eps, cap, kl_eps,
    INDEX: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_MASK: tl.constexpr,
    SOFTCAP: tl.constexpr, KEEP_LABEL: tl.constexpr, KL_EPS: tl.constexpr,
    LABEL_ONLY: tl.constexpr,
):  # fmt: skip
    """One chunk's per-class terms: ``(x, z masked, z for T, w q, log(q + kl_eps), allowed,
    label column)``, in fp32; columns past ``width`` are masked. ``LABEL_ONLY`` (an index
    target, no smoothing, no KL): ``w q`` is ``lab_wq`` at the label, 0 elsewhere, and the
    statistics take ``S`` and ``T`` from the label alone (``_label_terms``)."""
    ok = cols < width
    x = tl.load(x_row + cols, mask=ok, other=0.0).to(tl.float32)
    if SOFTCAP:
        z = cap * _tanh(x / cap)
    else:
        z = x
    allowed = ok
    if HAS_MASK:
        allowed = ok & (tl.load(mask_row + cols, mask=ok, other=0) != 0)
    if INDEX:
        onehot = ok & keep & ((cols + col_offset) == label)
    else:
        onehot = cols < 0
    if LABEL_ONLY:
        wq = tl.where(onehot, lab_wq, 0.0)
        log_q = wq
    else:
        if HAS_WEIGHT:
            w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        else:
            w = tl.where(ok, 1.0, 0.0)
        if INDEX:
            q = tl.where(onehot, one_minus_eps, 0.0) + tl.where(allowed, spread, 0.0)
        else:
            y = tl.load(t_row + cols, mask=ok, other=0.0).to(tl.float32)
            q = one_minus_eps * y + tl.where(allowed, spread, 0.0)
        wq = w * q
        if KL_EPS:
            log_q = tl.log(q + kl_eps)
        else:
            log_q = tl.log(q)
    z_masked = tl.where(allowed, z, -_INF)
    if KEEP_LABEL:  # an index label outside `where` keeps its own logit (optax)
        z_t = tl.where(onehot, z, z_masked)
    else:
        z_t = z_masked
    return x, z_masked, z_t, wq, log_q, allowed, onehot


@triton.jit
def _label_weight(w_ptr, label, keep, col_offset, width, one_minus_eps,
                  HAS_WEIGHT: tl.constexpr):  # fmt: skip
    """``(in-block column of the label, (1 - eps) w_t)``: 0 where the row does not count or
    its label is in another block (``rows._gold``)."""
    hit = keep & (label >= col_offset) & (label < col_offset + width)
    local = tl.where(hit, label - col_offset, 0)
    w_t = 1.0
    if HAS_WEIGHT:
        w_t = tl.load(w_ptr + local, mask=hit, other=0.0).to(tl.float32)
    return local, hit, tl.where(hit, one_minus_eps * w_t, 0.0)


@triton.jit
def _label_terms(x_row, mask_row, local, hit, lab_wq, m, cap, HAS_MASK: tl.constexpr,
                 SOFTCAP: tl.constexpr, KEEP_LABEL: tl.constexpr):  # fmt: skip
    """``(S, T)`` of an index target without smoothing: ``w_t`` and ``w_t (z_t - ref(m))``
    with the label's own (capped) logit, ``-inf`` outside ``where`` unless it keeps it."""
    z_t = tl.load(x_row + local, mask=hit, other=0.0).to(tl.float32)
    if SOFTCAP:
        z_t = cap * _tanh(z_t / cap)
    if HAS_MASK:
        if not KEEP_LABEL:
            allowed_t = tl.load(mask_row + local, mask=hit, other=0) != 0
            z_t = tl.where(allowed_t, z_t, -_INF)
    return lab_wq, _xmul(lab_wq, z_t - _ref(m))


@triton.jit
def _chunk_stats(z_masked, z_t, wq, log_q, KL: tl.constexpr, LABEL_ONLY: tl.constexpr):
    """The statistics of one chunk, relative to its own maximum (``S = T = 0`` with
    ``LABEL_ONLY``: the label's terms are added once, at the end)."""
    m = tl.max(z_masked, axis=0)
    ref = _ref(m)
    d = z_masked - ref
    e = _exp(d)
    tie = d == 0.0
    ties = tl.sum(tl.where(tie, 1.0, 0.0), axis=0)
    rest = tl.sum(tl.where(tie, 0.0, e), axis=0)
    if LABEL_ONLY:
        mass = ties * 0.0
        tz = mass
    else:
        mass = tl.sum(wq, axis=0)
        tz = tl.sum(_xmul(wq, z_t - ref), axis=0)
    if KL:
        kl = tl.sum(_xmul(wq, log_q), axis=0)
    else:
        kl = mass * 0.0
    return m, ties, rest, mass, tz, kl


@triton.jit
def _chunk_grad(
    x, z_masked, wq, allowed, onehot, m, ties, rest, coef, scale_s, live, cap,
    SOFTCAP: tl.constexpr, KEEP_LABEL: tl.constexpr,
):  # fmt: skip
    """``scale * ((coef - w q) p - w q ((ties - e) + rest) / s)`` (times the cap's slope),
    0 on rows that do not count and on masked classes; ``scale_s = scale / s``, once a row."""
    e = _exp(z_masked - _ref(m))
    g = ((coef - wq) * e - wq * ((ties - e) + rest)) * scale_s
    if SOFTCAP:
        g = g * _cap_slope(x, cap)
    ok = allowed
    if KEEP_LABEL:
        ok = ok | onehot
    return tl.where(ok & live, g, 0.0)


@triton.jit
def _row_coef(m, ties, rest, mass, zl_ptr, UNIT_MASS: tl.constexpr, ZLOSS: tl.constexpr):
    """``S + 2 zeta lse`` (``1 + ...`` with ``unit_mass``), the z-loss term formed in fp64."""
    if UNIT_MASS:
        coef = mass * 0.0 + 1.0
    else:
        coef = mass
    if ZLOSS:
        lse = _ref(m) + _log_sum(ties, rest)
        zl = tl.load(zl_ptr)
        coef = (coef.to(tl.float64) + (2.0 * zl) * lse.to(tl.float64)).to(tl.float32)
    return coef


# (strides and sizes that vary from call to call are not specialised on: fewer compilations;
# the logits' row stride and the width are, for aligned vector loads)
@triton.jit(do_not_specialize=["st", "sm", "s_scale", "n_rows", "col_offset"])
def _rows_kernel(
    x_ptr, sx, t_ptr, st, w_ptr, mask_ptr, sm, keep_ptr, spread_ptr, live_ptr,
    scale_ptr, s_scale, zl_ptr, g_ptr, sg, stats_ptr, n_rows, width, col_offset,
    one_minus_eps, cap, kl_eps,
    INDEX: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_SPREAD: tl.constexpr, SOFTCAP: tl.constexpr, KEEP_LABEL: tl.constexpr,
    KL: tl.constexpr, KL_EPS: tl.constexpr, UNIT_MASS: tl.constexpr, ZLOSS: tl.constexpr,
    LABEL_ONLY: tl.constexpr, STATS_IN: tl.constexpr, STATS_OUT: tl.constexpr,
    GRAD: tl.constexpr, ONE_CHUNK: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Statistics (``STATS_OUT``), gradient from given statistics (``STATS_IN``), or both in
    one pass over the row (the fused loss), for the block ``[col_offset, col_offset + width)``.

    ``stats_ptr``: (6, n_rows) fp32, ``m, ties, rest, S, T, K``. ``g_ptr`` may be ``x_ptr``
    (the gradient in place: each chunk is read before it is written).
    """
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * sx
    t_row = t_ptr + row * st
    mask_row = mask_ptr + row * sm
    cols0 = tl.arange(0, BLOCK)
    keep = tl.load(keep_ptr + row) != 0
    label = col_offset - 1
    if INDEX:
        label = tl.load(t_ptr + row)
    spread = 0.0
    if HAS_SPREAD:
        spread = tl.load(spread_ptr + row).to(tl.float32)
    lab_wq = 0.0
    if LABEL_ONLY:
        local, hit, lab_wq = _label_weight(
            w_ptr, label, keep, col_offset, width, one_minus_eps, HAS_WEIGHT
        )
    if STATS_IN:
        m = tl.load(stats_ptr + row)
        ties = tl.load(stats_ptr + n_rows + row)
        rest = tl.load(stats_ptr + 2 * n_rows + row)
        mass = tl.load(stats_ptr + 3 * n_rows + row)
    elif ONE_CHUNK:  # the whole row in registers: read once
        x, zm, zt, wq, lq, allowed, onehot = _chunk(
            x_row, t_row, w_ptr, mask_row, cols0, width, col_offset, label, keep, spread,
            lab_wq, one_minus_eps, cap, kl_eps, INDEX, HAS_WEIGHT, HAS_MASK, SOFTCAP,
            KEEP_LABEL, KL_EPS, LABEL_ONLY,
        )  # fmt: skip
        m, ties, rest, mass, tz, kl = _chunk_stats(zm, zt, wq, lq, KL, LABEL_ONLY)
    else:  # online: chunk by chunk, merged
        m = tl.full((), -_INF, tl.float32)
        ties = tl.full((), 0.0, tl.float32)
        rest = tl.full((), 0.0, tl.float32)
        mass = tl.full((), 0.0, tl.float32)
        tz = tl.full((), 0.0, tl.float32)
        kl = tl.full((), 0.0, tl.float32)
        for start in range(0, width, BLOCK):
            x, zm, zt, wq, lq, allowed, onehot = _chunk(
                x_row + start, t_row + start, w_ptr + start, mask_row + start, cols0,
                width - start, col_offset + start, label, keep, spread, lab_wq,
                one_minus_eps, cap, kl_eps, INDEX, HAS_WEIGHT, HAS_MASK, SOFTCAP, KEEP_LABEL,
                KL_EPS, LABEL_ONLY,
            )  # fmt: skip
            c_m, c_t, c_r, c_s, c_tz, c_k = _chunk_stats(zm, zt, wq, lq, KL, LABEL_ONLY)
            m, ties, rest, mass, tz, kl = _merge(
                m, ties, rest, mass, tz, kl, c_m, c_t, c_r, c_s, c_tz, c_k
            )
    if STATS_OUT:
        if LABEL_ONLY:
            mass, tz = _label_terms(
                x_row, mask_row, local, hit, lab_wq, m, cap, HAS_MASK, SOFTCAP, KEEP_LABEL
            )
        tl.store(stats_ptr + row, m)
        tl.store(stats_ptr + n_rows + row, ties)
        tl.store(stats_ptr + 2 * n_rows + row, rest)
        tl.store(stats_ptr + 3 * n_rows + row, mass)
        tl.store(stats_ptr + 4 * n_rows + row, tz)
        tl.store(stats_ptr + 5 * n_rows + row, kl)
    if GRAD:
        coef = _row_coef(m, ties, rest, mass, zl_ptr, UNIT_MASS, ZLOSS)
        scale_s = tl.load(scale_ptr + row * s_scale).to(tl.float32) / (ties + rest)
        live = tl.load(live_ptr + row) != 0
        g_row = g_ptr + row * sg
        if ONE_CHUNK:
            g = _chunk_grad(
                x, zm, wq, allowed, onehot, m, ties, rest, coef, scale_s, live, cap,
                SOFTCAP, KEEP_LABEL,
            )  # fmt: skip
            tl.store(g_row + cols0, g.to(g_ptr.dtype.element_ty), mask=cols0 < width)
        else:  # the second pass: the row again, last chunk first
            # (the chunks read last are the likeliest to be in L2 still: read in the first
            # pass's order, a row longer than its share of L2 would miss on every chunk)
            n_chunks = tl.cdiv(width, BLOCK)
            for i in range(0, n_chunks):
                start = (n_chunks - 1 - i) * BLOCK
                x, zm, zt, wq, lq, allowed, onehot = _chunk(
                    x_row + start, t_row + start, w_ptr + start, mask_row + start, cols0,
                    width - start, col_offset + start, label, keep, spread, lab_wq,
                    one_minus_eps, cap, kl_eps, INDEX, HAS_WEIGHT, HAS_MASK, SOFTCAP,
                    KEEP_LABEL, KL_EPS, LABEL_ONLY,
                )  # fmt: skip
                g = _chunk_grad(
                    x, zm, wq, allowed, onehot, m, ties, rest, coef, scale_s, live, cap,
                    SOFTCAP, KEEP_LABEL,
                )  # fmt: skip
                cols = start + cols0
                tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=cols < width)


@triton.jit
def _scale_kernel(g_ptr, sg, scale_ptr, s_scale, width, BLOCK: tl.constexpr):
    """``g[row] *= scale[row]`` where the scale is not 1 (then nothing is read or written):
    the backward's ``grad_output`` applied without a host synchronisation."""
    row = tl.program_id(0).to(tl.int64)
    scale = tl.load(scale_ptr + row * s_scale).to(tl.float32)
    if scale != 1.0:
        g_row = g_ptr + row * sg
        for start in range(0, width, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            ok = cols < width
            g = tl.load(g_row + cols, mask=ok, other=0.0).to(tl.float32)
            tl.store(g_row + cols, (g * scale).to(g_ptr.dtype.element_ty), mask=ok)
