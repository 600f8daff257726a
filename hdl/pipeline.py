"""Shared stream pipeline parts: the registered stage placed at every unit boundary and memory
port (:class:`SkidBuffer`) and the issue-side credit counter that lets backpressure stop *issue*
rather than the datapath (:class:`CreditCounter`).

Both keep every output a flip-flop output, so no combinational path crosses the boundary they
sit on: a chain of units joined by skid buffers has timing paths no longer than one unit. Their
properties are proved by k-induction (``celosia prove``; the harnesses are in
``celosia.sim.properties``).
"""

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer", "CreditCounter"]


def _check_count(name: str, value, minimum: int) -> None:
    """Raise unless ``value`` is an ``int`` (not a ``bool``) of at least ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")


class SkidBuffer(wiring.Component):
    """A two-entry stream stage with registered valid *and* registered ready.

    ``o.valid`` and ``o.payload`` come from the main register and ``i.ready`` from the skid
    entry's valid bit, so neither direction has a combinational path through the stage: placed
    between two units, it cuts both the forward (valid/payload) and the backward (ready) timing
    paths. Because ``i.ready`` is registered, the stage can accept one item in the cycle the
    consumer stalls; the second (skid) entry holds that item. With both sides willing it moves
    one item per cycle and the skid entry stays empty.

    Only the two valid bits are reset. The payload registers are not: their content matters only
    while the matching valid bit is set, and registers without reset stay small (no reset mux
    per bit) and can merge into block-RAM output registers and DSP pipeline registers.

    Parameters
    ----------
    shape : shape-like
        Payload shape (a ``Shape``, ``range``, enum or ``amaranth.lib.data`` layout).

    Members
    -------
    i : ``In(stream.Signature(shape))``
        Items in. ``i.ready`` is high exactly while the skid entry is empty, that is while the
        stage holds at most one item.
    o : ``Out(stream.Signature(shape))``
        Items out, in order, each once. Once ``o.valid`` is high it stays high, with the same
        payload, until the item is taken.
    """

    def __init__(self, shape):
        try:
            Shape.cast(shape)
        except TypeError as error:
            raise TypeError(f"shape must be a shape-castable object, not {shape!r}") from error
        self._shape = shape
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})
        # The registers behind o.payload and i.ready. Created here rather than in elaborate():
        # the proof states which of them holds a tracked item.
        self._main_payload = Signal(shape, reset_less=True)
        self._skid_valid = Signal()
        self._skid_payload = Signal(shape, reset_less=True)

    @property
    def shape(self):
        """The payload shape."""
        return self._shape

    def elaborate(self, platform):
        m = Module()
        main_payload = self._main_payload
        skid_valid, skid_payload = self._skid_valid, self._skid_payload
        m.d.comb += [self.i.ready.eq(~skid_valid), self.o.payload.eq(main_payload)]

        # While the skid entry is free it follows the input, so an item accepted in a stalled
        # cycle is already in it; no per-transfer enable is needed on its data.
        with m.If(~skid_valid):
            m.d.sync += skid_payload.eq(self.i.payload)
        with m.If(~self.o.valid | self.o.ready):
            # The main register is free for the next cycle: it takes the oldest item, which is
            # the skid entry's if there is one (no input is accepted then: i.ready is low).
            m.d.sync += [main_payload.eq(Mux(skid_valid, skid_payload, self.i.payload)),
                         self.o.valid.eq(skid_valid | self.i.valid),
                         skid_valid.eq(0)]
        with m.Elif(self.i.valid & self.i.ready):
            m.d.sync += skid_valid.eq(1)
        return m


class CreditCounter(wiring.Component):
    """Credits for the room in an output queue, so a producer issues work only when all its
    results have somewhere to go.

    The producer asks for ``cost`` credits with ``take``; it gets them in a cycle where ``take``
    and ``ok`` are both high (that is the issue). The consumer side returns one credit with
    ``give`` each time a result leaves the queue. A take and a give in the same cycle both
    apply. The counter starts full (``capacity`` credits).

    ``ok`` is a register (credits >= cost, computed from the next cycle's credits), so no
    combinational path runs from ``give`` or ``take`` to ``ok``: backpressure reaches the
    producer through one flip-flop, never as a chain of enables.

    Parameters
    ----------
    capacity : int
        Credits available when nothing is in flight: the output queue's room in results.
    cost : int
        Credits one take needs: the results one issued tile produces (at most ``capacity``).

    Members
    -------
    take : ``In(1)``
        The producer wants to issue; effective only together with ``ok``.
    ok : ``Out(1)``
        Registered: at least ``cost`` credits are available this cycle.
    give : ``In(1)``
        One credit comes back (one result left the queue). Only credits that were taken may be
        returned.
    credits : ``Out(range(capacity + 1))``
        Credits available this cycle.
    """

    def __init__(self, capacity: int, cost: int):
        _check_count("capacity", capacity, 1)
        _check_count("cost", cost, 1)
        if cost > capacity:
            raise ValueError(f"cost ({cost}) must not exceed capacity ({capacity}): "
                             "a take could never happen")
        self._capacity, self._cost = capacity, cost
        super().__init__({
            "take": In(1),
            "ok": Out(1, init=1),
            "give": In(1),
            "credits": Out(range(capacity + 1), init=capacity),
        })

    @property
    def capacity(self) -> int:
        """Credits when nothing is in flight."""
        return self._capacity

    @property
    def cost(self) -> int:
        """Credits one take needs."""
        return self._cost

    def elaborate(self, platform):
        m = Module()
        taken = self.take & self.ok
        after = self.credits - Mux(taken, self._cost, 0) + self.give
        # ok of the next cycle, (credits - taken * cost + give) >= cost, as four comparisons of
        # the register with constants chosen by the two bits: take and give come in last,
        # through one multiplexer, not through the adder and a comparison behind it.
        c, cost = self.credits, self._cost
        m.d.sync += [self.credits.eq(after),
                     self.ok.eq(Mux(taken, Mux(self.give, c >= 2 * cost - 1, c >= 2 * cost),
                                    Mux(self.give, c >= cost - 1, c >= cost)))]
        return m
