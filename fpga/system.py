"""Everything of a board top but its clock and reset: the accelerator, its memory window and
the UART bridge.

::

    rx/tx ─▶ UartBridge ─csr (AXI4-Lite)─▶ Accelerator.s_axil
                 │ byte port                    │ m_axi (AXI4) or native port
                 ▼                              ▼
        memory window: AxiRam / NativeRam (on-chip, ``window="bram"``)
                       SdramWindow (LiteDRAM + the SDRAM chip, ``window="sdram"``)

:class:`celosia.fpga.top.CelosiaTop` puts it under the board's PLL and power-on reset;
:class:`celosia.fpga.simtop.SimTop` is it under a plain ``sync`` clock, so the simulated
board runs the same gateware as the bitstream.

With ``window="sdram"`` the window is the SDRAM behind LiteDRAM's generated controller
(:mod:`celosia.fpga.sdram`), clocked by ``sync`` at ``clk_hz`` (its refresh timing is
generated for that clock), and brought up after reset by the gateware
:class:`celosia.fpga.sdram.InitSequencer`; the accelerator's AXI4 master is the core's AXI
user port and the bridge's byte port its Wishbone port. The SDRAM pins are the ``sdram``
member (command, address, CKE, DQM) and the ``dq`` pads given to the constructor.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from celosia.hdl.accelerator import Accelerator
from celosia.hdl.params import FULL, Sizing

from .bridge import UartBridge
from .memory import add_window

__all__ = ["BoardSystem", "WINDOWS", "sdram_config"]

#: The memory windows a board system is built with.
WINDOWS = ("bram", "sdram")


def sdram_config(port_bytes: int, clk_hz: float, module: str | None = None):
    """The LiteDRAM core for an accelerator with ``port_bytes``-byte memory beats at
    ``clk_hz``: its AXI port as wide as the accelerator's, one ID bit (the accelerator's),
    and the byte port for the bridge."""
    from .sdram import SdramCoreConfig

    kwargs = {} if module is None else {"module": module}
    return SdramCoreConfig(sys_clk_freq=float(clk_hz), data_width=8 * port_bytes, id_width=1,
                           byte_port=True, **kwargs)


class BoardSystem(wiring.Component):
    """Accelerator + memory window + UART bridge in the ``sync`` domain.

    Parameters
    ----------
    array, port_bytes, vector, k_max, sizing, memory
        The :class:`celosia.hdl.accelerator.Accelerator`'s.
    window : "bram" or "sdram"
    mem_bytes : int
        The on-chip window's size (``window="bram"``; the SDRAM's size otherwise).
    divisor, clk_hz, timeout_cycles
        The :class:`celosia.fpga.bridge.UartBridge`'s (``clk_hz`` is also the SDRAM
        controller's clock).
    dq : IOValue
        The SDRAM data pads (``window="sdram"``).
    sdram_module : str
        LiteDRAM's module for the SDRAM chip (default: :class:`SdramCoreConfig`'s).

    Members
    -------
    rx : In(1), tx : Out(1)
        The UART lines.
    axi_active : Out(1)
        A memory transaction of the accelerator is in flight (for a simulation harness).
    sdram : Out(SdramPinsSignature)
        With ``window="sdram"``: command, address, CKE and DQM pins.
    mem_ready : Out(1)
        The memory window is usable (the SDRAM initialised; always 1 on chip).
    """

    def __init__(self, *, array: int, port_bytes: int | None = None, vector: bool = True,
                 k_max: int = 512, sizing: Sizing = FULL, memory: str = "axi",
                 window: str = "bram", mem_bytes: int = 16 * 1024, spram: bool = False,
                 divisor: int, clk_hz: int, timeout_cycles: int, dq=None,
                 sdram_module: str | None = None):
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, not {window!r}")
        if window == "sdram" and memory != "axi":
            raise ValueError("the SDRAM window serves the accelerator's AXI4 master (memory='axi')")
        if window == "sdram" and dq is None:
            raise ValueError("window='sdram' needs the SDRAM's dq pads")
        self.accel = Accelerator(array, port_bytes, vector=vector, k_max=k_max, sizing=sizing,
                                 memory=memory)
        self.window, self.spram, self.dq = window, spram, dq
        self.divisor, self.clk_hz, self.timeout_cycles = divisor, int(clk_hz), timeout_cycles
        members = {"rx": In(1, init=1), "tx": Out(1, init=1), "axi_active": Out(1),
                   "mem_ready": Out(1)}
        if window == "sdram":
            from .sdram import SdramWindow, generate, init_sequence

            config = sdram_config(self.accel.port_bytes, self.clk_hz, sdram_module)
            self.sdram_core = core = generate(config)
            self._sdram = SdramWindow(core, dq, init_steps=init_sequence(core, self.clk_hz))
            members["sdram"] = self._sdram.signature.members["pins"]
            #: Bytes of SDRAM the controller addresses.
            self.mem_bytes = 1 << core.port_widths()["user_port_axi_0_awaddr"][1]
        else:
            self._sdram = None
            self.mem_bytes = mem_bytes
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.accel = accel = self.accel
        if self._sdram is None:
            ram = add_window(m, accel, self.mem_bytes, spram=self.spram)
            m.d.comb += self.mem_ready.eq(1)
        else:
            m.submodules.sdram = ram = self._sdram
            wiring.connect(m, accel.m_axi, ram.axi)
            wiring.connect(m, ram.pins, wiring.flipped(self.sdram))
            m.d.comb += self.mem_ready.eq(ram.init_done)
        if accel.memory == "native":
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
