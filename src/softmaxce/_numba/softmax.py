"""Softmax, log-softmax and logsumexp of rows, from the same concerns as the loss.

The maximum and the statistics pass of ``segments.py`` (``s = ties + rest``, so that
``log s = log1p((ties - 1) + rest)`` keeps log_softmax's relative accuracy at a dominant
maximum), then per mode: the exponentials kept in the output row and scaled by ``1 / s``
(softmax), ``(x - m) - log s`` (log_softmax), or ``m + log s`` (logsumexp). A row with a
``+inf`` or NaN gives NaN; a row of ``-inf`` gives NaN softmax and ``-inf`` logsumexp, as the
core.
"""

from __future__ import annotations

from .caching import FM_EXP, jit
from .elementary import log_sum
from .intrinsics import cast
from .rows import _out_row
from .segments import ref_max, seg_max, seg_sums

SOFTMAX, LOG_SOFTMAX, LOGSUMEXP = 0, 1, 2


@jit(fastmath=FM_EXP)
def _shift(orow, xr, m, log_s):
    """``orow = (xr - m) - log_s``, in this order (no reassociation here): ``xr - m`` is
    exact near the maximum, so log_softmax there keeps its relative accuracy."""
    for c in range(xr.shape[0]):
        orow[c] = (xr[c] - m) - log_s


@jit(nogil=True)
def softmax_kernel(lo, hi, x, out, mode, lse_out):
    """Rows ``lo:hi`` of ``x`` (float32/float64): softmax or log_softmax into ``out`` (None:
    into ``x``), or the logsumexp into ``lse_out``."""
    for i in range(lo, hi):
        xr = x[i]
        orow = _out_row(out, xr, i)
        m = ref_max(seg_max(xr))
        xn = x[i + 1] if i + 1 < hi else xr
        if mode == SOFTMAX:
            rest, ties, _, _, _ = seg_sums(xr, m, orow, None, None, None, None, 1.0, None, xn)
            inv = cast(m, 1.0) / (ties + rest)
            for c in range(orow.shape[0]):
                orow[c] *= inv
            continue
        rest, ties, _, _, _ = seg_sums(xr, m, None, None, None, None, None, 1.0, None, xn)
        log_s = cast(m, log_sum(rest, ties)[0])
        if mode == LOGSUMEXP:
            lse_out[i] = m + log_s
        else:
            _shift(orow, xr, m, log_s)
