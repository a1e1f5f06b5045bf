"""The test suite as ``make test`` runs it: pytest in a few processes, one after another.

    python scripts/run_tests.py [pytest options...]      # e.g. -x, -q, -k softcap

One process for the whole suite grows to 3.5 GB: every numba kernel variant the tests compile
stays in memory (about 4 MB each), and so do the torch, JAX and Triton runtimes with all they
compiled. Run as the groups below, each process starts afresh, and the suite's peak is that of
its largest group (``scripts/peak_memory.py`` measures it). Every test file runs in exactly one
group: a file that no pattern names runs in the last group, "rest". The doctests of
``src/softmaxce`` are a group of their own. All groups run even when one fails; the exit
status is the first failing group's (pytest's "no test collected" counts as a failure).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (name, file patterns under tests/), in the order they run; the heavy grids first.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("test_core_*.py",)),
    ("rows and properties", ("test_rows.py", "test_properties.py", "test_errors.py")),
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


def main(argv: list[str]) -> int:
    results = []
    for name, paths in groups():
        print(f"\n=== {name}: {' '.join(paths)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run([sys.executable, "-m", "pytest", *paths, *argv], cwd=ROOT).returncode
        results.append((name, rc, time.perf_counter() - start))
    print("\n=== the suite, group by group")
    for name, rc, seconds in results:
        verdict = "passed" if rc == 0 else f"FAILED (pytest exit {rc})"
        print(f"{name:>24}: {verdict:<24} {seconds:6.0f} s")
    return next((rc for _, rc, _ in results if rc != 0), 0)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
