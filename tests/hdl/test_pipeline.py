"""Skid buffer and credit counter: simulation under random idle and backpressure, and proofs of
their properties by k-induction (with mutants that must fail them)."""

import gc
import random
import warnings

import pytest
from amaranth import *
from amaranth.hdl import Assert, Assume, Cover, UnusedElaboratable, ValueCastable
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In

from celosia.hdl.pipeline import CreditCounter, SkidBuffer
from celosia.sim.formal import prove
from celosia.sim.pysim import run

SHAPES = [unsigned(8), signed(5), data.StructLayout({"a": 3, "b": signed(4)})]


def _bits(value):
    """The plain value behind a payload (a layout's view or a signal)."""
    return value.as_value() if isinstance(value, ValueCastable) else value


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("gap,stall", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.5), (0.4, 0.6)])
def test_skid_buffer_delivers_in_order(shape, gap, stall):
    """Every item comes out once and in order; ``i.ready`` and ``o.valid`` follow the
    occupancy (ready while it holds at most one item, valid while it holds any); an offered
    item stays put until taken; outputs do not move when inputs change within a cycle."""
    dut = SkidBuffer(shape)
    i_payload, o_payload = _bits(dut.i.payload), _bits(dut.o.payload)
    width = len(i_payload)
    mask = (1 << width) - 1
    rng = random.Random(f"{width}-{gap}-{stall}")
    items = [rng.randrange(1 << width) for _ in range(300)]
    received = []

    async def bench(ctx):
        pending = list(items)
        held = None                    # the payload offered and not taken last cycle
        while len(received) < len(items):
            offer = bool(pending) and rng.random() >= gap
            accept = rng.random() >= stall
            value = pending[0] if offer else rng.randrange(1 << width)
            ctx.set(dut.i.valid, offer)
            ctx.set(i_payload, value)
            ctx.set(dut.o.ready, accept)
            outputs = (ctx.get(dut.i.ready), ctx.get(dut.o.valid), ctx.get(o_payload) & mask)
            # Registered outputs: flipping every input in this cycle changes none of them.
            ctx.set(dut.i.valid, not offer)
            ctx.set(i_payload, value ^ mask)
            ctx.set(dut.o.ready, not accept)
            assert (ctx.get(dut.i.ready), ctx.get(dut.o.valid),
                    ctx.get(o_payload) & mask) == outputs
            ctx.set(dut.i.valid, offer)
            ctx.set(i_payload, value)
            ctx.set(dut.o.ready, accept)

            i_ready, o_valid, payload = outputs
            occupancy = len(items) - len(pending) - len(received)
            assert i_ready == (occupancy < 2) and o_valid == (occupancy > 0)
            if held is not None:
                assert o_valid and payload == held
            if offer and i_ready:
                pending.pop(0)
            held = payload if o_valid and not accept else None
            if o_valid and accept:
                received.append(payload)
            await ctx.tick()

    run(dut, bench, deadline_cycles=len(items) * 20)
    assert received == items


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_skid_buffer_full_throughput(shape):
    """With both sides always willing, one item per cycle after one cycle of latency."""
    dut = SkidBuffer(shape)
    i_payload, o_payload = _bits(dut.i.payload), _bits(dut.o.payload)
    items = [(k * 7 + 3) % (1 << len(i_payload)) for k in range(40)]

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        for cycle in range(len(items) + 1):
            if cycle < len(items):
                assert ctx.get(dut.i.ready)
                ctx.set(i_payload, items[cycle])
            else:
                ctx.set(dut.i.valid, 0)
            if cycle > 0:
                assert ctx.get(dut.o.valid)
                assert ctx.get(o_payload) & ((1 << len(o_payload)) - 1) == items[cycle - 1]
            await ctx.tick()
        assert not ctx.get(dut.o.valid)

    run(dut, bench, deadline_cycles=200)


def test_skid_buffer_payload_registers_have_no_reset():
    """Only the valid bits reset: a reset between two items leaves the payload registers as
    they were and empties the stage."""
    dut = SkidBuffer(8)
    top = Module()
    top.domains.sync = sync = ClockDomain()
    top.submodules.dut = dut

    async def bench(ctx):
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, 0xa5)
        await ctx.tick()                      # main holds 0xa5
        ctx.set(dut.i.payload, 0x3c)
        await ctx.tick()                      # o.ready low: 0x3c goes to the skid entry
        assert not ctx.get(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        ctx.set(sync.rst, 1)
        await ctx.tick()
        ctx.set(sync.rst, 0)
        assert not ctx.get(dut.o.valid) and ctx.get(dut.i.ready)
        assert ctx.get(dut.o.payload) == 0xa5
        assert ctx.get(dut._skid_payload) == 0x3c

    run(top, bench, deadline_cycles=50)


@pytest.mark.parametrize("capacity,cost", [(1, 1), (8, 3), (16, 16), (13, 4)])
def test_credit_counter_tracks_credits(capacity, cost):
    """Under random takes and gives (a give only for a credit in flight): credits == capacity -
    in flight, always within [0, capacity]; ``ok`` == credits >= cost and registered; every
    take with ``ok`` is granted. The random environment exercises empty and full."""
    dut = CreditCounter(capacity, cost)
    rng = random.Random(capacity * 31 + cost)
    seen = set()

    async def bench(ctx):
        in_flight = 0
        for _ in range(3000):
            take = rng.random() < 0.5
            give = in_flight > 0 and rng.random() < 0.45
            ctx.set(dut.take, take)
            ctx.set(dut.give, give)
            ok, credits = ctx.get(dut.ok), ctx.get(dut.credits)
            ctx.set(dut.take, not take)
            ctx.set(dut.give, not give)
            assert (ctx.get(dut.ok), ctx.get(dut.credits)) == (ok, credits)
            ctx.set(dut.take, take)
            ctx.set(dut.give, give)
            assert 0 <= credits <= capacity and credits == capacity - in_flight
            assert ok == (credits >= cost)
            seen.add(credits)
            in_flight += (cost if take and ok else 0) - give
            await ctx.tick()

    run(dut, bench, deadline_cycles=4000)
    assert capacity in seen and min(seen) < cost


def _rejects(error, make, *args, match=None):
    """``make(*args)`` raises ``error``. The half-built component it leaves is collected here,
    where its UnusedElaboratable warning is expected and filtered."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(error, match=match):
            make(*args)
        gc.collect()


@pytest.mark.parametrize("args,error", [
    ((0, 1), ValueError), ((4, 0), ValueError), ((4, 5), ValueError),
    ((4.0, 1), TypeError), ((4, True), TypeError), (("4", 1), TypeError),
])
def test_credit_counter_rejects_bad_parameters(args, error):
    _rejects(error, CreditCounter, *args)


def test_skid_buffer_rejects_a_non_shape():
    _rejects(TypeError, SkidBuffer, "eight", match="shape")


# --- Formal proofs (k-induction with SymbiYosys) -----------------------------------------------

class SkidBufferSpec(wiring.Component):
    """The properties of a :class:`SkidBuffer` around it; the members are the free inputs.

    One item, chosen by the solver (``track`` high in the cycle it is accepted), is followed
    through the buffer: its position (items ahead of it) and its payload. With the item count
    ``occupancy`` (transfers in minus transfers out) this shows that no item is lost, duplicated
    or reordered: the tracked item leaves exactly when the items ahead of it have left, with
    its payload, and the buffer's valid/ready follow the count.
    """

    def __init__(self, dut: SkidBuffer):
        self.dut = dut
        self.width = len(_bits(dut.i.payload))
        super().__init__({"i_valid": In(1), "i_payload": In(self.width), "o_ready": In(1),
                          "track": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        i_payload, o_payload = _bits(dut.i.payload), _bits(dut.o.payload)
        m.d.comb += [dut.i.valid.eq(self.i_valid), i_payload.eq(self.i_payload),
                     dut.o.ready.eq(self.o_ready)]
        i_fire = dut.i.valid & dut.i.ready
        o_fire = dut.o.valid & dut.o.ready

        occupancy = Signal(2)                  # one spare value: 3 shows an overflow
        m.d.sync += occupancy.eq(occupancy + i_fire - o_fire)
        m.d.comb += [Assert(occupancy <= 2, "more than two items held"),
                     Assert(dut.o.valid == (occupancy != 0), "o.valid != holding an item"),
                     Assert(dut.i.ready == (occupancy < 2), "i.ready != room for an item")]

        tracking = Signal()
        position = Signal(2)
        data = Signal(self.width)
        with m.If(tracking):
            with m.If(o_fire):
                with m.If(position == 0):
                    m.d.sync += tracking.eq(0)     # it left now; its payload is checked below
                with m.Else():
                    m.d.sync += position.eq(position - 1)
        with m.Elif(i_fire & self.track):
            m.d.sync += [tracking.eq(1), position.eq(occupancy - o_fire), data.eq(i_payload)]
        # Reachable (the properties below are not vacuous): a tracked item in the skid entry
        # moves up as the item ahead leaves, and one leaves while the next arrives.
        m.d.comb += [Cover(tracking & (position == 1) & o_fire),
                     Cover(tracking & (position == 0) & o_fire & i_fire)]
        with m.If(tracking):
            m.d.comb += Assert(position < occupancy, "tracked item lost")
            with m.If(position == 0):
                m.d.comb += Assert(o_payload == data, "tracked item out with another payload")
            with m.Else():
                # Where the second item waits: the induction needs this, as the consumer can
                # stall for longer than any depth.
                m.d.comb += Assert(dut._skid_valid & (_bits(dut._skid_payload) == data),
                                   "tracked item not in the skid entry")

        stalled = Signal()
        last_payload = Signal(self.width)
        m.d.sync += [stalled.eq(dut.o.valid & ~dut.o.ready), last_payload.eq(o_payload)]
        with m.If(stalled):
            m.d.comb += Assert(dut.o.valid & (o_payload == last_payload),
                               "offered item dropped or changed before its transfer")
        return m


class CreditCounterSpec(wiring.Component):
    """The properties of a :class:`CreditCounter`; the members are the free inputs.

    The environment returns a credit only for an item in flight (``Assume``). Then credits plus
    items in flight equal the capacity at all times (so credits stay within [0, capacity]), a
    take is granted only with enough credit, and ``ok`` tells exactly that.
    """

    take: In(1)
    give: In(1)

    def __init__(self, dut: CreditCounter):
        self.dut = dut
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        m.d.comb += [dut.take.eq(self.take), dut.give.eq(self.give)]
        taken = dut.take & dut.ok
        # Wide enough that a take beyond the capacity shows instead of wrapping.
        in_flight = Signal(range(dut.capacity + dut.cost + 1))
        m.d.sync += in_flight.eq(in_flight + Mux(taken, dut.cost, 0) - dut.give)
        m.d.comb += [
            Assume(~dut.give | (in_flight != 0)),
            Assert(dut.credits + in_flight == dut.capacity, "credits + in flight != capacity"),
            Assert(dut.credits <= dut.capacity, "credits above capacity"),
            Assert(~taken | (dut.credits >= dut.cost), "take granted without enough credit"),
            Assert(dut.ok == (dut.credits >= dut.cost), "ok does not tell credits >= cost"),
            # Reachable under the assumption: empty, and a take and a give in one cycle.
            Cover(dut.credits == 0),
            Cover(taken & dut.give),
        ]
        return m


class SkidBufferLosingSkid(SkidBuffer):
    """Mutant: the skid entry never fills, so an item accepted while the output stalls is lost."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.sync += self._skid_valid.eq(0)
        return m


class SkidBufferBypassingSkid(SkidBuffer):
    """Mutant: the main register always loads the input, overtaking a waiting skid item."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        with m.If(~self.o.valid | self.o.ready):
            m.d.sync += self._main_payload.eq(self.i.payload)
        return m


class CreditCounterLateOk(CreditCounter):
    """Mutant: ``ok`` from this cycle's credits instead of the next, so in the cycle after a
    take it still grants one more take without enough credit."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        m.d.sync += self.ok.eq(self.credits >= self.cost)
        return m


#: Induction depths: both invariants are inductive in one step; a little more costs nothing.
SKID_DEPTH = CREDIT_DEPTH = 4


@pytest.mark.parametrize("shape", [unsigned(32), data.StructLayout({"a": 2, "b": signed(3)})],
                         ids=str)
def test_skid_buffer_proof(shape):
    result = prove(SkidBufferSpec(SkidBuffer(shape)), SKID_DEPTH)
    assert result.status == "PASS", result.log


@pytest.mark.parametrize("mutant", [SkidBufferLosingSkid, SkidBufferBypassingSkid])
def test_skid_buffer_mutant_fails_proof(mutant):
    result = prove(SkidBufferSpec(mutant(unsigned(4))), SKID_DEPTH)
    assert result.status == "FAIL", result.log


@pytest.mark.parametrize("capacity,cost", [(8, 3), (7, 7), (12, 1), (1024, 64)])
def test_credit_counter_proof(capacity, cost):
    result = prove(CreditCounterSpec(CreditCounter(capacity, cost)), CREDIT_DEPTH)
    assert result.status == "PASS", result.log


@pytest.mark.parametrize("spec", [lambda: SkidBufferSpec(SkidBuffer(unsigned(4))),
                                  lambda: CreditCounterSpec(CreditCounter(5, 2))],
                         ids=["skid", "credit"])
def test_specs_reach_their_covers(spec):
    """The environments are not vacuous: each ``Cover`` is reached within a few cycles."""
    result = prove(spec, 8, mode="cover")
    assert result.status == "PASS", result.log


def test_credit_counter_mutant_fails_proof():
    result = prove(CreditCounterSpec(CreditCounterLateOk(8, 3)), CREDIT_DEPTH)
    assert result.status == "FAIL", result.log
