"""softmaxce.jax's CPU kernel behind XLA's typed FFI (``backend="ffi"``) against the core.

Each pattern of options compiles one numba handler (seconds), so the patterns here are few and
cover every option the handler reads: the dtypes (float16 through its bits, float32, float64),
class weights, smoothing, softcap, z-loss, the KL term, ignore_index, the three reductions; and
``jit``, ``vmap``, the weights' gradient, and the metadata call (XLA compiling the handler at
all). Tolerances from the dtype.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
pytest.importorskip("numba")

import softmaxce.jax as scj  # noqa: E402
from softmaxce.jax import _ffi  # noqa: E402

if jax.default_backend() != "cpu":  # pragma: no cover
    pytest.skip("the FFI kernel is the CPU's", allow_module_level=True)

N, C = 6, 9
LABELS = np.array([0, 8, 3, -100, 2, 2])

PATTERNS = [
    ("float32", {}),
    ("float64", {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-2, "ignore_index": 5}),
    (
        "float32",
        {
            "softcap": 3.0,
            "soft_target_loss": "kl-divergence",
            "label_smoothing": 0.2,
            "reduction": "none",
        },
    ),
    ("float16", {"reduction": "sum"}),
]


def _case(dtype, opts):
    rng = np.random.default_rng(1)
    x = jnp.asarray(3 * rng.standard_normal((N, C)), dtype=dtype)
    t = LABELS.copy()
    kw = dict(opts)
    if kw.get("ignore_index") is not None:
        t[t == -100] = kw["ignore_index"]
    if kw.pop("weight", False):
        kw["weight"] = jnp.asarray(rng.random(C) + 0.5, dtype=dtype)
    seed = jnp.asarray(rng.standard_normal(N) if kw.get("reduction") == "none" else 0.5, dtype)
    return x, jnp.asarray(t), kw, seed


def _tol(dtype):
    return 16 * float(jnp.finfo(dtype).eps)


@pytest.mark.parametrize(("dtype", "opts"), PATTERNS, ids=lambda p: str(p))
def test_ffi_kernel_equals_the_core_under_jit(dtype, opts):
    x, t, kw, seed = _case(dtype, opts)

    def f(backend):
        return jax.jit(jax.value_and_grad(
            lambda a: jnp.sum(scj.softmax_cross_entropy(a, t, backend=backend, **kw) * seed)
        ))  # fmt: skip

    (loss, g), (want, want_g) = f("ffi")(x), f("xla")(x)
    assert g.dtype == x.dtype
    tol = _tol(dtype)
    np.testing.assert_allclose(np.float64(loss), np.float64(want), rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(want_g, np.float64),
                               rtol=tol, atol=tol)  # fmt: skip


def test_ffi_kernel_runs_in_the_jitted_program_not_the_core():
    x, t, _, _ = _case("float32", {})
    text = jax.jit(lambda a: scj.softmax_cross_entropy(a, t, backend="ffi")).lower(x).as_text()
    assert "softmaxce_ce_float32" in text


def test_ffi_weight_gradient_equals_the_core():
    x, t, kw, _ = _case(*PATTERNS[1])
    w = kw.pop("weight")

    def f(backend):
        return jax.grad(
            lambda w_: scj.softmax_cross_entropy(x, t, weight=w_, backend=backend, **kw)
        )

    np.testing.assert_allclose(np.asarray(f("ffi")(w)), np.asarray(f("xla")(w)), rtol=1e-12)


def test_ffi_kernel_under_vmap():
    x, t, _, _ = _case("float32", {})
    xs = jnp.stack([x, 2 * x])
    got = jax.vmap(lambda a: scj.softmax_cross_entropy(a, t, backend="ffi"))(xs)
    want = jax.vmap(lambda a: scj.softmax_cross_entropy(a, t, backend="xla"))(xs)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=_tol("float32"))


def test_ffi_backend_names_why_it_cannot_run():
    x, _, _, _ = _case("float32", {})
    y = jax.nn.softmax(x)
    with pytest.raises(ValueError, match="probability target"):
        scj.softmax_cross_entropy(x, y, backend="ffi")
    with pytest.raises(ValueError, match="bfloat16"):
        scj.softmax_cross_entropy(x.astype(jnp.bfloat16), jnp.asarray(LABELS), backend="ffi")


def test_handler_reports_the_installed_ffi_api_version():
    major, minor = _ffi.api_version()
    assert (major, minor) >= (0, 1)
