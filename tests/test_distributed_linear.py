"""Vocabulary-parallel fused linear + cross-entropy
(``softmaxce.distributed.vocab_parallel_linear_cross_entropy``) on real gloo process groups.

The spawns of ``tests/test_distributed.py`` (one per world size, every case of :data:`CASES`
in it, uneven slices of the weight's rows with a one-class rank): each rank holds its rows of
the weight, of the bias and of the class weights, the same input and target as every other
rank, and compares the loss, the input's gradient (the full one, after the backward's
all-reduce) and the gradients of its weight and bias slices with the single-process loss of
the concatenated weight in float64: ``F.linear`` then ``softmaxce.torch.cross_entropy``,
unfused, so that nothing of the blocked pass is shared with the reference (the KL divergence:
``softmaxce.softmax_cross_entropy``). Small ``chunk_size`` values make the local pass run in
several blocks of rows and of classes. Tolerances come from the dtype: a few ulps of the
magnitude of the terms of each result (``|logits|`` for the loss, ``|G| @ |W|`` for the
input's gradient, ...), logits being rounded to the input's dtype.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import test_distributed as td
import torch
import torch.nn.functional as F
from test_distributed import SIZES, Suite, _close, _collectives, _same_on_every_rank

import softmaxce as sc
import softmaxce.torch as sct
from softmaxce.distributed import vocab_parallel_linear_cross_entropy

N, D = 24, 5
ROW_BLOCK = 16  # (softmaxce._linear.MIN_ROWS: "rows" makes blocks of 16 rows, every class)

# name -> options. Keys other than the loss's own: dtype, bias, soft, kl, weighted, ignored,
# all_ignored, nd ((4, 6, D) input), chunk ("rows": blocks of 16 rows; "classes": blocks of
# rows x one class), frozen_input (the input does not require grad), compile.
CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "bias": {"bias": True},
    "float64": {"dtype": torch.float64, "bias": True, "chunk": "classes"},
    "weight": {"weighted": True, "bias": True},
    "ignore_index": {"ignored": True, "ignore_index": 3, "chunk": "rows"},
    "all_ignored": {"all_ignored": True, "label_smoothing": 0.1, "bias": True},
    "all_ignored_torch": {"all_ignored": True, "semantics": "torch", "bias": True},
    "smoothing_ignored_rows": {"ignored": True, "label_smoothing": 0.2, "chunk": "classes"},
    "smoothing_weight_ignored": {
        "ignored": True, "weighted": True, "label_smoothing": 0.1, "bias": True, "chunk": "rows",
    },
    "z_loss": {"z_loss": 1e-2, "ignored": True, "chunk": "classes"},
    "softcap": {"softcap": 4.0, "label_smoothing": 0.1, "bias": True},
    "sum": {"reduction": "sum", "weighted": True, "ignored": True, "chunk": "classes"},
    "none": {"reduction": "none", "ignored": True, "z_loss": 1e-3, "bias": True, "chunk": "rows"},
    "soft": {"soft": True, "bias": True, "chunk": "classes"},
    "soft_weight_smoothing": {"soft": True, "weighted": True, "label_smoothing": 0.1},
    "soft_kl": {"soft": True, "kl": True, "label_smoothing": 0.1, "dtype": torch.float64},
    "float16": {
        "dtype": torch.float16, "ignored": True, "label_smoothing": 0.1, "bias": True,
        "chunk": "classes",
    },
    "bfloat16": {"dtype": torch.bfloat16, "ignored": True, "z_loss": 1e-2, "bias": True},
    "torch_weight_smoothing": {
        "semantics": "torch", "weighted": True, "ignored": True, "label_smoothing": 0.1,
        "chunk": "classes",
    },
    "nd_index": {"nd": True, "ignored": True, "weighted": True, "bias": True, "chunk": "rows"},
    "nd_soft_none": {"nd": True, "soft": True, "reduction": "none"},
    "core": {"backend": "core", "label_smoothing": 0.1, "bias": True, "chunk": "classes"},
    "frozen_input": {"frozen_input": True, "bias": True, "ignored": True},
    "compiled": {  # (one block: dynamo unrolls the loops over blocks, seconds per block)
        "compile": True, "weighted": True, "ignored": True, "label_smoothing": 0.1, "bias": True,
    },
}  # fmt: skip
ONLY_WORLD = {"compiled": 2}  # (torch.compile costs seconds per rank: one world size)
LOSS_KEYS = ("ignore_index", "reduction", "label_smoothing", "z_loss", "softcap", "semantics")


def _data(case: dict[str, Any], v: int, seed: int):
    """The full problem, float64 (rounded to the case's dtype first), the same on every
    rank: (x (..., D), W (V, D), b or None, target, class weight or None, dloss)."""
    g = torch.Generator().manual_seed(seed)
    dtype = case.get("dtype", torch.float32)

    def rand(*shape, scale=1.0, shift=0.0):
        r = shift + scale * torch.randn(shape, generator=g, dtype=torch.float64)
        return r.to(dtype).double()

    batch = (4, 6) if case.get("nd") else (N,)
    half = dtype in (torch.float16, torch.bfloat16)  # (logits of a few units: a sharper test)
    x, w = rand(*batch, D), rand(v, D, scale=0.5 if half else 1.5)
    b = rand(v) if case.get("bias") else None
    if case.get("soft"):
        t = torch.softmax(2 * torch.randn((*batch, v), generator=g, dtype=torch.float64), -1)
        t = t.to(dtype).double()
    else:
        t = td.index_target(case, v, batch, g)
    cw = None
    if case.get("weighted"):
        cw = (0.25 + torch.rand(v, generator=g, dtype=torch.float64)).to(dtype).double()
    loss_shape = batch if case.get("reduction") == "none" else ()
    dloss = (0.5 + torch.rand(loss_shape, generator=g, dtype=torch.float64)).to(dtype).double()
    return x, w, b, t, cw, dloss


def _reference(case, x, w, b, t, cw, dloss):
    """Loss, logits and gradients (of x, W, b and of the logits, ``G``) of the full problem,
    single process, float64, unfused: the (N, V) rows of ``F.linear`` then the loss."""
    kw = {k: case[k] for k in LOSS_KEYS if k in case}
    leaves = [a.clone().requires_grad_() for a in (x, w, b) if a is not None]
    xr, wr = leaves[0], leaves[1]
    br = leaves[2] if b is not None else None
    logits = F.linear(xr.reshape(-1, D), wr, br)
    logits.retain_grad()
    tr = t.reshape(-1, t.shape[-1]) if case.get("soft") else t.reshape(-1)
    if case.get("kl"):
        kw.pop("semantics", None)
        loss = sc.softmax_cross_entropy(
            logits, tr, axis=1, weight=cw, soft_target_loss="kl-divergence", **kw
        )
    else:
        loss = sct.cross_entropy(logits, tr, cw, **kw)
    if case.get("reduction") == "none":
        loss = loss.reshape(t.shape[: x.dim() - 1])
    (loss * dloss).sum().backward()
    db = None if b is None else br.grad
    return loss.detach(), logits.detach(), xr.grad, wr.grad, db, logits.grad


def _chunk(case: dict[str, Any], v_r: int) -> int | None:
    """Logits per block: "rows", blocks of 16 rows of every class; "classes", blocks of 16
    rows and one class (two classes' worth of logits is below 16 rows of every class)."""
    chunk = case.get("chunk")
    if chunk is None:
        return None
    return ROW_BLOCK * v_r if chunk == "rows" else ROW_BLOCK + 1


def _run_case(name: str, case: dict[str, Any], rank: int, sizes: tuple[int, ...]) -> None:
    dtype = case.get("dtype", torch.float32)
    off, v_r = sum(sizes[:rank]), sizes[rank]
    mine = slice(off, off + v_r)
    x, w, b, t, cw, dloss = _data(case, sum(sizes), seed=len(name) * 7919 + sum(map(ord, name)))
    want, logits, want_dx, want_dw, want_db, g = _reference(case, x, w, b, t, cw, dloss)

    xs = x.to(dtype, copy=True).requires_grad_(not case.get("frozen_input"))
    ws = w[mine].to(dtype, copy=True).requires_grad_()
    bs = None if b is None else b[mine].to(dtype, copy=True).requires_grad_()
    ts = t[..., mine].to(dtype) if case.get("soft") else t
    cws = None if cw is None else cw[mine].to(dtype)
    kw = {k: case[k] for k in LOSS_KEYS if k in case}
    if case.get("kl"):
        kw["soft_target_loss"] = "kl-divergence"
    if "backend" in case:
        kw["backend"] = case["backend"]
    loss = _loss_fn(case)(
        xs, ws, ts, linear_bias=bs, weight=cws, chunk_size=_chunk(case, v_r), **kw
    )
    same = _same_on_every_rank(loss)  # (before any check: the ranks' collectives stay in step)
    (loss * dloss.to(dtype)).sum().backward()
    assert loss.dtype == dtype and loss.shape == want.shape, (loss.dtype, loss.shape)
    # error bounds in units of eps: each logit carries a rounding error of eps |z| <= eps zmax,
    # which moves a row's loss by eps zmax at most, and the gradient G of a logit by
    # eps zmax |G| (to first order, for rows not near their target); the products add theirs
    zmax = max(1.0, float(logits.abs().nan_to_num().max()))
    rows = N if case.get("reduction") == "sum" else 1
    ga = g.abs().nan_to_num()
    _close(loss, want, dtype, "loss", scale=zmax * rows)
    assert same, "the ranks' losses differ"
    ulps = 2 if dtype in (torch.float16, torch.bfloat16) else None  # (bounds, not sizes)
    if case.get("frozen_input"):
        assert xs.grad is None
    else:
        bound = (1 + zmax) * _max(ga @ w.abs())
        _close(xs.grad, want_dx, dtype, "input gradient", scale=bound, ulps=ulps)
    bound = (1 + zmax) * _max(ga.T @ x.reshape(-1, D).abs())
    _close(ws.grad, want_dw[mine], dtype, "weight slice gradient", scale=bound, ulps=ulps)
    if b is not None:
        bound = (1 + zmax) * _max(ga.sum(0))
        _close(bs.grad, want_db[mine], dtype, "bias slice gradient", scale=bound, ulps=ulps)


def _max(a: torch.Tensor) -> float:
    return float(a.max()) if a.numel() else 0.0


def _loss_fn(case: dict[str, Any]):
    if not case.get("compile"):
        return vocab_parallel_linear_cross_entropy
    # (torch's warnings while dynamo traces the core; see tests/test_distributed.py)
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
    warnings.filterwarnings("ignore", message=".*should not be instantiated")
    return torch.compile(vocab_parallel_linear_cross_entropy, fullgraph=True, backend="aot_eager")


def _count_collectives(rank: int, sizes: tuple[int, ...]) -> dict[str, int]:
    """Collectives in a forward and in a backward (by the profiler's c10d records)."""
    x = torch.randn(N, D, requires_grad=True)
    w = torch.randn(sizes[rank], D, requires_grad=True)
    b = torch.randn(sizes[rank], requires_grad=True)
    t = torch.randint(0, sum(sizes), (N,))
    opts = {"linear_bias": b, "label_smoothing": 0.1, "z_loss": 1e-3, "chunk_size": 20}
    vocab_parallel_linear_cross_entropy(x, w, t, **opts)  # (the first call gathers the sizes)
    counts = {}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss = vocab_parallel_linear_cross_entropy(x, w, t, **opts)
    counts["forward"] = _collectives(prof)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss.backward()
    counts["backward"] = _collectives(prof)
    return counts


LINEAR = Suite(CASES, _run_case, _count_collectives, ONLY_WORLD)


@pytest.fixture(scope="module", params=sorted(SIZES))
def reports(request, tmp_path_factory) -> tuple[int, list[dict[str, Any]]]:
    world = request.param
    return world, td._spawn(world, tmp_path_factory.mktemp(f"linear{world}"), LINEAR)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_single_process_linear_loss_and_gradients(reports, name):
    td.check_case(reports, name, ONLY_WORLD)


def test_forward_is_one_all_gather_and_backward_one_all_reduce(reports):
    world, every = reports
    for rank, rep in enumerate(every):
        assert rep["collectives"] == {"forward": 1, "backward": 1}, (world, rank)


# ---- in this process: a group of one ----

group_of_one = td.group_of_one


def _operands(v: int = 3, d: int = 4, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, d, generator=g, dtype=dtype)
    return x, torch.randn(v, d, generator=g, dtype=dtype), torch.randint(0, v, (5,), generator=g)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"linear_bias": torch.zeros(2, dtype=torch.float64)}, ValueError,
         r"linear_bias must have shape \(3,\), got \(2,\)"),
        ({"input": torch.zeros(5, 6, dtype=torch.float64)}, ValueError,
         r"linear_weight must have shape \(V, 6\) with V >= 1, got \(3, 4\)"),
        ({"input": torch.zeros((), dtype=torch.float64)}, ValueError,
         r"input must be \(\.\.\., D\)"),
        ({"linear_bias": torch.zeros(3)}, TypeError,
         r"linear_bias must have the input's dtype torch\.float64"),
        ({"linear_weight": torch.zeros(3, 4, dtype=torch.int64)}, TypeError,
         "linear_weight must be a float torch.Tensor"),
        ({"target": torch.zeros(5, 2, dtype=torch.int64)}, ValueError,
         r"target: integer class indices .* must have shape \(5,\), got \(5, 2\)"),
        ({"target": torch.zeros(5, 4, dtype=torch.float64)}, ValueError,
         r"target: a float \(probability\) target .* must have shape \(5, 3\), got \(5, 4\)"),
        ({"target": torch.tensor([0, 1, 2, 3, 0])}, ValueError, "target"),
        ({"weight": torch.ones(4, dtype=torch.float64)}, ValueError,
         r"weight must have shape \(3,\)"),
        ({"weight": torch.ones(3, dtype=torch.float64, requires_grad=True)}, ValueError,
         "weight requires grad"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"backend": "triton"}, ValueError, "backend"),
        ({"group": "world"}, TypeError, "group must be None or a torch.distributed.ProcessGroup"),
    ],
)  # fmt: skip
def test_bad_argument_is_named(group_of_one, change, error, match):
    x, w, t = _operands()
    args = {"input": x, "linear_weight": w, "target": t, **change}
    with pytest.raises(error, match=match):
        vocab_parallel_linear_cross_entropy(
            args.pop("input"), args.pop("linear_weight"), args.pop("target"), **args
        )


@pytest.mark.parametrize("shape", [(5,), (2, 3), ()], ids=["rows", "nd", "unbatched"])
def test_group_of_one_is_the_single_process_linear_loss(group_of_one, shape):
    g = torch.Generator().manual_seed(2)
    x = torch.randn((*shape, 4), generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 6, shape, generator=g)
    opts = {"label_smoothing": 0.1, "z_loss": 1e-2, "softcap": 3.0}
    for reduction in ("mean", "none"):
        loss = vocab_parallel_linear_cross_entropy(
            x, w, t, linear_bias=b, reduction=reduction, chunk_size=7, **opts
        )
        want = sct.linear_cross_entropy(
            x.reshape(-1, 4), w, t.reshape(-1), linear_bias=b, reduction=reduction, **opts
        )
        want = want.reshape(shape) if reduction == "none" else want
        assert loss.shape == want.shape
        got_grads = torch.autograd.grad(loss.sum(), (x, w, b))
        want_grads = torch.autograd.grad(want.sum(), (x, w, b))
        tol = 64 * math.ulp(1.0)
        torch.testing.assert_close(loss, want, rtol=tol, atol=tol)
        for got_g, want_g in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(got_g, want_g, rtol=tol, atol=tol)
