"""The simulation top that registers its reset (sim/registered_reset.py)."""

from amaranth.hdl import ClockDomain, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from celosia.sim.registered_reset import RegisteredReset


class Counter(wiring.Component):
    """Counts cycles while ``en``; ``count`` outputs the count."""

    en: In(1)
    count: Out(8)

    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            m.d.sync += self.count.eq(self.count + 1)
        return m


def _run(top, cd, steps):
    """Counts seen after each of ``steps`` (rst, en) cycles."""
    seen = []

    async def bench(ctx):
        for rst, en in steps:
            ctx.set(cd.rst, rst)
            ctx.set(top.en, en)
            await ctx.tick()
            seen.append(ctx.get(top.count))

    m = Module()
    m.domains.sync = cd
    m.submodules.top = top
    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return seen


def test_the_wrapper_keeps_the_ports():
    inner = Counter()
    assert RegisteredReset(inner).signature == inner.signature


def test_reset_reaches_the_design_one_edge_later():
    steps = [(1, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 0)]
    plain = _run(Counter(), ClockDomain("sync"), steps)
    wrapped = _run(RegisteredReset(Counter()), ClockDomain("sync"), steps)
    assert plain == [0, 0, 1, 2, 3, 0, 1, 1]
    # The first edge after `rst` falls still resets; every later one counts.
    assert wrapped == [0, 0, 0, 1, 2, 3, 0, 0]
