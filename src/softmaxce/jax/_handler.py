"""The XLA FFI handler as a ``numba.cfunc`` (see ``_ffi`` for the protocol and the layout).

Imports numba: loaded only when a CPU call needs the kernel. Each optional input of the row
loop (``softmaxce._numba.rows.fused_kernel``) is either an array read from the call frame or
None, fixed per compiled handler by choosing, in Python, which small ``njit`` reader the cfunc
calls (``_pick``): numba then types the loop with a None, and prunes that option's code, as it
does for NumPy arrays.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import carray, types
from numba.extending import intrinsic

from .._numba import rows as kernel_rows
from . import _ffi as F


@intrinsic
def _addr(typingctx, p):
    """A pointer as an int64 address."""

    def codegen(context, builder, sig, args):
        return builder.ptrtoint(args[0], ir.IntType(64))

    return types.int64(p), codegen


@intrinsic
def _null(typingctx):
    """NULL (the handler's "no error")."""

    def codegen(context, builder, sig, args):
        return context.get_constant_null(types.voidptr)

    return types.voidptr(), codegen


@intrinsic
def _load(typingctx, addr, ty):
    """The value of type ``ty`` stored at the address ``addr``."""
    t = ty.instance_type

    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], context.get_value_type(t).as_pointer())
        return builder.load(ptr)

    return t(types.int64, ty), codegen


@intrinsic
def _store(typingctx, addr, val):
    """Store ``val`` at the address ``addr`` (in its own type)."""

    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], context.get_value_type(sig.args[1]).as_pointer())
        builder.store(args[1], ptr)
        return context.get_dummy_value()

    return types.void(types.int64, val), codegen


@intrinsic
def _typed(typingctx, addr, ty):
    """The address ``addr`` as a pointer to ``ty`` (for ``numba.carray``)."""
    pty = types.CPointer(ty.instance_type)

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(pty))

    return pty(types.int64, ty), codegen


I64, I32, U32, F64 = numba.int64, numba.int32, numba.uint32, numba.float64


@numba.njit
def _item(table, j):
    """``table[j]`` of a ``void**`` array, as an address."""
    return _load(table + 8 * j, I64)


@numba.njit
def _data(table, j):
    return _load(_item(table, j) + F.BUFFER_DATA, I64)


@numba.njit
def _dim(table, j, k):
    return _load(_load(_item(table, j) + F.BUFFER_DIMS, I64) + 8 * k, I64)


@numba.njit
def _attr_f64(attrs, j):
    return _load(_load(_item(attrs, j) + F.SCALAR_VALUE, I64), F64)


@numba.njit
def _attr_i64(attrs, j):
    return _load(_load(_item(attrs, j) + F.SCALAR_VALUE, I64), I64)


def _readers(dtype: Any):
    """njit readers of a buffer of ``dtype``: 1-D, 2-D, and a 0-d scalar."""
    ty = numba.from_dtype(np.dtype(dtype))

    @numba.njit
    def vec(table, j, n):
        return carray(_typed(_data(table, j), ty), (n,))

    @numba.njit
    def mat(table, j, n, c):
        return carray(_typed(_data(table, j), ty), (n, c))

    @numba.njit
    def scalar(table, j):
        return np.float64(_load(_data(table, j), ty))

    return vec, mat, scalar


@numba.njit
def _no_vec(table, j, n):
    return None


@numba.njit
def _no_attr(attrs, j):
    return None


@numba.njit
def _yes(attrs, j):
    return True


def _scratch(acc: Any):
    @numba.njit
    def rows_of(c):
        return np.empty(c, dtype=acc)

    return rows_of


@numba.njit
def _no_rows(c):
    return None


def compile_handler(pat: F.Pattern, version: tuple[int, int]):
    """The ``numba.cfunc`` handler of ``pat`` (``.address`` is its entry point)."""
    bits = pat.x == "float16"  # float16 travels as its uint16 bits, as in the NumPy kernels
    _, x_mat, _ = _readers(np.uint16 if bits else pat.x)
    t_vec = _readers(pat.t)[0]
    acc_vec, _, acc_scalar = _readers(pat.acc)
    kernel_acc = np.float64 if pat.x == "float64" else np.float32
    weights = acc_vec if pat.weighted else _no_vec
    eps_of = _attr_f64 if pat.smooth else _no_attr
    cap_of = _attr_f64 if pat.capped else _no_attr
    kl_of = _yes if pat.kl else _no_attr
    z_rows = _scratch(kernel_acc) if pat.capped else _no_rows  # (no where mask here)
    c_rows = _scratch(kernel_acc) if pat.capped else _no_rows
    e_rows = _scratch(kernel_acc) if pat.x != np.dtype(kernel_acc).name else _no_rows
    fused = kernel_rows.fused_kernel
    major, minor = version
    ext_meta, stage_exec = F.EXTENSION_METADATA, F.STAGE_EXECUTE

    def handler(frame_ptr):
        frame = _addr(frame_ptr)
        ext = _load(frame + F.FRAME_EXTENSION, I64)
        if ext != 0:
            if _load(ext + F.EXT_TYPE, I32) == ext_meta:
                meta = _load(ext + F.EXT_METADATA, I64)
                version_at = meta + F.META_VERSION
                _store(version_at, I64(F.VERSION_STRUCT_SIZE))
                _store(version_at + 8, I64(0))
                _store(version_at + 16, I32(major))
                _store(version_at + 20, I32(minor))
                _store(meta + F.META_TRAITS, U32(0))
            return _null()
        if _load(frame + F.FRAME_STAGE, I32) != stage_exec:
            return _null()
        args = _load(frame + F.FRAME_ARGS, I64)
        rets = _load(frame + F.FRAME_RETS, I64)
        attrs = _load(frame + F.FRAME_ATTRS, I64)
        n = _dim(args, 0, 0)
        c = _dim(args, 0, 1)
        x = x_mat(args, 0, n, c)
        t = t_vec(args, 1, n)
        rs = acc_scalar(args, 2)
        w = weights(args, 3, c)
        loss = acc_vec(rets, 0, n)
        g = x_mat(rets, 1, n, c)
        fused(
            0, n, x, t, None, w, None, eps_of(attrs, 0), cap_of(attrs, 2), kl_of(attrs, 0),
            _attr_f64(attrs, 3), _attr_i64(attrs, 1), rs, g, z_rows(c), c_rows(c), e_rows(c),
            loss,
        )  # fmt: skip
        return _null()

    return numba.cfunc(types.voidptr(types.voidptr))(handler)
