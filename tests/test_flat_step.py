"""The traced one-token decoding step (specdsl/backends/flat_step.py) against the eager module tree it replaces: the
same logits bit for bit on every causal model of the zoo and the quirks, as Python and compiled by TorchScript, a
fallback where fx cannot trace or TorchScript cannot compile, and a program cache that follows the module tree (a
module replaced), the weights (loaded in place or assigned) and the model's lifetime."""

import gc
import warnings
import weakref

import pytest
import torch
from test_hf_logits_parity import CASES, perturb
from test_quirks import DECODE

import specdsl
from conftest import SPECS
from specdsl.backends import flat_step as step_module
from specdsl.backends.flat_step import FlatStep, flat_step
from specdsl.backends.torch_backend import Decoder
from specdsl.backends.torch_modules import StaticDecodeState
from specdsl.contract import contract


@pytest.fixture(autouse=True)
def compile_at_the_third_step(monkeypatch):
    """Every generation of `_both` runs its first steps as Python, then compiled: both held to the eager tree."""
    monkeypatch.setattr(step_module, "SCRIPT_AFTER_STEPS", 3)


def _load(spec, sizes):
    return (specdsl.load(SPECS / spec, overrides=sizes) if spec.endswith(".spec")
            else specdsl.loads(spec, name="inline.spec", overrides=sizes))


CAUSAL = [(spec, sizes) for spec, _, sizes, _ in CASES
          if contract(_load(spec, sizes).model).causal] + list(DECODE)
IDS = [s if s.endswith(".spec") else s.split("model ")[1].split()[0] for s, _ in CAUSAL]


def _model(spec, sizes, seed=0):
    compiled = _load(spec, sizes)
    torch.manual_seed(seed)
    module = specdsl.to_torch(compiled).eval()
    perturb(module, seed=seed + 1)
    return module, compiled.model.hyperparameters["vocab"]


def _eager_step(decoder, tokens, cache):
    """Decoder.step as it ran before the flat step: the module tree, with the same state."""
    logits = decoder._run(tokens, StaticDecodeState(cache.buffers, cache.length, single_query=tokens.shape[1] == 1))
    cache.length += tokens.shape[1]
    return logits


def _both(module, vocab, steps=6, batch=2):
    """Logits of a prompt of 5 then `steps` single tokens, by Decoder.step and by the eager tree; the flat step."""
    decoder = Decoder(module)
    tokens = torch.randint(0, vocab, (batch, 5 + steps), generator=torch.Generator().manual_seed(3))
    flat_cache, eager_cache = decoder.static_cache(5 + steps, batch), decoder.static_cache(5 + steps, batch)
    with torch.inference_mode():
        flat = [decoder.step(tokens[:, :5], flat_cache)]
        eager = [_eager_step(decoder, tokens[:, :5], eager_cache)]
        for t in range(5, 5 + steps):
            flat.append(decoder.step(tokens[:, t:t + 1], flat_cache))
            eager.append(_eager_step(decoder, tokens[:, t:t + 1], eager_cache))
    return torch.cat(flat, 1), torch.cat(eager, 1), decoder._flat


@pytest.mark.parametrize("spec,sizes", CAUSAL, ids=IDS)
def test_the_flat_step_gives_the_eager_logits_bit_for_bit(spec, sizes):
    module, vocab = _model(spec, sizes)
    flat_logits, eager, program = _both(module, vocab)
    assert isinstance(program, FlatStep)  # traced: not the eager fallback
    # compiled after its third step, but where a mixture of experts routes tokens in Python
    assert (program.program.scripted is not None) == (not module._routed)
    assert torch.equal(flat_logits, eager)


def test_a_step_is_compiled_once_it_has_run_its_steps_in_the_process():
    """The count is the program's, not a generation's: two short generations add up."""
    module, vocab = _model("gpt2.spec", dict(vocab=40, ctx=16, d=32, layers=2, heads=4))
    first = _both(module, vocab, steps=2)[2]
    assert first.program.steps == 2 and first.program.scripted is None
    flat_logits, eager, second = _both(module, vocab, steps=2)
    assert second.program is first.program and second.program.scripted is not None
    assert torch.equal(flat_logits, eager)


def test_a_step_torchscript_refuses_runs_as_python_and_is_not_offered_again(monkeypatch):
    module, vocab = _model("gpt2.spec", dict(vocab=40, ctx=16, d=32, layers=2, heads=4))
    offered = []

    def refuse(program):
        offered.append(program)
        raise RuntimeError("not compilable")

    monkeypatch.setattr(torch.jit, "script", refuse)
    for _ in range(2):
        flat_logits, eager, program = _both(module, vocab)
        assert torch.equal(flat_logits, eager) and program.program.scripted is None
    assert len(offered) == 1


def test_a_step_whose_compilation_was_interrupted_is_compiled_at_the_next(monkeypatch):
    module, vocab = _model("gpt2.spec", dict(vocab=40, ctx=16, d=32, layers=2, heads=4))
    script, calls = torch.jit.script, []

    def interrupted_once(obj, *args, **kwargs):
        if isinstance(obj, torch.fx.GraphModule):  # not what torch.jit.script compiles on its way (kwarg _rcb)
            calls.append(obj)
            if len(calls) == 1:
                raise KeyboardInterrupt
        return script(obj, *args, **kwargs)

    monkeypatch.setattr(torch.jit, "script", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        _both(module, vocab)
    flat_logits, eager, program = _both(module, vocab)
    assert len(calls) == 2 and program.program.scripted is not None
    assert torch.equal(flat_logits, eager)


def test_compiling_a_step_shows_no_warning():
    """torch.jit.script warns that TorchScript is deprecated: a user of `specc sample` has nothing to do about it."""
    module, vocab = _model("gpt2.spec", dict(vocab=40, ctx=16, d=32, layers=2, heads=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        program = _both(module, vocab)[2]
    assert program.program.scripted is not None
    assert [str(w.message) for w in caught] == []


def test_a_mixture_of_experts_is_called_as_a_module_inside_the_flat_step():
    """An MoE layer sets its load-balancing loss as it runs: the trace calls it, never inlines it."""
    module, vocab = _model("mixtral.spec", CASES[8][2])
    flat, eager, program = _both(module, vocab)
    assert torch.equal(flat, eager)
    assert "leaf0" in program.program.graph_module.code


def test_a_model_fx_cannot_trace_decodes_eagerly():
    module, vocab = _model("gpt2.spec", dict(vocab=40, ctx=16, d=32, layers=2, heads=4))
    ln = module.ln_f

    class ValueDependent(torch.nn.Module):  # Python control flow on a tensor's value: fx cannot follow it
        def __init__(self):
            super().__init__()
            self.ln = ln

        def forward(self, x):
            return self.ln(x) if x.sum() > -1e30 else x

    module.ln_f = ValueDependent()
    flat, eager, program = _both(module, vocab)
    assert program is None
    assert torch.equal(flat, eager)


def test_the_program_is_traced_once_per_module_tree():
    module, vocab = _model("gpt2.spec", dict(vocab=40, ctx=16, d=32, layers=2, heads=4))
    first = _both(module, vocab)[2]
    second = _both(module, vocab)[2]
    assert second.program is first.program  # a second generation does not trace again
    module.h.get_submodule("1").mlp.fc = torch.nn.Linear(32, 128)  # a module replaced: traced again
    flat, eager, third = _both(module, vocab)
    assert third.program is not first.program
    assert torch.equal(flat, eager)
    module.train()
    decoder = Decoder(module)
    assert flat_step(module, decoder._stateful, [], len(decoder.slots)) is None  # a trace is of eval mode only


def test_the_flat_step_reads_the_weights_of_the_moment():
    """Weights loaded in place, or a parameter assigned anew, show in the next generation's steps."""
    module, vocab = _model("gpt2.spec", dict(vocab=40, ctx=16, d=32, layers=2, heads=4))
    before = _both(module, vocab)[0]
    other, _ = _model("gpt2.spec", dict(vocab=40, ctx=16, d=32, layers=2, heads=4), seed=7)
    module.load_state_dict(other.state_dict())
    flat, eager, _ = _both(module, vocab)
    assert torch.equal(flat, eager) and not torch.equal(flat, before)
    module.ln_f.weight = torch.nn.Parameter(torch.full((32,), 0.5))
    flat, eager, _ = _both(module, vocab)
    assert torch.equal(flat, eager)


def test_the_program_cache_does_not_keep_a_model_or_a_replaced_module_alive():
    module, vocab = _model("gpt2.spec", dict(vocab=40, ctx=16, d=32, layers=2, heads=4))
    _both(module, vocab)
    replaced = weakref.ref(module.ln_f)
    module.ln_f = torch.nn.LayerNorm(32)
    gc.collect()
    assert replaced() is None
    ref = weakref.ref(module)
    del module
    gc.collect()
    assert ref() is None


def test_lora_adapters_decode_with_their_weights_and_after_a_merge():
    """LoRA's adapters are forward hooks with parameters of their own (backends/lora.py): adding them, training them
    (here: set off zero) and merging them each change what a step computes, and the flat step follows."""
    from specdsl.backends.lora import add_adapters, merge
    sizes = dict(vocab=90, ctx=16, d=64, layers=2, heads=4, kv_heads=2, ffn=100)
    compiled = specdsl.load(SPECS / "llama.spec", overrides=sizes,
                            lora={"rank": 4, "alpha": 8, "targets": "*.attn.q, *.attn.v, *.mlp.down"})
    module, vocab = _model("llama.spec", sizes)
    plain, _, program = _both(module, vocab)
    base_inputs = len(program.params)
    add_adapters(module, compiled.model.lora)
    module.eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.5)
    flat, eager, program = _both(module, vocab)
    assert torch.equal(flat, eager) and not torch.equal(flat, plain)
    assert len(program.params) == base_inputs + 2 * 3 * 2  # the hooks traced in: A and B of 3 targets, 2 layers
    merge(module)
    flat, eager, program = _both(module, vocab)
    assert torch.equal(flat, eager)
    assert len(program.params) == base_inputs


def test_a_model_of_more_modules_than_the_trace_allows_decodes_eagerly(monkeypatch):
    module, vocab = _model("gpt2.spec", dict(vocab=40, ctx=16, d=32, layers=2, heads=4))
    monkeypatch.setattr(step_module, "MAX_TRACED_MODULES", len(list(module.modules())) - 1)
    flat_logits, eager, program = _both(module, vocab)
    assert program is None and torch.equal(flat_logits, eager)
