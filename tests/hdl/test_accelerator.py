"""The whole accelerator (CSR block, controller, matmul engine, arbiter, AXI4 master) in
Amaranth's simulator, with a Python AXI4 memory and AXI4-Lite host: compiled programs give the
memory and CSRs of sw/isa_sim.py bit for bit; error programs stop with its code and touch
nothing outside the window."""

import numpy as np
import pytest

from celosia.hdl.accelerator import Accelerator, verilog_text
from celosia.hdl import isa
from celosia.hdl.isa import CSR, ErrorCode, MachineConfig, Unit
from celosia.hdl.params import OutFormat
from celosia.sw import numerics as nx
from celosia.sim.pysim import run
from celosia.sim.tb_accelerator import (AxiMemoryModel, axil_read, axil_write, error_image,
                                        matmul_chain, reference, status_bits)


def run_accel(img, *, array, k_max=64, latency=2, stall=0.0, max_cycles=200_000, vector=False,
              **kw):
    dut = Accelerator(array, img.config.port_bytes, k_max=k_max, vector=vector, **kw)
    mem = img.mem.copy()
    model = AxiMemoryModel(dut.m_axi, mem, img.config.port_bytes, latency=latency, stall=stall)
    regs = {}

    async def host(ctx):
        bus = dut.s_axil
        for name, value in (("WIN_BASE", img.base), ("WIN_SIZE", img.size), ("PROG_ADDR", img.prog)):
            await axil_write(ctx, bus, getattr(CSR, name).offset, value)
        await axil_write(ctx, bus, CSR.CTRL.offset, CSR.CTRL.make(start=1, clear_counters=1))
        while CSR.STATUS.get(await axil_read(ctx, bus, CSR.STATUS.offset), "busy"):
            await ctx.tick().repeat(20)
        for name in ("STATUS", "ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT",
                     "VECTOR_COUNT", "MATMUL_BUSY", "SYNC_STALL"):
            regs[name] = await axil_read(ctx, bus, getattr(CSR, name).offset)
        regs["CYCLES"] = await axil_read(ctx, bus, CSR.CYCLES_LO.offset)
        regs["CYCLES"] |= await axil_read(ctx, bus, CSR.CYCLES_HI.offset) << 32

    run(dut, host, background=[model], deadline_cycles=max_cycles)
    return mem, regs


def check_against_isa(img, mem, regs, vector_unit=False, decoder_ops=False):
    ref_mem, ref, mach = reference(img, vector_unit=vector_unit, decoder_ops=decoder_ops)
    for name in ("ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT", "VECTOR_COUNT"):
        assert regs[name] == ref[name], (name, regs[name], ref[name], mach.error_detail)
    assert status_bits(regs["STATUS"]) == ref["STATUS"]
    diff = np.flatnonzero(mem != ref_mem)
    assert diff.size == 0, f"{diff.size} bytes differ, first at {diff[0]:#x}"
    return ref


@pytest.mark.parametrize("array,port_bytes,seed", [(2, 8, 0), (2, 4, 1)])
def test_matmul_chain_matches_isa_sim(array, port_bytes, seed):
    img = matmul_chain(seed, MachineConfig(array, port_bytes), links=2, max_dim=6)
    mem, regs = run_accel(img, array=array, stall=0.2)
    ref = check_against_isa(img, mem, regs)
    assert regs["ERROR"] == 0 and regs["MATMUL_COUNT"] == 2
    assert regs["CYCLES"] > 0 and regs["MATMUL_BUSY"] > 0
    print(f"cycles {regs['CYCLES']} (isa_sim model {ref['CYCLES']})")


@pytest.mark.parametrize("kind", ["illegal", "window", "param", "vector"])
def test_errors_match_isa_sim(kind):
    img = error_image(kind, MachineConfig(2, 8), size=0x1000)
    mem, regs = run_accel(img, array=2)
    check_against_isa(img, mem, regs)
    assert regs["ERROR"] != ErrorCode.OK


def test_verilog_export():
    text = verilog_text(2, 8, k_max=64)
    assert "module celosia_accel" in text
    for port in ("s_axil__awaddr", "m_axi__arlen", "m_axi__wstrb", "m_axi__rdata"):
        assert port in text


def test_vector_true_needs_a_vector_engine():
    from celosia.hdl.accelerator import vector_engine_factory
    if vector_engine_factory() is not None:
        pytest.skip("this tree has a vector engine")
    with pytest.raises(ValueError, match="no VectorEngine"):
        Accelerator.__init__(object.__new__(Accelerator), 2, 8, vector=True)


def test_vector_engine_plugs_in():
    """With the tree's vector engine: a VECTOR whose record is out of range stops with the
    engine's BAD_PARAM at its address, counted as isa_sim counts it."""
    from celosia.hdl.accelerator import vector_engine_factory
    if vector_engine_factory() is None:
        pytest.skip("this tree has no vector engine")
    img = error_image("vector", MachineConfig(2, 8), size=0x1000)
    mem, regs = run_accel(img, array=2, vector=True)
    check_against_isa(img, mem, regs, vector_unit=True)
    assert regs["ERROR"] == ErrorCode.BAD_PARAM


def _program_memory(config: MachineConfig, seed: int):
    """Random memory with a zeroed window of 32 KiB at 0x1000, an allocator in it, and helpers
    placing a random matrix (``mat``) or room for a result (``out``) at port-aligned strides:
    each gives its address and stride."""
    from celosia.sim.tb_accelerator import _Alloc

    rng = np.random.default_rng(seed)
    w = config.port_bytes
    base, size = 0x1000, 0x8000
    mem = rng.integers(0, 256, base + size + 0x1000, dtype=np.uint8)
    mem[base:base + size] = 0
    al = _Alloc(mem, base, max(w, isa.INSTR_BYTES))

    def rup(n):
        return -(-n // w) * w

    def mat(rows, cols, dtype, lo, hi):
        stride = rup(cols * np.dtype(dtype).itemsize)
        return al.matrix(rng.integers(lo, hi, (rows, cols)), dtype, stride), stride

    def out(rows, cols, nbytes):
        stride = rup(cols * nbytes)
        return al.put(bytes(rows * stride)), stride

    return rng, mem, al, mat, out


def sync_handover_image(config: MachineConfig, *, seed: int = 0, k: int = 48):
    """Two commands of one unit back to back, a SYNC naming that unit, then a command of the
    other unit that reads what the second one wrote, in both directions:

        MATMUL (long), MATMUL -> X (int32), SYNC(MATMUL), VECTOR X -> Y (int8),
        VECTOR, VECTOR -> Z (int8), SYNC(VECTOR), MATMUL Z -> out, HALT

    The second command of each pair waits in its unit's issue slot while the SYNC waits, and
    is handed to the engine only then: the SYNC must still wait for it (it once passed in the
    cycle of the hand-over, and the next unit read X before the matmul had written it)."""
    from celosia.sim.tb_accelerator import Image

    rng, mem, al, mat, out = _program_memory(config, seed)
    base, size = 0x1000, 0x8000

    m, n = 4, 8
    program = []
    a, a_s = mat(8, k, np.int8, -128, 128)
    b, b_s = mat(k, 8, np.int8, -128, 128)
    c, c_s = out(8, 8, 4)
    program.append(isa.matmul(m=8, k=k, n=8, a_addr=a, a_stride=a_s, b_addr=b, b_stride=b_s,
                              c_addr=c, c_stride=c_s))
    a2, a2_s = mat(m, 16, np.int8, -128, 128)
    b2, b2_s = mat(16, n, np.int8, -128, 128)
    x, x_s = out(m, n, 4)
    program.append(isa.matmul(m=m, k=16, n=n, a_addr=a2, a_stride=a2_s, b_addr=b2,
                              b_stride=b2_s, c_addr=x, c_stride=x_s))
    program.append(isa.sync(Unit.MATMUL))
    r, r_s = mat(m, n, np.int16, -8, 8)
    y, y_s = out(m, n, 1)
    program.append(isa.vector(op=isa.VecOp.RESIDUAL, rows=m, cols=n, src_addr=x, src_stride=x_s,
                              res_addr=r, res_stride=r_s, res_shift=4, dst_addr=y, dst_stride=y_s,
                              src_fmt=OutFormat.INT32, dst_fmt=OutFormat.INT8))
    s, s_s = mat(8, 64, np.int32, -1 << 12, 1 << 12)
    sr, sr_s = mat(8, 64, np.int16, -100, 100)
    t, t_s = out(8, 64, 4)
    program.append(isa.vector(op=isa.VecOp.RESIDUAL, rows=8, cols=64, src_addr=s, src_stride=s_s,
                              res_addr=sr, res_stride=sr_s, dst_addr=t, dst_stride=t_s,
                              src_fmt=OutFormat.INT32, dst_fmt=OutFormat.INT32))
    z, z_s = out(m, 16, 1)
    program.append(isa.vector(op=isa.VecOp.RESIDUAL, rows=m, cols=16, src_addr=s, src_stride=s_s,
                              res_addr=sr, res_stride=sr_s, res_shift=1, dst_addr=z,
                              dst_stride=z_s, src_fmt=OutFormat.INT32, dst_fmt=OutFormat.INT8))
    program.append(isa.sync(Unit.VECTOR))
    b3, b3_s = mat(16, n, np.int8, -128, 128)
    o, o_s = out(m, n, 4)
    program.append(isa.matmul(m=m, k=16, n=n, a_addr=z, a_stride=z_s, b_addr=b3, b_stride=b3_s,
                              c_addr=o, c_stride=o_s))
    program.append(isa.halt())
    prog = al.put(b"".join(ins.encode() for ins in program))
    assert al.top <= base + size
    return Image(mem, base, size, prog, config, {"y": y, "out": o})


def test_sync_waits_for_a_command_handed_over_while_it_waits():
    from celosia.hdl.accelerator import vector_engine_factory
    if vector_engine_factory() is None:
        pytest.skip("this tree has no vector engine")
    img = sync_handover_image(MachineConfig(2, 8))
    mem, regs = run_accel(img, array=2, vector=True)
    check_against_isa(img, mem, regs, vector_unit=True)
    assert regs["ERROR"] == 0 and regs["MATMUL_COUNT"] == 3 and regs["VECTOR_COUNT"] == 3


def decoder_ops_image(config: MachineConfig, *, seed: int = 0):
    """The decoder ops the RTL runs, in a program as the decoder compiler uses them:

        MATMUL -> X (int32), SYNC(MATMUL), RESIDUAL32 X + R (int32) -> Y (int16),
        WIDE_SPLIT Y -> planes (int8, 2m rows), SOFTMAX_WIDE X -> P (int16) + exponents,
        SOFTMAX_DITHER X -> PD (uint8) + exponents, SYNC(VECTOR), MATMUL high plane -> out,
        RMSNORM X (int32) -> N (int16), SYNC(VECTOR), SILU_GATE gate Y, up N (wide) -> S (int8)
        + exponents, SILU_GATE gate N, up Y (narrow: saturated to int8) -> S2 (int16)
        + exponents, SYNC(VECTOR), WIDE_LO of X by S's exponents -> L (int32), ROTARY of Y
        with Y as its cos | sin rows -> P (int16), ROTARY of the high plane (int8 rows) with the
        real tables -> RT (int8)"""
    from celosia.sim.tb_accelerator import Image

    rng, mem, al, mat, out = _program_memory(config, seed)
    w, base, size = config.port_bytes, 0x1000, 0x8000

    m, k, n = 4, 16, 8
    dec = isa.VecOp
    a, a_s = mat(m, k, np.int8, -128, 128)
    b, b_s = mat(k, n, np.int8, -128, 128)
    x, x_s = out(m, n, 4)
    r, r_s = mat(m, n, np.int32, -1 << 31, 1 << 31)
    y, y_s = out(m, n, 2)
    pl, pl_s = out(2 * m, n, 1)
    p, p_s = out(m, n, 2)
    e = al.put(bytes(w))
    pd, pd_s = out(m, n, 1)
    ed = al.put(bytes(w))
    b2, b2_s = mat(n, n, np.int8, -128, 128)
    o, o_s = out(m, n, 4)
    nrm, nrm_s = out(m, n, 2)
    sg, sg_s = out(m, n, 1)
    sg2, sg2_s = out(m, n, 2)
    es, es2 = al.put(bytes(w)), al.put(bytes(w))
    srec = np.zeros(n, dtype=isa.VEC_PARAM_DTYPE)
    srec["mult"] = rng.integers(0, 1 << nx.MULT_BITS, n)
    srec["shift"] = rng.integers(nx.ROW_EXP_MAX + 10, nx.SHIFT_MAX + 1, n)
    srecs = al.put(srec.tobytes())
    lo, lo_s = out(m, n, 4)
    cos, sin = nx.rope_tables(10000.0, n, 50)
    pos = rng.integers(0, 50, size=m)
    trig, trig_s = mat(m, n, np.int16, 0, 1)
    mem_view = np.ndarray((m, n), dtype="<i2", buffer=mem, offset=trig, strides=(trig_s, 2))
    mem_view[...] = np.concatenate([cos[pos], sin[pos]], axis=1)
    rt, rt_s = out(m, n, 1)
    rec = np.zeros(n, dtype=isa.VEC_PARAM_DTYPE)
    rec["mult"] = rng.integers(-(1 << 19), 1 << 19, n)
    rec["bias"][0] = 1 << 40                               # the epsilon
    recs = al.put(rec.tobytes())
    program = [
        isa.matmul(m=m, k=k, n=n, a_addr=a, a_stride=a_s, b_addr=b, b_stride=b_s,
                   c_addr=x, c_stride=x_s),
        isa.sync(Unit.MATMUL),
        isa.vector(op=dec.RESIDUAL32, rows=m, cols=n, src_addr=x, src_stride=x_s, res_addr=r,
                   res_stride=r_s, res_shift=0, dst_addr=y, dst_stride=y_s,
                   src_fmt=OutFormat.INT32, dst_fmt=OutFormat.INT16),
        isa.vector(op=dec.WIDE_SPLIT, rows=m, cols=n, src_addr=y, src_stride=y_s, dst_addr=pl,
                   dst_stride=pl_s, src_fmt=OutFormat.INT16, dst_fmt=OutFormat.INT8),
        isa.vector(op=dec.SOFTMAX_WIDE, rows=m, cols=n, src_addr=x, src_stride=x_s, dst_addr=p,
                   dst_stride=p_s, e_addr=e, mult=3000, shift=20, causal=1, causal_offset=2,
                   src_fmt=OutFormat.INT32, dst_fmt=OutFormat.INT16),
        isa.vector(op=dec.SOFTMAX_DITHER, rows=m, cols=n, src_addr=x, src_stride=x_s,
                   dst_addr=pd, dst_stride=pd_s, e_addr=ed, mult=3000, shift=20,
                   src_fmt=OutFormat.INT32, dst_fmt=OutFormat.UINT8),
        isa.sync(Unit.VECTOR),
        isa.matmul(m=m, k=n, n=n, a_addr=pl, a_stride=pl_s, b_addr=b2, b_stride=b2_s,
                   c_addr=o, c_stride=o_s),
        isa.vector(op=dec.RMSNORM, rows=m, cols=n, src_addr=x, src_stride=x_s, dst_addr=nrm,
                   dst_stride=nrm_s, p_addr=recs, shift=16, src_fmt=OutFormat.INT32,
                   dst_fmt=OutFormat.INT16),
        isa.sync(Unit.VECTOR),
        isa.vector(op=dec.SILU_GATE, rows=m, cols=n, src_addr=y, src_stride=y_s, res_addr=nrm,
                   res_stride=nrm_s, res_shift=8, p_addr=srecs, e_addr=es, dst_addr=sg,
                   dst_stride=sg_s, src_fmt=OutFormat.INT16, dst_fmt=OutFormat.INT8),
        isa.vector(op=dec.SILU_GATE, rows=m, cols=n, src_addr=nrm, src_stride=nrm_s, res_addr=y,
                   res_stride=y_s, res_shift=0, p_addr=srecs, e_addr=es2, dst_addr=sg2,
                   dst_stride=sg2_s, src_fmt=OutFormat.INT16, dst_fmt=OutFormat.INT16),
        isa.sync(Unit.VECTOR),
        isa.vector(op=dec.WIDE_LO, rows=m, cols=n, src_addr=x, src_stride=x_s, e_addr=es,
                   dst_addr=lo, dst_stride=lo_s, src_fmt=OutFormat.INT32,
                   dst_fmt=OutFormat.INT32),
        isa.vector(op=dec.ROTARY, rows=m, cols=n, src_addr=y, src_stride=y_s, dst_addr=p,
                   dst_stride=p_s, res_addr=y, res_stride=y_s, src_fmt=OutFormat.INT16,
                   dst_fmt=OutFormat.INT16),
        isa.vector(op=dec.ROTARY, rows=m, cols=n, src_addr=pl, src_stride=pl_s, dst_addr=rt,
                   dst_stride=rt_s, res_addr=trig, res_stride=trig_s, src_fmt=OutFormat.INT8,
                   dst_fmt=OutFormat.INT8),
        isa.halt(),
    ]
    prog = al.put(b"".join(ins.encode() for ins in program))
    assert al.top <= base + size
    return Image(mem, base, size, prog, config, {})


def test_decoder_ops_in_a_program():
    """``Sizing(decoder_ops=True)``: the controller and the vector engine of the whole
    accelerator run RESIDUAL32, WIDE_SPLIT, SOFTMAX_WIDE, SOFTMAX_DITHER, RMSNORM, SILU_GATE
    and WIDE_LO and ROTARY between matmuls as the isa simulator modelling that build does."""
    from celosia.hdl.params import Sizing
    sizing = Sizing(decoder_ops=True)
    img = decoder_ops_image(MachineConfig(2, 8))
    mem, regs = run_accel(img, array=2, vector=True, sizing=sizing)
    check_against_isa(img, mem, regs, vector_unit=True, decoder_ops=sizing.decoder_op_set())
    assert regs["ERROR"] == ErrorCode.OK and regs["VECTOR_COUNT"] == 10
    assert regs["MATMUL_COUNT"] == 2
