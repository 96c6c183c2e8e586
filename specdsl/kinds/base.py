"""What every layer kind declares: its arguments, parameters, output type, FLOPs, KV cache and torch form.

A kind is described once (DEVELOPERS.md, principle 1). The analysis, the torch backend and the ONNX export all read
the same declaration, so they cannot drift apart. Nothing here imports torch: `to_torch` imports it when
called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable

from ..shapes import ShapeError, TensorType

REQUIRED = object()


@dataclass(frozen=True)
class TorchForm:
    """How a layer becomes torch: a constructor ("nn.Linear", or a class of backends/torch_modules.py) and its
    arguments. The torch backend calls it; `--emit-torch` writes it as source. One declaration, two uses."""

    constructor: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def source(self) -> str:
        parts = [repr(v) for v in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.constructor}({', '.join(parts)})"


@dataclass(frozen=True)
class Arg:
    """One argument of a kind. `type` is int, float, bool, str, or "ref" (the label of another layer)."""

    name: str
    type: Any
    default: Any = REQUIRED  # a value, or a function of the arguments resolved so far
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None  # returns a complaint, or None when fine
    doc: str = ""


def positive(v) -> str | None:
    return None if v > 0 else "must be positive"


def non_negative(v) -> str | None:
    return None if v >= 0 else "must not be negative"


def probability(v) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def int64(v) -> str | None:
    """Positions and indices reach torch as int64 (a larger Python int is an OverflowError mid-forward); no
    sequence is anywhere near that long."""
    return None if -2**63 <= v < 2**63 else "must fit in 64 bits, like torch's positions and indices"


class Args(dict):
    """Resolved arguments, readable as attributes: a.d, a.heads."""

    __getattr__ = dict.__getitem__


class Kind:
    name: str = ""
    summary: str = ""
    args: tuple[Arg, ...] = ()
    embedding: bool = False  # its parameters count as embedding parameters
    tie_param: str | None = None  # the parameter that `tie = other_layer` makes one tensor with other's

    # ---- declarations read by the analysis ----
    def params(self, a: Args) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape. Names become the torch parameter names under the layer's path."""
        return {}

    def output_type(self, a: Args, x: TensorType) -> TensorType:
        return x

    def flops(self, a: Args, x: TensorType) -> int:
        """Forward FLOPs of one call, 2 per multiply-add, every symbolic dim taken as 1 (so: per token)."""
        return 0

    def active_params(self, a: Args) -> int | None:
        """Parameters one token touches, where fewer than all (mixture of experts); None means all."""
        return None

    def cache_shape(self, a: Args) -> tuple[int, int] | None:
        """(kv_heads, head_dim) of the keys, and of the values, this layer caches per token for incremental
        decoding (attention), or None."""
        return None

    def kv_cache_per_token(self, a: Args) -> int:
        """Elements cached per token for incremental decoding: keys and values (cache_shape)."""
        shape = self.cache_shape(a)
        return 2 * prod(shape) if shape else 0

    def id_range(self, a: Args) -> int | None:
        """For a layer that takes int ids (an embedding): how many it knows, 0 to n - 1; None otherwise."""
        return None

    def reads_later_positions(self, a: Args) -> bool:
        """Whether an output position reads later positions of its input (an encoder's attention): next-token
        training and a KV cache need no layer to."""
        return False

    def context(self, a: Args, x: TensorType) -> int | None:
        """The sequence length this layer's FLOPs assume (attention), or None when it has none."""
        return None

    def describe(self, a: Args) -> str:
        shown = [str(a[arg.name]) for arg in self.args if arg.default is REQUIRED]
        return f"{self.name}({', '.join(shown)})"

    # ---- the torch form: declared as data, so the torch backend builds it and --emit-torch writes it ----
    def torch_form(self, a: Args) -> TorchForm:
        raise NotImplementedError(f"{self.name} has no torch form")

    # ---- helpers for kinds ----
    def param_count(self, a: Args) -> int:
        return sum(prod(s) for s in self.params(a).values())


def expect_last_dim(x: TensorType, n: int, what: str) -> None:
    """The common shape rule: the last dim of the input must be `n`."""
    if x.rank == 0 or x.shape[-1] != n:
        raise ShapeError(f"{what} expects input [..., {n}] but got {x}")


def expect_float(x: TensorType, what: str) -> None:
    if x.dtype != "float":
        raise ShapeError(f"{what} expects a float tensor but got {x}; token ids go through an Embedding first")
