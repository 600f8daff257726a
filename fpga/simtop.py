"""The board without a board: the top of :mod:`celosia.fpga.top` for simulation.

``SimTop`` wires the same parts as :class:`celosia.fpga.top.CelosiaTop` (``Accelerator``,
``AxiRam``, ``UartBridge``) but takes a plain ``sync`` clock and reset instead of the PLL and
the power-on reset, and runs the UART at a few clocks per bit so that a simulated serial link
moves bytes quickly. Its ports are the UART lines (``rx`` into the board, ``tx`` out of it)
plus ``axi_active``, high while the accelerator has a memory transaction in flight (the
simulation harness uses it to know when the board may be idle; it is not a board pin).
``sizing="small", memory="native"`` (with ``array=2``, ``k_max=512``) is the iCEBreaker's
accelerator and memory window.

``sim/verilator/uart_harness.cpp`` clocks the Verilated top and carries the UART bytes to a
TCP socket (``sim/verilator_uart.py``), so the serial backend talks to it through pyserial's
``socket://`` URLs exactly as it talks to a board.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from celosia.hdl.accelerator import Accelerator
from celosia.hdl.params import FULL, SMALL

from .bridge import UartBridge
from .memory import add_window

__all__ = ["SimTop", "SIM_DIVISOR", "SIM_MEM_BYTES", "SIM_TIMEOUT_CYCLES", "verilog_text"]

#: The accelerator sizings a simulated board can be built with (``sizing=`` names one).
SIZINGS = {"full": FULL, "small": SMALL}
#: Clock cycles per UART bit (the bridge's receiver needs at least 4).
SIM_DIVISOR = 4
#: The memory window of the simulated board.
SIM_MEM_BYTES = 16 * 1024
#: A gap this many cycles long inside a request drops it (the board's 10 ms): about 50 byte
#: times at SIM_DIVISOR, a few milliseconds of wall time at the Verilated model's speed.
SIM_TIMEOUT_CYCLES = 2048


class SimTop(wiring.Component):
    """Accelerator + AxiRam (or NativeRam) + UartBridge with a plain sync clock domain.

    ``clk_hz`` is only what INFO reports (default: the clock at which ``divisor`` gives
    115200 baud)."""

    def __init__(self, array: int = 4, port_bytes: int | None = None, *, vector: bool = True,
                 k_max: int = 512, mem_bytes: int = SIM_MEM_BYTES, divisor: int = SIM_DIVISOR,
                 clk_hz: int | None = None, timeout_cycles: int = SIM_TIMEOUT_CYCLES,
                 sizing: str = "full", memory: str = "axi"):
        if sizing not in SIZINGS:
            raise ValueError(f"sizing must be one of {sorted(SIZINGS)}, not {sizing!r}")
        self.sizing, self.memory = sizing, memory
        self.array, self.port_bytes, self.vector, self.k_max = array, port_bytes, vector, k_max
        self.mem_bytes, self.divisor, self.timeout_cycles = mem_bytes, divisor, timeout_cycles
        self.clk_hz = int(clk_hz if clk_hz is not None else divisor * 115200)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "axi_active": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.accel = accel = Accelerator(self.array, self.port_bytes, vector=self.vector,
                                                 k_max=self.k_max, sizing=SIZINGS[self.sizing],
                                                 memory=self.memory)
        ram = add_window(m, accel, self.mem_bytes)
        if self.memory == "native":
            p = accel.mem
            active = p.rd_req.valid | p.rd_resp.valid | p.wr.valid
        else:
            a = accel.m_axi
            active = a.arvalid | a.awvalid | a.wvalid | a.rvalid | a.bvalid
        m.submodules.bridge = bridge = UartBridge(
            divisor=self.divisor, mem_bytes=self.mem_bytes, clk_hz=self.clk_hz,
            timeout_cycles=self.timeout_cycles)
        wiring.connect(m, bridge.csr, accel.s_axil)
        wiring.connect(m, bridge.mem, ram.side)
        m.d.comb += [bridge.rx.eq(self.rx), self.tx.eq(bridge.tx), self.axi_active.eq(active)]
        return m


def verilog_text(name: str = "celosia_simtop", **kwargs) -> str:
    """The Verilog of ``SimTop(**kwargs)`` (ports ``clk``, ``rst``, ``rx``, ``tx``,
    ``axi_active``)."""
    from amaranth.back import verilog

    return verilog.convert(SimTop(**kwargs), name=name, emit_src=False)
