"""The whole engine in Amaranth's simulator on small shapes, with a stalling memory."""

import random

import numpy as np
import pytest

from celosia.hdl.engine import MatmulEngine
from celosia.hdl.params import (AddendMode, DoneCode, OutFormat, check_config, command_layout,
                                pack_command)
from celosia.sim.matmul_job import random_job
from celosia.sim.pysim import MemoryModel, run, run_command


def run_job(engine, job, *, seed=0, stalls=0.25, latency=3):
    img = job.image(engine.port_bytes, seed=seed)
    mem = MemoryModel(engine.mem, img.data, engine.port_bytes, rng=random.Random(seed),
                      latency=latency, req_stall=stalls, resp_gap=stalls, wr_stall=stalls)
    out = {}

    async def main(ctx):
        out["code"], out["cycles"] = await run_command(ctx, engine, img.command(), timeout=100_000)

    run(engine, main, background=[mem], deadline_cycles=200_000)
    return out["code"], img


CASES = [
    # array, port bytes, M, K, N, addend mode, output format (None: raw int32)
    (2, 4, 3, 5, 3, AddendMode.NONE, OutFormat.INT8),
    (2, 8, 5, 9, 17, AddendMode.ACC32, None),
    (4, 4, 6, 3, 9, AddendMode.RESIDUAL16, OutFormat.INT16),
    (4, 8, 9, 17, 13, AddendMode.NONE, OutFormat.UINT8),
    (4, 16, 4, 20, 40, AddendMode.ACC32, OutFormat.INT32),
    (4, 8, 1, 1, 1, AddendMode.NONE, None),
]


@pytest.mark.parametrize("n,w,m,k,cols,mode,fmt", CASES)
def test_engine_matches_golden(n, w, m, k, cols, mode, fmt):
    rng = np.random.default_rng(n * 1000 + m * 100 + k * 10 + cols)
    job = random_job(rng, m, k, cols, addend_mode=mode, requant=fmt is not None, out_fmt=fmt,
                     bias=bool(rng.integers(2)) or fmt is not None)
    engine = MatmulEngine(n, w, k_max=32)
    code, img = run_job(engine, job, seed=m + k)
    assert code == DoneCode.OK
    assert np.array_equal(img.result(img.data), job.golden())
    assert img.untouched_outside_c(img.data)


def test_engine_runs_back_to_back_commands():
    engine = MatmulEngine(2, 4, k_max=16)
    rng = np.random.default_rng(7)
    jobs = [random_job(rng, 3, 4, 5), random_job(rng, 2, 7, 2, requant=False, bias=False)]
    # Both jobs in one image: the second one after the first.
    img0 = jobs[0].image(4, seed=1)
    img1 = jobs[1].image(4, seed=2, base=img0.size)
    data = np.concatenate([img0.data, img1.data[img0.size:]])
    mem = MemoryModel(engine.mem, data, 4, rng=random.Random(3), req_stall=0.2, wr_stall=0.2)
    codes = []

    async def main(ctx):
        for img in (img0, img1):
            code, _ = await run_command(ctx, engine, img.command(), timeout=20_000)
            codes.append(code)

    run(engine, main, background=[mem], deadline_cycles=50_000)
    assert codes == [DoneCode.OK, DoneCode.OK]
    assert np.array_equal(img0.result(data), jobs[0].golden())
    assert np.array_equal(img1.result(data), jobs[1].golden())


@pytest.mark.parametrize("fields,code", [
    (dict(m=0, k=4, n=4), DoneCode.BAD_SHAPE),
    (dict(m=2, k=17, n=4), DoneCode.BAD_SHAPE),
    (dict(m=2, k=4, n=4, a_addr=2), DoneCode.BAD_ALIGN),
    (dict(m=2, k=4, n=4, c_stride=6), DoneCode.BAD_ALIGN),
    (dict(m=2, k=4, n=4, requant=1), DoneCode.BAD_MODE),
    (dict(m=2, k=4, n=4, addend=3), DoneCode.BAD_MODE),
])
def test_engine_rejects_bad_commands(fields, code):
    engine = MatmulEngine(2, 4, k_max=16)
    mem = MemoryModel(engine.mem, np.zeros(64, dtype=np.uint8), 4)
    got = {}

    async def main(ctx):
        got["code"], got["cycles"] = await run_command(ctx, engine, pack_command(**fields), timeout=100)

    run(engine, main, background=[mem], deadline_cycles=1000)
    assert got["code"] == code
    assert mem.reads == 0 and mem.writes == 0


def test_config_checks():
    check_config(8, 16)
    for bad in [(3, 16), (64, 16), (8, 12), (8, 256)]:
        with pytest.raises(ValueError):
            check_config(*bad)
    with pytest.raises(TypeError):
        check_config(8.0, 16)
    with pytest.raises(ValueError):
        pack_command(m=1 << 16)
    with pytest.raises(KeyError):
        pack_command(bogus=1)
    assert pack_command(zero_point=-1) >> command_layout()["zero_point"].offset == (1 << 32) - 1
