"""Stream drivers for Amaranth's Python simulator, with random valid gaps and ready stalls."""

from __future__ import annotations

import random

from amaranth.hdl import Const

__all__ = ["StreamSource", "StreamSink", "MemoryModel", "run", "run_command"]


class StreamSource:
    """Sends payloads on a stream, idling for a random number of cycles between them."""

    def __init__(self, stream, payloads, *, rng: random.Random | None = None, gap: float = 0.0):
        self.stream = stream
        self.payloads = list(payloads)
        self.rng = rng or random.Random(0)
        self.gap = gap

    async def testbench(self, ctx):
        for payload in self.payloads:
            while self.gap and self.rng.random() < self.gap:
                await ctx.tick()
            ctx.set(self.stream.payload, payload)
            ctx.set(self.stream.valid, 1)
            await ctx.tick().until(self.stream.ready)
            ctx.set(self.stream.valid, 0)


class StreamSink:
    """Collects ``count`` payloads from a stream, stalling ``ready`` at random."""

    def __init__(self, stream, count: int, *, rng: random.Random | None = None,
                 stall: float = 0.0, convert=None):
        self.stream = stream
        self.count = count
        self.rng = rng or random.Random(1)
        self.stall = stall
        self.convert = convert or (lambda v: v)
        self.received = []

    async def testbench(self, ctx):
        # An always-ready stream (its ready is a constant) is taken every cycle it is offered.
        always_ready = isinstance(self.stream.ready, Const)
        if always_ready and self.stall:
            raise ValueError("an always-ready stream cannot be stalled")
        while len(self.received) < self.count:
            while self.stall and self.rng.random() < self.stall:
                await ctx.tick()
            if not always_ready:
                ctx.set(self.stream.ready, 1)
            payload, = await ctx.tick().sample(self.stream.payload).until(self.stream.valid)
            if not always_ready:
                ctx.set(self.stream.ready, 0)
            self.received.append(self.convert(payload))


def run(dut, *testbenches, deadline_cycles: int = 1_000_000, processes=(), background=()):
    """Simulate ``dut`` until every testbench returned (at most ``deadline_cycles``)."""
    from amaranth.sim import Simulator

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in testbenches:
        sim.add_testbench(getattr(tb, "testbench", tb))
    for p in processes:
        sim.add_process(p)
    for tb in background:
        sim.add_testbench(getattr(tb, "testbench", tb), background=True)
    async def watchdog(ctx):
        await ctx.delay(deadline_cycles * 1e-8)
        raise TimeoutError(f"simulation still running after {deadline_cycles} cycles")

    sim.add_testbench(watchdog, background=True)
    sim.run()


class MemoryModel:
    """Serves a ``MemoryPortSignature`` port from a byte array, with latency and random stalls.

    Reads answer in order ``latency`` cycles after their request at the earliest; ``req_stall``,
    ``resp_gap`` and ``wr_stall`` are the chances of dropping ready or valid in a cycle. Any
    access outside the array raises.
    """

    def __init__(self, port, data, port_bytes: int, *, rng: random.Random | None = None,
                 latency: int = 2, req_stall: float = 0.0, resp_gap: float = 0.0,
                 wr_stall: float = 0.0):
        self.port = port
        self.data = data
        self.w = port_bytes
        self.rng = rng or random.Random(2)
        self.latency = latency
        self.req_stall, self.resp_gap, self.wr_stall = req_stall, resp_gap, wr_stall
        self.reads = self.writes = 0

    def _check(self, addr):
        if addr % self.w or addr + self.w > len(self.data):
            raise AssertionError(f"memory access out of bounds or unaligned: {addr:#x}")

    async def testbench(self, ctx):
        from collections import deque
        import numpy as np

        p, w, rng = self.port, self.w, self.rng
        queue = deque()
        cycle = 0
        while True:
            rq_ready = rng.random() >= self.req_stall
            wr_ready = rng.random() >= self.wr_stall
            ctx.set(p.rd_req.ready, rq_ready)
            ctx.set(p.wr.ready, wr_ready)
            resp_valid = bool(queue) and queue[0][0] <= cycle and rng.random() >= self.resp_gap
            ctx.set(p.rd_resp.valid, resp_valid)
            if resp_valid:
                ctx.set(p.rd_resp.payload, queue[0][1])
            (_, _, rq_v, rq_addr, rs_r, wr_v, wr_addr, wr_data, wr_strb) = await ctx.tick().sample(
                p.rd_req.valid, p.rd_req.payload.addr, p.rd_resp.ready,
                p.wr.valid, p.wr.payload.addr, p.wr.payload.data, p.wr.payload.strb)
            if rq_v and rq_ready:
                self._check(rq_addr)
                word = int.from_bytes(bytes(self.data[rq_addr:rq_addr + w]), "little")
                queue.append((cycle + self.latency, word))
                self.reads += 1
            if resp_valid and rs_r:
                queue.popleft()
            if wr_v and wr_ready:
                self._check(wr_addr)
                raw = np.frombuffer(int(wr_data).to_bytes(w, "little"), dtype=np.uint8)
                strb = np.array([(int(wr_strb) >> i) & 1 for i in range(w)], dtype=bool)
                self.data[wr_addr:wr_addr + w][strb] = raw[strb]
                self.writes += 1
            cycle += 1


async def run_commands(ctx, engine, commands, *, independent=False, timeout: int = 1_000_000):
    """Offer ``commands`` to a ``MatmulEngine`` back to back, each as soon as the engine takes
    the one before, with ``cmd_independent`` from ``independent`` (one flag for all, or one
    per command), and collect their done codes in order.

    Returns ``(codes, cycles)``: cycles from the first offer to the last ``done``."""
    flags = list(independent) if isinstance(independent, (list, tuple)) else \
        [independent] * len(commands)
    codes, offered, cycles = [], 0, 0

    def offer():
        more = offered < len(commands)
        if more:
            ctx.set(engine.cmd.payload.as_value(), commands[offered])
            ctx.set(engine.cmd_independent, int(flags[offered]))
        ctx.set(engine.cmd.valid, int(more))

    offer()
    ctx.set(engine.done.ready, 1)
    while len(codes) < len(commands):
        _, _, valid, ready, done, code = await ctx.tick().sample(
            engine.cmd.valid, engine.cmd.ready, engine.done.valid, engine.done.payload)
        cycles += 1
        if valid and ready:
            offered += 1
            offer()
        if done:
            codes.append(int(code))
        if cycles > timeout:
            raise TimeoutError("engine did not finish")
    ctx.set(engine.done.ready, 0)
    ctx.set(engine.cmd_independent, 0)
    return codes, cycles


async def run_command(ctx, engine, command: int, *, timeout: int = 1_000_000):
    """Issue one command to a ``MatmulEngine`` and wait for its done code.

    Returns ``(code, cycles)``: cycles from the command's acceptance to ``done``."""
    ctx.set(engine.cmd.payload.as_value(), command)
    ctx.set(engine.cmd.valid, 1)
    await ctx.tick().until(engine.cmd.ready)
    ctx.set(engine.cmd.valid, 0)
    cycles = 0
    ctx.set(engine.done.ready, 1)
    while True:
        _, _, valid, code = await ctx.tick().sample(engine.done.valid, engine.done.payload)
        cycles += 1
        if valid:
            break
        if cycles > timeout:
            raise TimeoutError("engine did not finish")
    ctx.set(engine.done.ready, 0)
    return int(code), cycles
