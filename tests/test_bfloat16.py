"""bfloat16 on the numba CPU kernel, through the public NumPy API (``ml_dtypes.bfloat16``
arrays) and the PyTorch front end (CPU bfloat16 tensors, read in place through their bits):
values AND gradients against a float64 reference, in place against out of place, and the
kernel reached without a float32 copy.

Tolerances come from bfloat16's rounding: the logits are read exactly and accumulated in
float32, the loss and each gradient element are rounded to bfloat16 once (half an ulp,
``2**-8`` relative): a few ``2**-8`` relative, plus a few float32 ulps of the largest value.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
ml_dtypes = pytest.importorskip("ml_dtypes")

import softmaxce  # noqa: E402
from softmaxce import _numba as nk  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
RTOL = 2 * 2.0**-8  # two roundings to bfloat16 at most (each half an ulp)
EPS32 = float(np.finfo(np.float32).eps)


def close(actual, expected, what):
    a = np.asarray(np.asarray(actual).astype(np.float64))
    e = np.asarray(expected, dtype=np.float64)
    atol = 8 * EPS32 * max(float(np.max(np.abs(e), initial=0.0)), 1.0)
    np.testing.assert_allclose(a, e, rtol=RTOL, atol=atol, err_msg=what)


def reference(x, target, *, label_smoothing=0.0):
    """Mean loss and its gradient in float64 from the (exact) bfloat16 values."""
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape
    m = x.max(axis=1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(axis=1, keepdims=True)) + m
    if target.ndim == 1:
        q = np.eye(c)[target]
    else:
        q = np.asarray(target, dtype=np.float64)
    q = (1 - label_smoothing) * q + label_smoothing / c
    loss = float(np.sum(q * (lse - x)) / n)
    grad = (q.sum(axis=1, keepdims=True) * np.exp(x - lse) - q) / n
    return loss, grad


def make(n, c, *, soft, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * 3).astype(BF16)
    if soft:
        y = rng.random((n, c))
        return x, (y / y.sum(axis=1, keepdims=True)).astype(BF16)
    return x, rng.integers(0, c, n)


@pytest.fixture
def spy(monkeypatch):
    """The arrays the kernel's fused_rows is called with."""
    seen = []
    real = nk.fused_rows

    def fused_rows(x, *args, **kwargs):
        seen.append((x, kwargs.get("out")))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(nk, "fused_rows", fused_rows)
    return seen


# ----------------------------------------------------------------------------------------------
# NumPy arrays of ml_dtypes.bfloat16


@pytest.mark.parametrize("smooth", [0.0, 0.1])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_numpy_bfloat16_on_the_kernel_matches_float64(soft, smooth, spy):
    x, t = make(32, 300, soft=soft, seed=1)
    loss, grad = softmaxce.softmax_cross_entropy_with_grad(x, t, label_smoothing=smooth)
    assert spy and spy[0][0].dtype == BF16  # the kernel read the bfloat16 logits themselves
    assert np.asarray(loss).dtype == BF16 and grad.dtype == BF16
    ref_loss, ref_grad = reference(x, t, label_smoothing=smooth)
    close(loss, ref_loss, "loss")
    close(grad, ref_grad, "gradient")


@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_numpy_bfloat16_in_place_equals_out_of_place_and_the_core(soft):
    x, t = make(32, 300, soft=soft, seed=2)
    loss, grad = softmaxce.softmax_cross_entropy_with_grad(x, t, z_loss=1e-3)
    buf = x.copy()
    loss_ip, grad_ip = softmaxce.softmax_cross_entropy_with_grad(buf, t, z_loss=1e-3, inplace=True)
    assert grad_ip is buf
    close(loss_ip, float(np.asarray(loss).astype(np.float64)), "in-place loss")
    ulps = np.abs(grad_ip.view(np.int16).astype(int) - grad.view(np.int16).astype(int))
    assert ulps.max() <= 1  # the same float32 values, each rounded once
    core_loss, core_grad = softmaxce.softmax_cross_entropy_with_grad(
        x, t, z_loss=1e-3, backend="numpy"
    )
    close(core_loss, float(np.asarray(loss).astype(np.float64)), "core loss")
    close(core_grad, grad.astype(np.float64), "core gradient")


def test_numpy_bfloat16_read_only_inputs():
    x, t = make(16, 100, soft=False, seed=3)
    x.flags.writeable = False
    t.flags.writeable = False
    loss, grad = softmaxce.softmax_cross_entropy_with_grad(x, t)
    ref_loss, ref_grad = reference(x, t)
    close(loss, ref_loss, "loss")
    close(grad, ref_grad, "gradient")
    with pytest.raises(ValueError, match="read-only"):
        softmaxce.softmax_cross_entropy_with_grad(x, t, inplace=True)


# ----------------------------------------------------------------------------------------------
# PyTorch CPU bfloat16 tensors

torch = pytest.importorskip("torch")


def torch_case(soft, shape=(32, 300), seed=4):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3).bfloat16()
    if soft:
        y = torch.softmax(torch.randn(shape, generator=g), dim=1).bfloat16()
        return x, y
    return x, torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g)


@pytest.mark.parametrize("inplace", [False, True], ids=["oop", "inplace"])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("shape", [(32, 300), (4, 50, 6)], ids=["2d", "3d"])
def test_torch_bfloat16_forward_backward_matches_float64(shape, soft, inplace):
    import softmaxce.torch as sct

    x, t = torch_case(soft, shape)
    leaf = x.clone().requires_grad_(True)
    loss = sct.cross_entropy(leaf * 1, t, label_smoothing=0.1, inplace_backward=inplace)
    loss.backward()
    assert loss.dtype == torch.bfloat16 and leaf.grad.dtype == torch.bfloat16
    x64 = x.double().requires_grad_(True)
    tt = t.double() if soft else t
    ref = torch.nn.functional.cross_entropy(x64, tt, label_smoothing=0.1)
    ref.backward()
    close(loss.detach().float().numpy(), ref.item(), "loss")
    close(leaf.grad.float().numpy(), x64.grad.numpy(), "gradient")


def test_torch_bfloat16_runs_on_the_kernel_without_a_float32_copy(spy):
    import softmaxce.torch as sct

    x, t = torch_case(False)
    h = x.clone().requires_grad_(True) * 1  # a non-leaf: its storage may take the gradient
    loss = sct.cross_entropy(h, t, inplace_backward=True)
    loss.backward()
    (xa, out) = spy[-1]
    assert xa.dtype == BF16 and out is xa  # the logits' own bits, the gradient written there
    assert xa.__array_interface__["data"][0] == h.data_ptr()


def test_torch_bfloat16_in_place_equals_out_of_place():
    import softmaxce.torch as sct

    x, t = torch_case(False, seed=6)
    grads = []
    for inplace in (False, True):
        leaf = x.clone().requires_grad_(True)
        sct.cross_entropy(leaf * 1, t, z_loss=1e-3, inplace_backward=inplace).backward()
        grads.append(leaf.grad.view(torch.int16).numpy().astype(int))
    assert np.abs(grads[0] - grads[1]).max() <= 1
