"""softmaxce.compat.mygrad against mygrad.nnet.losses.softmax_crossentropy: golden and live."""

from __future__ import annotations

import itertools

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

from softmaxce.compat.mygrad import softmax_crossentropy, softmax_crossentropy_with_grad

FW = "mygrad"

# Golden error cases: the exception softmaxce raises (mygrad's own in a comment).
ERRORS = {
    "error-x-1d": ValueError,
    "error-x-3d": ValueError,
    "error-x-0d": ValueError,
    "error-y-2d": ValueError,
    "error-y-0d": ValueError,
    "error-y-float": TypeError,
    "error-y-bool": TypeError,
    "error-n-mismatch": ValueError,
    "error-n-mismatch-long": ValueError,
    "error-label-too-large": ValueError,  # IndexError from NumPy indexing
    "error-label-too-negative": ValueError,  # IndexError from NumPy indexing
}


def _call(case, inputs, head):
    return softmax_crossentropy_with_grad(inputs["x"], inputs["y_true"], dloss=head, **case["args"])


def diff_negative_label(case, inputs):
    # mygrad indexes with the label, so -1 silently means the last class; softmaxce raises.
    assert np.isfinite(case["out"])
    assert_raises_named(ValueError, lambda: _call(case, inputs, None), "y_true")


def diff_posinf(case, inputs):
    # A +inf score: mygrad gives loss +inf and a NaN gradient only at the +inf entry;
    # softmaxce gives NaN (README, non-finite logits: NaN or +inf in a row give a NaN
    # loss) and a NaN gradient row. The other rows agree.
    loss, grad = _call(case, inputs, None)
    assert np.isnan(loss) and np.isposinf(case["out"])
    bad = np.isposinf(inputs["x"]).any(axis=1)
    assert np.isnan(grad[bad]).all()
    assert_close(FW, case, "grad_ones (rows without +inf)", grad[~bad], case["grad_ones"][~bad])


def diff_float16_accuracy(case, inputs):
    # mygrad computes float16 scores in float16: logsumexp(6e4, 6e4) rounds to 6e4, so two
    # tied classes get probability 1 each. softmaxce computes in float32 and rounds once.
    loss, grad = _call(case, inputs, None)
    ref_loss, ref_grad = softmax_crossentropy_with_grad(
        inputs["x"].astype(np.float64), inputs["y_true"]
    )
    assert_close(FW, case, "out (float64 rerun)", loss, rounded(ref_loss, np.float16))
    assert_close(FW, case, "grad (float64 rerun)", grad, rounded(ref_grad, np.float16))
    assert not np.allclose(case["grad_ones"], grad, atol=1e-2)


DIFFERENCES = {
    "label-negative": diff_negative_label,
    "extreme-posinf-f16": diff_posinf,
    "extreme-posinf-f32": diff_posinf,
    "extreme-posinf-f64": diff_posinf,
    "extreme-big-f16": diff_float16_accuracy,
}


@pytest.mark.parametrize("case", golden_params(FW))
def test_golden(case):
    inputs = readonly_inputs(case)
    if handled(FW, case, inputs, DIFFERENCES, ERRORS, lambda: _call(case, inputs, None)):
        return
    out = softmax_crossentropy(inputs["x"], inputs["y_true"], **case["args"])
    assert_close(FW, case, "out", out, case["out"])
    assert np.asarray(out).dtype == case["out"].dtype
    loss, grad1 = _call(case, inputs, None)
    assert_close(FW, case, "out (with_grad)", loss, case["out"])
    if case["notes"].get("no_grad"):
        # mygrad gives no gradient: constant=True (softmaxce returns None too), or integer
        # scores, which mygrad treats as constants (softmaxce promotes them to float64 and
        # returns the gradient; see docs/compat/mygrad.md).
        if case["args"].get("constant"):
            assert grad1 is None
        else:
            _, ref = softmax_crossentropy_with_grad(
                inputs["x"].astype(np.float64), inputs["y_true"]
            )
            np.testing.assert_array_equal(grad1, ref)
        count(FW, "compared")
        return
    assert_close(FW, case, "grad_ones", grad1, case["grad_ones"])
    _, grad = _call(case, inputs, case["head"][()])
    assert_close(FW, case, "grad", grad, case["grad"])
    assert grad.dtype == case["grad"].dtype
    count(FW, "compared")


def test_golden_summary():
    print("\n" + summary(FW))


def test_docstring_example():
    x = np.array([[2.0, 2.0, 2.0], [0.0, 0.0, 1e6]])
    assert round(float(softmax_crossentropy(x, np.array([0, 2]))), 8) == 0.54930614
    assert round(float(softmax_crossentropy(x[:1], np.array([0]))), 8) == 1.09861229


@pytest.mark.parametrize(
    ("x", "y", "exc", "name"),
    [
        (np.zeros(3), np.array([0]), ValueError, "x"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), TypeError, "y_true"),
        (np.zeros((2, 3)), np.array([0, 1, 2]), ValueError, "y_true"),
        (np.zeros((2, 3)), np.array([0, 3]), ValueError, "y_true"),
        (np.zeros((2, 3)), np.array([0, -1]), ValueError, "y_true"),
    ],
)
def test_bad_input_names_the_argument(x, y, exc, name):
    assert_raises_named(exc, lambda: softmax_crossentropy(x, y), name)


@pytest.mark.parametrize(
    ("n", "c", "dk", "kind"),
    list(
        itertools.product(
            [1, 3, 8], [1, 2, 5, 37], ["float32", "float64"], ["normal", "big", "neginf"]
        )
    ),
)
def test_live_mygrad(n, c, dk, kind):
    mg = pytest.importorskip("mygrad")
    from mygrad.nnet.losses import softmax_crossentropy as reference

    rng = np.random.default_rng(n * 1000 + c * 10 + len(kind))
    x = rng.standard_normal((n, c)) * (1e5 if kind == "big" else 2.0)
    if kind == "neginf" and c > 1:
        x[:, 1:][rng.random((n, c - 1)) < 0.4] = -np.inf
    x = x.astype(dk)
    y = rng.integers(0, c, size=n)
    if kind == "neginf":
        y[:] = 0  # the label's score stays finite
    head = np.asarray(rng.standard_normal(), dtype=dk)
    xt = mg.Tensor(x.copy())
    ref = reference(xt, y)
    ref.backward(head)
    loss, grad = softmax_crossentropy_with_grad(x, y, dloss=head)
    rtol, atol = (2e-5, 2e-6) if dk == "float32" else (1e-10, 1e-12)
    np.testing.assert_allclose(loss, ref.data, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, xt.grad, rtol=rtol, atol=atol)
    assert loss.dtype == ref.data.dtype and grad.dtype == xt.grad.dtype
