"""The ULX3S's SDRAM controller: LiteDRAM's standalone core, generated and wrapped for Amaranth.

LiteDRAM (``pip install celosia[board]``) writes a proven SDR controller as one Verilog file:
GENSDRPHY (the ECP5 I/O registers and pads), the controller (bank machines, refresher), a
Wishbone port to its control registers and an AXI4 user port. :func:`generate` runs the
generator once per configuration and keeps the result in a cache folder named by a hash of
the YAML and the generator's versions. :class:`LiteDRAMCore` is that Verilog as an Amaranth
``Instance`` with the AXI4 port, the Wishbone control port and the SDRAM pins.

Nobody initialises the chip in a core without a CPU: :func:`init_sequence` is the datasheet
power-up sequence as writes to the control registers (DFII), read from the generated
register map and PHY header, for :class:`InitSequencer` (gateware) or a test harness to play.
:class:`SdramWindow` puts it together as the accelerator's memory window: AXI4 slave and the
UART bridge's byte port, like :class:`celosia.fpga.memory.AxiRam`.

One fix to the generated Verilog: ``sdram_dq`` is declared ``input`` but the pads
(TRELLIS_IO) inside drive it, so it becomes ``inout``; nothing else changes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from celosia.hdl.axi import AXI4Signature, AxiSlice

from .bridge import BytePortSignature

__all__ = ["GENERATOR_PACKAGES", "EXTRA_MODULES", "SDRAM_WORD_BYTES", "REFRESH_INTERVAL_NS", "refresh_interval_ns",
           "SdramCoreConfig", "generate", "GeneratedCore",
           "WishboneSignature", "SdramPinsSignature", "LiteDRAMCore", "init_sequence",
           "InitSequencer", "ByteToWishbone", "SdramWindow"]

#: The generator's packages (pinned by the ``board`` extra; their installed versions are part
#: of a generated core's cache key).
GENERATOR_PACKAGES = ("litedram", "litex", "migen")

CORE_NAME = "litedram_core"
#: Bytes the SDRAM moves per clock at most: one 16-bit word (SDR, burst length 1).
SDRAM_WORD_BYTES = 2
#: The name of the byte port's LiteDRAM user port (ports user_port_wb_1_*).
BYTE_PORT = "wb_1"


@dataclass(frozen=True)
class SdramCoreConfig:
    """What :func:`generate` asks LiteDRAM for.

    ``module`` is a LiteDRAM SDRAM module class or one of :data:`EXTRA_MODULES`; ``modules``
    of them side by side make the data bus (two 8-bit lanes for the ULX3S's x16 chip).

    The default drives the ULX3S's 32 MB chips (IS42S16160G, MT48LC16M16A2, -6 and -7
    grades): LiteDRAM's MT48LC16M16 timings are at least the datasheet values of all four
    (tRAS 44, tRC 64, tRP/tRCD 20, tRRD 15, tWR 15, tRFC 66 ns). LiteDRAM's own IS42S16160
    (and AS4C32M16) leave tRAS unset, so neither tRAS nor tRC is enforced: a READ with auto
    precharge right after tRCD and the next ACTIVE to that bank come 50 ns apart, which the
    chip model reports as a tRP/tRC violation (tests/fpga/test_sdram.py)."""

    module: str = "MT48LC16M16"
    modules: int = 2
    sys_clk_freq: float = 100e6
    device: str = "LFE5U-85F-6BG381C"
    id_width: int = 4
    data_width: int = 32
    #: A second user port for byte accesses (Wishbone, the chip's 16-bit width): the UART
    #: bridge's way into the memory beside the accelerator's AXI port.
    byte_port: bool = False

    def yaml(self) -> str:
        """The generator's configuration (JSON is YAML)."""
        return json.dumps({
            "cpu": "None", "memtype": "SDR", "uart": "rs232", "speedgrade": -6,
            "sdram_module": self.module, "sdram_module_nb": self.modules,
            "sdram_rank_nb": 1, "sdram_phy": "GENSDRPHY", "device": self.device,
            "input_clk_freq": 25e6, "sys_clk_freq": self.sys_clk_freq, "cmd_latency": 0,
            "user_ports": {"axi_0": {"type": "axi", "id_width": self.id_width,
                                     "data_width": self.data_width},
                           **({BYTE_PORT: {"type": "wishbone", "data_width": 8 * self.modules}}
                              if self.byte_port else {})},
        }, indent=2, sort_keys=True)


@dataclass(frozen=True)
class GeneratedCore:
    """A generated core: its folder, Verilog, register map and PHY constants."""

    folder: Path

    @property
    def verilog_path(self) -> Path:
        return self.folder / f"{CORE_NAME}.v"

    def verilog(self) -> str:
        return self.verilog_path.read_text()

    def registers(self) -> dict[str, int]:
        """Control register name -> byte address on the Wishbone port (csr.csv)."""
        with open(self.folder / "csr.csv", newline="") as f:
            return {row[1]: int(row[2], 0) for row in csv.reader(f)
                    if row and row[0] == "csr_register"}

    def phy(self) -> dict[str, int]:
        """The PHY header's numeric #defines (DFII bits, CAS latency, ...)."""
        text = (self.folder / "sdram_phy.h").read_text()
        return {name: int(value, 0) for name, value in
                re.findall(r"^#define (\w+) (0x[0-9a-fA-F]+|\d+)\b", text, re.M)}

    def port_widths(self) -> dict[str, tuple[str, int]]:
        """The core's ports: name -> (direction, width)."""
        header = re.search(rf"module {CORE_NAME} \((.*?)\);", self.verilog(), re.S).group(1)
        ports = {}
        for direction, msb, name in re.findall(
                r"(input|output|inout)\s+wire\s+(?:\[(\d+):0\]\s+)?(\w+)", header):
            ports[name] = (direction, int(msb) + 1 if msb else 1)
        return ports


def cache_dir() -> Path:
    root = os.environ.get("CELOSIA_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "celosia") / "litedram"


def installed_versions() -> dict[str, str]:
    try:
        return {name: metadata.version(name) for name in GENERATOR_PACKAGES}
    except metadata.PackageNotFoundError as exc:
        raise RuntimeError(f"LiteDRAM's generator is not installed ({exc.name} missing): "
                           "pip install 'celosia[board]'") from exc


#: SDR modules LiteDRAM's table lacks, as the fields of its ``SDRModule`` (timings in ns, or
#: (clocks, ns) pairs, as LiteDRAM writes them). AS4C32M16SB_7: the 64 MB chip of later ULX3S
#: boards in its -7 grade (LiteDRAM's AS4C32M16 has -6 timings, 18 ns tRCD/tRP, and no tRAS).
EXTRA_MODULES = {
    "AS4C32M16SB_7": {
        "nbanks": 4, "nrows": 8192, "ncols": 1024,
        "technology": {"tREFI": 64e6 / 8192, "tWTR": (2, None), "tCCD": (1, None),
                       "tRRD": (None, 14)},
        "speedgrade": {"tRP": 21, "tRCD": 21, "tWR": 14, "tRFC": (None, 63), "tFAW": None,
                       "tRAS": 42},
    },
}

#: Every ULX3S part refreshes its 8192 rows within 64 ms: one AUTO REFRESH every 7812.5 ns on
#: average (LiteDRAM's tREFI for them).
REFRESH_INTERVAL_NS = 64e6 / 8192


def refresh_interval_ns(sys_clk_freq: float, interval_ns: float = REFRESH_INTERVAL_NS) -> float:
    """The tREFI given to the generator: ``interval_ns`` rounded down to whole clock cycles.

    LiteDRAM rounds tREFI *up* to whole cycles (at 25 MHz, 196 cycles of 40 ns: 8192 refreshes
    take 64.2 ms, past the 64 ms of every datasheet; the chip model reports it as a tREF
    violation after 64 ms of simulated time). Rounded down here, the generator's ceiling gives
    back the same whole number of cycles (a hundredth of a cycle below it, against rounding
    errors)."""
    period = 1e9 / sys_clk_freq
    return (int(interval_ns // period) - 0.01) * period


# Runs litedram.gen with EXTRA_MODULES (argv[1], JSON) added to LiteDRAM's module table and the
# module's tREFI replaced by argv[2] (ns).
_GENERATOR = """
import json, sys
from litedram import modules
pair = lambda v: tuple(v) if isinstance(v, list) else v
for name, m in json.loads(sys.argv.pop(1)).items():
    setattr(modules, name, type(name, (modules.SDRModule,), {
        "nbanks": m["nbanks"], "nrows": m["nrows"], "ncols": m["ncols"],
        "technology_timings": modules._TechnologyTimings(
            **{k: pair(v) for k, v in m["technology"].items()}),
        "speedgrade_timings": {"default": modules._SpeedgradeTimings(
            **{k: pair(v) for k, v in m["speedgrade"].items()})}}))
module, trefi = sys.argv.pop(1), float(sys.argv.pop(1))
t = getattr(modules, module).technology_timings
getattr(modules, module).technology_timings = modules._TechnologyTimings(
    tREFI=trefi, tWTR=t.tWTR, tCCD=t.tCCD, tRRD=t.tRRD, tZQCS=t.tZQCS)
from litedram.gen import main
main()
"""


def generate(config: SdramCoreConfig = SdramCoreConfig(), *, log=None) -> GeneratedCore:
    """The core for ``config``, generated now or taken from the cache."""
    versions = installed_versions()
    extra = json.dumps({k: v for k, v in EXTRA_MODULES.items() if k == config.module})
    trefi = repr(refresh_interval_ns(config.sys_clk_freq))
    key = hashlib.sha256((config.yaml() + json.dumps(versions, sort_keys=True)
                          + extra + trefi).encode())
    folder = cache_dir() / f"{CORE_NAME}-{key.hexdigest()[:16]}"
    core = GeneratedCore(folder)
    if core.verilog_path.exists():
        return core
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        tmp = Path(tmp)
        (tmp / "core.yml").write_text(config.yaml())
        proc = subprocess.run([sys.executable, "-c", _GENERATOR, extra, config.module, trefi, "core.yml",
                               "--name", CORE_NAME], cwd=tmp, capture_output=True, text=True)
        if log is not None:
            log.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"litedram.gen failed ({proc.returncode}):\n"
                               + (proc.stdout + proc.stderr)[-4000:])
        out = tmp / "out"
        out.mkdir()
        build = tmp / "build"
        verilog = (build / "gateware" / f"{CORE_NAME}.v").read_text()
        (out / f"{CORE_NAME}.v").write_text(_fix_dq_direction(verilog))
        shutil.copy(build / "csr.csv", out / "csr.csv")
        shutil.copy(build / "software" / "include" / "generated" / "sdram_phy.h",
                    out / "sdram_phy.h")
        (out / "config.json").write_text(json.dumps({"config": asdict(config),
                                                     "versions": versions}, indent=2))
        try:
            out.rename(folder)
        except OSError:
            if not core.verilog_path.exists():   # not a concurrent generation: a real error
                raise
    return core


def _fix_dq_direction(verilog: str) -> str:
    fixed, n = re.subn(r"\binput(\s+wire\s+\[\d+:0\]\s+sdram_dq,)", r"inout\1", verilog)
    if n != 1:
        raise RuntimeError("litedram_core.v: the sdram_dq port declaration was not found")
    return fixed


class WishboneSignature(wiring.Signature):
    """Wishbone B4 classic, master's view (LiteX's ``wishbone.Interface``)."""

    def __init__(self, addr_width: int = 30, data_width: int = 32):
        self.addr_width, self.data_width = addr_width, data_width
        super().__init__({
            "adr": Out(addr_width), "dat_w": Out(data_width), "dat_r": In(data_width),
            "sel": Out(data_width // 8),
            "cyc": Out(1), "stb": Out(1), "we": Out(1), "ack": In(1), "err": In(1),
            "cti": Out(3), "bte": Out(2),
        })


class SdramPinsSignature(wiring.Signature):
    """The SDRAM chip's command, address and mask pins, driven by the controller (DQ is an
    I/O port of its own)."""

    def __init__(self, addr_width: int = 13, bank_width: int = 2, lanes: int = 2):
        super().__init__({
            "a": Out(addr_width), "ba": Out(bank_width), "cs_n": Out(1), "ras_n": Out(1),
            "cas_n": Out(1), "we_n": Out(1), "cke": Out(1), "dm": Out(lanes),
        })


class LiteDRAMCore(wiring.Component):
    """The generated LiteDRAM core as an Instance, clocked by ``domain``.

    Parameters
    ----------
    core : GeneratedCore
        From :func:`generate`.
    dq : IOValue
        The SDRAM data pads, 8 per module (the core's TRELLIS_IO cells drive them: request
        them from the platform without a buffer, ``dir="-"``).
    domain : str
        The SDRAM clock domain (its frequency is the configuration's ``sys_clk_freq``).
    axi_addr_width : int
        The width of ``axi``'s addresses (default: the core's, the memory's size in bytes);
        wider addresses wrap modulo the memory's size.

    Members
    -------
    axi : In(AXI4Signature)
        The user port, byte addressed.
    byte_bus : In(WishboneSignature)
        The byte port's Wishbone user port (16-bit words), when the core has one.
    wb_ctrl : In(WishboneSignature)
        The control registers (:func:`init_sequence`).
    pins : Out(SdramPinsSignature)
        Command, address, CKE and DQM pins (registered in the core's I/O cells).
    init_done, init_error : Out(1)
        The ``init_done``/``init_error`` registers; the user ports wait for init_done.
    """

    def __init__(self, core: GeneratedCore, dq, *, domain: str = "sync",
                 axi_addr_width: int | None = None):
        ports = core.port_widths()
        self._core, self._dq, self._domain = core, dq, domain
        if "user_port_axi_0_awaddr" not in ports:
            raise ValueError(f"{core.verilog_path}: no AXI user port axi_0")
        self.addr_width = axi_addr_width or ports["user_port_axi_0_awaddr"][1]
        self.data_width = ports["user_port_axi_0_wdata"][1]
        self.id_width = ports["user_port_axi_0_awid"][1]
        if len(dq) != ports["sdram_dq"][1]:
            raise ValueError(f"dq has {len(dq)} pads, the core {ports['sdram_dq'][1]}")
        members = {
            "axi": In(AXI4Signature(self.addr_width, self.data_width, self.id_width)),
            "wb_ctrl": In(WishboneSignature(ports["wb_ctrl_adr"][1])),
            "pins": Out(SdramPinsSignature(ports["sdram_a"][1], ports["sdram_ba"][1],
                                           ports["sdram_dm"][1])),
            "init_done": Out(1), "init_error": Out(1),
        }
        self._buses = {"user_port_axi_0_": "axi", "wb_ctrl_": "wb_ctrl"}
        byte = f"user_port_{BYTE_PORT}_"
        if byte + "adr" in ports:
            members["byte_bus"] = In(WishboneSignature(ports[byte + "adr"][1],
                                                       ports[byte + "dat_w"][1]))
            self._buses[byte] = "byte_bus"
        super().__init__(members)
        self._ports = ports

    def elaborate(self, platform):
        m = Module()
        kwargs = {"i_clk": ClockSignal(self._domain), "i_rst": ResetSignal(self._domain),
                  "o_init_done": self.init_done, "o_init_error": self.init_error,
                  "io_sdram_dq": self._dq}
        for name in self.pins.signature.members:
            kwargs[f"o_sdram_{name}"] = getattr(self.pins, name)
        for name, (direction, width) in self._ports.items():
            for prefix, bus_name in self._buses.items():
                bus = getattr(self, bus_name)
                member = name[len(prefix):]
                if name.startswith(prefix) and member in bus.signature.members:
                    value = getattr(bus, member)
                    if direction == "input" and len(value) < width:   # AXI's 3-bit size
                        value = Cat(value, C(0, width - len(value)))
                    elif direction == "input" and len(value) > width:  # addresses wrap
                        value = value[:width]
                    elif len(value) != width:
                        raise ValueError(f"{name}: {width} bits, {member} has {len(value)}")
                    kwargs[f"{direction[0]}_{name}"] = value
        m.submodules.litedram = Instance(CORE_NAME, **kwargs)
        if platform is not None and hasattr(platform, "add_file"):
            platform.add_file(self._core.verilog_path.name, self._core.verilog())
        return m


#: Time given to each command of the power-up sequence: longer than tRP, tRFC and tMRD of
#: every ULX3S part (at most 70 ns), so the waits need no per-part table.
COMMAND_GAP_NS = 200
#: The power-up wait before the first command: 200 us covers every ULX3S part (100 us for
#: the ISSI and Micron chips, 200 us for the Alliance one).
POWER_UP_US = 200
#: AUTO REFRESH commands in the power-up sequence (2 for ISSI and Micron, 8 for Alliance).
INIT_REFRESHES = 8
#: Burst length code 0 (one word): LiteDRAM's SDR controller issues one command per word.
BURST_LENGTH_1 = 0


def init_sequence(core: GeneratedCore, sys_clk_freq: float) -> list[tuple[str, int, int]]:
    """The SDRAM power-up sequence as ``("write", byte address, value)`` steps on the
    Wishbone control port and ``("wait", cycles, 0)`` pauses, in order.

    Software takes the DFI from the controller (whose refresher would otherwise start
    during the power-up wait), holds CKE high for the wait, issues PRECHARGE ALL,
    INIT_REFRESHES AUTO REFRESH and LOAD MODE (the PHY's CAS latency, burst length 1), hands
    the DFI back to the controller and sets init_done."""
    regs, phy = core.registers(), core.phy()
    ctrl, pi0 = regs["sdram_dfii_control"], "sdram_dfii_pi0_"
    cycles = lambda ns: -(-int(ns * sys_clk_freq) // 1_000_000_000)
    software = phy["DFII_CONTROL_CKE"] | phy["DFII_CONTROL_ODT"] | phy["DFII_CONTROL_RESET_N"]
    cs, we = phy["DFII_COMMAND_CS"], phy["DFII_COMMAND_WE"]
    cas, ras = phy["DFII_COMMAND_CAS"], phy["DFII_COMMAND_RAS"]
    precharge_all_a10 = 1 << 10

    steps = [("write", ctrl, software), ("wait", cycles(POWER_UP_US * 1000), 0)]

    def command(bits, address):
        steps.extend([("write", regs[pi0 + "address"], address),
                      ("write", regs[pi0 + "baddress"], 0),
                      ("write", regs[pi0 + "command"], bits),
                      ("write", regs[pi0 + "command_issue"], 1),
                      ("wait", cycles(COMMAND_GAP_NS), 0)])

    command(ras | we | cs, precharge_all_a10)
    for _ in range(INIT_REFRESHES):
        command(ras | cas | cs, 0)
    command(ras | cas | we | cs, phy["SDRAM_PHY_CL"] << 4 | BURST_LENGTH_1)
    steps.append(("write", ctrl, software | phy["DFII_CONTROL_SEL"]))
    steps.append(("write", regs["ddrctrl_init_done"], 1))
    return steps


class InitSequencer(wiring.Component):
    """Plays :func:`init_sequence` steps on a Wishbone master after reset, then sets ``done``.

    A write is held until ``ack``; a wait counts cycles. For a board whose SDRAM must work
    without the host (the accelerator's memory).

    Members
    -------
    bus : Out(WishboneSignature)
        To the core's ``wb_ctrl``.
    done : Out(1)
        Every step played.
    """

    def __init__(self, steps, addr_width: int = 30):
        self._steps = list(steps)
        kinds = {kind for kind, _, _ in self._steps}
        if not kinds <= {"write", "wait"}:
            raise ValueError(f"unknown step kinds {sorted(kinds - {'write', 'wait'})}")
        self._longest_wait = max([n for kind, n, _ in self._steps if kind == "wait"] + [1])
        super().__init__({"bus": Out(WishboneSignature(addr_width)), "done": Out(1)})

    def elaborate(self, platform):
        m = Module()
        step = Signal(range(len(self._steps) + 1))
        waited = Signal(range(self._longest_wait + 1))
        bus = self.bus
        with m.Switch(step):
            for i, (kind, x, y) in enumerate(self._steps):
                with m.Case(i):
                    if kind == "write":
                        m.d.comb += [bus.adr.eq(x >> 2), bus.dat_w.eq(y), bus.sel.eq(0xf),
                                     bus.cyc.eq(1), bus.stb.eq(1), bus.we.eq(1)]
                        with m.If(bus.ack):
                            m.d.sync += step.eq(i + 1)
                    else:
                        with m.If(waited + 1 >= x):
                            m.d.sync += [waited.eq(0), step.eq(i + 1)]
                        with m.Else():
                            m.d.sync += waited.eq(waited + 1)
            with m.Default():
                m.d.comb += self.done.eq(1)
        return m


class ByteToWishbone(wiring.Component):
    """The UART bridge's byte port as single accesses on a Wishbone bus of ``data_width``-bit
    words (the byte's lane selected by ``sel``; a read's byte taken from its lane).

    A request is taken at once when no access is running (``ready`` is high while idle) and
    the access is held until ``ack``; a read answers with ``rvalid`` the cycle after."""

    def __init__(self, addr_width: int, data_width: int = 16):
        assert data_width in (8, 16, 32, 64)
        self.lanes = data_width // 8
        super().__init__({"side": In(BytePortSignature()),
                          "bus": Out(WishboneSignature(addr_width, data_width))})

    def elaborate(self, platform):
        m = Module()
        side, bus = self.side, self.bus
        lane_bits = (self.lanes - 1).bit_length()
        busy, we = Signal(), Signal()
        addr, wdata = Signal(len(side.addr)), Signal(8)
        m.d.comb += [side.ready.eq(~busy),
                     bus.cyc.eq(busy), bus.stb.eq(busy), bus.we.eq(we),
                     bus.adr.eq(addr[lane_bits:]),
                     bus.sel.eq(1 << addr[:lane_bits] if lane_bits else 1),
                     bus.dat_w.eq(wdata.replicate(self.lanes))]
        with m.If(side.valid & side.ready):
            m.d.sync += [busy.eq(1), we.eq(side.we), addr.eq(side.addr), wdata.eq(side.wdata)]
        m.d.sync += side.rvalid.eq(0)
        with m.If(busy & bus.ack):
            m.d.sync += [busy.eq(0), side.rvalid.eq(~we),
                         side.rdata.eq(bus.dat_r.word_select(addr[:lane_bits], 8)
                                       if lane_bits else bus.dat_r)]
        return m


class SdramWindow(wiring.Component):
    """The accelerator's memory window in SDRAM: an AXI4 slave and a byte port, as
    :class:`celosia.fpga.memory.AxiRam`, served by the LiteDRAM core (its AXI user port and
    its byte port) with :class:`InitSequencer` bringing the chip up after reset.

    Parameters
    ----------
    core : GeneratedCore
        Generated with ``byte_port=True`` and the AXI port's width and ID width.
    dq : IOValue
        The SDRAM data pads.
    init_steps : list
        :func:`init_sequence` for the core's clock; ``None`` leaves ``wb_ctrl`` to the
        outside (a test harness that plays the sequence itself).

    Members
    -------
    axi : In(AXI4Signature(addr_width, ...))
        Addresses wrap modulo the SDRAM's size.
    side : In(BytePortSignature)
    pins : Out(SdramPinsSignature)
    init_done : Out(1)
        The chip is initialised (the ports wait for it).
    wb_ctrl : In(WishboneSignature)
        Only without ``init_steps``.
    """

    def __init__(self, core: GeneratedCore, dq, *, init_steps=None, addr_width: int = 32):
        self._core_view = LiteDRAMCore(core, dq, axi_addr_width=addr_width)
        if "byte_bus" not in self._core_view.signature.members:
            raise ValueError(f"{core.verilog_path}: generated without the byte port")
        self._init_steps = init_steps
        members = {name: self._core_view.signature.members[name]
                   for name in ("axi", "pins", "init_done")}
        members["side"] = In(BytePortSignature())
        if init_steps is None:
            members["wb_ctrl"] = self._core_view.signature.members["wb_ctrl"]
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self._core_view
        # A register slice between the accelerator's AXI master and the core: the core's
        # ready and valid signals come out of its FIFOs and bank machines through logic of
        # their own, and would otherwise run on into the master's and the engines' decisions.
        sig = core.axi.signature
        m.submodules.axi_slice = cut = AxiSlice(sig.addr_width, sig.data_width, sig.id_width)
        wiring.connect(m, wiring.flipped(self.axi), cut.s)
        wiring.connect(m, cut.m, core.axi)
        wiring.connect(m, wiring.flipped(self.pins), core.pins)
        m.d.comb += self.init_done.eq(core.init_done)
        m.submodules.byte = byte = ByteToWishbone(len(core.byte_bus.adr),
                                                  len(core.byte_bus.dat_w))
        wiring.connect(m, wiring.flipped(self.side), byte.side)
        wiring.connect(m, byte.bus, core.byte_bus)
        if self._init_steps is None:
            wiring.connect(m, wiring.flipped(self.wb_ctrl), core.wb_ctrl)
        else:
            m.submodules.init = init = InitSequencer(self._init_steps, len(core.wb_ctrl.adr))
            wiring.connect(m, init.bus, core.wb_ctrl)
        return m
