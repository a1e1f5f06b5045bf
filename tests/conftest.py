"""Prints the worst error seen against the float64 reference (tests/reference.py) at the end."""

from __future__ import annotations

import os

from hypothesis import settings
from reference import WORST_ERRORS

# Locally hypothesis explores new examples each run; CI (CI=true) draws the same ones every
# time, so that a red CI is always reproducible and never a roll of the dice.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_terminal_summary(terminalreporter):
    if not WORST_ERRORS:
        return
    terminalreporter.section("softmaxce: worst relative error vs the float64 reference")
    for (dtype, what), (err, where) in sorted(WORST_ERRORS.items()):
        terminalreporter.write_line(f"{dtype:>8} {what:<18} max rel err {err:.3e}   ({where})")
