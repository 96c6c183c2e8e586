"""ONNX export and onnxruntime generation of encoder-decoders: the encoder graph (source -> the memory's keys and
values) and the decoding graph (target, self-attention cache, memory keys and values -> logits, cache) equal
Hugging Face's T5 and the torch module, decoding with both caches on onnxruntime equals full passes, `specc generate`
prints what `specc sample` prints, and graphs that do not belong together are clear errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

import specdsl
from conftest import SPECS
from specdsl.contract import contract
from specdsl.errors import SpecError

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

REVERSE = SPECS / "seq2seq-reverse.spec"
TRANSFORMER = {"vocab": 28, "ctx": 16, "d": 32, "heads": 4, "layers": 2, "dec_layers": 2, "ffn": 48, "dropout": 0.0}
T5 = {"vocab": 40, "ctx": 20, "d": 16, "heads": 2, "head_dim": 6, "ffn": 24, "layers": 2, "dec_layers": 3,
      "buckets": 8, "max_distance": 12, "dropout": 0.0}


def _perturbed(module, seed=3):
    """Every parameter moved off its initial value (norm weights off one, biases off zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return module.eval()


# ---------------------------------------------------------------- the torch modules the graphs come from (fast)


@pytest.mark.parametrize("spec,sets", [(SPECS / "transformer.spec", TRANSFORMER), (SPECS / "t5.spec", T5)],
                         ids=["transformer", "t5"])
def test_memory_encoder_and_decoder_equal_the_full_pass(spec, sets):
    """MemoryEncoder gives the keys and values Seq2SeqDecoder computes at its first step, in its order; decoding
    with them and the self-attention cache equals the model's full pass."""
    from specdsl.backends.seq2seq_graphs import MemoryDecoder, MemoryEncoder
    from specdsl.backends.torch_backend import Seq2SeqDecoder
    torch.manual_seed(0)
    module = _perturbed(specdsl.to_torch(specdsl.load(spec, overrides=sets)))
    facts = contract(module.spec)
    gen = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(0, 26, (2, 9), generator=gen), torch.randint(0, 26, (2, 7), generator=gen)
    with torch.no_grad():
        memory = MemoryEncoder(module)(src)
        first = Seq2SeqDecoder(module)(src, tgt[:, :1], *Seq2SeqDecoder(module).empty_cache(2))
        assert len(memory) == 2 * len(facts.memory_cache) == 2 * sets["dec_layers"]
        for ours, theirs in zip(memory, first[1 + 2 * len(facts.cache):]):
            assert torch.equal(ours, theirs)
        decoder = MemoryDecoder(module)
        past = [torch.zeros(2, kv, 0, hd) for kv, hd in facts.cache for _ in "kv"]
        logits, *past = decoder(tgt[:, :3], *past, *memory)
        steps = [logits]
        for t in range(3, 7):
            logits, *past = decoder(tgt[:, t:t + 1], *past, *memory)
            steps.append(logits)
        torch.testing.assert_close(torch.cat(steps, 1), module(src, tgt), rtol=1e-5, atol=1e-5)
    assert len(past) == 2 * len(facts.cache) and past[0].shape[2] == 7


def test_an_encoder_read_other_than_as_memory_is_refused(tmp_path):
    """A model whose encoder output is read as a layer's piped input beside the target (not only as memory) needs
    the source at every decoding step: its export is refused at the model, before any file is written."""
    text = """
model m {
    input src: int[batch, src_len <= 8]
    input tgt: int[batch, tgt_len <= 8]
    enc = src -> embed: Embedding(20, 16)
    y = tgt -> tgt_embed: Embedding(20, 16)
    z = enc -> back: CrossAttention(16, 2, memory = y)
    y = y -> cross: CrossAttention(16, 2, memory = z)
    return y -> lm_head: Linear(16, 20)
}
"""
    c = specdsl.loads(text, name=str(SPECS / "refused.spec"))
    assert contract(c.model).source == "src"
    module = specdsl.to_torch(c)
    from specdsl.backends.seq2seq_graphs import MemoryDecoder, MemoryEncoder
    for graph in (MemoryEncoder, MemoryDecoder):
        with pytest.raises(SpecError, match="only as cross-attention memory") as e:
            graph(module)
        assert e.value.errors[0].span.line == 2  # `model m {`
    pytest.importorskip("onnxruntime")
    from specdsl.backends.onnx_export import export
    with pytest.raises(SpecError, match="only as cross-attention memory"):
        export(c, tmp_path / "m.onnx", module=module)
    assert list(tmp_path.iterdir()) == []


def test_an_export_writes_three_graphs_each_checked_as_a_target_first(tmp_path):
    """OUT.onnx, OUT.encode.onnx and OUT.decode.onnx (and OUT.int8.onnx), each must be a file or nothing: a folder
    at the encoder graph's name stops the export before anything is written (torch-free)."""
    from specdsl.backends.onnx_generate import export_paths
    model = specdsl.load(REVERSE).model
    out = tmp_path / "m.onnx"
    assert [p.name for p in export_paths(model, out, "int8")] == [
        "m.onnx", "m.encode.onnx", "m.decode.onnx", "m.int8.onnx", "m.int8.encode.onnx", "m.int8.decode.onnx"]
    (tmp_path / "m.encode.onnx").mkdir()
    with pytest.raises(SpecError, match="it is a directory"):
        export_paths(model, out, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.encode.onnx"]


# ---------------------------------------------------------------- exports (slow)

def _ort(path):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _decode_incrementally(folder, name, facts, src, tgt, first):
    """The encoder graph once, then the decoding graph on tgt[:, :first] and one token a call after it, both
    caches fed back: the logits of every target position."""
    from specdsl.backends.onnx_generate import cache_names
    encoder, decoder = _ort(folder / f"{name}.encode.onnx"), _ort(folder / f"{name}.decode.onnx")
    memory = dict(zip(cache_names("memory", len(facts.memory_cache)),
                      encoder.run(None, {facts.source: src.numpy()})))
    past_names = cache_names("past", len(facts.cache))
    cache = {n: np.zeros((len(src), kv, 0, hd), np.float32)
             for n, (kv, hd) in zip(past_names, [s for s in facts.cache for _ in "kv"])}
    logits, start = [], 0
    for stop in (first, *range(first + 1, tgt.shape[1] + 1)):
        outs = decoder.run(None, {facts.target: tgt[:, start:stop].numpy(), **cache, **memory})
        logits.append(outs[0])
        cache, start = dict(zip(past_names, outs[1:])), stop
    return np.concatenate(logits, axis=1)


@pytest.mark.slow
def test_t5_graphs_equal_hugging_face(tmp_path):
    """specs/t5.spec at a tiny size with the weights of T5ForConditionalGeneration, every parameter perturbed: the
    full graph, and the encoder graph then the decoding graph with both caches, equal Hugging Face's logits; the
    encoder graph's keys and values equal the torch module's."""
    from test_encoder_decoder import _t5_config, _t5_state_dict
    transformers = pytest.importorskip("transformers")
    from specdsl.backends import onnx_export
    from specdsl.backends.onnx_generate import count_parameters
    from specdsl.backends.seq2seq_graphs import MemoryEncoder
    config = _t5_config(vocab_size=T5["vocab"], d_model=T5["d"], d_kv=T5["head_dim"], d_ff=T5["ffn"],
                        num_layers=T5["layers"], num_decoder_layers=T5["dec_layers"], num_heads=T5["heads"],
                        relative_attention_num_buckets=T5["buckets"],
                        relative_attention_max_distance=T5["max_distance"])
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    compiled = specdsl.load(SPECS / "t5.spec", overrides=T5)
    module = specdsl.to_torch(compiled).eval()
    module.load_state_dict(_t5_state_dict(hf, T5["layers"], T5["dec_layers"], False, True))
    report = onnx_export.export(compiled, tmp_path / "t5.onnx", module=module)
    assert report["max_abs_diff"] <= 1e-5 and report["encode"]["max_abs_diff"] <= 1e-5
    assert report["decode"]["cache_vs_full_max_abs_diff"] <= 1e-5
    assert count_parameters(tmp_path / "t5.onnx") == compiled.analysis.total
    facts = contract(compiled.model)
    src, tgt = torch.randint(0, T5["vocab"], (3, 17), generator=gen), torch.randint(0, T5["vocab"], (3, 15),
                                                                                     generator=gen)
    with torch.no_grad():  # longer than max_distance: every bucket is read
        expected = hf(input_ids=src, decoder_input_ids=tgt).logits.numpy()
        memory = MemoryEncoder(module)(src)
    full = _ort(tmp_path / "t5.onnx").run(None, {"src": src.numpy(), "tgt": tgt.numpy()})[0]
    np.testing.assert_allclose(full, expected, rtol=1e-5, atol=1e-5)
    got = _ort(tmp_path / "t5.encode.onnx").run(None, {"src": src.numpy()})
    for g, m in zip(got, memory, strict=True):
        np.testing.assert_allclose(g, m.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_decode_incrementally(tmp_path, "t5", facts, src, tgt, 4), expected, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.slow
def test_transformer_graphs_equal_the_torch_module_and_full_passes(tmp_path):
    """specs/transformer.spec at a tiny size (sinusoidal positions, post-LN blocks, biases), every parameter
    perturbed: decoding with both caches on onnxruntime, from a one-token prefix and from a longer one, equals
    the ONNX full graph and the torch module's full pass; the encoder and decoding graphs hold the weights they
    read, the shared embedding in both."""
    from specdsl.backends import onnx_export
    from specdsl.backends.onnx_generate import count_parameters
    compiled = specdsl.load(SPECS / "transformer.spec", overrides=TRANSFORMER)
    torch.manual_seed(0)
    module = _perturbed(specdsl.to_torch(compiled))
    report = onnx_export.export(compiled, tmp_path / "tr.onnx", module=module)
    assert report["max_abs_diff"] <= 1e-5 and report["encode"]["max_abs_diff"] <= 1e-5
    assert report["decode"]["cache_vs_full_max_abs_diff"] <= 1e-5
    assert {c["batch"] for c in report["checks"]} == {1, 3}
    assert [c["seq"] for c in report["checks"][:2]] == [{"src_len": 5, "tgt_len": 4}, {"src_len": 16, "tgt_len": 16}]
    facts = contract(compiled.model)
    gen = torch.Generator().manual_seed(9)
    src, tgt = torch.randint(0, 28, (2, 11), generator=gen), torch.randint(0, 28, (2, 16), generator=gen)
    with torch.no_grad():
        expected = module(src, tgt).numpy()
    full = _ort(tmp_path / "tr.onnx").run(None, {"src": src.numpy(), "tgt": tgt.numpy()})[0]
    np.testing.assert_allclose(full, expected, rtol=1e-5, atol=1e-5)
    for first in (1, 6):
        np.testing.assert_allclose(_decode_incrementally(tmp_path, "tr", facts, src, tgt, first), full, rtol=1e-5,
                                   atol=1e-5)
    embedding = TRANSFORMER["vocab"] * TRANSFORMER["d"]
    parts = [count_parameters(tmp_path / f"tr.{g}.onnx") for g in ("encode", "decode")]
    assert sum(parts) == compiled.analysis.total + embedding
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tr.decode.onnx", "tr.encode.onnx", "tr.onnx"]


# ---------------------------------------------------------------- a trained run: export, generate, sample (slow)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, specc_cmd):
    """A short `specc train` of specs/seq2seq-reverse.spec, exported with `specc export --onnx --quantize int8`."""
    from rich.console import Console

    from specdsl.train.loop import train
    folder = tmp_path_factory.mktemp("s2s")
    run = folder / "run"
    train(str(REVERSE), overrides={"d": 32, "heads": 2}, flags={"steps": 200, "eval_every": 100, "out": str(run)},
          progress=False, console=Console(file=open(os.devnull, "w")))
    r = subprocess.run(specc_cmd + ["export", str(REVERSE), "--onnx", "--checkpoint", str(run), "-o",
                                    str(folder / "rev.onnx"), "--quantize", "int8"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return run, folder, r.stdout


def _cli(cmd, *args):
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True)


@pytest.mark.slow
def test_generate_on_onnxruntime_prints_what_sample_prints(exported, specc_cmd, capsys):
    from specdsl.commands.generate import generate_command, sample_command
    run, folder, report = exported
    assert "encoder graph" in report and "decoding graph with the KV cache of 2 self-attention layers" in report
    assert "validation loss" in report  # int8 scored on the run's own task: its validation strings
    capsys.readouterr()
    for prompt in ("hello", "abcdefghij", "zq"):
        sample_command(str(run), prompt, 20, 0.0, None, 0, "shift")
        sampled = capsys.readouterr().out
        assert len(sampled) > 1
        for graph in ("rev.onnx", "rev.decode.onnx", "rev.encode.onnx"):  # any graph of the export finds the others
            generate_command(str(folder / graph), prompt, 20, 0.0, None, 0, "shift")
            assert capsys.readouterr().out == sampled
    generated = _cli(specc_cmd, "generate", folder / "rev.onnx", "--prompt", "hello", "--temperature", 0,
                     "--max-new-tokens", 20)
    sample_command(str(run), "hello", 20, 0.0, None, 0, "shift")
    assert generated.returncode == 0 and generated.stdout == capsys.readouterr().out
    long = _cli(specc_cmd, "generate", folder / "rev.onnx", "--prompt", "a" * 17)
    assert long.returncode == 2 and "source takes at most 16" in long.stderr


@pytest.mark.slow
def test_the_int8_export_generates_with_its_own_three_graphs(exported, specc_cmd):
    """--quantize int8 writes an int8 encoder graph and decoding graph beside OUT.int8.onnx (without the encoder
    graph, generate on the int8 file was an error), and the shared embedding and head are one int8 table."""
    run, folder, report = exported
    assert "rev.int8.encode.onnx: its encoder graph" in report and "rev.int8.decode.onnx: its decoding" in report
    fp32 = _cli(specc_cmd, "generate", folder / "rev.onnx", "--prompt", "hello", "--temperature", 0)
    for graph in ("rev.int8.onnx", "rev.int8.encode.onnx", "rev.int8.decode.onnx"):
        int8 = _cli(specc_cmd, "generate", folder / graph, "--prompt", "hello", "--temperature", 0)
        assert int8.returncode == 0 and len(int8.stdout.strip()) >= len(fp32.stdout.strip()) - 2, int8.stderr
    inspected = _cli(specc_cmd, "inspect", folder / "rev.int8.onnx").stdout
    declared = re.search(r"specc.params: (\d+)", inspected).group(1)
    assert f"parameters in the file: {int(declared):,} (the spec says {int(declared):,})" in inspected


@pytest.mark.slow
def test_translator_equals_translate_and_inspect_shows_each_graph(exported, specc_cmd):
    """The translator, greedy and sampled with top-k, against PyTorch's translate without a cache (the reference
    the cache is held to); inspect counts each graph's part of the weights."""
    from specdsl.backends.onnx_translate import open_generator
    from specdsl.train.sample import load_run, translate
    run, folder, _ = exported
    module, tokenizer, _ = load_run(run)
    translator = open_generator(folder / "rev.onnx")
    for word in ("python", "onnx", "abcdefghij"):
        ids = tokenizer.encode(word)
        ours = list(translate(module, ids, tokenizer.bos_id, tokenizer.eos_id, 20, 0.0, cache=False,
                              vocab=tokenizer.vocab_size))
        assert list(translator.translate(ids, 20, temperature=0)) == ours
        assert len(list(translator.translate(ids, 3, temperature=0))) <= 3
    sampled = list(translator.translate(tokenizer.encode("spam"), 16, temperature=1.0, top_k=5, seed=1))
    assert sampled == list(translator.translate(tokenizer.encode("spam"), 16, temperature=1.0, top_k=5, seed=1))
    assert tokenizer.bos_id not in sampled and tokenizer.eos_id not in sampled
    total = specdsl.load(REVERSE, overrides={"d": 32, "heads": 2}).analysis.total
    for graph, role, said in (("rev.onnx", "full", f"(the spec says {total:,})"),
                              ("rev.encode.onnx", "encode", f"(the encoder graph's part of the spec's {total:,})"),
                              ("rev.decode.onnx", "decode", f"(the decoding graph's part of the spec's {total:,})")):
        shown = _cli(specc_cmd, "inspect", folder / graph)
        assert shown.returncode == 0 and said in shown.stdout and f"specc.graph: {role}" in shown.stdout


def _set_metadata(path, key, value):
    import onnx
    proto = onnx.load(str(path))
    for entry in proto.metadata_props:
        if entry.key == key:
            entry.value = value
    onnx.save(proto, str(path))


@pytest.mark.slow
def test_graphs_that_do_not_belong_together_are_clear_errors(exported, specc_cmd, tmp_path):
    _, folder, _ = exported

    def generate(path):
        r = _cli(specc_cmd, "generate", path, "--prompt", "hello", "--temperature", 0)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        return r.stderr

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(folder / "rev.decode.onnx", alone / "rev.decode.onnx")
    assert "no encoder graph beside" in generate(alone / "rev.decode.onnx")
    shutil.copy(folder / "rev.onnx", alone / "rev.onnx")
    assert "no encoder graph beside" in generate(alone / "rev.onnx")
    # an encoder graph of another export (its export id differs) beside this decoding graph
    shutil.copy(folder / "rev.encode.onnx", alone / "rev.encode.onnx")
    _set_metadata(alone / "rev.encode.onnx", "specc.export_id", "0" * 32)
    message = generate(alone / "rev.decode.onnx")
    assert "does not belong to" in message and "another export" in message and "rev.encode.onnx" in message
    assert "does not belong to" in generate(alone / "rev.onnx")
    # a decoding graph under the encoder graph's name; and the graphs swapped
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    shutil.copy(folder / "rev.decode.onnx", swapped / "rev.decode.onnx")
    shutil.copy(folder / "rev.decode.onnx", swapped / "rev.encode.onnx")
    assert "is not an encoder graph" in generate(swapped / "rev.decode.onnx")
    shutil.copy(folder / "rev.encode.onnx", swapped / "rev.decode.onnx")
    assert "is the encoder graph of an export, but its name does not end in '.encode.onnx'" in \
        generate(swapped / "rev.decode.onnx")
    # a renamed decoding graph: its encoder graph cannot be found
    renamed = tmp_path / "renamed.onnx"
    shutil.copy(folder / "rev.decode.onnx", renamed)
    assert "its name does not end in '.decode.onnx'" in generate(renamed)
    # a contract that does not describe the graphs
    lied = tmp_path / "lied"
    shutil.copytree(folder, lied)
    data = json.loads(next(e.value for e in __import__("onnx").load(str(lied / "rev.decode.onnx")).metadata_props
                           if e.key == "specc.contract"))
    data["memory_cache"] = [[3, 16]] * 2
    _set_metadata(lied / "rev.decode.onnx", "specc.contract", json.dumps(data))
    assert "does not describe" in generate(lied / "rev.decode.onnx")


@pytest.mark.slow
def test_a_mismatch_in_the_encoder_graph_leaves_no_file(tmp_path, monkeypatch):
    """The full graph passed its check, the encoder graph fails its own: none of the three files is left."""
    from specdsl.backends import onnx_export, onnx_graph, onnx_seq2seq
    compare = onnx_seq2seq._compare_encoder

    def off(*args):  # the encoder graph's outputs, as if one were off by more than its tolerance
        return [{**c, "max_abs_diff": c["tolerance"] + 1} for c in compare(*args)]
    monkeypatch.setattr(onnx_seq2seq, "_compare_encoder", off)
    with pytest.raises(onnx_graph.ExportError, match="the encoder graph and PyTorch differ"):
        onnx_export.export(specdsl.load(REVERSE, overrides={"d": 32, "heads": 2}), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []
