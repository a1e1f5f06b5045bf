"""softmaxce.jax against the NumPy functions, finite differences and live optax.

The option grid runs the core under XLA (``backend="xla"``); the CPU kernel behind the FFI,
which ``backend="auto"`` picks for the other tests here, has its own file (test_jax_ffi.py:
each of its option patterns compiles a handler).

Every option, both target kinds, ``axis`` and ``where``; ``jit``, ``grad``, ``vmap`` and
``value_and_grad``; float16/bfloat16/float32 in with float32 accumulation, float64 (conftest
turns ``jax_enable_x64`` on). The NumPy reference runs in float64 on the same (rounded)
inputs; tolerances are a few units of the input dtype's rounding. The shapes are few and
fixed: JAX compiles per shape, and this file stays fast.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import softmaxce  # noqa: E402
import softmaxce.jax as scj  # noqa: E402

N, C = 5, 7
LABELS = np.array([0, 6, 3, -100, 2])

OPTIONS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"label_smoothing": 0.2},
    {"z_loss": 1e-2},
    {"softcap": 2.5},
    {"weight": "w"},
    {"weight": "w", "label_smoothing": 0.1, "z_loss": 1e-3},
    {"ignore_index": 2},
    {"soft_target_loss": "kl-divergence", "label_smoothing": 0.1},
    {"where": "mask"},
    {"where": "mask", "label_smoothing": 0.3},
]


def _inputs(dtype=np.float64, soft=False, seed=0):
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal((N, C))).astype(dtype)
    t = rng.dirichlet(np.ones(C), N).astype(dtype) if soft else LABELS.copy()
    return x, t, rng


def _resolve(opts, rng):
    """Option values: ``"w"`` and ``"mask"`` become arrays."""
    out = dict(opts)
    if out.get("weight") == "w":
        out["weight"] = rng.random(C) + 0.25
    if out.get("where") == "mask":
        mask = rng.random((N, C)) < 0.7
        mask[:, [0, 2, 3, 6]] = True  # (every label allowed)
        out["where"] = mask
    return out


def _tol(dtype) -> float:
    return 16 * float(np.finfo(dtype).eps) if dtype != jnp.bfloat16 else 16 * 2.0**-8


def _numpy(x, t, dloss=None, **kw):
    """The NumPy core in float64 on the same values: (loss, gradient)."""
    x64 = np.asarray(x, dtype=np.float64)
    t64 = np.asarray(t, dtype=np.float64) if np.asarray(t).dtype.kind == "f" else np.asarray(t)
    return softmaxce.softmax_cross_entropy_with_grad(x64, t64, dloss=dloss, backend="numpy", **kw)


@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_and_grad_equal_the_numpy_function(opts, soft, dtype):
    if soft and opts.get("ignore_index") is not None:
        pytest.skip("ignore_index applies to index targets")
    x, t, rng = _inputs(dtype, soft)
    kw = _resolve(opts, rng)
    if "ignore_index" in kw:
        t = np.where(t == -100, kw["ignore_index"], t)
    seed = rng.standard_normal(N) if kw.get("reduction") == "none" else 0.7
    want, want_g = _numpy(x, t, dloss=seed, **kw)

    def f(xj):
        return jnp.sum(
            scj.softmax_cross_entropy(xj, t, backend="xla", **kw) * jnp.asarray(seed, dtype)
        )

    got = scj.softmax_cross_entropy(x, t, backend="xla", **kw)
    g = jax.grad(f)(jnp.asarray(x))
    assert got.dtype == dtype and g.dtype == dtype
    tol = _tol(dtype)
    np.testing.assert_allclose(np.asarray(got), want, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(g), want_g, rtol=tol, atol=tol)


@pytest.mark.parametrize("opts", [OPTIONS[0], OPTIONS[7], OPTIONS[11]], ids=["plain", "w", "m"])
def test_jit_and_value_and_grad_equal_the_eager_call(opts):
    x, t, rng = _inputs(np.float32)
    kw = _resolve(opts, rng)
    arrays = {k: jnp.asarray(v) for k, v in kw.items() if isinstance(v, np.ndarray)}
    static = {k: v for k, v in kw.items() if k not in arrays}

    def f(xj, tj, arrs):
        return scj.softmax_cross_entropy(xj, tj, **arrs, **static)

    eager = jax.value_and_grad(f)(jnp.asarray(x), jnp.asarray(t), arrays)
    jitted = jax.jit(jax.value_and_grad(f))(jnp.asarray(x), jnp.asarray(t), arrays)
    tol = _tol(np.float32)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_vmap_over_a_batch_of_problems_equals_each_problem():
    x, t, _ = _inputs(np.float32)
    xs = np.stack([x, x[::-1], 2 * x])
    ts = np.stack([t, t[::-1], t])

    def f(xj, tj):
        return scj.softmax_cross_entropy(xj, tj, label_smoothing=0.1)

    got = jax.vmap(jax.value_and_grad(f))(jnp.asarray(xs), jnp.asarray(ts))
    for k in range(3):
        want, want_g = _numpy(xs[k], ts[k], label_smoothing=0.1)
        tol = _tol(np.float32)
        np.testing.assert_allclose(float(got[0][k]), want, rtol=tol, atol=tol)
        np.testing.assert_allclose(np.asarray(got[1][k]), want_g, rtol=tol, atol=tol)


@pytest.mark.parametrize("axis", [0, 1])
def test_class_axis_not_last_gives_the_moved_gradient(axis):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((C, 3, 4)) if axis == 0 else rng.standard_normal((3, C, 4))
    t = rng.integers(0, C, (3, 4))
    want, want_g = _numpy(x, t, axis=axis, label_smoothing=0.1)

    def f(a):
        return scj.softmax_cross_entropy(a, t, axis=axis, label_smoothing=0.1)

    loss, g = jax.value_and_grad(f)(jnp.asarray(x))
    np.testing.assert_allclose(float(loss), want, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g), want_g, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("opts", [OPTIONS[0], OPTIONS[5], OPTIONS[7], OPTIONS[9]])
def test_grad_equals_finite_differences(opts):
    x, t, rng = _inputs(np.float64)
    kw = _resolve(opts, rng)
    g = jax.grad(lambda a: scj.softmax_cross_entropy(a, t, backend="xla", **kw))(jnp.asarray(x))
    numeric = softmaxce.numerical_gradient(
        lambda a: float(softmaxce.softmax_cross_entropy(a, t, backend="numpy", **kw)), x
    )
    np.testing.assert_allclose(np.asarray(g), numeric, rtol=1e-6, atol=1e-8)


def test_grad_of_a_confident_row_keeps_its_tiny_value():
    # the core's formula forms p - 1 without cancellation: autodiff of lse - x_t gives 0 here
    x = jnp.asarray([[40.0, 0.0, 0.0]])
    g = jax.grad(lambda a: scj.softmax_cross_entropy(a, jnp.asarray([0])))(x)
    assert float(g[0, 0]) == pytest.approx(-2 * np.exp(-40.0), rel=1e-12)


def test_grad_of_a_float_target_and_of_class_weights_equal_autodiff_of_the_core():
    x, y, rng = _inputs(np.float64, soft=True)
    w = rng.random(C) + 0.5

    def f(yj, wj):
        return scj.softmax_cross_entropy(jnp.asarray(x), yj, weight=wj, label_smoothing=0.1)

    gy, gw = jax.grad(f, argnums=(0, 1))(jnp.asarray(y), jnp.asarray(w))
    ny = softmaxce.numerical_gradient(lambda a: float(f(jnp.asarray(a), jnp.asarray(w))), y)
    nw = softmaxce.numerical_gradient(lambda a: float(f(jnp.asarray(y), jnp.asarray(a))), w)
    np.testing.assert_allclose(np.asarray(gy), ny, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.asarray(gw), nw, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_logits_accumulate_in_float32(dtype):
    x, t, _ = _inputs(np.float32)
    xj = jnp.asarray(x, dtype=dtype)
    loss, g = jax.value_and_grad(lambda a: scj.softmax_cross_entropy(a, t, z_loss=1e-3))(xj)
    assert loss.dtype == dtype and g.dtype == dtype
    # the reference on the rounded values: only the output rounding differs
    want, want_g = _numpy(np.asarray(xj.astype(jnp.float32)), t, z_loss=1e-3)
    tol = _tol(dtype)
    np.testing.assert_allclose(float(loss), want, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(g.astype(jnp.float32)), want_g, rtol=tol, atol=tol)


def test_float16_sum_over_many_rows_accumulates_in_float32():
    x = jnp.zeros((4096, 2), dtype=jnp.float16)
    t = jnp.zeros((4096,), dtype=jnp.int32)
    got = scj.softmax_cross_entropy(
        x, t, reduction="sum"
    )  # 4096 * log 2 = 2839: a float16 running sum would stall at 2048
    assert float(got) == pytest.approx(4096 * np.log(2), rel=1e-3)


def test_labels_out_of_range_raise_eagerly_naming_the_target():
    x, _, _ = _inputs(np.float32)
    with pytest.raises(ValueError, match="target"):
        scj.softmax_cross_entropy(x, np.array([0, 1, 7, 2, 3]))


def test_labels_are_not_checked_under_jit_as_documented():
    x, _, _ = _inputs(np.float32)
    f = jax.jit(scj.softmax_cross_entropy)
    f(jnp.asarray(x), jnp.asarray([0, 1, 7, 2, 3]))  # no error: the values are traced


def test_bad_options_and_shapes_raise_naming_the_argument():
    x, t, _ = _inputs(np.float32)
    with pytest.raises(ValueError, match="reduction"):
        scj.softmax_cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="target"):
        scj.softmax_cross_entropy(x, t[:3])
    with pytest.raises(ValueError, match="backend"):
        scj.softmax_cross_entropy(x, t, backend="gpu")
    with pytest.raises(ValueError, match="linear_weight"):
        scj.linear_cross_entropy(x, np.ones((3, 2), np.float32), t)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
def test_softmax_family_values_and_vjp_equal_the_numpy_functions(fn):
    x, _, rng = _inputs(np.float64)
    mask = rng.random((N, C)) < 0.7
    mask[:, 0] = True
    dy = rng.standard_normal((N,) if fn == "logsumexp" else (N, C))
    for where in (None, mask):
        want = getattr(softmaxce, fn)(x, where=where)
        got, vjp = jax.vjp(lambda a, where=where: getattr(scj, fn)(a, where=where), jnp.asarray(x))
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
        (g,) = vjp(jnp.asarray(dy))

        def value(a, where=where):
            out = getattr(softmaxce, fn)(a, where=where)
            return float(np.sum(np.where(np.isfinite(out), out, 0.0) * dy))

        numeric = softmaxce.numerical_gradient(value, x)
        np.testing.assert_allclose(np.asarray(g), numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("chunk", "soft"), [(2, False), (3, False), (11, False), (3, True)], ids=str
)  # (three block sizes: 2 and 3 leave a remainder block, 11 is one block of every class)
def test_linear_cross_entropy_equals_the_loss_of_the_logits_for_any_block_size(chunk, soft):
    rng = np.random.default_rng(5)
    h = rng.standard_normal((6, 4))
    w = rng.standard_normal((11, 4))
    b = rng.standard_normal(11)
    t = rng.dirichlet(np.ones(11), 6) if soft else np.array([0, 10, 5, -100, 3, 3])
    kw = {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 4.0, "weight": rng.random(11) + 0.5}

    def fused(h_, w_, b_):
        return scj.linear_cross_entropy(h_, w_, t, linear_bias=b_, chunk_size=chunk, **kw)

    def plain(h_, w_, b_):
        return scj.softmax_cross_entropy(h_ @ w_.T + b_, t, **kw)

    args = (jnp.asarray(h), jnp.asarray(w), jnp.asarray(b))
    got = jax.value_and_grad(fused, argnums=(0, 1, 2))(*args)
    want = jax.value_and_grad(plain, argnums=(0, 1, 2))(*args)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-12)
    for a, b_ in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), rtol=1e-10, atol=1e-13)


def test_linear_cross_entropy_reduction_none_under_jit():
    rng = np.random.default_rng(6)
    h = jnp.asarray(rng.standard_normal((2, 3, 4)), dtype=jnp.float32)
    w = jnp.asarray(rng.standard_normal((9, 4)), dtype=jnp.float32)
    t = jnp.asarray(rng.integers(0, 9, (2, 3)))
    f = jax.jit(lambda h_: scj.linear_cross_entropy(h_, w, t, reduction="none", chunk_size=4))
    g = jax.jit(lambda h_: scj.softmax_cross_entropy(h_ @ w.T, t, reduction="none"))
    tol = _tol(np.float32)
    np.testing.assert_allclose(np.asarray(f(h)), np.asarray(g(h)), rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------
# Live optax: its two softmax cross-entropies are softmaxce's mean-free row losses
# --------------------------------------------------------------------------------------------


def test_rows_equal_optax_integer_labels_and_their_grad():
    optax = pytest.importorskip("optax")
    x, _, rng = _inputs(np.float32)
    t = jnp.asarray(rng.integers(0, C, N))

    def ours(a):
        return jnp.sum(scj.softmax_cross_entropy(a, t, reduction="none"))

    def theirs(a):
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(a, t))

    xj = jnp.asarray(x)
    tol = _tol(np.float32)
    np.testing.assert_allclose(
        np.asarray(scj.softmax_cross_entropy(xj, t, reduction="none")),
        np.asarray(optax.softmax_cross_entropy_with_integer_labels(xj, t)), rtol=tol, atol=tol,
    )  # fmt: skip
    np.testing.assert_allclose(
        np.asarray(jax.grad(ours)(xj)), np.asarray(jax.grad(theirs)(xj)), rtol=tol, atol=tol
    )


def test_soft_rows_equal_optax_softmax_cross_entropy():
    optax = pytest.importorskip("optax")
    x, y, _ = _inputs(np.float32, soft=True)
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    tol = _tol(np.float32)
    np.testing.assert_allclose(
        np.asarray(scj.softmax_cross_entropy(xj, yj, reduction="none")),
        np.asarray(optax.softmax_cross_entropy(xj, yj)), rtol=tol, atol=tol,
    )  # fmt: skip
    mean_ours = jax.grad(lambda a: scj.softmax_cross_entropy(a, yj))(xj)
    mean_theirs = jax.grad(lambda a: jnp.mean(optax.softmax_cross_entropy(a, yj)))(xj)
    # softmaxce's mean divides by the target mass (N for distributions that sum to 1)
    np.testing.assert_allclose(np.asarray(mean_ours), np.asarray(mean_theirs), rtol=tol, atol=tol)


@pytest.mark.parametrize("opts", [OPTIONS[2], OPTIONS[7], OPTIONS[11]], ids=["none", "w", "m"])
@pytest.mark.parametrize("soft", [False, True], ids=["index", "soft"])
def test_core_in_blocks_of_rows_equals_the_numpy_function(opts, soft, monkeypatch):
    # blocks of 2 rows for N = 5: two full blocks and a remainder of one row
    from softmaxce.jax import _vjp

    monkeypatch.setattr(_vjp, "ROW_BLOCK", 2 * C)
    assert _vjp.rows_per_block(N, C) == 2
    x, t, rng = _inputs(np.float64, soft)
    kw = _resolve(opts, rng)
    seed = rng.standard_normal(N) if kw.get("reduction") == "none" else 0.7
    want, want_g = _numpy(x, t, dloss=seed, **kw)

    def f(xj):
        return jnp.sum(scj.softmax_cross_entropy(xj, t, backend="xla", **kw) * seed)

    loss, g = jax.jit(jax.value_and_grad(f))(jnp.asarray(x))
    np.testing.assert_allclose(float(loss), float(np.sum(want * seed)), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g), want_g, rtol=1e-12, atol=1e-15)


def test_linear_cross_entropy_checks_labels_and_weights_eagerly():
    h = np.ones((2, 3), np.float32)
    w = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="target"):
        scj.linear_cross_entropy(h, w, np.array([0, 4]))
    with pytest.raises(ValueError, match="weight"):
        scj.linear_cross_entropy(h, w, np.array([0, 3]), weight=np.array([1.0, np.nan, 1, 1]))
