r"""Forward/backward objects for people who build their own network framework.

Each object has ``forward(*inputs) -> output`` and ``backward(doutput) -> dinput`` and keeps
only what its backward needs (``Softmax`` keeps its output, not its input).

Do I need the softmax derivative when the loss is fused? No. With ``p = softmax(z)`` and the
cross-entropy ``L = -sum_c q_c log p_c``, the chain rule through the softmax Jacobian
``J = diag(p) - p p^T`` gives

.. math:: \frac{\partial L}{\partial z} = J^T \Bigl(-\frac{q}{p}\Bigr)
          = -q + p \sum_c q_c ,

which is ``p - q`` when ``q`` sums to 1. ``SoftmaxCrossEntropy`` computes that directly,
in one pass and without dividing by probabilities that may have underflowed to 0; chaining
``Softmax`` and ``CrossEntropy`` gives the same gradient (up to rounding) where the
probabilities are not tiny.

Examples
--------
>>> import numpy as np
>>> from softmaxce.ops import Softmax, CrossEntropy, SoftmaxCrossEntropy
>>> x, t = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, -1.0]]), np.array([2, 0])
>>> sm, ce = Softmax(), CrossEntropy()
>>> loss = ce.forward(sm.forward(x), t)
>>> chained = sm.backward(ce.backward())
>>> fused = SoftmaxCrossEntropy()
>>> bool(np.isclose(fused.forward(x, t), loss)), bool(np.allclose(fused.backward(), chained))
(True, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _api
from . import _validate as v
from ._options import loss_options
from ._problem import prepare
from ._run import run

__all__ = ["CrossEntropy", "LogSoftmax", "Softmax", "SoftmaxCrossEntropy"]


def _saved(obj: Any, value: Any) -> Any:
    if value is None:
        msg = f"{type(obj).__name__}.backward called before forward"
        raise RuntimeError(msg)
    return value


class Softmax:
    """``y = softmax(x)`` along ``axis``; backward is ``softmaxce.softmax_vjp`` (keeps y)."""

    def __init__(self, axis: int = -1) -> None:
        v.options({"axis": axis}, ("axis",), "Softmax")
        self.axis = axis
        self._y: np.ndarray | None = None

    def forward(self, x: Any) -> np.ndarray:
        self._y = _api.softmax(x, axis=self.axis)
        return self._y

    def backward(self, dy: Any) -> np.ndarray:
        return _api.softmax_vjp(_saved(self, self._y), dy, axis=self.axis)


class LogSoftmax:
    """``logp = log_softmax(x)``; backward is ``softmaxce.log_softmax_vjp`` (keeps logp)."""

    def __init__(self, axis: int = -1) -> None:
        v.options({"axis": axis}, ("axis",), "LogSoftmax")
        self.axis = axis
        self._logp: np.ndarray | None = None

    def forward(self, x: Any) -> np.ndarray:
        self._logp = _api.log_softmax(x, axis=self.axis)
        return self._logp

    def backward(self, dy: Any) -> np.ndarray:
        return _api.log_softmax_vjp(_saved(self, self._logp), dy, axis=self.axis)


class CrossEntropy:
    """Cross-entropy on probabilities (``softmaxce.cross_entropy``); keeps probs, target.

    ``backward(dloss=None)`` returns d loss / d probs (``softmaxce.cross_entropy_vjp``).
    Options: ``axis``, ``weight``, ``ignore_index``, ``reduction``; unknown ones and values
    that are invalid whatever the arrays raise here, not at ``forward``.
    """

    OPTIONS = ("axis", "weight", "ignore_index", "reduction")

    def __init__(self, **opts: Any) -> None:
        v.options(opts, self.OPTIONS, "CrossEntropy")
        self.opts = opts
        self._saved: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, probs: Any, target: Any) -> Any:
        loss = _api.cross_entropy(probs, target, **self.opts)
        self._saved = (np.asarray(probs), np.asarray(target))
        return loss

    def backward(self, dloss: Any = None) -> np.ndarray:
        probs, target = _saved(self, self._saved)
        return _api.cross_entropy_vjp(probs, target, dloss, **self.opts)


class SoftmaxCrossEntropy:
    """The fused softmax cross-entropy (``softmaxce.softmax_cross_entropy_with_grad``).

    ``forward(logits, target)`` computes the loss and, in the same pass, the gradient for
    ``dloss = 1``; it keeps that gradient only (not the logits). ``backward(dloss=None)``
    scales it by ``dloss`` (a scalar, or per position for ``reduction="none"``). Accepts every
    option of ``softmaxce.softmax_cross_entropy``, ``inplace`` and ``backend`` included;
    unknown ones and values that are invalid whatever the arrays raise here, not at
    ``forward``, where the options are not validated again.
    """

    OPTIONS = (*_api.LOSS_DEFAULTS, "inplace", "backend")

    def __init__(self, **opts: Any) -> None:
        v.options(opts, self.OPTIONS, "SoftmaxCrossEntropy")
        self.opts = opts
        full = {**_api.LOSS_DEFAULTS, **opts}
        self._loss_opts = loss_options(
            **{k: full[k] for k in _api.LOSS_DEFAULTS if k not in _ARRAY_OPTIONS}
        )
        self._arrays = {k: full[k] for k in _ARRAY_OPTIONS}
        self._inplace = v.flag(opts.get("inplace", False), "inplace")
        self._backend = v.backend(opts.get("backend", "auto"))
        self._grad: np.ndarray | None = None
        self._dtype: np.dtype = np.dtype(np.float64)
        self._loss_shape: tuple[int, ...] = ()

    def forward(self, logits: Any, target: Any) -> Any:
        arrays = self._arrays
        if self._inplace:
            v.inplace_buffer(logits)
            v.disjoint_from_buffer(
                logits, target=target, weight=arrays["weight"], where=arrays["where"]
            )
        problem = prepare(logits, target, self._loss_opts, **arrays)
        self._dtype = problem.x.dtype
        # float16: keep the float32 gradient so that backward rounds to float16 only once.
        half = self._dtype == np.float16 and not self._inplace
        loss, self._grad = run(
            problem,
            want_grad=True,
            inplace=self._inplace,
            backend=self._backend,
            grad_dtype=np.float32 if half else None,
        )
        self._dtype = self._grad.dtype if not half else self._dtype  # type: ignore[union-attr]
        self._loss_shape = np.shape(loss)
        return loss

    def backward(self, dloss: Any = None) -> np.ndarray:
        grad = _saved(self, self._grad)
        if dloss is None:
            return grad.astype(self._dtype, copy=False)
        d = v.dloss_array(dloss, self._loss_shape)
        if d.ndim:  # per position ("none"): broadcast along the class axis
            d = np.expand_dims(d, v.class_axis(self.opts.get("axis", -1), grad.ndim))
        return (grad * d).astype(self._dtype, copy=False)


# The options that are arrays or the class axis: given to prepare per call, not LossOptions.
_ARRAY_OPTIONS = ("axis", "weight", "where")
