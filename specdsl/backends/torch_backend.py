"""IR -> torch.nn.Module. Each layer becomes its kind's torch form (Kind.to_torch); each IR Module becomes a small
graph module that runs its ops in order. Parameter names are the IR's parameter paths.

- A non-shared repeat holds `count` numbered copies (h.0, h.1, ...); a shared repeat holds one body applied
  `count` times (ALBERT), so its gradients accumulate from every application.
- A tied parameter is the same Parameter object as its target (one tensor; gradients from both uses).
- Optional model inputs (`input token_types: int[...] = 0`) are filled with their default when not given.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from .. import ir
from ..contract import contract, refuse_encoder_decoder
from ..errors import SpecError
from ..kinds import KINDS, Args, Kind, TorchForm, torch_form_of
from ..shapes import Sym
from ..system import available_memory
from .flat_step import flat_step
from .torch_modules import DecodeState, StaticDecodeState, init_gpt2_

_BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}


class GraphModule(nn.Module):
    """One IR Module: its children as submodules (registered in IR order) and its ops as a straight-line program."""

    def __init__(self, module: ir.Module):
        super().__init__()
        for child in module.children:
            self.add_module(child.name, build(child))
        self._ops = tuple((op.op, op.args, op.out, op.target) for op in module.ops)
        # In eval mode a layer whose kind is the identity then (Dropout) passes its input on, uncalled.
        passed_in_eval = {child.name for child in module.children
                          if isinstance(child, ir.Layer) and KINDS[child.kind].identity_in_eval}
        self._eval_ops = tuple(("pass", args, out, target) if op == "call" and target in passed_in_eval
                               else (op, args, out, target) for op, args, out, target in self._ops)
        self._inputs = module.inputs
        self._outputs = module.outputs

    def run(self, values: dict, skip: frozenset = frozenset()):
        """The ops in order over `values` (refs to tensors); those whose result is in `skip` are not run, their
        result None (an encoder's, while decoding reads its cached keys and values instead)."""
        for op, args, out, target in self._ops if self.training else self._eval_ops:
            if out in skip:
                values[out] = None
            elif op == "pass":
                values[out] = values[args[0]]
            elif op == "call":  # the piped tensor, then any the callee reads beside it (encoder memory)
                values[out] = self._modules[target](*(values[a] for a in args))
            else:
                a, b = (values[v] if isinstance(v, str) else v for v in args)
                values[out] = _BINARY[op](a, b)
        return values

    def forward(self, *inputs):
        values = self.run(dict(zip(self._inputs, inputs)))
        outs = tuple(values[o] for o in self._outputs)
        return outs[0] if len(outs) == 1 else outs


class Repeat(nn.Module):
    """`repeat N { body }`: N numbered bodies, or with `shared` one body applied N times."""

    def __init__(self, module: ir.Module):
        super().__init__()
        self.count, self.shared = module.count, module.shared
        body = ir.Module("body", "body", module.children, module.ops, module.inputs, module.outputs, module.span)
        if self.shared:
            # One body, not registered itself: its children sit directly under the repeat (layer.attn.qkv.weight,
            # no index), so parameter names, .to() and .train() all see them once.
            object.__setattr__(self, "_body", GraphModule(body))
            for name, child in self._body.named_children():
                self.add_module(name, child)
        else:
            for i in range(module.count):
                self.add_module(str(i), GraphModule(body))

    def forward(self, x, *memory):
        """`memory`: tensors of the enclosing scope the body reads (encoder memory), the same each iteration."""
        if self.shared:
            for _ in range(self.count):
                x = self._body(x, *memory)
            return x
        for layer in self._modules.values():
            x = layer(x, *memory)
        return x


def torch_class(form: TorchForm) -> type:
    """The class a TorchForm names: from torch.nn, specc's torch_modules, or a kind's own module."""
    module, name = form.location
    return getattr(importlib.import_module(module), name)


def check_torch_forms(model: ir.Model) -> None:
    """Every layer kind the model uses has a torch form whose class imports: else a SpecError at the layer, before
    anything is built (not a KeyError from deep inside the build)."""
    seen: set[tuple[str, tuple]] = set()
    for layer, _ in ir.applications(model.root):
        key = (layer.kind, layer.args)
        if key in seen:
            continue
        seen.add(key)
        form = torch_form_of(layer)
        try:
            torch_class(form)
        except (ImportError, AttributeError) as e:
            raise SpecError(f"the torch class '{form.constructor}' of layer kind '{layer.kind}' cannot be imported: "
                            f"{type(e).__name__}: {e}", layer.span,
                            hint="a TorchForm names 'nn.X', a class of specc's torch_modules, or 'package.module:X'"
                            ) from None


def build(node: ir.Node) -> nn.Module:
    if isinstance(node, ir.Layer):
        form = KINDS[node.kind].torch_form(Args(node.args))
        return torch_class(form)(*form.args, **form.kwargs)
    if node.is_repeat:
        return Repeat(node)
    return GraphModule(node)


class SpecModule(GraphModule):
    """The whole model. `module(tokens)` for a language model: int64 [B, T] -> float [B, T, vocab]."""

    def __init__(self, model: ir.Model):
        super().__init__(model.root)
        self.spec = model
        self._defaults = {i.name: (i.default, i.type) for i in model.inputs if i.default is not None}
        self._input_types = {i.name: i.type for i in model.inputs}
        self._routed = layer_modules(self, lambda kind: kind.aux_loss)  # mixtures of experts

    def forward(self, *inputs, **named):
        given = dict(zip(self._inputs, inputs))
        given.update(named)
        sizes = {}
        for name, value in given.items():
            for dim, n in zip(self._input_types[name].shape, value.shape):
                if isinstance(dim, Sym):
                    sizes[dim.name] = n
        for name in self._inputs:
            if name not in given:
                if name not in self._defaults:
                    raise TypeError(f"{self.spec.name}: missing input '{name}'")
                default, ttype = self._defaults[name]
                shape = [sizes[d.name] if isinstance(d, Sym) else d for d in ttype.shape]
                ref = next(iter(given.values()))
                dtype = torch.long if ttype.dtype == "int" else ref.dtype
                given[name] = torch.full(shape, default, dtype=dtype, device=ref.device)
        values = self.run(given)
        outs = tuple(values[o] for o in self._outputs)
        return outs[0] if len(outs) == 1 else outs

    def aux_loss(self) -> torch.Tensor | float:
        """Sum of the mixture-of-experts load-balancing losses of the last forward (0 for dense models)."""
        losses = [m.aux_loss for m in self._routed if isinstance(m.aux_loss, torch.Tensor)]
        return sum(losses) if losses else 0.0


def layer_modules(module: SpecModule, declared) -> list[nn.Module]:
    """The torch modules of the layers whose kind declares `declared(kind)` (Kind.aux_loss, Kind.decode_state),
    each once (a shared repeat's layer is one module)."""
    found: dict[int, nn.Module] = {}
    for path, layer in ir.layers_with_paths(module.spec.root):
        kind: Kind = KINDS[layer.kind]
        if declared(kind):
            m = module.get_submodule(path)
            found.setdefault(id(m), m)
    return list(found.values())


def block_modules(module: SpecModule) -> list[nn.Module]:
    """The torch modules of the model's blocks and repeat iterations (every IR module but the root): the units
    FSDP shards one by one."""
    return [m for m in module.modules() if isinstance(m, GraphModule) and m is not module]


def _tie(root: nn.Module, model: ir.Model) -> None:
    for path, layer in ir.layers_with_paths(model.root):
        for p in layer.params:
            if p.tied_to is None:
                continue
            owner = root.get_submodule(path)
            *inner, leaf = p.name.split(".")
            for part in inner:
                owner = getattr(owner, part)
            setattr(owner, leaf, root.get_parameter(p.tied_to))


# The most module instances, or layer applications in one forward pass, a PyTorch module is built with. A repeat is a
# count in the IR (`repeat 10**15 { ReLU }` compiles and is counted) but here each iteration of a non-shared repeat
# is modules, and a shared one runs its body `count` times a forward. Measured on the 2-core test machine with
# `repeat N { ReLU }`: 150 us and 4 KB to build an iteration, 20 us to apply one; so 10**5 is 15 s and 400 MB to
# build, 2 s a forward pass. The largest zoo model needs 582 (GPT-3; GPT-4's spec 484, LLaMA-2-70B 324).
MAX_TORCH_APPLICATIONS = 10**5


def torch_size(model: ir.Model) -> tuple[int, int]:
    """(module instances, layer applications per forward pass) of the model's PyTorch form, counted without building
    it. A SpecError at the repeat (or layer) that takes either past MAX_TORCH_APPLICATIONS."""
    def size(module: ir.Module) -> tuple[int, int]:
        instances = applications = 0
        for child in module.children:
            i, a = (1, 1) if isinstance(child, ir.Layer) else size(child)
            instances, applications = instances + i + isinstance(child, ir.Module), applications + a
            check(instances, applications, child.span)
        if module.is_repeat:  # a graph module runs the body: one, or one an iteration
            instances = instances + 1 if module.shared else (instances + 1) * module.count
            applications *= module.count
            check(instances, applications, module.span)
        return instances, applications

    def check(instances: int, applications: int, span) -> None:
        if max(instances, applications) > MAX_TORCH_APPLICATIONS:
            what = "module instances" if instances > MAX_TORCH_APPLICATIONS else "layer applications per forward pass"
            raise SpecError(f"too large for PyTorch: more than {MAX_TORCH_APPLICATIONS:,} {what}", span,
                            hint="specc compile counts such a model; to build it, lower the repeat count (--set)")

    return size(model.root)


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        return available_memory()
    return None


def to_torch(model, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> SpecModule:
    """Build the torch module of a spec (a `specdsl.Compiled` or an `ir.Model`), directly in `dtype`.

    Refuses, before allocating anything, a model with more modules or layer applications than PyTorch can run
    (MAX_TORCH_APPLICATIONS), and one whose weights would not fit in the device's free memory; build such a model
    on device="meta" to inspect it."""
    from ..analysis import analyse
    from ..compiled import Compiled
    if isinstance(model, Compiled):
        model, total = model.model, model.analysis.total
    else:
        total = analyse(model).total
    torch_size(model)
    check_torch_forms(model)
    device = torch.device(device)
    if device.type != "meta":
        # What the build allocates: each distinct weight once (tied ones are one tensor), in `dtype`, and nothing
        # else (no buffers), as it is built in `dtype` (tests/test_hostile_core.py measures the peak).
        need = total * dtype.itemsize
        free = _free_bytes(device)
        if free is not None and need > 0.9 * free:
            raise SpecError(f"model '{model.name}' needs {need / 2**30:,.1f} GiB for its {total:,} weights but "
                            f"{device} has {free / 2**30:,.1f} GiB free", model.root.span,
                            hint="build it with device='meta' to inspect it, or shrink it with --set")
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the modules create their weights in it: no fp32 copy on the way
    try:
        with torch.device(device):
            module = SpecModule(model)
        if device.type != "meta":
            init_gpt2_(module)
    finally:
        torch.set_default_dtype(default)
    _tie(module, model)
    return module


_UNTRACED = object()


class Decoder(nn.Module):
    """Incremental decoding: `decoder(tokens, *past) -> (logits, *present)`, with past and present the keys and
    values of every attention application, [batch, kv_heads, positions, head_dim] each, k then v. An
    encoder-decoder decodes with Seq2SeqDecoder."""

    def __init__(self, module: SpecModule):
        super().__init__()
        if contract(module.spec).encoder_decoder:
            raise SpecError(f"Decoder decodes decoder-only models; model '{module.spec.name}' is an "
                            "encoder-decoder", module.spec.root.span, hint="decode it with Seq2SeqDecoder")
        self.model = module
        self.slots = contract(module.spec).cache
        self._stateful = layer_modules(module, lambda kind: kind.decode_state)
        self._flat = _UNTRACED  # the one-token step as a flat program (flat_step.py), None where it can't be

    def empty_cache(self, batch: int = 1, dtype=torch.float32, device="cpu") -> list[torch.Tensor]:
        return [torch.zeros(batch, kv, 0, hd, dtype=dtype, device=device) for kv, hd in self.slots for _ in (0, 1)]

    def forward(self, tokens: torch.Tensor, *past: torch.Tensor):
        state = DecodeState([(past[2 * i], past[2 * i + 1]) for i in range(len(self.slots))])
        return (self._run(tokens, state), *[t for kv in state.present for t in kv])

    def static_cache(self, capacity: int, batch: int = 1, dtype=torch.float32, device="cpu") -> StaticCache:
        """Buffers for `capacity` positions of every attention application, for `step`."""
        return StaticCache([(torch.empty(batch, kv, capacity, hd, dtype=dtype, device=device),
                             torch.empty(batch, kv, capacity, hd, dtype=dtype, device=device))
                            for kv, hd in self.slots])

    def step(self, tokens: torch.Tensor, cache: StaticCache) -> torch.Tensor:
        """The logits of `tokens` after the cache's positions, their keys and values written into it in place (the
        PyTorch generation path: `specc sample`; the ONNX graph takes and returns its cache as tensors)."""
        if cache.length + tokens.shape[1] > cache.capacity:
            raise ValueError(f"the cache holds {cache.capacity} positions; {cache.length} + {tokens.shape[1]} "
                             "would not fit")
        single = tokens.shape[1] == 1
        if single and self._flat is _UNTRACED:  # traced at the first one-token step: a prompt alone never pays it
            self._flat = flat_step(self.model, self._stateful, self.model._routed, len(self.slots))
        if single and self._flat is not None:
            logits = self._flat(tokens, cache.length, cache.flat)
        else:
            logits = self._run(tokens, StaticDecodeState(cache.buffers, cache.length, single_query=single))
        cache.length += tokens.shape[1]
        return logits

    def _run(self, tokens: torch.Tensor, state: DecodeState) -> torch.Tensor:
        # `decode` is a plain attribute (no parameter, buffer or module): object.__setattr__ skips nn.Module's
        # checks, a few microseconds each, twice per stateful module per generated token.
        for m in self._stateful:
            object.__setattr__(m, "decode", state)
        try:
            return self.model(tokens)
        finally:
            for m in self._stateful:
                object.__setattr__(m, "decode", None)


class StaticCache:
    """Keys and values of a generation, in preallocated buffers (torch_modules.StaticDecodeState); `length`
    positions are filled. Set `length = 0` to start the window again."""

    def __init__(self, buffers: list[tuple[torch.Tensor, torch.Tensor]]):
        self.buffers, self.length = buffers, 0
        self.flat = [t for kv in buffers for t in kv]  # k0, v0, k1, v1, ...: the flat step's input
        self.capacity = buffers[0][0].shape[2] if buffers else 0


class Seq2SeqState(DecodeState):
    """A DecodeState that also holds the memory's keys and values of every cross-attention application (empty
    [B, kv_heads, 0, head_dim] at the first step: computed then, from the encoder's output)."""

    def __init__(self, past, memory_past):
        super().__init__(past)
        self.memory_past, self.memory_present, self.memory_index = memory_past, [], 0

    def memory_kv(self, compute):
        k, v = self.memory_past[self.memory_index]
        self.memory_index += 1
        if k.shape[2] == 0:
            k, v = compute()
        self.memory_present.append((k, v))
        return k, v


class Seq2SeqDecoder(nn.Module):
    """Incremental decoding of a sequence-to-sequence model (contract: source, target):
    `decoder(src, tgt, *self_past, *memory_past) -> (logits, *self_present, *memory_present)`. Self-attention of
    the decoder caches its keys and values per target token as Decoder does; cross-attention caches the memory's
    once, at the first step (give empty ones: `empty_cache`). After it, the encoder is not run (`src` is not read)
    when the encoder's values reach the decoder only as cross-attention memory; otherwise it runs every step."""

    def __init__(self, module: SpecModule):
        super().__init__()
        facts = contract(module.spec)
        if facts.source is None:
            refuse_encoder_decoder(module.spec, "incremental decoding of this encoder-decoder (not one source "
                                                "and one target of token ids)")
        self.model, self.facts = module, facts
        model = module.spec
        target_len = next(i for i in model.inputs if i.name == facts.target).type.shape[-1]
        found: dict[int, nn.Module] = {}
        for path, layer in ir.layers_with_paths(model.root):
            if KINDS[layer.kind].decode_state and target_len in layer.input.shape:  # the decoder's side only
                m = module.get_submodule(path)
                found.setdefault(id(m), m)
        self._stateful = list(found.values())
        self._encoder = _encoder_refs(model.root, facts.source)

    def empty_cache(self, batch: int = 1, dtype=torch.float32, device="cpu") -> list[torch.Tensor]:
        return [torch.zeros(batch, kv, 0, hd, dtype=dtype, device=device)
                for kv, hd in (*self.facts.cache, *self.facts.memory_cache) for _ in (0, 1)]

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, *past: torch.Tensor):
        n = len(self.facts.cache)
        state = Seq2SeqState([(past[2 * i], past[2 * i + 1]) for i in range(n)],
                             [(past[2 * i], past[2 * i + 1]) for i in range(n, n + len(self.facts.memory_cache))])
        cached = bool(state.memory_past) and state.memory_past[0][0].shape[2] > 0
        for m in self._stateful:
            m.decode = state
        try:
            values = self.model.run({self.facts.source: src, self.facts.target: tgt},
                                    skip=self._encoder if cached else frozenset())
            logits = values[self.model._outputs[0]]
        finally:
            for m in self._stateful:
                m.decode = None
        return (logits, *[t for kv in (*state.present, *state.memory_present) for t in kv])


def _encoder_refs(root: ir.Module, source: str) -> frozenset:
    """The refs of the root's ops computed from the source alone (the encoder), when every one of them that the
    rest reads is read only as a layer's tensor argument (cross-attention's memory, cached while decoding);
    else none (the encoder then runs every step)."""
    refs, computed = {source}, set()
    for op in root.ops:
        if all(a in refs for a in op.args if isinstance(a, str)):
            refs.add(op.out)
            computed.add(op.out)
    def memory_only(module: ir.Module, ref: str, through: set) -> bool:
        if ref in module.outputs:
            return False
        for op in module.ops:
            if op.out in through:
                continue
            for i, a in enumerate(op.args):
                if a != ref:
                    continue
                if op.op != "call" or i == 0:
                    return False
                child = {c.name: c for c in module.children}[op.target]
                if isinstance(child, ir.Module) and not memory_only(child, child.inputs[i], set()):
                    return False
        return True

    read = {a for op in root.ops if op.out not in computed for a in op.args if isinstance(a, str)} & refs
    ok = all(memory_only(root, ref, computed) for ref in read) and not (refs & set(root.outputs))
    return frozenset(computed) if ok else frozenset()
