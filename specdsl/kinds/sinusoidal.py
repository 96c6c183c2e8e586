"""Fixed sinusoidal positions (Vaswani et al. 2017, section 3.5): PE(pos, 2i) = sin(pos / base^(2i/dim)),
PE(pos, 2i+1) = cos(pos / base^(2i/dim)), added to the input. No parameters: the original Transformer counts none
for its positions. `halves = true` puts every sine first and every cosine after (fairseq, Hugging Face Marian)."""

from __future__ import annotations

from ..shapes import ShapeError
from .base import Arg, Example, Kind, TorchForm, expect_float, expect_last_dim, positive


def _even(v) -> str | None:
    return positive(v) or (None if v % 2 == 0 else "must be even (sines and cosines in pairs)")


class SinusoidalPositions(Kind):
    name = "SinusoidalPositions"
    summary = "adds fixed sine/cosine position vectors (the original Transformer's): [batch, seq, dim] -> same"
    args = (
        Arg("dim", int, check=_even, doc="vector width (even)"),
        Arg("base", float, 10000.0, check=positive, doc="the wavelengths' base"),
        Arg("halves", bool, False, doc="sines then cosines (fairseq, Marian) instead of interleaved (the paper)"),
    )
    decode_state = True  # while decoding, positions continue after the cached ones
    examples = (
        Example("8", "float[2, seq <= 6, 8]"),
        Example("6, base = 100.0, halves = true", "float[3, 5, 6]"),
    )
    shape_doc = "`float[..., seq, dim]` → same"

    def output_type(self, a, x):
        expect_float(x, self.name)
        expect_last_dim(x, a.dim, f"SinusoidalPositions({a.dim})")
        if x.rank < 2:
            raise ShapeError(f"SinusoidalPositions expects [..., seq, {a.dim}] but got {x}")
        return x

    def torch_form(self, a):
        return TorchForm("specdsl.backends.seq2seq_modules:SinusoidalPositions", (), dict(a))
