"""The ``softmaxce`` command: ``demo``, ``bench`` and ``check``."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import _api, _dispatch
from .ops import CrossEntropy, LogSoftmax, Softmax, SoftmaxCrossEntropy

# --------------------------------------------------------------------------------------------
# Terminal output: a progress bar on interactive terminals, plain lines elsewhere
# --------------------------------------------------------------------------------------------


class Terminal:
    """Writes progress to ``stream``; a bar only when it is a TTY, colour unless NO_COLOR."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.color = self.interactive and not os.environ.get("NO_COLOR")

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def progress(self, done: int, total: int, label: str, info: str) -> None:
        """One step of a bar; on a non-interactive stream, one plain line per call."""
        if not self.interactive:
            self.line(f"{label} {done}/{total}  {info}")
            return
        width = 24
        filled = round(width * done / max(total, 1))
        bar = self.paint("#" * filled, "32") + "-" * (width - filled)
        end = "\n" if done >= total else ""
        print(f"\r{label} {done:>3}/{total} [{bar}] {info}", end=end, file=self.stream, flush=True)


# --------------------------------------------------------------------------------------------
# Argument types: a bad number names its option
# --------------------------------------------------------------------------------------------


def _int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``; the error says what was expected."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            msg = f"expected {what}, got {text!r}"
            raise argparse.ArgumentTypeError(msg) from None
        if value < low:
            msg = f"expected {what}, got {value}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonneg_int = _int_at_least(0, "an integer >= 0")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        msg = f"expected a positive number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not (value > 0 and np.isfinite(value)):
        msg = f"expected a positive finite number, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------


def _kernel_name(backend: str) -> str:
    """Which kernel the backend picks for a demo-sized batch (32 x 10)."""
    try:
        kernel = _dispatch.select(backend, np.zeros((32, 10)), np.zeros(32, dtype=np.int64))
    except ImportError as exc:
        raise SystemExit(f"softmaxce demo: error: --backend {backend}: {exc}") from None
    return "numpy core" if kernel is None else "numba kernel"


def cmd_demo(args: argparse.Namespace, term: Terminal) -> int:
    from . import _demo

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kernel = _kernel_name(args.backend)
    term.line(
        term.paint("softmaxce demo", "1")
        + f": a {64}-{args.hidden}-10 network on 1,797 UCI handwritten digits, "
        f"NumPy + softmaxce.ops (backend {args.backend}: {kernel})"
    )
    start = time.perf_counter()

    def on_epoch(epoch: int, hist: _demo.History) -> None:
        info = (
            f"loss {hist.train_loss[-1]:.4f}  train acc {hist.train_acc[-1]:.3f}  "
            f"test acc {hist.test_acc[-1]:.3f}"
        )
        term.progress(epoch + 1, args.epochs, "epoch", info)

    hist = _demo.train(
        epochs=args.epochs,
        hidden=args.hidden,
        lr=args.lr,
        seed=args.seed,
        backend=args.backend,
        on_epoch=on_epoch,
    )
    seconds = time.perf_counter() - start
    n_test = round(1797 * 0.2)
    term.line(
        f"test accuracy: {hist.test_accuracy:.1%} on {n_test} held-out images ({seconds:.1f} s)"
    )
    verdict = term.paint("PASS", "32") if hist.gradcheck_ok else term.paint("FAIL", "31")
    term.line(
        f"gradient check (finite differences on the {64 * args.hidden} first-layer weights): "
        f"max |error| {hist.gradcheck_max_err:.1e}  {verdict}"
    )
    png = out / "demo.png"
    try:
        _demo.plot(hist, str(png))
    except ImportError:
        term.line("matplotlib is not installed: no plot written (pip install matplotlib)")
    else:
        term.line(f"wrote {png}")
    return 0 if hist.gradcheck_ok else 1


# --------------------------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------------------------


def _versions() -> list[tuple[str, str]]:
    rows = [("numpy", np.__version__)]
    for name in ("numba", "torch", "jax"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            rows.append((name, "not installed"))
        else:
            rows.append((name, getattr(mod, "__version__", "?")))
    return rows


Check = Callable[[], tuple[bool, float]]


def _fd(f: Callable[[np.ndarray], Any], grad: np.ndarray, at: np.ndarray) -> tuple[bool, float]:
    """Whether ``grad`` matches the finite differences of ``f`` at ``at``, and the largest
    difference."""
    numeric = _api.numerical_gradient(f, at)
    ok = bool(np.allclose(grad, numeric, rtol=1e-5, atol=1e-7))
    return ok, float(np.max(np.abs(grad - numeric)))


def _checks(rng: np.random.Generator) -> list[tuple[str, Check]]:
    """(name, check) pairs; each check compares a claimed gradient with finite differences."""
    x = rng.normal(size=(3, 5)) * 2.0
    r = rng.normal(size=(3, 5))
    t = np.array([4, 0, 2])
    checks = _function_checks(x, r, t)
    if importlib.util.find_spec("torch") is not None:
        checks.append(("softmaxce.torch.cross_entropy (autograd)", _torch_check(x, t)))
    return checks + _fused_checks(rng, x, t)


def _function_checks(x: np.ndarray, r: np.ndarray, t: np.ndarray) -> list[tuple[str, Check]]:
    """The softmax family, cross-entropy on probabilities and the ops objects."""

    def ops_chain() -> tuple[bool, float]:
        sm, ce = Softmax(), CrossEntropy()
        ce.forward(sm.forward(x), t)
        g = sm.backward(ce.backward())
        fused_op = SoftmaxCrossEntropy()
        fused_op.forward(x, t)
        return _fd(lambda a: _api.softmax_cross_entropy(a, t), g, x)[0] and bool(
            np.allclose(g, fused_op.backward())
        ), float(np.max(np.abs(g - fused_op.backward())))

    def log_softmax_op() -> tuple[bool, float]:
        op = LogSoftmax()
        op.forward(x)
        return _fd(lambda a: float(np.sum(_api.log_softmax(a) * r)), op.backward(r), x)

    def dot_r(f: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], float]:
        return lambda a: float(np.sum(f(a) * r))

    y = _api.softmax(x)
    jac = _api.softmax_jacobian(y)
    return [
        ("softmax + softmax_vjp", lambda: _fd(dot_r(_api.softmax), _api.softmax_vjp(y, r), x)),
        (
            "log_softmax + log_softmax_vjp",
            lambda: _fd(dot_r(_api.log_softmax), _api.log_softmax_vjp(_api.log_softmax(x), r), x),
        ),
        (
            "logsumexp (gradient = softmax)",
            lambda: _fd(lambda a: float(np.sum(_api.logsumexp(a))), y, x),
        ),
        (
            "softmax_jacobian",
            lambda: _fd(dot_r(_api.softmax), np.einsum("nij,ni->nj", jac, r), x),
        ),
        (
            "cross_entropy + cross_entropy_vjp",
            lambda: _fd(lambda p: _api.cross_entropy(p, t), _api.cross_entropy_vjp(y, t), y),
        ),
        ("ops: LogSoftmax", log_softmax_op),
        ("ops: Softmax + CrossEntropy == SoftmaxCrossEntropy", ops_chain),
    ]


def _torch_check(x: np.ndarray, t: np.ndarray) -> Check:
    """softmaxce.torch's autograd gradient against finite differences."""

    def run() -> tuple[bool, float]:
        import torch

        from .torch import cross_entropy as torch_ce

        tx = torch.tensor(x, requires_grad=True)
        tt = torch.tensor(t)
        torch_ce(tx, tt, label_smoothing=0.1, z_loss=1e-3).backward()
        return _fd(
            lambda a: float(torch_ce(torch.tensor(a), tt, label_smoothing=0.1, z_loss=1e-3)),
            tx.grad.numpy(),  # type: ignore[union-attr]
            x,
        )

    return run


def _fused_checks(
    rng: np.random.Generator, x: np.ndarray, t: np.ndarray
) -> list[tuple[str, Check]]:
    """The fused loss on every backend here, over a grid of options."""
    soft = rng.random(size=(3, 5))
    w = rng.random(5) + 0.5
    mask = np.ones((3, 5), dtype=bool)
    mask[:, 1] = False
    option_grid: list[tuple[str, dict[str, Any]]] = [
        ("plain", {}),
        (
            "weight + ignore_index + smoothing",
            {"weight": w, "target": np.array([4, -100, 2]), "label_smoothing": 0.1},
        ),
        ("z_loss + softcap, sum", {"z_loss": 1e-3, "softcap": 3.0, "reduction": "sum"}),
        ("where mask", {"where": mask, "target": np.array([4, 0, 2])}),
        (
            "soft target, kl-divergence",
            {"target": soft, "soft_target_loss": "kl-divergence", "weight": w},
        ),
    ]

    def fused(backend: str, **opts: Any) -> Check:
        target = opts.pop("target", t)

        def run() -> tuple[bool, float]:
            _, g = _api.softmax_cross_entropy_with_grad(x, target, backend=backend, **opts)
            f = lambda a: _api.softmax_cross_entropy(a, target, backend="numpy", **opts)  # noqa: E731
            return _fd(f, g, x)

        return run

    backends = ["numpy"] + (["numba"] if _dispatch.numba_kernels() is not None else [])
    return [
        (f"softmax_cross_entropy [{backend}] {label}", fused(backend, **opts))
        for backend in backends
        for label, opts in option_grid
    ]


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# extra -> (the module it brings, what it gives)
EXTRAS = {
    "numba": ("numba", "the fused CPU kernel, for NumPy arrays and torch CPU tensors"),
    "torch": ("torch", "softmaxce.torch, the PyTorch front end"),
    "jax": ("jax", "the functions on JAX arrays"),
}


def _suggestions() -> list[str]:
    """What to install (or change) for the fast paths and front ends this environment lacks."""
    lines = []
    for extra, (module, gives) in EXTRAS.items():
        if not _installed(module):
            command = f"pip install 'softmaxce[{extra}]'"
            lines.append(f"{command:<32}# {gives}")
    if _installed("numba") and _dispatch.numba_kernels() is None:
        lines.append(f"the numba kernel is installed but off: {_dispatch.unavailable()}")
    if not _installed("matplotlib"):
        lines.append(f"{'pip install matplotlib':<32}# the plots of demo and bench")
    return lines


def cmd_check(args: argparse.Namespace, term: Terminal) -> int:
    term.line(term.paint("softmaxce check", "1") + f": what this environment has ({_version()})")
    for name, version in _versions():
        term.line(f"  {name:<8} {version}")
    kernel = "numba" if _dispatch.numba_kernels() else f"numpy core ({_dispatch.unavailable()})"
    term.line(f"  fused kernel: {kernel}")
    suggestions = _suggestions()
    if suggestions:
        term.line("  to get what is missing:")
        for line in suggestions:
            term.line(f"    {line}")
    term.line("")
    failures = 0
    rng = np.random.default_rng(args.seed)
    rows = _checks(rng)
    width = max(len(name) for name, _ in rows)
    term.line(f"  {'gradient check':<{width}}  {'max |error|':>11}  result")
    for name, check in rows:
        try:
            ok, err = check()
        except Exception as exc:  # a crash is a failure to report, not to hide
            ok, err = False, float("nan")
            name = f"{name} ({type(exc).__name__}: {exc})"
        failures += not ok
        verdict = term.paint("pass", "32") if ok else term.paint("FAIL", "31")
        term.line(f"  {name:<{width}}  {err:>11.1e}  {verdict}")
    term.line("")
    term.line(f"{len(rows) - failures} passed, {failures} failed")
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------
# the parser
# --------------------------------------------------------------------------------------------


def _version() -> str:
    """``softmaxce X.Y.Z``: the installed distribution's version, else the package's."""
    try:
        version = importlib.metadata.version("softmaxce")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        from . import __version__ as version
    return f"softmaxce {version}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softmaxce",
        description="Softmax cross-entropy done right: demo, benchmarks and self-checks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  softmaxce demo\n  softmaxce check\n  softmaxce bench --quick",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench,check}")

    demo = sub.add_parser(
        "demo",
        help="train a two-layer network on handwritten digits with NumPy + softmaxce.ops",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  softmaxce demo\n  softmaxce demo --epochs 5 --hidden 32 --out /tmp/d\n"
        "  softmaxce demo --backend numpy --seed 1",
    )
    demo.add_argument("--epochs", type=_positive_int, default=20, help="epochs (default 20)")
    demo.add_argument("--hidden", type=_positive_int, default=64, help="hidden units (default 64)")
    demo.add_argument("--lr", type=_positive_float, default=0.05, help="learning rate (0.05)")
    demo.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
    demo.add_argument("--out", default="out", help="folder for demo.png (created; default out)")
    demo.add_argument(
        "--backend",
        choices=["auto", "numpy", "numba"],
        default="auto",
        help="kernel for the loss (default auto)",
    )
    demo.set_defaults(func=cmd_demo)

    # "bench" hands its arguments to the benchmark harness (main() below); listed here for --help.
    sub.add_parser(
        "bench",
        help="time softmaxce against NumPy, PyTorch and JAX; table, CSV and plot "
        "(softmaxce bench --help)",
        add_help=False,
    )

    check = sub.add_parser(
        "check",
        help="list backends and front ends, run gradient checks of every public operation",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  softmaxce check\n  NO_COLOR=1 softmaxce check --seed 3",
    )
    check.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
    check.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None, stream: TextIO | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from . import _bench

        return int(_bench.main(argv[1:], prog="softmaxce bench") or 0)
    args = build_parser().parse_args(argv)
    return int(args.func(args, Terminal(stream)))
