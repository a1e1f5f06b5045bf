"""Fused linear + cross-entropy: softmaxce against PyTorch (unfused, F.linear_cross_entropy
reference and chunked) and the three-product floor; see softmaxce/_bench_linear.py.

    python benchmarks/bench_linear.py [--sizes 2048x1024x32000] [--rounds 3] [--steps 3]

is ``softmaxce bench --modes linear`` writing into benchmarks/results/ (linear.csv, linear.txt,
linear.png).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from softmaxce import _bench_linear

if __name__ == "__main__":
    out = str(Path(__file__).resolve().parent / "results")
    sys.exit(_bench_linear.main(["--out", out, *sys.argv[1:]]))
