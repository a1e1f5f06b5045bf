"""softmaxce: softmax cross-entropy done right.

Exact (every framework's options, stable for any logits), composable (softmax and its
vector-Jacobian product without any loss, cross-entropy on probabilities, the fused op,
forward/backward objects in ``softmaxce.ops``) and fast (fused kernels that read the logits
once and can write the gradient in place).

>>> import numpy as np, softmaxce
>>> logits = np.array([[2.0, 1.0, 0.1]])
>>> loss, dlogits = softmaxce.softmax_cross_entropy_with_grad(logits, np.array([0]))
>>> round(float(loss), 6)
0.417030
"""

from ._api import (
    cross_entropy,
    cross_entropy_vjp,
    gradcheck,
    log_softmax,
    log_softmax_vjp,
    logsumexp,
    numerical_gradient,
    softmax,
    softmax_cross_entropy,
    softmax_cross_entropy_with_grad,
    softmax_jacobian,
    softmax_vjp,
)
from ._linear import linear_cross_entropy, linear_cross_entropy_with_grad

__version__ = "0.1.0"

__all__ = [
    "cross_entropy",
    "cross_entropy_vjp",
    "gradcheck",
    "linear_cross_entropy",
    "linear_cross_entropy_with_grad",
    "log_softmax",
    "log_softmax_vjp",
    "logsumexp",
    "numerical_gradient",
    "softmax",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_grad",
    "softmax_jacobian",
    "softmax_vjp",
]
