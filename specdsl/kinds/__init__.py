"""The registry of layer kinds: the name used in the language -> its one declaration."""

from __future__ import annotations

from .attention import Attention
from .base import REQUIRED, Arg, Args, Kind
from .conv import AvgPool2d, Conv2d, Flatten, MaxPool2d, Select
from .elementwise import ACTIVATIONS, GELU, Dropout, ReLU, SiLU, Softmax, Tanh
from .embedding import Embedding, PositionalEmbedding
from .linear import Linear
from .mlp import MLP, GatedMLP, MoE
from .norm import LayerNorm, RMSNorm

KINDS: dict[str, Kind] = {k.name: k for k in (
    Embedding(), PositionalEmbedding(), Linear(), LayerNorm(), RMSNorm(), Dropout(),
    GELU(), ReLU(), SiLU(), Tanh(), Softmax(),
    Attention(), MLP(), GatedMLP(), MoE(),
    Conv2d(), MaxPool2d(), AvgPool2d(), Flatten(), Select(),
)}

__all__ = ["KINDS", "Kind", "Arg", "Args", "REQUIRED", "ACTIVATIONS"]
