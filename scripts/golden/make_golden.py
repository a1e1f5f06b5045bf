"""Record golden files from the real frameworks for softmaxce's compatibility modes.

Run inside a throwaway venv that has numpy and ONE framework (see envs.sh beside this file):

    /tmp/gold-mxnet/bin/python scripts/golden/make_golden.py mxnet

Frameworks: mxnet, chainer, mygrad, pytorch, optax.  Writes tests/golden/<framework>.npz.
The format is described in tests/golden/README.md.  The script is deterministic (fixed seeds)
and needs only numpy and the framework; it runs under numpy<1.24 too (MXNet, Chainer).

Every case runs the framework's forward and backward with an all-ones cotangent (`grad_ones`)
and with a random cotangent `head` of the output's shape (`grad`).  `grad` is the gradient of
sum(out * head) with respect to the logits, as the framework's autograd computes it.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import itertools
import json
import sys
import warnings
from pathlib import Path

import numpy as np

SEED = 20261122
OUT_DIR = Path(__file__).resolve().parents[2] / "tests" / "golden"
# Array names that are outputs of a case; every other array is an input of the function.
OUTPUT_NAMES = ("out", "grad", "grad_ones", "head")


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def to_bf16_exact(x):
    """Round float32 values to the nearest bfloat16 (ties to even), returned as float32."""
    x = np.array(x, dtype=np.float32, copy=True)
    u = x.reshape(-1).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    out = rounded.astype(np.uint32).view(np.float32).reshape(x.shape)
    # keep NaN and inf exactly as they are
    return np.where(np.isfinite(x), out, x).astype(np.float32)


def logits(rng, shape, dtype, kind="normal", axis=-1):
    """Random logits of a given flavour.

    kind: normal | big (±1e6) | huge (±1e30, float32/64 only) | neginf (some -inf entries, at
    least one finite entry per row) | neginf-row (one whole row -inf) | posinf | nan.
    `axis` is the class axis (used to keep a finite entry in every row for "neginf").
    """
    x = rng.standard_normal(shape) * 2.0
    if kind == "big":
        x = x * 5e5
    elif kind == "huge":
        x = x * 5e29
    elif kind == "neginf":
        mask = rng.random(shape) < 0.35
        # keep the first class of every row finite
        idx = [slice(None)] * len(shape)
        idx[axis] = 0
        mask[tuple(idx)] = False
        x[mask] = -np.inf
    elif kind == "neginf-row":
        flat = x.reshape(-1, shape[axis]) if axis in (-1, len(shape) - 1) else None
        if flat is None:
            xm = np.moveaxis(x, axis, -1)
            xm.reshape(-1, shape[axis])[0] = -np.inf
        else:
            flat[0] = -np.inf
    elif kind == "posinf":
        x.reshape(-1)[1] = np.inf
    elif kind == "nan":
        x.reshape(-1)[1] = np.nan
    elif kind != "normal":
        raise ValueError(kind)
    if np.dtype(dtype) == np.float16:
        x = np.where(np.isfinite(x), np.clip(x, -6e4, 6e4), x)  # keep inf and NaN
    return x.astype(dtype)


def int_labels(rng, shape, num_classes, ignore=None, frac=0.34, dtype=np.int64):
    """Random class indices; with `ignore`, about `frac` of them (at least one, not all when
    there are two or more) are set to the ignore value."""
    t = rng.integers(0, num_classes, size=shape)
    if ignore is not None and t.size:
        m = rng.random(shape) < frac
        flat = m.reshape(-1)
        flat[0] = True
        if flat.size > 1:
            flat[-1] = False
        t = np.where(m, ignore, t)
    return np.asarray(t).astype(dtype)


def soft_labels(rng, shape, axis=-1, normalized=True, zeros=False):
    """Random probability targets along `axis`; rows sum to 1 if `normalized`, else to
    random totals in [0.3, 1.7].  With `zeros`, some entries are exactly 0."""
    q = rng.random(shape) + 0.05
    if zeros:
        q[rng.random(shape) < 0.3] = 0.0
    q = q / q.sum(axis=axis, keepdims=True).clip(1e-12)
    if not normalized:
        red = list(shape)
        red[axis] = 1
        q = q * rng.uniform(0.3, 1.7, size=red)
    return q


def nan_equal(a, b):
    a = np.asarray(a)
    b = np.asarray(b)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


class Recorder:
    """Collects cases and their arrays, and writes the npz file."""

    def __init__(self, framework, meta):
        self.framework = framework
        self.meta = meta
        self.cases = []
        self.arrays = {}
        self.rng = np.random.default_rng(SEED)
        self.head_rng = np.random.default_rng(SEED + 1)
        self.ids = set()

    def add(self, cid, fn, args, inputs, call, notes=None, head_cast=None):
        """Record one case.

        call(inputs, args, head) -> (out, grad) as numpy arrays; head is a numpy array of the
        output's shape and dtype.  An exception from the first call (forward only) is recorded
        as the case's error; one from a later call (with backward) too, with "stage": "backward",
        and the forward value is kept as `out`.  head_cast rounds the random head (e.g. to
        bfloat16 values).
        """
        if cid in self.ids:
            raise RuntimeError(f"duplicate case id {cid}")
        self.ids.add(cid)
        index = len(self.cases)
        entry = {"id": cid, "fn": fn, "args": args, "arrays": {}, "error": None}
        if notes:
            entry["notes"] = notes

        def put(name, value):
            key = f"c{index}.{name}"
            self.arrays[key] = np.asarray(value)
            entry["arrays"][name] = key

        for name, value in inputs.items():
            put(name, value)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out0 = call(inputs, args, None)
        except Exception as exc:  # the framework's own error is the golden value
            entry["error"] = {"type": type(exc).__name__, "message": str(exc)}
            self.cases.append(entry)
            return entry
        out0 = np.asarray(out0)
        ones = np.ones(out0.shape, out0.dtype)
        head = self.head_rng.standard_normal(out0.shape)
        head = np.asarray(np.round(head, 3), dtype=out0.dtype)
        if head_cast is not None:
            head = head_cast(head)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out1, grad_ones = call(inputs, args, ones)
                out2, grad = call(inputs, args, head)
        except Exception as exc:  # forward worked, backward failed: keep the forward value
            entry["error"] = {"type": type(exc).__name__, "message": str(exc), "stage": "backward"}
            put("out", out0)
            self.cases.append(entry)
            return entry
        if not (nan_equal(out0, out1) and nan_equal(out1, out2)):
            raise RuntimeError(f"{cid}: forward is not deterministic")
        put("out", out1)
        put("head", head)
        if grad is None:  # the framework gives no gradient (e.g. a constant tensor)
            entry.setdefault("notes", {})["no_grad"] = True
        else:
            put("grad", grad)
            put("grad_ones", grad_ones)
        self.cases.append(entry)
        return entry

    def write(self):
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        path = OUT_DIR / f"{self.framework}.npz"
        payload = dict(self.arrays)
        payload["cases"] = np.array(json.dumps(self.cases))
        payload["meta"] = np.array(json.dumps(self.meta))
        np.savez_compressed(path, **payload)
        n_err = sum(c["error"] is not None for c in self.cases)
        print(f"{self.framework}: {len(self.cases)} cases ({n_err} error cases) -> {path}")
        print(f"size: {path.stat().st_size / 1e6:.2f} MB")


def base_meta(framework, version, **extra):
    meta = {
        "framework": framework,
        "version": version,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "seed": SEED,
    }
    meta.update(extra)
    return meta


DTYPES = {"f16": np.float16, "f32": np.float32, "f64": np.float64}


# --------------------------------------------------------------------------------------------
# MXNet 1.9.1: mx.nd.SoftmaxOutput
# --------------------------------------------------------------------------------------------


def gen_mxnet():
    import mxnet as mx
    from mxnet import autograd

    rec = Recorder("mxnet", base_meta("mxnet", mx.__version__))
    rng = rec.rng
    fn = "SoftmaxOutput"

    def call(inputs, args, head):
        data = mx.nd.array(inputs["data"], dtype=inputs["data"].dtype)
        label = mx.nd.array(inputs["label"], dtype=inputs["label"].dtype)
        data.attach_grad()
        with autograd.record():
            out = mx.nd.SoftmaxOutput(data, label, **args)
        if head is None:
            return out.asnumpy()
        out.backward(mx.nd.array(head, dtype=head.dtype))
        return out.asnumpy(), data.grad.asnumpy()

    def notes_for(args):
        if not args.get("out_grad"):
            return {"head": "ignored by MXNet (out_grad=False): grad == grad_ones"}
        return {
            "head": "ignored by MXNet 1.9.1 even with out_grad=True: the gradient is "
            "multiplied by the forward OUTPUT instead, grad == grad_ones"
        }

    def add(cid, data, label, notes=None, **args):
        n = notes_for(args)
        if notes:
            n.update(notes)
        label = np.asarray(label).astype(data.dtype)
        rec.add(cid, fn, args, {"data": data, "label": label}, call, notes=n)

    # 1. MXNet's documented example
    doc_data = np.array([[1, 2, 3, 4], [2, 2, 2, 2], [3, 3, 3, 3], [4, 4, 4, 4]], np.float32)
    doc_label = np.array([1, 0, 2, 3], np.float32)
    doc_out = [[0.0320586, 0.08714432, 0.23688284, 0.64391428]] + [[0.25] * 4] * 3
    doc_grad = [
        [0.0] * 4,
        [-0.75, 0.25, 0.25, 0.25],
        [0.25, 0.25, -0.75, 0.25],
        [0.25, 0.25, 0.25, -0.75],
    ]
    add(
        "docstring-example",
        doc_data,
        doc_label,
        notes={"docstring_out": doc_out, "docstring_grad": doc_grad},
        multi_output=True,
        use_ignore=True,
        ignore_label=1.0,
    )
    add("docstring-example-defaults", doc_data, doc_label)
    got = rec.cases[0]
    if not (
        np.allclose(rec.arrays[got["arrays"]["out"]], doc_out, atol=1e-6)
        and np.allclose(rec.arrays[got["arrays"]["grad"]], doc_grad, atol=1e-6)
    ):
        raise RuntimeError("MXNet does not reproduce its docstring example")
    print("MXNet reproduces its docstring example")

    # 2. the full option grid on 2-D data
    ignore_configs = {
        "noign": ({}, None),
        "ign-1": ({"use_ignore": True}, -1),  # default ignore_label
        "ign2": ({"use_ignore": True, "ignore_label": 2.0}, 2),
        "ign2off": ({"use_ignore": False, "ignore_label": 2.0}, 2),  # 2 is then a real class
    }
    for (ik, (iargs, ival)), norm, og, sa, gs in itertools.product(
        ignore_configs.items(),
        ["null", "batch", "valid"],
        [False, True],
        [0.0, 0.1],
        [1.0, 0.5],
    ):
        data = logits(rng, (5, 7), np.float32)
        label = int_labels(rng, (5,), 7, ignore=ival)
        args = dict(iargs)
        args["normalization"] = norm
        if og:
            args["out_grad"] = True
        if sa:
            args["smooth_alpha"] = sa
        if gs != 1.0:
            args["grad_scale"] = gs
        add(f"2d-C7-{ik}-{norm}-og{int(og)}-sa{sa}-gs{gs}", data, label, **args)

    # 3. odd class counts and the all-ignored batch
    for c in (1, 2, 3):
        for norm, sa in itertools.product(["null", "batch", "valid"], [0.0, 0.2]):
            data = logits(rng, (4, c), np.float32)
            label = int_labels(rng, (4,), c, ignore=-1)
            args = {"use_ignore": True, "normalization": norm}
            if sa:
                args["smooth_alpha"] = sa
            add(f"2d-C{c}-ign-{norm}-sa{sa}", data, label, **args)
    for norm in ("null", "batch", "valid"):
        add(
            f"all-ignored-{norm}",
            logits(rng, (3, 4), np.float32),
            [-1, -1, -1],
            use_ignore=True,
            normalization=norm,
        )
        add(
            f"all-ignored-{norm}-sa",
            logits(rng, (3, 4), np.float32),
            [-1, -1, -1],
            use_ignore=True,
            normalization=norm,
            smooth_alpha=0.1,
        )
    data = logits(rng, (3, 423), np.float32)
    add(
        "2d-C423-valid",
        data,
        int_labels(rng, (3,), 423, ignore=-1),
        use_ignore=True,
        normalization="valid",
        smooth_alpha=0.05,
    )
    add("2d-C423-null", logits(rng, (2, 423), np.float64), int_labels(rng, (2,), 423))

    # 4. dtypes
    for dk in ("f16", "f64"):
        for norm in ("null", "valid"):
            data = logits(rng, (4, 5), DTYPES[dk])
            add(
                f"2d-{dk}-{norm}",
                data,
                int_labels(rng, (4,), 5, ignore=-1),
                use_ignore=True,
                normalization=norm,
                smooth_alpha=0.1,
                grad_scale=2.0,
            )
        add(
            f"2d-{dk}-outgrad",
            logits(rng, (3, 4), DTYPES[dk]),
            int_labels(rng, (3,), 4),
            out_grad=True,
        )

    # 5. N-D data, default mode: the softmax runs on rows of the (d1, s/d1) reshape, but
    #    MXNet 1.9.1 infers the label shape as data.shape[:-1] and its backward reads only
    #    the first d1 entries of the flattened label (one class index in [0, s/d1) per row).
    flat_note = {
        "what": "default mode on N-D data: label shape is data.shape[:-1]; only the "
        "first d1 entries of label.ravel() are used, as indices into s/d1"
    }

    def flat_labels(shape, ignore=None):
        s = int(np.prod(shape[1:]))
        rest = rng.integers(0, shape[-1], size=int(np.prod(shape[:-1]))).astype(np.float64)
        rest[: shape[0]] = int_labels(rng, (shape[0],), s, ignore=ignore)
        return rest.reshape(shape[:-1])

    for shape in ((2, 3, 4), (3, 2, 2, 2)):
        for norm, ign in itertools.product(["null", "batch", "valid"], [False, True]):
            data = logits(rng, shape, np.float32)
            label = flat_labels(shape, ignore=-1 if ign else None)
            args = {"normalization": norm}
            if ign:
                args["use_ignore"] = True
            add(
                f"nd{len(shape)}-flatten-{norm}-ign{int(ign)}", data, label, notes=flat_note, **args
            )
        data = logits(rng, shape, np.float32)
        add(
            f"nd{len(shape)}-flatten-smooth",
            data,
            flat_labels(shape),
            notes=flat_note,
            smooth_alpha=0.1,
            normalization="batch",
        )
    add("nd3-flatten-label-d1", logits(rng, (2, 3, 4), np.float32), [1.0, 5.0])

    # 6. preserve_shape: softmax over the last axis, label = data.shape[:-1]
    for shape in ((2, 3, 5), (2, 2, 2, 3)):
        for norm, ign, sa in itertools.product(
            ["null", "batch", "valid"], [False, True], [0.0, 0.1]
        ):
            data = logits(rng, shape, np.float32)
            label = int_labels(rng, shape[:-1], shape[-1], ignore=-1 if ign else None)
            args = {"preserve_shape": True, "normalization": norm}
            if ign:
                args["use_ignore"] = True
            if sa:
                args["smooth_alpha"] = sa
            add(f"preserve{len(shape)}-{norm}-ign{int(ign)}-sa{sa}", data, label, **args)
    add(
        "preserve-2d",
        logits(rng, (4, 3), np.float32),
        int_labels(rng, (4,), 3),
        preserve_shape=True,
    )
    add(
        "preserve-and-multi",
        logits(rng, (2, 3, 4), np.float32),
        int_labels(rng, (2, 4), 3),
        preserve_shape=True,
        multi_output=True,
        notes={"what": "both flags set: multi_output wins (label shape (n, d))"},
    )
    add(
        "preserve-and-multi-label-preserve",
        logits(rng, (2, 3, 4), np.float32),
        int_labels(rng, (2, 3), 4),
        preserve_shape=True,
        multi_output=True,
    )

    # 7. multi_output: softmax over axis 1 of (n, k, d...), label (n, d...)
    for shape in ((2, 4, 3), (2, 4, 2, 3), (3, 5, 1)):
        for norm, ign, sa in itertools.product(
            ["null", "batch", "valid"], [False, True], [0.0, 0.1]
        ):
            data = logits(rng, shape, np.float32)
            lshape = (shape[0], *shape[2:])
            label = int_labels(rng, lshape, shape[1], ignore=-1 if ign else None)
            args = {"multi_output": True, "normalization": norm}
            if ign:
                args["use_ignore"] = True
            if sa:
                args["smooth_alpha"] = sa
            name = "x".join(map(str, shape))
            add(f"multi-{name}-{norm}-ign{int(ign)}-sa{sa}", data, label, **args)
        add(
            f"multi-{'x'.join(map(str, shape))}-outgrad-gs",
            logits(rng, shape, np.float32),
            int_labels(rng, (shape[0], *shape[2:]), shape[1]),
            multi_output=True,
            out_grad=True,
            grad_scale=3.0,
            normalization="valid",
        )
    add(
        "multi-2x4x3-ign2off-valid",
        logits(rng, (2, 4, 3), np.float32),
        np.array([[2, 2, 0], [1, 3, 2]]),
        multi_output=True,
        ignore_label=2.0,
        normalization="valid",
    )
    add(
        "preserve-ign2off-valid",
        logits(rng, (2, 3, 5), np.float32),
        np.array([[2, 2, 0], [1, 3, 2]]),
        preserve_shape=True,
        ignore_label=2.0,
        normalization="valid",
    )
    add(
        "multi-all-ignored-valid",
        logits(rng, (2, 3, 2), np.float32),
        np.full((2, 2), -1.0),
        multi_output=True,
        use_ignore=True,
        normalization="valid",
    )
    # label of shape (n, d1*d2) for 4-D multi_output data (MXNet also accepts that)
    add(
        "multi-2x4x2x3-flatlabel",
        logits(rng, (2, 4, 2, 3), np.float32),
        int_labels(rng, (2, 6), 4),
        multi_output=True,
    )

    # 8. probability labels: label.shape == data.shape (ignore and normalization off)
    for shape, extra in (
        ((4, 5), {}),
        ((4, 5), {"normalization": "batch"}),
        ((4, 5), {"normalization": "valid", "use_ignore": True}),
        ((4, 5), {"smooth_alpha": 0.1}),
        ((4, 5), {"grad_scale": 0.5, "out_grad": True}),
        ((2, 3, 4), {}),
        ((2, 3, 4), {"preserve_shape": True}),
        ((2, 3, 4), {"multi_output": True}),
        ((2, 3, 4), {"multi_output": True, "normalization": "batch"}),
    ):
        axis = 1 if extra.get("multi_output") else -1
        data = logits(rng, shape, np.float32)
        if len(shape) > 2 and not extra.get("preserve_shape") and not extra.get("multi_output"):
            q = soft_labels(rng, (shape[0], int(np.prod(shape[1:])))).reshape(shape)
        else:
            q = soft_labels(rng, shape, axis=axis)
        tag = "-".join(f"{k}{v}" for k, v in extra.items()) or "default"
        add(f"prob-{'x'.join(map(str, shape))}-{tag}", data, q, **extra)
    add(
        "prob-unnormalized",
        logits(rng, (3, 4), np.float32),
        soft_labels(rng, (3, 4), normalized=False),
    )
    q = np.zeros((3, 4))
    q[[0, 1, 2], [1, 3, 0]] = 1.0
    q[0] = -1.0
    add(
        "prob-onehot-with-ignore-row",
        logits(rng, (3, 4), np.float32),
        q,
        use_ignore=True,
        notes={"what": "row 0 of the label is all -1 (== ignore_label)"},
    )

    # 9. labels as MXNet takes them: floats, including non-integral values
    add("label-nonintegral", logits(rng, (4, 5), np.float32), [0.2, 1.7, 2.5, 4.99])
    add("label-float64-data", logits(rng, (3, 4), np.float64), [0.0, 3.0, 1.0])

    # 10. extreme values
    for kind in ("big", "huge", "neginf", "neginf-row", "posinf", "nan"):
        for dk in ("f32", "f64", "f16"):
            if kind == "huge" and dk == "f16":
                continue
            data = logits(rng, (4, 5), DTYPES[dk], kind=kind)
            add(f"extreme-{kind}-{dk}", data, int_labels(rng, (4,), 5), normalization="valid")
    data = logits(rng, (3, 4), np.float32, kind="neginf")
    label = np.array([0, 1, 2])
    data[1, 1] = -np.inf
    add("extreme-neginf-at-label", data, label)
    data = np.array([[1e30, -1e30, 0.0], [-1e30, -1e30, -1e30], [1e6, 1e6 - 1, -1e6]], np.float32)
    add("extreme-fixed", data, [0, 2, 1], smooth_alpha=0.1)

    # 11. errors
    add("error-label-shape", logits(rng, (4, 5), np.float32), np.zeros(3))
    add(
        "error-label-shape-multi",
        logits(rng, (2, 4, 3), np.float32),
        np.zeros((2, 4)),
        multi_output=True,
    )
    rec.add(
        "error-label-dtype",
        fn,
        {},
        {"data": logits(rng, (3, 4), np.float64), "label": np.array([0.0, 1.0, 2.0], np.float32)},
        call,
    )
    rec.write()


# --------------------------------------------------------------------------------------------
# Chainer 7.8.1: chainer.functions.softmax_cross_entropy
# --------------------------------------------------------------------------------------------


def gen_chainer():
    import chainer
    import chainer.functions as F

    rec = Recorder("chainer", base_meta("chainer", chainer.__version__))
    rng = rec.rng
    fn = "softmax_cross_entropy"

    def call(inputs, args, head, debug=False):
        x = chainer.Variable(inputs["x"].copy())
        kw = dict(args)
        if "class_weight" in inputs:
            kw["class_weight"] = inputs["class_weight"]
        with chainer.using_config("debug", debug):
            out = F.softmax_cross_entropy(x, inputs["t"].copy(), **kw)
            if head is None:
                return out.array
            out.grad = head
            out.backward()
        return out.array, x.grad

    def add(cid, x, t, class_weight=None, notes=None, debug=False, **args):
        inputs = {"x": x, "t": t}
        if class_weight is not None:
            inputs["class_weight"] = np.asarray(class_weight)
        if debug:
            notes = dict(notes or {}, chainer_debug=True)
            rec.add(cid, fn, args, inputs, lambda i, a, h: call(i, a, h, debug=True), notes=notes)
        else:
            rec.add(cid, fn, args, inputs, call, notes=notes)

    def weights(c, dtype=np.float32):
        return rng.uniform(0.2, 2.0, size=c).astype(dtype)

    # 1. hard labels, 2-D, the full grid
    for normalize, reduce, cw, ign, edb, cache in itertools.product(
        [True, False],
        ["mean", "no"],
        [False, True],
        [-1, 2, None],
        [False, True],
        [True, False],
    ):
        x = logits(rng, (6, 5), np.float32)
        args = {}
        if not normalize:
            args["normalize"] = False
        if not cache:
            args["cache_score"] = False
        if reduce != "mean":
            args["reduce"] = reduce
        if edb:
            args["enable_double_backprop"] = True
        if ign is None:  # no ignored entries at all
            t = int_labels(rng, (6,), 5, dtype=np.int32)
        else:
            t = int_labels(rng, (6,), 5, ignore=ign, dtype=np.int32)
            if ign != -1:
                args["ignore_label"] = ign
        cid = (
            f"2d-norm{int(normalize)}-{reduce}-cw{int(cw)}-ign{ign}-edb{int(edb)}-cache{int(cache)}"
        )
        add(cid, x, t, class_weight=weights(5) if cw else None, **args)

    # 2. N-D input, class axis 1
    for shape in ((2, 4, 3), (2, 4, 3, 2)):
        for normalize, reduce, cw, edb in itertools.product(
            [True, False], ["mean", "no"], [False, True], [False, True]
        ):
            x = logits(rng, shape, np.float32)
            t = int_labels(rng, (shape[0], *shape[2:]), shape[1], ignore=-1, dtype=np.int32)
            args = {"normalize": normalize, "reduce": reduce}
            if edb:
                args["enable_double_backprop"] = True
            add(
                f"nd{len(shape)}-norm{int(normalize)}-{reduce}-cw{int(cw)}-edb{int(edb)}",
                x,
                t,
                class_weight=weights(shape[1]) if cw else None,
                **args,
            )

    # ignore_label outside [0, C): the double-backprop path clips labels before selecting
    for edb, reduce in itertools.product([False, True], ["mean", "no"]):
        add(
            f"ignore-label-10-edb{int(edb)}-{reduce}",
            logits(rng, (5, 4), np.float32),
            int_labels(rng, (5,), 4, ignore=10, dtype=np.int32),
            ignore_label=10,
            reduce=reduce,
            enable_double_backprop=edb,
        )
    for edb in (False, True):
        add(
            f"empty-batch-edb{int(edb)}",
            np.zeros((0, 3), np.float32),
            np.zeros(0, np.int32),
            enable_double_backprop=edb,
        )

    # 3. all ignored, odd class counts, large C
    for normalize, reduce, edb in itertools.product([True, False], ["mean", "no"], [False, True]):
        add(
            f"all-ignored-norm{int(normalize)}-{reduce}-edb{int(edb)}",
            logits(rng, (3, 4), np.float32),
            np.full(3, -1, np.int32),
            normalize=normalize,
            reduce=reduce,
            enable_double_backprop=edb,
        )
    for c in (1, 2, 3):
        for reduce in ("mean", "no"):
            add(
                f"2d-C{c}-{reduce}",
                logits(rng, (4, c), np.float32),
                int_labels(rng, (4,), c, ignore=-1, dtype=np.int32),
                reduce=reduce,
            )
    add(
        "2d-C423-mean",
        logits(rng, (3, 423), np.float32),
        int_labels(rng, (3,), 423, ignore=-1, dtype=np.int32),
        class_weight=weights(423),
    )
    add(
        "2d-C423-no-f64",
        logits(rng, (2, 423), np.float64),
        int_labels(rng, (2,), 423, dtype=np.int32),
        reduce="no",
    )

    # 4. dtypes, label dtypes
    for dk in ("f16", "f64"):
        for reduce, edb in itertools.product(["mean", "no"], [False, True]):
            add(
                f"2d-{dk}-{reduce}-edb{int(edb)}",
                logits(rng, (5, 4), DTYPES[dk]),
                int_labels(rng, (5,), 4, ignore=-1, dtype=np.int32),
                class_weight=weights(4, DTYPES[dk]),
                reduce=reduce,
                enable_double_backprop=edb,
            )
    add(
        "label-int64",
        logits(rng, (4, 3), np.float32),
        int_labels(rng, (4,), 3, ignore=-1, dtype=np.int64),
    )
    add(
        "label-int8",
        logits(rng, (4, 3), np.float32),
        int_labels(rng, (4,), 3, ignore=-1, dtype=np.int8),
    )
    add(
        "classweight-f64-x-f32",
        logits(rng, (4, 3), np.float32),
        int_labels(rng, (4,), 3, dtype=np.int32),
        class_weight=weights(3, np.float64),
    )

    # 5. soft targets (float t of x's shape); class axis 1
    for shape, loss, reduce, normalized, zeros in itertools.product(
        [(4, 5), (2, 3, 4)],
        ["cross-entropy", "kl-divergence"],
        ["mean", "no"],
        [True, False],
        [False, True],
    ):
        x = logits(rng, shape, np.float32)
        t = soft_labels(rng, shape, axis=1, normalized=normalized, zeros=zeros)
        t = t.astype(np.float32)
        args = {"reduce": reduce, "soft_target_loss": loss}
        add(
            f"soft-{'x'.join(map(str, shape))}-{loss}-{reduce}-sum1{int(normalized)}"
            f"-zeros{int(zeros)}",
            x,
            t,
            **args,
        )
    add(
        "soft-normalize-false",
        logits(rng, (4, 5), np.float32),
        soft_labels(rng, (4, 5), axis=1).astype(np.float32),
        normalize=False,
    )
    add(
        "soft-classweight",
        logits(rng, (4, 5), np.float32),
        soft_labels(rng, (4, 5), axis=1).astype(np.float32),
        class_weight=weights(5),
        notes={"what": "class_weight with soft targets"},
    )
    add(
        "soft-kl-classweight-no",
        logits(rng, (4, 5), np.float32),
        soft_labels(rng, (4, 5), axis=1).astype(np.float32),
        class_weight=weights(5),
        reduce="no",
        soft_target_loss="kl-divergence",
    )
    add(
        "soft-ignore-entries",
        logits(rng, (3, 4), np.float32),
        np.array([[-1, 0, 1, 1], [0.5, 0.5, 0, 0], [1, 0, 0, 0]], np.float32),
        notes={"what": "soft target entries equal to ignore_label=-1 are not ignored"},
    )
    add(
        "soft-f64-kl",
        logits(rng, (3, 4), np.float64),
        soft_labels(rng, (3, 4), axis=1, zeros=True),
        soft_target_loss="kl-divergence",
    )
    add(
        "soft-f16-kl",
        logits(rng, (3, 4), np.float16),
        soft_labels(rng, (3, 4), axis=1, zeros=True).astype(np.float16),
        soft_target_loss="kl-divergence",
        reduce="no",
    )
    add(
        "soft-edb",
        logits(rng, (3, 4), np.float32),
        soft_labels(rng, (3, 4), axis=1).astype(np.float32),
        enable_double_backprop=True,
        notes={"what": "soft targets with enable_double_backprop=True"},
    )
    add("soft-f32-x-f64-t", logits(rng, (3, 4), np.float32), soft_labels(rng, (3, 4), axis=1))

    # 6. extremes
    for kind in ("big", "huge", "neginf", "neginf-row", "posinf", "nan"):
        for dk in ("f32", "f64", "f16"):
            if kind == "huge" and dk == "f16":
                continue
            for edb in (False, True):
                add(
                    f"extreme-{kind}-{dk}-edb{int(edb)}",
                    logits(rng, (4, 5), DTYPES[dk], kind),
                    int_labels(rng, (4,), 5, dtype=np.int32),
                    reduce="no",
                    enable_double_backprop=edb,
                )
    x = logits(rng, (3, 4), np.float32, "neginf")
    x[1, 1] = -np.inf
    add("extreme-neginf-at-label", x, np.array([0, 1, 2], np.int32))
    add(
        "extreme-neginf-at-label-edb", x, np.array([0, 1, 2], np.int32), enable_double_backprop=True
    )
    add(
        "extreme-soft-neginf",
        logits(rng, (3, 4), np.float32, "neginf"),
        soft_labels(rng, (3, 4), axis=1, zeros=True).astype(np.float32),
        reduce="no",
    )

    # 7. Chainer's unchecked label values (outside chainer.is_debug()) and its debug check
    add(
        "label-negative-not-ignored",
        logits(rng, (3, 4), np.float32),
        np.array([0, -2, 3], np.int32),
        reduce="no",
        notes={"what": "label -2 != ignore_label: numpy indexing wraps to class C-2"},
    )
    add(
        "label-negative-not-ignored-debug",
        logits(rng, (3, 4), np.float32),
        np.array([0, -2, 3], np.int32),
        reduce="no",
        debug=True,
    )
    add(
        "label-too-large-debug",
        logits(rng, (3, 4), np.float32),
        np.array([0, 4, 3], np.int32),
        debug=True,
    )

    # 8. errors
    add(
        "error-reduce-sum",
        logits(rng, (3, 4), np.float32),
        np.array([0, 1, 2], np.int32),
        reduce="sum",
    )
    add(
        "error-soft-target-loss",
        logits(rng, (3, 4), np.float32),
        np.array([0, 1, 2], np.int32),
        soft_target_loss="kl",
    )
    add("error-t-shape", logits(rng, (3, 4), np.float32), np.array([0, 1], np.int32))
    add("error-t-ndim", logits(rng, (3, 4), np.float32), np.zeros((3, 4), np.int32))
    add("error-soft-shape", logits(rng, (3, 4), np.float32), np.zeros((3, 5), np.float32))
    add("error-x-int", np.zeros((3, 4), np.int32), np.array([0, 1, 2], np.int32))
    add(
        "error-classweight-int",
        logits(rng, (3, 4), np.float32),
        np.array([0, 1, 2], np.int32),
        class_weight=np.ones(4, np.int32),
    )
    add(
        "error-classweight-2d",
        logits(rng, (3, 4), np.float32),
        np.array([0, 1, 2], np.int32),
        class_weight=np.ones((1, 4), np.float32),
    )
    rec.write()


# --------------------------------------------------------------------------------------------
# mygrad 2.5.0: mygrad.nnet.losses.softmax_crossentropy
# --------------------------------------------------------------------------------------------


def gen_mygrad():
    import mygrad as mg
    from mygrad.nnet.losses import softmax_crossentropy

    rec = Recorder("mygrad", base_meta("mygrad", mg.__version__))
    rng = rec.rng
    fn = "softmax_crossentropy"

    def call(inputs, args, head):
        x = mg.Tensor(inputs["x"].copy())
        out = softmax_crossentropy(x, inputs["y_true"].copy(), **args)
        if head is None:
            return out.data
        out.backward(head)
        return out.data, x.grad

    def add(cid, x, y, notes=None, **args):
        rec.add(cid, fn, args, {"x": np.asarray(x), "y_true": np.asarray(y)}, call, notes=notes)

    for n, c, dk in itertools.product([1, 2, 5], [1, 2, 3, 7], ["f16", "f32", "f64"]):
        add(f"N{n}-C{c}-{dk}", logits(rng, (n, c), DTYPES[dk]), int_labels(rng, (n,), c))
    add("N3-C423-f32", logits(rng, (3, 423), np.float32), int_labels(rng, (3,), 423))
    add("N2-C423-f64", logits(rng, (2, 423), np.float64), int_labels(rng, (2,), 423))
    for ldt in (np.int8, np.int32, np.uint8, np.int64):
        add(
            f"label-{np.dtype(ldt).name}",
            logits(rng, (4, 3), np.float64),
            int_labels(rng, (4,), 3, dtype=ldt),
        )
    for kind in ("big", "huge", "neginf", "neginf-row", "posinf", "nan"):
        for dk in ("f16", "f32", "f64"):
            if kind == "huge" and dk == "f16":
                continue
            add(
                f"extreme-{kind}-{dk}",
                logits(rng, (4, 5), DTYPES[dk], kind),
                int_labels(rng, (4,), 5),
            )
    x = logits(rng, (3, 4), np.float64, "neginf")
    x[1, 1] = -np.inf
    add("extreme-neginf-at-label", x, [0, 1, 2])
    add(
        "docstring-example",
        np.array([[2.0, 2.0, 2.0], [0.0, 0.0, 1e6]]),
        [0, 2],
        notes={"docstring_out": 0.54930614},
    )
    add(
        "x-int",
        np.array([[1, 2, 3], [3, 2, 1]]),
        [0, 1],
        notes={"what": "integer scores: mygrad makes an integer tensor constant, no gradient"},
    )
    add(
        "label-negative",
        logits(rng, (3, 4), np.float64),
        [0, -1, -4],
        notes={"what": "negative labels wrap around (numpy indexing), no error"},
    )
    add("empty-batch", np.zeros((0, 3)), np.zeros(0, np.int64), notes={"what": "N=0: 0/0"})
    add(
        "constant-true",
        logits(rng, (3, 4), np.float64),
        [0, 1, 2],
        constant=True,
        notes={"what": "constant=True: no gradient"},
    )

    # errors
    add("error-x-1d", logits(rng, (4,), np.float64), [1])
    add("error-x-3d", logits(rng, (2, 3, 4), np.float64), [[0, 1, 2], [1, 2, 3]])
    add("error-x-0d", np.array(1.5), [0])
    add("error-y-2d", logits(rng, (3, 4), np.float64), [[0], [1], [2]])
    add("error-y-0d", logits(rng, (1, 4), np.float64), np.array(0))
    add("error-y-float", logits(rng, (3, 4), np.float64), [0.0, 1.0, 2.0])
    add("error-y-bool", logits(rng, (2, 4), np.float64), [True, False])
    add("error-n-mismatch", logits(rng, (3, 4), np.float64), [0, 1])
    add("error-n-mismatch-long", logits(rng, (3, 4), np.float64), [0, 1, 2, 3])
    add("error-label-too-large", logits(rng, (3, 4), np.float64), [0, 4, 1])
    add("error-label-too-negative", logits(rng, (3, 4), np.float64), [0, -5, 1])
    rec.write()


# --------------------------------------------------------------------------------------------
# PyTorch: torch.nn.functional.cross_entropy
# --------------------------------------------------------------------------------------------


def gen_pytorch():
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    rec = Recorder("pytorch", base_meta("pytorch", torch.__version__))
    rng = rec.rng
    fn = "cross_entropy"

    def call(inputs, args, head, dtype_name=None):
        tdtype = getattr(torch, dtype_name) if dtype_name else None

        def to_t(a, floating):
            t = torch.from_numpy(np.array(a, copy=True))
            if floating and tdtype is not None:
                t = t.to(tdtype)
            return t

        inp = to_t(inputs["input"], True)
        if inp.is_floating_point():
            inp.requires_grad_()
        tgt = inputs["target"]
        tgt = to_t(tgt, np.issubdtype(tgt.dtype, np.floating))
        kw = dict(args)
        if "weight" in inputs:
            kw["weight"] = to_t(inputs["weight"], True)
        out = F.cross_entropy(inp, tgt, **kw)

        def back(t):
            t = t.detach()
            if t.dtype == torch.bfloat16:
                t = t.float()
            return t.numpy()

        if head is None:
            return back(out)
        out.backward(to_t(head, True))
        return back(out), back(inp.grad)

    def add(cid, inp, target, weight=None, notes=None, dtype_name=None, **args):
        inputs = {"input": inp, "target": target}
        if weight is not None:
            inputs["weight"] = weight
        if dtype_name == "bfloat16":
            inputs = {
                k: to_bf16_exact(v) if np.issubdtype(v.dtype, np.floating) else v
                for k, v in inputs.items()
            }
            notes = dict(notes or {}, dtype="bfloat16")
            rec.add(
                cid,
                fn,
                args,
                inputs,
                lambda i, a, h: call(i, a, h, "bfloat16"),
                notes=notes,
                head_cast=to_bf16_exact,
            )
        else:
            rec.add(cid, fn, args, inputs, call, notes=notes)

    def weights(c, dtype=np.float32):
        return rng.uniform(0.2, 2.0, size=c).astype(dtype)

    # 1. class-index targets: weight x ignore_index x reduction x label_smoothing
    for w, ign, red, ls in itertools.product(
        [False, True], [None, -100, 2], ["none", "sum", "mean"], [0.0, 0.1, 1.0]
    ):
        x = logits(rng, (6, 5), np.float32)
        args = {"reduction": red}
        if ign is None:
            t = int_labels(rng, (6,), 5)
        else:
            t = int_labels(rng, (6,), 5, ignore=ign)
            if ign != -100:
                args["ignore_index"] = ign
        if ls:
            args["label_smoothing"] = ls
        add(f"idx-w{int(w)}-ign{ign}-{red}-ls{ls}", x, t, weight=weights(5) if w else None, **args)

    # 2. probability targets: weight x reduction x smoothing x normalized rows
    for w, red, ls, normalized in itertools.product(
        [False, True], ["none", "sum", "mean"], [0.0, 0.2], [True, False]
    ):
        x = logits(rng, (5, 4), np.float32)
        q = soft_labels(rng, (5, 4), normalized=normalized, zeros=True).astype(np.float32)
        args = {"reduction": red}
        if ls:
            args["label_smoothing"] = ls
        add(
            f"prob-w{int(w)}-{red}-ls{ls}-sum1{int(normalized)}",
            x,
            q,
            weight=weights(4) if w else None,
            **args,
        )
    add(
        "prob-ignore-index-set",
        logits(rng, (3, 4), np.float32),
        soft_labels(rng, (3, 4)).astype(np.float32),
        ignore_index=1,
        notes={"what": "a non-default ignore_index with probability targets"},
    )

    # 3. N-D (N, C, d1[, d2]) and unbatched (C,) input
    for shape, (w, red, ls) in itertools.product(
        [(2, 4, 3), (2, 4, 3, 2)],
        itertools.product([False, True], ["none", "sum", "mean"], [0.0, 0.1]),
    ):
        x = logits(rng, shape, np.float32)
        t = int_labels(rng, (shape[0], *shape[2:]), shape[1], ignore=-100)
        args = {"reduction": red}
        if ls:
            args["label_smoothing"] = ls
        add(
            f"nd{len(shape)}-idx-w{int(w)}-{red}-ls{ls}",
            x,
            t,
            weight=weights(shape[1]) if w else None,
            **args,
        )
        q = soft_labels(rng, shape, axis=1).astype(np.float32)
        add(
            f"nd{len(shape)}-prob-w{int(w)}-{red}-ls{ls}",
            logits(rng, shape, np.float32),
            q,
            weight=weights(shape[1]) if w else None,
            **args,
        )
    for red, ls in itertools.product(["none", "sum", "mean"], [0.0, 0.1]):
        add(
            f"unbatched-idx-{red}-ls{ls}",
            logits(rng, (5,), np.float32),
            np.array(3),
            weight=weights(5),
            reduction=red,
            label_smoothing=ls,
        )
        add(
            f"unbatched-prob-{red}-ls{ls}",
            logits(rng, (5,), np.float32),
            soft_labels(rng, (5,)).astype(np.float32),
            reduction=red,
            label_smoothing=ls,
        )
    add("unbatched-ignored-mean", logits(rng, (5,), np.float32), np.array(-100))

    # 4. NaN / zero-denominator cases
    for red, ls, w in itertools.product(["none", "sum", "mean"], [0.0, 0.1], [False, True]):
        add(
            f"all-ignored-{red}-ls{ls}-w{int(w)}",
            logits(rng, (3, 4), np.float32),
            np.full(3, -100),
            weight=weights(4) if w else None,
            reduction=red,
            label_smoothing=ls,
        )
    add(
        "zero-weight-mean",
        logits(rng, (3, 4), np.float32),
        np.array([0, 0, 1]),
        weight=np.array([0.0, 0.0, 1.0, 1.0], np.float32),
    )
    add(
        "zero-weight-mean-ls",
        logits(rng, (3, 4), np.float32),
        np.array([0, 0, 1]),
        weight=np.array([0.0, 0.0, 1.0, 1.0], np.float32),
        label_smoothing=0.2,
    )
    add("empty-batch-mean", np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    add("empty-batch-sum", np.zeros((0, 4), np.float32), np.zeros(0, np.int64), reduction="sum")
    add("empty-batch-prob-mean", np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32))
    add(
        "negative-weight",
        logits(rng, (4, 3), np.float32),
        int_labels(rng, (4,), 3),
        weight=np.array([-1.0, 0.5, 2.0], np.float32),
        label_smoothing=0.1,
    )
    add(
        "ignore-index-minus1",
        logits(rng, (5, 4), np.float32),
        int_labels(rng, (5,), 4, ignore=-1),
        ignore_index=-1,
        label_smoothing=0.1,
    )
    add(
        "ignore-index-out-of-range-value",
        logits(rng, (5, 4), np.float32),
        int_labels(rng, (5,), 4, ignore=7),
        ignore_index=7,
        weight=weights(4),
    )
    add(
        "ls-weighted-ignore",
        logits(rng, (6, 5), np.float32),
        int_labels(rng, (6,), 5, ignore=-100),
        weight=weights(5),
        label_smoothing=0.3,
    )

    # 5. odd class counts, dtypes
    for c in (1, 2, 3):
        for red, ls in itertools.product(["none", "mean"], [0.0, 0.2]):
            add(
                f"C{c}-{red}-ls{ls}",
                logits(rng, (4, c), np.float32),
                int_labels(rng, (4,), c),
                reduction=red,
                label_smoothing=ls,
            )
    add(
        "C423-mean",
        logits(rng, (3, 423), np.float32),
        int_labels(rng, (3,), 423, ignore=-100),
        weight=weights(423),
        label_smoothing=0.1,
    )
    add(
        "C423-prob-none-f64",
        logits(rng, (2, 423), np.float64),
        soft_labels(rng, (2, 423)),
        reduction="none",
    )
    for dk, red in itertools.product(["f16", "f64", "bf16"], ["none", "mean"]):
        npdt = np.float32 if dk == "bf16" else DTYPES[dk]
        kw = {"dtype_name": "bfloat16"} if dk == "bf16" else {}
        add(
            f"{dk}-idx-{red}",
            logits(rng, (5, 4), npdt),
            int_labels(rng, (5,), 4, ignore=-100),
            weight=weights(4, npdt),
            reduction=red,
            label_smoothing=0.1,
            **kw,
        )
        add(
            f"{dk}-prob-{red}",
            logits(rng, (5, 4), npdt),
            soft_labels(rng, (5, 4)).astype(npdt),
            weight=weights(4, npdt),
            reduction=red,
            label_smoothing=0.1,
            **kw,
        )
    add("target-uint8", logits(rng, (4, 3), np.float32), int_labels(rng, (4,), 3, dtype=np.uint8))
    add(
        "error-target-int32",
        logits(rng, (4, 3), np.float32),
        int_labels(rng, (4,), 3, dtype=np.int32),
    )

    # 6. extremes
    for kind in ("big", "huge", "neginf", "neginf-row", "posinf", "nan"):
        for dk in ("f32", "f64", "f16"):
            if kind == "huge" and dk == "f16":
                continue
            add(
                f"extreme-{kind}-{dk}",
                logits(rng, (4, 5), DTYPES[dk], kind),
                int_labels(rng, (4,), 5),
                reduction="none",
            )
            add(
                f"extreme-{kind}-{dk}-ls",
                logits(rng, (4, 5), DTYPES[dk], kind),
                int_labels(rng, (4,), 5),
                reduction="none",
                label_smoothing=0.1,
            )
        add(
            f"extreme-{kind}-prob",
            logits(rng, (4, 5), np.float32, kind),
            soft_labels(rng, (4, 5), zeros=True).astype(np.float32),
            reduction="none",
        )
    x = logits(rng, (3, 4), np.float32, "neginf")
    x[1, 1] = -np.inf
    add("extreme-neginf-at-label", x, np.array([0, 1, 2]), reduction="none")
    add(
        "extreme-neginf-ignored-row",
        logits(rng, (3, 4), np.float32, "neginf-row"),
        np.array([-100, 1, 2]),
        reduction="mean",
    )

    # 7. errors
    add("error-target-out-of-range", logits(rng, (3, 4), np.float32), np.array([0, 4, 1]))
    add("error-target-negative", logits(rng, (3, 4), np.float32), np.array([0, -1, 1]))
    add("error-target-shape", logits(rng, (3, 4), np.float32), np.array([0, 1]))
    add("error-prob-shape", logits(rng, (3, 4), np.float32), np.zeros((3, 5), np.float32))
    add(
        "error-weight-length",
        logits(rng, (3, 4), np.float32),
        np.array([0, 1, 2]),
        weight=np.ones(3, np.float32),
    )
    add("error-reduction", logits(rng, (3, 4), np.float32), np.array([0, 1, 2]), reduction="avg")
    add("ls-negative", logits(rng, (3, 4), np.float32), np.array([0, 1, 2]), label_smoothing=-0.1)
    add(
        "error-ls-above-one",
        logits(rng, (3, 4), np.float32),
        np.array([0, 1, 2]),
        label_smoothing=1.5,
    )
    add("error-int-input", np.zeros((3, 4), np.int64), np.array([0, 1, 2]))
    add("error-int-input-prob", np.zeros((3, 4), np.int64), np.eye(4, dtype=np.float32)[:3])
    rec.write()


# --------------------------------------------------------------------------------------------
# optax: softmax_cross_entropy, softmax_cross_entropy_with_integer_labels
# --------------------------------------------------------------------------------------------


def gen_optax():
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    import jax.numpy as jnp
    import optax

    rec = Recorder(
        "optax",
        base_meta(
            "optax",
            optax.__version__,
            jax=jax.__version__,
            jaxlib=importlib.metadata.version("jaxlib"),
            jax_enable_x64=True,
        ),
    )
    rng = rec.rng
    fns = {
        name: getattr(optax, name)
        for name in ("softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels")
    }

    def call(fname, inputs, args, head, bf16=False):
        def arr(a):
            a = jnp.asarray(a)
            if bf16 and jnp.issubdtype(a.dtype, jnp.floating):
                a = a.astype(jnp.bfloat16)
            return a

        lg = arr(inputs["logits"])
        labels = arr(inputs["labels"])
        kw = dict(args)
        if isinstance(kw.get("axis"), list):
            kw["axis"] = tuple(kw["axis"])
        if "where" in inputs:
            kw["where"] = jnp.asarray(inputs["where"])
        out, vjp = jax.vjp(lambda z: fns[fname](z, labels, **kw), lg)

        def back(t):
            t = np.asarray(t.astype(jnp.float32) if t.dtype == jnp.bfloat16 else t)
            return t

        if head is None:
            return back(out)
        (g,) = vjp(arr(head).astype(out.dtype))
        return back(out), back(g)

    def add(cid, fname, lg, labels, where=None, notes=None, bf16=False, **args):
        inputs = {"logits": lg, "labels": labels}
        if where is not None:
            inputs["where"] = np.asarray(where)
        if bf16:
            inputs = {
                k: to_bf16_exact(v) if np.issubdtype(v.dtype, np.floating) else v
                for k, v in inputs.items()
            }
            notes = dict(notes or {}, dtype="bfloat16")
        rec.add(
            cid,
            fname,
            args,
            inputs,
            lambda i, a, h: call(fname, i, a, h, bf16=bf16),
            notes=notes,
            head_cast=to_bf16_exact if bf16 else None,
        )

    SCE, INT = "softmax_cross_entropy", "softmax_cross_entropy_with_integer_labels"

    def moved_shape(shape, axis):
        """shape of the labels of the integer version: logits shape without the class axes"""
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        axes = [a % len(shape) for a in axes]
        return tuple(s for i, s in enumerate(shape) if i not in axes), int(
            np.prod([shape[a] for a in axes])
        )

    # 1. axis: ints and tuples, both functions
    cases = [
        ((5, 4), -1),
        ((5, 4), 0),
        ((5, 4), 1),
        ((2, 3, 4), -1),
        ((2, 3, 4), 1),
        ((2, 3, 4), 0),
        ((2, 3, 4), -2),
        ((2, 3, 4), [1, 2]),
        ((2, 3, 4), [2, 1]),
        ((2, 3, 4), [0, 2]),
        ((2, 3, 2, 3), [1, 3]),
        ((2, 3, 4), [-1]),
        ((2, 3, 4), [0, 1, 2]),
    ]
    for shape, axis in cases:
        tag = "x".join(map(str, shape)) + (
            "-axes" + "_".join(map(str, axis)) if isinstance(axis, list) else f"-axis{axis}"
        )
        # soft labels along the class axes
        x = logits(rng, shape, np.float32)
        axes = axis if isinstance(axis, list) else [axis]
        q = rng.random(shape) + 0.05
        q = q / q.sum(axis=tuple(axes), keepdims=True)
        add(f"sce-{tag}", SCE, x, q.astype(np.float32), axis=axis)
        lshape, ncls = moved_shape(shape, axis)
        add(
            f"int-{tag}",
            INT,
            logits(rng, shape, np.float32),
            rng.integers(0, ncls, size=lshape).astype(np.int32),
            axis=axis,
        )
    add(
        "sce-axis-none",
        SCE,
        logits(rng, (3, 4), np.float32),
        soft_labels(rng, (12,)).reshape(3, 4).astype(np.float32),
        axis=None,
    )
    add(
        "sce-unnormalized",
        SCE,
        logits(rng, (4, 5), np.float32),
        soft_labels(rng, (4, 5), normalized=False, zeros=True).astype(np.float32),
    )
    add(
        "sce-int-labels", SCE, logits(rng, (3, 4), np.float32), np.eye(4, dtype=np.int32)[[0, 3, 1]]
    )
    add("sce-1d", SCE, logits(rng, (5,), np.float32), soft_labels(rng, (5,)).astype(np.float32))
    add("int-1d", INT, logits(rng, (5,), np.float32), np.array(2, np.int32))

    # 2. where masks
    for fname in (SCE, INT):
        pre = "sce" if fname == SCE else "int"
        x = logits(rng, (4, 5), np.float32)
        where = rng.random((4, 5)) < 0.7
        where[:, 0] = True
        where[2] = False  # a fully masked row
        if fname == SCE:
            lab = soft_labels(rng, (4, 5)).astype(np.float32)
        else:
            lab = np.array([0, 1, 2, 3], np.int32)
            where[1, 1] = False  # the label itself is masked out
        add(f"{pre}-where-full", fname, x, lab, where=where)
        add(
            f"{pre}-where-allfalse",
            fname,
            logits(rng, (3, 4), np.float32),
            soft_labels(rng, (3, 4)).astype(np.float32)
            if fname == SCE
            else np.array([0, 1, 2], np.int32),
            where=np.zeros((3, 4), bool),
        )
        add(
            f"{pre}-where-batch",
            fname,
            logits(rng, (4, 5), np.float32),
            soft_labels(rng, (4, 5)).astype(np.float32)
            if fname == SCE
            else np.array([4, 0, 2, 1], np.int32),
            where=np.array([True, False, True, True]),
        )
        add(
            f"{pre}-where-broadcast",
            fname,
            logits(rng, (4, 5), np.float32),
            soft_labels(rng, (4, 5)).astype(np.float32)
            if fname == SCE
            else np.array([4, 0, 2, 1], np.int32),
            where=np.array([[True, True, False, True, True]]),
        )
        # where with axis and tuple axis
        x = logits(rng, (3, 4, 2), np.float32)
        w = rng.random((3, 4, 2)) < 0.7
        w[:, 0, :] = True
        w[1, :, 1] = False  # masked column (axis=1)
        if fname == SCE:
            q = rng.random((3, 4, 2)) + 0.05
            lab = (q / q.sum(1, keepdims=True)).astype(np.float32)
        else:
            lab = rng.integers(0, 4, (3, 2)).astype(np.int32)
        add(f"{pre}-where-axis1", fname, x, lab, where=w, axis=1)
        add(
            f"{pre}-where-axis1-batchmask",
            fname,
            logits(rng, (3, 4, 2), np.float32),
            lab,
            where=np.array([[True, False], [True, True], [False, True]]),
            axis=1,
        )
        x = logits(rng, (2, 3, 4), np.float32)
        w = rng.random((2, 3, 4)) < 0.7
        w[0, 0, 0] = True
        w[1] = False
        if fname == SCE:
            q = rng.random((2, 3, 4)) + 0.05
            lab = (q / q.sum((1, 2), keepdims=True)).astype(np.float32)
        else:
            lab = np.array([0, 7], np.int32)
        add(f"{pre}-where-tuple-axis", fname, x, lab, where=w, axis=[1, 2])
        add(
            f"{pre}-where-neginf",
            fname,
            logits(rng, (3, 4), np.float32, "neginf"),
            soft_labels(rng, (3, 4)).astype(np.float32)
            if fname == SCE
            else np.array([0, 0, 0], np.int32),
            where=np.array([[True, True, True, False]] * 3),
        )

    # 3. dtypes, odd class counts
    for fname, dk in itertools.product((SCE, INT), ["f16", "f64", "bf16"]):
        pre = "sce" if fname == SCE else "int"
        npdt = np.float32 if dk == "bf16" else DTYPES[dk]
        x = logits(rng, (4, 5), npdt)
        lab = (
            soft_labels(rng, (4, 5)).astype(npdt)
            if fname == SCE
            else rng.integers(0, 5, 4).astype(np.int32)
        )
        add(f"{pre}-{dk}", fname, x, lab, bf16=(dk == "bf16"))
        add(
            f"{pre}-{dk}-where",
            fname,
            logits(rng, (4, 5), npdt),
            lab,
            where=np.array([[True, False, True, True, True]] * 3 + [[False] * 5]),
            bf16=(dk == "bf16"),
        )
    for c in (1, 2, 3, 423):
        n = 3 if c == 423 else 4
        add(
            f"sce-C{c}",
            SCE,
            logits(rng, (n, c), np.float32),
            soft_labels(rng, (n, c)).astype(np.float32),
        )
        add(
            f"int-C{c}",
            INT,
            logits(rng, (n, c), np.float32),
            rng.integers(0, c, n).astype(np.int32),
        )
    add("int-labels-int64", INT, logits(rng, (3, 4), np.float64), np.array([3, 0, 1], np.int64))
    add("int-labels-uint8", INT, logits(rng, (3, 4), np.float32), np.array([3, 0, 1], np.uint8))

    # 4. extremes, out-of-range labels
    for kind in ("big", "huge", "neginf", "neginf-row", "posinf", "nan"):
        for dk in ("f32", "f64", "f16"):
            if kind == "huge" and dk == "f16":
                continue
            add(
                f"sce-extreme-{kind}-{dk}",
                SCE,
                logits(rng, (4, 5), DTYPES[dk], kind),
                soft_labels(rng, (4, 5), zeros=True).astype(DTYPES[dk]),
            )
            add(
                f"int-extreme-{kind}-{dk}",
                INT,
                logits(rng, (4, 5), DTYPES[dk], kind),
                rng.integers(0, 5, 4).astype(np.int32),
            )
    x = logits(rng, (3, 4), np.float32, "neginf")
    x[1, 1] = -np.inf
    add("int-extreme-neginf-at-label", INT, x, np.array([0, 1, 2], np.int32))
    add(
        "sce-extreme-neginf-at-zero-label",
        SCE,
        x,
        np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0.5, 0, 0.5, 0]], np.float32),
    )
    add(
        "sce-extreme-neginf-at-label",
        SCE,
        x,
        np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0.5, 0, 0.5, 0]], np.float32),
    )
    add(
        "int-label-too-large",
        INT,
        logits(rng, (3, 4), np.float32),
        np.array([0, 4, 9], np.int32),
        notes={"what": "out-of-range labels, no error"},
    )
    add(
        "int-label-negative",
        INT,
        logits(rng, (3, 4), np.float32),
        np.array([0, -1, -4], np.int32),
        notes={"what": "negative labels, no error"},
    )
    add(
        "int-label-too-negative",
        INT,
        logits(rng, (3, 4), np.float32),
        np.array([0, -5, 1], np.int32),
    )

    # 5. errors
    add("error-int-logits", SCE, np.zeros((3, 4), np.int32), np.eye(4, dtype=np.float32)[:3])
    add(
        "error-int-float-labels",
        INT,
        logits(rng, (3, 4), np.float32),
        np.array([0.0, 1.0, 2.0], np.float32),
    )
    add(
        "error-int-axis-none",
        INT,
        logits(rng, (3, 4), np.float32),
        np.array([0, 1, 2], np.int32),
        axis=None,
    )
    add("error-int-labels-shape", INT, logits(rng, (3, 4), np.float32), np.array([0, 1], np.int32))
    add(
        "error-sce-labels-shape", SCE, logits(rng, (3, 4), np.float32), np.zeros((3, 5), np.float32)
    )
    rec.write()


GENERATORS = {
    "mxnet": gen_mxnet,
    "chainer": gen_chainer,
    "mygrad": gen_mygrad,
    "pytorch": gen_pytorch,
    "optax": gen_optax,
}


def main(argv):
    if len(argv) != 2 or argv[1] not in GENERATORS:
        print(f"usage: python make_golden.py {{{','.join(GENERATORS)}}}", file=sys.stderr)
        return 2
    GENERATORS[argv[1]]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
