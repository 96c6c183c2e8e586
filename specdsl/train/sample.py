"""`specc sample`: text from a trained run with PyTorch (temperature 0 is greedy): a language model continues the
prompt; a sequence-to-sequence model takes it as the source and decodes its target (`translate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from ..backends.torch_backend import Decoder, Seq2SeqDecoder, to_torch
from ..context_window import DEFAULT_OVERFLOW, prompt_start, window_start
from ..contract import contract, refuse_encoder_decoder
from ..errors import Span, SpecError
from . import rundir
from .init import load_run_weights


def load_run(run_dir: str | Path, which: str = "best", device: str | None = "cpu", dtype: str = "fp32"):
    """(module in eval mode, tokenizer, context) of a run directory; `which` is best or last; the module on `device`
    (train/device.py: cpu, cuda, mps, or None for auto), its weights in `dtype` (fp32, bf16 or fp16: the KV cache
    follows them). The context is the target's for a sequence-to-sequence model (module.spec's contract says
    which it is)."""
    from .device import WEIGHT_DTYPES, check_dtype, resolve_device
    if dtype not in WEIGHT_DTYPES:
        raise SpecError(f"--dtype must be one of {', '.join(WEIGHT_DTYPES)}, not '{dtype}'", Span("--dtype", 0, 0))
    target = resolve_device(device)
    check_dtype(dtype, target)  # before the run is read: a refusal costs nothing
    run = rundir.open_existing(run_dir)
    where = Span(str(run.path), 0, 0)
    folder = run.complete(which) or run.complete("last")
    if folder is None:
        raise SpecError(f"no complete checkpoint in '{run.path}'", where, hint="train it (or --resume it) first")
    compiled, record = rundir.compile_run(run)
    if contract(compiled.model).encoder_decoder and contract(compiled.model).source is None:
        refuse_encoder_decoder(compiled.model, "sampling")
    if record["tokenizer"] is None:
        raise SpecError(f"'{run.path}' holds a classifier: there is no text to sample", where)
    tokenizer = run.tokenizer()
    if tokenizer.mask:
        raise SpecError(f"'{run.path}' holds a masked language model: it fills in [MASK] tokens from both sides and "
                        "does not continue text", where, hint="sample a causal model (GPT, LLaMA, nanoGPT)")
    module = to_torch(compiled).eval()
    load_run_weights(module, record, folder)  # a LoRA run: its base weights, then its adapters
    return module.to(target, WEIGHT_DTYPES[dtype]), tokenizer, contract(compiled.model).context


def _device_of(module) -> torch.device:
    return next(module.parameters(), torch.empty(0)).device


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> int:
    logits = logits.cpu()  # the seeded generator draws on the CPU, whatever the device: the same text anywhere
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))


@torch.inference_mode()
def generate(module, prompt_ids: list[int], max_new_tokens: int, ctx: int, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0, overflow: str = DEFAULT_OVERFLOW,
             cache: bool = True, vocab: int | None = None) -> Iterator[int]:
    """Yield new token ids one by one. Past the context, `overflow` says which tokens the model sees
    (specdsl.context_window; "slide" is nanoGPT's generate). With `cache`, a causal model keeps its keys and values
    between calls (Decoder) and runs its window again only when the window moves; without, every token is a full
    forward pass over the window (nanoGPT's generate), the reference the tests hold the cache to. `vocab`: the ids
    the tokenizer can decode (its data ids, without [MASK]); a model with a larger output vocabulary chooses among
    the first `vocab` only."""
    generator = torch.Generator().manual_seed(seed)
    ids = list(prompt_ids)
    if not ids:
        raise ValueError("an empty prompt: a model needs at least one token to continue")
    facts = contract(module.spec)
    decoder = Decoder(module) if cache and facts.causal and facts.cache else None
    start = prompt_start(len(ids), ctx)
    device = _device_of(module)
    if decoder is not None:  # buffers for the whole window, written in place (Decoder.step)
        dtype = next(module.parameters()).dtype
        kv = decoder.static_cache(min(ctx, len(ids) + max_new_tokens), dtype=dtype, device=device)
        last = torch.empty(1, 1, dtype=torch.long, device=device)  # the one-token input, refilled each step
    for _ in range(max_new_tokens):
        if decoder is None:
            logits = module(torch.tensor([ids[start:]], dtype=torch.long, device=device))
            logits = logits[0] if isinstance(logits, tuple) else logits
        elif kv.length == 0:  # the window (re)starts: run it whole
            logits = decoder.step(torch.tensor([ids[start:]], dtype=torch.long, device=device), kv)
        else:
            logits = decoder.step(last.fill_(ids[-1]), kv)
        token = next_token(logits[0, -1, :vocab].float(), temperature, top_k, generator)
        ids.append(token)
        yield token
        moved, start = start, window_start(start, len(ids), ctx, overflow)
        if start != moved and decoder is not None:  # new positions for every token: the cache is stale
            kv.length = 0


@torch.no_grad()
def translate(module, source_ids: list[int], bos: int, eos: int, max_new_tokens: int, temperature: float = 1.0,
              top_k: int | None = None, seed: int = 0, cache: bool = True, vocab: int | None = None) -> Iterator[int]:
    """Yield the target of a sequence-to-sequence model for `source_ids`, token by token, from [BOS] until it
    chooses [EOS] (not yielded), max_new_tokens, or the target's context. With `cache`, the decoder's keys and
    values are kept and the memory's computed once (Seq2SeqDecoder); without, every token is a full forward pass
    of source and target, the reference the tests hold the cache to. `vocab`: the model's ids the tokenizer
    knows; [BOS] is never chosen."""
    facts = contract(module.spec)
    generator = torch.Generator().manual_seed(seed)
    device = _device_of(module)
    src = torch.tensor([source_ids], dtype=torch.long, device=device)
    ids = [bos]
    decoder = Seq2SeqDecoder(module) if cache else None
    past = decoder.empty_cache(1, device=device) if decoder is not None else None
    for _ in range(min(max_new_tokens, facts.context)):
        if decoder is None:
            logits = module(src, torch.tensor([ids], dtype=torch.long, device=device))
            logits = logits[0] if isinstance(logits, tuple) else logits
        else:
            logits, *past = decoder(src, torch.tensor([ids[-1:]], dtype=torch.long, device=device), *past)
        scores = logits[0, -1, :vocab].float().clone()
        scores[bos] = float("-inf")
        token = next_token(scores, temperature, top_k, generator)
        if token == eos:
            return
        ids.append(token)
        yield token
