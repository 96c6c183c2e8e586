"""Cross-attention (Vaswani et al. 2017, the decoder's "encoder-decoder attention"): queries from the piped input,
keys and values from another tensor, `memory` (an encoder's output), of its own length.

`memory` is a tensor argument (`Arg(..., "tensor")`): the spec names a value in scope, `memory = enc`; this kind's
methods see its type, and the torch module receives it as forward's second argument. Parameters: `q` [heads
head_dim, d] on the input, one fused `kv` [2 kv_heads head_dim, memory_dim] on the memory (k rows, then v), and the
output projection `out` [d, heads head_dim]. There is no causal mask: every query reads the whole memory.
"""

from __future__ import annotations

import math

from ..shapes import ShapeError, concrete_count, format_shape, max_extent
from .base import Adaptable, Arg, Example, Kind, TorchForm, expect_float, expect_last_dim, positive, probability


def _default_head_dim(a):
    if a.d % a.heads:
        raise ShapeError(f"d={a.d} is not divisible by heads={a.heads}; pass head_dim explicitly "
                         f"or choose heads dividing d")
    return a.d // a.heads


def _tokens(t) -> int:
    """Positions of a [..., len, width] tensor with every symbolic dim taken as 1 (FLOPs per token)."""
    return concrete_count(t.shape[:-2]) * (t.shape[-2] if isinstance(t.shape[-2], int) else 1)


class CrossAttention(Kind):
    name = "CrossAttention"
    decode_state = True  # while decoding, the memory's keys and values come from the cache after the first step
    summary = ("multi-head attention from the input (queries) to `memory` (keys and values), another tensor of its "
               "own length: a decoder reading its encoder")
    args = (
        Arg("d", int, check=positive, doc="width of the input and output (the queries' side)"),
        Arg("heads", int, check=positive, doc="query heads"),
        Arg("memory", "tensor", doc="the tensor attended to, `[..., mem_len, memory_dim]`: a value in scope, "
                                    "such as the encoder's output"),
        Arg("kv_heads", int, lambda a: a.heads, check=positive, default_doc="heads",
            doc="key/value heads (GQA/MQA as in Attention)"),
        Arg("head_dim", int, _default_head_dim, check=positive, default_doc="d // heads", doc="width of one head"),
        Arg("memory_dim", int, lambda a: a.d, check=positive, default_doc="d", doc="width of `memory`"),
        Arg("bias", bool, False, doc="bias on the q and k, v projections"),
        Arg("out_bias", bool, lambda a: a.bias, default_doc="bias", doc="bias on the output projection"),
        Arg("dropout", float, 0.0, check=probability, doc="dropout on attention weights"),
        Arg("scale", float, lambda a: 1 / math.sqrt(a.head_dim), check=positive, default_doc="1 / sqrt(head_dim)",
            doc="factor on the scores q·k (T5: 1.0)"),
    )
    absent_args = {
        "causal": "cross-attention reads every position of its memory, so it has no causal mask; the decoder's "
                  "self-attention (Attention) is the causal one",
        "rope": "positions of two different sequences do not rotate against each other; cross-attention takes none",
        "window": "cross-attention reads every position of its memory",
    }
    examples = (
        Example("16, 4, memory = mem", "float[2, 3, 16]", (("mem", "float[2, 5, 16]"),)),
        Example("16, 4, memory = mem, kv_heads = 2, memory_dim = 12, bias = true", "float[batch, 4, 16]",
                (("mem", "float[batch, 6, 12]"),)),
        Example("16, 2, memory = mem, head_dim = 4, scale = 1.0", "float[2, 3, 16]", (("mem", "float[2, 5, 16]"),)),
    )
    params_doc = ("`q.weight [heads·hd, d]`, `kv.weight [2·kv_heads·hd, memory_dim]`, `out.weight [d, heads·hd]`; "
                  "with bias `q.bias`, `kv.bias`, and `out.bias [d]` with out_bias")
    shape_doc = ("`float[..., seq, d]` with memory `float[..., mem_len, memory_dim]` (same leading dims) → "
                 "`float[..., seq, d]`")
    flops_doc = ("`(2·d·heads·hd + 2·heads·hd·d + 4·S·heads·hd)·N' + 4·memory_dim·kv_heads·hd·M'`, S the memory's "
                 "length bound, M' its positions (symbolic dims as 1)")

    def params(self, a):
        hd = a.head_dim
        p = {"q.weight": (a.heads * hd, a.d)}
        if a.bias:
            p["q.bias"] = (a.heads * hd,)
        p["kv.weight"] = (2 * a.kv_heads * hd, a.memory_dim)
        if a.bias:
            p["kv.bias"] = (2 * a.kv_heads * hd,)
        p["out.weight"] = (a.d, a.heads * hd)
        if a.out_bias:
            p["out.bias"] = (a.d,)
        return p

    def output_type(self, a, x):
        if a.heads % a.kv_heads:
            raise ShapeError(f"heads={a.heads} is not a multiple of kv_heads={a.kv_heads}")
        expect_float(x, self.name)
        expect_last_dim(x, a.d, f"CrossAttention(d={a.d})")
        if x.rank < 2:
            raise ShapeError(f"CrossAttention expects [..., seq, {a.d}] but got {x}")
        m = a.memory
        if m.dtype != "float":
            raise ShapeError(f"CrossAttention's memory must be a float tensor but got {m}; token ids go through "
                             f"an Embedding (and an encoder) first")
        if m.rank != x.rank:
            raise ShapeError(f"CrossAttention's memory must be [..., mem_len, {a.memory_dim}] like the input "
                             f"{x}, but got {m}")
        if m.shape[-1] != a.memory_dim:
            raise ShapeError(f"CrossAttention's memory is {m}, {m.shape[-1]} wide, but memory_dim is "
                             f"{a.memory_dim}; pass memory_dim = {m.shape[-1]} or a memory of width "
                             f"{a.memory_dim}")
        if m.shape[:-2] != x.shape[:-2]:
            raise ShapeError(f"CrossAttention's memory {m} and input {x} differ before their length dims: "
                             f"{format_shape(m.shape[:-2])} vs {format_shape(x.shape[:-2])}")
        return x

    def context(self, a, x) -> int | None:
        """Keys one query attends to: the memory's length (its bound)."""
        return max_extent(a.memory.shape[-2])

    def flops(self, a, x):
        # Queries and output per input position; keys and values once per memory position; the scores and the
        # weighted sum at the memory's full length S (2 * 2 * S * heads * head_dim per query).
        hd = a.head_dim
        S = self.context(a, x) or 0
        per_query = 2 * a.d * a.heads * hd + 2 * a.heads * hd * a.d + 4 * S * a.heads * hd
        return per_query * _tokens(x) + 2 * a.memory_dim * 2 * a.kv_heads * hd * _tokens(a.memory)

    def memory_cache_shape(self, a):
        return (a.kv_heads, a.head_dim)

    def torch_form(self, a):
        # scale only where it is not the default: the forms of earlier specs stay as they were
        kwargs = {k: v for k, v in a.items() if k != "memory" and k != "scale"}
        if a.scale != 1 / math.sqrt(a.head_dim):
            kwargs["scale"] = a.scale
        return TorchForm("specdsl.backends.seq2seq_modules:CrossAttention", (), kwargs)

    def describe(self, a):
        parts = [f"d={a.d}", f"heads={a.heads}"]
        if a.kv_heads != a.heads:
            parts.append(f"kv_heads={a.kv_heads}")
        if a.head_dim * a.heads != a.d:
            parts.append(f"head_dim={a.head_dim}")
        if a.memory_dim != a.d:
            parts.append(f"memory_dim={a.memory_dim}")
        if a.scale != 1 / math.sqrt(a.head_dim):
            parts.append(f"scale={a.scale:g}")
        return f"CrossAttention({', '.join(parts)})"

    # ---- LoRA: the matrices an adapter may target (docs/language.md, "LoRA") ----
    def adaptable(self, a):
        q, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
        return (Adaptable("q", "q.weight", None, a.d, q),
                Adaptable("k", "kv.weight", (0, kv), a.memory_dim, kv),
                Adaptable("v", "kv.weight", (kv, 2 * kv), a.memory_dim, kv),
                Adaptable("kv", "kv.weight", None, a.memory_dim, 2 * kv),
                Adaptable("out", "out.weight", None, q, a.d))
