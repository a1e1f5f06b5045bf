"""softmaxce.compat.mxnet against MXNet 1.9.1 ``SoftmaxOutput`` (golden files)."""

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
    summary,
)

from softmaxce.compat.mxnet import SoftmaxOutput, SoftmaxOutput_with_grad

FW = "mxnet"

# Golden error cases: the exception softmaxce raises (MXNet raises MXNetError for all).
ERRORS = {
    "nd3-flatten-label-d1": ValueError,  # label shape is data.shape[:-1]
    "preserve-and-multi-label-preserve": ValueError,
    "error-label-shape": ValueError,
    "error-label-shape-multi": ValueError,
    "error-label-dtype": TypeError,  # float32 label for float64 data
}


def _call(case, inputs, ograd=None):
    return SoftmaxOutput_with_grad(inputs["data"], inputs["label"], ograd=ograd, **case["args"])


def diff_smoothing_one_class(case, inputs):
    # With C = 1, MXNet's smoothing (alpha / (C - 1) for the other classes) is undefined; its
    # backward returns grad_scale * alpha / norm, which is no gradient of anything (the softmax
    # of one class is constant). softmaxce raises ValueError naming smooth_alpha.
    assert inputs["data"].shape[1] == 1 and case["args"]["smooth_alpha"] > 0
    assert_raises_named(ValueError, lambda: _call(case, inputs), "smooth_alpha")


DIFFERENCES = {
    "2d-C1-ign-null-sa0.2": diff_smoothing_one_class,
    "2d-C1-ign-batch-sa0.2": diff_smoothing_one_class,
    "2d-C1-ign-valid-sa0.2": diff_smoothing_one_class,
}


@pytest.mark.parametrize("case", golden_params(FW))
def test_golden(case):
    inputs = readonly_inputs(case)
    if handled(FW, case, inputs, DIFFERENCES, ERRORS, lambda: _call(case, inputs)):
        return
    out = SoftmaxOutput(inputs["data"], inputs["label"], **case["args"])
    assert_close(FW, case, "out", out, case["out"])
    assert out.dtype == case["out"].dtype
    # MXNet ignores the head gradient: grad == grad_ones in every golden case.
    np.testing.assert_array_equal(case["grad"], case["grad_ones"])
    head = case["head"]
    if case["args"].get("out_grad"):
        # MXNet 1.9.1 multiplies the gradient by its own forward output instead of the head
        # gradient (a bug; MXNet documents the head). softmaxce follows the documentation, so
        # passing ograd=<1.9.1's output> reproduces 1.9.1's numbers exactly,
        out1, grad_191 = _call(case, inputs, ograd=case["out"])
        assert_close(FW, case, "grad (ograd = 1.9.1's output)", grad_191, case["grad"])
        # ... and with the real head gradient ograd the result is the plain gradient * ograd.
        _, plain = _call(case, inputs)
        _, with_head = _call(case, inputs, ograd=head)
        np.testing.assert_allclose(with_head, (plain * head).astype(plain.dtype), rtol=1e-6)
    else:
        # MXNet's grad_scale and smooth_alpha are float32 parameters, and it forms
        # grad_scale / norm and smooth_alpha / (C - 1) in float32, also for float64 data:
        # compare float64 gradients that use them at float32 precision.
        args = case["args"]
        tol = None
        if inputs["data"].dtype == np.float64 and (
            args.get("smooth_alpha")
            or args.get("grad_scale", 1.0) != 1.0
            or args.get("normalization", "null") != "null"
        ):
            tol = "float32"
        out1, grad1 = _call(case, inputs)
        assert_close(FW, case, "grad_ones", grad1, case["grad_ones"], dtype=tol)
        _, grad = _call(case, inputs, ograd=head)  # ignored, as MXNet with out_grad=False
        assert_close(FW, case, "grad", grad, case["grad"], dtype=tol)
        assert grad.dtype == case["grad"].dtype
    np.testing.assert_array_equal(out1, out)
    count(FW, "compared")


def test_golden_summary():
    print("\n" + summary(FW))


def test_documented_example():
    # MXNet's SoftmaxOutput docstring: multi_output, use_ignore, ignore_label=1.
    data = np.array([[1, 2, 3, 4], [2, 2, 2, 2], [3, 3, 3, 3], [4, 4, 4, 4]], np.float32)
    label = np.array([1, 0, 2, 3], np.float32)
    out, grad = SoftmaxOutput_with_grad(
        data, label, multi_output=True, use_ignore=True, ignore_label=1
    )
    doc_out = [[0.0320586, 0.08714432, 0.23688284, 0.64391428]] + [[0.25] * 4] * 3
    doc_grad = [
        [0.0] * 4,
        [-0.75, 0.25, 0.25, 0.25],
        [0.25, 0.25, -0.75, 0.25],
        [0.25, 0.25, 0.25, -0.75],
    ]
    # MXNet's printed float32 values; ours may round each exponential and the row sum in
    # another order (numba kernel or NumPy): a few float32 ulps.
    tol = 4 * np.finfo(np.float32).eps
    np.testing.assert_allclose(out, doc_out, rtol=tol, atol=tol)
    np.testing.assert_array_equal(grad, np.array(doc_grad, np.float32))


def test_smoothing_maps_onto_the_core():
    # gold 1 - alpha, others alpha / (C - 1): the gradient is p - q for that q.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5))
    label = np.array([0, 4, 2])
    _, grad = SoftmaxOutput_with_grad(x, label, smooth_alpha=0.2)
    q = np.full((3, 5), 0.2 / 4)
    q[np.arange(3), label] = 0.8
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    np.testing.assert_allclose(grad, p - q, rtol=1e-12, atol=1e-14)


def test_valid_normalization_counts_ignore_label_without_use_ignore():
    x = np.zeros((4, 3))
    label = np.array([2, 2, 0, 1])
    _, grad = SoftmaxOutput_with_grad(x, label, ignore_label=2, normalization="valid")
    _, plain = SoftmaxOutput_with_grad(x, label)
    np.testing.assert_allclose(grad, plain / 2)  # two labels differ from ignore_label


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"label": np.array([0.0, 3.0])}, ValueError, "label"),
        ({"label": np.array([0.0, 1.0, 2.0])}, ValueError, "label"),
        ({"label": np.array([0.0, 1.0], np.float32)}, TypeError, "label"),
        ({"label": np.array([0, 1]), "normalization": "mean"}, ValueError, "normalization"),
        ({"label": np.array([0, 1]), "smooth_alpha": 0.9}, ValueError, "smooth_alpha"),
        ({"label": np.array([0, 1]), "grad_scale": "2"}, TypeError, "grad_scale"),
    ],
)
def test_bad_input_names_the_argument(kwargs, exc, name):
    data = np.zeros((2, 3))
    assert_raises_named(exc, lambda: SoftmaxOutput_with_grad(data, **kwargs), name)


# --- issue 9: empty inputs, C = 0, labels beyond the integers ---------------------------------


@pytest.mark.parametrize("normalization", ["null", "batch", "valid"])
@pytest.mark.parametrize(
    ("shape", "label_shape", "kwargs"),
    [
        ((0, 3), (0,), {}),
        ((0, 3), (0,), {"preserve_shape": True}),
        ((0, 3, 2), (0, 2), {"multi_output": True}),
        ((2, 3, 0), (2, 0), {"multi_output": True}),  # zero spatial size
        ((2, 3, 0, 4), (2, 0, 4), {"multi_output": True}),
    ],
    ids=["empty-batch", "empty-batch-preserve", "empty-batch-multi", "multi-spatial-0",
         "multi-spatial-0x4"],
)
def test_no_element_gives_an_empty_gradient_not_zero_division(shape, label_shape, kwargs,
                                                               normalization):
    # MXNet divides grad_scale by the count in floating point: a count of 0 only happens when
    # data has no element, and the scaled gradient is then empty.
    data = np.zeros(shape, np.float32)
    out, grad = SoftmaxOutput_with_grad(
        data, np.zeros(label_shape, np.float32), normalization=normalization, **kwargs
    )
    assert out.shape == grad.shape == shape
    assert out.dtype == grad.dtype == np.float32


@pytest.mark.parametrize(
    ("shape", "kwargs", "where"),
    [
        ((2, 0), {}, "shape[1:]"),
        ((2, 3, 0), {"preserve_shape": True}, "last axis"),
        ((2, 0, 3), {"multi_output": True}, "axis 1"),
    ],
    ids=["default", "preserve_shape", "multi_output"],
)
def test_zero_classes_names_data_and_its_class_axis(shape, kwargs, where):
    label = np.zeros(shape[:-1] if not kwargs.get("multi_output") else (2, 3))
    with pytest.raises(ValueError, match=r"^data must have at least one class") as excinfo:
        SoftmaxOutput_with_grad(np.zeros(shape), label, **kwargs)
    assert where in str(excinfo.value) and str(shape) in str(excinfo.value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [1e30, -1e30, np.nan, np.inf])
def test_label_beyond_the_integers_is_reported_as_given(bad, dtype):
    # (it was cast to int64 first: -9223372036854775808 and a RuntimeWarning)
    label = np.array([[0, 1], [2, bad]], dtype)
    with pytest.raises(ValueError, match=r"^label must hold class indices in \[0, 3\)") as excinfo:
        SoftmaxOutput_with_grad(np.zeros((2, 2, 3), dtype), label, preserve_shape=True)
    assert f"got {dtype(bad)} at position (1, 1)" in str(excinfo.value)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_ignore_label_beyond_the_integers_ignores_equal_labels_only(dtype):
    data = np.random.default_rng(3).normal(size=(4, 3)).astype(dtype)
    label = np.array([0, 2, 1, 2], dtype)
    kwargs = {"use_ignore": True, "normalization": "valid"}
    _, plain = SoftmaxOutput_with_grad(data, label, normalization="valid")
    _, grad = SoftmaxOutput_with_grad(data, label, ignore_label=1e30, **kwargs)
    np.testing.assert_array_equal(grad, plain)  # nothing equals it: nothing ignored
    if dtype == np.float16:
        return  # float16 cannot hold the label 1e30
    label[2] = 1e30
    _, grad = SoftmaxOutput_with_grad(data, label, ignore_label=1e30, **kwargs)
    _, want = SoftmaxOutput_with_grad(data, np.array([0, 2, -1, 2], dtype), **kwargs)
    np.testing.assert_array_equal(grad, want)  # the same as any other ignored label
    assert not grad[2].any()
