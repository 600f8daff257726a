"""cocotb 2.x agents for Amaranth stream ports, stepped by one loop per clock cycle.

Every agent has ``drive()`` (set inputs right after a rising edge) and ``sample()`` (read the
settled outputs in the ReadOnly phase: a stream transfers at the next edge when both valid and
ready are high then). One loop calls all agents each cycle, which makes the handshakes exact
on Icarus and Verilator alike.
"""

from __future__ import annotations

import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["port", "Source", "Sink", "MemoryAgent", "start_clock", "reset", "step_until"]


def port(dut, name: str, member: str):
    """The Verilog port of a stream member: ``cmd`` + ``valid`` -> ``dut.cmd__valid``; ``None``
    for the ``ready`` of an always-ready stream (a constant, so not a port)."""
    if member == "ready" and not hasattr(dut, f"{name}__ready"):
        return None
    return getattr(dut, f"{name}__{member}")


def _int(handle) -> int:
    return int(handle.value)


class Source:
    """Sends integers (packed payloads) on stream ``name`` with random valid gaps."""

    def __init__(self, dut, name, items, *, rng=None, gap=0.0):
        self.valid = port(dut, name, "valid")
        self.ready = port(dut, name, "ready")
        self.payload = port(dut, name, "payload")
        self.items = deque(items)
        self.rng = rng or random.Random(0)
        self.gap = gap
        self.sent = 0
        self._offer = False

    @property
    def done(self):
        return not self.items

    def drive(self):
        self._offer = bool(self.items) and not (self.gap and self.rng.random() < self.gap)
        self.valid.value = int(self._offer)
        if self._offer:
            self.payload.value = self.items[0]

    def sample(self):
        if self._offer and (self.ready is None or _int(self.ready)):
            self.items.popleft()
            self.sent += 1


class Sink:
    """Receives integers from stream ``name``, stalling ready at random."""

    def __init__(self, dut, name, *, rng=None, stall=0.0):
        self.valid = port(dut, name, "valid")
        self.ready = port(dut, name, "ready")
        self.payload = port(dut, name, "payload")
        if self.ready is None and stall:
            raise ValueError(f"stream {name} is always ready: it cannot be stalled")
        self.rng = rng or random.Random(1)
        self.stall = stall
        self.received = []
        self._ready = False

    def drive(self):
        self._ready = not (self.stall and self.rng.random() < self.stall)
        if self.ready is not None:
            self.ready.value = int(self._ready)

    def sample(self):
        if self._ready and _int(self.valid):
            self.received.append(_int(self.payload))


class MemoryAgent:
    """Serves a ``MemoryPortSignature`` port named ``name`` from a numpy byte array."""

    def __init__(self, dut, name, data, port_bytes, *, rng=None, latency=2, req_stall=0.0,
                 resp_gap=0.0, wr_stall=0.0):
        self.rd_req = {m: getattr(dut, f"{name}__rd_req__{m}") for m in ("valid", "ready", "payload")}
        self.rd_resp = {m: getattr(dut, f"{name}__rd_resp__{m}") for m in ("valid", "ready", "payload")}
        self.wr = {m: getattr(dut, f"{name}__wr__{m}") for m in ("valid", "ready", "payload")}
        self.data = data
        self.w = port_bytes
        self.rng = rng or random.Random(2)
        self.latency = latency
        self.req_stall, self.resp_gap, self.wr_stall = req_stall, resp_gap, wr_stall
        self.queue = deque()
        self.cycle = 0
        self.reads = self.writes = 0
        self._req_ready = self._wr_ready = self._resp_valid = False

    def _check(self, addr):
        if addr % self.w or addr + self.w > len(self.data):
            raise AssertionError(f"memory access out of bounds or unaligned: {addr:#x}")

    def drive(self):
        r = self.rng
        self._req_ready = not (self.req_stall and r.random() < self.req_stall)
        self._wr_ready = not (self.wr_stall and r.random() < self.wr_stall)
        self._resp_valid = (bool(self.queue) and self.queue[0][0] <= self.cycle
                            and not (self.resp_gap and r.random() < self.resp_gap))
        self.rd_req["ready"].value = int(self._req_ready)
        self.wr["ready"].value = int(self._wr_ready)
        self.rd_resp["valid"].value = int(self._resp_valid)
        if self._resp_valid:
            self.rd_resp["payload"].value = self.queue[0][1]

    def sample(self):
        w = self.w
        if self._req_ready and _int(self.rd_req["valid"]):
            addr = _int(self.rd_req["payload"])
            self._check(addr)
            self.queue.append((self.cycle + self.latency,
                               int.from_bytes(bytes(self.data[addr:addr + w]), "little")))
            self.reads += 1
        if self._resp_valid and _int(self.rd_resp["ready"]):
            self.queue.popleft()
        if self._wr_ready and _int(self.wr["valid"]):
            word = _int(self.wr["payload"])
            addr = word & 0xFFFF_FFFF
            data = (word >> 32) & ((1 << (8 * w)) - 1)
            strb = word >> (32 + 8 * w)
            self._check(addr)
            raw = data.to_bytes(w, "little")
            for i in range(w):
                if strb >> i & 1:
                    self.data[addr + i] = raw[i]
            self.writes += 1
        self.cycle += 1


async def start_clock(dut, period_ns=10):
    cocotb.start_soon(Clock(dut.clk, period_ns, unit="ns").start())


async def reset(dut, cycles=3):
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


async def step_until(dut, agents, until, *, max_cycles=1_000_000, on_cycle=None):
    """Run the per-cycle loop until ``until()`` is true after a sample; returns the cycles."""
    for cycle in range(max_cycles):
        for a in agents:
            a.drive()
        if on_cycle is not None:
            on_cycle(cycle)
        await ReadOnly()
        for a in agents:
            a.sample()
        stop = until()
        await RisingEdge(dut.clk)
        if stop:
            return cycle + 1
    raise AssertionError(f"no completion within {max_cycles} cycles")
