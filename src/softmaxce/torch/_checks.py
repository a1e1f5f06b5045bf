"""Validation of a call, once, at the public boundary: tensors, options, the path it takes.

The static checks (types, dtypes, shapes, devices, options) run on every call, also under
``torch.compile`` (they read no data). The checks of the data (labels in ``[0, C)``, class
weights finite) need the values: they run where those are on the host, by the same helpers as
the NumPy API (``check_values``), never as a device synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import _validate as v
from .._core._xp import namespace
from .._options import LossOptions, loss_options
from .._problem import _softcap_fits
from .._triton._torch import triton_auto, triton_path
from .._validate import check_labels

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INDEX_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
SEMANTICS = ("softmaxce", "torch")  # rows of softmaxce._semantics.TABLE this front end offers
BACKENDS = ("auto", "triton", "numba", "numpy", "core")

# The array namespace of torch tensors, for the core. The core looks it up by the types of its
# arguments (softmaxce._core._xp.namespace, cached per set of types); the first lookup calls a
# functools.lru_cache that torch.compile warns about, so the types a call can bring (tensors,
# and a weight that is an nn.Parameter) are looked up here, once, eagerly.
XP = namespace(torch.empty(0))
namespace(torch.empty(0), torch.nn.Parameter(torch.empty(0)))

try:  # NumPy has no bfloat16: ml_dtypes' (where installed) lets the kernel read torch's in place
    import ml_dtypes

    BF16: np.dtype | None = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes comes with jax
    BF16 = None


def host(t: torch.Tensor) -> np.ndarray | None:
    """The NumPy view of a CPU tensor's own memory (no copy): bfloat16 through its bits as
    ``ml_dtypes.bfloat16``; None for bfloat16 without ml_dtypes."""
    if t.dtype != torch.bfloat16:
        return t.numpy()
    return None if BF16 is None else t.view(torch.int16).numpy().view(BF16)


def from_host(a: np.ndarray) -> torch.Tensor:
    """``host`` reversed: a tensor on ``a``'s memory (bfloat16 through its bits)."""
    if BF16 is not None and a.dtype == BF16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


@dataclass(frozen=True)
class Call:
    """A validated call: its options, and which path computes it.

    ``path`` is ``"fused"`` (a fused CPU kernel on the tensors' memory; ``kernel`` is the
    ``softmaxce._dispatch`` backend: "auto", "numba" or "numpy"), ``"triton"`` (the Triton
    kernel, softmaxce._triton) or ``"core"`` (the core on the tensors, any device).
    """

    opts: LossOptions
    path: str
    kernel: str


def _check_input(input: Any) -> int:
    """The logits; returns the number of classes (dim 1, or 0 for an unbatched input)."""
    if not isinstance(input, torch.Tensor):
        msg = f"input must be a torch.Tensor, got {type(input).__name__}"
        raise TypeError(msg)
    if input.dtype not in FLOAT_DTYPES:
        msg = (
            f"input must be a float tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {input.dtype}"
        )
        raise TypeError(msg)
    if input.dim() == 0:
        msg = "input must have at least one dimension (the classes), got a 0-d tensor"
        raise ValueError(msg)
    class_dim = 0 if input.dim() == 1 else 1
    if input.shape[class_dim] == 0:
        msg = (
            f"input must have at least one class along dim {class_dim}, "
            f"got shape {tuple(input.shape)}"
        )
        raise ValueError(msg)
    return input.shape[class_dim]


def _check_target(input: torch.Tensor, target: Any) -> bool:
    """The target against the logits; returns whether it holds class indices."""
    if not isinstance(target, torch.Tensor):
        msg = f"target must be a torch.Tensor, got {type(target).__name__}"
        raise TypeError(msg)
    if target.device != input.device:
        msg = f"target must be on the input's device {input.device}, got {target.device}"
        raise ValueError(msg)
    if target.dtype == torch.bool:
        msg = (
            "target must be integer class indices or a float distribution, got a bool tensor; "
            "use .long() for indices or .float() for a one-hot distribution"
        )
        raise TypeError(msg)
    if target.is_floating_point():
        if target.shape != input.shape:
            msg = (
                f"target: a float (probability) target must have the input's shape "
                f"{tuple(input.shape)}, got {tuple(target.shape)}"
            )
            raise ValueError(msg)
        return False
    if target.dtype not in INDEX_DTYPES:
        msg = f"target must be an integer or float tensor, got dtype {target.dtype}"
        raise TypeError(msg)
    class_dim = 0 if input.dim() == 1 else 1
    batch_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]
    if target.shape != batch_shape:
        msg = (
            f"target: integer class indices must have the input's shape without the class "
            f"dim {class_dim}, i.e. {tuple(batch_shape)}, got {tuple(target.shape)}"
        )
        raise ValueError(msg)
    return True


def _check_weight(input: torch.Tensor, weight: Any, n_classes: int) -> None:
    if weight is None:
        return
    if not isinstance(weight, torch.Tensor):
        msg = (
            f"weight must be None or a torch.Tensor of shape ({n_classes},), "
            f"got {type(weight).__name__}"
        )
        raise TypeError(msg)
    if not weight.is_floating_point():
        msg = f"weight must be a float tensor of shape ({n_classes},), got dtype {weight.dtype}"
        raise TypeError(msg)
    if weight.shape != (n_classes,):
        msg = (
            f"weight must have shape ({n_classes},) (one per class), "
            f"got shape {tuple(weight.shape)}"
        )
        raise ValueError(msg)
    if weight.device != input.device:
        msg = f"weight must be on the input's device {input.device}, got {weight.device}"
        raise ValueError(msg)


def _check_inplace(input: torch.Tensor, inplace_backward: Any) -> bool:
    """``inplace_backward``: a bool; when True, an input that may be overwritten."""
    if not isinstance(inplace_backward, bool):
        msg = f"inplace_backward must be a bool, got {type(inplace_backward).__name__}"
        raise TypeError(msg)
    if not inplace_backward:
        return False
    if not input.is_contiguous():
        msg = (
            "inplace_backward=True needs a contiguous input to hold the gradient; "
            "call .contiguous() or pass inplace_backward=False"
        )
        raise ValueError(msg)
    if torch.compiler.is_compiling():
        # (dynamo cannot trace ``_is_view``; AOTAutograd has its own checks of in-place
        # changes to leaves, and functionalises the mutation)
        return True
    base = input._base if input._is_view() else input
    if base.requires_grad and base.is_leaf:
        msg = (
            "inplace_backward=True overwrites the input with its gradient, but the input is "
            "a leaf tensor that requires grad (or a view of one), which PyTorch never "
            "modifies in place; pass the output of a layer or use inplace_backward=False"
        )
        raise ValueError(msg)
    return True


def _disjoint(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> None:
    """In place on the fused path: no other argument may share the input's memory (the
    kernel would read a target or weight that the gradient is overwriting). The NumPy API's
    check, on the same memory (bfloat16 without ml_dtypes runs on a float32 copy: nothing to
    check)."""
    buffer = host(input.detach())
    if buffer is None or torch.compiler.is_compiling():
        return
    others = {"target": target, "weight": weight}
    arrays = {name: host(t.detach()) for name, t in others.items() if t is not None}
    v.disjoint_from_buffer(buffer, **{k: a for k, a in arrays.items() if a is not None})


def _path(input: torch.Tensor, target: torch.Tensor, weight: Any, name: str) -> tuple[str, str]:
    """``(path, kernel)`` for ``backend=name`` (see ``Call``).

    "auto": the fused CPU kernel for CPU tensors whose only gradient is the input's; the core
    otherwise (other devices; a probability target or class weights that require grad, whose
    gradients autograd takes through the core). An explicit kernel that cannot run raises.
    """
    other_grads = torch.is_grad_enabled() and (
        target.requires_grad or (weight is not None and weight.requires_grad)
    )
    cpu = input.device.type == "cpu"
    if name == "triton" or (name == "auto" and triton_auto(input, other_grads)):
        return triton_path(input, other_grads), "triton"
    if name == "core" or (name == "auto" and (other_grads or not cpu)):
        return "core", "auto"
    if not cpu:
        msg = (
            f"backend={name!r} runs on CPU tensors only, got an input on {input.device}; "
            "use 'auto' or 'core'"
        )
        raise ValueError(msg)
    if other_grads:
        msg = (
            f"backend={name!r} differentiates the input only, but the target or the weight "
            "requires grad; use 'auto' or 'core' (or detach them)"
        )
        raise ValueError(msg)
    return "fused", name


def check_call(
    input: Any,
    target: Any,
    weight: Any,
    *,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    inplace_backward: Any,
    semantics: Any,
    backend: Any,
) -> Call:
    """The static checks of a call, and its options built once; ValueError/TypeError naming
    the bad argument."""
    n_classes = _check_input(input)
    index = _check_target(input, target)
    _check_weight(input, weight, n_classes)
    opts = loss_options(
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        semantics=check_semantics(semantics),
        cache=not torch.compiler.is_compiling(),
    )
    if opts.softcap is not None:
        _softcap_fits(XP, input.dtype, opts.softcap)
    if opts.semantics.name == "torch" and not index and opts.ignore_index != -100:
        # F.cross_entropy refuses it rather than ignoring it; softmaxce semantics ignore it.
        msg = (
            f"ignore_index={opts.ignore_index} has no meaning for a float (probability) "
            "target, and semantics='torch' refuses it as F.cross_entropy does; leave it at -100"
        )
        raise ValueError(msg)
    inplace = _check_inplace(input, inplace_backward)
    path, kernel = _path(input, target, weight, check_backend(backend))
    if inplace and path == "fused":
        _disjoint(input, target, weight)
    return Call(opts, path, kernel)


def check_values(
    labels: np.ndarray | None, weight: np.ndarray | None, n_classes: int, opts: LossOptions
) -> np.ndarray | None:
    """The checks that read the data, on host arrays: class indices in ``[0, C)`` or ignored
    (the check of the NumPy API), class weights finite and, unless the semantics accepts
    them, non-negative. Returns the weights as float64."""
    if labels is not None:
        check_labels(labels, n_classes, opts.ignore_index, "target")
    return v.class_weight(weight, n_classes, allow_negative=opts.semantics.negative_weight)


def check_semantics(value: Any) -> str:
    """One of ``SEMANTICS`` (ValueError naming the argument otherwise)."""
    return v.choice(value, SEMANTICS, "semantics")


def check_backend(value: Any) -> str:
    """One of ``BACKENDS``."""
    return v.choice(value, BACKENDS, "backend")
