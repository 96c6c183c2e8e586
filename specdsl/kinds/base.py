"""What every layer kind declares: its arguments, parameters, output type, FLOPs, KV cache, torch form, examples
and documentation.

A kind is described once (DEVELOPERS.md, principle 1). The analysis, the torch backend, the ONNX export, the ejected
file and docs/language.md all read the same declaration, so they cannot drift apart. A kind registers itself: a
subclass of Kind with a `name` is in the registry as soon as its module is imported (specdsl/kinds imports the
built-in ones; other packages add theirs through the `specdsl.kinds` entry point group, docs/language.md). Nothing
here imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from math import prod
from typing import Any, Callable

from ..shapes import ShapeError, TensorType

REQUIRED = object()


# Where a TorchForm's constructor lives when it names no module: specc's own plain-PyTorch classes.
BUILTIN_TORCH_MODULE = "specdsl.backends.torch_modules"


@dataclass(frozen=True)
class TorchForm:
    """How a layer becomes torch: a constructor and its arguments. The constructor is "nn.Linear" (torch.nn), a
    class of backends/torch_modules.py ("Attention"), or "package.module:Class" (a kind's own plain-PyTorch class,
    imported when built). The torch backend calls it; `--emit-torch` writes it as source, carrying the class along.
    One declaration, two uses."""

    constructor: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    @property
    def location(self) -> tuple[str, str]:
        """(module, class name) of the constructor: ("torch.nn", "Linear"), ("specdsl.backends.torch_modules",
        "Attention"), ("package.module", "Class")."""
        if ":" in self.constructor:
            module, _, name = self.constructor.partition(":")
            return module, name
        if self.constructor.startswith("nn."):
            return "torch.nn", self.constructor[3:]
        return BUILTIN_TORCH_MODULE, self.constructor

    def source(self) -> str:
        """The constructor call as the ejected file writes it: torch.nn's as nn.X, any other class by its name
        (the file carries that class)."""
        module, name = self.location
        call = f"nn.{name}" if module == "torch.nn" else name
        parts = [repr(v) for v in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{call}({', '.join(parts)})"


@dataclass(frozen=True)
class Example:
    """One call of a kind as a spec writes it, and the input it reads. docs/language.md shows them, and
    tests/test_kinds.py builds each through every backend: counts, FLOPs, torch, the ejected file and ONNX."""

    call: str  # the arguments, as in a spec: "16, 4, kv_heads = 2"
    input: str  # the input's type, as in a spec: "float[2, 6, 16]"
    # Further inputs in scope that tensor arguments name, as (name, type): (("mem", "float[2, 5, 16]"),)
    tensors: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Adaptable:
    """A matrix of a kind that LoRA may adapt (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"):
    W + (alpha / rank) * B @ A, A [rank, in_features] and B [out_features, rank]. `name` is how a target names it
    after the layer's path (`h.0.attn.q`, `Attention.q`); "" is the layer's own weight (a Linear: `lm_head`).
    `param` is the parameter it is, or is part of (`qkv.weight`): a weight [out, in] used as `x @ W.T` by an
    nn.Linear at the parameter's module path. `rows` is [start, stop) of its rows in that parameter (Attention's q,
    k and v are row slices of the fused qkv), None for all of them. Counts (analysis.py), the adapters' torch form
    and their merge before export (backends/lora.py) read this one declaration."""

    name: str
    param: str
    rows: tuple[int, int] | None
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Arg:
    """One argument of a kind. `type` is int, float, bool, str, or "tensor": a tensor value in scope that the layer
    reads beside its piped input (cross-attention's `memory = enc`); the kind's methods see its TensorType, the
    torch module receives the tensor as a further argument of forward, after the piped one, in declaration order.
    A tensor argument with the default None is optional (Attention's `position_bias`): left out, the methods see
    None and forward gets nothing for it (its parameter's default, None); at most one, the last."""

    name: str
    type: Any
    default: Any = REQUIRED  # a value, or a function of the arguments resolved so far
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None  # returns a complaint, or None when fine
    doc: str = ""
    default_doc: str = ""  # a computed default as the docs show it: "heads", "d // heads"


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


class KindError(TypeError):
    """A kind declared wrongly (a programming error in a kind, not a user's mistake in a spec)."""


class Registry(dict):
    """Kind name -> its declaration. Kinds add themselves when their module is imported (Kind.__init_subclass__).
    A name not found loads the packages that declare kinds through the `specdsl.kinds` entry point group, once:
    start-up pays for them only when a spec calls a kind specc does not have."""

    ENTRY_POINTS = "specdsl.kinds"

    def __init__(self):
        super().__init__()
        self._plugins_loaded = False

    @staticmethod
    def is_kind_name(name: str) -> bool:
        """Kind names are identifiers starting with a capital (Linear): a name that is not one, such as a block's
        gpt_block, is no kind, and looking it up need not load the plugins (importlib.metadata and a scan of every
        installed package, ~70 ms of a `specc compile` process)."""
        return name.isidentifier() and name[0].isupper()

    def register(self, kind: Kind) -> None:
        if not self.is_kind_name(kind.name):
            raise KindError(f"kind name {kind.name!r} must be an identifier starting with a capital, like Linear")
        known = self.get(kind.name)
        where = f"{type(kind).__module__}.{type(kind).__qualname__}"
        if known is not None and f"{type(known).__module__}.{type(known).__qualname__}" != where:
            raise KindError(f"two kinds are named {kind.name!r}: {type(known).__module__}.{type(known).__qualname__} "
                            f"and {where}")
        self[kind.name] = kind

    def load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points
        for ep in entry_points(group=self.ENTRY_POINTS):
            try:
                importlib.import_module(ep.value.partition(":")[0])
            except Exception as e:
                raise KindError(f"the kinds of '{ep.name}' ({ep.value}, entry point group {self.ENTRY_POINTS}) "
                                f"failed to load: {type(e).__name__}: {e}") from e

    def __contains__(self, name) -> bool:
        if not dict.__contains__(self, name) and isinstance(name, str) and self.is_kind_name(name):
            self.load_plugins()
        return dict.__contains__(self, name)

    def __missing__(self, name):
        if self._plugins_loaded:
            raise KeyError(name)
        self.load_plugins()
        return self[name]


REGISTRY = Registry()


class Kind:
    """A layer kind. Subclass it with a `name` and it is registered (a base without a name is a helper)."""

    name: str = ""
    summary: str = ""  # one line: what it computes (docs/language.md)
    args: tuple[Arg, ...] = ()
    embedding: bool = False  # its parameters count as embedding parameters
    tie_param: str | None = None  # the parameter that `tie = other_layer` makes one tensor with other's
    examples: tuple[Example, ...] = ()
    # Arguments a reader may expect that this kind does not take, with why: the hint of "has no argument"
    # (CrossAttention: causal).
    absent_args: dict[str, str] = {}
    # The docs' words for what the methods below compute, shown in docs/language.md beside the arguments.
    params_doc: str = "—"
    shape_doc: str = "same"
    flops_doc: str = "0"
    # What the torch module of this kind does besides forward, read by the torch backend:
    aux_loss: bool = False  # sets `.aux_loss` each forward: a load-balancing loss training adds (MoE)
    decode_state: bool = False  # reads a DecodeState at `.decode` while decoding incrementally (KV cache, offsets)
    identity_in_eval: bool = False  # returns its input unchanged in eval mode (Dropout): not called then

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            tensors = [arg for arg in cls.args if arg.type == "tensor"]
            optional = [arg for arg in tensors if arg.default is None]
            if len(optional) > 1 or (optional and tensors[-1] is not optional[0]):
                # the call passes the tensors given, in order, as forward's positional arguments: one left out
                # must be the last
                raise KindError(f"{cls.name}: at most one optional tensor argument (default None), after the "
                                f"required ones")
            if any(arg.default not in (None, REQUIRED) for arg in tensors):
                raise KindError(f"{cls.name}: a tensor argument's default is None (optional) or none (required)")
            REGISTRY.register(cls())

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

    def memory_cache_shape(self, a: Args) -> tuple[int, int] | None:
        """(kv_heads, head_dim) of the keys, and of the values, this layer caches per position of its `memory`
        (cross-attention: computed once from the encoder's output, then read at every decoding step), or None."""
        return None

    def kv_cache_per_memory_token(self, a: Args) -> int:
        shape = self.memory_cache_shape(a)
        return 2 * prod(shape) if shape else 0

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

    def tensor_args(self) -> tuple[str, ...]:
        """The names of the tensor arguments, in the order the torch module's forward takes them after its input."""
        return tuple(arg.name for arg in self.args if arg.type == "tensor")

    def given_tensor_args(self, a: Args) -> tuple[str, ...]:
        """The tensor arguments this call was given (an optional one left out is None): those the layer reads."""
        return tuple(name for name in self.tensor_args() if a.get(name) is not None)

    def describe(self, a: Args) -> str:
        shown = [str(a[arg.name]) for arg in self.args if arg.default is REQUIRED and arg.type != "tensor"]
        return f"{self.name}({', '.join(shown)})"

    def adaptable(self, a: Args) -> tuple[Adaptable, ...]:
        """The matrices LoRA may adapt (Adaptable), none by default."""
        return ()

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
