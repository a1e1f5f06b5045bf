r"""Fused linear + softmax cross-entropy: the loss of ``input @ linear_weight.T + linear_bias``
without its N x V logits (``docs/linear.md``).

The rows (tokens) go in blocks; a block's logits are one matrix product of the platform (BLAS
through NumPy or SciPy, ``torch.mm``), the row contract of the core turns them into their
gradient (in place, by the numba kernel, on CPU blocks), and two more products give the
block's share of the three gradients::

    logits = input[blk] @ W.T + b          # (R, V) block, reused from block to block
    g      = dloss * d loss / d logits     # in place of the logits
    dinput[blk] = g @ W;  dW += g.T @ input[blk];  db += g.sum(0)

Three products in all, as for the unfused loss, and nothing of size N x V. When V is so
large that even a few rows of full V break the memory rule, the classes go in blocks too: the
statistics of each class block (``row_stats``) are merged (``merge``) into the loss
(``row_loss``), then the gradient of each class block (``row_grad``) from its logits computed
again. Everything that is not a matrix product comes from the one path of the fused loss
(``softmaxce._run``: options, validation, mean denominators, row scales, semantics quirks)
and the core's row contract (``softmaxce._core.rows``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from . import _dispatch, _run
from . import _validate as v
from ._core import reduce, rows
from ._core._xp import wide_dtype
from ._options import loss_options
from ._problem import Problem, prepare

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad"]

# The block rule (docs/linear.md): a block of logits holds at most SHARE of the N x V logits
# (9.5%: the rest of the 10% is for the per-row vectors and the kernel's scratch), as large as
# that allows (BLAS runs thin products slowly: MKL took about 1.5 times as long for blocks of
# 160 rows as for 512 here), and never less than MIN_BLOCK_BYTES (small problems go in one
# block); classes are split only when fewer than MIN_ROWS rows of every class would fit.
SHARE = (19, 200)
MIN_BLOCK_BYTES = 1 << 22
MIN_ROWS = 16


def block_shape(n: int, n_classes: int, budget: int) -> tuple[int, int]:
    """``(rows, classes)`` of a block of at most ``budget`` logits (at least one of each)."""
    per = budget // n_classes
    if per >= min(n, MIN_ROWS):
        return max(1, min(n, per)), n_classes
    r = max(1, min(n, MIN_ROWS))
    return r, max(1, min(n_classes, budget // r))


def block_budget(n: int, n_classes: int, logit_bytes: int, block_bytes: int, chunk_size) -> int:
    """Logits per block: ``chunk_size`` when given, else the memory rule's (module docstring);
    ``logit_bytes``: the size of one logit of the unfused loss, ``block_bytes``: what one logit
    of a block costs here (its buffers)."""
    if chunk_size is not None:
        return chunk_size
    share = n * n_classes * logit_bytes * SHARE[0] // SHARE[1]
    return max(share, MIN_BLOCK_BYTES) // block_bytes


# --------------------------------------------------------------------------------------------
# The three products on NumPy arrays
# --------------------------------------------------------------------------------------------


def _scipy_gemm() -> dict[Any, Any] | None:
    """SciPy's BLAS ``gemm`` by dtype, when SciPy is installed: unlike NumPy's matmul it adds
    into its output (``beta = 1``), so ``dW += g.T @ input[blk]`` needs no (V, D) temporary."""
    try:
        from scipy.linalg import blas
    except ImportError:
        return None
    return {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}


class NumpyMats:
    """The products of the blocked loss on NumPy arrays of one float dtype (float32/64).

    With SciPy, every product is a BLAS ``gemm`` writing (or adding) into its destination:
    F-ordered views of the C-ordered arrays, so nothing is copied. Without it, NumPy's matmul
    with ``out=``, and the additions into ``dW`` go by slices of classes (a temporary of at
    most ``budget`` elements); that costs a pass over ``dW`` per row block.
    """

    def __init__(self, dtype: Any, budget: int, gemm: dict[Any, Any] | bool | None = True) -> None:
        self.gemm = _scipy_gemm() if gemm is True else (gemm or None)
        self.budget = max(1, budget)
        self.dtype = dtype

    def buffers(self, size: int) -> tuple[np.ndarray]:
        """The flat buffer that every block of logits reuses."""
        return (np.empty((size,), dtype=self.dtype),)

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    @staticmethod
    def ce_view(block: np.ndarray) -> np.ndarray:
        return block

    @staticmethod
    def from_ce(g: np.ndarray) -> np.ndarray:
        return g

    def _gemm(self, *arrays: np.ndarray):
        if self.gemm is None or any(0 in a.shape for a in arrays):
            return None
        return self.gemm[arrays[0].dtype]

    def logits(self, h: np.ndarray, w: np.ndarray, b: np.ndarray | None, out: np.ndarray) -> None:
        """``out = h @ w.T + b``."""
        gemm = self._gemm(h, w, out)
        if gemm is None:
            np.matmul(h, w.T, out=out)
            if b is not None:
                out += b
            return
        if b is not None:
            out[...] = b
        # out.T (c, r) = w (c, D) @ h.T (D, r)
        gemm(1.0, w.T, h.T, beta=0.0 if b is None else 1.0, c=out.T, trans_a=1, overwrite_c=1)

    def dinput(self, g: np.ndarray, w: np.ndarray, out: np.ndarray, add: bool) -> None:
        """``out (+)= g @ w``."""
        gemm = self._gemm(g, w, out)
        if gemm is not None:  # out.T (D, r) = w.T (D, c) @ g.T (c, r)
            gemm(1.0, w.T, g.T, beta=1.0 if add else 0.0, c=out.T, overwrite_c=1)
        elif add:
            out += g @ w
        else:
            np.matmul(g, w, out=out)

    def dweight(self, g: np.ndarray, h: np.ndarray, out: np.ndarray, add: bool) -> None:
        """``out (+)= g.T @ h``."""
        gemm = self._gemm(g, h, out)
        if gemm is not None:  # out.T (D, c) = h.T (D, r) @ g (r, c)
            gemm(1.0, h.T, g.T, beta=1.0 if add else 0.0, c=out.T, trans_b=1, overwrite_c=1)
            return
        if not add:
            np.matmul(g.T, h, out=out)
            return
        step = max(1, self.budget // max(1, h.shape[1]))
        for c0 in range(0, out.shape[0], step):
            out[c0 : c0 + step] += g[:, c0 : c0 + step].T @ h

    @staticmethod
    def dbias(g: np.ndarray, out: np.ndarray, add: bool) -> None:
        if add:
            out += np.add.reduce(g, axis=0)
        else:
            np.add.reduce(g, axis=0, out=out)


# --------------------------------------------------------------------------------------------
# The blocked loss, on any platform's products
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Job:
    """One fused linear + cross-entropy call.

    ``p``: the loss problem over stand-in logits (a zero-stride (N, V) view of the logits'
    dtype: the target, class weights, options and layout, validated once by ``prepare``);
    NumPy arrays when the rows run on the host (the numba kernel or the NumPy core), the
    platform's tensors for the core on a device. ``h`` (N, D), ``w`` (V, D), ``b`` (V,) or None:
    the operands of the products, in ``mats``'s arrays (``NumpyMats`` or
    ``softmaxce.torch._linear.TorchMats``). ``backend``: the row kernel (``_dispatch``);
    ``block``: ``(rows, classes)`` of a block (``block_shape``). ``ctx``, ``total``,
    ``scale``: the row context, the mean's ``W`` and the row scale, set by ``run_blocks``.
    """

    p: Problem
    h: Any
    w: Any
    b: Any
    mats: Any
    backend: str
    block: tuple[int, int]
    ctx: rows.RowContext = None  # type: ignore[assignment]
    total: Any = None
    scale: Any = None


def _slice_rows(a: Any, r0: int, r1: int) -> Any:
    """A row scale's rows (a number or 0-d array is every row's)."""
    if a is None or isinstance(a, float) or a.ndim == 0:
        return a
    return a[r0:r1]


def _empty_grad(job: Job) -> Any:
    """Whether the mean's ``W`` counts nothing (gradient exactly 0): a bool for NumPy, else
    an array (None: not a mean)."""
    if job.total is None:
        return None
    return _run._counts_nothing(job.total)


def _quirk_rows(job: Job, pb: Problem, ctx: rows.RowContext, want_grad: bool):
    """``(nan_loss, nan_grad)``: the framework's NaN rows (0 elsewhere) that the semantics asks
    for, from the block's logits *before* the gradient overwrites them (None when none)."""
    sem, xp = pb.opts.semantics, pb.xp
    nan_loss = nan_grad = None
    if sem.nan_zero_log_zero:
        nan_loss = _run._quirky_loss(pb, ctx, xp.zeros_like(pb.x2[:, 0]))
    if want_grad and (sem.nan_zero_mass_grad or sem.nan_nonfinite_row_grad):
        nan_grad = _run._quirky_grad(pb, ctx, job.total, xp.zeros_like(pb.x2[:, :1]))
    return nan_loss, nan_grad


def _finish_grad(job: Job, g: Any, nan_grad: Any) -> Any:
    """The block's gradient after the rules of ``_run``: exactly 0 when the mean's W counts
    nothing (even over NaN logits), then the framework's NaN rows."""
    empty = _empty_grad(job)
    if job.p.numpy:
        if empty:
            g[...] = 0.0
        if nan_grad is not None:
            np.add(g, nan_grad, out=g)
        return g
    xp = job.p.xp
    if empty is not None:
        g = xp.where(empty, 0.0, g)
    return g if nan_grad is None else g + nan_grad


def _block_problem(p: Problem, x: Any, target: Any, weight: Any) -> Problem:
    n = x.shape[0]
    return dataclasses.replace(p, x=x, x2=x, target=target, weight=weight, batch_shape=(n,))


def _row_block(job: Job, r0: int, r1: int, buf: Any, want_grad: bool, grads) -> Any:
    """One block of rows holding every class: its loss rows, and its share of the gradients."""
    p, mats = job.p, job.mats
    block = _view(buf, r1 - r0, job.w.shape[0])
    _logits(job, r0, r1, 0, job.w.shape[0], block)
    xb = mats.ce_view(block[-1])
    pb = _block_problem(p, xb, p.target[r0:r1], p.weight)
    ctx = job.ctx.rows(r0, r1)
    scale = _slice_rows(job.scale, r0, r1) if want_grad else None
    nan_loss, nan_grad = _quirk_rows(job, pb, ctx, want_grad)
    if p.numpy:
        with np.errstate(**_run._ERRSTATE):
            loss, g, _ = _run._numpy_rows(pb, ctx, scale, True, job.backend, None)
    else:
        loss, g = rows.fused_rows(xb, pb.target, p.opts, ctx, weight=p.weight, row_scale=scale)
    if nan_loss is not None:
        loss = loss + nan_loss
    if want_grad:
        g = _finish_grad(job, g, nan_grad)
        _products(job, r0, r1, 0, job.w.shape[0], mats.from_ce(g), block, grads)
    return loss


def _view(buf: tuple, r: int, c: int) -> tuple:
    """The (r, c) C-contiguous blocks at the start of each flat buffer."""
    return tuple(b[: r * c].reshape(r, c) for b in buf)


def _logits(job: Job, r0: int, r1: int, c0: int, c1: int, block: tuple) -> None:
    """The block's logits, into ``block[-1]`` (the accumulation dtype); with a second buffer
    (half precision products) computed in ``block[0]`` and converted."""
    b = None if job.b is None else job.b[c0:c1]
    if len(block) == 1:
        job.mats.logits(job.h[r0:r1], job.w[c0:c1], b, block[0])
        return
    job.mats.logits(job.h[r0:r1], job.w[c0:c1], None, block[0])
    job.mats.convert(block[0], block[1], b)


def _products(job: Job, r0: int, r1: int, c0: int, c1: int, g: Any, block: tuple, grads):
    """The block's share of the three gradients from its logits' gradient ``g``."""
    dh, dw, db = grads
    mats = job.mats
    gm = g
    if len(block) == 2:  # (half precision products: the gradient rounded once to their dtype)
        mats.convert(g, block[0], None)
        gm = block[0]
    mats.dinput(gm, job.w[c0:c1], dh[r0:r1], c0 > 0)
    mats.dweight(g, job.h[r0:r1], dw[c0:c1], r0 > 0)
    if db is not None:
        mats.dbias(g, db[c0:c1], r0 > 0)


def _kernel_pair(job: Job):
    """``(row_stats, row_grad)`` of a block of classes: numba's for host rows when it can run
    (``backend``), else the core's."""
    kernels = None
    if job.p.numpy and job.backend != "numpy":
        kernels = _dispatch.numba_kernels()
        if kernels is None and job.backend == "numba":
            msg = f"backend='numba' cannot run: {_dispatch.unavailable()}; use 'auto' or 'numpy'"
            raise ImportError(msg)
    if kernels is not None:
        return kernels.row_stats, kernels.row_grad
    return rows.row_stats, _core_row_grad


def _core_row_grad(x, target, col_offset, stats, row_scale, opts, ctx, *, weight, out):
    """The core's ``row_grad`` with the numba twin's signature (``out`` unused: the core
    returns a new array; a NumPy problem's row scale may be a Python float)."""
    if isinstance(row_scale, float):
        row_scale = np.asarray(row_scale)
    return rows.row_grad(x, target, col_offset, stats, row_scale, opts, ctx, weight=weight)


def logit_blocks(job: Job, r0: int, r1: int, buf: Any):
    """The logits of the rows ``[r0, r1)``, a block of ``job.block[1]`` classes at a time
    (nearly equal blocks): yields ``(c0, c1, block, xb)``, the block's buffers (its logits in
    ``block[-1]``) and their view for the rows (``mats.ce_view``), reused by the next block."""
    n_classes = job.w.shape[0]
    for c0, c1 in rows.blocks(n_classes, math.ceil(n_classes / job.block[1])):
        block = _view(buf, r1 - r0, c1 - c0)
        _logits(job, r0, r1, c0, c1, block)
        yield c0, c1, block, job.mats.ce_view(block[-1])


def _class_blocks(job: Job, r0: int, r1: int, buf: Any, want_grad: bool, grads) -> Any:
    """One block of rows, its classes in blocks: statistics merged, then each block's
    gradient from its logits computed again."""
    p, mats, opts = job.p, job.mats, job.p.opts
    ctx = job.ctx.rows(r0, r1)
    target = p.target[r0:r1]
    stats_of, grad_of = _kernel_pair(job)
    sem = opts.semantics
    stats, maxima, nan_loss = None, [], None
    for c0, c1, _, xb in logit_blocks(job, r0, r1, buf):
        tb, wb = _class_slice(p, target, c0, c1)
        if sem.nan_zero_log_zero:
            part = _loss_quirk_part(job, xb, tb, ctx, c0, c1, wb)
            nan_loss = part if nan_loss is None else nan_loss + part
        if sem.nan_nonfinite_row_grad:
            maxima.append(p.xp.max(xb, axis=1))
        with _quiet():
            st = stats_of(xb, tb, c0, opts, ctx, weight=wb)
            stats = st if stats is None else rows.merge(stats, st)
    with _quiet():
        loss = rows.row_loss(stats, opts, ctx)
    if nan_loss is not None:
        loss = loss + nan_loss
    if not want_grad:
        return loss
    scale = _slice_rows(job.scale, r0, r1)
    nan_grad = None
    if sem.nan_zero_mass_grad or sem.nan_nonfinite_row_grad:
        # (nonfinite rows from the blocks' maxima: the maximum of the maxima is the row's)
        # (without that quirk, only the shape and dtype of the last block's column are used)
        x2 = p.xp.stack(maxima, axis=1) if maxima else xb[:, :1]
        pb = _block_problem(p, x2, target, p.weight)
        nan_grad = _run._quirky_grad(pb, ctx, job.total, p.xp.zeros_like(x2[:, :1]))
    for c0, c1, block, xb in logit_blocks(job, r0, r1, buf):
        tb, wb = _class_slice(p, target, c0, c1)
        with _quiet():
            g = grad_of(xb, tb, c0, stats, scale, opts, ctx, weight=wb, out=xb)
        g = _finish_grad(job, g, nan_grad)
        _products(job, r0, r1, c0, c1, mats.from_ce(g), block, grads)
    return loss


def _quiet() -> Any:
    return np.errstate(**_run._ERRSTATE)


def _class_slice(p: Problem, target: Any, c0: int, c1: int) -> tuple[Any, Any]:
    """The target and class weights of the classes ``[c0, c1)``."""
    tb = target if target.ndim == 1 else target[:, c0:c1]
    return tb, None if p.weight is None else p.weight[c0:c1]


def _loss_quirk_part(job: Job, xb, tb, ctx, c0: int, c1: int, wb) -> Any:
    """The loss quirk (``nan_zero_log_zero``) of one block of classes, NaN or 0 per row. For
    class indices, the label's term is checked in the block that holds the label; the
    smoothing terms of classes of weight 0 there too (docs/linear.md: a known gap)."""
    p = job.p
    xp = p.xp
    if tb.ndim == 1:
        hit = (tb >= c0) & (tb < c1) & ctx.keep
        tb = xp.where(hit, tb - c0, xp.zeros_like(tb))
        ctx = rows.RowContext(hit, ctx.spread)
    pb = _block_problem(p, xb, tb, wb)
    return _run._quirky_loss(pb, ctx, xp.zeros_like(xb[:, 0]))


def run_blocks(job: Job, *, want_grad: bool, dloss: Any, grads) -> Any:
    """The loss (reduced as the options say, the layout of ``job.p``) and, with ``want_grad``,
    the three gradients accumulated into ``grads = (dh, dw, db or None)``, arrays of ``mats``
    in the accumulation dtype."""
    p = job.p
    if p.numpy and p.weight is not None:
        job.p = p = _run._unit_weights(p)
    opts, xp = p.opts, p.xp
    n, n_classes = p.x2.shape
    numpy = p.numpy
    wide = np.float64 if numpy else wide_dtype(xp, p.x2.dtype)
    job.ctx, job.total = _run._context(p)
    if numpy and job.total is not None:
        job.total = float(job.total)
    if want_grad:
        d = _run._dloss(p, dloss, wide, floats=numpy)
        job.scale = reduce.row_scale(d, opts.reduction, job.total, n, floats=numpy)
    r, c = job.block
    buf = job.mats.buffers(r * c)
    parts = []
    for r0 in range(0, n, r):
        r1 = min(n, r0 + r)
        step = _row_block if c == n_classes else _class_blocks
        parts.append(step(job, r0, r1, buf, want_grad, grads))
    loss_rows = _concat(xp, parts, numpy, wide)
    if numpy and opts.reduction != "none":
        loss = reduce.finish(
            reduce.FLOATS, reduce.FLOATS.total(loss_rows), opts.reduction, job.total
        )
    else:
        loss = reduce.reduce(loss_rows, opts.reduction, job.total)
    return _run._output(p, loss)


def _concat(xp: Any, parts: list, numpy: bool, wide: Any) -> Any:
    if not parts:
        return np.zeros(0) if numpy else xp.zeros((0,), dtype=wide)
    if numpy:
        return np.concatenate([np.asarray(a, dtype=np.float64) for a in parts])
    return xp.concat([xp.astype(a, wide) for a in parts])


# --------------------------------------------------------------------------------------------
# The NumPy functions
# --------------------------------------------------------------------------------------------


def _operands(input: Any, linear_weight: Any, linear_bias: Any):
    """``(x, w, b, dtype)``: the three operands as float arrays, checked against each other;
    ``dtype`` is that of the unfused logits ``x @ w.T + b``."""
    x = v.float_array(input, "input")
    if x.ndim == 0:
        msg = "input must have at least one dimension (the features), got a 0-d array"
        raise ValueError(msg)
    w = v.float_array(linear_weight, "linear_weight")
    d = x.shape[-1]
    if w.ndim != 2 or w.shape[1] != d or w.shape[0] == 0:
        msg = (
            f"linear_weight must have shape (V, {d}) with V >= 1 classes (torch.nn.Linear's "
            f"layout, D = input.shape[-1] = {d}), got shape {w.shape}"
        )
        raise ValueError(msg)
    b = None
    if linear_bias is not None:
        b = v.float_array(linear_bias, "linear_bias")
        if b.shape != (w.shape[0],):
            msg = f"linear_bias must have shape ({w.shape[0]},) (one per class), got {b.shape}"
            raise ValueError(msg)
    dtype = np.result_type(x, w) if b is None else np.result_type(x, w, b)
    return x, w, b, dtype


def chunk(value: Any) -> int | None:
    """``chunk_size``: None (the memory rule) or a positive int, the logits per block."""
    if value is None:
        return None
    n = v.integer(value, "chunk_size")
    if n < 1:
        msg = f"chunk_size must be None or a positive number of logits per block, got {n}"
        raise ValueError(msg)
    return n


def _problem(x, w, target, dtype, opts, weight) -> Problem:
    """The loss problem over stand-in logits: a zero-stride view of shape ``(..., V)``."""
    stand_in = np.broadcast_to(np.empty((), dtype=dtype), (*x.shape[:-1], w.shape[0]))
    return prepare(stand_in, target, opts, axis=-1, weight=weight)


def _numpy_call(input, linear_weight, target, linear_bias, weight, opts, chunk_size, backend,
                want_grad, dloss):  # fmt: skip
    x, w, b, dtype = _operands(input, linear_weight, linear_bias)
    p = _problem(x, w, target, dtype, opts, weight)
    acc = np.dtype(np.float64 if dtype == np.float64 else np.float32)
    n, n_classes = p.x2.shape
    d = x.shape[-1]
    h = np.ascontiguousarray(x.reshape(n, d), dtype=acc)
    wa = np.ascontiguousarray(w, dtype=acc)
    ba = None if b is None else np.ascontiguousarray(b, dtype=acc)
    budget = block_budget(n, n_classes, dtype.itemsize, acc.itemsize, chunk(chunk_size))
    job = Job(p, h, wa, ba, NumpyMats(acc, budget), v.backend(backend),
              block_shape(n, n_classes, budget))  # fmt: skip
    grads = None
    if want_grad:
        grads = (
            np.zeros((n, d), acc),
            np.empty(w.shape, acc),
            None if b is None else np.empty(b.shape, acc),
        )
        if n == 0:
            grads[1][...] = 0.0
            if b is not None:
                grads[2][...] = 0.0
    loss = run_blocks(job, want_grad=want_grad, dloss=dloss, grads=grads)
    if not want_grad:
        return loss
    dh, dw, db = grads
    dh = dh.reshape(x.shape).astype(x.dtype, copy=False)
    return (
        loss,
        dh,
        dw.astype(w.dtype, copy=False),
        None if b is None else db.astype(b.dtype, copy=False),
    )


def linear_cross_entropy(
    input: Any,
    linear_weight: Any,
    target: Any,
    /,
    *,
    linear_bias: Any = None,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    soft_target_loss: str = "cross-entropy",
    chunk_size: int | None = None,
    backend: str = "auto",
) -> Any:
    r"""Softmax cross-entropy of the logits ``input @ linear_weight.T + linear_bias``, computed
    a block at a time so that the N x V logits never exist.

    ``input`` is ``(..., D)``, ``linear_weight`` ``(V, D)`` (``torch.nn.Linear``'s layout),
    ``linear_bias`` ``(V,)``, ``target`` integer class indices of shape ``(...)`` or a float
    distribution ``(..., V)``. The value is that of
    ``softmax_cross_entropy(input @ linear_weight.T + linear_bias, target, ...)`` with the same
    options (every one but ``where`` and ``axis``: the classes are the last axis of the
    product), within float rounding; see that function for the formula, the mean's denominator
    and the options. ``chunk_size``: the logits a block holds (rows x classes); None follows the
    memory rule of ``docs/linear.md`` (a block is at most 9.5% of the N x V logits, or 4 MiB).
    ``backend``: the row kernel, as for ``softmax_cross_entropy``.

    The products run in float32 (float64 when an operand is float64): a float16 operand is
    converted first (NumPy has no float16 BLAS).

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> round(float(softmaxce.linear_cross_entropy(x, w, np.array([0, 2]))), 6)
    0.810309
    >>> round(float(softmaxce.softmax_cross_entropy(x @ w.T, np.array([0, 2]))), 6)
    0.810309
    """
    opts = loss_options(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, soft_target_loss=soft_target_loss,
    )  # fmt: skip
    return _numpy_call(input, linear_weight, target, linear_bias, weight, opts, chunk_size,
                       backend, False, None)  # fmt: skip


def linear_cross_entropy_with_grad(
    input: Any,
    linear_weight: Any,
    target: Any,
    /,
    *,
    dloss: Any = None,
    linear_bias: Any = None,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    soft_target_loss: str = "cross-entropy",
    chunk_size: int | None = None,
    backend: str = "auto",
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray | None]:
    r"""The loss of ``linear_cross_entropy`` and its three gradients, in one blocked pass.

    Returns ``(loss, dinput, dlinear_weight, dlinear_bias or None)``, each ``dloss`` times the
    derivative of the loss (``dloss``: None means 1; a scalar for ``"sum"``/``"mean"``, an
    array of the loss's shape for ``"none"``). With ``G = dloss * d loss / d logits`` (see
    ``softmax_cross_entropy_with_grad``), ``dinput = G @ linear_weight``,
    ``dlinear_weight = G.T @ input`` and ``dlinear_bias = G.sum(0)`` (over every row), each
    accumulated block by block in float32 (float64 for float64 operands) and returned in the
    dtype of its operand. No input is modified.

    Examples
    --------
    >>> import numpy as np, softmaxce
    >>> x = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> loss, dx, dw, db = softmaxce.linear_cross_entropy_with_grad(
    ...     x, w, np.array([0, 2]), linear_bias=np.zeros(3))
    >>> dx.round(4)
    array([[-0.0777,  0.2888],
           [-0.2342, -0.0317]])
    >>> db.round(4)
    array([-0.2572,  0.3118, -0.0547])
    """
    opts = loss_options(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, soft_target_loss=soft_target_loss,
    )  # fmt: skip
    return _numpy_call(input, linear_weight, target, linear_bias, weight, opts, chunk_size,
                       backend, True, dloss)  # fmt: skip
