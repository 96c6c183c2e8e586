"""LoRA adapters on a compiled module (Hu et al. 2021): the base weights frozen, each adapted matrix W used as
W + (alpha / rank) B A, with A [rank, in] (kaiming-uniform, as peft) and B [out, rank] (zeros), so training starts
from the base model exactly.

Why not peft's own LoRA: peft adapts whole nn.Linear modules, and specc's q, k and v are row slices of one fused qkv
weight (kinds/attention.py), so peft on LLaMA's q_proj and v_proj (rank (d + d) + rank (d + kv_dim) per layer) has
no equivalent there. The kinds declare their adaptable matrices (kinds/base.py, Adaptable) and the IR lists the
chosen ones (ir.Lora); this module gives them their torch form.

How: the adapters are parameters of the nn.Linear whose weight they adapt, named after the matrix
(`h.0.attn.qkv.lora_A.q`, `h.0.attn.qkv.lora_B.q`), and a forward hook on that Linear adds
scale * B A dropout(x) to the rows of its output that the matrix makes, as peft's LoraLayer does. The layers'
forwards are untouched. A parametrization (torch.nn.utils.parametrize, W + scale B A as the weight) would be
the same map, but it cannot drop out the adapter's input alone (peft's lora_dropout) and its backward forms the full
weight's gradient each step, which LoRA exists to avoid. `merge` folds them into the base weights for export.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import ir
from ..kinds import KindError


def add_adapters(module: nn.Module, lora: ir.Lora) -> nn.Module:
    """Freeze every parameter of `module` (a compiled SpecModule holding its base weights) and add the adapters of
    `lora`, drawn from torch's generator. Returns the module; `module.lora` says it carries adapters."""
    module.requires_grad_(False)
    by_owner: dict[str, list[ir.Adapter]] = {}
    for adapter in lora.adapters:
        by_owner.setdefault(adapter.owner, []).append(adapter)
    for owner_path, adapters in by_owner.items():
        owner = module.get_submodule(owner_path)
        if type(owner) is not nn.Linear:  # what Adaptable promises: an nn.Linear using its weight as x @ W.T
            raise KindError(f"{adapters[0].kind} declares {adapters[0].param} adaptable (LoRA), but {owner_path} is "
                            f"a {type(owner).__name__}, not an nn.Linear")
        _attach(owner, adapters, lora)
    module.lora = lora
    return module


def _attach(owner: nn.Linear, adapters: list[ir.Adapter], lora: ir.Lora) -> None:
    weight = owner.weight
    owner.lora_A = nn.ParameterDict()
    owner.lora_B = nn.ParameterDict()
    for a in adapters:
        A = nn.Parameter(torch.empty(lora.rank, a.in_features, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # peft's LoraLayer.reset_lora_parameters (init_lora_weights=True)
        owner.lora_A[a.key] = A
        owner.lora_B[a.key] = nn.Parameter(torch.zeros(a.out_features, lora.rank, device=weight.device,
                                                       dtype=weight.dtype))
    owner.lora_dropout = nn.Dropout(lora.dropout).train(owner.training)
    parts = tuple((a.key, a.rows) for a in adapters)
    owner._lora_hook = owner.register_forward_hook(_adapted(parts, lora.scale))


def _adapted(parts: tuple, scale: float):
    """The forward hook: the Linear's output plus scale * B A dropout(x) on each adapted matrix's rows."""
    def hook(owner: nn.Linear, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        rows = owner.out_features  # not output.shape[-1]: an int, so that a traced step (flat_step.py) can branch on it
        for key, span in parts:
            delta = F.linear(F.linear(owner.lora_dropout(x), owner.lora_A[key]), owner.lora_B[key]) * scale
            if span is not None and span != (0, rows):
                delta = F.pad(delta, (span[0], rows - span[1]))
            output = output + delta
        return output
    return hook


def adapter_names(module: nn.Module) -> list[str]:
    """The parameter names of the adapters (what a LoRA run trains and its checkpoints hold), in module order."""
    return [name for name, _ in module.named_parameters() if ".lora_A." in name or ".lora_B." in name]


@torch.no_grad()
def merge(module: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W[rows] += scale * B @ A) and remove the adapters: the plain model,
    under the base's names, for export. Returns the module."""
    lora: ir.Lora = module.lora
    for adapter in lora.adapters:
        owner = module.get_submodule(adapter.owner)
        delta = lora.scale * owner.lora_B[adapter.key] @ owner.lora_A[adapter.key]
        rows = slice(*adapter.rows) if adapter.rows else slice(None)
        owner.weight[rows] += delta.to(owner.weight.dtype)
    for owner_path in dict.fromkeys(a.owner for a in lora.adapters):
        owner = module.get_submodule(owner_path)
        owner._lora_hook.remove()
        del owner.lora_A, owner.lora_B, owner.lora_dropout, owner._lora_hook
    del module.lora
    return module


@torch.no_grad()
def merge_checked(module: nn.Module) -> float:
    """`merge`, checked: the largest |difference| between the module's outputs before and after, on random inputs
    of its spec's types (drawn from a generator of its own: the caller's stream is untouched)."""
    from ..contract import contract
    from ..shapes import Sym
    generator = torch.Generator().manual_seed(0)
    ids = contract(module.spec).ids or 2
    inputs = []
    for given in (i for i in module.spec.inputs if i.default is None):
        shape = [(2 if n == 0 else min(d.bound or 8, 8)) if isinstance(d, Sym) else d
                 for n, d in enumerate(given.type.shape)]
        inputs.append(torch.randint(0, ids, shape, generator=generator) if given.type.dtype == "int"
                      else torch.randn(shape, generator=generator))
    was_training = module.training
    module.eval()
    before = _outputs(module(*inputs))
    after = _outputs(merge(module)(*inputs))
    module.train(was_training)
    return max(float((a - b).abs().max()) for a, b in zip(before, after))


def _outputs(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def fingerprint(module: nn.Module) -> str:
    """sha256 of a module's weights (names, dtypes, shapes and bytes, in order): what a LoRA run records of the base
    weights it adapts, and checks when it loads them again."""
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        t = p.detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
