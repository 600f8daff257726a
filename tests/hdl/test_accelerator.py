"""The whole accelerator (CSR block, controller, matmul engine, arbiter, AXI4 master) in
Amaranth's simulator, with a Python AXI4 memory and AXI4-Lite host: compiled programs give the
memory and CSRs of sw/isa_sim.py bit for bit; error programs stop with its code and touch
nothing outside the window."""

import numpy as np
import pytest

from celosia.hdl.accelerator import Accelerator, verilog_text
from celosia.hdl.isa import CSR, ErrorCode, MachineConfig
from celosia.sim.pysim import run
from celosia.sim.tb_accelerator import (AxiMemoryModel, axil_read, axil_write, error_image,
                                        matmul_chain, reference, status_bits)


def run_accel(img, *, array, k_max=64, latency=2, stall=0.0, max_cycles=200_000, vector=False):
    dut = Accelerator(array, img.config.port_bytes, k_max=k_max, vector=vector)
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


def check_against_isa(img, mem, regs, vector_unit=False):
    ref_mem, ref, mach = reference(img, vector_unit=vector_unit)
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
