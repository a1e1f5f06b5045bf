"""Collection rules for the doctest run over src/: modules of optional frameworks are skipped
when the framework is not installed (the package itself imports without them).

``SOFTMAXCE_BLOCK_NUMBA=1`` runs the suite as in an environment without numba (``make test``
does so for the tests that do not need it): ``import numba`` raises ``ModuleNotFoundError`` and
``importlib.util.find_spec("numba")`` is None, exactly what the package and the tests see in a
virtual environment where numba is not installed.
"""

import importlib.util
import os
import sys

if os.environ.get("SOFTMAXCE_BLOCK_NUMBA", "") not in ("", "0"):
    if sys.modules.get("numba") is not None:
        msg = "SOFTMAXCE_BLOCK_NUMBA=1, but numba was imported before conftest.py"
        raise RuntimeError(msg)
    for _name in ("numba", "llvmlite"):
        sys.modules[_name] = None  # type: ignore[assignment]  # the import system's "absent"

# Triton's kernels run on CPU tensors under its interpreter where there is no GPU; the switch
# must be on before they are first imported (by the tests or by the doctest collection).
if importlib.util.find_spec("triton") is not None and not os.path.exists("/dev/nvidiactl"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

collect_ignore = [
    path
    for path, needs in [
        ("src/softmaxce/_numba", "numba"),
        ("src/softmaxce/torch", "torch"),
        ("src/softmaxce/_triton", "triton"),
        ("src/softmaxce/jax", "jax"),
        ("src/softmaxce/jax/_handler.py", "numba"),
    ]
    if importlib.util.find_spec(needs) is None
]
