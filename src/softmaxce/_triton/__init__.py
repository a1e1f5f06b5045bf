"""Triton kernels of the core's row contract, for CUDA tensors (optional: ``softmaxce[gpu]``).

Nothing here imports Triton until a kernel is asked for: ``unavailable`` says whether one
can run, ``launchers`` imports them. ``TRITON_INTERPRET=1`` (set before the first launch)
runs them on CPU tensors with Triton's interpreter, as the tests do.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from types import ModuleType


def interpreting() -> bool:
    """Whether Triton's interpreter is on (``TRITON_INTERPRET=1``): the kernels then run on CPU
    tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@functools.cache
def unavailable() -> str | None:
    """Why the Triton kernels cannot run here, or None when they can (triton installed).
    Looked up once (``backend="auto"`` asks on every call with a CUDA tensor)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'softmaxce[gpu]')"
    return None


def launchers() -> ModuleType:
    """The launchers (``._launch``); ImportError saying why when Triton is missing."""
    why = unavailable()
    if why is not None:
        raise ImportError(why)
    from . import _launch

    return _launch


__all__ = ["interpreting", "launchers", "unavailable"]
