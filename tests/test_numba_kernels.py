"""The numba kernels (``softmaxce._numba``): the CPU twin of the core's row contract.

Every case runs three implementations side by side: the kernel, the core
(``softmaxce._core.rows``, the reference written once) and a plain float64 reference written
here from docs/internals.md with per-row loops (it shares no code with either). Values AND
gradients are compared, for every option and both target kinds, float16/32/64, in place and
out of place, odd widths, ignored rows, ``-inf``/NaN logits; and the block contract:
``row_stats`` of uneven blocks merged with the core's ``merge`` in shuffled orders, and
``row_grad`` of each block from the merged statistics, give the one-block result.

Tolerances come from the dtype (a few units of the accumulation dtype's rounding); each
implementation sums a row in its own order and vector width. Each (dtype, options, layout)
is a kernel variant that numba compiles once (then caches on disk), so the cases below reuse
a small set of variants and vary the data.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

pytest.importorskip("numba")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softmaxce import _numba as nk
from softmaxce._core import rows as core
from softmaxce._numba import caching, threads
from softmaxce._numba.elementary import exp32
from softmaxce._options import LossOptions

IGNORE = -100
EPS32 = float(np.finfo(np.float32).eps)
try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # (the bfloat16 cases skip)
    BF16 = None
BF16_EPS = 2.0**-7  # bfloat16: 8 significand bits
needs_bf16 = pytest.mark.skipif(BF16 is None, reason="ml_dtypes is not installed")


def tol(dtype) -> tuple[float, float]:
    """(loss tolerance, gradient tolerance), relative and absolute alike: a few units of the
    accumulation dtype's rounding (float16 logits accumulate in float32; their gradient is
    rounded to float16 once: 2 of its ulps)."""
    if np.dtype(dtype) == np.float64:
        return 1e-12, 1e-12
    if np.dtype(dtype) == np.float16:
        return 8 * EPS32, 2 * float(np.finfo(np.float16).eps)
    if BF16 is not None and np.dtype(dtype) == BF16:
        return 8 * EPS32, 2 * BF16_EPS
    return 8 * EPS32, 8 * EPS32


# ----------------------------------------------------------------------------------------------
# the float64 reference, one row at a time


def reference(x, target, opts, *, weight=None, where=None, row_scale=None):
    """(loss (N,), gradient (N, C) or None) in float64, straight from the contract."""
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape
    eps, cap = opts.label_smoothing, opts.softcap
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    loss, grad = np.zeros(n), np.zeros((n, c))
    for i in range(n):
        allowed = np.ones(c, dtype=bool) if where is None else np.asarray(where[i], dtype=bool)
        if (target.ndim == 1 and target[i] == opts.ignore_index) or not allowed.any():
            continue
        z = x[i] if cap is None else cap * np.tanh(x[i] / cap)
        zm = np.where(allowed, z, -np.inf)
        m = math.nan if np.isnan(zm[allowed]).any() else float(np.max(zm))
        m = 0.0 if m == -math.inf else m
        with np.errstate(all="ignore"):
            d = zm - m
            e = np.where(allowed, np.exp(d), 0.0)
            s = float(np.sum(e))
            log_s = math.log(s) if s > 0 else (-math.inf if s == 0 else math.nan)
            lse, p = m + log_s, e / s
            y = np.eye(c)[int(target[i])] if target.ndim == 1 else target[i].astype(np.float64)
            q = (1.0 - eps) * y + np.where(allowed, eps / allowed.sum(), 0.0)
            wq = w * q
            big_s = float(np.sum(wq))
            li = big_s * log_s - float(np.sum(np.where(wq == 0, 0.0, wq * d)))
            li += opts.z_loss * lse * lse
            if opts.kl:
                li += float(np.sum(np.where(wq == 0, 0.0, wq * np.log(np.where(q > 0, q, 1)))))
            loss[i] = li
            if row_scale is not None:
                g = big_s * p - wq + 2.0 * opts.z_loss * lse * p
                if cap is not None:
                    g = g * (1.0 - (z / cap) ** 2)
                grad[i] = np.where(allowed, g * row_scale[i], 0.0)
    return loss, (grad if row_scale is not None else None)


# ----------------------------------------------------------------------------------------------
# inputs


def make(n, c, dtype, *, soft=False, seed=0, scale=3.0):
    """Logits and a target: for indices an ignored row in the middle; for probability targets
    rows that sum to 1."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * scale).astype(dtype)
    if soft:
        y = rng.random((n, c))
        return x, (y / y.sum(axis=1, keepdims=True)).astype(dtype)
    t = rng.integers(0, c, n).astype(np.int64)
    if n > 2:
        t[n // 2] = IGNORE
    return x, t


OPTION_SETS = {
    "plain": {},
    "smooth": {"label_smoothing": 0.2},
    "weight": {"weight": True},
    "weight+smooth": {"weight": True, "label_smoothing": 0.1},
    "zloss": {"z_loss": 1e-2},
    "softcap": {"softcap": 4.0},
    "where": {"where": True},
    "where+smooth+weight": {"where": True, "label_smoothing": 0.3, "weight": True},
    "kl": {"kl": True, "label_smoothing": 0.1},
    "all": {
        "weight": True,
        "label_smoothing": 0.1,
        "z_loss": 1e-3,
        "softcap": 6.0,
        "where": True,
        "kl": True,
    },
}


def options(name, x, target, seed=1):
    """``(opts, arrays, target)`` of an option set: the LossOptions, the weight and where
    arrays, and the target (a probability target's mass moved off masked classes)."""
    spec = dict(OPTION_SETS[name])
    n, c = x.shape
    rng = np.random.default_rng(seed)
    arrays = {}
    if spec.pop("weight", False):
        arrays["weight"] = rng.uniform(0.5, 2.0, c)
    if spec.pop("where", False):
        mask = rng.random((n, c)) > 0.3
        mask[0] = True  # every class allowed
        if n > 1:
            mask[1] = False  # no class allowed: loss 0, gradient 0
        arrays["where"] = mask
        if target.ndim == 2:
            target = np.where(mask, target, 0).astype(target.dtype)
    return LossOptions(**spec), arrays, target


def core_rows(x, target, opts, arrays, row_scale):
    """The core's one-block rows (loss float64, gradient or None)."""
    ctx = core.row_context(x, target, x.shape[1], opts, arrays.get("where"))
    with np.errstate(all="ignore"):
        loss, g = core.fused_rows(x, target, opts, ctx, row_scale=row_scale, **arrays)
    return np.asarray(loss, dtype=np.float64), g


def kernel_rows(x, target, opts, arrays, row_scale, *, inplace=False):
    """The kernel's rows, checking that it leaves what it should untouched."""
    xin = x.copy()
    if row_scale is None:
        loss = nk.fused_rows(xin, target, opts, **arrays)
        np.testing.assert_array_equal(xin, x)  # loss only: the logits are untouched
        return loss, None
    out = xin if inplace else np.full_like(x, 7.0)
    loss = nk.fused_rows(xin, target, opts, row_scale=row_scale, out=out, **arrays)
    if not inplace:
        np.testing.assert_array_equal(xin, x)
    return loss, out


def close(actual, expected, t, what):
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), expected, rtol=t, atol=t, err_msg=what
    )


def check(x, target, name, *, inplace=False, with_grad=True, row_scale=None):
    """The kernel against the core and the float64 reference; returns its (loss, grad)."""
    opts, arrays, target = options(name, x, target)
    n = x.shape[0]
    rs = (np.linspace(0.5, 1.5, n) if row_scale is None else row_scale) if with_grad else None
    loss, grad = kernel_rows(x, target, opts, arrays, rs, inplace=inplace)
    assert loss.dtype == np.float64 and loss.shape == (n,)
    ref_loss, ref_grad = reference(x, target, opts, row_scale=rs, **arrays)
    core_loss, core_grad = core_rows(x, target, opts, arrays, rs)
    t_loss, t_grad = tol(x.dtype)
    close(loss, ref_loss, t_loss, "loss vs the float64 reference")
    close(loss, core_loss, 2 * t_loss, "loss vs the core")
    if with_grad:
        assert grad.dtype == x.dtype
        close(grad, ref_grad, t_grad, "gradient vs the float64 reference")
        close(grad, core_grad, 2 * t_grad, "gradient vs the core")
    return loss, grad


# ----------------------------------------------------------------------------------------------
# fused_rows: the option grid, both target kinds, three dtypes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_twin_matches_core_and_reference(dtype, soft, name):
    x, target = make(7, 423, dtype, soft=soft, seed=3)
    x[2, 5] = -np.inf  # a class of probability 0 (no target mass there)
    if soft:
        target[2, 5] = 0
    elif target[2] == 5:
        target[2] = 6
    check(x, target, name)


@pytest.mark.parametrize("c", [1, 4097])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("name", ["plain", "all"])
def test_odd_widths(c, soft, name):
    # one class; and a width that is no multiple of a vector or of the prefetch block
    x, target = make(5, c, np.float32, soft=soft, seed=c)
    check(x, target, name)


@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("name", ["plain", "smooth", "where+smooth+weight", "all"])
def test_in_place_equals_out_of_place(soft, name):
    x, target = make(9, 300, np.float32, soft=soft, seed=5)
    loss_ip, grad_ip = check(x, target, name, inplace=True)
    loss_oop, grad_oop = check(x, target, name)
    # one row view read and written, or two arrays: LLVM may vectorise them differently
    np.testing.assert_allclose(loss_ip, loss_oop, rtol=8 * EPS32, atol=8 * EPS32)
    np.testing.assert_allclose(grad_ip, grad_oop, rtol=8 * EPS32, atol=8 * EPS32)


@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("name", ["plain", "weight+smooth", "softcap", "where", "kl"])
def test_loss_only_equals_the_loss_with_gradient(soft, name):
    x, target = make(6, 64, np.float32, soft=soft, seed=7)
    with_grad, _ = check(x, target, name)
    without, _ = check(x, target, name, with_grad=False)
    np.testing.assert_allclose(with_grad, without, rtol=8 * EPS32, atol=8 * EPS32)


@pytest.mark.parametrize("inplace", [False, True], ids=["oop", "inplace"])
@pytest.mark.parametrize(
    ("soft", "name"),
    [(False, "plain"), (False, "weight+smooth"), (False, "softcap"), (False, "where"),
     (True, "plain"), (True, "all")],
)  # fmt: skip
def test_float16_through_its_bits_rounded_once(inplace, soft, name):
    x, target = make(5, 100, np.float16, soft=soft, seed=11, scale=2.0)
    check(x, target, name, inplace=inplace)


def test_float16_logits_with_a_float32_gradient():
    # (what a caller that scales the gradient again later asks for: it is rounded once, to
    # float32, from the float32 accumulation)
    x, t = make(5, 100, np.float16, seed=11, scale=2.0)
    opts, arrays, _ = options("weight+smooth", x, t)
    out = np.empty(x.shape, np.float32)
    loss = nk.fused_rows(x, t, opts, row_scale=np.ones(5), out=out, **arrays)
    ref_loss, ref_grad = reference(x, t, opts, row_scale=np.ones(5), **arrays)
    close(loss, ref_loss, 8 * EPS32, "loss")
    close(out, ref_grad, 8 * EPS32, "float32 gradient")


@needs_bf16
@pytest.mark.parametrize("inplace", [False, True], ids=["oop", "inplace"])
@pytest.mark.parametrize(
    ("soft", "name"),
    [(False, "plain"), (False, "weight+smooth"), (False, "softcap"), (False, "where"),
     (True, "plain"), (True, "all")],
)  # fmt: skip
def test_bfloat16_through_its_bits_rounded_once(inplace, soft, name):
    x, target = make(5, 100, BF16, soft=soft, seed=11, scale=2.0)
    check(x, target, name, inplace=inplace)


@needs_bf16
@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_bfloat16_every_option_set_in_place_equals_out_of_place(name):
    x, target = make(7, 423, BF16, seed=3)
    loss_ip, grad_ip = check(x, target, name, inplace=True)
    loss_oop, grad_oop = check(x, target, name)
    np.testing.assert_allclose(loss_ip, loss_oop, rtol=8 * EPS32, atol=8 * EPS32)
    ulps = np.abs(grad_ip.view(np.int16).astype(int) - grad_oop.view(np.int16).astype(int))
    assert ulps.max() <= 1  # the same float32 values, each rounded once


def bf16_ulps(a, b):
    """The distance of two bfloat16 arrays in units in the last place (same-sign values)."""
    return np.abs(a.view(np.int16).astype(np.int64) - b.view(np.int16).astype(np.int64))


@needs_bf16
@pytest.mark.parametrize("inplace", [False, True], ids=["oop", "inplace"])
def test_bfloat16_gradient_is_the_float32_gradient_rounded_once(inplace):
    # the kernel on bfloat16 accumulates what it would on the same values in float32: its
    # gradient is that float32 gradient rounded to nearest (even) once. Summation orders may
    # move the float32 value by a few of its ulps, so an element may round the other way
    # when it lies within those of a tie: 1 bfloat16 ulp at most, and almost never.
    # Truncating instead of rounding moves about half of the elements by one ulp.
    x, t = make(64, 1000, BF16, seed=21, scale=3.0)
    opts = LossOptions(label_smoothing=0.1)
    rs = np.linspace(0.5, 1.5, 64)
    g32 = np.empty(x.shape, np.float32)
    nk.fused_rows(x.astype(np.float32), t, opts, row_scale=rs, out=g32)
    xin = x.copy()
    out = xin if inplace else np.empty_like(x)
    nk.fused_rows(xin, t, opts, row_scale=rs, out=out)
    ulps = bf16_ulps(out, g32.astype(BF16))
    assert ulps.max() <= 1
    assert np.mean(ulps == 0) > 0.99


def bf16_store(v):
    """float32 values stored through the kernels' bfloat16 store (``st``)."""
    from numba import njit

    from softmaxce._numba.intrinsics import st

    @njit
    def store(v, out):
        for i in range(v.shape[0]):
            out[i] = st(out, v[i])

    out = np.empty(v.shape, np.int16)
    store(v, out)
    return out.view(BF16)


@needs_bf16
def test_bfloat16_store_rounds_to_nearest_even_and_keeps_nan():
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    ties = (np.arange(-50, 50, dtype=np.int64).astype(np.uint32) << 16) | 0x8000  # exact ties
    edges = np.array(
        [np.inf, -np.inf, 0.0, -0.0, np.finfo(np.float32).max, -np.finfo(np.float32).max,
         np.finfo(np.float32).tiny, 1e-45, 1.0 + 2**-8, 1.0 + 3 * 2**-8],
        dtype=np.float32,
    )  # fmt: skip
    v = np.concatenate([bits.view(np.float32), ties.astype(np.uint32).view(np.float32), edges])
    got = bf16_store(v)
    nan = np.isnan(v)
    assert nan.any() and np.isnan(got[nan].astype(np.float32)).all()
    want = v[~nan].astype(BF16)  # ml_dtypes: round to nearest, ties to even
    np.testing.assert_array_equal(got[~nan].view(np.int16), want.view(np.int16))


@needs_bf16
def test_bfloat16_is_told_apart_from_float16_by_its_dtype():
    # the same 16 bits mean different numbers: the kernel must read each as its dtype says
    x = np.array([[1.5, -2.0, 3.25, 0.0]], dtype=np.float32)
    t = np.array([2])
    opts = LossOptions()
    ref, _ = reference(x, t, opts)
    for dt in (np.float16, BF16):
        loss = nk.fused_rows(x.astype(dt), t, opts)
        close(loss, ref, 8 * EPS32, f"{np.dtype(dt)} loss")


@needs_bf16
def test_bfloat16_read_only_logits_and_block_contract():
    x, t = make(6, 300, BF16, seed=9)
    x.flags.writeable = False
    opts = LossOptions(label_smoothing=0.1)
    out = np.empty(x.shape, BF16)
    loss = nk.fused_rows(x, t, opts, row_scale=1.0, out=out)
    ref_loss, ref_grad = reference(x, t, opts, row_scale=np.ones(6))
    close(loss, ref_loss, 8 * EPS32, "loss")
    close(out, ref_grad, 2 * BF16_EPS, "gradient")
    ctx = core.row_context(x, t, 300, opts, None)
    stats = core.merge(nk.row_stats(x[:, :128], t, 0, opts, ctx),
                       nk.row_stats(x[:, 128:], t, 128, opts, ctx))  # fmt: skip
    with np.errstate(all="ignore"):  # (the ignored row: log 0, discarded)
        merged_loss = np.asarray(core.row_loss(stats, opts, ctx), dtype=np.float64)
    close(merged_loss, ref_loss, 8 * EPS32, "loss of merged blocks")
    for lo, hi in ((0, 128), (128, 300)):
        g = nk.row_grad(x[:, lo:hi], t, lo, stats, 1.0, opts, ctx)
        assert g.dtype == BF16
        close(g, ref_grad[:, lo:hi], 2 * BF16_EPS, f"gradient of block [{lo}, {hi})")


def test_a_scalar_row_scale_equals_the_same_scale_per_row():
    x, t = make(8, 50, np.float32, seed=13)
    _, per_row = check(x, t, "weight+smooth", row_scale=np.full(8, 0.25))
    opts, arrays, _ = options("weight+smooth", x, t)
    out = np.empty_like(x)
    nk.fused_rows(x, t, opts, row_scale=0.25, out=out, **arrays)
    np.testing.assert_allclose(out, per_row, rtol=2 * EPS32, atol=2 * EPS32)


def test_ignore_index_inside_the_class_range():
    x, t = make(6, 10, np.float32, seed=2)
    t[:] = [3, 1, 3, 0, 9, 3]
    opts = LossOptions(ignore_index=3)
    out = np.empty_like(x)
    loss = nk.fused_rows(x, t, opts, row_scale=np.ones(6), out=out)
    assert not loss[[0, 2, 5]].any() and not out[[0, 2, 5]].any()
    ref_loss, ref_grad = reference(x, t, opts, row_scale=np.ones(6))
    close(loss, ref_loss, 8 * EPS32, "loss")
    close(out, ref_grad, 8 * EPS32, "gradient")


def test_everything_ignored_and_empty_inputs():
    x = np.ones((4, 5), np.float32)
    loss, grad = check(x, np.full(4, IGNORE), "plain")
    assert not loss.any() and not grad.any()
    empty = np.zeros((0, 5), np.float32)
    assert nk.fused_rows(empty, np.zeros(0, np.int64), LossOptions()).shape == (0,)


def test_an_unvalidated_label_gives_nan_not_a_read_out_of_bounds():
    x, t = make(3, 8, np.float32)
    t[:] = [1, 8, -1]
    out = np.empty_like(x)
    loss = nk.fused_rows(x, t, LossOptions(), row_scale=1.0, out=out)
    assert np.isfinite(loss[0]) and np.isnan(loss[1:]).all() and np.isnan(out[1:]).all()


def test_row_scale_without_out_is_refused():
    x, t = make(3, 8, np.float32)
    with pytest.raises(ValueError, match="row_scale is given but out is None"):
        nk.fused_rows(x, t, LossOptions(), row_scale=1.0)


# ----------------------------------------------------------------------------------------------
# extreme and non-finite logits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e6, 1e30])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_huge_logits(dtype, scale, soft):
    x, target = make(6, 37, dtype, soft=soft, seed=13, scale=scale)
    check(x, target, "plain")
    check(x, target, "smooth")


def test_a_dominant_logit_gives_exactly_zero():
    x = np.array([[0.0, 0.0, 1e6], [-1e30, 0.0, 1e30]], np.float32)
    loss, grad = check(x, np.array([2, 2]), "plain")
    assert not loss.any() and not grad.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_a_confident_row_keeps_its_tiny_loss_and_gradient(dtype, soft):
    # p_t - 1 is never fl(p_t) - 1, log s never log(fl(s)): x = [40, 0, 0] with the target on
    # class 0 gives the loss log1p(2 exp(-40)) and the gradient -2 exp(-40) / s, not 0
    x = np.array([[40.0, 0.0, 0.0]], dtype)
    target = np.array([[1.0, 0.0, 0.0]], dtype) if soft else np.array([0])
    out = np.empty_like(x)
    loss = nk.fused_rows(x, target, LossOptions(), row_scale=1.0, out=out)
    rest = 2.0 * math.exp(-40.0)
    eps = 4 * float(np.finfo(dtype).eps)
    assert abs(loss[0] / math.log1p(rest) - 1.0) <= eps
    assert abs(out[0, 0] / (-rest / (1.0 + rest)) - 1.0) <= eps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_minus_inf_logits(dtype):
    x = np.array(
        [
            [0.0, -np.inf, 1.0, 2.0],  # a class of probability 0
            [-np.inf, -np.inf, -np.inf, -np.inf],  # all -inf: lse = -inf, NaN loss
            [-np.inf, 3.0, -np.inf, 1.0],  # the target on a -inf class: +inf loss
            [5.0, -np.inf, 5.0, -np.inf],  # smoothing mass on -inf classes: +inf
        ],
        dtype,
    )
    t = np.array([2, 0, 0, 0])
    loss, grad = check(x, t, "plain")
    assert np.isfinite(loss[0]) and grad[0, 1] == 0 and loss[2] == np.inf
    loss_s, _ = check(x, t, "smooth")
    assert loss_s[3] == np.inf
    check(x, t, "zloss", inplace=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_nan_and_inf_propagate_and_ignored_rows_stay_zero(dtype, soft):
    x, target = make(5, 40, dtype, soft=soft, seed=17)
    x[0, 5], x[1, 7], x[2, 9], x[3, :] = np.nan, np.inf, -np.inf, np.nan
    if soft:
        target[2, 9] = 0
    else:
        target[3] = IGNORE  # an ignored row stays exactly 0, NaN logits or not
    loss, grad = check(x, target, "plain")
    assert np.isnan(loss[[0, 1]]).all() and np.isnan(grad[[0, 1]]).all()
    assert np.isfinite(loss[[2, 4]]).all()
    if not soft:
        assert loss[3] == 0 and not grad[3].any()
    check(x, target, "plain", inplace=False)


def test_softcap_makes_inf_finite():
    x = np.array([[np.inf, 0.0, -np.inf, 1.0]], np.float32)
    loss, grad = check(x, np.array([1]), "softcap")
    assert np.isfinite(loss).all() and np.isfinite(grad).all()


def test_soft_mass_outside_where_is_inf():
    x, y = make(3, 8, np.float32, soft=True, seed=19)
    where = np.ones((3, 8), bool)
    where[0, 2] = False
    out = np.empty_like(x)
    loss = nk.fused_rows(x, y, LossOptions(), where=where, row_scale=1.0, out=out)
    assert loss[0] == np.inf and out[0, 2] == 0 and np.isfinite(loss[1:]).all()


def test_broadcast_where_and_other_target_dtypes():
    x, y = make(6, 50, np.float32, soft=True, seed=23)
    where = np.broadcast_to(np.arange(50) % 7 != 0, (6, 50))  # a stride-0 view
    y64 = np.where(where, y, 0).astype(np.float64)  # a float64 target for float32 logits
    out = np.empty_like(x)
    loss = nk.fused_rows(x, y64, LossOptions(), where=where, row_scale=1.0, out=out)
    ref_loss, ref_grad = reference(x, y64, LossOptions(), where=where, row_scale=np.ones(6))
    close(loss, ref_loss, 8 * EPS32, "loss")
    close(out, ref_grad, 8 * EPS32, "gradient")
    xi, t = make(6, 50, np.float32, seed=23)
    loss32 = nk.fused_rows(xi, t.astype(np.int32), LossOptions())
    close(loss32, reference(xi, t, LossOptions())[0], 8 * EPS32, "int32 labels")


# ----------------------------------------------------------------------------------------------
# hypothesis: data of every kind, on the variants of the grid


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(1, 9))
    c = draw(st.sampled_from([1, 2, 3, 5, 31, 64, 257, 423]))
    soft = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e6, 1e30]))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c)) * scale
    for _ in range(draw(st.integers(0, 3))):
        x[rng.integers(n), rng.integers(c)] = rng.choice([-np.inf, np.nan, np.inf])
    if soft:
        y = rng.random((n, c)) * (rng.random((n, c)) < 0.5)
        y[:, 0] += 1e-3
        target = (y / y.sum(axis=1, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(0, c, n).astype(np.int64)
        target[rng.random(n) < 0.2] = IGNORE
    name = draw(st.sampled_from(sorted(OPTION_SETS)))
    if "z" in name or name == "all":  # lse**2 of 1e30 overflows float32: (inf, NaN) is
        x = np.clip(x, -1e15, 1e15)  # right, but not the point here
    return x.astype(dtype), target, name


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_hypothesis(case):
    x, target, name = case
    check(x, target, name)


# ----------------------------------------------------------------------------------------------
# blocks of classes: row_stats, the core's merge, row_grad


def uneven_blocks(width, k, rng):
    """``k`` contiguous column ranges of random, unequal widths (some may be empty)."""
    cuts = sorted(rng.integers(0, width + 1, k - 1).tolist())
    bounds = [0, *cuts, width]
    return list(itertools.pairwise(bounds))


def block_args(target, arrays, a, b):
    """The block's slices of the target (probabilities only), weight and where."""
    t = target if target.ndim == 1 else target[:, a:b]
    out = {}
    if "weight" in arrays:
        out["weight"] = arrays["weight"][a:b]
    if "where" in arrays:
        out["where"] = arrays["where"][:, a:b]
    return t, out


def chunked(x, target, opts, arrays, k, rng, row_scale):
    """Loss rows and gradient from ``k`` uneven blocks: statistics merged in a shuffled
    order, the loss from the core's row_loss, the gradient block by block."""
    c = x.shape[1]
    ctx = core.row_context(x, target, c, opts, arrays.get("where"))
    parts = uneven_blocks(c, k, rng)
    stats = []
    for a, b in parts:
        t, kw = block_args(target, arrays, a, b)
        stats.append(nk.row_stats(x[:, a:b], t, a, opts, ctx, **kw))
    random.Random(int(rng.integers(1 << 30))).shuffle(stats)
    merged = stats[0]
    for s in stats[1:]:
        merged = core.merge(merged, s)
    with np.errstate(all="ignore"):
        loss = np.asarray(core.row_loss(merged, opts, ctx), dtype=np.float64)
    grad = np.empty_like(x)
    for a, b in parts:
        t, kw = block_args(target, arrays, a, b)
        grad[:, a:b] = nk.row_grad(x[:, a:b], t, a, merged, row_scale, opts, ctx, **kw)
    return loss, grad


@pytest.mark.parametrize("k", [1, 2, 3, 7])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_blocks_merged_equal_one_block_float32(k, soft, name):
    x, target = make(6, 257, np.float32, soft=soft, seed=31)
    x[3, 4] = -np.inf
    if soft:
        target[3, 4] = 0
    opts, arrays, target = options(name, x, target)
    rs = np.linspace(0.5, 1.5, 6)
    one_loss, one_grad = kernel_rows(x, target, opts, arrays, rs)
    rng = np.random.default_rng(k)
    loss, grad = chunked(x, target, opts, arrays, k, rng, rs)
    # float32 rounding of the row sums (each block sums in its own order)
    np.testing.assert_allclose(loss, one_loss, rtol=16 * EPS32, atol=16 * EPS32)
    np.testing.assert_allclose(grad, one_grad, rtol=16 * EPS32, atol=16 * EPS32)


@pytest.mark.parametrize("k", [2, 7])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("name", ["plain", "all"])
def test_blocks_merged_equal_one_block_float64(k, soft, name):
    x, target = make(5, 123, np.float64, soft=soft, seed=37)
    opts, arrays, target = options(name, x, target)
    one_loss, one_grad = kernel_rows(x, target, opts, arrays, np.ones(5))
    loss, grad = chunked(x, target, opts, arrays, k, np.random.default_rng(k), 1.0)
    np.testing.assert_allclose(loss, one_loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, one_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_block_statistics_match_the_core(soft):
    x, target = make(6, 90, np.float32, soft=soft, seed=41)
    opts, arrays, target = options("all", x, target)
    ctx = core.row_context(x, target, 90, opts, arrays["where"])
    t, kw = block_args(target, arrays, 30, 75)
    mine = nk.row_stats(x[:, 30:75], t, 30, opts, ctx, **kw)
    with np.errstate(all="ignore"):
        ref = core.row_stats(x[:, 30:75], t, 30, opts, ctx, **kw)
    keep = np.asarray(ctx.keep)  # (rows that do not count: the statistics of an empty block)
    for field, a, b in zip(core.RowStats._fields, mine, ref, strict=True):
        np.testing.assert_allclose(a[keep], b[keep], rtol=8 * EPS32, atol=8 * EPS32, err_msg=field)


def test_row_grad_in_place_on_a_block():
    x, t = make(4, 64, np.float32, seed=43)
    opts = LossOptions(label_smoothing=0.1)
    ctx = core.row_context(x, t, 64, opts)
    stats = nk.row_stats(x, t, 0, opts, ctx)
    want = nk.row_grad(x, t, 0, stats, 1.0, opts, ctx)
    block = x.copy()
    assert nk.row_grad(block, t, 0, stats, 1.0, opts, ctx, out=block) is block
    np.testing.assert_allclose(block, want, rtol=2 * EPS32, atol=2 * EPS32)


# ----------------------------------------------------------------------------------------------
# supports()


def test_supports():
    x = np.zeros((4, 6), np.float32)
    t = np.zeros(4, np.int64)
    assert nk.supports(x, t)
    assert nk.supports(x, t, out=x, row_scale=1.0)
    assert nk.supports(x, np.zeros((4, 6), np.float16), where=np.ones((4, 6), bool))
    assert nk.supports(x.astype(np.float16), t, out=np.empty((4, 6), np.float32))
    if BF16 is not None:
        assert nk.supports(x.astype(BF16), t, out=np.empty((4, 6), BF16), row_scale=1.0)
        assert nk.supports(x, np.zeros((4, 6), BF16))
        assert not nk.supports(x.astype(BF16)[:, ::2], t)
    assert nk.supports(x, t, row_scale=np.ones(4))
    assert not nk.supports(x[:, ::2], t)  # not C-contiguous
    assert not nk.supports(x.T, np.zeros(6, np.int64))
    assert not nk.supports(x.astype(np.int32), t)
    assert not nk.supports(x.astype(np.complex64), t)
    assert not nk.supports(x, t.astype(np.float32))  # 1-D float target
    assert not nk.supports(x, np.zeros((4, 6), np.int64))
    assert not nk.supports(x, t, where=np.ones((4, 6), np.int8))
    assert not nk.supports(x, t, out=np.empty((4, 6), np.int32))
    assert not nk.supports(x, t, out=x[::-1])  # overlaps x without being x
    assert not nk.supports(x, t, weight=np.ones(5))
    assert not nk.supports(x, t, row_scale=np.ones(3))
    assert not nk.supports(x[None], t)


# ----------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp rows


def _ref_rows(x):
    """(softmax, log_softmax, logsumexp) per row in float64."""
    x = x.astype(np.float64)
    out, logp, lse = np.empty_like(x), np.empty_like(x), np.empty(x.shape[0])
    for i, row in enumerate(x):
        if np.isnan(row).any() or np.isposinf(row).any():
            out[i] = logp[i] = lse[i] = np.nan
            continue
        m = row.max()
        m = 0.0 if m == -np.inf else m
        with np.errstate(all="ignore"):
            e = np.exp(row - m)
            ties = np.sum(row - m == 0)
            rest = np.sum(np.where(row - m == 0, 0.0, e))
            log_s = np.log1p(rest) if ties == 1 else np.log(ties + rest)
            lse[i], out[i], logp[i] = m + log_s, e / e.sum(), (row - m) - log_s
    return out, logp, lse


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("inplace", [False, True], ids=["oop", "inplace"])
def test_softmax_rows(dtype, inplace):
    rng = np.random.default_rng(31)
    x = (rng.standard_normal((9, 423)) * 20).astype(dtype)
    x[1, 4], x[2], x[3, 0], x[4, 2] = -np.inf, -np.inf, np.nan, np.inf
    x[5] *= 1e6
    ref_p, ref_logp, ref_lse = _ref_rows(x)
    t = 8 * float(np.finfo(dtype).eps)
    xin = x.copy()
    out = xin if inplace else np.empty_like(x)
    assert nk.softmax_rows(xin, out) is out
    np.testing.assert_allclose(out, ref_p, rtol=t, atol=t)
    xin = x.copy()
    out = xin if inplace else np.empty_like(x)
    nk.log_softmax_rows(xin, out)
    # relative accuracy also near 0 (the row maximum): (x - m) - log s, in that order
    np.testing.assert_allclose(out, ref_logp, rtol=t, atol=t * 1e-3)
    np.testing.assert_allclose(nk.logsumexp_rows(x), ref_lse, rtol=t, atol=t)
    with pytest.raises(TypeError, match="float32/float64"):
        nk.softmax_rows(np.zeros((2, 3), np.float16), np.zeros((2, 3), np.float16))


def test_exp_accuracy_float32():
    # the kernels' own exponential, seen through softmax of [v, 0] = exp(v) / (1 + exp(v))
    v = -np.geomspace(1e-8, 87.0, 20001).astype(np.float32)
    x = np.stack([v, np.zeros_like(v)], axis=1)
    p = nk.softmax_rows(x, np.empty_like(x))[:, 0].astype(np.float64)
    ref = np.exp(v.astype(np.float64)) / (1.0 + np.exp(v.astype(np.float64)))
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(p - ref) / ulp) < 4.0


def test_exp_is_exactly_one_at_zero_and_zero_at_minus_inf():
    # ties count the entries equal to the maximum as exactly 1; masked entries are exactly 0
    assert exp32(np.float32(0.0)) == 1.0 and exp32(np.float32(-np.inf)) == 0.0


def test_threaded_rows_and_concurrent_callers(monkeypatch):
    # large enough (>= 65536 elements) for the row chunks to run on the thread pool; several
    # user threads calling at once must not interfere
    from concurrent.futures import ThreadPoolExecutor

    import numba

    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", max(2, numba.config.NUMBA_NUM_THREADS))
    x, t = make(64, 2000, np.float32, seed=37)
    assert threads.chunks(*x.shape) > 1
    ref_loss, ref_grad = reference(x, t, LossOptions(), row_scale=np.ones(64))

    def one(_):
        return kernel_rows(x, t, LossOptions(), {}, np.ones(64), inplace=True)

    with ThreadPoolExecutor(4) as pool:
        for loss, grad in pool.map(one, range(8)):
            close(loss, ref_loss, 8 * EPS32, "loss")
            close(grad, ref_grad, 8 * EPS32, "gradient")


@pytest.mark.parametrize("name", ["plain", "softcap"])
def test_read_only_inputs(name):
    x, t = make(4, 30, np.float32, seed=41)
    opts, _, _ = options(name, x, t)
    x.flags.writeable = False
    t.flags.writeable = False
    ref_loss, ref_grad = reference(x, t, opts, row_scale=np.ones(4))
    grad = np.empty_like(x)
    close(nk.fused_rows(x, t, opts, row_scale=np.ones(4), out=grad), ref_loss, 8 * EPS32, "loss")
    close(grad, ref_grad, 8 * EPS32, "gradient")
    close(nk.fused_rows(x, t, opts), ref_loss, 8 * EPS32, "loss only")
    close(nk.logsumexp_rows(x), _ref_rows(x)[2], 8 * EPS32, "logsumexp")
    with pytest.raises(TypeError, match="writeable"):
        nk.softmax_rows(x, x)


# ----------------------------------------------------------------------------------------------
# the disk cache


def test_cache_entries_compiled_from_other_sources_are_dropped(tmp_path):
    # numba checks only a function's own file; the kernels inline helpers of other files
    (tmp_path / "rows.fused_kernel-120.py311.nbi").write_text("stale")
    (tmp_path / "rows.fused_kernel-120.py311.1.nbc").write_text("stale")
    (tmp_path / "other.f-1.py311.nbi").write_text("not ours")
    assert caching.drop_stale_entries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "other.f-1.py311.nbi",
        "softmaxce-numba-sources.sha256",
    ]
    (tmp_path / "rows.fused_kernel-120.py311.nbi").write_text("compiled from these sources")
    assert not caching.drop_stale_entries(tmp_path)  # same sources: kept
    assert (tmp_path / "rows.fused_kernel-120.py311.nbi").exists()
