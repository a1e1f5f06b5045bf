"""Fused linear + cross-entropy on PyTorch: ``semantics="torch"`` against the live
``F.linear_cross_entropy``, our options against the NumPy reference, on the host kernels and on
the core path (what CUDA tensors take, forced on the CPU with ``backend="core"``); half
precision, double backward, ``torch.compile``, errors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from test_linear import reference  # noqa: E402

import softmaxce.torch as sct  # noqa: E402

N, D, V = 24, 6, 30
CHUNKS = {"one": None, "rows": 8 * V, "classes": 120}  # classes: 16 rows x 7 classes

TORCH_CASES = {
    "plain": {},
    "bias": {"bias": True},
    "weight": {"weight": True, "bias": True},
    "ignore": {"ignore": True, "weight": True},
    "sum": {"reduction": "sum", "ignore": True},
    "none": {"reduction": "none", "ignore": True},
    "smoothing": {"label_smoothing": 0.2, "weight": True, "ignore": True},
    "soft": {"soft": True, "bias": True},
    "soft_smooth": {"soft": True, "label_smoothing": 0.1, "weight": True},
    "all_ignored": {"ignore": "all"},
}


def _case(opt: dict, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(V, D, generator=g, dtype=dtype, requires_grad=True)
    kw: dict = {}
    if opt.get("bias"):
        kw["linear_bias"] = torch.randn(V, generator=g, dtype=dtype, requires_grad=True)
    if opt.get("soft"):
        t = torch.rand(N, V, generator=g, dtype=dtype).softmax(1)
    else:
        t = torch.randint(0, V, (N,), generator=g)
        if opt.get("ignore") == "all":
            t[:] = -100
        elif opt.get("ignore"):
            t[::3] = -100
    if opt.get("weight"):
        kw["weight"] = torch.rand(V, generator=g, dtype=dtype) + 0.1
    for name in ("reduction", "label_smoothing", "z_loss", "softcap"):
        if name in opt:
            kw[name] = opt[name]
    return x, w, t, kw


def _grads(loss, x, w, kw, seed=1):
    inputs = [x, w] + ([kw["linear_bias"]] if "linear_bias" in kw else [])
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=loss.dtype)
    return [loss.detach(), *torch.autograd.grad(loss, inputs, go)]


def _close(got, want, eps):
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        scale = 1.0 + float(b.abs().nan_to_num().max()) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=0, atol=eps * scale, equal_nan=True)


@pytest.mark.parametrize("backend", ["auto", "core"])
@pytest.mark.parametrize("chunk", list(CHUNKS))
@pytest.mark.parametrize("name", list(TORCH_CASES))
def test_torch_semantics_equals_live_linear_cross_entropy(name, chunk, backend):
    x, w, t, kw = _case(TORCH_CASES[name])
    got = sct.linear_cross_entropy(x, w, t, semantics="torch", chunk_size=CHUNKS[chunk],
                                   backend=backend, **kw)  # fmt: skip
    want = F.linear_cross_entropy(x, w, t, **kw)
    _close(_grads(got, x, w, kw), _grads(want, x, w, kw), 1e-12)


@pytest.mark.parametrize("name", ["plain", "bias", "weight", "sum", "none"])
def test_torch_semantics_equals_live_chunked_path(name):
    """F.linear_cross_entropy's chunked path (options=LinearCrossEntropyOptions()), in the
    configurations it takes (no smoothing, index targets)."""
    x, w, t, kw = _case(TORCH_CASES[name])
    got = sct.linear_cross_entropy(x, w, t, semantics="torch", chunk_size=120, **kw)
    opts = torch.nn.LinearCrossEntropyOptions()
    want = F.linear_cross_entropy(x, w, t, options=opts, **kw)
    _close(_grads(got, x, w, kw), _grads(want, x, w, kw), 1e-12)


@pytest.mark.parametrize("name", ["plain", "soft", "smoothing"])
def test_torch_semantics_float32_equals_live_reference(name):
    x, w, t, kw = _case(TORCH_CASES[name], torch.float32)
    got = sct.linear_cross_entropy(x, w, t, semantics="torch", chunk_size=120, **kw)
    want = F.linear_cross_entropy(x, w, t, **kw)
    _close(_grads(got, x, w, kw), _grads(want, x, w, kw), 64 * torch.finfo(torch.float32).eps)


OURS = {
    "z_loss": {"z_loss": 1e-2, "bias": True, "ignore": True},
    "softcap": {"softcap": 2.0, "weight": True, "reduction": "none"},
    "all": {
        "bias": True,
        "weight": True,
        "ignore": True,
        "label_smoothing": 0.1,
        "z_loss": 1e-3,
        "softcap": 4.0,
    },
    "all_ignored": {"ignore": "all", "bias": True},
}


@pytest.mark.parametrize("backend", ["auto", "core"])
@pytest.mark.parametrize("chunk", list(CHUNKS))
@pytest.mark.parametrize("name", list(OURS))
def test_our_options_match_the_numpy_reference(name, chunk, backend):
    x, w, t, kw = _case(OURS[name])
    loss = sct.linear_cross_entropy(x, w, t, chunk_size=CHUNKS[chunk], backend=backend, **kw)
    go = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1), dtype=loss.dtype)
    inputs = [x, w] + ([kw["linear_bias"]] if "linear_bias" in kw else [])
    got = [loss.detach(), *torch.autograd.grad(loss, inputs, go)]
    np_kw = {k: (v.detach().numpy() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    ref = reference(x.detach().numpy(), w.detach().numpy(), t.numpy(), dloss=go.numpy(), **np_kw)
    want = [torch.as_tensor(np.asarray(r)) for r in ref if r is not None]
    _close(got, want, 1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["auto", "core"])
def test_half_precision_products_with_float32_cross_entropy(dtype, backend):
    x, w, t, kw = _case({"bias": True, "ignore": True}, dtype)
    loss = sct.linear_cross_entropy(x, w, t, chunk_size=120, backend=backend, **kw)
    got = _grads(loss, x, w, kw)
    ref = reference(*(a.detach().double().numpy() for a in (x, w)), t.numpy(),
                    linear_bias=kw["linear_bias"].detach().double().numpy())  # fmt: skip
    go = torch.randn((), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = [torch.as_tensor(np.asarray(r)) * (1 if i == 0 else go) for i, r in enumerate(ref)]
    eps = float(torch.finfo(dtype).eps)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == dtype
        scale = 1.0 + float(b.abs().max())
        torch.testing.assert_close(a.double(), b, rtol=0, atol=4 * eps * scale)


def test_float16_mean_over_more_than_65536_rows():
    n = 70_000
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 2, generator=g).half()
    w = torch.randn(3, 2, generator=g).half()
    t = torch.randint(0, 3, (n,), generator=g)
    loss = sct.linear_cross_entropy(x, w, t)
    want = float(reference(x.double().numpy(), w.double().numpy(), t.numpy())[0])
    assert torch.isfinite(loss) and abs(loss.item() - want) <= 2e-3 * want


def test_double_backward_through_the_core():
    x, w, t, kw = _case({"bias": True, "label_smoothing": 0.1, "ignore": True})
    x, w, t = x[:5].detach().requires_grad_(), w[:7, :3].detach().requires_grad_(), t[:5] % 7
    b = kw.pop("linear_bias")[:7].detach().requires_grad_()
    x = x[:, :3].detach().requires_grad_()

    def f(x_, w_, b_):
        return sct.linear_cross_entropy(x_, w_, t, linear_bias=b_, chunk_size=12, **kw)

    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_second_backward_with_retain_graph_recomputes():
    x, w, t, kw = _case({"bias": True})
    loss = sct.linear_cross_entropy(x, w, t, **kw)
    first = torch.autograd.grad(loss * 1.0, (x, w), retain_graph=True)
    second = torch.autograd.grad(loss * 1.0, (x, w))
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)


def test_gradient_of_a_probability_target_through_the_unfused_core():
    x, w, t, _kw = _case({"soft": True})
    t.requires_grad_(True)
    loss = sct.linear_cross_entropy(x, w, t)
    (gt,) = torch.autograd.grad(loss, (t,))
    (want,) = torch.autograd.grad(sct.cross_entropy(x @ w.t(), t), (t,))
    torch.testing.assert_close(gt, want)


# torch 2.13's dynamo instantiates torch.autograd.Function itself, which warns (not ours)
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiles_without_a_graph_break(reduction):
    torch._dynamo.reset()
    x, w, t, kw = _case({"bias": True, "ignore": True, "reduction": reduction}, torch.float32)
    fn = torch.compile(sct.linear_cross_entropy, fullgraph=True, backend="aot_eager")
    got = _grads(fn(x, w, t, **kw), x, w, kw)
    want = _grads(sct.linear_cross_entropy(x, w, t, **kw), x, w, kw)
    _close(got, want, 4 * torch.finfo(torch.float32).eps)


def test_module_form():
    x, w, t, kw = _case({"bias": True})
    loss_fn = sct.LinearCrossEntropyLoss(label_smoothing=0.1, chunk_size=120)
    got = loss_fn(x, w, t, kw["linear_bias"])
    want = F.linear_cross_entropy(x, w, t, linear_bias=kw["linear_bias"], label_smoothing=0.1)
    torch.testing.assert_close(got, want)


def test_unbatched_input():
    x, w, t, _ = _case({})
    got = sct.linear_cross_entropy(x[0], w, t[0], reduction="none")
    torch.testing.assert_close(got, F.cross_entropy(x[0] @ w.t(), t[0], reduction="none"))


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"input": torch.ones(2, 3, D)}, ValueError, "input must be"),
        ({"linear_weight": torch.ones(V, D + 1)}, ValueError, "linear_weight must have shape"),
        ({"linear_weight": torch.ones(V, D, dtype=torch.float32)}, TypeError, "linear_weight"),
        ({"linear_bias": torch.ones(V + 1, dtype=torch.float64)}, ValueError, "linear_bias"),
        ({"input": torch.ones(N, D, dtype=torch.int64)}, TypeError, "input must be a float"),
        ({"target": torch.zeros(N + 1, dtype=torch.int64)}, ValueError, "target"),
        ({"target": torch.full((N,), V)}, ValueError, "target"),
        ({"chunk_size": -1}, ValueError, "chunk_size"),
        ({"semantics": "jax"}, ValueError, "semantics"),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "core"])
def test_bad_input_raises_naming_the_argument(change, error, words, backend):
    x, w, t, _ = _case({})
    args = {"input": x.detach(), "linear_weight": w.detach(), "target": t, **change}
    pos = [args.pop(k) for k in ("input", "linear_weight", "target")]
    with pytest.raises(error, match=words):
        sct.linear_cross_entropy(*pos, backend=backend, **args)
