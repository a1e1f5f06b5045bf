"""Property tests (hypothesis): equivalences that any correct implementation satisfies.

translation invariance, axis == moveaxis, index targets == one-hot float targets, where mask ==
slicing classes away, gradient rows summing to 0, vjp == Jacobian^T dy, log_softmax_vjp vs
softmax_vjp, and read-only inputs never modified.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# Target probabilities: subnormal mass has no relative precision in any float arithmetic.
UNIT = st.floats(0.0, 1.0, allow_subnormal=False)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
# JAX compiles every operation anew for each shape it has not seen (seconds per example):
# a few examples there, the equivalences are checked at length on the other implementations.
EXAMPLES = {"jax": 6}


def impl_property(*strategies):
    """``@given(*strategies)`` under SETTINGS, as a test of the ``impl`` fixture: the
    decorated function takes ``impl`` (and any parametrised arguments) and then the drawn
    values; each implementation draws its own EXAMPLES."""

    def decorate(prop):
        kept = list(inspect.signature(prop).parameters.values())[: -len(strategies)]

        def test(impl, **params):
            examples = EXAMPLES.get(impl.name, SETTINGS.max_examples)
            settings(SETTINGS, max_examples=examples)(given(*strategies)(prop))(impl, **params)

        test.__signature__ = inspect.Signature(kept)
        test.__name__, test.__qualname__, test.__doc__ = prop.__name__, prop.__name__, prop.__doc__
        return test

    return decorate

# Functions without backend= (the numba row kernels run by size: tests/test_numba_kernels.py)
LIBRARIES = pytest.mark.impls("numpy-core", "torch", "jax", "array-api-strict")

REDUCTIONS = st.sampled_from(["none", "sum", "mean"])


@st.composite
def problems(draw, min_c=2, max_c=7, max_rows=6, soft=None):
    """A 2-D problem: logits (N, C) float64, an index target, and a set of options."""
    n = draw(st.integers(1, max_rows))
    c = draw(st.integers(min_c, max_c))
    x = draw(hnp.arrays(np.float64, (n, c), elements=st.floats(-30, 30, width=64)))
    t = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    opts = {}
    if draw(st.booleans()):
        opts["weight"] = draw(hnp.arrays(np.float64, (c,), elements=st.floats(0.1, 3.0)))
    if draw(st.booleans()):
        opts["label_smoothing"] = draw(st.floats(0.0, 1.0))
    if draw(st.booleans()):
        opts["soft_target_loss"] = "kl-divergence"
    opts["reduction"] = draw(REDUCTIONS)
    return x, t, opts


def _dloss(rng_seed, reduction, batch):
    rng = np.random.default_rng(rng_seed)
    if reduction == "none":
        return rng.uniform(-2, 2, size=batch)
    return float(rng.uniform(-2, 2))


def _allclose(a, b, rtol=1e-9, atol=1e-9):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol,
                               atol=atol)


@impl_property(problems(), st.data())
def test_translation_invariance(impl, problem, data):
    x, t, opts = problem
    n = x.shape[0]
    shift = data.draw(hnp.arrays(np.float64, (n, 1), elements=st.floats(-100, 100)))
    soft = data.draw(st.booleans())
    target = np.eye(x.shape[1])[t] if soft else t
    dloss = _dloss(0, opts["reduction"], (n,))
    l1, g1 = impl.softmax_cross_entropy_with_grad(x, target, dloss=dloss, **opts)
    l2, g2 = impl.softmax_cross_entropy_with_grad(x + shift, target, dloss=dloss, **opts)
    _allclose(l1, l2, atol=1e-11 * (1 + np.abs(shift).max()) * x.shape[1])
    _allclose(g1, g2, atol=1e-12 * (1 + np.abs(shift).max()) * x.shape[1])


@impl_property(st.data())
def test_axis_equals_moveaxis(impl, data):
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=4))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-20, 20)))
    C = shape[axis]
    batch = np.moveaxis(np.empty(shape), axis, -1).shape[:-1]
    t = data.draw(hnp.arrays(np.int64, batch, elements=st.integers(0, C - 1)))
    reduction = data.draw(REDUCTIONS)
    smooth = data.draw(st.sampled_from([0.0, 0.2]))
    xm = np.moveaxis(x, axis, -1)

    l1, g1 = impl.softmax_cross_entropy_with_grad(x, t, axis=axis, reduction=reduction,
                                                label_smoothing=smooth)
    l2, g2 = impl.softmax_cross_entropy_with_grad(xm, t, axis=-1, reduction=reduction,
                                                label_smoothing=smooth)
    _allclose(l1, l2, rtol=1e-12, atol=1e-12)
    _allclose(g1, np.moveaxis(g2, -1, axis), rtol=1e-12, atol=1e-14)

    y = np.moveaxis(np.eye(C)[t], -1, axis)  # soft (one-hot) target along the same axis
    l3 = impl.softmax_cross_entropy(x, y, axis=axis, reduction=reduction, label_smoothing=smooth)
    _allclose(l3, l2, rtol=1e-12, atol=1e-12)

    for fn in ("softmax", "log_softmax"):
        _allclose(getattr(impl, fn)(x, axis=axis),
                  np.moveaxis(getattr(impl, fn)(xm, axis=-1), -1, axis), rtol=1e-12, atol=1e-14)
    _allclose(impl.logsumexp(x, axis=axis), impl.logsumexp(xm, axis=-1), rtol=1e-12, atol=1e-14)
    p = impl.softmax(x, axis=axis)
    dy = np.cos(x)
    _allclose(impl.softmax_vjp(p, dy, axis=axis),
              np.moveaxis(impl.softmax_vjp(np.moveaxis(p, axis, -1), np.moveaxis(dy, axis, -1)),
                          -1, axis), rtol=1e-12, atol=1e-14)


@impl_property(problems(), st.data())
def test_index_targets_equal_one_hot_float_targets(impl, problem, data):
    x, t, opts = problem
    n, c = x.shape
    if data.draw(st.booleans()):
        opts["z_loss"] = data.draw(st.floats(0.0, 0.1))
    if data.draw(st.booleans()):
        opts["softcap"] = data.draw(st.floats(1.0, 50.0))
    if data.draw(st.booleans()):
        where = data.draw(hnp.arrays(np.bool_, (n, c)))
        where[np.arange(n), t] = True  # the target class stays allowed
        opts["where"] = where
    dloss = _dloss(1, opts["reduction"], (n,))
    onehot = np.eye(c)[t]
    l1, g1 = impl.softmax_cross_entropy_with_grad(x, t, dloss=dloss, **opts)
    l2, g2 = impl.softmax_cross_entropy_with_grad(x, onehot, dloss=dloss, **opts)
    _allclose(l1, l2, rtol=1e-10, atol=1e-10)
    _allclose(g1, g2, rtol=1e-10, atol=1e-12)


@impl_property(problems(min_c=3, max_c=8), st.data())
def test_where_mask_equals_slicing_classes(impl, problem, data):
    x, t, opts = problem
    n, c = x.shape
    keep = data.draw(hnp.arrays(np.bool_, (c,)).filter(lambda k: k.sum() >= 1))
    kept = np.flatnonzero(keep)
    # targets on kept classes only, re-indexed for the sliced problem
    t = kept[t % len(kept)]
    new_index = np.cumsum(keep) - 1
    opts_sliced = dict(opts)
    if "weight" in opts:
        opts_sliced["weight"] = opts["weight"][keep]
    soft = data.draw(st.booleans())
    if soft:
        y = data.draw(hnp.arrays(np.float64, (n, c), elements=UNIT))
        y[:, ~keep] = 0
        y[y.sum(axis=1) == 0, kept[0]] = 1.0
        target, target_sliced = y, y[:, keep]
    else:
        target, target_sliced = t, new_index[t]
    dloss = _dloss(2, opts["reduction"], (n,))
    where = keep if data.draw(st.booleans()) else np.broadcast_to(keep, (n, c)).copy()
    l1, g1 = impl.softmax_cross_entropy_with_grad(x, target, where=where, dloss=dloss, **opts)
    l2, g2 = impl.softmax_cross_entropy_with_grad(x[:, keep], target_sliced, dloss=dloss,
                                                **opts_sliced)
    _allclose(l1, l2, rtol=1e-10, atol=1e-10)
    _allclose(g1[:, keep], g2, rtol=1e-10, atol=1e-12)
    assert np.all(g1[:, ~keep] == 0)
    # the same for the softmax family
    _allclose(impl.softmax(x, where=keep)[:, keep], impl.softmax(x[:, keep]), rtol=1e-12,
              atol=1e-15)
    assert np.all(impl.softmax(x, where=keep)[:, ~keep] == 0)
    _allclose(impl.log_softmax(x, where=keep)[:, keep], impl.log_softmax(x[:, keep]), rtol=1e-12,
              atol=1e-12)
    _allclose(impl.logsumexp(x, where=keep), impl.logsumexp(x[:, keep]), rtol=1e-12, atol=1e-12)


@impl_property(problems(), st.data())
def test_gradient_rows_sum_to_zero_for_normalized_targets(impl, problem, data):
    x, t, opts = problem
    n, c = x.shape
    if data.draw(st.booleans()):
        y = data.draw(hnp.arrays(np.float64, (n, c), elements=UNIT))
        y[y.sum(axis=1) == 0, 0] = 1.0
        target = y / y.sum(axis=1, keepdims=True)
    else:
        target = t
    dloss = _dloss(3, opts["reduction"], (n,))
    _, g = impl.softmax_cross_entropy_with_grad(x, target, dloss=dloss, **opts)
    scale = np.max(np.abs(g)) if g.size else 0.0
    _allclose(g.sum(axis=1), 0.0, atol=1e-12 * (1 + scale) * c)


@LIBRARIES
@impl_property(st.data())
def test_softmax_vjp_equals_jacobian_transpose(impl, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-10, 10)))
    dy = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-3, 3)))
    y = impl.softmax(x, axis=axis)
    J = impl.softmax_jacobian(y, axis=axis)  # shape + (C,): J[..., i@axis, ..., j]
    # dx_j = sum_i J[.., i, .., j] dy_i : contract the class axis of J with dy
    ax = axis % len(shape)
    dx = np.sum(J * np.expand_dims(dy, -1), axis=ax)  # classes j now last
    dx = np.moveaxis(dx, -1, ax)
    _allclose(impl.softmax_vjp(y, dy, axis=axis), dx, rtol=1e-10, atol=1e-13)


@LIBRARIES
@impl_property(st.data())
def test_log_softmax_vjp_consistent_with_softmax_vjp(impl, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-5, 5)))
    dy = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-3, 3)))
    y = impl.softmax(x, axis=axis)
    logp = impl.log_softmax(x, axis=axis)
    _allclose(np.exp(logp), y, rtol=1e-12, atol=1e-15)
    # log_softmax = log o softmax, so its vjp is softmax_vjp(y, dy / y)
    _allclose(impl.log_softmax_vjp(logp, dy, axis=axis), impl.softmax_vjp(y, dy / y, axis=axis),
              rtol=1e-8, atol=1e-10)
    # upstream ones: dx = 1 - C * y
    C = shape[axis]
    _allclose(impl.log_softmax_vjp(logp, np.ones_like(dy), axis=axis), 1.0 - C * y, rtol=1e-10,
              atol=1e-12)


def _frozen(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


@impl_property(problems(), st.data())
def test_read_only_inputs_are_never_modified(impl, problem, data):
    impl.need("read-only")
    x, t, opts = problem
    n, c = x.shape
    dtype = data.draw(st.sampled_from([np.float16, np.float32, np.float64]))
    x = _frozen(np.clip(x, -5, 5).astype(dtype))  # no probability underflows to 0 in float16
    t = _frozen(t)
    y = _frozen(np.eye(c, dtype=dtype)[t])
    x0 = x.copy()
    if "weight" in opts:
        opts["weight"] = _frozen(opts["weight"])
    where = _frozen(np.ones((n, c), dtype=bool))
    opts["where"] = where
    red = opts["reduction"]
    dloss = _frozen(np.ones(n)) if red == "none" else _frozen(np.array(1.0))
    for target in (t, y):
        impl.softmax_cross_entropy(x, target, **opts)
        impl.softmax_cross_entropy_with_grad(x, target, dloss=dloss, **opts)
    p = _frozen(impl.softmax(x))
    logp = _frozen(impl.log_softmax(x))
    dy = _frozen(np.ones_like(x))
    impl.softmax(x, where=where)
    impl.log_softmax(x, where=where)
    impl.logsumexp(x, where=where)
    impl.softmax_vjp(p, dy)
    impl.log_softmax_vjp(logp, dy)
    impl.softmax_jacobian(p)
    ce_opts = {"reduction": red}
    if "weight" in opts:
        ce_opts["weight"] = opts["weight"]
    for target in (t, y):
        impl.cross_entropy(p, target, **ce_opts)
        impl.cross_entropy_vjp(p, target, dloss, **ce_opts)
    np.testing.assert_array_equal(x, x0)
    for a in (x, t, y, p, logp, dy, dloss, where):
        assert not a.flags.writeable


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@impl_property(st.data())
def test_result_dtypes_follow_input(impl, dtype, data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4))
    x = data.draw(hnp.arrays(dtype, shape, elements=st.floats(-10, 10, width=16)))
    C = shape[-1]
    batch = shape[:-1]
    t = data.draw(hnp.arrays(np.int64, batch, elements=st.integers(0, C - 1)))
    for fn in ("softmax", "log_softmax"):
        out = getattr(impl, fn)(x)
        assert out.dtype == dtype and out.shape == shape
    assert np.asarray(impl.logsumexp(x)).dtype == dtype
    loss_none = impl.softmax_cross_entropy(x, t, reduction="none")
    assert np.asarray(loss_none).dtype == dtype and np.shape(loss_none) == batch
    for red in ("sum", "mean"):
        loss, g = impl.softmax_cross_entropy_with_grad(x, t, reduction=red)
        assert isinstance(loss, np.generic) and loss.dtype == dtype
        assert g.dtype == dtype and g.shape == shape


@impl_property(st.data())
def test_random_problems_match_reference(impl, data):
    """Any combination of options, shapes and axes: value and gradient == the reference."""
    import reference as ref

    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    ax = axis % len(shape)
    C = shape[ax]
    batch = shape[:ax] + shape[ax + 1:]
    x = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-20, 20)))
    opts = {"axis": axis, "reduction": data.draw(REDUCTIONS)}
    where = None
    if data.draw(st.booleans()):
        where = data.draw(hnp.arrays(np.bool_, shape))
        opts["where"] = where
    allowed = np.moveaxis(np.ones(shape, bool) if where is None else where, ax, -1)
    if data.draw(st.booleans()):
        y = data.draw(hnp.arrays(np.float64, (*batch, C), elements=UNIT))
        y = y * allowed  # no target mass on excluded classes
        target = np.moveaxis(y, -1, ax)
    else:
        t = data.draw(hnp.arrays(np.int64, batch, elements=st.integers(-1, C - 1)))
        # a target on an excluded class would give +inf: move it to an allowed class, if any
        for idx in np.ndindex(batch):
            ok = np.flatnonzero(allowed[idx])
            if t[idx] >= 0 and len(ok) and not allowed[idx][t[idx]]:
                t[idx] = ok[0]
        target = t
        opts["ignore_index"] = -1
    if data.draw(st.booleans()):
        opts["weight"] = data.draw(hnp.arrays(np.float64, (C,), elements=st.floats(0.1, 3)))
    if data.draw(st.booleans()):
        opts["label_smoothing"] = data.draw(st.floats(0, 1))
    if data.draw(st.booleans()):
        opts["z_loss"] = data.draw(st.floats(0, 0.1))
    if data.draw(st.booleans()):
        opts["softcap"] = data.draw(st.floats(0.5, 30))
    if data.draw(st.booleans()):
        opts["soft_target_loss"] = "kl-divergence"
    dloss = _dloss(4, opts["reduction"], batch)
    loss, g = impl.softmax_cross_entropy_with_grad(x, target, dloss=dloss, **opts)
    rl, rg = ref.softmax_cross_entropy(x, target, dloss=dloss, **opts)
    _allclose(loss, rl, rtol=1e-9, atol=1e-9)
    _allclose(g, rg, rtol=1e-9, atol=1e-11)
