"""Run by test_jax_sharded.py in a fresh process: 4 CPU devices (XLA_FLAGS set before jax is
imported), the vocabulary split over them, loss and gradient against the unsharded loss."""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_ENABLE_X64"] = "1"

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import softmaxce.jax as scj

CASES = [
    {},
    {"label_smoothing": 0.1, "z_loss": 1e-3},
    {"softcap": 2.0, "reduction": "sum"},
    {"reduction": "none", "ignore_index": 15},
    {"weight": True, "label_smoothing": 0.2},
    {"soft": True, "weight": True, "soft_target_loss": "kl-divergence"},
]


def check(case: dict, dtype) -> None:
    rng = np.random.default_rng(7)
    n, c = 6, 16
    x = jnp.asarray(3 * rng.standard_normal((n, c)), dtype=dtype)
    kw = {k: val for k, val in case.items() if k not in ("weight", "soft")}
    if case.get("soft"):
        t = jnp.asarray(rng.dirichlet(np.ones(c), n), dtype=dtype)
        t_spec = P(None, "v")
    else:
        t = jnp.asarray([0, 15, 4, case.get("ignore_index", -100), 8, 1])
        t_spec = P()
    w = jnp.asarray(rng.random(c) + 0.5, dtype=dtype) if case.get("weight") else None
    mesh = jax.make_mesh((4,), ("v",), axis_types=(jax.sharding.AxisType.Auto,))
    out_spec = P()  # (the loss, also the rows of "none", is the same on every device)

    def local(x_, t_, w_):
        return scj.vocab_parallel_cross_entropy(x_, t_, axis_name="v", weight=w_, **kw)

    sharded = jax.jit(
        jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(P(None, "v"), t_spec, P("v") if w is not None else P()),
            out_specs=out_spec,
        )
    )
    whole = lambda x_: scj.softmax_cross_entropy(x_, t, weight=w, backend="xla", **kw)  # noqa: E731
    tol = 8 * float(jnp.finfo(dtype).eps)
    got, want = sharded(x, t, w), whole(x)
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(want), rtol=tol, atol=tol, err_msg=str(case)
    )
    seed = jnp.asarray(rng.standard_normal(np.shape(want)), dtype=dtype)
    g_got = jax.grad(lambda x_: jnp.sum(sharded(x_, t, w) * seed))(x)
    g_want = jax.grad(lambda x_: jnp.sum(whole(x_) * seed))(x)
    np.testing.assert_allclose(
        np.asarray(g_got), np.asarray(g_want), rtol=tol, atol=tol, err_msg=str(case)
    )


def main() -> int:
    assert jax.device_count() == 4, jax.devices()
    for case in CASES:
        check(case, jnp.float32)
    for case in (CASES[-1],):  # (float64: one case, each compile costs seconds)
        check(case, jnp.float64)
    print("sharded: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
