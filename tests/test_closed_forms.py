"""Counts at random sizes against the independent closed forms of ../shared/reference/param-counts.md, so that
`--set` works the same everywhere and the zoo is right beyond its default sizes."""

from hypothesis import given, settings
from hypothesis import strategies as st

import specdsl
from conftest import SPECS

sizes = st.fixed_dictionaries({
    "vocab": st.integers(2, 5000), "heads": st.integers(1, 8), "head_dim": st.integers(1, 16),
    "layers": st.integers(1, 6), "ctx": st.integers(1, 300), "ffn": st.integers(1, 300),
})
FAST = settings(max_examples=40, deadline=None, derandomize=True)


@FAST
@given(sizes)
def test_gpt2_closed_form(s):
    d = s["heads"] * s["head_dim"]
    V, P, L = s["vocab"], s["ctx"], s["layers"]
    a = specdsl.load(SPECS / "gpt2.spec", overrides={"vocab": V, "ctx": P, "d": d, "layers": L,
                                                     "heads": s["heads"]}).analysis
    assert a.total == V * d + P * d + L * (12 * d * d + 13 * d) + 2 * d


@FAST
@given(sizes)
def test_gpt1_closed_form(s):
    d = s["heads"] * s["head_dim"]
    V, P, L = s["vocab"], s["ctx"], s["layers"]
    a = specdsl.load(SPECS / "gpt1.spec", overrides={"vocab": V, "ctx": P, "d": d, "layers": L,
                                                     "heads": s["heads"]}).analysis
    assert a.total == V * d + P * d + L * (12 * d * d + 13 * d)


@FAST
@given(sizes, st.integers(1, 4))
def test_llama_closed_form(s, group):
    kv, hd = s["heads"], s["head_dim"] * 2
    h = kv * group
    d = h * hd
    V, L, I = s["vocab"], s["layers"], s["ffn"]
    a = specdsl.load(SPECS / "llama.spec", overrides={"vocab": V, "d": d, "layers": L, "heads": h, "kv_heads": kv,
                                                      "ffn": I}).analysis
    assert a.total == V * d + L * (d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * I + 2 * d) + d + V * d


@FAST
@given(sizes, st.integers(1, 8), st.integers(1, 8))
def test_mixtral_closed_form(s, experts, k):
    k = min(k, experts)
    kv, hd = s["heads"], s["head_dim"] * 2
    h, d = kv * 2, kv * 2 * hd
    V, L, I, E = s["vocab"], s["layers"], s["ffn"], experts
    a = specdsl.load(SPECS / "mixtral.spec", overrides={"vocab": V, "d": d, "layers": L, "heads": h, "kv_heads": kv,
                                                        "ffn": I, "experts": E, "top_k": k}).analysis
    attn = d * h * hd + 2 * d * kv * hd + h * hd * d
    assert a.total == V * d + L * (attn + E * 3 * d * I + E * d + 2 * d) + d + V * d
    assert a.active == a.total - L * (E - k) * 3 * d * I


@FAST
@given(sizes, st.integers(1, 4))
def test_bert_closed_forms(s, types):
    d = s["heads"] * s["head_dim"]
    V, P, L, I = s["vocab"], s["ctx"], s["layers"], s["ffn"]
    over = {"vocab": V, "ctx": P, "d": d, "layers": L, "heads": s["heads"], "ffn": I, "types": types}
    embeddings = (V + P + types) * d + 2 * d
    layer = 4 * d * d + 2 * d * I + 9 * d + I
    base = specdsl.load(SPECS / "bert.spec", overrides=over).analysis
    assert base.total == embeddings + L * layer + d * d + d
    mlm = specdsl.load(SPECS / "bert.spec", preset="mlm", overrides=over).analysis
    assert mlm.total == embeddings + L * layer + d * d + 3 * d + V
