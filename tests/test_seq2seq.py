"""Sequence-to-sequence training and generation: the contract's source and target, the built-in reversal task
(deterministic from the seed, splits disjoint), incremental decoding with both caches equal to full forward passes,
`specc train` / `--resume` / `specc sample` on an encoder-decoder, and that it learns the task."""

from __future__ import annotations

import json

import pytest

import specdsl
from conftest import SPECS
from specdsl.contract import Contract, contract
from specdsl.errors import SpecError

torch = pytest.importorskip("torch")

REVERSE = SPECS / "seq2seq-reverse.spec"
SMALL = {"d": 32, "heads": 2}


def test_the_contract_names_source_and_target_from_the_types():
    facts = contract(specdsl.load(REVERSE).model)
    assert (facts.source, facts.target, facts.context, facts.source_context) == ("src", "tgt", 16, 16)
    assert facts.causal and facts.vocab == 28 and not facts.language_model
    assert facts.cache == ((4, 16),) * 2  # the decoder's self-attention only; the encoder's is not cached
    assert Contract.from_json(json.loads(json.dumps(facts.to_json()))) == facts
    # the target is the input whose length the logits have, whatever the order or the names
    inputs = "input src: int[batch, src_len <= ctx]\n    input tgt: int[batch, tgt_len <= ctx]"
    text = REVERSE.read_text().replace(inputs,
                                       "input b: int[batch, b_len <= ctx]\n    input a: int[batch, a_len <= 12]")
    text = text.replace("src ->", "a ->").replace("tgt ->", "b ->")
    facts = contract(specdsl.loads(text, name=str(REVERSE)).model)
    assert (facts.source, facts.target, facts.source_context, facts.context) == ("a", "b", 12, 16)
    assert contract(specdsl.load(SPECS / "gpt2.spec").model).source is None


def test_the_reversal_data_is_the_seeds_and_its_splits_are_disjoint():
    from specdsl.train.pairs import MAX_LEN, MIN_LEN, ReversalData
    sizes = {"test": 50, "val": 50, "train": 400}
    a, b, c = ReversalData(1, sizes), ReversalData(1, sizes), ReversalData(2, sizes)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    strings = {split: {tuple(r.tolist()) for rows in by.values() for r in rows} for split, by in a.splits.items()}
    assert [len(strings[k]) for k in sizes] == list(sizes.values())
    assert not (strings["test"] & strings["train"]) and not (strings["val"] & strings["train"])
    (src, tgt_in), tgt_out = a.batch("train", 8, torch.Generator().manual_seed(0))
    n = src.shape[1]
    assert MIN_LEN <= n <= MAX_LEN and tgt_in.shape == tgt_out.shape == (8, n + 1)
    tok = a.tokenizer
    assert (tgt_in[:, 0] == tok.bos_id).all() and (tgt_out[:, -1] == tok.eos_id).all()
    assert torch.equal(tgt_out[:, :-1], src.flip(-1)) and torch.equal(tgt_in[:, 1:], tgt_out[:, :-1])
    assert tok.decode([0, tok.bos_id, tok.eos_id]) == "a[BOS][EOS]" and tok.vocab_size == 28
    from specdsl.tokenizer import Tokenizer
    assert Tokenizer.from_json(tok.to_json()) == tok and "bos_eos" not in Tokenizer("char", "ab").to_json()


@pytest.mark.parametrize("spec,sets", [(REVERSE, SMALL), (SPECS / "transformer.spec",
                                       {"vocab": 28, "ctx": 16, "d": 32, "heads": 4, "layers": 2, "dec_layers": 2})])
def test_incremental_decoding_with_both_caches_equals_full_passes(spec, sets):
    from specdsl.backends.torch_backend import Seq2SeqDecoder
    torch.manual_seed(0)
    module = specdsl.to_torch(specdsl.load(spec, overrides=sets)).eval()
    decoder = Seq2SeqDecoder(module)
    assert decoder._encoder  # after the first step the encoder is not run
    src, tgt = torch.randint(0, 26, (2, 7)), torch.randint(0, 26, (2, 6))
    with torch.no_grad():
        full = module(src, tgt)
        out, *past = decoder(src, tgt[:, :2], *decoder.empty_cache(2))
        steps = [out]
        for t in range(2, 6):
            out, *past = decoder(torch.zeros_like(src), tgt[:, t:t + 1], *past)  # the source is not read again
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert past[0].shape == (2, *contract(module.spec).cache[0][:1], 6, contract(module.spec).cache[0][1])
    assert past[-1].shape[2] == 7  # the memory's keys and values: one per source position


def test_translate_with_the_cache_equals_without():
    from specdsl.train.sample import translate
    torch.manual_seed(1)
    module = specdsl.to_torch(specdsl.load(REVERSE, overrides=SMALL)).eval()
    for temperature in (0.0, 1.0):
        runs = [list(translate(module, [3, 1, 4, 1, 5], 26, 27, 12, temperature, seed=3, cache=cache))
                for cache in (True, False)]
        assert runs[0] == runs[1] and 26 not in runs[0]


def test_training_an_encoder_decoder_that_is_not_source_and_target_is_refused():
    text = """
use "std/seq2seq.spec"
model m {
    input x: float[batch, seq <= 6, 8]
    input mem: float[batch, src <= 9, 8]
    return x -> post_ln_decoder_block(8, 2, memory = mem)
}
"""
    from specdsl.train.trainable import check_trainable
    with pytest.raises(SpecError, match="two token inputs of their own lengths") as e:
        check_trainable(specdsl.loads(text, name=str(SPECS / "t.spec")).model)
    assert e.value.errors[0].span.line > 0


@pytest.mark.slow
def test_train_resume_and_sample_an_encoder_decoder(tmp_path, capsys):
    from specdsl.train.loop import train
    from specdsl.train.sample import load_run, translate
    flags = {"eval_every": 10}
    straight = train(str(REVERSE), overrides=dict(SMALL), flags={**flags, "steps": 30, "out": str(tmp_path / "a")},
                     progress=False)
    train(str(REVERSE), overrides=dict(SMALL), flags={**flags, "steps": 20, "out": str(tmp_path / "b")},
          progress=False)
    resumed = train(str(REVERSE), flags={**flags, "steps": 30, "out": str(tmp_path / "b")}, resume=True,
                    progress=False)
    assert resumed["best_val_loss"] == straight["best_val_loss"]
    lines = [(tmp_path / r / "metrics.jsonl").read_text() for r in "ab"]
    strip = [[{k: v for k, v in json.loads(x).items() if k != "step_s"} for x in t.splitlines()] for t in lines]
    assert strip[0] == strip[1]  # bit for bit
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["data"]["builtin"] == "reverse" and record["contract"]["source"] == "src"
    module, tokenizer, ctx = load_run(tmp_path / "a")
    assert tokenizer.bos_eos and ctx == 16
    from specdsl.commands.generate import sample_command
    capsys.readouterr()
    sample_command(str(tmp_path / "a"), "hello", 12, 0.0, None, 0, "shift")
    want = tokenizer.decode(translate(module, tokenizer.encode("hello"), tokenizer.bos_id, tokenizer.eos_id, 12, 0.0,
                                      cache=False, vocab=tokenizer.vocab_size))
    assert capsys.readouterr().out == want + "\n"
    with pytest.raises(SpecError, match="source takes at most 16"):
        sample_command(str(tmp_path / "a"), "a" * 17, 12, 0.0, None, 0, "shift")


@pytest.mark.slow
def test_the_encoder_decoder_learns_to_reverse(tmp_path):
    """The spec as shipped, 500 steps (about a minute on 2 cores): nearly every held-out string reversed exactly."""
    from specdsl.train.loop import train
    from specdsl.train.pairs import ReversalData
    from specdsl.train.sample import load_run
    from specdsl.train.tasks import Seq2Seq, exact_match
    train(str(REVERSE), flags={"steps": 500, "out": str(tmp_path / "r")}, progress=False)
    module, _, _ = load_run(tmp_path / "r")
    rate = exact_match(Seq2Seq(ReversalData(1337)), module, "test")
    assert rate > 0.8, rate
