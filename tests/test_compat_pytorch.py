"""softmaxce.compat.pytorch against torch.nn.functional.cross_entropy: golden and live."""

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

from softmaxce.compat.pytorch import cross_entropy, cross_entropy_with_grad

FW = "pytorch"

# Golden error cases: the exception softmaxce raises (PyTorch's own type in a comment).
ERRORS = {
    "prob-ignore-index-set": ValueError,  # RuntimeError
    "error-target-int32": TypeError,  # RuntimeError "expected target dtype Long or Byte"
    "error-target-out-of-range": ValueError,  # IndexError
    "error-target-negative": ValueError,  # IndexError
    "error-target-shape": ValueError,  # ValueError
    "error-prob-shape": ValueError,  # RuntimeError
    "error-weight-length": ValueError,  # RuntimeError
    "error-reduction": ValueError,  # ValueError
    "error-ls-above-one": ValueError,  # RuntimeError
    "error-int-input": TypeError,  # NotImplementedError
    "error-int-input-prob": TypeError,  # NotImplementedError
}


def _call(case, inputs, head):
    return cross_entropy_with_grad(
        inputs["input"], inputs["target"], inputs.get("weight"), dloss=head, **case["args"]
    )


def _float64_rerun(case, inputs, head):
    """The same call on float64 inputs, rounded to the case's dtype: softmaxce's answer."""
    wide = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in inputs.items()}
    loss, grad = _call(case, wide, None if head is None else head.astype(np.float64))
    dt = inputs["input"].dtype
    return rounded(loss, dt), rounded(grad, dt)


def diff_negative_label_smoothing(case, inputs):
    # PyTorch documents label_smoothing in [0, 1] but accepts -0.1 silently; softmaxce raises.
    assert case["out"] is not None
    assert_raises_named(ValueError, lambda: _call(case, inputs, None), "label_smoothing")


def diff_float16_overflow(case, inputs):
    # PyTorch forms the float16 smoothing sum sum_c (lse - x_c) in float16, which overflows
    # to inf for logits of +-6e4; softmaxce accumulates in float32 and rounds once.
    ours, _ = _call(case, inputs, None)
    ref, _ = _float64_rerun(case, inputs, None)
    assert_close(FW, case, "out (float64 rerun)", ours, ref)
    assert np.isinf(case["out"]).sum() > np.isinf(ours).sum()


DIFFERENCES = {
    "ls-negative": diff_negative_label_smoothing,
    "extreme-big-f16-ls": diff_float16_overflow,
}


@pytest.mark.parametrize("case", golden_params(FW))
def test_golden(case):
    inputs = readonly_inputs(case)
    if handled(FW, case, inputs, DIFFERENCES, ERRORS, lambda: _call(case, inputs, None)):
        return
    out = cross_entropy(inputs["input"], inputs["target"], inputs.get("weight"), **case["args"])
    assert_close(FW, case, "out", out, case["out"])
    loss1, grad1 = _call(case, inputs, None)
    assert_close(FW, case, "out (with_grad)", loss1, case["out"])
    assert_close(FW, case, "grad_ones", grad1, case["grad_ones"])
    head = case["head"] if case["out"].shape else case["head"][()]
    _, grad = _call(case, inputs, head)
    assert_close(FW, case, "grad", grad, case["grad"])
    if case["notes"].get("dtype") != "bfloat16":
        assert np.asarray(out).dtype == case["out"].dtype
        assert grad.dtype == case["grad"].dtype
    count(FW, "compared")


def test_golden_summary():
    print("\n" + summary(FW))


def test_nan_when_everything_is_ignored():
    x = np.zeros((2, 3))
    assert np.isnan(cross_entropy(x, np.array([-100, -100])))
    loss, grad = cross_entropy_with_grad(x, np.array([-100, -100]))
    assert np.isnan(loss) and not grad.any()


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"input": np.zeros((2, 3)), "target": np.array([0, 3])}, ValueError, "target"),
        ({"input": np.zeros((2, 3)), "target": np.array([0, 1], np.int32)}, TypeError, "target"),
        ({"input": np.zeros((2, 3), int), "target": np.array([0, 1])}, TypeError, "input"),
        (
            {"input": np.zeros((2, 3)), "target": np.array([0, 1]), "weight": np.ones(2)},
            ValueError,
            "weight",
        ),
        (
            {"input": np.zeros((2, 3)), "target": np.array([0, 1]), "reduction": "avg"},
            ValueError,
            "reduction",
        ),
        (
            {"input": np.zeros((2, 3)), "target": np.array([0, 1]), "label_smoothing": 2.0},
            ValueError,
            "label_smoothing",
        ),
        (
            {"input": np.zeros((2, 3)), "target": np.zeros((2, 3)), "ignore_index": 0},
            ValueError,
            "ignore_index",
        ),
        ({"input": np.array(1.0), "target": np.array(0)}, ValueError, "input"),
    ],
)
def test_bad_input_names_the_argument(kwargs, exc, name):
    assert_raises_named(exc, lambda: cross_entropy(**kwargs), name)


# --------------------------------------------------------------------------------------------
# Live comparison with torch 2.13 (skipped where torch is not installed)
# --------------------------------------------------------------------------------------------


def _live_grid():
    shapes = [(4, 5), (2, 3, 4), (2, 3, 2, 2), (5,), (0, 3), (3, 1)]
    for shape, soft, weight, ls, red, dk, special in itertools.product(
        shapes,
        [False, True],
        [None, "rand", "zeros"],
        [0.0, 0.3],
        ["none", "sum", "mean"],
        ["float32", "float64"],
        ["plain", "ignore", "neginf"],
    ):
        if soft and special == "ignore":
            continue
        # Keep the grid small: float32 on two shapes, the odd shapes without extras.
        if dk == "float32" and (weight == "zeros" or shape not in ((4, 5), (2, 3, 4))):
            continue
        if shape in ((0, 3), (3, 1), (2, 3, 2, 2)) and (special != "plain" or ls):
            continue
        if weight == "zeros" and (red == "sum" or special == "neginf"):
            continue
        yield shape, soft, weight, ls, red, dk, special


def _live_case(shape, soft, weight, ls, red, dk, special):
    """(x, t, w, head) of one grid point, NumPy."""
    rng = np.random.default_rng(abs(hash((shape, soft, weight, ls, red, dk, special))) % 2**32)
    cdim = 0 if len(shape) == 1 else 1
    c = shape[cdim]
    x = (rng.standard_normal(shape) * 3).astype(dk)
    if special == "neginf" and x.size:
        x[rng.random(shape) < 0.3] = -np.inf
        np.moveaxis(x, cdim, -1)[..., 0] = 0.5  # every row keeps a finite class
    tshape = shape[:cdim] + shape[cdim + 1 :]
    if soft:
        q = rng.random(shape)
        q[rng.random(shape) < 0.3] = 0.0
        t = q.astype(dk)
    else:
        t = rng.integers(0, c, size=tshape)
        if special == "ignore" and t.size:
            t[rng.random(tshape) < 0.5] = -100
    w = {None: None, "rand": rng.uniform(0.1, 2.0, c), "zeros": np.zeros(c)}[weight]
    if w is not None:
        w = w.astype(dk)
    head = rng.standard_normal(tshape if red == "none" else ()).astype(dk)
    return x, t, w, head


def _torch_reference(x, t, w, head, red, ls):
    """F.cross_entropy's loss and autograd gradient, as NumPy arrays."""
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(x.copy()).requires_grad_()
    wt = None if w is None else torch.from_numpy(w.copy())
    ref = torch.nn.functional.cross_entropy(
        xt, torch.from_numpy(t.copy()), wt, reduction=red, label_smoothing=ls
    )
    ref.backward(torch.from_numpy(np.array(head)))
    return ref.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize(
    ("shape", "soft", "weight", "ls", "red", "dk", "special"),
    list(_live_grid()),
)
def test_live_torch(shape, soft, weight, ls, red, dk, special):
    x, t, w, head = _live_case(shape, soft, weight, ls, red, dk, special)
    ref_loss, ref_grad = _torch_reference(x, t, w, head, red, ls)
    loss, grad = cross_entropy_with_grad(x, t, w, reduction=red, label_smoothing=ls, dloss=head)
    rtol, atol = (2e-5, 2e-6) if dk == "float32" else (1e-10, 1e-12)
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=atol, equal_nan=True)
    np.testing.assert_allclose(grad, ref_grad, rtol=rtol, atol=atol, equal_nan=True)
    assert grad.dtype == x.dtype and np.asarray(loss).dtype == x.dtype


def _torch_row_on_tensors(x, t, w, head, red, ls):
    """The "torch" row of the semantics table run by the core on torch tensors: the path of
    softmaxce.torch(semantics="torch") off the CPU kernels, and of its double backward."""
    torch = pytest.importorskip("torch")
    from softmaxce._options import loss_options
    from softmaxce._problem import prepare
    from softmaxce._run import run

    opts = loss_options(reduction=red, label_smoothing=ls, semantics="torch")

    def as_t(a):
        return None if a is None else torch.from_numpy(np.array(a))

    problem = prepare(as_t(x), as_t(t), opts, axis=0 if x.ndim == 1 else 1, weight=as_t(w))
    loss, grad = run(problem, want_grad=True, dloss=as_t(head))
    return loss.numpy(), grad.numpy()


@pytest.mark.parametrize(
    ("shape", "soft", "weight", "ls", "red", "dk", "special"),
    [case for case in _live_grid() if case[5] == "float64"],
)
def test_live_torch_row_of_the_table_on_torch_tensors(shape, soft, weight, ls, red, dk, special):
    x, t, w, head = _live_case(shape, soft, weight, ls, red, dk, special)
    ref_loss, ref_grad = _torch_reference(x, t, w, head, red, ls)
    loss, grad = _torch_row_on_tensors(x, t, w, head, red, ls)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-12, equal_nan=True)


def test_issue_10_example_is_nan_in_torch_and_in_every_path_of_the_torch_row():
    """x=[[0,-inf,1],[nan,0,1]], t=[0,-100], weight=[1,0,1], label_smoothing=0.1: PyTorch gives
    NaN (0 * log 0 at the weight-0 class with the -inf logit); so does the one "torch" row,
    through compat.pytorch and through the core on torch tensors."""
    x = np.array([[0.0, -np.inf, 1.0], [np.nan, 0.0, 1.0]])
    t = np.array([0, -100])
    w = np.array([1.0, 0.0, 1.0])
    loss, grad = cross_entropy_with_grad(x, t, w, label_smoothing=0.1)
    assert np.isnan(loss) and np.isnan(cross_entropy(x, t, w, label_smoothing=0.1))
    ref_loss, ref_grad = _torch_reference(x, t, w, np.array(1.0), "mean", 0.1)
    assert np.isnan(ref_loss)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, equal_nan=True)
    on_tensors = _torch_row_on_tensors(x, t, w, np.array(1.0), "mean", 0.1)
    assert np.isnan(on_tensors[0])
    np.testing.assert_allclose(on_tensors[1], ref_grad, rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("dk", ["float32", "float64"])
def test_live_torch_large(soft, dk):
    """Large enough (N * C >= 4096) for the dispatcher to pick the fused kernel when numba is
    installed; negative weights, ignore_index and label smoothing together."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 97)).astype(dk)
    if soft:
        t = rng.random((64, 97)).astype(dk)
    else:
        t = rng.integers(0, 97, 64)
        t[::5] = -100
    w = rng.uniform(-0.5, 2.0, 97).astype(dk)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    ref = torch.nn.functional.cross_entropy(
        xt, torch.from_numpy(t), torch.from_numpy(w), label_smoothing=0.15
    )
    ref.backward(torch.tensor(0.5, dtype=xt.dtype))
    loss, grad = cross_entropy_with_grad(x, t, w, label_smoothing=0.15, dloss=0.5)
    rtol, atol = (1e-5, 1e-6) if dk == "float32" else (1e-10, 1e-12)
    np.testing.assert_allclose(loss, ref.item(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------------
# issue 9
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("red", ["none", "sum", "mean"])
def test_full_label_smoothing_with_the_label_at_minus_inf_is_nan_as_torch(red, weighted):
    # PyTorch forms (1 - eps) * nll_loss: with eps = 1 and the label's logit -inf that is
    # 0 * inf = NaN (not inf); the other row, and every gradient, stay finite.
    x = np.array([[-np.inf, 0.0, 1.0], [0.5, 0.2, 0.1], [-np.inf, 0.3, 0.0]])
    t = np.array([0, 1, -100])  # the third row is ignored: no NaN from it
    w = np.array([1.0, 2.0, 3.0]) if weighted else None
    loss, grad = cross_entropy_with_grad(x, t, w, reduction=red, label_smoothing=1.0)
    if red == "none":
        assert np.isnan(loss[0]) and np.isfinite(loss[1]) and loss[2] == 0
    else:
        assert np.isnan(loss)
    assert np.all(np.isfinite(grad))
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(x.copy()).requires_grad_()
    wt = None if w is None else torch.from_numpy(w)
    ref = torch.nn.functional.cross_entropy(
        xt, torch.from_numpy(t), wt, reduction=red, label_smoothing=1.0
    )
    ref.sum().backward()
    np.testing.assert_allclose(loss, ref.detach().numpy(), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("ignore", [2**63, -(2**63) - 1, np.uint64(2**64 - 1)], ids=str)
def test_ignore_index_outside_int64_ignores_nothing(ignore):
    # torch itself cannot take such an ignore_index (an int64 argument); no label equals it.
    # 64 x 97 logits: large enough for "auto" to pick the numba kernel where it is installed.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 97))
    t = rng.integers(0, 97, 64)
    want = cross_entropy_with_grad(x, t)
    got = cross_entropy_with_grad(x, t, ignore_index=ignore)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
