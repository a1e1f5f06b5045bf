"""The row contract (docs/internals.md), on every array library: the statistics of blocks of
classes, merged in any order, give the loss and gradient of the whole row.

For every option and both target kinds, the classes are split into 1, 2, 3 and 7 uneven blocks;
``row_stats`` of each block, merged as a left fold, in shuffled orders and as a tree, then
``row_loss`` and each block's ``row_grad`` must give the one-block loss and gradient within the
accumulation dtype's rounding (float64: 1e-12 relative). ``merge`` is commutative exactly and
associative up to rounding, an empty block is its identity, and ``-inf``/NaN/``+inf`` logits and
rows with no allowed class behave as in one block. The one-block results match the float64
reference (tests/reference.py). The numba twin of the contract is tested in test_numba_kernels.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest
import reference as ref
from reference import TOLERANCES

from softmaxce._core import rows
from softmaxce._options import loss_options

pytestmark = pytest.mark.impls("numpy-core", "torch", "jax", "array-api-strict")

N, C = 7, 13
# Uneven block widths, fixed (rather than drawn per case) so that JAX, which compiles every
# operation per shape, sees few shapes.
SPLITS = {1: [13], 2: [5, 8], 3: [2, 7, 4], 7: [1, 3, 2, 1, 4, 1, 1]}

OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore": -100},  # out of the class range: rows 1, 4 ignored
    "ignore_in_range": {"ignore": 1},  # a class: the rows labelled 1 are ignored
    "smooth": {"smooth": 0.2},
    "z_loss": {"z_loss": 0.05},
    "softcap": {"softcap": 2.5},
    "where_random": {"where": "random"},  # row 0 has no allowed class
    "where_column": {"where": "column"},  # classes 1 and C - 1 masked in every row
    "kl": {"kl": True},
    "kl_smooth_where": {"kl": True, "smooth": 0.3, "where": "random"},
    "everything": {
        "weight": True, "ignore": -100, "smooth": 0.1, "z_loss": 0.02, "softcap": 3.0,
        "where": "random", "kl": True,
    },
}
KINDS = ["index", "soft"]
DTYPES = [np.float32, np.float64]


@pytest.fixture(autouse=True)
def _quiet():
    """The core's callers silence NumPy's floating-point warnings (-inf and NaN are results
    here); so does this test, which calls the core directly. (array-api-strict computes with
    NumPy too.)"""
    with np.errstate(all="ignore"):
        yield


def rtol(dtype) -> float:
    """Splitting changes only the order of the row sums: a few roundings of the accumulation
    dtype (float32 for float32 logits), and the issue's 1e-12 for float64."""
    return 1e-12 if np.dtype(dtype) == np.float64 else 64 * float(np.finfo(np.float32).eps)


def make_rows(case, kind, dtype, *, x=None):
    """A NumPy problem of (N, C) rows: dict of x, target, weight, where, row_scale, options."""
    flags = OPTIONS[case]
    rng = np.random.default_rng(zlib.crc32(f"{case}/{kind}".encode()))
    if x is None:
        x = rng.normal(size=(N, C)) * 3.0
    where = None
    if flags.get("where") == "random":
        where = rng.random((N, C)) < 0.6
        where[1:, 0] = True  # every row but the first has an allowed class
        where[0] = False
    elif flags.get("where") == "column":
        where = np.ones((N, C), dtype=bool)
        where[:, [1, C - 1]] = False
    allowed = np.ones((N, C), bool) if where is None else where
    if kind == "index":  # a label on an allowed class (else the loss is +inf)
        target = np.array([rng.choice(np.flatnonzero(a)) if a.any() else 0 for a in allowed])
        if "ignore" in flags:
            target[[1, 4]] = flags["ignore"]
    else:
        target = rng.dirichlet(np.ones(C), size=N) * allowed
        target /= np.maximum(target.sum(axis=1, keepdims=True), 1e-300)
    opts = loss_options(
        ignore_index=flags.get("ignore", -100),
        label_smoothing=flags.get("smooth", 0.0),
        z_loss=flags.get("z_loss", 0.0),
        softcap=flags.get("softcap"),
        soft_target_loss="kl-divergence" if flags.get("kl") else "cross-entropy",
    )
    return {
        "x": np.asarray(x, dtype=dtype),
        "target": target.astype(dtype) if kind == "soft" else target.astype(np.int64),
        "weight": rng.uniform(0.25, 2.0, size=C) if flags.get("weight") else None,
        "where": where,
        "row_scale": rng.uniform(-2.0, 2.0, size=N),
        "opts": opts,
    }


class Rows:
    """The row contract run on ``impl``'s arrays (NumPy in, NumPy out)."""

    def __init__(self, impl, problem):
        self.impl = impl
        self.p = problem
        self.a = {k: impl.to(v) for k, v in problem.items() if k != "opts"}
        self.opts = problem["opts"]
        a = self.a
        self.ctx = rows.row_context(a["x"], a["target"], C, self.opts, a["where"])
        self._stats, self._grad = self._row_stats, self._row_grad
        if impl.name == "jax":  # one computation per block shape, as the JAX front end and
            import jax  # shard_map run them (eagerly JAX compiles each of ~30 operations anew)

            self._stats = jax.jit(self._row_stats, static_argnums=(2,))
            self._grad = jax.jit(self._row_grad, static_argnums=(2,))

    def _row_stats(self, x, t, offset, w, m):
        return rows.row_stats(x, t, offset, self.opts, self.ctx, weight=w, where=m)

    def _row_grad(self, x, t, offset, w, m, stats):
        scale = self.a["row_scale"]
        return rows.row_grad(x, t, offset, stats, scale, self.opts, self.ctx, weight=w, where=m)

    def _block(self, start, stop):
        """The block's arguments: logits, target, offset, weight and where of its columns."""
        a = self.a
        t = a["target"] if a["target"].ndim == 1 else a["target"][:, start:stop]
        w = None if a["weight"] is None else a["weight"][start:stop]
        m = None if a["where"] is None else a["where"][:, start:stop]
        return a["x"][:, start:stop], t, start, w, m

    def stats(self, start, stop):
        return self._stats(*self._block(start, stop))

    def loss(self, stats):
        return self.np(rows.row_loss(stats, self.opts, self.ctx))

    def grad(self, stats, start, stop):
        return self.np(self._grad(*self._block(start, stop), stats))

    def np(self, a):
        """``a`` (or each statistic) as float64 NumPy."""
        if isinstance(a, rows.RowStats):
            return rows.RowStats(*(self.np(s) for s in a))
        return np.asarray(self.impl.back(a, self.a["x"]), dtype=np.float64)


def bounds(widths):
    edges = np.cumsum([0, *widths])
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def left_fold(parts):
    return functools.reduce(rows.merge, parts)


def tree(parts):
    while len(parts) > 1:
        pairs = [rows.merge(*parts[i : i + 2]) for i in range(0, len(parts) - 1, 2)]
        parts = pairs + parts[len(parts) - len(parts) % 2 :]
    return parts[0]


def orders(parts, seed):
    """The merged statistics of ``parts`` by a left fold, two shuffled folds and a tree."""
    rng = np.random.default_rng(seed)
    shuffled = [[parts[i] for i in rng.permutation(len(parts))] for _ in range(2)]
    return {
        "left": left_fold(parts),
        "shuffled-1": left_fold(shuffled[0]),
        "shuffled-2": left_fold(shuffled[1]),
        "tree": tree(parts),
        "right": functools.reduce(lambda a, b: rows.merge(b, a), parts[::-1]),
    }


def close(actual, expected, dtype, what):
    """Within the rounding of a different summation order: relative to the largest entry."""
    r = rtol(dtype)
    fin = np.isfinite(expected)
    scale = max(1.0, float(np.max(np.abs(expected[fin]), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=r, atol=r * scale, err_msg=what)


# --- any split, any order: the one-block result -------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(OPTIONS))
def test_blocks_merged_in_any_order_give_the_one_block_loss_and_gradient(impl, case, kind,
                                                                         dtype):
    impl.need(dtype)
    impl.sample(jax=case == "everything")  # (compiles per block shape)
    r = Rows(impl, make_rows(case, kind, dtype))
    whole = r.stats(0, C)
    loss1, grad1 = r.loss(whole), r.grad(whole, 0, C)
    for n_blocks, widths in SPLITS.items():
        cuts = bounds(widths)
        parts = [r.stats(a, b) for a, b in cuts]
        for order, stats in orders(parts, n_blocks).items():
            what = f"{n_blocks} blocks, {order}"
            close(r.loss(stats), loss1, dtype, f"loss, {what}")
            grad = np.concatenate([r.grad(stats, a, b) for a, b in cuts], axis=1)
            close(grad, grad1, dtype, f"gradient, {what}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(OPTIONS))
def test_one_block_matches_the_reference(impl, case, kind, dtype):
    impl.need(dtype)
    impl.sample(jax=dtype == np.float64)
    p = make_rows(case, kind, dtype)
    r = Rows(impl, p)
    whole = r.stats(0, C)
    opts = p["opts"]
    ref_loss, ref_grad = ref.softmax_cross_entropy(
        p["x"], p["target"], weight=p["weight"], where=p["where"], reduction="none",
        ignore_index=opts.ignore_index, label_smoothing=opts.label_smoothing,
        z_loss=opts.z_loss, softcap=opts.softcap, dloss=p["row_scale"],
        soft_target_loss="kl-divergence" if opts.kl else "cross-entropy",
    )
    atol, rtol_ = TOLERANCES[np.dtype(dtype)]
    np.testing.assert_allclose(r.loss(whole), ref_loss, rtol=rtol_, atol=atol)
    np.testing.assert_allclose(r.grad(whole, 0, C), ref_grad, rtol=rtol_, atol=atol)


# --- merge: commutative, associative, with the empty block as identity ------------------------


def assert_same(a, b):
    for name, u, v in zip(rows.RowStats._fields, a, b, strict=True):
        np.testing.assert_array_equal(u, v, err_msg=name)


def assert_stats_close(a, b, dtype):
    np.testing.assert_array_equal(a.m, b.m, err_msg="m")  # a maximum, never rounded
    np.testing.assert_array_equal(a.ties, b.ties, err_msg="ties")  # a count of maxima
    for name in ("rest", "mass", "tz", "kl"):
        close(getattr(a, name), getattr(b, name), dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["plain", "everything", "where_random"])
def test_merge_is_commutative_exactly_and_associative_within_rounding(impl, case, kind, dtype):
    impl.need(dtype)
    r = Rows(impl, make_rows(case, kind, dtype))
    a, b, c = (r.stats(lo, hi) for lo, hi in bounds(SPLITS[3]))
    assert_same(r.np(rows.merge(a, b)), r.np(rows.merge(b, a)))
    assert_same(r.np(rows.merge(a, rows.merge(b, c))), r.np(rows.merge(rows.merge(c, b), a)))
    left, right = rows.merge(rows.merge(a, b), c), rows.merge(a, rows.merge(b, c))
    assert_stats_close(r.np(left), r.np(right), dtype)


# Rows whose blocks' maxima are far apart, -inf, NaN or +inf: row 0 (no allowed class),
# 1 all -inf, 2 maxima 1e30 apart, 3 large negative (exp(-1e6 - 0) underflows to 0), 4 a NaN,
# 5 a +inf, 6 -inf in some blocks only.
SPECIAL = np.zeros((N, C))
SPECIAL[1] = -np.inf
SPECIAL[2, :6], SPECIAL[2, 6:] = -1e30, 1e30
SPECIAL[3] = -1e6 + np.arange(C)
SPECIAL[4, 7], SPECIAL[5, 2] = np.nan, np.inf
SPECIAL[6, :5] = -np.inf


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["plain", "where_random", "everything"])
def test_an_empty_block_is_the_identity_of_merge(impl, case, kind):
    r = Rows(impl, make_rows(case, kind, np.float64, x=SPECIAL))
    empty = r.stats(4, 4)
    for lo, hi in [(0, C), *bounds(SPLITS[3])]:
        native = r.stats(lo, hi)
        s = r.np(native)
        for merged in (rows.merge(native, empty), rows.merge(empty, native)):
            merged = r.np(merged)
            # (a row that is NaN already, from a NaN or +inf logit, stays NaN: its sums may
            # turn from -inf to NaN)
            poisoned = np.isnan(s.rest)
            assert np.isnan(merged.rest[poisoned]).all()
            assert_same(*(rows.RowStats(*(f[~poisoned] for f in st)) for st in (merged, s)))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", ["plain", "where_random", "everything"])
def test_special_rows_split_into_blocks_behave_as_in_one_block(impl, case, kind, dtype):
    """-inf, NaN and +inf logits, maxima 1e30 apart and rows with no allowed class: the merged
    statistics give the one-block loss and gradient, NaN where it is NaN."""
    impl.need(dtype)
    impl.sample(jax=case != "plain")  # (compiles per block shape)
    x = np.where(np.isfinite(SPECIAL), np.clip(SPECIAL, -1e30, 1e30), SPECIAL)
    r = Rows(impl, make_rows(case, kind, dtype, x=x))
    whole = r.stats(0, C)
    loss1, grad1 = r.loss(whole), r.grad(whole, 0, C)
    allowed = np.ones((N, C), bool) if r.p["where"] is None else r.p["where"]
    bad = np.isnan(x) | (np.isposinf(x) if r.opts.softcap is None else False)  # (capped: 3)
    nan_rows = (bad & allowed).any(axis=1)
    kept = r.np(r.ctx.keep).astype(bool)
    assert np.isnan(loss1[nan_rows & kept]).all()
    for widths in SPLITS.values():
        cuts = bounds(widths)
        for order, stats in orders([r.stats(a, b) for a, b in cuts], len(cuts)).items():
            loss = r.loss(stats)
            grad = np.concatenate([r.grad(stats, a, b) for a, b in cuts], axis=1)
            np.testing.assert_array_equal(np.isnan(loss), np.isnan(loss1), err_msg=order)
            np.testing.assert_array_equal(np.isnan(grad), np.isnan(grad1), err_msg=order)
            close(np.nan_to_num(loss, nan=0.0), np.nan_to_num(loss1, nan=0.0), dtype, order)
            close(np.nan_to_num(grad, nan=0.0), np.nan_to_num(grad1, nan=0.0), dtype, order)


@pytest.mark.parametrize("kind", KINDS)
def test_a_fully_masked_block_merged_with_logits_below_minus_709_is_not_nan(impl, kind):
    """A block whose classes are all masked (maximum -inf) merged with one whose logits are
    all below -709: exp(0 - ref) overflowed to inf, and inf * 0 made the row NaN."""
    x = np.full((N, C), -1000.0) + np.arange(C)
    where = np.ones((N, C), bool)
    where[:, :4] = False
    p = make_rows("plain", kind, np.float64, x=x)
    p["where"] = where
    if kind == "index":
        p["target"][:] = 7
    else:
        p["target"][:, :4] = 0.0
        p["target"] /= p["target"].sum(axis=1, keepdims=True)
    r = Rows(impl, p)
    whole = r.stats(0, C)
    merged = rows.merge(r.stats(0, 4), r.stats(4, C))
    assert np.isfinite(r.loss(merged)).all()
    close(r.loss(merged), r.loss(whole), np.float64, "loss")
    close(np.concatenate([r.grad(merged, 0, 4), r.grad(merged, 4, C)], axis=1),
          r.grad(whole, 0, C), np.float64, "gradient")
