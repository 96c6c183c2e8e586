"""How fast does the compiled spec module train? One training step of `specdsl.to_torch(spec)` against a
hand-written nanoGPT-style module of the same architecture (bench/handwritten_gpt.py), on CPU in fp32.

What is measured, all in one run, for two configurations:

* (a) specs/nanogpt-shakespeare.spec as is (4 layers, 4 heads, d=128, ctx 64, vocab 65), batch 12 x 64 tokens
  (nanoGPT's CPU setting);
* (b) the same spec with d=256, ctx=256 (4 layers, 4 heads, vocab 65, exact GELU), batch 16 x 256 tokens.

A step is: forward on a [B, ctx] batch of random tokens, cross-entropy against random targets, backward,
AdamW.step() (nanoGPT's settings: lr 1e-3, betas (0.9, 0.99), weight decay 0.1 on the matrices and embeddings
only) and zero_grad(set_to_none=True). Both modules get the same weights (the compiled module's, copied) and the
same sequence of batches; the script first checks that they have the same parameter count and the same logits.

The machine is shared and noisy, so the two are never timed in separate runs: after a few unreported warm-up steps
each, they alternate, `steps` timed steps of one then `steps` of the other, for `rounds` rounds (the order flips
every round). Each step is timed on its own (time.perf_counter_ns); the reported figure is the median step time, and
tokens/s = B * T / median. The goal is compiled/hand-written tokens/s >= 0.98 for each configuration (the ratio of
the two medians). Also shown, as a check on slow drifts in the machine's load: the median over rounds of the ratio
within each round (the two models' adjacent blocks of steps).

Usage: python bench/train_step.py [--quick] [--threads N] [--rounds N] [--steps N] [--warmup N]
The exit code is 0 whatever the result.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # time the working tree's specdsl

import specdsl  # noqa: E402
from bench.handwritten_gpt import GPT, GPTConfig, spec_names  # noqa: E402

SPEC = ROOT / "specs" / "nanogpt-shakespeare.spec"
# (label, spec overrides, batch size)
CONFIGS = [
    ("(a) shakespeare d=128 ctx=64", {}, 12),
    ("(b) d=256 ctx=256", {"d": 256, "ctx": 256, "vocab": 65}, 16),
]
GOAL = 0.98
BATCHES = 8  # distinct random batches, cycled


def make_optimizer(model: torch.nn.Module) -> torch.optim.AdamW:
    """nanoGPT's configure_optimizers: decay the >= 2-D parameters, not the biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99))


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    logits = model(x)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed_steps(model, opt, batches, start: int, n: int) -> list[float]:
    times = []
    for i in range(start, start + n):
        x, y = batches[i % len(batches)]
        t0 = time.perf_counter_ns()
        train_step(model, opt, x, y)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


def build(overrides: dict) -> tuple[torch.nn.Module, GPT]:
    compiled = specdsl.to_torch(specdsl.load(SPEC, overrides=overrides), device="cpu", dtype=torch.float32)
    wpe, attn = compiled.wpe.weight, compiled.get_submodule("h.0.attn")  # the sizes, as the spec set them
    cfg = GPTConfig(vocab=compiled.wte.weight.shape[0], ctx=wpe.shape[0], d=wpe.shape[1],
                    layers=len(list(compiled.h.children())), heads=attn.heads)
    hand = GPT(cfg)
    theirs = dict(compiled.named_parameters())
    with torch.no_grad():
        for mine, name in spec_names(cfg).items():
            hand.get_parameter(mine).copy_(theirs[name])
    return compiled, hand


def bench_config(label: str, overrides: dict, batch: int, args) -> dict:
    torch.manual_seed(0)
    compiled, hand = build(overrides)
    cfg = hand.cfg
    n_compiled = sum(p.numel() for p in compiled.parameters())
    n_hand = sum(p.numel() for p in hand.parameters())
    gen = torch.Generator().manual_seed(1234)
    batches = [(torch.randint(cfg.vocab, (batch, cfg.ctx), generator=gen),
                torch.randint(cfg.vocab, (batch, cfg.ctx), generator=gen)) for _ in range(BATCHES)]
    with torch.no_grad():
        diff = (compiled(batches[0][0]) - hand(batches[0][0])).abs().max().item()
    print(f"\n{label}: batch {batch} x {cfg.ctx}, {cfg.layers} layers, {cfg.heads} heads, d={cfg.d}, "
          f"vocab {cfg.vocab}")
    print(f"  parameters: compiled {n_compiled:,}, hand-written {n_hand:,} "
          f"{'(equal)' if n_compiled == n_hand else '(DIFFER)'}; max |logits difference| {diff:.2e}")

    models = {"compiled": (compiled, make_optimizer(compiled)), "hand-written": (hand, make_optimizer(hand))}
    times: dict[str, list[float]] = {name: [] for name in models}
    for model, opt in models.values():
        timed_steps(model, opt, batches, 0, args.warmup)
    order, paired = list(models), []
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            gc.collect()
            model, opt = models[name]
            times[name] += timed_steps(model, opt, batches, args.warmup + r * args.steps, args.steps)
        last = {name: statistics.median(t[-args.steps:]) for name, t in times.items()}
        paired.append(last["hand-written"] / last["compiled"])
    tokens = batch * cfg.ctx
    med = {name: statistics.median(t) for name, t in times.items()}
    tps = {name: tokens / (m / 1e3) for name, m in med.items()}
    return {"label": label, "med": med, "tps": tps, "ratio": tps["compiled"] / tps["hand-written"],
            "paired": statistics.median(paired), "counts_equal": n_compiled == n_hand, "params": n_compiled,
            "n": len(times["compiled"]), "min": {name: min(t) for name, t in times.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds of 3 steps, 2 warm-up steps")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch threads (default 2)")
    ap.add_argument("--rounds", type=int, default=10, help="alternating rounds (default 10)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model per round (default 5)")
    ap.add_argument("--warmup", type=int, default=5, help="unreported warm-up steps per model (default 5)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 3, 3, 2
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 CPU; "
          f"{args.rounds} alternating rounds of {args.steps} steps per model after {args.warmup} warm-up steps")

    rows = [bench_config(label, overrides, batch, args) for label, overrides, batch in CONFIGS]

    print(f"\n{'configuration':<30}{'model':<14}{'median ms':>11}{'min ms':>9}{'tokens/s':>11}")
    for r in rows:
        for name in ("compiled", "hand-written"):
            print(f"{r['label']:<30}{name:<14}{r['med'][name]:>11.2f}{r['min'][name]:>9.2f}{r['tps'][name]:>11,.0f}")
    print(f"(medians of {rows[0]['n']} steps per model)\n")
    for r in rows:
        ok = r["ratio"] >= GOAL and r["counts_equal"]
        print(f"{'PASS' if ok else 'FAIL'}  {r['label']}: compiled/hand-written tokens/s = {r['ratio']:.3f} "
              f"(goal >= {GOAL}; median of per-round ratios {r['paired']:.3f}), "
              f"parameters {r['params']:,} {'equal' if r['counts_equal'] else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
