"""The syntax tree: small frozen dataclasses, each with the Span of the text it came from.

Produced by parse.py, consumed by specdsl/elaborate/. No meaning here: names are not resolved and nothing is evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .errors import Span

# ---- expressions ----


@dataclass(frozen=True)
class Number:
    value: int | float
    span: Span


@dataclass(frozen=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * / // % ** == != < <= > >= and or
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class UnaryOp:
    op: str  # - + not
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Arguments:
    positional: tuple[Expr, ...]
    keyword: tuple[tuple[str, Expr, Span], ...]


@dataclass(frozen=True)
class Call:
    """A function call on hyperparameters: min(a, b), int(x)."""

    func: str
    args: Arguments
    span: Span


@dataclass(frozen=True)
class LayerCall:
    """A pipeline stage: a primitive layer or a block, with its arguments, optionally labelled."""

    callee: str
    args: Arguments
    label: str | None
    span: Span  # the callee's name
    label_span: Span | None = None


@dataclass(frozen=True)
class Repeat:
    """`repeat N [shared] { stage -> stage ... }`: fresh weights per iteration unless shared."""

    count: Expr
    shared: bool
    body: tuple[Stage, ...]
    label: str | None
    span: Span
    label_span: Span | None = None


Stage = Union[LayerCall, Repeat]


@dataclass(frozen=True)
class Pipe:
    source: Expr
    stage: Stage
    span: Span


Expr = Union[Number, String, Bool, Name, BinOp, UnaryOp, Call, Pipe]

# ---- statements ----


@dataclass(frozen=True)
class TensorType:
    dtype: str | None  # "int" | "float" | None (float)
    dims: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Input:
    name: str
    type: TensorType | None
    span: Span
    default: Expr | None = None  # an optional model input is filled with this value when not given


@dataclass(frozen=True)
class If:
    """`if cond { ... } else { ... }`: chosen at compile time from hyperparameters."""

    condition: Expr
    then: tuple[Statement, ...]
    otherwise: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True)
class Let:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class Return:
    values: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Assert:
    condition: Expr
    message: str | None
    span: Span


Statement = Union[Input, Let, Return, Assert, If]

# ---- top level ----


@dataclass(frozen=True)
class Use:
    path: str
    span: Span


@dataclass(frozen=True)
class ParamDecl:
    name: str
    type: str | None
    value: Expr
    span: Span


@dataclass(frozen=True)
class Preset:
    name: str
    assignments: tuple[tuple[str, Expr, Span], ...]
    span: Span


@dataclass(frozen=True)
class TrainSection:
    """`train { steps = 2000, lr = 1e-3 }`: training settings that travel with the model."""

    assignments: tuple[tuple[str, Expr, Span], ...]
    span: Span


@dataclass(frozen=True)
class ListValue:
    """`[a, b, ...]`: a value of the lora section (its targets); the language has no lists elsewhere."""

    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class LoraSection:
    """`lora { rank = 8, alpha = 16, targets = ["*.attn.q", "*.attn.v"] }`: LoRA fine-tuning of the model."""

    assignments: tuple[tuple[str, Expr | ListValue, Span], ...]
    span: Span


@dataclass(frozen=True)
class BlockParam:
    name: str
    type: str | None
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class BlockDef:
    name: str
    params: tuple[BlockParam, ...]
    body: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True)
class ModelDef:
    name: str
    body: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True)
class SpecFile:
    path: str
    uses: tuple[Use, ...]
    params: tuple[ParamDecl, ...]
    presets: tuple[Preset, ...]
    asserts: tuple[Assert, ...]
    blocks: tuple[BlockDef, ...]
    models: tuple[ModelDef, ...]
    train: tuple[TrainSection, ...] = ()
    lora: tuple[LoraSection, ...] = ()
    source: str | None = field(default=None, compare=False, repr=False)  # the text parsed, which its spans carry

    @property
    def start(self) -> Span:
        """The file's first character: where an error about the whole file points."""
        return Span(self.path, 1, 1, source=self.source)
