"""LLVM intrinsics numba does not expose, and the dtype-generic loads and stores built on them.

* bit casts between float32/float64 and int32/int64 (the exponential builds ``2**k`` from
  bits), float16 <-> float32 conversion (F16C: numba has no float16 arithmetic on the CPU, so
  float16 arrays travel as their ``uint16`` bits), bfloat16 <-> float32 conversion (bfloat16
  arrays travel as their bits typed ``int16``: the element type tells the two 16-bit formats
  apart at compile time; a bfloat16 is the upper half of a float32, rounded to nearest even),
  IEEE ``maxNum`` (a vectorisable maximum that ignores a NaN operand) and a cache-line prefetch;
* ``ld`` (an element -> the accumulator float: float16 and bfloat16 bits widen to float32),
  ``st`` (an accumulator value -> the element type of an array, rounding once), ``acc0`` (a
  zero of an array's accumulator type: float64 for float64, float32 otherwise) and ``cast``:
  chosen at compile time from the types (``caching.by_type``), so that one loop body serves
  every dtype.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .caching import by_type


def _bitcast(src, dst, dst_ir):
    @intrinsic
    def cast(typingctx, v):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], dst_ir)

        return dst(src), codegen

    return cast


i32_as_f32 = _bitcast(types.int32, types.float32, ir.FloatType())
i64_as_f64 = _bitcast(types.int64, types.float64, ir.DoubleType())
f32_bits = _bitcast(types.float32, types.int32, ir.IntType(32))
f64_bits = _bitcast(types.float64, types.int64, ir.IntType(64))


@intrinsic
def half_to_f32(typingctx, h):
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_half(typingctx, f):
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(types.float32), codegen


@intrinsic
def bf16_to_f32(typingctx, h):
    """bfloat16 bits (as ``int16``) -> float32: the bits are the float32's upper half."""

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        wide = builder.shl(builder.zext(args[0], i32), ir.Constant(i32, 16))
        return builder.bitcast(wide, ir.FloatType())

    return types.float32(types.int16), codegen


@intrinsic
def f32_to_bf16(typingctx, f):
    """float32 -> bfloat16 bits (as ``int16``), rounded to nearest, ties to even; a NaN stays a
    (quiet) NaN. Integer operations only, so no fast-math flag can fold the NaN test away."""

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        u = builder.bitcast(args[0], i32)
        hi = builder.lshr(u, ir.Constant(i32, 16))
        odd = builder.and_(hi, ir.Constant(i32, 1))
        rounded = builder.lshr(
            builder.add(builder.add(u, ir.Constant(i32, 0x7FFF)), odd), ir.Constant(i32, 16)
        )
        mag = builder.and_(u, ir.Constant(i32, 0x7FFFFFFF))
        nan = builder.icmp_unsigned(">", mag, ir.Constant(i32, 0x7F800000))
        quiet = builder.or_(hi, ir.Constant(i32, 0x40))
        return builder.trunc(builder.select(nan, quiet, rounded), ir.IntType(16))

    return types.int16(types.float32), codegen


@intrinsic
def maxnum(typingctx, a, b):
    """IEEE maxNum: the larger of ``a`` and ``b``, ignoring a NaN operand; vectorises."""

    def codegen(context, builder, signature, args):
        lt = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maxnum", [lt], ir.FunctionType(lt, [lt, lt]))
        return builder.call(fn, args)

    return a(a, a), codegen


@intrinsic
def prefetch(typingctx, arr, idx):
    """Prefetch the cache line of ``arr[idx]`` (1-D array) for reading."""

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # (address, read, locality 3 = keep in all levels, data cache)
        flags = [ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
        builder.call(fn, [builder.bitcast(ptr, i8p), *flags])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


@by_type
def ld(v):
    """An element (float32, float64, float16 bits as ``uint16``, bfloat16 bits as ``int16``)
    -> the accumulator float."""
    if v == types.uint16:
        return lambda v: half_to_f32(v)
    if v == types.int16:
        return lambda v: bf16_to_f32(v)
    if v in (types.float32, types.float64):
        return lambda v: v
    if isinstance(v, types.Float):
        return lambda v: np.float64(v)
    return None


@by_type
def st(a, v):
    """An accumulator value -> the element type of array ``a`` (rounded once)."""
    if a.dtype == types.uint16:
        return lambda a, v: f32_to_half(np.float32(v))
    if a.dtype == types.int16:
        return lambda a, v: f32_to_bf16(np.float32(v))
    if a.dtype == types.float32:
        return lambda a, v: np.float32(v)
    return lambda a, v: np.float64(v)


@by_type
def acc0(a):
    """A zero of the accumulator type of array ``a``."""
    if a.dtype == types.float64:
        return lambda a: np.float64(0.0)
    return lambda a: np.float32(0.0)


@by_type
def cast(like, v):
    """``v`` converted to the type of the scalar ``like``."""
    if like == types.float32:
        return lambda like, v: np.float32(v)
    return lambda like, v: np.float64(v)
