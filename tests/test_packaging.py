"""What a user installs: ``python -m build`` gives a wheel and an sdist that install in a fresh
virtual environment (no system site-packages, only numpy and array-api-compat besides) and
pass ``softmaxce check`` there, from a folder outside the source tree.

About 30-60 s (two installs and two checks); marked ``slow`` (``-m "not slow"`` leaves it
out). It needs ``build`` and ``hatchling`` (requirements/test.txt) and numpy,
array-api-compat and hatchling from pip's cache or package index; without them it skips,
saying so.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("SOFTMAXCE_BLOCK_NUMBA", "") not in ("", "0"),
        reason="the package is the same without numba: the first pass of make test built it",
    ),
]


# nothing of this process's paths may reach the fresh environment (the source tree on
# PYTHONPATH, the user's site-packages)
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONNOUSERSITE": "1"}


def sh(*cmd: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=CLEAN_ENV,
    )  # fmt: skip
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="python -m build needs the build package")
    pytest.importorskip("hatchling", reason="the build backend (requirements/test.txt)")
    out = tmp_path_factory.mktemp("dist")
    # no isolation: hatchling comes from this environment, so building needs no network
    sh(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=out)
    return out


def fresh_venv(where: Path, *more: str) -> Path:
    """A plain virtual environment with numpy, array-api-compat and ``more``, at this
    environment's versions; returns its python."""
    sh(sys.executable, "-m", "venv", "--without-pip", where, cwd=where.parent)
    python = where / "bin" / "python"
    deps = [f"{d}=={importlib.metadata.version(d)}" for d in ("numpy", "array-api-compat", *more)]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", *deps],
        capture_output=True,
        text=True,
        timeout=600,
        env=CLEAN_ENV,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot install {deps} from pip's cache or index: {done.stderr[-500:]}")
    return python


def install_and_check(artifact: Path, venv: Path, *more: str) -> str:
    python = fresh_venv(venv, *more)
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps"]
    sh(*pip, "--no-build-isolation", artifact, cwd=venv)
    assert sh(python, "-m", "softmaxce", "--version", cwd=venv).stdout.startswith("softmaxce ")
    done = sh(venv / "bin" / "softmaxce", "check", cwd=venv)  # the console script
    assert " 0 failed" in done.stdout
    where = sh(python, "-c", "import softmaxce; print(softmaxce.__file__)", cwd=venv).stdout
    assert str(venv) in where  # the installed copy, not the source tree
    return done.stdout


def test_wheel_installs_in_a_fresh_venv_and_passes_check(dist, tmp_path):
    (wheel,) = dist.glob("softmaxce-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = sh("git", "ls-files", "src/softmaxce", cwd=ROOT).stdout.split()
    missing = [p for p in tracked if p.removeprefix("src/") not in names]
    assert not missing, f"files of the package left out of the wheel: {missing}"
    text = install_and_check(wheel, tmp_path / "venv")
    assert "pip install 'softmaxce[numba]'" in text  # numba absent: check says what to install


def test_sdist_installs_in_a_fresh_venv_and_passes_check(dist, tmp_path):
    (sdist,) = dist.glob("softmaxce-*.tar.gz")
    # pip builds the wheel from the sdist alone; the build backend is installed beside numpy,
    # so that the build itself downloads nothing
    install_and_check(sdist, tmp_path / "venv", "hatchling")
