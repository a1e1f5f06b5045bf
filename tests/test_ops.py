"""softmaxce.ops: forward/backward objects against the reference, the chained == fused
gradient, and what the objects keep between forward and backward."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from reference import TOLERANCES
from test_core_fused import CASES, make_case

from softmaxce import ops

DTYPES = [np.float16, np.float32, np.float64]
DT_IDS = ["float16", "float32", "float64"]


def _close(actual, expected, dtype):
    atol, rtol = TOLERANCES[np.dtype(dtype)]
    assert np.asarray(actual).dtype == np.dtype(dtype)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def _x(shape, dtype, seed=0, scale=2.5):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)


# --- Softmax / LogSoftmax ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(("shape", "axis"), [((5, 4), -1), ((5, 4), 0), ((2, 6, 3), 1)])
def test_softmax_op(shape, axis, dtype):
    x = _x(shape, dtype)
    dy = _x(shape, dtype, seed=1, scale=1.0)
    op = ops.Softmax(axis=axis)
    y = op.forward(x)
    _close(y, ref.softmax(x, axis=axis), dtype)
    dx = op.backward(dy)
    assert dx.shape == shape
    _close(dx, ref.softmax_vjp(y, dy, axis=axis), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(("shape", "axis"), [((5, 4), -1), ((5, 4), 0), ((2, 6, 3), 1)])
def test_log_softmax_op(shape, axis, dtype):
    x = _x(shape, dtype, seed=2)
    dy = _x(shape, dtype, seed=3, scale=1.0)
    op = ops.LogSoftmax(axis=axis)
    logp = op.forward(x)
    _close(logp, ref.log_softmax(x, axis=axis), dtype)
    dx = op.backward(dy)
    _close(dx, ref.log_softmax_vjp(logp, dy, axis=axis), dtype)


def test_default_axis_is_last():
    x = _x((3, 4), np.float64, seed=4)
    np.testing.assert_allclose(ops.Softmax().forward(x), ref.softmax(x, axis=-1), rtol=1e-13)
    np.testing.assert_allclose(ops.LogSoftmax().forward(x), ref.log_softmax(x, axis=-1),
                               rtol=1e-13, atol=1e-13)


# --- CrossEntropy on probabilities --------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dloss_kind", [None, "random"])
def test_cross_entropy_op(dloss_kind, weighted, soft, reduction):
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(5), size=6)
    t = rng.dirichlet(np.ones(5), size=6) if soft else np.array([0, 4, -100, 2, 2, 1])
    opts = {"reduction": reduction}
    if weighted:
        opts["weight"] = rng.uniform(0.5, 2, 5)
    dloss = None
    if dloss_kind:
        dloss = rng.uniform(-2, 2, 6) if reduction == "none" else 0.8
    op = ops.CrossEntropy(**opts)
    loss = op.forward(p, t)
    np.testing.assert_allclose(loss, ref.cross_entropy(p, t, **opts), rtol=1e-13)
    dp = op.backward(dloss) if dloss is not None else op.backward()
    np.testing.assert_allclose(dp, ref.cross_entropy_vjp(p, t, dloss, **opts), rtol=1e-13)


# --- SoftmaxCrossEntropy -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("dloss_kind", [None, "random"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("case", ["plain", "everything_index", "everything_soft", "soft_kl",
                                  "where_smooth_weight", "ignore_in_range"])
def test_softmax_cross_entropy_op(case, reduction, dloss_kind, dtype):
    x, target, opts, dloss = make_case(case, "3d_mid", dtype, reduction, dloss_kind, seed=11)
    op = ops.SoftmaxCrossEntropy(**opts)
    loss = op.forward(x, target)
    ref_loss, ref_g = ref.softmax_cross_entropy(x, target, dloss=dloss, **opts)
    _close(loss, ref_loss, dtype)
    g = op.backward(dloss) if dloss is not None else op.backward()
    assert g.shape == x.shape
    _close(g, ref_g, dtype)


# --- chained == fused --------------------------------------------------------------------------


CHAIN_CASES = ["plain", "weight", "ignore", "ignore_in_range", "ignore_weight", "soft",
               "soft_weight", "soft_unnormalized", "soft_onehot_kl"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("layout", ["2d", "3d_mid", "2d_axis0"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("case", CHAIN_CASES)
def test_chained_equals_fused(case, reduction, layout, dtype):
    """Softmax followed by CrossEntropy gives the gradient of SoftmaxCrossEntropy."""
    x, target, opts, dloss = make_case(case, layout, dtype, reduction, "random", seed=12)
    opts.pop("soft_target_loss", None)  # KL only shifts the value by a constant
    axis = opts["axis"]
    ce_opts = {k: v for k, v in opts.items() if k in ("axis", "weight", "ignore_index",
                                                       "reduction")}
    sm = ops.Softmax(axis=axis)
    ce = ops.CrossEntropy(**ce_opts)
    fused = ops.SoftmaxCrossEntropy(**opts)

    l_chain = ce.forward(sm.forward(x), target)
    l_fused = fused.forward(x, target)
    g_chain = sm.backward(ce.backward(dloss))
    g_fused = fused.backward(dloss)

    rtol, atol = (1e-4, 1e-5) if dtype == np.float32 else (1e-10, 1e-12)
    np.testing.assert_allclose(np.asarray(l_chain, np.float64), np.asarray(l_fused, np.float64),
                               rtol=rtol, atol=atol)
    np.testing.assert_allclose(g_chain.astype(np.float64), g_fused.astype(np.float64),
                               rtol=rtol, atol=atol)
    _, ref_g = ref.softmax_cross_entropy(x, target, dloss=dloss, **opts)
    np.testing.assert_allclose(g_chain.astype(np.float64), ref_g, rtol=rtol, atol=atol)


def test_log_softmax_then_nll_equals_fused():
    """LogSoftmax + a hand-written NLL backward (-w[t] / W at the target) == fused."""
    rng = np.random.default_rng(13)
    x = rng.normal(size=(5, 4))
    t = np.array([0, 3, 1, 1, 2])
    w = np.array([0.5, 1.0, 2.0, 1.5])
    ls = ops.LogSoftmax()
    logp = ls.forward(x)
    dlogp = np.zeros_like(x)
    dlogp[np.arange(5), t] = -w[t] / w[t].sum()
    g = ls.backward(dlogp)
    fused = ops.SoftmaxCrossEntropy(weight=w)
    loss = fused.forward(x, t)
    np.testing.assert_allclose(loss, -(w[t] * logp[np.arange(5), t]).sum() / w[t].sum(),
                               rtol=1e-13)
    np.testing.assert_allclose(g, fused.backward(), rtol=1e-12, atol=1e-15)


# --- what forward keeps --------------------------------------------------------------------------


def _stored_arrays(obj, seen=None):
    """Every ndarray reachable from the object's attributes (one level of containers)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, dict):
        values = list(obj.values())
    elif isinstance(obj, list | tuple | set | frozenset):
        values = list(obj)
    else:
        values = []
        if hasattr(obj, "__dict__"):
            values += list(vars(obj).values())
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if hasattr(obj, name):
                    values.append(getattr(obj, name))
    out = []
    for v in values:
        if isinstance(v, np.ndarray | dict | list | tuple | set | frozenset) or (
            type(v).__module__.startswith("softmaxce")  # a helper object of the library
        ):
            out += _stored_arrays(v, seen)
    return out


def _stored_bytes(obj):
    return sum(a.nbytes for a in _stored_arrays(obj))


def test_softmax_keeps_y_not_x():
    x = _x((64, 50), np.float64, seed=14)
    op = ops.Softmax()
    y = op.forward(x)
    stored = _stored_arrays(op)
    assert not any(a is x or np.shares_memory(a, x) for a in stored), "Softmax kept x"
    assert any(a.shape == y.shape and np.array_equal(a, y) for a in stored), "y not kept"
    assert _stored_bytes(op) <= y.nbytes + 1024


def test_log_softmax_keeps_one_array():
    x = _x((64, 50), np.float64, seed=15)
    op = ops.LogSoftmax()
    logp = op.forward(x)
    stored = _stored_arrays(op)
    assert not any(a is x or np.shares_memory(a, x) for a in stored), "LogSoftmax kept x"
    assert _stored_bytes(op) <= logp.nbytes + 1024


def test_softmax_cross_entropy_keeps_at_most_one_n_by_c_array():
    x = _x((64, 50), np.float32, seed=16)
    t = np.random.default_rng(17).integers(0, 50, 64)
    op = ops.SoftmaxCrossEntropy()
    op.forward(x, t)
    assert _stored_bytes(op) <= x.nbytes + t.nbytes + 1024


@pytest.mark.parametrize("make", [
    lambda: (ops.Softmax(axis=1), 1),
    lambda: (ops.LogSoftmax(axis=1), 1),
    lambda: (ops.SoftmaxCrossEntropy(axis=1), 2),
], ids=["Softmax", "LogSoftmax", "SoftmaxCrossEntropy"])
def test_backward_unaffected_by_overwriting_logits_after_forward(make):
    """The softmax ops keep y (or the gradient), not x: overwriting x after forward, as an
    optimiser step or a reused buffer does, leaves backward unchanged."""
    rng = np.random.default_rng(18)
    op, n_in = make()
    x = rng.dirichlet(np.ones(4), size=(3, 2)).transpose(0, 2, 1).copy()  # (3, 4, 2), sums 1
    t = rng.integers(0, 4, size=(3, 2))
    args = (x, t) if n_in == 2 else (x,)
    out = op.forward(*args)
    dout = np.ones(np.shape(out)) if n_in == 1 else None
    expected = op.backward(dout) if dout is not None else op.backward()

    op2, _ = make()
    x2, t2 = x.copy(), t.copy()
    args2 = (x2, t2) if n_in == 2 else (x2,)
    op2.forward(*args2)
    x2[...] = 0.25
    got = op2.backward(dout) if dout is not None else op2.backward()
    np.testing.assert_array_equal(got, expected)


def test_ops_are_reusable_forward_replaces_state():
    rng = np.random.default_rng(19)
    op = ops.SoftmaxCrossEntropy(reduction="sum")
    x1, x2 = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    t1, t2 = np.array([0, 1, 2]), np.array([3, 3, 0, 1, 2])
    op.forward(x1, t1)
    op.forward(x2, t2)
    g = op.backward()
    _, ref_g = ref.softmax_cross_entropy(x2, t2, reduction="sum")
    np.testing.assert_allclose(g, ref_g, rtol=1e-12, atol=1e-15)


def test_ops_do_not_modify_inputs():
    rng = np.random.default_rng(20)
    x = rng.normal(size=(4, 3))
    t = np.array([0, 1, 2, 1])
    x.flags.writeable = False
    t.flags.writeable = False
    for op, args in ((ops.Softmax(), (x,)), (ops.LogSoftmax(), (x,)),
                     (ops.SoftmaxCrossEntropy(), (x, t))):
        out = op.forward(*args)
        if len(args) == 1:
            op.backward(np.ones(np.shape(out)))
        else:
            op.backward()
    p = ref.softmax(x)
    p.flags.writeable = False
    ce = ops.CrossEntropy()
    ce.forward(p, t)
    ce.backward()


@pytest.mark.parametrize("case", list(CASES))
def test_softmax_cross_entropy_op_all_cases_float64(case):
    x, target, opts, dloss = make_case(case, "2d", np.float64, "mean", "random", seed=21)
    op = ops.SoftmaxCrossEntropy(**opts)
    loss = op.forward(x, target)
    ref_loss, ref_g = ref.softmax_cross_entropy(x, target, dloss=dloss, **opts)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(op.backward(dloss), ref_g, rtol=1e-10, atol=1e-12)


def test_softmax_cross_entropy_op_builds_its_options_once(monkeypatch):
    """The options are validated and built in __init__; forward only checks the arrays and
    runs (no second loss_options, no public function's path)."""
    from softmaxce import _api, _options

    op = ops.SoftmaxCrossEntropy(label_smoothing=0.1, reduction="sum")

    def refused(*args, **kwargs):
        raise AssertionError("options built again at forward")

    monkeypatch.setattr(_api, "loss_options", refused)
    monkeypatch.setattr(_options, "loss_options", refused)
    monkeypatch.setattr(ops, "loss_options", refused, raising=False)
    x = _x((4, 5), np.float64, seed=6)
    t = np.array([0, 4, 2, 1])
    loss = op.forward(x, t)
    ref_loss, ref_g = ref.softmax_cross_entropy(x, t, reduction="sum", label_smoothing=0.1)
    _close(loss, ref_loss, np.float64)
    _close(op.backward(), ref_g, np.float64)
