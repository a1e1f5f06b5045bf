"""Extreme rows against mpmath-exact values (mp.dps = 50): logits 1e6 apart, +-1e30, -inf
entries, huge equal rows. Inputs are exactly representable in the tested dtype; the exact value
is computed from those very inputs and compared at a few ulps."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

mpmath.mp.dps = 50

# relative tolerance of a few ulps per dtype (the results are single roundings of short sums)
ULPS = {np.dtype(np.float64): 4e-15, np.dtype(np.float32): 5e-7, np.dtype(np.float16): 2e-3}


def mp_parts(row):
    """(m, log s) with lse = m + log s, s = sum exp(v - m), all in mpmath (the shift by the
    float maximum m is exact there, so no digits are lost for huge logits)."""
    vals = [mpmath.mpf(float(v)) for v in row if float(v) != -math.inf]
    if not vals:
        return -mpmath.inf, mpmath.mpf(0)
    m = max(vals)
    return m, mpmath.log(mpmath.fsum(mpmath.exp(v - m) for v in vals))


def mp_lse(row):
    m, log_s = mp_parts(row)
    return m + log_s


def mp_loss(row, label):
    v = float(row[label])
    if v == -math.inf:
        return math.inf
    m, log_s = mp_parts(row)
    return float((m - mpmath.mpf(v)) + log_s)


def mp_log_softmax(row):
    m, log_s = mp_parts(row)
    return [-math.inf if float(v) == -math.inf else float((mpmath.mpf(float(v)) - m) - log_s)
            for v in row]


def mp_softmax(row):
    m, log_s = mp_parts(row)
    return [0.0 if float(v) == -math.inf else float(mpmath.exp((mpmath.mpf(float(v)) - m)
                                                                - log_s))
            for v in row]


def close(actual, exact, dtype):
    actual = np.asarray(actual, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    same_inf = np.isinf(exact) & (actual == exact)
    rtol = ULPS[np.dtype(dtype)]
    with np.errstate(invalid="ignore"):
        ok = same_inf | (np.abs(actual - exact) <= rtol * np.abs(exact))
    assert np.all(ok), (actual, exact)


# Functions without backend= (the numba row kernels run by size: tests/test_numba_kernels.py)
LIBRARIES = pytest.mark.impls("numpy-core", "torch", "jax", "array-api-strict")

F64_F32 = [np.float64, np.float32]
IDS = ["float64", "float32"]

# (logits row, labels to try) -- exactly representable in float32 and float64
ROWS = {
    "1e6_apart_label_on_big": ([0.0, 0.0, 1e6], [2]),
    "1e6_apart_label_on_small": ([0.0, 1e6], [0]),
    "pm1e30": ([1e30, -1e30, 0.0], [0, 1, 2]),
    "neg_1e30_equal": ([-1e30, -1e30], [0, 1]),
    "neg_inf_entry": ([0.0, -np.inf, 1.0], [0, 1, 2]),
    "big_negative": ([-1e6, -1e6 - 1.0, -1e6 + 0.5], [0, 1, 2]),
    "near_float32_max": ([3e38, 3e38, 1e38], [0, 2]),
    "tiny_difference": ([2.0**-26, 0.0], [0, 1]),
}


@pytest.mark.parametrize("dtype", F64_F32, ids=IDS)
@pytest.mark.parametrize("name", list(ROWS))
def test_loss_on_extreme_rows(impl, name, dtype):
    row, labels = ROWS[name]
    x = np.array([row] * len(labels), dtype=dtype)
    t = np.array(labels)
    loss = impl.softmax_cross_entropy(x, t, reduction="none")
    assert loss.dtype == np.dtype(dtype)
    close(loss, [mp_loss(x[0], k) for k in labels], dtype)


@LIBRARIES
@pytest.mark.parametrize("dtype", F64_F32, ids=IDS)
@pytest.mark.parametrize("name", list(ROWS))
def test_softmax_family_on_extreme_rows(impl, name, dtype):
    row, _ = ROWS[name]
    x = np.array([row], dtype=dtype)
    close(impl.softmax(x)[0], mp_softmax(x[0]), dtype)
    lsm = impl.log_softmax(x)[0]
    close(lsm, mp_log_softmax(x[0]), dtype)
    close(impl.logsumexp(x)[0], float(mp_lse(x[0])), dtype)


@pytest.mark.parametrize("dtype", F64_F32, ids=IDS)
def test_1e6_label_on_the_max_is_exactly_zero(impl, dtype):
    x = np.array([[0.0, 0.0, 1e6]], dtype=dtype)
    loss, g = impl.softmax_cross_entropy_with_grad(x, np.array([2]))
    assert loss == 0
    assert np.all(g == 0)


@pytest.mark.parametrize("dtype", F64_F32, ids=IDS)
def test_1e6_apart_gradient(impl, dtype):
    x = np.array([[0.0, 1e6], [1e6, 0.0]], dtype=dtype)
    loss, g = impl.softmax_cross_entropy_with_grad(x, np.array([0, 0]), reduction="none")
    np.testing.assert_array_equal(loss, [1e6, 0.0])
    np.testing.assert_array_equal(g, [[-1.0, 1.0], [0.0, 0.0]])


@pytest.mark.parametrize("dtype", F64_F32, ids=IDS)
def test_pm1e30_gradients(impl, dtype):
    x = np.array([[1e30, -1e30, 0.0]] * 3, dtype=dtype)
    loss, g = impl.softmax_cross_entropy_with_grad(x, np.array([0, 1, 2]), reduction="none")
    np.testing.assert_array_equal(loss, np.array([0.0, 2e30, 1e30], dtype=dtype))
    np.testing.assert_array_equal(g, [[0, 0, 0], [1, -1, 0], [1, 0, -1]])


@pytest.mark.parametrize("dtype", F64_F32, ids=IDS)
def test_neg_inf_logit_gradients(impl, dtype):
    """A -inf logit has probability 0: loss +inf on it, finite gradient everywhere."""
    x = np.array([[0.0, -np.inf, 1.0]] * 3, dtype=dtype)
    loss, g = impl.softmax_cross_entropy_with_grad(x, np.array([0, 1, 2]), reduction="none")
    assert loss[1] == np.inf
    p = np.array(mp_softmax(x[0]))
    expected = np.array([p - [1, 0, 0], p - [0, 1, 0], p - [0, 0, 1]])
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, expected, rtol=ULPS[np.dtype(dtype)], atol=0)


@LIBRARIES
def test_float16_extremes(impl):
    x = np.array([[6e4, -6e4, 0.0], [0.0, 0.0, 6e4]], dtype=np.float16)
    loss, g = impl.softmax_cross_entropy_with_grad(x, np.array([2, 2]), reduction="none")
    assert loss.dtype == np.float16 and g.dtype == np.float16
    np.testing.assert_array_equal(loss, np.array([6e4, 0.0], dtype=np.float16))
    np.testing.assert_array_equal(g, [[1, 0, -1], [0, 0, 0]])
    np.testing.assert_array_equal(impl.softmax(x), [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(impl.logsumexp(x), np.array([6e4, 6e4], dtype=np.float16))


@LIBRARIES
def test_float16_neg_inf_entry(impl):
    x = np.array([[0.0, -np.inf, 1.0]], dtype=np.float16)
    loss = impl.softmax_cross_entropy(x, np.array([2]))
    close(loss, mp_loss(x[0], 2), np.float16)
    close(impl.softmax(x)[0], mp_softmax(x[0]), np.float16)


@LIBRARIES
@pytest.mark.parametrize("dtype", F64_F32, ids=IDS)
def test_logsumexp_special_rows(impl, dtype):
    x = np.array([[1e30, 1e30], [-1e30, -1e30], [-np.inf, -np.inf], [-np.inf, 0.0]],
                 dtype=dtype)
    lse = impl.logsumexp(x)
    assert lse[2] == -np.inf
    assert lse[3] == 0
    close(lse[[0, 1]], [float(mp_lse(x[0])), float(mp_lse(x[1]))], dtype)
    sm = impl.softmax(x[[0, 1, 3]])
    np.testing.assert_array_equal(sm, [[0.5, 0.5], [0.5, 0.5], [0.0, 1.0]])


@pytest.mark.parametrize("dtype", F64_F32, ids=IDS)
def test_many_equal_logits(impl, dtype):
    C = 100_000
    x = np.full((1, C), 7.0, dtype=dtype)
    loss = impl.softmax_cross_entropy(x, np.array([123]))
    close(loss, math.log(C), dtype)


@pytest.mark.parametrize("dtype", F64_F32, ids=IDS)
def test_options_on_1e6_row(impl, dtype):
    x = np.array([[0.0, 1e6]], dtype=dtype)
    t = np.array([1])
    rt = ULPS[np.dtype(dtype)]
    # smoothing: (eps / C) * (lse - z_0) = 0.05 * 1e6
    ls = impl.softmax_cross_entropy(x, t, label_smoothing=0.1)
    np.testing.assert_allclose(float(ls), 5e4, rtol=rt)
    # z_loss: z_loss * lse**2
    zl = impl.softmax_cross_entropy(x, t, z_loss=1e-4)
    np.testing.assert_allclose(float(zl), 1e8, rtol=rt)
    # soft target (0.5, 0.5): 0.5 * 1e6, and KL adds sum q log q = -log 2
    y = np.array([[0.5, 0.5]], dtype=dtype)
    np.testing.assert_allclose(float(impl.softmax_cross_entropy(x, y)), 5e5, rtol=rt)
    kl = impl.softmax_cross_entropy(x, y, soft_target_loss="kl-divergence")
    exact = float(mpmath.mpf(5e5) - mpmath.log(2))
    np.testing.assert_allclose(float(kl), exact, rtol=rt)


def test_softcap_on_huge_logit(impl):
    """softcap=30 caps 1e6 to 30 (tanh saturates): loss log(1 + e^30) - 0, and the capped
    logit has zero derivative (1 - tanh^2 = 0)."""
    x = np.array([[1e6, 0.0]])
    loss, g = impl.softmax_cross_entropy_with_grad(x, np.array([1]), softcap=30.0)
    exact = mpmath.log(1 + mpmath.exp(30))
    np.testing.assert_allclose(loss, float(exact), rtol=4e-15)
    assert g[0, 0] == 0
    np.testing.assert_allclose(g[0, 1], float(-1 / (1 + mpmath.exp(-30))), rtol=4e-15)


def test_soft_target_zero_mass_on_neg_inf_class(impl):
    """0 * log 0 = 0: a -inf logit carrying no target mass leaves the loss finite."""
    x = np.array([[0.0, -np.inf, 1.0]])
    y = np.array([[0.5, 0.0, 0.5]])
    exact = float(mp_lse(x[0]) - mpmath.mpf(0.5))
    loss = impl.softmax_cross_entropy(x, y)
    close(loss, exact, np.float64)
    kl = impl.softmax_cross_entropy(x, y, soft_target_loss="kl-divergence")
    close(kl, float(mpmath.mpf(exact) + mpmath.log(0.5)), np.float64)
    _, g = impl.softmax_cross_entropy_with_grad(x, y, soft_target_loss="kl-divergence")
    assert np.all(np.isfinite(g))
    assert g[0, 1] == 0


def test_tiny_loss_absolute_accuracy(impl):
    """p_target ~ 1 - 2e-22: the loss is ~2e-22; computed as log(s) it may round to 0. Either
    way the absolute error must be below float64 resolution of 1."""
    x = np.array([[0.0, -50.0]])
    loss = impl.softmax_cross_entropy(x, np.array([0]))
    exact = float(mpmath.log1p(mpmath.exp(-50)))
    assert abs(float(loss) - exact) < 1e-20
