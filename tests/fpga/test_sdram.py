"""LiteDRAM's generated SDR controller (fpga/sdram.py) on the SDRAM chip model.

The Verilog core, with its real GENSDRPHY (ECP5 I/O cells modelled by
sim/verilator/ecp5_cells.v), is Verilated with sim/verilator/litedram_harness.cpp: the
power-up sequence from :func:`init_sequence` over the Wishbone control port, then random
single words and long bursts over the AXI user port, read back bit-exact, while the chip
model checks every command. Needs the ``board`` extra (litedram, litex, migen)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

pytest.importorskip("litedram")

from amaranth.back import verilog
from amaranth.hdl import IOPort

from celosia.fpga.sdram import LiteDRAMCore, SdramCoreConfig, generate, init_sequence
from celosia.sim.verilator_build import HARNESS_DIR, build_library

SYS_CLK_FREQ = 100e6
TCK_NS = 1e9 / SYS_CLK_FREQ
#: The ULX3S's 32 MB chips (the chip model's parts).
PARTS_32MB = ("IS42S16160G-6", "IS42S16160G-7", "MT48LC16M16A2-6A", "MT48LC16M16A2-7E")
RANDOM_WORDS = 400
BURSTS, BURST_BEATS = 64, 256
#: The SDR bus moves one 16-bit word per cycle at most.
PEAK_BYTES_PER_CYCLE = 2.0

_built = {}


def harness(config: SdramCoreConfig, tmp_path_factory):
    """(executable, init steps file) for ``config``, built once per session."""
    if config not in _built:
        core = generate(config)
        steps = tmp_path_factory.mktemp("sdram") / "init_steps.txt"
        steps.write_text("".join(f"{kind} {a} {b}\n"
                                 for kind, a, b in init_sequence(core, config.sys_clk_freq)))
        exe, _ = build_library(core.verilog(), "litedram_core", harness="litedram_harness.cpp",
                               extra_verilog={"ecp5_cells.v":
                                              (HARNESS_DIR / "ecp5_cells.v").read_text()},
                               flags=("--pins-inout-enables",), executable=True)
        _built[config] = exe, steps
    return _built[config]


def run(config, part, tmp_path_factory, *, seed=1):
    exe, steps = harness(config, tmp_path_factory)
    proc = subprocess.run([str(exe), str(steps), part, str(TCK_NS), str(seed),
                           str(RANDOM_WORDS), str(BURSTS), str(BURST_BEATS)],
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout), proc


@pytest.mark.parametrize("data_width", [32, 16])
@pytest.mark.parametrize("part", PARTS_32MB)
def test_litedram_on_chip_model(part, data_width, tmp_path_factory):
    config = SdramCoreConfig(sys_clk_freq=SYS_CLK_FREQ, data_width=data_width)
    result, proc = run(config, part, tmp_path_factory, seed=len(part) + data_width)
    assert result["violation"] == "", proc.stderr
    assert result["init_done"] and result["wishbone_acked"] and not result["hung"], result
    assert result["random_mismatches"] == 0 and result["burst_mismatches"] == 0, proc.stderr
    assert result["burst_bytes"] == BURSTS * BURST_BEATS * data_width // 8
    # The chip model saw the power-up refreshes and the controller's own.
    assert result["refreshes"] > 8
    for direction in ("write", "read"):
        rate = result[f"{direction}_bytes_per_cycle"]
        assert 0 < rate <= PEAK_BYTES_PER_CYCLE, result
    print(f"\n{part} {data_width}-bit AXI: write {result['write_bytes_per_cycle']:.3f}, "
          f"read {result['read_bytes_per_cycle']:.3f} bytes/cycle "
          f"({BURSTS} bursts of {BURST_BEATS} beats)")
    assert proc.returncode == 0, proc.stderr


def test_litedram_is42s16160_module_breaks_trc(tmp_path_factory):
    """LiteDRAM's IS42S16160 module leaves tRAS (and so tRC) unset: a row miss after a READ
    with auto precharge re-activates the bank 50 ns after its ACTIVE. The chip catches it."""
    config = SdramCoreConfig(module="IS42S16160", sys_clk_freq=SYS_CLK_FREQ, data_width=16)
    result, proc = run(config, "IS42S16160G-7", tmp_path_factory)
    assert proc.returncode != 0
    assert result["violation"].split()[0] in {"tRP", "tRC", "tRAS"}, result["violation"]
    assert "ACTIVE" in result["violation"] or "PRECHARGE" in result["violation"]


def test_wrapper_connects_every_core_port():
    core = generate(SdramCoreConfig(sys_clk_freq=SYS_CLK_FREQ))
    dq = IOPort(16, name="sdram_dq")
    top = LiteDRAMCore(core, dq)
    text = verilog.convert(top, name="sdram_top")
    instance = text[text.index("litedram_core litedram"):]
    instance = instance[:instance.index(");")]
    connected = set(re.findall(r"\.(\w+)\(", instance))
    unused = {"user_clk", "user_rst"}        # the core's clock and reset, handed back
    assert connected == set(core.port_widths()) - unused
    assert top.addr_width == 25 and top.data_width == 32    # 32 MB, byte addressed
