"""The fused CPU kernels as ``torch.library`` custom ops (``torch.compile`` traces them).

Each op runs ``softmaxce._run.run`` on the tensors' own memory (``Tensor.numpy()``, no
copy; bfloat16, which NumPy lacks, as ``ml_dtypes.bfloat16`` on the same memory where ml_dtypes
is installed, else on a float32 copy): one pass gives the loss and the
gradient, which the in-place op writes into ``input``. Their fake implementations give the
output shapes, so ``torch.compile(fullgraph=True)`` traces a call without a graph break.

The options reach an op as ``LossOptions.flat`` and leave it through
``LossOptions.from_flat``; the ops' schema lists the same fields in the same order
(``softmaxce._options.FLAT_FIELDS``), then the kernel's name for ``softmaxce._dispatch``.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _run
from .._options import FLAT_FIELDS, LossOptions
from .._problem import problem_of
from ._checks import check_values, from_host, host

_FLAT_TYPES = {
    "reduction": "str",
    "ignore_index": "int",
    "label_smoothing": "float",
    "z_loss": "float",
    "softcap": "float?",
    "kl": "bool",
    "semantics": "str",
}
_ARGS = ", ".join(f"{_FLAT_TYPES[name]} {name}" for name in FLAT_FIELDS) + ", *, str kernel"


def run_fused(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: LossOptions,
    kernel: str,
    *,
    want_grad: bool,
    inplace: bool,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The loss and (with ``want_grad``) d loss / d x of batched CPU logits ``x`` (class dim
    1), for ``grad_output = 1``; in place, the gradient is ``x`` itself.

    ``check`` runs the checks that read the data (``check_values``) on the host arrays:
    here, on the CPU, they cost no synchronisation and also guard a compiled graph, whose
    boundary could not read the data; without them the kernel would index out of bounds.
    """
    xa = host(x)
    copy = xa is None  # bfloat16 without ml_dtypes: a float32 copy
    if copy:
        xa = x.to(torch.float32, memory_format=torch.contiguous_format).numpy()
    soft = target.dtype.is_floating_point
    ta = host(target)
    if ta is None:
        ta = target.to(torch.float32).numpy()
    wa = None if weight is None else weight.to(torch.float64).numpy()
    if check:
        wa = check_values(None if soft else ta, wa, xa.shape[1], opts)
    if not soft:
        ta = ta.astype(np.int64, copy=False)
    p = problem_of(xa, ta, opts, axis=1, weight=wa)
    # a float32 copy of a bfloat16 input is ours: the gradient fills it
    loss, grad = _run.run(p, want_grad=want_grad, inplace=want_grad and (inplace or copy),
                          backend=kernel)  # fmt: skip
    loss_t = from_host(np.array(loss))
    if copy:
        loss_t = loss_t.to(torch.bfloat16)
    if grad is None:
        return loss_t, None
    if inplace:
        if copy:
            x.copy_(torch.from_numpy(grad))
        return loss_t, x
    g = from_host(grad)
    return loss_t, (g.to(torch.bfloat16) if copy else g.contiguous())


def _loss_like(input: torch.Tensor, flat: tuple) -> torch.Tensor:
    """An empty loss of the right shape, for the fake implementations."""
    none = LossOptions.from_flat(*flat).reduction == "none"
    shape = (input.shape[0], *input.shape[2:]) if none else ()
    return input.new_empty(shape)


def _loss(input, target, weight, *flat, kernel):
    """The loss only (no gradient is computed)."""
    opts = LossOptions.from_flat(*flat)
    return run_fused(input, target, weight, opts, kernel, want_grad=False, inplace=False)[0]


def _loss_and_grad(input, target, weight, *flat, kernel):
    """The loss and d loss / d input (contiguous, for grad_output = 1), in one pass."""
    opts = LossOptions.from_flat(*flat)
    return run_fused(input, target, weight, opts, kernel, want_grad=True, inplace=False)


def _loss_and_grad_(input, target, weight, *flat, kernel):
    """The loss; d loss / d input (for grad_output = 1) overwrites ``input``."""
    opts = LossOptions.from_flat(*flat)
    return run_fused(input, target, weight, opts, kernel, want_grad=True, inplace=True)[0]


ce = torch.library.custom_op(
    "softmaxce::cross_entropy",
    _loss,
    mutates_args=(),
    schema=f"(Tensor input, Tensor target, Tensor? weight, {_ARGS}) -> Tensor",
)
ce_grad = torch.library.custom_op(
    "softmaxce::cross_entropy_with_grad",
    _loss_and_grad,
    mutates_args=(),
    schema=f"(Tensor input, Tensor target, Tensor? weight, {_ARGS}) -> (Tensor, Tensor)",
)
ce_grad_ = torch.library.custom_op(
    "softmaxce::cross_entropy_with_grad_",
    _loss_and_grad_,
    mutates_args=("input",),
    schema=f"(Tensor(a!) input, Tensor target, Tensor? weight, {_ARGS}) -> Tensor",
)


@ce.register_fake
def _(input, target, weight, *flat, kernel):
    return _loss_like(input, flat)


@ce_grad.register_fake
def _(input, target, weight, *flat, kernel):
    return _loss_like(input, flat), input.new_empty(input.shape)


@ce_grad_.register_fake
def _(input, target, weight, *flat, kernel):
    return _loss_like(input, flat)
