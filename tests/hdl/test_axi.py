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
