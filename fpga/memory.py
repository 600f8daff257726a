"""The on-chip memory window: an AXI4 slave for the accelerator's master plus a byte port for the
UART bridge, over one single-ported RAM (block RAM through ``amaranth.lib.memory``, or iCE40
SPRAM instances).

The RAM sits at address 0; addresses wrap modulo its size (the accelerator's window CSRs keep
programs inside ``[0, mem_bytes)``, the bridge rejects anything beyond it). Reads stream one beat
per cycle; a write beat takes two cycles (data, then B). The byte port is served between AXI
transactions.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from celosia.hdl.axi import AXI4Signature

from .bridge import BytePortSignature

__all__ = ["AxiRam", "SPRAM_BYTES"]

#: One iCE40UP5K SPRAM: 16384 words of 16 bits.
SPRAM_BYTES = 32 * 1024


class _Ram(Elaboratable):
    """Single-ported RAM, ``width`` bytes per word; ``rdata`` follows ``addr`` one cycle after a
    cycle with ``re``, and holds while ``re`` and ``we`` are low."""

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
        last = Signal(range(self.depth))
        addr = Signal(range(self.depth))
        active = Signal()
        m.d.comb += [active.eq(self.re | self.we.any()),
                     addr.eq(Mux(active, self.addr, last))]
        m.d.sync += last.eq(addr)
        bank = addr[14:] if banks > 1 else C(0, 1)
        bank_q = Signal.like(bank)
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
                    i_WREN=be.any() & (bank == b), i_CHIPSELECT=1, i_CLOCK=ClockSignal(),
                    i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=dout)
                slices.append(dout)
            outs.append(Cat(*slices))
        with m.Switch(bank_q):
            for b, o in enumerate(outs):
                with m.Case(b):
                    m.d.comb += self.rdata.eq(o)
        return m


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

        def word(a):
            return (a >> lw)[:len(ram.addr)]

        raddr = Signal.like(ram.addr)
        remaining = Signal(9)           # read beats still to issue
        waddr = Signal.like(ram.addr)
        advance = Signal()
        m.d.comb += advance.eq((remaining != 0) & (~axi.rvalid | axi.rready))
        with m.If(advance):
            m.d.sync += [axi.rvalid.eq(1), axi.rlast.eq(remaining == 1),
                         raddr.eq(raddr + 1), remaining.eq(remaining - 1)]
        with m.Elif(axi.rready):
            m.d.sync += axi.rvalid.eq(0)
        m.d.comb += [axi.rdata.eq(ram.rdata), axi.rresp.eq(0), axi.bresp.eq(0)]

        lane = Signal(range(W))
        m.d.sync += side.rvalid.eq(0)
        m.d.comb += side.rdata.eq(ram.rdata.word_select(lane, 8))

        with m.FSM():
            with m.State("IDLE"):
                with m.If(axi.awvalid & axi.wvalid):
                    m.d.comb += [axi.awready.eq(1), axi.wready.eq(1),
                                 ram.addr.eq(word(axi.awaddr)), ram.wdata.eq(axi.wdata),
                                 ram.we.eq(axi.wstrb)]
                    m.d.sync += [axi.bid.eq(axi.awid), waddr.eq(word(axi.awaddr) + 1)]
                    with m.If(axi.wlast):
                        m.d.sync += axi.bvalid.eq(1)
                        m.next = "B"
                    with m.Else():
                        m.next = "W"
                with m.Elif(axi.arvalid):
                    m.d.comb += axi.arready.eq(1)
                    m.d.sync += [axi.rid.eq(axi.arid), raddr.eq(word(axi.araddr)),
                                 remaining.eq(axi.arlen + 1)]
                    m.next = "R"
                with m.Elif(side.valid):
                    m.d.comb += [side.ready.eq(1), ram.addr.eq(word(side.addr)),
                                 ram.wdata.eq(side.wdata.replicate(W))]
                    with m.If(side.we):
                        m.d.comb += ram.we.eq(1 << side.addr[:lw])
                    with m.Else():
                        m.d.comb += ram.re.eq(1)
                        m.d.sync += [side.rvalid.eq(1), lane.eq(side.addr[:lw])]
            with m.State("W"):
                m.d.comb += [axi.wready.eq(1), ram.addr.eq(waddr), ram.wdata.eq(axi.wdata)]
                with m.If(axi.wvalid):
                    m.d.comb += ram.we.eq(axi.wstrb)
                    m.d.sync += waddr.eq(waddr + 1)
                    with m.If(axi.wlast):
                        m.d.sync += axi.bvalid.eq(1)
                        m.next = "B"
            with m.State("B"):
                with m.If(axi.bready):
                    m.d.sync += axi.bvalid.eq(0)
                    m.next = "IDLE"
            with m.State("R"):
                m.d.comb += [ram.addr.eq(raddr), ram.re.eq(advance)]
                with m.If((remaining == 0) & (~axi.rvalid | axi.rready)):
                    m.next = "IDLE"
        return m
