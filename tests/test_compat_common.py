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


COMPAT_MODULES = ("chainer", "mxnet", "mygrad", "optax", "pytorch")


def test_table_is_complete():
    """Every framework has a row in the one semantics table, with the core's choices, and its
    argument checks under the same name."""
    from softmaxce._core.reduce import EMPTY, MEAN_BY
    from softmaxce._semantics import TABLE

    assert set(_common.CHECKS) == {"torch", "chainer", "mygrad", "optax", "mxnet"}
    assert set(_common.CHECKS) < set(TABLE)
    for name, sem in TABLE.items():
        assert sem.name == name
        assert sem.mean_index in MEAN_BY and sem.mean_soft in MEAN_BY
        assert sem.empty in EMPTY
        assert sem.nan_zero_log_zero in ("", "soft", "all")
    assert not hasattr(_common, "TABLE") and not hasattr(_common, "Semantics")


# NumPy functions a compat module may call: array handling and label mapping, no arithmetic
# of a loss (no exp, log, sum, max, take_along_axis, ...).
_SHAPE_ONLY = {
    "argsort", "array", "asarray", "broadcast_to", "count_nonzero", "errstate", "expand_dims",
    "flatnonzero", "moveaxis", "result_type", "transpose", "trunc", "unravel_index", "where",
    "zeros",
}


def _calls_and_imports(mod):
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(mod))
    np_calls, imports = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if isinstance(node.func.value, ast.Name) and node.func.value.id == "np":
                np_calls.add(node.func.attr)
        if isinstance(node, ast.ImportFrom):
            imports.add(("." * node.level + (node.module or ""), *(a.name for a in node.names)))
    return np_calls, imports


@pytest.mark.parametrize("name", COMPAT_MODULES)
def test_no_second_copy_of_the_math(name):
    """A compat module holds data and shape mapping only: no NumPy arithmetic of a loss, no
    import of the core, the shim or the run; the core is reached only through _common (and
    MXNet's forward, which *is* the softmax, from the core's softmax)."""
    import importlib

    mod = importlib.import_module(f"softmaxce.compat.{name}")
    np_calls, imports = _calls_and_imports(mod)
    assert np_calls <= _SHAPE_ONLY, (name, np_calls - _SHAPE_ONLY)
    allowed = {("..", "_validate"), (".", "_common"), ("__future__", "annotations"),
               ("typing", "Any")}
    if name == "mxnet":
        allowed.add((".._core.softmax", "softmax"))
    assert imports <= allowed, (name, imports - allowed)


def test_common_reaches_the_core_only_through_run():
    np_calls, imports = _calls_and_imports(_common)
    assert not np_calls
    assert not any(module.startswith(".._core") or "_api" in module for module, *_ in imports)


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


def _one_call_per_mode():
    """(mode, call, label checks expected) for every compat entry point."""
    from softmaxce.compat import chainer, mxnet, mygrad, optax, pytorch

    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    t = np.array([0, 1, 2, 1])
    q = np.full((4, 3), 1 / 3, np.float32)
    where = np.ones((4, 3), bool)
    return [
        ("pytorch", lambda: pytorch.cross_entropy_with_grad(x, t, np.ones(3)), 1),
        ("pytorch-soft", lambda: pytorch.cross_entropy_with_grad(x, q), 0),
        ("chainer", lambda: chainer.softmax_cross_entropy_with_grad(x, t.astype(np.int32)), 1),
        ("chainer-soft", lambda: chainer.softmax_cross_entropy_with_grad(x, q), 0),
        ("mygrad", lambda: mygrad.softmax_crossentropy_with_grad(x, t), 1),
        ("optax-int", lambda: optax.softmax_cross_entropy_with_integer_labels_with_grad(
            x, t, where=where), 1),
        ("optax", lambda: optax.softmax_cross_entropy_with_grad(x, q, where=where), 0),
        # MXNet's float labels are truncated and checked by its own label mapping.
        ("mxnet", lambda: mxnet.SoftmaxOutput_with_grad(x, t.astype(np.float32)), 0),
        ("mxnet-prob", lambda: mxnet.SoftmaxOutput_with_grad(x, q), 0),
    ]


ONE_CALL = _one_call_per_mode()


@pytest.mark.parametrize(("mode", "call", "n_labels"), ONE_CALL, ids=[m for m, *_ in ONE_CALL])
def test_compat_call_validates_once(mode, call, n_labels, monkeypatch):
    """One compat call: the framework's checks once, then the run; never the public path's
    validation (prepare, as the public functions call it) on top. The label-range check runs
    once (index targets)."""
    from softmaxce import _api, _problem
    from softmaxce import _validate as v

    counts = {"labels": 0, "weights": 0}

    def counting(name, real):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        return wrapper

    def refused(*args, **kwargs):
        raise AssertionError("a compat call validated a second time")

    monkeypatch.setattr(v, "check_labels", counting("labels", v.check_labels))
    monkeypatch.setattr(v, "class_weight", counting("weights", v.class_weight))
    monkeypatch.setattr(_problem, "prepare", refused)
    monkeypatch.setattr(_api, "prepare", refused)
    _, grad = call()
    assert grad is not None and np.all(np.isfinite(grad))
    assert counts["labels"] == n_labels
    assert counts["weights"] <= 1


def _labels_on(lib, a):
    if lib == "numpy":
        return a
    if lib == "torch":
        return pytest.importorskip("torch").asarray(a)
    if lib == "jax":
        return pytest.importorskip("jax.numpy").asarray(a)
    return pytest.importorskip("array_api_strict").asarray(a)


@pytest.mark.parametrize("lib", ["numpy", "torch", "jax", "array_api_strict"])
@pytest.mark.parametrize("ignore", [-100, _common.NO_IGNORE])
def test_one_label_check_names_the_first_bad_label_on_every_library(lib, ignore):
    """_validate.check_labels, the one label-range check (compat modes, prepare, the torch
    front end): same message on every array library; NO_IGNORE ignores nothing."""
    from softmaxce import _validate as v

    t = _labels_on(lib, np.array([[0, 2, -100], [1, 3, 0]]))
    bad = (1, 1) if ignore == -100 else (0, 2)
    value = 3 if ignore == -100 else -100
    also = " or ignore_label=-100" if ignore == -100 else ""
    msg = f"t must hold class indices in [0, 3){also}; got {value} at position {bad}"
    with pytest.raises(ValueError) as info:
        v.check_labels(t, 3, ignore, "t", "ignore_label")
    assert str(info.value) == msg
    v.check_labels(_labels_on(lib, np.array([0, 2, -100])), 3, -100, "t")  # fine


def test_prepare_checks_torch_weights_and_labels_on_the_cpu():
    """prepare on torch tensors: class weights and labels are read on the CPU (DLPack), for a
    weight that requires grad too."""
    torch = pytest.importorskip("torch")
    from softmaxce._options import loss_options
    from softmaxce._problem import prepare

    x = torch.zeros((2, 3), dtype=torch.float64)
    t = torch.tensor([0, 2])
    opts = loss_options()
    w = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=r"^weight must be finite and >= 0, got weight\[1\]"):
        prepare(x, t, opts, weight=w)
    with pytest.raises(ValueError, match=r"^target must hold class indices in \[0, 3\)"):
        prepare(x, torch.tensor([0, 3]), opts)
    assert prepare(x, t, opts, weight=w.detach().abs()).weight is not None
