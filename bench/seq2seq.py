"""What an encoder helps: an encoder-decoder (specs/seq2seq-reverse.spec) against a decoder-only model of about the
same size on the built-in reversal task (specdsl/train/pairs.py), in one run, on the same batches, with the same
optimizer, schedule and steps. The decoder-only model reads `source [BOS] target [EOS]` as one sequence and is scored
on the target and [EOS] (tasks.DecoderOnlySeq2Seq); the encoder-decoder encodes the source and decodes `[BOS]
target` (tasks.Seq2Seq).

    python bench/seq2seq.py [--steps 600] [--batch 64] [--lr 3e-3] [--seed 1337] [--threads 2] [--strings 200]
                            [--rounds 5] [--no-baseline]

Prints each model's parameters, training seconds and final training loss, and its exact-match rate on the held-out
test strings (greedy decoding: every letter and [EOS] right), then the ratio of the two rates.

Then generation with the trained encoder-decoder, as the two commands run it: it is exported to ONNX in a temporary
folder (specdsl.backends.onnx_export.export: the full, encoder and decoding graphs, each checked against PyTorch),
and `--strings` held-out sources are translated greedily by PyTorch (train/sample.translate with both caches, what
`specc sample` runs) and by onnxruntime (backends/onnx_translate.OnnxTranslator, what `specc generate` runs, with
intra_op_num_threads = --threads). Both must give the same tokens for every source. Then `--rounds` rounds, each
running both over all the sources, the order flipping every round; tokens/s = generated tokens (without [EOS]) /
median seconds of a round, and the ratio onnxruntime / PyTorch. `--no-baseline` skips the decoder-only model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import specdsl  # noqa: E402
from specdsl.settings import TrainConfig  # noqa: E402
from specdsl.train.loop import _decay_groups  # noqa: E402
from specdsl.train.pairs import MAX_LEN, ReversalData  # noqa: E402
from specdsl.train.sample import translate  # noqa: E402
from specdsl.train.tasks import DecoderOnlySeq2Seq, Seq2Seq, exact_match  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# The baseline: the encoder-decoder's width, heads, MLP and post-LayerNorm blocks, five causal blocks for its two
# encoder and two decoder blocks (about 7% more parameters than the encoder-decoder), context 2 * MAX_LEN + 1.
DECODER_ONLY = f"""
use "std/transformer.spec"
param vocab = 28
param ctx = {2 * MAX_LEN + 1}
param d = 64
param layers = 5
param heads = 4
model decoder_only {{
    input tokens: int[batch, seq <= ctx]
    x = tokens -> wte: Embedding(vocab, d) -> wpe: PositionalEmbedding(ctx, d)
    x = x -> h: repeat layers {{ post_ln_block(d, heads, 4 * d, causal = true) }}
    return x -> lm_head: Linear(d, vocab, bias = false, tie = wte)
}}
"""


def train_and_score(compiled, task, config: TrainConfig) -> dict:
    torch.manual_seed(config.seed)
    module = specdsl.to_torch(compiled)
    optimizer = torch.optim.AdamW(_decay_groups(module, compiled.model, config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2), fused=True)
    generator = torch.Generator().manual_seed(config.seed)  # the same batches for both models
    started = time.perf_counter()
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        x, y = task.batch("train", config.batch, generator)
        loss = task.loss(module, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 100 == 0:
            print(f"  step {step + 1}  loss {loss.item():.4f}  {time.perf_counter() - started:.1f} s", file=sys.stderr,
                  flush=True)
    seconds = time.perf_counter() - started
    return {"params": compiled.analysis.total, "seconds": seconds, "loss": loss.item(),
            "exact": exact_match(task, module.eval(), "test"), "module": module}


def generation(compiled, module, data: ReversalData, args) -> dict:
    """Greedy translation of held-out sources by PyTorch (`specc sample`'s translate) and onnxruntime (`specc
    generate`'s OnnxTranslator) on the same exported weights: the tokens of each, and tokens/s per round."""
    from specdsl.backends.onnx_export import export
    from specdsl.backends.onnx_translate import OnnxTranslator
    tok = data.tokenizer
    with tempfile.TemporaryDirectory(prefix="specc-bench-seq2seq-") as folder:
        out = Path(folder) / "reverse.onnx"
        report = export(compiled, out, module=module, tokenizer=tok.to_json())
        translator = OnnxTranslator(out, threads=args.threads)  # the sessions hold the graphs: the files may go
    held_out = [row.tolist() for rows, _ in data.held_out("test") for row in rows]  # by length, 4 to 10
    sources = held_out[::max(1, len(held_out) // args.strings)][:args.strings]
    fns = {
        "PyTorch": lambda: [list(translate(module, s, tok.bos_id, tok.eos_id, MAX_LEN + 1, 0.0,
                                           vocab=tok.vocab_size)) for s in sources],
        "onnxruntime": lambda: [list(translator.translate(s, MAX_LEN + 1, temperature=0)) for s in sources],
    }
    tokens = {name: fn() for name, fn in fns.items()}  # a warm-up, and the tokens to compare
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(args.rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            started = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - started)
    generated = sum(map(len, tokens["PyTorch"]))
    tps = {name: generated / statistics.median(t) for name, t in times.items()}
    return {"report": report, "sources": len(sources), "generated": generated, "tps": tps,
            "agree": tokens["PyTorch"] == tokens["onnxruntime"],
            "exact": sum(t == list(reversed(s)) for t, s in zip(tokens["onnxruntime"], sources)) / len(sources)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--strings", type=int, default=200, help="held-out sources translated for the timing")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-baseline", action="store_true", help="skip the decoder-only model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup, seed=args.seed)
    data = ReversalData(args.seed)
    test = sum(len(rows) for rows in data.splits["test"].values())
    print(f"reverse strings of {min(data.splits['train'])}-{MAX_LEN} letters; {args.steps} steps of batch "
          f"{args.batch}, lr {args.lr:g}; exact match on {test} held-out strings, greedy")
    results = {}
    models = [("encoder-decoder", specdsl.load(ROOT / "specs" / "seq2seq-reverse.spec"), Seq2Seq(data))]
    if not args.no_baseline:
        models.append(("decoder-only", specdsl.loads(DECODER_ONLY, name=str(ROOT / "specs" / "decoder_only.spec")),
                       DecoderOnlySeq2Seq(data)))
    for name, compiled, task in models:
        r = results[name] = train_and_score(compiled, task, config)
        print(f"{name:16} {r['params']:>8,} parameters  {r['seconds']:6.1f} s  final loss {r['loss']:.4f}  "
              f"exact match {r['exact']:.3f}", flush=True)
    if not args.no_baseline:
        a, b = results["encoder-decoder"]["exact"], results["decoder-only"]["exact"]
        print(f"ratio (encoder-decoder / decoder-only): {a / b:.2f}" if b else "ratio: decoder-only scored 0")
    print_generation(generation(models[0][1], results["encoder-decoder"]["module"], data, args), args)


def print_generation(g: dict, args) -> None:
    r = g["report"]
    print(f"ONNX export: full graph vs PyTorch max |diff| {r['max_abs_diff']:.1e}, encoder graph "
          f"{r['encode']['max_abs_diff']:.1e}, encoder + decoding graphs with both caches vs PyTorch's full pass "
          f"{r['decode']['cache_vs_full_max_abs_diff']:.1e}")
    print(f"greedy translation of {g['sources']} held-out strings ({g['generated']} tokens), {args.threads} threads, "
          f"median of {args.rounds} rounds: the same tokens on both: {'yes' if g['agree'] else 'NO'}; exact match "
          f"{g['exact']:.3f}")
    torch_tps, ort_tps = g["tps"]["PyTorch"], g["tps"]["onnxruntime"]
    print(f"  PyTorch (specc sample, both caches)   {torch_tps:8,.0f} tokens/s")
    print(f"  onnxruntime (specc generate)          {ort_tps:8,.0f} tokens/s   ratio {ort_tps / torch_tps:.2f}")


if __name__ == "__main__":
    main()
