"""The loss options as one frozen object: built once by validation, flattened in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import _validate as v
from ._semantics import SOFTMAXCE, TABLE, Semantics


@dataclass(frozen=True)
class LossOptions:
    """Validated scalar options of a softmax cross-entropy (arrays travel separately).

    Build it with ``loss_options`` (which validates); kernels and custom ops receive it
    through ``flat`` / ``from_flat``, never as loose positional tuples.
    """

    reduction: str = "mean"
    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    kl: bool = False
    semantics: Semantics = field(default=SOFTMAXCE)

    def flat(self) -> tuple[str, int, float, float, float | None, bool, str]:
        """The options as typed scalars, in ``FLAT_FIELDS`` order (for custom ops)."""
        return (
            self.reduction,
            self.ignore_index,
            self.label_smoothing,
            self.z_loss,
            self.softcap,
            self.kl,
            self.semantics.name,
        )

    @classmethod
    def from_flat(
        cls,
        reduction: str,
        ignore_index: int,
        label_smoothing: float,
        z_loss: float,
        softcap: float | None,
        kl: bool,
        semantics: str,
    ) -> LossOptions:
        """The inverse of ``flat`` (no validation: the values came from one)."""
        return cls(reduction, ignore_index, label_smoothing, z_loss, softcap, kl, TABLE[semantics])


FLAT_FIELDS = (
    "reduction",
    "ignore_index",
    "label_smoothing",
    "z_loss",
    "softcap",
    "kl",
    "semantics",
)


# Options built by loss_options, by the values (and types) of its arguments: a training loop
# calls with the same few every time, and validating them costs more than the loss of a small
# batch. Only successful validations are kept; bounded, so that a caller varying a float
# option on every call does not grow it without end.
_BUILT: dict[tuple, LossOptions] = {}
_MAX_BUILT = 256


def loss_options(
    *,
    reduction: Any = "mean",
    ignore_index: Any = -100,
    label_smoothing: Any = 0.0,
    z_loss: Any = 0.0,
    softcap: Any = None,
    soft_target_loss: Any = "cross-entropy",
    semantics: Any = "softmaxce",
    cache: bool = True,
) -> LossOptions:
    """Validate the scalar options once; ValueError/TypeError naming the bad one.

    Built options are kept by the values and types of the arguments (``True`` and ``1`` are
    different keys: one is refused), so a repeated call costs a dictionary lookup.
    ``cache=False`` validates without the cache (``torch.compile`` cannot trace its lookup).
    """
    if not cache:
        return _validated(
            reduction, ignore_index, label_smoothing, z_loss, softcap, soft_target_loss, semantics
        )
    numbers = (ignore_index, label_smoothing, z_loss, softcap)  # (True == 1: types in the key)
    key = (reduction, *numbers, soft_target_loss, semantics, *map(type, numbers))
    try:
        return _BUILT[key]
    except (KeyError, TypeError):  # TypeError: an unhashable argument (validation names it)
        pass
    opts = _validated(
        reduction, ignore_index, label_smoothing, z_loss, softcap, soft_target_loss, semantics
    )
    if len(_BUILT) >= _MAX_BUILT:
        _BUILT.clear()
    try:
        _BUILT[key] = opts
    except TypeError:
        pass
    return opts


def _validated(reduction, ignore_index, label_smoothing, z_loss, softcap, soft_target_loss,
               semantics) -> LossOptions:  # fmt: skip
    sem = v.choice(semantics, tuple(TABLE), "semantics")
    kl = v.soft_target_loss(soft_target_loss)
    return LossOptions(
        reduction=v.reduction(reduction),
        ignore_index=v.ignore_index(ignore_index),
        label_smoothing=v.label_smoothing(label_smoothing),
        z_loss=v.z_loss(z_loss),
        softcap=v.softcap(softcap),
        kl=kl == "kl-divergence",
        semantics=TABLE[sem],
    )
