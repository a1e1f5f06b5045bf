"""``softmaxce.torch.cross_entropy(backend="triton")`` against ``backend="core"``.

Without a GPU the Triton kernels run under the interpreter (``TRITON_INTERPRET=1``, set before
they are imported) on CPU tensors, which ``backend="triton"`` then accepts; with CUDA
(``benchmarks/gpu_check.sh``) the same tests run on the device, bf16 included, and the forward
and backward run under ``torch.cuda.set_sync_debug_mode("error")``: no host synchronisation.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'softmaxce[gpu]')", allow_module_level=True)
if os.environ.get("SOFTMAXCE_BLOCK_NUMBA", "") not in ("", "0"):  # (make test's second pass)
    pytest.skip("the Triton path never reaches numba: first pass only", allow_module_level=True)

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are decorated (first import)

import torch.nn.functional as F  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import softmaxce.torch as sct  # noqa: E402
from softmaxce._triton import _torch as triton_torch  # noqa: E402
from softmaxce.torch._checks import check_call  # noqa: E402

DEV = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
EPS32 = float(np.finfo(np.float32).eps)

OPTIONS = {
    "plain": {},
    "weight_ignore": {"weight": True, "ignore": True},
    "smooth": {"label_smoothing": 0.2},
    "z_loss_softcap": {"z_loss": 1e-3, "softcap": 4.0},
    "everything": {"weight": True, "ignore": True, "label_smoothing": 0.1, "z_loss": 1e-2,
                   "softcap": 5.0},
}  # fmt: skip


def make(shape, kind, options, dtype, seed=0):
    """(logits requiring grad, target, keyword arguments) on DEV; class dim 1."""
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype).to(DEV)
    kw = dict(options)
    c = shape[1]
    if kind == "soft":
        t = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1).to(dtype)
        kw.pop("ignore", None)
    else:
        t = torch.randint(0, c, shape[:1] + shape[2:], generator=g)
        if kw.pop("ignore", False):
            t.view(-1)[::3] = -100
    if kw.pop("weight", False):
        kw["weight"] = (torch.rand(c, generator=g, dtype=torch.float64) + 0.1).float().to(DEV)
    return x.requires_grad_(), t.to(DEV), kw


def both(x, t, kw, reduction, seed=1):
    """(loss, gradient) by the Triton path on ``x`` and by the core on ``x`` in float64,
    for a random upstream gradient."""
    out = {}
    for backend in ("triton", "core"):
        xi = (x.detach().double() if backend == "core" else x.detach().clone()).requires_grad_()
        ti = t.double() if backend == "core" and t.is_floating_point() else t
        kwi = dict(kw)
        if backend == "core" and "weight" in kwi:
            kwi["weight"] = kwi["weight"].double()
        loss = sct.cross_entropy(xi, ti, reduction=reduction, backend=backend, **kwi)
        g = torch.Generator().manual_seed(seed)
        up = torch.randn(loss.shape, generator=g, dtype=torch.float64).to(loss.dtype).to(DEV)
        (gx,) = torch.autograd.grad(loss, xi, up)
        out[backend] = (loss, gx)
    return out["triton"], out["core"]


def close(actual, expected, dtype, what):
    tol = 64 * EPS32 + 4 * float(torch.finfo(dtype).eps)
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = max(1.0, float(e.abs().max())) if e.numel() else 1.0
    torch.testing.assert_close(a, e, rtol=tol, atol=tol * scale, equal_nan=True, msg=what)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("case", list(OPTIONS))
def test_triton_backend_matches_the_core(case, kind, reduction):
    x, t, kw = make((5, 11), kind, OPTIONS[case], torch.float32)
    (loss, g), (loss0, g0) = both(x, t, kw, reduction)
    assert loss.dtype == x.dtype and g.dtype == x.dtype and g.shape == x.shape
    close(loss, loss0, x.dtype, f"{case} loss")
    close(g, g0, x.dtype, f"{case} gradient")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["index", "soft"])
def test_triton_backend_matches_the_core_on_nd_inputs_and_low_precision(kind, dtype):
    for shape, reduction in (((3, 7, 2), "none"), ((4, 9), "mean")):
        x, t, kw = make(shape, kind, OPTIONS["everything"], dtype)
        (loss, g), (loss0, g0) = both(x, t, kw, reduction)
        close(loss, loss0, dtype, f"{shape} loss")
        close(g, g0, dtype, f"{shape} gradient")


@pytest.mark.parametrize("shape", [(5, 11), (3, 7, 2)])
def test_inplace_backward_writes_the_gradient_into_the_input(shape):
    leaf, t, kw = make(shape, "index", OPTIONS["everything"], torch.float32)
    h = leaf * 1.0  # a non-leaf (the output of a layer)
    loss = sct.cross_entropy(h, t, inplace_backward=True, backend="triton", **kw)
    loss.backward()
    x0 = leaf.detach().double().requires_grad_()
    kw0 = {**kw, "weight": kw["weight"].double()}
    sct.cross_entropy(x0, t, backend="core", **kw0).backward()
    close(leaf.grad, x0.grad, torch.float32, "gradient")
    close(h.detach(), x0.grad, torch.float32, "the input's storage holds the gradient")
    with pytest.raises(RuntimeError, match="backward can run only once"):
        loss.backward()


def test_everything_ignored_gives_loss_zero_and_gradient_zero_over_nan_logits():
    x = torch.full((3, 4), torch.nan, device=DEV, requires_grad=True)
    t = torch.full((3,), -100, device=DEV)
    loss = sct.cross_entropy(x, t, backend="triton")
    loss.backward()
    assert loss.item() == 0 and torch.all(x.grad == 0)


def test_zero_weight_mass_gives_zero_gradient_even_over_nan_logits():
    """The mean's W is 0 (every label has weight 0) but the rows count: the gradient is
    exactly 0 (not 0 * NaN), in place too."""
    for inplace in (False, True):
        leaf = torch.randn(3, 4, device=DEV, requires_grad=True)
        h = leaf * 1.0
        h.data[1, 2] = torch.nan
        w = torch.tensor([0.0, 1.0, 1.0, 1.0], device=DEV)
        t = torch.zeros(3, dtype=torch.long, device=DEV)
        loss = sct.cross_entropy(h, t, w, inplace_backward=inplace, backend="triton")
        loss.backward()
        assert loss.item() == 0 and torch.all(leaf.grad == 0), inplace


def test_semantics_torch_matches_f_cross_entropy():
    x, t, kw = make((6, 9), "index", OPTIONS["weight_ignore"], torch.float32)
    kw["label_smoothing"] = 0.1
    loss = sct.cross_entropy(x, t, semantics="torch", backend="triton", **kw)
    (g,) = torch.autograd.grad(loss, x)
    x2 = x.detach().clone().requires_grad_()
    loss0 = F.cross_entropy(x2, t, **kw)
    (g0,) = torch.autograd.grad(loss0, x2)
    close(loss, loss0, torch.float32, "loss")
    close(g, g0, torch.float32, "gradient")
    t_all = torch.full_like(t, -100)  # everything ignored: NaN, as F.cross_entropy
    loss = sct.cross_entropy(x, t_all, semantics="torch", backend="triton")
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(x, t_all))


def test_semantics_torch_in_place_keeps_its_nan_rows():
    """semantics="torch" reads the logits after the kernel for its NaN rules (0 * -inf in the
    loss; a NaN logit gives a NaN gradient row, ignored or not): in place, the kernel must
    not have overwritten them by then."""
    results = []
    for backend, inplace in (("core", False), ("triton", False), ("triton", True)):
        leaf, t, _ = make((5, 6), "index", {"ignore": True}, torch.float32)
        h = leaf * 1.0
        h.data[0, 1] = torch.nan  # an ignored row (t[0] = -100)
        h.data[2, 3] = -torch.inf
        loss = sct.cross_entropy(h, t, semantics="torch", label_smoothing=0.1,
                                 inplace_backward=inplace, backend=backend)  # fmt: skip
        loss.backward()
        results.append((loss.detach(), leaf.grad))
    assert torch.isnan(results[0][1][0]).all()  # (the ignored row with a NaN logit)
    for got in results[1:]:
        torch.testing.assert_close(got, results[0], equal_nan=True)


def test_second_backward_with_retain_graph_recomputes_the_gradient():
    x, t, kw = make((5, 11), "index", OPTIONS["smooth"], torch.float32)
    loss = sct.cross_entropy(x, t, backend="triton", **kw)
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    expected = 2 * g1
    g1.zero_()  # the first gradient is the caller's: the second backward must not read it
    (g2,) = torch.autograd.grad(loss, x, torch.tensor(2.0, device=DEV))
    torch.testing.assert_close(g2, expected, rtol=0, atol=0)


def test_double_backward_matches_the_core():
    x, t, kw = make((4, 6), "index", OPTIONS["z_loss_softcap"], torch.float32)
    out = []
    for backend in ("triton", "core"):
        xi = x.detach().clone().requires_grad_()
        loss = sct.cross_entropy(xi, t, backend=backend, **kw)
        (g,) = torch.autograd.grad(loss, xi, create_graph=True)
        (gg,) = torch.autograd.grad((g * g).sum(), xi)
        out.append(gg)
    close(out[0], out[1], torch.float32, "second derivative")


def test_forward_without_grad_gives_the_loss():
    x, t, kw = make((5, 11), "soft", OPTIONS["everything"], torch.float32)
    with torch.no_grad():
        loss = sct.cross_entropy(x, t, backend="triton", **kw)
        loss0 = sct.cross_entropy(x.double(), t.double(), backend="core", **kw)
    close(loss, loss0, torch.float32, "loss")


def test_backend_triton_that_cannot_run_raises(monkeypatch):
    x, t, _ = make((3, 4), "index", {}, torch.float32)
    soft = torch.softmax(torch.randn(3, 4, device=DEV), 1).requires_grad_()
    with pytest.raises(ValueError, match="backend='triton' differentiates the input only"):
        sct.cross_entropy(x, soft, backend="triton")
    with pytest.raises(ValueError, match="backend='triton' computes float32, float16 and"):
        sct.cross_entropy(x.double(), t, backend="triton")
    if not CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="backend='triton' runs on CUDA tensors"):
            sct.cross_entropy(x, t, backend="triton")
    monkeypatch.setattr(triton_torch, "unavailable", lambda: "triton is not installed (...)")
    with pytest.raises(ImportError, match="backend='triton' cannot run: triton is not"):
        sct.cross_entropy(x, t, backend="triton")
    assert sct.CrossEntropyLoss(backend="triton").backend == "triton"


def test_auto_picks_triton_for_cuda_tensors_only():
    x, t, _ = make((3, 4), "index", {}, torch.float32)
    kw = dict(ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
              softcap=None, inplace_backward=False, semantics="softmaxce",
              backend="auto")  # fmt: skip
    assert check_call(x, t, None, **kw).path == ("triton" if CUDA else "fused")
    soft = torch.softmax(x.detach(), 1).requires_grad_()
    assert check_call(x, soft, None, **kw).path == "core"  # (the target's gradient)


class ScalarReads(TorchDispatchMode):
    """Records every read of a tensor's value into a Python scalar (``.item()``, ``bool()``,
    ``float()``: a host synchronisation on a GPU)."""

    READS = ("aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.item.default")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in self.READS:
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_forward_and_backward_read_no_scalar_from_a_tensor(reduction):
    """The Triton path's torch operations (row context, denominator, loss, backward) never
    read a value into Python: each would be a host synchronisation on a GPU. (The data checks
    of CPU tensors run before, on host arrays; CUDA tensors skip them.)"""
    x, t, kw = make((6, 50), "index", OPTIONS["everything"], torch.float32)
    h = x * 1.0
    with ScalarReads() as reads:
        loss = sct.cross_entropy(h, t, reduction=reduction, inplace_backward=True,
                                 backend="triton", **kw)  # fmt: skip
        loss.backward(torch.full_like(loss, 0.5))
    assert reads.seen == []
    with ScalarReads() as reads:
        bool(loss.sum() > 0)
    assert reads.seen  # (the probe sees a read)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_forward_and_backward_never_synchronise_with_the_host():
    x, t, kw = make((64, 1000), "index", OPTIONS["everything"], torch.bfloat16)
    h = x * 1.0
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = sct.cross_entropy(h, t, inplace_backward=True, **kw)
        loss.backward()
        loss = sct.cross_entropy(x, t, reduction="none", **kw)
        loss.backward(torch.ones_like(loss))
    finally:
        torch.cuda.set_sync_debug_mode("default")
