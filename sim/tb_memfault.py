"""Memory faults on the exported accelerator under cocotb (Icarus or Verilator).

cocotbext-axi's ``AxiRam`` answers a read or write with SLVERR when its ``_read``/``_write``
raises; :func:`run_memfault_cocotb` wraps those two of one ``AxiRam`` so that a chosen beat
raises (a read error, a write error) or a read stalls for a number of cycles (a memory that
stops answering: its read process, and so every later read, waits). One simulation starts the
same program several times without a reset, each run with its own fault (or none), as a driver
would after an error: ``CTRL.abort``, then ``CTRL.start``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from celosia.hdl.isa import CSR

from .tb_accelerator import CSR_RESULTS, Image, start_and_wait

__all__ = ["run_memfault_cocotb"]


def run_memfault_cocotb(simulator: str, img: Image, runs: list[dict | None], *, array: int,
                        k_max: int = 64, mem_timeout: int = 400):
    """Run ``img``'s program once per entry of ``runs`` (a fault ``{"kind": "read" | "write" |
    "hang", "lo": addr, "hi": addr[, "cycles": n]}`` for the first beat in ``[lo, hi)``, or
    None). Returns ``([{CSR: value} per run], final memory, build seconds)``."""
    import tempfile
    from pathlib import Path

    from celosia.hdl.accelerator import TOP_NAME, verilog_text

    from .cocotb_runner import run_cocotb

    verilog = verilog_text(array, img.config.port_bytes, k_max=k_max, mem_timeout=mem_timeout)
    with tempfile.TemporaryDirectory(prefix="celosia-memfault-") as tmp:
        job = Path(tmp) / "job.npz"
        np.savez(job, memory=img.mem)
        params = dict(job=str(job), base=img.base, size=img.size, prog=img.prog, runs=runs,
                      timeout=mem_timeout)
        build_s = run_cocotb(simulator, verilog, TOP_NAME, "celosia.sim.tb_memfault",
                             params=params, testcase="memfault_runs")
        out = np.load(Path(tmp) / "job.out.npz")
        return json.loads(str(out["regs"])), out["memory"], build_s


try:
    import cocotb
except ImportError:
    cocotb = None

if cocotb is not None:
    @cocotb.test()
    async def memfault_runs(dut):
        from cocotb.clock import Clock
        from cocotb.triggers import ClockCycles, RisingEdge
        from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

        p = json.loads(os.environ["CELOSIA_TB"])
        mem = np.load(p["job"])["memory"]
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        ram = AxiRam(AxiBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst, size=len(mem))
        ram.write(0, mem.tobytes())
        csr = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil_"), dut.clk, dut.rst)
        state = {"fault": None, "cycle": 0, "hang_end": None}

        async def count():
            while True:
                await RisingEdge(dut.clk)
                state["cycle"] += 1
        cocotb.start_soon(count())

        def hit(kind, address):
            f = state["fault"]
            if f and f["kind"] == kind and f["lo"] <= address < f["hi"]:
                state["fault"] = None          # once
                return f
            return None

        read, write = ram.read_if._read, ram.write_if._write

        async def faulty_read(address, length):
            if hit("read", address):
                raise OSError("injected read error")        # AxiRam answers SLVERR
            f = hit("hang", address)
            if f:
                state["hang_end"] = state["cycle"] + f["cycles"]
                await ClockCycles(dut.clk, f["cycles"])
            return await read(address, length)

        async def faulty_write(address, data):
            if hit("write", address):
                raise OSError("injected write error")       # AxiRam answers SLVERR
            await write(address, data)

        ram.read_if._read, ram.write_if._write = faulty_read, faulty_write

        dut.rst.value = 1
        await ClockCycles(dut.clk, 4)
        dut.rst.value = 0
        await ClockCycles(dut.clk, 2)

        async def rd(name):
            return await csr.read_dword(getattr(CSR, name).offset)

        async def wr(name, value):
            await csr.write_dword(getattr(CSR, name).offset, value)

        await wr("WIN_BASE", p["base"])
        await wr("WIN_SIZE", p["size"])
        await wr("PROG_ADDR", p["prog"])
        results = []
        for i, fault in enumerate(p["runs"]):
            if i:
                await wr("CTRL", CSR.CTRL.make(abort=1))
                # After a timeout: start again while the memory still owes the old run's
                # beats (under half the watchdog's bound before it answers): they come late
                # and must be dropped.
                if state["hang_end"] is not None:
                    while state["hang_end"] - state["cycle"] > p["timeout"] // 2:
                        await ClockCycles(dut.clk, 16)
                    state["hang_end"] = None
            state["fault"] = fault
            await start_and_wait(dut, rd, wr, 200_000)
            regs = {name: await rd(name) for name in CSR_RESULTS}
            regs["fired"] = state["fault"] is None
            results.append(regs)
        await ClockCycles(dut.clk, 2)
        out = np.frombuffer(ram.read(0, len(mem)), np.uint8)
        np.savez(p["job"].replace("job.npz", "job.out.npz"), memory=out,
                 regs=json.dumps(results))
