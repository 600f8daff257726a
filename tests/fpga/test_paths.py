"""fpga/paths.py: the register-to-register path estimate of a synthesised ECP5 netlist.

A hand-made netlist checks the delay model's arithmetic cell by cell; a small Amaranth design
synthesised by Yosys (``synth_ecp5``, seconds) checks that real netlists are read: the adder's
carry chain and the comparator behind it are found between the right registers."""

import os
import subprocess

import pytest
from amaranth.back import rtlil
from amaranth.hdl import Elaboratable, Module, Signal

from celosia.fpga import paths
from celosia.fpga.build import tool_env


def _cell(kind, **ports):
    dirs = {p: ("output" if p in ("Q", "Z", "F", "COUT", "S0", "S1") else "input") for p in ports}
    return {"type": kind, "port_directions": dirs,
            "connections": {p: [b] if isinstance(b, (int, str)) else b for p, b in ports.items()}}


def test_model_arithmetic():
    # a -> LUT -> LUT -> b;  c -> carry in -> carry along -> sum out -> d;  e -> f (one net)
    cells = {
        "x.a_TRELLIS_FF_Q": _cell("TRELLIS_FF", CLK=1, DI=90, Q=10),
        "l1": _cell("LUT4", A=10, B="0", C="0", D="0", Z=11),
        "l2": _cell("LUT4", A=11, B=10, C="0", D="0", Z=12),
        "x.b_TRELLIS_FF_Q_3": _cell("TRELLIS_FF", CLK=1, DI=12, Q=13),
        "x.c_TRELLIS_FF_Q": _cell("TRELLIS_FF", CLK=1, DI=91, Q=20),
        "k1": _cell("CCU2C", A0=20, CIN="0", COUT=21, S0=30, S1=31),
        "k2": _cell("CCU2C", A0="0", CIN=21, COUT=22, S0=32, S1=33),
        "k3": _cell("CCU2C", A0="0", CIN=22, COUT=23, S0=34, S1=35),
        "x.d_TRELLIS_FF_Q": _cell("TRELLIS_FF", CLK=1, DI=35, Q=24),
        "x.e_TRELLIS_FF_Q": _cell("TRELLIS_FF", CLK=1, DI=92, Q=40),
        "x.f_TRELLIS_FF_Q": _cell("TRELLIS_FF", CLK=1, DI=40, Q=41),
    }
    ends = {e.end: e for e in paths.estimate(cells, trace=3)}
    net, q = paths.NET_NS, 0.52
    b, d, f = ends["x.b"], ends["x.d"], ends["x.f"]
    assert (b.levels, b.start) == (2, "x.a") and b.ns == pytest.approx(q + 3 * net + 2 * 0.24)
    # into the chain from general routing, two steps along, out of the third CCU2C
    assert (d.levels, d.start) == (2, "x.c")
    assert d.ns == pytest.approx(q + net + 0.45 + 0.06 + 0.40 + net)
    assert (f.levels, f.start) == (0, "x.e") and f.ns == pytest.approx(q + net)
    assert [e.end for e in paths.estimate(cells)][:2] == ["x.b", "x.d"]
    assert ends["x.b"].path == ["x.a_TRELLIS_FF_Q", "l1", "l2"]
    assert paths.group_name("a.b_TRELLIS_FF_Q_12") == "a.b"


class _AddCompare(Elaboratable):
    def __init__(self):
        self.x = Signal(16)
        self.y = Signal(16)
        self.hit = Signal()

    def elaborate(self, platform):
        m = Module()
        acc = Signal(16, name="acc")
        xr = Signal(16, name="xr")
        m.d.sync += [xr.eq(self.x), acc.eq(acc + xr), self.hit.eq((acc + xr) > self.y)]
        return m


def test_reads_a_yosys_netlist(tmp_path):
    top = _AddCompare()
    (tmp_path / "top.il").write_text(rtlil.convert(top, ports=[top.x, top.y, top.hit],
                                                   name="celosia_top"))
    tool_env()                    # sets YOSYS unless the environment names one already
    subprocess.run([os.environ["YOSYS"], "-q", "-p",
                    "read_rtlil top.il; synth_ecp5 -top celosia_top; write_json top.json"],
                   cwd=tmp_path, check=True, timeout=600)
    ends = {e.end: e for e in paths.estimate(paths.load_netlist(tmp_path / "top.json"))}
    # acc <- acc + xr: one carry chain; hit <- (acc + xr) > y: the adder and a compare behind it
    assert ends["acc"].start in ("acc", "xr") and ends["acc"].levels >= 1
    assert ends["hit"].start in ("acc", "xr") and ends["hit"].levels > ends["acc"].levels
    assert ends["hit"].ns > ends["acc"].ns
    assert "xr" not in ends       # its input is a port: no register-to-register path


def test_paths_option_refuses_ice40(capsys):
    from celosia.fpga import build
    import argparse
    p = argparse.ArgumentParser()
    build.add_arguments(p)
    assert build.run(p.parse_args(["--board", "icebreaker", "--paths", "5"])) == 1
    assert "ECP5 cells only" in capsys.readouterr().err


def test_profile_and_the_netlist_command(tmp_path, capsys):
    cells = {
        "x.a_TRELLIS_FF_Q": _cell("TRELLIS_FF", CLK=1, DI=90, Q=10),
        "l1": _cell("LUT4", A=10, B="0", C="0", D="0", Z=11),
        "x.b_TRELLIS_FF_Q": _cell("TRELLIS_FF", CLK=1, DI=11, Q=12),
    }
    ends = paths.estimate(cells)                       # x.b: 0.52 + 1 + 0.24 + 1 = 2.76 ns
    assert paths.profile(ends, (2, 3)) == {2: 1, 3: 0}
    import json
    (tmp_path / "n.json").write_text(json.dumps({"modules": {"celosia_top": {"cells": cells}}}))
    assert paths.main([str(tmp_path / "n.json"), "--against", str(tmp_path / "n.json")]) == 0
    out = capsys.readouterr().out
    assert "8 ns: 0 (was 0)" in out and "x.b  <-  x.a" in out
