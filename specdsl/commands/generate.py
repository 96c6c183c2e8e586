"""`specc sample` (PyTorch, from a run) and `specc generate` (onnxruntime, from an export): the same prompt rules and
the same streamed output, so their texts can be compared."""

from __future__ import annotations

import sys

from ..errors import Span, SpecError
from ..text import printable


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    where = Span("--prompt", 0, 0)
    try:
        ids = tokenizer.encode(prompt)
    except ValueError as e:
        raise SpecError(f"the prompt has {e}", where) from None
    if not ids:
        raise SpecError("the prompt is empty: a model needs at least one token to continue", where,
                        hint="the default prompt is a newline")
    return ids


def check_source(ids: list[int], source_context: int | None) -> None:
    """A sequence-to-sequence model's prompt is its source: at most the source's context."""
    if source_context is not None and len(ids) > source_context:
        raise SpecError(f"the prompt is {len(ids)} tokens; the model's source takes at most {source_context}",
                        Span("--prompt", 0, 0))


def stream(prompt: str, tokens, tokenizer) -> None:
    """The prompt, then each generated piece as it comes. A SpecError mid-stream ends the line first."""
    # Generated text is the product: into a file or a pipe it goes as is. A terminal is another matter: the model
    # comes from a file and may emit escape sequences, so there controls other than newline and tab are shown.
    def show(text: str) -> str:
        return printable(text, keep="\t\n") if sys.stdout.isatty() else text

    sys.stdout.write(show(prompt))
    try:
        for piece in tokenizer.stream(tokens):  # whole characters, even when a token is a part of one (bytes)
            sys.stdout.write(show(piece))
            sys.stdout.flush()
    finally:
        sys.stdout.write("\n")


def sample_command(run_dir: str, prompt: str, max_new_tokens: int, temperature: float, top_k: int | None,
                   seed: int, overflow: str, device: str | None = None, dtype: str = "fp32") -> None:
    from ..contract import contract
    from ..train.sample import generate, load_run, translate
    module, tokenizer, ctx = load_run(run_dir, device=device, dtype=dtype)
    ids = prompt_ids(tokenizer, prompt)
    facts = contract(module.spec)
    if facts.source is not None:  # a sequence-to-sequence model: the prompt is the source; print its target
        check_source(ids, facts.source_context)
        stream("", translate(module, ids, tokenizer.bos_id, tokenizer.eos_id, max_new_tokens, temperature, top_k,
                             seed, vocab=tokenizer.vocab_size), tokenizer)
        return
    stream(prompt, generate(module, ids, max_new_tokens, ctx, temperature, top_k, seed, overflow,
                            vocab=tokenizer.data_size), tokenizer)


def generate_command(path: str, prompt: str, max_new_tokens: int, temperature: float, top_k: int | None,
                     seed: int, overflow: str) -> None:
    from ..backends.onnx_translate import OnnxTranslator, open_generator
    generator = open_generator(path)
    ids = prompt_ids(generator.tokenizer, prompt)
    if isinstance(generator, OnnxTranslator):  # a sequence-to-sequence export: the prompt is the source, as sample
        check_source(ids, generator.source_context)
        stream("", generator.translate(ids, max_new_tokens, temperature, top_k, seed), generator.tokenizer)
        return
    stream(prompt, generator.generate(ids, max_new_tokens, temperature, top_k, seed, overflow), generator.tokenizer)
