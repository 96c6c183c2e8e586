"""Which tokens the model sees once generated text outgrows its context: one rule for `specc sample` (PyTorch)
and `specc generate` (onnxruntime), so both pick the same tokens. Torch-free.

A model with learned absolute positions (GPT-1/2, nanoGPT) cannot slide its KV cache: when the window moves, every
token's position changes and every cached key and value with it. Two policies:

* ``slide`` (nanoGPT's ``generate``): every new token sees the last ``ctx`` tokens. Exact, but each token
  past the context costs a forward pass over the whole window, cache or no cache.
* ``shift`` (the default; llama.cpp's context shift, ``n_discard = n_ctx / 2``): when the window is full, keep its last
  ``ctx // 2`` tokens, run them again as a prompt, and go on one token a call with the cache. A new token sees
  between ``ctx // 2`` and ``ctx`` tokens; the window is re-run every ``ctx // 2 + 1`` tokens, not every token.
"""

from __future__ import annotations

OVERFLOW_POLICIES = ("slide", "shift")
# shift by default: on nanoGPT's Shakespeare model (ctx 64) it generates 3.3-4.2x faster on onnxruntime than slide
# (bench/inference.py), and the shorter windows cost nothing measurable there: trained on tinyshakespeare, its
# validation loss averaged over contexts 33-64 is 1.857 against 1.861 at 64 (difference -0.003, standard error
# 0.018; bench/context_loss.py).
DEFAULT_OVERFLOW = "shift"


def prompt_start(length: int, ctx: int) -> int:
    """A prompt's window, whatever the policy: its last ctx tokens."""
    return max(0, length - ctx)


def window_start(start: int, length: int, ctx: int, policy: str) -> int:
    """Index of the first token the model sees, for a sequence of `length` tokens (one more than at the last call)
    whose window began at `start`. The window stays put while it fits; a new start means the window is run again
    from scratch."""
    if policy not in OVERFLOW_POLICIES:
        raise ValueError(f"unknown overflow policy {policy!r}: choose one of {', '.join(OVERFLOW_POLICIES)}")
    if length - start <= ctx:
        return start
    return length - ctx if policy == "slide" else length - max(1, ctx // 2)
