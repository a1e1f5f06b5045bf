"""The test suite as ``make test`` runs it: pytest in a few processes, one after another.

    python scripts/run_tests.py [pytest options...]      # e.g. -x, -q, -k softcap

One process for the whole suite grows to 3.5 GB: every numba kernel variant the tests compile
stays in memory (about 4 MB each), and so do the torch, JAX and Triton runtimes with all they
compiled. Run as the groups below, each process starts afresh, and the suite's peak is that of
its largest group (``scripts/peak_memory.py`` measures it). Every test file runs in exactly one
group: a file that no pattern names runs in the last group, "rest". The doctests of
``src/softmaxce`` are a group of their own. All groups run even when one fails; the exit
status is the first failing group's. A group whose every file skips itself (pytest's exit 5,
no test collected: the kernel tests without numba) has passed. The summary gives each group's
time and its largest process (``ru_maxrss``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (name, file patterns under tests/), in the order they run; the heavy grids first.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core fused", ("test_core_fused.py",)),
    ("core", ("test_core_*.py",)),
    ("rows", ("test_rows.py",)),
    ("properties and errors", ("test_properties.py", "test_errors.py")),
    ("numba kernels", ("test_numba_kernels.py", "test_bfloat16.py", "test_kernel_*.py")),
    ("compat", ("test_compat_*.py",)),
    ("torch", ("test_torch_*.py", "test_reliability_torch.py", "test_linear_torch.py")),
    ("triton", ("test_triton_*.py",)),
    # (its ranks are processes of their own, each with torch: a small test process beside them)
    ("distributed", ("test_distributed*.py",)),
    ("jax", ("test_jax*.py",)),
    ("tools", ("test_cli.py", "test_docs.py", "test_packaging.py")),
)
DOCTESTS = "src/softmaxce"


def groups(root: Path = ROOT) -> list[tuple[str, list[str]]]:
    """The groups of test files (paths relative to ``root``), each file in exactly one."""
    files = sorted(p.relative_to(root).as_posix() for p in (root / "tests").glob("test_*.py"))
    taken: set[str] = set()
    out = []
    for name, patterns in GROUPS:
        mine = [f for f in files if f not in taken and any(Path(f).match(p) for p in patterns)]
        taken.update(mine)
        if mine:
            out.append((name, mine))
    rest = [f for f in files if f not in taken]
    if rest:
        out.append(("rest", rest))
    out.append(("doctests", [DOCTESTS]))
    return out


NOTHING_COLLECTED = 5  # pytest's exit status when every test file skipped itself


def _pytest(paths: list[str], argv: list[str]) -> tuple[int, float]:
    """pytest on ``paths``: its exit status, and its largest process's resident set in GiB
    (the process and what it waited for)."""
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *paths, *argv], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    rc = 0 if proc.returncode == NOTHING_COLLECTED else proc.returncode
    return rc, usage.ru_maxrss / 2**20  # (KiB on Linux)


def main(argv: list[str]) -> int:
    results = []
    for name, paths in groups():
        print(f"\n=== {name}: {' '.join(paths)}", flush=True)
        start = time.perf_counter()
        rc, gib = _pytest(paths, argv)
        results.append((name, rc, time.perf_counter() - start, gib))
    print("\n=== the suite, group by group (time, largest process)")
    for name, rc, seconds, gib in results:
        verdict = "passed" if rc == 0 else f"FAILED (pytest exit {rc})"
        print(f"{name:>24}: {verdict:<24} {seconds:6.0f} s {gib:6.2f} GiB")
    return next((rc for _, rc, _, _ in results if rc != 0), 0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
