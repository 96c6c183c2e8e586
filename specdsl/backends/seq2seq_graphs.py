"""The two torch modules an encoder-decoder's ONNX graphs are exported from (specdsl.backends.onnx_seq2seq):

- MemoryEncoder: `source -> memory keys and values`, the keys and values [batch, kv_heads, src_len, head_dim] of
  the memory (the encoder's output) that every cross-attention application reads, in the order they run: what
  Seq2SeqDecoder caches at its first step, computed once per source;
- MemoryDecoder: `(target, *self_past, *memory) -> (logits, *self_present)`, Seq2SeqDecoder with the memory's
  keys and values given, so the encoder is not run and the memory is not returned again.

Both need what Seq2SeqDecoder needs to skip the encoder after the first step: the encoder's values reach the decoder
only as cross-attention memory. A model that reads them otherwise is refused with a located error.
"""

from __future__ import annotations

import torch
from torch import nn

from ..contract import contract
from ..errors import SpecError
from .torch_backend import GraphModule, Repeat, Seq2SeqDecoder, SpecModule


def check_memory_only(decoder: Seq2SeqDecoder) -> None:
    """A SpecError at the model unless its encoder can run once per source (the decoder then skips it)."""
    model = decoder.model.spec
    if not decoder._encoder:
        raise SpecError(f"ONNX export of an encoder-decoder needs the encoder's output to reach the decoder only as "
                        f"cross-attention memory (its keys and values are then computed once per source); model "
                        f"'{model.name}' reads it otherwise, so its decoder would need the source at every step",
                        model.root.span,
                        hint="pass the encoder's output to the decoder blocks as `memory` only (std/seq2seq.spec)")


class MemoryEncoder(nn.Module):
    """`encoder(src) -> (k0, v0, k1, v1, ...)`: the memory's keys and values of every cross-attention application,
    in the order the decoder runs them. Runs the values computed from the source alone (the encoder) and, inside
    the decoder, only what its cross-attentions' memory needs: nothing of the target."""

    def __init__(self, module: SpecModule):
        super().__init__()
        check_memory_only(Seq2SeqDecoder(module))  # which refuses a model that is not one source and one target
        self.model, self.facts = module, contract(module.spec)

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out: list[torch.Tensor] = []
        _memory_keys_values(self.model, {self.facts.source: src}, out)
        return tuple(out)


def _known(graph: GraphModule, given) -> set[str]:
    """The refs of `graph` computed from `given` alone (every ref an op reads is given or computed so)."""
    known = set(given)
    for _, args, out, _ in graph._ops:
        if all(a in known for a in args if isinstance(a, str)):
            known.add(out)
    return known


def _memory_keys_values(graph: GraphModule, values: dict, out: list) -> None:
    """Run the ops of `graph` that read known values only; for a call that reads known tensors besides its
    unknown piped input (a decoder block reading the memory), collect its cross-attentions' keys and values."""
    known = _known(graph, values)
    values = graph.run(dict(values), skip=frozenset(o for _, _, o, _ in graph._ops if o not in known))
    for op, args, res, target in graph._ops:
        if res in known or op != "call":
            continue
        memory = [values[a] if isinstance(a, str) and a in known else None for a in args[1:]]
        if any(m is not None for m in memory):
            _call(graph._modules[target], memory, out)


def _call(child: nn.Module, memory: list, out: list) -> None:
    """`child` called with an unknown piped input and `memory` (None where unknown), as GraphModule.run calls it."""
    if isinstance(child, Repeat):  # every iteration reads the same memory, in order
        bodies = [child._body] * child.count if child.shared else list(child._modules.values())
        for body in bodies:
            _call(body, memory, out)
    elif isinstance(child, GraphModule):
        _memory_keys_values(child, {n: m for n, m in zip(child._inputs[1:], memory) if m is not None}, out)
    elif hasattr(child, "memory_kv") and memory[0] is not None:  # cross-attention (seq2seq_modules.CrossAttention)
        out.extend(child.memory_kv(memory[0]))


class MemoryDecoder(Seq2SeqDecoder):
    """`decoder(tgt, *self_past, *memory) -> (logits, *self_present)`: past and present as Decoder's, memory the
    MemoryEncoder's keys and values (never empty: the encoder is not run, the source not read)."""

    def __init__(self, module: SpecModule):
        super().__init__(module)
        check_memory_only(self)

    def forward(self, tgt: torch.Tensor, *caches: torch.Tensor):
        logits, *present = super().forward(None, tgt, *caches)
        return (logits, *present[:2 * len(self.facts.cache)])
