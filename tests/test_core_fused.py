"""The fused loss and its gradient against the float64 reference, over a grid of options.

Every option of the README's "The loss" (axis incl. a middle axis of 3-D/4-D inputs, weight,
ignore_index, every reduction, label_smoothing, z_loss, softcap, where, soft targets with both
soft_target_loss, dloss None / scalar / per position) in float16, float32 and float64.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib

import numpy as np
import pytest
import reference as ref
from reference import TOLERANCES, record_error

import softmaxce as sc

# layout name -> (logits shape, class axis)
LAYOUTS = {
    "2d": ((9, 5), -1),
    "2d_axis0": ((6, 8), 0),
    "3d_mid": ((3, 6, 4), 1),
    "4d_mid": ((2, 3, 5, 2), -2),
    "1d": ((7,), 0),
}

# option case name -> flags understood by make_case
CASES = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore": True},
    "ignore_in_range": {"ignore_in_range": True},
    "ignore_weight": {"ignore": True, "weight": True},
    "smooth": {"smooth": 0.15},
    "smooth_weight": {"smooth": 0.3, "weight": True},
    "z_loss": {"z_loss": 0.05},
    "softcap": {"softcap": 2.5},
    "where_random": {"where": "random"},
    "where_column": {"where": "column"},
    "where_smooth_weight": {"where": "random", "smooth": 0.2, "weight": True},
    "kl_index_smooth": {"kl": True, "smooth": 0.25},
    "soft": {"soft": "dirichlet"},
    "soft_weight": {"soft": "dirichlet", "weight": True},
    "soft_smooth": {"soft": "dirichlet", "smooth": 0.1},
    "soft_kl": {"soft": "dirichlet", "kl": True},
    "soft_kl_smooth_weight": {"soft": "dirichlet", "kl": True, "smooth": 0.2, "weight": True},
    "soft_unnormalized": {"soft": "unnormalized", "weight": True},
    "soft_onehot_kl": {"soft": "onehot", "kl": True},
    "soft_where": {"soft": "dirichlet", "where": "random", "kl": True, "smooth": 0.1},
    "everything_index": {
        "weight": True, "ignore": True, "smooth": 0.1, "z_loss": 0.02, "softcap": 3.0,
        "where": "random", "kl": True,
    },
    "everything_soft": {
        "soft": "dirichlet", "weight": True, "smooth": 0.1, "z_loss": 0.02, "softcap": 3.0,
        "where": "column", "kl": True,
    },
}

REDUCTIONS = ["none", "sum", "mean"]
DTYPES = [np.float16, np.float32, np.float64]


def _batch_shape(shape, axis):
    axis = axis % len(shape)
    return shape[:axis] + shape[axis + 1:]


def make_case(case, layout, dtype, reduction, dloss_kind, seed=0):
    """Returns (x, target, opts, dloss): logits of ``dtype``, target, keyword options."""
    flags = CASES[case]
    shape, axis = LAYOUTS[layout]
    ax = axis % len(shape)
    C = shape[ax]
    batch = _batch_shape(shape, axis)
    key = f"{case}/{layout}/{reduction}/{dloss_kind}/{seed}"
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    x = (rng.normal(size=shape) * 3.0).astype(dtype)
    opts = {"axis": axis, "reduction": reduction}

    # --- where --------------------------------------------------------------------------
    where = None
    if flags.get("where") == "random":
        where = rng.random(shape) < 0.7
    elif flags.get("where") == "column":
        wshape = [1] * len(shape)
        wshape[ax] = C
        col = np.ones(C, dtype=bool)
        col[[1, C - 1]] = False
        where = col.reshape(wshape)  # broadcastable, not full shape
    allowed_rows = None
    if where is not None:
        allowed_rows = np.moveaxis(np.broadcast_to(where, shape), ax, -1).copy()

    # --- target -------------------------------------------------------------------------
    soft = flags.get("soft")
    if soft is None:
        t = rng.integers(0, C, size=batch)
        if allowed_rows is not None:
            for idx in np.ndindex(batch):
                ok = np.flatnonzero(allowed_rows[idx])
                if len(ok) == 0:
                    allowed_rows[idx][0] = True
                    ok = np.array([0])
                t[idx] = rng.choice(ok)
        flat = t.reshape(-1)
        if flags.get("ignore"):
            flat[1::3] = -100
        if flags.get("ignore_in_range"):
            opts["ignore_index"] = 1
            for k in range(flat.size):
                flat[k] = 1 if k % 3 == 1 else (2 if C > 2 else 0)
        target = t
    else:
        if soft == "dirichlet":
            y = rng.dirichlet(np.ones(C), size=batch)
        elif soft == "unnormalized":
            y = rng.uniform(0.0, 1.0, size=(*batch, C))
        else:  # one-hot float with exact zeros
            y = np.eye(C)[rng.integers(0, C, size=batch)]
        if allowed_rows is not None:  # no target mass on excluded classes (else loss = inf)
            for idx in np.ndindex(batch):
                if not allowed_rows[idx].any():
                    allowed_rows[idx][0] = True
                yy = y[idx] * allowed_rows[idx]
                if yy.sum() == 0:
                    yy = allowed_rows[idx] / allowed_rows[idx].sum()
                y[idx] = yy / yy.sum() * (y[idx].sum() if soft == "unnormalized" else 1.0)
        target = np.moveaxis(y, -1, ax).astype(dtype)

    if flags.get("where") == "random":
        # one row with no allowed class at all (when there are several rows)
        if len(batch) and int(np.prod(batch)) > 1:
            first = (0,) * len(batch)
            allowed_rows[first][:] = False
        where = np.moveaxis(allowed_rows, -1, ax)
        opts["where"] = where
    elif where is not None:
        opts["where"] = where

    # --- the other options ----------------------------------------------------------------
    if flags.get("weight"):
        opts["weight"] = rng.uniform(0.25, 2.0, size=C)
    if "smooth" in flags:
        opts["label_smoothing"] = flags["smooth"]
    if "z_loss" in flags:
        opts["z_loss"] = flags["z_loss"]
    if "softcap" in flags:
        opts["softcap"] = flags["softcap"]
    if flags.get("kl"):
        opts["soft_target_loss"] = "kl-divergence"

    dloss = None
    if dloss_kind == "random":
        if reduction == "none":
            dloss = rng.uniform(-2.0, 2.0, size=batch)
        else:
            dloss = float(rng.uniform(-2.0, 2.0))
    return x, target, opts, dloss


def _freeze(*arrays):
    for a in arrays:
        if isinstance(a, np.ndarray):
            a.flags.writeable = False


def check_fused(impl, case, layout, dtype, reduction, dloss_kind):
    """``impl``'s loss and gradient (and loss alone) against the reference, inputs untouched."""
    impl.need(dtype)
    x, target, opts, dloss = make_case(case, layout, dtype, reduction, dloss_kind)
    x0, t0 = x.copy(), np.array(target, copy=True)
    if impl.has("read-only"):
        _freeze(x, target, opts.get("weight"), opts.get("where"))

    loss, dx = impl.softmax_cross_entropy_with_grad(x, target, dloss=dloss, **opts)
    loss_only = impl.softmax_cross_entropy(x, target, **opts)
    ref_loss, ref_dx = ref.softmax_cross_entropy(x, target, dloss=dloss, **opts)

    # inputs untouched
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(target, t0)

    # types and shapes
    batch = _batch_shape(x.shape, opts["axis"])
    dt = np.dtype(dtype)
    if reduction == "none":
        assert np.shape(loss) == batch
        assert np.asarray(loss).dtype == dt
        if batch:
            assert isinstance(loss, np.ndarray)
    else:
        assert isinstance(loss, np.generic), type(loss)
        assert loss.dtype == dt, loss.dtype
        assert np.shape(loss_only) == ()
    assert isinstance(dx, np.ndarray)
    assert dx.shape == x.shape
    assert dx.dtype == dt

    atol, rtol = TOLERANCES[dt]
    where = f"{impl}/{case}/{layout}/{reduction}/{dloss_kind}"
    record_error(dt, "loss", loss, ref_loss, where)
    record_error(dt, "grad", dx, ref_dx, where)
    np.testing.assert_allclose(np.asarray(loss, np.float64), ref_loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(np.asarray(loss_only, np.float64), ref_loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx.astype(np.float64), ref_dx, rtol=rtol, atol=atol)


# numba compiles a kernel per dtype and option set (about 10 s each on a small machine) and JAX
# eager compiles every operation per shape and dtype: by default they run these cases of the
# grids (every case with SOFTMAXCE_TEST_FULL_GRID=1).
NUMBA_CASES = ["everything_index", "everything_soft"]
JAX_CASES = ["plain", "weight", "ignore_in_range", "where_column", "kl_index_smooth",
             "soft_kl_smooth_weight", "everything_index", "everything_soft"]


@pytest.mark.parametrize("dloss_kind", [None, "random"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_fused_2d_vs_reference(impl, case, reduction, dtype, dloss_kind):
    impl.sample(
        numba=case in NUMBA_CASES and dtype == np.float32 and dloss_kind == "random",
        jax=dloss_kind == "random",
    )
    check_fused(impl, case, "2d", dtype, reduction, dloss_kind)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", ["2d_axis0", "3d_mid", "4d_mid", "1d"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_fused_layouts_vs_reference(impl, case, reduction, layout, dtype):
    impl.sample(
        numba=case in NUMBA_CASES and layout == "3d_mid" and reduction == "none",
        jax=case in JAX_CASES and layout in ("3d_mid", "1d") and dtype == np.float64,
    )
    check_fused(impl, case, layout, dtype, reduction, "random")


@pytest.mark.impls("numpy-core")
@pytest.mark.parametrize("case", list(CASES))
def test_default_backend_auto_vs_reference(impl, case):
    check_fused(dataclasses.replace(impl, backend="auto"), case, "2d", np.float32, "mean",
                "random")


# --- dtype handling ------------------------------------------------------------------------


@pytest.mark.parametrize("tdtype", [np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64])
def test_integer_target_dtypes(impl, tdtype):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 4))
    t = np.array([0, 3, 1, 2, 3], dtype=tdtype)
    loss, dx = impl.softmax_cross_entropy_with_grad(x, t, reduction="none")
    rl, rdx = ref.softmax_cross_entropy(x, t.astype(np.int64), reduction="none")
    np.testing.assert_allclose(loss, rl, rtol=1e-12)
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("ldtype", [np.int32, np.int64, np.int8])
def test_integer_logits_promote_to_float64(impl, ldtype):
    x = np.array([[1, 2, 3], [0, -2, 5]], dtype=ldtype)
    t = np.array([2, 0])
    loss, dx = impl.softmax_cross_entropy_with_grad(x, t)
    assert loss.dtype == np.float64
    assert dx.dtype == np.float64
    rl, rdx = ref.softmax_cross_entropy(x, t)
    np.testing.assert_allclose(loss, rl, rtol=1e-13)
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-15)
    none = impl.softmax_cross_entropy(x, t, reduction="none")
    assert none.dtype == np.float64


def test_float16_soft_target_with_float64_logits(impl):
    """A soft target of another float dtype is accepted; the result follows the logits."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 6))
    y = rng.dirichlet(np.ones(6), size=4).astype(np.float16)
    loss, dx = impl.softmax_cross_entropy_with_grad(x, y)
    assert loss.dtype == np.float64 and dx.dtype == np.float64
    rl, rdx = ref.softmax_cross_entropy(x, y)
    np.testing.assert_allclose(loss, rl, rtol=1e-12)
    np.testing.assert_allclose(dx, rdx, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_float16_32_accumulate_in_float32(impl, dtype):
    """A long row of equal logits: the loss is log(C). float16 accumulation of 4096 ones would
    stall at 2048 (log 2048 != log 4096); float32 accumulation gets it right."""
    C = 4096
    x = np.zeros((2, C), dtype=dtype)
    t = np.array([0, C - 1])
    loss = impl.softmax_cross_entropy(x, t)
    assert loss.dtype == np.dtype(dtype)
    atol, rtol = TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(float(loss), np.log(C), rtol=rtol, atol=atol)


# --- dloss forms ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("form", ["float", "np.float32", "np.float64", "0-d array"])
def test_dloss_scalar_forms(impl, reduction, form):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    t = np.array([0, 1, 2, 1])
    d = -1.75
    dloss = {"float": d, "np.float32": np.float32(d), "np.float64": np.float64(d),
             "0-d array": np.array(d)}[form]
    _, g1 = impl.softmax_cross_entropy_with_grad(x, t, reduction=reduction)
    _, gd = impl.softmax_cross_entropy_with_grad(x, t, reduction=reduction, dloss=dloss)
    np.testing.assert_allclose(gd, d * g1, rtol=1e-6, atol=1e-7)
    _, rg = ref.softmax_cross_entropy(x, t, reduction=reduction, dloss=d)
    np.testing.assert_allclose(gd, rg, rtol=2e-5, atol=2e-6)


def test_dloss_none_means_one(impl):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 2, 5))
    t = rng.integers(0, 5, size=(3, 2))
    _, g_none = impl.softmax_cross_entropy_with_grad(x, t, reduction="none")
    _, g_ones = impl.softmax_cross_entropy_with_grad(x, t, reduction="none", dloss=np.ones((3, 2)))
    np.testing.assert_array_equal(g_none, g_ones)
    _, g_mean = impl.softmax_cross_entropy_with_grad(x, t)
    _, g_mean1 = impl.softmax_cross_entropy_with_grad(x, t, dloss=1.0)
    np.testing.assert_array_equal(g_mean, g_mean1)


def test_dloss_zero_gives_zero_gradient(impl):
    x = np.random.default_rng(5).normal(size=(3, 4))
    t = np.array([0, 1, 3])
    _, g = impl.softmax_cross_entropy_with_grad(x, t, reduction="sum", dloss=0.0)
    np.testing.assert_array_equal(g, np.zeros_like(x))


# --- in place --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ["plain", "everything_index", "everything_soft", "soft_kl"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_inplace_writes_into_logits(impl, case, reduction, dtype):
    impl.need("inplace")
    impl.sample(numba=case in NUMBA_CASES and dtype == np.float32)
    x, target, opts, dloss = make_case(case, "2d", dtype, reduction, "random", seed=7)
    x_in = x.copy()
    loss_a, g_a = impl.softmax_cross_entropy_with_grad(x, target, dloss=dloss, **opts)
    loss_b, g_b = impl.softmax_cross_entropy_with_grad(x_in, target, dloss=dloss, inplace=True,
                                                       **opts)
    assert g_b is x_in
    assert g_b.dtype == np.dtype(dtype)
    atol, rtol = TOLERANCES[np.dtype(dtype)]
    # Out of place and in place may run differently vectorised kernel loops (each sums a row
    # in its own order): equal to the dtype's rounding, not bit for bit.
    np.testing.assert_allclose(np.asarray(loss_b, np.float64), np.asarray(loss_a, np.float64),
                               rtol=rtol, atol=atol)
    np.testing.assert_allclose(g_b.astype(np.float64), g_a.astype(np.float64), rtol=rtol,
                               atol=atol)
    _, ref_g = ref.softmax_cross_entropy(x, target, dloss=dloss, **opts)
    np.testing.assert_allclose(x_in.astype(np.float64), ref_g, rtol=rtol, atol=atol)


def test_inplace_on_3d_middle_axis_contiguous(impl):
    impl.need("inplace")
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 5, 3))
    t = rng.integers(0, 5, size=(2, 3))
    _, ref_g = ref.softmax_cross_entropy(x, t, axis=1)
    buf = x.copy()
    _, g = impl.softmax_cross_entropy_with_grad(buf, t, axis=1, inplace=True)
    assert g is buf
    np.testing.assert_allclose(buf, ref_g, rtol=1e-10, atol=1e-14)


# --- behaviour of special rows -----------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignored_rows_have_zero_loss_and_gradient(impl, reduction):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(5, 4))
    t = np.array([1, -100, 2, -100, 0])
    loss, g = impl.softmax_cross_entropy_with_grad(x, t, reduction="none")
    assert loss[1] == 0 and loss[3] == 0
    assert np.all(g[[1, 3]] == 0)
    loss_m = impl.softmax_cross_entropy(x, t)
    kept = impl.softmax_cross_entropy(x[[0, 2, 4]], t[[0, 2, 4]])
    np.testing.assert_allclose(loss_m, kept, rtol=1e-13)


def test_ignore_index_in_range_ignores_that_class(impl):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(6, 4))
    t = np.array([0, 2, 1, 2, 3, 2])
    loss, g = impl.softmax_cross_entropy_with_grad(x, t, ignore_index=2)
    keep = t != 2
    l2, g2 = impl.softmax_cross_entropy_with_grad(x[keep], t[keep])
    np.testing.assert_allclose(loss, l2, rtol=1e-13)
    np.testing.assert_allclose(g[keep], g2, rtol=1e-12, atol=1e-15)
    assert np.all(g[~keep] == 0)


def test_ignore_index_is_not_applied_to_float_targets(impl):
    """ignore_index concerns integer targets only: a soft row is never ignored."""
    x = np.array([[0.5, -1.0, 2.0], [1.0, 0.0, -1.0]])
    y = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    for ii in (0, 2, -100):
        loss = impl.softmax_cross_entropy(x, y, ignore_index=ii, reduction="none")
        rl, _ = ref.softmax_cross_entropy(x, y, reduction="none")
        np.testing.assert_allclose(loss, rl, rtol=1e-13)


@pytest.mark.parametrize("soft", [False, True])
def test_where_row_without_allowed_class_is_like_ignored(impl, soft):
    x = np.array([[0.3, 1.0, -2.0], [2.0, 0.0, 1.0], [0.0, 0.5, 0.25]])
    where = np.array([[True, True, False], [False, False, False], [True, True, True]])
    t = np.array([1, 0, 2])
    if soft:
        t = np.array([[0.3, 0.7, 0.0], [0.5, 0.5, 0.0], [0.1, 0.2, 0.7]])
    loss, g = impl.softmax_cross_entropy_with_grad(x, t, where=where, reduction="none")
    assert loss[1] == 0
    assert np.all(g[1] == 0)
    mean, gm = impl.softmax_cross_entropy_with_grad(x, t, where=where)
    np.testing.assert_allclose(mean, (loss[0] + loss[2]) / 2, rtol=1e-13)
    assert np.all(np.isfinite(gm))
    assert np.all(gm[0, 2] == 0)  # excluded class: gradient 0


def test_masked_out_target_class_gives_inf_loss_finite_gradient(impl):
    x = np.array([[0.3, 1.0, -2.0], [2.0, 0.0, 1.0]])
    where = np.array([[True, True, False], [True, True, True]])
    t = np.array([2, 0])
    loss, g = impl.softmax_cross_entropy_with_grad(x, t, where=where, reduction="none")
    assert loss[0] == np.inf
    assert np.isfinite(loss[1])
    assert np.all(np.isfinite(g))
    _, rg = ref.softmax_cross_entropy(x, t, where=where, reduction="none")
    np.testing.assert_allclose(g, rg, rtol=1e-12, atol=1e-15)


def test_where_smoothing_spreads_over_allowed_classes_only(impl):
    """eps / |A_i| on allowed classes: masking a class that has +1e3 logit changes nothing."""
    x = np.array([[0.2, -0.4, 1.1, 7.0]])
    where = np.array([[True, True, True, False]])
    t = np.array([2])
    eps = 0.3
    loss = impl.softmax_cross_entropy(x, t, where=where, label_smoothing=eps)
    sliced = impl.softmax_cross_entropy(x[:, :3], t, label_smoothing=eps)
    np.testing.assert_allclose(loss, sliced, rtol=1e-13)
    lp = x[0, :3] - np.log(np.sum(np.exp(x[0, :3])))
    expected = -(1 - eps) * lp[2] - eps / 3 * lp.sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_batch(impl, reduction):
    x = np.zeros((0, 4), dtype=np.float32)
    t = np.zeros((0,), dtype=np.int64)
    loss, g = impl.softmax_cross_entropy_with_grad(x, t, reduction=reduction)
    assert loss == 0 and loss.dtype == np.float32
    assert g.shape == (0, 4) and g.dtype == np.float32
    none = impl.softmax_cross_entropy(x, t, reduction="none")
    assert none.shape == (0,)


def test_mean_denominator_uses_target_before_smoothing_and_weights(impl):
    x = np.array([[0.0, 1.0, 2.0], [1.0, -1.0, 0.0], [3.0, 0.0, 0.0]])
    t = np.array([0, 2, -100])
    w = np.array([0.5, 1.0, 4.0])
    eps = 0.2
    none = impl.softmax_cross_entropy(x, t, weight=w, label_smoothing=eps, reduction="none")
    mean = impl.softmax_cross_entropy(x, t, weight=w, label_smoothing=eps)
    np.testing.assert_allclose(mean, (none[0] + none[1]) / (0.5 + 4.0), rtol=1e-13)


def test_mean_with_soft_targets_divides_by_weighted_target_mass(impl):
    x = np.array([[0.0, 1.0, 2.0], [1.0, -1.0, 0.0]])
    y = np.array([[0.2, 0.3, 0.5], [2.0, 0.0, 0.0]])  # the second row sums to 2
    w = np.array([1.5, 1.0, 0.5])
    none = impl.softmax_cross_entropy(x, y, weight=w, reduction="none")
    mean = impl.softmax_cross_entropy(x, y, weight=w)
    W = 1.5 * 0.2 + 0.3 + 0.5 * 0.5 + 1.5 * 2.0
    np.testing.assert_allclose(mean, none.sum() / W, rtol=1e-13)


def test_zero_weight_sum_gives_zero_not_nan(impl):
    """Every target class has weight 0: W = 0 -> loss 0 and gradient 0, even with smoothing."""
    x = np.array([[0.0, 1.0, 2.0], [1.0, -1.0, 0.0]])
    t = np.array([0, 0])
    w = np.array([0.0, 1.0, 1.0])
    loss, g = impl.softmax_cross_entropy_with_grad(x, t, weight=w, label_smoothing=0.1)
    assert loss == 0 and not np.isnan(loss)
    assert np.all(g == 0)


def test_soft_target_gradient_exact_for_unnormalized_rows(impl):
    """README: the gradient is p * sum(q) - q, not p - q."""
    x = np.array([[0.1, 0.7, -0.3]])
    y = np.array([[0.5, 1.0, 1.5]])
    _, g = impl.softmax_cross_entropy_with_grad(x, y, reduction="sum")
    p = np.exp(x - np.log(np.exp(x).sum()))
    np.testing.assert_allclose(g, p * 3.0 - y, rtol=1e-12, atol=1e-15)


def test_nan_and_posinf_logits_give_nan_loss_without_error(impl):
    x = np.array([[0.0, np.nan, 1.0], [0.0, np.inf, 1.0], [0.0, 1.0, 2.0]])
    t = np.array([0, 2, 1])
    none = impl.softmax_cross_entropy(x, t, reduction="none")
    assert np.isnan(none[0]) and np.isnan(none[1]) and np.isfinite(none[2])
    assert np.isnan(impl.softmax_cross_entropy(x, t))
    loss, _ = impl.softmax_cross_entropy_with_grad(x, t, reduction="sum")
    assert np.isnan(loss)


def test_neginf_logit_on_non_target_is_harmless(impl):
    x = np.array([[0.0, -np.inf, 1.0]])
    loss, g = impl.softmax_cross_entropy_with_grad(x, np.array([2]), reduction="sum")
    np.testing.assert_allclose(loss, np.log1p(np.exp(-1.0)), rtol=1e-14)
    assert g[0, 1] == 0
    np.testing.assert_allclose(g[0], [1 / (1 + np.e), 0.0, -1 / (1 + np.e)], rtol=1e-14)


def test_list_inputs_are_accepted():
    loss = sc.softmax_cross_entropy([[1.0, 2.0, 3.0]], [2])
    rl, _ = ref.softmax_cross_entropy(np.array([[1.0, 2.0, 3.0]]), np.array([2]))
    np.testing.assert_allclose(loss, rl, rtol=1e-13)


def test_soft_target_mass_on_masked_class_gives_inf(impl):
    x = np.array([[0.3, 1.0, -2.0], [2.0, 0.0, 1.0]])
    where = np.array([[True, True, False], [True, True, True]])
    y = np.array([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]])
    loss, g = impl.softmax_cross_entropy_with_grad(x, y, where=where, reduction="none")
    assert loss[0] == np.inf
    assert np.isfinite(loss[1])
    assert np.all(np.isfinite(g))
    _, rg = ref.softmax_cross_entropy(x, y, where=where, reduction="none")
    np.testing.assert_allclose(g, rg, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_where_row_mask_broadcast(impl, dtype):
    """where of shape (N, 1): rows switched off entirely behave like ignored rows."""
    rng = np.random.default_rng(22)
    x = rng.normal(size=(5, 4)).astype(dtype)
    t = np.array([0, 1, 2, 3, 0])
    rowmask = np.array([[True], [False], [True], [False], [True]])
    loss, g = impl.softmax_cross_entropy_with_grad(x, t, where=rowmask, label_smoothing=0.1)
    keep = rowmask[:, 0]
    l2, g2 = impl.softmax_cross_entropy_with_grad(x[keep], t[keep], label_smoothing=0.1)
    atol, rtol = TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(float(loss), float(l2), rtol=rtol, atol=atol)
    np.testing.assert_allclose(g[keep].astype(np.float64), g2.astype(np.float64), rtol=rtol,
                               atol=atol)
    assert np.all(g[~keep] == 0)


@pytest.mark.parametrize("soft", [False, True])
def test_auto_backend_on_a_larger_problem(soft):
    """Large enough for "auto" to pick a fused kernel if it wants: still the reference."""
    rng = np.random.default_rng(23)
    N, C = 48, 301
    x = (rng.normal(size=(N, C)) * 4).astype(np.float32)
    if soft:
        target = rng.dirichlet(np.ones(C) * 0.3, size=N).astype(np.float32)
    else:
        target = rng.integers(0, C, size=N)
        target[::7] = -100
    opts = {"weight": rng.uniform(0.5, 2, C), "label_smoothing": 0.05, "z_loss": 1e-3}
    loss, g = sc.softmax_cross_entropy_with_grad(x, target, **opts)
    rl, rg = ref.softmax_cross_entropy(x, target, **opts)
    atol, rtol = TOLERANCES[np.dtype(np.float32)]
    record_error(np.float32, "loss", loss, rl, "auto/large")
    record_error(np.float32, "grad", g, rg, "auto/large")
    np.testing.assert_allclose(float(loss), rl, rtol=rtol, atol=atol)
    np.testing.assert_allclose(g.astype(np.float64), rg, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kl", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_full_smoothing_with_masked_target_is_finite(impl, soft, kl):
    """eps = 1 puts (1 - eps) = 0 on a masked-out target class: q is uniform over the allowed
    classes and the loss is finite (0 * inf terms are 0)."""
    x = np.array([[0.3, 1.0, -2.0, 0.5], [2.0, 0.0, 1.0, -1.0]])
    where = np.array([[True, True, False, True], [True, False, True, True]])
    t = np.array([2, 1])
    target = np.eye(4)[t] if soft else t
    opts = {"where": where, "label_smoothing": 1.0, "reduction": "none"}
    if kl:
        opts["soft_target_loss"] = "kl-divergence"
    loss, g = impl.softmax_cross_entropy_with_grad(x, target, **opts)
    rl, rg = ref.softmax_cross_entropy(x, target, **opts)
    assert np.all(np.isfinite(loss))
    np.testing.assert_allclose(loss, rl, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g, rg, rtol=1e-12, atol=1e-15)


# --- the input's kind and device; autograd and tracing -----------------------------------------


def _public_calls():
    """(name, NumPy arguments) of every public function of arrays."""
    rng = np.random.default_rng(30)
    x = rng.normal(size=(4, 5))
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    t = np.array([0, 4, 2, 1])
    return [
        ("softmax", (x,)), ("log_softmax", (x,)), ("logsumexp", (x,)),
        ("softmax_vjp", (p, x)), ("log_softmax_vjp", (np.log(p), x)),
        ("softmax_jacobian", (p,)), ("cross_entropy", (p, t)),
        ("cross_entropy_vjp", (p, t, np.array(1.0))), ("softmax_cross_entropy", (x, t)),
        ("softmax_cross_entropy_with_grad", (x, p)),
    ]


def _check_kind_and_device(impl, device=None):
    from array_api_compat import device as device_of

    for name, args in _public_calls():
        native = [impl.to(a) for a in args]
        if device is not None:
            native = [impl.on(a, device) for a in native]
        out = getattr(sc, name)(*native)
        for o in out if isinstance(out, tuple) else (out,):
            assert isinstance(o, impl.array_type), (name, type(o))
            assert device_of(o) == device_of(native[0]), (name, device_of(o))


@pytest.mark.impls("torch", "jax", "array-api-strict")
def test_every_public_function_returns_the_input_kind_on_its_device(impl):
    _check_kind_and_device(impl)


@pytest.mark.impls("torch", "array-api-strict")
def test_arrays_on_another_device_stay_there(impl):
    """torch's "meta" device (shapes without data) and array-api-strict's simulated
    "device1": nothing is moved to the CPU, nor read there."""
    _check_kind_and_device(impl, device="meta" if impl.name == "torch" else "device1")


TORCH_CASES = ["plain", "weight", "ignore", "smooth_weight", "z_loss", "softcap", "where_random",
               "kl_index_smooth", "soft_kl_smooth_weight", "soft_where", "everything_index",
               "everything_soft"]


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("case", TORCH_CASES)
def test_torch_loss_is_differentiable_by_autograd_to_second_order(case, reduction):
    """The core on float64 torch tensors: autograd's gradient (gradcheck) and the gradient of
    that gradient (gradgradcheck) agree with finite differences, and autograd's gradient is
    the fused one."""
    torch = pytest.importorskip("torch")
    x, target, opts, dloss = make_case(case, "2d", np.float64, reduction, "random")
    kw = {k: torch.asarray(v) if isinstance(v, np.ndarray) else v for k, v in opts.items()}
    t = torch.asarray(target)
    xt = torch.asarray(x).requires_grad_()

    def f(v):
        return sc.softmax_cross_entropy(v, t, **kw)

    assert torch.autograd.gradcheck(f, (xt,))
    assert torch.autograd.gradgradcheck(f, (xt,))
    up = torch.asarray(np.asarray(dloss, dtype=np.float64))
    (g,) = torch.autograd.grad(f(xt), xt, grad_outputs=up)
    _, fused = sc.softmax_cross_entropy_with_grad(xt.detach(), t, dloss=up, **kw)
    torch.testing.assert_close(g, fused, rtol=1e-12, atol=1e-14)


JAX_TRACE_CASES = ["plain", "ignore", "smooth_weight", "where_random", "everything_index",
                   "everything_soft"]


@pytest.mark.parametrize("case", JAX_TRACE_CASES)
def test_jax_core_traces_under_jit_and_grad(case):
    """The core has no data-dependent Python control flow: jax.jit of the loss, jax.grad and
    jit(grad) give the eager loss and the fused gradient."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    if not jax.config.jax_enable_x64:
        pytest.skip("float64 needs jax_enable_x64")
    x, target, opts, _ = make_case(case, "2d", np.float64, "mean", None)
    arrays = {k: jnp.asarray(v) for k, v in opts.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in opts.items() if k not in arrays}

    def f(v, t, arrays):
        return sc.softmax_cross_entropy(v, t, **arrays, **scalars)

    xj, tj = jnp.asarray(x), jnp.asarray(target)
    loss, fused = sc.softmax_cross_entropy_with_grad(xj, tj, **arrays, **scalars)
    np.testing.assert_allclose(jax.jit(f)(xj, tj, arrays), loss, rtol=1e-13)
    np.testing.assert_allclose(jax.grad(f)(xj, tj, arrays), fused, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(xj, tj, arrays), fused, rtol=1e-12,
                               atol=1e-14)


def test_jax_arrays_run_the_loss_as_one_compiled_computation():
    """Eagerly, JAX compiled each of the core's ~60 operations for every new shape (seconds
    and ~100 MB of executables per shape); the one path now runs as one ``jax.jit``
    computation: a new shape costs a handful of compilations, not dozens."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    compiled = []

    class Count(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Compiling"):
                compiled.append(record.getMessage())

    x = jnp.asarray(np.random.default_rng(5).normal(size=(7, 13)).astype(np.float32))
    t = jnp.asarray(np.arange(7) % 13)
    logger, handler = logging.getLogger("jax"), Count()
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            loss, g = sc.softmax_cross_entropy_with_grad(x, t, label_smoothing=0.1, z_loss=1e-3)
    finally:
        logger.removeHandler(handler)
    assert len(compiled) <= 5, compiled
    ref_loss, ref_g = sc.softmax_cross_entropy_with_grad(
        np.asarray(x), np.asarray(t), label_smoothing=0.1, z_loss=1e-3, backend="numpy"
    )
    tol = 8 * np.finfo(np.float32).eps
    np.testing.assert_allclose(np.asarray(loss), ref_loss, rtol=tol)
    np.testing.assert_allclose(np.asarray(g), ref_g, rtol=tol, atol=tol * np.abs(ref_g).max())


# --- regressions of the core on other array libraries ----------------------------------------


@pytest.mark.impls("torch", "jax", "array-api-strict")
def test_mean_of_unweighted_index_targets_counts_rows_without_summing_bools(impl):
    """The mean's row count was a sum of a bool array, which the Array API does not allow
    (array-api-strict raised TypeError)."""
    x = np.random.default_rng(31).normal(size=(5, 3))
    t = np.array([0, 2, -100, 1, 2])
    loss, g = impl.softmax_cross_entropy_with_grad(x, t)
    ref_loss, ref_g = ref.softmax_cross_entropy(x, t)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13)
    np.testing.assert_allclose(g, ref_g, rtol=1e-12, atol=1e-15)


@pytest.mark.impls("torch", "jax", "array-api-strict")
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_python_float_dloss_is_not_rounded_to_float32(impl, reduction):
    """A Python float dloss became torch's default float32 before scaling float64 gradients."""
    x = np.random.default_rng(32).normal(size=(3, 4))
    t = np.array([1, 0, 3])
    dloss = 1 / 3
    _, g = impl.softmax_cross_entropy_with_grad(x, t, reduction=reduction, dloss=dloss)
    _, ref_g = ref.softmax_cross_entropy(x, t, reduction=reduction, dloss=dloss)
    np.testing.assert_allclose(g, ref_g, rtol=1e-13, atol=1e-16)


@pytest.mark.impls("array-api-strict")
def test_no_numpy_floating_point_warning_leaks_through_array_api_strict(impl):
    """array-api-strict computes with NumPy: log(0) and inf - inf are results here, and the
    public functions silence NumPy's warnings for it as for NumPy (pytest makes them errors)."""
    x = np.array([[0.0, -np.inf, 1.0], [np.inf, 0.0, 1.0], [np.nan, 0.0, 0.0]])
    y = np.array([[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    for target in (np.array([0, 1, 2]), y):
        impl.softmax_cross_entropy_with_grad(x, target, reduction="none")
    impl.log_softmax(x)
    impl.cross_entropy(np.array([[0.0, 1.0]]), np.array([[0.5, 0.5]]))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_core_in_row_blocks_equals_one_block(monkeypatch, case, reduction):
    """The NumPy core runs large problems a block of rows at a time (``_run.CORE_BLOCK``, the
    memory beyond the gradient stays small): blocks of 1 and 2 rows give the one-block result
    for every option (per-row upstream gradients with "none"), in place too."""
    from softmaxce import _run

    x, target, opts, dloss = make_case(case, "3d_mid", np.float32, reduction, "random")

    def call(inplace):
        xx = x.copy()
        return sc.softmax_cross_entropy_with_grad(
            xx, target, dloss=dloss, backend="numpy", inplace=inplace, **opts
        )

    one = call(False)
    tol = 8 * np.finfo(np.float32).eps
    for logits_per_block in (1, 12):  # blocks of 1 row, then of 2 rows (C = 6)
        monkeypatch.setattr(_run, "CORE_BLOCK", logits_per_block)
        for inplace in (False, True):
            loss, grad = call(inplace)
            np.testing.assert_allclose(loss, one[0], rtol=tol, atol=tol)
            np.testing.assert_allclose(grad, one[1], rtol=tol, atol=tol)
