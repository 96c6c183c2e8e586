"""bench/gpu.py runs end to end: on the CPU in its dry mode (toy sizes, the same code as on a GPU), and without a
GPU and without --dry it says so and exits 0 (what it prints on a GPU is recorded in the README where one was lent)."""

import sys

import pytest

from conftest import ROOT

torch = pytest.importorskip("torch")
sys.path.insert(0, str(ROOT / "bench"))
import gpu  # noqa: E402

pytestmark = pytest.mark.slow


def test_the_dry_run_measures_both_models_and_the_baseline(capsys):
    assert gpu.main(["--dry", "--steps", "1", "--new", "2"]) == 0
    out = capsys.readouterr().out
    assert "GPT-2 small (dry)" in out and "LLaMA 1.1B (dry)" in out and "specc / nanoGPT:" in out
    assert out.count("generate (KV cache, batch 1, bf16)") == 2 and "MFU" not in out  # no peak known for a CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real thing")
def test_without_a_gpu_it_skips_with_a_clear_message(capsys):
    assert gpu.main([]) == 0
    assert "no CUDA device here" in capsys.readouterr().out
