"""FPGA board tops and the UART bridge.

Fast: both board tops elaborate (to RTLIL, no synthesis); the UART bridge, with the on-chip
memory and the real CSR block, answers frames in the Amaranth simulator (memory and CSR reads
and writes, bad CRC rejected, resynchronisation after garbage, out-of-range addresses).
Slow: the board bitstreams are built for real (place, route, timing).
"""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
from amaranth import *
from amaranth.lib import wiring
from amaranth.sim import Simulator

from celosia.fpga.boards import BOARDS, ecp5_pll_params, ice40_pll_params, uart_divisor
import itertools

from celosia.fpga.bridge import (REPLY_OVERHEAD, REQ_SYNC, BridgeStatus, Cmd, UartBridge, crc16,
                                 parse_reply, reply_length)
from celosia.fpga.bridge import request as _request
from celosia.fpga.build import parse_nextpnr_log, parse_nextpnr_report, tool_options
from celosia.fpga.memory import AxiRam
from celosia.fpga.top import CelosiaTop
from celosia.hdl.csr import CsrBlock
from celosia.hdl.isa import CSR, ID_MAGIC

DIV = 4                 # clock cycles per UART bit in simulation
MEM = 1024


_seqs = itertools.count(1)


def request(*args, **kw):
    """A request frame with the next sequence number (the bridge acknowledges a write with
    the sequence number of the last one without executing it)."""
    return _request(*args, seq=next(_seqs) & 0xFF, **kw)


def test_crc16_reference():
    assert crc16(b"123456789") == 0x29B1    # CRC-16/CCITT-FALSE check value


def test_pll_params():
    p = ecp5_pll_params(25, 100)
    assert p["fout_mhz"] == 100 and 400 <= p["fvco_mhz"] <= 800
    q = ice40_pll_params(12, 24)
    assert abs(q["fout_mhz"] - 24) < 0.1


def test_uart_divisor():
    """Clocks per bit: the nearest whole number, at least the receiver's 4."""
    assert uart_divisor(25e6, 3e6) == 8            # 3.125 Mbaud on the ULX3S at 25 MHz
    assert uart_divisor(30e6, 3e6) == 10
    assert uart_divisor(25e6, 115200) == 217
    assert uart_divisor(18e6, 4.5e6) == 4
    with pytest.raises(ValueError, match=r"needs 3.00 clocks per bit; the bridge needs at least 4"):
        uart_divisor(12e6, 4e6)


@pytest.mark.parametrize("board,array", [("icebreaker", None), ("ulx3s-85f", 2)])
def test_board_top_elaborates(board, array):
    b = BOARDS[board]
    top = CelosiaTop(b, array=array)
    plan = b.platform().build(top, name="celosia_top", do_build=False)
    files = dict(plan.files)
    il = files["celosia_top.il"]
    assert ("EHXPLLL" if b.family == "ecp5" else "SB_PLL40_PAD") in il
    constraints = files["celosia_top.lpf" if b.family == "ecp5" else "celosia_top.pcf"]
    assert ("FREQUENCY NET" if b.family == "ecp5" else "set_frequency") in constraints
    if b.spram:
        assert "SB_SPRAM256KA" in il
    if b.window == "sdram":     # LiteDRAM's core, and the chip's clock from a DDR output
        assert "litedram_core.v" in files and "litedram_core" in il and "ODDRX1F" in il


def _segment(kind, cell_from, cell_to, delay):
    return {"type": kind, "delay": delay, "from": {"cell": cell_from, "port": "Q", "loc": [1, 1]},
            "to": {"cell": cell_to, "port": "D", "loc": [2, 2]}}


def test_parse_nextpnr_report():
    """Worst paths from nextpnr's --report JSON (its format: a list of critical paths, one per
    pair of clock domains, each a list of typed segments), slowest first."""
    clk = "posedge clk"
    report = {"critical_paths": [
        {"from": "<async>", "to": clk,
         "path": [_segment("source", "pin", "pin", 0), _segment("routing", "pin", "ff", 3.0),
                  _segment("setup", "ff", "ff", 0)]},
        {"from": clk, "to": clk,
         "path": [_segment("clk-to-q", "a", "a", 0.5), _segment("routing", "a", "l1", 2.0),
                  _segment("logic", "l1", "l1", 0.25), _segment("routing", "l1", "l2", 1.0),
                  _segment("logic", "l2", "l2", 0.25), _segment("routing", "l2", "z", 1.5),
                  _segment("setup", "z", "z", 0.1)]},
        {"from": clk, "to": "<async>", "path": []},
    ]}
    worst = parse_nextpnr_report(report)
    assert [p["start"] for p in worst] == ["a", "pin"]
    top = worst[0]
    assert (top["end"], top["logic_levels"], top["from_clock"]) == ("z", 2, clk)
    assert top["delay_ns"] == 5.6 and top["routing_ns"] == 4.5 and top["logic_ns"] == 1.1
    assert parse_nextpnr_report(report, count=1) == worst[:1]
    assert parse_nextpnr_report({}) == []


def test_parse_nextpnr_log():
    log = """Info: Device utilisation:
Info: \t           ICESTORM_LC:  4000/ 5280    75%
Info: \t          ICESTORM_RAM:    20/   30    66%
Info: \t          ICESTORM_DSP:     4/    8    50%
Info: Max frequency for clock 'clk': 20.00 MHz (PASS at 18.00 MHz)
Info: Max frequency for clock 'clk': 21.50 MHz (PASS at 18.00 MHz)
"""
    r = parse_nextpnr_log(log)
    assert r["utilisation"]["ICESTORM_LC"] == (4000, 5280)
    assert r["clocks"]["clk"] == (21.5, True, 18.0)


class BridgeBench(Elaboratable):
    """The UART bridge with an AxiRam window and a CSR block, for simulation."""

    def __init__(self, mem=MEM, timeout=60 * DIV, clk_hz=12345678):
        self.bridge = UartBridge(DIV, mem, clk_hz=clk_hz, timeout_cycles=timeout)
        self.ram = AxiRam(4, mem)
        self.csr = CsrBlock(2, 4)

    def elaborate(self, platform):
        m = Module()
        m.submodules.bridge, m.submodules.ram, m.submodules.csr = self.bridge, self.ram, self.csr
        wiring.connect(m, self.bridge.mem, self.ram.side)
        wiring.connect(m, self.bridge.csr, self.csr.bus)
        return m


def _run(frames_and_gaps, replies_expected):
    """Send frames one by one, each after the previous reply (ints are idle gaps in cycles,
    tuples ``("noreply", bytes)`` are sent without waiting for an answer) and collect replies of
    the ``replies_expected`` sizes."""
    dut = BridgeBench()
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    got = []

    async def sender(ctx):
        ctx.set(dut.bridge.rx, 1)
        await ctx.tick().repeat(10)
        waited = 0
        for item in frames_and_gaps:
            if isinstance(item, int):
                await ctx.tick().repeat(item)
                continue
            while len(got) < waited:
                await ctx.tick()
            if isinstance(item, tuple):
                item = item[1]
            else:
                waited += 1
            for byte in item:
                for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                    ctx.set(dut.bridge.rx, bit)
                    await ctx.tick().repeat(DIV)

    async def receiver(ctx):
        for n in replies_expected:
            raw = bytearray()
            while len(raw) < n:
                while ctx.get(dut.bridge.tx):           # start bit
                    await ctx.tick()
                await ctx.tick().repeat(DIV // 2)
                byte = 0
                for i in range(8):
                    await ctx.tick().repeat(DIV)
                    byte |= ctx.get(dut.bridge.tx) << i
                await ctx.tick().repeat(DIV)
                assert ctx.get(dut.bridge.tx) == 1        # stop bit
                raw.append(byte)
            got.append(bytes(raw))

    sim.add_testbench(sender, background=True)
    sim.add_testbench(receiver)
    sim.run()
    return got


def _reply_size(cmd, length=1, ok=True):
    return REPLY_OVERHEAD + (reply_length(cmd, length) if ok else 0)


def test_bridge_frames():
    data = bytes(range(7, 7 + 40))
    frames = [
        request(Cmd.INFO),
        request(Cmd.WRITE_MEM, 0x13, len(data), data),
        request(Cmd.READ_MEM, 0x10, 48),
        request(Cmd.READ_CSR, CSR.ID.offset),
        request(Cmd.WRITE_CSR, CSR.PROG_ADDR.offset, 4, (0x1234_5680).to_bytes(4, "little")),
        request(Cmd.READ_CSR, CSR.PROG_ADDR.offset),
    ]
    sizes = [_reply_size(Cmd.INFO), _reply_size(Cmd.WRITE_MEM), _reply_size(Cmd.READ_MEM, 48),
             _reply_size(Cmd.READ_CSR), _reply_size(Cmd.WRITE_CSR), _reply_size(Cmd.READ_CSR)]
    got = [parse_reply(r) for r in _run(frames, sizes)]
    assert got[0] == (BridgeStatus.OK, MEM.to_bytes(4, "little") + (12345678).to_bytes(4, "little"))
    assert got[1] == (BridgeStatus.OK, b"")
    assert got[2] == (BridgeStatus.OK, bytes(3) + data + bytes(5))
    assert got[3] == (BridgeStatus.OK, ID_MAGIC.to_bytes(4, "little"))
    assert got[4] == (BridgeStatus.OK, b"")
    assert got[5] == (BridgeStatus.OK, (0x1234_5680).to_bytes(4, "little"))


def test_bridge_rejects_and_resyncs():
    good = request(Cmd.WRITE_MEM, 0, 4, b"\x11\x22\x33\x44")
    bad_crc = good[:-1] + bytes([good[-1] ^ 0x5A])
    corrupted = bytearray(request(Cmd.WRITE_MEM, 0, 4, b"\x99\x99\x99\x99"))
    corrupted[7] ^= 0x01                           # a payload bit flipped on the line
    frames = [
        bad_crc,
        bytes(corrupted),
        # Garbage holding a sync byte and a long length: the partial frame times out.
        ("noreply", bytes([0x00, 0xFF, REQ_SYNC, 0x77, Cmd.WRITE_MEM, 0, 0, 0, 0, 200, 1, 2])), 400,
        request(Cmd.READ_MEM, 0, 4),
        good,
        request(Cmd.READ_MEM, 0, 4),
        request(Cmd.READ_MEM, MEM - 2, 4),          # beyond the memory
        request(0x7E),                              # unknown command
        request(Cmd.WRITE_CSR, 0x18, 2, b"\x00\x01"),  # CSR writes are 4 bytes
    ]
    sizes = [5, 5, _reply_size(Cmd.READ_MEM, 4), 5, _reply_size(Cmd.READ_MEM, 4), 5, 5, 5]
    got = [parse_reply(r) for r in _run(frames, sizes)]
    assert got[0] == (BridgeStatus.BAD_CRC, b"")
    assert got[1] == (BridgeStatus.BAD_CRC, b"")
    assert got[2] == (BridgeStatus.OK, bytes(4))     # neither bad frame wrote memory
    assert got[3] == (BridgeStatus.OK, b"")
    assert got[4] == (BridgeStatus.OK, b"\x11\x22\x33\x44")
    assert got[5] == (BridgeStatus.BAD_ADDR, b"")
    assert got[6] == (BridgeStatus.BAD_CMD, b"")
    assert got[7] == (BridgeStatus.BAD_LEN, b"")


def test_board_sizing():
    """The iCEBreaker builds the board-sized accelerator (same ISA and CSR map) with the DSPs
    inferred; the ULX3S the full-size one with serial span checks, placed with its seed
    unless the command line gives one."""
    from celosia.hdl.params import FULL, SMALL
    ice, ecp = BOARDS["icebreaker"], BOARDS["ulx3s-85f"]
    assert ice.sizing == SMALL and "-dsp" in ice.synth_opts.split()
    assert ecp.sizing == dataclasses.replace(FULL, serial_check=True)
    top = CelosiaTop(ice)
    plan = ice.platform().build(top, name="celosia_top", do_build=False, **tool_options(ice))
    assert "synth_ice40 -dsp" in dict(plan.files)["celosia_top.ys"]
    assert tool_options(ecp)["nextpnr_opts"].split()[-4:] == [
        "--router", "router2", "--seed", "2"]
    assert tool_options(ecp, seed=5)["nextpnr_opts"].split()[-2:] == ["--seed", "5"]
    assert "--seed" not in tool_options(ice)["nextpnr_opts"]
    # With the vector engine: router1 (router2 does not converge there), nextpnr's seed.
    assert tool_options(ecp, vector=True)["nextpnr_opts"].split()[-2:] == [
        "--router", "router1"]
    assert tool_options(ecp, seed=3, vector=True)["nextpnr_opts"].split()[-4:] == [
        "--router", "router1", "--seed", "3"]
    assert tool_options(ice, vector=True) == tool_options(ice)


def test_vector_lanes_option():
    """``--vector-lanes`` sets the vector engine's lanes of a board build (and implies the
    vector engine); lanes that do not divide the array, or lanes without the engine, are
    refused before anything is built."""
    ecp = BOARDS["ulx3s-85f"]
    top = CelosiaTop(ecp, vector=True, vector_lanes=2)
    assert top.vector_lanes == 2 and top.sizing.vector_lanes == 2
    assert top.sizing.serial_check == ecp.vector_sizing.serial_check
    assert CelosiaTop(ecp, vector=True).vector_lanes == ecp.vector_sizing.vector_lanes
    for lanes in (0, 1, 3, 16):
        with pytest.raises(ValueError, match="vector lanes must be at least 2 and divide"):
            CelosiaTop(ecp, vector=True, vector_lanes=lanes)
    with pytest.raises(ValueError, match="without the vector engine"):
        CelosiaTop(ecp, vector=False, vector_lanes=2)
    from celosia.fpga.build import add_arguments
    import argparse
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--board", "ulx3s-85f", "--vector-lanes", "2"])
    assert args.vector_lanes == 2 and args.vector == "auto"


def _build(board, tmp_path, *options):
    out = subprocess.run([sys.executable, "-m", "celosia.fpga.build", "--board", board,
                          "-o", str(tmp_path), "--json", *options], capture_output=True,
                         text=True, timeout=3600)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return out.returncode, r


def test_icebreaker_synthesises(tmp_path):
    """CI's slice of the iCEBreaker build: Yosys synthesises the default top with the board's
    options, and its LUTs and DSPs fit the device (the place and route below is slow-marked)."""
    from celosia.fpga.build import tool_env
    ice = BOARDS["icebreaker"]
    plan = ice.platform().build(CelosiaTop(ice), name="celosia_top", do_build=False,
                                **tool_options(ice))
    for name, content in dict(plan.files).items():
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(tmp_path / name, mode) as f:
            f.write(content)
    tool_env()                    # sets YOSYS unless the environment names one already
    yosys = os.environ["YOSYS"]
    subprocess.run([yosys, "-q", "-p", "script celosia_top.ys; tee -q -o stat.txt stat"],
                   cwd=tmp_path, check=True, timeout=1800)
    stat = (tmp_path / "stat.txt").read_text()
    cells = {m.group(2): int(m.group(1))
             for m in re.finditer(r"^\s+(\d+)\s+(SB_\w+)\s*$", stat, re.M)}
    print(f"\nicebreaker synthesis: {cells}")
    assert 0 < cells["SB_LUT4"] <= 5280 and 0 < cells.get("SB_MAC16", 0) <= 8, cells
    assert cells.get("SB_SPRAM256KA", 0) == 2, cells


@pytest.mark.slow
def test_icebreaker_bitstream(tmp_path):
    """The iCEBreaker's top (2x2, board-sized, native memory port) from the YoWASP tools at
    its default clock: placed, routed, packed, timing met (about 35 minutes on two cores at
    99% of the LCs, hence slow-marked)."""
    rc, r = _build("icebreaker", tmp_path)
    print(f"\nicebreaker: {r['luts']}/{r['luts_total']} LCs, {r['dsps']} DSPs, "
          f"{r['brams']} BRAMs, Fmax {r['fmax_mhz']} MHz at {r['target_mhz']} MHz, "
          f"{r['wall_s']} s")
    assert rc == 0, r
    assert r["board"] == "icebreaker" and r["array"] == 2
    assert r["timing_met"] is True and r["fmax_mhz"] >= r["target_mhz"]
    assert 0 < r["luts"] <= r["luts_total"] and 0 < r["dsps"] <= r["dsps_total"]
    assert r["brams"] <= r["brams_total"] and r["wall_s"] > 0
    # The critical path nextpnr names is the one that sets Fmax.
    period = 1000 / r["fmax_mhz"]
    assert any(abs(p["delay_ns"] - period) < 0.02 * period for p in r["worst_paths"]), r
    with open(r["bitstream"], "rb") as f:
        assert len(f.read()) > 100_000


@pytest.mark.slow
def test_ulx3s_bitstream(tmp_path):
    """The ULX3S's default, the whole accelerator: a 4x4 array with a four-lane vector engine
    and its memory in SDRAM, routed by router1, timing met at the default clock (about 35
    minutes on two cores; docs/fpga.md)."""
    rc, r = _build("ulx3s-85f", tmp_path)
    assert r["board"] == "ulx3s-85f" and r["bitstream"], r
    assert r["array"] == 4 and r["vector"] is True and r["vector_lanes"] == 4
    assert r["window"] == "sdram" and r["mem_bytes"] == 32 << 20
    assert 0 < r["luts"] <= r["luts_total"] and 0 < r["dsps"] <= r["dsps_total"]
    assert r["brams"] <= r["brams_total"]
    assert rc == 0 and r["timing_met"] is True, r


@pytest.mark.slow
def test_ulx3s_matmul_only_bitstream(tmp_path):
    """The 8x8 matmul-only ULX3S top (``--array 8 --vector off``), router2 with seed 2, at
    the default clock (about 15 minutes on two cores)."""
    rc, r = _build("ulx3s-85f", tmp_path, "--array", "8", "--vector", "off")
    assert r["array"] == 8 and r["vector"] is False and r["bitstream"], r
    assert r["window"] == "sdram" and r["dsps"] <= r["dsps_total"]
    assert rc == 0 and r["timing_met"] is True, r
