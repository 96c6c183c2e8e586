"""What a batch is and what the loss is, for each objective `specc train` knows: next-token prediction, masked tokens
(BERT), digits classification and sequence-to-sequence (an encoder-decoder on the built-in reversal task; and
the same task as one sequence for a decoder-only model, the baseline bench/seq2seq.py measures against). The loop
(loop.py) and `specc export --quantize` (which scores a run's objective on its validation split) ask a task for
batches and losses, and know nothing of the objective itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE, TokenData, Tokenizer, digits_dataset, mask_tokens
from .device import to_device
from .pairs import ReversalData


class LanguageModelling:
    ignore_index = IGNORE  # a target that is not scored (none here; the masked objective's unchosen positions)
    device = None  # where batches go (the trainer's --device); drawn on the CPU by the seeded generator

    def __init__(self, data: TokenData, tokenizer: Tokenizer, ctx: int):
        self.data, self.tokenizer, self.ctx = data, tokenizer, ctx

    def batch(self, split, size, generator, rank=0, world=1):
        return to_device(self.data.batch(split, size, self.ctx, generator, rank, world), self.device)

    def loss(self, module, x, y):
        logits = module(x)
        logits = logits[0] if isinstance(logits, tuple) else logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    def tokens(self, size):
        return size * self.ctx

    def metrics(self, module, split, batches, size, seed):
        gen = torch.Generator().manual_seed(seed)
        losses = [self.loss(module, *self.batch(split, size, gen)).item() for _ in range(batches)]
        return {"loss": sum(losses) / len(losses)}


class MaskedLanguageModelling(LanguageModelling):
    """BERT's objective: windows of ctx tokens, 15% of them chosen and mostly replaced by [MASK]; the loss is on the
    chosen positions only (data.mask_tokens)."""

    def batch(self, split, size, generator, rank=0, world=1):
        x, _ = self.data.batch(split, size, self.ctx, generator)  # the global batch, so every rank masks the same
        x, y = mask_tokens(x, self.tokenizer, generator)
        return to_device((x[rank::world], y[rank::world]) if world > 1 else (x, y), self.device)

    def metrics(self, module, split, batches, size, seed):
        gen = torch.Generator().manual_seed(seed)
        losses, right, total = [], 0, 0
        for _ in range(batches):
            x, y = self.batch(split, size, gen)
            logits = module(x)
            logits = logits[0] if isinstance(logits, tuple) else logits
            chosen = y != IGNORE
            losses.append(F.cross_entropy(logits[chosen].float(), y[chosen]).item())
            right += int((logits[chosen].argmax(-1) == y[chosen]).sum())
            total += int(chosen.sum())
        return {"loss": sum(losses) / len(losses), "accuracy": right / total}


def language_task(data: TokenData, tokenizer: Tokenizer, ctx: int) -> LanguageModelling:
    """Next-token prediction, or masked tokens when the tokenizer has a [MASK] id (a bidirectional model)."""
    return (MaskedLanguageModelling if tokenizer.mask else LanguageModelling)(data, tokenizer, ctx)


class Classification:
    device = None

    def __init__(self, image: bool, seed: int):
        (self.x, self.y), (self.vx, self.vy) = digits_dataset(image, seed)

    def batch(self, split, size, generator, rank=0, world=1):
        x, y = (self.x, self.y) if split == "train" else (self.vx, self.vy)
        idx = torch.randint(len(x), (size,), generator=generator)
        idx = idx[rank::world] if world > 1 else idx
        return to_device((x[idx], y[idx]), self.device)

    def loss(self, module, x, y):
        return F.cross_entropy(module(x).float(), y)

    def tokens(self, size):
        return size

    def metrics(self, module, split, batches, size, seed):
        x, y = to_device((self.x, self.y) if split == "train" else (self.vx, self.vy), self.device)
        logits = module(x).float()
        return {"loss": F.cross_entropy(logits, y).item(),
                "accuracy": (logits.argmax(-1) == y).float().mean().item()}


def _logits(out):
    return out[0] if isinstance(out, tuple) else out


class Seq2Seq:
    """An encoder-decoder (the contract's `source` and `target` inputs) with teacher forcing: the source is
    encoded, the decoder reads `[BOS] target` and predicts `target [EOS]`; the loss is on every target token."""

    ignore_index = IGNORE
    device = None

    def __init__(self, data: ReversalData):
        self.data, self.tokenizer = data, data.tokenizer

    def batch(self, split, size, generator, rank=0, world=1):
        return to_device(self.data.batch(split, size, generator, rank, world), self.device)

    def loss(self, module, x, y):
        logits = _logits(module(*x))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                               ignore_index=self.ignore_index)

    def tokens(self, size):
        return size * (self.data_mean_length() + 1)

    def data_mean_length(self):
        lengths = sorted(self.data.splits["train"])
        return sum(lengths) / len(lengths)

    def metrics(self, module, split, batches, size, seed):
        """Loss and the accuracy of the target tokens under teacher forcing, on fixed batches."""
        gen = torch.Generator().manual_seed(seed)
        losses, right, total = [], 0, 0
        for _ in range(batches):
            x, y = self.batch(split, size, gen)
            logits = _logits(module(*x)).float()
            scored = y != self.ignore_index
            losses.append(F.cross_entropy(logits[scored], y[scored]).item())
            right += int((logits[scored].argmax(-1) == y[scored]).sum())
            total += int(scored.sum())
        return {"loss": sum(losses) / len(losses), "accuracy": right / total}

    @torch.no_grad()
    def greedy(self, module, src: torch.Tensor, steps: int) -> torch.Tensor:
        """Greedy targets [B, steps] of sources [B, n] of one length, each step a full forward pass (no cache)."""
        tgt = torch.full((len(src), 1), self.tokenizer.bos_id, dtype=torch.long, device=src.device)
        for _ in range(steps):
            logits = _logits(module(src, tgt))[:, -1].float()
            tgt = torch.cat((tgt, logits.argmax(-1, keepdim=True)), 1)
        return tgt[:, 1:]


class DecoderOnlySeq2Seq(Seq2Seq):
    """The same task for a decoder-only language model: `source [BOS] target [EOS]` as one sequence, next-token
    prediction scored on the target tokens and [EOS] only (the source is given, not predicted)."""

    def batch(self, split, size, generator, rank=0, world=1):
        (src, tgt_in), tgt_out = self.data.batch(split, size, generator, rank, world)
        seq = torch.cat((src, tgt_in, tgt_out[:, -1:]), 1)
        y = seq[:, 1:].clone()
        y[:, :src.shape[1]] = self.ignore_index  # the source's tokens and [BOS] are given
        return to_device(((seq[:, :-1],), y), self.device)

    def tokens(self, size):
        return size * (2 * self.data_mean_length() + 1)

    @torch.no_grad()
    def greedy(self, module, src: torch.Tensor, steps: int) -> torch.Tensor:
        bos = torch.full((len(src), 1), self.tokenizer.bos_id, dtype=torch.long, device=src.device)
        seq = torch.cat((src, bos), 1)
        for _ in range(steps):
            logits = _logits(module(seq))[:, -1].float()
            seq = torch.cat((seq, logits.argmax(-1, keepdim=True)), 1)
        return seq[:, src.shape[1] + 1:]


def exact_match(task: Seq2Seq, module, split: str = "test", batch: int = 250) -> float:
    """The fraction of a split's strings whose greedy output is exactly the target followed by [EOS]."""
    was = module.training
    module.eval()
    right = total = 0
    for src, want in task.data.held_out(split):
        want = torch.cat((want, torch.full((len(want), 1), task.tokenizer.eos_id, dtype=torch.long)), 1)
        for i in range(0, len(src), batch):
            got = task.greedy(module, to_device(src[i:i + batch], task.device), want.shape[1]).cpu()
            right += int((got == want[i:i + batch]).all(-1).sum())
            total += len(got)
    module.train(was)
    return right / total
