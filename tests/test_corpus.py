"""What --data takes (train/corpus.py): a text file, a folder of .txt files, JSON Lines, nanoGPT's token ids (one
.bin, or a folder of train.bin and val.bin); read in chunks of whole lines, so a corpus is never held whole; the
split stated; every fault a located error before anything is written."""

from __future__ import annotations

import json
import os

import pytest

import specdsl
from conftest import SPECS

np = pytest.importorskip("numpy")
pytest.importorskip("torch")
from specdsl.tokenizer import Tokenizer  # noqa: E402
from specdsl.train import corpus as C  # noqa: E402
from specdsl.train.loop import train  # noqa: E402

TINY = {"d": 32, "layers": 1, "heads": 2, "ctx": 16}
LINES = [f"line {i}: the king sees the river, ü {i * i}." for i in range(400)]


def run(out, data, steps=2, resume=False, **flags):
    from rich.console import Console
    return train(str(SPECS / "nanogpt-shakespeare.spec"), overrides=TINY, progress=False, resume=resume,
                 console=Console(file=open(os.devnull, "w")),
                 flags={"batch": 4, "eval_every": 2, "eval_batches": 1, "warmup": 1, "steps": steps, "out": str(out),
                        "data": str(data), **flags})


def ids_on_disk(out, dtype=np.uint16):
    return {split: np.fromfile(out / "data" / f"{split}.bin", dtype=dtype).tolist() for split in ("train", "val")}


def test_text_read_in_small_chunks_tokenizes_as_the_text_whole(tmp_path, monkeypatch):
    text = "".join(line + "\n" for line in LINES) + "no newline at the end: 日本"
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    monkeypatch.setattr(C, "CHUNK", 7)  # chunk edges fall inside lines and inside multi-byte characters
    corpus = C.open_corpus(str(path))
    chunks = list(corpus.texts())
    assert len(chunks) > 100 and all(c.endswith("\n") for c in chunks[:-1]) and "".join(chunks) == text
    for kind in ("char", "bpe:300"):
        tok = Tokenizer.fit_texts(kind, corpus.texts)
        assert tok == Tokenizer.fit(kind, text)
        parts = C.splits(corpus, tok)
        whole = tok.encode(text)
        cut = int(len(whole) * C.TRAIN_FRACTION)
        read = {k: np.frombuffer(b"".join(p.chunks()), dtype=C.token_dtype(tok.vocab_size)).tolist()
                for k, p in parts.items()}
        assert read == {"train": whole[:cut], "val": whole[cut:]}


def test_a_folder_of_text_files_and_json_lines_train_on_their_documents(tmp_path):
    folder = tmp_path / "docs"
    (folder / "b").mkdir(parents=True)
    (folder / "a.txt").write_text("\n".join(LINES[:200]))  # no final newline: documents are joined with one
    (folder / "b" / "c.txt").write_text("\n".join(LINES[200:]) + "\n")
    (folder / "notes.md").write_text("not read: only .txt files are text here")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": "\n".join(LINES[i:i + 50]), "id": i}) for i in range(0, 400, 50))
                     + "\n\n")
    expected = "".join(line + "\n" for line in LINES)
    for data in (folder, jsonl):
        out = tmp_path / f"run-{data.name}"
        run(out, data)
        record = json.loads((out / "run.json").read_text())
        tok = Tokenizer.from_json(record["tokenizer"])
        on_disk = ids_on_disk(out)
        assert tok.decode(on_disk["train"] + on_disk["val"]) == expected
        assert record["split"] == {"train": len(on_disk["train"]), "val": len(on_disk["val"]),
                                   "by": "the first 90% of the tokens train"}
    assert json.loads((tmp_path / "run-docs" / "run.json").read_text())["data"]["files"] == 2


def test_token_ids_train_as_given_and_a_folder_of_train_and_val_keeps_its_split(tmp_path):
    rng = np.random.default_rng(0)
    single = tmp_path / "ids.bin"
    rng.integers(0, 256, 5000, dtype=np.uint16).tofile(single)
    run(tmp_path / "one", single, tokenizer="byte")
    assert ids_on_disk(tmp_path / "one")["train"] == np.fromfile(single, dtype=np.uint16)[:4500].tolist()
    folder = tmp_path / "prepared"
    folder.mkdir()
    train_ids, val_ids = rng.integers(0, 256, 3000, dtype=np.uint16), rng.integers(0, 256, 700, dtype=np.uint16)
    train_ids.tofile(folder / "train.bin")
    val_ids.tofile(folder / "val.bin")
    run(tmp_path / "two", folder, tokenizer="byte")
    assert ids_on_disk(tmp_path / "two") == {"train": train_ids.tolist(), "val": val_ids.tolist()}
    record = json.loads((tmp_path / "two" / "run.json").read_text())
    assert record["split"]["by"] == "the data's own train.bin and val.bin"


def put(path, data):
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def folder_with_bad_utf8(path):
    path.mkdir()
    put(path / "x.txt", "ok\n")
    put(path / "y.txt", b"ok\n\xff\n")
    return path


@pytest.mark.parametrize("make, flags, says", [
    (lambda p: put(p.with_suffix(".jsonl"), '{"text": "a"}\n{"text": 3}\n'), {}, 'line 2 has no "text" string'),
    (lambda p: put(p.with_suffix(".jsonl"), '{"text": "a"}\n{oops\n'), {}, "line 2 is not JSON"),
    (lambda p: put(p.with_suffix(".bin"), np.array([1, 2, 300], dtype=np.uint16).tobytes()), {"tokenizer": "byte"},
     "token id 300, outside the tokenizer's 256 ids"),
    (lambda p: put(p.with_suffix(".bin"), b"\x01\x02\x03"), {"tokenizer": "byte"}, "not uint16 token ids"),
    (lambda p: put(p.with_suffix(".bin"), np.arange(100, dtype=np.uint16).tobytes()), {},
     "holds token ids: --tokenizer must name"),
    (folder_with_bad_utf8, {}, "y.txt' is not UTF-8 text \\(byte 3\\)"),
])
def test_bad_data_is_a_located_error_and_writes_nothing(tmp_path, make, flags, says):
    data = make(tmp_path / "data")
    with pytest.raises(specdsl.SpecError, match=says) as refused:
        run(tmp_path / "out", data, **flags)
    assert refused.value.errors[0].span.file in ("--data", "--tokenizer") and not (tmp_path / "out").exists()


def test_resume_refuses_a_folder_whose_files_changed(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("\n".join(LINES) + "\n")
    run(tmp_path / "r", folder, steps=2)
    (folder / "a.txt").write_text("\n".join(reversed(LINES)) + "\n")
    with pytest.raises(specdsl.SpecError, match="changed since the run started"):
        run(tmp_path / "r", folder, steps=4, resume=True)
