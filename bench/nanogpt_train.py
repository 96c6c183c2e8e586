"""nanoGPT's train.py as a user runs it on a CPU, condensed into one script: the baseline bench/run_cost.py times
`specc train` against, process against process.

What it does is what Karpathy's nanoGPT train.py does with the "I only have a macbook" command
(`python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1
--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0`), written here from that program's behaviour (it is not vendored):
- imports torch and numpy; reads meta.pkl (the vocabulary) that nanoGPT's data/shakespeare_char/prepare.py wrote,
  with train.bin and val.bin (uint16 ids), once per dataset: `prepare` below, which the bench times apart;
- builds the model (bench/handwritten_gpt.py: nanoGPT's architecture, loss taken outside the forward) and AdamW
  with nanoGPT's configure_optimizers groups (every >= 2-D tensor decays; fused only on CUDA, so foreach on a CPU);
- get_batch opens the .bin memory maps anew at every call and stacks rows converted to int64, as nanoGPT does;
- the loop runs iterations 0..max_iters inclusive; at every multiple of eval_interval (iteration 0 included) it
  estimates the loss of both splits on eval_iters batches and, when the validation loss improved and the
  iteration is past 0, torch.save's one ckpt.pt (model, optimizer, model args, iteration, best loss, config);
- each iteration: forward, the next batch fetched, backward, clip, step, zero_grad; the loss printed every
  log_interval iterations (a .item() sync, as nanoGPT's log line).

At exit it writes a JSON line to --report: each iteration's step time (evaluation excluded), each evaluation's
time and the checkpoint writes' time, and the process's peak RSS, for bench/run_cost.py.

    python bench/nanogpt_train.py --data DIR --out DIR [--max_iters N] [--eval_interval E] [--report FILE]
    python bench/nanogpt_train.py --prepare input.txt --data DIR   # nanoGPT's prepare.py
"""

import argparse
import json
import math
import os
import pickle
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from handwritten_gpt import GPT, GPTConfig  # noqa: E402


def prepare(text_path: str, folder: str) -> None:
    """nanoGPT's data/shakespeare_char/prepare.py: sorted characters, a Python list of ids, the first 90% of the
    characters train; train.bin, val.bin (uint16) and meta.pkl."""
    with open(text_path, encoding="utf-8") as f:
        data = f.read()
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = dict(enumerate(chars))
    n = len(data)
    train_ids = [stoi[c] for c in data[:int(n * 0.9)]]
    val_ids = [stoi[c] for c in data[int(n * 0.9):]]
    os.makedirs(folder, exist_ok=True)
    np.array(train_ids, dtype=np.uint16).tofile(os.path.join(folder, "train.bin"))
    np.array(val_ids, dtype=np.uint16).tofile(os.path.join(folder, "val.bin"))
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prepare", help="a text file: run nanoGPT's prepare.py into --data and stop")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="out-shakespeare-char")
    ap.add_argument("--max_iters", type=int, default=2000)
    ap.add_argument("--eval_interval", type=int, default=250)
    ap.add_argument("--eval_iters", type=int, default=20)
    ap.add_argument("--log_interval", type=int, default=1)
    ap.add_argument("--batch_size", type=int, default=12)
    ap.add_argument("--block_size", type=int, default=64)
    ap.add_argument("--report")
    a = ap.parse_args()
    if a.prepare:
        prepare(a.prepare, a.data)
        return
    train(a)
    if a.report:
        with open(a.report, "w") as f:
            json.dump({**REPORT, "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}, f)


REPORT = {"step_s": [], "eval_s": [], "save_s": []}
# nanoGPT's train_shakespeare_char.py settings with the macbook command's overrides
LR, MIN_LR, WARMUP, WEIGHT_DECAY, BETAS, GRAD_CLIP = 1e-3, 1e-4, 100, 0.1, (0.9, 0.99), 1.0


def train(a) -> None:
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(1337)
    with open(os.path.join(a.data, "meta.pkl"), "rb") as f:
        vocab = pickle.load(f)["vocab_size"]
    model_args = dict(vocab=vocab, ctx=a.block_size, d=128, layers=4, heads=4, dropout=0.0)
    model = GPT(GPTConfig(**model_args))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=BETAS)
    # nanoGPT makes torch.cuda.amp.GradScaler(enabled=dtype == 'float16'), which torch disables without CUDA
    scaler = torch.amp.GradScaler("cuda", enabled=False)

    def get_batch(split):
        # nanoGPT recreates the memmap every batch to avoid a memory leak
        data = np.memmap(os.path.join(a.data, f"{split}.bin"), dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - a.block_size, (a.batch_size,))
        x = torch.stack([torch.from_numpy(data[i:i + a.block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + a.block_size].astype(np.int64)) for i in ix])
        return x, y

    def forward(x, y):
        logits = model(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ("train", "val"):
            losses = torch.zeros(a.eval_iters)
            for k in range(a.eval_iters):
                losses[k] = forward(*get_batch(split)).item()
            out[split] = losses.mean()
        model.train()
        return out

    def get_lr(it):
        if it < WARMUP:
            return LR * it / WARMUP
        if it > a.max_iters:
            return MIN_LR
        ratio = (it - WARMUP) / (a.max_iters - WARMUP)
        return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)

    X, Y = get_batch("train")
    iter_num, best_val_loss, t0 = 0, 1e9, time.time()
    while True:
        for group in optimizer.param_groups:
            group["lr"] = get_lr(iter_num)
        if iter_num % a.eval_interval == 0:
            started = time.perf_counter()
            losses = estimate_loss()
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            REPORT["eval_s"].append(time.perf_counter() - started)
            if losses["val"] < best_val_loss:
                best_val_loss = losses["val"]
                if iter_num > 0:
                    started = time.perf_counter()
                    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                  "model_args": model_args, "iter_num": iter_num, "best_val_loss": best_val_loss,
                                  "config": vars(a)}
                    print(f"saving checkpoint to {a.out}")
                    torch.save(checkpoint, os.path.join(a.out, "ckpt.pt"))
                    REPORT["save_s"].append(time.perf_counter() - started)
        started = time.perf_counter()
        loss = forward(X, Y)
        X, Y = get_batch("train")
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        REPORT["step_s"].append(time.perf_counter() - started)
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if iter_num % a.log_interval == 0:
            print(f"iter {iter_num}: loss {loss.item():.4f}, time {dt * 1000:.2f}ms")
        iter_num += 1
        if iter_num > a.max_iters:
            break


if __name__ == "__main__":
    main()
