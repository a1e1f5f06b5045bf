"""``scripts/run_tests.py``, the suite as ``make test`` runs it (a few processes in turn)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _runner():
    spec = importlib.util.spec_from_file_location("run_tests", ROOT / "scripts" / "run_tests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_test_file_runs_in_exactly_one_group():
    groups = _runner().groups()
    paths = [p for _, ps in groups for p in ps]
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("test_*.py"))
    assert sorted(p for p in paths if p.startswith("tests/")) == files  # each once, none left
    assert "src/softmaxce" in paths  # the doctests


def test_a_test_file_no_pattern_names_runs_in_the_rest_group(tmp_path):
    (tmp_path / "tests").mkdir()
    for name in ("test_core_fused.py", "test_brand_new.py"):
        (tmp_path / "tests" / name).write_text("")
    groups = dict(_runner().groups(tmp_path))
    assert groups["core fused"] == ["tests/test_core_fused.py"]
    assert groups["rest"] == ["tests/test_brand_new.py"]
