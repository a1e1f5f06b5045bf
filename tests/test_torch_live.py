"""Live comparison with PyTorch (CPU) wherever the semantics coincide: values and autograd
gradients of ``F.cross_entropy``, and ``torch.softmax`` / ``log_softmax`` / ``logsumexp``.

Where they differ on purpose (README, "The loss"):
- soft targets with class weights under reduction="mean": PyTorch divides by the batch size,
  softmaxce by W = sum_i sum_c w_c y_ic (pytorch#107680), tested as a difference below;
- an all-ignored batch under "mean": PyTorch gives NaN, softmaxce 0 (pytorch#70348).
Index targets with weights and label smoothing coincide: PyTorch's smoothing term is
sum_c w_c (-log p_c) / C normalised by sum_i w[t_i], exactly the README's L_i and W.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import softmaxce as sc  # noqa: E402

TORCH_TOL = {np.float32: (1e-5, 1e-6), np.float64: (1e-12, 1e-13)}  # (rtol, atol)


def torch_ce(x, target, dloss=None, **kw):
    """F.cross_entropy value and the gradient wrt the input (class dim 1), as NumPy."""
    xt = torch.tensor(x, requires_grad=True)
    tt = torch.tensor(target)
    if "weight" in kw and kw["weight"] is not None:
        kw["weight"] = torch.tensor(kw["weight"], dtype=xt.dtype)
    out = F.cross_entropy(xt, tt, **kw)
    grad_out = torch.ones_like(out) if dloss is None else torch.as_tensor(dloss, dtype=out.dtype)
    out.backward(grad_out)
    return out.detach().numpy(), xt.grad.numpy()


def check(x, target, *, dloss=None, axis=1, sc_extra=None, **kw):
    rtol, atol = TORCH_TOL[x.dtype.type]
    t_loss, t_grad = torch_ce(x, target, dloss=dloss, **kw)
    opts = dict(kw, **(sc_extra or {}))
    loss, grad = sc.softmax_cross_entropy_with_grad(x, target, axis=axis, dloss=dloss, **opts)
    np.testing.assert_allclose(np.asarray(loss), t_loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, t_grad, rtol=rtol, atol=atol)
    loss2 = sc.softmax_cross_entropy(x, target, axis=axis, **opts)
    np.testing.assert_allclose(np.asarray(loss2), t_loss, rtol=rtol, atol=atol)


DTYPES = [np.float32, np.float64]
DT_IDS = ["float32", "float64"]
REDUCTIONS = ["none", "sum", "mean"]


def _data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 2.5).astype(dtype)
    C = shape[1]
    t = rng.integers(0, C, size=(shape[0], *shape[2:]))
    return rng, x, t


def _dloss(rng, reduction, batch, dtype):
    if reduction == "none":
        return rng.uniform(-2, 2, size=batch).astype(dtype)
    return np.asarray(rng.uniform(-2, 2), dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.7])
@pytest.mark.parametrize("ignore", [False, True])
def test_index_targets(ignore, smoothing, weighted, reduction, dtype):
    rng, x, t = _data((11, 7), dtype, seed=0)
    kw = {"reduction": reduction, "label_smoothing": smoothing}
    if ignore:
        t[[1, 4, 5]] = -100
    if weighted:
        kw["weight"] = rng.uniform(0.2, 2.0, size=7)
    check(x, t, dloss=_dloss(rng, reduction, t.shape, dtype), **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignore_index_in_range_and_custom(reduction, dtype):
    rng, x, t = _data((12, 5), dtype, seed=1)
    t[::3] = 2
    check(x, t, reduction=reduction, ignore_index=2, weight=rng.uniform(0.5, 2, 5),
          dloss=_dloss(rng, reduction, t.shape, dtype))
    t2 = t.copy()
    t2[::4] = 7  # out of [0, C) but equal to ignore_index: allowed
    check(x, t2, reduction=reduction, ignore_index=7)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 6, 3, 2)], ids=["3d", "4d"])
def test_nd_class_dim_1(shape, reduction, dtype):
    rng, x, t = _data(shape, dtype, seed=2)
    t.reshape(-1)[::5] = -100
    check(x, t, reduction=reduction, weight=rng.uniform(0.5, 2, shape[1]),
          label_smoothing=0.2, dloss=_dloss(rng, reduction, t.shape, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_probability_targets_sum_none(weighted, smoothing, reduction, dtype):
    rng, x, _ = _data((9, 6), dtype, seed=3)
    y = rng.dirichlet(np.ones(6), size=9).astype(dtype)
    kw = {"reduction": reduction, "label_smoothing": smoothing}
    if weighted:
        kw["weight"] = rng.uniform(0.2, 2.0, size=6)
    check(x, y, dloss=_dloss(rng, reduction, (9,), dtype), **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_probability_targets_mean_unweighted(smoothing, dtype):
    """Unweighted rows summing to 1: W = N, the same as PyTorch's batch mean."""
    rng, x, _ = _data((9, 6), dtype, seed=4)
    y = rng.dirichlet(np.ones(6), size=9).astype(dtype)
    check(x, y, reduction="mean", label_smoothing=smoothing, dloss=np.asarray(0.7, dtype=dtype))


def test_probability_targets_nd():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 4, 3, 2))
    y = np.moveaxis(rng.dirichlet(np.ones(4), size=(2, 3, 2)), -1, 1)
    check(x, y, reduction="mean")
    check(x, y, reduction="none", weight=rng.uniform(0.5, 2, 4))


def test_weighted_soft_mean_differs_from_torch_on_purpose():
    """pytorch#107680: PyTorch divides by N; softmaxce by sum_i sum_c w_c y_ic."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(5, 4))
    y = rng.dirichlet(np.ones(4), size=5)
    w = np.array([0.5, 1.0, 2.0, 3.0])
    t_loss, _ = torch_ce(x, y, weight=w, reduction="mean")
    t_sum, _ = torch_ce(x, y, weight=w, reduction="sum")
    ours = sc.softmax_cross_entropy(x, y, weight=w)
    np.testing.assert_allclose(t_loss, t_sum / 5, rtol=1e-12)
    np.testing.assert_allclose(ours, t_sum / np.sum(y @ w), rtol=1e-12)
    assert not np.isclose(ours, t_loss)


def test_all_ignored_mean_differs_from_torch_on_purpose():
    """pytorch#70348: PyTorch's NaN vs softmaxce's 0."""
    x = np.random.default_rng(7).normal(size=(3, 4))
    t = np.full(3, -100)
    t_loss, _ = torch_ce(x, t)
    assert np.isnan(t_loss)
    assert sc.softmax_cross_entropy(x, t) == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_family_vs_torch(dim, dtype):
    rtol, atol = TORCH_TOL[dtype]
    x = (np.random.default_rng(8).normal(size=(4, 5, 3)) * 4).astype(dtype)
    xt = torch.tensor(x)
    np.testing.assert_allclose(sc.softmax(x, axis=dim), torch.softmax(xt, dim).numpy(),
                               rtol=rtol, atol=atol)
    np.testing.assert_allclose(sc.log_softmax(x, axis=dim),
                               torch.log_softmax(xt, dim).numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(sc.logsumexp(x, axis=dim), torch.logsumexp(xt, dim).numpy(),
                               rtol=rtol, atol=atol)
    np.testing.assert_allclose(sc.logsumexp(x, axis=dim, keepdims=True),
                               torch.logsumexp(xt, dim, keepdim=True).numpy(), rtol=rtol,
                               atol=atol)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_vjps_vs_torch_autograd(dim, dtype):
    rtol, atol = TORCH_TOL[dtype]
    rng = np.random.default_rng(9)
    x = (rng.normal(size=(4, 5, 3)) * 2).astype(dtype)
    dy = rng.normal(size=x.shape).astype(dtype)
    for fn, vjp in ((torch.softmax, sc.softmax_vjp), (torch.log_softmax, sc.log_softmax_vjp)):
        xt = torch.tensor(x, requires_grad=True)
        out = fn(xt, dim)
        out.backward(torch.tensor(dy))
        ours = vjp(out.detach().numpy(), dy, axis=dim)
        np.testing.assert_allclose(ours, xt.grad.numpy(), rtol=rtol, atol=atol * 10)


def test_softmax_jacobian_vs_torch():
    x = np.random.default_rng(10).normal(size=(3, 4))
    J = sc.softmax_jacobian(sc.softmax(x))
    for r in range(3):
        Jt = torch.autograd.functional.jacobian(lambda v: torch.softmax(v, 0),
                                                torch.tensor(x[r]))
        np.testing.assert_allclose(J[r], Jt.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_on_probabilities_vs_torch_nll(weighted, reduction):
    """cross_entropy(p, t) == F.nll_loss(log p, t): values and d/dp by autograd."""
    rng = np.random.default_rng(11)
    p = rng.dirichlet(np.ones(5), size=8)
    t = rng.integers(0, 5, size=8)
    t[2] = -100
    w = rng.uniform(0.5, 2, 5) if weighted else None
    pt = torch.tensor(p, requires_grad=True)
    out = F.nll_loss(torch.log(pt), torch.tensor(t), reduction=reduction,
                     weight=None if w is None else torch.tensor(w))
    dloss = rng.uniform(-2, 2, size=8) if reduction == "none" else 1.3
    out.backward(torch.as_tensor(dloss, dtype=out.dtype) if reduction == "none"
                 else torch.tensor(dloss, dtype=out.dtype))
    np.testing.assert_allclose(sc.cross_entropy(p, t, weight=w, reduction=reduction),
                               out.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sc.cross_entropy_vjp(p, t, dloss, weight=w, reduction=reduction),
                               pt.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_z_loss_and_softcap_vs_torch_composition():
    """No torch flag for these: compose them in torch from their README definitions."""
    rng = np.random.default_rng(12)
    x = rng.normal(size=(6, 5)) * 4
    t = rng.integers(0, 5, size=6)
    cap, zl = 3.0, 0.05
    xt = torch.tensor(x, requires_grad=True)
    z = cap * torch.tanh(xt / cap)
    lse = torch.logsumexp(z, 1)
    out = F.cross_entropy(z, torch.tensor(t), reduction="sum") + zl * (lse**2).sum()
    out.backward()
    loss, g = sc.softmax_cross_entropy_with_grad(x, t, reduction="sum", softcap=cap, z_loss=zl)
    np.testing.assert_allclose(loss, out.item(), rtol=1e-12)
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-11, atol=1e-14)
