"""cocotb testbenches of every unit and of the engine, on Icarus and on Verilator."""

from __future__ import annotations

import shutil

import pytest
from amaranth import Const, Module, Signal, Value
from amaranth.back import verilog
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from celosia.hdl.engine import MatmulEngine, MemoryPortSignature
from celosia.hdl.epilogue import Epilogue
from celosia.hdl.params import command_layout
from celosia.hdl.scratchpad import Scratchpad
from celosia.hdl.sequencer import Writer, compute_plan, plan_layout
from celosia.hdl.systolic import SystolicArray
from celosia.sim.cocotb_runner import run_cocotb

SIMULATORS = [
    pytest.param("icarus", marks=pytest.mark.skipif(shutil.which("iverilog") is None,
                                                    reason="iverilog not installed")),
    "verilator",
]


class StoreSequencer(wiring.Component):
    """The sequencer's store side (plan and writer) with a memory port, for its testbench."""

    def __init__(self, array, port_bytes):
        self.array, self.port_bytes = array, port_bytes
        super().__init__({
            "cmd": In(command_layout()),
            "start": In(1),
            "i": In(stream.Signature(data.ArrayLayout(32, array))),
            "mem": Out(MemoryPortSignature(port_bytes)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.writer = writer = Writer(self.array, self.port_bytes)
        plan = Signal(plan_layout(self.array, self.port_bytes))
        compute_plan(m, self.cmd, plan, self.array, self.port_bytes)
        m.d.comb += [writer.cmd.eq(self.cmd), writer.plan.eq(plan), writer.start.eq(self.start),
                     self.done.eq(writer.done)]
        wiring.connect(m, wiring.flipped(self.i), writer.i)
        wiring.connect(m, wiring.flipped(self.mem.wr), writer.wr)
        m.d.comb += [self.mem.rd_req.valid.eq(0), self.mem.rd_resp.ready.eq(0)]
        return m


def _verilog(component, name):
    # The ready of an always-ready stream is a constant, not a port.
    values = [Value.cast(value) for _, _, value in component.signature.flatten(component)]
    ports = [value for value in values if not isinstance(value, Const)]
    return verilog.convert(component, name=name, emit_src=False, ports=ports)


UNITS = {
    "systolic": (lambda: SystolicArray(4), dict(array=4)),
    "scratchpad": (lambda: Scratchpad(write_bytes=4, read_bytes=16, depth_bytes=128),
                   dict(write_bytes=4, read_bytes=16, depth_bytes=128)),
    "epilogue": (lambda: Epilogue(4), dict(array=4)),
    "sequencer": (lambda: StoreSequencer(4, 8), dict(array=4, port_bytes=8)),
}


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("unit", list(UNITS))
def test_unit(simulator, unit):
    make, params = UNITS[unit]
    top = f"celosia_{unit}"
    run_cocotb(simulator, _verilog(make(), top), top, "celosia.sim.tb_units",
               params={"unit": unit, **params})


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_engine(simulator):
    """Random shapes and modes with stalls on every stream, and -128*-128 summed over K=4096."""
    n, w, k_max = 4, 8, 4096
    engine = MatmulEngine(n, w, k_max=k_max)
    run_cocotb(simulator, _verilog(engine, "celosia_matmul"), "celosia_matmul",
               "celosia.sim.tb_engine", params=dict(array=n, port_bytes=w, k_max=k_max, jobs=6))


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("n,w", [(2, 4), (8, 16)])
def test_engine_sizes(simulator, n, w):
    engine = MatmulEngine(n, w, k_max=64)
    run_cocotb(simulator, _verilog(engine, "celosia_matmul"), "celosia_matmul",
               "celosia.sim.tb_engine", params=dict(array=n, port_bytes=w, k_max=64, jobs=6, seed=n))
