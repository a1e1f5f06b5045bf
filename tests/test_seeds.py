"""Regression tests named after what they guard: documented examples of other libraries and
framework issues that softmaxce promises to get right."""

from __future__ import annotations

import numpy as np
import pytest


def test_mygrad_docstring_example(impl):
    """mygrad.nnet.losses.softmax_crossentropy docstring: x=[[2,2,2],[0,0,1e6]], y=[0,2] ->
    0.54930614 (= log(3) / 2; the 1e6 row contributes exactly 0)."""
    x = np.array([[2.0, 2.0, 2.0], [0.0, 0.0, 1e6]])
    loss = impl.softmax_cross_entropy(x, np.array([0, 2]))
    np.testing.assert_allclose(loss, 0.54930614, rtol=1e-8)
    np.testing.assert_allclose(loss, np.log(3) / 2, rtol=1e-15)


def test_mygrad_docstring_example_gradient(impl):
    x = np.array([[2.0, 2.0, 2.0], [0.0, 0.0, 1e6]])
    _, g = impl.softmax_cross_entropy_with_grad(x, np.array([0, 2]))
    np.testing.assert_allclose(g, [[(1 / 3 - 1) / 2, 1 / 6, 1 / 6], [0, 0, 0]], rtol=1e-15)


def test_chainer_docstring_example_float64(impl):
    """chainer.functions.softmax_cross_entropy docstring: -> 0.4401896985611953."""
    x = np.array([[-1.0, 0.0, 1.0, 2.0], [2.0, 0.0, 1.0, -1.0]])
    t = np.array([3, 0])
    loss = impl.softmax_cross_entropy(x, t)
    assert loss.dtype == np.float64
    np.testing.assert_allclose(loss, 0.4401896985611953, rtol=1e-15)


def test_chainer_docstring_example_float32(impl):
    x = np.array([[-1, 0, 1, 2], [2, 0, 1, -1]], dtype=np.float32)
    t = np.array([3, 0], dtype=np.int32)
    loss = impl.softmax_cross_entropy(x, t)
    assert loss.dtype == np.float32
    np.testing.assert_allclose(float(loss), 0.4401896985611953, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_label_on_1e6_logit_is_exactly_zero(impl, dtype):
    """[[0, 0, 1e6]] label 2: naive softmax overflows (exp(1e6) = inf, inf / inf = nan)."""
    x = np.array([[0.0, 0.0, 1e6]], dtype=dtype)
    loss, g = impl.softmax_cross_entropy_with_grad(x, np.array([2]))
    assert loss == 0
    assert not np.any(np.isnan(g)) and np.all(g == 0)


@pytest.mark.parametrize("with_grad", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_gh_pytorch_70348_all_ignored_mean_is_zero_not_nan(impl, soft, with_grad):
    """pytorch#70348: all targets ignored under reduction="mean" gives NaN in PyTorch."""
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    if soft:
        # the soft-target analogue: every row has no allowed class
        t = np.full((4, 3), 1 / 3, dtype=np.float32)
        kw = {"where": np.zeros((4, 3), dtype=bool)}
    else:
        t = np.full(4, -100)
        kw = {}
    if with_grad:
        loss, g = impl.softmax_cross_entropy_with_grad(x, t, label_smoothing=0.1, **kw)
        assert g.dtype == np.float32
        assert np.all(g == 0)
    else:
        loss = impl.softmax_cross_entropy(x, t, label_smoothing=0.1, **kw)
    assert loss.dtype == np.float32
    assert loss == 0 and not np.isnan(loss)


def test_gh_pytorch_70348_empty_batch_mean_is_zero(impl):
    loss, g = impl.softmax_cross_entropy_with_grad(np.zeros((0, 5)), np.zeros(0, dtype=np.int64))
    assert loss == 0 and not np.isnan(loss)
    assert g.shape == (0, 5)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_gh_pytorch_107680_weighted_mean_index_equals_one_hot(impl, smoothing):
    """pytorch#107680: with class weights, index targets and their one-hot float targets give
    different "mean" losses in PyTorch (sum w[t] vs N). Here they agree, value and gradient."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 4))
    t = np.array([0, 3, 3, 1, 2, 0])
    w = np.array([0.2, 1.0, 3.0, 0.5])
    li, gi = impl.softmax_cross_entropy_with_grad(x, t, weight=w, label_smoothing=smoothing)
    lo, go = impl.softmax_cross_entropy_with_grad(x, np.eye(4)[t], weight=w,
                                                label_smoothing=smoothing)
    np.testing.assert_allclose(li, lo, rtol=1e-13)
    np.testing.assert_allclose(gi, go, rtol=1e-12, atol=1e-15)
    # and the value is sum_i L_i / sum_i w[t_i] (PyTorch's index-target mean)
    none = impl.softmax_cross_entropy(x, t, weight=w, label_smoothing=smoothing, reduction="none")
    np.testing.assert_allclose(li, none.sum() / w[t].sum(), rtol=1e-13)


def test_negative_label_is_not_wrapped_around(impl):
    """Python indexing would silently read x[i, -1] for a label -1."""
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="target"):
        impl.softmax_cross_entropy(x, np.array([0, -1]))


def test_soft_target_gradient_not_p_minus_q(impl):
    """Frameworks that assume sum(q) = 1 return p - q; softmaxce gives p * sum(q) - q."""
    x = np.array([[0.0, 0.0]])
    y = np.array([[1.0, 1.0]])
    _, g = impl.softmax_cross_entropy_with_grad(x, y, reduction="sum")
    np.testing.assert_allclose(g, [[0.0, 0.0]], atol=1e-16)  # p - q would be [-0.5, -0.5]
