"""The numba row kernel (``softmaxce._numba_kernels``) against a plain float64 reference.

The reference below is written from docs/internals.md with per-row loops in float64 and shares
no code with the kernel or the core. Values AND gradients are compared over the whole option
grid, on hypothesis cases (odd shapes, extreme and non-finite logits), in place and out of
place, and the kernel is compared with the core's ``rows.fused_rows`` (same contract).

Tolerances (float32 logits): loss within 1e-6 relative (plus 1e-6 absolute for losses near
0), gradient within 1e-6 absolute; float64: 1e-12; float16: the kernel computes in float32
and rounds the gradient once, so 2 float16 ulps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("numba")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softmaxce import _numba_kernels as nk

IGNORE = -100

# (loss rtol, loss atol, grad rtol, grad atol) per logits dtype
TOL = {
    np.float16: (1e-5, 1e-5, 2e-3, 1e-6),
    np.float32: (1e-6, 1e-6, 1e-6, 1e-6),
    np.float64: (1e-12, 1e-12, 1e-12, 1e-12),
}


def few_ulps(dtype) -> float:
    """Tolerance between two kernel paths that sum a row in different orders (or vector
    widths): a few units of the dtype's rounding, whatever the machine."""
    return 8 * float(np.finfo(dtype).eps)


# ----------------------------------------------------------------------------------------------
# the float64 reference, one row at a time


def reference(
    x,
    target,
    *,
    weight=None,
    ignore_index=IGNORE,
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    where=None,
    kl=False,
    row_scale=None,
):
    """(loss (N,), gradient (N, C) or None) in float64, straight from the contract."""
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape
    eps = label_smoothing
    w = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64)
    loss = np.zeros(n)
    grad = np.zeros((n, c))
    for i in range(n):
        allowed = np.ones(c, dtype=bool) if where is None else np.asarray(where[i], dtype=bool)
        if target.ndim == 1 and target[i] == ignore_index:
            continue
        n_allowed = int(allowed.sum())
        if n_allowed == 0:
            continue
        z = x[i].copy()
        if softcap is not None:
            z = softcap * np.tanh(z / softcap)
        zm = np.where(allowed, z, -np.inf)
        if np.isnan(zm[allowed]).any():
            m = math.nan
        else:
            m = float(np.max(zm))
            if m == -math.inf:
                m = 0.0
        with np.errstate(all="ignore"):
            d = zm - m  # z - m; -inf outside A_i
            e = np.where(allowed, np.exp(d), 0.0)
            s = float(np.sum(e))
            log_s = math.log(s) if s > 0 else (-math.inf if s == 0 else math.nan)
            lse = m + log_s
            p = e / s
        if target.ndim == 1:
            y = np.zeros(c)
            y[int(target[i])] = 1.0
        else:
            y = np.asarray(target[i], dtype=np.float64)
        q = (1.0 - eps) * y + np.where(allowed, eps / n_allowed, 0.0)
        wq = w * q
        with np.errstate(all="ignore"):
            # sum_c w_c q_c (log s - (z_c - m)), terms with w_c q_c == 0 are 0
            big_s = float(np.sum(wq))
            big_t = float(np.sum(np.where(wq == 0, 0.0, wq * d)))
            li = big_s * log_s - big_t
            if z_loss:
                li += z_loss * lse * lse
            if kl:
                li += float(np.sum(np.where(wq == 0, 0.0, wq * np.log(np.where(q > 0, q, 1.0)))))
            loss[i] = li
            if row_scale is not None:
                g = big_s * p - wq + 2.0 * z_loss * lse * p
                if softcap is not None:
                    g = g * (1.0 - (z / softcap) ** 2)
                grad[i] = np.where(allowed, g * row_scale[i], 0.0)
    return loss, (grad if row_scale is not None else None)


def run_kernel(fn, x, target, *, inplace=False, with_grad=True, **opts):
    """Call a ``fused_rows`` with every option spelled out; returns (loss, grad or None)."""
    full = {
        "weight": None,
        "ignore_index": IGNORE,
        "label_smoothing": 0.0,
        "z_loss": 0.0,
        "softcap": None,
        "where": None,
        "kl": False,
        "row_scale": None,
    }
    full.update(opts)
    xin = x.copy()
    if not with_grad:
        full["row_scale"] = None
        loss = fn(xin, target, grad_out=None, **full)
        np.testing.assert_array_equal(xin, x)  # loss only: the logits are untouched
        return loss, None
    grad = xin if inplace else np.full_like(x, 7.0)
    loss = fn(xin, target, grad_out=grad, **full)
    if not inplace:
        np.testing.assert_array_equal(xin, x)  # out of place: the logits are untouched
    return loss, grad


def check(x, target, *, inplace=False, with_grad=True, **opts):
    rs = opts.pop("row_scale", None)
    n = x.shape[0]
    if with_grad and rs is None:
        rs = np.linspace(0.5, 1.5, n)
    ref_loss, ref_grad = reference(x, target, row_scale=rs if with_grad else None, **opts)
    loss, grad = run_kernel(
        nk.fused_rows, x, target, inplace=inplace, with_grad=with_grad, row_scale=rs, **opts
    )
    lr, la, gr, ga = TOL[x.dtype.type]
    assert loss.dtype == np.float64
    assert loss.shape == (n,)
    np.testing.assert_allclose(loss, ref_loss, rtol=lr, atol=la)
    if with_grad:
        assert grad.dtype == x.dtype
        np.testing.assert_allclose(grad.astype(np.float64), ref_grad, rtol=gr, atol=ga)
    return loss, grad


# ----------------------------------------------------------------------------------------------
# inputs


def make(n, c, dtype, *, soft=False, seed=0, scale=3.0, normalized=True):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c)) * scale).astype(dtype)
    if soft:
        y = rng.random((n, c))
        if normalized:
            y /= y.sum(axis=1, keepdims=True)
        target = y.astype(dtype)
    else:
        target = rng.integers(0, c, n).astype(np.int64)
        if n > 2:
            target[n // 2] = IGNORE
    return x, target


OPTION_SETS = {
    "plain": {},
    "smooth": {"label_smoothing": 0.2},
    "weight": {"weight": "w"},
    "weight+smooth": {"weight": "w", "label_smoothing": 0.1},
    "zloss": {"z_loss": 1e-2},
    "softcap": {"softcap": 4.0},
    "where": {"where": "mask"},
    "where+smooth+weight": {"where": "mask", "label_smoothing": 0.3, "weight": "w"},
    "kl": {"kl": True, "label_smoothing": 0.1},
    "all": {
        "weight": "w",
        "label_smoothing": 0.1,
        "z_loss": 1e-3,
        "softcap": 6.0,
        "where": "mask",
        "kl": True,
    },
}


def resolve(opts, n, c, seed=1):
    rng = np.random.default_rng(seed)
    out = dict(opts)
    if out.get("weight") == "w":
        out["weight"] = rng.uniform(0.5, 2.0, c)
    if isinstance(out.get("where"), str):
        mask = rng.random((n, c)) > 0.3
        mask[0] = True  # every class allowed
        if n > 1:
            mask[1] = False  # no class allowed: loss 0, gradient 0
        out["where"] = mask
    return out


# ----------------------------------------------------------------------------------------------
# the option grid


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_option_grid(dtype, soft, name):
    n, c = 7, 423
    x, target = make(n, c, dtype, soft=soft, seed=3)
    opts = resolve(OPTION_SETS[name], n, c)
    if soft and opts.get("where") is not None:
        # soft mass only on allowed classes (mass outside A_i is tested separately: +inf)
        target = np.where(opts["where"], target, 0).astype(dtype)
    check(x, target, **opts)


@pytest.mark.parametrize("name", ["plain", "smooth", "weight+smooth", "zloss", "where", "all"])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_inplace(name, soft):
    n, c = 9, 300
    x, target = make(n, c, np.float32, soft=soft, seed=5)
    opts = resolve(OPTION_SETS[name], n, c)
    if soft and opts.get("where") is not None:
        target = np.where(opts["where"], target, 0).astype(np.float32)
    loss_ip, grad_ip = check(x, target, inplace=True, **opts)
    loss_oop, grad_oop = check(x, target, inplace=False, **opts)
    # In place the loops read and write one row view, out of place two arrays: LLVM may
    # vectorise them differently, so they agree to float32 rounding, not bit for bit.
    tol = few_ulps(np.float32)
    np.testing.assert_allclose(loss_ip, loss_oop, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad_ip, grad_oop, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["plain", "weight+smooth", "softcap", "where", "kl"])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_loss_only(name, soft):
    n, c = 6, 64
    x, target = make(n, c, np.float32, soft=soft, seed=7)
    opts = resolve(OPTION_SETS[name], n, c)
    with_grad, _ = check(x, target, **opts)
    without, _ = check(x, target, with_grad=False, **opts)
    # The loss-only loops differ from the gradient loops by a store, so the vectorizer may sum
    # the row in another order (and another vector width): equal to float32 rounding of the
    # row sums, not bit for bit.
    tol = few_ulps(np.float32)
    np.testing.assert_allclose(with_grad, without, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["plain", "weight+smooth", "softcap", "where"])
@pytest.mark.parametrize("inplace", [False, True], ids=["oop", "inplace"])
def test_float16(name, inplace):
    n, c = 5, 100
    x, target = make(n, c, np.float16, seed=11, scale=2.0)
    opts = resolve(OPTION_SETS[name], n, c)
    check(x, target, inplace=inplace, **opts)


@pytest.mark.parametrize("c", [1, 2, 3, 15, 16, 17, 255, 256, 257, 423, 1000])
def test_block_edges(c):
    # the hot path works in blocks of 256 with a tail: every remainder, and odd N
    x, target = make(5, c, np.float32, seed=c)
    check(x, target)
    check(x, target, inplace=True, label_smoothing=0.1, weight=np.linspace(0.5, 2, c))


def test_ignore_index_inside_range():
    # a row whose label equals ignore_index is ignored even when that is a valid class
    x, target = make(6, 10, np.float32, seed=2)
    target[:] = [3, 1, 3, 0, 9, 3]
    loss, grad = check(x, target, ignore_index=3)
    assert np.all(loss[[0, 2, 5]] == 0) and np.all(grad[[0, 2, 5]] == 0)


def test_everything_ignored_and_empty():
    x = np.ones((4, 5), np.float32)
    target = np.full(4, IGNORE)
    loss, grad = check(x, target)
    assert not loss.any() and not grad.any()
    empty = np.zeros((0, 5), np.float32)
    out = nk.fused_rows(
        empty, np.zeros(0, np.int64), weight=None, ignore_index=IGNORE, label_smoothing=0.0,
        z_loss=0.0, softcap=None, where=None, kl=False, row_scale=np.zeros(0),
        grad_out=empty,
    )  # fmt: skip
    assert out.shape == (0,)


# ----------------------------------------------------------------------------------------------
# extreme and non-finite logits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e6, 1e30])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_huge_logits(dtype, scale, soft):
    x, target = make(6, 37, dtype, soft=soft, seed=13, scale=scale)
    check(x, target)
    check(x, target, label_smoothing=0.1, z_loss=1e-4)
    check(x, target, inplace=True)


def test_exact_zero_loss_for_dominant_logit():
    x = np.array([[0.0, 0.0, 1e6], [-1e30, 0.0, 1e30]], np.float32)
    t = np.array([2, 2])
    loss, grad = check(x, t)
    assert np.all(loss == 0.0)
    assert np.all(grad == 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_minus_inf(dtype):
    x = np.array(
        [
            [0.0, -np.inf, 1.0, 2.0],  # -inf is a class of probability 0
            [-np.inf, -np.inf, -np.inf, -np.inf],  # all -inf: m -> 0, s = 0, lse = -inf
            [-np.inf, 3.0, -np.inf, 1.0],  # target on a -inf class: +inf loss
            [5.0, -np.inf, 5.0, -np.inf],  # smoothing mass on -inf classes: +inf
        ],
        dtype,
    )
    t = np.array([2, 0, 0, 0])
    loss, grad = check(x, t)
    assert np.isfinite(loss[0]) and grad[0, 1] == 0
    assert loss[2] == np.inf
    loss_s, _ = check(x, t, label_smoothing=0.1)
    assert loss_s[3] == np.inf
    check(x, t, inplace=True, z_loss=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_nan_and_inf_propagate(dtype, soft):
    x, target = make(5, 40, dtype, soft=soft, seed=17)
    x[0, 5] = np.nan
    x[1, 7] = np.inf
    x[2, 9] = -np.inf  # fine (no target mass there)
    x[3, :] = np.nan
    if soft:
        target[2, 9] = 0
    else:
        target[3] = IGNORE  # an ignored row stays exactly 0, NaN logits or not
    loss, grad = check(x, target)
    assert np.isnan(loss[[0, 1]]).all() and np.isnan(grad[[0, 1]]).all()
    assert np.isfinite(loss[[2, 4]]).all()
    if not soft:
        assert loss[3] == 0 and not grad[3].any()
    check(x, target, inplace=True)
    check(x, target, where=np.arange(40)[None, :].repeat(5, 0) != 5)  # masks the NaN of row 0


def test_softcap_makes_inf_finite():
    x = np.array([[np.inf, 0.0, -np.inf, 1.0]], np.float32)
    loss, grad = check(x, np.array([1]), softcap=5.0)
    assert np.isfinite(loss).all() and np.isfinite(grad).all()


def test_soft_mass_outside_where_is_inf():
    x, y = make(3, 8, np.float32, soft=True, seed=19)
    where = np.ones((3, 8), bool)
    where[0, 2] = False
    loss, grad = check(x, y, where=where)
    assert loss[0] == np.inf and grad[0, 2] == 0


def test_broadcast_where_and_other_target_dtypes():
    x, y = make(6, 50, np.float32, soft=True, seed=23)
    where = np.broadcast_to(np.arange(50) % 7 != 0, (6, 50))  # a stride-0 view
    check(x, np.where(where, y, 0).astype(np.float64), where=where)  # float64 soft target
    xi, t = make(6, 50, np.float32, seed=23)
    check(xi, t.astype(np.int32))


# ----------------------------------------------------------------------------------------------
# hypothesis


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(1, 9))
    c = draw(st.sampled_from([1, 2, 3, 5, 31, 64, 257, 423]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e6, 1e30]))
    soft = draw(st.booleans())
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c)) * scale
    special = draw(st.sampled_from(["none", "ninf", "nan", "pinf", "mixed"]))
    if special != "none":
        for _ in range(draw(st.integers(1, 3))):
            i, j = int(rng.integers(n)), int(rng.integers(c))
            kind = special if special != "mixed" else rng.choice(["ninf", "nan", "pinf"])
            x[i, j] = {"ninf": -np.inf, "nan": np.nan, "pinf": np.inf}[kind]
    x = x.astype(dtype)
    if soft:
        y = rng.random((n, c)) * (rng.random((n, c)) < 0.5)
        y[:, 0] += 1e-3
        target = (y / y.sum(axis=1, keepdims=True)).astype(dtype)
    else:
        target = rng.integers(0, c, n).astype(np.int64)
        target[rng.random(n) < 0.2] = IGNORE
    opts = {}
    if draw(st.booleans()):
        opts["label_smoothing"] = draw(st.sampled_from([0.0, 0.1, 1.0]))
    if draw(st.booleans()):
        opts["weight"] = rng.uniform(0.0, 2.0, c)
    if draw(st.booleans()):
        opts["z_loss"] = 1e-3
    if draw(st.booleans()):
        opts["softcap"] = draw(st.sampled_from([1.0, 30.0]))
    if draw(st.booleans()):
        opts["where"] = rng.random((n, c)) > 0.2
        if soft:
            target = np.where(opts["where"], target, 0).astype(dtype)
    if soft and draw(st.booleans()):
        opts["kl"] = True
    inplace = draw(st.booleans())
    return x, target, opts, inplace


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_hypothesis(case):
    x, target, opts, inplace = case
    if opts.get("z_loss") and np.max(np.abs(x[np.isfinite(x)]), initial=0) > 1e15:
        # lse**2 of 1e30-sized logits overflows float32; (inf, NaN) is right but not the point
        opts.pop("z_loss")
    check(x, target, inplace=inplace, **opts)


# ----------------------------------------------------------------------------------------------
# the kernel and the NumPy core agree (same contract)

def core_fused_rows(x, target, *, weight, ignore_index, label_smoothing, z_loss, softcap, where,
                    kl, row_scale, grad_out):
    """The core's one-block rows, called with the kernel's contract."""
    from softmaxce._core import rows
    from softmaxce._options import LossOptions

    opts = LossOptions(ignore_index=ignore_index, label_smoothing=label_smoothing,
                       z_loss=z_loss, softcap=softcap, kl=kl)
    ctx = rows.row_context(x, target, x.shape[1], opts, where)
    with np.errstate(all="ignore"):
        loss, g = rows.fused_rows(x, target, opts, ctx, weight=weight, where=where,
                                  row_scale=row_scale)
    if g is not None:
        grad_out[...] = g
    return np.asarray(loss, dtype=np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_kernel_matches_core(dtype, soft, name):
    n, c = 6, 257
    x, target = make(n, c, dtype, soft=soft, seed=29)
    x[2, 3] = -np.inf
    opts = resolve(OPTION_SETS[name], n, c)
    if soft and opts.get("where") is not None:
        target = np.where(opts["where"], target, 0).astype(dtype)
    rs = np.linspace(0.5, 1.5, n)
    lk, gk = run_kernel(nk.fused_rows, x, target, row_scale=rs, **opts)
    lc, gc = run_kernel(core_fused_rows, x, target, row_scale=rs, **opts)
    lr, la, gr, ga = TOL[np.dtype(dtype).type]
    np.testing.assert_allclose(lk, lc, rtol=2 * lr, atol=2 * la)
    np.testing.assert_allclose(gk, gc, rtol=2 * gr, atol=2 * ga)


# ----------------------------------------------------------------------------------------------
# supports()


def test_supports():
    x = np.zeros((4, 6), np.float32)
    t = np.zeros(4, np.int64)
    assert nk.supports(x, t)
    assert nk.supports(x, t, grad_out=x)
    assert nk.supports(x, np.zeros((4, 6), np.float16), where=np.ones((4, 6), bool))
    assert nk.supports(x.astype(np.float16), t, grad_out=np.empty((4, 6), np.float16))
    assert not nk.supports(x[:, ::2], t[:])  # not C-contiguous
    assert not nk.supports(x.T, np.zeros(6, np.int64))
    assert not nk.supports(x.astype(np.int32), t)
    assert not nk.supports(x.astype(np.complex64), t)
    assert not nk.supports(x, t.astype(np.float32))  # 1-D float target
    assert not nk.supports(x, np.zeros((4, 6), np.int64))
    assert not nk.supports(x, t, where=np.ones((4, 6), np.int8))
    assert not nk.supports(x, t, grad_out=np.empty((4, 6), np.float64))
    assert not nk.supports(x, t, grad_out=x[::-1])  # overlaps x without being x
    assert not nk.supports(x, t, weight=np.ones(5))
    assert not nk.supports(x[None], t)


# ----------------------------------------------------------------------------------------------
# softmax, log_softmax, logsumexp rows


def _ref_rows(x):
    """(softmax, log_softmax, logsumexp) per row in float64."""
    x = x.astype(np.float64)
    out = np.empty_like(x)
    logp = np.empty_like(x)
    lse = np.empty(x.shape[0])
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
            lse[i] = m + log_s
            out[i] = e / e.sum()
            logp[i] = (row - m) - log_s
    return out, logp, lse


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("inplace", [False, True], ids=["oop", "inplace"])
def test_softmax_rows(dtype, inplace):
    rng = np.random.default_rng(31)
    x = (rng.standard_normal((9, 423)) * 20).astype(dtype)
    x[1, 4] = -np.inf
    x[2] = -np.inf
    x[3, 0] = np.nan
    x[4, 2] = np.inf
    x[5] *= 1e6
    ref_p, ref_logp, ref_lse = _ref_rows(x)
    tol = 1e-6 if dtype == np.float32 else 1e-13
    xin = x.copy()
    out = xin if inplace else np.empty_like(x)
    assert nk.softmax_rows(xin, out) is out
    np.testing.assert_allclose(out, ref_p, rtol=tol, atol=tol)
    xin = x.copy()
    out = xin if inplace else np.empty_like(x)
    nk.log_softmax_rows(xin, out)
    # relative accuracy also near 0 (the row maximum): (x - m) - log s, in that order
    np.testing.assert_allclose(out, ref_logp, rtol=tol, atol=tol * 1e-3)
    np.testing.assert_allclose(nk.logsumexp_rows(x), ref_lse, rtol=tol, atol=tol)
    with pytest.raises(TypeError, match="float32/float64"):
        nk.softmax_rows(np.zeros((2, 3), np.float16), np.zeros((2, 3), np.float16))


def test_exp_accuracy_float32():
    # the kernel's own exponential, seen through softmax of [v, 0] = exp(v) / (1 + exp(v))
    v = -np.geomspace(1e-8, 87.0, 20001).astype(np.float32)
    x = np.stack([v, np.zeros_like(v)], axis=1)
    p = nk.softmax_rows(x, np.empty_like(x))[:, 0].astype(np.float64)
    v64 = v.astype(np.float64)
    ref = np.exp(v64) / (1.0 + np.exp(v64))
    ulp = np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(p - ref) / ulp) < 4.0


def test_threaded_rows_and_concurrent_callers():
    # large enough (>= 65536 elements) for the row chunks to run on the thread pool; several
    # user threads calling at once must not interfere
    from concurrent.futures import ThreadPoolExecutor

    x, target = make(64, 2000, np.float32, seed=37)
    ref_loss, ref_grad = reference(x, target, row_scale=np.ones(64))

    def one(_):
        return run_kernel(nk.fused_rows, x, target, inplace=True, row_scale=np.ones(64))

    with ThreadPoolExecutor(4) as pool:
        for loss, grad in pool.map(one, range(8)):
            np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["plain", "softcap"])
def test_read_only_inputs(name):
    x, target = make(4, 30, np.float32, seed=41)
    opts = resolve(OPTION_SETS[name], 4, 30)
    x.flags.writeable = False
    target.flags.writeable = False
    rs = np.ones(4)
    ref_loss, ref_grad = reference(x, target, row_scale=rs, **opts)
    full = {"weight": None, "ignore_index": IGNORE, "label_smoothing": 0.0, "z_loss": 0.0,
            "softcap": None, "where": None, "kl": False, **opts}  # fmt: skip
    grad = np.empty_like(x)
    loss = nk.fused_rows(x, target, row_scale=rs, grad_out=grad, **full)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-6)
    loss = nk.fused_rows(x, target, row_scale=None, grad_out=None, **full)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(nk.logsumexp_rows(x), _ref_rows(x)[2], rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="writeable"):
        nk.softmax_rows(x, x)
