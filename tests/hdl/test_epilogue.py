"""Epilogue against the golden numerics in Amaranth's simulator."""

import random

import numpy as np
import pytest

from celosia.hdl.epilogue import Epilogue
from celosia.hdl.params import OUT_RANGE, OutFormat
from celosia.sim.pysim import StreamSink, StreamSource, run
from celosia.sw.numerics import (INT32, MULT_BITS, ROW_EXP_MAX, SHIFT_MAX, Dyadic, requantize,
                                 round_shift, saturate)


def golden_rows(rows, requant, fmt, zp):
    out = []
    for r in rows:
        x = round_shift(np.array(r["acc"]), r.get("row_shift", 0))
        x = saturate(x + np.array(r["bias"]), INT32)
        x = saturate(x + np.array(r["addend"]), INT32)
        if requant:
            x = requantize(x, Dyadic(np.array(r["mult"]), np.array(r["shift"])), OUT_RANGE[fmt], zp)
        out.append([int(v) for v in x])
    return out


def random_rows(rng, n, count, row_shift=False):
    def val():
        return rng.choice([INT32.lo, INT32.hi, 0, -1, 1, rng.randint(INT32.lo, INT32.hi),
                           rng.randint(-5000, 5000)])
    rows = []
    for _ in range(count):
        rows.append({
            "acc": [val() for _ in range(n)],
            "bias": [val() for _ in range(n)],
            "addend": [val() for _ in range(n)],
            "mult": [rng.choice([0, 1, (1 << MULT_BITS) - 1, rng.randrange(1 << MULT_BITS)])
                     for _ in range(n)],
            "shift": [rng.choice([0, 1, SHIFT_MAX, rng.randint(0, SHIFT_MAX)]) for _ in range(n)],
            "row_shift": rng.choice([0, 1, ROW_EXP_MAX, rng.randint(0, ROW_EXP_MAX)]) if row_shift else 0,
        })
    return rows


def run_rows(dut, rows, rng, *, requant, fmt, zp, sink_seed, gap=0.3, stall=0.0,
             addend_shift=None, deadline=5000):
    """Stream ``rows`` through an epilogue with the given configuration (random input gaps and,
    for the serial epilogue, which honours them, output stalls); returns the rows it
    produced. The pipelined epilogue never stalls: its receiver takes every result."""
    src = StreamSource(dut.i, rows, rng=rng, gap=gap)
    sink = StreamSink(dut.o, len(rows), rng=random.Random(sink_seed), stall=stall,
                      convert=lambda p: [int(v) for v in p])

    async def config(ctx):
        ctx.set(dut.requant, requant)
        ctx.set(dut.out_fmt, fmt)
        ctx.set(dut.zero_point, zp)
        if addend_shift is not None:
            ctx.set(dut.addend_shift, addend_shift)

    run(dut, config, src, sink, deadline_cycles=deadline)
    return sink.received


@pytest.mark.parametrize("fmt", list(OutFormat))
@pytest.mark.parametrize("requant", [0, 1])
def test_epilogue_matches_golden(fmt, requant):
    n = 4
    rng = random.Random(int(fmt) * 2 + requant)
    rows = random_rows(rng, n, 60)
    zp = rng.choice([0, -7, 100, 255])
    dut = Epilogue(n)
    got = run_rows(dut, rows, rng, requant=requant, fmt=fmt, zp=zp,
                   sink_seed=5)
    assert got == golden_rows(rows, requant, fmt, zp)


@pytest.mark.parametrize("fmt", [OutFormat.INT8, OutFormat.INT32])
@pytest.mark.parametrize("requant", [0, 1])
def test_epilogue_row_shift(fmt, requant):
    """Rows rounded and shifted by their exponent before the bias, as numerics.matmul."""
    n = 4
    rng = random.Random(40 + int(fmt) * 2 + requant)
    rows = random_rows(rng, n, 80, row_shift=True)
    # Rounding ties and extremes: odd multiples of 2**(e-1), INT32 limits, -1 and 1.
    for e in range(ROW_EXP_MAX + 1):
        tie = (1 << e) >> 1
        rows.append({"acc": [tie, -tie, INT32.lo, INT32.hi], "bias": [0, 0, -1, 1],
                     "addend": [0] * n, "mult": [1] * n, "shift": [0] * n, "row_shift": e})
        rows.append({"acc": [3 * tie, -3 * tie, -1, 1], "bias": [INT32.hi, INT32.lo, 0, 0],
                     "addend": [0, 0, INT32.lo, INT32.hi], "mult": [1 << 14] * n,
                     "shift": [14] * n, "row_shift": e})
    zp = rng.choice([0, -3, 90])
    dut = Epilogue(n)
    got = run_rows(dut, rows, rng, requant=requant, fmt=fmt, zp=zp,
                   sink_seed=6)
    assert got == golden_rows(rows, requant, fmt, zp)
