"""The on-chip memory window: an AXI4 slave for the accelerator's master (:class:`AxiRam`) or a
slave of the accelerator's native memory port (:class:`NativeRam`), plus a byte port for the
UART bridge, over one single-ported RAM (block RAM through ``amaranth.lib.memory``, or iCE40
SPRAM instances).

:class:`NativeRam` serves ``Accelerator(memory="native")``: a write is done in the cycle it is
accepted (so the accelerator's "no write outstanding" is "no write offered") and is taken when
no read response is offered; reads go one per cycle otherwise, data one cycle after the
request, and a response the accelerator has not taken is read again every cycle. The byte
port is served in cycles with neither.

The RAM sits at address 0; addresses wrap modulo its size (the accelerator's window CSRs keep
programs inside ``[0, mem_bytes)``, the bridge rejects anything beyond it). The slave serves
what :class:`celosia.hdl.axi.AxiMaster` issues: ``INCR`` read bursts of ``port_bytes`` beats
(any length, one beat per cycle) and single-beat writes (``AW`` and ``W`` together, ``awlen``
0), one write per cycle while ``B`` is taken at once. Wider-than-one-beat write bursts are not
supported. A read burst runs to its end before a write or a byte access starts; while the
master has not taken a beat, the RAM reads that beat's address again every cycle, so nothing
relies on a RAM holding its output while it is not enabled. Writes go before reads. The byte
port is served in cycles without AXI traffic.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from celosia.hdl.axi import AXI4Signature
from celosia.hdl.engine import MemoryPortSignature

from .bridge import BytePortSignature

__all__ = ["AxiRam", "NativeRam", "SPRAM_BYTES", "add_window"]

#: One iCE40UP5K SPRAM: 16384 words of 16 bits.
SPRAM_BYTES = 32 * 1024


class _Ram(Elaboratable):
    """Single-ported RAM, ``width`` bytes per word; ``rdata`` is the word at ``addr`` one cycle
    after a cycle with ``re`` (afterwards it is not relied on)."""

    def __init__(self, width: int, depth: int, spram: bool):
        self.width, self.depth, self.spram = width, depth, spram
        self.addr = Signal(range(depth))
        self.re = Signal()
        self.we = Signal(width)
        self.wdata = Signal(8 * width)
        self.rdata = Signal(8 * width)

    def elaborate(self, platform):
        m = Module()
        if not self.spram:
            m.submodules.mem = mem = Memory(shape=8 * self.width, depth=self.depth, init=[])
            wp = mem.write_port(granularity=8)
            rp = mem.read_port(transparent_for=())
            m.d.comb += [wp.addr.eq(self.addr), wp.data.eq(self.wdata), wp.en.eq(self.we),
                         rp.addr.eq(self.addr), rp.en.eq(self.re), self.rdata.eq(rp.data)]
            return m
        # iCE40 SPRAM: 16-bit slices side by side, banks of 16K words.
        assert self.width % 2 == 0
        banks = self.depth // 16384
        assert banks * 16384 == self.depth and banks >= 1
        addr = self.addr
        bank = addr[14:] if banks > 1 else C(0, 1)
        bank_q = Signal.like(bank)
        with m.If(self.re):
            m.d.sync += bank_q.eq(bank)
        outs = []
        for b in range(banks):
            slices = []
            for s in range(self.width // 2):
                dout = Signal(16)
                be = self.we[2 * s:2 * s + 2]
                m.submodules[f"spram_{b}_{s}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=addr[:14], i_DATAIN=self.wdata[16 * s:16 * s + 16],
                    i_MASKWREN=Cat(be[0], be[0], be[1], be[1]),
                    i_WREN=be.any(), i_CHIPSELECT=(self.re | self.we.any()) & (bank == b),
                    i_CLOCK=ClockSignal(),
                    i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=dout)
                slices.append(dout)
            outs.append(Cat(*slices))
        with m.Switch(bank_q):
            for b, o in enumerate(outs):
                with m.Case(b):
                    m.d.comb += self.rdata.eq(o)
        return m


def _byte_reads(m, ram, side, byte, width):
    """The byte port's read data: the lane of the word read in a cycle with ``byte``, on the
    next cycle (with ``rvalid``)."""
    lane = Signal(range(width))
    with m.If(byte):
        m.d.sync += lane.eq(side.addr[:width.bit_length() - 1])
    m.d.sync += side.rvalid.eq(byte & ~side.we)
    m.d.comb += side.rdata.eq(ram.rdata.word_select(lane, 8))


class AxiRam(wiring.Component):
    """``mem_bytes`` of RAM behind an AXI4 slave (``port_bytes`` wide) and a byte port."""

    def __init__(self, port_bytes: int, mem_bytes: int, *, spram: bool = False, id_width: int = 1):
        assert port_bytes & (port_bytes - 1) == 0 and mem_bytes % port_bytes == 0
        self.port_bytes, self.mem_bytes, self.spram = port_bytes, mem_bytes, spram
        super().__init__({
            "axi": In(AXI4Signature(32, 8 * port_bytes, id_width)),
            "side": In(BytePortSignature()),
        })

    def elaborate(self, platform):
        m = Module()
        W = self.port_bytes
        lw = W.bit_length() - 1
        depth = self.mem_bytes // W
        m.submodules.ram = ram = _Ram(W, depth, self.spram)
        axi, side = self.axi, self.side
        aw = len(ram.addr)

        def word(a):
            return a[lw:lw + aw]

        reading = Signal()              # a read burst has beats left to issue
        left = Signal(8)                # beats after the next one
        raddr = Signal(aw)              # the beat issued last (the first one: not yet issued)
        first = Signal()                # no beat of this burst issued yet
        hold = Signal()                 # a beat waits for the master: read it again
        rd_addr = Signal(aw)
        issue = Signal()                # a read beat from the RAM this cycle
        free = Signal()                 # no read burst, no beat waiting for the master
        write = Signal()
        start = Signal()
        byte = Signal()
        m.d.comb += [
            issue.eq(reading & (~axi.rvalid | axi.rready)),
            free.eq(~reading & ~axi.rvalid),
            write.eq(free & axi.awvalid & axi.wvalid & (~axi.bvalid | axi.bready)),
            start.eq(free & axi.arvalid & ~axi.awvalid),
            byte.eq(free & side.valid & ~axi.awvalid & ~axi.arvalid),
            hold.eq(axi.rvalid & ~axi.rready),
            rd_addr.eq(raddr + (issue & ~first)),
            axi.awready.eq(write), axi.wready.eq(write), axi.arready.eq(start),
            axi.rdata.eq(ram.rdata), axi.rresp.eq(0), axi.bresp.eq(0),
            side.ready.eq(byte),
        ]

        with m.If(write):
            m.d.sync += [axi.bvalid.eq(1), axi.bid.eq(axi.awid)]
        with m.Elif(axi.bready):
            m.d.sync += axi.bvalid.eq(0)

        with m.If(start):
            m.d.sync += [reading.eq(1), raddr.eq(word(axi.araddr)), left.eq(axi.arlen),
                         axi.rid.eq(axi.arid), first.eq(1)]
        with m.Elif(issue):
            m.d.sync += [reading.eq(left != 0), raddr.eq(rd_addr), left.eq(left - 1),
                         first.eq(0)]
        with m.If(issue):
            m.d.sync += [axi.rvalid.eq(1), axi.rlast.eq(left == 0)]
        with m.Elif(axi.rready):
            m.d.sync += axi.rvalid.eq(0)

        _byte_reads(m, ram, side, byte, W)

        m.d.comb += [
            ram.addr.eq(Mux(reading | axi.rvalid, rd_addr,
                            Mux(axi.awvalid, word(axi.awaddr), word(side.addr)))),
            ram.re.eq(issue | hold | (byte & ~side.we)),
            ram.wdata.eq(Mux(axi.awvalid, axi.wdata, side.wdata.replicate(W))),
        ]
        with m.If(write):
            m.d.comb += ram.we.eq(axi.wstrb)
        with m.Elif(byte & side.we):
            m.d.comb += ram.we.eq(1 << side.addr[:lw])
        return m


class NativeRam(wiring.Component):
    """``mem_bytes`` of RAM behind a :class:`MemoryPortSignature` slave (``port_bytes`` wide)
    and a byte port."""

    def __init__(self, port_bytes: int, mem_bytes: int, *, spram: bool = False):
        assert port_bytes & (port_bytes - 1) == 0 and mem_bytes % port_bytes == 0
        self.port_bytes, self.mem_bytes, self.spram = port_bytes, mem_bytes, spram
        super().__init__({
            "port": In(MemoryPortSignature(port_bytes)),
            "side": In(BytePortSignature()),
        })

    def elaborate(self, platform):
        m = Module()
        W = self.port_bytes
        lw = W.bit_length() - 1
        m.submodules.ram = ram = _Ram(W, self.mem_bytes // W, self.spram)
        p, side = self.port, self.side
        aw = len(ram.addr)

        # A write waits until no response is offered, so that its ready depends on registers
        # only (not on the master's response ready, which would chain the units' handshakes
        # through this port into one combinational path).
        raddr = Signal(aw)              # the word of the response being offered
        write = Signal()
        issue = Signal()
        byte = Signal()
        m.d.comb += [
            write.eq(p.wr.valid & ~p.rd_resp.valid),
            issue.eq(p.rd_req.valid & ~p.wr.valid & (~p.rd_resp.valid | p.rd_resp.ready)),
            byte.eq(side.valid & ~p.wr.valid & ~p.rd_req.valid & ~p.rd_resp.valid),
            p.wr.ready.eq(write), p.rd_req.ready.eq(issue), side.ready.eq(byte),
            p.rd_resp.payload.eq(ram.rdata),
        ]
        with m.If(issue):
            m.d.sync += [p.rd_resp.valid.eq(1), raddr.eq(p.rd_req.payload.addr[lw:lw + aw])]
        with m.Elif(p.rd_resp.ready):
            m.d.sync += p.rd_resp.valid.eq(0)

        _byte_reads(m, ram, side, byte, W)

        # An offered response is read again every cycle (the RAM need not hold its output).
        with m.If(issue):
            m.d.comb += ram.addr.eq(p.rd_req.payload.addr[lw:lw + aw])
        with m.Elif(p.rd_resp.valid):
            m.d.comb += ram.addr.eq(raddr)
        with m.Elif(p.wr.valid):
            m.d.comb += ram.addr.eq(p.wr.payload.addr[lw:lw + aw])
        with m.Else():
            m.d.comb += ram.addr.eq(side.addr[lw:lw + aw])
        m.d.comb += [
            ram.re.eq(issue | p.rd_resp.valid | (byte & ~side.we)),
            ram.wdata.eq(Mux(p.wr.valid, p.wr.payload.data, side.wdata.replicate(W))),
        ]
        with m.If(write):
            m.d.comb += ram.we.eq(p.wr.payload.strb)
        with m.Elif(byte & side.we):
            m.d.comb += ram.we.eq(1 << side.addr[:lw])
        return m


def add_window(m: Module, accel, mem_bytes: int, *, spram: bool = False):
    """Add the memory window for ``accel`` (an :class:`celosia.hdl.accelerator.Accelerator`)
    to ``m`` as submodule ``ram``, connected to its memory interface: NativeRam on
    ``memory="native"``, AxiRam on AXI4. Returns the window (its ``side`` is the byte port)."""
    if accel.memory == "native":
        m.submodules.ram = ram = NativeRam(accel.port_bytes, mem_bytes, spram=spram)
        wiring.connect(m, accel.mem, ram.port)
    else:
        m.submodules.ram = ram = AxiRam(accel.port_bytes, mem_bytes, spram=spram)
        wiring.connect(m, accel.m_axi, ram.axi)
    return ram
