"""The text a language model trains on, named by --data, read as a stream so that a corpus larger than memory trains.

--data takes a text file; a folder of text files (every *.txt under it, in sorted order); a JSON Lines file (*.jsonl,
each line an object whose "text" field is a document); or token ids made already, nanoGPT's format (a *.bin of
uint16 ids, uint32 past 65,536 tokens; or a folder holding train.bin and val.bin, its own split). Documents are
joined with a newline. Text is read in chunks of whole lines (CHUNK bytes), checked as UTF-8 with the file and byte
of a fault, and tokenized chunk by chunk into a temporary file (`tokenize`), so memory holds one chunk, not the
corpus. The split is nanoGPT's: the first 90% of the tokens train, the last 10% validate (a folder of train.bin and
val.bin keeps its own).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import Span, SpecError
from ..io import open_regular
from ..tokenizer import Tokenizer

CHUNK = 1 << 20  # bytes of text read (and tokenized) at a time
TRAIN_FRACTION = 0.9  # nanoGPT's prepare.py
TEXT_SUFFIX, JSONL_SUFFIX, TOKENS_SUFFIX = ".txt", ".jsonl", ".bin"
SPLIT_FILES = ("train.bin", "val.bin")  # nanoGPT's prepare.py writes these
WHERE = Span("--data", 0, 0)


def token_dtype(vocab_size: int):
    """The narrowest unsigned type for the ids: uint16 (nanoGPT's) up to 65,536 tokens, uint32 beyond."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32


@dataclass(frozen=True)
class Corpus:
    """What --data names: `kind` is text, folder, jsonl, tokens (one .bin) or split (train.bin and val.bin)."""

    kind: str
    path: str
    files: tuple[Path, ...]

    @property
    def pretokenized(self) -> bool:
        return self.kind in ("tokens", "split")

    def describe(self) -> str:
        return {"text": "a text file", "folder": f"a folder of {len(self.files)} text files",
                "jsonl": 'JSON Lines ("text" fields)', "tokens": "token ids (nanoGPT .bin)",
                "split": "token ids (nanoGPT train.bin and val.bin)"}[self.kind]

    def fingerprint(self) -> dict:
        """(bytes, sha256) of the one file, or over every file's name and digest: what resume compares."""
        if len(self.files) == 1 and self.kind != "split":
            return fingerprint_file(self.files[0])
        digest, size = hashlib.sha256(), 0
        for f in self.files:
            part = fingerprint_file(f)
            digest.update(f"{f.relative_to(self.path)}\0{part['sha256']}\n".encode())
            size += part["bytes"]
        return {"bytes": size, "sha256": digest.hexdigest(), "files": len(self.files)}

    def texts(self) -> Iterator[str]:
        """The corpus as chunks of whole lines (a folder's files joined with a newline where one does not end with
        one; a file's last line as it is); SpecError at --data for a file
        that is not UTF-8 text or a JSON Lines record without a "text" string, and for a corpus with no text."""
        seen, last = False, "\n"
        for f in self.files:
            if not last.endswith("\n"):  # the documents of a folder are joined with a newline
                yield "\n"
            for chunk in (_jsonl_texts(f) if self.kind == "jsonl" else _file_texts(f)):
                seen, last = seen or bool(chunk.strip()), chunk
                yield chunk
        if not seen:
            raise SpecError(f"'{self.path}' is empty: there is no text to train on", WHERE)


def fingerprint_file(path: str | os.PathLike) -> dict:
    """(bytes, sha256) of a data file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def open_corpus(path: str) -> Corpus:
    """The corpus at `path`, its kind from what it is; SpecError at --data for what is none."""
    if os.path.isdir(path) and not os.path.islink(path):
        if all(os.path.isfile(os.path.join(path, name)) for name in SPLIT_FILES):
            return Corpus("split", path, tuple(_regular(Path(path) / name) for name in SPLIT_FILES))
        files = tuple(sorted(p for p in Path(path).rglob(f"*{TEXT_SUFFIX}") if p.is_file() and not p.is_symlink()))
        if not files:
            raise SpecError(f"'{path}' is a folder with no {TEXT_SUFFIX} files (and no train.bin and val.bin)", WHERE,
                            hint="--data takes a text file, a folder of .txt files, a .jsonl or nanoGPT's .bin")
        return Corpus("folder", path, files)
    file = _regular(path)
    kind = {JSONL_SUFFIX: "jsonl", TOKENS_SUFFIX: "tokens"}.get(file.suffix.lower(), "text")
    return Corpus(kind, path, (file,))


def _regular(path) -> Path:
    with open_regular(path, WHERE, hint="--data takes a text file, a folder of .txt files, a .jsonl or nanoGPT's "
                                        ".bin"):
        return Path(path)


def _file_texts(path: Path) -> Iterator[str]:
    utf8 = codecs.getincrementaldecoder("utf-8")()
    held, offset = "", 0
    with open_regular(path, WHERE) as f:
        while data := f.read(CHUNK):
            try:
                text = held + utf8.decode(data)
            except UnicodeDecodeError as e:
                raise SpecError(f"'{path}' is not UTF-8 text (byte {offset + e.start}): specc trains on text files",
                                WHERE) from None
            offset += len(data)
            cut = text.rfind("\n") + 1  # whole lines now; the rest waits for the next chunk
            held = text[cut:]
            if cut:
                yield text[:cut]
        try:
            held += utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise SpecError(f"'{path}' is not UTF-8 text (it ends inside a character)", WHERE) from None
    if held:  # the last line, without a newline: the text as the file has it
        yield held


def _jsonl_texts(path: Path) -> Iterator[str]:
    batch, size = [], 0
    with open_regular(path, WHERE) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, UnicodeDecodeError) as e:
                raise SpecError(f"'{path}' line {number} is not JSON ({e})", WHERE) from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise SpecError(f"'{path}' line {number} has no \"text\" string", WHERE,
                                hint='each line of a .jsonl is an object such as {"text": "a document"}')
            batch.append(text if text.endswith("\n") else text + "\n")
            size += len(text)
            if size >= CHUNK:
                yield "".join(batch)
                batch, size = [], 0
    if batch:
        yield "".join(batch)


def encode_array(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """The ids of `text` as an array, without a Python object per character."""
    if tokenizer.kind == "subword":
        ids = np.fromiter(_subword_ids(tokenizer, text), dtype=np.int64)
    elif tokenizer.kind == "byte":
        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    elif len(tokenizer.chars) < 256 and tokenizer.chars[-1] <= "\xff":
        ids = _latin1_char_ids(tokenizer.chars, text)
    else:
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.frombuffer(tokenizer.chars.encode("utf-32-le"), dtype=np.uint32)  # sorted: Tokenizer.fit
        ids = np.searchsorted(table, points)
        if len(points) and not np.array_equal(table[np.minimum(ids, len(table) - 1)], points):
            raise ValueError("the text has characters outside the vocabulary")
    return ids.astype(token_dtype(tokenizer.vocab_size))


def _latin1_char_ids(chars: str, text: str) -> np.ndarray:
    """Char ids of a vocabulary of fewer than 256 characters, all below U+0100 (nanoGPT's Shakespeare: 65): one
    byte a character through bytes.translate, where the general path holds each character as 4 bytes, then 8, and
    retains a few MiB of heap after the run's tokenizing (bench/run_cost.py). 255 marks a character outside."""
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("the text has characters outside the vocabulary") from None
    table = bytearray(b"\xff" * 256)
    for i, c in enumerate(chars):
        table[ord(c)] = i
    ids = raw.translate(table)
    if b"\xff" in ids:
        raise ValueError("the text has characters outside the vocabulary")
    return np.frombuffer(ids, dtype=np.uint8)


def _subword_ids(tokenizer: Tokenizer, text: str, lines_per_batch: int = 4096) -> Iterator[int]:
    """A subword tokenizer's ids of `text`, line by line in batches through tokenizers' parallel encoder (a pre-
    tokenizer never joins a line's end to the next line's start, so this equals encoding the text whole; tested)."""
    from ..tokenizer import _subword
    model, lines = _subword(tokenizer.model), text.splitlines(keepends=True)
    for start in range(0, len(lines), lines_per_batch):
        for encoding in model.encode_batch_fast(lines[start:start + lines_per_batch], add_special_tokens=False):
            yield from encoding.ids


class Tokens:
    """Token ids in a file: a temporary one (deleted when closed) that `tokenize` fills, or a .bin of the user's,
    opened for reading."""

    def __init__(self, dtype, path: Path | None = None):
        self.dtype = np.dtype(dtype)
        self.file = open_regular(path, WHERE) if path is not None else tempfile.TemporaryFile()
        self.count = os.fstat(self.file.fileno()).st_size // self.dtype.itemsize

    def append(self, ids: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(ids, dtype=self.dtype).tobytes())
        self.count += len(ids)

    def read(self, start: int, stop: int) -> Iterator[bytes]:
        """The ids [start, stop) as bytes, CHUNK at a time."""
        size = self.dtype.itemsize
        self.file.seek(start * size)
        left = (stop - start) * size
        while left > 0:
            data = self.file.read(min(CHUNK, left))
            if not data:
                return
            left -= len(data)
            yield data

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class Split:
    """Ids [start, stop) of a Tokens: the training or the validation part of a corpus."""
    tokens: Tokens
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def chunks(self) -> Iterator[bytes]:
        return self.tokens.read(self.start, self.stop)


def splits(corpus: Corpus | None, tokenizer: Tokenizer, text: str | None = None) -> dict[str, Split]:
    """{"train", "val"}: the corpus's ids (tokenized now into a temporary file, or the .bin files as they are;
    `text` for the built-in corpus), the first TRAIN_FRACTION training, unless the corpus brings its own split."""
    dtype = token_dtype(tokenizer.vocab_size)
    if corpus is not None and corpus.kind == "split":
        parts = [Tokens(dtype, f) for f in corpus.files]
        for f in corpus.files:
            check_token_file(f, tokenizer.vocab_size)
        return {"train": Split(parts[0], 0, parts[0].count), "val": Split(parts[1], 0, parts[1].count)}
    if corpus is not None and corpus.kind == "tokens":
        check_token_file(corpus.files[0], tokenizer.vocab_size)
        tokens = Tokens(dtype, corpus.files[0])
    else:
        tokens = tokenize(corpus.texts() if corpus is not None else iter([text]), tokenizer)
    cut = int(tokens.count * TRAIN_FRACTION)
    return {"train": Split(tokens, 0, cut), "val": Split(tokens, cut, tokens.count)}


def tokenize(texts, tokenizer: Tokenizer) -> Tokens:
    """The ids of chunks of text, chunk by chunk, in a temporary file."""
    tokens = Tokens(token_dtype(tokenizer.vocab_size))
    try:
        for text in texts:
            tokens.append(encode_array(tokenizer, text))
    except BaseException:
        tokens.close()
        raise
    return tokens


def check_token_file(path: Path, vocab_size: int) -> int:
    """Ids in a .bin of `vocab_size` tokens: its size a whole number of ids, every id inside the vocabulary (a
    file of another tokenizer or another width would train on noise). Returns the count."""
    dtype = np.dtype(token_dtype(vocab_size))
    size = path.stat().st_size
    if size == 0 or size % dtype.itemsize:
        raise SpecError(f"'{path}' is {size} bytes: not {dtype.name} token ids (nanoGPT's .bin)", WHERE)
    ids = np.memmap(path, dtype=dtype, mode="r")
    for start in range(0, len(ids), CHUNK):
        top = int(ids[start:start + CHUNK].max())
        if top >= vocab_size:
            raise SpecError(f"'{path}' holds token id {top}, outside the tokenizer's {vocab_size} ids", WHERE,
                            hint="--tokenizer the tokenizer.json the ids were made with")
    return len(ids)
