"""softmax, log_softmax, logsumexp, the vjps, the Jacobian and cross_entropy on probabilities,
against the float64 reference (values and gradients), every dtype, several axes, ``where``."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from reference import TOLERANCES, record_error

import softmaxce as sc

# Functions without backend= (the numba row kernels run by size: tests/test_numba_kernels.py)
pytestmark = pytest.mark.impls("numpy-core", "torch", "jax", "array-api-strict")

DTYPES = [np.float16, np.float32, np.float64]
DT_IDS = ["float16", "float32", "float64"]
SHAPES_AXES = [((7, 5), -1), ((7, 5), 0), ((3, 6, 4), 1), ((2, 3, 5, 2), 2), ((2, 3, 5, 2), -4),
               ((6,), 0)]
SA_IDS = [f"{s}-ax{a}" for s, a in SHAPES_AXES]


def _jax_sample(shape, dtype) -> bool:
    """JAX compiles every operation per shape and dtype: every shape in float64, the other
    dtypes on 2-D shapes."""
    return np.dtype(dtype) == np.float64 or len(shape) == 2


def _x(shape, dtype, seed=0, scale=3.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)


def _close(actual, expected, dtype, what="value", where=""):
    dt = np.dtype(dtype)
    atol, rtol = TOLERANCES[dt]
    assert isinstance(actual, np.ndarray | np.generic)
    assert actual.dtype == dt, (actual.dtype, dt)
    record_error(dt, "loss" if what == "value" else "grad", actual, expected, where)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# --- forward functions ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(("shape", "axis"), SHAPES_AXES, ids=SA_IDS)
def test_softmax(impl, shape, axis, dtype):
    impl.sample(jax=_jax_sample(shape, dtype))
    x = _x(shape, dtype)
    x.flags.writeable = False
    y = impl.softmax(x, axis=axis)
    assert y.shape == x.shape
    _close(y, ref.softmax(x, axis=axis), dtype, where=f"softmax{shape}")
    atol, rtol = TOLERANCES[np.dtype(dtype)]
    # each entry is rounded once: the row sum may be off by C half-ulps
    np.testing.assert_allclose(y.astype(np.float64).sum(axis=axis), 1.0,
                               rtol=0, atol=shape[axis] * rtol + 10 * atol)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(("shape", "axis"), SHAPES_AXES, ids=SA_IDS)
def test_log_softmax(impl, shape, axis, dtype):
    impl.sample(jax=_jax_sample(shape, dtype))
    x = _x(shape, dtype, seed=1)
    x.flags.writeable = False
    y = impl.log_softmax(x, axis=axis)
    assert y.shape == x.shape
    _close(y, ref.log_softmax(x, axis=axis), dtype, where=f"log_softmax{shape}")


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(("shape", "axis"), SHAPES_AXES, ids=SA_IDS)
def test_logsumexp(impl, shape, axis, dtype, keepdims):
    impl.sample(jax=_jax_sample(shape, dtype))
    x = _x(shape, dtype, seed=2)
    x.flags.writeable = False
    y = impl.logsumexp(x, axis=axis, keepdims=keepdims)
    expected = ref.logsumexp(x, axis=axis, keepdims=keepdims)
    assert np.shape(y) == expected.shape
    _close(np.asarray(y) if np.ndim(y) else y, expected, dtype, where=f"logsumexp{shape}")


def test_default_axis_is_last(impl):
    x = _x((3, 4, 5), np.float64, seed=3)
    atol, rtol = TOLERANCES[np.dtype(np.float64)]
    for fn in ("softmax", "log_softmax", "logsumexp"):
        expected = getattr(ref, fn)(x, axis=-1)
        np.testing.assert_allclose(getattr(impl, fn)(x), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
def test_integer_input_promotes_to_float64(impl, fn):
    x = np.array([[1, 2, 3], [4, 4, -1]], dtype=np.int32)
    y = getattr(impl, fn)(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, getattr(ref, fn)(x), rtol=1e-14)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
def test_list_input(fn):
    y = getattr(sc, fn)([[0.5, 1.5, -2.0]])
    np.testing.assert_allclose(y, getattr(ref, fn)(np.array([[0.5, 1.5, -2.0]])), rtol=1e-14)


# --- where -----------------------------------------------------------------------------------


WHERE = np.array([[True, False, True, True], [False, False, False, False],
                  [True, True, True, True], [False, True, False, False]])


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_softmax_where(impl, dtype):
    x = _x((4, 4), dtype, seed=4)
    y = impl.softmax(x, where=WHERE)
    _close(y, ref.softmax(x, where=WHERE), dtype)
    assert np.all(y[~WHERE] == 0)
    assert np.all(y[1] == 0)  # no allowed class: all 0
    assert y[3, 1] == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_log_softmax_where(impl, dtype):
    x = _x((4, 4), dtype, seed=5)
    y = impl.log_softmax(x, where=WHERE)
    expected = ref.log_softmax(x, where=WHERE)
    assert np.all(y[~WHERE] == -np.inf)
    assert y[3, 1] == 0
    _close(y[WHERE], expected[WHERE], dtype)


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_logsumexp_where(impl, dtype, keepdims):
    x = _x((4, 4), dtype, seed=6)
    y = impl.logsumexp(x, where=WHERE, keepdims=keepdims)
    expected = ref.logsumexp(x, where=WHERE, keepdims=keepdims)
    assert y.shape == expected.shape
    flat = y.reshape(-1)
    assert flat[1] == -np.inf
    assert flat[3] == x[3, 1]
    fin = np.isfinite(expected)
    _close(y[fin], expected[fin], dtype)


def test_where_broadcasts_and_middle_axis(impl):
    x = _x((2, 5, 3), np.float64, seed=7)
    where = np.array([True, False, True, True, False]).reshape(1, 5, 1)
    y = impl.softmax(x, axis=1, where=where)
    np.testing.assert_allclose(y, ref.softmax(x, axis=1, where=where), rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(y[:, [0, 2, 3], :], ref.softmax(x[:, [0, 2, 3], :], axis=1),
                               rtol=1e-13)
    lse = impl.logsumexp(x, axis=1, where=where)
    np.testing.assert_allclose(lse, ref.logsumexp(x[:, [0, 2, 3], :], axis=1), rtol=1e-13)


# --- vjps and the Jacobian -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(("shape", "axis"), SHAPES_AXES, ids=SA_IDS)
def test_softmax_vjp(impl, shape, axis, dtype):
    impl.sample(jax=_jax_sample(shape, dtype))
    x = _x(shape, np.float64, seed=8)
    y = ref.softmax(x, axis=axis).astype(dtype)
    dy = _x(shape, dtype, seed=9, scale=1.0)
    y.flags.writeable = False
    dy.flags.writeable = False
    dx = impl.softmax_vjp(y, dy, axis=axis)
    assert dx.shape == shape
    _close(dx, ref.softmax_vjp(y, dy, axis=axis), dtype, what="grad", where="softmax_vjp")


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(("shape", "axis"), SHAPES_AXES, ids=SA_IDS)
def test_log_softmax_vjp(impl, shape, axis, dtype):
    impl.sample(jax=_jax_sample(shape, dtype))
    x = _x(shape, np.float64, seed=10)
    logp = ref.log_softmax(x, axis=axis).astype(dtype)
    dy = _x(shape, dtype, seed=11, scale=1.0)
    logp.flags.writeable = False
    dy.flags.writeable = False
    dx = impl.log_softmax_vjp(logp, dy, axis=axis)
    assert dx.shape == shape
    _close(dx, ref.log_softmax_vjp(logp, dy, axis=axis), dtype, what="grad",
           where="log_softmax_vjp")


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(("shape", "axis"), [((3, 4), -1), ((4, 3), 0), ((2, 4, 3), 1),
                                             ((5,), 0), ((2, 2, 3, 2), -2)])
def test_softmax_jacobian(impl, shape, axis, dtype):
    impl.sample(jax=_jax_sample(shape, dtype))
    x = _x(shape, np.float64, seed=12)
    y = ref.softmax(x, axis=axis).astype(dtype)
    J = impl.softmax_jacobian(y, axis=axis)
    C = shape[axis]
    assert J.shape == (*shape, C)
    _close(J, ref.softmax_jacobian(y, axis=axis), dtype, what="grad", where="jacobian")


def test_softmax_jacobian_2x2_by_hand(impl):
    y = np.array([[0.25, 0.75]])
    J = impl.softmax_jacobian(y)
    expected = np.array([[[0.25 * 0.75, -0.25 * 0.75], [-0.25 * 0.75, 0.75 * 0.25]]])
    np.testing.assert_allclose(J, expected, rtol=1e-15)
    # three classes: diag(y) - y y^T
    y3 = np.array([0.2, 0.3, 0.5])
    J3 = impl.softmax_jacobian(y3)
    np.testing.assert_allclose(J3, np.diag(y3) - np.outer(y3, y3), rtol=1e-15)


def test_softmax_jacobian_index_convention_axis0(impl):
    """J[i, b, j] = d y[i, b] / d x[j, b] with the class axis first."""
    x = _x((3, 2), np.float64, seed=13)
    y = ref.softmax(x, axis=0)
    J = impl.softmax_jacobian(y, axis=0)
    assert J.shape == (3, 2, 3)
    for b in range(2):
        expected = np.diag(y[:, b]) - np.outer(y[:, b], y[:, b])
        np.testing.assert_allclose(J[:, b, :], expected, rtol=1e-14)
    # and it agrees with finite differences of softmax
    for b in range(2):
        for j in range(3):
            e = np.zeros_like(x)
            e[j, b] = 1e-6
            col = (ref.softmax(x + e, axis=0) - ref.softmax(x - e, axis=0))[:, b] / 2e-6
            np.testing.assert_allclose(J[:, b, j], col, rtol=1e-6, atol=1e-9)


# --- cross_entropy on probabilities -----------------------------------------------------------


CE_CASES = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore": True},
    "ignore_in_range_weight": {"ignore_in_range": True, "weight": True},
    "soft": {"soft": True},
    "soft_weight": {"soft": True, "weight": True},
}


def _ce_case(case, shape, axis, dtype, reduction, seed=0):
    flags = CE_CASES[case]
    rng = np.random.default_rng(seed)
    ax = axis % len(shape)
    C = shape[ax]
    batch = shape[:ax] + shape[ax + 1:]
    p = np.moveaxis(rng.dirichlet(np.ones(C) * 2.0, size=batch), -1, ax).astype(dtype)
    opts = {"axis": axis, "reduction": reduction}
    if flags.get("soft"):
        target = np.moveaxis(rng.dirichlet(np.ones(C), size=batch), -1, ax).astype(dtype)
    else:
        target = rng.integers(0, C, size=batch)
        flat = target.reshape(-1)
        if flags.get("ignore"):
            flat[::2] = -100
        if flags.get("ignore_in_range"):
            opts["ignore_index"] = 0
            flat[::3] = 0
    if flags.get("weight"):
        opts["weight"] = rng.uniform(0.25, 2.0, size=C)
    if reduction == "none":
        dloss = rng.uniform(-2, 2, size=batch)
    else:
        dloss = float(rng.uniform(-2, 2))
    return p, target, opts, dloss


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize(("shape", "axis"), [((7, 5), -1), ((3, 6, 4), 1), ((5, 4), 0)])
@pytest.mark.parametrize("case", list(CE_CASES))
def test_cross_entropy_and_vjp(impl, case, shape, axis, reduction, dtype):
    impl.sample(jax=_jax_sample(shape, dtype) and reduction != "sum")
    p, target, opts, dloss = _ce_case(case, shape, axis, dtype, reduction)
    p.flags.writeable = False
    target.flags.writeable = False
    loss = impl.cross_entropy(p, target, **opts)
    expected = ref.cross_entropy(p, target, **opts)
    if reduction == "none":
        assert loss.shape == np.shape(expected)
    else:
        assert isinstance(loss, np.generic)
    _close(loss, expected, dtype, where=f"cross_entropy/{case}")
    dp = impl.cross_entropy_vjp(p, target, dloss, **opts)
    assert dp.shape == p.shape
    _close(dp, ref.cross_entropy_vjp(p, target, dloss, **opts), dtype, what="grad",
           where=f"cross_entropy_vjp/{case}")


def test_cross_entropy_all_ignored_mean_is_zero(impl):
    p = np.full((3, 4), 0.25)
    t = np.full(3, -100)
    assert impl.cross_entropy(p, t) == 0
    g = impl.cross_entropy_vjp(p, t, 1.0)
    assert np.all(g == 0)


def test_cross_entropy_by_hand(impl):
    p = np.array([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]])
    t = np.array([1, 2])
    w = np.array([1.0, 2.0, 3.0])
    mean = impl.cross_entropy(p, t, weight=w)
    np.testing.assert_allclose(mean, (-2 * np.log(0.25) - 3 * np.log(0.7)) / 5, rtol=1e-14)
    g = impl.cross_entropy_vjp(p, t, 2.0, weight=w)
    expected = np.zeros((2, 3))
    expected[0, 1] = -2 * 2 / 0.25 / 5
    expected[1, 2] = -2 * 3 / 0.7 / 5
    np.testing.assert_allclose(g, expected, rtol=1e-14)


def test_cross_entropy_zero_probability_on_target_is_inf(impl):
    p = np.array([[0.0, 1.0]])
    assert impl.cross_entropy(p, np.array([0]), reduction="sum") == np.inf
    # q = 0 where p = 0: the term is 0, not nan
    assert impl.cross_entropy(p, np.array([1]), reduction="sum") == 0
