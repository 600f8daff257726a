"""The board top: PLL, reset, the accelerator, its memory window and the UART bridge.

::

    osc ─▶ PLL ─▶ sync clock        UART rx/tx ─▶ UartBridge ─csr (AXI4-Lite)─▶ Accelerator.s_axil
                                                         │ byte port                   │ m_axi (AXI4)
                                                      ▼                             ▼
                                                   AxiRam (on-chip memory window, at address 0)

The iCEBreaker builds ``Accelerator(memory="native")`` with :class:`NativeRam` instead of the
AXI4 master and ``AxiRam`` (no AXI registers on the small device).

Reset: the core is held in reset until the PLL locks, then for ``POR_CYCLES`` more cycles (iCE40
block RAMs read as zero for a few microseconds after configuration), and while the board's reset
button (if any) is pressed.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring

from celosia.hdl.accelerator import Accelerator

from .boards import BOARDS, Board, add_pll, uart_divisor
from .bridge import UartBridge
from .memory import add_window

__all__ = ["CelosiaTop", "POR_CYCLES", "DEFAULT_BAUD"]

POR_CYCLES = 1024
DEFAULT_BAUD = 115200


class CelosiaTop(Elaboratable):
    def __init__(self, board: Board | str, *, array: int | None = None,
                 clock_mhz: float | None = None, vector: bool | None = None,
                 baud: int = DEFAULT_BAUD, mem_bytes: int | None = None):
        self.board = BOARDS[board] if isinstance(board, str) else board
        self.array = array or self.board.array
        self.clock_mhz = clock_mhz or self.board.clock_mhz
        self.vector = self.board.vector if vector is None else vector
        self.baud = baud
        self.mem_bytes = mem_bytes or self.board.mem_bytes
        self.achieved_mhz = None
        #: The accelerator's sizing (the board's, or its sizing with the vector engine).
        self.sizing = sizing = ((self.board.vector_sizing or self.board.sizing) if self.vector
                                else self.board.sizing)
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
        m.d.comb += cd_sync.rst.eq(rst)

        m.submodules.accel = accel = Accelerator(self.array, vector=self.vector, k_max=b.k_max,
                                                 sizing=self.sizing, memory=b.memory)
        ram = add_window(m, accel, self.mem_bytes, spram=b.spram)
        m.submodules.bridge = bridge = UartBridge(
            divisor=uart_divisor(clk_hz, self.baud), mem_bytes=self.mem_bytes,
            clk_hz=clk_hz, timeout_cycles=clk_hz // 100)   # 10 ms gap drops a request
        wiring.connect(m, bridge.csr, accel.s_axil)
        wiring.connect(m, bridge.mem, ram.side)

        uart = platform.request("uart", 0)
        m.d.comb += [bridge.rx.eq(uart.rx.i), uart.tx.o.eq(bridge.tx)]
        return m
