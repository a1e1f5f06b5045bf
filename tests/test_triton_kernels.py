"""The Triton twin of the row contract (softmaxce._triton) against the core (softmaxce._core.rows).

On a machine without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``,
set here before the kernels are imported) on CPU tensors: fp32 and fp16 logits (the
interpreter has no bf16 arithmetic), small shapes (it runs a program per row, in Python).
With CUDA (``benchmarks/gpu_check.sh``) the same tests run on the device, bf16 included, and a
problem of more than 2**31 logits checks the 64-bit offsets.

Every option of both target kinds is compared with the core on the same values in float64:
the fused pass (one chunk, and many small chunks: the online merge), each block's
``row_stats`` merged by the core's ``merge`` and ``row_grad`` from the merged statistics (the
blocks of a linear cross-entropy or a vocabulary shard), odd widths (1, 423, 4097), ignored
rows, the gradient in place, and the accuracy rules of docs/internals.md.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'softmaxce[gpu]')", allow_module_level=True)
if os.environ.get("SOFTMAXCE_BLOCK_NUMBA", "") not in ("", "0"):  # (make test's second pass)
    pytest.skip("the Triton path never reaches numba: first pass only", allow_module_level=True)

CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are decorated (first import)

from softmaxce._core import rows  # noqa: E402
from softmaxce._options import loss_options  # noqa: E402
from softmaxce._triton import launchers  # noqa: E402

K = launchers()
DEV = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
EPS32 = float(np.finfo(np.float32).eps)

N, C = 6, 13
OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore": -100},  # rows 1 and 4 ignored
    "ignore_in_range": {"ignore": 1},  # the rows labelled 1 are ignored
    "smooth": {"smooth": 0.2},
    "z_loss": {"z_loss": 0.05},
    "softcap": {"softcap": 2.5},
    "where_random": {"where": "random"},  # row 0 has no allowed class
    "where_column": {"where": "column"},
    "kl": {"kl": True},
    "kl_smooth_where": {"kl": True, "smooth": 0.3, "where": "random"},
    "everything": {
        "weight": True, "ignore": -100, "smooth": 0.1, "z_loss": 0.02, "softcap": 3.0,
        "where": "random", "kl": True,
    },
    # the semantics flags of the compat modes: log(q + 1e-7), S taken as 1, a masked label
    "chainer_kl": {"kl": True, "smooth": 0.1, "semantics": "chainer"},
    "mxnet_unit_mass": {"weight": True, "semantics": "mxnet"},
    "optax_masked_label": {"where": "column", "semantics": "optax", "label_masked": True},
}  # fmt: skip


def make(case, kind, dtype, n=N, c=C):
    """Tensors of a problem on DEV: dict of x, target, weight, where, row_scale, opts."""
    f = OPTIONS[case]
    rng = np.random.default_rng(zlib.crc32(f"{case}/{kind}/{c}".encode()))
    x = rng.normal(size=(n, c)) * 3.0
    where = None
    if f.get("where") == "random":
        where = rng.random((n, c)) < 0.6
        where[1:, 0] = True
        where[0] = False
    elif f.get("where") == "column":
        where = np.ones((n, c), dtype=bool)
        where[:, [1, c - 1]] = False
    allowed = np.ones((n, c), bool) if where is None else where
    if kind == "index":
        target = np.array([rng.choice(np.flatnonzero(a)) if a.any() else 0 for a in allowed])
        if f.get("label_masked"):
            target[2] = 1  # outside `where`: optax keeps its logit
        if "ignore" in f:
            target[[1, 4 % n]] = f["ignore"]
        t = torch.tensor(target, dtype=torch.int64, device=DEV)
    else:
        y = rng.dirichlet(np.ones(c), size=n) * allowed
        y /= np.maximum(y.sum(axis=1, keepdims=True), 1e-300)
        t = torch.tensor(y, dtype=dtype, device=DEV)
    opts = loss_options(
        ignore_index=f.get("ignore", -100),
        label_smoothing=f.get("smooth", 0.0),
        z_loss=f.get("z_loss", 0.0),
        softcap=f.get("softcap"),
        soft_target_loss="kl-divergence" if f.get("kl") else "cross-entropy",
        semantics=f.get("semantics", "softmaxce"),
    )
    w = rng.uniform(0.25, 2.0, size=c) if f.get("weight") else None
    return {
        "x": torch.tensor(x, dtype=dtype, device=DEV),
        "target": t,
        "weight": None if w is None else torch.tensor(w, dtype=torch.float32, device=DEV),
        "where": None if where is None else torch.tensor(where, device=DEV),
        "row_scale": torch.tensor(rng.uniform(-2, 2, size=n), dtype=torch.float64, device=DEV),
        "opts": opts,
    }


def wide(a):
    return None if a is None else (a.double() if a.is_floating_point() else a)


def core(p, col=(0, None)):
    """The core's row losses and gradient of ``p`` (float64, the same input values)."""
    x, t = wide(p["x"]), wide(p["target"])
    ctx = rows.row_context(x, t, x.shape[1], p["opts"], p["where"])
    return rows.fused_rows(
        x, t, p["opts"], ctx, weight=wide(p["weight"]), where=p["where"],
        row_scale=p["row_scale"],
    )  # fmt: skip


def context(p):
    return rows.row_context(p["x"], p["target"], p["x"].shape[1], p["opts"], p["where"])


def close(actual, expected, dtype, what, width=C):
    """fp32 accumulation (a tree of sums: log2(width) roundings, a few more for the online
    merge) plus one rounding to ``dtype``; relative to the largest entry, NaN/inf equal."""
    a = actual.detach().double().cpu().numpy()
    e = expected.detach().double().cpu().numpy()
    fin = np.isfinite(e)
    np.testing.assert_array_equal(np.isfinite(a), fin, err_msg=f"{what}: non-finite entries")
    np.testing.assert_array_equal(a[~fin], e[~fin], err_msg=f"{what}: non-finite entries")
    scale = max(1.0, float(np.max(np.abs(e[fin]), initial=0.0)))
    tol = 32 * EPS32 * np.log2(width + 2) + 2 * float(torch.finfo(dtype).eps)
    np.testing.assert_allclose(a[fin], e[fin], rtol=tol, atol=tol * scale, err_msg=what)


def kernel_rows(p, block=None, out=None):
    return K.fused_rows(
        p["x"], p["target"], p["opts"], context(p), weight=p["weight"], where=p["where"],
        row_scale=p["row_scale"], out=out, block=block,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("case", list(OPTIONS))
def test_fused_pass_matches_the_core_for_every_option(case, kind, dtype):
    if kind == "soft" and case in ("optax_masked_label", "ignore_in_range"):
        pytest.skip("index targets only")
    p = make(case, kind, dtype)
    loss0, grad0 = core(p)
    for block in (None, 4):  # one chunk in registers; four chunks merged online
        loss, grad = kernel_rows(p, block)
        close(loss, loss0, dtype, f"{case} loss, block {block}")
        close(grad, grad0, dtype, f"{case} gradient, block {block}")
        assert grad.dtype == dtype


SPLIT = [(0, 5), (5, 6), (6, 13)]  # uneven blocks, one of a single class


@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("case", list(OPTIONS))
def test_blocks_merged_give_the_one_block_loss_and_gradient(case, kind):
    """row_stats of each block (its col_offset, its slices), merged by the core's merge, and
    row_grad of each block from the merged statistics: the blocks of a chunked linear
    cross-entropy or of a vocabulary shard give the whole row's loss and gradient."""
    if kind == "soft" and case in ("optax_masked_label", "ignore_in_range"):
        pytest.skip("index targets only")
    p = make(case, kind, torch.float32)
    ctx, opts = context(p), p["opts"]

    def part(a, lo, hi):
        return a if a is None or (a.ndim == 1 and a is p["target"]) else a[..., lo:hi]

    def block(lo, hi):
        return p["x"][:, lo:hi], part(p["target"], lo, hi), lo, part(p["weight"], lo, hi)

    stats = []
    for lo, hi in SPLIT:
        x, t, off, w = block(lo, hi)
        stats.append(K.row_stats(x, t, off, opts, ctx, weight=w, where=part(p["where"], lo, hi)))
    merged = rows.merge(rows.merge(stats[2], stats[0]), stats[1])
    loss0, grad0 = core(p)
    close(rows.row_loss(merged, opts, ctx), loss0, torch.float32, f"{case} merged loss")
    grad = torch.cat(
        [
            K.row_grad(*block(lo, hi)[:3], merged, p["row_scale"], opts, ctx,
                       weight=block(lo, hi)[3], where=part(p["where"], lo, hi))
            for lo, hi in SPLIT
        ],
        dim=1,
    )  # fmt: skip
    close(grad, grad0, torch.float32, f"{case} gradient of the blocks")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("width", [1, 423, 4097])
def test_odd_widths_match_the_core(width, dtype):
    """V = 1 (loss 0), 423 (not a power of two), 4097 (one more than the largest chunk: two
    chunks, the second of one class); ignored rows and smoothing included."""
    for case in ("ignore", "smooth"):
        p = make(case, "index", dtype, n=5, c=width)
        loss0, grad0 = core(p)
        loss, grad = kernel_rows(p)
        close(loss, loss0, dtype, f"V={width} {case} loss", width)
        close(grad, grad0, dtype, f"V={width} {case} gradient", width)


def test_ignored_rows_give_zero_loss_and_gradient_whatever_their_logits():
    p = make("ignore", "index", torch.float32)
    p["x"][1] = torch.nan
    p["x"][4, 3] = torch.inf
    loss, grad = kernel_rows(p)
    assert loss[1] == 0 and loss[4] == 0
    assert torch.all(grad[[1, 4]] == 0)
    assert torch.all(torch.isfinite(grad[[0, 2, 3, 5]]))


def test_nan_and_inf_logits_give_nan_as_in_the_core():
    p = make("plain", "index", torch.float32)
    p["x"][0, 2], p["x"][3, 5] = torch.nan, torch.inf
    loss, grad = kernel_rows(p)
    assert torch.isnan(loss[[0, 3]]).all() and torch.isfinite(loss[[1, 2, 4, 5]]).all()
    assert torch.isnan(grad[[0, 3]]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_in_place_equals_the_gradient_out_of_place(dtype):
    for block in (None, 4):  # (the second pass reads each chunk before writing it)
        p = make("everything", "soft", dtype)
        loss0, grad0 = kernel_rows(p, block)
        x = p["x"]
        loss, grad = kernel_rows(p, block, out=x)
        assert grad.data_ptr() == x.data_ptr()
        torch.testing.assert_close(loss, loss0, rtol=0, atol=0)
        torch.testing.assert_close(grad, grad0, rtol=0, atol=0)


def test_confident_row_keeps_the_relative_accuracy_of_its_tiny_gradient():
    """x = [40, 0, 0], label 0: dL/dx_0 = -2 e^-40 / (1 + 2 e^-40) = -8.5e-18, not 0 (p - 1
    is never formed as fl(p) - 1); the loss 2 e^-40 likewise (log1p of the rest)."""
    x = torch.tensor([[40.0, 0.0, 0.0]], device=DEV)
    t = torch.tensor([0], device=DEV)
    opts = loss_options()
    ctx = rows.row_context(x, t, 3, opts)
    one = torch.ones((), dtype=torch.float64, device=DEV)
    loss, grad = K.fused_rows(x, t, opts, ctx, row_scale=one)
    exact = 2 * np.exp(-40.0)
    np.testing.assert_allclose(grad[0, 0].item(), -exact, rtol=8 * EPS32)
    np.testing.assert_allclose(loss[0].item(), exact, rtol=8 * EPS32)


def test_z_loss_of_a_confident_row_takes_log1p_of_the_rest():
    """x = [0, -40, -40]: lse = log1p(2 e^-40) = 8.5e-18, not log(1 + 8.5e-18) = 0; with
    z_loss = 1e17 the gradient's factor S + 2 zeta lse is 2.7, not 1."""
    x = torch.tensor([[0.0, -40.0, -40.0]], device=DEV)
    p = {"x": x, "target": torch.tensor([1], device=DEV), "weight": None, "where": None,
         "opts": loss_options(z_loss=1e17),
         "row_scale": torch.ones((), dtype=torch.float64, device=DEV)}  # fmt: skip
    _, grad0 = core(p)
    _, grad = kernel_rows(p)
    assert grad0[0, 0] > 2.5
    close(grad, grad0, torch.float32, "confident row with z-loss")


def test_huge_z_loss_times_a_zero_lse_is_zero_not_nan():
    """The z-loss factor ``S + 2 zeta lse`` is formed in fp64: zeta beyond fp32, lse = 0."""
    x = torch.zeros((2, 1), device=DEV)
    t = torch.tensor([0, 0], device=DEV)
    opts = loss_options(z_loss=1e300)
    ctx = rows.row_context(x, t, 1, opts)
    loss, grad = K.fused_rows(x, t, opts, ctx, row_scale=torch.ones((), device=DEV))
    assert torch.all(loss == 0) and torch.all(grad == 0)


def test_softcap_slope_does_not_cancel_for_large_logits():
    """With a softcap, dz/dx = 4 e / (1 + e)**2 at x / cap = 30: 3.5e-26, not 0."""
    x = torch.tensor([[60.0, 0.0]], device=DEV)
    t = torch.tensor([1], device=DEV)
    opts = loss_options(softcap=2.0)
    p = {"x": x, "target": t, "weight": None, "where": None, "opts": opts,
         "row_scale": torch.ones((), dtype=torch.float64, device=DEV)}  # fmt: skip
    _, grad0 = core(p)
    _, grad = kernel_rows(p)
    assert grad[0, 0] != 0
    np.testing.assert_allclose(grad[0, 0].item(), grad0[0, 0].item(), rtol=64 * EPS32)


def test_scale_rows_multiplies_each_row_and_leaves_unit_rows_alone():
    g = torch.arange(12, dtype=torch.float32, device=DEV).reshape(3, 4)
    s = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64, device=DEV)
    want = g * s[:, None].float()
    K.scale_rows(g, s, block=2)
    torch.testing.assert_close(g, want, rtol=0, atol=0)
    K.scale_rows(g, torch.tensor(3.0, device=DEV))
    torch.testing.assert_close(g, want * 3, rtol=0, atol=0)


def test_cpu_tensors_without_the_interpreter_are_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.zeros((2, 3))
    with pytest.raises(ValueError, match="CUDA tensors"):
        K.row_stats(x, torch.tensor([0, 1]), 0, loss_options(), rows.row_context(
            x, torch.tensor([0, 1]), 3, loss_options()))  # fmt: skip


def test_kernels_compile_for_hopper_without_a_gpu():
    """Triton's code generator (constexpr scoping, globals, types: what the interpreter never
    checks) and ptxas, for sm_90, on representative specialisations, in a process without
    the interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    src = os.path.join(os.path.dirname(__file__), os.pardir, "src")
    env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(src), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-m", "softmaxce._triton._aot", "90"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("\n") == 6, run.stdout


@pytest.mark.skipif(not CUDA, reason="needs a GPU with 6 GB free")
def test_offsets_beyond_2_31_elements():
    """N x V > 2**31 logits, gradient in place: the last row (offsets beyond 2**31) gives the
    core's loss and gradient."""
    n, v = 2**15 + 1, 2**16 + 1  # (one program per row: many rows, for a quick test)
    x = torch.zeros((n, v), dtype=torch.bfloat16, device=DEV)
    x[-1].normal_()
    last = x[-1:].double()  # (a copy: x becomes the gradient)
    t = torch.full((n,), 5, device=DEV)
    opts = loss_options()
    one = torch.ones((), dtype=torch.float64, device=DEV)
    loss, grad = K.fused_rows(x, t, opts, rows.row_context(x, t, v, opts), row_scale=one, out=x)
    ctx = rows.row_context(last, t[-1:], v, opts)
    loss0, grad0 = rows.fused_rows(last, t[-1:], opts, ctx, row_scale=one)
    assert grad.data_ptr() == x.data_ptr()
    close(loss[-1:], loss0, torch.bfloat16, "loss of the last row", v)
    close(x[-1:], grad0, torch.bfloat16, "gradient of the last row", v)
