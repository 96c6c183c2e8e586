"""Inference on CPU: the compiled spec module on PyTorch eager against its ONNX export on onnxruntime, in one run.

Two models, random weights (seeded; the same weights on both backends, checked by comparing logits):

* (a) specs/nanogpt-shakespeare.spec as is (the model `make demo` trains): 4 layers, 4 heads, d=128, ctx 64,
  vocab 65;
* (b) the same spec with d=256, ctx=256 (4 layers, 4 heads, vocab 65);
* (c) with --gpt2 only: specs/gpt2.spec, GPT-2 small (124M parameters, vocab 50257, ctx 1024; dropout 0).

The weights are those of a Hugging Face GPT2LMHeadModel built from a GPT2Config of the same shape (every parameter
perturbed, so no norm weight or bias sits at its initial value), copied into the spec's module with load_weights,
so the third comparison below runs Hugging Face on the very same model.

Each is exported with specdsl.backends.onnx_export.export into a temporary directory (OUT.onnx, the full graph,
and OUT.decode.onnx, the graph with a KV cache; export checks both against PyTorch), with the bench's module passed
as is. onnxruntime runs them on the CPUExecutionProvider with its default graph optimizations
(ORT_ENABLE_ALL) and intra_op_num_threads set to torch's thread count (--threads), so both use the same cores.

1. Forward latency: tokens [B, T] -> logits, PyTorch (eval, torch.no_grad) against onnxruntime (full graph),
   B = 1 and 8, T = min(128, ctx) (64 for (a): its context). After a few unreported warm-up calls each, the two
   alternate: `calls` calls of one then `calls` of the other, for `rounds` rounds, the order flipping every round.
   Before each block: a 50 ms pause and one untimed call (see settle()). Each call is timed on its own; the table
   shows the median per backend and the ratio ort/torch of the medians (and the median over rounds of the ratio
   within a round, a check on slow drifts of the machine's load).
2. Greedy generation, batch 1: a prompt of 8 seeded random tokens, then 256 new tokens, by the product's own code:
   (i)   PyTorch without a cache: specdsl.train.sample.generate(cache=False), a full forward over the window every
         step (nanoGPT's generate);
   (ii)  PyTorch with a cache: the same function as `specc sample` runs it (specdsl's Decoder): the prompt in one
         call, then one token a call (by the traced flat step, specdsl/backends/flat_step.py); when the window
         moves its tokens are run again as a prompt (learned absolute positions: a moved window invalidates the
         cache). Timed in its steady state: before any of this, one-token steps are run until flat_step.py has
         compiled the step with TorchScript, as it does after SCRIPT_AFTER_STEPS steps in a process (the time of
         that compilation is printed);
   (iii) onnxruntime with a cache: OnnxGenerator.generate, as `specc generate` runs it (session.run with the
         present.* arrays fed back as the next call's past.*), with intra_op_num_threads as above.
   (An IOBinding driver, keeping the cache as OrtValues between calls, was measured no faster, 0.94-1.17x: a
   call's cost is onnxruntime's own, ~240 kernels a step, not the Python-side feeds.)
   Each under both of `specc generate`'s --overflow policies (specdsl/context_window.py), which decide the window
   once the text outgrows the context: "shift" (the default: the last ctx/2 tokens are kept and run again once
   the window is full, then the cache serves ctx/2 steps) and "slide" (every token sees the last ctx tokens, so
   past the context every method runs the whole window every step). Under one policy all methods see the same
   windows and must give the same ids.
   All make exactly `new` model calls for `new` tokens (no call after the last token). One untimed run of each
   gives the tokens, which must agree across the methods (greedy: the same ids); then `gen_rounds` rounds, each
   running every method once after a pause, the order rotating between rounds; tokens/s = new / median wall time
   of a whole run (prompt included). The column "ort x" is onnxruntime's tokens/s over the row's; "per-round", the
   median over rounds of the same ratio within a round.

3. PyTorch generation with a cache (`specc sample`'s) against Hugging Face `generate` (do_sample=False,
   use_cache=True) on the same weights, with onnxruntime's beside it: a prompt of 8 tokens, then min(new, ctx - 8)
   greedy tokens (HF's GPT-2 has no positions past n_positions, so the text stays within the context); timed as in
   2, the ids of all must agree. PyTorch twice: compiled (steady state) and as the step's Python program, what a
   process runs for its first SCRIPT_AFTER_STEPS one-token steps (so a one-shot `specc sample` of up to that many
   tokens): a copy of the model whose step is never compiled.
4. What bounds 3: the time of a one-token step (Decoder.step on the static cache) and its time with every nn.Linear
   replaced by a no-op, alternated (matrix_products), both compiled, and the step as Python beside them. HF
   multiplies by the same weights through the same kernel, so HF's time per token over the products' time is the
   most PyTorch could gain, were everything else free.

Goals, printed PASS/FAIL per model: PyTorch generation with a cache >= 2x the tokens/s of Hugging Face generate
(issue 13; in the steady state, the Python program's ratio printed as "info"); onnxruntime generation >= 1.5x the
tokens/s of PyTorch with a cache and >= 4x PyTorch without one, under the default policy (the other's ratios
are printed as "info"); onnxruntime forward latency no worse than PyTorch eager (ort/torch <= 1.0) at B=1 and 8.

The machine may be shared: everything that is compared is measured in the same run, alternated, and summarized by
medians, and each model's tables say how much CPU other processes took meanwhile (from /proc/stat). With as many
threads as cores, a busy neighbour slows PyTorch's OpenMP far more than onnxruntime (a stolen core stalls every
parallel region): read the ratios only when that figure is near 0. Noise from other virtual machines on the host
does not show there (the median of the same call moved by up to 2x from one second to the next while developing
this), so run twice before trusting a ratio near a goal.

Usage: python bench/inference.py [--quick] [--gpt2] [--threads N] [--rounds N] [--calls N] [--warmup N] [--gen-rounds N]
                                 [--new N] [--seed N]
The exit code is 0 whatever the result.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import gc
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # time the working tree's specdsl

import specdsl  # noqa: E402
from specdsl.backends import flat_step  # noqa: E402
from specdsl.backends.onnx_export import export  # noqa: E402
from specdsl.backends.onnx_generate import OnnxGenerator  # noqa: E402
from specdsl.backends.torch_backend import Decoder  # noqa: E402
from specdsl.context_window import DEFAULT_OVERFLOW, OVERFLOW_POLICIES, prompt_start, window_start  # noqa: E402
from specdsl.contract import contract  # noqa: E402
from specdsl.tokenizer import Tokenizer  # noqa: E402
from specdsl.train.sample import generate  # noqa: E402

NANOGPT, GPT2 = ROOT / "specs" / "nanogpt-shakespeare.spec", ROOT / "specs" / "gpt2.spec"
CONFIGS = [  # (label, spec, overrides, Hugging Face's name of the spec's activation)
    ("(a) shakespeare d=128 ctx=64", NANOGPT, {}, "gelu"),  # nanoGPT: exact GELU
    ("(b) d=256 L=4 H=4 ctx=256", NANOGPT, {"d": 256, "ctx": 256, "heads": 4, "layers": 4}, "gelu"),
]
GPT2_SMALL = ("(c) GPT-2 small (124M)", GPT2, {"dropout": 0.0}, "gelu_new")  # gpt_block's default gelu_tanh
SEQ = 128
BATCHES = (1, 8)
PROMPT = 8
GOAL_VS_CACHE, GOAL_VS_NOCACHE, GOAL_FORWARD, GOAL_VS_HF = 1.5, 4.0, 1.0, 2.0
METHODS = ["torch, no cache", "torch, cache", "ort, cache"]
PYTHON_STEP = "torch, cache, Python step"
HF_METHODS = ["torch, cache", PYTHON_STEP, "HF generate", "ort, cache"]
ORT_MAIN = "ort, cache"


# ---------------------------------------------------------------------------------------------------- setup

class MachineLoad:
    """What else ran on the machine while we measured: CPU time of other processes (from /proc/stat, minus this
    process's own) and time stolen by the hypervisor, both in cores on average over the wall time."""

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                vals = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        busy = (sum(vals[:3]) + sum(vals[5:7])) / tick  # user nice system irq softirq
        steal = vals[7] / tick if len(vals) > 7 else 0.0
        own = os.times()
        return time.monotonic(), busy, steal, own.user + own.system

    def summary(self) -> str:
        end = self._read()
        if self.start is None or end is None:
            return "machine load unknown (no /proc/stat)"
        wall = max(end[0] - self.start[0], 1e-9)
        others = max(0.0, (end[1] - self.start[1]) - (end[3] - self.start[3])) / wall
        steal = (end[2] - self.start[2]) / wall
        return f"other processes used {others:.2f} of {os.cpu_count()} cores on average, steal {steal:.2f}"


def ort_session(path: Path, threads: int):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def hugging_face(hyper: dict, activation: str, seed: int):
    """A GPT2LMHeadModel of the spec's shape, every parameter perturbed (seeded)."""
    import transformers
    config = transformers.GPT2Config(
        vocab_size=int(hyper["vocab"]), n_positions=int(hyper["ctx"]), n_embd=int(hyper["d"]),
        n_layer=int(hyper["layers"]), n_head=int(hyper["heads"]), activation_function=activation,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return hf


def build(spec: Path, overrides: dict, activation: str, tmp: Path, seed: int):
    """The torch module with Hugging Face's perturbed weights, that model, and the two exported graphs (exported
    from those weights)."""
    compiled = specdsl.load(spec, overrides=overrides)
    hf = hugging_face(compiled.model.hyperparameters, activation, seed)
    module = specdsl.to_torch(compiled).eval()
    specdsl.load_weights(module, hf.state_dict(), family="gpt2")
    # a tokenizer of the model's vocabulary, for OnnxGenerator (the bench feeds ids, never text)
    chars = "".join(chr(33 + i) for i in range(contract(compiled.model).ids))
    report = export(compiled, tmp / "model.onnx", module=module, tokenizer=Tokenizer("char", chars).to_json())
    return compiled, module, hf, report, tmp / "model.onnx", tmp / "model.decode.onnx"


# ---------------------------------------------------------------------------------------------------- forward

SETTLE_S = 0.05


def settle() -> None:
    """Before switching backends: torch's OpenMP workers and onnxruntime's pool threads keep spinning for a while
    after their last call, and on 2 cores the first calls of the other backend then run up to twice as slow. A
    short sleep lets them park (and a collection keeps the garbage collector out of the timed calls)."""
    gc.collect()
    time.sleep(SETTLE_S)


def forward_latency(module, session, tokens: torch.Tensor, args) -> dict:
    feeds = {"tokens": tokens.numpy()}

    def run_torch():
        with torch.no_grad():
            module(tokens)

    def run_ort():
        session.run(None, feeds)

    fns = {"torch": run_torch, "ort": run_ort}
    for fn in fns.values():
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    paired = []
    for r in range(args.rounds):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for name in order:
            settle()
            fns[name]()  # untimed: the first call after the other backend pays for its idle threads
            for _ in range(args.calls):
                t0 = time.perf_counter_ns()
                fns[name]()
                times[name].append((time.perf_counter_ns() - t0) / 1e6)
        paired.append(statistics.median(times["ort"][-args.calls:]) / statistics.median(times["torch"][-args.calls:]))
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"med": med, "ratio": med["ort"] / med["torch"], "paired": statistics.median(paired),
            "n": len(times["torch"])}


# ---------------------------------------------------------------------------------------------------- generation

def window_runs(prompt: int, new: int, ctx: int, overflow: str) -> tuple[int, int]:
    """(one-token calls, window re-runs) of a cached generation, after the prompt's call."""
    start, length, steps, reruns = prompt_start(prompt, ctx), prompt, 0, 0
    for _ in range(new - 1):
        length += 1
        moved, start = start, window_start(start, length, ctx, overflow)
        steps, reruns = (steps, reruns + 1) if start != moved else (steps + 1, reruns)
    return steps, reruns


def seeded_prompt(module, args) -> list[int]:
    return torch.randint(0, module.wte.weight.shape[0], (PROMPT,),
                         generator=torch.Generator().manual_seed(args.seed + 1)).tolist()


def generation(module, generator: OnnxGenerator, ctx: int, overflow: str, args) -> dict:
    prompt = seeded_prompt(module, args)
    new, greedy = args.new, {"temperature": 0, "overflow": overflow}
    fns = {
        "torch, no cache": lambda: list(generate(module, prompt, new, ctx, cache=False, **greedy)),
        "torch, cache": lambda: list(generate(module, prompt, new, ctx, **greedy)),
        "ort, cache": lambda: list(generator.generate(prompt, new, **greedy)),
    }
    steps, reruns = window_runs(PROMPT, new, ctx, overflow)
    return {"overflow": overflow, "prompt": prompt, "new": new, "single_steps": steps, "reprefills": reruns,
            **timed(fns, new, args)}


def hf_generate(hf, prompt: list[int], new: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                          use_cache=True, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def versus_hf(module, python_copy, hf, generator: OnnxGenerator, ctx: int, args) -> dict:
    """`specc sample`'s PyTorch generation against Hugging Face generate on the same weights (and onnxruntime),
    within the context: HF's GPT-2 has no positions past it. PyTorch twice: in its steady state (the one-token step
    compiled by TorchScript, see compile_step) and as its first SCRIPT_AFTER_STEPS steps in a process run (the step's
    Python program: a copy of the model never compiled)."""
    prompt, new = seeded_prompt(module, args), min(args.new, ctx - PROMPT)

    def python_step():
        with uncompiled():
            return list(generate(python_copy, prompt, new, ctx, temperature=0))

    fns = {
        "torch, cache": lambda: list(generate(module, prompt, new, ctx, temperature=0)),
        PYTHON_STEP: python_step,
        "HF generate": lambda: hf_generate(hf, prompt, new),
        "ort, cache": lambda: list(generator.generate(prompt, new, temperature=0)),
    }
    return {"new": new, **timed(fns, new, args)}


@contextlib.contextmanager
def uncompiled():
    """One-token steps left to their Python program: none is compiled by TorchScript meanwhile."""
    saved, flat_step.SCRIPT_AFTER_STEPS = flat_step.SCRIPT_AFTER_STEPS, None
    try:
        yield
    finally:
        flat_step.SCRIPT_AFTER_STEPS = saved


def compile_step(module, ctx: int) -> dict:
    """PyTorch generation's steady state: one-token steps (as `specc sample` runs them) until the model's step has
    been compiled by TorchScript (flat_step.SCRIPT_AFTER_STEPS of them, counted across generations, what a process
    that has generated that many tokens runs from then on); the slowest step's time, the compilation's."""
    decoder = Decoder(module)
    cache, last, slowest = decoder.static_cache(ctx), torch.zeros(1, 1, dtype=torch.long), 0.0
    with torch.inference_mode():
        for _ in range(flat_step.SCRIPT_AFTER_STEPS):
            if cache.length == cache.capacity:
                cache.length = 0
            t0 = time.perf_counter()
            decoder.step(last, cache)
            slowest = max(slowest, time.perf_counter() - t0)
    return {"compiled": decoder._flat is not None and decoder._flat.program.scripted is not None,
            "slowest_ms": slowest * 1e3}


def matrix_products(module, python_copy, ctx: int, args) -> dict:
    """What the matrix products cost of a one-token decoding step (Decoder.step on the static cache, as `specc
    sample` runs it, the flat step of specdsl/backends/flat_step.py, compiled by TorchScript): the step timed as
    is, and a copy of the model whose every nn.Linear is a no-op (a view of its input's first feature, expanded to
    the output's width, so that the flat step traces it too), alternated, medians; beside them the step as Python
    (`python_copy`, never compiled). Hugging Face multiplies by the same weights through the same kernel (MKL's
    sgemm), so against HF generate PyTorch can be at most HF's time per token / the products' time faster, were
    everything else free."""
    without = copy.deepcopy(module)
    for m in without.modules():
        if isinstance(m, torch.nn.Linear):
            m.forward = functools.partial(_no_product, width=m.out_features)
    compile_step(without, ctx)
    runs = {"step": Decoder(module), "without products": Decoder(without), "Python step": Decoder(python_copy)}
    caches = {name: decoder.static_cache(ctx) for name, decoder in runs.items()}
    last, steps = torch.zeros(1, 1, dtype=torch.long), min(30, ctx - PROMPT)

    def step_ms(name: str) -> float:
        decoder, cache = runs[name], caches[name]
        cache.length = 0
        decoder.step(torch.zeros(1, PROMPT, dtype=torch.long), cache)
        t0 = time.perf_counter_ns()
        for _ in range(steps):
            decoder.step(last, cache)
        return (time.perf_counter_ns() - t0) / 1e6 / steps

    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode(), uncompiled():  # the first two were compiled before; the third never is
        for name in runs:
            step_ms(name)  # warm-up (and the trace)
        compiled = {name: decoder._flat is not None and decoder._flat.program.scripted is not None
                    for name, decoder in runs.items()}
        assert all(decoder._flat is not None for decoder in runs.values()), "a step was not traced: not comparable"
        assert compiled["step"] == compiled["without products"], "one step compiled, the other not: not comparable"
        for _ in range(3 * args.gen_rounds):
            for name in runs:
                times[name].append(step_ms(name))
    med = {name: statistics.median(t) for name, t in times.items()}
    return {**med, "products": med["step"] - med["without products"]}


def _no_product(x: torch.Tensor, width: int) -> torch.Tensor:
    return x[..., :1].expand(-1, -1, width).contiguous()


def timed(fns: dict, new: int, args) -> dict:
    """One untimed run of each (the tokens, compared with the first's), then `gen_rounds` rounds, the order rotating
    and flipping; tokens/s from the median wall time of a run."""
    tokens = {name: fn() for name, fn in fns.items()}  # warm-up, and the tokens to compare
    reference = next(iter(tokens.values()))
    agree = {name: t == reference for name, t in tokens.items()}
    first_diff = {name: next((i for i, (a, b) in enumerate(zip(t, reference)) if a != b), None)
                  for name, t in tokens.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    stable = True
    names = list(fns)
    for r in range(args.gen_rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        if r % 2:
            order = order[::-1]
        for name in order:
            settle()
            t0 = time.perf_counter_ns()
            got = fns[name]()
            times[name].append((time.perf_counter_ns() - t0) / 1e9)
            stable &= got == tokens[name]
    med = {name: statistics.median(t) for name, t in times.items()}
    tps = {name: new / m for name, m in med.items()}
    # speed-up of onnxruntime within each round (its run and the other's, minutes apart at most), median over rounds
    paired = {name: statistics.median(a / b for a, b in zip(times[name], times[ORT_MAIN])) for name in times}
    return {"tokens": tokens, "agree": agree, "first_diff": first_diff, "stable": stable, "med": med, "tps": tps,
            "paired": paired, "n": args.gen_rounds, "times": times}


# ---------------------------------------------------------------------------------------------------- main

def bench_model(label: str, spec: Path, overrides: dict, activation: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="specc-bench-inference-") as tmpdir:
        compiled, module, hf, report, full_path, decode_path = build(spec, overrides, activation, Path(tmpdir),
                                                                     args.seed)
        hyper = compiled.model.hyperparameters
        ctx, vocab = int(hyper["ctx"]), int(hyper["vocab"])
        full, decode = ort_session(full_path, args.threads), OnnxGenerator(decode_path, threads=args.threads)
    load = MachineLoad()  # from here on: the measurements
    seq = min(SEQ, ctx)
    print(f"\n{label}: {hyper['layers']} layers, {hyper['heads']} heads, d={hyper['d']}, ctx {ctx}, vocab {vocab}, "
          f"{compiled.analysis.total:,} parameters")
    print(f"  export: full graph vs PyTorch max |diff| {report['max_abs_diff']:.1e}, decode graph (cache) vs full "
          f"{report['decode']['cache_vs_full_max_abs_diff']:.1e}")
    gen = torch.Generator().manual_seed(args.seed + 2)
    fwd = {}
    for batch in BATCHES:
        tokens = torch.randint(0, vocab, (batch, seq), generator=gen)
        with torch.no_grad():
            diff = float(np.abs(module(tokens).numpy() - full.run(None, {"tokens": tokens.numpy()})[0]).max())
        fwd[batch] = forward_latency(module, full, tokens, args)
        fwd[batch]["diff"] = diff
        print(f"  forward B={batch} T={seq}: torch {fwd[batch]['med']['torch']:.2f} ms, ort "
              f"{fwd[batch]['med']['ort']:.2f} ms (max |logits diff| {diff:.1e})", flush=True)
    steady = compile_step(module, ctx)
    print(f"  PyTorch's one-token step {'compiled by TorchScript' if steady['compiled'] else 'NOT compiled'} after "
          f"{flat_step.SCRIPT_AFTER_STEPS} steps (slowest step {steady['slowest_ms']:.0f} ms); PyTorch with a cache "
          f"is timed so from here on, and as its Python program where the rows say so", flush=True)
    python_copy = copy.deepcopy(module)
    gens = []
    for overflow in OVERFLOW_POLICIES:
        g = generation(module, decode, ctx, overflow, args)
        print(f"  generation, --overflow {overflow}: prompt {PROMPT} tokens + {args.new} new; per cached run 1 "
              f"prefill, {g['single_steps']} one-token calls, {g['reprefills']} window re-runs", flush=True)
        gens.append(g)
    hf_run = versus_hf(module, python_copy, hf, decode, ctx, args)
    print(f"  generation against Hugging Face generate: prompt {PROMPT} tokens + {hf_run['new']} new", flush=True)
    hf_run["products"] = matrix_products(module, python_copy, ctx, args)
    note = load.summary()
    print(f"  during this model's measurements: {note}")
    return {"label": label, "seq": seq, "ctx": ctx, "fwd": fwd, "gens": gens, "hf": hf_run, "load": note}


def print_model(r: dict, args) -> list[tuple[bool, str]]:
    label, fwd = r["label"], r["fwd"]
    print(f"\n{label}   [{r['load']}]")
    print(f"  {'forward':<22}{'batch':>6}{'seq':>5}{'torch ms':>10}{'ort ms':>9}{'ort/torch':>11}{'per-round':>11}")
    for batch, f in fwd.items():
        print(f"  {'':<22}{batch:>6}{r['seq']:>5}{f['med']['torch']:>10.2f}{f['med']['ort']:>9.2f}"
              f"{f['ratio']:>11.3f}{f['paired']:>11.3f}")
    print(f"  (sequence used: {r['seq']} = min({SEQ}, ctx {r['ctx']}); medians of {fwd[BATCHES[0]]['n']} calls each)")
    goals = []
    for g in r["gens"]:
        goals += print_generation(label, r["ctx"], g, args)
    goals += print_versus_hf(label, r["hf"])
    for batch, f in fwd.items():
        goals.append((f["ratio"] <= GOAL_FORWARD,
                      f"{label}: forward B={batch} T={r['seq']} ort/torch = {f['ratio']:.3f} (goal <= {GOAL_FORWARD})"))
    return goals


def print_generation(label: str, ctx: int, g: dict, args) -> list[tuple[bool, str]]:
    print(f"  {'generation (B=1), --overflow ' + g['overflow']:<38}{'median s':>9}{'ms/token':>10}{'tokens/s':>10}"
          f"{'ort x':>7}{'per-round':>10}  same ids")
    main = g["tps"][ORT_MAIN]
    all_agree = print_rows(g, METHODS)
    calls = g["single_steps"] + g["reprefills"] + 1
    if g["reprefills"] * 2 > calls:
        print(f"  note: {g['reprefills']} of the {calls} calls of a cached run re-run the whole {ctx}-token "
              f"window (past ctx), the work of a run\n  without a cache: onnxruntime's lead over PyTorch without a "
              f"cache is then bounded by about 1 / (forward ort/torch at B=1)")
    vs_cache = main / g["tps"]["torch, cache"]
    vs_nocache = main / g["tps"]["torch, no cache"]
    pc, pn = g["paired"]["torch, cache"], g["paired"]["torch, no cache"]
    what = f"{label}, --overflow {g['overflow']}: ort generation / torch"
    if g["overflow"] != DEFAULT_OVERFLOW:
        return [(None, f"{what} with cache = {vs_cache:.2f}x, without cache = {vs_nocache:.2f}x tokens/s")]
    return [
        (vs_cache >= GOAL_VS_CACHE and all_agree,
         f"{what} with cache = {vs_cache:.2f}x tokens/s (goal >= {GOAL_VS_CACHE}x; per-round {pc:.2f}x)"),
        (vs_nocache >= GOAL_VS_NOCACHE and all_agree,
         f"{what} without cache = {vs_nocache:.2f}x tokens/s (goal >= {GOAL_VS_NOCACHE}x; per-round {pn:.2f}x)"),
    ]


def print_rows(g: dict, methods: list[str]) -> bool:
    """The rows of one generation table; whether every method gave the same ids."""
    main = g["tps"][ORT_MAIN]
    for name in methods:
        same = "yes" if g["agree"][name] else f"NO (first differs at {g['first_diff'][name]})"
        print(f"  {name:<38}{g['med'][name]:>9.3f}{g['med'][name] / g['new'] * 1e3:>10.2f}{g['tps'][name]:>10,.1f}"
              f"{main / g['tps'][name]:>7.2f}{g['paired'][name]:>10.2f}  {same}")
    all_agree = all(g["agree"].values())
    print(f"  ({g['new']} new tokens, medians of {g['n']} runs each; tokens agree across all methods: "
          f"{'yes' if all_agree else 'NO'}; repeat runs gave the same ids: {'yes' if g['stable'] else 'NO'})")
    return all_agree


def print_versus_hf(label: str, g: dict) -> list[tuple[bool, str]]:
    print(f"  {'generation (B=1), against HF generate':<38}{'median s':>9}{'ms/token':>10}{'tokens/s':>10}"
          f"{'ort x':>7}{'per-round':>10}  same ids")
    all_agree = print_rows(g, HF_METHODS)
    ratio = g["tps"]["torch, cache"] / g["tps"]["HF generate"]
    per_round = statistics.median(h / t for h, t in zip(g["times"]["HF generate"], g["times"]["torch, cache"]))
    vs_ort = g["tps"][ORT_MAIN] / g["tps"]["torch, cache"]
    python_ratio = g["tps"][PYTHON_STEP] / g["tps"]["HF generate"]
    products, hf_ms = g["products"], g["med"]["HF generate"] / g["new"] * 1e3
    print(f"  one-token step (PyTorch, cache): {products['step']:.2f} ms (as Python: {products['Python step']:.2f} "
          f"ms), of which the matrix products {products['products']:.2f} ms "
          f"({products['products'] / products['step']:.0%}; timed against the step with them replaced by no-ops). HF "
          f"generate's {hf_ms:.2f} ms/token runs the same products: with all else free PyTorch could be at most "
          f"{hf_ms / products['products']:.2f}x HF")
    return [(ratio >= GOAL_VS_HF and all_agree,
             f"{label}: PyTorch generation with cache vs HF generate = {ratio:.2f}x tokens/s (goal >= {GOAL_VS_HF}x; "
             f"per-round {per_round:.2f}x; {g['tps']['torch, cache']:,.1f} vs {g['tps']['HF generate']:,.1f} "
             f"tokens/s; onnxruntime {vs_ort:.2f}x PyTorch's)"),
            (None, f"{label}: the same in a process's first {flat_step.SCRIPT_AFTER_STEPS} one-token steps (the "
                   f"step's Python program) = {python_ratio:.2f}x tokens/s")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions: 3 rounds of 2 calls, 2 generation rounds")
    ap.add_argument("--gpt2", action="store_true", help="also (c) GPT-2 small, 124M (an export of 0.5 GB, minutes)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help=f"torch threads and onnxruntime intra-op threads (default {torch.get_num_threads()})")
    ap.add_argument("--rounds", type=int, default=15, help="alternating forward rounds (default 15)")
    ap.add_argument("--calls", type=int, default=3, help="timed forward calls per backend per round (default 3)")
    ap.add_argument("--warmup", type=int, default=3, help="unreported forward warm-up calls (default 3)")
    ap.add_argument("--gen-rounds", type=int, default=7, help="generation rounds, one run per method (default 7)")
    ap.add_argument("--new", type=int, default=256, help="new tokens per generation (default 256)")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.calls, args.warmup, args.gen_rounds = 3, 2, 2, 2
    torch.set_num_threads(args.threads)
    import onnxruntime as ort
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__} "
          f"(CPUExecutionProvider, {ort.SessionOptions().graph_optimization_level.name}, "
          f"intra_op_num_threads {args.threads}); fp32 CPU")
    print(f"forward: {args.rounds} alternating rounds of {args.calls} calls per backend after {args.warmup} warm-up "
          f"calls; generation: 1 warm-up run + {args.gen_rounds} rounds per method")
    rows = []
    for label, spec, overrides, activation in CONFIGS + ([GPT2_SMALL] if args.gpt2 else []):
        try:
            rows.append(bench_model(label, spec, overrides, activation, args))
        except Exception:  # report and go on: the exit code stays 0
            print(f"\n{label}: FAILED TO RUN")
            traceback.print_exc(file=sys.stdout)
    goals = []
    for r in rows:
        goals += print_model(r, args)
    print()
    for ok, line in goals:
        print(f"{'info' if ok is None else 'PASS' if ok else 'FAIL'}  {line}")
    return 0


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc(file=sys.stdout)
    sys.exit(0)
