"""Multi-head self-attention (Vaswani et al. 2017) with grouped-query (Ainslie et al. 2023) and multi-query
(Shazeer 2019) variants through `kv_heads`, rotary positions (Su et al. 2021) through `rope`, and a sliding window
(Mistral 7B) through `window`.

Parameters: one fused projection `qkv` [(heads + 2 kv_heads) head_dim, d] (nanoGPT's c_attn layout: q rows, then k,
then v) and the output projection `out` [d, heads head_dim].
"""

from __future__ import annotations

from ..shapes import ShapeError, concrete_count, max_extent
from .base import (
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


def _default_head_dim(a):
    if a.d % a.heads:
        raise ShapeError(f"d={a.d} is not divisible by heads={a.heads}; pass head_dim explicitly "
                         f"or choose heads dividing d")
    return a.d // a.heads


class Attention(Kind):
    name = "Attention"
    summary = "multi-head self-attention; GQA/MQA via kv_heads, rotary via rope, sliding window via window"
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
        Arg("window", int, 0, check=lambda v: non_negative(v) or int64(v),
            doc="sliding-window size; 0 means full attention"),
        Arg("dropout", float, 0.0, check=probability, doc="dropout on attention weights"),
    )
    decode_state = True  # keys and values of earlier positions come from the cache
    examples = (
        Example("16, 4", "float[2, seq <= 6, 16]"),
        Example("16, 4, kv_heads = 2, rope = true, bias = true", "float[2, seq <= 6, 16]"),
        # A window shorter than the sequence is counted at the window (the algorithm's FLOPs, as Mistral counts
        # them), while the torch module masks a full score matrix: examples keep window >= seq, so the counts of
        # the contract test (torch's FlopCounterMode) are the same work.
        Example("16, 2, head_dim = 6, causal = false, window = 5", "float[1, 5, 16]"),
    )
    params_doc = ("`qkv.weight [(heads + 2·kv_heads)·hd, d]`, `qkv.bias [(heads + 2·kv_heads)·hd]`, "
                  "`out.weight [d, heads·hd]`, `out.bias [d]`")
    shape_doc = "`float[..., seq, d]` → same; `heads % kv_heads == 0`; even `hd` with `rope`"
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
        return p

    def output_type(self, a, x):
        if a.heads % a.kv_heads:
            raise ShapeError(f"heads={a.heads} is not a multiple of kv_heads={a.kv_heads}")
        if a.rope and a.head_dim % 2:
            raise ShapeError(f"rotary positions need an even head_dim, got {a.head_dim}")
        expect_float(x, self.name)
        expect_last_dim(x, a.d, f"Attention(d={a.d})")
        if x.rank < 2:
            raise ShapeError(f"Attention expects [..., seq, {a.d}] but got {x}")
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
        return TorchForm("Attention", (), dict(a))

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
            parts.append("rope")
        if a.window:
            parts.append(f"window={a.window}")
        return f"Attention({', '.join(parts)})"
