"""LiteDRAM's controller (fpga/sdram.py) on the SDRAM chip model, Verilated.

:class:`SdramHarnessTop` is :class:`LiteDRAMCore` (and, with ``gateware_init``, the
:class:`InitSequencer` that initialises the chip) under a top whose ports carry the generated
core's own names, which ``sim/verilator/litedram_harness.cpp`` drives: the AXI user port, the
SDRAM pins, ``init_done`` and, without the sequencer, the Wishbone control port (the harness
then plays :func:`init_sequence` itself). :func:`run_traffic` builds it (cached) and runs the
harness's traffic on one chip part; the result is the harness's JSON as a dict.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from amaranth import *
from amaranth.back import verilog
from amaranth.hdl import IOPort
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from celosia.fpga.sdram import (CORE_NAME, GeneratedCore, InitSequencer, LiteDRAMCore,
                                SdramCoreConfig, generate, init_sequence)

from .verilator_build import HARNESS_DIR, build_library

__all__ = ["SdramHarnessTop", "build_harness", "run_traffic"]

TOP = "sdram_harness_top"
#: The harness compiled for a top with the gateware sequencer (no Wishbone ports).
GATEWARE_INIT_FLAG = "-DCELOSIA_SDRAM_GATEWARE_INIT"
#: The core's ports the top exposes under their own names, and the bus each belongs to.
_BUSES = {"user_port_axi_0_": "axi", "sdram_": "pins", "wb_ctrl_": "wb_ctrl"}


class SdramHarnessTop(wiring.Component):
    """The controller with the generated core's port names (for the C++ harness)."""

    def __init__(self, core: GeneratedCore, config: SdramCoreConfig, *, gateware_init: bool):
        self._core, self._config, self._gateware_init = core, config, gateware_init
        self._links = {}            # top member -> (bus name, bus member)
        members = {"init_done": Out(1)}
        for name, (direction, width) in core.port_widths().items():
            for prefix, bus in _BUSES.items():
                if (name.startswith(prefix) and name != "sdram_dq"
                        and not (bus == "wb_ctrl" and gateware_init)):
                    members[name] = (In if direction == "input" else Out)(width)
                    self._links[name] = (bus, name[len(prefix):])
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        dq = IOPort(self._core.port_widths()["sdram_dq"][1], name="sdram_dq")
        m.submodules.core = core = LiteDRAMCore(self._core, dq)
        for name, (bus, member) in self._links.items():
            inner = getattr(getattr(core, bus), member)
            outer = getattr(self, name)
            if self.signature.members[name].flow == In:
                m.d.comb += inner.eq(outer)
            else:
                m.d.comb += outer.eq(inner)
        m.d.comb += self.init_done.eq(core.init_done)
        if self._gateware_init:
            m.submodules.init = init = InitSequencer(
                init_sequence(self._core, self._config.sys_clk_freq),
                len(core.wb_ctrl.adr))
            wiring.connect(m, init.bus, core.wb_ctrl)
        return m


def build_harness(config: SdramCoreConfig, *, gateware_init: bool) -> Path:
    """The harness executable for ``config`` (built once, then cached)."""
    core = generate(config)
    text = verilog.convert(SdramHarnessTop(core, config, gateware_init=gateware_init),
                           name=TOP)
    flags = ("--pins-inout-enables",)
    if gateware_init:
        flags += ("-CFLAGS", GATEWARE_INIT_FLAG)
    exe, _ = build_library(text, TOP, harness="litedram_harness.cpp",
                           extra_verilog={f"{CORE_NAME}.v": core.verilog(),
                                          "ecp5_cells.v": (HARNESS_DIR / "ecp5_cells.v").read_text()},
                           flags=flags, executable=True)
    return exe


def run_traffic(config: SdramCoreConfig, part: str, *, gateware_init: bool, seed: int = 1,
                random_words: int = 400, bursts: int = 64, burst_beats: int = 256,
                timeout: float = 300) -> tuple[dict, str]:
    """Run the harness's traffic on chip ``part``; (its JSON result, its stderr)."""
    exe = build_harness(config, gateware_init=gateware_init)
    tck_ns = 1e9 / config.sys_clk_freq
    with tempfile.TemporaryDirectory() as tmp:
        steps = Path(tmp) / "init_steps.txt"
        if gateware_init:
            steps.write_text("")
        else:
            steps.write_text("".join(f"{kind} {a} {b}\n" for kind, a, b in
                                     init_sequence(generate(config), config.sys_clk_freq)))
        proc = subprocess.run([str(exe), str(steps), part, str(tck_ns), str(seed),
                               str(random_words), str(bursts), str(burst_beats)],
                              capture_output=True, text=True, timeout=timeout)
    if not proc.stdout:
        raise RuntimeError(f"the SDRAM harness printed nothing ({proc.returncode}):\n"
                           + proc.stderr[-4000:])
    return json.loads(proc.stdout), proc.stderr
