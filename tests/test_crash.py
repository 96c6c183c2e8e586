"""Crash consistency: training killed (SIGKILL) or interrupted (SIGINT) at random moments, then resumed, ends with
weights and a loss log bit-identical to a run never interrupted. 3 trials here; `python bench/crash_consistency.py`
runs 20. The runs that are interrupted are processes (signals are the point); the last `--resume`, which runs to
the end, runs in this process (specc_here): the same command, without a third start of torch per trial."""

import sys

import pytest

from conftest import ROOT, specc_here

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
