"""Subword vocabularies through Hugging Face tokenizers: a byte-level BPE trained on the corpus (`--tokenizer
bpe:VOCAB`) or a tokenizer.json from a checkpoint folder (`--tokenizer PATH`); saved with the run, so sample, export
and generate use the same one."""

from __future__ import annotations

import json

import pytest

import specdsl
from conftest import SPECS
from specdsl.tokenizer import Tokenizer

tokenizers = pytest.importorskip("tokenizers")

TEXT = "the king sees the river.\nthe queen finds a red ball at night.\n\n3 plus 4 is 7.\nbrûlée, 日本, ü!\n" * 40


def test_a_bpe_trained_on_the_corpus_is_deterministic_and_round_trips():
    a, b = Tokenizer.fit("bpe:300", TEXT), Tokenizer.fit("bpe:300", TEXT)
    assert a == b and a.kind == "subword" and 256 < a.vocab_size <= 300
    ids = a.encode(TEXT)
    assert len(ids) < len(TEXT.encode()) / 2  # it merged: fewer tokens than bytes
    assert a.decode(ids) == TEXT and Tokenizer.from_json(json.loads(json.dumps(a.to_json()))) == a
    assert "model" not in repr(a)  # megabytes of tokenizer.json stay out of reprs and error messages
    unseen = "zebra quokka ∑ 🙂"  # byte-level: every string encodes, even characters never seen
    assert a.decode(a.encode(unseen)) == unseen


def test_the_corpus_encoded_line_by_line_equals_the_text_encoded_whole():
    np = pytest.importorskip("numpy")
    from specdsl.train.corpus import encode_array
    tok = Tokenizer.fit("bpe:300", TEXT)
    ids = encode_array(tok, TEXT)
    assert ids.dtype == np.uint16 and ids.tolist() == tok.encode(TEXT)


def test_streaming_gives_whole_characters_and_the_decoded_text():
    tok = Tokenizer.fit("bpe:260", TEXT)  # few merges: multi-byte characters span several tokens
    ids = tok.encode("brûlée 日本")
    pieces = list(tok.stream(ids))
    assert "".join(pieces) == "brûlée 日本" and "\ufffd" not in "".join(pieces) and len(pieces) > 1
    with pytest.raises(ValueError, match="outside the tokenizer"):
        list(tok.stream([tok.vocab_size + 5]))


def test_a_tokenizer_json_from_a_folder_is_read_with_its_own_vocabulary(tmp_path):
    from tokenizers import Tokenizer as Subword
    from tokenizers import models, pre_tokenizers, trainers
    wordpiece = Subword(models.WordPiece(unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    wordpiece.train_from_iterator([TEXT], trainers.WordPieceTrainer(vocab_size=120, special_tokens=["[UNK]"],
                                                                    show_progress=False))
    (tmp_path / "ckpt").mkdir()
    wordpiece.save(str(tmp_path / "ckpt" / "tokenizer.json"))
    tok = Tokenizer.fit(str(tmp_path / "ckpt"), TEXT)
    assert tok.vocab_size == wordpiece.get_vocab_size() and tok.encode("the king") == \
        wordpiece.encode("the king").ids
    assert Tokenizer.fit(str(tmp_path / "ckpt" / "tokenizer.json"), "") == tok


@pytest.mark.parametrize("value, says", [
    ("bpe:10", "vocabulary size from 257"), ("bpe:lots", "vocabulary size"), ("wordpiece", "that exists"),
    ("/no/such/tokenizer.json", "that exists")])
def test_a_tokenizer_that_is_not_one_is_a_located_error(value, says):
    from specdsl.settings import resolve_config
    with pytest.raises(specdsl.SpecError, match=says) as refused:
        resolve_config({}, {"tokenizer": value})
    assert refused.value.errors[0].span.file == "--tokenizer"


def test_a_damaged_tokenizer_json_is_refused_before_the_run_starts(tmp_path):
    pytest.importorskip("torch")
    from specdsl.train.loop import train
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"model": {"type": "BPE", "vocab": ')
    with pytest.raises(specdsl.SpecError, match="not a tokenizer.json") as refused:
        train(str(SPECS / "nanogpt-shakespeare.spec"), flags={"tokenizer": str(bad), "out": str(tmp_path / "r")},
              progress=False)
    assert refused.value.errors[0].span.file == "--tokenizer" and not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="not a tokenizer.json"):
        Tokenizer.from_json({"kind": "subword", "chars": "", "model": '{"version": 1}'})


@pytest.mark.slow
def test_a_bpe_run_samples_exports_and_generates_the_same_text(tmp_path):
    pytest.importorskip("onnxruntime")
    import os

    from rich.console import Console

    from specdsl.backends import onnx_export
    from specdsl.backends.onnx_generate import OnnxGenerator
    from specdsl.commands.export import trained_module
    from specdsl.train import rundir
    from specdsl.train.loop import train
    from specdsl.train.sample import generate, load_run
    run = tmp_path / "r"
    train(str(SPECS / "nanogpt-shakespeare.spec"), overrides={"d": 32, "layers": 1, "heads": 2, "ctx": 16},
          flags={"tokenizer": "bpe:300", "steps": 30, "batch": 8, "eval_every": 15, "eval_batches": 2,
                 "out": str(run)}, progress=False, console=Console(file=open(os.devnull, "w")))
    record = json.loads((run / "run.json").read_text())
    assert record["tokenizer"]["kind"] == "subword" and record["overrides"]["vocab"] <= 300
    module, tokenizer, ctx = load_run(run)
    assert tokenizer.vocab_size == record["overrides"]["vocab"]
    prompt = tokenizer.encode("the king ")
    ours = list(generate(module, prompt, 24, ctx, temperature=0))
    compiled, _ = rundir.compile_run(rundir.open_existing(run))
    onnx_export.export(compiled, tmp_path / "m.onnx", module=trained_module(compiled, run / "best"),
                       tokenizer=record["tokenizer"])
    generator = OnnxGenerator(tmp_path / "m.onnx")
    assert generator.tokenizer == tokenizer
    assert list(generator.generate(prompt, 24, temperature=0)) == ours
