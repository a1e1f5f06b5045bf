"""The framework rules of softmaxce._semantics.TABLE that change the loss, implemented once in
the core (``_core/rows.py``): each flag against a plain float64 formula written here, for
every split of the classes into blocks (merged in shuffled orders), on every array library
the core runs on; and the run that takes the core (not the numba kernel) when a row needs it.

The flags (each off in softmaxce's own semantics):

* ``kl_eps`` (Chainer): ``K = sum_c w_c q_c log(q_c + kl_eps)``;
* ``unit_mass`` (MXNet): ``L = lse - sum_c w_c q_c z_c``, gradient ``p - w q``;
* ``label_keeps_logit`` (optax): an index label outside ``where`` keeps its own logit.
"""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest

from softmaxce import _run
from softmaxce._core import rows
from softmaxce._options import LossOptions
from softmaxce._problem import prepare
from softmaxce._semantics import SOFTMAXCE, TABLE

N, C = 7, 9
SPLITS = [1, 2, 3, 7]


# --------------------------------------------------------------------------------------------
# the arrays, on each library
# --------------------------------------------------------------------------------------------


def _numpy(a):
    return a


def _torch(a):
    torch = pytest.importorskip("torch")
    return torch.asarray(a)


def _strict(a):
    xp = pytest.importorskip("array_api_strict")
    return xp.asarray(a)


def _jax(a):
    jnp = pytest.importorskip("jax.numpy")
    return jnp.asarray(a)  # float32 unless jax_enable_x64


# (JAX: traced whole under jax.jit below; eager, every block shape would compile anew)
LIBS = {"numpy": _numpy, "torch": _torch, "array_api_strict": _strict}


def _host(a) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):
        return a.detach().numpy()
    if type(a).__module__.startswith("array_api_strict"):
        return np.from_dlpack(a)
    return np.asarray(a)


def _tol(x) -> float:
    """1e-12 in float64; a few float32 roundings of the row's terms where JAX ran in float32."""
    return 1e-12 if x.dtype == np.float64 else 5e-5


def _problem(kind: str, seed: int = 0):
    """(x, target, weight, where) in float64 NumPy: a few -inf logits, an ignored row (index)
    and a row with no allowed class; labels outside ``where`` on some rows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C)) * 2.0
    where = rng.random((N, C)) < 0.7
    where[:, 0] = True
    where[5] = False  # no allowed class: the row does not count
    x[1, 3] = -np.inf
    where[1, 3] = True
    w = rng.uniform(0.2, 2.0, C)
    if kind == "index":
        t = rng.integers(0, C, N)
        t[2] = -100  # ignored
        t[3] = int(np.flatnonzero(~where[3])[0]) if (~where[3]).any() else 1
        where[3, t[3]] = False  # a label outside where
        return x, t, w, where
    y = rng.random((N, C))
    y[1, 3] = 0.0  # no mass at the -inf logit
    y = np.where(where, y, 0.0)
    return x, y, w, where


def _core(lib, x, t, w, where, opts, n_blocks, seed=0):
    """Loss rows and gradient (row_scale 1) from ``n_blocks`` blocks merged in shuffled order."""
    with np.errstate(all="ignore"):  # (log 0 = -inf and the like are results here)
        return _blocks(lib, x, t, w, where, opts, n_blocks, seed)


def _blocks(lib, x, t, w, where, opts, n_blocks, seed):
    conv = LIBS[lib]
    xa, ta, wa, ma = conv(x), conv(t), conv(w), conv(where)
    ctx = rows.row_context(xa, ta, C, opts, ma)
    spans = rows.blocks(C, n_blocks)
    soft = t.ndim == 2
    stats = [
        rows.row_stats(
            xa[:, a:b], ta[:, a:b] if soft else ta, a, opts, ctx, weight=wa[a:b], where=ma[:, a:b]
        )
        for a, b in spans
    ]
    random.Random(seed).shuffle(stats)
    merged = stats[0]
    for s in stats[1:]:
        merged = rows.merge(merged, s)
    loss = rows.row_loss(merged, opts, ctx)
    one = conv(np.ones(()))
    grads = [
        _host(
            rows.row_grad(
                xa[:, a:b], ta[:, a:b] if soft else ta, a, merged, one, opts, ctx,
                weight=wa[a:b], where=ma[:, a:b],
            )
        )
        for a, b in spans
    ]
    return _host(loss), np.concatenate(grads, axis=1)


# --------------------------------------------------------------------------------------------
# the plain float64 formula, one row at a time
# --------------------------------------------------------------------------------------------


def _expected(x, t, w, where, *, eps, sem, kl=False, ignore=-100):
    """Per-row loss and gradient of the rule, straight from its definition (no softcap)."""
    loss, grad = np.zeros(N), np.zeros((N, C))
    for i in range(N):
        allowed = where[i]
        if not allowed.any() or (t.ndim == 1 and t[i] == ignore):
            continue
        y = np.eye(C)[t[i]] if t.ndim == 1 else t[i]
        q = (1 - eps) * y + np.where(allowed, eps / allowed.sum(), 0.0)
        wq = w * q
        zs = x[i][allowed]
        m = zs.max()
        lse = m + math.log(sum(math.exp(v - m) for v in zs))
        p = np.where(allowed, np.exp(np.where(allowed, x[i], 0.0) - lse), 0.0)
        z = np.where(allowed, x[i], -np.inf)  # masked classes: probability 0
        if t.ndim == 1 and sem.label_keeps_logit:
            z[t[i]] = x[i, t[i]]
        terms = np.array([0.0 if wq[c] == 0 else wq[c] * z[c] for c in range(C)])
        mass = 1.0 if sem.unit_mass else wq.sum()
        loss[i] = mass * lse - terms.sum()
        if kl:
            loss[i] += sum(wq[c] * math.log(q[c] + sem.kl_eps) for c in range(C) if q[c])
        live = allowed.copy()
        if t.ndim == 1 and sem.label_keeps_logit:
            live[t[i]] = True
        grad[i] = np.where(live, mass * p - wq, 0.0)
    return loss, grad


def _flag(**kw):
    return dataclasses.replace(SOFTMAXCE, name="test", **kw)


CASES = {
    # name: (semantics, target kind, label smoothing, kl)
    "kl_eps-soft": (_flag(kl_eps=1e-7), "soft", 0.0, True),
    "kl_eps-soft-smoothed": (_flag(kl_eps=1e-3), "soft", 0.2, True),
    "kl_eps-index-smoothed": (_flag(kl_eps=1e-3), "index", 0.2, True),
    "unit_mass-soft": (_flag(unit_mass=True), "soft", 0.0, False),
    "unit_mass-index-smoothed": (_flag(unit_mass=True), "index", 0.3, False),
    "label_keeps_logit": (_flag(label_keeps_logit=True), "index", 0.0, False),
    "label_keeps_logit-smoothed": (_flag(label_keeps_logit=True), "index", 0.25, False),
}


@pytest.mark.parametrize("lib", list(LIBS))
@pytest.mark.parametrize("n_blocks", SPLITS)
@pytest.mark.parametrize("case", list(CASES))
def test_semantics_flag_in_the_core_matches_its_formula_for_any_split(case, n_blocks, lib):
    sem, kind, eps, kl = CASES[case]
    x, t, w, where = _problem(kind)
    if kind == "index" and sem.label_keeps_logit:
        assert not where[3, t[3]]  # the case this flag is about
    opts = LossOptions(label_smoothing=eps, kl=kl, semantics=sem)
    loss, grad = _core(lib, x, t, w, where, opts, n_blocks, seed=n_blocks)
    want_loss, want_grad = _expected(x, t, w, where, eps=eps, sem=sem, kl=kl)
    tol = _tol(grad)
    np.testing.assert_allclose(loss, want_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, want_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", list(CASES))
def test_semantics_flag_traces_under_jax_jit(case):
    """No data-dependent Python control flow: the flags are static, the rows trace."""
    jax = pytest.importorskip("jax")
    sem, kind, eps, kl = CASES[case]
    x, t, w, where = _problem(kind)
    opts = LossOptions(label_smoothing=eps, kl=kl, semantics=sem)

    @jax.jit
    def fused(xa, ta, wa, ma):
        ctx = rows.row_context(xa, ta, C, opts, ma)
        one = jax.numpy.ones((), dtype=xa.dtype)
        return rows.fused_rows(xa, ta, opts, ctx, weight=wa, where=ma, row_scale=one)

    loss, grad = fused(*(_jax(a) for a in (x, t, w, where)))
    want_loss, want_grad = _expected(x, t, w, where, eps=eps, sem=sem, kl=kl)
    tol = _tol(np.asarray(grad))
    np.testing.assert_allclose(np.asarray(loss), want_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=tol, atol=tol)


def test_without_the_flag_a_label_outside_where_has_infinite_loss():
    """softmaxce's own rule, which label_keeps_logit changes: probability 0, loss +inf, and no
    gradient at the masked label."""
    x, t, w, where = _problem("index")
    opts = LossOptions(semantics=SOFTMAXCE)
    loss, grad = _core("numpy", x, t, w, where, opts, 1)
    assert loss[3] == np.inf and grad[3, t[3]] == 0.0
    opts = LossOptions(semantics=_flag(label_keeps_logit=True))
    loss, grad = _core("numpy", x, t, w, where, opts, 1)
    assert np.isfinite(loss[3]) and grad[3, t[3]] == -w[t[3]]


def test_label_keeps_logit_with_softcap_uses_the_capped_label_logit():
    x, t, w, where = _problem("index", seed=3)
    x[1, 3] = 0.5  # (no -inf: the cap maps it to -cap)
    cap = 1.5
    opts = LossOptions(softcap=cap, semantics=_flag(label_keeps_logit=True))
    loss, grad = _core("numpy", x, t, w, where, opts, 3)
    z = cap * np.tanh(x / cap)
    want_loss, want_grad = _expected(z, t, w, where, eps=0.0, sem=opts.semantics)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, want_grad * (1 - np.tanh(x / cap) ** 2), rtol=1e-12,
                               atol=1e-12)


def test_unit_mass_gradient_is_the_gradient_of_its_loss():
    """unit_mass defines a loss (lse - sum w q z), and its gradient is that loss's: central
    differences of the core's own loss rows."""
    x, y, w, where = _problem("soft", seed=5)
    x = np.where(np.isinf(x), 0.0, x)
    opts = LossOptions(semantics=_flag(unit_mass=True))
    _, grad = _core("numpy", x, y, w, where, opts, 1)
    h = 1e-6
    num = np.zeros_like(x)
    for i in range(N):
        for c in range(C):
            up, down = x.copy(), x.copy()
            up[i, c] += h
            down[i, c] -= h
            lu = _core("numpy", up, y, w, where, opts, 1)[0].sum()
            ld = _core("numpy", down, y, w, where, opts, 1)[0].sum()
            num[i, c] = (lu - ld) / (2 * h)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# the run: rows that only the core implements never reach the numba kernel
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chainer", "mxnet", "optax"])
def test_core_only_rows_run_on_the_core_even_when_the_kernel_is_asked_for(name):
    """64 x 97 float64 (large enough for the kernel): the run gives the flag's result under
    backend="numba" too, where the kernel (which implements none of the flags) would not."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((64, 97))
    where = None
    if name == "optax":
        t = rng.integers(0, 97, 64)
        where = rng.random((64, 97)) < 0.8
        where[np.arange(64), t] = False  # every label outside where
        opts = LossOptions(reduction="none", semantics=TABLE[name])
    else:
        t = rng.random((64, 97)) * 0.02  # rows summing to about 1, not 1
        opts = LossOptions(reduction="sum", kl=name == "chainer", semantics=TABLE[name])
    got = [
        _run.run(prepare(x, t, opts, where=where), want_grad=True, backend=backend)
        for backend in ("numpy", "numba")
    ]
    np.testing.assert_array_equal(got[0][0], got[1][0])
    np.testing.assert_array_equal(got[0][1], got[1][1])
    plain = LossOptions(reduction=opts.reduction, kl=opts.kl)
    other = _run.run(prepare(x, t, plain, where=where), want_grad=True, backend="numpy")
    k = 0 if name == "chainer" else 1  # (kl_eps changes the loss, the others the gradient)
    assert not np.allclose(got[1][k], other[k], rtol=1e-9)
