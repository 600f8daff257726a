"""LiteDRAM's controller (fpga/sdram.py) on the SDRAM chip model, Verilated.

:class:`SdramHarnessTop` is :class:`SdramWindow` (the LiteDRAM core with its AXI port, its
byte port and, with ``gateware_init``, the :class:`InitSequencer` that brings the chip up)
under a top whose ports carry the generated core's names, which
``sim/verilator/litedram_harness.cpp`` drives: the AXI user port (``user_port_axi_0_*``), the
SDRAM pins (``sdram_*``), the byte port (``side_*``), ``init_done`` and, without the
sequencer, the Wishbone control port (``wb_ctrl_*``; the harness then plays
:func:`init_sequence` itself). :func:`run_traffic` builds it (cached) and runs the harness's
traffic on one chip part; the result is the harness's JSON as a dict.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
from pathlib import Path

from amaranth import *
from amaranth.back import verilog
from amaranth.hdl import IOPort
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from celosia.fpga.sdram import (CORE_NAME, SdramCoreConfig, SdramWindow, generate,
                                init_sequence)

from .verilator_build import HARNESS_DIR, build_library

__all__ = ["SdramHarnessTop", "build_harness", "run_traffic"]

TOP = "sdram_harness_top"
#: The harness compiled for a top with the gateware sequencer (no Wishbone ports).
GATEWARE_INIT_FLAG = "-DCELOSIA_SDRAM_GATEWARE_INIT"
#: The window's buses and the prefixes of their ports on the top.
_PREFIXES = {"axi": "user_port_axi_0_", "pins": "sdram_", "wb_ctrl": "wb_ctrl_", "side": "side_"}


class SdramHarnessTop(wiring.Component):
    """:class:`SdramWindow` with flat port names (for the C++ harness)."""

    def __init__(self, config: SdramCoreConfig, *, gateware_init: bool):
        core = generate(config)
        self._dq = IOPort(core.port_widths()["sdram_dq"][1], name="sdram_dq")
        steps = init_sequence(core, config.sys_clk_freq) if gateware_init else None
        self._window = SdramWindow(core, self._dq, init_steps=steps)
        self._links = {}            # top member -> the window's signal
        members = {}
        for path, member, value in self._window.signature.flatten(self._window):
            name = _PREFIXES.get(path[0], "") + "_".join(path[1:]) if len(path) > 1 else path[0]
            members[name] = member.flow(len(value))
            self._links[name] = value
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.window = self._window
        for name, inner in self._links.items():
            outer = getattr(self, name)
            if self.signature.members[name].flow == In:
                m.d.comb += inner.eq(outer)
            else:
                m.d.comb += outer.eq(inner)
        return m


def _harness_config(config: SdramCoreConfig) -> SdramCoreConfig:
    return dataclasses.replace(config, byte_port=True)   # the window serves the byte port


def build_harness(config: SdramCoreConfig, *, gateware_init: bool) -> Path:
    """The harness executable for ``config`` (with its byte port; built once, then cached)."""
    config = _harness_config(config)
    top = SdramHarnessTop(config, gateware_init=gateware_init)
    text = verilog.convert(top, name=TOP)
    flags = ("--pins-inout-enables",)
    if gateware_init:
        flags += ("-CFLAGS", GATEWARE_INIT_FLAG)
    cells = (HARNESS_DIR / "ecp5_cells.v").read_text()
    exe, _ = build_library(text, TOP, harness="litedram_harness.cpp",
                           extra_verilog={f"{CORE_NAME}.v": generate(config).verilog(),
                                          "ecp5_cells.v": cells},
                           flags=flags, executable=True)
    return exe


def run_traffic(config: SdramCoreConfig, part: str, *, gateware_init: bool, seed: int = 1,
                random_words: int = 400, bursts: int = 64, burst_beats: int = 256,
                timeout: float = 300) -> tuple[dict, str]:
    """Run the harness's traffic on chip ``part``; (its JSON result, its stderr)."""
    exe = build_harness(config, gateware_init=gateware_init)
    config = _harness_config(config)
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
