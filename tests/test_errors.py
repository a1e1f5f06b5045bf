"""README (bad input): every bad input raises ValueError or TypeError whose message names the
argument (and, for labels, the bad value and its position); never a bare IndexError."""

from __future__ import annotations

import re

import numpy as np
import pytest

import softmaxce as sc
from softmaxce import ops

# The checks of every array library (the numba kernels see only validated NumPy arrays)
pytestmark = pytest.mark.impls("numpy-core", "torch", "jax", "array-api-strict")

X = np.random.default_rng(0).normal(size=(4, 3))
P = np.full((4, 3), 1 / 3)
T = np.array([0, 2, 1, 2])
Y = np.full((4, 3), 1 / 3)


def fused(impl=sc, x=X, t=T, **kw):
    return impl.softmax_cross_entropy(x, t, **kw)


def fused_grad(impl=sc, x=X, t=T, **kw):
    return impl.softmax_cross_entropy_with_grad(x, t, **kw)


def ce(impl=sc, p=P, t=T, **kw):
    return impl.cross_entropy(p, t, **kw)


def ce_vjp(impl=sc, p=P, t=T, **kw):
    dloss = kw.pop("dloss", 1.0)
    return impl.cross_entropy_vjp(p, t, dloss, **kw)


FUSED = [fused, fused_grad]
TARGETED = [fused, fused_grad, ce, ce_vjp]
FUSED_IDS = ["softmax_cross_entropy", "with_grad"]
TARGETED_IDS = [*FUSED_IDS, "cross_entropy", "cross_entropy_vjp"]


def _not_index_error(excinfo):
    assert not (isinstance(excinfo.value, IndexError)
                and not isinstance(excinfo.value, ValueError)), "bare IndexError"


# --- labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_label_too_large(impl, fn):
    with pytest.raises(ValueError, match="target") as excinfo:
        fn(impl, t=np.array([0, 2, 7, 1]))
    assert "7" in str(excinfo.value)
    _not_index_error(excinfo)


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_label_negative_is_not_wrapped(impl, fn):
    with pytest.raises(ValueError, match="target") as excinfo:
        fn(impl, t=np.array([0, -3, 1, 1]))
    assert "-3" in str(excinfo.value)


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_label_equal_to_num_classes(impl, fn):
    with pytest.raises(ValueError, match="target"):
        fn(impl, t=np.array([0, 1, 3, 1]))


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_bad_label_message_names_value_and_position(impl, fn):
    x = np.zeros((2, 3, 4))
    t = np.zeros((2, 3), dtype=np.int64)
    t[1, 2] = 9
    kw = {"p": np.full((2, 3, 4), 0.25)} if fn in (ce, ce_vjp) else {"x": x}
    with pytest.raises(ValueError, match="target") as excinfo:
        fn(impl, t=t, **kw)
    msg = str(excinfo.value)
    assert "9" in msg
    assert re.search(r"\(1, 2\)|\[1, 2\]|\[1\]\[2\]", msg), msg


@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_label_out_of_range_even_with_other_ignore_index(impl, fn):
    with pytest.raises(ValueError, match="target"):
        fn(impl, t=np.array([0, -100, 1, 1]), ignore_index=-1)


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_index_target_shape_mismatch(impl, fn):
    with pytest.raises(ValueError, match="target") as excinfo:
        fn(impl, t=np.array([0, 1, 2]))
    msg = str(excinfo.value)
    assert "3" in msg and "4" in msg  # expected and actual


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_index_target_with_class_axis_kept(impl, fn):
    """An integer target of the logits' shape is a shape error, not a soft target."""
    with pytest.raises(ValueError, match="target"):
        fn(impl, t=np.zeros((4, 3), dtype=np.int64))


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_float_target_shape_mismatch(impl, fn):
    with pytest.raises(ValueError, match="target"):
        fn(impl, t=np.full((4, 4), 0.25))


@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_float_target_shape_mismatch_middle_axis(impl, fn):
    x = np.zeros((2, 3, 5))
    with pytest.raises(ValueError, match="target"):
        fn(impl, x=x, t=np.full((2, 5, 3), 1 / 3), axis=1)


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_bool_target(impl, fn):
    with pytest.raises(TypeError, match="target"):
        fn(impl, t=np.array([True, False, True, False]))


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_bool_soft_target(impl, fn):
    with pytest.raises(TypeError, match="target"):
        fn(impl, t=np.eye(3, dtype=bool)[T])


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_complex_target(impl, fn):
    with pytest.raises(TypeError, match="target"):
        fn(impl, t=Y.astype(np.complex128))


# --- weight ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_weight_wrong_length(impl, fn):
    with pytest.raises(ValueError, match="weight") as excinfo:
        fn(impl, weight=np.ones(4))
    msg = str(excinfo.value)
    assert "3" in msg and "4" in msg


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_weight_two_dimensional(impl, fn):
    with pytest.raises(ValueError, match="weight"):
        fn(impl, weight=np.ones((1, 3)))


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_weight_negative(impl, fn):
    with pytest.raises(ValueError, match="weight"):
        fn(impl, weight=np.array([1.0, -0.5, 1.0]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_weight_non_finite(impl, fn, bad):
    with pytest.raises(ValueError, match="weight"):
        fn(impl, weight=np.array([1.0, bad, 1.0]))


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_weight_complex_or_bool(impl, fn):
    with pytest.raises((TypeError, ValueError), match="weight"):
        fn(impl, weight=np.array([1, 1, 1], dtype=np.complex128))


# --- scalar options ----------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [-0.1, 1.5, np.nan, np.inf])
@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_label_smoothing_outside_unit_interval(impl, fn, eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        fn(impl, label_smoothing=eps)


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_unknown_reduction(impl, fn):
    with pytest.raises(ValueError, match="reduction") as excinfo:
        fn(impl, reduction="average")
    assert "average" in str(excinfo.value)


@pytest.mark.parametrize("cap", [0.0, -1.0, np.nan])
@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_softcap_not_positive(impl, fn, cap):
    with pytest.raises(ValueError, match="softcap"):
        fn(impl, softcap=cap)


@pytest.mark.parametrize("zl", [-1e-4, np.nan, np.inf])
@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_z_loss_negative_or_non_finite(impl, fn, zl):
    with pytest.raises(ValueError, match="z_loss"):
        fn(impl, z_loss=zl)


@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_unknown_soft_target_loss(impl, fn):
    with pytest.raises(ValueError, match="soft_target_loss"):
        fn(impl, soft_target_loss="kl")


@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_unknown_backend(impl, fn):
    with pytest.raises(ValueError, match="backend"):
        fn(impl, backend="cuda")


# --- axis --------------------------------------------------------------------------------------


AXIS_CALLS = {
    "softmax": lambda a: sc.softmax(X, axis=a),
    "log_softmax": lambda a: sc.log_softmax(X, axis=a),
    "logsumexp": lambda a: sc.logsumexp(X, axis=a),
    "softmax_vjp": lambda a: sc.softmax_vjp(P, X, axis=a),
    "log_softmax_vjp": lambda a: sc.log_softmax_vjp(np.log(P), X, axis=a),
    "softmax_jacobian": lambda a: sc.softmax_jacobian(P, axis=a),
    "cross_entropy": lambda a: sc.cross_entropy(P, T, axis=a),
    "cross_entropy_vjp": lambda a: sc.cross_entropy_vjp(P, T, 1.0, axis=a),
    "softmax_cross_entropy": lambda a: sc.softmax_cross_entropy(X, T, axis=a),
    "with_grad": lambda a: sc.softmax_cross_entropy_with_grad(X, T, axis=a),
}


@pytest.mark.parametrize("axis", [2, -3, 100])
@pytest.mark.parametrize("name", list(AXIS_CALLS))
def test_axis_out_of_range(name, axis):
    with pytest.raises(ValueError, match="axis"):
        AXIS_CALLS[name](axis)


@pytest.mark.parametrize("name", list(AXIS_CALLS))
def test_axis_not_an_integer(name):
    with pytest.raises(TypeError, match="axis"):
        AXIS_CALLS[name](1.0)


@pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
def test_zero_dimensional_input(fn):
    with pytest.raises(ValueError, match="axis"):
        getattr(sc, fn)(np.float64(1.0))


# --- logits dtype ------------------------------------------------------------------------------


LOGIT_CALLS = {
    "softmax": (lambda x: sc.softmax(x), r"\bx\b"),
    "log_softmax": (lambda x: sc.log_softmax(x), r"\bx\b"),
    "logsumexp": (lambda x: sc.logsumexp(x), r"\bx\b"),
    "softmax_vjp": (lambda x: sc.softmax_vjp(x, X), r"\by\b"),
    "log_softmax_vjp": (lambda x: sc.log_softmax_vjp(x, X), r"\blogp\b"),
    "softmax_jacobian": (lambda x: sc.softmax_jacobian(x), r"\by\b"),
    "cross_entropy": (lambda x: sc.cross_entropy(x, T), r"\bprobs\b"),
    "cross_entropy_vjp": (lambda x: sc.cross_entropy_vjp(x, T, 1.0), r"\bprobs\b"),
    "softmax_cross_entropy": (lambda x: sc.softmax_cross_entropy(x, T), r"\blogits\b"),
    "with_grad": (lambda x: sc.softmax_cross_entropy_with_grad(x, T), r"\blogits\b"),
}


@pytest.mark.parametrize("name", list(LOGIT_CALLS))
def test_complex_input(name):
    call, argname = LOGIT_CALLS[name]
    with pytest.raises(TypeError, match=argname) as excinfo:
        call(X.astype(np.complex128))
    assert "complex" in str(excinfo.value)


@pytest.mark.parametrize("name", list(LOGIT_CALLS))
def test_bool_input(name):
    call, argname = LOGIT_CALLS[name]
    with pytest.raises(TypeError, match=argname) as excinfo:
        call(X > 0)
    assert "bool" in str(excinfo.value)


@pytest.mark.parametrize("name", list(LOGIT_CALLS))
def test_string_input(name):
    call, argname = LOGIT_CALLS[name]
    with pytest.raises(TypeError, match=argname):
        call(np.array([["a", "b", "c"]] * 4))


@pytest.mark.parametrize("fn", ["softmax_vjp", "log_softmax_vjp"])
def test_vjp_shape_mismatch(fn):
    with pytest.raises(ValueError, match=r"\bdy\b"):
        getattr(sc, fn)(P, np.ones((4, 4)))


@pytest.mark.parametrize("fn", ["softmax_vjp", "log_softmax_vjp"])
def test_vjp_complex_dy(fn):
    with pytest.raises(TypeError, match=r"\bdy\b"):
        getattr(sc, fn)(P, np.ones((4, 3), dtype=np.complex128))


# --- where -------------------------------------------------------------------------------------


WHERE_CALLS = {
    "softmax": lambda impl, w: impl.softmax(X, where=w),
    "log_softmax": lambda impl, w: impl.log_softmax(X, where=w),
    "logsumexp": lambda impl, w: impl.logsumexp(X, where=w),
    "softmax_cross_entropy": lambda impl, w: impl.softmax_cross_entropy(X, T, where=w),
    "with_grad": lambda impl, w: impl.softmax_cross_entropy_with_grad(X, T, where=w),
}


@pytest.mark.parametrize("name", list(WHERE_CALLS))
def test_where_not_broadcastable(impl, name):
    with pytest.raises(ValueError, match="where"):
        WHERE_CALLS[name](impl, np.ones((4, 2), dtype=bool))


@pytest.mark.parametrize("name", list(WHERE_CALLS))
def test_where_not_boolean(impl, name):
    with pytest.raises(TypeError, match="where"):
        WHERE_CALLS[name](impl, np.ones((4, 3), dtype=np.float64))


# --- dloss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_dloss_array_for_scalar_loss(impl, reduction):
    with pytest.raises(ValueError, match="dloss"):
        fused_grad(impl, reduction=reduction, dloss=np.ones(4))


def test_dloss_scalar_for_none_reduction(impl):
    with pytest.raises(ValueError, match="dloss"):
        fused_grad(impl, reduction="none", dloss=1.0)


@pytest.mark.parametrize("shape", [(5,), (4, 1), (1, 4), (4, 3)])
def test_dloss_wrong_shape_for_none_reduction(impl, shape):
    with pytest.raises(ValueError, match="dloss") as excinfo:
        fused_grad(impl, reduction="none", dloss=np.ones(shape))
    assert "4" in str(excinfo.value)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_cross_entropy_vjp_dloss_wrong_shape(impl, reduction):
    bad = np.ones(5) if reduction == "none" else np.ones(4)
    with pytest.raises(ValueError, match="dloss"):
        ce_vjp(impl, reduction=reduction, dloss=bad)


def test_dloss_complex(impl):
    with pytest.raises(TypeError, match="dloss"):
        fused_grad(impl, dloss=np.complex128(1.0))


# --- inplace -----------------------------------------------------------------------------------


def test_inplace_read_only():
    x = X.copy()
    x.flags.writeable = False
    with pytest.raises(ValueError, match=r"inplace|logits"):
        fused_grad(x=x, inplace=True)


def test_inplace_non_contiguous():
    x = np.asfortranarray(np.random.default_rng(1).normal(size=(4, 3)))
    with pytest.raises(ValueError, match=r"inplace|logits"):
        fused_grad(x=x, inplace=True)
    with pytest.raises(ValueError, match=r"inplace|logits"):
        fused_grad(x=np.zeros((4, 6))[:, ::2], inplace=True)


def test_inplace_integer_logits():
    with pytest.raises(TypeError, match=r"inplace|logits"):
        fused_grad(x=np.zeros((4, 3), dtype=np.int64), inplace=True)


def test_inplace_not_an_array():
    with pytest.raises((TypeError, ValueError), match=r"inplace|logits"):
        fused_grad(x=X.tolist(), inplace=True)


def test_inplace_failure_leaves_logits_untouched():
    x = np.asfortranarray(X)
    x0 = x.copy()
    with pytest.raises(ValueError):
        fused_grad(x=x, inplace=True)
    np.testing.assert_array_equal(x, x0)


def test_errors_are_raised_before_any_in_place_write():
    """A bad label must not leave a half-written gradient in the logits buffer."""
    x = X.copy()
    with pytest.raises(ValueError, match="target"):
        fused_grad(x=x, t=np.array([0, 1, 2, 5]), inplace=True)
    np.testing.assert_array_equal(x, X)


# --- signatures: arrays positional-only, options keyword-only ---------------------------------


def test_arrays_are_positional_only():
    with pytest.raises(TypeError):
        sc.softmax(x=X)
    with pytest.raises(TypeError):
        sc.softmax_cross_entropy(logits=X, target=T)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        sc.softmax(X, 0)
    with pytest.raises(TypeError):
        sc.softmax_cross_entropy(X, T, 0)
    with pytest.raises(TypeError):
        sc.logsumexp(X, -1, True)


def test_unknown_option():
    with pytest.raises(TypeError):
        sc.softmax_cross_entropy(X, T, size_average=True)


# --- NaN / inf are data, not errors -------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_logits_are_not_errors(impl, bad):
    x = X.copy()
    x[1, 1] = bad
    assert np.isnan(fused(impl, x=x))
    loss, _ = fused_grad(impl, x=x, reduction="none")
    assert np.isnan(loss[1]) and np.all(np.isfinite(np.delete(loss, 1)))


@pytest.mark.parametrize("dtype", ["i1", "i2", "i4", "i8", ">i2", ">i8", "u1", "u8"])
@pytest.mark.parametrize("n_classes", [3, 127, 128, 129, 200, 256, 300])
def test_every_out_of_range_label_is_found_for_every_integer_dtype(dtype, n_classes):
    # The range check reads signed labels as unsigned (one pass); with many classes and a
    # narrow dtype (-1 as uint8 is 255 < 300) that shortcut must not excuse a negative label.
    info = np.iinfo(dtype)
    for bad in sorted({-1, info.min, n_classes, info.max} - set(range(n_classes))):
        if not info.min <= bad <= info.max:
            continue
        t = np.zeros(5, dtype)
        t[3] = bad
        with pytest.raises(ValueError, match=rf"got {bad} at position \(3,\)"):
            sc.softmax_cross_entropy(np.zeros((5, n_classes)), t, ignore_index=7 - n_classes)
    t = (np.arange(5) % n_classes).astype(dtype)
    t[1] = min(n_classes - 1, info.max)
    sc.softmax_cross_entropy(np.zeros((5, n_classes)), t)  # in range: accepted


# --- ignore_index beyond int64 (issue 9, item 4) -----------------------------------------------

OUTSIDE_INT64 = [2**63, -(2**63) - 1, np.uint64(2**64 - 1), 10**30]


@pytest.mark.impls("numpy-core", "numba", "torch", "jax", "array-api-strict")
@pytest.mark.parametrize("ignore", OUTSIDE_INT64, ids=str)
def test_ignore_index_outside_int64_ignores_nothing_on_every_backend(impl, ignore):
    # No int64 label can equal it: the result is that of an ignore_index no label uses.
    t = np.array([0, 2, 1, 2, 0, 1])
    x = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    want = impl.softmax_cross_entropy_with_grad(x, t)
    got = impl.softmax_cross_entropy_with_grad(x, t, ignore_index=ignore)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    assert impl.softmax_cross_entropy(x, t, ignore_index=ignore) == want[0]


@pytest.mark.parametrize("ignore", [2**63, -(2**63)], ids=str)
def test_ignore_index_that_ignores_nothing_never_excuses_a_label(impl, ignore):
    # -2**63 is the sentinel the kernels receive for "nothing ignored": a label equal to it is
    # out of range, not ignored, and the message offers no ignore_index.
    t = np.array([0, -(2**63), 1, 2])
    with pytest.raises(ValueError, match="target") as excinfo:
        fused(impl, t=t, ignore_index=ignore)
    msg = str(excinfo.value)
    assert str(-(2**63)) in msg and "(1,)" in msg and "ignore_index" not in msg


@pytest.mark.parametrize("path", ["fused", "pure-pytorch"])
def test_torch_ignore_index_outside_int64_ignores_nothing(path):
    torch = pytest.importorskip("torch")
    import softmaxce.torch as sct

    x = torch.tensor(X, requires_grad=True)
    t = torch.tensor(T)
    # A weight that requires grad takes the pure-PyTorch path; otherwise the fused kernel.
    w = torch.ones(3, dtype=torch.float64, requires_grad=path == "pure-pytorch")
    want = sct.cross_entropy(x, t, w)
    (g_want,) = torch.autograd.grad(want, x)
    for ignore in OUTSIDE_INT64:
        got = sct.cross_entropy(x, t, w, ignore_index=int(ignore))
        (g_got,) = torch.autograd.grad(got, x)
        assert torch.equal(got, want) and torch.equal(g_got, g_want)
        with torch.no_grad():
            assert torch.equal(sct.cross_entropy(x, t, w, ignore_index=int(ignore)), want)


def test_torch_weight_that_requires_grad_is_checked_on_the_host():
    """The checks read a CPU tensor's values through NumPy (array-api-compat's namespaces have
    no to_device: AttributeError), detached from autograd."""
    torch = pytest.importorskip("torch")
    x = torch.tensor(X, requires_grad=True)
    w = torch.tensor([1.0, -0.5, 1.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="weight"):
        sc.softmax_cross_entropy(x, torch.tensor(T), weight=w)
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    loss = sc.softmax_cross_entropy(x, torch.tensor(T), weight=w)
    loss.backward()
    assert x.grad is not None and w.grad is not None


# --- in place: no other argument may share the logits' memory (item 10) -----------------------


def _buffer():
    return np.random.default_rng(2).normal(size=(4, 3))


@pytest.mark.parametrize(
    ("name", "make_kwargs"),
    [
        ("target", lambda x: {"target": x}),
        ("target", lambda x: {"target": x[::-1]}),
        ("weight", lambda x: {"weight": x[1]}),
        ("where", lambda x: {"where": x.view(np.uint8)[:, ::8].view(bool)}),
        ("dloss", lambda x: {"dloss": x[:, 0], "reduction": "none"}),
    ],
    ids=["soft_target_is_logits", "soft_target_reversed_view", "weight_row", "where", "dloss"],
)
def test_inplace_rejects_an_argument_sharing_the_logits_memory(name, make_kwargs):
    x = _buffer()
    before = x.copy()
    kwargs = make_kwargs(x)
    target = kwargs.pop("target", T)
    if name == "where":
        x[:] = np.abs(x) + 1.0  # every byte read as a bool is True (nonzero)
        before = x.copy()
    with pytest.raises(ValueError, match=rf"inplace.*\b{name}\b shares memory"):
        sc.softmax_cross_entropy_with_grad(x, target, inplace=True, **kwargs)
    np.testing.assert_array_equal(x, before)  # nothing written


def test_inplace_accepts_a_disjoint_view_of_the_same_buffer():
    buf = np.abs(_buffer()).reshape(2, 2, 3)
    buf[1] /= buf[1].sum(-1, keepdims=True)
    x, q = buf[0], buf[1]  # logits and a soft target, side by side in one allocation
    want = sc.softmax_cross_entropy_with_grad(x.copy(), q.copy())
    loss, grad = sc.softmax_cross_entropy_with_grad(x, q, inplace=True)
    assert grad is x and loss == want[0]
    np.testing.assert_array_equal(grad, want[1])


# --- argument conversion: ragged lists, masked arrays, tensors (items 16, 17) ------------------


ARRAY_ARGS = {
    # function: {argument: call with that argument replaced}
    "softmax": {"x": lambda a: sc.softmax(a), "where": lambda a: sc.softmax(X, where=a)},
    "log_softmax": {"x": lambda a: sc.log_softmax(a)},
    "logsumexp": {"x": lambda a: sc.logsumexp(a), "where": lambda a: sc.logsumexp(X, where=a)},
    "softmax_vjp": {"y": lambda a: sc.softmax_vjp(a, X), "dy": lambda a: sc.softmax_vjp(P, a)},
    "log_softmax_vjp": {"logp": lambda a: sc.log_softmax_vjp(a, X)},
    "softmax_jacobian": {"y": lambda a: sc.softmax_jacobian(a)},
    "cross_entropy": {
        "probs": lambda a: sc.cross_entropy(a, T),
        "target": lambda a: sc.cross_entropy(P, a),
        "weight": lambda a: sc.cross_entropy(P, T, weight=a),
    },
    "cross_entropy_vjp": {"dloss": lambda a: sc.cross_entropy_vjp(P, T, a, reduction="none")},
    "softmax_cross_entropy": {
        "logits": lambda a: sc.softmax_cross_entropy(a, T),
        "target": lambda a: sc.softmax_cross_entropy(X, a),
        "weight": lambda a: sc.softmax_cross_entropy(X, T, weight=a),
        "where": lambda a: sc.softmax_cross_entropy(X, T, where=a),
    },
    "with_grad": {
        "logits": lambda a: sc.softmax_cross_entropy_with_grad(a, T),
        "dloss": lambda a: sc.softmax_cross_entropy_with_grad(X, T, dloss=a, reduction="none"),
    },
    "numerical_gradient": {"x": lambda a: sc.numerical_gradient(np.sum, a)},
}
ARRAY_CASES = [(fn, arg) for fn, args in ARRAY_ARGS.items() for arg in args]
ARRAY_IDS = [f"{fn}-{arg}" for fn, arg in ARRAY_CASES]
# A valid value of each argument, to be masked or made ragged.
VALID = {"x": X, "y": P, "dy": X, "logp": np.log(P), "probs": P, "logits": X, "target": T,
         "weight": np.ones(3), "where": X > -5, "dloss": np.ones(4)}


@pytest.mark.parametrize(("fn", "arg"), ARRAY_CASES, ids=ARRAY_IDS)
def test_ragged_nested_list_names_the_argument(fn, arg):
    ragged = [[1, 2, 3], [4, 5]]
    with pytest.raises(ValueError, match=rf"\b{arg}\b.*rectangular") as excinfo:
        ARRAY_ARGS[fn][arg](ragged)
    assert "inhomogeneous" in str(excinfo.value)  # what NumPy found, after what was expected


@pytest.mark.parametrize(("fn", "arg"), ARRAY_CASES, ids=ARRAY_IDS)
def test_masked_array_is_refused_not_silently_unmasked(fn, arg):
    value = VALID[arg]
    masked = np.ma.masked_array(value, mask=np.zeros(value.shape, bool))
    with pytest.raises(TypeError, match=rf"\b{arg}\b is a numpy masked array") as excinfo:
        ARRAY_ARGS[fn][arg](masked)
    assert f"where=~{arg}.mask" in str(excinfo.value) and f"{arg}.data" in str(excinfo.value)


FIRST_ARGS = {"x", "y", "logp", "probs", "logits"}


@pytest.mark.parametrize(
    ("fn", "arg"), [c for c in ARRAY_CASES if c[1] not in FIRST_ARGS],
    ids=[i for c, i in zip(ARRAY_CASES, ARRAY_IDS, strict=True) if c[1] not in FIRST_ARGS],
)
def test_array_of_another_library_names_the_argument(fn, arg):
    """NumPy logits with a torch tensor for another argument: refused, naming it (nothing is
    converted between libraries behind the caller's back)."""
    torch = pytest.importorskip("torch")
    value = torch.tensor(VALID[arg])
    with pytest.raises(TypeError, match=rf"^{arg} must be an array of the same library") as exc:
        ARRAY_ARGS[fn][arg](value)
    assert "torch.Tensor" in str(exc.value) and "numpy.ndarray" in str(exc.value)


@pytest.mark.parametrize(
    ("call", "argname"),
    [
        (lambda: sc.softmax(np.float64(1.0)), "x"),
        (lambda: sc.logsumexp(np.float64(1.0), axis=0), "x"),
        (lambda: sc.softmax_jacobian(np.float64(1.0)), "y"),
        (lambda: sc.softmax_vjp(np.float64(1.0), np.float64(1.0)), "y"),
        (lambda: sc.cross_entropy(np.float64(0.5), np.array(0)), "probs"),
        (lambda: sc.softmax_cross_entropy(np.float64(1.0), np.array(0)), "logits"),
    ],
    ids=["softmax", "logsumexp", "softmax_jacobian", "softmax_vjp", "cross_entropy", "fused"],
)
def test_zero_dimensional_input_names_the_argument(call, argname):
    with pytest.raises(ValueError) as excinfo:
        call()
    msg = str(excinfo.value)
    assert msg.startswith(f"{argname} must have at least one dimension"), msg
    assert "0-d" in msg and "axis axis" not in msg


# --- options: bools, tolerances, objects (item 17) ---------------------------------------------


@pytest.mark.parametrize("value", ["yes", 1, None, np.array([True])], ids=repr)
def test_inplace_must_be_a_bool(value):
    x = X.copy()
    with pytest.raises(TypeError, match="inplace must be a bool") as excinfo:
        sc.softmax_cross_entropy_with_grad(x, T, inplace=value)
    assert type(value).__name__ in str(excinfo.value)
    np.testing.assert_array_equal(x, X)


def _f(a):
    return float((a**2).sum())


def _g(a):
    return 2 * a


@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, -1.0], ids=str)
def test_gradcheck_rejects_tolerances_that_pass_everything(name, value):
    # With rtol=nan or atol=inf even a wrong gradient would "pass".
    with pytest.raises(ValueError, match=rf"{name} must be a finite number >= 0") as excinfo:
        sc.gradcheck(_f, lambda a: 3 * a, X, **{name: value})
    assert str(value) in str(excinfo.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, 0.0, -1e-6], ids=str)
@pytest.mark.parametrize("fn", ["gradcheck", "numerical_gradient"])
def test_finite_difference_step_must_be_finite_and_positive(fn, value):
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        if fn == "gradcheck":
            sc.gradcheck(_f, _g, X, eps=value)
        else:
            sc.numerical_gradient(_f, X, eps=value)


@pytest.mark.parametrize("result", ["1.5", b"1", True, None], ids=repr)
def test_numerical_gradient_rejects_f_returning_a_non_number(result):
    with pytest.raises(TypeError, match="f must return a real scalar") as excinfo:
        sc.numerical_gradient(lambda a: result, X)
    assert repr(result) in str(excinfo.value)


@pytest.mark.parametrize(
    ("make", "exc", "argname"),
    [
        (lambda: ops.SoftmaxCrossEntropy(reduction="avg"), ValueError, "reduction"),
        (lambda: ops.SoftmaxCrossEntropy(label_smoothing=2.0), ValueError, "label_smoothing"),
        (lambda: ops.SoftmaxCrossEntropy(softcap=0.0), ValueError, "softcap"),
        (lambda: ops.SoftmaxCrossEntropy(inplace="yes"), TypeError, "inplace"),
        (lambda: ops.SoftmaxCrossEntropy(backend="cuda"), ValueError, "backend"),
        (lambda: ops.SoftmaxCrossEntropy(ignore_index=1.5), TypeError, "ignore_index"),
        (lambda: ops.SoftmaxCrossEntropy(size_average=True), TypeError, "size_average"),
        (lambda: ops.CrossEntropy(foo=1), TypeError, "foo"),
        (lambda: ops.CrossEntropy(label_smoothing=0.1), TypeError, "label_smoothing"),
        (lambda: ops.CrossEntropy(reduction="avg"), ValueError, "reduction"),
        (lambda: ops.CrossEntropy(axis=1.0), TypeError, "axis"),
        (lambda: ops.Softmax(axis="1"), TypeError, "axis"),
        (lambda: ops.LogSoftmax(axis=None), TypeError, "axis"),
    ],
    ids=["sce-reduction", "sce-smoothing", "sce-softcap", "sce-inplace", "sce-backend",
         "sce-ignore", "sce-unknown", "ce-unknown", "ce-not-its-option", "ce-reduction",
         "ce-axis", "softmax-axis", "log_softmax-axis"],
)
def test_ops_objects_reject_bad_options_when_built_not_at_forward(make, exc, argname):
    with pytest.raises(exc, match=rf"\b{argname}\b"):
        make()
