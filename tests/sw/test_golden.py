"""The golden integer model: shapes, integer types, and accuracy on sentences it was not tuned on."""

import numpy as np
import pytest

from celosia.sw import golden, numerics as nx

# None of these is in the calibration set or the dev set.
UNSEEN = [
    "Ok",
    "Fine, thanks.",
    "A cyclist waits at a red traffic light.",
    "The violinist tuned her instrument before the rehearsal began.",
    "Can I pay by card?",
    "Rust and Go are both popular for systems programming.",
    "During the long winter nights, the villagers gathered around the fire to share stories, "
    "mend their nets and plan the spring planting, while the children fell asleep on sheepskins.",
]


@pytest.mark.parametrize("text", UNSEEN)
def test_golden_embedding_close_to_float(minilm, int_model, text):
    ids, _ = minilm.tokenizer.encode(text)
    emb = golden.embedding(minilm, int_model, ids)
    ref, _, _ = minilm.encode(text)
    assert emb.shape == (384,)
    assert abs(np.linalg.norm(emb) - 1) < 1e-5
    assert float(np.dot(emb, ref)) >= 0.99


def test_golden_hidden_state_is_int16_and_deterministic(minilm, int_model):
    ids, _ = minilm.tokenizer.encode("Deterministic integers, please.")
    e = golden.embed_int32(minilm, int_model, ids)
    h1 = golden.forward(int_model, e)
    h2 = golden.forward(int_model, e.copy())
    assert h1.shape == (len(ids), 384)
    assert h1.min() >= nx.INT16.lo and h1.max() <= nx.INT16.hi
    assert np.array_equal(h1, h2)


def test_golden_handles_shortest_and_longest_inputs(minilm, int_model):
    long = ("Every spring the old orchard behind the school fills with blossom, and the pupils "
            "spend an afternoon counting bees for the county survey. ") * 12
    for text in ("", long):
        ids, _ = minilm.tokenizer.encode(text)
        emb = golden.embedding(minilm, int_model, ids)
        ref, _, _ = minilm.encode(text)
        assert float(np.dot(emb, ref)) >= 0.98


def test_layer_trace_has_every_intermediate(minilm, int_model):
    ids, _ = minilm.tokenizer.encode("trace me")
    h = golden._layernorm(int_model, "emb.ln", golden.embed_int32(minilm, int_model, ids))
    trace = {}
    golden.encoder_layer(int_model, 0, h, trace)
    assert set(trace) == {"qkv", "ctx", "attn", "h1", "inter", "gelu", "out", "y"}
    assert trace["gelu"].min() >= 0 and trace["gelu"].max() <= 255
    assert trace["qkv"].shape == (len(ids), 3 * 384)


def test_float64_matmuls_give_the_int64_paths_integers(minilm, int_model):
    """The golden model's BLAS path is bit-identical to its int64 path on a whole sentence,
    every intermediate of a layer included."""
    ids, _ = minilm.tokenizer.encode(UNSEEN[-1])
    e = golden.embed_int32(minilm, int_model, ids)
    h = golden._layernorm(int_model, "emb.ln", e)
    fast, slow = {}, {}
    golden.encoder_layer(int_model, 0, h, fast)
    with nx.int64_matmuls():
        golden.encoder_layer(int_model, 0, h, slow)
        want = golden.forward(int_model, e)
    assert all(np.array_equal(fast[k], slow[k]) for k in slow)
    assert np.array_equal(golden.forward(int_model, e), want)


def test_batched_forward_gives_each_sentences_integers(minilm, int_model):
    """Rows of several sentences stacked through the dense layers, attention per sentence:
    the same integers as one sentence at a time (and not the integers of one long sentence)."""
    texts = ["Hi", "A cat sat on the mat.", "Rust and Go are both popular for systems programming."]
    es = [golden.embed_int32(minilm, int_model, minilm.tokenizer.encode(t)[0]) for t in texts]
    batch = golden.forward_batch(int_model, es)
    for e, h in zip(es, batch):
        assert np.array_equal(h, golden.forward(int_model, e))
    joined = golden.forward(int_model, np.concatenate(es))
    assert not np.array_equal(joined[:len(es[0])], batch[0])
