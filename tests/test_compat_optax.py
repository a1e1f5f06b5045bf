"""softmaxce.compat.optax against optax's softmax cross-entropies (golden files; live if jax)."""

from __future__ import annotations

import numpy as np
import pytest
from test_compat_common import (
    assert_close,
    assert_raises_named,
    count,
    golden_params,
    handled,
    readonly_inputs,
    rounded,
    summary,
)

from softmaxce.compat import optax

FW = "optax"

# Golden error cases: the exception softmaxce raises (optax's own in a comment).
ERRORS = {
    "error-int-logits": TypeError,  # TypeError
    "error-int-float-labels": TypeError,  # TypeError
    "error-int-axis-none": ValueError,  # ValueError
    "error-int-labels-shape": ValueError,  # ValueError
    "error-sce-labels-shape": TypeError,  # TypeError (jax broadcasting)
}


def _args(case):
    args = dict(case["args"])
    if isinstance(args.get("axis"), list):
        args["axis"] = tuple(args["axis"])
    return args


def _call(case, inputs, head, wide=False):
    fn = getattr(optax, case["fn"] + "_with_grad")
    logits = inputs["logits"].astype(np.float64) if wide else inputs["logits"]
    return fn(logits, inputs["labels"], where=inputs.get("where"), dloss=head, **_args(case))


def diff_out_of_range_label(case, inputs):
    # optax does not check labels: -1 wraps to the last class, others give NaN (jax's gather
    # fill value); softmaxce raises (README: bad input).
    assert case["out"] is not None
    assert_raises_named(ValueError, lambda: _call(case, inputs, None), "labels")


def diff_posinf(case, inputs):
    # A +inf logit: optax's integer version gives +inf (logsumexp - x_t; NaN when the +inf is
    # the label's) and a NaN gradient only at the +inf entry; softmaxce gives NaN (README,
    # non-finite logits) and a NaN gradient row.
    loss, grad = _call(case, inputs, None)
    bad = np.isposinf(inputs["logits"]).any(axis=-1)
    assert np.isnan(loss[bad]).all() and not np.isfinite(case["out"][bad]).any()
    assert np.isnan(grad[bad]).all() and not np.isnan(case["grad_ones"][bad]).all()
    assert_close(FW, case, "out (rows without +inf)", loss[~bad], case["out"][~bad])
    assert_close(FW, case, "grad_ones (rows without +inf)", grad[~bad], case["grad_ones"][~bad])


def diff_float16_accuracy(case, inputs):
    # jax computes float16 in float16: log-probabilities of -1.2e5 overflow to -inf (then
    # 0 * -inf = NaN), and ties lose precision; softmaxce computes in float32, rounds once.
    loss, grad = _call(case, inputs, None)
    ref_loss, ref_grad = _call(case, inputs, None, wide=True)
    assert_close(FW, case, "out (float64 rerun)", loss, rounded(ref_loss, np.float16))
    assert_close(FW, case, "grad (float64 rerun)", grad, rounded(ref_grad, np.float16))
    assert not np.allclose(case["out"], loss, atol=1e-2, equal_nan=True)


DIFFERENCES = {
    "int-label-too-large": diff_out_of_range_label,
    "int-label-negative": diff_out_of_range_label,
    "int-label-too-negative": diff_out_of_range_label,
    "int-extreme-posinf-f16": diff_posinf,
    "int-extreme-posinf-f32": diff_posinf,
    "int-extreme-posinf-f64": diff_posinf,
    "sce-extreme-big-f16": diff_float16_accuracy,
    "int-extreme-big-f16": diff_float16_accuracy,
}


@pytest.mark.parametrize("case", golden_params(FW))
def test_golden(case):
    inputs = readonly_inputs(case)
    if handled(FW, case, inputs, DIFFERENCES, ERRORS, lambda: _call(case, inputs, None)):
        return
    fn = getattr(optax, case["fn"])
    out = fn(inputs["logits"], inputs["labels"], where=inputs.get("where"), **_args(case))
    assert_close(FW, case, "out", out, case["out"])
    loss, grad1 = _call(case, inputs, None)
    assert_close(FW, case, "out (with_grad)", loss, case["out"])
    assert_close(FW, case, "grad_ones", grad1, case["grad_ones"])
    _, grad = _call(case, inputs, case["head"])
    assert_close(FW, case, "grad", grad, case["grad"])
    if case["notes"].get("dtype") != "bfloat16":
        assert np.asarray(out).dtype == case["out"].dtype
        assert grad.dtype == case["grad"].dtype
    count(FW, "compared")


def test_golden_summary():
    print("\n" + summary(FW))


def test_axis_tuple_equals_moved_and_flattened():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4))
    labels = rng.integers(0, 12, size=(2,))
    flat = np.transpose(x, (0, 2, 1)).reshape(2, 12)  # classes ordered as axis=(2, 1)
    np.testing.assert_allclose(
        optax.softmax_cross_entropy_with_integer_labels(x, labels, axis=(2, 1)),
        optax.softmax_cross_entropy_with_integer_labels(flat, labels),
    )
    q = rng.random((2, 3, 4))
    np.testing.assert_allclose(
        optax.softmax_cross_entropy(x, q, axis=(1, 2)),
        optax.softmax_cross_entropy(x.reshape(2, 12), q.reshape(2, 12)),
    )


def test_masked_label_keeps_its_logit():
    # optax: logsumexp over the allowed classes minus the (masked) label's own logit.
    x = np.array([[0.0, 1.0, 2.0]])
    where = np.array([[True, False, True]])
    loss, grad = optax.softmax_cross_entropy_with_integer_labels_with_grad(
        x, np.array([1]), where=where
    )
    lse = np.log(np.exp(0.0) + np.exp(2.0))
    np.testing.assert_allclose(loss, [lse - 1.0])
    p = np.exp(np.array([0.0, -np.inf, 2.0]) - lse)
    np.testing.assert_allclose(grad, [p - np.array([0.0, 1.0, 0.0])])


@pytest.mark.parametrize(
    ("fn", "labels", "kwargs", "exc", "name"),
    [
        ("softmax_cross_entropy_with_integer_labels", np.array([0, 5]), {}, ValueError, "labels"),
        (
            "softmax_cross_entropy_with_integer_labels",
            np.array([0.0, 1.0]),
            {},
            TypeError,
            "labels",
        ),
        (
            "softmax_cross_entropy_with_integer_labels",
            np.array([0, 1]),
            {"axis": None},
            ValueError,
            "axis",
        ),
        ("softmax_cross_entropy", np.zeros((2, 4)), {}, TypeError, "labels"),
        ("softmax_cross_entropy", np.zeros((2, 3)), {"axis": (1, 1)}, ValueError, "axis"),
        ("softmax_cross_entropy", np.zeros((2, 3)), {"where": np.ones((2, 3))}, TypeError, "where"),
    ],
)
def test_bad_input_names_the_argument(fn, labels, kwargs, exc, name):
    x = np.zeros((2, 3))
    assert_raises_named(exc, lambda: getattr(optax, fn)(x, labels, **kwargs), name)


def _live_inputs(kind, masked, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 2, 5)) * 2.0
    x[0, 0, 1] = -np.inf  # optax: a zero label at a -inf logit is NaN (0 * -inf)
    where = rng.random(x.shape) < 0.7 if masked else None
    if masked:
        where[..., 0] = True
        where[0, 0, 1] = True  # (the -inf logit stays in the softmax)
        where[1, 1] = False  # a fully masked example: 0
    if kind == "int":
        labels = rng.integers(0, 5, (6, 2))
        labels[0, 0] = 0
        if masked:  # labels at masked classes keep their logit
            labels[2, 0] = int(np.flatnonzero(~where[2, 0])[0]) if (~where[2, 0]).any() else 0
            where[3, 1, labels[3, 1]] = False
        return x, labels, where
    q = rng.random(x.shape)
    q[0, 0, 1] = 0.0
    return x, q, where


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kind", ["sce", "int"])
def test_live_optax(kind, masked):
    """Values and jax.vjp gradients (random cotangent) of the installed optax, float64: -inf
    logits, fully masked examples, labels at masked classes (skipped without jax/optax)."""
    real = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    x, labels, where = _live_inputs(kind, masked, seed=3 if masked else 4)
    head = np.random.default_rng(5).standard_normal(x.shape[:-1])
    if kind == "int":
        theirs_fn, ours_fn = (
            real.softmax_cross_entropy_with_integer_labels,
            optax.softmax_cross_entropy_with_integer_labels_with_grad,
        )
    else:
        theirs_fn, ours_fn = real.softmax_cross_entropy, optax.softmax_cross_entropy_with_grad
    with jax.enable_x64(True):
        out, vjp = jax.vjp(lambda z: theirs_fn(z, labels, where=where), x)
        (grad,) = vjp(head)
        out, grad = np.asarray(out), np.asarray(grad)
    loss, ours = ours_fn(x, labels, where=where, dloss=head)
    np.testing.assert_allclose(loss, out, rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(ours, grad, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isnan(loss[0, 0]) == (kind == "sce")


@pytest.mark.parametrize(
    ("shape", "axis"),
    [((2, 0), -1), ((0, 2), 0), ((2, 3, 0), (1, 2)), ((2, 0), None)],
    ids=["last", "first", "tuple", "all"],
)
@pytest.mark.parametrize(
    "fn", ["softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"]
)
def test_zero_classes_blames_the_logits_not_the_labels(fn, shape, axis):
    if axis is None and fn != "softmax_cross_entropy":
        return  # the integer version takes no axis=None
    x = np.zeros(shape)
    axes = (axis,) if isinstance(axis, int) else range(len(shape)) if axis is None else axis
    batch = tuple(n for i, n in enumerate(shape) if i not in [a % len(shape) for a in axes])
    labels = np.zeros(shape) if fn == "softmax_cross_entropy" else np.zeros(batch, int)
    with pytest.raises(ValueError, match=r"^logits must have at least one class") as excinfo:
        getattr(optax, fn)(x, labels, axis=axis)
    assert str(shape) in str(excinfo.value) and repr(axis) in str(excinfo.value)
