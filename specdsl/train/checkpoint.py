"""Checkpoints that are always complete on disk, and load without pickle.

A checkpoint is a folder (`last/`, `best/`):
    model.safetensors       the weights (a tied tensor once, under its first name); a LoRA run's holds its adapters
                            only: its base weights are those it started from (run.json's "lora")
    optimizer.safetensors   the optimizer's tensors ("state.<index>.<name>")
    optimizer.json          the rest of the optimizer's state (param groups)
    rng.safetensors         torch's CPU (and CUDA) generator states and the batch generator's state
    trainer.json            step, best validation loss, settings, tokenizer, spec source and hash, Python's RNG
It is written into a temporary folder of the run directory, every file fsynced, then swapped in by renames
(train/rundir.py: a crash at any point leaves a whole checkpoint, which `RunDir.complete` finds). When `best` and
`last` are the same step, `last` links `best`'s files (`duplicate`): one checkpoint's bytes written, as nanoGPT's.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import Span, SpecError
from .rundir import MARKER, dumps

TRAINER_FILE = MARKER  # written last: a folder with it is complete


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_json(path: Path, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(data))
        f.flush()
        os.fsync(f.fileno())


def _slow_for_tests() -> None:
    # Lets the crash test kill a process in the middle of writing a checkpoint.
    delay = float(os.environ.get("SPECC_TEST_CHECKPOINT_DELAY", "0") or 0)
    if delay:
        import time
        time.sleep(delay)


def _sharded(module: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor
    return any(isinstance(p, DTensor) for p in module.parameters())


def _stored(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The parameters a checkpoint holds: every one, or a LoRA module's adapters only (backends/lora.py)."""
    params = dict(module.named_parameters())
    if getattr(module, "lora", None) is None:
        return params
    from ..backends.lora import adapter_names
    return {name: params[name] for name in adapter_names(module)}


def capture(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(weights by name, optimizer state in torch's index-keyed form). With FSDP every rank must call this: the
    full tensors are gathered from the shards."""
    stored = _stored(module)
    names = list(stored)
    if not _sharded(module):
        return ({n: p.detach().contiguous().cpu() for n, p in stored.items()}, optimizer.state_dict())
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    model_sd, optim_sd = get_state_dict(module, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not model_sd:  # with cpu_offload only rank 0 receives the full tensors
        return {}, {"state": {}, "param_groups": []}
    weights = {n: model_sd[n] for n in names}  # one name per tensor, as named_parameters lists them
    order = [fqn for group in optim_sd["param_groups"] for fqn in group["params"]]
    index = {fqn: i for i, fqn in enumerate(order)}
    state = {index[fqn]: entries for fqn, entries in optim_sd["state"].items()}
    groups = [{**g, "params": [index[f] for f in g["params"]]} for g in optim_sd["param_groups"]]
    return weights, {"state": state, "param_groups": groups}


def save(run, name: str, module: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
         trainer_state: dict, captured: tuple[dict, dict] | None = None) -> None:
    """Write checkpoint `name` (last, best) of a run directory; the run swaps it in whole (rundir.RunDir.swap_in)."""
    weights, opt = captured or capture(module, optimizer)
    run.swap_in(name, lambda folder: _write(folder, weights, opt, generator, trainer_state))


def duplicate(run, source: str, name: str) -> None:
    """Checkpoint `name` made the same as `source` (`last` as the `best` just written at the same step): its files
    hard-linked, not serialized and synced a second time. Files of a checkpoint are never changed in place (a new
    one is a new folder swapped in), so two names for one file are safe; where links are refused (a file system
    without them), the bytes are copied and synced."""
    origin = run.complete(source)
    run.swap_in(name, lambda folder: _link_files(origin, folder))


def _link_files(origin: Path, folder: Path) -> None:
    for i, entry in enumerate(sorted(origin.iterdir(), key=lambda p: (p.name == TRAINER_FILE, p.name))):
        try:  # the marker last, as _write does
            os.link(entry, folder / entry.name, follow_symlinks=False)
        except OSError:
            shutil.copyfile(entry, folder / entry.name, follow_symlinks=False)
            _fsync_file(folder / entry.name)
        if i == 0:
            _slow_for_tests()


def _write(tmp: Path, weights: dict, opt: dict, generator: torch.Generator, trainer_state: dict) -> None:
    save_file(weights, str(tmp / "model.safetensors"))
    _fsync_file(tmp / "model.safetensors")
    _slow_for_tests()
    tensors, plain = {}, {}
    for index, entries in opt["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                plain[f"{index}.{key}"] = value
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    _fsync_file(tmp / "optimizer.safetensors")
    _write_json(tmp / "optimizer.json", {"param_groups": opt["param_groups"], "plain": plain})
    rng = {"torch": torch.get_rng_state(), "batches": generator.get_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda.{i}"] = state
    save_file(rng, str(tmp / "rng.safetensors"))
    _fsync_file(tmp / "rng.safetensors")
    _write_json(tmp / TRAINER_FILE, {**trainer_state, "python_rng": _python_rng_to_json()})


def read_trainer_state(folder: Path) -> dict:
    return json.loads((Path(folder) / TRAINER_FILE).read_text(encoding="utf-8"))


@contextlib.contextmanager
def _reading(folder: Path):
    """A checkpoint is a file from disk, possibly damaged or another model's: whatever fails reading it is a
    SpecError naming it, not a traceback."""
    try:
        yield
    except SpecError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise SpecError(f"cannot read the checkpoint '{folder}': {first}", Span(str(folder), 0, 0),
                        hint="it is damaged, or was written for another model") from None


def load_weights_into(module: torch.nn.Module, folder: Path) -> None:
    with _reading(folder):
        _load_weights(module, Path(folder))


def _load_weights(module: torch.nn.Module, folder: Path) -> None:
    load_state_into(module, load_file(str(folder / "model.safetensors")))


def load_state_into(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy weights by name into the parameters a checkpoint holds (_stored); ValueError naming what does not fit."""
    if _sharded(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=False))
        return
    params = _stored(module)
    missing, unexpected = set(params) - set(state), set(state) - set(params)
    if missing or unexpected:
        raise ValueError(f"it does not fit the model: missing {sorted(missing)[:5]}, unexpected "
                         f"{sorted(unexpected)[:5]}")
    wrong = [f"{n} {tuple(state[n].shape)} (model {tuple(p.shape)})" for n, p in params.items()
             if state[n].shape != p.shape]
    if wrong:  # copy_ would broadcast a [1, d] tensor into [V, d] without a word
        raise ValueError(f"shapes differ: {', '.join(wrong[:3])}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name])


def load(folder: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
         generator: torch.Generator) -> dict:
    """Weights, optimizer, generators and the trainer's state of a checkpoint, for --resume."""
    with _reading(folder):
        return _load(Path(folder), module, optimizer, generator)


def _load(folder: Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
          generator: torch.Generator) -> dict:
    _load_weights(module, folder)
    tensors = load_file(str(folder / "optimizer.safetensors"))
    meta = json.loads((folder / "optimizer.json").read_text(encoding="utf-8"))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["plain"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    full = {"state": state, "param_groups": meta["param_groups"]}
    if _sharded(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        # torch numbers parameters through the param groups in order; name them the same way.
        name_of = {id(p): n for n, p in module.named_parameters()}
        fqn = dict(enumerate(name_of[id(p)] for g in optimizer.param_groups for p in g["params"]))
        full = {"state": {fqn[i]: v for i, v in state.items()},
                "param_groups": [{**g, "params": [fqn[i] for i in g["params"]]} for g in full["param_groups"]]}
        set_optimizer_state_dict(module, optimizer, full, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(full)
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["batches"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)
    trainer = read_trainer_state(folder)
    _python_rng_from_json(trainer.get("python_rng"))
    return trainer


def _python_rng_to_json():
    version, state, gauss = random.getstate()
    return [version, list(state), gauss]


def _python_rng_from_json(data) -> None:
    if data:
        version, state, gauss = data
        random.setstate((version, tuple(state), gauss))
