"""Training settings: torch-free, so the spec's `train { ... }` section is checked by the compiler."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import Span, SpecError, did_you_mean
from .tokenizer import tokenizer_choice_problem


@dataclass
class TrainConfig:
    steps: int = 1000
    batch: int = 12
    lr: float = 1e-3
    min_lr: float | None = None  # end of the cosine; lr / 10 by default (nanoGPT)
    warmup: int = 100
    decay_steps: int | None = None  # the cosine reaches min_lr here; `steps` by default (nanoGPT's lr_decay_iters)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    accum: int = 1  # gradient accumulation: micro-batches per step
    eval_every: int = 100
    eval_batches: int = 20
    patience: int = 0  # evaluations without improvement before stopping; 0 never stops early
    seed: int = 1337
    dtype: str = "fp32"  # or "bf16" or "fp16": autocast on the device (fp16 with loss scaling, on a GPU)
    tokenizer: str | None = None  # char; or the tokenizer that came with --init-from
    data: str | None = None  # a text file; None: the built-in corpus
    out: str | None = None  # run directory; runs/<model> by default
    aux_loss: float = 0.01  # weight of the MoE load-balancing loss
    fsdp: bool = False
    init_from: str | None = None  # a Hugging Face checkpoint folder or a specc run: the weights to start from

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def lr_at(self, step: int) -> float:
        """Linear warmup, then cosine decay to min_lr at the last step (nanoGPT's get_lr)."""
        min_lr = self.lr / 10 if self.min_lr is None else self.min_lr
        if step < self.warmup:
            return self.lr * (step + 1) / (self.warmup + 1)
        decay = self.decay_steps or self.steps
        if step >= decay:
            return min_lr
        progress = (step - self.warmup) / max(1, decay - self.warmup)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.lr - min_lr)


# The range of each setting that has one: (test, what it must be). One table for the spec's train section (checked
# with the spec's line) and for the command-line flags.
_RANGES = {
    **{name: (lambda v: v >= 1, "at least 1") for name in ("steps", "batch", "accum", "eval_every", "eval_batches",
                                                             "decay_steps")},
    **{name: (lambda v: v >= 0, "at least 0") for name in ("warmup", "patience", "min_lr", "weight_decay",
                                                             "grad_clip", "aux_loss")},
    "lr": (lambda v: v > 0, "positive"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "dtype": (lambda v: v in ("fp32", "bf16", "fp16"), "fp32, bf16 or fp16"),
    "tokenizer": (lambda v: tokenizer_choice_problem(v) is None, tokenizer_choice_problem),  # what: a function
    "init_from": (lambda v: os.path.exists(v), "a Hugging Face checkpoint folder, a weights file or a specc run "
                  "directory that exists"),
}


def setting_problem(name: str, value: Any) -> str | None:
    """Why a setting's value is out of range, or None."""
    if isinstance(value, float) and not math.isfinite(value):  # `--lr inf` would train NaN to the end
        return f"training setting '{name}' must be a finite number, got {value!r}"
    if value is None or name not in _RANGES:
        return None
    test, what = _RANGES[name]
    if test(value):
        return None
    return f"training setting '{name}': {what(value)}, got {value!r}" if callable(what) else \
        f"training setting '{name}' must be {what}, got {value!r}"


# Settings that must not change when a run is resumed: they change what the model or the data is.
# (The data is compared by content, not by path: train/rundir.py keeps its fingerprint.)
RESUME_INVARIANTS = ("batch", "accum", "seed", "tokenizer", "dtype", "init_from")


def setting_type(name: str):
    """The Python type of a setting (int, float, str or bool), for checking a spec's train section."""
    hints = {"int": int, "float": float, "str": str, "bool": bool}
    annotation = {f.name: f.type for f in fields(TrainConfig)}[name]
    return hints[str(annotation).split(" ")[0]]


# A LoRA run's adapters are not decayed unless a setting says so (`train { weight_decay = 0.01 }`): decay pulls them
# towards zero, that is towards the base model. Hugging Face's TrainingArguments.weight_decay defaults to 0.0 (read
# from transformers 5.24), which peft's LoRA examples train with, and so do peft's LoRA optimizers (LoRA-FA's
# weight_decay: 0.0).
LORA_WEIGHT_DECAY = 0.0


def with_lora_defaults(config: TrainConfig, spec_section: dict[str, Any], flags: dict[str, Any]) -> TrainConfig:
    """A new LoRA run's settings: weight_decay LORA_WEIGHT_DECAY unless the spec's train section or a flag sets it."""
    if spec_section.get("weight_decay") is not None or flags.get("weight_decay") is not None:
        return config
    return replace(config, weight_decay=LORA_WEIGHT_DECAY)


def resolve_config(spec_section: dict[str, Any], flags: dict[str, Any]) -> TrainConfig:
    cfg = TrainConfig()
    known = set(TrainConfig.names())
    for source in (spec_section, flags):
        for key, value in source.items():
            if value is None:
                continue
            if key not in known:
                raise SpecError(f"unknown training setting '{key}'", Span("train", 0, 0),
                                hint=did_you_mean(key, known))
            problem = setting_problem(key, value)
            if problem:  # the spec's section was checked with its lines by the compiler: this is a flag
                raise SpecError(problem, Span("--" + key.replace("_", "-"), 0, 0))
            cfg = replace(cfg, **{key: value})
    return cfg


