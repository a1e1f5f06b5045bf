"""Fused softmax cross-entropy benchmark: the harness is softmaxce._bench (``softmaxce bench``).

    python benchmarks/bench_fused.py [--quick] [--sizes 64x10,4096x32000] [--providers ...]

Results go to benchmarks/results/ unless --out says otherwise; see softmaxce/_bench.py for the
providers, modes, timing and memory methods.
"""

import sys
from pathlib import Path

from softmaxce._bench import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", str(Path(__file__).resolve().parent / "results")]
    raise SystemExit(main(argv))
