"""The IR: what a spec means, as frozen dataclasses. Produced by specdsl/elaborate/; read by the analysis and backends.

A Model is a tree of Modules whose leaves are Layers (instances of a layer kind with resolved arguments). Each
Module also holds its dataflow as Ops over its children. A `repeat` is one Module with `count` (and `shared` when one
set of weights serves every application): repeats are a count, never copies, so a 1.8-trillion-parameter model is a
few dozen nodes.

Parameter paths: a Layer's parameter `weight` at module path `h.0.attn` is `h.0.attn.weight`, the name it has in
the torch module, in checkpoints and in ONNX initializers. Iterations of a non-shared repeat are numbered from 0;
a shared repeat has no index (one set of weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Union

from .errors import Span
from .shapes import TensorType


@dataclass(frozen=True)
class Param:
    name: str  # local to its layer: "weight", "qkv.bias"
    shape: tuple[int, ...]
    trainable: bool = True
    embedding: bool = False
    tied_to: str | None = None  # full path of the tensor this parameter *is* (weight tying): counted once, there


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str
    args: tuple[tuple[str, Any], ...]
    params: tuple[Param, ...]
    input: TensorType
    output: TensorType
    span: Span
    description: str = ""

    @property
    def arguments(self) -> dict[str, Any]:
        return dict(self.args)


@dataclass(frozen=True)
class Op:
    """One step of a module's dataflow. `op` is "call" (apply child `target`) or an element-wise operator
    ("add", "sub", "mul", "div"); `args` are value names ("%3", an input's name) or numbers."""

    op: str
    args: tuple[Any, ...]
    out: str
    target: str | None = None


@dataclass(frozen=True)
class Module:
    name: str  # path segment; "" for the model's root
    label: str  # the block's name, "repeat", or the model's name
    children: tuple[Node, ...]
    ops: tuple[Op, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    span: Span
    count: int = 1  # a repeat applies its body `count` times
    shared: bool = False  # ... with one set of weights (ALBERT) instead of `count` sets
    body: str = ""  # what a repeat applies, as written: "gpt_block"

    @property
    def is_repeat(self) -> bool:
        return self.label == "repeat"


Node = Union[Layer, Module]


@dataclass(frozen=True)
class Input:
    name: str
    type: TensorType
    span: Span
    default: int | float | None = None  # optional input: filled with this value when not given


@dataclass(frozen=True)
class Adapter:
    """One matrix a LoRA adapter adapts (a kind's Adaptable at one layer, repeats unrolled): A [rank, in_features]
    and B [out_features, rank], added to rows `rows` of the parameter `param` (all rows when None)."""

    layer: str  # the layer's path, repeats unrolled: h.0.attn
    kind: str
    matrix: str  # the kind's name for it: q, fc; "" for the layer's own weight (a Linear)
    param: str  # the full path of the weight it adapts: h.0.attn.qkv.weight
    rows: tuple[int, int] | None
    in_features: int
    out_features: int

    @property
    def owner(self) -> str:
        """The path of the nn.Linear whose weight `param` is (h.0.attn.qkv): the adapters are its parameters."""
        return self.param.rpartition(".")[0]

    @property
    def key(self) -> str:
        """The adapter's name under its owner: h.0.attn.qkv.lora_A.q, lm_head.lora_A.weight."""
        return self.matrix or "weight"

    @property
    def target(self) -> str:
        """How a target names it: h.0.attn.q, lm_head."""
        return f"{self.layer}.{self.matrix}" if self.matrix else self.layer


@dataclass(frozen=True)
class Lora:
    """LoRA fine-tuning (Hu et al. 2021): the base model frozen, each adapted matrix W used as W + (alpha / rank) B A.
    `targets` as written (in the spec's `lora` section or `--lora-targets`); `adapters` what they chose."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    adapters: tuple[Adapter, ...]
    span: Span = field(compare=False, repr=False)  # the section, or the command-line flag, that asked for it

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def params(self) -> int:
        """Elements of every A and B: the parameters a LoRA run trains."""
        return sum(self.rank * (a.in_features + a.out_features) for a in self.adapters)

    def settings(self) -> dict[str, Any]:
        """rank, alpha, dropout and targets: what `--lora*` flags give, what run.json records."""
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets)}


@dataclass(frozen=True)
class Model:
    name: str
    root: Module
    inputs: tuple[Input, ...]
    outputs: tuple[tuple[str, TensorType], ...]
    hyperparameters: dict[str, Any] = field(hash=False)
    path: str = ""
    source: str = field(default="", repr=False)
    preset: str | None = None
    train: dict[str, Any] = field(default_factory=dict, hash=False)  # the spec's `train { ... }` settings
    lora: Lora | None = None  # LoRA fine-tuning: the spec's `lora { ... }` section or the --lora flags
    # Every file of the spec as (name, text), the main file first, and which file each `use` resolved to
    # (using file, path as written, file): what a run directory saves so it compiles from its own copies.
    sources: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    uses: tuple[tuple[str, str, str], ...] = field(default=(), repr=False)

    def parameters(self) -> Iterator[tuple[str, Param, int]]:
        """Every parameter tensor as (full path, Param, multiplicity), repeats not unrolled: the path of a repeated
        one holds `{i}` for the iteration index ({j} in a nested repeat), and multiplicity says how many tensors it
        stands for."""
        yield from _walk_params(self.root, "", 1)


def repeat_index(prefix: str) -> str:
    """The placeholder for a repeat's iteration in a path: {i}, then {j} inside it, then {k}..."""
    return "{" + "ijklmnpq"[min(prefix.count("{"), 7)] + "}"


def _walk_params(module: Module, prefix: str, mult: int):
    if module.is_repeat and not module.shared:
        prefix, mult = prefix + repeat_index(prefix) + ".", mult * module.count
    for child in module.children:
        if isinstance(child, Layer):
            for p in child.params:
                yield f"{prefix}{child.name}.{p.name}", p, mult
        else:
            yield from _walk_params(child, f"{prefix}{child.name}.", mult)


def unrolled_names(model: Model) -> list[str]:
    """Parameter paths with repeats unrolled, in definition order (what torch's named_parameters lists)."""
    names: list[str] = []

    def walk(module: Module, prefix: str):
        if module.is_repeat and not module.shared:
            for i in range(module.count):
                for child in module.children:
                    visit(child, f"{prefix}{i}.")
        else:
            for child in module.children:
                visit(child, prefix)

    def visit(child: Node, prefix: str):
        if isinstance(child, Layer):
            names.extend(f"{prefix}{child.name}.{p.name}" for p in child.params if p.tied_to is None)
        else:
            walk(child, f"{prefix}{child.name}.")

    walk(model.root, "")
    return names


def layers_with_paths(module: Module, prefix: str = ""):
    """(path, Layer) for every layer, repeats unrolled (a shared repeat once): the torch module's layout."""
    if module.is_repeat and not module.shared:
        for i in range(module.count):
            for child in module.children:
                yield from _visit(child, f"{prefix}{i}.")
    else:
        for child in module.children:
            yield from _visit(child, prefix)


def _visit(child: Node, prefix: str):
    if isinstance(child, Layer):
        yield prefix + child.name, child
    else:
        yield from layers_with_paths(child, f"{prefix}{child.name}.")


def applications(module: Module, mult: int = 1):
    """(Layer, times applied per forward) for every layer, repeats not unrolled: the order attention layers run is
    the order of this walk, each repeated `times` in a row."""
    for child in module.children:
        if isinstance(child, Layer):
            yield child, mult
        else:
            yield from applications(child, mult * (child.count if child.is_repeat else 1))
