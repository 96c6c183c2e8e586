"""A training session, resolved before anything is written: the spec, the settings, the run directory's plan, the
data and the model (`prepare`, on rank 0); then the run directory started (`start`), and the same session read
back on the other ranks (`follow`). Every check that can refuse a run is here, so a refusal leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .. import ir
from ..backends.torch_backend import to_torch
from ..compiled import context_hyperparameter, load, vocabulary_hyperparameter
from ..contract import contract
from ..errors import Span, SpecError
from ..settings import RESUME_INVARIANTS, TrainConfig, resolve_config, with_lora_defaults
from ..system import available_memory
from ..version import __version__
from . import adapters, rundir
from .corpus import open_corpus, splits
from .data import TokenData, Tokenizer, builtin_text
from .followers import RunSeen
from .init import init_source, load_initial_weights
from .pairs import MAX_LEN, ReversalData


@dataclass
class Session:
    """What a run needs, resolved and checked before anything is written."""

    spec_path: str
    compiled: Any
    module: Any  # torch.nn.Module, built with the run's seed
    config: TrainConfig
    plan: rundir.Plan
    record: dict  # run.json: the run's identity
    tokenizer: Tokenizer | None
    ids: dict | None = None  # the corpus's ids, {"train", "val"}: corpus.Split (None when it resumes)
    sources: tuple = ()
    pairs: ReversalData | None = None  # a sequence-to-sequence model's data (built from the seed, never stored)

    @property
    def out(self) -> Path:
        return self.plan.path

    @property
    def resuming(self) -> bool:
        return self.plan.last_step is not None


def prepare(spec_path: str, preset: str | None, overrides: dict, flags: dict, resume: bool, world: int,
            lora: dict | None = None) -> Session:
    """Resolve and check everything (spec, settings, run directory, data, model) without writing anything. `lora`:
    the --lora flags."""
    probe = load(spec_path, preset=preset, overrides=overrides, lora=lora)
    from .trainable import check_trainable  # a model the loop cannot train is refused here, at its line
    check_trainable(probe.model)
    config = resolve_config(probe.model.train, flags)
    plan = rundir.plan(config.out or f"runs/{probe.model.name}", resume)
    saved = plan.record if plan.state == "run" and (resume or plan.last_step is not None) else None
    if saved is not None:  # a resume: the run's own settings, spec and data, unless a flag changes what may change
        config = resolve_config(saved["config"], flags)
        _check_unchanged(saved, plan.path, preset, overrides, config, _source_list(probe.model))
        preset, overrides = saved["preset"], dict(saved["overrides"])
        lora = adapters.resumed_settings(saved, probe.model, lora, plan.path)
    elif probe.model.lora is not None:
        config = with_lora_defaults(config, probe.model.train, flags)
    adapters.require_base(probe.model, config.init_from)
    if config.batch % world:
        raise SpecError(f"batch {config.batch} is not divisible by {world} processes", Span("--batch", 0, 0))
    if config.batch % config.accum:
        raise SpecError(f"batch {config.batch} is not divisible by accum {config.accum}", Span("--accum", 0, 0))

    init = init_source(adapters.base_path(saved) or config.init_from) if config.init_from else None
    if config.tokenizer is None:  # char, unless a tokenizer came with the weights to start from
        config = replace(config, tokenizer=init.tokenizer if init and init.tokenizer else "char")
    tokenizer, ids, data, pairs = None, None, {"builtin": "digits"}, None
    compiled = probe
    if contract(probe.model).source is not None:
        pairs = _pairs(plan, saved, config)
        tokenizer, data = pairs.tokenizer, pairs.fingerprint
        compiled = _fit_to_data(spec_path, preset, overrides, probe.model, tokenizer, lora=lora)
        _check_pair_lengths(compiled.model, overrides)
    elif contract(probe.model).language_model:
        tokenizer, ids, data = _text(probe.model, plan, saved, config)
        compiled = _fit_to_data(spec_path, preset, overrides, probe.model, tokenizer, init.vocab if init else None,
                                lora)
        if ids is not None:
            _check_splits(ids, compiled.model, overrides, config.data)
        _check_batch_memory(config, contract(compiled.model).context)
    elif saved is not None:
        compiled = load(spec_path, preset=preset, overrides=overrides, lora=lora)
    record = {"format": rundir.FORMAT, "specc": __version__, "spec": str(spec_path),
              "sources": _source_list(compiled.model),
              "uses": [list(link) for link in compiled.model.uses], "preset": preset, "overrides": overrides,
              "config": asdict(config), "data": data, "tokenizer": tokenizer.to_json() if tokenizer else None,
              "split": _split_record(ids, config) if ids is not None else (saved or {}).get("split"),
              "world_size": world,
              "contract": contract(compiled.model).to_json()}  # for readers of the run; specc recomputes it
    torch.manual_seed(config.seed)
    module = to_torch(compiled)  # the memory guard speaks now, before anything is written
    lora_run = compiled.model.lora is not None
    if init is not None:  # a resumed run's own checkpoint holds its weights; a LoRA run's, only its adapters
        loaded = load_initial_weights(module, init) if plan.last_step is None or lora_run else None
        record["init_from"] = (saved or {}).get("init_from") if plan.last_step is not None else init.record(loaded)
    if lora_run:
        record["lora"] = adapters.start(module, compiled.model.lora, init,
                                        saved if plan.last_step is not None else None)
    return Session(str(spec_path), compiled, module, config, plan, record, tokenizer, ids, compiled.model.sources,
                   pairs)


def _pairs(plan: rundir.Plan, saved: dict | None, config: TrainConfig) -> ReversalData:
    """The built-in reversal task of a sequence-to-sequence model, drawn from the run's seed; a resumed run's must
    be the one it started with (the same strings: a changed generator would make another run)."""
    if config.data:
        raise SpecError("an encoder-decoder trains on the built-in reversal task; --data is a language model's text",
                        Span("--data", 0, 0), hint="drop --data (docs/training.md, 'Sequence to sequence')")
    pairs = ReversalData(config.seed)
    if saved is not None and saved.get("data") != pairs.fingerprint:
        raise SpecError(f"cannot resume '{plan.path}': the built-in task's strings are not the ones the run started "
                        "with", Span("--resume", 0, 0), hint="start a new run (another --out)")
    return pairs


def _check_pair_lengths(model: ir.Model, overrides: dict) -> None:
    """The source and the target (with its [BOS]) of the longest string fit the model's contexts."""
    facts = contract(model)
    for name, need in ((facts.source, MAX_LEN), (facts.target, MAX_LEN + 1)):
        given = next(i for i in model.inputs if i.name == name)
        bound = facts.source_context if name == facts.source else facts.context
        if bound is None or bound < need:
            context_name = context_hyperparameter(model, overrides)
            raise SpecError(f"input '{name}' takes {bound if bound is not None else 'unbounded'} tokens; the reversal "
                            f"task needs {need} (strings of up to {MAX_LEN} letters"
                            + (", and [BOS] before the target)" if name == facts.target else ")"), given.span,
                            hint=f"--set {context_name}={MAX_LEN + 1}" if context_name else
                            f"declare it as int[batch, len <= {MAX_LEN + 1}] or more")


def _text(model: ir.Model, plan: rundir.Plan, saved: dict | None, config: TrainConfig):
    """(tokenizer, ids, data fingerprint) of a language model's text: a resumed run's own tokenizer (its ids are
    on disk already: None), or the corpus read, fingerprinted and tokenized."""
    if plan.last_step is not None:  # resuming: the run's own tokenizer and tokens
        tokenizer = rundir.RunDir(plan.path).tokenizer()
        _check_data(saved, config)
        return tokenizer, None, saved["data"]
    corpus = open_corpus(config.data) if config.data else None
    text = None if corpus else builtin_text()
    data = corpus.fingerprint() if corpus else {"builtin": rundir.sha256(text.encode())}
    if saved is not None and saved.get("data") != data:
        raise SpecError(f"cannot resume '{plan.path}': the data changed since the run started",
                        Span("--data", 0, 0), hint="resume with the data the run started from")
    if corpus and corpus.pretokenized and not (config.tokenizer == "byte" or os.path.exists(config.tokenizer)):
        raise SpecError(f"'{config.data}' holds token ids: --tokenizer must name the tokenizer they were made with",
                        Span("--tokenizer", 0, 0), hint="--tokenizer TOKENIZER.json (or its folder), or byte for ids "
                                                        "of bytes")
    # A model that attends to later positions would read the next token: it learns masked tokens instead.
    try:
        tokenizer = Tokenizer.fit_texts(config.tokenizer, corpus.texts if corpus else lambda: iter([text]),
                                        mask=not contract(model).causal)
    except ValueError as e:  # a tokenizer.json that tokenizers cannot read
        raise SpecError(str(e), Span("--tokenizer", 0, 0)) from None
    return tokenizer, splits(corpus, tokenizer, text), data


def _split_record(parts: dict, config: TrainConfig) -> dict:
    given = bool(config.data) and open_corpus(config.data).kind == "split"
    return {"train": len(parts["train"]), "val": len(parts["val"]),
            "by": "the data's own train.bin and val.bin" if given else "the first 90% of the tokens train"}


def _fit_to_data(spec_path: str, preset: str | None, overrides: dict, model: ir.Model, tokenizer: Tokenizer,
                 vocab: int | None = None, lora: dict | None = None):
    """The spec compiled with the data's vocabulary (as nanoGPT's meta.pkl), or `vocab`, the one of the weights a
    run starts from (a checkpoint may pad it past its tokenizer's), set through whichever hyperparameter the model's
    vocabulary follows, whatever its name (an explicit --set of it wins; `overrides` records it). A vocabulary
    smaller than the data's is refused."""
    vocab_name = vocabulary_hyperparameter(model, overrides)
    if vocab_name is not None and vocab_name not in overrides:
        overrides[vocab_name] = vocab or tokenizer.vocab_size
    compiled = load(spec_path, preset=preset, overrides=overrides, lora=lora)
    vocab = contract(compiled.model).vocab
    if vocab is not None and vocab < tokenizer.vocab_size:
        needs = f"{tokenizer.data_size} distinct tokens" + (" and [MASK]" if tokenizer.mask else "")
        raise SpecError(f"the data has {needs} but the model's vocabulary is {vocab}", compiled.model.inputs[0].span,
                        hint=f"--set {vocab_name}=... or drop the override" if vocab_name else
                        "the spec fixes its vocabulary: make it as large as the data's")
    return compiled


def _source_list(model: ir.Model) -> list[dict]:
    return [{"name": name, "sha256": rundir.sha256(text.encode())} for name, text in model.sources]


def _check_unchanged(saved: dict, out: Path, preset, overrides: dict, config: TrainConfig,
                     sources: list[dict]) -> None:
    """A resume refuses any change of what the model or its data is: the spec's files, preset, --set values,
    invariant settings."""
    changed = rundir.source_changes(saved["sources"], sources)
    changed += rundir.changes(saved["config"], asdict(config), RESUME_INVARIANTS)
    if preset is not None and preset != saved["preset"]:
        changed.append(f"preset: {saved['preset']!r} -> {preset!r}")
    changed += [f"--set {k}: {saved['overrides'].get(k)!r} -> {v!r}" for k, v in overrides.items()
                if saved["overrides"].get(k) != v]
    if changed:
        raise SpecError(f"cannot resume '{out}': " + "; ".join(changed), Span("--resume", 0, 0),
                        hint=f"a resumed run keeps its spec (saved in {out}), model and data; start a new run "
                        "(another --out) to change them")


def _check_data(saved: dict, config: TrainConfig) -> None:
    """The data file a run started from, if it is still there, must be unchanged (the run trains on its own copy of
    the tokens; a changed file would mean another run)."""
    if not config.data or not os.path.exists(config.data):
        return
    now = open_corpus(config.data).fingerprint()
    if now != saved.get("data"):
        raise SpecError(f"cannot resume: '{config.data}' changed since the run started ({saved['data'].get('bytes')} "
                        f"bytes, sha256 {str(saved['data'].get('sha256'))[:12]}... -> {now['bytes']} bytes, sha256 "
                        f"{now['sha256'][:12]}...)", Span("--data", 0, 0),
                        hint="resume with the data the run started from, or start a new run")


# A batch of windows is held about four times as int64 at once (the offsets' gather, its int64 copy, inputs and
# targets); the model's activations come on top, so this only refuses what can never fit.
BATCH_COPIES = 4


def _check_batch_memory(config: TrainConfig, ctx: int) -> None:
    free = available_memory()
    need = config.batch // config.accum * (ctx + 1) * 8 * BATCH_COPIES
    if free is not None and need > free:
        raise SpecError(f"batch {config.batch} of {ctx}-token windows needs {need / 2**30:,.1f} GiB for its token ids "
                        f"alone; {free / 2**30:,.1f} GiB are free", Span("--batch", 0, 0),
                        hint="a smaller --batch, or --accum to split it into micro-batches")


def _check_splits(parts: dict, model: ir.Model, overrides: dict, data: str | None) -> None:
    ctx = contract(model).context
    tokens = sum(len(part) for part in parts.values())
    for name, size in (("training", len(parts["train"])), ("validation", len(parts["val"]))):
        if size <= ctx + 1:
            context_name = context_hyperparameter(model, overrides)  # only now: it elaborates the spec again
            raise SpecError(f"the data is too short: {tokens:,} tokens leave {size:,} for {name}, and a window needs "
                            f"{ctx + 1:,}", Span("--data", 0, 0) if data else Span("--set", 0, 0),
                            hint="more text, or a shorter context" + (f" (--set {context_name}=...)" if context_name
                                                                      else ""))


def start(session: Session) -> rundir.RunDir:
    """Create and lock the run directory; a new run writes its identity, sources and data, a resumed one trims its
    metrics to its checkpoint."""
    run = rundir.open_for_writing(session.plan)
    try:
        if session.resuming:
            kept = _metrics_until(run, session.plan.last_step)
        else:
            run.write_json(rundir.RECORD, session.record)  # first: from now on the folder is a (new) run
            _write_sources(run, session)
            if session.ids is not None:
                (run.path / rundir.DATA).mkdir(exist_ok=True)
                TokenData.prepare(session.ids, session.tokenizer, lambda name, chunks: run.write_bytes(
                    Path(rundir.DATA) / name, chunks))
            elif session.pairs is not None:  # the strings come from the seed; sample and export read the tokenizer
                (run.path / rundir.DATA).mkdir(exist_ok=True)
                run.write_bytes(Path(rundir.DATA) / "tokenizer.json",
                                json.dumps(session.tokenizer.to_json()).encode("utf-8"))
            for part in (session.ids or {}).values():
                part.tokens.close()  # a temporary file of tokenized text goes with it
            session.ids = None  # on disk now; the loop reads it through a memory map
            kept = ""
        run.write_bytes(rundir.METRICS, kept.encode("utf-8"))
    except BaseException:
        run.unlock()
        raise
    return run


def _write_sources(run: rundir.RunDir, session: Session) -> None:
    """spec.spec (the main file) and sources/N.spec (the files it uses): the run compiles from its own copies."""
    folder = run.path / rundir.SOURCES
    if os.path.lexists(folder):
        run.discard(folder)
    if len(session.sources) > 1:
        folder.mkdir()
    for i, (_, text) in enumerate(session.sources):
        run.write_bytes(rundir.source_file(i), text.encode("utf-8"))


def _metrics_until(run: rundir.RunDir, step: int) -> str:
    """metrics.jsonl up to a checkpoint's step, so a resumed run's log reads as one run (a line a crash cut short
    is dropped)."""
    if not os.path.lexists(run.path / rundir.METRICS):
        return ""
    kept = []
    for line in run.read_bytes(rundir.METRICS).decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    return "".join(kept)


def follow(spec_path: str, shared: dict) -> tuple[Session, rundir.RunDir]:
    """A rank other than 0: the session rank 0 resolved, read back from the run directory it wrote (once this
    process sees it, which on another machine takes a filesystem they share), compiled from the run's own sources."""
    seen = RunSeen(**shared["seen"])
    seen.wait()
    run = rundir.RunDir(seen.out)
    compiled, record = rundir.compile_run(run)
    tokenizer = run.tokenizer() if record.get("tokenizer") else None
    plan = rundir.Plan(run.path, "run", record, seen.last_step)
    config = TrainConfig(**shared["config"])
    pairs = ReversalData(config.seed) if contract(compiled.model).source is not None else None
    torch.manual_seed(config.seed)
    module = to_torch(compiled)
    lora = compiled.model.lora
    if config.init_from and (not shared["resuming"] or lora):  # every rank starts from them (FSDP shards them)
        load_initial_weights(module, init_source(adapters.base_path(record) or config.init_from))
    if lora is not None:  # the same adapters as rank 0's: drawn from the same seed after the same build
        from ..backends.lora import add_adapters
        add_adapters(module, lora)
    return Session(spec_path, compiled, module, config, plan, record, tokenizer, pairs=pairs), run
