r"""The numba row kernel behind XLA's typed FFI: jit-compiled JAX calls on the CPU run
softmaxce's fused loss-and-gradient kernel with no Python and no GIL per call.

How: a ``numba.cfunc`` with the C signature of an XLA FFI handler,
``XLA_FFI_Error* handler(XLA_FFI_CallFrame*)``, reads the call frame (the layout of
``xla/ffi/api/c_api.h``, which jaxlib ships: ``jax.ffi.include_dir()``) with a few pointer
loads, wraps the buffers XLA owns as arrays (``numba.carray``, no copy) and calls the numba
package's row loop (``softmaxce._numba.rows.fused_kernel``) on them: the gradient is written
straight into the FFI result buffer. It is registered with
``jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(address), platform="cpu")`` and called
with ``jax.ffi.ffi_call``.

The protocol, as XLA drives a typed-FFI handler:

* **metadata**: before anything runs, XLA calls the handler once with a call frame whose
  ``extension_start`` is an ``XLA_FFI_Metadata_Extension``; the handler writes the FFI API
  version it was built for (read here from the installed ``c_api.h``) and its traits (none)
  into the metadata and returns NULL (success);
* **stages**: a handler registered alone (not a bundle) is called for the execute stage; any
  other stage (instantiate, prepare, initialize) returns NULL at once.
* errors: the Python side builds every call (dtypes, shapes, attributes), so the handler has
  nothing to report; a label outside ``[0, C)`` gives a NaN row, as the kernel does.

One handler is compiled per *pattern* (logits dtype, label dtype, class weights or not,
smoothing, softcap, KL term on or off): the kernel prunes the code of the options that are
off at compile time, as it does for NumPy. Their values (``eps``, ``ignore_index``,
``softcap``, ``z_loss``) are the FFI call's attributes, read from the frame at each call.
Compiling a pattern costs a few seconds once per process (numba's cfuncs are not cached on
disk here: the kernel's own disk cache cannot hold the handler, whose code embeds addresses).

Threads: the row loop runs on the XLA thread that executes the call, i.e. on one core (no
Python thread pool can run from inside a cfunc, and numba's own threading layer would be a
second pool beside XLA's, which calls handlers concurrently when several host devices run).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._core import reduce, rows
from .._core._xp import acc_dtype, wide_dtype
from .._options import LossOptions
from . import _vjp

_DTYPES = ("float16", "float32", "float64")


def unsupported(p: Any) -> str | None:
    """Why the FFI kernel cannot run this problem (None: it can)."""
    if jax.default_backend() != "cpu":
        return f"the FFI kernel is the CPU's, and JAX's backend is {jax.default_backend()!r}"
    if str(p.x2.dtype) not in _DTYPES:
        return f"the kernel takes float16/32/64 logits, got {p.x2.dtype}"
    if p.soft:
        return "the kernel takes class indices (a probability target runs on the core)"
    if p.where is not None:
        return "the kernel takes no where mask"
    if p.opts.semantics.name != "softmaxce":
        return f"semantics {p.opts.semantics.name!r} runs on the core"
    if 0 in p.x2.shape:
        return "an empty problem"
    return _kernel_error()


@functools.cache
def _kernel_error() -> str | None:
    try:
        from .. import _numba  # noqa: F401
    except ImportError as e:
        return f"the numba kernels are unavailable ({e})"
    return None


# --------------------------------------------------------------------------------------------
# The call frame (xla/ffi/api/c_api.h, 64-bit): byte offsets of the fields read or written
# --------------------------------------------------------------------------------------------

FRAME_EXTENSION = 8  # XLA_FFI_CallFrame.extension_start (XLA_FFI_Extension_Base*)
FRAME_STAGE = 32  # .stage (enum, int32)
FRAME_ARGS = 72  # .args.args (void**: XLA_FFI_Buffer* each); args starts at 40
FRAME_RETS = 112  # .rets.rets (void**); rets starts at 80
FRAME_ATTRS = 160  # .attrs.attrs (void**: XLA_FFI_Scalar* each, sorted by name); attrs at 120
EXT_TYPE = 8  # XLA_FFI_Extension_Base.type (enum, int32)
EXT_METADATA = 24  # XLA_FFI_Metadata_Extension.metadata (XLA_FFI_Metadata*)
META_VERSION = 8  # XLA_FFI_Metadata.api_version (XLA_FFI_Api_Version, 24 bytes)
META_TRAITS = 32  # XLA_FFI_Metadata.traits (uint32)
BUFFER_DATA = 24  # XLA_FFI_Buffer.data
BUFFER_DIMS = 40  # XLA_FFI_Buffer.dims (int64*)
SCALAR_VALUE = 8  # XLA_FFI_Scalar.value (void*)
STAGE_EXECUTE = 3
EXTENSION_METADATA = 1
VERSION_STRUCT_SIZE = 24

# The attributes, in the order XLA passes them (sorted by name).
ATTRS = ("eps", "ignore_index", "softcap", "z_loss")


@functools.cache
def api_version() -> tuple[int, int]:
    """The FFI API version of the installed jaxlib's ``c_api.h`` (the handler reports it)."""
    try:
        text = (Path(jax.ffi.include_dir()) / "xla/ffi/api/c_api.h").read_text()
        major = int(re.search(r"#define XLA_FFI_API_MAJOR (\d+)", text).group(1))
        minor = int(re.search(r"#define XLA_FFI_API_MINOR (\d+)", text).group(1))
    except (OSError, AttributeError):  # pragma: no cover - a jaxlib without its headers
        return 0, 1
    return major, minor


class Pattern(NamedTuple):
    """What a compiled handler is specialised for."""

    x: str  # logits dtype name
    t: str  # label dtype name (int32 or int64)
    acc: str  # accumulation dtype of the row scale and the weights
    weighted: bool
    smooth: bool
    capped: bool
    kl: bool


def _name(pat: Pattern) -> str:
    flags = "".join(k[0] for k in ("weighted", "smooth", "capped", "kl") if getattr(pat, k))
    return f"softmaxce_ce_{pat.x}_{pat.t}_{pat.acc}_{flags or 'plain'}"


@functools.cache
def handler(pat: Pattern) -> str:
    """Compile (once) and register the handler of ``pat``; its FFI target name."""
    from . import _handler  # (imports numba: only when a CPU call needs the kernel)

    cf = _handler.compile_handler(pat, api_version())
    _KEEP.append(cf)  # the machine code must outlive every executable that calls it
    name = _name(pat)
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(cf.address), platform="cpu")
    return name


_KEEP: list[Any] = []


# --------------------------------------------------------------------------------------------
# The JAX side: the row scale and the mean's W as XLA operations (O(N)), the rows by the kernel
# --------------------------------------------------------------------------------------------


def _pattern(opts: LossOptions, x2, t2, weight) -> Pattern:
    acc = acc_dtype(jnp, x2.dtype)
    return Pattern(
        str(x2.dtype), str(t2.dtype), str(jnp.dtype(wide_dtype(jnp, acc))),
        weight is not None, bool(opts.label_smoothing), opts.softcap is not None, opts.kl,
    )  # fmt: skip


def _forward(opts: LossOptions, x2, t2, weight):
    """``(loss, gradient of the loss with respect to x2 for an upstream gradient of 1)``."""
    n, c = x2.shape
    pat = _pattern(opts, x2, t2, weight)
    wide = jnp.dtype(pat.acc)
    ctx = rows.row_context(x2, t2, c, opts)
    total = None
    if opts.reduction == "mean":
        sem = opts.semantics
        total = reduce.denominator(t2, weight, ctx, sem.mean_by(False), sem.empty, n, wide)
    one = jnp.ones((), wide)
    scale = one if opts.reduction == "none" else reduce.row_scale(one, opts.reduction, total, n)
    call = jax.ffi.ffi_call(
        handler(pat),
        (jax.ShapeDtypeStruct((n,), wide), jax.ShapeDtypeStruct((n, c), x2.dtype)),
        vmap_method="sequential",
    )
    args = (x2, t2, jnp.astype(scale, wide))
    if weight is not None:
        args += (jnp.astype(weight, wide),)
    loss_rows, grad = call(
        *args,
        eps=np.float64(opts.label_smoothing),
        ignore_index=np.int64(opts.ignore_index),
        softcap=np.float64(opts.softcap or 0.0),
        z_loss=np.float64(opts.z_loss),
    )
    loss = reduce.reduce(loss_rows, opts.reduction, total)
    return jnp.astype(loss, x2.dtype), grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def rows_loss(opts: LossOptions, x2, t2, weight):
    """The loss of (N, C) rows by the kernel: reduced, or (N,) for ``"none"``."""
    return _forward(opts, x2, t2, weight)[0]


def _fwd(opts, x2, t2, weight):
    loss, grad = _forward(opts, x2, t2, weight)
    return loss, (x2, t2, weight, grad)


def _bwd(opts, res, g):
    """The kernel's gradient times the upstream gradient (XLA drops the product when ``g`` is
    the constant 1 of ``value_and_grad``); float class weights get the core's autodiff."""
    x2, t2, weight, grad = res
    scale = jnp.astype(g[:, None] if opts.reduction == "none" else g, grad.dtype)
    _, ct_w = _vjp.side_cotangents(opts, x2, t2, weight, None, g)
    return grad * scale, None, ct_w


rows_loss.defvjp(_fwd, _bwd)
