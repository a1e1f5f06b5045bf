"""softmaxce.torch under autograd traps (issue 9): a returned gradient is the caller's, never
state that a later backward reads; positions that carry no weight give gradient 0, not NaN.

Gradients are compared with live F.cross_entropy (float64) or the float64 value of the same
call; a NaN logit is a literal NaN in the input."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import softmaxce.torch as sct  # noqa: E402

EPS64 = torch.finfo(torch.float64).eps
TOL64 = {"rtol": 64 * EPS64, "atol": 64 * EPS64}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["auto", "core"], ids=["fused", "core"])
def backend(request):
    """The fused CPU kernels ("auto" on CPU), or the core on the tensors (what other devices
    take)."""
    return request.param


def logits_and_labels(shape=(6, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    batch = shape[:1] + shape[2:] if len(shape) > 1 else ()
    t = torch.randint(0, shape[0 if len(shape) == 1 else 1], batch, generator=g)
    return x, t


def f_gradient(x, t, upstream=None, **kw):
    """d F.cross_entropy / d x for the given upstream gradient, float64."""
    x = x.detach().double().requires_grad_()
    (g,) = torch.autograd.grad(F.cross_entropy(x, t, **kw), x, upstream)
    return g


# ---------------------------------------------------------------------------------------------
# The returned gradient is not the saved one
# ---------------------------------------------------------------------------------------------


def _mutate_in_place(g):
    g.mul_(-7.0)


def _mutate_no_grad(g):
    with torch.no_grad():
        g.fill_(math.nan)


def _mutate_data(g):
    g.data.mul_(-7.0)  # no version bump: nothing can notice


def _mutate_numpy(g):
    g.numpy()[...] = 42.0  # neither


MUTATIONS = {
    "in_place": _mutate_in_place,
    "no_grad": _mutate_no_grad,
    "data": _mutate_data,
    "numpy": _mutate_numpy,
}
# upstream -> (reduction, grad_outputs for a batch of N)
UPSTREAMS = {
    "one": ("mean", lambda n: None),
    "three": ("mean", lambda n: torch.tensor(3.0, dtype=torch.float64)),
    "per_position": ("none", lambda n: torch.linspace(-2.0, 3.0, n, dtype=torch.float64)),
}


@pytest.mark.parametrize("upstream", list(UPSTREAMS))
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_mutating_returned_gradient_does_not_change_next_backward(mutation, upstream, backend):
    reduction, make_up = UPSTREAMS[upstream]
    x, t = logits_and_labels()
    x.requires_grad_()
    up = make_up(x.shape[0])
    expected = f_gradient(x, t, up, reduction=reduction)
    loss = sct.cross_entropy(x, t, reduction=reduction, backend=backend)
    (g1,) = torch.autograd.grad(loss, x, up, retain_graph=True)
    torch.testing.assert_close(g1, expected, **TOL64)
    MUTATIONS[mutation](g1)
    (g2,) = torch.autograd.grad(loss, x, up, retain_graph=True)
    torch.testing.assert_close(g2, expected, **TOL64)
    MUTATIONS[mutation](g2)
    (g3,) = torch.autograd.grad(loss, x, up)
    torch.testing.assert_close(g3, expected, **TOL64)


def test_mutating_returned_bfloat16_gradient_does_not_change_next_backward():
    x, t = logits_and_labels()
    x = x.to(torch.bfloat16).requires_grad_()
    expected = f_gradient(x, t)
    eps = torch.finfo(torch.bfloat16).eps
    tol = {"rtol": eps, "atol": eps * float(expected.abs().max())}
    loss = sct.cross_entropy(x, t)
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    g1.data.zero_()
    (g2,) = torch.autograd.grad(loss, x)
    assert g2.dtype == torch.bfloat16
    torch.testing.assert_close(g2.double(), expected, **tol)


# layout -> (leaf shape, the input made from the leaf)
LAYOUTS = {
    "leaf": ((6, 5), lambda leaf: leaf),
    "unbatched": ((5,), lambda leaf: leaf),  # unsqueezed inside: .grad is a view of the result
    "view_of_leaf": ((30,), lambda leaf: leaf.view(6, 5)),
}


@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_retained_backwards_accumulate_and_survive_zero_grad(layout, scale, backend):
    """``loss.backward(retain_graph=True)`` twice gives twice the gradient; zeroing ``.grad``
    in place (``optimizer.zero_grad(set_to_none=False)``) between backwards is allowed."""
    shape, make_input = LAYOUTS[layout]
    src, _ = logits_and_labels(shape)
    leaf = src.clone().requires_grad_()
    x = make_input(leaf)
    _, t = logits_and_labels(x.shape)
    single = f_gradient(x, t).reshape(shape) * scale
    loss = scale * sct.cross_entropy(x, t, backend=backend)
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(leaf.grad, 2 * single, **TOL64)
    leaf.grad.zero_()
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(leaf.grad, 2 * single, **TOL64)


def _saved_gradient_address(loss):
    return loss.grad_fn.saved_tensors[0].data_ptr()


@pytest.mark.parametrize("upstream", list(UPSTREAMS))
def test_first_backward_gives_the_saved_gradient_without_a_copy(upstream):
    """The common path allocates no second N x C gradient: the first backward returns the
    forward's gradient (scaled in place when the upstream gradient is not 1)."""
    reduction, make_up = UPSTREAMS[upstream]
    x, t = logits_and_labels()
    logits = x.requires_grad_() * 1.0  # a layer's output
    loss = sct.cross_entropy(logits, t, reduction=reduction)
    address = _saved_gradient_address(loss)
    (g,) = torch.autograd.grad(loss, logits, make_up(x.shape[0]))
    assert g.data_ptr() == address
    leaf = x.detach().requires_grad_()
    loss = sct.cross_entropy(leaf, t)
    address = _saved_gradient_address(loss)
    loss.backward()
    assert leaf.grad.data_ptr() == address  # AccumulateGrad took it over


def test_inplace_backward_runs_only_once_also_for_unit_upstream_gradient():
    x, t = logits_and_labels()
    logits = x.requires_grad_() * 1.0
    loss = sct.cross_entropy(logits, t, inplace_backward=True)
    (g,) = torch.autograd.grad(loss, logits, retain_graph=True)
    assert g.data_ptr() == logits.data_ptr()  # still no allocation
    torch.testing.assert_close(g, f_gradient(x, t), **TOL64)
    with pytest.raises(RuntimeError, match="only once"):
        torch.autograd.grad(loss, logits)


@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
def test_compiled_backward_gradient_is_not_the_state_of_the_next_backward():
    torch._dynamo.reset()
    x, t = logits_and_labels()
    x.requires_grad_()
    compiled = torch.compile(sct.cross_entropy, fullgraph=True, backend="aot_eager")
    loss = compiled(x, t)
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    g1.data.zero_()
    (g2,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(g2, f_gradient(x, t), **TOL64)


# ---------------------------------------------------------------------------------------------
# Positions that carry no weight: loss 0 and gradient exactly 0, also with a NaN logit
# ---------------------------------------------------------------------------------------------


NAN_ROW_OPTIONS = {
    "plain": {},
    "everything": {"label_smoothing": 0.2, "z_loss": 0.01, "softcap": 4.0},
}


def nan_row_case(target_kind):
    """weight [0, 1, 1], every target class 0 (W == 0), a NaN logit in row 0."""
    x = torch.tensor([[math.nan, 1.0, 2.0], [0.5, 0.0, 1.0]], dtype=torch.float64)
    weight = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    t = torch.tensor([0, 0])
    if target_kind == "prob":
        t = F.one_hot(t, 3).double()
    return x.requires_grad_(), t, weight


@pytest.mark.parametrize("option", list(NAN_ROW_OPTIONS))
@pytest.mark.parametrize("target_kind", ["index", "prob"])
def test_zero_weight_mass_with_nan_logit_gives_zero_loss_and_gradient(target_kind, option, backend):
    x, t, weight = nan_row_case(target_kind)
    kw = NAN_ROW_OPTIONS[option]
    loss = sct.cross_entropy(x, t, weight, backend=backend, **kw)
    (g,) = torch.autograd.grad(loss, x)
    assert loss.item() == 0.0
    assert torch.equal(g, torch.zeros_like(g)), g


@pytest.mark.parametrize("target_kind", ["index", "prob"])
def test_zero_weight_mass_with_nan_logit_keeps_torch_nan(target_kind, backend):
    x, t, weight = nan_row_case(target_kind)
    ours = sct.cross_entropy(x, t, weight, semantics="torch", backend=backend)
    (g_ours,) = torch.autograd.grad(ours, x)
    theirs = F.cross_entropy(x, t, weight)
    (g_theirs,) = torch.autograd.grad(theirs, x)
    assert torch.isnan(ours) and torch.isnan(theirs)
    torch.testing.assert_close(g_ours, g_theirs, equal_nan=True)


def test_zero_weight_mass_with_nan_logit_zero_target_and_weight_gradients():
    """Target and weight that require grad (autograd through the core): their gradients are 0
    too."""
    x, t, weight = nan_row_case("prob")
    t.requires_grad_()
    weight.requires_grad_()
    loss = sct.cross_entropy(x, t, weight, label_smoothing=0.1)
    grads = torch.autograd.grad(loss, (x, t, weight))
    assert loss.item() == 0.0
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g)), g


def test_zero_weight_mass_with_nan_logit_double_backward_is_zero(backend):
    x, t, weight = nan_row_case("index")
    loss = sct.cross_entropy(x, t, weight, backend=backend)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    assert torch.equal(g.detach(), torch.zeros_like(g)), g
    assert torch.equal(gg, torch.zeros_like(gg)), gg


@pytest.mark.parametrize("ignored", ["row_0", "every_row"])
def test_ignored_position_with_nan_logit_gets_zero_gradient(ignored, backend):
    """softmaxce semantics: an ignored position contributes 0 to the loss and to the gradient,
    whatever its logits (F.cross_entropy's gradient there is NaN)."""
    x = torch.tensor([[math.nan, 1.0, 2.0], [0.5, 0.0, 1.0]], dtype=torch.float64)
    x.requires_grad_()
    t = torch.tensor([-100, 1] if ignored == "row_0" else [-100, -100])
    loss = sct.cross_entropy(x, t, backend=backend)
    (g,) = torch.autograd.grad(loss, x)
    assert torch.equal(g[0], torch.zeros(3, dtype=torch.float64)), g
    if ignored == "row_0":
        torch.testing.assert_close(loss, F.cross_entropy(x[1:], t[1:]), **TOL64)
        torch.testing.assert_close(g[1:], f_gradient(x[1:], t[1:]), **TOL64)
    else:
        assert loss.item() == 0.0 and not g.any()
