"""Memory faults on the exported accelerator under cocotb, with cocotbext-axi's AxiRam made
to answer SLVERR (its own fault path: a ``_read``/``_write`` that raises) or to stall a read:
one simulation runs a three-MATMUL chain four times without a reset -- a read error in the
second MATMUL's B operand, a write error in its result, a read that stalls three times the
watchdog's bound (restarted while the memory still owes the stalled beats), then clean -- and
the last run is bit-exact with sw/isa_sim.py."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from celosia.hdl import isa
from celosia.hdl.isa import ErrorCode, MachineConfig, Opcode
from celosia.sim.tb_accelerator import matmul_chain, reference
from celosia.sim.tb_memfault import run_memfault_cocotb

CFG = MachineConfig(2, 8)
TIMEOUT = 400


def scenario(simulator):
    img = matmul_chain(7, CFG, links=3, max_dim=6)
    prog = []
    addr = img.prog
    while True:
        ins = isa.Instruction.decode(bytes(img.mem[addr:addr + isa.INSTR_BYTES]))
        prog.append((addr, ins))
        if ins.opcode == Opcode.HALT:
            break
        addr += isa.INSTR_BYTES
    mm = [(a, ins) for a, ins in prog if ins.opcode == Opcode.MATMUL]
    at, ins = mm[1]
    reads, writes = isa.footprint(ins)
    span = {name: s for name, s, _, _ in reads}
    c = writes[0][1]
    runs = [{"kind": "read", "lo": span["b"].start, "hi": span["b"].end},
            {"kind": "write", "lo": c.start, "hi": c.end},
            {"kind": "hang", "lo": span["a"].start, "hi": span["a"].end, "cycles": 3 * TIMEOUT},
            None]
    started = time.monotonic()
    regs, mem, build_s = run_memfault_cocotb(simulator, img, runs, array=CFG.array,
                                             mem_timeout=TIMEOUT)
    for r, code in zip(regs, (ErrorCode.MEM_READ_ERROR, ErrorCode.MEM_WRITE_ERROR,
                              ErrorCode.MEM_TIMEOUT)):
        assert r["fired"], r
        assert ErrorCode(r["ERROR"]) == code and r["ERROR_PC"] == at, (code, r)
    ref_mem, ref, _ = reference(img)
    assert regs[3]["ERROR"] == 0 and regs[3]["INSTRET"] == ref["INSTRET"]
    diff = np.flatnonzero(mem != ref_mem)
    assert diff.size == 0, f"{diff.size} bytes differ, first at {diff[0]:#x}"
    print(f"{simulator}: build {build_s:.1f} s, total {time.monotonic() - started:.1f} s")


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")
def test_memory_faults_icarus():
    scenario("icarus")


def test_memory_faults_verilator():
    scenario("verilator")
