"""The board without a board: the top of :mod:`celosia.fpga.top` for simulation.

``SimTop`` is :class:`celosia.fpga.system.BoardSystem` (the accelerator, its memory window and
the UART bridge: the gateware of :class:`celosia.fpga.top.CelosiaTop` but the PLL and the
power-on reset) under a plain ``sync`` clock and reset. The UART may run at a few clocks per
bit so that a simulated serial link moves bytes quickly. Its ports are the UART lines (``rx``
into the board, ``tx`` out of it) plus ``axi_active``, high while the accelerator has a memory
transaction in flight (the simulation harness uses it to know when the board may be idle; it
is not a board pin), and with ``window="sdram"`` the SDRAM's pins and ``mem_ready``.
``sizing="small", memory="native"`` (with ``array=2``, ``k_max=512``) is the iCEBreaker's
accelerator and memory window.

``sim/verilator/uart_harness.cpp`` clocks the Verilated top and carries the UART bytes to a
TCP socket (``sim/verilator_uart.py``), so the serial backend talks to it through pyserial's
``socket://`` URLs exactly as it talks to a board; with the SDRAM window it also clocks the
SDRAM chip model (``sim/verilator/sdram_chip.h``) on the SDRAM pins.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from amaranth.hdl import IOPort

from celosia.hdl.params import FULL, SMALL

from .system import BoardSystem

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
    """:class:`celosia.fpga.system.BoardSystem` (accelerator, memory window, UART bridge) with
    a plain sync clock domain.

    ``clk_hz`` is what INFO reports (default: the clock at which ``divisor`` gives 115200
    baud) and, with ``window="sdram"``, the clock the SDRAM controller is generated for.
    ``sizing`` names one of :data:`SIZINGS` or is a :class:`celosia.hdl.params.Sizing`.
    With ``window="sdram"`` the top's ports add the SDRAM pins (``sdram_a``, ``sdram_ba``,
    ``sdram_cs_n``, ... and the ``sdram_dq`` pads) and ``mem_ready`` (the chip is
    initialised)."""

    def __init__(self, array: int = 4, port_bytes: int | None = None, *, vector: bool = True,
                 k_max: int = 512, mem_bytes: int = SIM_MEM_BYTES, divisor: int = SIM_DIVISOR,
                 clk_hz: int | None = None, timeout_cycles: int = SIM_TIMEOUT_CYCLES,
                 sizing="full", memory: str = "axi", window: str = "bram",
                 sdram_module: str | None = None):
        if isinstance(sizing, str) and sizing not in SIZINGS:
            raise ValueError(f"sizing must be one of {sorted(SIZINGS)}, not {sizing!r}")
        self.sizing, self.memory, self.window = sizing, memory, window
        self.array, self.port_bytes, self.vector, self.k_max = array, port_bytes, vector, k_max
        self.divisor, self.timeout_cycles = divisor, timeout_cycles
        self.clk_hz = int(clk_hz if clk_hz is not None else divisor * 115200)
        self._dq = IOPort(16, name="sdram_dq") if window == "sdram" else None
        self.system = BoardSystem(
            array=array, port_bytes=port_bytes, vector=vector, k_max=k_max,
            sizing=SIZINGS[sizing] if isinstance(sizing, str) else sizing, memory=memory,
            window=window, mem_bytes=mem_bytes, divisor=divisor, clk_hz=self.clk_hz,
            timeout_cycles=timeout_cycles, dq=self._dq, sdram_module=sdram_module)
        self.mem_bytes = self.system.mem_bytes
        members = {"rx": In(1, init=1), "tx": Out(1, init=1), "axi_active": Out(1)}
        if window == "sdram":
            members["mem_ready"] = Out(1)
            for name, member in self.system.signature.members["sdram"].signature.members.items():
                members[f"sdram_{name}"] = Out(member.shape)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.system = system = self.system
        m.d.comb += [system.rx.eq(self.rx), self.tx.eq(system.tx),
                     self.axi_active.eq(system.axi_active)]
        if self.window == "sdram":
            m.d.comb += self.mem_ready.eq(system.mem_ready)
            for name in system.sdram.signature.members:
                m.d.comb += getattr(self, f"sdram_{name}").eq(getattr(system.sdram, name))
        return m


def verilog_text(name: str = "celosia_simtop", **kwargs) -> str:
    """The Verilog of ``SimTop(**kwargs)`` (ports ``clk``, ``rst``, ``rx``, ``tx``,
    ``axi_active``)."""
    from amaranth.back import verilog

    return verilog.convert(SimTop(**kwargs), name=name, emit_src=False)
