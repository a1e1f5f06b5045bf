"""The softmaxce command, run in-process on tiny settings."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from softmaxce import _bench, _cli, _dispatch

HAVE_KERNELS = _dispatch.numba_kernels() is not None


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return _cli.main(list(argv), stream=out), out.getvalue()


def test_demo_reaches_accuracy_and_writes_png(tmp_path):
    folder = tmp_path / "new" / "folder"  # a nonexistent output folder is created
    code, text = run("demo", "--epochs", "8", "--out", str(folder))
    assert code == 0
    acc = float(text.split("test accuracy: ")[1].split("%")[0])
    assert acc > 90.0
    assert "PASS" in text
    png = folder / "demo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_is_deterministic_for_a_seed(tmp_path):
    a = run("demo", "--epochs", "2", "--seed", "3", "--out", str(tmp_path))[1]
    b = run("demo", "--epochs", "2", "--seed", "3", "--out", str(tmp_path))[1]
    strip = lambda s: [ln for ln in s.splitlines() if " s)" not in ln]  # noqa: E731
    assert strip(a) == strip(b)


def test_readme_demo_transcript_is_what_the_demo_prints(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    shown = readme.split("```\nsoftmaxce demo: ")[1].split("```")[0].splitlines()[1:]
    code, text = run("demo", "--out", str(tmp_path))
    assert code == 0
    printed = text.splitlines()[1:]
    assert len(shown) == len(printed), text

    def words_and_numbers(line: str) -> tuple[list[str], list[float]]:
        line = line.split(" (")[0]  # the seconds, the only figure that varies
        return re.sub(r"[-\d.e]+\b", "#", line).split(), [
            float(v) for v in re.findall(r"\d+\.\d+", line)
        ]

    for want, got in zip(shown, printed, strict=True):
        if want.startswith(("gradient check", "wrote ")):  # error size, output folder
            assert want.split(":")[0].split("/")[-1] == got.split(":")[0].split("/")[-1]
            continue
        (w_words, w_nums), (g_words, g_nums) = words_and_numbers(want), words_and_numbers(got)
        assert w_words == g_words, (want, got)
        # another machine's BLAS may round the last digit differently: one test image is 0.003
        assert np.allclose(w_nums, g_nums, rtol=0, atol=3e-3), (want, got)


def test_non_interactive_output_has_no_bar_or_escape_codes(tmp_path):
    _, text = run("demo", "--epochs", "2", "--out", str(tmp_path))
    assert "\r" not in text and "\033[" not in text
    assert "epoch 1/2" in text and "epoch 2/2" in text


def test_check_passes_and_lists_backends():
    code, text = run("check")
    assert code == 0, text
    assert "numpy" in text and "gradient check" in text
    assert " 0 failed" in text


def test_check_says_why_the_numba_kernel_is_off(monkeypatch):
    monkeypatch.setattr(_dispatch, "numba_kernels", lambda: None)
    monkeypatch.setattr(_dispatch, "_unavailable", "NUMBA_DISABLE_JIT=1 (simulated)")
    code, text = run("check")
    assert code == 0, text
    assert "fused kernel: numpy core (NUMBA_DISABLE_JIT=1 (simulated))" in text


def test_check_says_what_to_install_for_the_missing_fast_paths(monkeypatch):
    monkeypatch.setattr(_cli, "_installed", lambda name: name not in ("numba", "jax"))
    monkeypatch.setattr(_dispatch, "numba_kernels", lambda: None)
    code, text = run("check")
    assert code == 0, text
    assert "pip install 'softmaxce[numba]'  # the fused CPU kernel" in text
    assert "pip install 'softmaxce[jax]'" in text
    assert "softmaxce[torch]" not in text  # installed: nothing to say
    # installed but off (NUMBA_DISABLE_JIT=1, a broken numba): the reason, not an install line
    monkeypatch.setattr(_cli, "_installed", lambda name: True)
    monkeypatch.setattr(_dispatch, "_unavailable", "NUMBA_DISABLE_JIT=1 (simulated)")
    assert _cli._suggestions() == [
        "the numba kernel is installed but off: NUMBA_DISABLE_JIT=1 (simulated)"
    ]


def test_version_option_prints_the_version(capsys, monkeypatch):
    import importlib.metadata

    import softmaxce

    with pytest.raises(SystemExit) as info:
        _cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"softmaxce {importlib.metadata.version('softmaxce')}\n"

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)  # run from a source tree
    with pytest.raises(SystemExit):
        _cli.main(["--version"])
    assert capsys.readouterr().out == f"softmaxce {softmaxce.__version__}\n"


def test_check_fails_on_a_wrong_gradient(monkeypatch):
    from softmaxce import _api

    real = _api.softmax_vjp
    monkeypatch.setattr(_api, "softmax_vjp", lambda y, dy, **kw: 2 * real(y, dy, **kw))
    code, text = run("check")
    assert code == 1
    assert "FAIL" in text


def test_bench_writes_table_csv_and_png(tmp_path, capsys):
    out = tmp_path / "bench"
    code = _cli.main(
        [
            "bench",
            "--sizes",
            "16x5,32x7",
            "--providers",
            "numba,numpy,numpy_plain,copy",
            "--modes",
            "forward,full",
            "--repeats",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "[2/2] size 32 x 7 done" in text  # progress, one line per size
    rows = (out / "fused.csv").read_text().splitlines()
    assert rows[0].startswith("N,C,provider,mode,median_ms")
    # 2 sizes x (numba 2 modes + numpy 2 + numpy_plain 2 + copy 2); no numba: skipped
    assert len(rows) == 1 + 2 * (8 if HAVE_KERNELS else 6)
    assert (out / "fused.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "fused.md").read_text()  # the README's speed table, the README's names
    assert "| 32 x 7 | full | NumPy as tutorials write it |" in table
    assert f"wrote {out / 'fused.csv'}" in text  # every file by its full path


def test_bench_without_numba_skips_its_providers_and_runs_numpy(tmp_path, capsys, monkeypatch):
    if HAVE_KERNELS:  # as where numba is missing (the suite's SOFTMAXCE_BLOCK_NUMBA=1 run)
        monkeypatch.setattr(_dispatch, "numba_kernels", lambda: None)
    argv = ["bench", "--sizes", "16x5", "--modes", "forward", "--repeats", "2", "--no-plot"]
    code = _cli.main([*argv, "--providers", "numba,numba_inplace,numpy", "--out", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    assert "skipped numba, numba_inplace: the numba kernels cannot run: " in text
    rows = (tmp_path / "fused.csv").read_text().splitlines()
    assert [row.split(",")[2] for row in rows[1:]] == ["numpy"]
    # nothing left to run: says so, and fails
    assert _cli.main([*argv, "--providers", "numba", "--out", str(tmp_path)]) == 1
    assert "nothing to run" in capsys.readouterr().out


BENCH = ["bench", "--sizes", "16x5", "--repeats", "2", "--no-plot"]


def bench(tmp_path, *argv: str, plot: bool = False) -> tuple[int, str]:
    """The bench command in this process (tiny sizes); its exit code and printed output."""
    out = io.StringIO()
    argv = (*BENCH[:-1], *argv) if plot else (*BENCH, *argv)
    with contextlib.redirect_stdout(out):
        code = _cli.main([*argv, "--out", str(tmp_path / "b")])
    return code, out.getvalue()


def test_bench_skips_a_mode_a_provider_lacks_with_one_line(tmp_path):
    code, text = bench(tmp_path, "--providers", "numpy,numpy_plain", "--modes", "backward,full")
    assert code == 0, text
    assert "skipped backward for numpy: no separate backward step" in text
    rows = (tmp_path / "b" / "fused.csv").read_text().splitlines()[1:]
    assert sorted(r.split(",")[2] + "/" + r.split(",")[3] for r in rows) == [
        "numpy/full", "numpy_plain/backward", "numpy_plain/full"
    ]  # fmt: skip
    # only impossible pairs asked for: says so and fails, without a traceback
    code, text = bench(tmp_path, "--providers", "numpy", "--modes", "backward")
    assert code == 1
    assert "skipped backward for numpy" in text and "nothing to run" in text


@pytest.mark.parametrize(("absent", "line"), [("jax", "jax not installed"),
                                               ("optax", "optax not installed")])  # fmt: skip
def test_bench_skips_a_missing_library_with_one_line(tmp_path, monkeypatch, absent, line):
    real = _bench._available
    monkeypatch.setattr(_bench, "_available", lambda name: name != absent and real(name))
    code, text = bench(tmp_path, "--providers", "jax")
    assert code == 1
    assert f"skipped jax: {line}" in text and "nothing to run" in text


def test_bench_skips_a_failing_case_with_its_error(tmp_path, monkeypatch):
    real = _bench.make_providers

    def broken(names, x, t):
        provs = real(names, x, t)
        if x.shape == (16, 5):  # not the 2 x 3 dry build that lists the modes

            def boom(_):
                raise RuntimeError("no compiler here\nsecond line")

            provs["numpy_plain"]["forward"] = (lambda: None, boom)
        return provs

    monkeypatch.setattr(_bench, "make_providers", broken)
    code, text = bench(tmp_path, "--providers", "numpy_plain", "--modes", "forward,full")
    assert code == 0, text
    assert (
        "skipped numpy_plain forward at 16 x 5: it failed: RuntimeError: no compiler here\n" in text
    )
    rows = (tmp_path / "b" / "fused.csv").read_text().splitlines()[1:]
    assert [r.split(",")[3] for r in rows] == ["full"]


def test_bench_threads_default_to_the_free_cpus_and_are_printed(tmp_path, monkeypatch):
    monkeypatch.setattr(_bench, "usable_cpus", lambda: 8)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.7, 1.0, 1.0))
    assert _bench.free_cpus() == (6, 2.7)
    monkeypatch.setattr(os, "getloadavg", lambda: (30.0, 1.0, 1.0))
    assert _bench.free_cpus() == (1, 30.0)  # a busy machine still gets one thread
    monkeypatch.setattr(_bench, "free_cpus", lambda: (1, 3.5))
    code, text = bench(tmp_path, "--providers", "numpy")
    assert code == 0, text
    assert "threads: 1 (free now: 8 usable CPUs, load average 3.5)" in text
    assert "CPU(s) free" not in text  # no warning about threads (one about noise may come)
    code, text = bench(tmp_path, "--providers", "numpy", "--threads", "2")
    assert "threads: 2 (--threads)" in text
    assert "warning: 2 threads but only 1 CPU(s) free (load average 3.5)" in text


def test_bench_warns_when_the_copy_floor_varies(tmp_path, monkeypatch):
    monkeypatch.setattr(_bench, "spread", lambda values: 3.0)
    code, text = bench(tmp_path, "--providers", "numpy")  # the copy is timed all the same
    assert code == 0, text
    assert "noise: copy floor p80/p20 = 3.00" in text
    assert "warning: the figures are not trustworthy" in text
    monkeypatch.setattr(_bench, "spread", lambda values: 1.1)
    assert "not trustworthy" not in bench(tmp_path, "--providers", "numpy")[1]


def test_bench_writes_into_a_named_folder_under_the_current_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert _cli.main([*BENCH, "--providers", "numpy"]) == 0
    folder = tmp_path / _bench.DEFAULT_OUT
    assert f"output folder: {folder}\n" in out.getvalue()
    assert (folder / "fused.csv").exists()


def test_bench_refuses_an_output_folder_it_cannot_create(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert _cli.main([*BENCH, "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "--out: cannot create" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux CPU affinity")
def test_bench_restores_cpu_affinity_and_thread_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    before = os.sched_getaffinity(0)
    bench(tmp_path, "--providers", "numpy", "--threads", "1")  # pins to one CPU while it runs
    assert os.sched_getaffinity(0) == before
    assert os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in os.environ


def test_bench_plot_legend_uses_the_readme_names(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    code, _ = bench(tmp_path, "--providers", "numpy,numpy_plain,copy", "--modes",
                    "forward,backward", plot=True)  # fmt: skip
    assert code == 0
    names = [t.get_text() for t in figures[0].legends[0].get_texts()]
    assert names == [_bench.LABELS[p] for p in ("numpy", "numpy_plain", "copy")]
    backward = figures[0].axes[1].get_title()  # its empty slot is explained, not blank
    assert "not shown (no separate backward step): softmaxce NumPy core" in backward
    plt.close(figures[0])


def run_bench_subprocess(tmp_path, *argv: str, preamble: str = "") -> subprocess.CompletedProcess:
    """``softmaxce bench`` in a fresh interpreter; prints its own peak RSS in KiB last (VmHWM:
    ru_maxrss would count the parent's RSS at the fork, which execve keeps)."""
    code = (
        f"import sys\n{preamble}\nfrom softmaxce import _bench, _cli\n"
        f"rc = _cli.main({[*BENCH, '--out', str(tmp_path / 'b'), *argv]!r})\n"
        "print(_bench._status_kib('VmHWM'))\nsys.exit(rc)"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_bench_without_numba_shows_no_traceback(tmp_path):
    # as in a virtual environment without numba (what conftest.py's SOFTMAXCE_BLOCK_NUMBA does)
    block = "sys.modules['numba'] = sys.modules['llvmlite'] = None"
    done = run_bench_subprocess(tmp_path, "--providers", "numba,numba_inplace,numpy",
                                "--modes", "forward", preamble=block)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "skipped numba, numba_inplace: the numba kernels cannot run: " in done.stdout


def test_bench_prefault_is_sized_by_the_problem():
    # the default prefault touched 6 GB whatever the sizes; now 8 x the largest logits
    assert _bench.default_prefault_gb([(16, 5), (64, 10)]) == 0.0  # below 64 MB: none
    big = _bench.default_prefault_gb([(64, 10), (4096, 32000)])
    assert 0 < big <= 8 * 4096 * 32000 * 4 / 2**30


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_bench_small_run_peak_memory_is_modest(tmp_path):
    # one process, tiny sizes, with the defaults: its whole peak stays far below the 6 GB
    # the old default prefault touched (numpy and softmaxce take about 60 MB)
    done = run_bench_subprocess(tmp_path, "--providers", "numpy,numpy_plain,copy")
    assert done.returncode == 0, done.stderr
    peak_mib = int(done.stdout.split()[-1]) / 1024
    assert peak_mib < 500, done.stdout


def test_bench_bad_size_names_the_option(capsys):
    with pytest.raises(SystemExit) as info:
        _cli.main(["bench", "--sizes", "64by10"])
    assert info.value.code == 2
    assert "--sizes" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["demo", "--epochs", "zero"], "--epochs"),
        (["demo", "--epochs", "0"], "--epochs"),
        (["demo", "--lr", "-1"], "--lr"),
        (["demo", "--backend", "gpu"], "--backend"),
        (["bogus"], "invalid choice"),
    ],
)
def test_bad_arguments_name_the_option(argv, needle, capsys):
    with pytest.raises(SystemExit) as info:
        _cli.main(argv)
    assert info.value.code == 2
    assert needle in capsys.readouterr().err


def test_help_has_examples():
    out = subprocess.run(
        [sys.executable, "-m", "softmaxce", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "examples:" in out and "--epochs" in out
