"""The exported accelerator under cocotb: cocotbext-axi's AxiRam behind the AXI4 master and
AxiLiteMaster on the CSRs; memory and CSRs bit-exact with sw/isa_sim.py."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from celosia.hdl.isa import ErrorCode, MachineConfig
from celosia.sim.tb_accelerator import (error_image, matmul_chain, reference,
                                        run_accelerator_cocotb, status_bits)

ICARUS = pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")
CFG = MachineConfig(4, 8)


def check(simulator, img):
    started = time.monotonic()
    mem, regs, build_s, wall = run_accelerator_cocotb(simulator, img, array=CFG.array, k_max=64)
    ref_mem, ref, mach = reference(img)
    for name in ("ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT", "VECTOR_COUNT"):
        assert regs[name] == ref[name], (name, regs[name], ref[name], mach.error_detail)
    assert status_bits(regs["STATUS"]) == ref["STATUS"]
    diff = np.flatnonzero(mem != ref_mem)
    assert diff.size == 0, f"{diff.size} bytes differ, first at {diff[0]:#x}"
    print(f"{simulator}: {regs['CYCLES']} cycles (isa_sim model {ref['CYCLES']}), "
          f"{regs['CYCLES'] / wall:.0f} cycles/s, build {build_s:.1f} s, "
          f"total {time.monotonic() - started:.1f} s")
    return regs


@ICARUS
def test_matmul_chain_icarus():
    img = matmul_chain(11, CFG, links=3, max_dim=10)
    regs = check("icarus", img)
    assert regs["ERROR"] == ErrorCode.OK and regs["MATMUL_COUNT"] == 3


@ICARUS
@pytest.mark.parametrize("kind", ["illegal", "window"])
def test_errors_icarus(kind):
    regs = check("icarus", error_image(kind, CFG, size=0x1000))
    assert regs["ERROR"] == {"illegal": ErrorCode.ILLEGAL_OPCODE,
                             "window": ErrorCode.BAD_ADDRESS}[kind]


@pytest.mark.slow
def test_matmul_chain_verilator():
    img = matmul_chain(12, CFG, links=3, max_dim=10)
    regs = check("verilator", img)
    assert regs["ERROR"] == ErrorCode.OK
