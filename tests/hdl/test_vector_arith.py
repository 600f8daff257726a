"""Amaranth-simulator tests of the vector unit's arithmetic helpers against the golden numerics."""

import math
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from celosia.hdl.vector import GELU_CLAMP, GELU_OFFSET
from celosia.hdl.vector_arith import Divider, Exp2, GeluPhi, Isqrt
from celosia.sw import numerics as nx


def _run(dut, bench, *, clock=True):
    sim = Simulator(dut)
    if clock:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


async def _start_and_wait(ctx, dut):
    """The clock edge taking ``dut.start`` (set by the caller), then the cycles until ``done``."""
    await ctx.tick()
    ctx.set(dut.start, 0)
    cycles = 0
    while not ctx.get(dut.done):
        await ctx.tick()
        cycles += 1
    return cycles


def _divide(ctx, dut, a, b, quotient_bits):
    steps = dut.steps_for(quotient_bits)
    ctx.set(dut.dividend, a)
    ctx.set(dut.divisor, b)
    ctx.set(dut.steps, steps)
    ctx.set(dut.start, 1)
    return steps


@pytest.mark.parametrize("unroll,widths", [(1, None), (3, None), (8, None),
                                            (2, (17, 5, 50, 36, 48))])
def test_divider_exact(unroll, widths):
    """Any quotient width, or (``quotient_widths``) only the ones the divider was built for:
    then its alignment is a multiplexer of fixed shifts."""
    dut = Divider(64, 27, unroll, quotient_widths=widths)
    rng = random.Random(unroll)
    # (dividend, divisor, quotient bits): the unit's real uses plus random ones.
    cases = [
        ((nx.PROB_MAX << nx.RECIP_BITS), 1 << nx.EXP_ONE_BITS, 17),       # one-hot softmax row
        ((nx.PROB_MAX << nx.RECIP_BITS), (1 << 24) - 1, 17),              # 512 equal columns
        (1 << nx.LN_INV_BITS, 1, nx.LN_INV_BITS + 1),                     # std 1
        (1 << nx.LN_INV_BITS, (1 << 25) - 1, nx.LN_INV_BITS + 1),
        ((1536 << 50) - 1, 1536, 50),
        (0, 7, 5),
    ]
    if widths:
        cases = [c for c in cases if c[2] in widths]
    for _ in range(12):
        b = rng.randrange(1, 1 << 27)
        qbits = rng.choice(widths) if widths else rng.randrange(1, 37)
        a = rng.randrange(0, min(b << qbits, 1 << 64))
        cases.append((a, b, qbits))

    async def bench(ctx):
        for a, b, qbits in cases:
            steps = _divide(ctx, dut, a, b, qbits)
            cycles = await _start_and_wait(ctx, dut)
            assert cycles == steps + 1           # the alignment cycle, then one a step
            assert ctx.get(dut.quotient) == a // b, (a, b)
            assert ctx.get(dut.remainder) == a % b, (a, b)

    _run(dut, bench)


@pytest.mark.parametrize("unroll", [1, 4, 8])
def test_isqrt_exact(unroll):
    dut = Isqrt(nx.LN_IN_BITS + 1, unroll)
    rng = random.Random(unroll)
    top = 1 << (2 * (nx.LN_IN_BITS + 1))
    values = [0, 1, 2, 3, 4, 15, 16, 17, top - 1, (1 << 48), (1 << 25) ** 2 - 1]
    values += [rng.randrange(top) for _ in range(10)]
    values += [r * r + d for r in (rng.randrange(1 << 25) for _ in range(4)) for d in (-1, 0)]

    async def bench(ctx):
        for v in values:
            ctx.set(dut.radicand, v)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            while not ctx.get(dut.done):
                await ctx.tick()
            assert ctx.get(dut.root) == math.isqrt(v) == int(nx.isqrt(np.int64(v))), v

    _run(dut, bench)


@pytest.mark.parametrize("unroll", [1, 2])
def test_isqrt_short(unroll):
    """A decoder build's root (31 bits, RMSNORM's radicands below 2**62) with ``short``: a
    radicand below 2**50 (LayerNorm's) in the steps of a 25-bit root, exact either way."""
    dut = Isqrt(31, unroll, short_width=nx.LN_IN_BITS + 1)
    rng = random.Random(unroll + 10)
    top, short_top = 1 << 62, 1 << 50
    values = [(v, 0) for v in [0, 1, 3, top - 1, (1 << 61) + 5, rng.randrange(top),
                               (1 << 30) ** 2 - 1, (1 << 30) ** 2]]
    values += [(v, 1) for v in [0, 1, 2, 15, short_top - 1, (1 << 25) ** 2 - 1,
                                rng.randrange(short_top), rng.randrange(1 << 20)]]

    async def bench(ctx):
        for v, short in values:
            ctx.set(dut.radicand, v)
            ctx.set(dut.short, short)
            ctx.set(dut.start, 1)
            n = 1 + await _start_and_wait(ctx, dut)
            assert ctx.get(dut.root) == math.isqrt(v), (v, short)
            assert n == (dut.short_steps if short else dut.steps) + 1, (v, short, n)

    _run(dut, bench)


def _golden_exp(d, mult, shift):
    """Step 3 of numerics.softmax: e = round_shift(EXP2_LUT[t & 255], min(t >> 8, 31))."""
    t = int(nx.round_shift(np.int64(d) * mult, shift))
    z, f = t >> nx.EXP_FRAC_BITS, t & ((1 << nx.EXP_FRAC_BITS) - 1)
    return int(nx.round_shift(nx.EXP2_LUT[f], min(z, 31)))


def test_exp2_lane():
    dut = Exp2()
    rng = random.Random(1)
    cases = [(0, 1, 0), ((1 << 32) - 1, (1 << nx.MULT_BITS) - 1, nx.SHIFT_MAX),
             ((1 << 32) - 1, (1 << nx.MULT_BITS) - 1, 0), (1, 1, 1), (255, 1, 0), (256, 1, 0),
             (4095, 1, 0), (4096, 1, 0), (4097, 1, 0), (16 << 8, 1, 0), (17 << 8, 1, 0),
             ((16 << 8) + 255, 1, 0)]
    cases += [(rng.randrange(1 << rng.randrange(1, 33)), rng.randrange(1 << nx.MULT_BITS),
               rng.randrange(nx.SHIFT_MAX + 1)) for _ in range(300)]

    assert Exp2.LATENCY == 2

    async def bench(ctx):
        ctx.set(dut.en, 1)
        for i, (d, mult, shift) in enumerate(cases + [cases[-1]]):
            ctx.set(dut.t, int(nx.round_shift(np.int64(d) * mult, shift)))
            await ctx.tick()
            if i >= 1:          # one t a cycle, each e two cycles after its t
                assert ctx.get(dut.e) == _golden_exp(*cases[i - 1]), cases[i - 1]
        # Without en the lookup holds its result.
        ctx.set(dut.en, 0)
        ctx.set(dut.t, 0)
        await ctx.tick()
        await ctx.tick()
        assert ctx.get(dut.e) == _golden_exp(*cases[-1])

    _run(dut, bench)


def test_gelu_phi_exhaustive_product():
    """x * Phi(x) (with the output offset and clamp the unit applies) over int16 inputs equals
    the golden GELU (every code within |x| <= 4160, sampled every 7 codes beyond). The table
    is read synchronously and registered: Phi belongs to the x of two cycles before, one x a
    cycle."""
    dut = GeluPhi()
    edge = 4096 + 64
    xs = (list(range(nx.INT16.lo, -edge, 7)) + list(range(-edge, edge + 1))
          + list(range(edge + 1, nx.INT16.hi + 1, 7)) + [nx.INT16.hi, -4096, 4095, 4096, -4097])
    want = nx.gelu(np.array(xs))

    def finish(p):
        return max(p + GELU_OFFSET, 0) if GELU_CLAMP else p

    lat = GeluPhi.LATENCY

    async def bench(ctx):
        ctx.set(dut.en, 1)
        for i, x in enumerate(xs + [0] * (lat - 1)):
            ctx.set(dut.x, x)
            await ctx.tick()
            if i >= lat - 1:
                j = i - (lat - 1)
                assert finish(xs[j] * ctx.get(dut.phi)) == int(want[j]), xs[j]
        # Without en the lookup holds its result.
        ctx.set(dut.en, 0)
        ctx.set(dut.x, 0)
        await ctx.tick()
        assert finish(xs[-1] * ctx.get(dut.phi)) == int(want[-1])

    _run(dut, bench)


def test_silu_sigmoid_exhaustive():
    """SiLU from the unit's sigmoid table, round_shift(x * sigmoid(x), 8), equals the golden
    numerics.silu for every int16 input (the table's clamp, its mirrored negative buckets and
    the end of the table included)."""
    from celosia.hdl.vector_arith import SiluSigmoid

    dut = SiluSigmoid()
    xs = list(range(nx.INT16.lo, nx.INT16.hi + 1))
    want = nx.silu(np.array(xs))
    sh = nx.SILU_IN_FRAC + nx.SILU_SIG_BITS - nx.SILU_OUT_FRAC

    lat = SiluSigmoid.LATENCY

    async def bench(ctx):
        ctx.set(dut.en, 1)
        bad = []
        for i, x in enumerate(xs + [0] * (lat - 1)):
            ctx.set(dut.x, x)
            await ctx.tick()
            if i >= lat - 1:
                j = i - (lat - 1)
                got = (xs[j] * ctx.get(dut.y) + (1 << (sh - 1))) >> sh
                if got != int(want[j]):
                    bad.append((xs[j], got, int(want[j])))
        assert not bad, bad[:5]

    _run(dut, bench)
