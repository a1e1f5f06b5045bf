"""Prints the worst error seen against the float64 reference (tests/reference.py) at the end."""

from __future__ import annotations

from reference import WORST_ERRORS


def pytest_terminal_summary(terminalreporter):
    if not WORST_ERRORS:
        return
    terminalreporter.section("softmaxce: worst relative error vs the float64 reference")
    for (dtype, what), (err, where) in sorted(WORST_ERRORS.items()):
        terminalreporter.write_line(f"{dtype:>8} {what:<18} max rel err {err:.3e}   ({where})")
