"""The SymbiYosys runner on a small counter whose invariant holds or not."""

import pytest
from amaranth import *
from amaranth.hdl import Assert, Assume
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from celosia.sim.formal import prove


class WrappingCounter(wiring.Component):
    """Counts up on ``inc`` and wraps from ``top`` to 0; claims it stays at most ``bound``."""

    inc: In(1)

    def __init__(self, top: int, bound: int):
        self.top, self.bound = top, bound
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        count = Signal(4)
        m.d.sync += count.eq(Mux(count == self.top, 0, count + self.inc))
        m.d.comb += Assert(count <= self.bound)
        return m


def test_prove_passes_an_inductive_invariant():
    result = prove(WrappingCounter(top=9, bound=9), depth=2)
    assert result.status == "PASS" and result.passed
    assert result.seconds > 0


def test_prove_fails_a_false_invariant_with_a_trace(tmp_path):
    result = prove(lambda: WrappingCounter(top=9, bound=8), depth=12, workdir=tmp_path)
    assert result.status == "FAIL" and not result.passed
    assert (tmp_path / "design.il").exists()
    assert list((tmp_path / "design").glob("engine_*/trace*.vcd"))


def test_a_failure_beyond_the_depth_is_not_a_fail():
    """Nine increments reach 9 > 8. Five cycles of bounded checking cannot see it; k-induction
    of depth 2 cannot prove the claim either (8 -> 9 breaks it) but has no trace from reset:
    UNKNOWN, not FAIL. A mutant test therefore needs a depth that reaches its counterexample."""
    assert prove(WrappingCounter(top=9, bound=8), depth=5, mode="bmc").status == "PASS"
    assert prove(WrappingCounter(top=9, bound=8), depth=2).status == "UNKNOWN"


def test_prove_takes_ports_of_a_plain_module():
    """A design that is not a component: its undriven port is a free input, constrained by an
    assumption (without it the property fails)."""
    def design(assume):
        m = Module()
        step = Signal(2)
        total = Signal(8)
        m.d.sync += total.eq(total + step)
        m.d.comb += Assert(total[0] == 0)
        if assume:
            m.d.comb += Assume(step[0] == 0)
        return m, [step]

    for assume, status in [(True, "PASS"), (False, "FAIL")]:
        m, ports = design(assume)
        assert prove(m, depth=3, ports=ports).status == status


@pytest.mark.parametrize("kwargs,error", [
    ({"depth": 0}, ValueError), ({"depth": 2.0}, TypeError),
    ({"depth": 2, "mode": "live"}, ValueError),
])
def test_prove_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        prove(lambda: WrappingCounter(top=9, bound=9), **kwargs)


def test_prove_rejects_a_non_design():
    with pytest.raises(TypeError, match="Elaboratable"):
        prove(lambda: 42, depth=2)
    with pytest.raises(TypeError, match="Elaboratable"):
        prove("counter", depth=2)
