"""Inference on CPU: the compiled spec module on PyTorch eager against its ONNX export on onnxruntime, in one run.

Two models, random weights (seeded; the same weights on both backends, checked by comparing logits):

* (a) specs/nanogpt-shakespeare.spec as is: 4 layers, 4 heads, d=128, ctx 64, vocab 65;
* (b) the same spec with d=256, ctx=256 (4 layers, 4 heads, vocab 65).

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
         call, then one token a call; when the window moves its tokens are run again as a prompt (learned absolute
         positions: a moved window invalidates the cache);
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

Goals, printed PASS/FAIL per model: onnxruntime generation >= 1.5x the tokens/s of PyTorch with a cache and >= 4x
PyTorch without one, under the default policy (the other's ratios are printed as "info"); onnxruntime forward
latency no worse than PyTorch eager (ort/torch <= 1.0) at B=1 and 8.

The machine may be shared: everything that is compared is measured in the same run, alternated, and summarized by
medians, and each model's tables say how much CPU other processes took meanwhile (from /proc/stat). With as many
threads as cores, a busy neighbour slows PyTorch's OpenMP far more than onnxruntime (a stolen core stalls every
parallel region): read the ratios only when that figure is near 0. Noise from other virtual machines on the host
does not show there (the median of the same call moved by up to 2x from one second to the next while developing
this), so run twice before trusting a ratio near a goal.

Usage: python bench/inference.py [--quick] [--threads N] [--rounds N] [--calls N] [--warmup N] [--gen-rounds N]
                                 [--new N] [--seed N]
The exit code is 0 whatever the result.
"""

from __future__ import annotations

import argparse
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
from specdsl.backends.onnx_export import export  # noqa: E402
from specdsl.backends.onnx_generate import OnnxGenerator  # noqa: E402
from specdsl.context_window import DEFAULT_OVERFLOW, OVERFLOW_POLICIES, prompt_start, window_start  # noqa: E402
from specdsl.contract import contract  # noqa: E402
from specdsl.tokenizer import Tokenizer  # noqa: E402
from specdsl.train.sample import generate  # noqa: E402

SPEC = ROOT / "specs" / "nanogpt-shakespeare.spec"
CONFIGS = [  # (label, spec overrides)
    ("(a) shakespeare d=128 ctx=64", {}),
    ("(b) d=256 L=4 H=4 ctx=256", {"d": 256, "ctx": 256, "heads": 4, "layers": 4}),
]
SEQ = 128
BATCHES = (1, 8)
PROMPT = 8
GOAL_VS_CACHE, GOAL_VS_NOCACHE, GOAL_FORWARD = 1.5, 4.0, 1.0
METHODS = ["torch, no cache", "torch, cache", "ort, cache"]
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


def build(overrides: dict, tmp: Path, seed: int):
    """The torch module with seeded random weights, and its two exported graphs (exported from those weights)."""
    compiled = specdsl.load(SPEC, overrides=overrides)
    torch.manual_seed(seed)
    module = specdsl.to_torch(compiled).eval()
    # a tokenizer of the model's vocabulary, for OnnxGenerator (the bench feeds ids, never text)
    chars = "".join(chr(33 + i) for i in range(contract(compiled.model).ids))
    report = export(compiled, tmp / "model.onnx", module=module, tokenizer=Tokenizer("char", chars).to_json())
    return compiled, module, report, tmp / "model.onnx", tmp / "model.decode.onnx"


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


def generation(module, generator: OnnxGenerator, ctx: int, overflow: str, args) -> dict:
    prompt = torch.randint(0, module.wte.weight.shape[0], (PROMPT,),
                           generator=torch.Generator().manual_seed(args.seed + 1)).tolist()
    new, greedy = args.new, {"temperature": 0, "overflow": overflow}
    fns = {
        "torch, no cache": lambda: list(generate(module, prompt, new, ctx, cache=False, **greedy)),
        "torch, cache": lambda: list(generate(module, prompt, new, ctx, **greedy)),
        "ort, cache": lambda: list(generator.generate(prompt, new, **greedy)),
    }
    tokens = {name: fn() for name, fn in fns.items()}  # warm-up, and the tokens to compare
    reference = tokens["torch, no cache"]
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
    tps = {name: args.new / m for name, m in med.items()}
    # speed-up of onnxruntime within each round (its run and the other's, minutes apart at most), median over rounds
    paired = {name: statistics.median(a / b for a, b in zip(times[name], times[ORT_MAIN])) for name in times}
    steps, reruns = window_runs(PROMPT, args.new, ctx, overflow)
    return {"overflow": overflow, "prompt": prompt, "tokens": tokens, "agree": agree, "first_diff": first_diff,
            "stable": stable, "med": med, "tps": tps, "paired": paired, "n": args.gen_rounds, "single_steps": steps,
            "reprefills": reruns}


# ---------------------------------------------------------------------------------------------------- main

def bench_model(label: str, overrides: dict, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="specc-bench-inference-") as tmpdir:
        compiled, module, report, full_path, decode_path = build(overrides, Path(tmpdir), args.seed)
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
    gens = []
    for overflow in OVERFLOW_POLICIES:
        g = generation(module, decode, ctx, overflow, args)
        print(f"  generation, --overflow {overflow}: prompt {PROMPT} tokens + {args.new} new; per cached run 1 "
              f"prefill, {g['single_steps']} one-token calls, {g['reprefills']} window re-runs", flush=True)
        gens.append(g)
    note = load.summary()
    print(f"  during this model's measurements: {note}")
    return {"label": label, "seq": seq, "ctx": ctx, "fwd": fwd, "gens": gens, "load": note}


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
    for batch, f in fwd.items():
        goals.append((f["ratio"] <= GOAL_FORWARD,
                      f"{label}: forward B={batch} T={r['seq']} ort/torch = {f['ratio']:.3f} (goal <= {GOAL_FORWARD})"))
    return goals


def print_generation(label: str, ctx: int, g: dict, args) -> list[tuple[bool, str]]:
    print(f"  {'generation (B=1), --overflow ' + g['overflow']:<38}{'median s':>9}{'ms/token':>10}{'tokens/s':>10}"
          f"{'ort x':>7}{'per-round':>10}  same ids")
    main = g["tps"][ORT_MAIN]
    for name in METHODS:
        same = "yes" if g["agree"][name] else f"NO (first differs at {g['first_diff'][name]})"
        print(f"  {name:<38}{g['med'][name]:>9.3f}{g['med'][name] / args.new * 1e3:>10.2f}{g['tps'][name]:>10,.0f}"
              f"{main / g['tps'][name]:>7.2f}{g['paired'][name]:>10.2f}  {same}")
    all_agree = all(g["agree"].values())
    print(f"  ({args.new} new tokens, medians of {g['n']} runs each; tokens agree across all methods: "
          f"{'yes' if all_agree else 'NO'}; repeat runs gave the same ids: {'yes' if g['stable'] else 'NO'})")
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions: 3 rounds of 2 calls, 2 generation rounds")
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
    for label, overrides in CONFIGS:
        try:
            rows.append(bench_model(label, overrides, args))
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
