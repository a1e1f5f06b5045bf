"""SPEC section 4: every bad input raises ValueError or TypeError whose message names the
argument (and, for labels, the bad value and its position); never a bare IndexError."""

from __future__ import annotations

import re

import numpy as np
import pytest

import softmaxce as sc

X = np.random.default_rng(0).normal(size=(4, 3))
P = np.full((4, 3), 1 / 3)
T = np.array([0, 2, 1, 2])
Y = np.full((4, 3), 1 / 3)


def fused(x=X, t=T, **kw):
    return sc.softmax_cross_entropy(x, t, **kw)


def fused_grad(x=X, t=T, **kw):
    return sc.softmax_cross_entropy_with_grad(x, t, **kw)


def ce(p=P, t=T, **kw):
    return sc.cross_entropy(p, t, **kw)


def ce_vjp(p=P, t=T, **kw):
    dloss = kw.pop("dloss", 1.0)
    return sc.cross_entropy_vjp(p, t, dloss, **kw)


FUSED = [fused, fused_grad]
TARGETED = [fused, fused_grad, ce, ce_vjp]
FUSED_IDS = ["softmax_cross_entropy", "with_grad"]
TARGETED_IDS = [*FUSED_IDS, "cross_entropy", "cross_entropy_vjp"]


def _not_index_error(excinfo):
    assert not (isinstance(excinfo.value, IndexError)
                and not isinstance(excinfo.value, ValueError)), "bare IndexError"


# --- labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_label_too_large(fn):
    with pytest.raises(ValueError, match="target") as excinfo:
        fn(t=np.array([0, 2, 7, 1]))
    assert "7" in str(excinfo.value)
    _not_index_error(excinfo)


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_label_negative_is_not_wrapped(fn):
    with pytest.raises(ValueError, match="target") as excinfo:
        fn(t=np.array([0, -3, 1, 1]))
    assert "-3" in str(excinfo.value)


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_label_equal_to_num_classes(fn):
    with pytest.raises(ValueError, match="target"):
        fn(t=np.array([0, 1, 3, 1]))


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_bad_label_message_names_value_and_position(fn):
    x = np.zeros((2, 3, 4))
    t = np.zeros((2, 3), dtype=np.int64)
    t[1, 2] = 9
    kw = {"p": np.full((2, 3, 4), 0.25)} if fn in (ce, ce_vjp) else {"x": x}
    with pytest.raises(ValueError, match="target") as excinfo:
        fn(t=t, **kw)
    msg = str(excinfo.value)
    assert "9" in msg
    assert re.search(r"\(1, 2\)|\[1, 2\]|\[1\]\[2\]", msg), msg


@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_label_out_of_range_even_with_other_ignore_index(fn):
    with pytest.raises(ValueError, match="target"):
        fn(t=np.array([0, -100, 1, 1]), ignore_index=-1)


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_index_target_shape_mismatch(fn):
    with pytest.raises(ValueError, match="target") as excinfo:
        fn(t=np.array([0, 1, 2]))
    msg = str(excinfo.value)
    assert "3" in msg and "4" in msg  # expected and actual


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_index_target_with_class_axis_kept(fn):
    """An integer target of the logits' shape is a shape error, not a soft target."""
    with pytest.raises(ValueError, match="target"):
        fn(t=np.zeros((4, 3), dtype=np.int64))


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_float_target_shape_mismatch(fn):
    with pytest.raises(ValueError, match="target"):
        fn(t=np.full((4, 4), 0.25))


@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_float_target_shape_mismatch_middle_axis(fn):
    x = np.zeros((2, 3, 5))
    with pytest.raises(ValueError, match="target"):
        fn(x=x, t=np.full((2, 5, 3), 1 / 3), axis=1)


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_bool_target(fn):
    with pytest.raises(TypeError, match="target"):
        fn(t=np.array([True, False, True, False]))


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_bool_soft_target(fn):
    with pytest.raises(TypeError, match="target"):
        fn(t=np.eye(3, dtype=bool)[T])


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_complex_target(fn):
    with pytest.raises(TypeError, match="target"):
        fn(t=Y.astype(np.complex128))


# --- weight ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_weight_wrong_length(fn):
    with pytest.raises(ValueError, match="weight") as excinfo:
        fn(weight=np.ones(4))
    msg = str(excinfo.value)
    assert "3" in msg and "4" in msg


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_weight_two_dimensional(fn):
    with pytest.raises(ValueError, match="weight"):
        fn(weight=np.ones((1, 3)))


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_weight_negative(fn):
    with pytest.raises(ValueError, match="weight"):
        fn(weight=np.array([1.0, -0.5, 1.0]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_weight_non_finite(fn, bad):
    with pytest.raises(ValueError, match="weight"):
        fn(weight=np.array([1.0, bad, 1.0]))


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_weight_complex_or_bool(fn):
    with pytest.raises((TypeError, ValueError), match="weight"):
        fn(weight=np.array([1, 1, 1], dtype=np.complex128))


# --- scalar options ----------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [-0.1, 1.5, np.nan, np.inf])
@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_label_smoothing_outside_unit_interval(fn, eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        fn(label_smoothing=eps)


@pytest.mark.parametrize("fn", TARGETED, ids=TARGETED_IDS)
def test_unknown_reduction(fn):
    with pytest.raises(ValueError, match="reduction") as excinfo:
        fn(reduction="average")
    assert "average" in str(excinfo.value)


@pytest.mark.parametrize("cap", [0.0, -1.0, np.nan])
@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_softcap_not_positive(fn, cap):
    with pytest.raises(ValueError, match="softcap"):
        fn(softcap=cap)


@pytest.mark.parametrize("zl", [-1e-4, np.nan, np.inf])
@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_z_loss_negative_or_non_finite(fn, zl):
    with pytest.raises(ValueError, match="z_loss"):
        fn(z_loss=zl)


@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_unknown_soft_target_loss(fn):
    with pytest.raises(ValueError, match="soft_target_loss"):
        fn(soft_target_loss="kl")


@pytest.mark.parametrize("fn", FUSED, ids=FUSED_IDS)
def test_unknown_backend(fn):
    with pytest.raises(ValueError, match="backend"):
        fn(backend="cuda")


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
    "softmax": lambda w: sc.softmax(X, where=w),
    "log_softmax": lambda w: sc.log_softmax(X, where=w),
    "logsumexp": lambda w: sc.logsumexp(X, where=w),
    "softmax_cross_entropy": lambda w: sc.softmax_cross_entropy(X, T, where=w),
    "with_grad": lambda w: sc.softmax_cross_entropy_with_grad(X, T, where=w),
}


@pytest.mark.parametrize("name", list(WHERE_CALLS))
def test_where_not_broadcastable(name):
    with pytest.raises(ValueError, match="where"):
        WHERE_CALLS[name](np.ones((4, 2), dtype=bool))


@pytest.mark.parametrize("name", list(WHERE_CALLS))
def test_where_not_boolean(name):
    with pytest.raises(TypeError, match="where"):
        WHERE_CALLS[name](np.ones((4, 3), dtype=np.float64))


# --- dloss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_dloss_array_for_scalar_loss(reduction):
    with pytest.raises(ValueError, match="dloss"):
        fused_grad(reduction=reduction, dloss=np.ones(4))


def test_dloss_scalar_for_none_reduction():
    with pytest.raises(ValueError, match="dloss"):
        fused_grad(reduction="none", dloss=1.0)


@pytest.mark.parametrize("shape", [(5,), (4, 1), (1, 4), (4, 3)])
def test_dloss_wrong_shape_for_none_reduction(shape):
    with pytest.raises(ValueError, match="dloss") as excinfo:
        fused_grad(reduction="none", dloss=np.ones(shape))
    assert "4" in str(excinfo.value)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_cross_entropy_vjp_dloss_wrong_shape(reduction):
    bad = np.ones(5) if reduction == "none" else np.ones(4)
    with pytest.raises(ValueError, match="dloss"):
        ce_vjp(reduction=reduction, dloss=bad)


def test_dloss_complex():
    with pytest.raises(TypeError, match="dloss"):
        fused_grad(dloss=np.complex128(1.0))


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
def test_nan_inf_logits_are_not_errors(bad):
    x = X.copy()
    x[1, 1] = bad
    assert np.isnan(fused(x=x))
    loss, _ = fused_grad(x=x, reduction="none")
    assert np.isnan(loss[1]) and np.all(np.isfinite(np.delete(loss, 1)))
