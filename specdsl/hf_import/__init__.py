"""`specc import`: a readable spec from a Hugging Face config.json, for every model_type the weight loader reads.

    from specdsl.hf_import import import_config
    imported = import_config("path/to/checkpoint")   # a folder with config.json, the file, or a dict
    imported.text                                    # the spec: std blocks, the zoo's names and hyperparameters

The spec uses specs/std/transformer.spec's blocks and the labels of the zoo spec of its family, so
`load_weights(module, FOLDER)` reads the checkpoint into the compiled spec and its architecture checks pass; it
counts exactly what transformers builds from the same config. What specc cannot express (a rescaled rotary, a
per-layer window, a task head the loader does not name...) is refused with the config field named. Torch-free, and
free of transformers: config.json is read as JSON and each model_type's defaults are written in its recipe.

One recipe per model_type (recipe.py), grouped by family: gpt.py (GPT-2, GPT-1, OPT, BLOOM), rotary.py (Phi,
GPT-NeoX, GPT-J), llama.py (LLaMA, Mistral, Qwen2, Qwen3, Gemma, Mixtral, OLMo 2), bert.py (BERT, ALBERT).
config.py reads the file and locates errors; readers.py holds what families share; draft.py writes the text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import SpecError, did_you_mean
from ..version import __version__
from . import bert, gpt, llama, rotary
from .config import ABSENT, Config, parse_config, read_config
from .draft import quote, render
from .readers import architecture
from .recipe import Recipe

RECIPES: dict[str, Recipe] = {r.model_type: r for r in (*gpt.RECIPES, *rotary.RECIPES, *llama.RECIPES,
                                                        *bert.RECIPES)}

# model_types the weight loader is gaining in parallel, with what their recipe waits for; `specc import` says so.
PENDING: dict[str, str] = {}


@dataclass(frozen=True)
class Imported:
    text: str            # the spec
    model_type: str
    architecture: str    # the transformers class it follows (LlamaForCausalLM, BertModel...)


def import_config(source: str | os.PathLike | dict, name: str = "config.json") -> Imported:
    """The spec of a checkpoint folder, a config.json file, or a config as a dict (`name` then says what to call
    it). Raises SpecError, located at the config's field, for what cannot be imported."""
    config = Config(source, name) if isinstance(source, dict) else read_config(source)
    recipe = recipe_for(config)
    arch = architecture(config, recipe.architectures)
    draft = recipe.build(config, arch)
    return Imported(render(draft, _header(config, recipe, arch, draft.zoo)), recipe.model_type, arch)


def recipe_for(config: Config) -> Recipe:
    """The recipe of config.json's model_type, or, when it has none, of the class its `architectures` names."""
    model_type = config.get("model_type")
    if model_type is None or model_type is ABSENT:
        archs = config.get("architectures")
        archs = archs if isinstance(archs, list) else []
        for recipe in RECIPES.values():
            if any(arch in recipe.architectures for arch in archs):
                return recipe
        raise config.error("architectures" if archs else None,
                           "config.json has no model_type, and no architectures entry specc knows",
                           hint=f"specc imports the model_types {', '.join(sorted(RECIPES))}")
    if not isinstance(model_type, str):
        raise config.error("model_type", "model_type must be a string")
    if model_type in RECIPES:
        return RECIPES[model_type]
    if model_type in PENDING:
        raise config.error("model_type", f"model_type '{model_type}' is not importable yet: {PENDING[model_type]}")
    near = did_you_mean(model_type, RECIPES)
    raise config.error("model_type", f"model_type {quote(model_type)} is not one specc imports; it imports "
                       f"{', '.join(sorted(RECIPES))}", hint=near)


def _header(config: Config, recipe: Recipe, arch: str, zoo: str | None) -> list[str]:
    """Which config the spec came from. Texts from the file are quoted (draft.quote), never written raw."""
    facts = [f"model_type {quote(recipe.model_type)}", f"architectures [{quote(arch)}]"]
    for field in ("_name_or_path", "transformers_version"):
        value = config.get(field)
        if isinstance(value, str) and value:
            facts.append(f"{field} {quote(value)}")
    names = f"specs/{zoo}'s names" if zoo else f"the names the weight loader's {recipe.title} family reads"
    return [f"{recipe.title}, imported by `specc import` (specc {__version__}) from {quote(config.file)}:",
            ", ".join(facts) + ".",
            f"Blocks of specs/std/transformer.spec under {names}: load_weights(module, FOLDER) reads the checkpoint.",
            "Each hyperparameter's comment names the config field it came from."]


__all__ = ["Imported", "PENDING", "RECIPES", "SpecError", "import_config", "parse_config", "recipe_for"]
