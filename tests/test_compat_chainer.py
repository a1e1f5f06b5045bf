"""softmaxce.compat.chainer against chainer.functions.softmax_cross_entropy (golden files)."""

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

import softmaxce
from softmaxce.compat.chainer import softmax_cross_entropy, softmax_cross_entropy_with_grad

FW = "chainer"

# Golden error cases: the exception softmaxce raises (Chainer's own in a comment).
ERRORS = {
    "label-negative-not-ignored-debug": ValueError,  # ValueError (debug mode)
    "label-too-large-debug": ValueError,  # ValueError (debug mode)
    "error-reduce-sum": ValueError,
    "error-soft-target-loss": ValueError,
    "error-t-shape": ValueError,  # type_check failure (RuntimeError in 7.8.1)
    "error-t-ndim": ValueError,  # type_check failure
    "error-soft-shape": ValueError,  # type_check failure
    "error-x-int": TypeError,  # type_check failure
    "error-classweight-int": ValueError,
    "error-classweight-2d": ValueError,
}


def _call(case, inputs, head, **override):
    args = dict(case["args"], **override)
    return softmax_cross_entropy_with_grad(
        inputs["x"], inputs["t"], class_weight=inputs.get("class_weight"), dloss=head, **args
    )


def _head(case):
    return case["head"] if case["out"].shape else case["head"][()]


def _chainer_soft_grad(case, inputs, head):
    """Chainer's backward for soft targets: coeff * head * (p - t), with the target entries
    equal to ignore_label set to 0 (``t * (t != ignore_label)``)."""
    x = inputs["x"].astype(np.float64)
    t = inputs["t"].astype(np.float64)
    t = np.where(t == case["args"].get("ignore_label", -1), 0.0, t)
    g = softmaxce.softmax(x, axis=1) - t
    if case["args"].get("reduce", "mean") == "mean":
        return g * head * x.shape[1] / x.size
    return g * np.expand_dims(head, 1)


def _numerical_grad(case, inputs, head):
    """Central differences of sum(head * loss) in float64: the exact gradient."""
    t = inputs["t"].astype(np.float64)

    def f(z):
        return np.sum(
            np.asarray(head, np.float64) * _call(case, {**inputs, "t": t, "x": z}, None)[0]
        )

    return softmaxce.numerical_gradient(f, inputs["x"].astype(np.float64))


def diff_soft_gradient(case, inputs):
    # Chainer's backward for soft targets is p - t (and drops entries equal to ignore_label),
    # the gradient only when every target row sums to 1; softmaxce returns the exact gradient
    # (sum_c t_c) p - t. The values agree; Chainer's gradient is p - t; ours is the finite
    # difference gradient.
    out = softmax_cross_entropy(inputs["x"], inputs["t"], **case["args"])
    assert_close(FW, case, "out", out, case["out"])
    head = _head(case)
    assert_close(
        FW, case, "golden grad vs p - t", _chainer_soft_grad(case, inputs, head), case["grad"]
    )
    _, ours = _call(case, inputs, head)
    np.testing.assert_allclose(ours, _numerical_grad(case, inputs, head), rtol=1e-4, atol=1e-5)
    assert not np.allclose(ours, case["grad"], rtol=1e-3, atol=1e-4)


def diff_backward_bug(case, inputs):
    # Chainer's forward works but its backward raises (an empty batch; a float64 soft target
    # for float32 x); softmaxce returns the value and a gradient of x's dtype.
    assert case["error"]["stage"] == "backward"
    assert_close(
        FW,
        case,
        "out",
        softmax_cross_entropy(inputs["x"], inputs["t"], **case["args"]),
        case["out"],
    )
    _, grad = _call(case, inputs, None)
    assert grad.dtype == inputs["x"].dtype and grad.shape == inputs["x"].shape


def diff_soft_double_backprop(case, inputs):
    # Chainer's enable_double_backprop=True path takes only integer labels (InvalidType for a
    # soft target); softmaxce's enable_double_backprop changes no value.
    assert case["error"]["type"] == "InvalidType"
    plain = softmax_cross_entropy(inputs["x"], inputs["t"])
    assert softmax_cross_entropy(inputs["x"], inputs["t"], **case["args"]) == plain


def diff_negative_label(case, inputs):
    # Outside chainer.is_debug(), Chainer does not check labels and NumPy indexing wraps -2 to
    # class C-2; softmaxce always checks, as Chainer's debug mode does.
    assert np.isfinite(case["out"]).all()
    assert_raises_named(ValueError, lambda: _call(case, inputs, None), "t")


def diff_float16_accuracy(case, inputs):
    # Chainer computes float16 in float16 (logsumexp(6e4, 6e4) rounds to 6e4); softmaxce in
    # float32, rounded once: the same as its float64 result rounded to float16.
    loss, grad = _call(case, inputs, None)
    wide = {**inputs, "x": inputs["x"].astype(np.float64)}
    ref_loss, ref_grad = _call(case, wide, None)
    assert_close(FW, case, "out (float64 rerun)", loss, rounded(ref_loss, np.float16))
    assert_close(FW, case, "grad (float64 rerun)", grad, rounded(ref_grad, np.float16))
    assert not np.allclose(case["grad_ones"], grad, atol=1e-2)


DIFFERENCES = {
    "empty-batch-edb0": diff_backward_bug,
    "soft-f32-x-f64-t": diff_backward_bug,
    "soft-edb": diff_soft_double_backprop,
    "label-negative-not-ignored": diff_negative_label,
    "extreme-big-f16-edb0": diff_float16_accuracy,
    "extreme-big-f16-edb1": diff_float16_accuracy,
}


def _soft_rows_sum_to_one(case):
    t = case["inputs"]["t"]
    if t.dtype.kind != "f":
        return True
    if (t == case["args"].get("ignore_label", -1)).any():
        return False  # Chainer's backward drops those entries
    atol = 2e-3 if t.dtype == np.float16 else 1e-6  # float16 targets sum to 1 +- rounding
    return bool(np.allclose(t.astype(np.float64).sum(axis=1), 1.0, atol=atol))


@pytest.mark.parametrize("case", golden_params(FW))
def test_golden(case):
    inputs = readonly_inputs(case)
    if handled(FW, case, inputs, DIFFERENCES, ERRORS, lambda: _call(case, inputs, None)):
        return
    if not _soft_rows_sum_to_one(case):
        diff_soft_gradient(case, inputs)
        count(FW, "differences")
        return
    out = softmax_cross_entropy(
        inputs["x"], inputs["t"], class_weight=inputs.get("class_weight"), **case["args"]
    )
    assert_close(FW, case, "out", out, case["out"])
    assert np.asarray(out).dtype == case["out"].dtype
    loss, grad1 = _call(case, inputs, None)
    assert_close(FW, case, "out (with_grad)", loss, case["out"])
    assert_close(FW, case, "grad_ones", grad1, case["grad_ones"])
    _, grad = _call(case, inputs, _head(case))
    assert_close(FW, case, "grad", grad, case["grad"])
    assert grad.dtype == case["grad"].dtype
    count(FW, "compared")


def test_golden_summary():
    print("\n" + summary(FW))


def test_documented_example():
    # Chainer's docstring: x = [[-1, 0, 1, 2], [2, 0, 1, -1]], t = [3, 0] -> 0.44018972
    # (float32). The exact value is 0.4401896986; float32 results may differ in the last
    # unit or two (Chainer's is 1 ulp above the correctly rounded 0.4401897).
    x = np.array([[-1, 0, 1, 2], [2, 0, 1, -1]]).astype(np.float32)
    t = np.array([3, 0]).astype(np.int32)
    loss = softmax_cross_entropy(x, t)
    assert loss.dtype == np.float32
    assert round(float(loss), 7) == round(0.44018972, 7) == 0.4401897
    assert abs(float(loss) - 0.44018972) <= 3 * np.spacing(np.float32(0.44))
    exact = softmax_cross_entropy(x.astype(np.float64), t)
    assert round(float(exact), 8) == 0.4401897


def test_soft_gradient_is_exact_for_unnormalised_rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 2))
    t = rng.random((3, 4, 2)) * 0.7  # rows sum to anything but 1
    for loss_kind in ("cross-entropy", "kl-divergence"):

        def f(z, kind=loss_kind):
            return softmax_cross_entropy(z, t, soft_target_loss=kind)

        def g(z, kind=loss_kind):
            return softmax_cross_entropy_with_grad(z, t, soft_target_loss=kind)[1]

        assert softmaxce.gradcheck(f, g, x)


def test_all_ignored_gives_zero():
    x = np.zeros((2, 3), np.float32)
    loss, grad = softmax_cross_entropy_with_grad(x, np.array([-1, -1], np.int32))
    assert loss == 0 and not grad.any()


def test_cache_score_and_double_backprop_change_nothing():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    t = np.array([0, 2, -1, 1], np.int32)
    ref = softmax_cross_entropy_with_grad(x, t)
    for kw in ({"cache_score": False}, {"enable_double_backprop": True}):
        loss, grad = softmax_cross_entropy_with_grad(x, t, **kw)
        assert loss == ref[0]
        np.testing.assert_array_equal(grad, ref[1])


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"t": np.array([0, 3], np.int32)}, ValueError, "t"),
        ({"t": np.array([0, 1], np.uint8)}, TypeError, "t"),
        ({"t": np.zeros((2, 2))}, ValueError, "t"),
        ({"t": np.array([0, 1], np.int32), "reduce": "sum"}, ValueError, "reduce"),
        ({"t": np.array([0, 1], np.int32), "class_weight": np.ones(2)}, ValueError, "class_weight"),
        (
            {"t": np.array([0, 1], np.int32), "class_weight": np.ones(3, int)},
            ValueError,
            "class_weight",
        ),
        (
            {"t": np.array([0, 1], np.int32), "soft_target_loss": "kl"},
            ValueError,
            "soft_target_loss",
        ),
    ],
)
def test_bad_input_names_the_argument(kwargs, exc, name):
    x = np.zeros((2, 3), np.float32)
    assert_raises_named(exc, lambda: softmax_cross_entropy(x, **kwargs), name)


@pytest.mark.parametrize("ignore", [2**63, -(2**63) - 1], ids=str)
def test_ignore_label_outside_int64_ignores_nothing(ignore):
    rng = np.random.default_rng(4)  # 64 x 97: "auto" picks the numba kernel where installed
    x = rng.normal(size=(64, 97)).astype(np.float32)
    t = rng.integers(0, 97, 64).astype(np.int32)
    want = softmax_cross_entropy_with_grad(x, t)
    got = softmax_cross_entropy_with_grad(x, t, ignore_label=ignore)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError, match=r"\bt must hold class indices in \[0, 97\); got -1"):
        softmax_cross_entropy(x, np.where(t == t[1], -1, t), ignore_label=ignore)
