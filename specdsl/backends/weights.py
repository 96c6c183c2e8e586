"""Load weights into a compiled spec: from a state dict or a .safetensors file (or a folder of shards), under
specc's own names or mapped from Hugging Face transformers names (hf_naming.py). Missing and unexpected keys and
shape mismatches are reported by name, never ignored."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .. import ir
from ..kinds import KINDS, Args
from . import hf_naming as H


class WeightsError(ValueError):
    """Weights that do not fit the model: names missing, left over, or of the wrong shape."""


class _Missing(Exception):
    def __init__(self, keys):
        super().__init__(keys)
        self.keys = keys


def read_state(source) -> dict[str, torch.Tensor]:
    """A state dict, a .safetensors file, or a folder of them (sharded checkpoints)."""
    if isinstance(source, dict):
        return source
    path = Path(os.fspath(source))
    from safetensors.torch import load_file
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise WeightsError(f"no .safetensors files in {path}")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        return state
    if not path.exists():
        raise WeightsError(f"no such weights file: {path}")
    return load_file(str(path))


def _key(state, key: str, prefixes, used: set) -> torch.Tensor:
    candidates = [key[1:]] if key.startswith("^") else [p + key for p in prefixes]
    for k in candidates:
        if k in state:
            used.add(k)
            return state[k]
    raise _Missing([candidates[0]])


def _resolve(recipe, variables: dict, state, prefixes, used: set, head_dim: int | None = None) -> torch.Tensor:
    fmt = (lambda s: s.format(**variables)) if variables else (lambda s: s)
    if isinstance(recipe, str):
        return _key(state, fmt(recipe), prefixes, used)
    if isinstance(recipe, H.T):
        return _key(state, fmt(recipe.key), prefixes, used).t()
    if isinstance(recipe, H.Cat):
        return torch.cat([_key(state, fmt(k), prefixes, used) for k in recipe.keys], dim=0)
    if isinstance(recipe, H.Chunk):
        return _key(state, fmt(recipe.key), prefixes, used).chunk(recipe.parts, dim=recipe.dim)[recipe.index]
    if isinstance(recipe, H.Stack):
        parts = []
        while True:
            try:
                parts.append(_key(state, recipe.key.format(e=len(parts), **variables), prefixes, used))
            except _Missing:
                if not parts:
                    raise
                return torch.stack(parts)
    if isinstance(recipe, H.PerHead):
        tensor = _key(state, fmt(recipe.key), prefixes, used)
        if head_dim is None or tensor.shape[0] % (recipe.parts * head_dim):
            return tensor  # not a per-head layout of this layer: the shape check names the mismatch
        rest = tensor.shape[1:]
        grouped = tensor.reshape(-1, recipe.parts, head_dim, *rest)
        return grouped.transpose(0, 1).reshape(tensor.shape)
    if isinstance(recipe, H.First):
        missing = []
        for option in recipe.options:
            trial: set = set()
            try:
                tensor = _resolve(option, variables, state, prefixes, trial, head_dim)
            except _Missing as e:
                missing.extend(e.keys)
                continue
            used |= trial
            return tensor
        raise _Missing(missing[:1])
    raise TypeError(f"unknown recipe {recipe!r}")


def _head_dims(module: nn.Module) -> dict[str, int]:
    """Parameter name -> the head_dim its layer caches (Kind.cache_shape), for the layers that have one."""
    spec = getattr(module, "spec", None)
    if not isinstance(spec, ir.Model):
        return {}
    dims = {}
    for path, layer in ir.layers_with_paths(spec.root):
        shape = KINDS[layer.kind].cache_shape(Args(layer.args))
        if shape:
            dims.update({f"{path}.{p.name}": shape[1] for p in layer.params})
    return dims


def _map_family(family: H.Family, names, state, head_dims: dict | None = None):
    mapped, missing, used = {}, [], set()
    head_dims = head_dims or {}
    for name in names:
        found = H.rule_for(family, name)
        if found is None:
            missing.append(f"{name} (no {family.name} rule)")
            continue
        recipe, variables = found
        try:
            mapped[name] = _resolve(recipe, variables, state, family.prefixes, used, head_dims.get(name))
        except _Missing as e:
            missing.append(f"{name} <- {e.keys[0]}")
    return mapped, missing, used


def load_weights(module: nn.Module, source, naming: str | None = None, strict: bool = True) -> dict:
    """Copy weights into `module` (a compiled spec). `naming="hf"` maps Hugging Face names (the family is the one
    that explains every parameter). Returns a report {"family", "loaded", "unexpected"}; raises WeightsError
    naming every missing, unexpected or mis-shaped tensor."""
    state = read_state(source)
    params = dict(module.named_parameters())
    if naming in (None, "specc"):
        family_name, mapped = "specc", {n: state[n] for n in params if n in state}
        missing = [n for n in params if n not in state]
        used = set(mapped)
    elif naming == "hf":
        best, head_dims = None, _head_dims(module)
        for family in H.FAMILIES:
            mapped, missing, used = _map_family(family, params, state, head_dims)
            if best is None or len(missing) < len(best[2]):
                best = (family.name, mapped, missing, used)
            if not missing:
                break
        family_name, mapped, missing, used = best
    else:
        raise WeightsError(f"unknown naming '{naming}': use 'hf' or 'specc'")
    # Keys never read are unexpected, unless they are another name of a tensor that was read (tied weights).
    read_storage = {state[k].untyped_storage().data_ptr() for k in used}
    unexpected = sorted(k for k in state if k not in used and state[k].untyped_storage().data_ptr() not in read_storage)
    mismatched = [f"{n}: model {tuple(params[n].shape)} vs weights {tuple(t.shape)}"
                  for n, t in mapped.items() if tuple(t.shape) != tuple(params[n].shape)]
    problems = []
    if missing:
        problems.append(f"missing ({len(missing)}): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    if mismatched:
        problems.append(f"shape mismatch ({len(mismatched)}): " + "; ".join(mismatched[:20]))
    if unexpected and strict:
        problems.append(f"unexpected ({len(unexpected)}): " + ", ".join(unexpected[:20])
                        + (" ..." if len(unexpected) > 20 else ""))
    if problems:
        raise WeightsError(f"weights do not fit '{getattr(module, 'spec', None) and module.spec.name}' "
                           f"(naming {family_name}):\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for name, tensor in mapped.items():
            params[name].copy_(tensor.to(params[name].dtype))
    return {"family": family_name, "loaded": len(mapped), "unexpected": unexpected}
