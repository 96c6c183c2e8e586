"""The compiled torch module is exactly the model the analysis describes: names, counts, tying, sharing, MoE
dispatch, memory refusal; and the ejected standalone file builds the same module."""

import importlib.util

import pytest

import specdsl
from conftest import SPECS, ZOO
from specdsl.ir import unrolled_names

torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

torch.set_num_threads(1)


def presets(path):
    return [None] + [p.name for p in specdsl.parse.parse_file(path).presets]


ZOO_PRESETS = [(p, pre) for p in ZOO for pre in presets(p)]


@pytest.mark.parametrize("path,preset", ZOO_PRESETS, ids=[f"{p.stem}-{pre or 'default'}" for p, pre in ZOO_PRESETS])
def test_every_zoo_model_builds_with_the_ir_names_and_count(path, preset):
    c = specdsl.load(path, preset=preset)
    module = specdsl.to_torch(c, device="meta")  # never allocate 175B parameters
    assert sum(p.numel() for p in module.parameters()) == c.analysis.total
    assert [n for n, _ in module.named_parameters()] == unrolled_names(c.model)


def small(spec, **over):
    return specdsl.load(SPECS / spec, overrides=over)


GPT = dict(vocab=50, ctx=16, d=32, layers=2, heads=4)


def test_tied_head_is_one_tensor_and_gets_gradients_from_both_uses():
    module = specdsl.to_torch(small("gpt2.spec", **GPT))
    assert module.lm_head.weight is module.wte.weight
    tokens = torch.randint(0, 10, (2, 8))  # ids 10..49 never enter through the embedding
    module(tokens).logsumexp(-1).sum().backward()
    grad = module.wte.weight.grad
    assert grad[10:].abs().sum() > 0  # from the head
    assert grad[:10].abs().sum() > 0  # from the embedding (and the head)


def test_shared_repeat_is_one_module_applied_n_times_with_summed_gradients():
    over = dict(vocab=40, ctx=8, emb=8, d=16, layers=3, heads=2, ffn=20)
    shared = specdsl.to_torch(small("albert.spec", **over)).eval()
    text = (SPECS / "albert.spec").read_text().replace("repeat layers shared", "repeat layers")
    unshared = specdsl.to_torch(specdsl.loads(text, overrides=over, name=str(SPECS / "albert.spec"))).eval()
    state = shared.state_dict()
    unrolled = {}
    for name in unshared.state_dict():
        source = name.replace(f"layer.{name.split('.')[1]}.", "layer.", 1) if name.startswith("layer.") else name
        unrolled[name] = state[source]
    unshared.load_state_dict(unrolled)
    tokens = torch.randint(0, 40, (2, 6))
    out_shared, out_unshared = shared(tokens)[0], unshared(tokens)[0]
    assert torch.allclose(out_shared, out_unshared, atol=1e-6)
    out_shared.sum().backward()
    out_unshared.sum().backward()
    name = "attn.qkv.weight"
    total = sum(unshared.get_parameter(f"layer.{i}.{name}").grad for i in range(3))
    assert torch.allclose(shared.get_parameter(f"layer.{name}").grad, total, atol=1e-5)


@pytest.mark.parametrize("spec, over", [("nanogpt-shakespeare.spec", dict(vocab=20, ctx=8, d=16, layers=2, heads=2)),
                                        ("albert.spec", dict(vocab=20, ctx=8, emb=8, d=16, layers=2, heads=2, ffn=20))])
def test_dropout_is_not_called_in_eval_mode_and_still_drops_in_training(monkeypatch, spec, over):
    """Dropout declares identity_in_eval: in eval mode the graph passes its input on without the call; in training
    it still drops. ALBERT's shared repeat body is not a registered module, so it stays in training mode and calls
    its Dropouts (which are in eval mode: the identity), the same result."""
    module = specdsl.to_torch(small(spec, **over, dropout=0.5))
    tokens = torch.randint(0, 20, (2, 8))

    def logits():
        out = module(tokens)
        return out[0] if isinstance(out, tuple) else out

    module.train()
    torch.manual_seed(0)
    assert not torch.equal(logits(), logits())  # two draws of the mask
    module.eval()
    expected = logits()
    called = []
    forward = torch.nn.Dropout.forward
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: called.append(self) or forward(self, x))
    assert torch.equal(logits(), expected)
    shared_body = {id(m) for name, m in module.named_modules()
                   if isinstance(m, torch.nn.Dropout) and name.startswith("layer.")} if spec == "albert.spec" else set()
    assert {id(m) for m in called} == shared_body and (spec != "albert.spec" or shared_body)


def test_moe_compute_grows_with_top_k_not_with_experts():
    def counted(experts, top_k):
        c = small("mixtral.spec", vocab=30, ctx=8, d=16, layers=1, heads=2, kv_heads=1, ffn=24, experts=experts,
                  top_k=top_k)
        torch.manual_seed(0)
        module = specdsl.to_torch(c).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.randint(0, 30, (1, 8)))
        return counter.get_total_flops()

    expert = 8 * 3 * 2 * 16 * 24  # tokens x (gate, up, down) x 2 FLOPs x d x ffn
    router = 8 * 2 * 16  # tokens x 2 FLOPs x d, per expert
    assert counted(4, 2) - counted(4, 1) == expert
    assert counted(8, 1) - counted(4, 1) == 4 * router


def test_moe_load_balancing_loss_is_available_to_training():
    module = specdsl.to_torch(small("mixtral.spec", vocab=30, ctx=8, d=16, layers=2, heads=2, kv_heads=1, ffn=24,
                                    experts=4, top_k=2))
    module(torch.randint(0, 30, (2, 8)))
    aux = module.aux_loss()
    assert aux.ndim == 0 and aux.item() >= 1.0 - 1e-6  # E * sum f_e P_e is at least 1, 1 when balanced
    aux.backward()
    assert module.get_parameter("layers.0.moe.router.weight").grad is not None


def test_refuses_a_model_that_does_not_fit_before_allocating():
    with pytest.raises(specdsl.SpecError, match="GiB"):
        specdsl.to_torch(specdsl.load(SPECS / "gpt3.spec"))


def test_optional_input_defaults_to_its_value():
    module = specdsl.to_torch(small("bert.spec", vocab=50, ctx=16, d=32, layers=1, heads=4, ffn=40)).eval()
    tokens = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        a = module(tokens)[0]
        b = module(tokens, torch.zeros_like(tokens))[0]
        c = module(tokens, torch.ones_like(tokens))[0]
    assert torch.equal(a, b) and not torch.allclose(a, c)


EJECT = [
    ("gpt2.spec", None, GPT),
    ("gpt1.spec", None, dict(vocab=50, ctx=16, d=24, layers=2, heads=3)),
    ("llama.spec", None, dict(vocab=60, ctx=16, d=32, layers=2, heads=4, kv_heads=2, ffn=40)),
    ("llama.spec", None, dict(vocab=60, ctx=16, d=32, layers=1, heads=4, kv_heads=1, ffn=40, tied=True)),
    ("mistral.spec", None, dict(vocab=60, ctx=16, d=32, layers=2, heads=4, kv_heads=2, ffn=40, window=4)),
    ("mixtral.spec", None, dict(vocab=60, ctx=16, d=32, layers=2, heads=4, kv_heads=2, ffn=40, experts=4, top_k=2)),
    ("bert.spec", None, dict(vocab=60, ctx=16, d=32, layers=2, heads=4, ffn=40)),
    ("bert.spec", "mlm", dict(vocab=60, ctx=16, d=32, layers=2, heads=4, ffn=40)),
    ("albert.spec", None, dict(vocab=60, ctx=16, emb=8, d=32, layers=3, heads=4, ffn=40)),
    ("gemma.spec", None, dict(vocab=60, ctx=16, d=32, layers=2, heads=4, kv_heads=1, head_dim=10, ffn=40)),
    ("qwen2.spec", None, dict(vocab=60, ctx=16, d=32, layers=2, heads=4, kv_heads=2, ffn=40)),
    ("phi.spec", None, dict(vocab=60, ctx=16, d=32, layers=2, heads=4, ffn=40, rotary_dims=4)),
    ("gpt-neox.spec", "pythia-160m", dict(vocab=60, ctx=16, d=32, layers=2, heads=4, ffn=40)),
    ("opt.spec", None, dict(vocab=60, ctx=16, d=32, layers=2, heads=4, ffn=40)),
    ("nanogpt-shakespeare.spec", None, {}),
    ("lenet5.spec", None, {}),
    ("mlp.spec", None, {}),
]


@pytest.mark.parametrize("spec,preset,over", EJECT, ids=[f"{s.split('.')[0]}-{p or 'default'}-{i}"
                                                          for i, (s, p, over) in enumerate(EJECT)])
def test_ejected_file_builds_the_same_module(tmp_path, spec, preset, over):
    c = specdsl.load(SPECS / spec, preset=preset, overrides=over)
    source = specdsl.emit_torch(c)
    assert "specdsl" not in source and "import specc" not in source
    out = tmp_path / "ejected.py"
    out.write_text(source)
    loaded = importlib.util.spec_from_file_location("ejected", out)
    ejected_module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(ejected_module)
    root_class = ejected_module.Model
    torch.manual_seed(0)
    compiled = specdsl.to_torch(c).eval()
    ejected = root_class().eval()
    assert [n for n, _ in ejected.named_parameters()] == [n for n, _ in compiled.named_parameters()]
    ejected.load_state_dict(compiled.state_dict())
    inputs = c.model.inputs[0]
    if inputs.type.dtype == "int":
        x = torch.randint(0, c.model.hyperparameters["vocab"], (2, 9))
    else:
        x = torch.randn(2, *[d for d in inputs.type.shape[1:]])
    with torch.no_grad():
        ours, theirs = compiled(x), ejected(x)
    for a, b in zip(*(o if isinstance(o, tuple) else (o,) for o in (ours, theirs))):
        assert torch.equal(a, b)


def test_emit_torch_from_the_cli(specc_cmd, tmp_path):
    import subprocess
    out = tmp_path / "model.py"
    r = subprocess.run(specc_cmd + ["compile", str(SPECS / "nanogpt-shakespeare.spec"), "--emit-torch", str(out),
                                    "--json"], capture_output=True, text=True)
    assert r.returncode == 0 and out.exists()
    assert "class Nanogpt(nn.Module)" in out.read_text()


