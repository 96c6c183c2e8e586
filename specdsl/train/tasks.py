"""What a batch is and what the loss is, for each objective `specc train` knows: next-token prediction, masked tokens
(BERT) and digits classification. The loop (loop.py) and `specc export --quantize` (which scores a run's objective
on its validation split) ask a task for batches and losses, and know nothing of the objective itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE, TokenData, Tokenizer, digits_dataset, mask_tokens


class LanguageModelling:
    ignore_index = IGNORE  # a target that is not scored (none here; the masked objective's unchosen positions)

    def __init__(self, data: TokenData, tokenizer: Tokenizer, ctx: int):
        self.data, self.tokenizer, self.ctx = data, tokenizer, ctx

    def batch(self, split, size, generator, rank=0, world=1):
        return self.data.batch(split, size, self.ctx, generator, rank, world)

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
        return (x[rank::world], y[rank::world]) if world > 1 else (x, y)

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
    def __init__(self, image: bool, seed: int):
        (self.x, self.y), (self.vx, self.vy) = digits_dataset(image, seed)

    def batch(self, split, size, generator, rank=0, world=1):
        x, y = (self.x, self.y) if split == "train" else (self.vx, self.vy)
        idx = torch.randint(len(x), (size,), generator=generator)
        idx = idx[rank::world] if world > 1 else idx
        return x[idx], y[idx]

    def loss(self, module, x, y):
        return F.cross_entropy(module(x).float(), y)

    def tokens(self, size):
        return size

    def metrics(self, module, split, batches, size, seed):
        x, y = (self.x, self.y) if split == "train" else (self.vx, self.vy)
        logits = module(x).float()
        return {"loss": F.cross_entropy(logits, y).item(),
                "accuracy": (logits.argmax(-1) == y).float().mean().item()}
