"""Token and learned positional embeddings (GPT-2's wte and wpe, BERT's word/position/type embeddings)."""

from __future__ import annotations

from ..shapes import ShapeError, TensorType, max_extent
from .base import Arg, Example, Kind, TorchForm, expect_float, expect_last_dim, positive


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
    """Learned absolute positions, added to the input: x + weight[0:T] (GPT-1/2, BERT)."""

    name = "PositionalEmbedding"
    summary = "adds a learned position vector: [batch, seq, dim] -> same"
    args = (Arg("num", int, check=positive, doc="number of positions (the context length)"),
            Arg("dim", int, check=positive))
    embedding = True
    decode_state = True  # positions continue after the cached ones
    examples = (Example("16, 8", "float[2, seq <= 16, 8]"),)
    params_doc = "`weight [num, dim]` (embedding)"
    shape_doc = "`float[..., seq, dim]` → same; `seq`'s bound ≤ `num`"

    def params(self, a):
        return {"weight": (a.num, a.dim)}

    def output_type(self, a, x):
        expect_float(x, self.name)
        expect_last_dim(x, a.dim, f"PositionalEmbedding({a.num}, {a.dim})")
        if x.rank < 2:
            raise ShapeError(f"PositionalEmbedding expects [..., seq, {a.dim}] but got {x}")
        longest = max_extent(x.shape[-2])
        if longest is not None and longest > a.num:
            raise ShapeError(f"sequences of up to {longest} positions but PositionalEmbedding has only {a.num}")
        return x

    def torch_form(self, a):
        return TorchForm("PositionalEmbedding", (a.num, a.dim))
