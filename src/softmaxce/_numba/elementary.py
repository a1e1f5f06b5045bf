"""The elementary functions of the kernels: exp, tanh with the softcap's slope, log of a sum.

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
everywhere else. These functions use only the ``contract`` fast-math flag (FMA), so the
rounding trick and the range reduction run exactly as written; they are not inlined into
numba's IR (which would give them the loops' flags) but left to LLVM's inliner, which keeps
each instruction's flags.

The softcap ``z = cap * tanh(x / cap)`` and its slope ``dz/dx = 1 - tanh(u)**2``, formed as
``4 e / (1 + e)**2`` with ``e = exp(-2|u|)``, ``u = x / cap``: ``1 - tanh**2`` cancels (100%
error once tanh rounds to 1, ``|u| > 9``), this form does not.
"""

from __future__ import annotations

import math

import numpy as np
from numba import types

from .caching import FM_EXP, by_type, jit
from .intrinsics import f32_bits, f64_bits, i32_as_f32, i64_as_f64

# exp(v) = (2**-B P(r)) * 2**(k + B), so that subnormal results are rounded, not flushed (see
# the module docstring): B = 24 (float32), 54 (float64); P's coefficients carry the 2**-B.
_S32 = 2.0**-24
_S64 = 2.0**-54
_MAGIC32 = 12583063.0  # 1.5 * 2**23 + 127 + 24
_MAGIC64 = 6755399441056821.0  # 1.5 * 2**52 + 1023 + 54
_CLAMP32 = -104.5  # k = -151: 2**(k + 24) has zero bits; exp(v) < 2**-150.5 rounds to 0 below
_CLAMP64 = -746.4  # k = -1077: likewise; exp(v) < 2**-1076.5 rounds to 0 below


@jit(fastmath=FM_EXP)
def exp32(v):
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
    # near-minimax degree-6 polynomial for exp on [-ln2/2, ln2/2] (rel. error 1.9e-9), * 2**-24
    p = np.float32(0.0013841403415426612 * _S32)
    p = p * r + np.float32(0.008374842815101147 * _S32)
    p = p * r + np.float32(0.04166814312338829 * _S32)
    p = p * r + np.float32(0.16666419804096222 * _S32)
    p = p * r + np.float32(0.49999991059303284 * _S32)
    p = p * r + np.float32(_S32)
    p = p * r + np.float32(_S32)
    return p * i32_as_f32(f32_bits(kb) << np.int32(23))  # 2**(k + 24) from k + 151


@jit(fastmath=FM_EXP)
def exp64(v):
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
    return p * i64_as_f64(f64_bits(kb) << np.int64(52))  # 2**(k + 54) from k + 1077


@by_type
def exp(v):
    """exp of an accumulator float (float32 or float64), ``v <= 0``."""
    if v == types.float32:
        return lambda v: exp32(v)
    return lambda v: exp64(v)


@jit(fastmath=FM_EXP)
def tanh32(u):
    """``(tanh u, 1 - tanh(u)**2)`` for float32, vectorisable. tanh: an odd near-minimax
    polynomial for |u| < 0.625 (rel. error 4.5e-9), else (1 - e) / (1 + e) with
    e = exp(-2|u|); measured error below 3 ulp. The slope as 4 e / (1 + e)**2 (see the module
    docstring). ±inf give (±1, 0), NaN gives NaN."""
    a = -u if u < np.float32(0.0) else u
    v = a * a
    q = np.float32(-0.005712322890758514)
    q = q * v + np.float32(0.02064627967774868)
    q = q * v + np.float32(-0.0537421740591526)
    q = q * v + np.float32(0.13331475853919983)
    q = q * v + np.float32(-0.3333328366279602)
    small = a + a * v * q
    e = exp32(np.float32(-2.0) * a)
    ep1 = np.float32(1.0) + e
    big = (np.float32(1.0) - e) / ep1
    r = small if a < np.float32(0.625) else big
    return (-r if u < np.float32(0.0) else r), (np.float32(4.0) * e) / (ep1 * ep1)


@jit(fastmath=FM_EXP)
def tanh64(u):
    """``(tanh u, 1 - tanh(u)**2)`` for float64: tanh from libm (scalar), the slope as in
    ``tanh32``."""
    e = exp64(-2.0 * (-u if u < 0.0 else u))
    ep1 = 1.0 + e
    return math.tanh(u), (4.0 * e) / (ep1 * ep1)


@by_type
def tanh(u):
    """``(tanh u, its slope 1 / cosh(u)**2)`` of an accumulator float."""
    if u == types.float32:
        return lambda u: tanh32(u)
    return lambda u: tanh64(u)


@jit(fastmath=FM_EXP)
def log_sum(rest, ties):
    """``(log s, s)`` in float64 for ``s = ties + rest`` (the entries equal to the row
    maximum, each exactly 1, and the others): ``log1p((ties - 1) + rest)`` when the maximum is
    present, which keeps a confident row's tiny loss accurate (no reassociation here: ``(ties
    + rest) - 1`` would round it away)."""
    r = np.float64(rest)
    t = np.float64(ties)
    if t >= 1.0:
        return math.log1p((t - 1.0) + r), t + r
    return math.log(t + r), t + r
