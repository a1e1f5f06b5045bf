"""How the kernels are compiled: numba's disk cache where it can be used, and the flags.

Every ``njit`` of the package goes through ``jit``, which passes ``cache=CACHE``.

* ``CACHE``: whether numba can keep compiled kernels on disk. It needs a writable folder for
  this package: ``NUMBA_CACHE_DIR``, the ``__pycache__`` beside these files, or the user's cache
  folder (``$XDG_CACHE_HOME``, ``~/.cache``). In a read-only install without any of them,
  ``cache=True`` raises at decoration (``no locator available``), so the kernels are then
  compiled once per process instead. Under ``NUMBA_OPT=0`` (a debugging setting) unoptimised
  code keeps the addresses of the functions it calls, which numba cannot cache (it would warn
  at each compile), so nothing is cached either.
* Stale entries: numba invalidates a cached function when *its own* source file changes, not
  when a function it inlined from another file does (a documented limitation). The kernels of
  ``rows.py`` inline the helpers of ``segments.py``, ``elementary.py`` and ``intrinsics.py``, so
  at import the package compares a digest of all its sources with the one recorded in the
  cache folder, and on a mismatch removes the package's cache entries there before anything is
  loaded (a checkout that changed only ``elementary.py`` would otherwise keep running the old
  exponential).

Fast-math flags: ``FM_EXP`` (FMA contraction only) for the exponential and tanh, whose
rounding tricks and range reduction must run exactly as written; ``FM`` for the loops:
reassociation lets LLVM vectorise their sums; never ``nnan``/``ninf``, so that non-finite
values propagate.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import numba
from numba import njit, types
from numba.extending import overload

FM_EXP = frozenset({"contract"})
FM = frozenset({"contract", "reassoc", "nsz"})

_HERE = Path(__file__).resolve().parent
_DIGEST_FILE = "softmaxce-numba-sources.sha256"


def _cache_probe() -> int:  # compiled never; numba only looks up its cache folder
    return 0


def _probe() -> Any:
    """numba's cache of a function of this folder, or None where it cannot cache."""
    if numba.config.OPT == 0:
        return None
    try:
        return njit(cache=True)(_cache_probe)._cache
    except RuntimeError:  # no locator: no writable cache folder for this file
        return None


def _digest() -> str:
    """sha256 of every source file of the package (names and contents)."""
    h = hashlib.sha256()
    for path in sorted(_HERE.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def drop_stale_entries(folder: Path) -> bool:
    """Remove the package's cache entries from ``folder`` unless they were compiled from the
    current sources; returns whether anything was removed. Failures are ignored: at worst a
    kernel is compiled again."""
    digest = _digest()
    stamp = folder / _DIGEST_FILE
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    modules = tuple(f"{p.stem}." for p in _HERE.glob("*.py"))
    removed = False
    try:
        for entry in folder.iterdir():
            if entry.suffix in (".nbi", ".nbc") and entry.name.startswith(modules):
                entry.unlink(missing_ok=True)
                removed = True
        stamp.write_text(digest)
    except OSError:
        pass
    return removed


def _can_cache() -> bool:
    cache = _probe()
    if cache is None:
        return False
    folder = getattr(cache, "cache_path", None)
    if folder is not None and os.path.isdir(folder):
        drop_stale_entries(Path(folder))
    return True


# The `cache=` of every njit function: caching only saves compile time, so where it is
# impossible the kernels run uncached rather than not at all.
CACHE = _can_cache()


def jit(*, fastmath: frozenset = FM, nogil: bool = False):
    """``numba.njit`` with the package's settings: ``cache=CACHE``, NumPy's error model
    (division by zero gives inf/NaN, not an exception) and ``fastmath`` flags."""
    return njit(cache=CACHE, error_model="numpy", fastmath=set(fastmath), nogil=nogil)


def inline(fn: Any) -> Any:
    """A concern of the row loops (loops, stores), inlined into numba's IR before typing.

    A loop that reads and writes one row then sees one array, not two arguments that LLVM
    would have to test for overlap at run time (in place they overlap, and the loop would run
    unvectorised). Its optional inputs are handled by ``by_type`` helpers, never by
    ``if arg is None`` (which would be typed both ways here); the kernels choose between code
    with and without an optional output on their own arguments, where numba prunes the
    branch. It takes the flags of the loop it is inlined into (``FM``)."""
    return njit(inline="always", cache=CACHE, error_model="numpy", fastmath=set(FM))(fn)


def by_type(choose: Any = None, *, fastmath: frozenset = FM) -> Any:
    """A small helper whose body ``choose`` picks from the numba types of the arguments at
    each call site, e.g. one body for an array and one for None; the variants of the loops are
    these choices. Compiled as a function of its own with ``fastmath`` (LLVM inlines it into
    the loops, keeping each instruction's flags), not inlined into numba's typed IR: numba
    0.68 can drop a later store of the caller there. ``@by_type(fastmath=FM_EXP)`` for
    formulas whose order of operations carries their accuracy."""
    if choose is None:
        return functools.partial(by_type, fastmath=fastmath)

    @functools.wraps(choose)
    def stub(*args):  # called only from compiled code
        raise NotImplementedError(choose.__name__)

    options = {"fastmath": set(fastmath), "error_model": "numpy"}
    overload(stub, jit_options=options)(choose)
    return stub


def is_none(ty: Any) -> bool:
    """Whether a numba type is that of None (an optional input left out)."""
    return isinstance(ty, types.NoneType | types.Omitted)
