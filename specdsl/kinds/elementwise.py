"""Parameter-free element-wise layers: dropout, a constant scale, and activations."""

from __future__ import annotations

from ..shapes import ShapeError
from .base import Arg, Example, Kind, TorchForm, expect_float, probability

# The activation names accepted wherever a kind takes `act = ...` (MLP, GatedMLP, MoE).
# gelu is exact erf GELU (BERT, GPT-1); gelu_tanh is the tanh approximation (GPT-2's "gelu_new").
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "tanh")


class Dropout(Kind):
    name = "Dropout"
    summary = "zeroes elements with probability p while training"
    args = (Arg("p", float, 0.0, check=probability, doc="probability of zeroing an element"),)
    examples = (Example("0.1", "float[2, 3, 12]"),)
    # nn.Dropout in eval mode returns its input: skipping the call saves ~9 us a layer (F.dropout's checks and
    # nn.Module.__call__), 2 a transformer block, at every generated token.
    identity_in_eval = True

    def output_type(self, a, x):
        expect_float(x, self.name)
        return x

    def describe(self, a):
        return f"Dropout({a.p})"

    def torch_form(self, a):
        return TorchForm("nn.Dropout", (a.p,))


class Scale(Kind):
    """x * factor, a constant: Gemma multiplies its token embeddings by sqrt(d) (Gemma Team 2024; Hugging Face
    GemmaTextScaledWordEmbedding's embed_scale, hidden_size**0.5), as the original Transformer did
    (Vaswani et al. 2017, section 3.4)."""

    name = "Scale"
    summary = "multiplies by a constant: x * factor"
    args = (Arg("factor", float, doc="the constant, e.g. `sqrt(d)`"),)
    examples = (Example("sqrt(12)", "float[2, 3, 12]"), Example("-0.5", "float[4, 6]"))

    def output_type(self, a, x):
        expect_float(x, self.name)
        return x

    def describe(self, a):
        return f"Scale({a.factor:g})"

    def torch_form(self, a):
        return TorchForm("Scale", (a.factor,))


class _Activation(Kind):
    examples = (Example("", "float[2, 3, 12]"),)

    def output_type(self, a, x):
        expect_float(x, self.name)
        return x

    def describe(self, a):
        return self.name


class GELU(_Activation):
    name = "GELU"
    summary = "Gaussian error linear unit (Hendrycks & Gimpel 2016)"
    args = (Arg("approximate", str, "none", choices=("none", "tanh")),)
    examples = (Example("", "float[2, 3, 12]"), Example('approximate = "tanh"', "float[5, 12]"))

    def torch_form(self, a):
        return TorchForm("nn.GELU", (), {"approximate": a.approximate})


class ReLU(_Activation):
    name = "ReLU"
    summary = "max(x, 0)"

    def torch_form(self, a):
        return TorchForm("nn.ReLU")


class SiLU(_Activation):
    name = "SiLU"
    summary = "x * sigmoid(x) (swish)"

    def torch_form(self, a):
        return TorchForm("nn.SiLU")


class Tanh(_Activation):
    name = "Tanh"
    summary = "hyperbolic tangent"

    def torch_form(self, a):
        return TorchForm("nn.Tanh")


class Softmax(_Activation):
    name = "Softmax"
    summary = "softmax over a dim (the last by default)"
    args = (Arg("dim", int, -1),)
    examples = (Example("", "float[2, 3, 12]"), Example("dim = 1", "float[2, 3, 12]"))

    def output_type(self, a, x):
        if not -x.rank <= a.dim < x.rank:
            raise ShapeError(f"Softmax(dim={a.dim}) is out of range for {x}")
        return super().output_type(a, x)

    def torch_form(self, a):
        return TorchForm("Softmax", (a.dim,))
