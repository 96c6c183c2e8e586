"""Hugging Face checkpoint folders as save_pretrained writes them (config.json, shards and their index), loaded with
load_weights(module, folder): the family from config.json, the architecture it states checked against the spec.
Tiny models built from config objects, every parameter perturbed; float32 logits within 1e-5. And every way a folder
can be wrong is refused by name: a missing or truncated shard, no config.json, an unknown model_type, Gemma's
weights in a LLaMA spec and the reverse (same names and shapes, different outputs)."""

import json

import pytest
from test_hf_logits_parity import gemma, gpt2, llama, neox, olmo2, opt, perturb, phi, qwen2
from test_quirks import QWEN3, qwen3

import specdsl
from conftest import SPECS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
torch.set_num_threads(1)

from specdsl.backends.weights import ArchitectureError, StructureError, WeightsError  # noqa: E402

TOL = 1e-5

CASES = [
    ("gpt2.spec", dict(vocab=97, ctx=16, d=48, layers=2, heads=4), gpt2, "gpt2", "gpt2"),
    ("llama.spec", dict(vocab=90, ctx=16, d=64, layers=2, heads=4, kv_heads=2, ffn=100, eps=1e-5,
                        rope_theta=10000.0), llama, "llama", "llama"),
    ("gemma.spec", dict(vocab=97, ctx=16, d=48, layers=2, heads=4, kv_heads=1, head_dim=16, ffn=70, eps=1e-6,
                        rope_theta=10000.0), gemma, "llama", "gemma"),
    ("qwen2.spec", dict(vocab=93, ctx=16, d=56, layers=2, heads=7, kv_heads=1, ffn=90, eps=1e-6, rope_theta=1e6),
     qwen2, "llama", "qwen2"),
    ("opt.spec", dict(vocab=87, ctx=16, d=48, layers=2, heads=4, ffn=70), opt, "opt", "opt"),
    ("phi.spec", dict(vocab=89, ctx=16, d=40, layers=2, heads=4, ffn=77, rotary_dims=4, rope_theta=10000.0), phi,
     "phi", "phi"),
    ("gpt-neox.spec", dict(vocab=95, ctx=16, d=64, layers=2, heads=4, ffn=100, rotary_dims=4, rope_theta=10000.0),
     neox, "gpt-neox", "gpt_neox"),
    ("olmo2.spec", dict(vocab=90, ctx=16, d=48, layers=2, heads=6, kv_heads=2, ffn=70, eps=1e-6, rope_theta=5e5),
     olmo2, "olmo2", "olmo2"),
]


def save(model, folder, shard="20KB"):
    model.save_pretrained(folder, max_shard_size=shard)
    return folder


def module_for(spec, sizes):
    return specdsl.to_torch(specdsl.load(SPECS / spec, overrides=sizes)).eval()


def shards(folder):
    return sorted(folder.glob("model-*-of-*.safetensors"))


@pytest.mark.parametrize("spec,sizes,build,family,model_type", CASES, ids=[c[4] for c in CASES])
def test_sharded_folder_logits_equal_hf(tmp_path, spec, sizes, build, family, model_type):
    torch.manual_seed(0)
    reference = build(sizes).eval()
    perturb(reference)
    save(reference, tmp_path)
    assert (tmp_path / "model.safetensors.index.json").exists() and len(shards(tmp_path)) >= 2
    module = module_for(spec, sizes)
    report = specdsl.load_weights(module, tmp_path)  # no family=: config.json says
    assert (report["family"], report["model_type"]) == (family, model_type)
    assert "attention heads" in report["checked"]
    tokens = torch.randint(0, sizes["vocab"], (2, 11))
    with torch.no_grad():
        assert (module(tokens) - reference(tokens).logits).abs().max() <= TOL


LLAMA = dict(vocab=50, ctx=16, d=32, layers=2, heads=4, kv_heads=2, ffn=40, eps=1e-6, rope_theta=10000.0)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = llama(LLAMA).eval()
    perturb(model)
    return save(model, tmp_path_factory.mktemp("llama")), model


def copy_folder(src, dst):
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_only_the_shards_the_index_lists_are_read(tmp_path, llama_folder):
    folder = copy_folder(llama_folder[0], tmp_path)
    torch.save({"junk": torch.zeros(1)}, folder / "stray.bin")
    from safetensors.torch import save_file
    save_file({"model.junk": torch.zeros(2)}, str(folder / "stray.safetensors"))
    report = specdsl.load_weights(module_for("llama.spec", LLAMA), folder)
    assert report["unexpected"] == []


def test_a_missing_shard_is_named(tmp_path, llama_folder):
    folder = copy_folder(llama_folder[0], tmp_path)
    gone = shards(folder)[1]
    gone.unlink()
    with pytest.raises(WeightsError, match=gone.name):
        specdsl.load_weights(module_for("llama.spec", LLAMA), folder)


def test_a_truncated_shard_is_named(tmp_path, llama_folder):
    folder = copy_folder(llama_folder[0], tmp_path)
    cut = shards(folder)[0]
    cut.write_bytes(cut.read_bytes()[:200])
    with pytest.raises(WeightsError, match=f"{cut.name}: damaged"):
        specdsl.load_weights(module_for("llama.spec", LLAMA), folder)


def test_no_config_needs_family(tmp_path, llama_folder):
    folder = copy_folder(llama_folder[0], tmp_path)
    (folder / "config.json").unlink()
    module = module_for("llama.spec", LLAMA)
    with pytest.raises(WeightsError, match="no config.json") as e:
        specdsl.load_weights(module, folder)
    assert "family=" in str(e.value) and "gemma" in str(e.value)  # the families and their model_types listed
    report = specdsl.load_weights(module, folder, family="llama")
    assert (report["family"], report["model_type"]) == ("llama", "llama")
    tokens = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert (module(tokens) - llama_folder[1](tokens).logits).abs().max() <= TOL


def test_an_unknown_model_type_names_the_closest_families(tmp_path, llama_folder):
    folder = copy_folder(llama_folder[0], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llama_fancy"
    (folder / "config.json").write_text(json.dumps(config))
    module = module_for("llama.spec", LLAMA)
    with pytest.raises(WeightsError, match="no family reads model_type 'llama_fancy'") as e:
        specdsl.load_weights(module, folder)
    assert "by the weights' keys: llama (0 of" in str(e.value)
    # The user's word: read as LLaMA, its config checked as LLaMA's.
    assert specdsl.load_weights(module, folder, family="llama")["model_type"] == "llama"


def test_family_from_architectures_when_no_model_type(tmp_path, llama_folder):
    folder = copy_folder(llama_folder[0], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["model_type"]
    (folder / "config.json").write_text(json.dumps(config))
    report = specdsl.load_weights(module_for("llama.spec", LLAMA), folder)
    assert report["model_type"] == "llama"


def test_family_disagreeing_with_config_is_refused(llama_folder):
    with pytest.raises(WeightsError, match="family='gpt2' but the checkpoint's config.json says model_type 'llama'"):
        specdsl.load_weights(module_for("llama.spec", LLAMA), llama_folder[0], family="gpt2")
    with pytest.raises(WeightsError, match="disagree"):
        specdsl.load_weights(module_for("llama.spec", LLAMA), llama_folder[0], naming="hf", family="llama")


def test_pytorch_model_bin(tmp_path, llama_folder):
    model = llama_folder[1]
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    module = module_for("llama.spec", LLAMA)
    assert specdsl.load_weights(module, tmp_path)["model_type"] == "llama"
    tokens = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert (module(tokens) - model(tokens).logits).abs().max() <= TOL


# Gemma and LLaMA of the same sizes: the same names and shapes (tied heads, head_dim = d // heads).
SAME = dict(vocab=50, ctx=16, d=32, layers=2, heads=4, kv_heads=2, head_dim=8, ffn=40, eps=1e-6, rope_theta=10000.0)


def test_gemma_weights_into_a_llama_spec_are_refused(tmp_path):
    torch.manual_seed(0)
    folder = save(gemma(SAME), tmp_path)
    module = module_for("llama.spec", {**{k: v for k, v in SAME.items() if k != "head_dim"}, "tied": True})
    with pytest.raises(ArchitectureError) as e:
        specdsl.load_weights(module, folder)
    text = str(e.value)
    assert "model_type 'gemma'" in text
    assert "RMSNorm weight offset" in text and "unit_offset = false" in text and "unit_offset = true" in text
    assert "embeddings scaled by sqrt(d)" in text and "Scale(sqrt(d))" in text
    assert "MLP activation" in text and 'act = "gelu_tanh"' in text
    # Names alone fit: the old guess would have loaded it.
    assert specdsl.load_weights(module, gemma(SAME).state_dict(), family="hf")["family"] == "llama"
    # A state dict said to be Gemma's is checked too (the facts its model_type implies).
    with pytest.raises(ArchitectureError, match="unit_offset"):
        specdsl.load_weights(module, gemma(SAME).state_dict(), family="gemma")


def test_llama_weights_into_a_gemma_spec_are_refused(tmp_path):
    torch.manual_seed(0)
    folder = save(llama({**SAME, "tied": True}), tmp_path)
    module = module_for("gemma.spec", SAME)
    with pytest.raises(ArchitectureError) as e:
        specdsl.load_weights(module, folder)
    text = str(e.value)
    assert "model_type 'llama'" in text and "unit_offset = true" in text and "specs/llama.spec" in text
    assert "a constant scale" in text and "scale_0" in text


# OLMo 2 against LLaMA and Qwen3 of the same sizes: the same attention and MLP names; OLMo 2's q/k norms are over
# the whole projection (Qwen3's over each head, LLaMA has none), its norms after each branch.
QK = dict(vocab=50, ctx=16, d=32, layers=2, heads=4, kv_heads=2, ffn=40, eps=1e-6, rope_theta=1e6)


def qwen3_module():
    return specdsl.to_torch(specdsl.loads(QWEN3, name="qwen3.spec", overrides={
        k: v for k, v in {**QK, "head_dim": 8}.items() if k != "ctx"})).eval()


@pytest.fixture(scope="module")
def olmo2_folder(tmp_path_factory):
    torch.manual_seed(0)
    return save(olmo2(QK), tmp_path_factory.mktemp("olmo2"))


def test_olmo2_weights_into_a_qwen3_or_llama_spec_are_refused(olmo2_folder):
    with pytest.raises(ArchitectureError) as e:
        specdsl.load_weights(qwen3_module(), olmo2_folder)
    text = str(e.value)
    assert "model_type 'olmo2'" in text and "q/k RMSNorm scope" in text
    assert 'qk_norm_scope = "head"' in text and 'Fix: qk_norm_scope = "full"' in text
    with pytest.raises(ArchitectureError) as e:
        specdsl.load_weights(module_for("llama.spec", QK), olmo2_folder)
    assert "q/k RMSNorm (Qwen3, OLMo 2)" in str(e.value) and "Fix: qk_norm = true" in str(e.value)


def test_qwen3_or_llama_weights_into_an_olmo2_spec_are_refused(tmp_path):
    torch.manual_seed(0)
    module = module_for("olmo2.spec", QK)
    with pytest.raises(ArchitectureError) as e:
        specdsl.load_weights(module, save(qwen3({**QK, "head_dim": 8}), tmp_path / "qwen3"))
    text = str(e.value)
    assert "model_type 'qwen3'" in text and 'qk_norm_scope = "full"' in text and 'Fix: qk_norm_scope = "head"' in text
    with pytest.raises(ArchitectureError) as e:
        specdsl.load_weights(module, save(llama(QK), tmp_path / "llama"))
    assert "model_type 'llama'" in str(e.value) and "Fix: qk_norm = false" in str(e.value)


# OLMo 2's attention in a pre-norm block: every fact the config states agrees; only the norms' places differ.
PRE_NORM = """
block pre_norm(d: int, heads: int, kv_heads: int, ffn: int) {
    input x
    x = x + (x -> ln_1: RMSNorm(d, eps = 1e-6)
              -> attn: Attention(d, heads, kv_heads = kv_heads, rope = true, rope_theta = 1000000.0, qk_norm = true,
                                 qk_norm_scope = "full", qk_norm_eps = 1e-6))
    x = x + (x -> ln_2: RMSNorm(d, eps = 1e-6) -> mlp: GatedMLP(d, ffn))
    return x
}
model pre {
    input tokens: int[batch, seq <= 16]
    x = tokens -> embed: Embedding(50, 32) -> layers: repeat 2 { pre_norm(32, 4, 2, 40) }
    return x -> norm: RMSNorm(32, eps = 1e-6) -> lm_head: Linear(32, 50, bias = false)
}
"""


def test_olmo2_names_say_where_its_norms_are(olmo2_folder):
    """The checks cannot see where a block puts its norms; the structure does: a pre-norm block has a norm where
    OLMo 2's block starts with attention (hf_structure: the spot named by the spec's own parameter)."""
    module = specdsl.to_torch(specdsl.loads(PRE_NORM, name="pre.spec"))
    with pytest.raises(WeightsError) as e:
        specdsl.load_weights(module, olmo2_folder)
    text = str(e.value)
    assert not isinstance(e.value, ArchitectureError)
    assert isinstance(e.value, StructureError) and "layers.{i}.ln_1.weight (RMSNorm" in text
    assert "the family expects Attention" in text and "post_attn_norm: RMSNorm" in text


def test_heads_that_shapes_cannot_see_are_refused(tmp_path):
    """GPT-2 with 4 heads into a spec of 8: every shape fits, the attention differs."""
    torch.manual_seed(0)
    sizes = dict(vocab=50, ctx=16, d=32, layers=1, heads=4)
    folder = save(gpt2(sizes), tmp_path, shard="1GB")
    with pytest.raises(ArchitectureError, match=r"attention heads: .* says 4; .* heads = 8 .* --set heads=4"):
        specdsl.load_weights(module_for("gpt2.spec", {**sizes, "heads": 8}), folder)


def test_config_argument_checks_a_state_dict(llama_folder):
    model = llama_folder[1]
    module = module_for("gemma.spec", {**LLAMA, "head_dim": 8})
    with pytest.raises(ArchitectureError, match="kv_heads|unit_offset"):
        specdsl.load_weights(module, model.state_dict(), config=model.config)


def _all_parity_cases():
    import test_hf_logits_parity as parity
    import test_quirks as quirks
    for spec, preset, sizes, build in parity.CASES:
        yield pytest.param(lambda s=spec, p=preset, o=sizes: specdsl.load(SPECS / s, preset=p, overrides=o), sizes,
                           build, id=f"{spec.split('.')[0]}-{preset or 'default'}-{sizes['d']}")
    for text, sizes, build, _ in quirks.CASES:
        yield pytest.param(lambda t=text, o=sizes, b=build: specdsl.loads(t, name=f"{b.__name__}.spec", overrides=o),
                           sizes, build, id=f"{build.__name__}-{sizes['d']}")


@pytest.mark.parametrize("compile_spec,sizes,build", list(_all_parity_cases()))
def test_every_parity_case_passes_its_config_checks(compile_spec, sizes, build):
    """No false refusal: each family's checks accept the configs whose logits the parity tests match."""
    torch.manual_seed(0)
    reference = build(sizes)
    module = specdsl.to_torch(compile_spec())
    report = specdsl.load_weights(module, reference.state_dict(), config=reference.config)
    assert report["model_type"] == reference.config.model_type and report["checked"]
