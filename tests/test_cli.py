"""The softmaxce command, run in-process on tiny settings."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from softmaxce import _cli, _dispatch

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
            "--prefault-gb",
            "0",
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


def test_bench_without_numba_skips_its_providers_and_runs_numpy(tmp_path, capsys, monkeypatch):
    if HAVE_KERNELS:  # as where numba is missing (the suite's SOFTMAXCE_BLOCK_NUMBA=1 run)
        monkeypatch.setattr(_dispatch, "numba_kernels", lambda: None)
    argv = ["bench", "--sizes", "16x5", "--modes", "forward", "--repeats", "2", "--no-plot",
            "--prefault-gb", "0"]  # fmt: skip
    code = _cli.main([*argv, "--providers", "numba,numba_inplace,numpy", "--out", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    assert "skipped numba, numba_inplace: the numba kernels cannot run: " in text
    rows = (tmp_path / "fused.csv").read_text().splitlines()
    assert [row.split(",")[2] for row in rows[1:]] == ["numpy"]
    # nothing left to run: says so, and fails
    assert _cli.main([*argv, "--providers", "numba", "--out", str(tmp_path)]) == 1
    assert "nothing to run" in capsys.readouterr().out


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
