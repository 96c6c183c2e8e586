"""A LoRA run (docs/training.md, "Fine-tuning with LoRA"): it adapts the weights of --init-from, which it records in
run.json's "lora" (where they are, and the sha256 of the weights as loaded) and loads again wherever the run's model
is needed (a resume, sample, export); its checkpoints hold only the adapters it trains (checkpoint.py). Base weights
that changed since the run started are refused, naming them: adapters mean nothing over other weights.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from .. import ir
from ..errors import Span, SpecError
from .rundir import LORA_SETTINGS as SETTINGS  # run.json's "lora": these, the adapters' count, the base weights


def require_base(model: ir.Model, init_from: str | None) -> None:
    """LoRA adapts weights it is given: a run without --init-from is refused before anything is written."""
    if model.lora is not None and not init_from:
        raise SpecError("LoRA fine-tunes the weights a run starts from, and this run starts from none",
                        model.lora.span, hint="give them with --init-from FOLDER|FILE|RUN_DIR (a Hugging Face "
                                              "checkpoint folder, a .safetensors file or a specc run)")


def resumed_settings(saved: dict, model: ir.Model, flags: dict | None, out: Path) -> dict | None:
    """The LoRA settings a resumed run keeps (run.json's); a change asked on the command line is refused."""
    kept = {k: saved["lora"][k] for k in SETTINGS} if isinstance(saved.get("lora"), dict) else None
    asked = model.lora.settings() if model.lora is not None else None
    if flags and asked != kept:
        raise SpecError(f"cannot resume '{out}': LoRA {kept or 'off'} -> {asked or 'off'}", Span("--lora", 0, 0),
                        hint="a resumed run keeps its LoRA settings; start a new run (another --out) to change them")
    return kept


def base_path(record: dict | None) -> str | None:
    """Where a LoRA run's base weights are (run.json's absolute path: a resume from another folder finds them)."""
    lora = (record or {}).get("lora")
    base = lora.get("base") if isinstance(lora, dict) else None
    path = base.get("path") if isinstance(base, dict) else None
    return path if isinstance(path, str) else None


def start(module, lora: ir.Lora, init, saved: dict | None) -> dict:
    """After the base weights are in `module`: their fingerprint (a resumed run's must be the one it started with),
    then the adapters. Returns run.json's "lora"."""
    from ..backends.lora import add_adapters, fingerprint
    base = {"path": os.path.abspath(init.path), "kind": init.kind, "sha256": fingerprint(module)}
    if saved is not None:
        check_base(saved["lora"]["base"], base["sha256"], Span("--resume", 0, 0))
    add_adapters(module, lora)
    return {**lora.settings(), "adapters": len(lora.adapters), "params": lora.params, "base": base}


def check_base(recorded: dict, now: str, where: Span) -> None:
    """The base weights loaded (`now`, their fingerprint) are those a LoRA run recorded."""
    if now != recorded.get("sha256"):
        raise SpecError(f"the base weights at '{recorded.get('path')}' are not those this LoRA run adapts (sha256 "
                        f"{now[:12]}... where the run recorded {str(recorded.get('sha256'))[:12]}...)", where,
                        hint="its checkpoints hold only adapters: restore the weights it started from")


def merged(compiled, module):
    """For export: (the compiled model without LoRA, `module` with its adapters merged into the base weights), and
    the largest |difference| merging made to the outputs (None without a module: random weights, no adapters)."""
    from ..compiled import Compiled
    plain = Compiled(replace(compiled.model, lora=None))
    if module is None or getattr(module, "lora", None) is None:
        return plain, module, None
    from ..backends.lora import merge_checked
    from ..backends.onnx_graph import TOLERANCE  # the export's own, against onnxruntime
    diff = merge_checked(module)
    if not diff <= TOLERANCE:
        raise SpecError(f"merging the LoRA adapters changed the outputs by {diff:.3g}", Span("--checkpoint", 0, 0))
    module.spec = plain.model
    return plain, module, diff
