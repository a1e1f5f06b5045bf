"""Compile the Triton kernels for a GPU that is not there: the code generator's checks (what
the interpreter never runs: constexpr scoping, globals, types) and the register use, on CPU.

``python -m softmaxce._triton._aot [ARCH]`` (ARCH: 90 for Hopper, the default) compiles a
few representative specialisations with Triton's own ptxas and prints their registers and
spills (``LOCAL`` bytes). It must not run under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

FLAGS = (
    "INDEX", "HAS_WEIGHT", "HAS_MASK", "HAS_SPREAD", "SOFTCAP", "KEEP_LABEL", "KL", "KL_EPS",
    "UNIT_MASS", "ZLOSS", "LABEL_ONLY", "STATS_IN", "STATS_OUT", "GRAD", "ONE_CHUNK",
)  # fmt: skip
CASES = {  # name: (logits dtype, flags on)
    "plain, fused, chunks": ("bf16", {"INDEX", "LABEL_ONLY", "STATS_OUT", "GRAD"}),
    "plain, fused, one chunk": ("fp16", {"INDEX", "LABEL_ONLY", "STATS_OUT", "GRAD", "ONE_CHUNK"}),
    "soft, every option, fused": ("bf16", {
        "HAS_WEIGHT", "HAS_MASK", "HAS_SPREAD", "SOFTCAP", "KL", "ZLOSS", "STATS_OUT", "GRAD"}),
    "index, smoothing, grad of a block": ("fp32", {
        "INDEX", "HAS_WEIGHT", "HAS_SPREAD", "HAS_MASK", "KEEP_LABEL", "KL", "KL_EPS",
        "UNIT_MASS", "STATS_IN", "GRAD"}),
    "index, label only, stats of a block": ("bf16", {
        "INDEX", "LABEL_ONLY", "HAS_MASK", "HAS_WEIGHT", "SOFTCAP", "STATS_OUT"}),
}  # fmt: skip


def _signature(xdt: str, index: bool) -> dict[str, str]:
    return {
        "x_ptr": f"*{xdt}", "sx": "i32", "t_ptr": "*i64" if index else f"*{xdt}", "st": "i32",
        "w_ptr": "*fp32", "mask_ptr": "*u8", "sm": "i32", "keep_ptr": "*u8",
        "spread_ptr": "*fp32", "live_ptr": "*u8", "scale_ptr": "*fp64", "s_scale": "i32",
        "zl_ptr": "*fp64", "g_ptr": f"*{xdt}", "sg": "i32", "stats_ptr": "*fp32",
        "n_rows": "i32", "width": "i32", "col_offset": "i32", "one_minus_eps": "fp32",
        "cap": "fp32", "kl_eps": "fp32",
    }  # fmt: skip


def _usage(cubin: bytes) -> str:
    """The ``REG:... LOCAL:...`` line of cuobjdump (Triton's own), or ``?``."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        out = subprocess.run([tool, "-res-usage", fh.name], capture_output=True, text=True)
    lines = [ln.strip() for ln in out.stdout.splitlines() if "REG:" in ln]
    return " ".join(lines[0].split()[:4]) if lines else "?"


def compile_all(arch: int = 90, block: int = 4096) -> list[str]:
    """Compile every case of ``CASES`` (and the scale kernel); one line each."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import _kernels

    target = GPUTarget("cuda", arch, 32)
    report = []
    for name, (xdt, on) in CASES.items():
        const = {f: f in on for f in FLAGS} | {"BLOCK": block}
        sig = _signature(xdt, "INDEX" in on) | dict.fromkeys(const, "constexpr")
        src = ASTSource(_kernels._rows_kernel, sig, constexprs=const)
        k = triton.compile(src, target=target, options={"num_warps": 8})
        report.append(f"{name} ({xdt}): {_usage(k.asm['cubin'])}")
    sig = {"g_ptr": "*bf16", "sg": "i32", "scale_ptr": "*fp32", "s_scale": "i32",
           "width": "i32", "BLOCK": "constexpr"}  # fmt: skip
    triton.compile(ASTSource(_kernels._scale_kernel, sig, constexprs={"BLOCK": block}),
                   target=target)  # fmt: skip
    report.append("scale kernel: compiled")
    return report


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the interpreter compiles nothing")
    for line in compile_all(int(sys.argv[1]) if len(sys.argv) > 1 else 90):
        print(line)
