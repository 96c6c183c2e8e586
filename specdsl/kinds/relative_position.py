"""T5's relative position bias (Raffel et al. 2020, section 2.1; Shaw et al. 2018): one learned scalar per head
and per bucket of the distance key position - query position, added to the attention scores. Small distances get
a bucket each, larger ones logarithmically wider buckets up to `max_distance`, beyond it the last; with
`bidirectional` half the buckets are for keys after the query (the encoder), without it keys after the query all
share bucket 0 (the decoder, whose mask hides them). The bucketing is Hugging Face T5Attention's
`_relative_position_bucket` (after Mesh TensorFlow) exactly.

The layer reads only its input's length: x [..., seq, width] gives the bias [1, heads, seq, seq], which a stack's
Attention layers take as their tensor argument `position_bias` (T5 computes it in the first layer and passes it
on). Parameter: `weight` [buckets, heads] (Hugging Face's `relative_attention_bias.weight`). While decoding with a
KV cache the queries are the last positions: the bias is [1, heads, new, cached + new].
"""

from __future__ import annotations

from ..shapes import ShapeError, TensorType
from .base import Arg, Example, Kind, TorchForm, positive


class RelativePositionBias(Kind):
    name = "RelativePositionBias"
    summary = ("T5's bucketed relative position bias [1, heads, seq, seq] from the input's length, for "
               "Attention's `position_bias`")
    args = (
        Arg("heads", int, check=positive, doc="attention heads (one bias per head)"),
        Arg("buckets", int, 32, check=lambda v: None if v >= 2 else "must be at least 2",
            doc="distance buckets (T5: 32)"),
        Arg("max_distance", int, 128, check=positive, doc="distances from here on share the last bucket (T5: 128)"),
        Arg("bidirectional", bool, True, doc="separate buckets for keys after the query (encoder) or not (decoder)"),
    )
    decode_state = True  # while decoding, the queries are the positions after the cached ones
    examples = (
        Example("4", "float[2, seq <= 6, 16]"),
        Example("3, buckets = 8, max_distance = 5, bidirectional = false", "float[1, 12, 8]"),
    )
    params_doc = "`weight [buckets, heads]`"
    shape_doc = "`float[..., seq, width]` → `float[1, heads, seq, seq]`"
    flops_doc = "0 (a lookup)"

    def params(self, a):
        return {"weight": (a.buckets, a.heads)}

    def output_type(self, a, x):
        if x.rank < 2:
            raise ShapeError(f"RelativePositionBias reads the length of [..., seq, width] but got {x}")
        if a.bidirectional and a.buckets % 2:
            raise ShapeError(f"a bidirectional RelativePositionBias splits its buckets in two halves: buckets must "
                             f"be even, got {a.buckets}")
        seq = x.shape[-2]
        return TensorType("float", (1, a.heads, seq, seq))

    def torch_form(self, a):
        return TorchForm("RelativePositionBias", (), dict(a))

    def describe(self, a):
        parts = [f"heads={a.heads}", f"buckets={a.buckets}", f"max_distance={a.max_distance}"]
        if not a.bidirectional:
            parts.append("causal")
        return f"RelativePositionBias({', '.join(parts)})"
