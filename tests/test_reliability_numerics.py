"""Numerics that were silently wrong (issue 9, items 8, 11, 13, 14, 15), on every backend.

Each test runs on every implementation (the ``impl`` fixture: the core on NumPy, torch, JAX and
array-api-strict, and the numba kernel), in place and not (NumPy) where a gradient is written,
and compares with an mpmath reference computed at 50 digits from the very inputs (exactly
representable in the tested dtype). Tolerances are a few units of the dtype's epsilon (or of its
smallest subnormal, for results below the normal range).
"""

from __future__ import annotations

import importlib.util
import math
import re

import mpmath
import numpy as np
import pytest

import softmaxce as sc
from softmaxce._core import softmax as core_softmax

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
INPLACE = [pytest.param(False, id="copy"), pytest.param(True, id="inplace")]


def eps_of(dtype) -> float:
    return float(np.finfo(dtype).eps)


# ----------------------------------------------------------------------------------------------
# mpmath reference: one row at a time, straight from README.md, "The loss"


def mp_row(x, target, *, weight=None, eps=0.0, z_loss=0.0, softcap=None, where=None):
    """(L, dL/dx, mass) of one row in mpmath; ``target`` an int or a float row."""
    c = len(x)
    w = [mpmath.mpf(1)] * c if weight is None else [mpmath.mpf(float(v)) for v in weight]
    allowed = [True] * c if where is None else [bool(a) for a in where]
    xs = [mpmath.mpf(float(v)) for v in x]
    if softcap is None:
        z, dz = xs, [mpmath.mpf(1)] * c
    else:
        cap = mpmath.mpf(float(softcap))
        z = [cap * mpmath.tanh(v / cap) for v in xs]
        dz = [mpmath.sech(v / cap) ** 2 for v in xs]
    lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v, a in zip(z, allowed, strict=True) if a))
    p = [mpmath.exp(v - lse) if a else mpmath.mpf(0) for v, a in zip(z, allowed, strict=True)]
    if isinstance(target, int | np.integer):
        y = [mpmath.mpf(int(k == target)) for k in range(c)]
    else:
        y = [mpmath.mpf(float(v)) for v in target]
    n_allowed = sum(allowed)
    q = [(1 - mpmath.mpf(eps)) * y[k] + (mpmath.mpf(eps) / n_allowed if allowed[k] else 0)
         for k in range(c)]  # fmt: skip
    big_s = mpmath.fsum(w[k] * q[k] for k in range(c))
    loss = mpmath.fsum(w[k] * q[k] * (lse - z[k]) for k in range(c) if q[k] != 0)
    loss += mpmath.mpf(z_loss) * lse**2
    grad = [
        (big_s * p[k] - w[k] * q[k] + 2 * mpmath.mpf(z_loss) * lse * p[k]) * dz[k]
        if allowed[k]
        else mpmath.mpf(0)
        for k in range(c)
    ]
    return loss, grad, mpmath.fsum(w[k] * y[k] for k in range(c))


def mp_reference(x, target, *, reduction="mean", dloss=1.0, **opts):
    """(loss, gradient) as float64 arrays for 2-D ``x`` (classes last), index targets only
    when ``ignore_index`` is not used."""
    where = opts.pop("where", None)
    with mpmath.workdps(50):
        parts = [
            mp_row(x[i], target[i], where=None if where is None else where[i], **opts)
            for i in range(len(x))
        ]
        losses = [pt[0] for pt in parts]
        total = mpmath.fsum(pt[2] for pt in parts)
        if reduction == "mean":
            loss = mpmath.fsum(losses) / total
            scale = [mpmath.mpf(dloss) / total] * len(x)
        elif reduction == "sum":
            loss = mpmath.fsum(losses)
            scale = [mpmath.mpf(dloss)] * len(x)
        else:
            loss = losses
            scale = [mpmath.mpf(float(d)) for d in np.broadcast_to(dloss, (len(x),))]
        grad = [[float(scale[i] * g) for g in parts[i][1]] for i in range(len(x))]
        value = [float(v) for v in loss] if reduction == "none" else float(loss)
    return np.array(value), np.array(grad)


def run(x, target, impl, inplace, **opts):
    """(loss, gradient) of softmax_cross_entropy_with_grad; the loss-only function must agree."""
    if inplace:
        impl.need("inplace")
    xin = x.copy()
    loss, grad = impl.softmax_cross_entropy_with_grad(xin, target, inplace=inplace, **opts)
    assert (grad is xin) == inplace
    opts.pop("dloss", None)
    loss_only = impl.softmax_cross_entropy(x, target, **opts)
    np.testing.assert_array_equal(loss_only, loss)
    return np.asarray(loss, dtype=np.float64), grad.astype(np.float64)


def assert_close(actual, exact, rtol, atol=0.0):
    np.testing.assert_allclose(actual, exact, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------
# item 8: options beyond the float32 range


@pytest.mark.parametrize(
    ("dtype", "cap"),
    [
        (np.float32, 1e39),  # inf in float32: inf * tanh(x / inf) = inf * 0 = NaN
        (np.float32, 1e-40),  # subnormal: 1 / cap = inf
        (np.float32, 2.0**127),  # 1 / cap subnormal
        (np.float16, 1e39),  # float16 is computed in float32: the same range
        (np.float64, 1e-320),
        (np.float64, 1e308),
    ],
)
def test_softcap_beyond_the_accumulation_range_is_rejected(impl, dtype, cap):
    x = np.zeros((2, 3), dtype=dtype)
    acc = np.promote_types(dtype, np.float32)
    tiny = np.finfo(acc).tiny
    lib = r"(\w+\.)?"  # the dtype as the array library spells it: float32, torch.float32
    match = (
        re.escape(f"softcap must be in [{float(tiny):.7g}, {1 / float(tiny):.7g}] for ")
        + f"{lib}{np.dtype(dtype).name} logits, which are computed in {lib}{acc.name}"
        + f".*got {re.escape(repr(cap))}$"
    )
    with pytest.raises(ValueError, match=match):
        impl.softmax_cross_entropy(x, np.array([0, 1]), softcap=cap)
    with pytest.raises(ValueError, match=match):
        impl.softmax_cross_entropy_with_grad(x, np.array([0, 1]), softcap=cap)


@pytest.mark.parametrize("inplace", INPLACE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("end", ["tiny", "huge"])
def test_softcap_at_the_ends_of_the_range_matches_mpmath(impl, end, dtype, inplace):
    if end == "huge":
        impl.need("subnormals")  # x / softcap is subnormal
    tiny = float(np.finfo(dtype).tiny)
    cap = tiny if end == "tiny" else 1.0 / tiny
    x = np.array([[3.0, -1.5, 0.0, 2.0], [0.0, 0.5, -2.0, 1.0]], dtype=dtype)
    t = np.array([1, 3])
    loss, grad = run(x, t, impl, inplace, softcap=cap)
    ref_loss, ref_grad = mp_reference(x, t, softcap=cap)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert_close(loss, ref_loss, 8 * eps_of(dtype))
    assert_close(grad, ref_grad, 8 * eps_of(dtype))


@pytest.mark.parametrize("inplace", INPLACE)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_huge_z_loss_on_a_row_with_zero_lse_gives_zero(impl, dtype, inplace):
    # lse = log(exp(0) + exp(-inf)) = 0 exactly, so z_loss * lse**2 = 0 and the gradient is 0:
    # 1e39 is inf in float32, and inf * 0 was NaN (core) or dropped only by luck (numba).
    x = np.array([[0.0, -np.inf], [-np.inf, 0.0]], dtype=dtype)
    loss, grad = run(x, np.array([0, 1]), impl, inplace, z_loss=1e39)
    assert loss == 0.0
    np.testing.assert_array_equal(grad, np.zeros((2, 2)))


@pytest.mark.parametrize("inplace", INPLACE)
def test_z_loss_beyond_float32_is_exact_in_float64(impl, inplace):
    # float64 logits: z_loss = 1e300 still gives a finite loss and gradient (float64 math)
    x = np.array([[0.5, -1.0, 0.25], [0.0, -np.inf, -np.inf]])
    t = np.array([0, 0])
    loss, grad = run(x, t, impl, inplace, z_loss=1e300, reduction="sum")
    ref_loss, ref_grad = mp_reference(x, t, z_loss=1e300, reduction="sum")
    assert_close(loss, ref_loss, 8 * eps_of(np.float64))
    assert_close(grad, ref_grad, 8 * eps_of(np.float64))


TINY_WEIGHTS = {
    np.float16: [1e-46, 3e-46, 2e-46],  # below float32's smallest subnormal 1.4e-45
    np.float32: [1e-46, 3e-46, 2e-46],
    np.float64: [1e-320, 3e-320, 2e-320],  # float64 subnormals: 1 / W overflows
}


@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("inplace", INPLACE)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_tiny_class_weights_give_the_weighted_mean(request, impl, dtype, inplace, soft):
    if impl.name == "jax" and dtype == np.float64:
        reason = "XLA on the CPU flushes float64 subnormals (these weights) to zero"
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
    # the mean does not depend on the weights' scale (z_loss included, which is not weighted:
    # the mean divides it by W as well); it was 0 with NaN gradients
    weight = np.array(TINY_WEIGHTS[dtype])
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0], [2.0, 2.0, -3.0]], dtype=dtype)
    t = np.array([0, 1, 2])
    target = np.eye(3, dtype=dtype)[t] if soft else t
    opts = {"weight": weight, "label_smoothing": 0.1}
    z_loss = 1e-52 if dtype != np.float64 else 1e-320  # z_loss / W of order 1
    loss, grad = run(x, target, impl, inplace, z_loss=z_loss, **opts)
    ref_loss, ref_grad = mp_reference(x, t, weight=weight, eps=0.1, z_loss=z_loss)
    tol = (4 if dtype == np.float16 else 8) * eps_of(dtype)
    assert_close(loss, ref_loss, tol)
    assert_close(grad, ref_grad, tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_tiny_class_weights_give_the_weighted_mean_of_cross_entropy_on_probabilities(dtype):
    weight = np.array(TINY_WEIGHTS[dtype])
    p = np.array([[0.25, 0.25, 0.5], [0.125, 0.75, 0.125]], dtype=dtype)
    t = np.array([2, 0])
    loss = sc.cross_entropy(p, t, weight=weight)
    grad = sc.cross_entropy_vjp(p, t, 1.0, weight=weight)
    with mpmath.workdps(50):
        w = [mpmath.mpf(float(weight[k])) for k in t]
        total = mpmath.fsum(w)
        exact = -mpmath.fsum(w[i] * mpmath.log(float(p[i, k])) for i, k in enumerate(t)) / total
        exact_grad = np.zeros((2, 3))
        for i, k in enumerate(t):
            exact_grad[i, k] = float(-w[i] / total / float(p[i, k]))
    tol = (4 if dtype == np.float16 else 8) * eps_of(dtype)
    assert_close(float(loss), float(exact), tol)
    assert_close(grad.astype(np.float64), exact_grad, tol)


@pytest.mark.parametrize("inplace", INPLACE)
@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_tiny_class_weights_with_sum_and_none_stay_tiny(impl, reduction, inplace):
    # The documented choice: "sum" and "none" are proportional to the weights, nothing is
    # rescaled there. Tiny weights give weighted terms below float32's range (rounded to 0),
    # and the unweighted z-loss term is kept exactly; never NaN.
    weight = np.array(TINY_WEIGHTS[np.float32])
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], dtype=np.float32)
    t = np.array([0, 1])
    opts = {"weight": weight, "reduction": reduction, "z_loss": 0.01}
    loss, grad = run(x, t, impl, inplace, **opts)
    mp_opts = {k: v for k, v in opts.items() if k != "reduction"}
    ref_loss, ref_grad = mp_reference(x, t, reduction=reduction, **mp_opts)
    tol = 8 * eps_of(np.float32)
    assert_close(loss, ref_loss, tol)
    assert_close(grad, ref_grad, tol, atol=tol * np.abs(ref_grad).max())


# ----------------------------------------------------------------------------------------------
# item 11: W == 0 with NaN logits


@pytest.mark.parametrize("inplace", INPLACE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "case", ["zero_weight", "all_ignored", "zero_soft_mass", "zero_weight_axis0"]
)
def test_zero_weight_mass_with_nan_logits_gives_zero_loss_and_gradient(
    impl, case, dtype, inplace
):
    # README: W == 0 gives loss 0 and gradient 0, never NaN, whatever the logits
    x = np.array([[np.nan, 0.0, 0.0], [0.0, 1.0, np.inf]], dtype=dtype)
    opts = {}
    if case.startswith("zero_weight"):
        target, opts["weight"] = np.array([0, 0]), np.array([0.0, 1.0, 1.0])
    elif case == "all_ignored":
        target = np.array([-100, -100])
    else:
        target = np.zeros((2, 3), dtype=dtype)
    if case.endswith("axis0"):
        x, opts["axis"] = np.ascontiguousarray(x.T), 0
    loss, grad = run(x, target, impl, inplace, **opts)
    assert loss == 0.0
    np.testing.assert_array_equal(grad, np.zeros(x.shape))


# ----------------------------------------------------------------------------------------------
# item 13: the softcap's chain-rule factor without cancellation


@pytest.mark.parametrize("inplace", INPLACE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("u", [0.25, 4.5, 9.0, 20.0, 40.0, 300.0])
def test_softcap_gradient_has_no_cancellation(impl, u, dtype, inplace):
    # dz/dx = 1 / cosh(x / cap)**2; 1 - tanh**2 gave 100% error once tanh rounded to 1
    # (float32 u = 9: 0; float64 u = 20: 0 instead of 1.2e-17). cap is a power of two, so
    # u = x / cap is exact; the relative sensitivity of sech(u)**2 to u is 2u, hence 2u eps.
    cap = 4.0
    x = np.array([[u * cap, 0.0, -u * cap], [-u * cap, 1.0, u * cap]], dtype=dtype)
    t = np.array([1, 2])
    loss, grad = run(x, t, impl, inplace, softcap=cap, reduction="sum")
    ref_loss, ref_grad = mp_reference(x, t, softcap=cap, reduction="sum")
    eps = eps_of(dtype)
    assert_close(loss, ref_loss, 8 * eps)
    sub = float(np.finfo(dtype).smallest_subnormal)
    assert_close(grad, ref_grad, (8 + 2 * u) * eps, atol=4 * sub)
    if u == 20.0:
        assert grad[0, 0] > 0.0  # p_0 / cosh(20)**2 = 1.7e-17, not 0


# ----------------------------------------------------------------------------------------------
# item 14: confident rows, p_t - 1 formed without cancellation

CONFIDENT_OPTS = {
    "plain": {},
    "weight": {"weight": np.array([3.0, 0.5, 2.0, 1.0])},
    "smooth": {"label_smoothing": 0.1},
    "zloss": {"z_loss": 1e-3},
    "softcap": {"softcap": 64.0},
    "where": {"where": np.array([[True, True, False, True]] * 3)},
}


@pytest.mark.parametrize("target_kind", ["index", "one_hot"])
@pytest.mark.parametrize("inplace", INPLACE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(CONFIDENT_OPTS))
def test_confident_row_gradient_keeps_relative_accuracy(impl, name, dtype, inplace,
                                                         target_kind):  # fmt: skip
    # x = [40, 0, 0] with label 0: p_0 - 1 = -8.5e-18 was computed as fl(p_0) - 1 = 0
    big = 40.0 if dtype == np.float64 else 20.0
    x = np.array(
        [[big, 0.0, 0.0, -1.0], [0.5, big, -2.0, 0.0], [0.0, 1.0, -1.0, 0.5 * big]], dtype=dtype
    )
    t = np.array([0, 1, 3])
    opts = {k: v for k, v in CONFIDENT_OPTS[name].items()}
    mp_opts = {"eps" if k == "label_smoothing" else k: v for k, v in opts.items()}
    target = t if target_kind == "index" else np.eye(4, dtype=dtype)[t]
    loss, grad = run(x, target, impl, inplace, reduction="sum", **opts)
    ref_loss, ref_grad = mp_reference(x, t, reduction="sum", **mp_opts)
    eps = eps_of(dtype)
    # a softcap rounds z (up to |z| ~ big) to an ulp, and p_t - 1 ~ exp(z_c - z_t) inherits
    # that absolute error as a relative one: the condition number is |z_t|
    tol = (16 + (2 * big if name == "softcap" else 0)) * eps
    assert_close(loss, ref_loss, tol)
    # every entry to a few ulps of itself, also the tiny one at the target
    assert_close(grad, ref_grad, tol)


# ----------------------------------------------------------------------------------------------
# item 15: the numba exponential keeps subnormal results


@pytest.fixture(scope="module")
def numba_exp():
    pytest.importorskip("numba")
    import numba

    from softmaxce._numba.elementary import exp32, exp64

    @numba.njit
    def apply32(v, out):
        for i in range(v.size):
            out[i] = exp32(v[i])

    @numba.njit
    def apply64(v, out):
        for i in range(v.size):
            out[i] = exp64(v[i])

    def exp(v):
        out = np.empty_like(v)
        (apply32 if v.dtype == np.float32 else apply64)(v, out)
        return out

    return exp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_exp_keeps_subnormal_results(numba_exp, dtype):
    fi = np.finfo(dtype)
    lo = math.log(float(fi.smallest_subnormal)) - 2.0  # where exp rounds to 0, and beyond
    hi = math.log(float(fi.tiny)) + 2.0  # into the normal range
    rng = np.random.default_rng(5)
    v = np.concatenate([np.linspace(lo, hi, 1501), rng.uniform(lo, 0.0, 500)]).astype(dtype)
    got = numba_exp(v).astype(np.float64)
    with mpmath.workdps(30):
        exact = np.array([float(mpmath.exp(mpmath.mpf(float(a)))) for a in v])
    # error in units of the last place of the dtype at the exact value: the spacing of
    # normal numbers, or the smallest subnormal below the normal range
    ulp = np.maximum(np.spacing(exact.astype(dtype)).astype(np.float64), fi.smallest_subnormal)
    err = np.abs(got - exact) / ulp
    assert err.max() <= 2.0, (v[np.argmax(err)], got[np.argmax(err)], exact[np.argmax(err)])
    assert (got[exact >= 0.75 * float(fi.smallest_subnormal)] > 0).all()  # nothing flushed
    assert (np.abs(got - np.exp(v).astype(np.float64)) <= 2.0 * ulp).all()  # NumPy's exp agrees
    specials = numba_exp(np.array([-np.inf, np.nan, 0.0, -1e4, 1.5 * lo], dtype=dtype))
    np.testing.assert_array_equal(specials, np.array([0.0, np.nan, 1.0, 0.0, 0.0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_keeps_subnormal_probabilities_at_every_size(dtype):
    # a subnormal softmax entry (float32: exp(-100) = 3.7e-44) must not depend on the array's
    # size (small arrays use the core, large ones the numba kernel once loaded)
    d = -100.0 if dtype == np.float32 else -740.0
    row = np.array([0.0, d], dtype=dtype)
    with mpmath.workdps(30):
        exact = float(mpmath.exp(d) / (1 + mpmath.exp(d)))
    sub = float(np.finfo(dtype).smallest_subnormal)
    assert exact > 16 * sub
    for n in (1, 8192):
        x = np.tile(row, (n, 1))
        assert np.abs(sc.softmax(x)[:, 1] - exact).max() <= sub, n
        assert np.abs(core_softmax.softmax(x, 1, None)[:, 1] - exact).max() <= sub, n
        if HAVE_NUMBA:
            from softmaxce import _numba as nk

            assert np.abs(nk.softmax_rows(x, np.empty_like(x))[:, 1] - exact).max() <= sub, n


@pytest.mark.parametrize("inplace", INPLACE)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_gradient_keeps_subnormal_probabilities(impl, dtype, inplace):
    impl.need("subnormals")
    d = -100.0 if dtype == np.float32 else -740.0
    x = np.array([[0.0, d, 1.0], [d, 0.0, -1.0]], dtype=dtype)
    t = np.array([0, 1])
    _, grad = run(x, t, impl, inplace, reduction="sum")
    _, ref_grad = mp_reference(x, t, reduction="sum")
    sub = float(np.finfo(dtype).smallest_subnormal)
    assert grad[0, 1] > 0 and grad[1, 0] > 0
    assert_close(grad, ref_grad, 8 * eps_of(dtype), atol=2 * sub)
