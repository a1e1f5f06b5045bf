"""Peak memory of a command and everything it starts (Linux).

    python scripts/peak_memory.py [--every 0.1] -- python -m pytest -q

Runs the command and reports two figures when it ends:

* ``largest process``: the biggest resident-set high-water mark of any one process in the
  tree (``ru_maxrss`` of the waited children, exact; what ``/usr/bin/time -v`` calls "Maximum
  resident set size");
* ``whole tree``: the largest sum of the resident sets of all processes of the tree at one
  moment, sampled every ``--every`` seconds (a spike shorter than that can be missed; a
  subprocess that runs while the test process holds its own memory is counted with it).

Used to check that the test suite stays under 2 GB (README, "Tests"). Exit code: the command's.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids.extend(int(k) for k in f.read().split())
    except OSError:
        pass
    return kids


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(root: int) -> int:
    """Sum of the resident sets of ``root`` and all its descendants, in KiB."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += _rss_kib(pid)
        todo.extend(_children(pid))
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--every", type=float, default=0.1, help="sampling period in s (0.1)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command given (put it after --)")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_kib(proc.pid))
        time.sleep(args.every)
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        f"peak memory: largest process {largest / 2**20:.2f} GiB, whole tree (sampled every "
        f"{args.every} s) {peak / 2**20:.2f} GiB; {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
    )
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
