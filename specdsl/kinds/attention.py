"""Multi-head self-attention (Vaswani et al. 2017) with grouped-query (Ainslie et al. 2023) and multi-query
(Shazeer 2019) variants through `kv_heads`, rotary positions (Su et al. 2021) through `rope`, and a sliding window
(Mistral 7B) through `window`.

The quirks of real families, each an argument whose default is the plain form:
- `rotary_dims`: rotate only the first n dims of each head (GPT-NeoX and Pythia rotate 25%, `rotary_pct = 0.25` in
  their Hugging Face configs; Phi-2 32 of 80, `partial_rotary_factor = 0.4`), the frequencies taken over n dims;
- `rope_layout`: "half" pairs dim i with i + n/2 (GPT-NeoX, Hugging Face LLaMA's rotate_half), "interleaved" pairs
  2i with 2i + 1 (GPT-J, Meta's LLaMA reference code, RoFormer);
- `scale`: the factor on q·k (1/sqrt(head_dim) by default, Vaswani et al. 2017; T5 uses 1, Raffel et al. 2020);
- `qk_norm`: RMSNorm on q and on k before rotary positions; `qk_norm_scope` says over what: "head", each head's
  head_dim (Qwen3, Hugging Face Qwen3Attention's q_norm and k_norm), or "full", the whole projection at once,
  heads·head_dim for q and kv_heads·head_dim for k (OLMo 2, Team OLMo 2024, "2 OLMo 2 Furious"; Hugging Face
  Olmo2Attention's q_norm and k_norm);
- `position_bias`: a tensor added to the scores before softmax, [1 or batch, heads, seq, seq]: T5's relative
  position bias (RelativePositionBias, Raffel et al. 2020), computed once by a stack and shared by its layers;
- `alibi`: attention with linear biases (Press et al. 2022), slope_h * (key position - query position) added to
  the scores, the slopes of BLOOM and MPT (a geometric sequence from 2^(-8/n); for a head count n that is not a
  power of two, those of the power below, then every other slope of the power above). No parameters.

Parameters: one fused projection `qkv` [(heads + 2 kv_heads) head_dim, d] (nanoGPT's c_attn layout: q rows, then k,
then v), the output projection `out` [d, heads head_dim], and with qk_norm `q_norm`/`k_norm` [head_dim] (scope
"full": [heads head_dim] and [kv_heads head_dim]).
"""

from __future__ import annotations

import math

from ..shapes import ShapeError, concrete_count, max_extent
from .base import (
    Adaptable,
    Arg,
    Example,
    Kind,
    TorchForm,
    expect_float,
    expect_last_dim,
    int64,
    non_negative,
    positive,
    probability,
)

# What a q/k norm normalises over: one head's dims (Qwen3) or the whole projection, all heads at once (OLMo 2).
QK_NORM_SCOPES = ("head", "full")


def _default_head_dim(a):
    if a.d % a.heads:
        raise ShapeError(f"d={a.d} is not divisible by heads={a.heads}; pass head_dim explicitly "
                         f"or choose heads dividing d")
    return a.d // a.heads


class Attention(Kind):
    name = "Attention"
    summary = ("multi-head self-attention; GQA/MQA via kv_heads, rotary via rope (partial, interleaved), sliding "
               "window via window, q/k norms, ALiBi")
    args = (
        Arg("d", int, check=positive, doc="model width (input and output)"),
        Arg("heads", int, check=positive, doc="query heads"),
        Arg("kv_heads", int, lambda a: a.heads, check=positive, default_doc="heads",
            doc="key/value heads: heads (MHA), 1 (MQA), between (GQA)"),
        Arg("head_dim", int, _default_head_dim, check=positive, default_doc="d // heads",
            doc="width of one head (then `d % heads` must be 0)"),
        Arg("causal", bool, True, doc="mask future positions (decoder) or not (encoder)"),
        Arg("bias", bool, False, doc="bias on the q, k, v projection"),
        Arg("out_bias", bool, lambda a: a.bias, default_doc="bias", doc="bias on the output projection"),
        Arg("rope", bool, False, doc="rotary position embedding on q and k"),
        Arg("rope_theta", float, 10000.0, check=positive, doc="rotary base frequency"),
        Arg("rotary_dims", int, lambda a: a.head_dim, check=positive, default_doc="head_dim",
            doc="with rope: how many dims of each head rotate, the first ones (even, at most head_dim; "
                "GPT-NeoX: head_dim // 4)"),
        Arg("rope_layout", str, "half", choices=("half", "interleaved"),
            doc="with rope: dim i pairs with i + rotary_dims/2 (half: GPT-NeoX, HF LLaMA) or 2i with 2i + 1 "
                "(interleaved: GPT-J)"),
        Arg("scale", float, lambda a: 1 / math.sqrt(a.head_dim), check=positive, default_doc="1 / sqrt(head_dim)",
            doc="factor on the scores q·k (T5: 1.0)"),
        Arg("qk_norm", bool, False, doc="RMSNorm on q and k before rope (Qwen3, OLMo 2)"),
        Arg("qk_norm_eps", float, 1e-6, check=positive, doc="eps of those RMSNorms"),
        Arg("qk_norm_scope", str, "head", choices=QK_NORM_SCOPES,
            doc="with qk_norm: over each head's head_dim (head: Qwen3) or over the whole projection, heads·hd for "
                "q and kv_heads·hd for k (full: OLMo 2)"),
        Arg("alibi", bool, False, doc="linear biases on the scores, BLOOM's and MPT's slopes (Press et al. 2022)"),
        Arg("window", int, 0, check=lambda v: non_negative(v) or int64(v),
            doc="sliding-window size; 0 means full attention"),
        Arg("dropout", float, 0.0, check=probability, doc="dropout on attention weights"),
        Arg("position_bias", "tensor", None, default_doc="none",
            doc="a tensor added to the scores before softmax, `[1 or batch, heads, seq, seq]`: T5's relative "
                "position bias (RelativePositionBias), computed once and shared by a stack"),
    )
    decode_state = True  # keys and values of earlier positions come from the cache
    examples = (
        Example("16, 4", "float[2, seq <= 6, 16]"),
        Example("16, 4, kv_heads = 2, rope = true, bias = true", "float[2, seq <= 6, 16]"),
        # A window shorter than the sequence is counted at the window (the algorithm's FLOPs, as Mistral counts
        # them), while the torch module masks a full score matrix: examples keep window >= seq, so the counts of
        # the contract test (torch's FlopCounterMode) are the same work.
        Example("16, 2, head_dim = 6, causal = false, window = 5", "float[1, 5, 16]"),
        Example('24, 2, rope = true, rotary_dims = 4, rope_layout = "interleaved", scale = 0.5',
                "float[2, seq <= 6, 24]"),
        Example("16, 4, kv_heads = 2, head_dim = 6, rope = true, rotary_dims = 2, qk_norm = true, qk_norm_eps = 1e-5",
                "float[2, seq <= 5, 16]"),
        # OLMo 2: q and k normalised over all their heads at once (weights [heads·hd] and [kv_heads·hd])
        Example('16, 4, kv_heads = 2, head_dim = 6, rope = true, qk_norm = true, qk_norm_scope = "full"',
                "float[2, seq <= 5, 16]"),
        Example("18, 3, alibi = true, bias = true, out_bias = false", "float[2, seq <= 6, 18]"),
        Example("20, 5, alibi = true, causal = false, window = 7", "float[1, 7, 20]"),
        # T5: no 1/sqrt(head_dim), a relative position bias shared by the stack
        Example("16, 4, scale = 1.0, position_bias = pb", "float[2, seq <= 6, 16]",
                (("pb", "float[1, 4, seq <= 6, seq <= 6]"),)),
        Example("16, 2, head_dim = 4, causal = false, position_bias = pb", "float[batch, 5, 16]",
                (("pb", "float[batch, 2, 5, 5]"),)),
    )
    params_doc = ("`qkv.weight [(heads + 2·kv_heads)·hd, d]`, `qkv.bias [(heads + 2·kv_heads)·hd]`, "
                  "`out.weight [d, heads·hd]`, `out.bias [d]`; with qk_norm `q_norm.weight [hd]`, "
                  "`k_norm.weight [hd]` (scope full: `[heads·hd]`, `[kv_heads·hd]`)")
    shape_doc = ("`float[..., seq, d]` → same; `heads % kv_heads == 0`; with `rope` an even `rotary_dims` "
                 "≤ `hd`; `qk_norm_scope = \"full\"` only with `qk_norm`")
    flops_doc = ("`(2·d·(heads + 2·kv_heads)·hd + 2·heads·hd·d + 4·T·heads·hd)·N'`, T the keys a query reads "
                 "(the sequence bound, cut by the window)")

    def params(self, a):
        qkv_rows = (a.heads + 2 * a.kv_heads) * a.head_dim
        p = {"qkv.weight": (qkv_rows, a.d)}
        if a.bias:
            p["qkv.bias"] = (qkv_rows,)
        p["out.weight"] = (a.d, a.heads * a.head_dim)
        if a.out_bias:
            p["out.bias"] = (a.d,)
        if a.qk_norm:
            full = a.qk_norm_scope == "full"
            p["q_norm.weight"] = (a.heads * a.head_dim if full else a.head_dim,)
            p["k_norm.weight"] = (a.kv_heads * a.head_dim if full else a.head_dim,)
        return p

    def output_type(self, a, x):
        if a.heads % a.kv_heads:
            raise ShapeError(f"heads={a.heads} is not a multiple of kv_heads={a.kv_heads}")
        if a.rope and a.rotary_dims == a.head_dim and a.head_dim % 2:
            raise ShapeError(f"rotary positions need an even head_dim, got {a.head_dim}")
        if a.rope and a.rotary_dims > a.head_dim:
            raise ShapeError(f"rotary_dims={a.rotary_dims} is more than head_dim={a.head_dim}")
        if a.rope and a.rotary_dims % 2:
            raise ShapeError(f"rotary positions rotate pairs of dims: rotary_dims must be even, got {a.rotary_dims}")
        if a.qk_norm_scope != "head" and not a.qk_norm:
            raise ShapeError(f'qk_norm_scope = "{a.qk_norm_scope}" says what the q/k norms normalise over, but '
                             f"there are none: add qk_norm = true")
        expect_float(x, self.name)
        expect_last_dim(x, a.d, f"Attention(d={a.d})")
        if x.rank < 2:
            raise ShapeError(f"Attention expects [..., seq, {a.d}] but got {x}")
        pb = a.get("position_bias")
        if pb is not None:
            seq = x.shape[-2]
            if (x.rank != 3 or pb.rank != 4 or pb.dtype != "float" or pb.shape[1] != a.heads
                    or pb.shape[2:] != (seq, seq) or pb.shape[0] not in (1, x.shape[0])):
                raise ShapeError(f"Attention's position_bias must be float[1 or batch, {a.heads}, seq, seq] for "
                                 f"the input {x}, but got {pb}")
        return x

    def context(self, a, x) -> int | None:
        """Keys one query attends to at most: the sequence bound, cut by the sliding window."""
        longest = max_extent(x.shape[-2])
        if longest is not None and a.window:
            return min(longest, a.window)
        return longest

    def flops(self, a, x):
        # Projections: 2 per multiply-add. Scores QK^T and the weighted sum AV: 2 * 2 * T * heads * head_dim per
        # query token at context T, without a discount for the causal mask (PaLM, Chowdhery et al. 2022, App. B;
        # Chinchilla, Hoffmann et al. 2022, App. F).
        hd = a.head_dim
        proj = 2 * a.d * (a.heads + 2 * a.kv_heads) * hd + 2 * a.heads * hd * a.d
        T = self.context(a, x) or 0
        tokens = concrete_count(x.shape[:-2]) * (x.shape[-2] if isinstance(x.shape[-2], int) else 1)
        return (proj + 4 * T * a.heads * hd) * tokens

    def torch_form(self, a):
        return TorchForm("Attention", (), {k: v for k, v in a.items() if k != "position_bias"})

    def cache_shape(self, a):
        return (a.kv_heads, a.head_dim)

    def reads_later_positions(self, a):
        return not a.causal

    def describe(self, a):
        parts = [f"d={a.d}", f"heads={a.heads}"]
        if a.kv_heads != a.heads:
            parts.append(f"kv_heads={a.kv_heads}")
        if a.head_dim * a.heads != a.d:
            parts.append(f"head_dim={a.head_dim}")
        if not a.causal:
            parts.append("bidirectional")
        if a.rope:
            parts.append("rope" if a.rotary_dims == a.head_dim else f"rope {a.rotary_dims}/{a.head_dim}")
            if a.rope_layout != "half":
                parts.append(a.rope_layout)
        if a.qk_norm:
            parts.append("qk_norm" if a.qk_norm_scope == "head" else f"qk_norm {a.qk_norm_scope}")
        if a.alibi:
            parts.append("alibi")
        if a.window:
            parts.append(f"window={a.window}")
        if a.get("position_bias") is not None:
            parts.append("position_bias")
        if a.scale != 1 / math.sqrt(a.head_dim):
            parts.append(f"scale={a.scale:g}")
        return f"Attention({', '.join(parts)})"

    # ---- LoRA: the matrices an adapter may target (docs/language.md, "LoRA") ----
    def adaptable(self, a):
        # q, k and v are row slices of the fused qkv weight (q rows, then k, then v): what Hugging Face's separate
        # q_proj, k_proj and v_proj are, so LoRA on "q_proj, v_proj" is `*.attn.q, *.attn.v` here.
        q, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
        return (Adaptable("q", "qkv.weight", (0, q), a.d, q),
                Adaptable("k", "qkv.weight", (q, q + kv), a.d, kv),
                Adaptable("v", "qkv.weight", (q + kv, q + 2 * kv), a.d, kv),
                Adaptable("qkv", "qkv.weight", None, a.d, q + 2 * kv),
                Adaptable("out", "out.weight", None, q, a.d))
