"""Collection rules for the doctest run over src/: modules of optional frameworks are skipped
when the framework is not installed (the package itself imports without them)."""

import importlib.util

collect_ignore = [
    path
    for path, needs in [
        ("src/softmaxce/_numba_kernels.py", "numba"),
        ("src/softmaxce/torch.py", "torch"),
    ]
    if importlib.util.find_spec(needs) is None
]
