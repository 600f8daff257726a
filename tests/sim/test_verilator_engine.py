"""Whole matmuls through the Verilated engine and its C++ harness (bulk clocking, ctypes)."""

from __future__ import annotations

import numpy as np
import pytest

from celosia.hdl.params import AddendMode, ErrorCode, OutFormat
from celosia.sim.matmul_job import MatmulJob, random_job
from celosia.sw.numerics import ROW_EXP_MAX
from celosia.sim.verilator_engine import VerilatorEngine


def check_jobs(engine, jobs, *, stall=0.0, latency=5):
    for i, job in enumerate(jobs):
        img = job.image(engine.port_bytes, seed=i)
        assert img.size <= len(engine.mem)
        engine.mem[:] = 0
        engine.load(img.data)
        engine.port_model(latency=latency, seed=i + 1, req_stall=stall, resp_gap=stall,
                          wr_stall=stall)
        code, cycles, _ = engine.run_command(img.command())
        assert code == ErrorCode.OK
        m, k, n = job.shape
        assert np.array_equal(img.result(engine.mem), job.golden()), (i, m, k, n)
        assert img.untouched_outside_c(engine.mem[:img.size])


def shapes(rng, n, w, count):
    jobs = []
    for i in range(count):
        m = int(rng.integers(1, 4 * n))
        k = int(rng.integers(1, 5 * w))
        cols = int(rng.integers(1, 4 * max(n, w)))
        mode = AddendMode(i % 3)
        requant = i % 4 != 3
        job = random_job(rng, m, k, cols, addend_mode=mode, requant=requant,
                         out_fmt=OutFormat(i % 4) if requant else None,
                         row_shift=i % 2 == 1, b_transposed=i % 5 in (1, 2))
        if i % 3 != 0:
            # Small bias and addend, so that results are not all saturated.
            job.bias = rng.integers(-(1 << 12), 1 << 12, size=cols)
            if mode == AddendMode.ACC32:
                job.addend = rng.integers(-(1 << 14), 1 << 14, size=(m, cols))
            job.addend_shift = min(job.addend_shift, 2)
        jobs.append(job)
    return jobs


def test_verilator_engine_random_shapes():
    rng = np.random.default_rng(11)
    with VerilatorEngine(4, 8, mem_bytes=1 << 18) as engine:
        check_jobs(engine, shapes(rng, 4, 8, 12))
        check_jobs(engine, shapes(rng, 4, 8, 6), stall=0.4, latency=9)
        # -128 * -128 summed over K = 4096, raw int32 out.
        job = random_job(rng, 5, 4096, 6, a_unsigned=False, requant=False, bias=False)
        job.a[:] = -128
        job.b[:] = -128
        check_jobs(engine, [job])
        assert (job.golden() == 1 << 26).all()


def test_verilator_engine_row_shift_and_transposed_extremes():
    """K = 4096 of 255 * -128 with every row exponent, B transposed; and an attention head:
    Q_h @ K_h^T at 128 tokens with both operands column slices of a 128 x 1152 buffer."""
    rng = np.random.default_rng(12)
    with VerilatorEngine(4, 8, mem_bytes=1 << 20) as engine:
        m = ROW_EXP_MAX + 2
        job = random_job(rng, m, 4096, 5, a_unsigned=True, requant=False, bias=False,
                         row_shift=True, b_transposed=True)
        job.a[:] = 255
        job.a[-1] = 0
        job.b[:] = -128
        job.row_shift = np.array(list(range(ROW_EXP_MAX + 1)) + [ROW_EXP_MAX])
        check_jobs(engine, [job], stall=0.1)
        assert job.golden()[0, 0] == -255 * 128 * 4096
        for head in (0, 5):
            q = rng.integers(-128, 128, size=(128, 32))
            kh = rng.integers(-128, 128, size=(128, 32))
            scores = MatmulJob(a=q, b=kh.T, b_transposed=True,
                               views={"a": (32 * head, 1152), "b": (384 + 32 * head, 1152)})
            check_jobs(engine, [scores])


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 8, 16])
def test_verilator_engine_sizes(n):
    rng = np.random.default_rng(n)
    with VerilatorEngine(n, mem_bytes=1 << 20) as engine:
        check_jobs(engine, shapes(rng, n, engine.port_bytes, 6), stall=0.2)


def test_bad_command_is_rejected_without_memory_traffic():
    from celosia.hdl.params import pack_command
    with VerilatorEngine(4, 8, mem_bytes=1 << 18) as engine:
        before = engine.counters()
        code, _, _ = engine.run_command(pack_command(m=3, k=5000, n=4))
        assert code == ErrorCode.BAD_SHAPE
        after = engine.counters()
        assert after["reads"] == before["reads"] and after["writes"] == before["writes"]


def test_engine_verilog_passes_verilator_lint(tmp_path):
    import argparse
    import subprocess

    from celosia.hdl.engine import add_verilog_arguments, run_verilog
    from celosia.sim.verilator_build import verilator_env

    parser = argparse.ArgumentParser()
    add_verilog_arguments(parser)
    out = tmp_path / "engine.v"
    assert run_verilog(parser.parse_args(["--array", "8", "-o", str(out)])) == 0
    proc = subprocess.run(["verilator", "--lint-only", "-Wno-fatal", "--top-module",
                           "celosia_matmul", str(out)], env=verilator_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "%Error" not in proc.stderr
