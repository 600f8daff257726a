"""Systolic array in Amaranth's simulator: back-to-back tiles and valid gaps (the array never
stalls: its output is always taken)."""

import random

import numpy as np
import pytest

from celosia.hdl.systolic import SystolicArray
from celosia.sim.pysim import StreamSink, StreamSource, run
from celosia.sw.numerics import matmul


def tile_steps(a, b):
    k = a.shape[1]
    return [{"a": [int(x) for x in a[:, i]], "b": [int(x) for x in b[i]], "last": int(i == k - 1)}
            for i in range(k)]


@pytest.mark.parametrize("n,gap", [(2, 0.0), (4, 0.3), (4, 0.6), (8, 0.2), (16, 0.1)])
def test_tiles_match_golden(n, gap):
    rng = np.random.default_rng(n)
    tiles = []
    for t in range(4):
        k = int(rng.integers(n, 3 * n))
        lo = 0 if t % 2 else -128              # uint8 and int8 A operands
        a = rng.integers(lo, lo + 256, size=(n, k))
        b = rng.integers(-128, 128, size=(k, n))
        tiles.append((a, b))
    # Extremes: every product is +2**14 or -128*255.
    tiles.append((np.full((n, n), -128), np.full((n, n), -128)))
    tiles.append((np.full((n, n), 255), np.full((n, n), -128)))
    dut = SystolicArray(n)
    steps = [s for a, b in tiles for s in tile_steps(a, b)]
    src = StreamSource(dut.i, steps, rng=random.Random(1), gap=gap)
    sink = StreamSink(dut.o, n * len(tiles), convert=lambda p: [int(v) for v in p])
    run(dut, src, sink, deadline_cycles=20000)
    expect = np.concatenate([matmul(a, b) for a, b in tiles])
    assert np.array_equal(np.array(sink.received), expect)


def test_back_to_back_tiles_keep_the_array_busy():
    """T tiles of K steps back to back leave the array within T*K + its latency."""
    n, k, tiles = 4, 6, 5
    dut = SystolicArray(n)
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(-128, 128, size=(n, k)), rng.integers(-128, 128, size=(k, n)))
             for _ in range(tiles)]
    steps = [s for a, b in pairs for s in tile_steps(a, b)]
    src = StreamSource(dut.i, steps)
    sink = StreamSink(dut.o, n * tiles, convert=lambda p: [int(v) for v in p])
    cycles = {}

    async def count(ctx):
        c = 0
        while len(sink.received) < n * tiles:
            await ctx.tick()
            c += 1
        cycles["total"] = c

    run(dut, src, sink, count, deadline_cycles=5000)
    assert np.array_equal(np.array(sink.received), np.concatenate([a @ b for a, b in pairs]))
    assert cycles["total"] <= tiles * k + dut.latency() + 2


def test_rejects_bad_sizes():
    with pytest.raises(ValueError):
        SystolicArray(1)
    with pytest.raises(TypeError):
        SystolicArray(4.0)
