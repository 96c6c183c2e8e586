"""Tensor types for static shape inference: a dtype and a shape whose dims are ints or named symbols."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod


@dataclass(frozen=True)
class Sym:
    """A symbolic dimension (batch, seq), with an optional upper bound (`seq <= ctx`)."""

    name: str
    bound: int | None = None

    def __str__(self) -> str:
        return self.name if self.bound is None else f"{self.name}<={self.bound}"


Dim = int | Sym


@dataclass(frozen=True)
class TensorType:
    dtype: str  # "int" | "float"
    shape: tuple[Dim, ...]

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_last(self, n: int, dtype: str | None = None) -> TensorType:
        return TensorType(dtype or self.dtype, self.shape[:-1] + (n,))


def format_shape(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def concrete_count(dims: tuple[Dim, ...]) -> int:
    """How many items the dims hold when every symbolic dim is 1: FLOPs per token, or per example."""
    return prod(d for d in dims if isinstance(d, int))


def max_extent(dim: Dim) -> int | None:
    """The largest size a dim can take: its value, its bound, or None when unbounded."""
    if isinstance(dim, int):
        return dim
    return dim.bound


class ShapeError(Exception):
    """Raised by a kind's shape rule; the elaborator turns it into a located SpecError."""
