"""Token and learned positional embeddings (GPT-2's wte and wpe, BERT's word/position/type embeddings)."""

from __future__ import annotations

from ..shapes import ShapeError, TensorType, max_extent
from .base import Arg, Example, Kind, TorchForm, expect_float, expect_last_dim, int64, non_negative, positive


class Embedding(Kind):
    name = "Embedding"
    summary = "lookup table: int ids [...] -> vectors [..., dim]"
    args = (Arg("num", int, check=positive, doc="vocabulary size"),
            Arg("dim", int, check=positive, doc="vector width"))
    embedding = True
    tie_param = "weight"
    examples = (Example("50, 8", "int[2, 7]"),)
    params_doc = "`weight [num, dim]` (embedding)"
    shape_doc = "`int[...]` → `float[..., dim]`"

    def params(self, a):
        return {"weight": (a.num, a.dim)}

    def output_type(self, a, x):
        if x.dtype != "int":
            raise ShapeError(f"Embedding expects int token ids but got {x}")
        return TensorType("float", x.shape + (a.dim,))

    def torch_form(self, a):
        return TorchForm("nn.Embedding", (a.num, a.dim))

    def id_range(self, a):
        return a.num


class PositionalEmbedding(Kind):
    """Learned absolute positions, added to the input: x + weight[offset:offset + T] (GPT-1/2, BERT; OPT reads
    position p at row p + 2: Hugging Face OPTLearnedPositionalEmbedding, 2,050 rows for a 2,048 context)."""

    name = "PositionalEmbedding"
    summary = "adds a learned position vector: [batch, seq, dim] -> same"
    args = (Arg("num", int, check=positive, doc="number of positions (the context length)"),
            Arg("dim", int, check=positive),
            Arg("offset", int, 0, check=lambda v: non_negative(v) or int64(v),
                doc="position p reads row p + offset (OPT: 2)"))
    embedding = True
    decode_state = True  # positions continue after the cached ones
    examples = (Example("16, 8", "float[2, seq <= 16, 8]"), Example("12, 8, offset = 2", "float[2, seq <= 10, 8]"))
    params_doc = "`weight [num, dim]` (embedding)"
    shape_doc = "`float[..., seq, dim]` → same; `seq`'s bound + `offset` ≤ `num`"

    def params(self, a):
        return {"weight": (a.num, a.dim)}

    def output_type(self, a, x):
        expect_float(x, self.name)
        expect_last_dim(x, a.dim, f"PositionalEmbedding({a.num}, {a.dim})")
        if x.rank < 2:
            raise ShapeError(f"PositionalEmbedding expects [..., seq, {a.dim}] but got {x}")
        longest = max_extent(x.shape[-2])
        if longest is not None and longest + a.offset > a.num:
            rows = f"{a.num} rows from row {a.offset}" if a.offset else f"only {a.num}"
            raise ShapeError(f"sequences of up to {longest} positions but PositionalEmbedding has {rows}")
        return x

    def describe(self, a):
        return f"PositionalEmbedding({a.num}, {a.dim}, offset={a.offset})" if a.offset else \
            f"PositionalEmbedding({a.num}, {a.dim})"

    def torch_form(self, a):
        return TorchForm("PositionalEmbedding", (a.num, a.dim), {"offset": a.offset} if a.offset else {})
