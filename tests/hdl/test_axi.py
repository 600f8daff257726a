"""The AXI4 master's read-burst gathering in Amaranth's simulator: back-to-back requests for
consecutive beats become one burst, split at 4 KiB pages, at ``max_burst`` beats and wherever
the next request is not the next beat."""

import random

import pytest

from celosia.hdl.axi import AxiMaster
from celosia.sim.pysim import run


def expected_bursts(addrs, w, max_burst):
    bursts = []
    for a in addrs:
        if bursts:
            base, beats = bursts[-1]
            nxt = base + beats * w
            if a == nxt and nxt >> 12 == base >> 12 and beats < max_burst:
                bursts[-1] = (base, beats + 1)
                continue
        bursts.append((a, 1))
    return bursts


@pytest.mark.parametrize("w,max_burst", [(4, 16), (16, 16), (128, 16), (4, 3)])
def test_read_requests_gathered_into_bursts(w, max_burst):
    rng = random.Random(w + max_burst)
    addrs = []
    for _ in range(12):
        start = rng.choice([0, 4096 - 5 * w, 4096 - w, rng.randrange(0, 1 << 20) * w,
                            (1 << 32) - 3 * w])
        addrs += [(start + k * w) % (1 << 32) for k in range(rng.randint(1, 40))]
        if rng.random() < 0.3:
            addrs.append(addrs[-1])              # the same beat again: not the next one
    dut = AxiMaster(w, max_burst=max_burst)
    seen = []

    async def requests(ctx):
        ctx.set(dut.port.rd_resp.ready, 1)
        for a in addrs:
            ctx.set(dut.port.rd_req.payload.addr, a)
            ctx.set(dut.port.rd_req.valid, 1)
            await ctx.tick().until(dut.port.rd_req.ready)
        ctx.set(dut.port.rd_req.valid, 0)
        while sum(n for _, n in seen) < len(addrs):
            await ctx.tick()

    async def ar_channel(ctx):
        while True:
            ctx.set(dut.axi.arready, rng.random() < 0.5)
            _, _, valid, ready, addr, length = await ctx.tick().sample(
                dut.axi.arvalid, dut.axi.arready, dut.axi.araddr, dut.axi.arlen)
            if valid and ready:
                seen.append((addr, length + 1))

    run(dut, requests, background=[ar_channel], deadline_cycles=20000)
    assert seen == expected_bursts(addrs, w, max_burst)


def test_writes_bounded_and_idle():
    """At most ``max_writes`` writes wait for their response; ``writes_idle`` once every
    response is in and no write waits."""
    dut = AxiMaster(4, max_writes=3)
    log = []

    async def tb(ctx):
        ctx.set(dut.axi.awready, 1)
        ctx.set(dut.axi.wready, 1)
        sent = responses = 0
        for cycle in range(60):
            valid = sent < 8
            ctx.set(dut.port.wr.valid, valid)
            ctx.set(dut.port.wr.payload.addr, 4 * sent)
            ctx.set(dut.port.wr.payload.data, sent)
            ctx.set(dut.port.wr.payload.strb, 0xF)
            # Responses: none for 10 cycles, then one every other cycle for each write out.
            b = cycle >= 10 and cycle % 2 == 0 and responses < sent
            ctx.set(dut.axi.bvalid, b)
            _, _, ready, idle = await ctx.tick().sample(dut.port.wr.ready, dut.writes_idle)
            # Idle: nothing waiting for a response before this cycle and no write offered.
            assert idle == (sent == responses and not valid)
            sent += valid and ready
            responses += b
            log.append((sent, responses))

    run(dut, tb, deadline_cycles=1000)
    # Three writes go out, then the fourth waits for the first response (cycle 10).
    assert [s for s, _ in log[:12]] == [1, 2, 3] + [3] * 8 + [4]
    assert all(sent - responses <= 3 for sent, responses in log)
    assert log[-1] == (8, 8)


def test_axi_slice_passes_every_transfer_once_in_order():
    """AxiSlice: on each of the five channels, random transfers offered with random stalls on
    both sides come out in order, each once, with every field intact; and a channel moves one
    transfer a cycle when neither side stalls."""
    from celosia.hdl.axi import _AXI_CHANNELS, AxiSlice
    dut = AxiSlice(addr_width=20, data_width=64, id_width=2)
    rng = random.Random(7)
    count = 60
    got = {}

    def side(forward):
        return (dut.s, dut.m) if forward else (dut.m, dut.s)

    def sender(ch, forward, names, items, stall):
        src, _ = side(forward)

        async def tb(ctx):
            for item in items:
                ctx.set(getattr(src, f"{ch}valid"), 1)
                for n, v in zip(names, item):
                    ctx.set(getattr(src, n), v)
                await ctx.tick().until(getattr(src, f"{ch}ready"))
                ctx.set(getattr(src, f"{ch}valid"), 0)
                while rng.random() < stall:
                    await ctx.tick()
        return tb

    def receiver(ch, forward, names, stall):
        _, dst = side(forward)

        async def tb(ctx):
            out, cycles = [], 0
            while len(out) < count:
                ready = rng.random() >= stall
                ctx.set(getattr(dst, f"{ch}ready"), ready)
                _, _, valid, *fields = await ctx.tick().sample(
                    getattr(dst, f"{ch}valid"), *(getattr(dst, n) for n in names))
                cycles += 1
                if valid and ready:
                    out.append(tuple(fields))
            got[ch] = (out, cycles)
        return tb

    benches, sent = [], {}
    for ch, (forward, names) in _AXI_CHANNELS.items():
        src, _ = side(forward)
        items = [tuple(rng.randrange(1 << len(getattr(src, n))) for n in names)
                 for _ in range(count)]
        sent[ch] = items
        stall = 0.0 if ch == "w" else 0.3          # W: both sides willing every cycle
        benches += [sender(ch, forward, names, items, stall),
                    receiver(ch, forward, names, stall)]
    run(dut, *benches, deadline_cycles=5000)
    for ch in _AXI_CHANNELS:
        assert got[ch][0] == sent[ch], ch
    assert got["w"][1] <= count + 2              # full rate: one a cycle after the stage's one
