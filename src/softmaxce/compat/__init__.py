"""Compatibility modes: other frameworks' softmax cross-entropy, on NumPy, exactly.

Each submodule has the original's name, signature, defaults and semantics, so that porting is
a change of import, plus a ``*_with_grad`` twin that also returns the gradient with respect to
the logits. Every mode is a mapping of the framework's options onto the one core of
``softmaxce`` under the framework's row of ``softmaxce._semantics.TABLE`` (its argument
names and dtypes: ``_common.CHECKS``), checked against golden files recorded from the real
frameworks. Documented differences are listed in ``docs/compat/<framework>.md``.

- ``softmaxce.compat.mxnet``: ``SoftmaxOutput`` (MXNet 1.x)
- ``softmaxce.compat.chainer``: ``softmax_cross_entropy`` (Chainer v7)
- ``softmaxce.compat.mygrad``: ``softmax_crossentropy`` (mygrad 2.5)
- ``softmaxce.compat.pytorch``: ``cross_entropy`` (``torch.nn.functional``)
- ``softmaxce.compat.optax``: ``softmax_cross_entropy`` and
  ``softmax_cross_entropy_with_integer_labels``
"""

from . import chainer, mxnet, mygrad, optax, pytorch

__all__ = ["chainer", "mxnet", "mygrad", "optax", "pytorch"]
