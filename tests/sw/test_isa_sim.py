"""The isa backend: each instruction against the numerics, every error code, fences, fuzzing,
and the driver's error paths."""

import sys

import numpy as np
import pytest

from celosia.hdl import isa
from celosia.hdl.isa import CSR, INSTR_BYTES, ErrorCode, MachineConfig, Opcode, Unit, VecOp
from celosia.hdl.params import OUT_RANGE, AddendMode, OutFormat
from celosia.sw import numerics as nx
from celosia.sw.compiler import DTYPE, Tensor
from celosia.sw.driver import Accelerator, AcceleratorError, AcceleratorHung
from celosia.sw.fuzz import fuzz_instruction
from celosia.sw.isa_sim import IsaBackend, IsaMachine

CFG = MachineConfig(4)          # N = 4, W = 8
W = CFG.port_bytes
BASE, SIZE = 0x1000, 0x10000
PROG = BASE + SIZE - 0x1000     # the last 4 KiB of the window hold the program


class Rig:
    """A machine with a window at BASE, a bump allocator and a program at PROG."""

    def __init__(self, config=CFG):
        self.m = IsaMachine(config, BASE + SIZE + 0x1000)
        self.top = BASE
        self.w = config.port_bytes

    def tensor(self, values, fmt: OutFormat) -> Tensor:
        v = np.asarray(values)
        stride = -(-v.shape[1] * DTYPE[fmt].itemsize // self.w) * self.w + self.w  # slack
        t = Tensor("t", self.top, v.shape[0], v.shape[1], stride, fmt)
        self.top += -(-t.nbytes // 64) * 64 + 64
        self.m.mem[t.addr:t.addr + t.nbytes] = np.frombuffer(t.pack(v), np.uint8)
        return t

    def empty(self, rows, cols, fmt) -> Tensor:
        return self.tensor(np.zeros((rows, cols), dtype=np.int64), fmt)

    def raw(self, raw: bytes) -> int:
        addr = self.top
        self.m.mem[addr:addr + len(raw)] = np.frombuffer(raw, np.uint8)
        self.top += -(-len(raw) // 64) * 64 + 64
        return addr

    def read(self, t: Tensor) -> np.ndarray:
        return t.unpack(self.m.mem[t.addr:t.addr + t.nbytes].tobytes())

    def load(self, *instructions) -> None:
        code = b"".join(i.encode() for i in instructions) + isa.halt().encode()
        self.m.mem[PROG:PROG + len(code)] = np.frombuffer(code, np.uint8)

    def run(self, *instructions) -> IsaMachine:
        if instructions:
            self.load(*instructions)
        for name, value in (("WIN_BASE", BASE), ("WIN_SIZE", SIZE), ("PROG_ADDR", PROG)):
            self.m.write_csr(name, value)
        self.m.write_csr("CTRL", CSR.CTRL.make(start=1))
        assert self.m.run(max_instructions=1000)
        return self.m


def _engine_records(bias, mult, shift):
    rec = np.zeros(len(bias), dtype=isa.ENGINE_PARAM_DTYPE)
    rec["bias"], rec["mult"], rec["shift"] = bias, mult, shift
    return rec.tobytes()


def _vec_records(mult, shift, bias):
    rec = np.zeros(len(mult), dtype=isa.VEC_PARAM_DTYPE)
    rec["mult"], rec["shift"], rec["bias"] = mult, shift, bias
    return rec.tobytes()


def _mm(a: Tensor, b: Tensor, c: Tensor, **kw):
    bt = kw.get("b_transposed", 0)
    return isa.matmul(m=a.rows, k=a.cols, n=b.rows if bt else b.cols, a_addr=a.addr,
                      a_stride=a.stride, b_addr=b.addr, b_stride=b.stride, c_addr=c.addr,
                      c_stride=c.stride, a_unsigned=int(a.fmt == OutFormat.UINT8), **kw)


def _vec(op, src: Tensor, dst: Tensor, **kw):
    return isa.vector(op=op, rows=src.rows, cols=src.cols, src_addr=src.addr,
                      src_stride=src.stride, src_fmt=src.fmt, dst_addr=dst.addr,
                      dst_stride=dst.stride, dst_fmt=dst.fmt, **kw)


# --- MATMUL semantics ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(12))
def test_matmul_matches_numerics(seed):
    rng = np.random.default_rng(seed)
    r = Rig()
    m, k, n = (int(x) for x in rng.integers(1, 20, 3))
    a_fmt = OutFormat.UINT8 if seed % 2 else OutFormat.INT8
    a_vals = rng.integers(OUT_RANGE[a_fmt].lo, OUT_RANGE[a_fmt].hi, (m, k), endpoint=True)
    b_vals = rng.integers(-128, 127, (k, n), endpoint=True)
    a = r.tensor(a_vals, a_fmt)
    bt = seed % 3 == 0
    b = r.tensor(b_vals.T if bt else b_vals, OutFormat.INT8)
    kw = dict(b_transposed=int(bt))
    bias = rng.integers(-2**31, 2**31 - 1, n) if seed % 4 else rng.integers(-1000, 1000, n)
    mult = rng.integers(0, 2**15, n)
    shift = rng.integers(0, nx.SHIFT_MAX + 1, n)
    requant = seed % 5 != 4
    use_params = requant or seed % 2
    if use_params:
        kw.update(use_params=1, p_addr=r.raw(_engine_records(bias, mult, shift)))
    e = None
    if seed % 3 == 1:
        e = rng.integers(0, 12, m)          # above ROW_EXP_MAX: clamped
        kw.update(row_shift=1, e_addr=r.raw(e.astype(np.uint8).tobytes()))
    acc = res = None
    if seed % 4 == 1:
        acc = rng.integers(-2**31, 2**31 - 1, (m, n))
        d = r.tensor(acc, OutFormat.INT32)
        kw.update(addend=AddendMode.ACC32, d_addr=d.addr, d_stride=d.stride)
    elif seed % 4 == 2:
        res = rng.integers(-2**15, 2**15 - 1, (m, n))
        d = r.tensor(res, OutFormat.INT16)
        kw.update(addend=AddendMode.RESIDUAL16, d_addr=d.addr, d_stride=d.stride, addend_shift=seed)
    fmt = OutFormat(seed % 4) if requant else OutFormat.INT32
    zp = int(rng.integers(-5, 5))
    if requant:
        kw.update(requant=1, out_fmt=fmt, zero_point=zp)
    c = r.empty(m, n, fmt)
    assert r.run(_mm(a, b, c, **kw)).error == ErrorCode.OK
    want = nx.matmul(a_vals, b_vals, bias=bias if use_params else None, acc=acc,
                     row_shift=None if e is None else np.minimum(e, nx.ROW_EXP_MAX))
    if res is not None:
        want = nx.residual_add(want, res, seed)
    if requant:
        want = nx.requantize(want, nx.Dyadic(mult, shift), OUT_RANGE[fmt], zp)
    assert np.array_equal(r.read(c), want)


# --- VECTOR semantics ---------------------------------------------------------------------------

def _vec_case(seed, op):
    rng = np.random.default_rng(100 + seed)
    r = Rig()
    rows, cols = int(rng.integers(1, 9)), int(rng.integers(1, 40))
    src_fmt = OutFormat.INT16 if op == VecOp.GELU_ROWS and seed < 2 else OutFormat.INT32
    lo, hi = (-2**15, 2**15 - 1) if src_fmt == OutFormat.INT16 else (-2**31, 2**31 - 1)
    if seed % 2:
        lo, hi = lo >> 12, hi >> 12
    x = rng.integers(lo, hi, (rows, cols), endpoint=True)
    src = r.tensor(x, src_fmt)
    kw = {}
    res_vals = None
    if op == VecOp.RESIDUAL or seed % 3 == 0:
        res_vals = rng.integers(-2**15, 2**15 - 1, (rows, cols))
        res = r.tensor(res_vals, OutFormat.INT16)
        kw.update(add_residual=int(op != VecOp.RESIDUAL), res_addr=res.addr, res_stride=res.stride,
                  res_shift=seed % 17)
    return rng, r, rows, cols, x, src, kw, res_vals


@pytest.mark.parametrize("op", sorted(isa.UNIT_OPS))
@pytest.mark.parametrize("seed", range(4))
def test_vector_matches_numerics(op, seed):
    rng, r, rows, cols, x, src, kw, res_vals = _vec_case(seed, op)
    xin = x if res_vals is None else nx.residual_add(x, res_vals, seed % 17)
    dst_fmt = {VecOp.SOFTMAX: OutFormat.UINT8, VecOp.LAYERNORM: OutFormat.INT16,
               VecOp.RESIDUAL: OutFormat.INT32, VecOp.GELU_ROWS: OutFormat.UINT8,
               VecOp.REQUANT_ROWS: OutFormat.INT8}.get(op, OutFormat(seed % 4))
    out = OUT_RANGE[dst_fmt]
    mult = rng.integers(0, 2**15, cols)
    shift = rng.integers(nx.ROW_EXP_MAX, nx.SHIFT_MAX + 1, cols)
    bias = np.zeros(cols, dtype=np.int64)
    want_e = None
    if op == VecOp.SOFTMAX:
        scale = nx.Dyadic(int(rng.integers(1, 2**15)), int(rng.integers(10, 30)))
        causal = seed % 2 == 1
        kw.update(mult=scale.multiplier, shift=scale.shift, causal=int(causal), causal_offset=seed - 2)
        got = nx.softmax(xin, scale, seed - 2 if causal else None)
        want, want_e = got if isinstance(got, tuple) else (got, np.zeros(rows, dtype=np.int64))
    elif op == VecOp.LAYERNORM:
        mult = rng.integers(-2**19, 2**19, cols)
        bias = rng.integers(-2**39, 2**39, cols)
        kw.update(shift=int(rng.integers(10, 30)))
        want = nx.layernorm(xin, mult, bias, kw["shift"], out)
    elif op == VecOp.GELU:
        kw.update(mult=int(rng.integers(1, 2**15)), shift=int(rng.integers(10, 30)), zero_point=3)
        want = nx.requantize(nx.gelu(nx.requantize(xin, nx.Dyadic(mult, shift), nx.INT16)),
                             nx.Dyadic(kw["mult"], kw["shift"]), out, 3)
    elif op == VecOp.REQUANT:
        shift = rng.integers(0, nx.SHIFT_MAX + 1, cols)
        kw.update(zero_point=-2)
        want = nx.requantize(xin, nx.Dyadic(mult, shift), out, -2)
    elif op == VecOp.RESIDUAL:
        want = nx.saturate(xin, out)
    elif op == VecOp.REQUANT_ROWS:
        want, want_e = nx.requantize_rows(xin, nx.Dyadic(mult, shift), out)
    else:
        want, want_e = nx.requantize_rows(nx.gelu(xin), nx.Dyadic(mult, shift), out)
    if isa.vec_uses_params(op):
        kw["p_addr"] = r.raw(_vec_records(mult, shift, bias))
    if want_e is not None:
        kw["e_addr"] = r.raw(bytes(rows + 3))
    dst = r.empty(rows, cols, dst_fmt)
    assert r.run(_vec(op, src, dst, **kw)).error == ErrorCode.OK
    assert np.array_equal(r.read(dst), want)
    if want_e is not None:
        e_got = r.m.mem[kw["e_addr"]:kw["e_addr"] + rows + 3]
        assert e_got[:rows].tolist() == want_e.tolist() and not e_got[rows:].any()


def test_vector_bert_base_rows(monkeypatch):
    """Rows past the old 1536-column limit, up to isa.VEC_MAX_COLS (4096): GELU_ROWS over
    BERT-base's FFN width (3072, int32 Q10 in, some inputs far beyond GELU's table), LayerNorm
    over its hidden width (768) with the residual, and a LayerNorm row of 4096 (a 256 KiB
    window: the records alone are 16 bytes a column)."""
    assert isa.VEC_MAX_COLS >= 4096
    monkeypatch.setattr(sys.modules[__name__], "SIZE", 1 << 18)
    monkeypatch.setattr(sys.modules[__name__], "PROG", BASE + (1 << 18) - 0x1000)
    rng = np.random.default_rng(5)
    r = Rig()
    x = rng.integers(-(8 << 10), 8 << 10, (2, 3072))
    x[:, ::97] = rng.integers(32 << 10, 1 << 30, x[:, ::97].shape)
    mult, shift = rng.integers(1 << 14, 1 << 15, 3072), rng.integers(30, 38, 3072)
    src, dst = r.tensor(x, OutFormat.INT32), r.empty(2, 3072, OutFormat.UINT8)
    p = r.raw(_vec_records(mult, shift, np.zeros(3072)))
    e_addr = r.raw(bytes(64))
    assert r.run(_vec(VecOp.GELU_ROWS, src, dst, p_addr=p, e_addr=e_addr)).error == ErrorCode.OK
    want, want_e = nx.gelu_rows(x, nx.Dyadic(mult, shift), nx.UINT8)
    assert np.array_equal(r.read(dst), want)
    assert r.m.mem[e_addr:e_addr + 2].tolist() == want_e.tolist()
    for rows, cols in ((3, 768), (1, 4096)):
        r = Rig()
        x = rng.integers(-2**31, 2**31 - 1, (rows, cols), endpoint=True) >> 8
        res_vals = rng.integers(-2**15, 2**15 - 1, (rows, cols))
        gamma, beta = rng.integers(-2**19, 2**19, cols), rng.integers(-2**39, 2**39, cols)
        src, res = r.tensor(x, OutFormat.INT32), r.tensor(res_vals, OutFormat.INT16)
        dst = r.empty(rows, cols, OutFormat.INT16)
        p = r.raw(_vec_records(gamma, np.zeros(cols), beta))
        ins = _vec(VecOp.LAYERNORM, src, dst, p_addr=p, shift=20, add_residual=1,
                   res_addr=res.addr, res_stride=res.stride, res_shift=3)
        assert r.run(ins).error == ErrorCode.OK
        want = nx.layernorm(nx.residual_add(x, res_vals, 3), gamma, beta, 20, nx.INT16)
        assert np.array_equal(r.read(dst), want)


# --- errors ----------------------------------------------------------------------------------

def _expect(r, ins, code):
    r.load(ins)
    before = r.m.mem.copy()
    m = r.run()
    assert m.error == code, m.error_detail
    assert m.read_csr("ERROR_PC") == PROG
    assert m.read_csr("STATUS") == CSR.STATUS.make(error=1)
    assert m.read_csr("INSTRET") == 0
    assert np.array_equal(before, m.mem)       # a rejected instruction writes nothing


def test_matmul_errors():
    r = Rig()
    a = r.tensor(np.ones((4, 8)), OutFormat.INT8)
    b = r.tensor(np.ones((8, 8)), OutFormat.INT8)
    c = r.empty(4, 8, OutFormat.INT32)
    p = r.raw(_engine_records(np.zeros(8), np.full(8, 2**15), np.zeros(8)))
    ok = dict(m=4, k=8, n=8, a_addr=a.addr, a_stride=a.stride, b_addr=b.addr, b_stride=b.stride,
              c_addr=c.addr, c_stride=c.stride)
    _expect(r, isa.matmul(**{**ok, "k": 0}), ErrorCode.BAD_SHAPE)
    _expect(r, isa.matmul(**{**ok, "k": 5000}), ErrorCode.BAD_SHAPE)
    _expect(r, isa.matmul(**{**ok, "c_stride": 8}), ErrorCode.BAD_SHAPE)
    _expect(r, isa.matmul(**{**ok, "a_addr": a.addr + 1}), ErrorCode.BAD_ALIGN)
    _expect(r, isa.matmul(**ok, row_shift=1, e_addr=a.addr + 4), ErrorCode.BAD_ALIGN)
    _expect(r, isa.matmul(**ok, requant=1), ErrorCode.BAD_MODE)
    _expect(r, isa.matmul(**ok, addend=3, d_addr=a.addr, d_stride=64), ErrorCode.BAD_MODE)
    _expect(r, isa.matmul(**ok, addend=2, d_addr=a.addr, d_stride=64, addend_shift=17), ErrorCode.BAD_MODE)
    _expect(r, isa.matmul(**{**ok, "c_addr": BASE + SIZE - 64}), ErrorCode.BAD_ADDRESS)
    _expect(r, isa.matmul(**{**ok, "a_addr": BASE - 64}), ErrorCode.BAD_ADDRESS)
    _expect(r, isa.matmul(**{**ok, "m": 60000}), ErrorCode.BAD_ADDRESS)
    _expect(r, isa.matmul(**ok, use_params=1, requant=1, p_addr=p), ErrorCode.BAD_PARAM)


def test_vector_errors():
    r = Rig()
    x = r.tensor(np.ones((4, 8)), OutFormat.INT32)
    y = r.empty(4, 8, OutFormat.INT8)
    p = r.raw(_vec_records(np.ones(8), np.full(8, 3), np.zeros(8)))      # shift < 8 for *_ROWS
    _expect(r, isa.vector(op=9, rows=1, cols=1), ErrorCode.BAD_MODE)
    _expect(r, isa.vector(**{**_vec(VecOp.REQUANT, x, y, p_addr=p).fields, "cols": 0}), ErrorCode.BAD_SHAPE)
    _expect(r, isa.vector(**{**_vec(VecOp.REQUANT, x, y, p_addr=p).fields, "dst_stride": 0}),
            ErrorCode.BAD_SHAPE)
    big = isa.vector(op=VecOp.SOFTMAX, rows=1, cols=isa.VEC_MAX_COLS + 1, src_addr=x.addr, dst_addr=y.addr)
    _expect(r, big, ErrorCode.BAD_SHAPE)
    _expect(r, _vec(VecOp.REQUANT, x, y, p_addr=p + 4), ErrorCode.BAD_ALIGN)
    _expect(r, _vec(VecOp.RESIDUAL, x, y, res_addr=BASE + SIZE, res_stride=64), ErrorCode.BAD_ADDRESS)
    _expect(r, _vec(VecOp.SOFTMAX, x, y, shift=50, e_addr=y.addr), ErrorCode.BAD_PARAM)
    _expect(r, _vec(VecOp.RESIDUAL, x, y, res_addr=x.addr, res_stride=x.stride, res_shift=17),
            ErrorCode.BAD_PARAM)
    _expect(r, _vec(VecOp.REQUANT_ROWS, x, y, p_addr=p, e_addr=y.addr), ErrorCode.BAD_PARAM)


def test_fetch_and_window_errors():
    r = Rig()
    m = r.m
    # Illegal opcode.
    m.mem[PROG:PROG + INSTR_BYTES] = 0
    for name, value in (("WIN_BASE", BASE), ("WIN_SIZE", SIZE), ("PROG_ADDR", PROG)):
        m.write_csr(name, value)
    m.write_csr("CTRL", CSR.CTRL.make(start=1))
    m.run()
    assert m.error == ErrorCode.ILLEGAL_OPCODE and m.read_csr("ERROR_PC") == PROG
    # Running off the end of the window.
    code = isa.sync(Unit.ALL).encode()
    m.mem[BASE + SIZE - 64:BASE + SIZE] = np.frombuffer(code, np.uint8)
    m.write_csr("PROG_ADDR", BASE + SIZE - 64)
    m.write_csr("CTRL", CSR.CTRL.make(start=1))
    m.run()
    assert m.error == ErrorCode.FETCH_FAULT and m.read_csr("ERROR_PC") == BASE + SIZE
    assert m.read_csr("INSTRET") == 1
    # Misaligned program address; window not aligned.
    m.write_csr("PROG_ADDR", PROG + 8)
    m.write_csr("CTRL", CSR.CTRL.make(start=1))
    m.run()
    assert m.error == ErrorCode.FETCH_FAULT
    m.write_csr("WIN_SIZE", SIZE + 4)
    m.write_csr("CTRL", CSR.CTRL.make(start=1))
    assert m.error == ErrorCode.BAD_WINDOW and not m.running


def test_abort_and_counters():
    r = Rig()
    code = b"".join(isa.sync(Unit.ALL).encode() for _ in range(10))
    r.m.mem[PROG:PROG + len(code)] = np.frombuffer(code, np.uint8)
    for name, value in (("WIN_BASE", BASE), ("WIN_SIZE", SIZE), ("PROG_ADDR", PROG)):
        r.m.write_csr(name, value)
    r.m.write_csr("CTRL", CSR.CTRL.make(start=1))
    assert not r.m.run(max_instructions=3)
    assert r.m.read_csr("STATUS") & CSR.STATUS.make(busy=1)
    assert r.m.read_csr("PC") == PROG + 3 * INSTR_BYTES
    r.m.write_csr("CTRL", CSR.CTRL.make(abort=1))
    assert r.m.error == ErrorCode.ABORTED and r.m.read_csr("INSTRET") == 3
    with pytest.raises(PermissionError):
        r.m.write_csr("STATUS", 0)


def test_missing_fence_is_a_hazard():
    r = Rig()
    x = r.tensor(np.ones((4, 8)), OutFormat.INT8)
    b = r.tensor(np.ones((8, 8)), OutFormat.INT8)
    c = r.empty(4, 8, OutFormat.INT32)
    y = r.empty(4, 8, OutFormat.INT32)
    produce = _mm(x, b, c)
    consume = _vec(VecOp.RESIDUAL, c, y, res_addr=x.addr, res_stride=x.stride)
    r.run(produce, consume)
    assert len(r.m.hazards) == 1 and "VECTOR reads" in r.m.hazards[0]
    r.run(produce, isa.sync(Unit.MATMUL), consume)
    assert r.m.hazards == []
    r.run(produce, isa.sync(Unit.VECTOR), consume)       # the wrong unit
    assert len(r.m.hazards) == 1


def test_command_writing_its_own_sources_is_a_hazard():
    r = Rig()
    a = r.tensor(np.ones((4, 8)), OutFormat.INT8)
    b = r.tensor(np.ones((8, 8)), OutFormat.INT8)
    c = r.empty(4, 8, OutFormat.INT32)
    r.run(_mm(a, b, c))
    assert r.m.hazards == []
    in_place = Tensor("a32", a.addr, 4, 8, c.stride, OutFormat.INT32)     # C over A
    r.run(_mm(a, b, in_place))
    assert r.m.error == ErrorCode.OK
    assert len(r.m.hazards) == 1 and "writes what it reads itself" in r.m.hazards[0]
    x = r.empty(4, 16, OutFormat.INT32)
    r.run(_vec(VecOp.RESIDUAL, x, x, res_addr=c.addr, res_stride=c.stride))
    assert r.m.error == ErrorCode.OK, r.m.error_detail
    assert any("VECTOR command writes what it reads itself" in h for h in r.m.hazards)


def test_command_overwriting_the_next_instruction_is_a_hazard():
    r = Rig()
    a = r.tensor(np.ones((1, 8)), OutFormat.INT8)
    b = r.tensor(np.ones((8, 16)), OutFormat.INT8)
    # C covers the second instruction (the HALT); a SYNC in between makes it ordered.
    over = Tensor("code", PROG + INSTR_BYTES, 1, 16, 64, OutFormat.INT32)
    r.run(_mm(a, b, over))
    assert any("instruction fetched from bytes" in h for h in r.m.hazards)
    r.load(_mm(a, b, Tensor("code", PROG + 2 * INSTR_BYTES, 1, 16, 64, OutFormat.INT32)),
           isa.sync(Unit.MATMUL))
    m = r.run()
    assert m.hazards == []


# --- fuzzing --------------------------------------------------------------------------------------

def test_fuzz_random_programs_stay_in_the_window():
    """Hundreds of random instruction streams: each halts or stops with an error code within
    the bound of a straight-line program (one instruction per INSTR_BYTES of the window), and
    not a byte outside the window changes."""
    rng = np.random.default_rng(2024)
    guard = 0x800
    base, size = guard, 0x2000
    config = MachineConfig(4)
    machine = IsaMachine(config, base + size + guard)
    pattern = rng.integers(0, 256, len(machine.mem), dtype=np.uint8)
    outcomes = {}
    executed = 0
    for trial in range(500):
        machine.mem[:] = pattern
        if trial % 2:       # zeroed data: parameter records are valid, so more instructions run
            machine.mem[base:base + size] = 0
        n = int(rng.integers(1, 12))
        code = b"".join(fuzz_instruction(rng, base, base + size) for _ in range(n))
        prog = base + int(rng.integers(0, (size - len(code)) // INSTR_BYTES + 1)) * INSTR_BYTES
        machine.mem[prog:prog + len(code)] = np.frombuffer(code, np.uint8)
        machine.write_csr("WIN_BASE", base)
        machine.write_csr("WIN_SIZE", size)
        machine.write_csr("PROG_ADDR", prog)
        machine.write_csr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))
        assert machine.run(max_instructions=size // INSTR_BYTES + 1), f"trial {trial} did not stop"
        code_ = machine.error
        executed += machine.read_csr("MATMUL_COUNT") + machine.read_csr("VECTOR_COUNT")
        outcomes[code_.name] = outcomes.get(code_.name, 0) + 1
        assert np.array_equal(machine.mem[:base], pattern[:base]), f"trial {trial} wrote below the window"
        assert np.array_equal(machine.mem[base + size:], pattern[base + size:]), \
            f"trial {trial} wrote above the window"
        if code_ != ErrorCode.OK:
            assert machine.read_csr("STATUS") == CSR.STATUS.make(error=1)
    # The streams reach the interesting outcomes, not just the first check.
    for name in ("OK", "ILLEGAL_OPCODE", "BAD_ADDRESS", "BAD_ALIGN", "BAD_SHAPE",
                 "BAD_MODE", "BAD_PARAM"):
        assert outcomes.get(name, 0) > 0, outcomes
    assert executed > 50


# --- the driver over the isa backend ------------------------------------------------------------

def test_driver_reports_errors_and_hangs():
    backend = IsaBackend(CFG, BASE + SIZE)
    acc = Accelerator(backend)
    assert acc.config == CFG
    backend.write_csr("WIN_BASE", BASE)
    backend.write_csr("WIN_SIZE", SIZE)
    backend.write_memory(PROG, isa.matmul(m=1, k=1, n=1, a_addr=3).encode())
    acc.start(PROG)
    with pytest.raises(AcceleratorError, match="BAD_ALIGN") as err:
        acc.wait(timeout_s=10)
    assert err.value.status.error_pc == PROG and not err.value.status.busy
    # A long straight-line program and a small cycle budget: hung.
    code = b"".join(isa.sync(Unit.ALL).encode() for _ in range(50)) + isa.halt().encode()
    backend.write_memory(PROG, code)
    acc.start(PROG)
    with pytest.raises(AcceleratorHung, match="still running") as hung:
        acc.wait(max_cycles=10)
    assert hung.value.status.busy
    assert acc.wait(timeout_s=10).done
    assert acc.counters()["instructions"] == 51


def test_driver_reports_memory_faults_in_words():
    """Every ErrorCode has words; the memory faults (which isa_sim does not model: an RTL
    backend reports them) say what happened to the memory and to the run."""
    from celosia.sw.driver import ERROR_TEXT, Status, describe_error
    assert set(ERROR_TEXT) == set(ErrorCode)
    for code, phrase in ((ErrorCode.MEM_READ_ERROR, "answered one of the instruction's reads"),
                         (ErrorCode.MEM_WRITE_ERROR, "answered one of the instruction's writes"),
                         (ErrorCode.MEM_TIMEOUT, "stopped answering")):
        status = Status(False, False, code, 0x1040, 0x1040)
        msg = str(AcceleratorError(status))
        assert code.name in msg and phrase in msg and "0x1040" in msg
        assert describe_error(int(code)).startswith(code.name)
    assert describe_error(15) == "unknown error code 15"
