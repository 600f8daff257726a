"""Programs for the whole accelerator, and its cocotb testbench.

The first half is plain NumPy, shared by the Amaranth, cocotb and Verilator tests:
:func:`matmul_chain` builds a memory image with a small compiled program (a chain of MATMULs,
each consuming the previous result, fenced by SYNC, ending in HALT) and :func:`reference`
runs an image through ``sw/isa_sim.py`` for the expected memory and CSRs.

The second half is the cocotb testbench (run by ``run_accelerator_cocotb``): cocotbext-axi's
``AxiRam`` serves the AXI4 master and ``AxiLiteMaster`` drives the CSRs; parameters and the
image travel as an ``.npz`` file named in ``CELOSIA_TB``, the final memory and CSRs go back
the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from celosia.hdl import isa
from celosia.hdl.isa import CSR, INSTR_BYTES, MachineConfig, Unit
from celosia.hdl.params import AddendMode, OutFormat

__all__ = ["Image", "matmul_chain", "error_image", "reference", "CSR_RESULTS",
           "run_accelerator_cocotb"]

#: CSRs a run is compared on.
CSR_RESULTS = ("STATUS", "ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT", "VECTOR_COUNT")


@dataclass
class Image:
    """A memory image with a program: run it with WIN_BASE/WIN_SIZE/PROG_ADDR as given."""
    mem: np.ndarray
    base: int
    size: int
    prog: int
    config: MachineConfig
    notes: dict = field(default_factory=dict)


class _Alloc:
    def __init__(self, mem, base, align):
        self.mem, self.top, self.align = mem, base, align

    def put(self, raw: bytes) -> int:
        addr = self.top
        self.mem[addr:addr + len(raw)] = np.frombuffer(raw, np.uint8)
        self.top += -(-max(len(raw), 1) // self.align) * self.align
        return addr

    def matrix(self, values: np.ndarray, dtype, stride: int) -> int:
        rows, cols = values.shape
        buf = np.zeros((rows, stride), np.uint8)
        buf[:, :cols * np.dtype(dtype).itemsize] = values.astype(dtype).view(np.uint8).reshape(rows, -1)
        return self.put(buf.tobytes())


def _stride(row_bytes: int, w: int, rng) -> int:
    return -(-row_bytes // w) * w + w * int(rng.integers(0, 2))


def matmul_chain(seed: int, config: MachineConfig, *, links: int = 3, base: int = 0x1000,
                 size: int = 0x10000, guard: int = 0x1000, max_dim: int = 12,
                 fence: bool = True) -> Image:
    """A chain of ``links`` MATMULs: link i computes ``C_i = requant(A_i @ B_i)`` (int8) with
    A_0 random and A_i = C_{i-1}; modes vary (transposed B, row shift, ACC32 addend, a raw
    int32 last link). Memory outside the window is a random pattern (it must not change)."""
    rng = np.random.default_rng(seed)
    w = config.port_bytes
    mem = rng.integers(0, 256, base + size + guard, dtype=np.uint8)
    mem[base:base + size] = 0
    al = _Alloc(mem, base, max(w, INSTR_BYTES))
    m = int(rng.integers(1, max_dim + 1))
    k = int(rng.integers(1, max_dim + 1))
    a_stride = _stride(k, w, rng)
    a_addr = al.matrix(rng.integers(-128, 128, (m, k)), np.int8, a_stride)
    program = []
    for i in range(links):
        last = i == links - 1
        n = int(rng.integers(1, max_dim + 1))
        bt = int(rng.integers(0, 2))
        if bt:
            b_stride = _stride(k, w, rng)
            b_addr = al.matrix(rng.integers(-128, 128, (n, k)), np.int8, b_stride)
        else:
            b_stride = _stride(n, w, rng)
            b_addr = al.matrix(rng.integers(-128, 128, (k, n)), np.int8, b_stride)
        rec = np.zeros(n, dtype=isa.ENGINE_PARAM_DTYPE)
        rec["bias"] = rng.integers(-5000, 5000, n)
        rec["mult"] = rng.integers(1 << 13, 1 << 15, n)
        rec["shift"] = rng.integers(14, 24, n)
        p_addr = al.put(rec.tobytes())
        fields = dict(m=m, k=k, n=n, a_addr=a_addr, a_stride=a_stride, b_addr=b_addr,
                      b_stride=b_stride, b_transposed=bt, p_addr=p_addr, use_params=1)
        if rng.random() < 0.5:
            e = rng.integers(0, 10, m)          # above ROW_EXP_MAX is clamped
            fields.update(row_shift=1, e_addr=al.put(e.astype(np.uint8).tobytes()))
        if last:
            c_stride = _stride(4 * n, w, rng)
            fields.update(requant=0)
            if rng.random() < 0.5:
                d_addr = al.matrix(rng.integers(-1 << 20, 1 << 20, (m, n)), np.int32, c_stride)
                fields.update(addend=AddendMode.ACC32, d_addr=d_addr, d_stride=c_stride)
        else:
            c_stride = _stride(n, w, rng)
            fields.update(requant=1, out_fmt=OutFormat.INT8,
                          zero_point=int(rng.integers(-3, 4)))
        c_addr = al.put(bytes(m * c_stride))
        fields.update(c_addr=c_addr, c_stride=c_stride)
        program.append(isa.matmul(**fields))
        if fence and not last:
            program.append(isa.sync(Unit.MATMUL))
        a_addr, a_stride, k = c_addr, c_stride, n
    program.append(isa.halt())
    code = b"".join(ins.encode() for ins in program)
    prog = al.put(code)
    assert al.top <= base + size, "window too small for the chain"
    return Image(mem, base, size, prog, config, {"instructions": len(program), "result": c_addr})


def error_image(kind: str, config: MachineConfig, *, base: int = 0x1000, size: int = 0x4000,
                guard: int = 0x1000, seed: int = 0) -> Image:
    """A one-matmul program (plus HALT) made to fail: ``illegal`` (opcode 0x77 after the
    matmul), ``window`` (C outside the window), ``param`` (a multiplier >= 2**15),
    ``vector`` (a VECTOR instruction), ``fetch`` (runs off the end of the window) or ``ok``."""
    img = matmul_chain(seed, config, links=1, base=base, size=size, guard=guard, max_dim=6)
    mem, w = img.mem, config.port_bytes
    ins = isa.Instruction.decode(mem[img.prog:img.prog + INSTR_BYTES].tobytes())
    f = dict(ins.fields)
    after = [isa.halt().encode()]
    if kind == "illegal":
        after = [bytes([0x77]) + bytes(INSTR_BYTES - 1)]
    elif kind == "window":
        f["c_addr"] = base + size - w          # the last rows fall past the window
        f["m"] = max(f["m"], 2)
        f["c_stride"] = max(f["c_stride"], 4 * f["n"] + w)
        f["c_stride"] -= f["c_stride"] % w
    elif kind == "param":
        rec_addr = f["p_addr"] + 8 * (f["n"] - 1)
        mem[rec_addr + 4:rec_addr + 6] = np.frombuffer((1 << 15).to_bytes(2, "little"), np.uint8)
        f["requant"], f["out_fmt"] = 1, OutFormat.INT8
        f["addend"] = 0
    elif kind == "vector":
        after = [isa.vector(op=isa.VecOp.REQUANT, rows=1, cols=4, src_addr=base, dst_addr=base,
                            p_addr=base).encode(), isa.halt().encode()]
    elif kind == "fetch":
        after = []
        prog = base + size - INSTR_BYTES
        raw = isa.Instruction(ins.opcode, f).encode()
        mem[prog:prog + INSTR_BYTES] = np.frombuffer(raw, np.uint8)
        img.prog = prog
        return img
    elif kind != "ok":
        raise ValueError(kind)
    code = isa.Instruction(ins.opcode, f).encode() + b"".join(after)
    mem[img.prog:img.prog + len(code)] = np.frombuffer(code, np.uint8)
    return img


def reference(img: Image, *, vector_unit: bool = False, max_instructions: int = 100_000,
              decoder_ops=False):
    """Run ``img`` on the isa simulator: (final memory, {CSR: value}, machine);
    ``decoder_ops`` as ``IsaMachine``'s (``Sizing.decoder_op_set()`` for an RTL build)."""
    from celosia.sw.isa_sim import IsaMachine

    mach = IsaMachine(img.config, len(img.mem), vector_unit=vector_unit, decoder_ops=decoder_ops)
    mach.mem[:] = img.mem
    mach.write_csr("WIN_BASE", img.base)
    mach.write_csr("WIN_SIZE", img.size)
    mach.write_csr("PROG_ADDR", img.prog)
    mach.write_csr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))
    assert mach.run(max_instructions=max_instructions)
    regs = {name: mach.read_csr(name) for name in CSR_RESULTS}
    regs["CYCLES"] = mach.read_csr("CYCLES_LO") | mach.read_csr("CYCLES_HI") << 32
    return mach.mem.copy(), regs, mach


def status_bits(value: int) -> int:
    """STATUS without the live unit-busy bits (compare these across backends)."""
    return value & CSR.STATUS.make(busy=1, done=1, error=1)


# --- cocotb testbench ---------------------------------------------------------------------------

def run_accelerator_cocotb(simulator: str, img: Image, *, array: int, vector: bool = False,
                           k_max: int = 256, latency: int = 0, max_cycles: int = 2_000_000):
    """Run ``img`` on the exported accelerator under cocotb; returns
    ``(memory, {CSR: value}, build seconds, wall seconds)``."""
    import tempfile
    from pathlib import Path

    from celosia.hdl.accelerator import TOP_NAME, verilog_text

    from .cocotb_runner import run_cocotb

    verilog = verilog_text(array, img.config.port_bytes, vector=vector, k_max=k_max)
    with tempfile.TemporaryDirectory(prefix="celosia-accel-") as tmp:
        job = Path(tmp) / "job.npz"
        np.savez(job, memory=img.mem)
        params = dict(job=str(job), base=img.base, size=img.size, prog=img.prog,
                      latency=latency, max_cycles=max_cycles)
        build_s = run_cocotb(simulator, verilog, TOP_NAME, "celosia.sim.tb_accelerator",
                             params=params, testcase="run_program")
        out = np.load(Path(tmp) / "job.out.npz")
        regs = json.loads(str(out["regs"]))
        return out["memory"], regs, build_s, float(out["wall"])


try:
    import cocotb
except ImportError:            # the NumPy half works without cocotb
    cocotb = None

if cocotb is not None:
    @cocotb.test()
    async def run_program(dut):
        import time

        from cocotb.clock import Clock
        from cocotb.triggers import ClockCycles, RisingEdge
        from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

        p = json.loads(os.environ["CELOSIA_TB"])
        data = np.load(p["job"])
        mem = data["memory"]
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        ram = AxiRam(AxiBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst, size=len(mem))
        ram.write(0, mem.tobytes())
        csr = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil_"), dut.clk, dut.rst)
        dut.rst.value = 1
        await ClockCycles(dut.clk, 4)
        dut.rst.value = 0
        await ClockCycles(dut.clk, 2)

        async def rd(name):
            return (await csr.read_dword(getattr(CSR, name).offset))

        async def wr(name, value):
            await csr.write_dword(getattr(CSR, name).offset, value)

        assert await rd("ID") == isa.ID_MAGIC
        await wr("WIN_BASE", p["base"])
        await wr("WIN_SIZE", p["size"])
        await wr("PROG_ADDR", p["prog"])
        started = time.perf_counter()
        await start_and_wait(dut, rd, wr, p["max_cycles"])
        wall = time.perf_counter() - started
        regs = {name: await rd(name) for name in CSR_RESULTS}
        regs["CYCLES"] = await rd("CYCLES_LO") | (await rd("CYCLES_HI")) << 32
        for name in ("MATMUL_BUSY", "SYNC_STALL"):
            regs[name] = await rd(name)
        await RisingEdge(dut.clk)
        out = np.frombuffer(ram.read(0, len(mem)), np.uint8)
        np.savez(p["job"].replace("job.npz", "job.out.npz"), memory=out,
                 regs=json.dumps(regs), wall=wall)


# --- Amaranth-simulator helpers ---------------------------------------------------------------

async def start_and_wait(dut, rd, wr, max_cycles: int) -> int:
    """Start the accelerator (counters cleared) and poll STATUS every 64 cycles until it is
    idle; fails after ``max_cycles``. Returns the cycles waited."""
    from cocotb.triggers import ClockCycles

    await wr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))
    cycles = 0
    while True:
        await ClockCycles(dut.clk, 64)
        cycles += 64
        if not CSR.STATUS.get(await rd("STATUS"), "busy"):
            return cycles
        assert cycles < max_cycles, "accelerator did not stop"


async def axil_write(ctx, bus, addr: int, value: int, strb: int = 0xF) -> None:
    """One AXI4-Lite write on ``bus`` (a slave's ``In(AXI4LiteSignature)``) in Amaranth's
    simulator."""
    ctx.set(bus.awaddr, addr)
    ctx.set(bus.wdata, value)
    ctx.set(bus.wstrb, strb)
    ctx.set(bus.awvalid, 1)
    ctx.set(bus.wvalid, 1)
    await ctx.tick().until(bus.awready & bus.wready)
    ctx.set(bus.awvalid, 0)
    ctx.set(bus.wvalid, 0)
    ctx.set(bus.bready, 1)
    await ctx.tick().until(bus.bvalid)
    ctx.set(bus.bready, 0)


async def axil_read(ctx, bus, addr: int) -> int:
    ctx.set(bus.araddr, addr)
    ctx.set(bus.arvalid, 1)
    await ctx.tick().until(bus.arready)
    ctx.set(bus.arvalid, 0)
    ctx.set(bus.rready, 1)
    data, = await ctx.tick().sample(bus.rdata).until(bus.rvalid)
    ctx.set(bus.rready, 0)
    return int(data)


class AxiMemoryModel:
    """An AXI4 slave memory for Amaranth's simulator: bursts of any length, responses in
    order after ``latency`` cycles, optional random stalls. ``axi`` is the master's
    ``Out(AXI4Signature)``.

    Fault injection (each a function of the beat's byte address, called once per beat):
    ``rresp(addr)`` and ``bresp(addr)`` give the response code (0 OKAY, 2 SLVERR, 3 DECERR;
    an error beat's write is not performed), and ``freeze(addr)``, asked at each read
    burst's acceptance with its first address, a number of cycles during which the memory
    then answers nothing at all (no ready on any channel, no RVALID, no BVALID): a memory
    that stops answering, and answers late if the number is finite. ``log`` collects
    ``("r"|"w", addr, resp)`` for every beat and response served."""

    def __init__(self, axi, mem: np.ndarray, port_bytes: int, *, latency: int = 2,
                 stall: float = 0.0, seed: int = 3, rresp=None, bresp=None, freeze=None):
        import random

        self.axi, self.mem, self.w = axi, mem, port_bytes
        self.latency, self.stall = latency, stall
        self.rng = random.Random(seed)
        self.rresp, self.bresp, self.freeze = rresp, bresp, freeze
        self.log = []

    async def testbench(self, ctx):
        from collections import deque

        a, w = self.axi, self.w
        reads = deque()      # (due, addr, last)
        writes = deque()     # addresses awaiting data
        bresps = deque()     # responses owed
        cycle = 0
        frozen_until = -1
        while True:
            frozen = cycle < frozen_until
            go = self.rng.random() >= self.stall and not frozen
            ctx.set(a.arready, go)
            ctx.set(a.awready, go)
            ctx.set(a.wready, bool(writes) and go)
            rv = bool(reads) and reads[0][0] <= cycle and not frozen
            ctx.set(a.rvalid, rv)
            if rv:
                addr = reads[0][1]
                ctx.set(a.rdata, int.from_bytes(self.mem[addr:addr + w].tobytes(), "little"))
                ctx.set(a.rlast, reads[0][2])
                ctx.set(a.rresp, reads[0][3])
            bv = bool(bresps) and not frozen
            ctx.set(a.bvalid, bv)
            if bv:
                ctx.set(a.bresp, bresps[0])
            (_, _, arv, araddr, arlen, awv, awaddr, wv, wdata, wstrb, rr, br) = await ctx.tick().sample(
                a.arvalid, a.araddr, a.arlen, a.awvalid, a.awaddr, a.wvalid, a.wdata, a.wstrb,
                a.rready, a.bready)
            if rv and rr:
                self.log.append(("r", reads[0][1], reads[0][3]))
                reads.popleft()
            if bv and br:
                bresps.popleft()
            if arv and go:
                for i in range(arlen + 1):
                    addr = araddr + i * w
                    resp = self.rresp(addr) if self.rresp else 0
                    reads.append((cycle + self.latency, addr, i == arlen, resp))
                if self.freeze:
                    hold = self.freeze(araddr)
                    if hold:
                        frozen_until = cycle + 1 + hold
            if wv and writes and go:
                addr = writes.popleft()
                resp = self.bresp(addr) if self.bresp else 0
                if resp == 0:
                    raw = np.frombuffer(int(wdata).to_bytes(w, "little"), np.uint8)
                    sel = np.array([(wstrb >> i) & 1 for i in range(w)], bool)
                    self.mem[addr:addr + w][sel] = raw[sel]
                self.log.append(("w", addr, resp))
                bresps.append(resp)
            if awv and go:
                writes.append(awaddr)
            cycle += 1
