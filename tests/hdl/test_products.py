"""Products built from DSP limbs and LUT shift-and-adds (hdl/dsp.py), the wide-value clamp, and
the operand bounds the vector unit's multiplier bank is cut to."""

import random
from math import isqrt

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from celosia.hdl import vector as vu
from celosia.hdl.dsp import dsp_count, limb_product, lut_product
from celosia.hdl.vector_arith import clamp
from celosia.sw import numerics as nx


def _extremes(shape):
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


def _check(shapes, build, reference, *, seed=0, n=300):
    """Drive random and extreme operands through ``build(*signals)`` and compare."""
    m = Module()
    ins = [Signal(s, name=f"in{k}") for k, s in enumerate(shapes)]
    out = Signal(signed(2 + sum(s.width for s in shapes)))
    m.d.comb += out.eq(build(*ins))
    rng = random.Random(seed)
    cases = [[_extremes(s)[i] for s, i in zip(shapes, combo)]
             for combo in np.ndindex(*(2,) * len(shapes))]
    cases += [[rng.randint(*_extremes(s)) for s in shapes] for _ in range(n)]

    async def bench(ctx):
        for values in cases:
            for sig, v in zip(ins, values):
                ctx.set(sig, v)
            assert ctx.get(out) == reference(*values), values

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("a,b,lut_bits,dsps", [
    (signed(33), unsigned(17), 8, 2),
    (signed(25), unsigned(30), 8, 2),
    (signed(25), unsigned(30), 0, 4),
    (signed(20), signed(22), 5, 1),
    (unsigned(32), unsigned(15), 8, 2),
    (signed(31), unsigned(15), 8, 2),
    (signed(16), unsigned(15), 8, 1),
    (signed(18), signed(18), 8, 1),
    (unsigned(18), unsigned(18), 8, 1),
])
def test_limb_product_exact(a, b, lut_bits, dsps):
    assert dsp_count(a, b, lut_bits=lut_bits) == dsps
    _check([a, b], lambda x, y: limb_product(x, y, lut_bits=lut_bits), lambda x, y: x * y,
           seed=a.width * 100 + b.width)


@pytest.mark.parametrize("x,y", [(signed(8), unsigned(30)), (unsigned(6), unsigned(9)),
                                 (signed(1), signed(12)), (unsigned(4), signed(37))])
def test_lut_product_exact(x, y):
    _check([x, y], lut_product, lambda p, q: p * q, seed=x.width + y.width)


@pytest.mark.parametrize("x", [signed(50), signed(33), signed(32), unsigned(40)])
def test_wide_clamp_is_the_plain_clamp(x):
    lo_hi = signed(32)

    def reference(v, lo, hi):
        return lo if v < lo else hi if v > hi else v

    _check([x, lo_hi, lo_hi], clamp, reference, seed=x.width, n=600)


def test_layernorm_z_fits_its_bound():
    """The widest |z| LayerNorm can produce (one spike in a row, every row length's worst case
    near the limit) stays inside the bits the multiplier bank gives it, and the bound used for
    d * inv holds."""
    hi, lo = (1 << (nx.LN_IN_BITS - 1)) - 1, -(1 << (nx.LN_IN_BITS - 1))
    worst_z = worst_dinv = 0
    for n in (1, 2, 3, 17, 384, 1000, nx.LN_MAX_COLS):
        for spike, rest in ((hi, lo), (lo, hi), (hi, 0), (1, 0), (2, 0), (lo, lo + 1)):
            x = np.full((1, n), rest, dtype=np.int64)
            x[0, 0] = spike
            mean = np.floor_divide(x.sum(axis=-1, keepdims=True), n)
            d = x - mean
            var = np.floor_divide((d * d).sum(axis=-1, keepdims=True), n)
            std = np.maximum(nx.isqrt(var), 1)
            dinv = d * np.floor_divide(np.int64(1) << nx.LN_INV_BITS, std)
            worst_dinv = max(worst_dinv, int(np.abs(dinv).max()))
            z = nx.round_shift(dinv, nx.LN_INV_BITS - nx.LN_NORM_FRAC)
            worst_z = max(worst_z, int(np.abs(z).max()))
            assert worst_dinv < (isqrt(n) + 1) << (nx.LN_INV_BITS + 1)
    assert worst_dinv < vu._LN_DINV_MAX
    assert worst_z < 1 << (vu._Z_BITS - 1)
    # The bound is not loose by more than a few bits.
    assert worst_z >= 1 << (vu._Z_BITS - 4)
