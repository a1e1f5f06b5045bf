r"""The concerns of one row of a block of classes, each written once.

A *row* here is one row of the block the kernel works on: a whole row for ``fused_rows``,
the columns ``[col_offset, col_offset + width)`` of it for ``row_stats`` / ``row_grad``. Each
concern is one function (``caching.inline``: inlined into numba's IR, so that in place a loop
reads and writes one row view). The variants are the types of the arguments: every optional
input is either an array (or a number) or ``None``, and small type-dispatched helpers
(``caching.by_type``) give each its effect or nothing; numba compiles one variant per
combination of types a kernel is called with. So the row of integer targets without options
compiles to the tight loop (one read for the maximum; one read computing ``exp``, storing it
in the gradient row and summing; one read-modify-write of the gradient), and every option
adds only its own work to the same loop bodies:

* ``yr``: the row of a probability target, or None for class indices;
* ``w``: the class weights of the block (float64), or None;
* ``whr``: the row of the ``where`` mask, or None;
* ``spread``: ``eps / |A_i|`` of the row (float64), or None without label smoothing;
* ``kl``: True with ``soft_target_loss="kl-divergence"``, or None;
* ``cb``: the scratch row of the softcap's slope, or None without a softcap;
* ``eb``: where the exponentials are kept for the gradient pass (the gradient row itself, or
  a float32 scratch row when the gradient is rounded to float16), or None.

Notation (acc: float32 for float16/float32 logits, float64 for float64): ``z`` the capped and
masked logits, ``m`` the row maximum (its reference ``ref(m)``: 0 when ``m = -inf``), ``d = z -
ref(m)``, ``e = exp(d)``; ``ties`` the number of ``d == 0`` and ``rest`` the sum of the other
``e`` (``s = ties + rest``); ``q`` the target after smoothing, ``w q`` its weighted mass,
``S = sum w q``, ``T = sum w q d`` (a term with ``w q = 0`` is 0, also at ``d = -inf``),
``K = sum w q log q``. For class indices the block's dense part is the smoothing only,
``spread * w_c`` on allowed classes: its sums are kept without the factor ``spread`` (a row
constant) and the gold class t adds ``(1 - eps) w_t`` once per row (``totals``). Row sums
run in acc, except those of probability targets (float64: the KL terms cancel); the per-row
scalars (``log s``, the loss, the z-loss terms, the gradient's factors) are float64.

Three numba pitfalls shape the code. (1) ``if arg is None`` is pruned only where ``arg`` is
None; where it is an array both branches are typed, so a helper that returns an input or None
must pick its body by type (``by_type``), and a branch of a kernel on its own argument (``rs
is not None``) is the only ``is None`` test. (2) numba 0.68 can drop a later store of the
caller when it inlines an ``overload`` into typed IR (``inline="always"``): no overload is
inlined that way (LLVM inlines the small helpers). (3) A branch on a helper's result inside a
loop keeps LLVM from vectorising it: selects live inside the helpers (``masked``). And the
formulas whose order of operations carries their accuracy (``log1p((ties - 1) + rest)``, the
gold class, a probability target's gradient) are compiled without reassociation.

The gradient of a class (docs/internals.md): ``r ((S + zl) p_c - w_c q_c)``, ``zl = 2 zeta
lse``, ``p = e / s``. The loops form it as ``a e_c - b u_c`` for class indices (``a = r (S +
zl) / s``, ``b = r spread``, ``u_c = w_c`` on allowed classes): their dense part is small, and
the gold class is rewritten once per row in float64 (``gold_fix``). For probability targets
every class may carry the mass, so each is formed as the core forms it, ``r/s ((S + zl - w q)
e - w q ((ties - e) + rest))``, where ``(ties - e) + rest = s - e`` is exact near ``p = 1``: a
confident row keeps the relative accuracy of its tiny gradient at the maximum.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from .caching import FM_EXP, by_type, inline, is_none, jit
from .elementary import exp, log_sum, tanh
from .intrinsics import acc0, cast, ld, maxnum, prefetch, st

BLOCK = 256  # elements between prefetches of the next row (16 cache lines of float32)


# ----------------------------------------------------------------------------------------------
# Optional inputs: each helper has a body for None and one for the input (see `by_type`)


@by_type
def row_of(a, i):
    """Row ``i`` of ``a``, or None."""
    if is_none(a):
        return lambda a, i: None
    return lambda a, i: a[i]


@by_type
def allowed(whr, c):
    """Whether class c is allowed (True without a mask)."""
    if is_none(whr):
        return lambda whr, c: True
    return lambda whr, c: whr[c]


@by_type
def masked(v, whr, c, other):
    """``v``, or ``other`` where class c is masked. (A select inside a helper: a branch on a
    helper's result inside a loop would keep LLVM from vectorising it.)"""
    if is_none(whr):
        return lambda v, whr, c, other: v
    return lambda v, whr, c, other: v if whr[c] else other


@by_type
def weight_at(w, c, like):
    """``w_c`` (1 without weights) in the type of the scalar ``like``."""
    if is_none(w):
        return lambda w, c, like: cast(like, 1.0)
    return lambda w, c, like: cast(like, w[c])


@by_type
def or_zero(v):
    """``v`` as a float64, 0 for None (the spread of a row without smoothing)."""
    if is_none(v):
        return lambda v: 0.0
    return lambda v: np.float64(v)


@by_type
def is_on(flag):
    """An optional switch (None or True) as a compile-time constant."""
    if is_none(flag):
        return lambda flag: False
    return lambda flag: True


@inline
def fill(gr, value):
    """Row ``gr`` set to ``value``."""
    v = st(gr, value)
    for c in range(gr.shape[0]):
        gr[c] = v


@inline
def ref_max(m):
    """The shift of a row maximum: itself, or 0 when it is ``-inf`` (no allowed class)."""
    return cast(m, 0.0) if m == -np.inf else m


# ----------------------------------------------------------------------------------------------
# z and its maximum


@by_type
def cap_consts(cap, zero):
    """``(cap, 1 / cap)`` in the type of ``zero`` (zeros without a softcap)."""
    if is_none(cap):
        return lambda cap, zero: (zero, zero)
    return lambda cap, zero: (cast(zero, cap), cast(zero, 1.0) / cast(zero, cap))


@by_type
def capped(v, cap, capa, inv):
    """``(cap tanh(v / cap), its slope)``; ``(v, 1)`` without a softcap."""
    if is_none(cap):
        return lambda v, cap, capa, inv: (v, cast(v, 1.0))

    def impl(v, cap, capa, inv):
        th, dz = tanh(v * inv)
        return capa * th, dz

    return impl


@by_type
def put(a, c, v):
    """``a[c] = v`` (nothing when ``a`` is None)."""
    if is_none(a):
        return lambda a, c, v: None
    return lambda a, c, v: operator.setitem(a, c, st(a, v))


@inline
def z_fill(xr, whr, cap, zb, cb):
    """The row of ``z`` written into the scratch row ``zb``: capped (the slope into ``cb``,
    unless None) and ``-inf`` where masked. (Without a softcap and a mask ``z`` is ``xr``
    itself: the kernels then pass ``xr``.)"""
    zero = acc0(zb)
    ninf = cast(zero, -np.inf)
    capa, inv = cap_consts(cap, zero)
    for c in range(xr.shape[0]):
        v, dz = capped(ld(xr[c]), cap, capa, inv)
        put(cb, c, dz)
        zb[c] = masked(v, whr, c, ninf)
    return zb


@inline
def seg_max(zr):
    """``max_c z_c`` in one vectorised read; maxNum skips NaN entries, which need no test:
    ``exp(NaN - m)`` makes the row's sum, loss and gradient NaN."""
    m = cast(acc0(zr), -np.inf)
    for c in range(zr.shape[0]):
        m = maxnum(m, ld(zr[c]))
    return m


@inline
def z_at(zr, tl):
    """``z`` of the gold class ``tl`` (read before the row is overwritten), 0 without one."""
    return ld(zr[tl]) if tl >= 0 else acc0(zr)


# ----------------------------------------------------------------------------------------------
# The statistics pass


@by_type
def dense_zero(yr, zero):
    """Zeros for the dense sums ``(S, T, K)``: float64 for probability targets, else acc."""
    if is_none(yr):
        return lambda yr, zero: (zero, zero, zero)
    return lambda yr, zero: (0.0, 0.0, 0.0)


@by_type
def dense_add(S, T, K, c, d, yr, w, whr, spread, keep1m, kl):
    """Class c's terms of the dense sums: ``u = w_c`` (allowed) for class indices with
    smoothing, ``w q`` (and ``w q log q``) for probability targets; nothing otherwise."""
    if is_none(yr) and is_none(spread):
        return lambda S, T, K, c, d, yr, w, whr, spread, keep1m, kl: (S, T, K)
    if is_none(yr):
        return _index_add
    return _soft_add


def _index_add(S, T, K, c, d, yr, w, whr, spread, keep1m, kl):
    zero = cast(d, 0.0)
    u = masked(weight_at(w, c, d), whr, c, zero)
    return S + u, T + (u * d if u != zero else zero), K


def _soft_add(S, T, K, c, d, yr, w, whr, spread, keep1m, kl):
    q = keep1m * np.float64(ld(yr[c])) + masked(or_zero(spread), whr, c, 0.0)
    wq = q * weight_at(w, c, q)
    return S + wq, T + (wq * d if wq != 0.0 else 0.0), K + kl_term(kl, wq, q)


@by_type
def kl_term(kl, wq, q):
    """``w q log q`` (0 where ``w q`` is 0), or 0 without the KL divergence."""
    if is_none(kl):
        return lambda kl, wq, q: 0.0
    return lambda kl, wq, q: wq * math.log(q) if wq != 0.0 else 0.0


@inline
def seg_sums(zr, m, eb, yr, w, whr, spread, keep1m, kl, xn):
    """``(rest, ties, S, T, K)`` of a row, one ``exp`` per class, kept in ``eb`` (unless
    None). Blocks of BLOCK classes have a constant trip count and a provably non-negative
    index; after each, the same block of the next row ``xn`` is prefetched, so that its memory
    traffic overlaps this row's arithmetic."""
    zero = cast(m, 0.0)
    one = cast(m, 1.0)
    rest = zero
    ties = zero
    S, T, K = dense_zero(yr, zero)
    n = zr.shape[0]
    n_blocks = n // BLOCK
    for blk in range(n_blocks + 1):
        b0 = blk * BLOCK
        nb = BLOCK if blk < n_blocks else n - b0
        for j in range(nb):
            c = b0 + j
            d = ld(zr[c]) - m
            e = exp(d)
            put(eb, c, e)  # kept for the gradient pass (unless None)
            rest += e if d != zero else zero
            ties += one if d == zero else zero
            S, T, K = dense_add(S, T, K, c, d, yr, w, whr, spread, keep1m, kl)
        if blk < n_blocks:
            for j in range(0, BLOCK, 16):  # one per 64-byte line of float32
                prefetch(xn, b0 + j)
    return rest, ties, S, T, K


@by_type
def totals(S, T, K, yr, tl, zt, m, w, whr, spread, keep1m, kl):
    """``(S, T, K)`` of the row in float64: the dense sums, and for class indices the
    factor ``spread`` and the gold class ``tl`` (-1: not in this block)."""
    if is_none(yr):
        return _index_totals
    return lambda S, T, K, yr, tl, zt, m, w, whr, spread, keep1m, kl: (S, T, K)


def _index_totals(S, T, K, yr, tl, zt, m, w, whr, spread, keep1m, kl):
    sp = or_zero(spread)
    wt = weight_at(w, tl, 0.0) if tl >= 0 else 0.0
    ok_t = allowed(whr, tl) if tl >= 0 else False
    gold = keep1m * wt
    S64 = gold + sp * np.float64(S)
    T64 = sp * np.float64(T)
    if gold != 0.0:
        T64 += gold * (np.float64(zt) - np.float64(m))
    K64 = 0.0
    if is_on(kl):
        q_t = keep1m + (sp if ok_t else 0.0)
        K64 += (wt * q_t) * math.log(q_t) if wt * q_t != 0.0 else 0.0
        if sp > 0.0:  # the other allowed classes: w_c spread log(spread)
            K64 += (sp * (np.float64(S) - (wt if ok_t else 0.0))) * math.log(sp)
    return S64, T64, K64


@inline
def z_terms(m, log_s, z_loss):
    """``(z_loss lse**2, 2 z_loss lse)`` in float64 (a z_loss beyond float32 times lse = 0
    gives 0, not inf * 0)."""
    if z_loss > 0.0:
        lse = np.float64(m) + log_s
        return (z_loss * lse) * lse, 2.0 * (z_loss * lse)
    return 0.0, 0.0


@inline
def loss_terms(S, T, K, rest, ties, m, z_loss):
    """``(L, 2 zeta lse, s)``: ``L = S log s - T + K + zeta lse**2``, no cancellation of
    large logits (``lse - z`` is never formed)."""
    log_s, s = log_sum(rest, ties)
    zz, zl = z_terms(m, log_s, z_loss)
    return S * log_s - T + K + zz, zl, s


# ----------------------------------------------------------------------------------------------
# The gradient pass


@by_type
def e_at(eb, zr, m, c):
    """``e_c``: kept by the statistics pass in ``eb``, or computed (``eb`` None)."""
    if is_none(eb):
        return lambda eb, zr, m, c: exp(ld(zr[c]) - m)
    return lambda eb, zr, m, c: cast(m, ld(eb[c]))


@by_type(fastmath=FM_EXP)
def grad_at(e, c, a, b, B, Sz, ties, rest, yr, w, whr, spread, keep1m):
    """The gradient of class c from ``e_c`` (see the module docstring; not reassociated:
    ``(ties - e) + rest`` is exact near ``p = 1``, ``(ties + rest) - e`` is not)."""
    if is_none(yr) and is_none(spread):
        return lambda e, c, a, b, B, Sz, ties, rest, yr, w, whr, spread, keep1m: a * e
    if is_none(yr):
        return lambda e, c, a, b, B, Sz, ties, rest, yr, w, whr, spread, keep1m: (
            a * e - b * weight_at(w, c, e)
        )
    return _soft_grad


def _soft_grad(e, c, a, b, B, Sz, ties, rest, yr, w, whr, spread, keep1m):
    q = cast(e, keep1m) * cast(e, ld(yr[c])) + masked(
        cast(e, or_zero(spread)), whr, c, cast(e, 0.0)
    )
    wq = q * weight_at(w, c, e)
    return B * ((Sz - wq) * e - wq * ((ties - e) + rest))


@by_type
def slope(gv, cb, c):
    """``gv`` times the softcap's slope at class c (``gv`` without a softcap)."""
    if is_none(cb):
        return lambda gv, cb, c: gv
    return lambda gv, cb, c: gv * cast(gv, cb[c])


@inline
def seg_grad(gr, zr, m, eb, r, r_s, S, zl, ties, rest, yr, w, whr, spread, keep1m, cb):
    """Write the gradient row ``gr`` once: ``r`` the row's scale, ``r_s = r / s``; times the
    softcap's slope, 0 on masked classes."""
    zero = cast(m, 0.0)
    a = cast(zero, r_s * (S + zl))
    b = cast(zero, r * or_zero(spread))
    B = cast(zero, r_s)
    Sz = cast(zero, S + zl)
    for c in range(gr.shape[0]):
        e = e_at(eb, zr, m, c)
        g = grad_at(e, c, a, b, B, Sz, ties, rest, yr, w, whr, spread, keep1m)
        gr[c] = st(gr, masked(slope(g, cb, c), whr, c, zero))


@jit(fastmath=FM_EXP)
def gold_grad(d, wq, r_s, S, zl, ties, rest):
    """Class indices: the gradient at the gold class t in float64, as the core forms it,
    ``r/s ((S - w q + zl) e - w q ((ties - e) + rest))`` with ``e = exp(d)`` recomputed. Where
    t is the row's single maximum (a confident row: ``p_t`` rounds to 1) this is ``r (S - w q
    + zl - w q rest) / s``, without ``fl(p_t) - 1``: no reassociation here."""
    e = np.float64(exp(d))
    return r_s * (((S - wq) + zl) * e - wq * ((np.float64(ties) - e) + np.float64(rest)))


@inline
def gold_fix(gr, tl, zt, m, r_s, S, zl, ties, rest, w, whr, spread, keep1m, cb):
    """Rewrite the gradient at the gold class ``tl`` (if in this block and allowed; a masked
    gold class keeps the 0 of the loop) by ``gold_grad``."""
    if tl >= 0 and allowed(whr, tl):
        wq = weight_at(w, tl, 0.0) * (keep1m + or_zero(spread))
        g = gold_grad(zt - m, wq, r_s, S, zl, ties, rest)
        gr[tl] = st(gr, slope(g, cb, tl))
