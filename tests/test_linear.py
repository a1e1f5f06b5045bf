"""Fused linear + cross-entropy (NumPy): every option against the unfused reference
``softmax_cross_entropy(input @ W.T + b)`` in float64, values and the three gradients, for
blocks of rows, blocks of rows and classes, and one block; the precision cases; errors."""

from __future__ import annotations

import numpy as np
import pytest

import softmaxce as sc
from softmaxce import _linear

N, D, V = 40, 8, 50
# chunk_size (logits per block): one block; rows in blocks of 16 (full V); rows of 16 in
# class blocks of 18 (a class split, V = 50 -> 3 blocks)
CHUNKS = {"one": None, "rows": 16 * V, "classes": 300}

OPTIONS = {
    "plain": {},
    "bias": {"bias": True},
    "weight": {"weight": True, "bias": True},
    "ignore": {"ignore": True},
    "sum": {"reduction": "sum"},
    "none": {"reduction": "none", "dloss": True},
    "smoothing": {"label_smoothing": 0.2, "weight": True, "ignore": True},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 2.5},
    "soft": {"soft": True, "bias": True},
    "soft_kl": {"soft": True, "soft_target_loss": "kl-divergence", "weight": True},
    "all": {
        "bias": True,
        "weight": True,
        "ignore": True,
        "label_smoothing": 0.1,
        "z_loss": 1e-3,
        "softcap": 4.0,
    },
}


def _case(opt: dict, dtype, seed: int = 0):
    """``(args, kwargs)`` of one case, in ``dtype``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D)).astype(dtype)
    w = rng.standard_normal((V, D)).astype(dtype)
    kw: dict = {}
    if opt.get("bias"):
        kw["linear_bias"] = rng.standard_normal(V).astype(dtype)
    if opt.get("soft"):
        t = rng.random((N, V)).astype(dtype)
        t /= t.sum(1, keepdims=True)
    else:
        t = rng.integers(0, V, N)
        if opt.get("ignore"):
            t[::3] = -100
    if opt.get("weight"):
        kw["weight"] = rng.random(V) + 0.1
    if opt.get("dloss"):
        kw["dloss"] = rng.standard_normal(N)
    for name in ("reduction", "label_smoothing", "z_loss", "softcap", "soft_target_loss"):
        if name in opt:
            kw[name] = opt[name]
    return (x, w, t), kw


def reference(x, w, t, **kw):
    """The unfused loss and its three gradients in float64."""
    b = kw.pop("linear_bias", None)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    logits = x64 @ w64.T + (0.0 if b is None else b.astype(np.float64))
    t64 = t.astype(np.float64) if t.dtype.kind == "f" else t
    loss, g = sc.softmax_cross_entropy_with_grad(logits, t64, **kw)
    return loss, g @ w64, g.T @ x64, None if b is None else g.sum(0)


def _tol(dtype) -> float:
    return 1e-12 if dtype == np.float64 else 64 * float(np.finfo(np.float32).eps)


def assert_close(got, want, dtype, scale_of=None):
    """Within a few ulps of ``dtype`` relative to the largest magnitude of ``want``."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    scale = 1.0 + float(np.max(np.abs(want), initial=0.0))
    np.testing.assert_allclose(got, want, rtol=0, atol=_tol(dtype) * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunk", list(CHUNKS))
@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_matches_the_unfused_reference(name, chunk, dtype):
    (x, w, t), kw = _case(OPTIONS[name], dtype)
    loss, dx, dw, db = sc.linear_cross_entropy_with_grad(x, w, t, chunk_size=CHUNKS[chunk], **kw)
    ref = reference(x, w, t, **kw)
    assert dx.dtype == x.dtype and dw.dtype == w.dtype
    assert_close(loss, ref[0], dtype)
    for got, want in zip((dx, dw), ref[1:3], strict=True):
        assert_close(got, want, dtype)
    if "linear_bias" in kw:
        assert_close(db, ref[3], dtype)
    else:
        assert db is None
    kw.pop("dloss", None)
    assert_close(sc.linear_cross_entropy(x, w, t, chunk_size=CHUNKS[chunk], **kw), ref[0], dtype)


@pytest.mark.parametrize("name", ["plain", "all", "soft_kl"])
def test_the_numpy_core_backend_matches_the_kernel(name):
    (x, w, t), kw = _case(OPTIONS[name], np.float64)
    for chunk in CHUNKS.values():
        got = sc.linear_cross_entropy_with_grad(x, w, t, chunk_size=chunk, backend="numpy", **kw)
        want = reference(x, w, t, **kw)
        for a, b in zip(got, want, strict=True):
            if b is not None:
                assert_close(a, b, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_three_block_sizes_agree_within_rounding(dtype):
    (x, w, t), kw = _case(OPTIONS["all"], dtype, seed=3)
    results = [
        sc.linear_cross_entropy_with_grad(x, w, t, chunk_size=c, **kw) for c in (None, 800, 300)
    ]
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert_close(a, b, dtype)


def test_block_rule_splits_classes_only_when_rows_of_every_class_do_not_fit():
    assert _linear.block_shape(2048, 32000, 2048 * 32000 * 19 // 200) == (194, 32000)
    assert _linear.block_shape(40, 50, 800) == (16, 50)
    assert _linear.block_shape(40, 50, 300) == (16, 18)
    assert _linear.block_shape(3, 50, 10) == (3, 3)
    # the default budget: 9.5% of the logits, at least 4 MiB
    assert _linear.block_budget(8192, 128256, 4, 4, None) == 8192 * 128256 * 19 // 200
    assert _linear.block_budget(10, 10, 4, 4, None) == (1 << 22) // 4


def test_without_scipy_the_weight_gradient_is_added_by_class_slices(monkeypatch):
    (x, w, t), kw = _case(OPTIONS["all"], np.float64)
    monkeypatch.setattr(_linear, "_scipy_gemm", lambda: None)
    for chunk in CHUNKS.values():
        got = sc.linear_cross_entropy_with_grad(x, w, t, chunk_size=chunk, **kw)
        for a, b in zip(got, reference(x, w, t, **kw), strict=True):
            assert_close(a, b, np.float64)


def test_batch_shape_of_the_input_is_kept():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, D))
    w = rng.standard_normal((V, D))
    t = rng.integers(0, V, (2, 5))
    loss, dx, _, _ = sc.linear_cross_entropy_with_grad(
        x, w, t, reduction="none", dloss=np.ones((2, 5))
    )
    ref = sc.softmax_cross_entropy(x @ w.T, t, reduction="none")
    assert loss.shape == (2, 5) and dx.shape == x.shape
    assert_close(loss, ref, np.float64)


# --------------------------------------------------------------------------------------------
# Precision cases
# --------------------------------------------------------------------------------------------


def test_equal_logits_near_2_24_give_log_2():
    # logits 2**24 and 2**24 (float32 has no room below them for an error): the loss is log 2
    x = np.array([[1.0]], dtype=np.float32)
    w = np.array([[2.0**24], [2.0**24]], dtype=np.float32)
    loss, dx, dw, _ = sc.linear_cross_entropy_with_grad(x, w, np.array([0]))
    assert loss == np.float32(np.log(2.0))
    np.testing.assert_array_equal(dw, np.array([[-0.5], [0.5]], dtype=np.float32))
    assert dx[0, 0] == 0.0


def test_float16_mean_over_more_than_65536_rows_is_finite_and_right():
    n = 70_000  # the float16 sum of the rows (~1 each) would overflow at 65504
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, 2)).astype(np.float16)
    w = rng.standard_normal((3, 2)).astype(np.float16)
    t = rng.integers(0, 3, n)
    loss = sc.linear_cross_entropy(x, w, t)
    want = reference(x, w, t)[0]
    assert loss.dtype == np.float16 and np.isfinite(loss)
    assert abs(float(loss) - want) <= 2 * float(np.finfo(np.float16).eps) * want


def test_float16_operands_accumulate_in_float32():
    (x, w, t), kw = _case(OPTIONS["bias"], np.float16)
    loss, dx, dw, db = sc.linear_cross_entropy_with_grad(x, w, t, chunk_size=300, **kw)
    ref = reference(x, w, t, **kw)
    assert (dx.dtype, dw.dtype, db.dtype) == (np.float16,) * 3
    eps16 = float(np.finfo(np.float16).eps)
    for got, want in zip((loss, dx, dw, db), ref, strict=True):
        scale = 1.0 + float(np.max(np.abs(want)))
        np.testing.assert_allclose(np.float64(got), want, rtol=0, atol=2 * eps16 * scale)


def test_ignored_rows_contribute_nothing_to_the_weight_gradient():
    (x, w, t), kw = _case({"bias": True}, np.float64)
    t[::2] = -100
    x[::2] *= 1e3  # large inputs on the ignored rows change nothing
    _, dx, dw, db = sc.linear_cross_entropy_with_grad(x, w, t, chunk_size=300, **kw)
    _, dx_k, dw_k, db_k = sc.linear_cross_entropy_with_grad(x[1::2], w, t[1::2], **kw)
    assert np.all(dx[::2] == 0.0)
    assert_close(dx[1::2], dx_k, np.float64)
    assert_close(dw, dw_k, np.float64)
    assert_close(db, db_k, np.float64)


@pytest.mark.parametrize("chunk", list(CHUNKS))
def test_all_rows_ignored_gives_zero_loss_and_gradients(chunk):
    (x, w, t), kw = _case({"bias": True}, np.float32)
    t[:] = -100
    loss, dx, dw, db = sc.linear_cross_entropy_with_grad(x, w, t, chunk_size=CHUNKS[chunk], **kw)
    assert loss == 0.0
    assert not dx.any() and not dw.any() and not db.any()


def test_empty_batch():
    w = np.ones((V, D), dtype=np.float32)
    loss, dx, dw, db = sc.linear_cross_entropy_with_grad(
        np.zeros((0, D), np.float32), w, np.zeros(0, int), linear_bias=np.zeros(V, np.float32)
    )
    assert loss == 0.0 and dx.shape == (0, D) and not dw.any() and not db.any()


def test_read_only_inputs_are_read_not_written():
    (x, w, t), kw = _case(OPTIONS["weight"], np.float32)
    arrays = [x, w, t, kw["linear_bias"], kw["weight"]]
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False
    for chunk in CHUNKS.values():
        got = sc.linear_cross_entropy_with_grad(x, w, t, chunk_size=chunk, **kw)
        for a, b in zip(got, reference(x, w, t, **kw), strict=True):
            assert_close(a, b, np.float32)
    for a, c in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(a, c)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"linear_weight": np.ones((V, D + 1))}, ValueError, "linear_weight must have shape"),
        ({"linear_weight": np.ones(V)}, ValueError, "linear_weight"),
        ({"linear_bias": np.ones(V + 1)}, ValueError, "linear_bias must have shape"),
        ({"input": np.float64(1.0)}, ValueError, "input must have at least one dimension"),
        ({"input": np.ones((N, D), dtype=bool)}, TypeError, "input must be a real float"),
        ({"target": np.zeros(N + 1, int)}, ValueError, "target"),
        ({"target": np.full(N, V)}, ValueError, "target"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chunk_size": 1.5}, TypeError, "chunk_size"),
        ({"weight": np.ones(V + 2)}, ValueError, "weight must have shape"),
        ({"reduction": "avg"}, ValueError, "reduction"),
        ({"backend": "gpu"}, ValueError, "backend"),
    ],
)
def test_bad_input_raises_naming_the_argument(change, error, words):
    (x, w, t), kw = _case({"bias": True}, np.float64)
    args = {"input": x, "linear_weight": w, "target": t, **kw}
    args.update(change)
    pos = [args.pop(k) for k in ("input", "linear_weight", "target")]
    with pytest.raises(error, match=words):
        sc.linear_cross_entropy_with_grad(*pos, **args)


def test_bench_modes_linear_selects_the_linear_benchmark():
    from softmaxce import _bench

    assert _bench._linear_mode(["--modes", "linear", "--rounds", "1"])
    assert _bench._linear_mode(["--modes=linear"])
    assert not _bench._linear_mode(["--modes", "full", "--sizes", "64x10"])
