"""Vocabulary-parallel cross-entropy (``softmaxce.distributed``) on real gloo process groups.

Each world size is ONE spawn (``torch.multiprocessing``, ``file://`` rendezvous in a tmp
folder) that runs every case of :data:`CASES` on uneven shards (a rank with a single class
among them); the ranks write one JSON report each, and the parametrised tests read it. A case
compares the loss and this rank's slice of the gradient with the single-process
``softmaxce.torch.cross_entropy`` of the concatenated logits in float64 (the KL divergence:
``softmaxce.softmax_cross_entropy``), with tolerances from the logits' dtype, and checks that
every rank got the same loss bit for bit. A hang fails the test after :data:`TIMEOUT_S`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pathlib
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import softmaxce as sc
import softmaxce.torch as sct
from softmaxce.distributed import vocab_parallel_cross_entropy

SIZES = {2: (6, 1), 3: (4, 1, 6)}  # V_r per rank: uneven, a rank with one class
N = 8
TIMEOUT_S = 240
EPS = {
    torch.bfloat16: 2.0**-7,
    torch.float16: 2.0**-10,
    torch.float32: 2.0**-23,
    torch.float64: 2.0**-52,
}

# name -> options. Keys other than the loss's own: dtype, soft (probability target), kl,
# weighted, ignored (rows with the ignore label), all_ignored, nd (an (N, V, 3) input),
# nonfinite (-inf logits where the target is 0, a +inf logit in an ignored row), inplace.
CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "float64": {"dtype": torch.float64},
    "weight": {"weighted": True},
    "ignore_index": {"ignored": True, "ignore_index": 3},
    "smoothing_ignored_rows": {"ignored": True, "label_smoothing": 0.2},
    "smoothing_weight_ignored": {"ignored": True, "weighted": True, "label_smoothing": 0.1},
    "z_loss": {"z_loss": 1e-2, "ignored": True},
    "softcap": {"softcap": 4.0, "label_smoothing": 0.1},
    "sum": {"reduction": "sum", "weighted": True, "ignored": True},
    "none": {"reduction": "none", "ignored": True, "z_loss": 1e-3},
    "soft": {"soft": True},
    "soft_weight_smoothing": {"soft": True, "weighted": True, "label_smoothing": 0.1},
    "soft_kl": {"soft": True, "kl": True, "label_smoothing": 0.1, "dtype": torch.float64},
    "soft_kl_none": {"soft": True, "kl": True, "reduction": "none"},
    "float16": {"dtype": torch.float16, "ignored": True, "label_smoothing": 0.1},
    "bfloat16": {"dtype": torch.bfloat16, "ignored": True, "z_loss": 1e-2},
    "float16_soft": {"dtype": torch.float16, "soft": True, "weighted": True},
    "all_ignored": {"all_ignored": True, "label_smoothing": 0.1},
    "all_ignored_torch": {"all_ignored": True, "semantics": "torch"},
    "torch_weight_smoothing": {
        "semantics": "torch", "weighted": True, "ignored": True, "label_smoothing": 0.1,
    },
    "torch_soft": {"semantics": "torch", "soft": True, "label_smoothing": 0.1},
    "torch_nonfinite": {"semantics": "torch", "soft": True, "nonfinite": True, "reduction": "none"},
    "softmaxce_nonfinite": {"soft": True, "nonfinite": True, "reduction": "none"},
    "torch_nonfinite_index": {"semantics": "torch", "nonfinite": True, "reduction": "none"},
    "softmaxce_nonfinite_index": {"nonfinite": True, "reduction": "none"},
    "nd_index": {"nd": True, "ignored": True, "weighted": True},
    "nd_soft": {"nd": True, "soft": True},
    "inplace": {"inplace": True, "ignored": True, "label_smoothing": 0.1},
    "inplace_nd": {"inplace": True, "nd": True, "z_loss": 1e-2},
    "compiled": {"compile": True, "weighted": True, "ignored": True, "label_smoothing": 0.1},
}  # fmt: skip
ONLY_WORLD = {"compiled": 2}  # (torch.compile costs seconds per rank: one world size)
LOSS_KEYS = ("ignore_index", "reduction", "label_smoothing", "z_loss", "softcap", "semantics")


def index_target(case: dict[str, Any], v: int, batch: tuple[int, ...], g) -> torch.Tensor:
    """A case's class indices of shape ``batch``, drawn from ``g``: some (or all) ignored."""
    ignore = case.get("ignore_index", -100)
    t = torch.randint(0, v, batch, generator=g)
    if case.get("ignored"):
        t[torch.rand(batch, generator=g) < 0.3] = ignore
        t.view(-1)[0] = ignore
    if case.get("all_ignored"):
        t[...] = ignore
    return t


def _data(case: dict[str, Any], v: int, seed: int):
    """The full problem of a case: (logits, target, weight, dloss), float64 (the logits
    rounded to the case's dtype first), the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    dtype = case.get("dtype", torch.float32)
    shape = (N, v, 3) if case.get("nd") else (N, v)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype).double()
    batch = (N, 3) if case.get("nd") else (N,)
    ignore = case.get("ignore_index", -100)
    if case.get("soft"):
        t = torch.softmax(2 * torch.randn(shape, generator=g, dtype=torch.float64), dim=1)
        if case.get("nonfinite"):
            t[0, 0], t[0, -1] = 0.0, t[0, 0] + t[0, -1]
            x[0, 0] = -math.inf  # 0 * -inf: NaN under "torch", 0 under softmaxce
            x[1, 2] = math.inf  # a NaN row either way
        t = t.to(dtype).double()
    else:
        t = index_target(case, v, batch, g)
        if case.get("nonfinite"):  # ignored rows whose log-softmax is NaN: a NaN gradient
            t[1], t[2], t[3] = ignore, ignore, 0  # under "torch", 0 under softmaxce
            x[1, 0], x[2, -1] = math.inf, math.nan  # (on the first rank; on the last)
            x[3, 0] = -math.inf  # the label's probability is 0: loss +inf
    w = None
    if case.get("weighted"):
        w = (0.25 + torch.rand(v, generator=g, dtype=torch.float64)).to(dtype).double()
    loss_shape = batch if case.get("reduction") == "none" else ()
    dloss = (0.5 + torch.rand(loss_shape, generator=g, dtype=torch.float64)).to(dtype).double()
    return x, t, w, dloss


def _reference(case, x, t, w):
    """Loss and gradient of the full logits, single process, float64."""
    kw = {k: case[k] for k in LOSS_KEYS if k in case}
    xr = x.clone().requires_grad_()
    if case.get("kl"):
        kw.pop("semantics", None)
        loss = sc.softmax_cross_entropy(
            xr, t, axis=1, weight=w, soft_target_loss="kl-divergence", **kw
        )
    else:
        loss = sct.cross_entropy(xr, t, w, **kw)
    return loss, xr


def _close(got: torch.Tensor, want: torch.Tensor, dtype, what: str, scale: float = 1.0,
           ulps: float | None = None) -> None:  # fmt: skip
    """``got`` (the case's dtype) against the float64 ``want``: NaN and infinities where they
    are, else within ``ulps`` of the dtype (16 for float16/bfloat16, 64 else) relative to the
    largest magnitude (for sums), or to ``scale`` where that is larger (an error bound in
    units of the dtype's epsilon, e.g. the magnitude of the terms of a product)."""
    got, want = got.detach().double(), want.detach()
    ok = want.isfinite()
    if not torch.equal(got[~ok].nan_to_num(), want[~ok].nan_to_num()) or not torch.equal(
        got.isnan(), want.isnan()
    ):
        raise AssertionError(f"{what}: NaN or inf at other places\n got {got}\nwant {want}")
    scale = max(scale, float(want[ok].abs().max())) if ok.any() else scale
    if ulps is None:
        ulps = 16 if dtype in (torch.float16, torch.bfloat16) else 64
    tol = ulps * EPS[dtype] * scale
    err = float((got[ok] - want[ok]).abs().max()) if ok.any() else 0.0
    if not err <= tol:
        raise AssertionError(f"{what}: error {err:.3g} > {tol:.3g}\n got {got}\nwant {want}")


def _run_case(name: str, case: dict[str, Any], rank: int, sizes: tuple[int, ...]) -> None:
    dtype = case.get("dtype", torch.float32)
    off, v_r = sum(sizes[:rank]), sizes[rank]
    x, t, w, dloss = _data(case, sum(sizes), seed=len(name) * 7919 + sum(map(ord, name)))
    want, xr = _reference(case, x, t, w)
    (want * dloss).sum().backward()
    want_grad = xr.grad[:, off : off + v_r]

    leaf = x[:, off : off + v_r].to(dtype).requires_grad_()
    mine = leaf * 1 if case.get("inplace") else leaf  # (in place needs a non-leaf)
    if case.get("inplace"):
        mine.retain_grad()
    t_r = t[:, off : off + v_r].to(dtype) if case.get("soft") else t
    w_r = None if w is None else w[off : off + v_r].to(dtype)
    kw = {k: case[k] for k in LOSS_KEYS if k in case}
    if case.get("kl"):
        kw["soft_target_loss"] = "kl-divergence"
    loss = _loss_fn(case)(mine, t_r, weight=w_r, inplace_backward=bool(case.get("inplace")), **kw)
    same = _same_on_every_rank(loss)  # (before any check: the ranks' collectives stay in step)
    (loss * dloss.to(dtype)).sum().backward()
    assert loss.dtype == dtype, loss.dtype
    _close(loss, want, dtype, "loss")
    assert same, "the ranks' losses differ"
    _close(leaf.grad, want_grad, dtype, "gradient")
    if case.get("inplace"):  # the input's storage holds the gradient
        if not torch.equal(mine.detach(), leaf.grad):
            raise AssertionError("inplace_backward: the input does not hold the gradient")


def _loss_fn(case: dict[str, Any]):
    if not case.get("compile"):
        return vocab_parallel_cross_entropy
    # dynamo notes each functools.lru_cache it traces through (array-api-compat's, the core's
    # namespace lookup), and instantiates autograd Functions itself: warnings of torch's, not
    # of this loss (as in test_reliability_torch.py)
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
    warnings.filterwarnings("ignore", message=".*should not be instantiated")
    # fullgraph: no graph break around the collective; aot_eager: traced and functionalised
    # as by inductor, without its C++ compile time
    return torch.compile(vocab_parallel_cross_entropy, fullgraph=True, backend="aot_eager")


def _same_on_every_rank(loss: torch.Tensor) -> bool:
    """Whether every rank got the same loss, bit for bit (NaN included)."""
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, loss.detach().double().reshape(-1).numpy().tobytes())
    return all(e == every[0] for e in every)


def _count_collectives(rank: int, sizes: tuple[int, ...]) -> dict[str, int]:
    """Collectives in a forward and in a backward, counted by the profiler's c10d records."""
    x = torch.randn(N, sizes[rank], requires_grad=True)
    t = torch.randint(0, sum(sizes), (N,))
    opts = {"label_smoothing": 0.1, "z_loss": 1e-3, "semantics": "torch"}
    vocab_parallel_cross_entropy(x, t, **opts)  # (the first call gathers the shard sizes)
    counts = {}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss = vocab_parallel_cross_entropy(x, t, **opts)
    counts["forward"] = _collectives(prof)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss.backward()
    counts["backward"] = _collectives(prof)
    return counts


def _collectives(prof) -> int:
    names = [e.name for e in prof.events()]
    return sum(n.startswith("c10d::") for n in names)  # (each has a backend event too)


def _block_numba(world: int) -> None:
    """Under ``SOFTMAXCE_BLOCK_NUMBA=1`` a rank, too, runs as without numba (the root
    conftest.py does this for the test process; a spawned rank does not read it). So do the
    ranks of world sizes above 2: they run the core on the tensors, the numba twin having run
    at world size 2 (numba's compiler costs ~300 MB a process: three of them beside the test
    process took the suite past 2 GB)."""
    if world <= 2 and os.environ.get("SOFTMAXCE_BLOCK_NUMBA", "") in ("", "0"):
        return
    assert sys.modules.get("numba") is None, "numba was imported before the rank blocked it"
    for name in ("numba", "llvmlite"):
        sys.modules[name] = None  # type: ignore[assignment]


@dataclasses.dataclass(frozen=True)
class Suite:
    """What the ranks of one spawn run: ``run_case(name, case, rank, sizes)`` for each case
    (raising on a mismatch), then ``count(rank, sizes)``, the collectives it reports; a case
    named in ``only_world`` runs with that world size only. Picklable: the functions are
    found by name in a rank."""

    cases: dict[str, dict[str, Any]]
    run_case: Callable[[str, dict[str, Any], int, tuple[int, ...]], None]
    count: Callable[[int, tuple[int, ...]], dict[str, int]]
    only_world: dict[str, int]


def _worker(rank: int, world: int, folder: str, suite: Suite) -> None:
    _block_numba(world)
    warnings.simplefilter("error")  # (as the suite's filterwarnings; a child has its own)
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/rendezvous",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=TIMEOUT_S / 2),  # a rank out of step fails
    )
    sizes = SIZES[world]
    report: dict[str, Any] = {}
    out = pathlib.Path(folder, f"rank{rank}.json")
    for name, case in suite.cases.items():
        if suite.only_world.get(name, world) != world:
            continue
        report[name] = "crashed in this case"
        out.write_text(json.dumps(report))  # (what ran so far, should this rank die)
        try:
            suite.run_case(name, case, rank, sizes)
            report[name] = ""
        except Exception:  # (reported to the parent, case by case)
            report[name] = traceback.format_exc()
    report["collectives"] = suite.count(rank, sizes)
    out.write_text(json.dumps(report))
    dist.destroy_process_group()


def _spawn(world: int, folder: pathlib.Path, suite: Suite) -> list[dict[str, Any]]:
    ctx = mp.start_processes(
        _worker, args=(world, str(folder), suite), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"world size {world}: the ranks did not finish in {TIMEOUT_S} s")
    except mp.ProcessException as exc:  # a rank died: say in which case
        reports = [_read(folder / f"rank{r}.json") for r in range(world)]
        pytest.fail(f"world size {world}: {exc}; reports so far: {reports}")
    return [_read(folder / f"rank{r}.json") for r in range(world)]


def _read(path: pathlib.Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


PLAIN = Suite(CASES, _run_case, _count_collectives, ONLY_WORLD)


@pytest.fixture(scope="module", params=sorted(SIZES))
def reports(request, tmp_path_factory) -> tuple[int, list[dict[str, Any]]]:
    world = request.param
    return world, _spawn(world, tmp_path_factory.mktemp(f"world{world}"), PLAIN)


def check_case(reports, name: str, only_world: dict[str, int]) -> None:
    """Fail with every rank's report of case ``name`` where it failed."""
    world, every = reports
    if only_world.get(name, world) != world:
        pytest.skip(f"runs with world size {only_world[name]} only")
    failed = {r: rep[name] for r, rep in enumerate(every) if rep[name]}
    assert not failed, f"world size {world}, case {name}:\n" + "\n".join(
        f"rank {r}: {msg}" for r, msg in failed.items()
    )


@pytest.mark.parametrize("name", list(CASES))
def test_matches_single_process_loss_and_gradient_slices(reports, name):
    check_case(reports, name, ONLY_WORLD)


def test_forward_is_one_collective_and_backward_none(reports):
    world, every = reports
    for rank, rep in enumerate(every):
        assert rep["collectives"] == {"forward": 1, "backward": 0}, (world, rank)


# ---- validation, in this process: a group of one where a group is needed ----


@pytest.fixture
def group_of_one(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1
    )
    yield dist.group.WORLD
    dist.destroy_process_group()


def test_without_a_process_group_the_error_names_init_process_group():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        vocab_parallel_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]))


def test_group_that_is_not_a_process_group_is_refused(group_of_one):
    with pytest.raises(
        TypeError, match=r"group must be None or a torch\.distributed\.ProcessGroup, got str"
    ):
        vocab_parallel_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), group="world")


def test_label_beyond_the_global_class_count_is_refused(group_of_one):
    with pytest.raises(ValueError, match="target"):
        vocab_parallel_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_target_that_requires_grad_is_refused(group_of_one):
    y = torch.full((2, 3), 1 / 3, requires_grad=True)
    with pytest.raises(ValueError, match="target requires grad"):
        vocab_parallel_cross_entropy(torch.zeros(2, 3, requires_grad=True), y)


def test_group_of_one_is_the_single_process_loss(group_of_one):
    x = torch.randn(5, 4, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0, 3], [1, -100], [2, 2], [3, 0], [-100, 1]])
    opts = {"label_smoothing": 0.1, "z_loss": 1e-2, "softcap": 3.0}
    loss = vocab_parallel_cross_entropy(x, t, **opts)
    (grad,) = torch.autograd.grad(loss, x)
    want = sct.cross_entropy(x, t, **opts)
    (want_grad,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(loss, want, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(grad, want_grad, rtol=1e-13, atol=1e-13)


def test_unbatched_input_gives_the_single_process_loss(group_of_one):
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    for reduction in ("mean", "none"):
        loss = vocab_parallel_cross_entropy(x, torch.tensor(4), reduction=reduction)
        want = sct.cross_entropy(x, torch.tensor(4), reduction=reduction)
        assert loss.shape == want.shape == ()
        (grad,) = torch.autograd.grad(loss, x)
        (want_grad,) = torch.autograd.grad(want, x)
        torch.testing.assert_close(loss, want, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(grad, want_grad, rtol=1e-13, atol=1e-13)


def test_bfloat16_class_weights_are_checked_on_the_host(group_of_one):
    # (NumPy has no bfloat16: the check of the weights' values read them through a copy)
    x = torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)
    t = torch.tensor([0, 2, 1, 2])
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.bfloat16)
    loss = vocab_parallel_cross_entropy(x, t, weight=w)
    want = sct.cross_entropy(x.double(), t, w.double())
    torch.testing.assert_close(loss.double(), want, rtol=2.0**-7, atol=2.0**-7)
    with pytest.raises(ValueError, match="weight"):
        vocab_parallel_cross_entropy(x, t, weight=torch.tensor([1.0, -1.0, 1.0]).bfloat16())


def test_bfloat16_weight_and_target_with_float32_logits(group_of_one):
    # (the numba twin reads them through NumPy, which has no bfloat16)
    x = torch.randn(4, 3, dtype=torch.float64).float().requires_grad_()
    w = torch.tensor([1.0, 0.5, 2.0]).bfloat16()
    q = torch.softmax(torch.randn(4, 3), 1).bfloat16()
    for t in (torch.tensor([0, 2, 1, 2]), q):
        loss = vocab_parallel_cross_entropy(x, t, weight=w, label_smoothing=0.1)
        (grad,) = torch.autograd.grad(loss, x)
        xr = x.detach().double().requires_grad_()
        want = sct.cross_entropy(xr, t.double() if t.is_floating_point() else t, w.double(),
                                 label_smoothing=0.1)  # fmt: skip
        (want_grad,) = torch.autograd.grad(want, xr)
        torch.testing.assert_close(loss.double(), want, rtol=2.0**-20, atol=2.0**-20)
        torch.testing.assert_close(grad.double(), want_grad, rtol=2.0**-20, atol=2.0**-20)
