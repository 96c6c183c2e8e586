"""--device and --dtype: a device that is not there, or fp16 on a CPU, is refused before the run starts; batches
and the model go where the run computes; on a machine with a GPU, a CUDA run follows the CPU run's losses (the
batches are drawn on the CPU by the same seeded generator)."""

from __future__ import annotations

import json
import os

import pytest

import specdsl
from conftest import SPECS

torch = pytest.importorskip("torch")
from specdsl.train.device import autocast, resolve_device, to_device  # noqa: E402
from specdsl.train.loop import train  # noqa: E402

TINY = {"d": 32, "layers": 1, "heads": 2, "ctx": 16}


def run(out, **flags):
    from rich.console import Console
    device = flags.pop("device", None)
    return train(str(SPECS / "nanogpt-shakespeare.spec"), overrides=TINY, progress=False, device=device,
                 console=Console(file=open(os.devnull, "w")),
                 flags={"steps": 6, "batch": 4, "eval_every": 3, "eval_batches": 1, "out": str(out), **flags})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA has the device")
def test_an_absent_device_or_fp16_on_a_cpu_is_refused_before_anything_is_written(tmp_path):
    for flags, where, says in (({"device": "cuda"}, "--device", "sees no CUDA device"),
                               ({"device": "tpu"}, "--device", "unknown device 'tpu'"),
                               ({"device": "cpu", "dtype": "fp16"}, "--dtype", "fp16 runs on a GPU only")):
        with pytest.raises(specdsl.SpecError, match=says) as refused:
            run(tmp_path / "r", **flags)
        assert refused.value.errors[0].span.file == where and not (tmp_path / "r").exists()


def test_auto_is_the_cpu_here_and_batches_stay_as_they_are_on_it():
    if not torch.cuda.is_available():
        assert resolve_device(None).type in ("cpu", "mps") and resolve_device("cpu") == torch.device("cpu")
    batch = ((torch.ones(2), torch.zeros(1)), torch.ones(3))
    assert to_device(batch, torch.device("cpu")) is batch
    with autocast("bf16", torch.device("cpu")):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_follows_the_cpu_run(tmp_path):
    run(tmp_path / "cpu", device="cpu")
    run(tmp_path / "cuda", device="cuda")
    losses = [[json.loads(line)["train_loss"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("cpu", "cuda")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)
    run(tmp_path / "fp16", device="cuda", dtype="fp16")


@pytest.mark.slow
def test_sample_in_bf16_follows_fp32_and_fp16_on_a_cpu_is_refused(tmp_path):
    """`specc sample --dtype bf16`: the weights and the KV cache in bf16, the same greedy text as fp32 on this tiny
    run's first tokens (bf16 keeps 8 bits of mantissa: the argmax rarely moves); fp16 on a CPU is refused on the
    flag before the run is read."""
    from specdsl.train.sample import generate, load_run
    run(tmp_path / "r", steps=30, eval_every=30)
    texts = {}
    for dtype in ("fp32", "bf16"):
        module, tokenizer, ctx = load_run(tmp_path / "r", device="cpu", dtype=dtype)
        assert {p.dtype for p in module.parameters()} == {torch.float32 if dtype == "fp32" else torch.bfloat16}
        ids = tokenizer.encode("the ")
        texts[dtype] = list(generate(module, ids, 8, ctx, temperature=0, vocab=tokenizer.data_size))
    assert texts["bf16"][:4] == texts["fp32"][:4]
    if not torch.cuda.is_available():
        with pytest.raises(specdsl.SpecError, match="fp16 runs on a GPU only") as refused:
            load_run(tmp_path / "r", device="cpu", dtype="fp16")
        assert refused.value.errors[0].span.file == "--dtype"
    with pytest.raises(specdsl.SpecError, match="--dtype must be one of"):
        load_run(tmp_path / "r", device="cpu", dtype="int4")
