"""Skid buffer and credit counter: simulation under random idle and backpressure. Their proofs
by k-induction, with mutants that must fail them, are in ``celosia.sim.proofs`` (run by
``tests/sim/test_proofs.py``)."""

import gc
import random
import warnings

import pytest
from amaranth import *
from amaranth.hdl import UnusedElaboratable, ValueCastable
from amaranth.lib import data

from celosia.hdl.pipeline import CreditCounter, SkidBuffer
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
