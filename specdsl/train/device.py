"""Where a run computes: --device cpu|cuda|mps (auto: the first available of cuda, mps, cpu), and the precision of
--dtype (fp32; bf16 or fp16 autocast on that device). Under torchrun each process takes the GPU of its LOCAL_RANK,
and the process group is nccl on CUDA, gloo elsewhere. The model is built and initialised on the CPU (the same
weights whatever the device, from the seed), then moved; batches are drawn on the CPU by the seeded generator and
moved with the step, so a run's batches are the same on every device."""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import Span, SpecError

DEVICES = ("auto", "cpu", "cuda", "mps")
WHERE = Span("--device", 0, 0)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(name: str | None) -> torch.device:
    """The torch device --device names (None or "auto": cuda, else mps, else cpu); SpecError when it is absent."""
    name = name or "auto"
    if name not in DEVICES and not name.startswith("cuda:"):
        raise SpecError(f"unknown device '{name}'", WHERE, hint="--device " + "|".join(DEVICES))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SpecError(f"--device {name}: this PyTorch ({torch.__version__}) sees no CUDA device", WHERE,
                            hint="--device cpu, or a CUDA build of torch on a machine with a GPU")
        if name == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU a process
            name = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
        device = torch.device(name)
        torch.cuda.set_device(device)
        return device
    if name == "mps" and not _mps_available():
        raise SpecError("--device mps: no Apple GPU (MPS) is available", WHERE, hint="--device cpu")
    return torch.device(name)


def process_group_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


# Inference in reduced precision (specc sample --dtype): the weights themselves in that type, not autocast.
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_dtype(dtype: str, device: torch.device) -> None:
    """fp16 autocast needs a GPU's kernels and a gradient scaler; on a CPU bf16 is the reduced precision."""
    if dtype == "fp16" and device.type == "cpu":
        raise SpecError("--dtype fp16 runs on a GPU only (CPU kernels are bf16's)", Span("--dtype", 0, 0),
                        hint="--dtype bf16 on a CPU")


def autocast(dtype: str, device: torch.device):
    """The step's autocast context: none for fp32."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def grad_scaler(dtype: str, device: torch.device):
    """fp16's loss scaling (its small range underflows gradients without it); None otherwise."""
    return torch.amp.GradScaler(device.type) if dtype == "fp16" else None


def to_device(batch, device: torch.device | None):
    """A batch (a tensor, or tuples of them) on `device`."""
    if device is None or device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return type(batch)(to_device(b, device) for b in batch)
