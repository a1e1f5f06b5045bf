"""How each framework's softmax cross-entropy differs from softmaxce's: one table, as data.

Every front end and compat mode computes its loss with the core; the rows of ``TABLE`` say
what it divides ``"mean"`` by, what an empty denominator gives, whether class weights may be
negative, which of the framework's NaNs (artefacts of how it forms the loss, not of the
mathematics) to reproduce, and the few places where a framework's loss is another function of
the same row statistics. ``softmaxce.torch.cross_entropy(semantics="torch")`` and
``softmaxce.compat.pytorch`` read the same row. Each flag is implemented once, in ``_core``
(named below); how a framework's *arguments* are checked is not semantics and lives with the
compat modes (``softmaxce.compat._common.CHECKS``, keyed by the same names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Semantics:
    """One framework's choices (see ``softmaxce._core.reduce`` for MEAN_BY and EMPTY)."""

    name: str
    mean_index: str  # what "mean" divides by for class indices
    mean_soft: str  # ... for probability targets
    empty: str  # what a zero denominator gives
    negative_weight: bool  # class weights may be negative
    # NaN quirks (_core/quirks.py, applied by _run), each off in softmaxce's own semantics:
    nan_zero_log_zero: str = ""  # the framework forms coef * log_softmax, and 0 * -inf is NaN:
    # "" never, "soft" for probability targets only, "all" for both kinds
    nan_zero_mass_grad: bool = False  # mean of index targets with W == 0: NaN gradient on the
    # rows that count (0 * 1/0)
    nan_nonfinite_row_grad: bool = False  # a row whose log-softmax is NaN (NaN or +inf logit,
    # or every logit -inf) gets a NaN gradient, even when ignored
    # Other functions of the row statistics (_core/rows.py), each 0/False in softmaxce's own:
    kl_eps: float = 0.0  # the KL term is K = sum_c w_c q_c log(q_c + kl_eps) (Chainer: 1e-7)
    unit_mass: bool = False  # the target's mass S is taken as 1: L = lse - sum_c w_c q_c z_c,
    # gradient p - w q, as if every target row summed to 1 (MXNet's backward)
    label_keeps_logit: bool = False  # an index label outside ``where`` keeps its own logit:
    # L = lse over the allowed classes - z_label, gradient p - onehot there (optax); softmaxce:
    # the label has probability 0, the loss is +inf

    def mean_by(self, soft: bool) -> str:
        return self.mean_soft if soft else self.mean_index

    def core_only(self, opts: Any, *, soft: bool, weighted: bool, masked: bool) -> bool:
        """Whether a problem needs a rule of the core that the numba kernels do not implement
        (``opts``: its LossOptions; ``weighted``: class weights; ``masked``: a ``where``)."""
        return bool(
            (self.kl_eps and opts.kl)
            or (self.unit_mass and (soft or weighted or opts.label_smoothing))  # else S == 1
            or (self.label_keeps_logit and masked and not soft)
        )


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
    # chainer.functions.softmax_cross_entropy, normalize=True: the mean over the rows that
    # count, at least 1; soft targets: t * log_softmax, the mean over the positions, and the
    # KL divergence sum t (log(t + 1e-7) - log p).
    "chainer": Semantics(
        "chainer",
        "valid",
        "positions",
        "one",
        negative_weight=True,
        nan_zero_log_zero="soft",
        kl_eps=1e-7,
    ),
    # ... normalize=False: index targets divide by the batch (x.shape[0]) instead.
    "chainer-batch": Semantics(
        "chainer-batch",
        "batch",
        "positions",
        "one",
        negative_weight=True,
        nan_zero_log_zero="soft",
        kl_eps=1e-7,
    ),
    # mygrad.nnet.losses.softmax_crossentropy: the mean over the batch, 0/0 = NaN.
    "mygrad": Semantics("mygrad", "batch", "batch", "nan", negative_weight=False),
    # optax returns per-example losses ("mean" is never taken); labels * log_softmax for
    # probabilities; an integer label at a masked class keeps its logit.
    "optax": Semantics(
        "optax",
        "valid",
        "positions",
        "zero",
        negative_weight=False,
        nan_zero_log_zero="soft",
        label_keeps_logit=True,
    ),
    # MXNet SoftmaxOutput: its normalisation reaches the core as dloss with reduction "sum";
    # its backward is grad_scale * (p - label) whatever the label rows sum to.
    "mxnet": Semantics("mxnet", "valid", "positions", "one", negative_weight=False, unit_mass=True),
}
