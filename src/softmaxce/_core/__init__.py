"""The formulas of softmaxce, written once, for any array library (see ``docs/internals.md``)."""

from ._legacy import *  # noqa: F403  (transition: the NumPy-only core, being replaced)
from ._legacy import _ERRSTATE, _xmul  # noqa: F401
