"""`specc sample`'s PyTorch generation (specdsl.train.sample.generate: Decoder.step over an in-place KV cache)
against Hugging Face `generate` on the same model, in one run: GPT-2 shapes built from a GPT2Config, its weights
copied into specs/gpt2.spec's module with load_weights, so both must produce the same greedy ids (checked).

Batch 1, a prompt of 8 seeded random tokens, then `new` tokens greedily (HF: do_sample=False, use_cache=True,
min_new_tokens = max_new_tokens so both make the same number of steps). One untimed run of each, then `rounds`
rounds alternating the order; tokens/s = new / median wall time. Goal (issue 13): specc >= 2x HF.

    python bench/generate_vs_hf.py [--new 128] [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {"small": {"vocab": 512, "ctx": 256, "d": 256, "layers": 4, "heads": 4, "dropout": 0.0},
          "gpt2": {"vocab": 50257, "ctx": 1024, "d": 768, "layers": 12, "heads": 12, "dropout": 0.0}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=SHAPES, default="small")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch
    import transformers

    import specdsl
    from specdsl.train.sample import generate
    torch.set_num_threads(args.threads)
    s = SHAPES[args.shape]
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=s["vocab"], n_positions=s["ctx"], n_embd=s["d"], n_layer=s["layers"], n_head=s["heads"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    ours = specdsl.to_torch(specdsl.load(ROOT / "specs" / "gpt2.spec", overrides=s)).eval()
    specdsl.load_weights(ours, hf.state_dict(), family="gpt2")
    prompt = torch.randint(s["vocab"], (1, 8), generator=torch.Generator().manual_seed(1))

    def run_specc():
        return list(generate(ours, prompt[0].tolist(), args.new, s["ctx"], temperature=0))

    def run_hf():
        with torch.no_grad():
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new,
                              min_new_tokens=args.new, do_sample=False, use_cache=True, pad_token_id=0)
        return out[0, prompt.shape[1]:].tolist()

    assert run_specc() == run_hf(), "the two greedy generations differ: not the same model"
    times = {"specc": [], "hf": []}
    for r in range(args.rounds):
        for name, fn in (("specc", run_specc), ("hf", run_hf))[::(1 if r % 2 else -1)]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rate = {k: args.new / statistics.median(v) for k, v in times.items()}
    print(f"GPT-2 shape {args.shape} {s}, batch 1, {args.new} new tokens, {args.threads} threads, "
          f"{args.rounds} rounds (medians)")
    print(f"  specc sample (PyTorch, in-place KV cache): {rate['specc']:,.1f} tokens/s")
    print(f"  Hugging Face generate (KV cache):          {rate['hf']:,.1f} tokens/s")
    ratio = rate["specc"] / rate["hf"]
    print(f"  specc / HF: {ratio:.2f}x  (goal >= 2x: {'PASS' if ratio >= 2 else 'FAIL'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
