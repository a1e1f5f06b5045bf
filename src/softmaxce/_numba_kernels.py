"""Fused CPU row kernels in numba: the fast twin of the core's row contract (``_core.rows``).

The contract (signature, semantics, what ``row_scale`` and ``grad_out`` mean) is the one in
``docs/internals.md``; this module implements exactly that. It imports numba at import time,
so import it lazily (the dispatcher does) and ask :func:`supports` first.

A row of the hot path (integer targets; weights, ignore_index, label smoothing, z-loss):

1. one read for the maximum ``m`` (a vectorised ``llvm.maxnum`` reduction: NaN entries do not
   win it, and need no test, see 2);
2. one read for ``e_c = exp(x_c - m)``, accumulating ``s = sum e_c`` (and, with smoothing,
   ``sum w_c (x_c - m)``); ``e_c`` is stored into the gradient row while the row is in cache,
   so that step 3 needs no second exponential. The next row is prefetched during this pass
   (``llvm.prefetch``, one per cache line), so its memory traffic overlaps this arithmetic;
3. one read-modify-write of the gradient row from the cache,
   ``g_c = row_scale * ((S + 2 zeta lse) e_c / s - w_c q_c)`` with ``S = sum_c w_c q_c``; the
   gold class t is then rewritten once per row in float64 (:func:`_gold_grad`): its
   exponential recomputed, and when t is the row's single maximum (``s = 1 + rest``, ``rest``
   the sum of the other terms) formed as ``((S - w_t q_t) + 2 zeta lse - w_t q_t rest) / s``,
   so that ``p_t - 1`` of a confident row is ``-rest / s`` to full relative accuracy instead of
   ``fl(p_t) - 1 = 0`` (``x = [40, 0, 0]``: -8.5e-18, not 0).

The logits are read before they are overwritten, so ``grad_out is x`` (in place) is safe and
allocates nothing of size N x C (in place the loops index one row view for reading and writing:
with two views LLVM cannot prove equal, its runtime alias check fails and the loops run
unvectorised). The loss is ``S log(s) - sum_c w_c q_c (z_c - m)`` (no cancellation for huge
logits), combined per row in float64; terms with ``w_c q_c == 0`` count 0 even where
``z_c = -inf``.

The exponential. ``np.exp`` in a numba loop is a scalar libm call on machines without SVML, so
the kernels use their own, written so that LLVM vectorises it (AVX2: 8 float32 lanes):
``exp(v) = 2**k * P(r)``, ``k = round(v / ln 2)`` by the magic-number trick, ``r = v - k ln 2``
with ``ln 2`` split Cody-Waite style (a high part with trailing zero bits, so ``k * ln2_hi`` is
exact, and a low part), and ``P`` a near-minimax degree-6 polynomial (float32, relative error
2e-9 on ``|r| <= ln(2)/2``; measured total error below 1 ulp) or the degree-13 Taylor
polynomial (float64). Subnormal results are kept, as NumPy keeps them: the product is formed as
``(2**-B P(r)) * 2**(k + B)`` (B = 24 for float32, 54 for float64), where the factor ``2**-B``
lives in P's coefficients (a power of two: the same roundings, scaled, at no cost) and
``2**(k + B)`` is a normal number down to the smallest k whose result does not round to 0, so
the one product rounds a subnormal result correctly. Adding ``1.5 * 2**23 + 127 + 24`` leaves
``k + 151`` in the low mantissa bits, which shifted left by 23 are the bits of ``2**(k + 24)``
(float64 likewise with ``1023 + 54``). The argument is clamped below at -104.5 (float64:
-746.4), where ``exp`` rounds to 0 and ``k + 151`` (``k + 1077``) becomes 0: the bits of
``2**(k + B)`` are then all 0, so ``exp(-inf)`` and everything below is exactly 0, with no
mask and no underflow. The clamp is a select that compiles to ``vmaxps(-104.5, v)``, which
passes a NaN ``v`` through: NaN logits make the row's sum, loss and gradient NaN, as
everywhere else. Only the ``contract`` fast-math flag is used in the exponential (FMA), so the
rounding trick and the range reduction are kept exactly as written; the loops use
``reassoc``/``nsz`` so that their sums vectorise, never ``nnan``/``ninf``.

Accumulation: float32 for float16/float32 logits, float64 for float64 logits; the per-row
scalars (``log s``, the loss terms, the ``z_loss * lse`` terms, the gradient's row factors)
in float64. float16 is read and written through its bits (``uint16``) with LLVM's ``half``
conversions (F16C), since numba has no float16 arithmetic on the CPU; the exponentials of a
float16 row wait in a float32 scratch row (C floats per thread), so the gradient is rounded to
float16 once.

The general path (``where``, softcap, KL, soft targets) keeps the capped and masked row ``z`` in
a scratch row of C accumulator floats per thread (not N x C), and, with a softcap, the chain
rule's factor ``dz/dx = 1 / cosh(x / cap)**2`` in a second one, computed with ``tanh`` in the
first pass as ``4 e / (1 + e)**2``, ``e = exp(-2 |x / cap|)`` (``1 - tanh**2`` cancels: 100%
error once tanh rounds to 1). Beyond that it computes one exponential per element and writes
the gradient once; the row's single maximum class gets the cancellation-free form of the hot
path's gold class, with ``S - w q`` summed over the other classes. Its loop bodies carry
per-element branches and float64 ``tanh`` is a libm call, so it is several times slower than
the hot path.

Threads: rows are split in contiguous chunks, one per thread (``NUMBA_NUM_THREADS``, default
the CPU count), run by ``nogil`` kernels on a small Python thread pool; problems below 65536
elements run on the calling thread. The pool is fork-safe: a forked child (multiprocessing,
PyTorch DataLoader workers, gunicorn ``--preload``) inherits the pool object but none of its
threads, so an at-fork hook drops it there and the child's next threaded call makes its own.

Compiling: compiles go to numba's disk cache (``NUMBA_CACHE_DIR``, else ``__pycache__`` beside
this file, else the user's cache folder). Where none is writable (a read-only install) or under
``NUMBA_OPT=0`` (whose code numba cannot cache), the kernels are compiled without the cache,
once per process (``_CACHE``). With ``NUMBA_DISABLE_JIT=1`` they cannot run at all (their
intrinsics have no Python version): importing this module raises ``ImportError`` saying so,
and the dispatcher falls back to the core under ``backend="auto"``.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

__all__ = [
    "fused_rows",
    "log_softmax_rows",
    "logsumexp_rows",
    "softmax_rows",
    "supports",
]

if numba.config.DISABLE_JIT:
    # The kernels are LLVM intrinsics and overloads, which cannot run as Python: the module is
    # unavailable, and the dispatcher falls back to the core (or names this reason).
    msg = (
        "softmaxce's numba kernels cannot run with NUMBA_DISABLE_JIT=1 (they need the JIT "
        "compiler); unset it to use them"
    )
    raise ImportError(msg)


def _cache_probe() -> int:  # compiled never; numba looks up its cache folder (see _can_cache)
    return 0


def _can_cache() -> bool:
    """Whether numba can keep the compiled kernels in its disk cache.

    numba needs a writable folder for this file: ``NUMBA_CACHE_DIR``, the ``__pycache__``
    beside it, or the user's cache folder (``$XDG_CACHE_HOME``, ``~/.cache``). In a read-only
    install without any, ``cache=_CACHE`` raises at decoration (``no locator available``), so
    the kernels are compiled in each process instead. Under ``NUMBA_OPT=0`` (a debugging
    setting) the unoptimised code keeps the addresses of the functions it calls, which numba
    cannot cache (it would warn at each compile).
    """
    if numba.config.OPT == 0:
        return False
    try:
        njit(cache=True)(_cache_probe)
    except RuntimeError:  # no locator: no writable cache folder for this file
        return False
    return True


# The `cache=` of every njit function: caching only saves compile time, so where it is
# impossible the kernels run uncached rather than not at all.
_CACHE = _can_cache()

# Fast-math flags. `_FM_EXP` for the exponential: FMA contraction only. `_FM` for the loops:
# reassociation lets LLVM vectorise sums; no 'nnan'/'ninf', so non-finite values propagate.
_FM_EXP = {"contract"}
_FM = {"contract", "reassoc", "nsz"}

# ----------------------------------------------------------------------------------------------
# LLVM intrinsics: bit casts, float16 conversion, maxnum.


@intrinsic
def _i32_as_f32(typingctx, i):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _i64_as_f64(typingctx, i):
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@intrinsic
def _f32_bits(typingctx, f):
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@intrinsic
def _f64_bits(typingctx, f):
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def _half_to_f32(typingctx, h):
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@intrinsic
def _f32_to_half(typingctx, f):
    sig = types.uint16(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return sig, codegen


@intrinsic
def _maxnum(typingctx, a, b):
    """IEEE maxNum: the larger of ``a`` and ``b``, ignoring a NaN operand; vectorises."""
    sig = a(a, a)

    def codegen(context, builder, signature, args):
        lt = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maxnum", [lt], ir.FunctionType(lt, [lt, lt]))
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Prefetch the cache line of ``arr[idx]`` (1-D array) for reading."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # (address, read, locality 3 = keep in all levels, data cache)
        builder.call(
            fn,
            [
                builder.bitcast(ptr, i8p),
                ir.Constant(i32, 0),
                ir.Constant(i32, 3),
                ir.Constant(i32, 1),
            ],
        )
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------------------------
# Dtype-generic helpers (resolved at compile time by numba's overload mechanism).


def _ld(v):  # element of the logits (float32, float64, or float16 bits) -> accumulator float
    raise NotImplementedError


@overload(_ld, inline="always")
def _ov_ld(v):
    if v == types.uint16:
        return lambda v: _half_to_f32(v)
    if v == types.float32 or v == types.float64:
        return lambda v: v
    if isinstance(v, types.Float):  # other float dtypes of soft targets
        return lambda v: np.float64(v)
    return None


def _st(a, v):  # accumulator value -> element value of array `a`
    raise NotImplementedError


@overload(_st, inline="always")
def _ov_st(a, v):
    if a.dtype == types.uint16:
        return lambda a, v: _f32_to_half(np.float32(v))
    if a.dtype == types.float32:
        return lambda a, v: np.float32(v)
    return lambda a, v: np.float64(v)


def _acc0(a):  # a zero of the accumulator type of array `a`
    raise NotImplementedError


@overload(_acc0, inline="always")
def _ov_acc0(a):
    if a.dtype == types.float64:
        return lambda a: np.float64(0.0)
    return lambda a: np.float32(0.0)


def _cast(like, v):  # v converted to the type of the scalar `like`
    raise NotImplementedError


@overload(_cast, inline="always")
def _ov_cast(like, v):
    if like == types.float32:
        return lambda like, v: np.float32(v)
    return lambda like, v: np.float64(v)


def _grow(g_arg, xr, g, i):  # the gradient row i: xr itself when g_arg is None (in place)
    raise NotImplementedError


@overload(_grow, inline="always")
def _ov_grow(g_arg, xr, g, i):
    # In place, the loops must index the very same row view as they read: two views that
    # LLVM cannot prove equal fail its runtime alias check and run unvectorised.
    if isinstance(g_arg, (types.NoneType, types.Omitted)) or g_arg is None:
        return lambda g_arg, xr, g, i: xr
    return lambda g_arg, xr, g, i: g[i]


def _ebuf(g_arg, xr, g, i, scratch):  # where row i's exponentials are kept until scaled
    raise NotImplementedError


@overload(_ebuf, inline="always")
def _ov_ebuf(g_arg, xr, g, i, scratch):
    if xr.dtype == types.uint16:  # float16: a float32 scratch row, rounded once at the end
        return lambda g_arg, xr, g, i, scratch: scratch
    return lambda g_arg, xr, g, i, scratch: _grow(g_arg, xr, g, i)


# exp(v) = (2**-B P(r)) * 2**(k + B), so that subnormal results are rounded, not flushed (see
# the module docstring): B = 24 (float32), 54 (float64); P's coefficients carry the 2**-B.
_S32 = 2.0**-24
_S64 = 2.0**-54
_MAGIC32 = 12583063.0  # 1.5 * 2**23 + 127 + 24
_MAGIC64 = 6755399441056821.0  # 1.5 * 2**52 + 1023 + 54
_CLAMP32 = -104.5  # k = -151: 2**(k + 24) has zero bits; exp(v) < 2**-150.5 rounds to 0 below
_CLAMP64 = -746.4  # k = -1077: likewise; exp(v) < 2**-1076.5 rounds to 0 below


@njit(fastmath=_FM_EXP, cache=_CACHE, error_model="numpy")
def _exp32(v):
    """exp(v) for v <= 0, -inf or NaN (NaN in, NaN out); subnormal results as NumPy's."""
    # Clamp: v <= -104.5 (and -inf) gives k = -151 and exactly 0. A select of this form
    # compiles to one vmaxps(-104.5, v), which returns v when v is NaN: the NaN then flows
    # through r and p into the result.
    vc = np.float32(_CLAMP32) if v < np.float32(_CLAMP32) else v
    # Rounding by the magic number 1.5 * 2**23 + 151: the low bits of `kb` hold k + 151, and
    # kb - magic is k exactly (no reassociation is allowed in this function).
    kb = vc * np.float32(1.4426950408889634) + np.float32(_MAGIC32)
    kf = kb - np.float32(_MAGIC32)
    r = vc - kf * np.float32(0.693145751953125)  # ln 2 high part: 12 significant bits
    r = r - kf * np.float32(1.4286068203094172e-06)  # ln 2 - high part
    # near-minimax degree-6 polynomial for exp on [-ln2/2, ln2/2] (rel. error 1.9e-9), times 2**-24
    p = np.float32(0.0013841403415426612 * _S32)
    p = p * r + np.float32(0.008374842815101147 * _S32)
    p = p * r + np.float32(0.04166814312338829 * _S32)
    p = p * r + np.float32(0.16666419804096222 * _S32)
    p = p * r + np.float32(0.49999991059303284 * _S32)
    p = p * r + np.float32(_S32)
    p = p * r + np.float32(_S32)
    return p * _i32_as_f32(_f32_bits(kb) << np.int32(23))  # 2**(k + 24) from k + 151


@njit(fastmath=_FM_EXP, cache=_CACHE, error_model="numpy")
def _exp64(v):
    """exp(v) for v <= 0, -inf or NaN; subnormal results as NumPy's."""
    vc = _CLAMP64 if v < _CLAMP64 else v  # -> k = -1077: zero bits, result exactly 0
    kb = vc * 1.4426950408889634 + _MAGIC64
    kf = kb - _MAGIC64
    r = vc - kf * 6.93147180369123816490e-01  # fdlibm's ln2_hi (trailing zeros)
    r = r - kf * 1.90821492927058770002e-10  # ln2_lo
    p = _S64 / 6227020800.0  # Taylor, degree 13: truncation error 4e-18 on |r| <= ln2/2
    p = p * r + _S64 / 479001600.0
    p = p * r + _S64 / 39916800.0
    p = p * r + _S64 / 3628800.0
    p = p * r + _S64 / 362880.0
    p = p * r + _S64 / 40320.0
    p = p * r + _S64 / 5040.0
    p = p * r + _S64 / 720.0
    p = p * r + _S64 / 120.0
    p = p * r + _S64 / 24.0
    p = p * r + _S64 / 6.0
    p = p * r + _S64 * 0.5
    p = p * r + _S64
    p = p * r + _S64
    return p * _i64_as_f64(_f64_bits(kb) << np.int64(52))  # 2**(k + 54) from k + 1077


def _exp(v):
    raise NotImplementedError


@overload(_exp, inline="always")
def _ov_exp(v):
    if v == types.float32:
        return lambda v: _exp32(v)
    return lambda v: _exp64(v)


@njit(fastmath=_FM_EXP, cache=_CACHE, error_model="numpy")
def _tanh32(u):
    """``(tanh u, 1 - tanh(u)**2)`` for float32, vectorisable. tanh: an odd near-minimax
    polynomial for |u| < 0.625 (rel. error 4.5e-9), else (1 - e) / (1 + e) with
    e = exp(-2|u|); measured error below 3 ulp. The derivative as 4 e / (1 + e)**2 (that is
    1 / cosh(u)**2), which has no cancellation: 1 - tanh**2 loses all digits once tanh rounds
    to 1 (|u| > 9). ±inf give (±1, 0), NaN gives NaN."""
    a = -u if u < np.float32(0.0) else u
    v = a * a
    q = np.float32(-0.005712322890758514)
    q = q * v + np.float32(0.02064627967774868)
    q = q * v + np.float32(-0.0537421740591526)
    q = q * v + np.float32(0.13331475853919983)
    q = q * v + np.float32(-0.3333328366279602)
    small = a + a * v * q
    e = _exp32(np.float32(-2.0) * a)
    ep1 = np.float32(1.0) + e
    big = (np.float32(1.0) - e) / ep1
    r = small if a < np.float32(0.625) else big
    return (-r if u < np.float32(0.0) else r), (np.float32(4.0) * e) / (ep1 * ep1)


@njit(fastmath=_FM_EXP, cache=_CACHE, error_model="numpy")
def _tanh64(u):
    """``(tanh u, 1 - tanh(u)**2)`` for float64: tanh from libm (scalar), the derivative as
    4 e / (1 + e)**2 with e = exp(-2|u|), as in :func:`_tanh32`."""
    e = _exp64(-2.0 * (-u if u < 0.0 else u))
    ep1 = 1.0 + e
    return math.tanh(u), (4.0 * e) / (ep1 * ep1)


def _tanh(u):  # (tanh u, its derivative 1 / cosh(u)**2)
    raise NotImplementedError


@overload(_tanh, inline="always")
def _ov_tanh(u):
    if u == types.float32:
        return lambda u: _tanh32(u)
    return lambda u: _tanh64(u)


# ----------------------------------------------------------------------------------------------
# Row primitives.


@njit(fastmath=_FM, cache=_CACHE, error_model="numpy")
def _row_max(xr, zero):
    """max_c xr[c]: one vectorised read. maxnum skips NaN entries; they need no test here,
    since exp(NaN - m) is NaN and makes the row's sum, loss and gradient NaN."""
    m = _cast(zero, -np.inf)
    for c in range(xr.shape[0]):
        m = _maxnum(m, _ld(xr[c]))
    return m


@njit(cache=_CACHE)
def _fill(gr, value):
    for c in range(gr.shape[0]):
        gr[c] = value


@njit(cache=_CACHE)
def _log_sum(rest, ties):
    """``(log s, s)`` in float64 for ``s = ties + rest``: ``log1p(rest)`` for one maximum."""
    r = np.float64(rest)
    if ties == 1.0:
        return math.log1p(r), 1.0 + r
    return math.log(r + np.float64(ties)), r + np.float64(ties)


_BLOCK = 256  # elements between prefetches of the next row (16 cache lines of float32)


# ----------------------------------------------------------------------------------------------
# The hot path: integer targets, no where, no softcap, no KL.


@njit(fastmath=_FM_EXP, cache=_CACHE, error_model="numpy")
def _gold_grad(d_t, rest, ties, s_total, big_s, wq_t, other, zl, r):
    """The gradient at the gold class t in float64, ``r ((S + zl) p_t - w_t q_t)`` with
    ``S = sum_c w_c q_c``, ``zl = 2 zeta lse``, ``d_t = z_t - m``; once per row.

    Its exponential is recomputed rather than read back from a rounded buffer. When t is the
    row's single maximum (a confident row: p_t rounds to 1) that difference cancels; there
    ``s = 1 + rest`` and it equals ``((S - w_t q_t) + zl - w_t q_t rest) / s``, with
    ``other = S - w_t q_t`` formed without p: no cancellation.
    """
    if d_t == 0.0 and ties == 1.0:
        return r * ((other + zl) - wq_t * np.float64(rest)) / s_total
    return r * ((big_s + zl) * (np.float64(_exp(d_t)) / s_total) - wq_t)


@njit(nogil=True, fastmath=_FM, cache=_CACHE, error_model="numpy")
def _index_rows(
    lo, hi, x, t, w, w_total, ignore_index, eps, z_loss, rs, has_grad, g_arg, scratch, loss
):
    """Rows ``lo:hi`` of the hot path (one thread). While the exponential pass works on row
    i, row i + 1 is prefetched block by block, so its memory traffic overlaps row i's
    arithmetic and its max pass reads cache."""
    c_count = x.shape[1]
    zero = _acc0(x)
    one = zero + np.float32(1.0)
    spread = _cast(zero, eps / c_count)  # eps / C
    n_blocks = c_count // _BLOCK
    for i in range(lo, hi):
        xr = x[i]
        gr = _grow(g_arg, xr, g_arg, i)  # (never written without has_grad)
        ti = t[i]
        if ti == ignore_index or ti < 0 or ti >= c_count:
            # ignored (or, defensively, an unvalidated out-of-range label: NaN)
            bad = ti != ignore_index
            loss[i] = np.nan if bad else 0.0
            if has_grad:
                _fill(gr, _st(gr, _cast(zero, np.nan) if bad else zero))
            continue
        xt = _ld(xr[ti])  # read before the row is overwritten (in place)
        m = _row_max(xr, zero)
        if m == np.inf:
            # +inf logit: lse is NaN (+inf - inf), so loss and gradient are NaN
            loss[i] = np.nan
            if has_grad:
                _fill(gr, _st(gr, _cast(zero, np.nan)))
            continue
        if m == -np.inf:
            m = zero
        # pass 2: exponentials (kept in the gradient row), their sum s, the smoothing sum
        # sum_c w_c (z_c - m). Full blocks of _BLOCK have a constant trip count (LLVM unrolls
        # them) and a provably non-negative index b0 + j (no wraparound code); after each, the
        # matching block of the next row is prefetched. Then the tail.
        xn = x[i + 1] if i + 1 < hi else xr
        eb = _ebuf(g_arg, xr, g_arg, i, scratch)
        # s = ties + rest: the entries equal to the maximum (exp = 1, counted) and the others,
        # so that log(s) = log1p(rest) keeps a confident row's tiny loss accurate (as in the
        # core and _softmax_rows).
        s = zero
        ties = zero
        sz = zero
        for blk in range(n_blocks + 1):
            b0 = blk * _BLOCK
            nb = _BLOCK if blk < n_blocks else c_count - b0
            if has_grad:
                if eps > 0.0:
                    for j in range(nb):
                        c = b0 + j
                        d = _ld(xr[c]) - m
                        e = _exp(d)
                        eb[c] = e
                        s += e if d != zero else zero
                        ties += one if d == zero else zero
                        wc = _cast(zero, w[c])
                        sz += wc * d if wc != zero else zero
                else:
                    for j in range(nb):
                        c = b0 + j
                        d = _ld(xr[c]) - m
                        e = _exp(d)
                        eb[c] = e
                        s += e if d != zero else zero
                        ties += one if d == zero else zero
            elif eps > 0.0:
                for j in range(nb):
                    c = b0 + j
                    d = _ld(xr[c]) - m
                    s += _exp(d) if d != zero else zero
                    ties += one if d == zero else zero
                    wc = _cast(zero, w[c])
                    sz += wc * d if wc != zero else zero
            else:
                for j in range(nb):
                    d = _ld(xr[b0 + j]) - m
                    s += _exp(d) if d != zero else zero
                    ties += one if d == zero else zero
            if blk < n_blocks:
                for j in range(0, _BLOCK, 16):  # one per 64-byte line of float32
                    _prefetch(xn, b0 + j)
        # The per-row scalars are combined in float64 (the row sums s and sz are exact to
        # the accumulator's rounding; the final cancellation S log s - T is then harmless).
        log_s, s_total = _log_sum(s, ties)
        lse = np.float64(m) + log_s
        gold = (1.0 - eps) * w[ti]  # w_t (1 - eps)
        big_s = gold  # S = sum_c w_c q_c
        # T = sum_c w_c q_c (z_c - m)
        big_t = gold * (np.float64(xt) - np.float64(m)) if gold != 0.0 else 0.0
        if eps > 0.0:
            big_s += eps / c_count * w_total
            big_t += eps / c_count * np.float64(sz)
        li = big_s * log_s - big_t  # = sum_c w_c q_c (lse - z_c)
        zl = 0.0  # 2 zeta lse, in float64 (z_loss may exceed the float32 range; lse may be 0)
        if z_loss > 0.0:
            li += (z_loss * lse) * lse
            zl = 2.0 * (z_loss * lse)
        loss[i] = li
        if has_grad:
            # pass 3: g_c = r ((S + 2 zeta lse) e_c / s - w_c q_c)
            r = _cast(zero, rs[i])
            a = _cast(zero, rs[i] * (big_s + zl) / s_total)
            b = r * spread
            if eps > 0.0:
                for c in range(c_count):
                    gr[c] = _st(gr, a * eb[c] - b * _cast(zero, w[c]))
            else:
                for c in range(c_count):
                    gr[c] = _st(gr, a * eb[c])
            # the gold class: r ((S + zl) p_t - w_t q_t), formed without cancellation
            spread64 = eps / c_count
            wq_t = gold + spread64 * w[ti]
            other = spread64 * (w_total - w[ti])  # S - w_t q_t
            gt = _gold_grad(xt - m, s, ties, s_total, big_s, wq_t, other, zl, rs[i])
            gr[ti] = _st(gr, _cast(zero, gt))


# ----------------------------------------------------------------------------------------------
# The general path: every option; a scratch row of z per thread.


@njit(nogil=True, fastmath=_FM, cache=_CACHE, error_model="numpy")
def _general_rows(
    lo,
    hi,
    x,
    t,
    y,
    soft,
    w,
    has_w,
    ignore_index,
    eps,
    z_loss,
    cap,
    has_cap,
    wh,
    has_where,
    kl,
    rs,
    has_grad,
    g_arg,
    zb,
    cb,
    scratch,
    loss,
):
    c_count = x.shape[1]
    zero = _acc0(x)
    one = zero + np.float32(1.0)
    ninf = _cast(zero, -np.inf)
    keep = _cast(zero, 1.0 - eps)
    capa = _cast(zero, cap)
    inv_cap = one / capa
    for i in range(lo, hi):
        xr = x[i]
        gr = _grow(g_arg, xr, g_arg, i)
        ti = 0
        if not soft:
            ti = t[i]
            if ti == ignore_index or ti < 0 or ti >= c_count:
                bad = ti != ignore_index
                loss[i] = np.nan if bad else 0.0
                if has_grad:
                    _fill(gr, _st(gr, _cast(zero, np.nan) if bad else zero))
                continue
        # pass 1: z (capped, masked) into the scratch row zb, with a softcap its derivative
        # dz/dx = 1 / cosh(x / cap)**2 into cb; separate simple loops, so that each
        # vectorises; then its max (NaN entries need no test: see the hot path) and the number
        # of allowed classes
        if has_cap:
            if has_where:
                for c in range(c_count):
                    th, dz = _tanh(_ld(xr[c]) * inv_cap)
                    zb[c] = capa * th if wh[i, c] else ninf
                    cb[c] = dz
            else:
                for c in range(c_count):
                    th, dz = _tanh(_ld(xr[c]) * inv_cap)
                    zb[c] = capa * th
                    cb[c] = dz
        elif has_where:
            for c in range(c_count):
                v = _ld(xr[c])
                zb[c] = v if wh[i, c] else ninf
        else:
            for c in range(c_count):
                zb[c] = _ld(xr[c])
        m = _row_max(zb, zero)
        count = c_count
        if has_where:
            count = 0
            for c in range(c_count):
                count += 1 if wh[i, c] else 0
        if count == 0:
            loss[i] = 0.0
            if has_grad:
                _fill(gr, _st(gr, zero))
            continue
        if m == np.inf:
            # lse is NaN: NaN loss, NaN gradient on the allowed classes, 0 elsewhere
            loss[i] = np.nan
            if has_grad:
                nan = _cast(zero, np.nan)
                for c in range(c_count):
                    allowed = (not has_where) or wh[i, c]
                    gr[c] = _st(gr, nan if allowed else zero)
            continue
        if m == -np.inf:
            m = zero
        spread = _cast(zero, eps / count)  # eps / |A_i|
        # pass 2: exponentials, s, S = sum w q, T = sum w q (z - m), the KL term
        eb = _ebuf(g_arg, xr, g_arg, i, scratch)  # written only with has_grad
        s = zero  # the terms below the maximum's; ties counts the maximum's (see the hot path)
        ties = zero
        big_s = 0.0  # the loss sums in float64: they may cancel (KL, smoothing)
        big_s_rest = 0.0  # S without the maximum's term (for the gradient there, pass 3)
        big_t = 0.0
        klt = 0.0
        for c in range(c_count):
            allowed = (not has_where) or wh[i, c]
            d = zb[c] - m
            e = _exp(d)
            if has_grad:
                eb[c] = e
            s += e if d != zero else zero
            ties += one if d == zero else zero
            if soft:
                q = keep * _cast(zero, _ld(y[i, c]))
            else:
                q = keep if c == ti else zero
            if allowed:
                q += spread
            wq = np.float64(q) * w[c] if has_w else np.float64(q)
            big_s += wq
            big_s_rest += wq if d != zero else 0.0
            big_t += wq * np.float64(d) if wq != 0.0 else 0.0
            if kl:
                klt += wq * math.log(np.float64(q)) if wq != 0.0 else 0.0
        log_s, s_total = _log_sum(s, ties)
        lse = np.float64(m) + log_s
        li = big_s * log_s - big_t
        zl = 0.0  # 2 zeta lse, in float64 (z_loss may exceed the float32 range; lse may be 0)
        if z_loss > 0.0:
            li += (z_loss * lse) * lse
            zl = 2.0 * (z_loss * lse)
        if kl:
            li += klt
        loss[i] = li
        if not has_grad:
            continue
        # pass 3: the gradient, written once: g_c = r ((S + 2 zeta lse) e_c / s - w_c q_c).
        # At the row's single maximum (e = 1, s = 1 + rest) that difference would cancel for a
        # confident row (p rounds to 1); it is formed as r ((S - wq) + 2 zeta lse - wq rest) / s
        # instead, S - wq summed without the maximum's term: the same value, no cancellation.
        r = _cast(zero, rs[i])
        a = _cast(zero, rs[i] * (big_s + zl) / s_total)
        top = ties == one
        a_top = _cast(zero, rs[i] * (big_s_rest + zl) / s_total)
        b_top = _cast(zero, rs[i] * np.float64(s) / s_total)
        for c in range(c_count):
            allowed = (not has_where) or wh[i, c]
            if soft:
                q = keep * _cast(zero, _ld(y[i, c]))
            else:
                q = keep if c == ti else zero
            if allowed:
                q += spread
            wq = q * _cast(zero, w[c]) if has_w else q
            gc = a * eb[c] - r * wq
            if top and zb[c] == m:
                gc = a_top - b_top * wq
            if has_cap:
                gc *= cb[c]
            gr[c] = _st(gr, gc if allowed else zero)


# ----------------------------------------------------------------------------------------------
# Softmax, log-softmax, logsumexp rows (no options; float32/float64, 2-D C-contiguous).


@njit(fastmath=_FM_EXP, cache=_CACHE, error_model="numpy")
def _shift(orow, xr, m, log_s):
    """``orow = (xr - m) - log_s``, in this order (no reassociation here): ``xr - m`` is
    exact near the maximum, so log_softmax there keeps its relative accuracy."""
    for c in range(xr.shape[0]):
        orow[c] = (xr[c] - m) - log_s


@njit(nogil=True, fastmath=_FM, cache=_CACHE, error_model="numpy")
def _softmax_rows(lo, hi, x, out_arg, log, lse_out):
    """softmax (log=0), log_softmax (log=1) into out (x itself when out_arg is None), or only
    the logsumexp into lse_out (log=2)."""
    zero = _acc0(x)
    for i in range(lo, hi):
        xr = x[i]
        orow = _grow(out_arg, xr, out_arg, i)
        m = _row_max(xr, zero)
        if m == np.inf:
            if log == 2:
                lse_out[i] = np.nan
            else:
                _fill(orow, _cast(zero, np.nan))
            continue
        if m == -np.inf:
            m = zero
        s = zero
        if log == 0:
            for c in range(xr.shape[0]):
                e = _exp(xr[c] - m)
                orow[c] = e
                s += e
            inv = (zero + np.float32(1.0)) / s
            for c in range(xr.shape[0]):
                orow[c] *= inv
        else:
            # s = ties + rest: the entries equal to the maximum (exp = 1, counted) and the
            # others; log(s) = log1p(rest) for a single maximum keeps log_softmax's relative
            # accuracy at the maximum when rest is tiny (a dominant logit)
            ties = zero
            for c in range(xr.shape[0]):
                d = xr[c] - m
                s += _exp(d) if d != zero else zero
                ties += zero + np.float32(1.0) if d == zero else zero
            if ties == zero + np.float32(1.0):
                log_s = _cast(zero, math.log1p(np.float64(s)))
            else:
                log_s = _cast(zero, math.log(np.float64(s) + np.float64(ties)))
            if log == 2:
                lse_out[i] = m + log_s
            else:
                _shift(orow, xr, m, log_s)


# ----------------------------------------------------------------------------------------------
# Python side: row chunks on threads.

# Below this many elements a call runs on the calling thread only (thread hand-off costs more).
_MIN_PARALLEL = 1 << 16
_pool = None
_pool_lock = threading.Lock()


def _forget_pool() -> None:
    """In a forked child: the parent's pool came along without its threads (a fork copies
    only the calling thread), so work handed to it would wait forever; and the lock may have
    been held by another parent thread. Start afresh: the next threaded call makes a pool."""
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX; elsewhere there is no fork
    os.register_at_fork(after_in_child=_forget_pool)


def _chunks(n: int, c: int) -> int:
    """How many row chunks (threads) for an (n, c) problem: ``NUMBA_NUM_THREADS`` (the CPU
    count unless set), 1 for small problems. Read from numba's config rather than
    ``numba.get_num_threads()``, which would start numba's own threading layer (unused here)
    beside the caller's, e.g. PyTorch's."""
    if n < 2 or n * c < _MIN_PARALLEL:
        return 1
    return max(1, min(numba.config.NUMBA_NUM_THREADS, n))


def _run(kernel, n, k, args_for):
    """Run ``kernel(lo, hi, *args_for(j))`` over k contiguous row chunks, one per thread.

    The kernels release the GIL (``nogil=True``); chunk 0 runs on the calling thread. Python
    threads rather than ``prange``: the compile is about twice as fast, and concurrent calls
    from several user threads are safe whatever numba's threading layer is.
    """
    if k <= 1:
        kernel(0, n, *args_for(0))
        return
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < k - 1:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=k - 1, thread_name_prefix="softmaxce"
            )
        pool = _pool
    bounds = [j * n // k for j in range(k + 1)]
    futures = [pool.submit(kernel, bounds[j], bounds[j + 1], *args_for(j)) for j in range(1, k)]
    kernel(bounds[0], bounds[1], *args_for(0))
    for f in futures:
        f.result()


_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_F64_1 = np.zeros(1, dtype=np.float64)  # placeholder for row_scale (never read)


def _is_c2d(a, dtype=None) -> bool:
    return (
        isinstance(a, np.ndarray)
        and a.ndim == 2
        and a.flags.c_contiguous
        and a.flags.aligned
        and (dtype is None or a.dtype == dtype)
    )


def supports(x, target, *, where=None, grad_out=None, weight=None, row_scale=None) -> bool:
    """Whether :func:`fused_rows` accepts these arrays (the dispatcher falls back otherwise).

    Accepted: ``x`` a 2-D C-contiguous aligned float16/float32/float64 ndarray; ``target`` a
    1-D integer array of length N, or a float16/32/64 array of x's 2-D shape (any strides);
    ``where`` None or a bool array of x's shape (any strides, broadcast views included);
    ``grad_out`` None, ``x`` itself, or a writeable C-contiguous array of x's shape and dtype
    that shares no memory with x; ``weight`` None or (C,); ``row_scale`` None or (N,).
    Everything else is rejected: non-contiguous or misaligned logits, other dtypes (bfloat16,
    complex, integer logits), wrong shapes, a ``grad_out`` that partially overlaps x.
    """
    if not _is_c2d(x) or x.dtype not in _FLOATS:
        return False
    n, c = x.shape
    if not isinstance(target, np.ndarray):
        return False
    if target.ndim == 1:
        if target.shape != (n,) or target.dtype.kind not in "iu":
            return False
    elif target.ndim == 2:
        if target.shape != (n, c) or target.dtype not in _FLOATS:
            return False
    else:
        return False
    if where is not None and (
        not isinstance(where, np.ndarray) or where.shape != (n, c) or where.dtype != np.bool_
    ):
        return False
    if grad_out is not None and grad_out is not x:
        if not _is_c2d(grad_out, x.dtype) or grad_out.shape != x.shape:
            return False
        if not grad_out.flags.writeable or np.shares_memory(grad_out, x):
            return False
    if weight is not None and np.shape(weight) != (c,):
        return False
    return row_scale is None or np.shape(row_scale) == (n,)


def _bits(a):
    """float16 arrays travel as their uint16 bits (numba has no float16 on the CPU)."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


def fused_rows(
    x,
    target,
    *,
    weight,
    ignore_index,
    label_smoothing,
    z_loss,
    softcap,
    where,
    kl,
    row_scale,
    grad_out,
):
    """Per-row fused softmax cross-entropy (and gradient); see ``docs/internals.md``.

    Same contract as ``softmaxce._core.rows.fused_rows``; the inputs must satisfy :func:`supports`.
    Returns the (N,) float64 per-row losses; with ``row_scale`` writes the gradient into
    ``grad_out`` (which may be ``x``: then nothing of size N x C is allocated). An index
    target outside ``[0, C)`` that is not ``ignore_index`` (the public API rejects those)
    gives a NaN row instead of reading out of bounds.
    """
    n, c = x.shape
    loss = np.empty(n, dtype=np.float64)
    has_grad = row_scale is not None
    if has_grad and grad_out is None:
        msg = "fused_rows: row_scale is given but grad_out is None"
        raise ValueError(msg)
    if n == 0:
        return loss
    if c == 0:  # no allowed class in any row
        loss[:] = 0.0
        return loss
    xb = _bits(x)
    if has_grad:  # None: the kernel writes into x itself (in place)
        gb = None if grad_out is x else _bits(grad_out)
    else:  # never written; a writable stand-in (x may be read-only), typed like grad_out
        gb = _bits(np.empty((n, 0), dtype=x.dtype))
    rs = np.ascontiguousarray(row_scale, dtype=np.float64) if has_grad else _F64_1
    has_w = weight is not None
    w = np.ascontiguousarray(weight, dtype=np.float64) if has_w else np.ones(c, dtype=np.float64)
    k = _chunks(n, c)
    acc = np.float64 if x.dtype == np.float64 else np.float32
    # float16 gradients: the exponentials wait in a float32 scratch row per thread
    f16 = has_grad and x.dtype == np.float16
    scratch = np.empty((k, c) if f16 else (k, 1), dtype=acc)
    eps = float(label_smoothing)
    soft = target.ndim == 2
    if not soft and where is None and softcap is None and not kl:
        t = np.ascontiguousarray(target, dtype=np.int64)
        fixed = (t, w, float(np.sum(w)), int(ignore_index), eps, float(z_loss), rs, has_grad, gb)
        _run(_index_rows, n, k, lambda j: (xb, *fixed, scratch[j], loss))
        return loss
    if soft:
        t = np.zeros(1, dtype=np.int64)
        y = _bits(target)
    else:
        t = np.ascontiguousarray(target, dtype=np.int64)
        y = np.zeros((1, 1), dtype=acc)
    has_where = where is not None
    wh = where if has_where else np.ones((1, 1), dtype=np.bool_)
    has_cap = softcap is not None
    zbuf = np.empty((k, c), dtype=acc)
    cbuf = np.empty((k, c) if has_cap else (k, 1), dtype=acc)  # softcap: dz/dx per class
    fixed = (
        t,
        y,
        soft,
        w,
        has_w,
        int(ignore_index),
        eps,
        float(z_loss),
        float(softcap) if has_cap else 1.0,
        has_cap,
        wh,
        has_where,
        bool(kl),
        rs,
        has_grad,
        gb,
    )
    _run(_general_rows, n, k, lambda j: (xb, *fixed, zbuf[j], cbuf[j], scratch[j], loss))
    return loss


def _check_rows(x, name):
    if not _is_c2d(x) or x.dtype not in (np.float32, np.float64):
        msg = (
            f"{name}: expected a 2-D C-contiguous float32/float64 array, got "
            f"{getattr(x, 'dtype', type(x).__name__)} with shape {np.shape(x)}"
        )
        raise TypeError(msg)


def _check_out(x, out, name):
    if (out is not x and (not _is_c2d(out, x.dtype) or out.shape != x.shape)) or not (
        out.flags.writeable
    ):
        msg = (
            f"{name}: out must be x or a writeable C-contiguous {x.dtype} array of shape {x.shape}"
        )
        raise TypeError(msg)


def softmax_rows(x, out):
    """``out[i] = softmax(x[i])`` for 2-D C-contiguous float32/float64 ``x``.

    ``out``: x itself (in place) or a C-contiguous array of x's shape and dtype.
    """
    _check_rows(x, "softmax_rows")
    _check_out(x, out, "softmax_rows")
    o = None if out is x else out
    _run(_softmax_rows, x.shape[0], _chunks(*x.shape), lambda j: (x, o, 0, x[:0, 0]))
    return out


def log_softmax_rows(x, out):
    """``out[i] = log_softmax(x[i])``; ``out`` as for :func:`softmax_rows`."""
    _check_rows(x, "log_softmax_rows")
    _check_out(x, out, "log_softmax_rows")
    o = None if out is x else out
    _run(_softmax_rows, x.shape[0], _chunks(*x.shape), lambda j: (x, o, 1, x[:0, 0]))
    return out


def logsumexp_rows(x):
    """``logsumexp(x[i])`` per row: shape (N,), x's dtype."""
    _check_rows(x, "logsumexp_rows")
    out = np.empty(x.shape[0], dtype=x.dtype)
    stand_in = np.empty((x.shape[0], 0), dtype=x.dtype)  # never written (x may be read-only)
    _run(_softmax_rows, x.shape[0], _chunks(*x.shape), lambda j: (x, stand_in, 2, out))
    return out
