"""Sequence-to-sequence data: the built-in task an encoder-decoder trains on, written by this program (no download).

Reversal: the source is a random string of lowercase letters, the target the same string reversed. The strings are
drawn from the run's seed once: a held-out test set, a validation set and a training set, no string in two of them.
A batch holds strings of one length (drawn first), so nothing is padded: the model takes no padding mask. The
target is `[BOS] reversed` in and `reversed [EOS]` out (teacher forcing). Batches are drawn by the run's seeded
generator, whose state each checkpoint saves, so a resumed run draws the same batches.
"""

from __future__ import annotations

import hashlib
import random

import torch

from ..tokenizer import Tokenizer

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
MIN_LEN, MAX_LEN = 4, 10
SPLITS = {"test": 1000, "val": 1000, "train": 40000}  # strings per split, in the order they are drawn


def reverse_tokenizer() -> Tokenizer:
    """The letters, then [BOS] and [EOS]."""
    return Tokenizer("char", ALPHABET, bos_eos=True)


class ReversalData:
    """Strings per split and length, as id tensors [n, length]; `fingerprint` names them (run.json's data)."""

    name = "reverse"

    def __init__(self, seed: int, splits: dict | None = None):
        self.tokenizer = reverse_tokenizer()
        rng = random.Random(f"specc-reverse-{seed}")
        seen: set[str] = set()
        self.splits: dict[str, dict[int, torch.Tensor]] = {}
        for split, count in (splits or SPLITS).items():
            by_length: dict[int, list[list[int]]] = {n: [] for n in range(MIN_LEN, MAX_LEN + 1)}
            while sum(map(len, by_length.values())) < count:
                n = rng.randint(MIN_LEN, MAX_LEN)
                s = "".join(rng.choice(ALPHABET) for _ in range(n))
                if s not in seen:
                    seen.add(s)
                    by_length[n].append(self.tokenizer.encode(s))
            self.splits[split] = {n: torch.tensor(rows, dtype=torch.long) for n, rows in by_length.items() if rows}
        digest = hashlib.sha256()
        for split, by_length in self.splits.items():
            for n, rows in by_length.items():
                digest.update(f"{split}:{n}:".encode() + rows.numpy().tobytes())
        self.fingerprint = {"builtin": self.name, "seed": seed, "min_len": MIN_LEN, "max_len": MAX_LEN,
                            "strings": {k: sum(len(v) for v in by.values()) for k, by in self.splits.items()},
                            "sha256": digest.hexdigest()}

    @staticmethod
    def target(src: torch.Tensor) -> torch.Tensor:
        return src.flip(-1)

    def sources(self, split: str, size: int, generator: torch.Generator) -> torch.Tensor:
        """`size` sources of one length (drawn first), each drawn from the split's strings of that length."""
        lengths = sorted(self.splits[split])
        n = lengths[int(torch.randint(len(lengths), (1,), generator=generator))]
        rows = self.splits[split][n]
        return rows[torch.randint(len(rows), (size,), generator=generator)]

    def batch(self, split: str, size: int, generator: torch.Generator, rank: int = 0, world: int = 1):
        """((src, tgt_in), tgt_out): src [B, n], tgt_in [BOS] + target [B, n + 1], tgt_out target + [EOS]."""
        src = self.sources(split, size, generator)
        src = src[rank::world] if world > 1 else src
        tgt = self.target(src)
        bos = torch.full((len(src), 1), self.tokenizer.bos_id, dtype=torch.long)
        eos = torch.full((len(src), 1), self.tokenizer.eos_id, dtype=torch.long)
        return (src, torch.cat((bos, tgt), 1)), torch.cat((tgt, eos), 1)

    def held_out(self, split: str = "test"):
        """(src [n, length], expected target [n, length]) for each length of a split, for exact-match scoring."""
        return [(rows, self.target(rows)) for _, rows in sorted(self.splits[split].items())]
