"""The numba kernels: the CPU twin of the core's row contract (``softmaxce._core.rows``).

Same meaning as the core (``docs/internals.md``), for NumPy arrays, with the same
``LossOptions``, ``RowContext`` and ``RowStats``:

* ``fused_rows``: the one-pass loss of (N, C) rows, with a row scale its gradient, written
  once, into ``out`` (which may be the logits themselves: then nothing of size N x C is
  allocated);
* ``row_stats`` and ``row_grad``: the statistics of a block of classes and the
  gradient of a block from merged statistics (merge them with the core's ``merge``);
* ``softmax_rows``, ``log_softmax_rows``, ``logsumexp_rows``;
* ``supports``: whether ``fused_rows`` takes these arrays (the dispatcher falls back to
  the core otherwise); ``loss_total``: the sum of loss rows, for the reduction.

Files:

* ``caching.py``: ``jit``, the one decorator of every kernel function (numba's disk cache where
  a folder is writable, the fast-math flags), and the removal of cache entries compiled from
  other sources;
* ``intrinsics.py``: LLVM intrinsics (bit casts, float16 conversion, maxNum, prefetch) and the
  dtype-generic loads and stores;
* ``elementary.py``: the vectorisable ``exp`` (subnormal results kept, as NumPy's), ``tanh``
  with the softcap's cancellation-free slope, ``log s`` of a split sum;
* ``segments.py``: the concerns of one row of a block, each written once (z and its maximum,
  the statistics pass, the loss, the gradient pass, the gold class), specialised at compile
  time by which optional inputs are None (its docstring: how, and the numba pitfalls this
  avoids);
* ``rows.py``: the row loops of the fused loss and of a block's statistics and gradient;
* ``softmax.py``: the row loop of softmax, log_softmax and logsumexp;
* ``threads.py``: row chunks on a fork-safe pool of Python threads.

Accumulation: float32 for float16/bfloat16/float32 logits, float64 for float64 logits; per-row
scalars (``log s``, the loss, the z-loss terms, the gradient's row factors) in float64. float16
is read and written through its bits (typed ``uint16``) with LLVM's ``half`` conversions, since
numba has no float16 arithmetic on the CPU; bfloat16 (``ml_dtypes.bfloat16``; torch's through
``Tensor.view(torch.int16)``) through its bits typed ``int16`` (widened by a shift, rounded to
nearest even): the element type, never the values, tells the two apart. The exponentials of a
16-bit row wait in a float32 scratch row (C floats per thread), so the gradient is rounded
once. With ``where`` or a softcap the capped and masked row ``z`` waits in a scratch row of C
accumulator floats per thread (not N x C), and with a softcap the chain rule's factor in a
second one.

Threads: rows are split in contiguous chunks, one per thread (``NUMBA_NUM_THREADS``, default
the CPU count), below 65536 elements on the calling thread (``threads.py``).

Compiling: each kernel is compiled on first use for the types it is called with (one variant
per dtype and set of options) and kept in numba's disk cache (``NUMBA_CACHE_DIR``, else
``__pycache__`` beside these files, else the user's cache folder); where none is writable (a
read-only install) or under ``NUMBA_OPT=0`` they are compiled once per process
(``caching.CACHE``). With ``NUMBA_DISABLE_JIT=1`` they cannot run at all (their intrinsics have
no Python version): importing this package raises ``ImportError`` saying so, and the dispatcher
falls back to the core under ``backend="auto"``. This package imports numba at import time, so
import it lazily (the dispatcher does).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

if numba.config.DISABLE_JIT:
    # The kernels are LLVM intrinsics and overloads, which cannot run as Python: the package is
    # unavailable, and the dispatcher falls back to the core (or names this reason).
    msg = (
        "softmaxce's numba kernels cannot run with NUMBA_DISABLE_JIT=1 (they need the JIT "
        "compiler); unset it to use them"
    )
    raise ImportError(msg)

from .._core.rows import RowContext, RowStats
from . import rows, softmax, threads

__all__ = [
    "fused_rows",
    "log_softmax_rows",
    "logsumexp_rows",
    "loss_total",
    "row_grad",
    "row_stats",
    "softmax_rows",
    "supports",
]

_F16, _F32, _F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
try:  # NumPy has no bfloat16; ml_dtypes' (where installed) runs on the kernels as its bits
    import ml_dtypes

    _BF16: np.dtype | None = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes comes with jax
    _BF16 = None
_FLOATS = frozenset(d for d in (_F16, _F32, _F64, _BF16) if d is not None)
_I64 = np.dtype(np.int64)


def _is_c2d(a: Any) -> bool:
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        return False
    flags = a.flags
    return flags.c_contiguous and flags.aligned


def supports(x, target, *, where=None, out=None, weight=None, row_scale=None) -> bool:
    """Whether ``fused_rows`` accepts these arrays.

    Accepted: ``x`` a 2-D C-contiguous aligned float16/float32/float64 ndarray, or bfloat16
    (``ml_dtypes.bfloat16``, where installed); ``target`` a 1-D integer array of length N, or a
    float array of x's 2-D shape (any strides);
    ``where`` None or a bool array of x's shape (any strides, broadcast views included);
    ``out`` None, ``x`` itself, or a writeable C-contiguous float array of x's shape
    that shares no memory with x; ``weight`` None or (C,); ``row_scale`` None, a number, or
    (N,). Everything else is rejected: non-contiguous or misaligned logits, other dtypes
    (complex, integer logits), wrong shapes, an ``out`` that partially overlaps x.
    """
    if not _is_c2d(x) or x.dtype not in _FLOATS:
        return False
    n, c = x.shape
    if not isinstance(target, np.ndarray):
        return False
    if target.ndim == 1:
        if target.shape != (n,) or target.dtype.kind not in "iu":
            return False
    elif target.ndim != 2 or target.shape != (n, c) or target.dtype not in _FLOATS:
        return False
    if where is not None and (
        not isinstance(where, np.ndarray) or where.shape != (n, c) or where.dtype != np.bool_
    ):
        return False
    if out is not None and out is not x:
        if not _is_c2d(out) or out.dtype not in _FLOATS or out.shape != x.shape:
            return False
        if not out.flags.writeable or np.shares_memory(out, x):
            return False
    if weight is not None and np.shape(weight) != (c,):
        return False
    if row_scale is None or isinstance(row_scale, float):
        return True
    return np.ndim(row_scale) == 0 or np.shape(row_scale) == (n,)


def _bits(a: np.ndarray) -> np.ndarray:
    """float16 arrays travel as their bits typed ``uint16``, bfloat16 arrays as their bits typed
    ``int16`` (numba has neither on the CPU): the element type tells the kernels which."""
    if a.dtype == _F16:
        return a.view(np.uint16)
    if a.dtype == _BF16:
        return a.view(np.int16)
    return a


def _acc(dtype: np.dtype) -> np.dtype:
    return _F64 if dtype == _F64 else _F32


def _row(a: np.ndarray | None, j: int) -> np.ndarray | None:
    return None if a is None else a[j]


def _scratch(yes: bool, k: int, c: int, acc: np.dtype) -> np.ndarray | None:
    """``k`` scratch rows (one per thread) of ``c`` accumulator floats, or None."""
    return np.empty((k, c), dtype=acc) if yes else None


def _labels(target: np.ndarray) -> np.ndarray:
    """Class indices as contiguous int64."""
    if target.dtype == _I64 and target.flags.c_contiguous:
        return target
    return np.ascontiguousarray(target, dtype=np.int64)


def _targets(target: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(t, y)``: int64 class indices, or a probability target (float16 as bits)."""
    if target.ndim == 2:
        return None, _bits(target)
    return _labels(target), None


def _weights(weight: Any) -> np.ndarray | None:
    return None if weight is None else np.ascontiguousarray(weight, dtype=np.float64)


def _row_scale(row_scale: Any) -> float | np.ndarray:
    """One number for every row (a float: no array to pass), or a float64 array per row."""
    if isinstance(row_scale, float):
        return row_scale
    if np.ndim(row_scale) == 0:
        return float(row_scale)
    return np.ascontiguousarray(row_scale, dtype=np.float64)


def _flags(opts: Any) -> tuple[float | None, float | None, bool | None]:
    """``(eps, softcap, kl)``, None where an option is off (the kernels prune its code)."""
    return (opts.label_smoothing or None), opts.softcap, (True if opts.kl else None)


def fused_rows(
    x, target, opts, *, weight=None, where=None, row_scale=None, out=None, with_total=False
):
    """Per-row fused softmax cross-entropy, and with ``row_scale`` its gradient.

    Same meaning as ``softmaxce._core.rows.fused_rows`` (the row context is computed inline);
    the arrays must satisfy ``supports``, ``opts`` is a ``LossOptions``. Returns the (N,)
    float64 per-row losses. With ``row_scale`` (a number, or (N,)), ``row_scale_i * dL_i /
    dx`` is written into ``out`` (required; ``x`` itself for in place: nothing of size N x C is
    allocated). An index target outside ``[0, C)`` that is not ``ignore_index`` (the public
    API rejects those) gives a NaN row instead of reading out of bounds. ``with_total``:
    returns ``(loss, sum of loss)`` instead, the sum in float64 from the same pass (a
    reduction then needs no pass of its own).
    """
    n, c = x.shape
    loss = np.empty(n)
    if row_scale is not None and out is None:
        msg = "fused_rows: row_scale is given but out is None (where would the gradient go?)"
        raise ValueError(msg)
    if n == 0 or c == 0:
        loss.fill(0.0)
        return (loss, 0.0) if with_total else loss
    k = 1 if n * c < threads.MIN_PARALLEL else threads.chunks(n, c)
    dt = x.dtype
    acc = _F64 if dt == _F64 else _F32
    rs = g = eb = None
    if row_scale is not None:
        rs = row_scale if isinstance(row_scale, float) else _row_scale(row_scale)
        if out is not x:
            g = _bits(out)
        if out.dtype != acc:  # a gradient rounded once, from acc
            eb = np.empty((k, c), dtype=acc)
    if target.ndim == 2:
        t, y = None, _bits(target)
    else:
        t, y = _labels(target), None
    cap = opts.softcap
    zb = None if where is None and cap is None else np.empty((k, c), dtype=acc)
    cb = None if cap is None else np.empty((k, c), dtype=acc)
    fixed = (
        _bits(x),
        t,
        y,
        None if weight is None else np.ascontiguousarray(weight, dtype=np.float64),
        where,
        opts.label_smoothing or None,
        cap,
        True if opts.kl else None,
        float(opts.z_loss),
        int(opts.ignore_index),
        rs,
        g,
    )
    if k == 1:  # (small problems: no thread hand-off)
        total = rows.fused_kernel(0, n, *fixed, _row(zb, 0), _row(cb, 0), _row(eb, 0), loss)
        return (loss, total) if with_total else loss
    parts = threads.run(
        rows.fused_kernel, n, k, lambda j: (*fixed, _row(zb, j), _row(cb, j), _row(eb, j), loss)
    )
    return (loss, sum(parts)) if with_total else loss


def loss_total(loss: np.ndarray) -> float:
    """The sum of 1-D float64 loss rows, as a Python float (the reductions' sum, without the
    cost of NumPy's warning machinery on a small batch)."""
    return rows.total_kernel(loss)


def _block(x_block: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x_block)  # the loops want contiguous rows
    if x.ndim != 2 or x.dtype not in _FLOATS:
        msg = (
            f"{name}: expected a 2-D float16/32/64 or bfloat16 block, got {x.dtype} "
            f"with shape {x.shape}"
        )
        raise TypeError(msg)
    return x


def _context(ctx: RowContext) -> tuple[np.ndarray, np.ndarray | None]:
    keep = np.ascontiguousarray(ctx.keep, dtype=np.bool_)
    spread = None if ctx.spread is None else np.ascontiguousarray(ctx.spread, dtype=np.float64)
    return keep, spread


def row_stats(x_block, target, col_offset, opts, ctx, *, weight=None, where=None) -> RowStats:
    """``RowStats`` of the block ``x_block`` (N, width) of classes ``[col_offset,
    col_offset + width)``: as ``softmaxce._core.rows.row_stats`` (``target``: (N,) global class
    indices or the block's columns of a probability target; ``weight``, ``where``: the block's
    slices; ``ctx``: the core's ``row_context`` of the whole rows). ``m``, ``ties``, ``rest`` are
    in the accumulation dtype, ``mass``, ``tz``, ``kl`` in float64; rows that do not count get
    the statistics of an empty block (they count for nothing in the loss)."""
    x = _block(x_block, "row_stats")
    n, width = x.shape
    acc = _acc(x.dtype)
    out = tuple(np.empty(n, dtype=d) for d in (acc, acc, acc, _F64, _F64, _F64))
    t, y = _targets(target)
    keep, spread = _context(ctx)
    if width == 0:
        keep = np.zeros(n, dtype=np.bool_)
    eps, cap, kl = _flags(opts)
    k = threads.chunks(n, width)
    zb = _scratch(where is not None or cap is not None, k, width, acc)
    cb = _scratch(cap is not None, k, width, acc)
    fixed = (_bits(x), t, y, int(col_offset), _weights(weight), where, keep, spread, eps, cap, kl)
    threads.run(rows.stats_kernel, n, k, lambda j: (*fixed, _row(zb, j), _row(cb, j), out))
    return RowStats(*out)


def row_grad(
    x_block, target, col_offset, stats, row_scale, opts, ctx, *, weight=None, where=None, out=None
):
    """``row_scale_i * dL_i / dx`` of the block ``x_block`` from the *merged* statistics of the
    whole rows, into ``out`` (None: a new array of the block's dtype; ``x_block`` itself for in
    place, which must then be C-contiguous and writeable); 0 on rows that do not count and on
    masked classes. Arguments as for ``row_stats``; ``row_scale`` a number or (N,)."""
    if out is not None and out is x_block and not (_is_c2d(out) and out.flags.writeable):
        msg = "row_grad: in place needs a writeable C-contiguous block"
        raise TypeError(msg)
    x = _block(x_block, "row_grad")
    n, width = x.shape
    if out is None:
        out = np.empty(x.shape, dtype=x.dtype)
    if n == 0 or width == 0:
        return out
    acc = _acc(x.dtype)
    t, y = _targets(target)
    keep, spread = _context(ctx)
    eps, cap, _ = _flags(opts)
    k = threads.chunks(n, width)
    zb = _scratch(where is not None or cap is not None, k, width, acc)
    cb = _scratch(cap is not None, k, width, acc)
    merged = tuple(np.ascontiguousarray(a) for a in stats[:4])
    g = None if out is x else _bits(out)
    fixed = (_bits(x), t, y, int(col_offset), _weights(weight), where, keep, spread, eps, cap)
    fixed += (float(opts.z_loss), merged, _row_scale(row_scale), g)
    threads.run(rows.grad_kernel, n, k, lambda j: (*fixed, _row(zb, j), _row(cb, j)))
    return out


def _check_rows(x: Any, name: str) -> None:
    if not _is_c2d(x) or x.dtype not in (_F32, _F64):
        msg = (
            f"{name}: expected a 2-D C-contiguous float32/float64 array, got "
            f"{getattr(x, 'dtype', type(x).__name__)} with shape {np.shape(x)}"
        )
        raise TypeError(msg)


def _check_out(x: np.ndarray, out: Any, name: str) -> None:
    ok = out is x or (_is_c2d(out) and out.dtype == x.dtype and out.shape == x.shape)
    if not ok or not out.flags.writeable:
        msg = (
            f"{name}: out must be x or a writeable C-contiguous {x.dtype} array of shape {x.shape}"
        )
        raise TypeError(msg)


def _softmax_family(x, out, mode, name):
    """One kernel for the three modes (a runtime switch per row): the arrays a mode does not
    write are writeable stand-ins (``x`` may be read-only), never written."""
    _check_rows(x, name)
    n = x.shape[0]
    if mode == softmax.LOGSUMEXP:
        lse = np.empty(n, dtype=x.dtype)
        o = np.empty((n, 0), dtype=x.dtype)
    else:
        _check_out(x, out, name)
        lse = np.empty(0, dtype=x.dtype)
        o = None if out is x else out
    k = threads.chunks(*x.shape)
    threads.run(softmax.softmax_kernel, x.shape[0], k, lambda j: (x, o, mode, lse))
    return lse if mode == softmax.LOGSUMEXP else out


def softmax_rows(x, out):
    """``out[i] = softmax(x[i])`` for 2-D C-contiguous float32/float64 ``x``.

    ``out``: x itself (in place) or a C-contiguous array of x's shape and dtype.
    """
    return _softmax_family(x, out, softmax.SOFTMAX, "softmax_rows")


def log_softmax_rows(x, out):
    """``out[i] = log_softmax(x[i])``; ``out`` as for ``softmax_rows``."""
    return _softmax_family(x, out, softmax.LOG_SOFTMAX, "log_softmax_rows")


def logsumexp_rows(x):
    """``logsumexp(x[i])`` per row: shape (N,), x's dtype."""
    return _softmax_family(x, None, softmax.LOGSUMEXP, "logsumexp_rows")
