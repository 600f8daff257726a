"""LiteDRAM's generated SDR controller (fpga/sdram.py) on the SDRAM chip model.

sim/verilator_sdram.py Verilates SdramWindow (the Amaranth wrapper around the Verilog core,
with its real GENSDRPHY, the ECP5 I/O cells modelled by sim/verilator/ecp5_cells.v), and
sim/verilator/litedram_harness.cpp drives it: the power-up sequence (from the C++ harness over
the Wishbone control port, or by the gateware InitSequencer), then random single words and
long bursts over the AXI user port and bytes over the byte port, read back bit-exact through
both, while the chip model checks every command. Needs the ``board`` extra (litedram, litex,
migen)."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("litedram")

from amaranth.back import verilog
from amaranth.hdl import IOPort

from celosia.fpga.sdram import LiteDRAMCore, SdramCoreConfig, generate
from celosia.sim.verilator_sdram import run_traffic

SYS_CLK_FREQ = 100e6
#: The ULX3S's 32 MB chips (the chip model's parts).
PARTS_32MB = ("IS42S16160G-6", "IS42S16160G-7", "MT48LC16M16A2-6A", "MT48LC16M16A2-7E")
#: The SDR bus moves one 16-bit word per cycle at most.
PEAK_BYTES_PER_CYCLE = 2.0
BURSTS, BURST_BEATS = 64, 256
AXI_PAGE_BYTES = 4096


#: (SDRAM clock, AXI data width): 100 MHz with CL2, 133 MHz (LiteDRAM's fastest SDR clock)
#: with CL3; 16 bits is the chip's width, 128 the 8x8 accelerator's memory port.
CLOCKS_WIDTHS = [(100e6, 16), (100e6, 32), (100e6, 128), (133e6, 16)]


#: The case the default test run keeps (the others are slow-marked): the 8x8 accelerator's
#: port width at 100 MHz on the strictest 32 MB part.
CI_CASE = ("IS42S16160G-7", 100e6, 128)


@pytest.mark.parametrize("part,clock,data_width", [
    pytest.param(part, clock, width,
                 marks=() if (part, clock, width) == CI_CASE else pytest.mark.slow)
    for part in PARTS_32MB for clock, width in CLOCKS_WIDTHS])
def test_litedram_on_chip_model(part, clock, data_width):
    config = SdramCoreConfig(sys_clk_freq=clock, data_width=data_width)
    # Bursts of at most 4 KiB (an AXI burst stays inside a 4 KiB page).
    beats = min(BURST_BEATS, AXI_PAGE_BYTES * 8 // data_width)
    result, log = run_traffic(config, part, gateware_init=False, seed=len(part) + data_width,
                              bursts=BURSTS, burst_beats=beats)
    assert result["violation"] == "", log
    assert result["init_done"] and result["wishbone_acked"] and not result["hung"], result
    assert result["random_mismatches"] == 0 and result["burst_mismatches"] == 0, log
    # The byte port (the UART bridge's way in) wrote and read bytes beside the AXI port.
    assert result["byte_accesses"] > 0 and result["byte_mismatches"] == 0, log
    assert result["burst_bytes"] == BURSTS * beats * data_width // 8
    # The chip model saw the power-up refreshes and the controller's own.
    assert result["refreshes"] > 8
    for direction in ("write", "read"):
        rate = result[f"{direction}_bytes_per_cycle"]
        assert 0 < rate <= PEAK_BYTES_PER_CYCLE, result
    print(f"\n{part} {clock / 1e6:.0f} MHz {data_width}-bit AXI: write {result['write_bytes_per_cycle']:.3f}, "
          f"read {result['read_bytes_per_cycle']:.3f} bytes/cycle "
          f"({BURSTS} bursts of {beats} beats)")
    assert result["ok"], log


def test_gateware_init_sequencer():
    """The InitSequencer brings the chip up on its own; traffic then runs as above."""
    config = SdramCoreConfig(sys_clk_freq=SYS_CLK_FREQ, data_width=16)
    result, log = run_traffic(config, "IS42S16160G-7", gateware_init=True, bursts=8)
    assert result["violation"] == "", log
    assert result["init_done"] and result["ok"], (result, log)
    # Not before the power-up wait (200 us) it plays.
    assert result["init_cycles"] >= 200e-6 * SYS_CLK_FREQ


@pytest.mark.slow
def test_litedram_on_64mb_chip():
    """The 64 MB AS4C32M16SB-7 with Celosia's own module definition (EXTRA_MODULES)."""
    config = SdramCoreConfig(module="AS4C32M16SB_7", sys_clk_freq=SYS_CLK_FREQ, data_width=16)
    result, log = run_traffic(config, "AS4C32M16SB-7", gateware_init=False, bursts=16)
    assert result["violation"] == "" and result["ok"], (result, log)


@pytest.mark.slow
@pytest.mark.parametrize("module,part,checks", [
    # tRAS unset, so tRC is not enforced either: a row miss after a READ with auto precharge
    # re-activates the bank 50 ns after its ACTIVE.
    ("IS42S16160", "IS42S16160G-7", {"tRP", "tRC", "tRAS"}),
    # -6 timings (tRCD 18 ns) on a -7 chip (21 ns): 2 cycles at 100 MHz, 3 needed.
    ("AS4C32M16", "AS4C32M16SB-7", {"tRCD"}),
])
def test_litedram_module_table_errors_caught(module, part, checks):
    """LiteDRAM's own module definitions that do not fit the ULX3S chips: the chip model stops
    the run with the check they break."""
    config = SdramCoreConfig(module=module, sys_clk_freq=SYS_CLK_FREQ, data_width=16)
    result, _ = run_traffic(config, part, gateware_init=False)
    assert not result["ok"]
    assert result["violation"].split()[0] in checks, result["violation"]


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


@pytest.mark.parametrize("mhz", [25, 48.8, 50, 100, 133.33])
def test_refresh_interval_rounds_down(mhz):
    """The generator's tREFI comes back as whole cycles no longer than 64 ms / 8192 (LiteDRAM
    rounds it up: at 25 MHz 196 cycles, and 8192 refreshes take 64.2 ms)."""
    import math

    from celosia.fpga.sdram import REFRESH_INTERVAL_NS, refresh_interval_ns

    period = 1e3 / mhz
    cycles = math.ceil(refresh_interval_ns(mhz * 1e6) / period)     # LiteDRAM's ns_to_cycles
    assert cycles * period <= REFRESH_INTERVAL_NS < (cycles + 1) * period


def test_generated_refresh_timer():
    """The generated core at 25 MHz reloads its refresh timer for 195 cycles (7.8 us)."""
    text = generate(SdramCoreConfig(sys_clk_freq=25e6)).verilog()
    reloads = set(re.findall(r"timer_count1 <= 8'd(\d+);", text))
    assert reloads == {"194"}
