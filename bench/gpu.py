"""The GPU path against its limits: training throughput and MFU of compiled specs next to a hand-written nanoGPT
model in the same run (each eager and under torch.compile), and cached generation against the memory-bandwidth
bound.

Models: GPT-2 small (specs/gpt2.spec, 124M; the baseline is bench/handwritten_gpt.py at the same shape, with GPT-2's
gelu_tanh) and a ~1.1B LLaMA-shaped spec (specs/llama.spec at TinyLlama-1.1B's shape: d 2048, 22 layers, 32 heads,
4 KV heads, ffn 5632, vocab 32000). Training: bf16 autocast, fused AdamW, batch x ctx tokens a step; tokens/s is
the median of timed steps after warm-up (torch.cuda.synchronize around each). MFU = training FLOPs per token (3x the
forward FLOPs `specc compile` reports, attention included) x tokens/s / the device's peak dense bf16 FLOP/s.
Generation: batch 1, a prompt, then one token a step through the KV cache (backends.torch_backend.Decoder), bf16
weights; the bound is peak memory bandwidth / bytes read a token (every weight once, plus the cache so far).

    python bench/gpu.py                 # on a CUDA device; without one it says so and exits 0
    python bench/gpu.py --dry           # the same code on the CPU at toy sizes (tests/test_bench_gpu.py runs it)
    python bench/gpu.py --peak-tflops 989 --peak-tbps 4.8   # a device the table below does not know
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# Peak dense bf16 tensor FLOP/s (no sparsity) and HBM bandwidth, from the vendors' datasheets.
PEAKS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12), "L4": (121e12, 0.3e12),
         "A10": (125e12, 0.6e12), "RTX 4090": (165e12, 1.0e12)}
GPT2_SMALL = {"dropout": 0.0}
LLAMA_1B = {"d": 2048, "layers": 22, "heads": 32, "kv_heads": 4, "ffn": 5632, "vocab": 32000, "ctx": 2048}
DRY = {"gpt2": {"d": 64, "layers": 2, "heads": 4, "ctx": 32, "vocab": 128, "dropout": 0.0},
       "llama": {"d": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 96, "vocab": 128, "ctx": 32}}


def peaks(device_name: str, args) -> tuple[float | None, float | None]:
    known = next((v for k, v in PEAKS.items() if k in device_name), (None, None))
    return (args.peak_tflops * 1e12 if args.peak_tflops else known[0],
            args.peak_tbps * 1e12 if args.peak_tbps else known[1])


def sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(model, vocab: int, batch: int, ctx: int, steps: int, device, compiled: bool) -> float:
    """Tokens a second of training steps (median after warm-up)."""
    import torch
    import torch.nn.functional as F
    model = model.to(device).train()
    step_model = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(vocab, (batch, ctx + 1), generator=gen).to(device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    times = []
    for i in range(steps + 3):  # 3 warm-up steps (and compilation)
        sync(device)
        start = time.perf_counter()
        with amp:
            out = step_model(x[:, :-1])
            logits = out[0] if isinstance(out, tuple) else out
            loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return batch * ctx / statistics.median(times)


def generation_rate(module, vocab: int, prompt: int, new: int, device) -> tuple[float, float]:
    """(tokens a second of cached greedy decoding, bytes read a token: weights once plus the mean cache)."""
    import torch

    from specdsl.backends.torch_backend import Decoder
    module = module.to(device=device, dtype=torch.bfloat16).eval()
    decoder = Decoder(module)
    ids = torch.randint(vocab, (1, prompt), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        logits, *past = decoder(ids, *decoder.empty_cache(1, dtype=torch.bfloat16, device=device))
        token = logits[:, -1:].argmax(-1)
        sync(device)
        start = time.perf_counter()
        for _ in range(new):
            logits, *past = decoder(token, *past)
            token = logits[:, -1:].argmax(-1)
        sync(device)
    seconds = time.perf_counter() - start
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    cache_per_token = sum(kv * hd for kv, hd in decoder.slots) * 2 * 2  # k and v, bf16
    return new / seconds, weights + cache_per_token * (prompt + new / 2)


def bench_model(label: str, spec: str, sets: dict, args, device, baseline=None) -> None:
    import torch

    import specdsl
    compiled = specdsl.load(ROOT / "specs" / spec, overrides=sets)
    from specdsl.contract import contract
    facts = contract(compiled.model)
    ctx, vocab = facts.context, facts.vocab
    flops = 3 * compiled.analysis.forward_flops
    peak, bandwidth = peaks(args.device_name, args)
    print(f"{label}: {compiled.analysis.total:,} parameters, {flops / 1e9:.2f} GFLOPs a training token "
          f"(batch {args.batch} x ctx {ctx})")
    builders = [("specc", lambda: specdsl.to_torch(compiled))] + ([("nanoGPT", baseline)] if baseline else [])
    rates = {}
    for name, build in builders:
        for compiled_mode in ((False, True) if args.compile else (False,)):
            torch.manual_seed(0)
            rate = train_rate(build(), vocab, args.batch, ctx, args.steps, device, compiled_mode)
            key = f"{name}{' +compile' if compiled_mode else ''}"
            rates[key] = rate
            mfu = f", MFU {flops * rate / peak:.1%}" if peak else ""
            print(f"  train {key:>17}: {rate:,.0f} tokens/s{mfu}")
    for key in [k for k in rates if k.startswith("nanoGPT")]:
        ours = rates[key.replace("nanoGPT", "specc")]
        print(f"  specc / nanoGPT{key[len('nanoGPT'):]}: {ours / rates[key]:.3f}")
    rate, per_token = generation_rate(specdsl.to_torch(compiled), vocab, args.prompt, args.new, device)
    bound = f", {rate * per_token / bandwidth:.1%} of the bandwidth bound ({bandwidth / per_token:,.0f} tokens/s)" \
        if bandwidth else ""
    print(f"  generate (KV cache, batch 1, bf16): {rate:,.1f} tokens/s, {per_token / 2**20:,.1f} MiB a token{bound}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry", action="store_true", help="run on the CPU at toy sizes (tests the code path)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--prompt", type=int, default=None)
    ap.add_argument("--new", type=int, default=None)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the device")
    ap.add_argument("--peak-tbps", type=float, default=None, help="peak memory bandwidth, TB/s")
    args = ap.parse_args(argv)
    import torch
    if not args.dry and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here (this PyTorch sees none); skipped. `--dry` runs the same code on "
              "the CPU at toy sizes.")
        return 0
    device = torch.device("cpu" if args.dry else "cuda")
    args.device_name = "CPU (dry run: figures are not GPU figures)" if args.dry else torch.cuda.get_device_name()
    defaults = (2, 2, 8, 8) if args.dry else (20, 8, 128, 256)
    args.steps, args.batch, args.prompt, args.new = (v if v is not None else d for v, d in
                                                     zip((args.steps, args.batch, args.prompt, args.new), defaults))
    if args.dry:
        args.compile = False  # torch.compile's C++ toolchain is not the point of a dry run
    print(f"device: {args.device_name}; torch {torch.__version__}")
    from handwritten_gpt import GPT, GPTConfig
    gpt2 = DRY["gpt2"] if args.dry else {**GPT2_SMALL}
    g = {"vocab": 50257, "ctx": 1024, "d": 768, "layers": 12, "heads": 12, **gpt2}
    baseline = lambda: GPT(GPTConfig(vocab=g["vocab"], ctx=g["ctx"], d=g["d"], layers=g["layers"],  # noqa: E731
                                     heads=g["heads"], dropout=0.0, approximate="tanh"))
    bench_model("GPT-2 small" + (" (dry)" if args.dry else ""), "gpt2.spec", g, args, device, baseline)
    bench_model("LLaMA 1.1B" + (" (dry)" if args.dry else ""), "llama.spec", DRY["llama"] if args.dry else LLAMA_1B,
                args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
