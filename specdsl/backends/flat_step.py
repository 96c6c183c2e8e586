"""The one-token decoding step as one flat program (torch.fx), for PyTorch generation's hot loop (`specc sample`).

Eager decoding pays Python for every nn.Module call, every parameter lookup (nn.Module.__getattr__) and every op of
GraphModule's interpreter. Measured on the 2-core test machine, a one-token step of the d=256 4-layer GPT of
bench/inference.py took 1.51 ms through the module tree against 1.03 ms for the same torch calls written out by hand;
and streaming the weights through the 1 MiB L2 every step evicts the interpreter's objects, so each of those Python
costs is 2-3x its micro-benchmark in a real step.

torch.fx traces the step once, with the tokens, the number of cached positions and the cache's buffers as inputs,
into straight-line Python that makes the same torch calls in the same order (the same logits, bit for bit:
tests/test_flat_step.py), with every parameter bound once. Layer kinds that set state as they run (Kind.aux_loss:
mixtures of experts record a load-balancing loss) are called as modules. A model the tracer cannot follow (Python
control flow on tensor values, several inputs) has no flat step: Decoder.step runs it eagerly.

Once a program has run SCRIPT_AFTER_STEPS one-token steps in the process, it is compiled by TorchScript and run by
its interpreter, which makes the same aten calls without Python's cost per call (the same logits, bit for bit, run
with the executor's optimizations off: no fusion, on any device). TorchScript is deprecated in torch 2.x
(torch.compile and torch.export are its successors, and neither runs the same kernels without Python: inductor
fuses, so its numbers differ), so it is optional here: where scripting fails (mixtures of experts: their routing is
Python) or torch no longer has it, the Python program goes on.
"""

from __future__ import annotations

import operator
import warnings
import weakref

import torch
from torch import fx, nn

from .torch_modules import StaticDecodeState


class _Step(nn.Module):
    """What is traced: the model's graph on `tokens`, its stateful modules reading a StaticDecodeState whose cached
    length and buffers are the program's inputs."""

    def __init__(self, model: nn.Module, stateful: list[nn.Module], slots: int):
        super().__init__()
        self.model, self.slots = model, slots
        object.__setattr__(self, "_stateful", stateful)  # not submodules: reached through the model

    def forward(self, tokens, length, buffers):
        pairs = [(buffers[2 * i], buffers[2 * i + 1]) for i in range(self.slots)]
        state = StaticDecodeState(pairs, length, single_query=True)
        for m in self._stateful:
            object.__setattr__(m, "decode", state)
        try:
            return self.model.run({self.model._inputs[0]: tokens})[self.model._outputs[0]]
        finally:
            for m in self._stateful:
                object.__setattr__(m, "decode", None)


class _Tracer(fx.Tracer):
    """Traces through every module (torch.nn's own too, down to their functional calls) but the `leaves`."""

    def __init__(self, root: nn.Module, leaves: set[int]):
        super().__init__()
        self.leaves = leaves
        # fx finds a parameter's name by scanning named_parameters() at every use: quadratic in the layers
        self.names = {id(p): name for name, p in root.named_parameters(remove_duplicate=False)}

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return id(m) in self.leaves

    def getattr(self, attr: str, attr_val, parameter_proxy_cache: dict):
        name = self.names.get(id(attr_val)) if isinstance(attr_val, nn.Parameter) else None
        if name is None:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]


# The most modules a model may have for its step to be traced: tracing costs ~0.8 ms a module, once (7.6 ms a
# transformer layer of ~9 modules, measured on the 2-core machine at 100 and 500 layers), and its program is a
# Python function of ~50 lines a layer. At 20,000 the first token waits ~15 s; past it the step runs eagerly.
MAX_TRACED_MODULES = 20_000

# Traced programs by model, so that each generation does not trace again (~25 ms for a 4-layer model, ~60 ms for
# GPT-2 small's 12). Weak keys: the cache never keeps a model alive.
_PROGRAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# One-token steps of a program before TorchScript compiles it: scripting costs about as much as this many steps of
# Python saves (measured on the 2-core machine: 56 ms to script the d=256 4-layer GPT of bench/inference.py, 0.36 ms
# saved a step, 155 steps; 70 ms and 0.25 ms for the d=128 demo model, 280; 127 ms for GPT-2 small). Scripting after
# that many, like renting skis until their price is spent, never costs more than twice the best choice made knowing
# the future: a 200-token `specc sample` never pays it, a long generation or a process that generates again does.
# None: never (bench/inference.py times the Python program so).
SCRIPT_AFTER_STEPS: int | None = 256


class _Program:
    """A traced step, shared by every generation of its model: the fx program, the model's parameters it takes (by
    name), its steps run so far and, once compiled, TorchScript's forward of it (None before and where it failed)."""

    def __init__(self, graph_module: fx.GraphModule, targets: list[str]):
        self.graph_module, self.targets = graph_module, targets
        self.steps, self.scripted = 0, None

    def script(self) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.script's own DeprecationWarning: see the module docstring
                self.scripted = torch.jit.script(self.graph_module).forward
        except Exception:  # noqa: BLE001 -- what TorchScript cannot compile (or a torch without it) runs as Python
            self.scripted = None
        except BaseException:  # Ctrl-C while compiling: not a refusal, so offered again at the next step
            self.steps -= 1
            raise


class FlatStep:
    """`step(tokens [B, 1], length, buffers) -> logits`: a traced program with the model's current parameters."""

    def __init__(self, program: _Program, params: list[torch.Tensor]):
        # its forward, not the module: nn.Module.__call__ and fx's error-reporting wrapper cost ~5 us a token
        self.program, self.forward, self.params = program, program.graph_module.forward, params

    def __call__(self, tokens: torch.Tensor, length: int, buffers: list[torch.Tensor]) -> torch.Tensor:
        program = self.program
        if program.scripted is not None:
            # unoptimized: the graph as traced, no profiling run and no fuser (which would change the numbers on a GPU)
            with torch.jit.optimized_execution(False):
                return program.scripted(tokens, length, buffers, self.params)
        program.steps += 1
        if program.steps == SCRIPT_AFTER_STEPS:  # once: a program TorchScript refused is not offered again
            program.script()
        return self.forward(tokens, length, buffers, self.params)


def flat_step(model: nn.Module, stateful: list[nn.Module], leaves: list[nn.Module], slots: int) -> FlatStep | None:
    """The one-token step of `model` (a SpecModule in eval mode with one input) over a StaticCache's buffers [k0, v0,
    k1, v1, ...] holding `length` positions; None when it cannot be traced.

    A model is traced once for its tree of modules: it is traced again when a module is replaced, added or removed,
    switched between train and eval, or given a forward hook (LoRA's adapters) or a forward of its own, what a trace
    bakes in. Parameters are the program's input, looked up by name for each FlatStep: assigning a new parameter, or
    loading weights, needs no new trace."""
    if _global_hooks():
        return None
    modules = tuple(model.modules())
    if len(modules) > MAX_TRACED_MODULES:
        return None
    key = (tuple(map(_baked, modules)), slots)
    cached = _PROGRAMS.get(model)
    # The modules below the model are held weakly too (a module replaced is not kept alive by the cache): a dead
    # one means its id may have been reused, so the key no longer says the tree is the same.
    if cached is None or cached[0] != key or any(ref() is None for ref in cached[2]):
        cached = (key, _trace(model, stateful, leaves, slots), tuple(weakref.ref(m) for m in modules[1:]))
        _PROGRAMS[model] = cached
    program = cached[1]
    if program is None:
        return None
    return FlatStep(program, [_lookup(model, target) for target in program.targets])


def _trace(model: nn.Module, stateful: list[nn.Module], leaves: list[nn.Module], slots: int) -> _Program | None:
    """program(tokens, length, buffers, params) with the names of params in the model, or None."""
    if model.training or len(model._inputs) != 1 or len(model._outputs) != 1:
        return None
    root = _Step(model, stateful, slots)
    try:
        graph = _Tracer(root, {id(m) for m in leaves}).trace(root)
    except Exception:  # noqa: BLE001 -- whatever fx cannot follow is run eagerly, as before
        return None
    finally:
        for m in stateful:
            object.__setattr__(m, "decode", None)
    # Parameters (and any tensor the trace read off a module) become items of a `params` input: the traced
    # `getattr(self.model.h, "0").ln_1.weight` is four lookups of nn.Module.__getattr__ a use, `params[3]` is one
    # list index. Leaf modules are bound under flat names.
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    with graph.inserting_after(placeholders[-1]):
        params = graph.placeholder("params")
    for node, annotation in zip([*placeholders, params], _INPUT_TYPES):  # what TorchScript compiles the inputs as
        node.type = annotation
    targets, bound = [], {}
    for node in list(graph.nodes):
        if node.op == "get_attr" and not node.target.startswith("model."):  # a tensor the trace made: a constant
            bound[f"constant{len(bound)}"] = _lookup(root, node.target)
            node.target = f"constant{len(bound) - 1}"
        elif node.op == "get_attr":
            if not isinstance(_lookup(root, node.target), torch.Tensor):
                return None
            with graph.inserting_before(node):
                item = graph.call_function(operator.getitem, (params, len(targets)))
            targets.append(node.target.removeprefix("model."))
            node.replace_all_uses_with(item)
            graph.erase_node(node)
        elif node.op == "call_module":
            name = f"leaf{len(bound)}"
            bound[name] = root.get_submodule(node.target)
            node.target = name
    graph.lint()
    return _Program(fx.GraphModule(bound, graph, class_name="FlatStep"), targets)


_INPUT_TYPES = (torch.Tensor, int, list[torch.Tensor], list[torch.Tensor])  # tokens, length, buffers, params


def _baked(m: nn.Module) -> tuple:
    """What a trace takes from one module besides its parameters: its identity, mode, forward and hooks."""
    own_forward = m.__dict__.get("forward")
    return (id(m), m.training, id(own_forward) if own_forward is not None else None, tuple(m._forward_hooks),
            tuple(m._forward_pre_hooks))


def _global_hooks() -> bool:
    """Hooks registered for every module (nn.modules.module.register_module_forward_hook): a trace would bake them
    in, and their registration touches no module."""
    from torch.nn.modules import module as nn_module
    return bool(nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks)


def _lookup(root: nn.Module, target: str):
    owner, _, name = target.rpartition(".")
    return getattr(root.get_submodule(owner) if owner else root, name)
