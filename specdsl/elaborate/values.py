"""What elaboration computes with: tensor values, the poison value of something that failed, scopes of names, and
the modules being built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import ir
from ..errors import Span
from ..shapes import TensorType

TYPES = {"int": int, "float": float, "bool": bool, "string": str}  # a declared type -> the Python type of its values
TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "string"}


class Poison:
    """The value of something that already failed: using it fails silently (the first error was reported)."""


POISON = Poison()


@dataclass(frozen=True)
class TVal:
    """A tensor value during elaboration: its type and its name in the module's dataflow."""

    type: TensorType
    ref: str


def type_name(v: Any) -> str:
    """A value's type as messages name it: int, float, bool, string, or the tensor's type."""
    if isinstance(v, TVal):
        return f"tensor {v.type}"
    return TYPE_NAMES.get(type(v), type(v).__name__)


@dataclass
class Scope:
    """Names visible to expressions: hyperparameters and local values (tensors or scalars)."""

    values: dict[str, Any]

    def child(self) -> Scope:
        return Scope(dict(self.values))


@dataclass
class ModuleBuilder:
    """Collects one Module's children and ops while its statements are elaborated."""

    name: str
    label: str
    span: Span
    path: str  # path prefix of this module's children ("h.{i}." inside a non-shared repeat)
    parent: ModuleBuilder | None = None
    in_repeat: bool = False  # under a non-shared repeat: its tensors have no single path
    children: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    names: dict[str, Span] = field(default_factory=dict)
    labels: dict[str, ir.Layer] = field(default_factory=dict)
    label_paths: dict[str, str] = field(default_factory=dict)
    auto: dict[str, int] = field(default_factory=dict)
    counter: int = 0  # the root's: value refs are numbered across the whole model, so no two modules share one
    local: set[str] = field(default_factory=set)  # the refs defined in this module: its inputs and its ops' outputs
    # Tensors of enclosing modules this one reads (a repeat body's `memory = enc`, a block's tensor parameter):
    # their refs, in the order first read. Each is an extra input of the module, passed by its caller.
    captures: list[str] = field(default_factory=list)

    def fresh(self) -> str:
        root = self
        while root.parent is not None:
            root = root.parent
        root.counter += 1
        ref = f"%{root.counter}"
        self.local.add(ref)
        return ref

    def localize(self, ref: str) -> str:
        """A tensor value's ref as this module reads it: its own, or one of an enclosing module's, which becomes
        an extra input here (and, through every module in between, there). Refs are unique in a model, so the
        name stays the same."""
        if ref in self.local or self.parent is None:
            return ref
        self.parent.localize(ref)
        self.captures.append(ref)
        self.local.add(ref)
        return ref

    def emit(self, op: str, reads: tuple, target: str | None = None) -> str:
        """Append an op reading `reads` (refs, or constants of an arithmetic op) and return its output's ref. Every
        ref read is localized: a tensor of an enclosing module (`m = memory -> LayerNorm(d)` in a block, where
        memory is the caller's) becomes an input of this module, as a layer's tensor argument does."""
        args = tuple(self.localize(r) if isinstance(r, str) else r for r in reads)
        out = self.fresh()
        self.ops.append(ir.Op(op, args, out, target=target))
        return out

    def find_label(self, label: str):
        b = self
        while b is not None:
            if label in b.labels:
                return b.labels[label], b.label_paths[label], b.in_repeat
            b = b.parent
        return None

    def all_labels(self) -> list[str]:
        out, b = [], self
        while b is not None:
            out.extend(b.labels)
            b = b.parent
        return out
