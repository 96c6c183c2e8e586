"""Crash consistency: training killed (SIGKILL) or interrupted (SIGINT) at random moments, then resumed, ends with
weights and a loss log bit-identical to a run never interrupted. 3 trials here; `python bench/crash_consistency.py`
runs 20."""

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
pytest.importorskip("torch")
import crash_consistency  # noqa: E402

pytestmark = pytest.mark.slow  # `make test-fast` leaves these out (pyproject.toml, markers)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interrupted_training_resumes_bit_identical(tmp_path, crash_reference, seed):
    crash_consistency.trial(tmp_path, crash_reference, seed)
