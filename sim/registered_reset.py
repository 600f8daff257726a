"""A simulation top whose reset input goes through a register before it reaches the design.

Amaranth writes every register's next value as combinational logic that reads the domain's
reset. When that reset is a top-level input, Verilator counts all of that logic as input
logic and evaluates it again on every ``eval()`` (both clock phases), besides its evaluation
after the clock edge. With the reset taken from a register, the next-state logic depends on
state and the few real inputs only: the 16x16 accelerator builds about a third faster and runs
about a quarter faster (docs/accelerator.md, "Simulation speed").

The design leaves reset one clock edge after the ``rst`` input falls; the C++ harnesses clock
one edge after deasserting it, so a design built with or without this top behaves the same
from the first cycle they run.
"""

from __future__ import annotations

from amaranth.hdl import ClockDomain, ClockSignal, DomainRenamer, Module, ResetSignal, Signal
from amaranth.lib import wiring

__all__ = ["RegisteredReset"]


class RegisteredReset(wiring.Component):
    """``inner`` (a :class:`wiring.Component` of the ``sync`` domain) with the same ports, its
    reset taken from a register of ``rst``."""

    def __init__(self, inner: wiring.Component):
        self._inner = inner
        super().__init__(inner.signature)

    def elaborate(self, platform):
        m = Module()
        m.domains.core = ClockDomain("core", local=True)
        m.submodules.inner = inner = DomainRenamer("core")(self._inner)
        rst_q = Signal(init=1)
        m.d.sync += rst_q.eq(0)            # 1 while `rst` is high, 0 an edge after it falls
        m.d.comb += [ClockSignal("core").eq(ClockSignal("sync")),
                     ResetSignal("core").eq(rst_q)]
        for name, member in self.signature.members.items():
            outer, inner_port = getattr(self, name), getattr(self._inner, name)
            if not member.is_port:
                wiring.connect(m, wiring.flipped(outer), inner_port)
            elif member.flow == wiring.In:
                m.d.comb += inner_port.eq(outer)
            else:
                m.d.comb += outer.eq(inner_port)
        return m
