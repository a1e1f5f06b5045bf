"""Loader for the golden files recorded from the real frameworks.

The files live in tests/golden/<framework>.npz; tests/golden/README.md describes the format and
scripts/golden/ regenerates them.  Usage in a test::

    from golden_cases import load

    for case in load("pytorch"):
        case["inputs"]   # dict: argument name -> array, in the function's argument order
        case["args"]     # dict: keyword options (a JSON list stands for a tuple)
        case["out"], case["grad"], case["grad_ones"], case["head"]   # None for error cases
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
FRAMEWORKS = ("mxnet", "chainer", "mygrad", "pytorch", "optax")
# Array names that are outputs of a case; every other array is an input of the function.
OUTPUT_NAMES = ("out", "grad", "grad_ones", "head")


def path(framework: str) -> Path:
    """The golden file of `framework`."""
    if framework not in FRAMEWORKS:
        msg = f"framework must be one of {FRAMEWORKS}, got {framework!r}"
        raise ValueError(msg)
    return GOLDEN_DIR / f"{framework}.npz"


def meta(framework: str) -> dict:
    """Versions and date of the recording."""
    with np.load(path(framework), allow_pickle=False) as npz:
        return json.loads(str(npz["meta"][()]))


def load(framework: str) -> list[dict]:
    """All cases of `framework`, arrays resolved.

    Each dict has: id, fn, args, error (None or {"type", "message"}), notes (a dict, possibly
    empty), arrays (name -> array, inputs and outputs), inputs (the input arrays only, in
    argument order), and out, grad, grad_ones, head (None for an error case).
    """
    with np.load(path(framework), allow_pickle=False) as npz:
        raw = json.loads(str(npz["cases"][()]))
        cases = []
        for entry in raw:
            arrays = {name: npz[key] for name, key in entry["arrays"].items()}
            case = {
                "id": entry["id"],
                "fn": entry["fn"],
                "args": entry["args"],
                "error": entry["error"],
                "notes": entry.get("notes", {}),
                "arrays": arrays,
                "inputs": {k: v for k, v in arrays.items() if k not in OUTPUT_NAMES},
            }
            for name in OUTPUT_NAMES:
                case[name] = arrays.get(name)
            cases.append(case)
    return cases


if __name__ == "__main__":
    for fw in FRAMEWORKS:
        if path(fw).exists():
            cs = load(fw)
            n_err = sum(c["error"] is not None for c in cs)
            print(f"{fw}: {len(cs)} cases ({n_err} error cases), {meta(fw)}")
        else:
            print(f"{fw}: missing")
