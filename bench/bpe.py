"""Subwords against characters on tinyshakespeare, at equal compute: nanoGPT's small Shakespeare model (the "I only
have a macbook" settings of bench/shakespeare.py: 4 layers, 4 heads, d=128, context 64, batch 12, AdamW 1e-3 cosine,
dropout 0) trained by `specc train` twice in one run, with `--tokenizer char` and `--tokenizer bpe:VOCAB` (a byte-
level BPE trained on the same file with Hugging Face tokenizers), the same steps, batch and context, so the same
tokens and nearly the same FLOPs per step (the BPE model's embedding and head are wider: their FLOPs are printed).

Cross-entropy per token is not comparable across vocabularies; bits per character is: the validation loss in nats
per token times (validation tokens / validation characters), over ln 2. Both models see the same last 10% of the
file as validation text (the split is by tokens, so the two splits start within a line of each other).

    python bench/bpe.py [--data ../shared/data/tinyshakespeare.txt] [--steps 2000] [--vocab 1024]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
MODEL = {"d": 128, "layers": 4, "heads": 4, "ctx": 64, "dropout": 0.0}
SETTINGS = {"batch": 12, "lr": 1e-3, "warmup": 100, "eval_batches": 20}


def bits_per_character(run: Path) -> tuple[float, dict]:
    """(bits per character on the validation split at the best checkpoint, figures it came from)."""
    import numpy as np

    from specdsl.tokenizer import Tokenizer
    from specdsl.train.corpus import token_dtype
    record = json.loads((run / "run.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    tokenizer = Tokenizer.from_json(record["tokenizer"])
    val = np.fromfile(run / "data" / "val.bin", dtype=token_dtype(tokenizer.vocab_size))
    characters = len(tokenizer.decode(val.tolist()))
    nats = summary["best_val_loss"]
    return nats * len(val) / characters / math.log(2), {"val_loss_nats_per_token": nats, "val_tokens": len(val),
                                                        "val_characters": characters,
                                                        "vocab": tokenizer.vocab_size, "wall_s": summary["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not os.path.isfile(args.data):
        sys.exit(f"no corpus at {args.data}: this benchmark needs tinyshakespeare.txt (nanoGPT's "
                 "data/shakespeare_char; pass --data PATH)")
    import torch
    from rich.console import Console

    from specdsl.compiled import load
    from specdsl.train.loop import train
    torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for tokenizer in ("char", f"bpe:{args.vocab}"):
            out = Path(tmp) / tokenizer.replace(":", "-")
            print(f"training with --tokenizer {tokenizer} ({args.steps} steps)...", file=sys.stderr, flush=True)
            train(str(ROOT / "specs" / "nanogpt-shakespeare.spec"), overrides=MODEL, progress=False,
                  console=Console(file=sys.stderr),
                  flags={**SETTINGS, "steps": args.steps, "eval_every": max(1, args.steps // 8), "data": args.data,
                         "tokenizer": tokenizer, "out": str(out)})
            bpc, figures = bits_per_character(out)
            vocab = json.loads((out / "run.json").read_text())["overrides"]["vocab"]
            figures["flops_per_token"] = load(ROOT / "specs" / "nanogpt-shakespeare.spec",
                                              overrides={**MODEL, "vocab": vocab}).analysis.forward_flops
            results[tokenizer] = (bpc, figures)
    print(f"tinyshakespeare, {args.steps} steps of {SETTINGS['batch']} x {MODEL['ctx']} tokens, model {MODEL}")
    for name, (bpc, f) in results.items():
        print(f"  {name:>9}: {bpc:.4f} bits/char  (val loss {f['val_loss_nats_per_token']:.4f} nats/token, "
              f"{f['val_tokens']:,} tokens for {f['val_characters']:,} characters, vocab {f['vocab']}, "
              f"{f['flops_per_token']:,} FLOPs/token, {f['wall_s']:.0f} s)")
    (char_bpc, _), (bpe_bpc, _) = results.values()
    print(f"bpe / char bits per character: {bpe_bpc / char_bpc:.3f}")


if __name__ == "__main__":
    main()
