"""FLOPs per token equal what torch's FlopCounterMode counts when the reference implementation runs one full-context
sequence (eager attention and eager experts, so every matmul is one FlopCounterMode sees)."""

import pytest

import specdsl
from conftest import SPECS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402


def counted_flops(model, T: int, vocab: int) -> int:
    model.eval()
    tokens = torch.randint(0, vocab, (1, T))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(tokens)
    return counter.get_total_flops()


def test_gpt2_forward_flops_equal_flop_counter():
    torch.manual_seed(0)
    V, T, d, L, h = 101, 16, 32, 2, 4
    config = transformers.GPT2Config(vocab_size=V, n_positions=T, n_embd=d, n_layer=L, n_head=h,
                                     attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(config)
    a = specdsl.load(SPECS / "gpt2.spec", overrides={"vocab": V, "ctx": T, "d": d, "layers": L, "heads": h}).analysis
    assert a.context == T
    assert a.forward_flops * T == counted_flops(model, T, V)


def test_llama_gqa_forward_flops_equal_flop_counter():
    torch.manual_seed(0)
    V, T, d, L, h, kv, I = 67, 12, 48, 2, 6, 2, 70
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=d, num_hidden_layers=L, num_attention_heads=h,
                                      num_key_value_heads=kv, intermediate_size=I, max_position_embeddings=T,
                                      attn_implementation="eager")
    model = transformers.LlamaForCausalLM(config)
    over = {"vocab": V, "ctx": T, "d": d, "layers": L, "heads": h, "kv_heads": kv, "ffn": I}
    a = specdsl.load(SPECS / "llama.spec", overrides=over).analysis
    assert a.forward_flops * T == counted_flops(model, T, V)


def test_mixtral_counts_top_k_experts_per_token():
    torch.manual_seed(0)
    V, T, d, L, h, kv, I, E, k = 53, 10, 32, 1, 4, 2, 24, 4, 2
    config = transformers.MixtralConfig(vocab_size=V, hidden_size=d, num_hidden_layers=L, num_attention_heads=h,
                                        num_key_value_heads=kv, intermediate_size=I, num_local_experts=E,
                                        num_experts_per_tok=k, max_position_embeddings=T,
                                        attn_implementation="eager", experts_implementation="eager")
    model = transformers.MixtralForCausalLM(config)
    over = {"vocab": V, "ctx": T, "d": d, "layers": L, "heads": h, "kv_heads": kv, "ffn": I, "experts": E,
            "top_k": k}
    a = specdsl.load(SPECS / "mixtral.spec", overrides=over).analysis
    assert a.forward_flops * T == counted_flops(model, T, V)
