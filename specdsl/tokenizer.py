"""Tokenizers: text to ids and back. Torch-free, so `specc generate` on onnxruntime reads the same tokenizer a
run was trained with (stored as JSON in the run and in the exported file's metadata)."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass(frozen=True)
class Tokenizer:
    """`char`: the sorted characters of the data (nanoGPT's shakespeare_char); `byte`: the 256 byte values.
    `mask`: one more id after the data's, [MASK], for masked-language-model training (BERT). `bos_eos`: two more
    ids after those, [BOS] and [EOS], that start and end a target sequence (sequence-to-sequence training)."""

    kind: str
    chars: str = ""
    mask: bool = False
    bos_eos: bool = False

    @classmethod
    def fit(cls, kind: str, text: str, mask: bool = False) -> Tokenizer:
        if kind == "byte":
            return cls("byte", mask=mask)
        if kind == "char":
            return cls("char", "".join(sorted(set(text))), mask)
        raise ValueError(f"unknown tokenizer '{kind}': use char or byte")

    @property
    def data_size(self) -> int:
        """Ids that stand for text (the mask id comes after them)."""
        return 256 if self.kind == "byte" else len(self.chars)

    @property
    def vocab_size(self) -> int:
        return self.data_size + self.mask + 2 * self.bos_eos

    @property
    def mask_id(self) -> int | None:
        return self.data_size if self.mask else None

    @property
    def bos_id(self) -> int | None:
        return self.data_size + self.mask if self.bos_eos else None

    @property
    def eos_id(self) -> int | None:
        return self.data_size + self.mask + 1 if self.bos_eos else None

    def encode(self, text: str) -> list[int]:
        if self.kind == "byte":
            return list(text.encode("utf-8"))
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            raise ValueError(f"characters outside the vocabulary: {''.join(unknown)!r}; the vocabulary is "
                             f"{self.chars!r}")
        return [index[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.stream(ids))

    def stream(self, ids: Iterable[int]) -> Iterator[str]:
        """The text of `ids` piece by piece as they come, for streaming generated tokens: a byte tokenizer holds
        back the bytes of a character split across tokens until it is whole (decoding one token at a time would
        show "brûlée" as "br��l��e"); bytes that are not UTF-8 become U+FFFD."""
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for i in ids:
            i = int(i)
            if i in (self.mask_id, self.bos_id, self.eos_id):
                name = "[MASK]" if i == self.mask_id else "[BOS]" if i == self.bos_id else "[EOS]"
                piece = utf8.decode(b"", final=True) + name
            elif not 0 <= i < self.data_size:
                raise ValueError(f"token id {i} is outside the tokenizer's {self.data_size} ids")
            else:
                piece = utf8.decode(bytes([i])) if self.kind == "byte" else self.chars[i]
            if piece:
                yield piece
        tail = utf8.decode(b"", final=True)
        if tail:
            yield tail

    def to_json(self) -> dict:
        return {"kind": self.kind, "chars": self.chars, **({"mask": True} if self.mask else {}),
                **({"bos_eos": True} if self.bos_eos else {})}

    @classmethod
    def from_json(cls, data) -> Tokenizer:
        """The tokenizer a run or an exported file describes; ValueError when the description is not one."""
        if not isinstance(data, dict) or data.get("kind") not in ("char", "byte"):
            raise ValueError("not a tokenizer: expected {\"kind\": \"char\" or \"byte\", ...}")
        chars, mask, bos_eos = data.get("chars", ""), data.get("mask", False), data.get("bos_eos", False)
        if not isinstance(chars, str) or not isinstance(mask, bool) or not isinstance(bos_eos, bool):
            raise ValueError("not a tokenizer: its chars must be a string and its mask and bos_eos true or false")
        if data["kind"] == "char" and not chars:
            raise ValueError("not a tokenizer: a char tokenizer needs its characters")
        return cls(data["kind"], chars if data["kind"] == "char" else "", mask, bos_eos)
