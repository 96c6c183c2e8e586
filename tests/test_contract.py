"""The model contract (specdsl/contract.py): the facts training, sampling, export and generation read, computed once
from the IR and never from a hyperparameter's name."""

import json
import os

import pytest

import specdsl
from conftest import SPECS
from specdsl.contract import Contract, contract


def test_the_zoo_contracts():
    llama = contract(specdsl.load(SPECS / "llama.spec", preset="llama3-8b").model)
    assert (llama.language_model, llama.causal, llama.vocab, llama.ids) == (True, True, 128256, 128256)
    assert llama.cache == ((8, 128),) * 32 and llama.inputs == ("tokens",)
    bert = contract(specdsl.load(SPECS / "bert.spec", preset="mlm").model)
    assert bert.language_model and not bert.causal and bert.context == 512
    mlp = contract(specdsl.load(SPECS / "mlp.spec").model)
    assert not mlp.language_model and mlp.context is None and mlp.cache == () and mlp.ids is None
    assert Contract.from_json(json.loads(json.dumps(llama.to_json()))) == llama  # as it travels in ONNX metadata


def test_nothing_is_read_from_a_hyperparameters_name():
    """The same model with its context called block_size and its vocabulary n_tokens: the same contract."""
    text = (SPECS / "nanogpt-shakespeare.spec").read_text()
    renamed = text.replace("ctx", "block_size").replace("vocab", "n_tokens")
    a = contract(specdsl.loads(text, name=str(SPECS / "a.spec")).model)
    b = contract(specdsl.loads(renamed, name=str(SPECS / "b.spec")).model)
    assert a == b and a.context == 64 and a.vocab == 65


@pytest.mark.slow
def test_a_context_called_block_size_trains_samples_exports_and_generates_past_it(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from rich.console import Console

    from specdsl.backends import onnx_export
    from specdsl.backends.onnx_generate import OnnxGenerator
    from specdsl.commands.export import trained_module
    from specdsl.train import rundir
    from specdsl.train.loop import train
    from specdsl.train.sample import generate, load_run

    spec = tmp_path / "block.spec"
    spec.write_text((SPECS / "nanogpt-shakespeare.spec").read_text().replace("ctx", "block_size")
                    .replace('use "std/', f'use "{SPECS}/std/'))
    sizes = {"d": 32, "layers": 1, "heads": 2, "block_size": 16}
    run = tmp_path / "run"
    train(str(spec), overrides=sizes, flags={"steps": 30, "batch": 8, "eval_every": 30, "eval_batches": 1,
                                             "lr": 1e-2, "out": str(run)},
          progress=False, console=Console(file=open(os.devnull, "w")))
    module, tokenizer, ctx = load_run(run)
    assert ctx == 16
    prompt = tokenizer.encode("the ")
    greedy = list(generate(module, prompt, 40, ctx, temperature=0))  # 4 + 40 tokens: past the context
    compiled, record = rundir.compile_run(rundir.open_existing(run))
    onnx_export.export(compiled, tmp_path / "m.onnx", module=trained_module(compiled, run / "best"),
                       tokenizer=record["tokenizer"])
    assert list(OnnxGenerator(tmp_path / "m.onnx").generate(prompt, 40, temperature=0)) == greedy


def test_the_hyperparameters_a_vocabulary_and_a_context_follow_are_found_whatever_their_names():
    from specdsl.compiled import context_hyperparameter, vocabulary_hyperparameter
    text = (SPECS / "nanogpt-shakespeare.spec").read_text().replace('use "std/', f'use "{SPECS}/std/')
    plain = specdsl.loads(text, name=str(SPECS / "a.spec")).model
    assert (vocabulary_hyperparameter(plain), context_hyperparameter(plain)) == ("vocab", "ctx")
    renamed = specdsl.loads(text.replace("vocab", "V").replace("ctx", "block_size"), name=str(SPECS / "b.spec")).model
    assert (vocabulary_hyperparameter(renamed), context_hyperparameter(renamed)) == ("V", "block_size")
    # a hyperparameter that only shares the vocabulary's value is not it; a fixed vocabulary has none
    shared = specdsl.loads(text.replace("param vocab = 65", "param width = 65\nparam vocab = 65")
                           .replace("param ffn = 4 * d", "param ffn = width"), name=str(SPECS / "c.spec")).model
    assert list(shared.hyperparameters)[:2] == ["width", "vocab"]
    assert vocabulary_hyperparameter(shared) == "vocab"
    fixed = specdsl.loads(text.replace("Embedding(vocab", "Embedding(65").replace("Linear(d, vocab", "Linear(d, 65"),
                          name=str(SPECS / "d.spec")).model
    assert vocabulary_hyperparameter(fixed) is None
    assert vocabulary_hyperparameter(specdsl.load(SPECS / "mlp.spec").model) is None  # not a language model


def test_a_vocabulary_called_n_vocab_is_taken_from_the_data(tmp_path):
    """Training sets the vocabulary from the data through the hyperparameter the logits' width follows, not
    through one named `vocab`."""
    pytest.importorskip("torch")
    from rich.console import Console

    from specdsl.train.loop import train
    from specdsl.train.sample import load_run

    spec = tmp_path / "n_vocab.spec"
    spec.write_text((SPECS / "nanogpt-shakespeare.spec").read_text().replace("vocab", "n_vocab")
                    .replace('use "std/', f'use "{SPECS}/std/'))
    data = tmp_path / "tiny.txt"
    data.write_text("abcab cab bca " * 400)
    run = tmp_path / "run"
    train(str(spec), overrides={"d": 16, "layers": 1, "heads": 2, "ctx": 8},
          flags={"steps": 2, "batch": 4, "eval_every": 2, "eval_batches": 1, "data": str(data), "out": str(run)},
          progress=False, console=Console(file=open(os.devnull, "w")))
    module, tokenizer, _ = load_run(run)
    assert tokenizer.vocab_size == 4  # a, b, c and the space
    record = json.loads((run / "run.json").read_text())
    assert record["overrides"]["n_vocab"] == 4
    assert record["contract"] == json.loads(json.dumps(contract(module.spec).to_json()))  # it travels in the run
    assert record["contract"]["vocab"] == 4 and record["contract"]["context"] == 8
    assert module.state_dict()["wte.weight"].shape[0] == 4
