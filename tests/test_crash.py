"""Crash consistency: training killed (SIGKILL) or interrupted (SIGINT) at random moments, then resumed, ends with
weights and a loss log bit-identical to a run never interrupted. 3 trials here; `python bench/crash_consistency.py`
runs 20. The runs that are interrupted are processes (signals are the point); the last `--resume`, which runs to
the end, runs in this process (specc_here): the same command, without a third start of torch per trial."""

import sys

import pytest

from conftest import ROOT, interruptible, specc_here

sys.path.insert(0, str(ROOT / "bench"))
pytest.importorskip("torch")
import crash_consistency  # noqa: E402

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out (pyproject.toml, markers)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interrupted_training_resumes_bit_identical(tmp_path, crash_reference, seed):
    crash_consistency.trial(tmp_path, crash_reference, seed, finish=_finish_here)


def _finish_here(out):
    done = specc_here(*crash_consistency.arguments(out, resume=True))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("sent, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_outside_training_exits_128_plus_it_without_a_traceback(sent, code):
    """CI once SIGTERMed `specc train` after its last step, where training's own handler was already gone: the
    process died of the signal (-15). Now SIGTERM anywhere in a command stops it as Ctrl-C does: exit 143, no
    traceback, and the `finally` blocks that remove half-written files run."""
    import subprocess
    script = ("import os, signal, sys, time\n"
              "from specdsl import cli\n"
              "@cli.app.command('wait')\n"  # a command through typer, which turns KeyboardInterrupt into exit 130
              "def wait():\n"
              "    try:\n"
              f"        os.kill(os.getpid(), signal.{sent}); time.sleep(30)\n"
              "    finally:\n"
              "        print('cleaned up')\n"
              "sys.argv = ['specc', 'wait']\n"
              "cli.run_process()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          preexec_fn=interruptible)
    assert (done.returncode, done.stdout, done.stderr) == (code, "cleaned up\n", "")
