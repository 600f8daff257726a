"""Register-to-register path depths of a synthesised ECP5 netlist, without place and route.

A ULX3S place and route takes 30 to 40 minutes and reports one critical path; the many paths a
few nanoseconds below it stay hidden until that one is cut. ``estimate(netlist)`` reads the
JSON netlist Yosys writes after ``synth_ecp5`` (a few minutes) and gives, for every register
(grouped by its RTL name), the estimated delay and logic depth of the worst path into it and the
register it starts from. ``celosia build --paths`` prints them.

The delays are a fixed model, not nextpnr's: each cell's intrinsic delay from the ECP5 timing
nextpnr reports for speed grade 6 (a LUT4 0.24 ns, a carry chain 0.45 ns in, 0.06 ns a CCU2C
along, 0.40 ns out; a block RAM without its output register 5.6 ns clock to data), and a flat
``NET_NS`` for every general-routing net (dedicated carry and wide-mux connections cost
nothing). Routing is what the model cannot know; on the routed ULX3S builds in docs/fpga.md it
averages about 1.1 ns a net. So the figures rank paths and count logic levels; they are not an
Fmax.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["NET_NS", "PROFILE_NS", "Endpoint", "estimate", "format_profile", "group_name",
           "load_netlist", "profile"]

#: one general-routing net (the model's only routing figure)
NET_NS = 1.0
#: the thresholds of ``profile`` (ns): 8 ns is the 125 MHz target
PROFILE_NS = (8, 10, 12, 14, 16, 18)
_CLK_TO_Q = 0.52
_LUT = 0.24
_MUX = 0.16               # PFUMX / L6MUX21 after their LUTs
_CARRY_IN, _CARRY_ALONG, _CARRY_OUT = 0.45, 0.06, 0.40
_BRAM_NOREG, _BRAM_REG = 5.6, 1.0
_MULT_COMB, _MULT_IN_REG, _MULT_OUT_REG = 4.5, 4.0, 0.6
_LUTRAM_READ, _LUTRAM_CLK = 0.3, 1.0

_FF_SUFFIX = re.compile(r"_TRELLIS_FF_Q(_\d+)?$")
_MULT_IN = re.compile(r"[AB]\d+")


def group_name(cell: str) -> str:
    """A register's RTL name from its cell name (the flip-flops of one signal share it)."""
    return _FF_SUFFIX.sub("", cell)


@dataclass
class Endpoint:
    """The worst estimated path into one group of registers (or one RAM or multiplier)."""
    end: str
    ns: float
    levels: int                      # LUTs and carry-chain entries on the path
    start: str
    path: list[str] = field(default_factory=list)   # cells from the start, when traced

    def as_dict(self) -> dict:
        d = {"end": self.end, "ns": round(self.ns, 2), "levels": self.levels, "start": self.start}
        if self.path:
            d["path"] = self.path
        return d


def load_netlist(path: str | Path, top: str = "celosia_top") -> dict:
    """The top module's cells from a Yosys JSON netlist."""
    return json.loads(Path(path).read_text())["modules"][top]["cells"]


def _mult_regs(cell) -> tuple[bool, bool]:
    p = cell.get("parameters", {})
    return (p.get("REG_INPUTA_CLK", "NONE") != "NONE", p.get("REG_OUTPUT_CLK", "NONE") != "NONE")


def estimate(cells: dict, trace: int = 0) -> list[Endpoint]:
    """Every endpoint group's worst path, slowest first; the first ``trace`` with their cells."""
    drv = {}
    for name, c in cells.items():
        for port, d in c["port_directions"].items():
            if d == "output":
                for b in c["connections"][port]:
                    if isinstance(b, int):
                        drv[b] = (name, port)
    # arrival at a net bit: (ns, levels, start cell, predecessor bit)
    memo: dict[int, tuple] = {}

    def net(c, port, src) -> float:
        t = c["type"]
        if (t == "CCU2C" and port == "CIN") or (t == "PFUMX" and port in ("ALUT", "BLUT")) \
                or (t == "L6MUX21" and port in ("D0", "D1")):
            return 0.0
        return NET_NS

    def worst(c, ports):
        best = (0.0, 0, "<constant>", None)
        for port in ports:
            for b in c["connections"].get(port, ()):
                if not isinstance(b, int) or b not in drv:
                    continue
                a = arrival(b)
                t = a[0] + net(c, port, drv[b])
                if t > best[0]:
                    best = (t, a[1], a[2], b)
        return best

    def compute(bit):
        name, port = drv[bit]
        c = cells[name]
        t = c["type"]
        if t == "TRELLIS_FF":
            return (_CLK_TO_Q, 0, name, None)
        if t == "LUT4":
            a = worst(c, "ABCD")
            return (a[0] + _LUT, a[1] + 1, a[2], a[3])
        if t in ("PFUMX", "L6MUX21"):
            a = worst(c, ("ALUT", "BLUT", "C0", "D0", "D1", "SD"))
            return (a[0] + _MUX, a[1], a[2], a[3])
        if t == "CCU2C":
            i = worst(c, [f"{x}{k}" for x in "ABCD" for k in "01"])
            ci = worst(c, ["CIN"])
            if port == "COUT":
                return max((i[0] + _CARRY_IN, i[1] + 1, i[2], i[3]),
                           (ci[0] + _CARRY_ALONG, ci[1], ci[2], ci[3]))
            return max((i[0] + _CARRY_OUT, i[1] + 1, i[2], i[3]),
                       (ci[0] + _CARRY_OUT, ci[1] + 1, ci[2], ci[3]))
        if t == "MULT18X18D":
            reg_in, reg_out = _mult_regs(c)
            if reg_out:
                return (_MULT_OUT_REG, 0, name, None)
            if reg_in:
                return (_MULT_IN_REG, 1, name, None)
            a = worst(c, [p for p in c["port_directions"] if _MULT_IN.fullmatch(p)])
            return (a[0] + _MULT_COMB, a[1] + 1, a[2], a[3])
        if t == "DP16KD":
            reg = c.get("parameters", {}).get("REGMODE_A", "NOREG") != "NOREG"
            return (_BRAM_REG if reg else _BRAM_NOREG, 0, name, None)
        if t == "TRELLIS_DPR16X4":
            a = worst(c, ["RAD"])
            return max((a[0] + _LUTRAM_READ, a[1] + 1, a[2], a[3]), (_LUTRAM_CLK, 0, name, None))
        return (0.0, 0, f"<{t}>", None)

    def arrival(bit):
        r = memo.get(bit)
        if r is None:
            # Iterative depth-first evaluation (the combinational cones are deep); a bit met
            # again while its own cone is open (a combinational loop) counts from zero.
            stack, open_ = [bit], set()
            while stack:
                b = stack[-1]
                if b in memo:
                    stack.pop()
                    continue
                c = cells[drv[b][0]]
                todo = [x for p in _inputs(c) for x in c["connections"].get(p, ())
                        if isinstance(x, int) and x in drv and x not in memo]
                if b not in open_ and todo:
                    open_.add(b)
                    for x in todo:
                        if x in open_:
                            memo[x] = (0.0, 0, "<loop>", None)
                        else:
                            stack.append(x)
                    continue
                memo[b] = compute(b)
                stack.pop()
            r = memo[bit]
        return r

    ends: dict[str, tuple] = defaultdict(lambda: (-1.0, 0, "", None))
    for name, c in cells.items():
        t = c["type"]
        if t == "TRELLIS_FF":
            ports, g = ("DI", "LSR"), group_name(name)
        elif t == "DP16KD":
            ports = [p for p, d in c["port_directions"].items()
                     if d == "input" and not p.startswith("CLK")]
            g = name
        elif t == "MULT18X18D" and _mult_regs(c)[0]:
            ports, g = [p for p in c["port_directions"] if _MULT_IN.fullmatch(p)], name
        elif t == "TRELLIS_DPR16X4":
            ports, g = ("DI", "WAD", "WRE"), name
        else:
            continue
        for port in ports:
            for b in c["connections"].get(port, ()):
                if isinstance(b, int) and b in drv:
                    a = arrival(b)
                    if a[0] + NET_NS > ends[g][0]:
                        ends[g] = (a[0] + NET_NS, a[1], a[2], b)
    out = []
    for i, (g, (ns, levels, start, b)) in enumerate(sorted(ends.items(), key=lambda kv: -kv[1][0])):
        path = []
        if i < trace:
            while b is not None:
                path.append(drv[b][0])
                b = memo[b][3]
            path.reverse()
        out.append(Endpoint(g, ns, levels, group_name(start), path))
    return out


def _inputs(c) -> tuple:
    """The input ports the model propagates through a cell (none for a register)."""
    t = c["type"]
    if t == "LUT4":
        return ("A", "B", "C", "D")
    if t in ("PFUMX", "L6MUX21"):
        return ("ALUT", "BLUT", "C0", "D0", "D1", "SD")
    if t == "CCU2C":
        return tuple(f"{x}{k}" for x in "ABCD" for k in "01") + ("CIN",)
    if t == "MULT18X18D" and not any(_mult_regs(c)):
        return tuple(p for p in c["port_directions"] if _MULT_IN.fullmatch(p))
    if t == "TRELLIS_DPR16X4":
        return ("RAD",)
    return ()


def profile(ends: list[Endpoint], thresholds=PROFILE_NS) -> dict[int, int]:
    """How many endpoint groups are estimated above each threshold (ns): the figure to compare
    between two netlists (single paths move by about a nanosecond with Yosys's mapping)."""
    return {t: sum(1 for e in ends if e.ns > t) for t in thresholds}


def format_profile(new: dict[int, int], old: dict[int, int] | None = None) -> str:
    """``profile`` as one line, an older netlist's counts beside each (``--against``)."""
    return "groups above " + ", ".join(
        f"{t} ns: {n}" + (f" (was {old[t]})" if old else "") for t, n in new.items())


def main(argv=None) -> int:
    """``python -m celosia.fpga.paths NETLIST [--against OLD] [--top N]``: the estimate for a
    netlist already written (a ``celosia build`` directory's ``celosia_top.json``)."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m celosia.fpga.paths", description=main.__doc__)
    p.add_argument("netlist")
    p.add_argument("--against", default=None, help="an older netlist to compare the profile with")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    ends = estimate(load_netlist(args.netlist))
    old = profile(estimate(load_netlist(args.against))) if args.against else None
    print(format_profile(profile(ends), old))
    for e in ends[:args.top]:
        print(f"{e.ns:8.2f} {e.levels:6d}  {e.end}  <-  {e.start}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
