"""What a shorter window costs: the validation loss of a trained language model by the number of tokens each
prediction sees, to weigh `--overflow shift` (a token past the context sees between ctx/2 + 1 and ctx tokens)
against `--overflow slide` (it sees ctx), in one run on the same batches.

    python bench/context_loss.py RUN_DIR [--batches 100] [--batch 64] [--seed 0]

RUN_DIR is a `specc train` run of a language model, e.g. nanoGPT's Shakespeare model trained on tinyshakespeare:

    specc train specs/nanogpt-shakespeare.spec --data ../shared/data/tinyshakespeare.txt --steps 2000 --out RUN_DIR

Prints the loss at every 8th context length, the loss at the full context (slide), the mean over contexts
ctx/2 + 1 .. ctx (shift), their difference and its standard error (from the per-sequence losses).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from specdsl.train.data import TokenData  # noqa: E402
from specdsl.train.sample import load_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    module, tokenizer, ctx = load_run(args.run_dir)
    data = TokenData(Path(args.run_dir) / "data", tokenizer)
    generator = torch.Generator().manual_seed(args.seed)
    rows = []  # [sequences, ctx]: the loss of each position of each validation window
    with torch.no_grad():
        for _ in range(args.batches):
            x, y = data.batch("val", args.batch, ctx, generator)
            logits = module(x)
            rows.append(F.cross_entropy(logits.transpose(1, 2).float(), y, reduction="none"))
    losses = torch.cat(rows)
    by_context = losses.mean(0)
    half = ctx // 2
    # per sequence: shift's mean over contexts half+1..ctx minus slide's loss at ctx; its mean and standard error
    diff = (losses[:, half:].mean(1) - losses[:, -1]).tolist()
    print(f"{args.run_dir}: {len(losses):,} validation windows of {ctx} tokens")
    print("loss by context: " + "  ".join(f"{i + 1}: {v:.3f}" for i, v in enumerate(by_context.tolist())
                                          if i < 4 or (i + 1) % 8 == 0))
    print(f"slide (context {ctx}): {by_context[-1]:.4f}")
    print(f"shift (contexts {half + 1}..{ctx}, mean): {by_context[half:].mean():.4f}")
    error = statistics.stdev(diff) / len(diff) ** 0.5
    print(f"shift - slide: {statistics.mean(diff):+.4f} (standard error {error:.4f})")


if __name__ == "__main__":
    main()
