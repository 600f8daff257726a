"""The vector engine on the Amaranth simulator against sw/isa_sim.py: the same VECTOR instruction
on the same memory image must leave the same bytes in memory and the same status."""

from __future__ import annotations

import random

import numpy as np
import pytest

from celosia.hdl import isa
from celosia.hdl.isa import VEC_PARAM_DTYPE, ErrorCode, MachineConfig, VecOp
from celosia.hdl.isa import VecOp
from celosia.hdl.params import OUT_BYTES, OutFormat, Sizing
from celosia.hdl.vector_engine import VectorEngine
from celosia.sim.pysim import MemoryModel
from celosia.sw import numerics as nx
from celosia.sw.isa_sim import IsaMachine, IsaStop

MEM = 1 << 16


def isa_reference(ins: isa.Instruction, mem: np.ndarray, lanes: int, port_bytes: int,
                  decoder_ops=False):
    """Execute one VECTOR on a copy of ``mem`` (the whole memory is the window)."""
    mach = IsaMachine(MachineConfig(lanes, port_bytes), len(mem), decoder_ops=decoder_ops)
    mach.mem[:] = mem
    mach.base, mach.size, mach.pc = 0, len(mem), 0
    try:
        mach._vector(ins)
        code = ErrorCode.OK
    except IsaStop as stop:
        code = stop.code
    return mach.mem.copy(), code


def run_engine(engine: VectorEngine, instrs, mem: np.ndarray, *, seed=0, stall=0.0, latency=3):
    """Run VECTOR bodies back to back on the engine; returns (memory, codes, cycles)."""
    from amaranth.sim import Simulator

    data = mem.copy()
    rng = random.Random(seed)
    model = MemoryModel(engine.mem, data, engine.port_bytes, rng=rng, latency=latency,
                        req_stall=stall, resp_gap=stall, wr_stall=stall)
    fields = isa.leaf_fields(isa.vector_layout())
    codes, cycles = [], []

    async def bench(ctx):
        for ins in instrs:
            word = isa.pack_fields(fields, ins.fields)
            ctx.set(engine.cmd.payload.as_value(), word)
            ctx.set(engine.cmd.valid, 1)
            await ctx.tick().until(engine.cmd.ready)
            ctx.set(engine.cmd.valid, 0)
            ctx.set(engine.done.ready, 1)
            n = 0
            while True:
                _, _, valid, code = await ctx.tick().sample(engine.done.valid, engine.done.payload)
                n += 1
                if valid:
                    break
                assert n < 200_000, "engine hung"
            ctx.set(engine.done.ready, 0)
            codes.append(ErrorCode(int(code)))
            cycles.append(n)

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.add_testbench(model.testbench, background=True)
    sim.run()
    return data, codes, cycles


# --- instruction and memory builders -----------------------------------------------------------

DT = {OutFormat.INT8: "i1", OutFormat.UINT8: "u1", OutFormat.INT16: "<i2", OutFormat.INT32: "<i4"}


class Image:
    """A memory image with a bump allocator (W-aligned buffers)."""

    def __init__(self, W, rng, size=MEM):
        self.mem = np.zeros(size, dtype=np.uint8)
        self.top = W
        self.W = W
        self.rng = rng

    def alloc(self, nbytes):
        addr = self.top
        self.top = -(-(self.top + nbytes + self.W * int(self.rng.integers(0, 2))) // self.W) * self.W
        assert self.top <= len(self.mem), "image too small"
        return addr

    def matrix(self, values, fmt: OutFormat, pad=0):
        rows, cols = values.shape
        eb = OUT_BYTES[fmt]
        stride = -(-(cols * eb) // self.W) * self.W + pad * self.W
        addr = self.alloc(rows * stride)
        view = np.ndarray((rows, cols), dtype=DT[fmt], buffer=self.mem, offset=addr,
                          strides=(stride, eb))
        view[...] = values
        return addr, stride

    def fill_random(self, addr, nbytes):
        self.mem[addr:addr + nbytes] = self.rng.integers(0, 256, size=nbytes)

    def records(self, mult, shift, bias):
        n = len(mult)
        addr = self.alloc(n * 16)
        rec = np.frombuffer(self.mem, dtype=VEC_PARAM_DTYPE, count=n, offset=addr)
        rec["mult"], rec["shift"], rec["bias"] = mult, shift, bias
        return addr


def _src_values(rng, shape, fmt, kind):
    r = {OutFormat.INT8: nx.INT8, OutFormat.UINT8: nx.UINT8, OutFormat.INT16: nx.INT16,
         OutFormat.INT32: nx.INT32}[fmt]
    if kind == "extremes":
        return rng.choice([r.lo, r.hi, r.lo + 1, r.hi - 1, 0, min(r.hi, 1)], size=shape)
    if kind == "equal":
        return np.broadcast_to(rng.integers(r.lo, r.hi, endpoint=True, size=(shape[0], 1)), shape)
    bits = rng.integers(1, r.bits + 1, size=shape)
    v = rng.integers(r.lo, r.hi, endpoint=True, size=shape)
    return np.clip(v >> (r.bits - bits), r.lo, r.hi)


def make_vector(op: VecOp, rows, cols, W, rng, *, src_fmt=None, dst_fmt=None, residual=None,
                kind="random", pad=0, causal=None, mem_size=MEM):
    """An image and a VECTOR instruction of ``op`` with random valid fields."""
    img = Image(W, rng, mem_size)
    src_fmt = OutFormat.INT32 if src_fmt is None else src_fmt
    if dst_fmt is None:
        dst_fmt = {VecOp.SOFTMAX: OutFormat.UINT8, VecOp.LAYERNORM: OutFormat.INT16,
                   VecOp.GELU: OutFormat.UINT8, VecOp.REQUANT: OutFormat.INT8,
                   VecOp.RESIDUAL: OutFormat.INT32, VecOp.REQUANT_ROWS: OutFormat.INT8,
                   VecOp.GELU_ROWS: OutFormat.UINT8}[op]
    x = _src_values(rng, (rows, cols), src_fmt, kind)
    src_addr, src_stride = img.matrix(x, src_fmt, pad)
    f = dict(op=op, rows=rows, cols=cols, src_addr=src_addr, src_stride=src_stride,
             src_fmt=src_fmt, dst_fmt=dst_fmt)
    db = OUT_BYTES[dst_fmt]
    dst_stride = -(-(cols * db) // W) * W + pad * W
    f["dst_addr"] = img.alloc(rows * dst_stride)
    f["dst_stride"] = dst_stride
    img.fill_random(f["dst_addr"], rows * dst_stride)      # the gaps must survive
    if residual or op == VecOp.RESIDUAL:
        r = _src_values(rng, (rows, cols), OutFormat.INT16, kind)
        f["res_addr"], f["res_stride"] = img.matrix(r, OutFormat.INT16, pad)
        f["res_shift"] = int(rng.integers(0, 17))
        if op != VecOp.RESIDUAL:
            f["add_residual"] = 1
    if isa.vec_uses_params(op):
        if op == VecOp.LAYERNORM:
            mult = rng.integers(-(1 << 19), 1 << 19, size=cols)
            bias = rng.integers(-(1 << 39), 1 << 39, size=cols) >> int(rng.integers(0, 30))
            shift = rng.integers(0, 256, size=cols)            # unused by LayerNorm
            f["shift"] = int(rng.integers(8, 30))
        else:
            lo = nx.ROW_EXP_MAX if op in (VecOp.REQUANT_ROWS, VecOp.GELU_ROWS) else 0
            mult = rng.integers(0, 1 << nx.MULT_BITS, size=cols)
            shift = rng.integers(max(lo, 10), 40, size=cols)
            bias = rng.integers(-(1 << 62), 1 << 62, size=cols)  # unused
        f["p_addr"] = img.records(mult, shift, bias)
    if op == VecOp.SOFTMAX:
        scale = nx.Dyadic.from_real(float(rng.uniform(0.002, 0.2)) / np.sqrt(32) * np.log2(np.e))
        f["mult"], f["shift"] = int(scale.multiplier), int(scale.shift)
        if causal is not None:
            f["causal"], f["causal_offset"] = 1, causal
    if op == VecOp.GELU:
        f["mult"], f["shift"] = int(rng.integers(1, 1 << nx.MULT_BITS)), int(rng.integers(10, 40))
        f["zero_point"] = int(rng.integers(0, 20))
    if op == VecOp.REQUANT:
        f["zero_point"] = int(rng.integers(-20, 20))
    if isa.vec_uses_rows_exponent(op):
        f["e_addr"] = img.alloc(rows)
        img.fill_random(f["e_addr"], -(-rows // W) * W)
    return isa.vector(**f), img.mem


LANES, W = 4, 8


@pytest.fixture(scope="module")
def engine():
    return VectorEngine(LANES, W, max_cols=64)


def check(engine, cases, **kw):
    for ins, mem in cases:
        want, code = isa_reference(ins, mem, engine.lanes, engine.port_bytes,
                                   Sizing(decoder_ops=engine.decoder_ops).decoder_op_set())
        got, codes, _ = run_engine(engine, [ins], mem, **kw)
        assert codes == [code], (str(ins), codes, code)
        diff = np.nonzero(got != want)[0]
        assert diff.size == 0, f"{ins}: {diff.size} bytes differ, first at {diff[:8]}"


def check_batch(engine, cases, **kw):
    """Every case's instruction run back to back on one memory image per case."""
    check(engine, cases, **kw)


@pytest.mark.parametrize("op", sorted(isa.UNIT_OPS))
def test_op_formats_and_shapes(engine, op):
    """Each opcode over every source format, random destination formats, row lengths below, at
    and above a beat, padded strides, with and without the residual pre-add, with stalls."""
    rng = np.random.default_rng(int(op) + 100)
    cases = []
    for k, sf in enumerate(OutFormat):
        cols = (1, 3, 2 * LANES + 1, 17)[k]
        cases.append(make_vector(op, int(rng.integers(1, 4)), cols, W, rng, src_fmt=sf,
                                 dst_fmt=OutFormat(int(rng.integers(0, 4))),
                                 residual=bool(k % 2), pad=k % 2,
                                 kind=("random", "extremes", "equal", "random")[k]))
    check(engine, cases, seed=int(op), stall=0.3)


def test_compiled_model_instructions(engine):
    """The VECTOR instructions the compiler emits, at small sizes: REQUANT_ROWS int16 -> int8,
    SOFTMAX int32 -> uint8 (causal too), LAYERNORM int32 + residual -> int16, GELU_ROWS
    int16 -> uint8, each with its row exponents."""
    rng = np.random.default_rng(7)
    cases = [
        make_vector(VecOp.REQUANT_ROWS, 5, 24, W, rng, src_fmt=OutFormat.INT16, dst_fmt=OutFormat.INT8),
        make_vector(VecOp.SOFTMAX, 6, 6, W, rng, src_fmt=OutFormat.INT32, dst_fmt=OutFormat.UINT8),
        make_vector(VecOp.SOFTMAX, 6, 6, W, rng, causal=0),
        make_vector(VecOp.LAYERNORM, 3, 24, W, rng, src_fmt=OutFormat.INT32,
                    dst_fmt=OutFormat.INT16, residual=True),
        make_vector(VecOp.GELU_ROWS, 4, 40, W, rng, src_fmt=OutFormat.INT16, dst_fmt=OutFormat.UINT8),
    ]
    check(engine, cases, seed=3, stall=0.2)


def test_adversarial_rows(engine):
    """Extreme and constant rows, one column, masked rows, many rows (exponent beats)."""
    rng = np.random.default_rng(8)
    cases = [
        make_vector(VecOp.SOFTMAX, 3, 9, W, rng, kind="extremes", causal=-1),   # row 0 masked
        make_vector(VecOp.LAYERNORM, 2, 1, W, rng, kind="extremes", residual=True),
        make_vector(VecOp.LAYERNORM, 2, 7, W, rng, kind="equal"),
        make_vector(VecOp.REQUANT_ROWS, 19, 3, W, rng, kind="extremes"),      # > W exponents
        make_vector(VecOp.GELU_ROWS, 2, 5, W, rng, kind="extremes", src_fmt=OutFormat.INT32,
                    dst_fmt=OutFormat.INT32),
        make_vector(VecOp.RESIDUAL, 2, 6, W, rng, kind="extremes", dst_fmt=OutFormat.INT8),
    ]
    check(engine, cases, seed=4, stall=0.1)


def test_commands_back_to_back(engine):
    """Several instructions on one image, in one run: each sees the previous one's results."""
    rng = np.random.default_rng(9)
    img_ins, mem = make_vector(VecOp.REQUANT_ROWS, 4, 12, W, rng, src_fmt=OutFormat.INT16)
    f = dict(img_ins.fields)
    # LayerNorm of the same source into a second buffer; then GELU_ROWS reading the first.
    ins2 = isa.vector(**{**f, "op": VecOp.RESIDUAL, "res_addr": f["src_addr"],
                         "res_stride": f["src_stride"], "res_shift": 3,
                         "dst_fmt": OutFormat.INT16, "dst_addr": f["dst_addr"] + 4 * f["dst_stride"] * 4,
                         "dst_stride": f["dst_stride"] * 4, "e_addr": 0})
    ins3 = isa.vector(**{**f, "op": VecOp.GELU_ROWS, "src_addr": ins2.dst_addr,
                         "src_stride": ins2.dst_stride, "dst_fmt": OutFormat.UINT8})
    ref = mem
    for ins in (img_ins, ins2, ins3):
        ref, code = isa_reference(ins, ref, LANES, W)
        assert code == ErrorCode.OK
    got, codes, _ = run_engine(engine, [img_ins, ins2, ins3], mem, seed=5, stall=0.2)
    assert codes == [ErrorCode.OK] * 3
    np.testing.assert_array_equal(got, ref)


def test_bad_instructions(engine):
    """Every check isa_sim makes (other than the window): the same code, memory untouched."""
    rng = np.random.default_rng(10)
    base, mem = make_vector(VecOp.LAYERNORM, 3, 6, W, rng, residual=True)
    f = dict(base.fields)
    bad = [
        dict(op=7), dict(op=14),
        # SOFTMAX_DITHER is in every build: SOFTMAX's checks.
        dict(op=VecOp.SOFTMAX_DITHER, e_addr=3), dict(op=VecOp.SOFTMAX_DITHER, shift=63),
        dict(rows=0), dict(cols=0), dict(cols=isa.VEC_MAX_COLS + 1),
        dict(src_stride=8), dict(dst_stride=0), dict(res_stride=W),
        dict(src_addr=f["src_addr"] + 1), dict(dst_stride=f["dst_stride"] + 2),
        dict(res_addr=f["res_addr"] + 4), dict(p_addr=f["p_addr"] + 1),
        dict(shift=48), dict(res_shift=17),
        dict(op=VecOp.SOFTMAX, e_addr=3), dict(op=VecOp.SOFTMAX, shift=63),
        dict(op=VecOp.GELU, shift=50), dict(op=VecOp.REQUANT, shift=63, add_residual=0),
    ]
    # The bad fields run back to back in one simulation (the engine takes each next command
    # after refusing one); each gets isa's code and memory stays as it was.
    bad = [isa.vector(**{**f, **b}) for b in bad]
    want_codes = []
    for ins in bad:
        want, code = isa_reference(ins, mem, LANES, W)
        assert code != ErrorCode.OK and np.array_equal(want, mem), str(ins)
        want_codes.append(code)
    got, codes, _ = run_engine(engine, bad, mem)
    assert codes == want_codes
    np.testing.assert_array_equal(got, mem)
    # Parameter records out of range (read from memory): BAD_PARAM, nothing written.
    cases = []
    for op, rec in ((VecOp.LAYERNORM, {"mult": 1 << 20}), (VecOp.LAYERNORM, {"bias": -(1 << 40)}),
                    (VecOp.REQUANT, {"mult": -1}), (VecOp.REQUANT, {"shift": 48}),
                    (VecOp.GELU, {"mult": 1 << 15}), (VecOp.REQUANT_ROWS, {"shift": 7}),
                    (VecOp.GELU_ROWS, {"shift": 200})):
        ins, m2 = make_vector(op, 2, 9, W, rng)
        recs = np.frombuffer(m2, dtype=VEC_PARAM_DTYPE, count=9, offset=ins.p_addr)
        recs[8][list(rec)[0]] = list(rec.values())[0]       # the last column only
        cases.append((ins, m2))
    for ins, m in cases:
        want, code = isa_reference(ins, m, LANES, W)
        assert code != ErrorCode.OK, str(ins)
        assert np.array_equal(want, m)
        got, codes, _ = run_engine(engine, [ins], m)
        assert codes == [code], (str(ins), codes, code)
        np.testing.assert_array_equal(got, m)
    # A good instruction after a bad one still runs.
    check(engine, [(base, mem)])


@pytest.mark.parametrize("lanes,port_bytes", [(4, 4), (4, 16), (2, 32), (8, 16)])
def test_other_ports(lanes, port_bytes):
    """Port widths below a record (4), equal to one (16) and holding several (32), N = 8."""
    engine = VectorEngine(lanes, port_bytes, max_cols=48)
    rng = np.random.default_rng(lanes * 100 + port_bytes)
    cases = [make_vector(op, 2, int(rng.integers(1, 40)), port_bytes, rng,
                         src_fmt=OutFormat(int(rng.integers(0, 4))),
                         dst_fmt=OutFormat(int(rng.integers(0, 4))), residual=bool(rng.integers(0, 2)))
             for op in (VecOp.SOFTMAX, VecOp.LAYERNORM, VecOp.REQUANT_ROWS, VecOp.GELU_ROWS)]
    check(engine, cases, seed=port_bytes, stall=0.2)


def test_rows_of_512_and_1536():
    """The compiled model's long rows: LayerNorm-sized rows of 384, a GELU_ROWS row of 1536."""
    engine = VectorEngine(8, 16)
    rng = np.random.default_rng(11)
    cases = [make_vector(VecOp.LAYERNORM, 2, 384, 16, rng, residual=True),
             make_vector(VecOp.GELU_ROWS, 1, 1536, 16, rng, src_fmt=OutFormat.INT16)]
    check(engine, cases)


@pytest.mark.slow
def test_bert_base_rows():
    """BERT-base's rows on the default 4-lane engine (rows up to isa.VEC_MAX_COLS = 4096):
    GELU_ROWS int32 -> uint8 over the FFN width 3072, LayerNorm with the residual over the
    hidden width 768, a LayerNorm row of 4096. Slow (about 50 s); the default run keeps the
    unit's rows of these widths (test_vector.py) and the cocotb benches of 768, 3072 and 4096."""
    engine = VectorEngine(4, 8)
    assert engine.max_cols == isa.VEC_MAX_COLS >= 4096
    rng = np.random.default_rng(17)
    cases = [make_vector(VecOp.GELU_ROWS, 1, 3072, 8, rng, src_fmt=OutFormat.INT32,
                         mem_size=1 << 17),
             make_vector(VecOp.LAYERNORM, 2, 768, 8, rng, residual=True, mem_size=1 << 16),
             make_vector(VecOp.LAYERNORM, 1, 4096, 8, rng, mem_size=1 << 17)]
    check(engine, cases)


def test_throughput_int16_to_int8():
    """No stalls, memory latency 3: REQUANT_ROWS int16 -> int8 rows of 128 at N = 8, W = 16
    stream at one unit beat (8 elements) a cycle once the pipe is full, after the parameter
    records (16 bytes a column: 128 beats at W = 16)."""
    engine = VectorEngine(8, 16, max_cols=128)
    rng = np.random.default_rng(12)
    ins, mem = make_vector(VecOp.REQUANT_ROWS, 8, 128, 16, rng, src_fmt=OutFormat.INT16)
    want, _ = isa_reference(ins, mem, 8, 16)
    got, codes, cycles = run_engine(engine, [ins], mem, latency=3)
    np.testing.assert_array_equal(got, want)
    param_beats, beats, row_beats = 128 * 16 // 16, 8 * 128 // 8, 128 // 8
    # The pipeline's fill: memory latency, the port and beat stages, the unit's three stages
    # (4 + 14 + 14 slices, its FIFOs and output queue) and the output packer.
    fill = 21 + 4 + 14 + 14
    assert cycles[0] <= param_beats + beats + 2 * row_beats + fill, cycles


def test_rejects_wide_ports():
    with pytest.raises(ValueError):
        VectorEngine(2, 64)


# --- the decoder operations of a Sizing(decoder_ops=True) build ---------------------------------

def make_decoder(op: VecOp, rows, cols, W, rng, *, src_fmt=None, dst_fmt=None,
                 residual=False, kind="random", res_kind=None, pad=0, res_shift=None, img=None,
                 causal=None, eps=None, gamma=None):
    """An image and a VECTOR instruction of a decoder op the RTL runs (RESIDUAL32: an int32
    residual; WIDE_SPLIT: int16 in, two int8 planes out, an optional int16 residual pre-add;
    RMSNORM: random gamma, shift and epsilon unless given; the softmaxes: ``kind`` "dominant"
    is a flat row behind one key with a fixed scale, the tail below half a probability step);
    its buffers are allocated in ``img`` when given."""
    smax = (VecOp.SOFTMAX_WIDE, VecOp.SOFTMAX_DITHER)
    img = Image(W, rng) if img is None else img
    silu = op == VecOp.SILU_GATE
    if op == VecOp.WIDE_SPLIT:
        src_fmt = OutFormat.INT16 if src_fmt is None else src_fmt
        dst_fmt = OutFormat.INT8 if dst_fmt is None else dst_fmt
    elif silu:
        src_fmt = OutFormat.INT16 if src_fmt is None else src_fmt
        dst_fmt = OutFormat.INT8 if dst_fmt is None else dst_fmt
    elif op == VecOp.WIDE_LO:
        src_fmt = OutFormat.INT32 if src_fmt is None else src_fmt
        dst_fmt = OutFormat.INT32 if dst_fmt is None else dst_fmt
    elif op == VecOp.ROTARY:
        src_fmt = OutFormat.INT16 if src_fmt is None else src_fmt
        dst_fmt = src_fmt if dst_fmt is None else dst_fmt
    elif op in smax:
        src_fmt = OutFormat.INT32 if src_fmt is None else src_fmt
        wide = op == VecOp.SOFTMAX_WIDE
        dst_fmt = (OutFormat.INT16 if wide else OutFormat.UINT8) if dst_fmt is None else dst_fmt
    else:
        src_fmt = OutFormat.INT32 if src_fmt is None else src_fmt
        dst_fmt = OutFormat.INT32 if dst_fmt is None else dst_fmt
    if kind == "dominant":
        x = rng.integers(-20, 20, size=(rows, cols))
        x[np.arange(rows), rng.integers(0, cols, size=rows)] = 60000
    else:
        x = _src_values(rng, (rows, cols), src_fmt, kind)
    src_addr, src_stride = img.matrix(x, src_fmt, pad)
    f = dict(op=op, rows=rows, cols=cols, src_addr=src_addr, src_stride=src_stride,
             src_fmt=src_fmt, dst_fmt=dst_fmt)
    out_rows = 2 * rows if op == VecOp.WIDE_SPLIT else rows
    dst_stride = -(-(cols * OUT_BYTES[dst_fmt]) // W) * W + pad * W
    f["dst_addr"], f["dst_stride"] = img.alloc(out_rows * dst_stride), dst_stride
    img.fill_random(f["dst_addr"], out_rows * dst_stride)      # the gaps must survive
    if op == VecOp.ROTARY:
        # Each row's cos | sin: the real tables at random positions, or the extremes.
        cos, sin = nx.rope_tables(10000.0, cols, 200)
        pos = rng.integers(0, 200, size=rows)
        trig = np.concatenate([cos[pos], sin[pos]], axis=1)
        if kind == "extremes":
            one = 1 << nx.ROPE_TRIG_BITS
            trig = rng.choice([one, -one, 0, one - 1], size=trig.shape)
        f["res_addr"], f["res_stride"] = img.matrix(trig, OutFormat.INT16, pad)
    if silu:
        # up: int16 in memory; with res_shift 0 mostly int8 (beyond it saturated).
        if res_shift is None:
            res_shift = int(rng.choice([0, nx.WIDE_LO_BITS]))
        r = _src_values(rng, (rows, cols), OutFormat.INT16, res_kind or kind)
        if not res_shift and rng.random() < 0.7:
            r = r >> 8
        f["res_addr"], f["res_stride"] = img.matrix(r, OutFormat.INT16, pad)
        f["res_shift"] = res_shift
        f["p_addr"] = img.records(rng.integers(0, 1 << nx.MULT_BITS, size=cols),
                                  rng.integers(nx.ROW_EXP_MAX, nx.SHIFT_MAX + 1, size=cols),
                                  rng.integers(-(1 << 40), 1 << 40, size=cols))
        f["e_addr"] = img.alloc(rows)
        img.fill_random(f["e_addr"], -(-rows // W) * W)
    elif op == VecOp.RESIDUAL32 or residual:
        rfmt = OutFormat.INT32 if op == VecOp.RESIDUAL32 else OutFormat.INT16
        r = _src_values(rng, (rows, cols), rfmt, res_kind or kind)
        f["res_addr"], f["res_stride"] = img.matrix(r, rfmt, pad)
        f["res_shift"] = int(rng.integers(0, 17)) if res_shift is None else res_shift
        f["add_residual"] = int(op != VecOp.RESIDUAL32)
    if op in smax:
        scale = nx.Dyadic.from_real(0.05 if kind == "dominant" else
                                    float(rng.uniform(0.002, 0.2)) / np.sqrt(64) * np.log2(np.e))
        f["mult"], f["shift"] = int(scale.multiplier), int(scale.shift)
        if causal is not None:
            f["causal"], f["causal_offset"] = 1, causal
        f["e_addr"] = img.alloc(rows)
        img.fill_random(f["e_addr"], -(-rows // W) * W)
    if op == VecOp.WIDE_LO:
        # The rows' exponents: any byte (the engine clamps them to ROW_EXP_MAX).
        f["e_addr"] = img.alloc(rows)
        e = rng.integers(0, nx.ROW_EXP_MAX + 1, size=rows)
        e[rng.random(rows) < 0.2] = rng.integers(nx.ROW_EXP_MAX + 1, 256)
        img.mem[f["e_addr"]:f["e_addr"] + rows] = e
    if op == VecOp.RMSNORM:
        if gamma is None:
            gamma = rng.integers(-(1 << 20) + 1, 1 << 20, size=cols) >> int(rng.integers(0, 12))
        if eps is None:
            eps = [0, int(rng.integers(0, 1 << 40)), int(rng.integers(0, 1 << 62))][
                int(rng.integers(0, 3))]
        # Only column 0's bias is read (the epsilon); the others are anything.
        bias = rng.integers(-(1 << 63), (1 << 63) - 1, size=cols, dtype=np.int64)
        bias[0] = eps
        f["p_addr"] = img.records(gamma, rng.integers(0, 256, size=cols), bias)
        f["shift"] = int(rng.integers(0, 25))
    return isa.vector(**f), img.mem


@pytest.fixture(scope="module")
def dec_engine():
    return VectorEngine(LANES, W, max_cols=64, decoder_ops=True)


DEC_OPS = sorted(isa.RTL_DECODER_OPS)


def check_one_image(engine, instrs, mem, codes=None, **kw):
    """``instrs`` back to back in one run on one image (one simulation) against isa_sim on
    the RTL's decoder ops; every one must give OK (or its code in ``codes``)."""
    ops = Sizing(decoder_ops=engine.decoder_ops).decoder_op_set()
    ref, want = mem, []
    for ins in instrs:
        ref, code = isa_reference(ins, ref, engine.lanes, engine.port_bytes, ops)
        want.append(code)
    assert want == (codes or [ErrorCode.OK] * len(instrs)), [str(i) for i in instrs]
    got, got_codes, _ = run_engine(engine, instrs, mem, **kw)
    assert got_codes == want
    diff = np.nonzero(got != ref)[0]
    assert diff.size == 0, f"{diff.size} bytes differ, first at {diff[:8]}"


@pytest.mark.parametrize("op", DEC_OPS)
def test_decoder_op_formats_and_shapes(dec_engine, op):
    """RESIDUAL32 and RMSNORM over every source and destination format, WIDE_SPLIT,
    SOFTMAX_WIDE, SOFTMAX_DITHER and RMSNORM with and without the residual pre-add (the
    softmaxes: every source format, causal too); rows
    below, at and above a beat, padded strides, stalls."""
    rng = np.random.default_rng(int(op) + 200)
    img = Image(W, rng)
    instrs = []
    for k in range(4):
        cols = (1, 3, 2 * LANES + 1, 17)[k]
        if op == VecOp.ROTARY:          # a head's width is even
            cols = (2, 4, 2 * LANES + 2, 18)[k]
        if op == VecOp.RESIDUAL32:
            kw = dict(src_fmt=OutFormat(k), dst_fmt=OutFormat(int(rng.integers(0, 4))))
        elif op == VecOp.SOFTMAX_WIDE:
            kw = dict(src_fmt=OutFormat(k), dst_fmt=(OutFormat.INT16, OutFormat.UINT8)[k % 2],
                      residual=bool(k % 2), causal=(None, 0)[k // 2])
        elif op == VecOp.RMSNORM:
            kw = dict(src_fmt=OutFormat(k), dst_fmt=OutFormat(int(rng.integers(0, 4))),
                      residual=bool(k % 2))
        elif op == VecOp.SOFTMAX_DITHER:
            kw = dict(src_fmt=OutFormat(k), dst_fmt=(OutFormat.UINT8, OutFormat.INT8)[k % 2],
                      residual=bool(k % 2), causal=(None, 0)[k // 2])
        elif op == VecOp.SILU_GATE:
            kw = dict(dst_fmt=OutFormat(k), res_shift=(0, nx.WIDE_LO_BITS)[k % 2])
        elif op == VecOp.WIDE_LO:
            kw = dict(src_fmt=OutFormat(k), residual=bool(k % 2))
        elif op == VecOp.ROTARY:
            kw = dict(src_fmt=(OutFormat.INT8, OutFormat.UINT8, OutFormat.INT16, OutFormat.INT16)[k],
                      dst_fmt=OutFormat(int(rng.integers(0, 4))))
        else:
            kw = dict(residual=bool(k % 2))
        instrs.append(make_decoder(op, int(rng.integers(1, 4)), cols, W, rng, pad=k % 2,
                                   kind=("random", "extremes", "equal", "random")[k], img=img,
                                   **kw)[0])
    check_one_image(dec_engine, instrs, img.mem, seed=int(op), stall=0.3)


def test_decoder_op_adversarial_rows(dec_engine):
    """Saturating sums at every residual shift (int32 extremes on both operands, shift 16:
    residuals up to 2**47), one-column rows, one row (WIDE_SPLIT still writes two), many rows,
    a row of 64 (the engine's longest here), int32 sums wrapping into WIDE_SPLIT's bytes."""
    rng = np.random.default_rng(21)
    img = Image(W, rng)
    R32, SPLIT, SMW = VecOp.RESIDUAL32, VecOp.WIDE_SPLIT, VecOp.SOFTMAX_WIDE
    SMD = VecOp.SOFTMAX_DITHER
    cases = [make_decoder(R32, 3, 9, W, rng, kind="extremes", res_shift=s, img=img)
             for s in (0, 1, 15, 16)]
    cases += [
        make_decoder(R32, 2, 5, W, rng, kind="equal", res_kind="extremes",
                     dst_fmt=OutFormat.INT8, img=img),
        make_decoder(R32, 11, 1, W, rng, src_fmt=OutFormat.INT16, dst_fmt=OutFormat.INT16,
                     kind="extremes", img=img),
        make_decoder(R32, 2, 64, W, rng, dst_fmt=OutFormat.UINT8, img=img),
        make_decoder(SPLIT, 1, 1, W, rng, kind="extremes", img=img),
        make_decoder(SPLIT, 1, 7, W, rng, kind="extremes", img=img),
        make_decoder(SPLIT, 13, 3, W, rng, img=img),
        make_decoder(SPLIT, 2, 64, W, rng, kind="extremes", img=img),
        make_decoder(SPLIT, 3, 10, W, rng, residual=True, kind="extremes", res_shift=16,
                     img=img),
        make_decoder(SMW, 3, 9, W, rng, kind="extremes", causal=-1, img=img),   # row 0 masked
        make_decoder(SMW, 2, 64, W, rng, kind="equal", img=img),       # flat: a row exponent
        make_decoder(SMW, 11, 5, W, rng, kind="extremes", dst_fmt=OutFormat.INT8, img=img),
        make_decoder(SMW, 2, 33, W, rng, dst_fmt=OutFormat.INT32, causal=20, img=img),
        make_decoder(SMD, 3, 64, W, rng, kind="dominant", img=img),     # the tail dither keeps
        make_decoder(SMD, 4, 37, W, rng, kind="dominant", causal=30, img=img),
        make_decoder(SMD, 3, 9, W, rng, kind="extremes", causal=-1, img=img),   # row 0 masked
        make_decoder(SMD, 2, 64, W, rng, kind="equal", img=img),       # flat: a row exponent
        make_decoder(SMD, 11, 1, W, rng, kind="extremes", dst_fmt=OutFormat.INT16, img=img),
    ]
    check_one_image(dec_engine, [ins for ins, _ in cases], img.mem, seed=22, stall=0.1)


def test_rmsnorm_adversarial_rows(dec_engine):
    """RMSNORM's edges against isa_sim: int32 extremes (-2**31's 32-bit magnitude), all-zero
    rows (with no epsilon and the largest), epsilons about the k_eps boundaries (2**59,
    2**60 + 1, 2**62 - 1) on small and large rows, gamma at +-(2**20 - 1) with shifts 0 and
    SHIFT_MAX into every format (saturating), one-column rows, the residual pre-add at shift
    16, a row of 64."""
    rng = np.random.default_rng(28)
    img = Image(W, rng)
    RMS = VecOp.RMSNORM
    g = (1 << 20) - 1
    cases = [make_decoder(RMS, 3, 9, W, rng, kind="extremes", dst_fmt=d, img=img,
                          gamma=np.array([g, -g] * 4 + [g]))
             for d in (OutFormat.INT8, OutFormat.INT16, OutFormat.INT32)]
    for eps in (0, 1 << 59, (1 << 60) + 1, (1 << 62) - 1):
        cases.append(make_decoder(RMS, 2, 5, W, rng, kind=("small", "extremes")[eps & 1],
                                  src_fmt=(OutFormat.INT8, OutFormat.INT32)[eps & 1],
                                  eps=eps, img=img))
    cases += [
        make_decoder(RMS, 5, 1, W, rng, kind="extremes", eps=0, img=img),
        make_decoder(RMS, 2, 7, W, rng, kind="equal", dst_fmt=OutFormat.INT16, img=img),
        make_decoder(RMS, 3, 10, W, rng, residual=True, kind="extremes", res_shift=16,
                     dst_fmt=OutFormat.INT16, img=img),
        make_decoder(RMS, 1, 64, W, rng, dst_fmt=OutFormat.INT8, img=img),
    ]
    instrs = [ins for ins, _ in cases]
    for k, ins in enumerate(instrs[:3]):       # shifts SHIFT_MAX and 0
        instrs[k] = isa.vector(**{**ins.fields, "shift": (nx.SHIFT_MAX, 0, 0)[k]})
    # All-zero rows: a zeroed source, no epsilon and the largest.
    zsrc = img.alloc(2 * 32)
    img.mem[zsrc:zsrc + 64] = 0
    for eps_ins in (instrs[3], instrs[6]):
        instrs.append(isa.vector(**{**eps_ins.fields, "src_addr": zsrc, "src_stride": 32,
                                    "src_fmt": OutFormat.INT32, "rows": 2, "cols": 5}))
    check_one_image(dec_engine, instrs, img.mem, seed=29, stall=0.1)


def test_silu_gate_adversarial_rows(dec_engine):
    """SILU_GATE's edges against isa_sim: gates at the int16 extremes and about the sigmoid
    table's end (|x| = 16 in Q8), up at its extremes (a narrow up beyond int8 saturated, a wide
    up at +-2**15), the largest multiplier at the smallest shift into every format
    (saturating), one-column rows, equal rows, a row of 64, back to back with RMSNORM."""
    rng = np.random.default_rng(32)
    img = Image(W, rng)
    SILU = VecOp.SILU_GATE
    cases = [make_decoder(SILU, 3, 9, W, rng, kind="extremes", res_kind="extremes", dst_fmt=d,
                          res_shift=s, img=img)
             for d in (OutFormat.INT8, OutFormat.INT16, OutFormat.INT32, OutFormat.UINT8)
             for s in (0, nx.WIDE_LO_BITS)]
    cases += [
        make_decoder(SILU, 5, 1, W, rng, kind="extremes", img=img),
        make_decoder(SILU, 2, 7, W, rng, kind="equal", dst_fmt=OutFormat.INT16, img=img),
        make_decoder(SILU, 1, 64, W, rng, dst_fmt=OutFormat.INT8, img=img),
        make_decoder(VecOp.RMSNORM, 3, 10, W, rng, residual=True, kind="extremes",
                     img=img),
    ]
    instrs = [ins for ins, _ in cases]
    # The gates about the table's end, the largest multiplier at the smallest shift.
    edge = np.array([-4097, -4096, -4095, 4095, 4096, 4097, nx.INT16.lo, nx.INT16.hi, 0])
    f = dict(instrs[0].fields)
    src, stride = img.matrix(np.stack([edge, edge[::-1], -edge]), OutFormat.INT16)
    p = img.records(np.full(9, (1 << nx.MULT_BITS) - 1), np.full(9, nx.ROW_EXP_MAX),
                    np.zeros(9, dtype=np.int64))
    for s in (0, nx.WIDE_LO_BITS):
        instrs.append(isa.vector(**{**f, "src_addr": src, "src_stride": stride, "p_addr": p,
                                    "res_shift": s}))
    check_one_image(dec_engine, instrs, img.mem, seed=33, stall=0.1)


def test_wide_lo_adversarial_rows(dec_engine):
    """WIDE_LO's edges against isa_sim: int32 extremes at every row exponent 0..8 and beyond
    it (clamped), rows beyond one port beat of exponents (rows > W), one-column rows, the
    residual pre-add at shift 16, a row of 64, back to back with RESIDUAL32."""
    rng = np.random.default_rng(34)
    img = Image(W, rng)
    WLO = VecOp.WIDE_LO
    cases = [make_decoder(WLO, 3 * W + 1, 9, W, rng, kind="extremes", img=img),
             make_decoder(WLO, 5, 1, W, rng, kind="extremes", img=img),
             make_decoder(WLO, 3, 10, W, rng, residual=True, kind="extremes", res_shift=16,
                          img=img),
             make_decoder(WLO, 2, 64, W, rng, img=img),
             make_decoder(VecOp.RESIDUAL32, 2, 7, W, rng, img=img),
             make_decoder(WLO, W, 3, W, rng, kind="equal", img=img)]
    instrs = [ins for ins, _ in cases]
    # Every exponent 0..9 and 255 on rows of the extremes.
    f = dict(instrs[0].fields)
    ev = np.array(list(range(nx.ROW_EXP_MAX + 2)) + [255], dtype=np.uint8)
    e_addr = img.alloc(len(ev))
    img.mem[e_addr:e_addr + len(ev)] = ev
    ext = np.array([nx.INT32.lo, nx.INT32.hi, nx.INT32.lo + 1, 255, 256, -256, 383, -385, 0])
    src, stride = img.matrix(np.tile(ext, (len(ev), 1)), OutFormat.INT32)
    instrs.append(isa.vector(**{**f, "rows": len(ev), "src_addr": src, "src_stride": stride,
                                "e_addr": e_addr}))
    check_one_image(dec_engine, instrs, img.mem, seed=35, stall=0.1)


def test_rotary_adversarial_rows(dec_engine):
    """ROTARY's edges against isa_sim: head widths from 2 to 64 with half a row a multiple of
    the lanes or not, int16 extremes with the tables' extremes into every format (saturating),
    one row and many, the largest head the unit holds (ROTARY_MAX_COLS is beyond this test
    engine's rows; 64), back to back with WIDE_LO."""
    rng = np.random.default_rng(36)
    img = Image(W, rng)
    ROT = VecOp.ROTARY
    cases = [make_decoder(ROT, int(rng.integers(1, 4)), cols, W, rng, img=img)
             for cols in (2, 6, 2 * LANES, 2 * LANES + 2, 64)]
    cases += [make_decoder(ROT, 3, 10, W, rng, kind="extremes", src_fmt=OutFormat.INT16,
                           dst_fmt=d, img=img)
              for d in (OutFormat.INT8, OutFormat.INT16, OutFormat.INT32)]
    cases += [make_decoder(ROT, 2 * W + 1, 4, W, rng, kind="extremes", img=img),
              make_decoder(VecOp.WIDE_LO, 3, 9, W, rng, img=img),
              make_decoder(ROT, 1, 2, W, rng, kind="equal", img=img)]
    check_one_image(dec_engine, [ins for ins, _ in cases], img.mem, seed=37, stall=0.1)


def test_decoder_build_runs_the_encoder_ops(dec_engine):
    """The int32 residual lanes of a decoder build: the encoder's ops with and without the
    int16 residual pre-add, extremes, back to back with the decoder ops on one image."""
    rng = np.random.default_rng(23)
    cases = [make_vector(VecOp.LAYERNORM, 2, 11, W, rng, residual=True, kind="extremes"),
             make_vector(VecOp.REQUANT_ROWS, 3, 10, W, rng, residual=True, kind="extremes")]
    for ins, mem in cases:
        check_one_image(dec_engine, [ins], mem, seed=24, stall=0.2)
    # WIDE_SPLIT of a RESIDUAL32's result, then REQUANT_ROWS of the high plane.
    ins1, mem = make_decoder(VecOp.RESIDUAL32, 4, 12, W, rng, dst_fmt=OutFormat.INT16)
    f = dict(ins1.fields)
    ins2 = isa.vector(op=VecOp.WIDE_SPLIT, rows=4, cols=12, src_addr=f["dst_addr"],
                      src_stride=f["dst_stride"], src_fmt=OutFormat.INT16,
                      dst_fmt=OutFormat.INT8, dst_addr=f["src_addr"], dst_stride=f["src_stride"] // 2)
    ins3 = isa.vector(op=VecOp.RESIDUAL, rows=4, cols=12, src_addr=ins2.dst_addr,
                      src_stride=ins2.dst_stride, src_fmt=OutFormat.INT8, dst_fmt=OutFormat.INT32,
                      res_addr=f["dst_addr"], res_stride=f["dst_stride"], shift=3,
                      dst_addr=f["res_addr"], dst_stride=f["res_stride"])
    ref = mem
    for ins in (ins1, ins2, ins3):
        ref, code = isa_reference(ins, ref, LANES, W, isa.RTL_DECODER_OPS)
        assert code == ErrorCode.OK, str(ins)
    got, codes, _ = run_engine(dec_engine, [ins1, ins2, ins3], mem, seed=25, stall=0.2)
    assert codes == [ErrorCode.OK] * 3
    np.testing.assert_array_equal(got, ref)


def test_decoder_op_bad_instructions(dec_engine):
    """The checks of the decoder ops (shapes, alignment, formats, shifts) in isa_sim's order,
    and the decoder ops the RTL does not implement: the same code, memory untouched."""
    rng = np.random.default_rng(26)
    img = Image(W, rng)
    r32, mem = make_decoder(VecOp.RESIDUAL32, 3, 6, W, rng, img=img)
    f = dict(r32.fields)
    bad = [dict(op=op) for op in sorted(isa.DECODER_OPS) if op not in isa.RTL_DECODER_OPS] + [
        dict(op=7),
        dict(res_stride=16), dict(res_addr=f["res_addr"] + 4), dict(res_shift=17),
        dict(add_residual=1), dict(rows=0), dict(cols=0),
        dict(op=VecOp.WIDE_SPLIT),                               # src INT32
        dict(op=VecOp.WIDE_SPLIT, src_fmt=OutFormat.INT16, dst_fmt=OutFormat.UINT8),
        dict(op=VecOp.WIDE_SPLIT, src_fmt=OutFormat.INT16, dst_fmt=OutFormat.INT8,
             rows=1, dst_stride=0),                                     # two rows written
        dict(op=VecOp.WIDE_SPLIT, src_fmt=OutFormat.INT16, dst_fmt=OutFormat.INT8,
             add_residual=1, res_shift=20),
        dict(op=VecOp.SOFTMAX_WIDE, cols=isa.SOFTMAX_WIDE_MAX_COLS + 1),
        dict(op=VecOp.SOFTMAX_WIDE, shift=48, mult=100, e_addr=f["dst_addr"]),
        dict(op=VecOp.SOFTMAX_WIDE, e_addr=f["dst_addr"] + 1),
        dict(op=VecOp.SOFTMAX_DITHER, shift=48, mult=100, e_addr=f["dst_addr"]),
        dict(op=VecOp.SOFTMAX_DITHER, e_addr=f["dst_addr"] + 1),
        dict(op=VecOp.SOFTMAX_DITHER, cols=isa.VEC_MAX_COLS + 1),
    ]
    silu, _ = make_decoder(VecOp.SILU_GATE, 3, 6, W, rng, img=img)
    g = dict(silu.fields)
    bad += [dict(g, src_fmt=OutFormat.INT32),                           # BAD_MODE
            dict(g, add_residual=1),                                    # BAD_MODE
            dict(g, res_shift=4), dict(g, res_shift=16),                # BAD_PARAM
            dict(g, e_addr=g["e_addr"] + 1),                            # BAD_ALIGN
            dict(g, cols=isa.VEC_MAX_COLS + 1)]                         # BAD_SHAPE
    wlo, _ = make_decoder(VecOp.WIDE_LO, 3, 6, W, rng, img=img)
    h = dict(wlo.fields)
    bad += [dict(h, dst_fmt=OutFormat.INT16),                           # BAD_MODE
            dict(h, e_addr=h["e_addr"] + 1),                            # BAD_ALIGN
            dict(h, rows=isa.WIDE_LO_MAX_ROWS + 1, src_stride=64, dst_stride=64),  # BAD_SHAPE
            dict(h, add_residual=1, res_addr=h["src_addr"], res_stride=h["src_stride"],
                 res_shift=17)]                                         # BAD_PARAM
    rot, _ = make_decoder(VecOp.ROTARY, 3, 6, W, rng, img=img)
    t = dict(rot.fields)
    bad += [dict(t, cols=5),                                            # BAD_SHAPE (odd)
            dict(t, cols=isa.ROTARY_MAX_COLS + 2, src_stride=1024, dst_stride=1024,
                 res_stride=1024),                                      # BAD_SHAPE
            dict(t, src_fmt=OutFormat.INT32),                           # BAD_MODE
            dict(t, add_residual=1),                                    # BAD_MODE
            dict(t, res_addr=t["res_addr"] + 2)]                        # BAD_ALIGN
    instrs, want = [], []
    for b in bad:
        ins = isa.vector(**{**f, **b})
        ref, code = isa_reference(ins, mem, LANES, W, isa.RTL_DECODER_OPS)
        assert code != ErrorCode.OK and np.array_equal(ref, mem), str(ins)
        instrs.append(ins)
        want.append(code)
    # All in one run (none writes anything), then a good one.
    check_one_image(dec_engine, instrs + [r32], mem, want + [ErrorCode.OK])


@pytest.mark.slow
def test_rmsnorm_rows_of_1536():
    """RMSNORM's longest rows (numerics.RMS_MAX_COLS, SmolLM2's hidden width 576 within it):
    random int32 rows and a row of -2**31 (|z| at its bound), with the residual pre-add, on
    the default 4-lane decoder engine."""
    engine = VectorEngine(4, 8, decoder_ops=True)
    rng = np.random.default_rng(31)
    img = Image(8, rng, size=1 << 17)
    ins, _ = make_decoder(VecOp.RMSNORM, 2, nx.RMS_MAX_COLS, 8, rng, img=img,
                          dst_fmt=OutFormat.INT16, eps=1 << 30)
    f = dict(ins.fields)
    x = np.ndarray((2, nx.RMS_MAX_COLS), dtype="<i4", buffer=img.mem, offset=f["src_addr"],
                   strides=(f["src_stride"], 4))
    x[1] = nx.INT32.lo
    small, _ = make_decoder(VecOp.RMSNORM, 3, 576, 8, rng, img=img, residual=True)
    check_one_image(engine, [ins, small], img.mem)


def test_rmsnorm_bad_instructions(dec_engine):
    """RMSNORM's checks in isa_sim's order: rows longer than RMS_MAX_COLS (BAD_SHAPE), a
    misaligned record address (BAD_ALIGN), the shift, the residual shift, gamma at 2**20 and
    the epsilon (record 0's bias) below 0 or at 2**62 (BAD_PARAM; other columns' biases are
    not checked): the same code, memory untouched."""
    rng = np.random.default_rng(30)
    img = Image(W, rng)
    cols = 6
    rms, _ = make_decoder(VecOp.RMSNORM, 2, cols, W, rng, img=img, eps=5)
    f = dict(rms.fields)
    ones = np.ones(cols, dtype=np.int64)

    def recs(mult, bias):
        return img.records(mult, np.zeros(cols, dtype=np.int64), bias)

    bad = [dict(cols=nx.RMS_MAX_COLS + 1, src_stride=1 << 13, dst_stride=1 << 13),
           dict(p_addr=f["p_addr"] + 4), dict(shift=nx.SHIFT_MAX + 1),
           dict(add_residual=1, res_addr=f["src_addr"], res_stride=f["src_stride"],
                res_shift=17),
           dict(p_addr=recs(ones * (1 << 20), ones * 0)),
           dict(p_addr=recs(ones * -(1 << 20), ones * 0)),
           dict(p_addr=recs(ones, np.array([-1] + [0] * (cols - 1)))),
           dict(p_addr=recs(ones, np.array([1 << 62] + [0] * (cols - 1))))]
    good = isa.vector(**{**f, "p_addr": recs(ones * ((1 << 20) - 1),
                                              np.array([(1 << 62) - 1] + [-1 << 63] * (cols - 1)))})
    instrs, want = [], []
    for b in bad:
        ins = isa.vector(**{**f, **b})
        ref, code = isa_reference(ins, img.mem, LANES, W, isa.RTL_DECODER_OPS)
        assert code != ErrorCode.OK and np.array_equal(ref, img.mem), str(ins)
        instrs.append(ins)
        want.append(code)
    assert want[:3] == [ErrorCode.BAD_SHAPE, ErrorCode.BAD_ALIGN, ErrorCode.BAD_PARAM]
    check_one_image(dec_engine, instrs + [good, rms], img.mem, want + [ErrorCode.OK] * 2)


def test_decoder_ops_refused_without_the_flag(engine):
    """A build without Sizing.decoder_ops (the default) stops on every decoder op but
    isa.RTL_ALWAYS_OPS (SOFTMAX_DITHER) with BAD_MODE (as IsaMachine without decoder_ops),
    writing nothing."""
    assert not engine.decoder_ops and not Sizing().decoder_ops
    rng = np.random.default_rng(27)
    ins, mem = make_decoder(VecOp.RESIDUAL32, 2, 5, W, rng)
    instrs = [isa.vector(**{**ins.fields, "op": op}) for op in sorted(isa.DECODER_OPS)
              if op not in isa.RTL_ALWAYS_OPS]
    check_one_image(engine, instrs, mem, [ErrorCode.BAD_MODE] * len(instrs))


@pytest.mark.parametrize("lanes,port_bytes", [(4, 4), (2, 32), (8, 16)])
def test_decoder_ops_other_ports(lanes, port_bytes):
    """RESIDUAL32's 4-byte residual and WIDE_SPLIT's planes at ports narrower than a residual
    unit beat and wider than a row."""
    engine = VectorEngine(lanes, port_bytes, max_cols=48, decoder_ops=True)
    rng = np.random.default_rng(lanes * 100 + port_bytes + 1)
    img = Image(port_bytes, rng)
    instrs = [make_decoder(VecOp.RESIDUAL32, 2, int(rng.integers(1, 40)), port_bytes, rng,
                           src_fmt=OutFormat(int(rng.integers(0, 4))),
                           dst_fmt=OutFormat(int(rng.integers(0, 4))), img=img)[0],
              make_decoder(VecOp.WIDE_SPLIT, 3, int(rng.integers(1, 40)), port_bytes, rng,
                           residual=True, img=img)[0],
              make_decoder(VecOp.SOFTMAX_WIDE, 3, int(rng.integers(1, 40)), port_bytes,
                           rng, src_fmt=OutFormat(int(rng.integers(0, 4))), causal=1, img=img)[0],
              make_decoder(VecOp.SOFTMAX_DITHER, 2, int(rng.integers(1, 40)), port_bytes,
                           rng, kind="dominant", img=img)[0]]
    check_one_image(engine, instrs, img.mem, seed=port_bytes, stall=0.2)
