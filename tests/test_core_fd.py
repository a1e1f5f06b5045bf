"""Finite-difference checks of every analytic gradient, float64, over the option grid.

Two independent difference quotients are used: the library's ``numerical_gradient`` and the
reference's own ``numgrad``. The library's ``numerical_gradient`` and ``gradcheck`` are
themselves tested on functions with known derivatives first.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from test_core_fused import CASES, JAX_CASES, NUMBA_CASES, make_case

import softmaxce as sc

FD_ATOL, FD_RTOL = 2e-7, 2e-6
# Functions without backend= (the numba row kernels run by size: tests/test_numba_kernels.py)
LIBRARIES = pytest.mark.impls("numpy-core", "torch", "jax", "array-api-strict")


# --- numerical_gradient and gradcheck themselves ----------------------------------------------


def test_numerical_gradient_of_cubic():
    x = np.array([[0.5, -1.0, 2.0], [3.0, 0.0, -0.25]])
    g = sc.numerical_gradient(lambda v: np.sum(v**3), x)
    assert g.shape == x.shape
    assert g.dtype == np.float64
    np.testing.assert_allclose(g, 3 * x**2, rtol=1e-7, atol=1e-8)


def test_numerical_gradient_is_central_and_uses_eps():
    """Central differences of x**3 give 3x**2 + eps**2 exactly (a forward difference would
    add 3 x eps); eps=0.1 makes that visible."""
    x = np.array([1.0, -2.0, 0.5])
    g = sc.numerical_gradient(lambda v: np.sum(v**3), x, eps=0.1)
    np.testing.assert_allclose(g, 3 * x**2 + 0.01, rtol=1e-10)


def test_numerical_gradient_float32_input_gives_float64():
    x = np.array([0.25, 1.5], dtype=np.float32)
    g = sc.numerical_gradient(lambda v: float(np.sum(np.sin(np.asarray(v, np.float64)))), x)
    assert g.dtype == np.float64
    assert g.shape == (2,)
    np.testing.assert_allclose(g, np.cos(x.astype(np.float64)), rtol=1e-6)


def test_numerical_gradient_integer_input():
    x = np.array([1, 2, 3])
    g = sc.numerical_gradient(lambda v: np.sum(np.asarray(v, np.float64) ** 2), x)
    np.testing.assert_allclose(g, [2.0, 4.0, 6.0], rtol=1e-7)


def test_numerical_gradient_does_not_modify_x():
    x = np.array([[0.1, 0.2], [0.3, 0.4]])
    x0 = x.copy()
    sc.numerical_gradient(lambda v: np.sum(np.exp(v)), x)
    np.testing.assert_array_equal(x, x0)
    x.flags.writeable = False
    g = sc.numerical_gradient(lambda v: np.sum(np.exp(v)), x)
    np.testing.assert_allclose(g, np.exp(x), rtol=1e-7)


def test_gradcheck_true_and_false():
    def f(v):
        return np.sum(np.sin(v) * v)

    def good(v):
        return np.cos(v) * v + np.sin(v)

    x = np.array([[0.3, -1.2, 2.0], [0.7, 0.1, -0.4]])
    assert bool(sc.gradcheck(f, good, x))
    assert not bool(sc.gradcheck(f, lambda v: 2 * good(v), x))
    assert not bool(sc.gradcheck(f, lambda v: good(v).T.reshape(v.shape)[::-1], x))
    assert not bool(sc.gradcheck(f, lambda v: good(v) + 1e-4, x))


def test_gradcheck_honours_rtol_and_atol():
    def f(v):
        return np.sum(v**2)

    x = np.array([1.0, 2.0, -3.0])
    off = lambda v: 2 * v * (1 + 1e-4)  # noqa: E731
    assert not bool(sc.gradcheck(f, off, x))  # default rtol=1e-5
    assert bool(sc.gradcheck(f, off, x, rtol=1e-3))
    shifted = lambda v: 2 * v + 1e-3  # noqa: E731
    assert not bool(sc.gradcheck(f, shifted, x))
    assert bool(sc.gradcheck(f, shifted, x, atol=1e-2))


def test_gradcheck_result_is_a_bool():
    r = sc.gradcheck(lambda v: np.sum(v), lambda v: np.ones_like(v), np.array([1.0, 2.0]))
    assert isinstance(r, bool | np.bool_)
    assert r


# --- the fused loss ----------------------------------------------------------------------------


def _scalar_objective(impl, target, opts, dloss):
    reduction = opts["reduction"]

    def f(v):
        loss = impl.softmax_cross_entropy(v, target, **opts)
        loss = np.asarray(loss, dtype=np.float64)
        if reduction == "none":
            return float(np.sum(loss * np.asarray(dloss)))
        return float(loss) * float(dloss)

    return f


@pytest.mark.parametrize("layout", ["2d", "3d_mid"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_gradient_vs_finite_differences(impl, case, reduction, layout):
    impl.need(np.float64)
    # (the gradient against the reference runs on every implementation in test_core_fused)
    others = layout == "2d" and reduction == "mean"
    impl.sample(numba=others and case in NUMBA_CASES, torch=others, array_api_strict=others,
                jax=others and case in JAX_CASES)
    x, target, opts, dloss = make_case(case, layout, np.float64, reduction, "random", seed=3)
    f = _scalar_objective(impl, target, opts, dloss)
    _, g = impl.softmax_cross_entropy_with_grad(x, target, dloss=dloss, **opts)
    g_lib = sc.numerical_gradient(f, x)
    g_own = ref.numgrad(f, x)
    np.testing.assert_allclose(g_own, g_lib, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g, g_own, rtol=FD_RTOL, atol=FD_ATOL)
    assert sc.gradcheck(f, lambda v: impl.softmax_cross_entropy_with_grad(
        v, target, dloss=dloss, **opts)[1], x, rtol=FD_RTOL, atol=FD_ATOL)


@pytest.mark.parametrize("case", list(CASES))
def test_reference_gradient_vs_finite_differences(case):
    """The reference itself: its closed-form gradient matches its own loss."""
    x, target, opts, dloss = make_case(case, "2d", np.float64, "mean", "random", seed=4)

    def f(v):
        return ref.softmax_cross_entropy(v, target, **opts)[0] * dloss

    _, g = ref.softmax_cross_entropy(x, target, dloss=dloss, **opts)
    np.testing.assert_allclose(g, ref.numgrad(f, x), rtol=FD_RTOL, atol=FD_ATOL)


# --- softmax family and cross_entropy on probabilities ----------------------------------------


@LIBRARIES
@pytest.mark.parametrize(("shape", "axis"), [((4, 5), -1), ((3, 4, 2), 1), ((5, 3), 0)])
def test_softmax_vjp_vs_finite_differences(impl, shape, axis):
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    dy = rng.normal(size=shape)

    def f(v):
        return float(np.sum(impl.softmax(v, axis=axis) * dy))

    dx = impl.softmax_vjp(impl.softmax(x, axis=axis), dy, axis=axis)
    np.testing.assert_allclose(dx, ref.numgrad(f, x), rtol=FD_RTOL, atol=FD_ATOL)
    np.testing.assert_allclose(dx, sc.numerical_gradient(f, x), rtol=FD_RTOL, atol=FD_ATOL)


@LIBRARIES
@pytest.mark.parametrize(("shape", "axis"), [((4, 5), -1), ((3, 4, 2), 1), ((5, 3), 0)])
def test_log_softmax_vjp_vs_finite_differences(impl, shape, axis):
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape)
    dy = rng.normal(size=shape)

    def f(v):
        return float(np.sum(impl.log_softmax(v, axis=axis) * dy))

    dx = impl.log_softmax_vjp(impl.log_softmax(x, axis=axis), dy, axis=axis)
    np.testing.assert_allclose(dx, ref.numgrad(f, x), rtol=FD_RTOL, atol=FD_ATOL)
    np.testing.assert_allclose(dx, sc.numerical_gradient(f, x), rtol=FD_RTOL, atol=FD_ATOL)


@LIBRARIES
@pytest.mark.parametrize(("shape", "axis"), [((4, 5), -1), ((3, 4, 2), 1)])
def test_logsumexp_gradient_is_softmax(impl, shape, axis):
    x = np.random.default_rng(2).normal(size=shape) * 2

    def f(v):
        return float(np.sum(impl.logsumexp(v, axis=axis)))

    np.testing.assert_allclose(impl.softmax(x, axis=axis), ref.numgrad(f, x), rtol=FD_RTOL,
                               atol=FD_ATOL)


@LIBRARIES
@pytest.mark.parametrize(("shape", "axis"), [((4, 5), -1), ((3, 4, 2), 1)])
def test_softmax_jacobian_vs_finite_differences(impl, shape, axis):
    x = np.random.default_rng(3).normal(size=shape)
    J = impl.softmax_jacobian(impl.softmax(x, axis=axis), axis=axis)
    C = shape[axis]
    ax = axis % len(shape)
    for j in range(C):
        e = np.zeros(shape)
        idx = [slice(None)] * len(shape)
        idx[ax] = j
        e[tuple(idx)] = 1e-6
        # perturbing class j of every row at once: rows are independent, so this gives
        # d y_i / d x_j for every row simultaneously
        col = (impl.softmax(x + e, axis=axis) - impl.softmax(x - e, axis=axis)) / 2e-6
        np.testing.assert_allclose(J[..., j], col, rtol=1e-6, atol=1e-9)


@LIBRARIES
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_vjp_vs_finite_differences(impl, reduction, soft, weighted):
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(4) * 3, size=5)
    target = rng.dirichlet(np.ones(4), size=5) if soft else np.array([0, -100, 3, 1, 3])
    opts = {"reduction": reduction, "weight": rng.uniform(0.5, 2, 4) if weighted else None}
    dloss = rng.uniform(-2, 2, size=5) if reduction == "none" else 1.7

    def f(v):
        loss = np.asarray(impl.cross_entropy(v, target, **opts), dtype=np.float64)
        return float(np.sum(loss * dloss))

    g = impl.cross_entropy_vjp(p, target, dloss, **opts)
    np.testing.assert_allclose(g, ref.numgrad(f, p), rtol=FD_RTOL, atol=FD_ATOL)
    np.testing.assert_allclose(g, sc.numerical_gradient(f, p), rtol=FD_RTOL, atol=FD_ATOL)
