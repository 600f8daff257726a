"""The CSR block: Celosia's host registers (``hdl/isa.py`` ``CSR_REGISTERS``) as an AXI4-Lite
slave with 32-bit data.

Every register, offset and field comes from :mod:`celosia.hdl.isa`; this module only decides
how each is produced. Semantics follow ``sw/isa_sim.py``:

* CTRL (write only, reads 0): ``start`` (ignored while running), ``abort`` (ignored when
  idle), ``clear_counters`` (all counters to 0). The three are one-cycle pulses to the
  controller.
* STATUS: busy, done, error from the controller; matmul_busy and vector_busy live.
* CYCLES (64 bits), MATMUL_BUSY, VECTOR_BUSY, SYNC_STALL, MEM_READS and MEM_WRITES restart from
  0 at every start;
  INSTRET, MATMUL_COUNT and VECTOR_COUNT only at ``clear_counters``. Reading CYCLES_LO
  latches the high word, which CYCLES_HI then returns, so a LO-then-HI read is consistent.
  The 32-bit busy/stall counters saturate, the event counters wrap. A board-sized build
  (``counter_bits``, ``cycle_bits``; ``params.Sizing``) has narrower counters: they saturate or
  wrap at their own width and the bits above read as 0; without ``perf_counters`` MATMUL_BUSY,
  VECTOR_BUSY, SYNC_STALL, MEM_READS and MEM_WRITES read 0. MEM_READS and MEM_WRITES count the
  beats of the memory port (``rd_beat``, ``wr_beat``), the host's traffic aside.
* Writes to read-only or unmapped offsets are ignored (response OKAY); reads of unmapped
  offsets return 0. Byte strobes apply to the read/write registers.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from . import isa
from .axi import AXI4LiteSignature
from .controller import ERROR_BITS
from .isa import CSR, INSTR_BYTES, ISA_VERSION

__all__ = ["CsrBlock", "CSR_ADDR_BITS"]

#: Byte-address bits of the CSR window (64 registers).
CSR_ADDR_BITS = 8
assert max(r.offset for r in CSR) < (1 << CSR_ADDR_BITS)


class CsrBlock(wiring.Component):
    """AXI4-Lite slave ``bus`` plus the controller-facing signals (see
    :class:`celosia.hdl.controller.Controller` for their meaning)."""

    def __init__(self, array: int, port_bytes: int, *, counter_bits: int = 32,
                 cycle_bits: int = 64, perf_counters: bool = True):
        assert 1 <= counter_bits <= 32 and 1 <= cycle_bits <= 64
        self.array, self.port_bytes = array, port_bytes
        self.counter_bits, self.cycle_bits = counter_bits, cycle_bits
        self.perf_counters = perf_counters
        super().__init__({
            "bus": In(AXI4LiteSignature(CSR_ADDR_BITS, 32)),
            "start": Out(1), "abort": Out(1), "clear": Out(1),
            "prog_addr": Out(32), "win_base": Out(32), "win_size": Out(32),
            "running": In(1), "done": In(1), "error": In(1),
            "error_code": In(ERROR_BITS), "error_pc": In(32), "pc": In(32),
            "mm_busy": In(1), "vec_busy": In(1),
            "stall": In(1), "retire": In(1), "retire_mm": In(1), "retire_vec": In(1),
            "unretire_mm": In(1), "unretire_vec": In(1),
            "rd_beat": In(1), "wr_beat": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus

        cb = self.counter_bits
        cycles = Signal(self.cycle_bits)
        hi_latch = Signal(max(1, self.cycle_bits - 32))
        instret = Signal(cb)
        mm_busy_n = Signal(cb)
        vec_busy_n = Signal(cb)
        stall_n = Signal(cb)
        mm_count = Signal(cb)
        vec_count = Signal(cb)
        rd_beats = Signal(cb)
        wr_beats = Signal(cb)

        def sat_inc(counter, cond):
            with m.If(cond & (counter != (1 << len(counter)) - 1)):
                m.d.sync += counter.eq(counter + 1)

        # Counters (the start/clear resets below come later and take precedence).
        with m.If(self.running):
            m.d.sync += cycles.eq(cycles + 1)
        if self.perf_counters:
            sat_inc(mm_busy_n, self.mm_busy)
            sat_inc(vec_busy_n, self.vec_busy)
            sat_inc(stall_n, self.stall)
            sat_inc(rd_beats, self.rd_beat)
            sat_inc(wr_beats, self.wr_beat)
        def up_down(counter, up, down):
            """+1 on ``up``, else -1 on ``down``: one adder whose addend is +1 or -1."""
            with m.If(up | down):
                m.d.sync += counter.eq(counter + Mux(up, 1, C(-1, len(counter))))

        up_down(instret, self.retire, self.unretire_mm | self.unretire_vec)
        up_down(mm_count, self.retire_mm, self.unretire_mm)
        up_down(vec_count, self.retire_vec, self.unretire_vec)

        values = {
            "ID": C(isa.ID_MAGIC, 32),
            "CONFIG": C(CSR.CONFIG.make(isa_version=ISA_VERSION, array=self.array,
                                        port_bytes=self.port_bytes, instr_bytes=INSTR_BYTES), 32),
            "CTRL": C(0, 32),
            "STATUS": Cat(self.running, self.done, self.error, self.mm_busy, self.vec_busy),
            "ERROR": self.error_code,
            "ERROR_PC": self.error_pc,
            "PROG_ADDR": self.prog_addr,
            "PC": self.pc,
            "WIN_BASE": self.win_base,
            "WIN_SIZE": self.win_size,
            "CYCLES_LO": cycles[:32],
            "CYCLES_HI": hi_latch if self.cycle_bits > 32 else C(0, 32),
            "INSTRET": instret,
            "MATMUL_BUSY": mm_busy_n,
            "VECTOR_BUSY": vec_busy_n,
            "SYNC_STALL": stall_n,
            "MATMUL_COUNT": mm_count,
            "VECTOR_COUNT": vec_count,
            "MEM_READS": rd_beats,
            "MEM_WRITES": wr_beats,
        }
        assert set(values) == {r.name for r in CSR}, "every register of isa.CSR is implemented"
        for name, field in (("busy", 0), ("done", 1), ("error", 2), ("matmul_busy", 3),
                            ("vector_busy", 4)):
            assert CSR.STATUS.fields[name] == (field, 1)

        # --- reads ---
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        m.d.comb += bus.arready.eq(~bus.rvalid)
        index = bus.araddr[2:]
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [bus.rvalid.eq(1), bus.rresp.eq(0), bus.rdata.eq(0)]
            with m.Switch(index):
                for reg in CSR:
                    with m.Case(reg.offset >> 2):
                        m.d.sync += bus.rdata.eq(values[reg.name])
                        if reg.name == "CYCLES_LO" and self.cycle_bits > 32:
                            m.d.sync += hi_latch.eq(cycles[32:])

        # --- writes: address and data accepted together ---
        m.d.comb += [self.start.eq(0), self.abort.eq(0), self.clear.eq(0)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)
        accept = Signal()
        m.d.comb += [
            accept.eq(bus.awvalid & bus.wvalid & ~bus.bvalid),
            bus.awready.eq(accept),
            bus.wready.eq(accept),
        ]
        rw = {r.name: values[r.name] for r in CSR if r.access == isa.Access.RW}
        with m.If(accept):
            m.d.sync += [bus.bvalid.eq(1), bus.bresp.eq(0)]
            with m.Switch(bus.awaddr[2:]):
                for name, reg in rw.items():
                    with m.Case(getattr(CSR, name).offset >> 2):
                        for b in range(4):
                            with m.If(bus.wstrb[b]):
                                m.d.sync += reg[8 * b:8 * b + 8].eq(bus.wdata[8 * b:8 * b + 8])
                with m.Case(CSR.CTRL.offset >> 2):
                    with m.If(bus.wstrb[0]):
                        ctrl = CSR.CTRL
                        m.d.comb += [
                            self.start.eq(bus.wdata[ctrl.fields["start"][0]] & ~self.running),
                            self.abort.eq(bus.wdata[ctrl.fields["abort"][0]] & self.running),
                            self.clear.eq(bus.wdata[ctrl.fields["clear_counters"][0]]),
                        ]

        with m.If(self.start | self.clear):
            m.d.sync += [cycles.eq(0), mm_busy_n.eq(0), vec_busy_n.eq(0), stall_n.eq(0),
                         rd_beats.eq(0), wr_beats.eq(0)]
        with m.If(self.clear):
            m.d.sync += [instret.eq(0), mm_count.eq(0), vec_count.eq(0), hi_latch.eq(0)]
        return m
