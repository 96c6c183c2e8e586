"""Against a published result: nanoGPT's character-level Shakespeare on CPU, trained by `specc train` and by a
hand-written nanoGPT-style loop, in one run, on the same data and settings.

Settings (../shared/reference/training.md, nanoGPT's "I only have a macbook" command): 4 layers, 4 heads, d=128,
context 64, dropout 0; batch 12, 2000 iterations, AdamW lr 1e-3 cosine to 1e-4 over 2000 iterations, warmup 100,
beta2 0.99, weight decay 0.1, gradient clip 1.0; evaluation every 250 iterations on 20 batches.
Published best validation loss: 1.88.

Prints, for both: best validation loss, wall time, tokens/s (training steps only, evaluation excluded: batch tokens
over the median step time of the run, the same statistic for both). Goals: specc's best validation loss <= 1.88,
and its tokens/s >= the hand-written loop's.

    python bench/shakespeare.py [--data ../shared/data/tinyshakespeare.txt] [--iters 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from handwritten_gpt import GPT, GPTConfig  # noqa: E402

from specdsl.train.loop import train  # noqa: E402

PUBLISHED_BEST_VAL = 1.88
SETTINGS = dict(batch=12, lr=1e-3, min_lr=1e-4, warmup=100, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
                eval_every=250, eval_batches=20, seed=1337)


def handwritten(text: str, iters: int, ctx: int = 64) -> dict:
    """nanoGPT's train.py loop, condensed: char ids, 90/10 split, random windows, AdamW, cosine lr, eval."""
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.array([index[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    data = {"train": ids[:n], "val": ids[n:]}
    B, s = SETTINGS["batch"], SETTINGS

    def get_batch(split):
        d = data[split]
        ix = torch.randint(len(d) - ctx, (B,))
        x = torch.stack([torch.from_numpy(d[i:i + ctx].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(d[i + 1:i + 1 + ctx].astype(np.int64)) for i in ix])
        return x, y

    def lr_at(it):
        if it < s["warmup"]:
            return s["lr"] * (it + 1) / (s["warmup"] + 1)
        ratio = (it - s["warmup"]) / (iters - s["warmup"])
        return s["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (s["lr"] - s["min_lr"])

    torch.manual_seed(s["seed"])
    model = GPT(GPTConfig(vocab=len(chars), ctx=ctx))
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": s["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=s["lr"], betas=(0.9, s["beta2"]))

    @torch.no_grad()
    def estimate(split):  # nanoGPT's estimate_loss, which evaluates both splits
        model.eval()
        losses = [F.cross_entropy(model(x).view(-1, len(chars)), y.view(-1)).item()
                  for x, y in (get_batch(split) for _ in range(s["eval_batches"]))]
        model.train()
        return sum(losses) / len(losses)

    best, step_times, started = math.inf, [], time.perf_counter()
    for it in range(iters):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        x, y = get_batch("train")
        loss = F.cross_entropy(model(x).view(-1, len(chars)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - t0)
        if (it + 1) % s["eval_every"] == 0 or it + 1 == iters:
            estimate("train")
            best = min(best, estimate("val"))
    return {"best_val_loss": best, "wall_s": time.perf_counter() - started,
            "tokens_per_s": B * ctx / statistics.median(step_times)}


def specc(data_path: Path, iters: int, out: Path) -> dict:
    from rich.console import Console
    summary = train(str(ROOT / "specs" / "nanogpt-shakespeare.spec"),
                    flags={**SETTINGS, "steps": iters, "decay_steps": iters, "data": str(data_path), "out": str(out)},
                    progress=False, console=Console(quiet=True))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step = statistics.median(r["step_s"] for r in rows)  # the same statistic as the hand-written loop's
    return {"best_val_loss": summary["best_val_loss"], "wall_s": summary["wall_s"],
            "tokens_per_s": SETTINGS["batch"] * 64 / step, "evals": [r["val_loss"] for r in rows if "val_loss" in r]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    data = Path(args.data)
    if not data.exists():
        sys.exit(f"no data at {data}: pass --data (tinyshakespeare.txt, 1,115,394 bytes)")
    torch.set_num_threads(args.threads)
    text = data.read_text(encoding="utf-8")
    print(f"tinyshakespeare: {len(text):,} characters, {len(set(text))} distinct; {args.iters} iterations; "
          f"torch {torch.__version__}, {args.threads} threads")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["hand-written"] = handwritten(text, args.iters)
        results["specc train"] = specc(data, args.iters, Path(tmp) / "run")
    print(f"\n{'':14}{'best val loss':>15}{'wall s':>10}{'tokens/s':>12}")
    for name, r in results.items():
        print(f"{name:14}{r['best_val_loss']:>15.4f}{r['wall_s']:>10.1f}{r['tokens_per_s']:>12,.0f}")
    ours, base = results["specc train"], results["hand-written"]
    ratio = ours["tokens_per_s"] / base["tokens_per_s"]
    print(f"\nspecc validation losses at each evaluation: {', '.join(f'{v:.4f}' for v in ours['evals'])}")
    print(f"{'PASS' if ours['best_val_loss'] <= PUBLISHED_BEST_VAL else 'FAIL'}  best validation loss "
          f"{ours['best_val_loss']:.4f} <= {PUBLISHED_BEST_VAL} (nanoGPT's published figure)")
    print(f"{'PASS' if ratio >= 1.0 else 'FAIL'}  tokens/s ratio specc / hand-written = {ratio:.3f} (goal >= 1)")


if __name__ == "__main__":
    main()
