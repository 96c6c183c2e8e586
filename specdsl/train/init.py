"""--init-from: the weights a run starts from, for fine-tuning. A Hugging Face checkpoint folder (config.json and the
shards its index lists: backends/weights.py maps the names by architecture and checks it), a weights file under
specc's names, or a specc run directory (its best checkpoint, else its last). What came with the weights comes too:
the folder's tokenizer.json or the run's tokenizer (unless --tokenizer says otherwise), and the vocabulary size the
weights were made for. Nothing here is run: weights are tensors read by safetensors or torch's weights_only loader.
A run's own weights load here too (`load_run_weights`): a LoRA run's are its base weights and its adapters
(train/adapters.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import Span, SpecError

WHERE = Span("--init-from", 0, 0)


@dataclass(frozen=True)
class InitSource:
    """Where the starting weights are: `kind` is "run", "hugging face" or "file"."""

    path: Path
    kind: str
    tokenizer: str | None  # a path --tokenizer takes (tokenizer.json), when one came with the weights
    vocab: int | None  # the vocabulary the weights were made for (config.json's vocab_size, a run's contract)

    def record(self, loaded: dict) -> dict:
        """run.json's "init_from": where the weights came from and what the loader made of them."""
        return {"path": str(self.path), "kind": self.kind, **loaded}


def init_source(path: str) -> InitSource:
    """What --init-from PATH names; SpecError at --init-from for what is none of the three."""
    p = Path(path)
    if p.is_dir() and (p / "run.json").is_file():
        from . import rundir
        run = rundir.open_existing(p)
        record = run.record()
        tokenizer = p / rundir.DATA / "tokenizer.json"
        vocab = (record.get("contract") or {}).get("vocab")
        return InitSource(p, "run", str(tokenizer) if tokenizer.is_file() else None, vocab)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise SpecError(f"'{path}' is neither a specc run (run.json) nor a Hugging Face checkpoint folder "
                            "(config.json)", WHERE, hint="--init-from takes a run directory of specc train, a folder "
                                                         "save_pretrained wrote, or a .safetensors file")
        config = _json(p / "config.json")
        vocab = config.get("vocab_size") if isinstance(config.get("vocab_size"), int) else None
        tokenizer = p / "tokenizer.json"
        return InitSource(p, "hugging face", str(tokenizer) if tokenizer.is_file() else None, vocab)
    if p.is_file():
        return InitSource(p, "file", None, None)
    raise SpecError(f"no such checkpoint: '{path}'", WHERE)


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SpecError(f"'{path}' cannot be read as JSON ({e})", WHERE) from None
    if not isinstance(value, dict):
        raise SpecError(f"'{path}' is not a JSON object", WHERE)
    return value


def load_initial_weights(module, source: InitSource) -> dict:
    """Copy the starting weights into `module` (every parameter, shapes checked; a Hugging Face checkpoint's
    architecture checked against the spec); returns what the loader reports, for run.json."""
    if source.kind == "run":
        from . import checkpoint, rundir
        run = rundir.open_existing(source.path)
        folder = run.complete("best") or run.complete("last")
        if folder is None:
            raise SpecError(f"'{source.path}' has no complete checkpoint to start from", WHERE)
        if run.record().get("lora"):  # its checkpoint holds adapters: start from them merged into its base
            load_merged(module, run, folder)
        else:
            checkpoint.load_weights_into(module, folder)
        return {"checkpoint": folder.name, "step": checkpoint.read_trainer_state(folder).get("step")}
    from ..backends.weights import WeightsError, load_weights
    try:
        loaded = load_weights(module, os.fspath(source.path), family="specc" if source.kind == "file" else None)
    except WeightsError as e:
        raise SpecError(f"the weights of '{source.path}' do not fit the spec: {e}", WHERE,
                        hint="the spec must be the checkpoint's architecture (specc import FOLDER writes one)") \
            from None
    return {"family": loaded["family"], "model_type": loaded["model_type"], "loaded": loaded["loaded"]}


def load_run_weights(module, record: dict, folder: Path) -> None:
    """A run's checkpoint into its module (compiled from the run): the weights, or for a LoRA run the base weights
    it recorded, checked, then its adapters."""
    from . import checkpoint
    lora = module.spec.lora
    if lora is None:
        checkpoint.load_weights_into(module, folder)
        return
    from ..backends.lora import add_adapters, fingerprint
    from .adapters import check_base
    base = (record.get("lora") or {}).get("base")
    where = Span(str(Path(folder).parent), 0, 0)
    if not isinstance(base, dict) or not isinstance(base.get("path"), str):
        raise SpecError(f"run.json of '{where}' does not say which base weights its LoRA adapters adapt", where)
    try:
        load_initial_weights(module, init_source(base["path"]))
    except SpecError as e:
        raise SpecError(f"the base weights of LoRA run '{where}' ({base['path']}): {e.message}", where,
                        hint="its checkpoints hold only adapters: the weights it started from must be there") \
            from None
    check_base(base, fingerprint(module), where)
    add_adapters(module, lora)
    checkpoint.load_weights_into(module, folder)


def load_merged(module, run, folder: Path) -> None:
    """--init-from a LoRA run: its base weights with its adapters merged in, into `module`."""
    import torch

    from ..backends.lora import merge
    from ..backends.torch_backend import to_torch
    from . import checkpoint
    from .rundir import compile_run
    compiled, record = compile_run(run)
    with torch.random.fork_rng(devices=[]):  # its initial weights and adapters are drawn, then replaced
        source = to_torch(compiled)
        load_run_weights(source, record, folder)
    state = {name: p.detach() for name, p in merge(source).named_parameters()}
    try:
        checkpoint.load_state_into(module, state)
    except ValueError as e:
        raise SpecError(f"the weights of '{run.path}' do not fit the spec: {e}", Span("--init-from", 0, 0)) from None
