"""Training data: token ids in memory-mapped arrays, seeded batches, and the built-in datasets (what --data
names, and how its text becomes ids: corpus.py).

Text is split as nanoGPT does: the first 90% of the tokens train, the last 10% validate. Batches are drawn by a
seeded torch.Generator whose state is saved with each checkpoint, so a resumed run draws the same batches.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from ..tokenizer import Tokenizer
from .corpus import TRAIN_FRACTION, token_dtype

# BERT's masking (Devlin et al. 2019, section 3.1 and appendix A.1; Hugging Face's
# DataCollatorForLanguageModeling does the same): 15% of the positions are predicted; of those, 80% are replaced by
# [MASK], 10% by a random token and 10% kept as they are.
MASK_FRACTION, MASK_REPLACED, MASK_RANDOM = 0.15, 0.8, 0.1
IGNORE = -100  # the target of a position that is not predicted (torch's cross_entropy default ignore_index)


def mask_tokens(x: torch.Tensor, tokenizer: Tokenizer, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) for masked-language-model training: targets are the original ids at the chosen positions
    and IGNORE elsewhere. Every draw comes from `generator`, so a resumed run masks the same way."""
    chosen = torch.rand(x.shape, generator=generator) < MASK_FRACTION
    if not chosen.any():  # a tiny batch may draw none: predict one position rather than average over nothing
        chosen.view(-1)[0] = True
    action = torch.rand(x.shape, generator=generator)
    random_ids = torch.randint(tokenizer.data_size, x.shape, generator=generator)
    inputs = torch.where(chosen & (action < MASK_REPLACED), tokenizer.mask_id, x)
    inputs = torch.where(chosen & (action >= MASK_REPLACED) & (action < MASK_REPLACED + MASK_RANDOM), random_ids,
                         inputs)
    return inputs, torch.where(chosen, x, IGNORE)


def builtin_text(seed: int = 0, sentences: int = 12000) -> str:
    """A corpus this program writes itself (no download), on which learning is plain to see: short sentences from
    a small grammar and sums of one-digit numbers. A model first learns the words, then the grammar, then the sums;
    samples show each stage."""
    rng = random.Random(seed)
    subjects = ["the cat", "the dog", "a bird", "the old man", "my sister", "the king", "a small fox", "the queen"]
    verbs = ["sees", "likes", "follows", "finds", "watches", "helps", "hears", "meets"]
    objects = ["the river", "a red ball", "the moon", "an apple", "the garden", "a quiet song", "the castle"]
    endings = [".", " today.", " at night.", " again."]
    lines = []
    for _ in range(sentences):
        if rng.random() < 0.3:
            a, b = rng.randrange(10), rng.randrange(10)
            lines.append(f"{a} plus {b} is {a + b}.")
        else:
            lines.append(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(endings)}")
    return "\n".join(lines) + "\n"


class TokenData:
    """Token ids on disk (`train.bin`, `val.bin`; uint16, or uint32 for vocabularies over 65,536), read through
    numpy memory maps."""

    def __init__(self, folder: Path, tokenizer: Tokenizer):
        self.folder = Path(folder)
        dtype = token_dtype(tokenizer.vocab_size)
        self.train = np.memmap(self.folder / "train.bin", dtype=dtype, mode="r")
        self.val = np.memmap(self.folder / "val.bin", dtype=dtype, mode="r")

    @staticmethod
    def prepare(parts: dict, tokenizer: Tokenizer, write: Callable[[str, Iterable[bytes]], None]) -> None:
        """Hand each file of the data folder to `write(name, chunks of bytes)` (the run directory writes it
        atomically): the ids of each split (corpus.splits), then the tokenizer."""
        for split, part in parts.items():
            write(f"{split}.bin", part.chunks())
        write("tokenizer.json", [json.dumps(tokenizer.to_json()).encode("utf-8")])

    def batch(self, split: str, batch: int, ctx: int, generator: torch.Generator, rank: int = 0,
              world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch` windows of ctx+1 tokens at offsets drawn by `generator`. With several ranks every rank draws the
        same global batch and keeps its own rows, so the global batch is the single-process one."""
        data = self.train if split == "train" else self.val
        if len(data) <= ctx + 1:
            raise ValueError(f"the {split} split has {len(data)} tokens, fewer than a context of {ctx} + 1")
        starts = torch.randint(len(data) - ctx - 1, (batch,), generator=generator)
        starts = starts[rank::world] if world > 1 else starts
        windows = data[starts.numpy()[:, None] + np.arange(ctx + 1)]  # one gather from the memory map
        t = torch.from_numpy(windows.astype(np.int64))
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def digits_dataset(image: bool, seed: int = 0):
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), shuffled with `seed` and split 90/10.
    `image=True` gives [N, 1, 32, 32] (each pixel repeated 4x4, for LeNet-5's 32x32 input); else [N, 64]."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    if image:
        x = x.view(-1, 1, 8, 8).repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    split = int(len(x) * TRAIN_FRACTION)
    return (x[:split], y[:split]), (x[split:], y[split:])
