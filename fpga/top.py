"""The board top: PLL, reset, the accelerator, its memory window and the UART bridge.

::

    osc ─▶ PLL ─▶ sync clock        UART rx/tx ─▶ UartBridge ─csr (AXI4-Lite)─▶ Accelerator.s_axil
                                                         │ byte port                   │ m_axi (AXI4)
                                                      ▼                             ▼
                               AxiRam (on-chip memory window, at address 0), or the SDRAM

The accelerator, its memory window and the bridge are :class:`celosia.fpga.system.BoardSystem`,
the same gateware the simulated board (:mod:`celosia.fpga.simtop`) runs. A board whose
``window`` is ``"sdram"`` keeps the accelerator's memory in its SDRAM (LiteDRAM's controller,
:mod:`celosia.fpga.sdram`); its clock pin is the core clock inverted.

The iCEBreaker builds ``Accelerator(memory="native")`` with :class:`NativeRam` instead of the
AXI4 master and ``AxiRam`` (no AXI registers on the small device).

Reset: the core is held in reset until the PLL locks, then for ``POR_CYCLES`` more cycles (iCE40
block RAMs read as zero for a few microseconds after configuration), and while the board's reset
button (if any) is pressed.
"""

from __future__ import annotations

import dataclasses

from amaranth import *
from amaranth.lib import wiring

from amaranth.lib import io

from .boards import BOARDS, Board, add_pll, uart_divisor
from .system import BoardSystem
from celosia.hdl.params import ARRAY_MIN

__all__ = ["CelosiaTop", "POR_CYCLES", "DEFAULT_BAUD"]

POR_CYCLES = 1024
DEFAULT_BAUD = 115200


class CelosiaTop(Elaboratable):
    def __init__(self, board: Board | str, *, array: int | None = None,
                 clock_mhz: float | None = None, vector: bool | None = None,
                 baud: int = DEFAULT_BAUD, mem_bytes: int | None = None,
                 window: str | None = None, vector_lanes: int | None = None):
        self.board = BOARDS[board] if isinstance(board, str) else board
        self.array = array or self.board.array
        self.clock_mhz = clock_mhz or self.board.clock_mhz
        self.vector = self.board.vector if vector is None else vector
        self.baud = baud
        self.mem_bytes = mem_bytes or self.board.mem_bytes
        #: Where the accelerator's memory is ("bram" or "sdram"; default: the board's).
        self.window = window or self.board.window
        self.achieved_mhz = None
        #: The accelerator's sizing (the board's, or its sizing with the vector engine).
        sizing = ((self.board.vector_sizing or self.board.sizing) if self.vector
                  else self.board.sizing)
        if vector_lanes is not None:
            if not self.vector:
                raise ValueError("vector lanes given for a build without the vector engine")
            # The vector engine's lanes are sized like an array (params.check_config).
            if vector_lanes < ARRAY_MIN or vector_lanes > self.array or self.array % vector_lanes:
                raise ValueError(f"vector lanes must be at least {ARRAY_MIN} and divide the array "
                                 f"size {self.array}, not {vector_lanes}")
            sizing = dataclasses.replace(sizing, vector_lanes=vector_lanes)
        elif self.vector and sizing.vector_lanes and sizing.vector_lanes > self.array:
            # A smaller array than the board's default: as many lanes as the array is wide.
            sizing = dataclasses.replace(sizing, vector_lanes=self.array)
        self.sizing = sizing
        #: Lanes of the vector engine (0 without one).
        self.vector_lanes = (sizing.vector_lanes or self.array) if self.vector else 0

    def elaborate(self, platform):
        m = Module()
        b = self.board
        m.domains.sync = cd_sync = ClockDomain("sync")
        m.domains.por = cd_por = ClockDomain("por", reset_less=True)
        locked, self.achieved_mhz = add_pll(m, platform, b, self.clock_mhz, cd_sync.clk)
        clk_hz = int(round(self.achieved_mhz * 1e6))
        m.d.comb += cd_por.clk.eq(cd_sync.clk)
        hold = Signal()
        if b.reset_button is not None:
            button = platform.request(b.reset_button, 0)
            btn = Signal()
            m.d.por += btn.eq(button.i)
            m.d.comb += hold.eq(btn)
        por = Signal(range(POR_CYCLES + 1))
        with m.If(~locked | hold):
            m.d.por += por.eq(0)
        with m.Elif(por != POR_CYCLES):
            m.d.por += por.eq(por + 1)
        rst = Signal(init=1)
        m.d.por += rst.eq(por != POR_CYCLES)
        if b.family == "ecp5":
            # The core's reset reaches most of its flip-flops (their LSR pins): on the general
            # routing it is a net of tens of thousands of sinks that crowds the router, so it
            # goes through a DCCA onto a global line (nextpnr promotes only clocks itself).
            rst_g = Signal()
            m.submodules.rst_dcc = Instance("DCCA", i_CLKI=rst, i_CE=Const(1), o_CLKO=rst_g)
            m.d.comb += cd_sync.rst.eq(rst_g)
        else:
            m.d.comb += cd_sync.rst.eq(rst)

        if self.window == "sdram":
            pins = platform.request("sdram", 0, dir="-")
            dq = pins.dq.io            # the core's own pads (TRELLIS_IO) drive it
        else:
            dq = None
        m.submodules.system = system = BoardSystem(
            array=self.array, vector=self.vector, k_max=b.k_max, sizing=self.sizing,
            memory=b.memory, window=self.window, mem_bytes=self.mem_bytes, spram=b.spram,
            divisor=uart_divisor(clk_hz, self.baud), clk_hz=clk_hz,
            timeout_cycles=clk_hz // 100, dq=dq)     # a 10 ms gap drops a request
        self.mem_bytes = system.mem_bytes
        if self.window == "sdram":
            _sdram_pins(m, pins, system.sdram)
        uart = platform.request("uart", 0)
        m.d.comb += [system.rx.eq(uart.rx.i), uart.tx.o.eq(system.tx)]
        return m


def _sdram_pins(m: Module, pins, sdram) -> None:
    """Drive the SDRAM's pins: the controller's registered command, address, CKE and DQM
    outputs through plain output buffers (so the core's I/O registers pack into the pads; the
    resource's active-low pins are inverted by the platform, hence the controller's ``_n``
    signals go out inverted once more), and the chip's clock, the core's clock inverted by a
    DDR output register (the chip samples half a period after the core's edge, as LiteDRAM's
    GENSDRPHY expects)."""
    outputs = {"clk_en": sdram.cke, "cs": ~sdram.cs_n, "we": ~sdram.we_n, "ras": ~sdram.ras_n,
               "cas": ~sdram.cas_n, "ba": sdram.ba, "a": sdram.a, "dqm": sdram.dm}
    for name, value in outputs.items():
        m.submodules[f"sdram_{name}"] = buf = io.Buffer("o", getattr(pins, name))
        m.d.comb += buf.o.eq(value)
    m.submodules.sdram_clk = clk = io.DDRBuffer("o", pins.clk)
    m.d.comb += [clk.o[0].eq(0), clk.o[1].eq(1)]
