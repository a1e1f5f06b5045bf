"""The demo: a two-layer network on handwritten digits, written with NumPy and softmaxce.ops.

It answers the question people ask when they write their own framework: *how do I
backpropagate through softmax?* Every layer is an object with ``forward`` and ``backward``; the
loss is ``softmaxce.ops.SoftmaxCrossEntropy``, whose backward gives ``dL/dlogits``
directly (``p - q``, scaled), so the network never needs the softmax Jacobian.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from . import _api
from .ops import SoftmaxCrossEntropy


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The bundled UCI digits: images (1797, 64) scaled to [0, 1] and labels (1797,) int64."""
    raw = resources.files("softmaxce").joinpath("data/digits.csv.gz").read_bytes()
    table = np.loadtxt(gzip.decompress(raw).decode().splitlines(), delimiter=",", dtype=np.int64)
    return table[:, :-1].astype(np.float64) / 16.0, table[:, -1]


class Linear:
    """``y = x W + b``; keeps x for the backward pass."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator) -> None:
        self.w = rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_in, n_out))  # He initialisation
        self.b = np.zeros(n_out)
        self.dw = np.zeros_like(self.w)
        self.db = np.zeros_like(self.b)
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return x @ self.w + self.b

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x = self._x
        if x is None:
            msg = "Linear.backward called before forward"
            raise RuntimeError(msg)
        self.dw[...] = x.T @ dy
        self.db[...] = dy.sum(axis=0)
        return dy @ self.w.T


class ReLU:
    """``max(x, 0)``; keeps the mask of positive inputs."""

    def __init__(self) -> None:
        self._mask: np.ndarray | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._mask = x > 0
        return x * self._mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._mask is None:
            msg = "ReLU.backward called before forward"
            raise RuntimeError(msg)
        return dy * self._mask


class Network:
    """Linear -> ReLU -> Linear, trained with the fused softmax cross-entropy."""

    def __init__(self, n_in: int, hidden: int, n_classes: int, seed: int, backend: str) -> None:
        rng = np.random.default_rng(seed)
        self.layers: list[Any] = [Linear(n_in, hidden, rng), ReLU(), Linear(hidden, n_classes, rng)]
        self.loss = SoftmaxCrossEntropy(backend=backend)

    @property
    def params(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [
            (p, g)
            for layer in self.layers
            if isinstance(layer, Linear)
            for p, g in ((layer.w, layer.dw), (layer.b, layer.db))
        ]

    def logits(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def forward_backward(self, x: np.ndarray, y: np.ndarray) -> float:
        loss = float(self.loss.forward(self.logits(x), y))
        grad = self.loss.backward()  # dL/dlogits: no softmax Jacobian needed
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return loss

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(x), axis=1)


@dataclass
class History:
    """What training produced: per-epoch curves and the final scores."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    test_accuracy: float = 0.0
    gradcheck_ok: bool = False
    gradcheck_max_err: float = float("nan")


def split(n: int, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    n_test = round(n * test_fraction)
    return order[n_test:], order[:n_test]


def check_network_gradient(net: Network, x: np.ndarray, y: np.ndarray) -> tuple[bool, float]:
    """Finite differences on every weight of the first layer, against backpropagation."""
    first = net.layers[0]
    net.forward_backward(x, y)
    claimed = first.dw.copy()
    saved = first.w.copy()

    def loss_at(w: np.ndarray) -> float:
        first.w[...] = w
        return float(net.loss.forward(net.logits(x), y))

    numeric = _api.numerical_gradient(loss_at, saved, eps=1e-6)
    first.w[...] = saved
    err = float(np.max(np.abs(claimed - numeric)))
    return bool(np.allclose(claimed, numeric, rtol=1e-5, atol=1e-7)), err


def train(
    *,
    epochs: int = 20,
    hidden: int = 64,
    lr: float = 0.1,
    batch_size: int = 32,
    seed: int = 0,
    backend: str = "auto",
    on_epoch: Callable[[int, History], None] | None = None,
) -> History:
    """Train the network on 80% of the digits with SGD + momentum; test on the rest."""
    images, labels = load_digits()
    rng = np.random.default_rng(seed)
    train_idx, test_idx = split(len(labels), 0.2, rng)
    mean = images[train_idx].mean(axis=0)
    x = images - mean
    net = Network(x.shape[1], hidden, 10, seed, backend)
    velocity = [np.zeros_like(p) for p, _ in net.params]
    hist = History()
    for epoch in range(epochs):
        order = rng.permutation(train_idx)
        losses = []
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            losses.append(net.forward_backward(x[batch], labels[batch]))
            for (p, g), vel in zip(net.params, velocity, strict=True):
                vel *= 0.9
                vel -= lr * g
                p += vel
        hist.train_loss.append(float(np.mean(losses)))
        hist.train_acc.append(float(np.mean(net.predict(x[train_idx]) == labels[train_idx])))
        hist.test_acc.append(float(np.mean(net.predict(x[test_idx]) == labels[test_idx])))
        if on_epoch is not None:
            on_epoch(epoch, hist)
    hist.test_accuracy = hist.test_acc[-1] if hist.test_acc else 0.0
    hist.gradcheck_ok, hist.gradcheck_max_err = check_network_gradient(
        net, x[test_idx[:8]], labels[test_idx[:8]]
    )
    return hist


def plot(hist: History, path: str) -> None:
    """Loss and accuracy curves as a PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, len(hist.train_loss) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.plot(epochs, hist.train_loss, marker="o", color="tab:blue")
    ax1.set(title="training loss (softmax cross-entropy)", xlabel="epoch", ylabel="loss")
    ax1.set_yscale("log")
    ax2.plot(epochs, hist.train_acc, marker="o", label="train")
    ax2.plot(epochs, hist.test_acc, marker="s", label="test")
    ax2.set(title="accuracy on UCI digits", xlabel="epoch", ylabel="accuracy")
    ax2.legend(loc="lower right")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.suptitle("softmaxce demo: a two-layer network in NumPy + softmaxce.ops")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
