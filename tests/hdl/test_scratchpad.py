"""Scratchpad and buffer tokens in Amaranth's simulator."""

import random

import pytest

from celosia.hdl.scratchpad import PingPong, Scratchpad
from celosia.sim.pysim import run


@pytest.mark.parametrize("wb,rb,depth", [(4, 1, 64), (8, 8, 64), (4, 16, 128), (16, 4, 64)])
def test_scratchpad_reads_back_both_buffers(wb, rb, depth):
    dut = Scratchpad(write_bytes=wb, read_bytes=rb, depth_bytes=depth)
    rng = random.Random(wb * 100 + rb)
    content = [bytes(rng.randrange(256) for _ in range(depth)) for _ in range(2)]

    async def bench(ctx):
        writes = [(buf, addr) for buf in range(2) for addr in range(depth // wb)]
        rng.shuffle(writes)
        for buf, addr in writes:
            while rng.random() < 0.3:          # idle cycles between beats
                ctx.set(dut.w.valid, 0)
                await ctx.tick()
            chunk = content[buf][addr * wb:(addr + 1) * wb]
            ctx.set(dut.w.payload, {"buf": buf, "addr": addr, "data": int.from_bytes(chunk, "little")})
            ctx.set(dut.w.valid, 1)
            assert ctx.get(dut.w.ready)
            await ctx.tick()
        ctx.set(dut.w.valid, 0)
        reads = [(buf, addr) for buf in range(2) for addr in range(depth // rb)]
        rng.shuffle(reads)
        for buf, addr in reads:
            ctx.set(dut.r_en, 1)
            ctx.set(dut.r_buf, buf)
            ctx.set(dut.r_addr, addr)
            await ctx.tick()
            expect = int.from_bytes(content[buf][addr * rb:(addr + 1) * rb], "little")
            assert ctx.get(dut.r_data) == expect
            # A disabled read holds its data, whatever the address does.
            ctx.set(dut.r_en, 0)
            ctx.set(dut.r_addr, (addr + 1) % (depth // rb))
            await ctx.tick()
            assert ctx.get(dut.r_data) == expect

    run(dut, bench, deadline_cycles=20000)


def test_pingpong_states():
    dut = PingPong()

    async def bench(ctx):
        assert ctx.get(dut.free) == 0b11 and ctx.get(dut.full) == 0
        ctx.set(dut.claim, 1); ctx.set(dut.claim_buf, 1)
        await ctx.tick()
        ctx.set(dut.claim, 0)
        assert ctx.get(dut.free) == 0b01 and ctx.get(dut.full) == 0
        ctx.set(dut.fill, 1); ctx.set(dut.fill_buf, 1)
        await ctx.tick()
        ctx.set(dut.fill, 0)
        assert ctx.get(dut.full) == 0b10
        ctx.set(dut.release, 1); ctx.set(dut.release_buf, 1)
        await ctx.tick()
        ctx.set(dut.release, 0)
        assert ctx.get(dut.free) == 0b11 and ctx.get(dut.full) == 0
        ctx.set(dut.claim, 1); ctx.set(dut.claim_buf, 0)
        await ctx.tick()
        ctx.set(dut.claim, 0); ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        assert ctx.get(dut.free) == 0b11

    run(dut, bench, deadline_cycles=100)


def test_pingpong_counts_rows_written():
    """``rows``: each buffer counts the rows written into it (``row`` with ``fill_buf``), up to
    ``rows``, and starts again at 0 when released or cleared."""
    dut = PingPong(rows=3)

    async def bench(ctx):
        async def rows(buf, count):
            ctx.set(dut.fill_buf, buf)
            for _ in range(count):
                ctx.set(dut.row, 1)
                await ctx.tick()
            ctx.set(dut.row, 0)

        written = lambda: [ctx.get(dut.written[b]) for b in range(2)]
        assert written() == [0, 0]
        await rows(1, 2)
        assert written() == [0, 2] and ctx.get(dut.full) == 0
        await rows(0, 1)
        await rows(1, 5)
        assert written() == [1, 3]
        ctx.set(dut.release, 1); ctx.set(dut.release_buf, 1)
        await ctx.tick()
        ctx.set(dut.release, 0)
        assert written() == [1, 0]
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        assert written() == [0, 0]

    run(dut, bench, deadline_cycles=100)


def test_read_registers_have_no_defined_init():
    """The read data registers carry an undefined initial value and no reset into the netlist,
    so synthesis can use a block RAM's output register without emulating a power-up value."""
    import re
    from amaranth.back import rtlil
    pad = Scratchpad(write_bytes=4, read_bytes=16, depth_bytes=32, block_ram=True)
    text = rtlil.convert(pad)
    inits = re.findall(r"attribute \\init (\S+)\n\s*wire width (\d+) \\bank(\d)_r_data\b", text)
    assert sorted(int(b) for _, _, b in inits) == [0, 1, 2, 3]
    assert all(v == f"{w}'" + "x" * int(w) for v, w, _ in inits)
