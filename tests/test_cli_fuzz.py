"""Property-based fuzzing of the command line of train, sample, export and generate: whatever the arguments (odd
numbers, odd text, paths to folders, devices, FIFOs, damaged files, foreign folders, another model's run), a
command finishes with exit code 0 or 2 and one message, never a traceback, never an internal error. Derandomized
and database-free, so CI sees the same examples every time; FUZZ_EXAMPLES=<n> scales the example counts."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SPECS

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from specdsl.cli import run  # noqa: E402

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out (pyproject.toml, markers)

torch.set_num_threads(1)
SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))
NANO = str(SPECS / "nanogpt-shakespeare.spec")
TINY = ["--set", "d=16", "--set", "layers=1", "--set", "heads=2", "--set", "ctx=8"]


def _settings(n: int):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files for the fuzzer to point at: a trained run, its ONNX export, and hostile things."""
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    runner = CliRunner()
    done = runner.invoke(_entry_point, ["train", NANO, "--out", str(run), "--steps", "4", "--eval-every", "2",
                                        "--batch", "2"] + TINY)
    assert done.exit_code == 0, done.output
    done = runner.invoke(_entry_point, ["export", NANO, "--onnx", "--checkpoint", str(run), "-o", str(root / "m.onnx")])
    assert done.exit_code == 0, done.output
    (root / "empty.txt").write_text("")
    (root / "text.txt").write_text("Ünïcode text, tabs\tand \x1b[2J escapes, brûlée " * 20)
    (root / "garbage.onnx").write_bytes(os.urandom(300))
    (root / "foreign").mkdir()
    (root / "foreign" / "mine.txt").write_text("not specc's")
    os.mkfifo(root / "fifo")
    (root / "bad.spec").write_text("model m { input x: float[batch, 4]\n return x -> Linear(4, [/x]) }\n")
    return root


def paths(world: Path, *names: str):
    return st.sampled_from([str(world / n) for n in names] + ["/dev/zero", "/dev/null", "", "-", "missing/x",
                                                             "\x1b[31m", "a" * 300])


NUMBERS = st.one_of(st.integers(-3, 3), st.sampled_from(["0", "-1", "1e3", "nan", "inf", "x", "", "0x10", " 2",
                                                         "99999999999999999999"]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32).map(str),
                   st.sampled_from(["-0", "1e-400", "abc", ""]))
TEXT = st.text(max_size=20)


def check(args: list[str]) -> None:
    """The property, through the console script's entry point (`specc` is `specdsl.cli:run`): exit 0 or 2, no
    exception escaped, no traceback, no internal error."""
    result = CliRunner().invoke(_entry_point, args)
    shown = f"specc {' '.join(map(repr, args))}\n{result.output}"
    assert result.exit_code in (0, 2), shown
    assert result.exception is None or isinstance(result.exception, SystemExit), shown
    assert "Traceback" not in result.output and "internal error" not in result.output, shown


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def _entry_point(ctx):
    """`specdsl.cli.run` with these arguments, as the console script calls it."""
    argv = sys.argv
    sys.argv = ["specc", *ctx.args]
    try:
        run()
    finally:
        sys.argv = argv


def options(pairs: dict, draw) -> list[str]:
    out = []
    for flag, strategy in pairs.items():
        if draw(st.booleans()):
            out += [flag, str(draw(strategy))]
    return out


@_settings(25)
@given(st.data())
def test_train_arguments(world, tmp_path_factory, data):
    out = data.draw(st.sampled_from(["new", "foreign", "file", "run", "fifo"]))
    target = {"new": tmp_path_factory.mktemp("t") / "r", "foreign": world / "foreign", "file": world / "text.txt",
              "fifo": world / "fifo", "run": tmp_path_factory.mktemp("t") / "r"}[out]
    if out == "run":
        shutil.copytree(world / "run", target)
    args = ["train", data.draw(st.sampled_from([NANO, str(SPECS / "mlp.spec"), str(world / "bad.spec"),
                                                str(world / "text.txt"), "/dev/zero"])), "--out", str(target),
            "--steps", data.draw(st.sampled_from(["1", "2", "0", "-5", "x"]))]
    args += TINY if data.draw(st.booleans()) else []
    args += options({"--data": paths(world, "text.txt", "empty.txt", "fifo", "foreign", "m.onnx"),
                     "--batch": NUMBERS, "--lr": FLOATS, "--seed": NUMBERS, "--accum": NUMBERS, "--warmup": NUMBERS,
                     "--eval-every": NUMBERS, "--tokenizer": st.sampled_from(["char", "byte", "bpe", ""]),
                     "--dtype": st.sampled_from(["fp32", "bf16", "fp8", ""]), "--preset": TEXT,
                     "--set": st.sampled_from(["vocab=5", "d=0", "ctx=10**30", "heads=3", "x", "=", "dropout=2"]),
                     "--nproc": st.sampled_from(["0", "-1", "x", "1"]),
                     # never a whole rendezvous (the endpoint is always wrong): nothing is launched, nothing waits
                     "--nnodes": st.sampled_from(["2", "1:4", "0", "x", "3:1", ""]),
                     "--node-rank": st.sampled_from(["0", "1", "-1", "x"]),
                     "--rdzv-endpoint": st.sampled_from(["head", "head:x", "head:0", ":29400", "", "h:99999"])},
                    data.draw)
    args += ["--resume"] if data.draw(st.booleans()) else []
    check(args)


# The options `specc sample` and `specc generate` share.
GENERATION = {"--prompt": TEXT, "--max-new-tokens": st.sampled_from(["0", "3", "-1", "x"]), "--temperature": FLOATS,
              "--top-k": NUMBERS, "--seed": NUMBERS, "--overflow": st.sampled_from(["shift", "slide", "wrap"])}


@_settings(25)
@given(st.data())
def test_sample_arguments(world, data):
    args = ["sample", data.draw(paths(world, "run", "foreign", "text.txt", "m.onnx"))]
    args += options(GENERATION, data.draw)
    check(args)


@_settings(25)
@given(st.data())
def test_generate_and_inspect_arguments(world, data):
    path = data.draw(paths(world, "m.onnx", "garbage.onnx", "empty.txt", "foreign", "fifo", "run"))
    if data.draw(st.booleans()):
        check(["inspect", path])
        return
    args = ["generate", path]
    args += options(GENERATION, data.draw)
    check(args)


@_settings(10)
@given(st.data())
def test_export_arguments(world, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("e")
    out = data.draw(st.sampled_from([str(folder / "m.onnx"), str(folder), str(world / "fifo"), "/dev/null",
                                     str(folder / "missing" / "m.onnx"), str(world / "text.txt")]))
    args = ["export", data.draw(st.sampled_from([NANO, str(SPECS / "mlp.spec"), str(world / "bad.spec")])),
            "-o", out]
    args += ["--onnx"] if data.draw(st.integers(0, 4)) else []
    args += options({"--checkpoint": paths(world, "run", "foreign", "text.txt"),
                     "--quantize": st.sampled_from(["int8", "int4", ""]), "--preset": TEXT,
                     "--set": st.sampled_from(["heads=4", "d=0", "vocab=3", "x"])}, data.draw)
    check(args)
