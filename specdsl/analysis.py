"""Exact parameter counts, FLOPs and memory from the IR, without torch.

The analysis sums what each layer kind declares (specdsl/kinds); it knows nothing about individual kinds. Repeats
multiply, so the cost is proportional to the size of the spec, not of the model.

Conventions (named in every report):
- params.total: unique tensors' elements; a tied weight is counted once, where it is defined; biases included;
  vocabularies as written (no padding).
- params.embedding: parameters of Embedding and PositionalEmbedding layers (an untied output head is not one);
  non_embedding = total - embedding.
- params.active: parameters one token touches; a mixture of experts counts top_k of its experts (and its router).
- LoRA: total = the base model + the adapters (A [rank, in] and B [out, rank] per adapted matrix, no biases: peft's
  bias="none"); trainable = the adapters; frozen = the base (the module tree's rows are the base's, all frozen).
  As peft's get_nb_trainable_parameters counts them. FLOPs are the base model's.
- FLOPs: forward matmul FLOPs per token (per example for models without a sequence axis), 2 per multiply-add;
  the attention scores and weighted sum at the full context length without a causal discount (PaLM, App. B);
  norms, activations, softmax and the embedding lookup are not counted; training = 3 x forward.
- memory: weights at fp32/bf16/int8; AdamW training state = weights + gradients + two moments (fp32: 16 bytes per
  trainable parameter; bf16 mixed precision: bf16 weights and gradients, fp32 master weights and moments, also
  16 bytes; ZeRO, Rajbhandari et al. 2020, section 3.1); activations are not included.
- sizing: compute-optimal tokens = 20 x params (Chinchilla, Hoffmann et al. 2022); training compute = 6 x N x D
  with N the active parameters (Kaplan et al. 2020).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any

from . import ir
from .kinds import KINDS, Args
from .shapes import Sym

CHINCHILLA_TOKENS_PER_PARAM = 20
FLOPS_CONVENTION = ("2 FLOPs per multiply-add, matmuls only; attention at full context without causal discount; "
                    "train = 3 x forward")
PARAMS_CONVENTION = "tied weights counted once; biases included; vocabulary unpadded"


@dataclass
class ModuleStats:
    name: str
    path: str
    kind: str  # a layer kind, a block's name, or "repeat"
    description: str
    params: int  # unique parameters in this subtree, all repeats included
    trainable: int
    embedding: int
    active: int
    flops: int  # forward FLOPs per token of this subtree, all applications included
    kv_cache: int  # cached elements per token
    count: int = 1
    shared: bool = False
    children: list[ModuleStats] = field(default_factory=list)
    tied: bool = False  # a layer whose weight is another layer's (it counts zero, but is worth showing)
    memory_kv_cache: int = 0  # elements cached per position of a memory (cross-attention's keys and values)

    @property
    def params_each(self) -> int:
        """Parameters of one iteration of a repeat."""
        return self.params if self.shared else self.params // self.count

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "path": self.path, "kind": self.kind, "description": self.description,
               "params": self.params, "trainable": self.trainable, "active": self.active, "flops": self.flops}
        if self.kind == "repeat":
            out.update(count=self.count, shared=self.shared, params_each=self.params_each)
        if self.children:
            out["children"] = [c.to_json() for c in self.children]
        return out


def _layer_stats(layer: ir.Layer, path: str) -> ModuleStats:
    kind = KINDS[layer.kind]
    a = Args(layer.args)
    own = [p for p in layer.params if p.tied_to is None]
    total = sum(prod(p.shape) for p in own)
    trainable = sum(prod(p.shape) for p in own if p.trainable)
    embedding = sum(prod(p.shape) for p in own if p.embedding)
    active_all = kind.active_params(a)
    active = total if active_all is None else total - (kind.param_count(a) - active_all)
    description = layer.description
    tied = [p for p in layer.params if p.tied_to is not None]
    for p in tied:
        description += f", {p.name} tied to {p.tied_to}"
    return ModuleStats(layer.name, path, layer.kind, description, total, trainable, embedding, active,
                       kind.flops(a, layer.input), kind.kv_cache_per_token(a), tied=bool(tied),
                       memory_kv_cache=kind.kv_cache_per_memory_token(a))


def _module_stats(module: ir.Module, path: str) -> ModuleStats:
    prefix = f"{path}." if path else ""
    if module.is_repeat and not module.shared:
        prefix += ir.repeat_index(prefix) + "."
    children = [
        _layer_stats(c, prefix + c.name) if isinstance(c, ir.Layer) else _module_stats(c, prefix + c.name)
        for c in module.children
    ]
    weights = 1 if module.shared else module.count
    applied = module.count

    def total(attr: str, factor: int) -> int:
        return factor * sum(getattr(c, attr) for c in children)

    return ModuleStats(module.name, path, module.label, _describe_module(module),
                       total("params", weights), total("trainable", weights), total("embedding", weights),
                       total("active", weights), total("flops", applied), total("kv_cache", applied),
                       module.count, module.shared, children,
                       memory_kv_cache=total("memory_kv_cache", applied))


def _describe_module(module: ir.Module) -> str:
    if module.is_repeat:
        return f"{module.body} x {module.count}{' (shared weights)' if module.shared else ''}"
    return module.label


@dataclass
class Analysis:
    model: str
    preset: str | None
    hyperparameters: dict[str, Any]
    tree: ModuleStats
    unit: str  # "token" or "example": what FLOPs and KV cache are counted per
    context: int | None  # the sequence length the attention FLOPs assume
    lora: ir.Lora | None = None  # LoRA fine-tuning: the base model frozen, its adapters trained

    # ---- parameters ----
    @property
    def adapters(self) -> int:
        """Parameters of the LoRA adapters (0 without LoRA)."""
        return self.lora.params if self.lora else 0

    @property
    def total(self) -> int:
        return self.tree.params + self.adapters

    @property
    def trainable(self) -> int:
        return self.adapters if self.lora else self.tree.trainable

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    @property
    def embedding(self) -> int:
        return self.tree.embedding

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    @property
    def active(self) -> int:
        return self.tree.active + self.adapters

    # ---- FLOPs ----
    @property
    def forward_flops(self) -> int:
        return self.tree.flops

    @property
    def train_flops(self) -> int:
        return 3 * self.tree.flops

    # ---- memory (bytes) ----
    def memory(self) -> dict[str, Any]:
        n, t = self.total, self.trainable
        kv = self.tree.kv_cache
        out: dict[str, Any] = {
            "weights": {"fp32": 4 * n, "bf16": 2 * n, "int8": n},
            "training_adamw": {
                "fp32": 4 * n + 4 * t + 8 * t,
                "bf16_mixed": 2 * n + 2 * t + 4 * t + 8 * t,
            },
            "kv_cache_per_token": {"fp32": 4 * kv, "bf16": 2 * kv},
        }
        mkv = self.tree.memory_kv_cache
        if mkv:  # cross-attention: keys and values of the encoder's output, per source position
            out["kv_cache_per_memory_token"] = {"fp32": 4 * mkv, "bf16": 2 * mkv}
        if self.context and (kv or mkv):
            out["kv_cache_per_sequence"] = {"context": self.context, "bf16": 2 * (kv + mkv) * self.context}
        return out

    def sizing(self) -> dict[str, int]:
        tokens = CHINCHILLA_TOKENS_PER_PARAM * self.total
        return {"compute_optimal_tokens": tokens, "training_flops": 6 * self.active * tokens}

    def lora_json(self) -> dict[str, Any] | None:
        """The LoRA settings, what they adapt and its counts (docs/json.md), or None."""
        lora = self.lora
        if lora is None:
            return None
        return {**lora.settings(), "scale": lora.scale, "matrices": len(lora.adapters), "params": lora.params,
                "trainable_percent": 100 * self.trainable / self.total if self.total else 0.0,
                "adapters": [{"target": a.target, "param": a.param, "rows": list(a.rows) if a.rows else None,
                              "lora_A": [lora.rank, a.in_features], "lora_B": [a.out_features, lora.rank]}
                             for a in lora.adapters]}

    def to_json(self) -> dict[str, Any]:
        params = {"total": self.total, "trainable": self.trainable, "frozen": self.frozen,
                  "embedding": self.embedding, "non_embedding": self.non_embedding, "active": self.active,
                  "convention": PARAMS_CONVENTION}
        if self.lora:
            params["lora"] = self.lora_json()
        return {
            "model": self.model,
            "preset": self.preset,
            "hyperparameters": self.hyperparameters,
            "params": params,
            "flops": {"forward_per_token": self.forward_flops, "train_per_token": self.train_flops,
                      "per": self.unit, "context": self.context, "convention": FLOPS_CONVENTION},
            "memory": self.memory(),
            "sizing": self.sizing(),
            "modules": [c.to_json() for c in self.tree.children],
        }


def analyse(model: ir.Model) -> Analysis:
    tree = _module_stats(model.root, "")
    tree.name = model.name
    sequence_like = any(sum(isinstance(d, Sym) for d in i.type.shape) >= 2 for i in model.inputs)
    contexts = [KINDS[layer.kind].context(Args(layer.args), layer.input)
                for layer in _layers(model.root)]
    context = max((c for c in contexts if c), default=None)
    if model.lora is not None:
        _freeze(tree)
    return Analysis(model.name, model.preset, dict(model.hyperparameters), tree,
                    "token" if sequence_like else "example", context, model.lora)


def _freeze(stats: ModuleStats) -> None:
    """Under LoRA the whole base model is frozen: no module trains its own parameters."""
    stats.trainable = 0
    for child in stats.children:
        _freeze(child)


def _layers(module: ir.Module):
    for c in module.children:
        if isinstance(c, ir.Layer):
            yield c
        else:
            yield from _layers(c)
