"""softmaxce.jax.vocab_parallel_cross_entropy on 4 CPU devices, in a fresh process.

XLA reads ``--xla_force_host_platform_device_count`` once, when jax initialises its backend;
other test modules of this pytest process may already have done so with one device. The check
(``jax_sharded_check.py``) therefore runs in a subprocess that sets the flag before importing
jax: the vocabulary split 4 ways inside ``jax.shard_map``, loss and logits gradient equal to
the unsharded ``softmaxce.jax.softmax_cross_entropy`` for every option and both target kinds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")
if os.environ.get("SOFTMAXCE_BLOCK_NUMBA", "") not in ("", "0"):
    # (the sharded loss never reaches numba: the first pass of `make test` ran this same code)
    pytest.skip("no numba in this code path: run in the first pass", allow_module_level=True)

HERE = Path(__file__).parent


def test_vocab_parallel_loss_on_four_devices_equals_the_unsharded_loss():
    src = str(HERE.parent / "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)
    run = subprocess.run(
        [sys.executable, str(HERE / "jax_sharded_check.py")],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "sharded: ok" in run.stdout
