"""`specc sample`: text from a trained run with PyTorch (temperature 0 is greedy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

from .. import to_torch
from ..context_window import DEFAULT_OVERFLOW, prompt_start, window_start
from ..errors import Span, SpecError
from . import checkpoint
from .data import Tokenizer
from .loop import _context, loads_for_run


def load_run(run_dir: str | Path, which: str = "best"):
    """(module in eval mode, tokenizer, context) of a run directory; `which` is best or last."""
    run_dir = Path(run_dir)
    where = Span(str(run_dir), 0, 0)
    if not (run_dir / "run.json").is_file():
        raise SpecError(f"'{run_dir}' is not a run directory (no run.json)", where,
                        hint="pass the --out folder of `specc train`")
    folder = checkpoint.resolve(run_dir / which) or checkpoint.resolve(run_dir / "last")
    if folder is None:
        raise SpecError(f"no complete checkpoint in '{run_dir}'", where)
    compiled, record = loads_for_run(run_dir)
    if record.get("tokenizer") is None:
        raise SpecError(f"'{run_dir}' holds a classifier: there is no text to sample", where)
    if record["tokenizer"].get("mask"):
        raise SpecError(f"'{run_dir}' holds a masked language model: it fills in [MASK] tokens from both sides and "
                        "does not continue text", where, hint="sample a causal model (GPT, LLaMA, nanoGPT)")
    module = to_torch(compiled).eval()
    try:
        checkpoint.load_weights_into(module, folder)
    except Exception as e:  # a truncated or foreign file
        raise SpecError(f"cannot read the checkpoint in '{folder}': {e}", where) from None
    tokenizer = Tokenizer.from_json(json.loads((run_dir / "data" / "tokenizer.json").read_text()))
    return module, tokenizer, _context(compiled.model)


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


@torch.no_grad()
def generate(module, prompt_ids: list[int], max_new_tokens: int, ctx: int, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0, overflow: str = DEFAULT_OVERFLOW) -> Iterator[int]:
    """Yield new token ids one by one, a full forward pass over the window each (no cache: this is the reference
    `specc generate` is checked against). Past the context, `overflow` says which tokens the model sees
    (specdsl.context_window; "slide" is nanoGPT's generate)."""
    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt_ids)
    if not ids:
        raise ValueError("an empty prompt: a model needs at least one token to continue")
    start = prompt_start(len(ids), ctx)
    for _ in range(max_new_tokens):
        logits = module(torch.tensor([ids[start:]], dtype=torch.long))
        logits = logits[0] if isinstance(logits, tuple) else logits
        token = next_token(logits[0, -1].float(), temperature, top_k, generator)
        ids.append(token)
        yield token
        start = window_start(start, len(ids), ctx, overflow)
