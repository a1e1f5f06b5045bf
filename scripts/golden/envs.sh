#!/usr/bin/env bash
# Recipes for the throwaway virtual environments that record the golden files.
#
# Usage:  source scripts/golden/envs.sh && gold_mxnet        (or gold_chainer, gold_mygrad,
#         gold_pytorch, gold_optax, gold_all)
# Then:   /tmp/gold-mxnet/bin/python scripts/golden/make_golden.py mxnet
#
# Each venv lives in /tmp, never inside the repository.  Set GOLD_ROOT to put them elsewhere.

GOLD_ROOT="${GOLD_ROOT:-/tmp}"

gold_mxnet() {
    local venv="$GOLD_ROOT/gold-mxnet"
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install "numpy<1.24" mxnet==1.9.1 || return 1
    # libmxnet.so ships its own libgfortran/libopenblas but links the system's libgomp and
    # libquadmath; on a machine without them `import mxnet` fails on a missing .so.
    if ! "$venv/bin/python" -c "import mxnet" 2>/dev/null; then
        apt-get update && apt-get install -y libgomp1 libquadmath0 || return 1
    fi
    "$venv/bin/python" -c "import mxnet; print('mxnet', mxnet.__version__)"
}

gold_chainer() {
    local venv="$GOLD_ROOT/gold-chainer"
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install "setuptools<70" wheel "numpy<1.24" || return 1
    "$venv/bin/pip" install --no-build-isolation chainer==7.8.1 || return 1
    "$venv/bin/python" -c "import chainer; print('chainer', chainer.__version__)"
}

gold_mygrad() {
    local venv="$GOLD_ROOT/gold-mygrad"
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install mygrad==2.5.0 || return 1
    "$venv/bin/python" -c "import mygrad; print('mygrad', mygrad.__version__)"
}

gold_pytorch() {
    # torch 2.13.0 is a CPU wheel on local disk; never install an unpinned torch (CUDA builds).
    local venv="$GOLD_ROOT/gold-pytorch"
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install numpy torch==2.13.0 || return 1
    "$venv/bin/python" -c "import torch; print('torch', torch.__version__)"
}

gold_optax() {
    local venv="$GOLD_ROOT/gold-optax"
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install jax jaxlib optax || return 1
    "$venv/bin/python" -c "import jax, optax; print('jax', jax.__version__, 'optax', optax.__version__)"
}

gold_all() {
    gold_mxnet && gold_chainer && gold_mygrad && gold_pytorch && gold_optax
}
