"""The registered multiplier: its ECP5 primitive (MULT18X18D with input and output registers,
through Celosia's model of the cell) is proved equal to its behavioural twin, a broken
instantiation is not, and the twin multiplies with its stated latency.

The proofs use narrow operands: the instantiation is the same code for every width (the operands
sign-extended to the slice's 18 bits), and SAT proofs of wide multipliers take minutes."""

import random

import pytest
from amaranth.back import rtlil

from celosia.fpga.equiv import equivalent
from celosia.hdl.dsp import Multiplier
from celosia.sim.pysim import run


def _pair(a_width, b_width):
    prim = rtlil.convert(Multiplier(a_width, b_width, primitive=True), name="gold")
    twin = rtlil.convert(Multiplier(a_width, b_width, primitive=False), name="gate")
    return prim, twin


@pytest.mark.parametrize("a_width,b_width", [(4, 3), (1, 5), (6, 1)])
def test_primitive_equals_twin(a_width, b_width):
    prim, twin = _pair(a_width, b_width)
    assert equivalent(prim, twin)


@pytest.mark.parametrize("mutation", [
    ('"CLK0"', '"NONE"', "REG_OUTPUT_CLK"),     # one register fewer: a cycle early
    ('"CLK0"', '"NONE"', "REG_INPUTB_CLK"),     # B a cycle ahead of A
])
def test_broken_primitive_is_not_equal(mutation):
    old, new, param = mutation
    prim, twin = _pair(4, 3)
    lines = prim.splitlines()
    hits = [i for i, line in enumerate(lines)
            if old in line and param in line]
    assert hits, "the mutation must apply"
    for i in hits:
        lines[i] = lines[i].replace(old, new)
    assert not equivalent("\n".join(lines) + "\n", twin)


def test_twin_multiplies_with_its_latency():
    dut = Multiplier(9, 8, primitive=False)
    rng = random.Random(3)
    pairs = [(rng.randint(-256, 255), rng.randint(-128, 127)) for _ in range(200)]
    pairs += [(-256, -128), (255, -128), (-256, 127), (0, 0)]
    got = []

    async def tb(ctx):
        for a, b in pairs + [(0, 0)] * Multiplier.LATENCY:
            ctx.set(dut.a, a)
            ctx.set(dut.b, b)
            await ctx.tick()
            got.append(ctx.get(dut.p))

    run(dut, tb)
    assert got[Multiplier.LATENCY - 1:][:len(pairs)] == [a * b for a, b in pairs]
