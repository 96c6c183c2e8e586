"""`specc train --init-from`: fine-tuning from a Hugging Face checkpoint folder made the way Hugging Face makes one
(a tiny model from a config object, every parameter perturbed, save_pretrained sharded with its index, and a
tokenizer.json trained locally with tokenizers) or from a specc run. The first step's loss equals the reference
model's loss on the same batch; the tokenizer that came with the weights is the run's; run.json says where the
weights came from; a mismatched checkpoint is refused before anything is written."""

from __future__ import annotations

import json
import os

import pytest
from test_hf_logits_parity import gpt2, llama, perturb

import specdsl
from conftest import SPECS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from specdsl.train.loop import train  # noqa: E402

TEXT = "".join(f"the king sees the river {i}. the queen finds a red ball at night.\n" for i in range(300))
SIZES = {"gpt2": dict(ctx=16, d=48, layers=2, heads=4),
         "llama": dict(ctx=16, d=64, layers=2, heads=4, kv_heads=2, ffn=100, eps=1e-5, rope_theta=10000.0)}


def quiet():
    from rich.console import Console
    return Console(file=open(os.devnull, "w"))


def hf_folder(tmp_path, family: str):
    """A checkpoint folder as Hugging Face writes one: config, sharded safetensors with their index, tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab = bpe.get_vocab_size() + 3  # padded past the tokenizer, as checkpoints often are
    torch.manual_seed(0)
    model = (gpt2 if family == "gpt2" else llama)({**SIZES[family], "vocab": vocab}).eval()
    if family == "gpt2":
        model.config.resid_pdrop = model.config.embd_pdrop = model.config.attn_pdrop = 0.0
    perturb(model)
    folder = tmp_path / f"hf-{family}"
    model.save_pretrained(folder, max_shard_size="40KB")
    bpe.save(str(folder / "tokenizer.json"))
    assert (folder / "model.safetensors.index.json").exists()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    return folder, model, corpus


def first_batch(run, batch: int, seed: int):
    """The first training batch of a run, drawn as its loop draws it."""
    from specdsl.train.data import TokenData
    record = json.loads((run / "run.json").read_text())
    data = TokenData(run / "data", specdsl.tokenizer.Tokenizer.from_json(record["tokenizer"]))
    return data.batch("train", batch, record["contract"]["context"], torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family, spec", [("gpt2", "gpt2.spec"), ("llama", "llama.spec")])
def test_the_first_step_loss_equals_the_checkpoints_own(tmp_path, family, spec):
    folder, reference, corpus = hf_folder(tmp_path, family)
    out = tmp_path / "run"
    sets = dict(SIZES[family], **({"dropout": 0.0} if family == "gpt2" else {}))
    train(str(SPECS / spec), overrides=sets, progress=False, console=quiet(),
          flags={"init_from": str(folder), "data": str(corpus), "steps": 1, "batch": 4, "eval_every": 1,
                 "eval_batches": 1, "seed": 7, "out": str(out)})
    record = json.loads((out / "run.json").read_text())
    assert record["init_from"]["kind"] == "hugging face" and record["init_from"]["model_type"] == family
    assert record["overrides"]["vocab"] == reference.config.vocab_size  # the checkpoint's, not the tokenizer's
    assert record["tokenizer"]["kind"] == "subword" and record["config"]["tokenizer"] == str(folder / "tokenizer.json")
    x, y = first_batch(out, 4, 7)
    with torch.no_grad():
        logits = reference(x).logits
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()).item()
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["train_loss"]
    assert abs(first - expected) < 1e-4, (first, expected)


def test_a_run_starts_from_another_run_with_its_tokenizer(tmp_path):
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    flags = {"steps": 4, "batch": 4, "eval_every": 2, "eval_batches": 1}
    sizes = {"d": 32, "layers": 1, "heads": 2, "ctx": 16}
    train(str(SPECS / "nanogpt-shakespeare.spec"), overrides=sizes, progress=False, console=quiet(),
          flags={**flags, "out": str(base), "tokenizer": "bpe:300"})
    train(str(SPECS / "nanogpt-shakespeare.spec"), overrides=sizes, progress=False, console=quiet(),
          flags={**flags, "out": str(tuned), "init_from": str(base), "lr": 1e-9, "warmup": 0, "steps": 1})
    a, b = (json.loads((r / "run.json").read_text()) for r in (base, tuned))
    assert b["tokenizer"] == a["tokenizer"] and b["init_from"]["kind"] == "run"
    from safetensors.torch import load_file
    start = load_file(str(base / "best" / "model.safetensors"))
    after = load_file(str(tuned / "last" / "model.safetensors"))
    assert all(torch.allclose(start[k], after[k], atol=1e-6) for k in start)  # lr ~0: it started from them


def test_a_checkpoint_of_another_architecture_is_refused_before_anything_is_written(tmp_path):
    folder, _, corpus = hf_folder(tmp_path, "llama")
    for spec, sets, says in (("gpt2.spec", dict(SIZES["gpt2"], dropout=0.0), "do not fit the spec"),
                             ("gemma.spec", dict(SIZES["llama"], head_dim=16, kv_heads=2), "not the architecture")):
        with pytest.raises(specdsl.SpecError, match=says) as refused:
            train(str(SPECS / spec), overrides=sets, progress=False, console=quiet(),
                  flags={"init_from": str(folder), "data": str(corpus), "steps": 1, "out": str(tmp_path / "r")})
        assert refused.value.errors[0].span.file == "--init-from" and not (tmp_path / "r").exists()
    with pytest.raises(specdsl.SpecError, match="neither a specc run"):
        train(str(SPECS / "gpt2.spec"), flags={"init_from": str(tmp_path), "out": str(tmp_path / "r")})
