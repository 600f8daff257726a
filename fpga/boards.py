"""The boards Celosia builds for, and their PLLs.

Each :class:`Board` names an amaranth-boards platform, the accelerator configuration that fits
the device, the memory window, the default core clock and the PLL primitive that makes it:

* ``ulx3s-85f``: ECP5 LFE5U-85F (156 MULT18X18D, 208 DP16KD), 25 MHz oscillator, FTDI UART.
  EHXPLLL; the accelerator's memory is the board's 32 MB SDRAM (or a block-RAM window).
* ``icebreaker``: iCE40UP5K (8 SB_MAC16, 30 EBR, 4 SPRAM), 12 MHz oscillator, FTDI UART.
  SB_PLL40_PAD; the memory window is two SPRAMs (64 KiB, 32 bits wide).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import *

from celosia.hdl.params import FULL, SMALL, Sizing

#: ULX3S: the full-size accelerator with the span checks done serially through one adder (the
#: one-cycle check through its 16x32 product and two adders was the critical path; with the
#: serial check the 8x8 top routes at 30.14 MHz, docs/fpga.md).
ULX3S = Sizing(serial_check=True)
#: ULX3S with the vector engine: four vector lanes and one finisher. A lane takes 13 MULT18X18D
#: and a finisher 4 (Yosys); eight lanes would need 192 of the 156 (docs/vector.md, "Cost").
#: One finisher instead of the three that keep rows of 128 at full rate saves about 6,200 LUT
#: sites and 8 multipliers; at four lanes it still keeps up with LayerNorm rows of 384 and
#: softmax rows of 56 or more (docs/fpga.md).
ULX3S_VECTOR = Sizing(vector_lanes=4, vector_finishers=1, serial_check=True)

__all__ = ["Board", "BOARDS", "ecp5_pll_params", "ice40_pll_params", "add_pll", "uart_divisor",
           "MIN_UART_DIVISOR"]

#: Fewest clock cycles per UART bit the bridge's receiver works with (it samples mid-bit).
MIN_UART_DIVISOR = 4


def uart_divisor(clk_hz: float, baud: float) -> int:
    """Clock cycles per UART bit for ``baud`` at ``clk_hz`` (the nearest whole number; the
    rate made is ``clk_hz / divisor``, e.g. 3.125 Mbaud for 3 Mbaud at 25 MHz)."""
    divisor = int(round(clk_hz / baud))
    if divisor < MIN_UART_DIVISOR:
        raise ValueError(f"{baud:g} baud at {clk_hz / 1e6:g} MHz needs {clk_hz / baud:.2f} "
                         f"clocks per bit; the bridge needs at least {MIN_UART_DIVISOR}")
    return divisor


@dataclass(frozen=True)
class Board:
    name: str
    family: str               #: "ecp5" or "ice40"
    platform_module: str
    platform_class: str
    clk_name: str             #: the oscillator resource
    clk_in_mhz: float
    array: int                #: default systolic array size
    clock_mhz: float          #: default core clock (meets timing)
    vector: bool              #: the vector engine fits
    k_max: int                #: longest reduction the scratchpads hold
    mem_bytes: int            #: the memory window (on-chip RAM)
    spram: bool               #: memory window in iCE40 SPRAM
    dsps: int                 #: DSP blocks on the device
    reset_button: str | None  #: a button that resets the core (active when pressed)
    sizing: Sizing = FULL     #: how large the accelerator's result-neutral parts are built
    vector_sizing: Sizing | None = None   #: the sizing with the vector engine (default: sizing)
    memory: str = "axi"       #: the accelerator's memory interface ("axi" or "native")
    window: str = "bram"      #: where its memory is: "bram" (on chip) or "sdram" (fpga/system.py)
    synth_opts: str = ""      #: extra options of Yosys's synth_<family>
    nextpnr_opts: str = ""    #: extra options of nextpnr
    #: nextpnr's placement seed when the command line gives none (None: nextpnr's default).
    seed: int | None = None
    #: nextpnr's options for a build with the vector engine, and then nextpnr's default seed
    #: unless the command line gives one (None: ``nextpnr_opts`` and ``seed`` as without it).
    vector_nextpnr_opts: str | None = None

    def platform(self):
        import importlib
        return getattr(importlib.import_module(self.platform_module), self.platform_class)()


BOARDS = {
    "ulx3s-85f": Board(
        name="ulx3s-85f", family="ecp5", platform_module="amaranth_boards.ulx3s",
        platform_class="ULX3S_85F_Platform", clk_name="clk25", clk_in_mhz=25.0,
        # The default is the configuration that runs a whole model there: a 4x4 array with
        # the four-lane vector engine (ULX3S_VECTOR), routed by router1 with timing met at
        # 25 MHz (docs/fpga.md). An 8x8 array with the same engine fits and places (75% of
        # the LUTs) but router1 has not finished it within the hour tried; eight lanes would
        # need 192 MULT18X18D (Yosys), above the 156. The 8x8 matmul-only top
        # (``--array 8 --vector off``) routes with router2 in about 12 min.
        array=4, clock_mhz=25.0, vector=True, k_max=4096, mem_bytes=128 * 1024, spram=False,
        dsps=156, reset_button="button_fire", sizing=ULX3S, vector_sizing=ULX3S_VECTOR,
        # Without the vector engine, seed 2: at 4fc7bee nextpnr's default seed placed an 8x8
        # top router2 did not converge on (160 overused wires at best); seed 2 routed it at
        # 46.60 MHz (docs/fpga.md).
        # With the vector engine router2 falls to a few dozen overused wires and then climbs
        # again, whatever the seed or weights; router1 routes the 4x4 array with four vector
        # lanes (48.39 MHz at 25; docs/fpga.md).
        window="sdram", nextpnr_opts="--router router2", seed=2,
        vector_nextpnr_opts="--router router1"),
    "icebreaker": Board(
        name="icebreaker", family="ice40", platform_module="amaranth_boards.icebreaker",
        platform_class="ICEBreakerPlatform", clk_name="clk12", clk_in_mhz=12.0,
        # Matmul only, board-sized (SMALL), on the native memory port: 99% of the device's
        # LCs with the link's protocol 2. The fuller device routes at 17.2-18.4 MHz depending
        # on the placement seed, so the default clock is 16 MHz (16.125 from the PLL; routed
        # at 18.12 with nextpnr's default seed; docs/fpga.md).
        array=2, clock_mhz=16.0, vector=False, k_max=512, mem_bytes=64 * 1024, spram=True,
        dsps=8, reset_button=None, sizing=SMALL, memory="native",
        synth_opts="-dsp -device u"),
}


def ecp5_pll_params(fin_mhz: float, fout_mhz: float) -> dict:
    """EHXPLLL dividers (feedback from CLKOP) for the output closest to ``fout_mhz``: PFD at
    least 3.125 MHz, VCO 400..800 MHz."""
    best = None
    for idiv in range(1, 129):
        fpfd = fin_mhz / idiv
        if not 3.125 <= fpfd <= 400:
            continue
        for fbdiv in range(1, 81):
            fout = fpfd * fbdiv
            for odiv in range(1, 129):
                fvco = fout * odiv
                if not 400 <= fvco <= 800:
                    continue
                err = abs(fout - fout_mhz)
                if best is None or err < best[0] - 1e-9:
                    best = (err, idiv, fbdiv, odiv, fout, fvco)
    if best is None:
        raise ValueError(f"no EHXPLLL setting for {fout_mhz} MHz")
    _, idiv, fbdiv, odiv, fout, fvco = best
    return {"CLKI_DIV": idiv, "CLKFB_DIV": fbdiv, "CLKOP_DIV": odiv,
            "CLKOP_CPHASE": odiv - 1, "fout_mhz": fout, "fvco_mhz": fvco}


def ice40_pll_params(fin_mhz: float, fout_mhz: float) -> dict:
    """SB_PLL40 dividers (SIMPLE feedback) for the output closest to ``fout_mhz``: PFD
    10..133 MHz, VCO 533..1066 MHz, output 16..275 MHz."""
    best = None
    for divr in range(16):
        fpfd = fin_mhz / (divr + 1)
        if not 10 <= fpfd <= 133:
            continue
        for divf in range(128):
            fvco = fpfd * (divf + 1)
            if not 533 <= fvco <= 1066:
                continue
            for divq in range(1, 7):
                fout = fvco / (1 << divq)
                if not 16 <= fout <= 275:
                    continue
                err = abs(fout - fout_mhz)
                if best is None or err < best[0] - 1e-9:
                    best = (err, divr, divf, divq, fout, fpfd)
    if best is None:
        raise ValueError(f"no SB_PLL40 setting for {fout_mhz} MHz")
    _, divr, divf, divq, fout, fpfd = best
    filt = next(i for i, lim in enumerate((17, 26, 44, 66, 101, 1e9), start=1) if fpfd < lim)
    return {"DIVR": divr, "DIVF": divf, "DIVQ": divq, "FILTER_RANGE": filt, "fout_mhz": fout}


def add_pll(m: Module, platform, board: Board, fout_mhz: float, clk: Signal):
    """Instantiate the board's PLL in ``m`` driving ``clk`` (a clock domain's own clock signal,
    so that the constrained net keeps its name through synthesis); returns ``(locked,
    achieved_mhz)``. ``clk`` carries a clock constraint at the achieved frequency."""
    locked = Signal()
    if board.family == "ecp5":
        p = ecp5_pll_params(board.clk_in_mhz, fout_mhz)
        clk_in = platform.request(board.clk_name, dir="i").i
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{board.clk_in_mhz:g}",
            a_FREQUENCY_PIN_CLKOP=f"{p['fout_mhz']:g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=p["CLKI_DIV"], p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p["CLKOP_DIV"],
            p_CLKOP_CPHASE=p["CLKOP_CPHASE"], p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
            p_CLKFB_DIV=p["CLKFB_DIV"],
            i_RST=0, i_STDBY=0, i_CLKI=clk_in, i_CLKFB=clk, i_PHASESEL0=0, i_PHASESEL1=0,
            i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=clk, o_LOCK=locked)
    else:
        p = ice40_pll_params(board.clk_in_mhz, fout_mhz)
        pad = platform.request(board.clk_name, dir="-")
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE", p_DIVR=p["DIVR"], p_DIVF=p["DIVF"], p_DIVQ=p["DIVQ"],
            p_FILTER_RANGE=p["FILTER_RANGE"],
            io_PACKAGEPIN=pad.io, i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBAL=clk, o_LOCK=locked)
    platform.add_clock_constraint(clk, p["fout_mhz"] * 1e6)
    return locked, p["fout_mhz"]
