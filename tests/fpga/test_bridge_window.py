"""The UART bridge and the memory window in the Amaranth simulator, beyond the frames of
tests/fpga/test_build.py: the BAD_ADDR edges (the bridge keeps only the address bits below the
memory size), the request gap timeout at both sides of its limit, back-to-back reply bytes at
the right bit timing, and ``AxiRam`` under an AXI4 master with read bursts, backpressure,
strobed writes and byte accesses in between, against a byte array.
"""

import itertools
import random

import pytest
from amaranth import *
from amaranth.lib import wiring
from amaranth.sim import Simulator

from celosia.fpga.bridge import REPLY_OVERHEAD, BridgeStatus, Cmd, UartBridge, parse_reply, reply
from celosia.fpga.bridge import request as _request
from celosia.fpga import memory
from celosia.fpga.memory import AxiRam

from test_build import DIV, BridgeBench

_seqs = itertools.count(1)


def request(*args, **kw):
    """A request frame with the next sequence number."""
    return _request(*args, seq=next(_seqs) & 0xFF, **kw)


def _exchange(items, data_lengths, mem=1024, timeout=60 * DIV):
    """Send ``items`` (bytes: a frame; int: that many idle cycles; ``("replies", n)``: wait
    until n replies are in) and collect one reply per
    entry of ``data_lengths`` (the data bytes of that reply if its status is OK); also returns
    the lengths in cycles of the levels on tx."""
    dut = BridgeBench(mem, timeout, clk_hz=1000)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    replies, bit_lengths = [], []

    async def sender(ctx):
        ctx.set(dut.bridge.rx, 1)
        await ctx.tick().repeat(10)
        for item in items:
            if isinstance(item, int):
                await ctx.tick().repeat(item)
                continue
            if isinstance(item, tuple):                 # ("replies", n): wait for n replies
                while len(replies) < item[1]:
                    await ctx.tick()
                continue
            for byte in item:
                for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                    ctx.set(dut.bridge.rx, bit)
                    await ctx.tick().repeat(DIV)

    async def receiver(ctx):
        for n in data_lengths:
            raw = bytearray()
            while len(raw) < (REPLY_OVERHEAD + n if len(raw) < 3 or raw[2] & 0x7F == BridgeStatus.OK
                              else REPLY_OVERHEAD):
                while ctx.get(dut.bridge.tx):
                    await ctx.tick()
                await ctx.tick().repeat(DIV // 2)
                byte = 0
                for i in range(8):
                    await ctx.tick().repeat(DIV)
                    byte |= ctx.get(dut.bridge.tx) << i
                await ctx.tick().repeat(DIV)
                assert ctx.get(dut.bridge.tx) == 1
                raw.append(byte)
            replies.append(parse_reply(bytes(raw)))

    async def line(ctx):
        """The length in cycles of every level run on tx during the first reply."""
        last, run = 1, 0
        async for _clk, _rst, tx in ctx.tick().sample(dut.bridge.tx):
            run += 1
            if tx != last:
                bit_lengths.append(run)
                last, run = tx, 0

    sim.add_testbench(sender, background=True)
    sim.add_testbench(line, background=True)
    sim.add_testbench(receiver)
    sim.run()
    return replies, bit_lengths


def test_bad_addr_edges():
    mem = 1024
    frames = [
        request(Cmd.WRITE_MEM, mem - 4, 4, b"\x01\x02\x03\x04"),   # ends exactly at the top
        request(Cmd.READ_MEM, mem - 4, 4),
        request(Cmd.READ_MEM, mem - 3, 4),                         # one byte beyond
        request(Cmd.READ_MEM, mem, 1),
        request(Cmd.READ_MEM, 0xFFFF_FFFF, 1),
        request(Cmd.READ_MEM, 0x8000_0000, 1),                     # only the top bit set
        request(Cmd.READ_MEM, 0x0001_0000, 1),                     # a bit above the kept bytes
        request(Cmd.WRITE_MEM, 1 << 24, 1, b"\x55"),               # must not write address 0
        request(Cmd.READ_MEM, 0, 256),
        request(Cmd.READ_MEM, mem - 256, 256),
        request(Cmd.READ_MEM, mem - 255, 256),
    ]
    items = []
    for i, f in enumerate(frames):
        items += [f, ("replies", i + 1), 100]
    got, _ = _exchange(items, [0, 4, 4, 1, 1, 1, 1, 0, 256, 256, 256], mem)
    ok, bad = BridgeStatus.OK, BridgeStatus.BAD_ADDR
    assert [s for s, _ in got] == [ok, ok, bad, bad, bad, bad, bad, bad, ok, ok, bad]
    assert got[1][1] == b"\x01\x02\x03\x04"
    assert got[8][1] == bytes(256)
    assert got[9][1] == bytes(252) + b"\x01\x02\x03\x04"


def test_bad_addr_memory_not_a_power_of_two():
    mem = 1000
    frames = [request(Cmd.READ_MEM, mem - 2, 2), request(Cmd.READ_MEM, mem - 1, 2),
              request(Cmd.READ_MEM, 1023, 1), request(Cmd.INFO)]
    items = []
    for i, f in enumerate(frames):
        items += [f, ("replies", i + 1), 100]
    got, _ = _exchange(items, [2, 2, 1, 8], mem)
    assert [s for s, _ in got] == [BridgeStatus.OK, BridgeStatus.BAD_ADDR, BridgeStatus.BAD_ADDR,
                                   BridgeStatus.OK]
    assert got[3][1] == mem.to_bytes(4, "little") + (1000).to_bytes(4, "little")


@pytest.mark.parametrize("gap,dropped", [(200, False), (60 * DIV + DIV + 40, True)])
def test_request_gap(gap, dropped):
    """A pause inside a request shorter than the timeout (60 bit times here) is harmless; a
    longer one drops the partial request, so its remainder is garbage and only the next full
    request is answered."""
    frame = request(Cmd.WRITE_MEM, 8, 2, b"\xAB\xCD")
    items = [frame[:5], gap, frame[5:], 2000, request(Cmd.READ_MEM, 8, 2)]
    got, _ = _exchange(items, [2] if dropped else [0, 2])
    if dropped:
        assert got == [(BridgeStatus.OK, b"\x00\x00")]
    else:
        assert got == [(BridgeStatus.OK, b""), (BridgeStatus.OK, b"\xAB\xCD")]


def test_reply_bit_timing():
    """Every level on the line lasts a whole number of bit times (start bits included), and
    INFO's thirteen reply bytes follow each other without gaps."""
    got, runs = _exchange([_request(Cmd.INFO, seq=0x11)], [8])
    assert got[0][0] == BridgeStatus.OK
    # From the first start bit to the last 0 bit of the 13 reply bytes (8N1, LSB first).
    want = reply(0x11, BridgeStatus.OK, got[0][1], reset=True)
    bits = [b for byte in want for b in [0] + [(byte >> i) & 1 for i in range(8)] + [1]]
    last0 = max(i for i, b in enumerate(bits) if b == 0)
    assert all(r % DIV == 0 for r in runs[1:]), runs
    assert sum(runs[1:]) == (last0 + 1) * DIV, runs


def _csr_exchange(frames, lengths, resp):
    """The bridge against a slow CSR slave written here: AR and AW/W are taken after a few
    cycles, R/B come later with ``resp``, and rdata is the read address times 0x01010101
    only while rvalid is high (0xEEEEEEEE otherwise), so the reply must come from R while it
    is held. Returns the replies and the list of CSR writes (address, data)."""
    bridge = UartBridge(DIV, 1024, clk_hz=1000)
    sim = Simulator(bridge)
    sim.add_clock(1e-6)
    c = bridge.csr
    replies, writes = [], []

    async def sender(ctx):
        ctx.set(bridge.rx, 1)
        await ctx.tick().repeat(10)
        for frame in frames:
            for byte in frame:
                for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                    ctx.set(bridge.rx, bit)
                    await ctx.tick().repeat(DIV)
            while len(replies) < frames.index(frame) + 1:
                await ctx.tick()

    async def slave(ctx):
        ctx.set(c.rdata, 0xEEEEEEEE)
        while True:
            await ctx.tick()
            if ctx.get(c.arvalid):
                await ctx.tick().repeat(3)
                a = ctx.get(c.araddr)
                ctx.set(c.arready, 1)
                await ctx.tick()
                ctx.set(c.arready, 0)
                await ctx.tick().repeat(5)
                ctx.set(c.rvalid, 1)
                ctx.set(c.rresp, resp)
                ctx.set(c.rdata, a * 0x01010101)
                while not ctx.get(c.rready):
                    await ctx.tick()
                await ctx.tick()
                ctx.set(c.rvalid, 0)
                ctx.set(c.rdata, 0xEEEEEEEE)
            elif ctx.get(c.awvalid) and ctx.get(c.wvalid):
                await ctx.tick().repeat(2)
                writes.append((ctx.get(c.awaddr), ctx.get(c.wdata)))
                ctx.set(c.awready, 1)
                ctx.set(c.wready, 1)
                await ctx.tick()
                ctx.set(c.awready, 0)
                ctx.set(c.wready, 0)
                await ctx.tick().repeat(4)
                ctx.set(c.bvalid, 1)
                ctx.set(c.bresp, resp)
                while not ctx.get(c.bready):
                    await ctx.tick()
                await ctx.tick()
                ctx.set(c.bvalid, 0)

    async def receiver(ctx):
        for n in lengths:
            raw = bytearray()
            while len(raw) < (REPLY_OVERHEAD + n if len(raw) < 3 or raw[2] & 0x7F == BridgeStatus.OK
                              else REPLY_OVERHEAD):
                while ctx.get(bridge.tx):
                    await ctx.tick()
                await ctx.tick().repeat(DIV // 2)
                byte = 0
                for i in range(8):
                    await ctx.tick().repeat(DIV)
                    byte |= ctx.get(bridge.tx) << i
                await ctx.tick().repeat(DIV)
                raw.append(byte)
            replies.append(parse_reply(bytes(raw)))

    sim.add_testbench(sender, background=True)
    sim.add_testbench(slave, background=True)
    sim.add_testbench(receiver)
    sim.run()
    return replies, writes


@pytest.mark.parametrize("resp", [0, 2])
def test_csr_responses_held_and_errors(resp):
    """READ_CSR's reply bytes are the R channel's rdata, which the bridge holds (rready low)
    until the reply is out; a non-OKAY rresp or bresp is BUS_ERROR; the next request works."""
    frames = [request(Cmd.READ_CSR, 0x24), request(Cmd.WRITE_CSR, 0x10, 4, b"\x01\x02\x03\x04"),
              request(Cmd.READ_CSR, 0x31)]
    got, writes = _csr_exchange(frames, [4, 0, 4], resp)
    if resp == 0:
        assert got == [(BridgeStatus.OK, bytes([0x24] * 4)), (BridgeStatus.OK, b""),
                       (BridgeStatus.OK, bytes([0x31] * 4))]
    else:
        assert got == [(BridgeStatus.BUS_ERROR, b"")] * 3
    assert writes == [(0x10, 0x04030201)]


# --- AxiRam under an AXI4 master -----------------------------------------------------------------

class _ForgetfulRam(memory._Ram):
    """A RAM whose output is garbage except in the cycle after a read (an SPRAM is not
    documented to keep DATAOUT while CHIPSELECT is low)."""

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = _RAM(self.width, self.depth, self.spram)
        m.d.comb += [inner.addr.eq(self.addr), inner.re.eq(self.re), inner.we.eq(self.we),
                     inner.wdata.eq(self.wdata)]
        was_read = Signal()
        m.d.sync += was_read.eq(self.re & (self.we == 0))
        m.d.comb += self.rdata.eq(Mux(was_read, inner.rdata, C(0xA5, 8).replicate(self.width)))
        return m


_RAM = memory._Ram


def _write_bytes(model, addr, data, strb, width):
    """The model's memory after a write of ``data`` with byte strobes ``strb``."""
    for i in range(width):
        if strb >> i & 1:
            model[addr + i] = data >> (8 * i) & 0xFF


@pytest.mark.parametrize("forgetful", [False, True])
def test_axi_ram_bursts_writes_and_bytes(forgetful, monkeypatch):
    """With ``forgetful`` the RAM's output is only good in the cycle after a read: a beat the
    master has not taken must be read again."""
    if forgetful:
        monkeypatch.setattr(memory, "_Ram", _ForgetfulRam)
    W, MEMB = 4, 512
    dut = AxiRam(W, MEMB)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    model = bytearray(MEMB)
    rng = random.Random(1)
    a, s = dut.axi, dut.side

    async def bench(ctx):
        for step in range(120):
            kind = rng.choice(["read", "write", "byte_w", "byte_r"])
            if kind == "write":
                addr = rng.randrange(MEMB // W) * W
                data = rng.getrandbits(8 * W)
                strb = rng.randrange(1, 1 << W)
                ctx.set(a.awaddr, addr); ctx.set(a.awlen, 0); ctx.set(a.awid, step & 1)
                ctx.set(a.wdata, data); ctx.set(a.wstrb, strb); ctx.set(a.wlast, 1)
                ctx.set(a.awvalid, 1); ctx.set(a.wvalid, 1)
                ctx.set(a.bready, rng.random() < 0.7)
                while not (ctx.get(a.awready) and ctx.get(a.wready)):
                    await ctx.tick()
                await ctx.tick()
                ctx.set(a.awvalid, 0); ctx.set(a.wvalid, 0)
                _write_bytes(model, addr, data, strb, W)
                ctx.set(a.bready, 1)
                while not ctx.get(a.bvalid):
                    await ctx.tick()
                assert ctx.get(a.bid) == step & 1
                await ctx.tick()
            elif kind == "read":
                beats = rng.randrange(1, 17)
                addr = rng.randrange(MEMB // W - beats + 1) * W
                ctx.set(a.araddr, addr); ctx.set(a.arlen, beats - 1); ctx.set(a.arid, step & 1)
                ctx.set(a.arvalid, 1)
                while not ctx.get(a.arready):
                    await ctx.tick()
                await ctx.tick()
                ctx.set(a.arvalid, 0)
                for b in range(beats):
                    while True:
                        ready = rng.random() < 0.6
                        ctx.set(a.rready, ready)
                        valid = ctx.get(a.rvalid)
                        if valid and ready:
                            break
                        await ctx.tick()
                    want = int.from_bytes(model[addr + W * b:addr + W * b + W], "little")
                    assert ctx.get(a.rdata) == want, (step, b)
                    assert ctx.get(a.rlast) == (b == beats - 1)
                    assert ctx.get(a.rid) == step & 1
                    await ctx.tick()
                ctx.set(a.rready, 0)
            else:
                addr = rng.randrange(MEMB)
                ctx.set(s.addr, addr); ctx.set(s.valid, 1)
                ctx.set(s.we, kind == "byte_w")
                value = rng.randrange(256)
                ctx.set(s.wdata, value)
                while not ctx.get(s.ready):
                    await ctx.tick()
                await ctx.tick()
                ctx.set(s.valid, 0)
                if kind == "byte_w":
                    model[addr] = value
                else:
                    while not ctx.get(s.rvalid):
                        await ctx.tick()
                    assert ctx.get(s.rdata) == model[addr], step
                    await ctx.tick()

    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("forgetful", [False, True])
def test_native_ram_pipelined_reads_writes_and_bytes(forgetful, monkeypatch):
    """NativeRam (the iCEBreaker's window on the accelerator's own memory port): back-to-back
    reads with the response held back at random, writes in the same cycles (to the other
    half), byte accesses, then every word read back; with ``forgetful`` the RAM's output is
    only good in the cycle after a read."""
    from collections import deque

    from celosia.fpga.memory import NativeRam

    if forgetful:
        monkeypatch.setattr(memory, "_Ram", _ForgetfulRam)
    W, MEMB = 4, 512
    half = MEMB // 2
    dut = NativeRam(W, MEMB)
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    model = bytearray(MEMB)
    rng = random.Random(2)
    p, s = dut.port, dut.side
    expect = deque()
    state = {"preloaded": False, "reads_done": False, "responses": 0}
    for a in range(half):
        model[a] = rng.randrange(256)

    async def write_word(ctx, addr, data, strb):
        ctx.set(p.wr.payload.addr, addr); ctx.set(p.wr.payload.data, data)
        ctx.set(p.wr.payload.strb, strb); ctx.set(p.wr.valid, 1)
        await ctx.tick().until(p.wr.ready)
        ctx.set(p.wr.valid, 0)
        _write_bytes(model, addr, data, strb, W)

    async def reads(ctx):
        while not state["preloaded"]:
            await ctx.tick()
        for _ in range(150):
            addr = rng.randrange(half // W) * W
            ctx.set(p.rd_req.payload.addr, addr); ctx.set(p.rd_req.valid, 1)
            await ctx.tick().until(p.rd_req.ready)
            expect.append(int.from_bytes(model[addr:addr + W], "little"))
            if rng.random() < 0.2:
                ctx.set(p.rd_req.valid, 0)
                await ctx.tick()
        ctx.set(p.rd_req.valid, 0)
        state["reads_done"] = True

    async def responses(ctx):
        while not (state["reads_done"] and not expect):
            ready = rng.random() < 0.6
            ctx.set(p.rd_resp.ready, ready)
            valid, data = ctx.get(p.rd_resp.valid), ctx.get(p.rd_resp.payload)
            if valid and ready:
                assert expect, "a response nobody asked for"
                assert data == expect.popleft()
                state["responses"] += 1
            await ctx.tick()
        ctx.set(p.rd_resp.ready, 1)

    async def main(ctx):
        for addr in range(0, half, W):                 # preload the half that is read
            await write_word(ctx, addr, int.from_bytes(model[addr:addr + W], "little"),
                             (1 << W) - 1)
        state["preloaded"] = True
        for _ in range(100):                           # writes to the other half meanwhile
            await write_word(ctx, half + rng.randrange(half // W) * W, rng.getrandbits(8 * W),
                             rng.randrange(1, 1 << W))
            for _ in range(rng.randrange(3)):
                await ctx.tick()
        while not state["reads_done"] or expect:
            await ctx.tick()
        assert state["responses"] == 150
        for step in range(60):                         # byte accesses
            addr = rng.randrange(MEMB)
            we = rng.random() < 0.5
            value = rng.randrange(256)
            ctx.set(s.addr, addr); ctx.set(s.we, we); ctx.set(s.wdata, value)
            ctx.set(s.valid, 1)
            await ctx.tick().until(s.ready)
            ctx.set(s.valid, 0)
            if we:
                model[addr] = value
            else:
                while not ctx.get(s.rvalid):         # rdata is good while rvalid is high
                    await ctx.tick()
                assert ctx.get(s.rdata) == model[addr], step
        ctx.set(p.rd_resp.ready, 1)
        for addr in range(0, MEMB, W):                 # everything, read back
            ctx.set(p.rd_req.payload.addr, addr); ctx.set(p.rd_req.valid, 1)
            await ctx.tick().until(p.rd_req.ready)
            ctx.set(p.rd_req.valid, 0)
            while not ctx.get(p.rd_resp.valid):
                await ctx.tick()
            assert ctx.get(p.rd_resp.payload) == int.from_bytes(model[addr:addr + W], "little")

    sim.add_testbench(main)
    sim.add_testbench(reads)
    sim.add_testbench(responses)
    sim.run()
