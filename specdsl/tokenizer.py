"""Tokenizers: text to ids and back. Torch-free, so `specc generate` on onnxruntime reads the same tokenizer a
run was trained with (stored as JSON in the run and in the exported file's metadata)."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass(frozen=True)
class Tokenizer:
    """`char`: the sorted characters of the data (nanoGPT's shakespeare_char); `byte`: the 256 byte values.
    `mask`: one more id after the data's, [MASK], for masked-language-model training (BERT)."""

    kind: str
    chars: str = ""
    mask: bool = False

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
        return self.data_size + self.mask

    @property
    def mask_id(self) -> int | None:
        return self.data_size if self.mask else None

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
            if i == self.mask_id:
                piece = utf8.decode(b"", final=True) + "[MASK]"
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
        return {"kind": self.kind, "chars": self.chars, **({"mask": True} if self.mask else {})}

    @classmethod
    def from_json(cls, data) -> Tokenizer:
        """The tokenizer a run or an exported file describes; ValueError when the description is not one."""
        if not isinstance(data, dict) or data.get("kind") not in ("char", "byte"):
            raise ValueError("not a tokenizer: expected {\"kind\": \"char\" or \"byte\", ...}")
        chars, mask = data.get("chars", ""), data.get("mask", False)
        if not isinstance(chars, str) or not isinstance(mask, bool):
            raise ValueError("not a tokenizer: its chars must be a string and its mask true or false")
        if data["kind"] == "char" and not chars:
            raise ValueError("not a tokenizer: a char tokenizer needs its characters")
        return cls(data["kind"], chars if data["kind"] == "char" else "", mask)
