"""Shared machinery of the compat tests: golden cases, tolerances, and the error summary.

The per-framework modules (tests/test_compat_<framework>.py) import from here. Every golden
case of a framework is checked by exactly one of: a value/gradient comparison, an expected
error, or a documented difference (a handler that asserts the documented behaviour). The
largest error seen per framework is printed by each module's ``test_golden_summary``
(``pytest -s``).
"""

from __future__ import annotations

import numpy as np
import pytest
from golden_cases import load, path

from softmaxce.compat import _common

# (rtol, atol) by the dtype the framework computed in. The frameworks compute float16 (and
# bfloat16) in that dtype, softmaxce in float32 rounded once, hence the loose ones.
TOLERANCES = {
    "float16": (4e-3, 2e-3),
    "bfloat16": (2e-2, 1e-2),
    "float32": (2e-5, 2e-6),
    "float64": (1e-10, 1e-12),
}

# framework -> {"compared": n, "errors": n, "differences": n, "max_err": {dtype: (err, id)}}
STATS: dict[str, dict] = {}


def golden_params(framework: str) -> list:
    """The golden cases of ``framework`` as pytest params (one skipped param if absent)."""
    if not path(framework).exists():
        reason = f"golden file tests/golden/{framework}.npz is absent (scripts/golden/)"
        return [pytest.param(None, id="missing", marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(c, id=c["id"]) for c in load(framework)]


def readonly_inputs(case: dict) -> dict:
    """The case's inputs as read-only arrays: a compat function that writes to them fails."""
    out = {}
    for name, arr in case["inputs"].items():
        a = np.array(arr, copy=True)
        a.flags.writeable = False
        out[name] = a
    return out


def rounded(a, dtype) -> np.ndarray:
    """``a`` rounded to ``dtype`` (overflow to inf is the right rounding, not a warning)."""
    with np.errstate(over="ignore"):
        return np.asarray(a).astype(dtype)


def dtype_name(case: dict) -> str:
    if case["notes"].get("dtype") == "bfloat16":
        return "bfloat16"
    first = next(iter(case["inputs"].values()))
    return first.dtype.name if first.dtype.kind == "f" else "float64"


def _stats(framework: str) -> dict:
    return STATS.setdefault(
        framework, {"compared": 0, "errors": 0, "differences": 0, "max_err": {}}
    )


def count(framework: str, kind: str) -> None:
    """Count one case as ``kind``: "compared", "errors" or "differences"."""
    _stats(framework)[kind] += 1


def handled(framework: str, case: dict, inputs: dict, differences: dict, errors: dict,
            call) -> bool:
    """Run a documented difference or an expected-error case; True when the case is done.

    ``differences`` maps case ids to checks of our deliberate behaviour; ``errors`` maps the
    golden error cases to the exception we raise (an unlisted error case fails); ``call()``
    runs our function on the case's inputs.
    """
    if case["id"] in differences:
        differences[case["id"]](case, inputs)
        count(framework, "differences")
        return True
    if case["error"] is not None:
        assert case["id"] in errors, f"new golden error case {case['id']}: {case['error']}"
        with pytest.raises(errors[case["id"]]):
            call()
        count(framework, "errors")
        return True
    return False


def assert_close(framework: str, case: dict, what: str, actual, expected, dtype=None) -> None:
    """NaN/inf-aware comparison at the case's dtype tolerance; records the largest error.

    The error is ``max |actual - expected| / max(|expected|, 1)`` over the finite entries
    (relative for large values, absolute below 1, where gradients cancel).
    """
    dt = dtype or dtype_name(case)
    rtol, atol = TOLERANCES[dt]
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    where = f"{framework}:{case['id']} {what}"
    assert a.shape == e.shape, f"{where}: shape {a.shape} != golden {e.shape}"
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=f"{where}: NaN pattern")
    np.testing.assert_array_equal(
        np.where(np.isinf(a), a, 0), np.where(np.isinf(e), e, 0), err_msg=f"{where}: inf"
    )
    fin = np.isfinite(a) & np.isfinite(e)
    np.testing.assert_allclose(a[fin], e[fin], rtol=rtol, atol=atol, err_msg=where)
    if fin.any():
        err = float(np.max(np.abs(a[fin] - e[fin]) / np.maximum(np.abs(e[fin]), 1.0)))
        best = _stats(framework)["max_err"]
        if dt not in best or err > best[dt][0]:
            best[dt] = (err, f"{case['id']} {what}")


def assert_raises_named(exc_type, fn, name: str) -> None:
    """``fn()`` raises ``exc_type`` with a message naming ``name``."""
    with pytest.raises(exc_type) as info:
        fn()
    assert name in str(info.value), f"message does not name {name!r}: {info.value}"


def summary(framework: str) -> str:
    s = _stats(framework)
    errs = ", ".join(
        f"{dt} {err:.2e} ({where})" for dt, (err, where) in sorted(s["max_err"].items())
    )
    total = s["compared"] + s["errors"] + s["differences"]
    return (
        f"softmaxce.compat.{framework}: {total} golden cases checked ({s['compared']} "
        f"compared, {s['errors']} expected errors, {s['differences']} documented "
        f"differences); largest error by dtype: {errs or 'n/a'}"
    )


def test_table_is_complete():
    """Every framework has a row in the semantics table, with the core's choices."""
    from softmaxce._api import EMPTY, MEAN_BY

    assert set(_common.TABLE) == {"pytorch", "chainer", "mygrad", "optax", "mxnet"}
    for sem in _common.TABLE.values():
        assert sem.mean_index in MEAN_BY and sem.mean_soft in MEAN_BY
        assert sem.empty in EMPTY


def test_no_second_copy_of_the_math():
    """The compat modules never form a softmax or log-softmax with np.exp / np.log."""
    import inspect

    from softmaxce.compat import chainer, mxnet, mygrad, optax, pytorch

    for mod in (chainer, mxnet, mygrad, optax, pytorch):
        src = inspect.getsource(mod)
        assert "np.exp(" not in src, mod.__name__
        assert "logsumexp(" not in src.replace("core.logsumexp(", ""), mod.__name__


def _compat_array_args():
    """(mode, argument, call with that argument replaced) for every array of every mode."""
    from softmaxce.compat import chainer, mxnet, mygrad, optax, pytorch

    x = np.zeros((2, 3), np.float32)
    t = np.array([0, 1])
    return [
        ("pytorch", "input", lambda a: pytorch.cross_entropy(a, t)),
        ("pytorch", "target", lambda a: pytorch.cross_entropy(x, a)),
        ("pytorch", "weight", lambda a: pytorch.cross_entropy(x, t, a)),
        ("chainer", "x", lambda a: chainer.softmax_cross_entropy(a, t.astype(np.int32))),
        ("chainer", "t", lambda a: chainer.softmax_cross_entropy(x, a)),
        ("chainer", "class_weight", lambda a: chainer.softmax_cross_entropy(x, t, class_weight=a)),
        ("mygrad", "x", lambda a: mygrad.softmax_crossentropy(a, t)),
        ("mygrad", "y_true", lambda a: mygrad.softmax_crossentropy(x, a)),
        ("optax", "logits", lambda a: optax.softmax_cross_entropy(a, x)),
        ("optax", "labels", lambda a: optax.softmax_cross_entropy_with_integer_labels(x, a)),
        ("optax", "where", lambda a: optax.softmax_cross_entropy(x, x, where=a)),
        ("mxnet", "data", lambda a: mxnet.SoftmaxOutput(a, t.astype(np.float32))),
        ("mxnet", "label", lambda a: mxnet.SoftmaxOutput_with_grad(x, a)),
    ]


COMPAT_ARRAY_ARGS = _compat_array_args()
COMPAT_IDS = [f"{mode}-{arg}" for mode, arg, _ in COMPAT_ARRAY_ARGS]


@pytest.mark.parametrize(("mode", "arg", "call"), COMPAT_ARRAY_ARGS, ids=COMPAT_IDS)
def test_compat_ragged_nested_list_names_the_argument(mode, arg, call):
    with pytest.raises(ValueError, match=rf"^{arg} must be an array or a rectangular"):
        call([[1.0, 2.0, 3.0], [4.0]])


@pytest.mark.parametrize(("mode", "arg", "call"), COMPAT_ARRAY_ARGS, ids=COMPAT_IDS)
def test_compat_masked_array_is_refused_not_silently_unmasked(mode, arg, call):
    with pytest.raises(TypeError, match=rf"^{arg} is a numpy masked array.*where=~{arg}\.mask"):
        call(np.ma.masked_array(np.zeros(3), mask=[False, True, False]))
