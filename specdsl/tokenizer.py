"""Tokenizers: text to ids and back. Torch-free, so `specc generate` on onnxruntime reads the same tokenizer a
run was trained with (stored as JSON in the run and in the exported file's metadata).

`char` and `byte` are ours (nanoGPT's character vocabulary; the 256 byte values). Subword vocabularies are Hugging
Face `tokenizers` models, never a copy of their algorithms: a byte-level BPE trained on the run's corpus
(`--tokenizer bpe:VOCAB`, GPT-2's scheme) or a tokenizer.json that came with a checkpoint (`--tokenizer PATH`).
"""

from __future__ import annotations

import codecs
import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

KINDS = ("char", "byte", "subword")  # Tokenizer.kind
BPE_PREFIX = "bpe:"
MIN_BPE_VOCAB = 257  # the 256 bytes of the byte-level alphabet, and at least one merge


def tokenizer_choice_problem(value: str) -> str | None:
    """Why --tokenizer VALUE names no tokenizer (None when it does): char, byte, bpe:VOCAB, or a tokenizer.json
    (or a folder holding one)."""
    if value in ("char", "byte"):
        return None
    if value.startswith(BPE_PREFIX):
        size = value[len(BPE_PREFIX):]
        if not size.isdigit() or not MIN_BPE_VOCAB <= int(size) <= 1 << 24:
            return f"bpe:VOCAB takes a vocabulary size from {MIN_BPE_VOCAB} to {1 << 24:,} (bpe:8192)"
        return None
    if not tokenizer_file(value).is_file():
        return ("it must be char, byte, bpe:VOCAB (a byte-level BPE trained on the data: bpe:8192) or a "
                "tokenizer.json (or a folder holding one) that exists")
    return None


def tokenizer_file(value: str) -> Path:
    path = Path(value)
    return path / "tokenizer.json" if path.is_dir() else path


@functools.lru_cache(maxsize=8)
def _subword(model_json: str):
    """The `tokenizers` object of a tokenizer.json's text (parsed once per process)."""
    from tokenizers import Tokenizer as Subword
    return Subword.from_str(model_json)


def train_bpe(texts: Iterable[str], vocab_size: int) -> str:
    """A byte-level BPE (GPT-2's: Radford et al. 2019, section 2.2) of `vocab_size` tokens trained on chunks of text
    with Hugging Face tokenizers; its tokenizer.json text. Deterministic: the same text gives the same merges."""
    from tokenizers import Tokenizer as Subword
    from tokenizers import decoders, models, pre_tokenizers, trainers
    model = Subword(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    model.train_from_iterator((line for text in texts for line in text.splitlines(keepends=True)),
                              trainer=trainer)
    return model.to_str()


SPECC_FORMAT = "specc:"  # read_tokenizer_json's mark on a specc run's tokenizer.json (not a tokenizers model)


def read_tokenizer_json(value: str) -> str:
    """A tokenizer.json's text (or the one in a folder), checked by loading it: a Hugging Face tokenizers model, or
    (marked SPECC_FORMAT) specc's description of a run's tokenizer; ValueError says why neither."""
    path = tokenizer_file(value)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read '{path}': {e}") from None
    try:
        described = json.loads(text)
    except ValueError as e:
        raise ValueError(f"'{path}' is not a tokenizer.json: not JSON ({e})") from None
    if isinstance(described, dict) and described.get("kind") in KINDS:
        Tokenizer.from_json(described)  # ValueError when damaged
        return SPECC_FORMAT + text
    try:
        _subword(text)
    except Exception as e:  # tokenizers raises its own Exception for JSON it cannot take
        raise ValueError(f"'{path}' is not a tokenizer.json that Hugging Face tokenizers reads ({e})") from None
    return text


@dataclass(frozen=True)
class Tokenizer:
    """`char`: the sorted characters of the data (nanoGPT's shakespeare_char); `byte`: the 256 byte values;
    `subword`: a Hugging Face tokenizers model (`model`: its tokenizer.json text).
    `mask`: one more id after the data's, [MASK], for masked-language-model training (BERT). `bos_eos`: two more
    ids after those, [BOS] and [EOS], that start and end a target sequence (sequence-to-sequence training)."""

    kind: str
    chars: str = ""
    mask: bool = False
    bos_eos: bool = False
    model: str = field(default="", repr=False)  # a tokenizer.json is megabytes: not in reprs

    @classmethod
    def fit(cls, kind: str, text: str, mask: bool = False) -> Tokenizer:
        """The tokenizer --tokenizer names, for `text`: char, byte, bpe:VOCAB (trained on it) or a tokenizer.json
        path; ValueError says why not."""
        return cls.fit_texts(kind, lambda: iter([text]), mask)

    @classmethod
    def fit_texts(cls, kind: str, texts: Callable[[], Iterator[str]], mask: bool = False) -> Tokenizer:
        """`fit` over a corpus read as chunks of whole lines (`texts()` starts a new pass), never held whole."""
        if kind == "byte":
            return cls("byte", mask=mask)
        if kind == "char":
            chars: set[str] = set()
            for text in texts():
                chars.update(text)
            return cls("char", "".join(sorted(chars)), mask)
        problem = tokenizer_choice_problem(kind)
        if problem:
            raise ValueError(f"unknown tokenizer '{kind}': {problem}")
        if kind.startswith(BPE_PREFIX):
            return cls("subword", mask=mask, model=train_bpe(texts(), int(kind[len(BPE_PREFIX):])))
        text = read_tokenizer_json(kind)
        if text.startswith(SPECC_FORMAT):  # a specc run's own (RUN/data/tokenizer.json): as it was trained
            return replace(cls.from_json(json.loads(text[len(SPECC_FORMAT):])), mask=mask)
        return cls("subword", mask=mask, model=text)

    @property
    def data_size(self) -> int:
        """Ids that stand for text (the mask id comes after them)."""
        if self.kind == "subword":
            return _subword(self.model).get_vocab_size(with_added_tokens=True)
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
        if self.kind == "subword":  # the text as written: no BOS/EOS the tokenizer.json's post-processor may add
            return _subword(self.model).encode(text, add_special_tokens=False).ids
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
        if self.kind == "subword":
            yield from self._stream_subword(ids)
            return
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

    def _stream_subword(self, ids: Iterable[int]) -> Iterator[str]:
        """tokenizers' DecodeStream: a piece as soon as its bytes make whole characters."""
        from tokenizers.decoders import DecodeStream
        model, stream = _subword(self.model), DecodeStream(skip_special_tokens=False)
        for i in ids:
            i = int(i)
            if i in (self.mask_id, self.bos_id, self.eos_id):
                yield "[MASK]" if i == self.mask_id else "[BOS]" if i == self.bos_id else "[EOS]"
                stream = DecodeStream(skip_special_tokens=False)
                continue
            if not 0 <= i < self.data_size:
                raise ValueError(f"token id {i} is outside the tokenizer's {self.data_size} ids")
            piece = stream.step(model, i)
            if piece:
                yield piece

    def to_json(self) -> dict:
        return {"kind": self.kind, "chars": self.chars, **({"mask": True} if self.mask else {}),
                **({"bos_eos": True} if self.bos_eos else {}), **({"model": self.model} if self.model else {})}

    @classmethod
    def from_json(cls, data) -> Tokenizer:
        """The tokenizer a run or an exported file describes; ValueError when the description is not one."""
        if not isinstance(data, dict) or data.get("kind") not in KINDS:
            raise ValueError("not a tokenizer: expected {\"kind\": \"char\", \"byte\" or \"subword\", ...}")
        chars, mask, bos_eos = data.get("chars", ""), data.get("mask", False), data.get("bos_eos", False)
        if not isinstance(chars, str) or not isinstance(mask, bool) or not isinstance(bos_eos, bool):
            raise ValueError("not a tokenizer: its chars must be a string and its mask and bos_eos true or false")
        if data["kind"] == "char" and not chars:
            raise ValueError("not a tokenizer: a char tokenizer needs its characters")
        model = data.get("model", "")
        if data["kind"] == "subword":
            if not isinstance(model, str) or not model:
                raise ValueError("not a tokenizer: a subword tokenizer needs its model (tokenizer.json's text)")
            try:
                _subword(model)
            except Exception as e:  # tokenizers' own exception type
                raise ValueError(f"not a tokenizer: its model is not a tokenizer.json ({e})") from None
        return cls(data["kind"], chars if data["kind"] == "char" else "", mask, bos_eos,
                   model if data["kind"] == "subword" else "")
