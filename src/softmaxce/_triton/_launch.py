"""Launchers of the Triton row kernels: the row contract of ``softmaxce._core.rows`` on
torch tensors (CUDA, or CPU under ``TRITON_INTERPRET=1``), argument for argument.

``x`` is a block ``(N, width)`` of logits (any row stride), ``target`` the ``(N,)`` global
class indices or the block's ``(N, width)`` probabilities, ``weight`` / ``where`` the block's
slices, ``ctx`` the problem's ``softmaxce._core.rows.RowContext`` (from the core, on the
tensors' device). Nothing here reads a value on the host: no synchronisation.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np
import torch
import triton

from .._core import rows
from .._core.rows import RowContext, RowStats
from . import _kernels, interpreting

# A chunk of at most this many classes per program and loop trip (a row of at most this many
# is read once), with NUM_WARPS warps from 2048 on (4 below). Larger chunks keep more in
# registers than a Hopper SM holds without spills (python -m softmaxce._triton._aot). Not
# tuned on a GPU yet: benchmarks/gpu_bench.py --block/--warps sets them.
MAX_BLOCK = 4096
NUM_WARPS = 8


def _block(width: int, block: int | None) -> int:
    if block is not None:
        return triton.next_power_of_2(max(int(block), 1))
    return min(triton.next_power_of_2(max(width, 1)), MAX_BLOCK)


def _check_device(x: torch.Tensor) -> None:
    if x.device.type == "cuda" or (x.device.type == "cpu" and interpreting()):
        return
    msg = (
        f"the Triton kernels run on CUDA tensors (or on CPU tensors under TRITON_INTERPRET=1), "
        f"got a tensor on {x.device}"
    )
    raise ValueError(msg)


def _rowwise(a: torch.Tensor) -> torch.Tensor:
    """``a`` with unit stride along its last axis (the kernels' only layout requirement)."""
    return a if a.shape[-1] <= 1 or a.stride(-1) == 1 else a.contiguous()


def _bytes(mask: torch.Tensor) -> torch.Tensor:
    return _rowwise(mask).view(torch.uint8)


def _flags(target, opts, weight, where, ctx) -> dict[str, Any]:
    index = target.ndim == 1
    sem = opts.semantics
    return {
        "INDEX": index,
        "HAS_WEIGHT": weight is not None,
        "HAS_MASK": where is not None,
        "HAS_SPREAD": ctx.spread is not None,
        "SOFTCAP": opts.softcap is not None,
        "KEEP_LABEL": bool(index and where is not None and sem.label_keeps_logit),
        "KL": bool(opts.kl),
        "KL_EPS": bool(sem.kl_eps),
        "UNIT_MASS": bool(sem.unit_mass),
        "ZLOSS": bool(opts.z_loss),
        # an index target without smoothing or KL: S and T from the label alone
        "LABEL_ONLY": bool(index and ctx.spread is None and not opts.kl),
    }


def _launch(
    x, target, col_offset, opts, ctx, *, weight, where, stats, stats_out, row_scale, out, live,
    block,
):  # fmt: skip
    """One launch of ``_rows_kernel`` over the N rows (see its docstring)."""
    n, width = x.shape
    dev = x.device
    x = _rowwise(x)
    index = target.ndim == 1
    t = target.to(torch.int64).contiguous() if index else _rowwise(target)
    w = None if weight is None else weight.contiguous()
    mask = None if where is None else _bytes(where)
    grad = row_scale is not None
    if grad:
        scale = torch.as_tensor(row_scale, device=dev)
        s_scale = 0 if scale.ndim == 0 else scale.stride(0)
        zl = torch.full((), float(opts.z_loss), dtype=torch.float64, device=dev)
        live_b = _bytes(ctx.keep if live is None else live)
    else:
        scale, s_scale, zl, live_b, out = x, 0, x, x, x  # (unused pointers)
    blk = _block(width, block)
    keep = _bytes(ctx.keep)
    eps, cap, kl_eps = opts.label_smoothing, opts.softcap, opts.semantics.kl_eps
    with _quiet(dev):
        _kernels._rows_kernel[(n,)](
            x, x.stride(0), t, 0 if index else t.stride(0), x if w is None else w,
            x if mask is None else mask, 0 if mask is None else mask.stride(0), keep,
            x if ctx.spread is None else ctx.spread.contiguous(), live_b, scale, s_scale, zl,
            out, out.stride(0), stats, n, width, col_offset, 1.0 - eps,
            1.0 if cap is None else float(cap), float(kl_eps or 0.0),
            **_flags(target, opts, weight, where, ctx),
            STATS_IN=not stats_out, STATS_OUT=stats_out, GRAD=grad,
            ONE_CHUNK=stats_out and width <= blk, BLOCK=blk,
            num_warps=NUM_WARPS if blk >= 2048 else 4,
        )  # fmt: skip


@contextlib.contextmanager
def _quiet(dev: torch.device):
    """The interpreter computes with NumPy: its warnings about inf and NaN (the kernels' own
    arithmetic, as on a GPU) are silenced."""
    if dev.type != "cpu":
        yield
        return
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (NumPy's "All-NaN slice")
        yield


def _stats_tensor(stats: RowStats) -> torch.Tensor:
    return torch.stack([s.to(torch.float32) for s in stats]).contiguous()


def _identity(n: int, dev: torch.device) -> RowStats:
    z = torch.zeros(n, dtype=torch.float32, device=dev)
    return RowStats(torch.full((n,), -torch.inf, device=dev), z, z, z, z, z)


def row_stats(
    x: torch.Tensor,
    target: torch.Tensor,
    col_offset: int,
    opts: Any,
    ctx: RowContext,
    *,
    weight: torch.Tensor | None = None,
    where: torch.Tensor | None = None,
    block: int | None = None,
) -> RowStats:
    """``rows.row_stats`` of the block ``x`` (``col_offset`` its first class), by the kernel."""
    _check_device(x)
    n, width = x.shape
    if n == 0 or width == 0:
        return _identity(n, x.device)
    stats = torch.empty((6, n), dtype=torch.float32, device=x.device)
    _launch(
        x, target, col_offset, opts, ctx, weight=weight, where=where, stats=stats,
        stats_out=True, row_scale=None, out=None, live=None, block=block,
    )  # fmt: skip
    return RowStats(*stats.unbind(0))


def row_grad(
    x: torch.Tensor,
    target: torch.Tensor,
    col_offset: int,
    stats: RowStats,
    row_scale: Any,
    opts: Any,
    ctx: RowContext,
    *,
    weight: torch.Tensor | None = None,
    where: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    live: torch.Tensor | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """``rows.row_grad`` of the block ``x`` from the merged ``stats``, written into ``out``
    (``x`` itself for the gradient in place; default a new tensor of ``x``'s dtype).

    ``live``: (N,) bool, the rows whose gradient is not 0 (default ``ctx.keep``; the caller
    passes ``keep & (W != 0)`` for a mean whose W may be 0)."""
    _check_device(x)
    out = _out(x, out)
    if x.shape[0] and x.shape[1]:
        _launch(
            x, target, col_offset, opts, ctx, weight=weight, where=where,
            stats=_stats_tensor(stats), stats_out=False, row_scale=row_scale, out=out,
            live=live, block=block,
        )  # fmt: skip
    return out


def _out(x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    if out is None:
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if tuple(out.shape) != tuple(x.shape) or (out.shape[-1] > 1 and out.stride(-1) != 1):
        msg = f"out must have the block's shape {tuple(x.shape)} and unit column stride"
        raise ValueError(msg)
    return out


def fused(
    x: torch.Tensor,
    target: torch.Tensor,
    opts: Any,
    ctx: RowContext,
    *,
    row_scale: Any,
    weight: torch.Tensor | None = None,
    where: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    live: torch.Tensor | None = None,
    block: int | None = None,
) -> tuple[RowStats, torch.Tensor]:
    """The statistics and the gradient of whole rows ``x`` (every class) in one kernel: each
    row is read once for its statistics and once more (from L2; not at all when it fits in
    one chunk) for the gradient, written into ``out`` (``x`` itself in place)."""
    _check_device(x)
    n = x.shape[0]
    out = _out(x, out)
    if n == 0:
        return _identity(0, x.device), out
    stats = torch.empty((6, n), dtype=torch.float32, device=x.device)
    _launch(
        x, target, 0, opts, ctx, weight=weight, where=where, stats=stats, stats_out=True,
        row_scale=row_scale, out=out, live=live, block=block,
    )  # fmt: skip
    return RowStats(*stats.unbind(0)), out


def fused_rows(
    x: torch.Tensor,
    target: torch.Tensor,
    opts: Any,
    ctx: RowContext,
    *,
    weight: torch.Tensor | None = None,
    where: torch.Tensor | None = None,
    row_scale: Any = None,
    out: torch.Tensor | None = None,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``rows.fused_rows``: ``(row losses, gradient or None)``; the losses by the core's
    ``row_loss`` from the kernel's statistics (O(N) work)."""
    if row_scale is None:
        stats = row_stats(x, target, 0, opts, ctx, weight=weight, where=where, block=block)
        return rows.row_loss(stats, opts, ctx), None
    stats, g = fused(
        x, target, opts, ctx, row_scale=row_scale, weight=weight, where=where, out=out,
        block=block,
    )  # fmt: skip
    return rows.row_loss(stats, opts, ctx), g


def scale_rows(g: torch.Tensor, scale: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """``g *= scale`` (0-d, or one per row of the (N, width) ``g``), in place; rows whose
    scale is 1 are not touched (no host synchronisation decides it)."""
    _check_device(g)
    n, width = g.shape
    if n and width:
        s = scale.to(torch.float32)
        with _quiet(g.device):
            _kernels._scale_kernel[(n,)](
                g, g.stride(0), s, 0 if s.ndim == 0 else s.stride(0), width,
                BLOCK=_block(width, block),
            )  # fmt: skip
    return g
