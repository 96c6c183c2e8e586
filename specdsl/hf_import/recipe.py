"""What turns one Hugging Face model_type into a spec: a `Recipe` names the transformers classes whose checkpoints
it reads (the first is the default when config.json has no `architectures`) and builds a Draft from the config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .config import Config
from .draft import Draft


@dataclass(frozen=True)
class Recipe:
    model_type: str
    title: str                                 # the family in words, for the header: "LLaMA"
    architectures: tuple[str, ...]             # transformers classes the weight loader names; [0] the default
    build: Callable[[Config, str], Draft]      # (config, the architecture) -> the draft
