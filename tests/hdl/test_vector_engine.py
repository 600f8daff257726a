"""The vector engine on the Amaranth simulator against sw/isa_sim.py: the same VECTOR instruction
on the same memory image must leave the same bytes in memory and the same status."""

from __future__ import annotations

import random

import numpy as np
import pytest

from celosia.hdl import isa
from celosia.hdl.isa import VEC_PARAM_DTYPE, ErrorCode, MachineConfig, VecOp
from celosia.hdl.params import OUT_BYTES, OutFormat
from celosia.hdl.vector_engine import VectorEngine
from celosia.sim.pysim import MemoryModel
from celosia.sw import numerics as nx
from celosia.sw.isa_sim import IsaMachine, IsaStop

MEM = 1 << 16


def isa_reference(ins: isa.Instruction, mem: np.ndarray, lanes: int, port_bytes: int):
    """Execute one VECTOR on a copy of ``mem`` (the whole memory is the window)."""
    mach = IsaMachine(MachineConfig(lanes, port_bytes), len(mem))
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
                kind="random", pad=0, causal=None):
    """An image and a VECTOR instruction of ``op`` with random valid fields."""
    img = Image(W, rng)
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
        want, code = isa_reference(ins, mem, engine.lanes, engine.port_bytes)
        got, codes, _ = run_engine(engine, [ins], mem, **kw)
        assert codes == [code], (str(ins), codes, code)
        diff = np.nonzero(got != want)[0]
        assert diff.size == 0, f"{ins}: {diff.size} bytes differ, first at {diff[:8]}"


def test_smoke(engine):
    rng = np.random.default_rng(0)
    cases = [make_vector(op, 3, 5, W, rng) for op in VecOp]
    check(engine, cases)
