"""Load weights into a compiled spec: from a state dict, a weights file or a Hugging Face checkpoint folder (its
config.json, and the shards its index lists), under specc's own names or mapped from Hugging Face transformers names
(hf_naming.py). The family comes from config.json's model_type (or family=), and the architecture facts the config
states are checked against the spec. The spec's parameters take the family's names by structure, whatever its labels
(hf_structure.py). Missing and unexpected keys, shape mismatches, structure and architecture differences are
reported by name, never ignored."""

from __future__ import annotations

import difflib
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from .. import ir
from ..kinds import KINDS, Args
from . import hf_naming as H
from . import hf_structure


class WeightsError(ValueError):
    """Weights that do not fit the model: names missing, left over, or of the wrong shape; a checkpoint folder
    that cannot be read."""


class ArchitectureError(WeightsError):
    """A checkpoint whose config.json states an architecture the spec does not declare (names and shapes may fit:
    Gemma's weights into a LLaMA spec). The message names each difference and its fix."""


class StructureError(WeightsError):
    """A spec whose layers do not follow its family's reference structure (hf_naming.REFERENCES): its parameters
    have no names in the checkpoint. The message names the spec's parameter at the spot and what the family expects
    there."""

    def __init__(self, family: str, mismatch: hf_structure.Mismatch):
        super().__init__(
            f"the spec's layers do not follow the structure of family {family} ({mismatch.variant}), so its "
            f"parameters have no names in the checkpoint: {mismatch.text}\nLabels are free; the layers that have "
            "parameters must follow the family's in order and kind, repeat for repeat (docs/python-api.md, "
            "'How names are matched')")
        self.matched = mismatch.matched


class _Missing(Exception):
    def __init__(self, keys):
        super().__init__(keys)
        self.keys = keys


_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"no such weights file: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: safetensors' and torch's errors vary
        raise WeightsError(f"{path}: damaged or not a weights file ({type(e).__name__}: {e})") from None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(value, dict):
        raise WeightsError(f"{path}: not a JSON object")
    return value


def _read_folder(path: Path) -> dict[str, torch.Tensor]:
    """A folder as save_pretrained writes it: the shards its index lists (each must exist, load and hold the keys
    the index gives it), else model.safetensors, else pytorch_model.bin, else every *.safetensors in it."""
    for name in _INDEXES:
        index = path / name
        if not index.exists():
            continue
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{index}: no weight_map")
        shards: dict[str, list[str]] = {}
        for key, shard in weight_map.items():
            if not isinstance(shard, str) or Path(shard).name != shard:
                raise WeightsError(f"{index}: {key!r} is in {shard!r}, not a file name in the folder")
            shards.setdefault(shard, []).append(key)
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise WeightsError(f"{index} lists shards missing from {path}: {', '.join(missing)}")
        state: dict[str, torch.Tensor] = {}
        for shard, keys in shards.items():
            tensors = _read_file(path / shard)
            absent = [k for k in keys if k not in tensors]
            if absent:
                raise WeightsError(f"{path / shard} lacks {len(absent)} tensor(s) {index.name} puts in it: "
                                   + ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else ""))
            state.update({k: tensors[k] for k in keys})
        return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).exists():
            return _read_file(path / name)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"no weights in {path}: no {_INDEXES[0]}, model.safetensors, pytorch_model.bin "
                           "or other .safetensors file")
    state = {}
    for f in files:
        state.update(_read_file(f))
    return state


def read_state(source) -> dict[str, torch.Tensor]:
    """A state dict, a .safetensors (or torch .bin) file, or a checkpoint folder (_read_folder)."""
    return read_checkpoint(source)[0]


def read_checkpoint(source) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, the folder's config.json or None)."""
    if isinstance(source, dict):
        return source, None
    path = Path(os.fspath(source))
    if path.is_dir():
        config = _read_json(path / "config.json") if (path / "config.json").exists() else None
        return _read_folder(path), config
    return _read_file(path), None


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


def _reference_names(family: H.Family, ours) -> dict | None:
    """{the spec's parameter name: the one the family's rules are written for}, matched by structure; None where
    the spec's own names are used (a family without a reference, a module that is not a compiled spec)."""
    reference = H.REFERENCES.get(family.name)
    if reference is None or ours is None:
        return None
    try:
        return hf_structure.reference_names(ours, reference)
    except hf_structure.Mismatch as e:
        raise StructureError(family.name, e) from None


def _map_family(family: H.Family, names, state, head_dims: dict | None = None, ours=None):
    """(mapped, missing, used) for the spec's parameter `names`; `ours` is the spec's structure
    (hf_structure.structure). Raises StructureError."""
    mapped, missing, used = {}, [], set()
    head_dims = head_dims or {}
    renamed = _reference_names(family, ours) or {}
    for name in names:
        theirs = renamed.get(name, name)
        found = H.rule_for(family, theirs)
        if found is None:
            missing.append(f"{name} (no {family.name} rule{f' for {theirs}' if theirs != name else ''})")
            continue
        recipe, variables = found
        try:
            mapped[name] = _resolve(recipe, variables, state, family.prefixes, used, head_dims.get(name))
        except _Missing as e:
            missing.append(f"{name} <- {e.keys[0]}")
    return mapped, missing, used


def _config_dict(config) -> dict:
    if isinstance(config, dict):
        return config
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        return _read_json(path / "config.json" if path.is_dir() else path)
    if hasattr(config, "to_dict"):  # a transformers PretrainedConfig
        return config.to_dict()
    raise WeightsError(f"config: a dict, a config.json path or a transformers config, not {type(config).__name__}")


def _family_by_name(name: str) -> tuple[H.Family, str | None]:
    for family in H.FAMILIES:
        if family.name == name:
            return family, name if name in family.model_types else None
    if name in H.MODEL_TYPES:
        return H.MODEL_TYPES[name], name
    raise WeightsError(f"unknown family '{name}': use 'specc', 'hf' (guess from the keys) or a family or "
                       f"model_type: {_families_text()}")


def _families_text() -> str:
    return "; ".join(f"{f.name} ({', '.join(f.model_types)})" for f in H.FAMILIES)


def _ranked(params, state, head_dims, ours=None) -> list:
    """Families by how many of the spec's parameters their names explain in `state`, best first:
    (unexplained, family name, mapped, missing, used, StructureError or None). A family whose structure the spec
    does not follow explains none; among those, the one that matched more layers ranks first."""
    fits = []
    for family in H.FAMILIES:
        try:
            mapped, missing, used = _map_family(family, params, state, head_dims, ours)
            fits.append((len(missing), 0, family.name, mapped, missing, used, None))
        except StructureError as e:
            fits.append((len(params), -e.matched, family.name, {}, list(params), set(), e))
    fits.sort(key=lambda f: f[:2])
    return [(miss, name, mapped, missing, used, error) for miss, _, name, mapped, missing, used, error in fits]


def _closest_text(fits, total: int, n: int = 3) -> str:
    return ", ".join(f"{name} ({'structure differs' if error else f'{miss} of {total} parameters unexplained'})"
                     for miss, name, *_, error in fits[:n])


def _spec_facts(spec: ir.Model) -> dict[str, list]:
    """kind -> [(path, args)] of the compiled spec's layers."""
    facts: dict[str, list] = {}
    for path, layer in ir.layers_with_paths(spec.root):
        facts.setdefault(layer.kind, []).append((path, dict(layer.args)))
    return facts


def _same(a, b, tol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) \
            or not isinstance(b, (int, float)):
        return a == b
    return math.isclose(a, b, rel_tol=tol, abs_tol=0.0) if tol else a == b


def _show(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f'"{value}"' if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def check_architecture(spec: ir.Model, family: H.Family, model_type: str, config: dict) -> list[str]:
    """The family's checks for `model_type` (hf_naming.Check) against the spec; raises ArchitectureError naming
    every difference. Returns what was checked."""
    facts, problems, checked = _spec_facts(spec), [], []
    for check in family.checks.get(model_type, ()):
        expected = check.expect(config)
        if expected is H.SKIP:
            continue
        layers = [(path, args) for kind in check.kinds for path, args in facts.get(kind, ())]
        stated = " / ".join(check.expect.fields) if getattr(check.expect, "fields", ()) else f"model_type {model_type}"
        if check.arg is None:
            ours = bool(layers)
            if ours != expected:
                where = (f"it has {', '.join(p for p, _ in layers[:3])}" if layers
                         else f"it has no {'/'.join(check.kinds)} layer")
                theirs = "yes" if expected is True else "no" if expected is False else str(expected)
                problems.append(f"{check.what}: the checkpoint ({stated}) says {theirs}; the spec: {where}. "
                                f"Fix: {check.fix.format(value=_show(expected))}")
            checked.append(check.what)
            continue
        wrong = [(path, args[check.arg]) for path, args in layers
                 if check.arg in args and not _same(args[check.arg], expected, check.tol)]
        if wrong:
            values = sorted({_show(v) for _, v in wrong})
            paths = ", ".join(p for p, _ in wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
            problems.append(f"{check.what}: the checkpoint ({stated}) says {_show(expected)}; the spec's "
                            f"{'/'.join(check.kinds)} {check.arg} = {' / '.join(values)} ({paths}). "
                            f"Fix: {check.fix.format(value=_show(expected))}")
        if layers:
            checked.append(check.what)
    if problems:
        raise ArchitectureError(
            f"the checkpoint (model_type '{model_type}', family {family.name}) is not the architecture of spec "
            f"'{spec.name}'; its names and shapes may fit, but its outputs would be wrong:\n  "
            + "\n  ".join(problems))
    return checked


def _map_names(choice: str, config: dict | None, params: dict, state: dict, head_dims: dict, ours):
    """(family name, model_type, mapped, missing, used): the family `choice` names, else the one config.json's
    model_type names (refusing a contradiction, or a model_type no family reads), else the family whose names
    explain every parameter ("hf" without a config). `ours`: the spec's structure, matched to the family's."""
    if choice == "specc":
        mapped = {n: state[n] for n in params if n in state}
        return "specc", None, mapped, [n for n in params if n not in state], set(mapped)
    chosen, model_type = _family_by_name(choice) if choice not in (None, "hf") else (None, None)
    if config is not None:
        found = H.family_for_config(config)
        stated = config.get("model_type") or config.get("architectures")
        if found is None and chosen is None:
            fits = _ranked(params, state, head_dims, ours)
            near = difflib.get_close_matches(str(config.get("model_type", "")), list(H.MODEL_TYPES), n=3,
                                             cutoff=0.5)
            raise WeightsError(
                f"no family reads model_type {stated!r} (config.json): the families and their model_types are "
                f"{_families_text()}. Closest by name: {', '.join(near) or 'none'}; by the weights' keys: "
                f"{_closest_text(fits, len(params))}. If one of them has this checkpoint's names and "
                "architecture, pass family=NAME (a model_type also checks the config as that model_type's)")
        if found is not None:
            if chosen is not None and found[0] is not chosen:
                raise WeightsError(f"family='{choice}' but the checkpoint's config.json says model_type "
                                   f"'{found[1]}' (family {found[0].name}): those names are not {chosen.name}'s")
            chosen, model_type = found
    if chosen is None:  # "hf" without a config: the family whose names explain every parameter
        _, family_name, mapped, missing, used, error = _ranked(params, state, head_dims, ours)[0]
        if error is not None:  # no family's structure fits: the one that came closest says where
            raise error
        return family_name, None, mapped, missing, used
    mapped, missing, used = _map_family(chosen, params, state, head_dims, ours)
    return chosen.name, model_type, mapped, missing, used


def load_weights(module: nn.Module, source, naming: str | None = None, strict: bool = True, *,
                 family: str | None = None, config=None) -> dict:
    """Copy weights into `module` (a compiled spec) from a state dict, a weights file or a Hugging Face checkpoint
    folder (config.json, model.safetensors or the shards its index lists, or pytorch_model.bin).

    The family of names: `family=` (a family name such as "llama", a model_type such as "gemma", "hf" to guess
    from the keys, or "specc" for specc's own names; `naming=` is its old name), else the model_type of the
    checkpoint's config.json (or of `config=`: a dict, a path or a transformers config), else specc's names for a
    state dict or file (a folder needs config.json or family=). The spec's parameters take the family's names by
    structure, whatever the spec's labels (hf_structure.py). With a model_type known, the config's architecture
    facts are checked against the spec (hf_naming.Check) before anything is copied.

    Returns {"family", "model_type", "loaded", "unexpected", "checked"}; raises WeightsError naming every missing,
    unexpected or mis-shaped tensor, StructureError where the spec's layers do not follow the family's,
    ArchitectureError for every architecture difference."""
    if naming is not None and family is not None and naming != family:
        raise WeightsError(f"naming='{naming}' and family='{family}' disagree: naming is the old name of family")
    choice = family if family is not None else naming
    is_folder = not isinstance(source, dict) and Path(os.fspath(source)).is_dir()
    state, folder_config = read_checkpoint(source)
    config = _config_dict(config) if config is not None else folder_config
    params = dict(module.named_parameters())
    spec = getattr(module, "spec", None)
    head_dims = _head_dims(module)
    if choice is None and config is None:
        if is_folder:
            raise WeightsError(f"{os.fspath(source)} has no config.json to say which model it holds: pass "
                               f"family= (one of {_families_text()}), or 'specc' for specc's own names")
        choice = "specc"
    ours = hf_structure.structure(spec) if isinstance(spec, ir.Model) else None
    try:
        family_name, model_type, mapped, missing, used = _map_names(choice, config, params, state, head_dims, ours)
    except StructureError:
        found = H.family_for_config(config) if config is not None else None
        if found is not None and isinstance(spec, ir.Model):  # the facts the config states say more, and the fix
            check_architecture(spec, found[0], found[1], config)
        raise
    checked = []
    if model_type is not None and isinstance(spec, ir.Model):
        checked = check_architecture(spec, H.MODEL_TYPES[model_type], model_type, config or {})
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
    if missing and family_name != "specc":
        problems.append("closest families by these keys: " + _closest_text(_ranked(params, state, head_dims, ours),
                                                                            len(params)))
    if problems:
        raise WeightsError(f"weights do not fit '{getattr(module, 'spec', None) and module.spec.name}' "
                           f"(family {family_name}{f', model_type {model_type}' if model_type else ''}):\n  "
                           + "\n  ".join(problems))
    with torch.no_grad():
        for name, tensor in mapped.items():
            params[name].copy_(tensor.to(params[name].dtype))
    return {"family": family_name, "model_type": model_type, "loaded": len(mapped), "unexpected": unexpected,
            "checked": checked}
