"""How each framework's softmax cross-entropy differs from softmaxce's: one table, as data.

Every front end and compat mode computes its loss with the core; the rows of :data:`TABLE` say
what it divides ``"mean"`` by, what an empty denominator gives, whether class weights may be
negative, and which of the framework's NaNs (artefacts of how it forms the loss, not of the
mathematics) to reproduce. ``softmaxce.torch.cross_entropy(semantics="torch")`` and
``softmaxce.compat.pytorch`` read the same row.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Semantics:
    """One framework's choices (see ``softmaxce._core.reduce`` for MEAN_BY and EMPTY)."""

    name: str
    mean_index: str  # what "mean" divides by for class indices
    mean_soft: str  # ... for probability targets
    empty: str  # what a zero denominator gives
    negative_weight: bool  # class weights may be negative
    # NaN quirks, each off in softmaxce's own semantics:
    nan_zero_log_zero: str = ""  # the framework forms coef * log_softmax, and 0 * -inf is NaN:
    # "" never, "soft" for probability targets only, "all" for both kinds
    nan_zero_mass_grad: bool = False  # mean of index targets with W == 0: NaN gradient on the
    # rows that count (0 * 1/0)
    nan_nonfinite_row_grad: bool = False  # a row whose log-softmax is NaN (NaN or +inf logit,
    # or every logit -inf) gets a NaN gradient, even when ignored

    def mean_by(self, soft: bool) -> str:
        return self.mean_soft if soft else self.mean_index


SOFTMAXCE = Semantics("softmaxce", "mass", "mass", "zero", negative_weight=False)

TABLE: dict[str, Semantics] = {
    "softmaxce": SOFTMAXCE,
    # F.cross_entropy: index targets divide by sum_i w[t_i] over rows not ignored, probability
    # targets by the number of positions; 0/0 is NaN; it multiplies log_softmax by the
    # (smoothed, weighted) target, so 0 * -inf is NaN.
    "torch": Semantics(
        "torch",
        "mass",
        "positions",
        "nan",
        negative_weight=True,
        nan_zero_log_zero="all",
        nan_zero_mass_grad=True,
        nan_nonfinite_row_grad=True,
    ),
    # chainer.functions.softmax_cross_entropy (normalize=True; normalize=False divides by the
    # batch), soft targets: t * log_softmax.
    "chainer": Semantics(
        "chainer", "valid", "positions", "one", negative_weight=True, nan_zero_log_zero="soft"
    ),
    # mygrad.nnet.losses.softmax_crossentropy: the mean over the batch, 0/0 = NaN.
    "mygrad": Semantics("mygrad", "batch", "batch", "nan", negative_weight=False),
    # optax returns per-example losses: "mean" is never taken.
    "optax": Semantics(
        "optax", "valid", "positions", "zero", negative_weight=False, nan_zero_log_zero="soft"
    ),
    # MXNet SoftmaxOutput: its normalisation reaches the core as dloss with reduction "sum".
    "mxnet": Semantics("mxnet", "valid", "positions", "one", negative_weight=False),
}
