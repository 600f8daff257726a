"""cocotb testbenches of the engine's units: systolic array, scratchpad, epilogue and the
sequencer's store side. Each test runs only on the top it is written for (``CELOSIA_TB`` names
the unit and its parameters)."""

from __future__ import annotations

import json
import os
import random

import cocotb
import numpy as np
from amaranth.lib import data

from celosia.hdl.epilogue import epilogue_layout
from celosia.hdl.params import OUT_RANGE, AddendMode, OutFormat, pack_command
from celosia.hdl.systolic import row_layout, step_layout
from celosia.sim.cocotb_streams import MemoryAgent, Sink, Source, reset, start_clock, step_until
from celosia.sw.numerics import INT32, MULT_BITS, SHIFT_MAX, Dyadic, requantize, saturate

PARAMS = json.loads(os.environ.get("CELOSIA_TB", "{}"))
UNIT = PARAMS.get("unit")


def pack(layout, value) -> int:
    return layout.const(value).as_value().value


def unpack_row(layout, value):
    return [int(v) for v in data.Const(layout, value)]


async def _start(dut, inputs=()):
    await start_clock(dut)
    for name in inputs:
        getattr(dut, name).value = 0
    await reset(dut)


@cocotb.test(skip=UNIT != "systolic")
async def systolic_tiles(dut):
    """Back-to-back tiles of random and extreme operands, with gaps (the array never stalls:
    every row it offers is taken)."""
    n = PARAMS["array"]
    await _start(dut, ["i__valid"])
    rng = np.random.default_rng(3)
    tiles = []
    for t in range(6):
        k = int(rng.integers(n, 4 * n))
        lo = 0 if t % 2 else -128
        tiles.append((rng.integers(lo, lo + 256, size=(n, k)), rng.integers(-128, 128, size=(k, n))))
    tiles.append((np.full((n, 2 * n), -128), np.full((2 * n, n), -128)))
    tiles.append((np.full((n, n), 255), np.full((n, n), 127)))
    layout = step_layout(n)
    steps = [pack(layout, {"a": [int(x) for x in a[:, i]], "b": [int(x) for x in b[i]],
                           "last": int(i == a.shape[1] - 1)})
             for a, b in tiles for i in range(a.shape[1])]
    for gap in (0.0, 0.4):
        src = Source(dut, "i", steps, rng=random.Random(1), gap=gap)
        sink = Sink(dut, "o")
        cycles = await step_until(dut, [src, sink], lambda: len(sink.received) == n * len(tiles),
                                  max_cycles=50_000)
        got = np.array([unpack_row(row_layout(n), v) for v in sink.received])
        assert np.array_equal(got, np.concatenate([a @ b for a, b in tiles]))
        if gap == 0:
            # Fill, drain and readout overlap the next tile: no cycles lost between tiles.
            assert cycles <= len(steps) + 2 * n + 6, cycles
        dut._log.info(f"{len(tiles)} tiles, gap {gap}: {cycles} cycles")


@cocotb.test(skip=UNIT != "scratchpad")
async def scratchpad_buffers(dut):
    """Random writes with gaps to both buffers, then random reads, with held data when idle."""
    wb, rb, depth = PARAMS["write_bytes"], PARAMS["read_bytes"], PARAMS["depth_bytes"]
    await _start(dut, ["w__valid", "r_en"])
    rng = random.Random(4)
    content = [bytes(rng.randrange(256) for _ in range(depth)) for _ in range(2)]
    w_layout = data.StructLayout({"buf": 1, "addr": range(depth // wb), "data": wb * 8})
    beats = [pack(w_layout, {"buf": b, "addr": a,
                             "data": int.from_bytes(content[b][a * wb:(a + 1) * wb], "little")})
             for b in range(2) for a in range(depth // wb)]
    rng.shuffle(beats)
    src = Source(dut, "w", beats, rng=rng, gap=0.3)
    await step_until(dut, [src], lambda: src.done, max_cycles=10_000)
    dut.w__valid.value = 0
    reads = [(b, a) for b in range(2) for a in range(depth // rb)]
    rng.shuffle(reads)
    from cocotb.triggers import ReadOnly, RisingEdge
    for b, a in reads:
        dut.r_en.value = 1
        dut.r_buf.value = b
        dut.r_addr.value = a
        await RisingEdge(dut.clk)
        dut.r_en.value = 0
        dut.r_addr.value = (a + 1) % (depth // rb)
        expect = int.from_bytes(content[b][a * rb:(a + 1) * rb], "little")
        for _ in range(2):
            await ReadOnly()
            assert int(dut.r_data.value) == expect
            await RisingEdge(dut.clk)


def _epilogue_golden(rows, requant, fmt, zp):
    out = []
    for r in rows:
        x = saturate(np.array(r["acc"]) + np.array(r["bias"]), INT32)
        x = saturate(x + np.array(r["addend"]), INT32)
        if requant:
            x = requantize(x, Dyadic(np.array(r["mult"]), np.array(r["shift"])), OUT_RANGE[fmt], zp)
        out.append([int(v) for v in x])
    return out


@cocotb.test(skip=UNIT != "epilogue")
async def epilogue_rows(dut):
    """Every output format, raw and requantised, extremes included, with input gaps."""
    n = PARAMS["array"]
    await _start(dut, ["i__valid", "o__ready"])
    rng = random.Random(6)

    def val():
        return rng.choice([INT32.lo, INT32.hi, 0, -1, rng.randint(INT32.lo, INT32.hi),
                           rng.randint(-9999, 9999)])

    layout = epilogue_layout(n)
    for fmt in OutFormat:
        for requant in (0, 1):
            rows = [{"acc": [val() for _ in range(n)], "bias": [val() for _ in range(n)],
                     "addend": [val() for _ in range(n)],
                     "mult": [rng.choice([0, (1 << MULT_BITS) - 1, rng.randrange(1 << MULT_BITS)])
                              for _ in range(n)],
                     "shift": [rng.choice([0, 1, SHIFT_MAX, rng.randint(0, SHIFT_MAX)])
                               for _ in range(n)]} for _ in range(24)]
            zp = rng.choice([0, -5, 77])
            dut.requant.value = requant
            dut.out_fmt.value = int(fmt)
            dut.zero_point.value = zp
            dut.addend_shift.value = 0
            src = Source(dut, "i", [pack(layout, r) for r in rows], rng=rng, gap=0.3)
            # The pipelined epilogue never stalls: its receiver takes every result.
            sink = Sink(dut, "o")
            await step_until(dut, [src, sink], lambda: len(sink.received) == len(rows),
                             max_cycles=10_000)
            got = [unpack_row(data.ArrayLayout(32, n), v) for v in sink.received]
            got = [[v - (1 << 32) if v >= 1 << 31 else v for v in row] for row in got]
            assert got == _epilogue_golden(rows, requant, fmt, zp), (fmt, requant)


@cocotb.test(skip=UNIT != "sequencer")
async def store_sequence(dut):
    """The store side of the tile sequencer: tile-ordered rows to clipped, strobed beats."""
    n, w = PARAMS["array"], PARAMS["port_bytes"]
    g = max(n, w)
    await _start(dut, ["i__valid", "wr__ready", "start"])
    rng = np.random.default_rng(8)
    prng = random.Random(8)
    for trial in range(6):
        m, cols = int(rng.integers(1, 3 * n + 2)), int(rng.integers(1, 3 * g + 2))
        requant = trial % 4 != 3
        fmt = OutFormat(trial % 4)
        ob = {OutFormat.INT8: 1, OutFormat.UINT8: 1, OutFormat.INT16: 2, OutFormat.INT32: 4}[fmt] if requant else 4
        stride = -(-cols * ob // w) * w + w
        c_addr = 2 * w
        mem = np.frombuffer(rng.bytes(c_addr + stride * m + 2 * w), dtype=np.uint8).copy()
        before = mem.copy()
        # Rows in the sequencer's order: groups of G columns, panels of N rows, N-wide tiles.
        rng_range = OUT_RANGE[fmt] if requant else OUT_RANGE[OutFormat.INT32]
        result = rng.integers(rng_range.lo, rng_range.hi + 1, size=(-(-m // n) * n, -(-cols // g) * g))
        rows = []
        for g0 in range(0, cols, g):
            for p0 in range(0, m, n):
                for c0 in range(g0, min(g0 + g, cols), n):
                    for r in range(p0, p0 + n):
                        rows.append(pack(data.ArrayLayout(32, n),
                                         [int(v) for v in result[r, c0:c0 + n]]))
        dut.cmd.value = pack_command(m=m, k=1, n=cols, c_addr=c_addr, c_stride=stride,
                                     requant=int(requant), out_fmt=int(fmt), use_params=1)
        dut.start.value = 1
        from cocotb.triggers import RisingEdge
        await RisingEdge(dut.clk)
        dut.start.value = 0
        src = Source(dut, "i", rows, rng=prng, gap=0.3)
        memory = MemoryAgent(dut, "mem", mem, w, rng=prng, wr_stall=0.4)
        finished = {}

        def until():
            if int(dut.done.value):
                finished["done"] = True
            return "done" in finished

        await step_until(dut, [src, memory], until, max_cycles=20_000)
        assert src.done
        dtype = {1: np.uint8 if fmt == OutFormat.UINT8 else np.int8, 2: "<i2", 4: "<i4"}[ob]
        expect = before.copy()
        for r in range(m):
            row = result[r, :cols].astype(np.int64)
            expect[c_addr + r * stride: c_addr + r * stride + cols * ob] = \
                row.astype(dtype).view(np.uint8)
        assert np.array_equal(mem, expect), (trial, m, cols, fmt, requant)
