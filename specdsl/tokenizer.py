"""Tokenizers: text to ids and back. Torch-free, so `specc generate` on onnxruntime reads the same tokenizer a
run was trained with (stored as JSON in the run and in the exported file's metadata)."""

from __future__ import annotations

from dataclasses import dataclass


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
        ids = [int(i) for i in ids]
        if self.mask and self.mask_id in ids:
            return "".join("[MASK]" if i == self.mask_id else self.decode([i]) for i in ids)
        if self.kind == "byte":
            return bytes(ids).decode("utf-8", errors="replace")
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> dict:
        return {"kind": self.kind, "chars": self.chars, **({"mask": True} if self.mask else {})}

    @classmethod
    def from_json(cls, data: dict) -> Tokenizer:
        return cls(data["kind"], data.get("chars", ""), bool(data.get("mask", False)))
