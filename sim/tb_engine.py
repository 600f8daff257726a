"""cocotb testbench of the whole engine (top ``celosia_matmul``), with a stalling memory."""

from __future__ import annotations

import json
import os
import random
import time

import cocotb
import numpy as np

from celosia.hdl.params import AddendMode, ErrorCode
from celosia.sim.cocotb_streams import MemoryAgent, Sink, Source, reset, start_clock, step_until
from celosia.sim.matmul_job import random_job

PARAMS = json.loads(os.environ.get("CELOSIA_TB", "{}"))


async def run_command(dut, data, command, port_bytes, *, rng, latency=2, stall=0.0):
    mem = MemoryAgent(dut, "mem", data, port_bytes, rng=rng, latency=latency,
                      req_stall=stall, resp_gap=stall, wr_stall=stall)
    cmd = Source(dut, "cmd", [command])
    done = Sink(dut, "done", rng=rng, stall=stall)
    started = time.perf_counter()
    accepted = {}

    def until():
        if cmd.done and "cycle" not in accepted:
            accepted["cycle"] = mem.cycle
        return bool(done.received)

    await step_until(dut, [mem, cmd, done], until, max_cycles=5_000_000)
    wall = time.perf_counter() - started
    # Cycles from the command's acceptance to done.
    assert "cycle" in accepted, f"done {done.received} before the command was taken (sent {cmd.sent})"
    cycles = mem.cycle - accepted["cycle"] + 1
    return done.received[0], cycles, wall, mem


async def _setup(dut):
    await start_clock(dut)
    dut.cmd__valid.value = 0
    dut.done__ready.value = 0
    dut.mem__rd_req__ready.value = 0
    dut.mem__rd_resp__valid.value = 0
    dut.mem__wr__ready.value = 0
    await reset(dut)


@cocotb.test(skip="job" not in PARAMS)
async def run_job(dut):
    """Run the job file prepared by ``celosia.sim.cocotb_runner.run_engine_job``."""
    await _setup(dut)
    job = np.load(PARAMS["job"])
    data = job["memory"].copy()
    code, cycles, wall, mem = await run_command(
        dut, data, int(PARAMS["command"], 16), PARAMS["port_bytes"],
        rng=random.Random(PARAMS.get("seed", 1)), latency=PARAMS.get("latency", 2),
        stall=PARAMS.get("stall", 0.0))
    out = PARAMS["job"].replace(".npz", ".out.npz")
    np.savez(out, code=code, cycles=cycles, wall=wall, beats=mem.reads + mem.writes, memory=data)


@cocotb.test(skip="job" in PARAMS)
async def random_shapes(dut):
    """Random shapes (not multiples of the array), modes and formats, with stalls everywhere."""
    await _setup(dut)
    n, w, k_max = PARAMS["array"], PARAMS["port_bytes"], PARAMS["k_max"]
    rng = np.random.default_rng(PARAMS.get("seed", 1))
    prng = random.Random(PARAMS.get("seed", 1))
    for i in range(PARAMS.get("jobs", 4)):
        m = int(rng.integers(1, 2 * n + 3))
        k = int(rng.integers(1, min(k_max, 3 * w) + 1))
        cols = int(rng.integers(1, 3 * max(n, w) + 2))
        mode = AddendMode(int(rng.integers(3)))
        requant = bool(rng.integers(4))
        job = random_job(rng, m, k, cols, addend_mode=mode, requant=requant,
                         bias=requant or bool(rng.integers(2)), row_shift=bool(i % 2),
                         b_transposed=i % 4 in (1, 2))
        img = job.image(w, seed=i)
        stall = [0.0, 0.3, 0.6][i % 3]
        code, cycles, _, _ = await run_command(dut, img.data, img.command(), w, rng=prng,
                                               latency=1 + i % 4, stall=stall)
        assert code == ErrorCode.OK
        got = img.result(img.data)
        assert np.array_equal(got, job.golden()), f"job {i} {m}x{k}x{cols} {mode!r}"
        assert img.untouched_outside_c(img.data)
        dut._log.info(f"job {i}: {m}x{k}x{cols} {mode.name} row_shift {job.row_shift is not None} "
                      f"b_transposed {job.b_transposed} stall {stall}: {cycles} cycles")


@cocotb.test(skip="job" in PARAMS or PARAMS.get("k_max", 0) < 4096)
async def extremes_k4096(dut):
    """-128 * -128 summed over K = 4096 (2**26 per output), a saturating bias and requantisation."""
    await _setup(dut)
    n, w = PARAMS["array"], PARAMS["port_bytes"]
    rng = np.random.default_rng(5)
    m, k, cols = n + 1, 4096, n + 1
    job = random_job(rng, m, k, cols, a_unsigned=False, requant=True, out_fmt=0)
    job.a[:] = -128
    job.b[:] = -128
    job.a[-1, :] = 127                       # last row: 127 * -128 * 4096
    job.bias = np.array([2**31 - 1, -2**31] + [0] * (cols - 2))
    img = job.image(w, seed=9)
    code, cycles, _, _ = await run_command(dut, img.data, img.command(), w,
                                           rng=random.Random(3), latency=3, stall=0.2)
    assert code == ErrorCode.OK
    expect = job.golden()
    assert np.array_equal(img.result(img.data), expect)
    raw = job.a.astype(np.int64) @ job.b
    assert raw[0, 0] == 1 << 26
    dut._log.info(f"K=4096 extremes: {cycles} cycles")
