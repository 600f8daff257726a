"""cocotb testbenches of the vector unit: one per operation plus the whole unit, with random
valid gaps and ready stalls, bit-exact against the golden numerics."""

import os

import cocotb
import numpy as np

from celosia.hdl.params import VEC_MAX_COLS
from celosia.hdl.vector import VectorUnit
from celosia.sim.vector_runner import (KINDS, OPS, drive_cocotb, layernorm_job, random_job,
                                       requant_job, residual_job, softmax_job)
from celosia.sw import numerics as nx


def _unit():
    return VectorUnit(int(os.environ["VECTOR_LANES"]),
                      max_cols=int(os.environ.get("VECTOR_MAX_COLS", VEC_MAX_COLS)),
                      decoder_ops=os.environ.get("VECTOR_DECODER", "0") == "1")


def _long() -> bool:
    return os.environ.get("VECTOR_LONG", "0") == "1"


async def _run_and_check(dut, unit, jobs, seed, valid_prob=0.7, ready_prob=0.6):
    result = await drive_cocotb(dut, unit, jobs, seed=seed, valid_prob=valid_prob,
                                ready_prob=ready_prob)
    for n, (job, out, exps) in enumerate(zip(jobs, result.outputs, result.exps)):
        if not np.array_equal(exps, job.expected_exp):
            raise AssertionError(f"job {n} ({job.op}): row exponents {exps.tolist()}, "
                                 f"want {job.expected_exp.tolist()}")
        if not np.array_equal(out, job.expected):
            bad = np.argwhere(out != job.expected)[:4]
            raise AssertionError(f"job {n} ({job.op}, {job.cmd}): mismatch at {bad.tolist()}: "
                                 f"got {[int(out[tuple(b)]) for b in bad]}, "
                                 f"want {[int(job.expected[tuple(b)]) for b in bad]}")
    dut._log.info("%d jobs bit-exact in %d cycles", len(jobs), result.cycles)


def _flavours(op, unit, rng, lengths):
    return [random_job(op, 2, cols, rng, kind) for kind in KINDS for cols in lengths]


@cocotb.test()
async def softmax(dut):
    unit = _unit()
    rng = np.random.default_rng(101)
    jobs = _flavours("softmax", unit, rng, (1, unit.lanes + 1))
    s = rng.integers(-40000, 40000, size=(5, 11))
    scale = nx.Dyadic.from_real(0.003)
    jobs += [softmax_job(s, scale, 0),              # row 0: fully masked but the diagonal
             softmax_job(s, scale, -2),             # fully masked rows give zeros
             softmax_job(np.array([[nx.INT32.lo, nx.INT32.hi] * 3]), nx.Dyadic(32767, 0)),
             random_job("softmax", 1, 512 if _long() else 96, rng, "random", causal_offset=40)]
    if _long():
        jobs += [random_job("softmax", 2, 512, rng, kind) for kind in KINDS]
    await _run_and_check(dut, unit, jobs, seed=1)


@cocotb.test()
async def layernorm(dut):
    unit = _unit()
    rng = np.random.default_rng(102)
    jobs = _flavours("layernorm", unit, rng, (1, unit.lanes + 1))
    gamma, beta = np.arange(1, 8) * 3001, np.arange(-3, 4) << 33
    jobs += [layernorm_job(np.full((1, 7), -77), gamma, beta, 14, nx.INT16),
             layernorm_job(np.array([[nx.INT32.hi] * 6 + [nx.INT32.lo]]), gamma, beta, 20, nx.INT8),
             random_job("layernorm", 1, 384, rng, "random")]
    if _long():
        jobs += [random_job("layernorm", 1, 1536, rng, kind) for kind in KINDS]
        # BERT-base's hidden width and the longest row (params.VEC_MAX_COLS).
        jobs += [random_job("layernorm", 2, 768, rng, "random"),
                 random_job("layernorm", 1, unit.max_cols, rng, "random")]
    await _run_and_check(dut, unit, jobs, seed=2)


@cocotb.test()
async def gelu(dut):
    unit = _unit()
    rng = np.random.default_rng(103)
    jobs = _flavours("gelu", unit, rng, (1, 2 * unit.lanes + 3))
    await _run_and_check(dut, unit, jobs, seed=3)


@cocotb.test()
async def gelu_rows(dut):
    """GELU_ROWS with inputs beyond Phi's table passed through: the table's end, the old int16
    saturation point (32.0), the int32 extremes, every range of shifts."""
    from celosia.sim.vector_runner import gelu_rows_job
    unit = _unit()
    rng = np.random.default_rng(107)
    jobs = _flavours("gelu_rows", unit, rng, (1, 2 * unit.lanes + 3))
    one = 1 << nx.GELU_IN_FRAC
    top = nx.INT32.hi - nx.GELU_OFFSET_STEPS
    x = np.array([[4 * one - 1, 4 * one, -4 * one - 1, 32 * one - 1, 32 * one, 40 * one,
                   1000 * one, nx.INT32.hi, nx.INT32.lo, top, top + 1, 0]])
    for shift in (8, 21, 22, 36, nx.SHIFT_MAX):
        for out in (nx.UINT8, nx.INT32):
            jobs.append(gelu_rows_job(x, nx.Dyadic(rng.integers(1, 1 << nx.MULT_BITS, size=12),
                                                   np.full(12, shift)), out))
    if _long():     # BERT-base's FFN width
        jobs += [random_job("gelu_rows", 1, 3072, rng, kind) for kind in ("random", "huge")]
    await _run_and_check(dut, unit, jobs, seed=7)


@cocotb.test()
async def requant(dut):
    unit = _unit()
    rng = np.random.default_rng(104)
    jobs = _flavours("requant", unit, rng, (1, 2 * unit.lanes + 3))
    x = np.array([[nx.INT32.lo, nx.INT32.hi, -1, 0, 1]])
    jobs += [requant_job(x, nx.Dyadic(np.full(5, 32767), np.arange(5) * 11), nx.INT8, -3)]
    await _run_and_check(dut, unit, jobs, seed=4)


@cocotb.test()
async def residual(dut):
    unit = _unit()
    rng = np.random.default_rng(105)
    jobs = _flavours("residual", unit, rng, (1, 2 * unit.lanes + 3))
    jobs += [residual_job(np.array([[nx.INT32.hi, nx.INT32.lo, 0]]),
                          np.array([[nx.INT16.hi, nx.INT16.lo, nx.INT16.lo]]), 16)]
    await _run_and_check(dut, unit, jobs, seed=5)


@cocotb.test()
async def whole_unit(dut):
    """Every operation interleaved back to back, rows of several batches in flight."""
    unit = _unit()
    rng = np.random.default_rng(106)
    jobs = []
    for k in range(14):
        op = OPS[k % len(OPS)] if k < len(OPS) else OPS[int(rng.integers(0, len(OPS)))]
        jobs.append(random_job(op, int(rng.integers(1, 4)), int(rng.integers(1, 3 * unit.lanes)),
                               rng, KINDS[k % len(KINDS)]))
    await _run_and_check(dut, unit, jobs, seed=6, valid_prob=0.9, ready_prob=0.8)


@cocotb.test()
async def decoder_ops(dut):
    """A unit built with ``decoder_ops``: the decoder's RESIDUAL32 (int32 residual lanes) over
    every row flavour and every shift at the int32 extremes, SOFTMAX_WIDE (prob_wide) over
    every flavour with masks and a flat row, SOFTMAX_DITHER (dither) over every flavour, masks
    and flat rows behind one dominant key, RMSNORM (rms) over every flavour with random
    epsilons and a row of -2**31, SILU_GATE (silu) over every flavour with both widths of up
    and the gates about the sigmoid table's end, WIDE_LO (lo_shift) at every row exponent,
    ROTARY (rot) at head widths with half a row a multiple of the lanes and not, then the encoder's int16 residual add,
    residual pre-add and 8-bit softmax on the same build, back to back."""
    from celosia.sim.vector_runner import (residual32_job, rmsnorm_job, rmsnorm_random_job,
                                           silu_gate_job, silu_gate_random_job, wide_lo_job,
                                           rotary_job,
                                           softmax_wide_job, with_residual)
    unit = _unit()
    assert unit.decoder_ops, "decoder_ops needs a unit built with decoder_ops"
    rng = np.random.default_rng(108)
    jobs = [residual32_job(rng, 2, cols, kind) for kind in KINDS
            for cols in (1, 2 * unit.lanes + 3)]
    ext = np.array([[nx.INT32.lo, nx.INT32.hi, nx.INT32.lo + 1, nx.INT32.hi - 1, 0, -1,
                     1 << 15, -(1 << 16), 1 << 30]])
    jobs += [residual_job(ext, ext[:, ::-1], shift) for shift in (0, 1, 15, 16)]
    jobs += [residual32_job(rng, 1, 96, "random")]
    jobs += _flavours("residual", unit, rng, (3,))
    x = np.array([[nx.INT32.hi] * 6 + [nx.INT32.lo]])
    r = np.array([[nx.INT16.hi, nx.INT16.lo, 0, -1, 1, nx.INT16.lo, nx.INT16.hi]])
    jobs += [with_residual(layernorm_job, x, r, 16, np.arange(1, 8) * 3001,
                           np.arange(-3, 4) << 33, 20, nx.INT16)]
    jobs += [softmax_wide_job(rng, 2, cols, kind) for kind in KINDS
             for cols in (1, unit.lanes + 1)]
    s = rng.integers(-40000, 40000, size=(5, 11))
    scale = nx.Dyadic.from_real(0.003)
    jobs += [softmax_job(s, scale, 0, wide=True), softmax_job(s, scale, -2, wide=True),
             softmax_job(s, scale, 1),
             softmax_job(np.zeros((1, 100), dtype=np.int64), scale, wide=True),
             softmax_wide_job(rng, 1, 512 if _long() else 96, "random",
                              causal_offset=40)]
    jobs += [softmax_wide_job(rng, 2, cols, kind, dither=True) for kind in KINDS
             for cols in (1, unit.lanes + 1)]
    # Flat rows behind one dominant key: a tail below half a step that the dither keeps.
    tail = rng.integers(-20, 20, size=(3, 100))
    tail[np.arange(3), rng.integers(0, 100, size=3)] = 60000
    jobs += [softmax_job(tail, nx.Dyadic.from_real(0.05), None, dither=True),
             softmax_job(tail, nx.Dyadic.from_real(0.05), 50, dither=True),
             softmax_job(s, scale, -2, dither=True),
             softmax_wide_job(rng, 1, 512 if _long() else 96, "random", causal_offset=40,
                              dither=True)]
    jobs += [rmsnorm_random_job(rng, 2, cols, kind) for kind in KINDS
             for cols in (1, unit.lanes + 1)]
    jobs += [rmsnorm_job(np.full((1, 96), nx.INT32.lo), rng.integers(-(1 << 19), 1 << 19, 96),
                         14, nx.INT16, (1 << 62) - 1),
             rmsnorm_job(np.zeros((1, 5), dtype=np.int64), [1] * 5, 0, nx.INT32, 0)]
    jobs += [silu_gate_random_job(rng, 2, cols, kind) for kind in KINDS
             for cols in (1, unit.lanes + 1)]
    edge = np.array([[nx.INT16.lo, nx.INT16.hi, -4097, -4096, -4095, 4095, 4096, 0, -1]])
    big = nx.Dyadic(np.full(9, (1 << nx.MULT_BITS) - 1), np.full(9, nx.ROW_EXP_MAX))
    jobs += [silu_gate_job(edge, edge[:, ::-1], big, nx.INT16, wide)
             for wide in (False, True)]
    ext = np.array([[nx.INT32.lo, nx.INT32.hi, 383, -385, 0, -1, 1 << 20]])
    jobs += [wide_lo_job(np.repeat(ext, nx.ROW_EXP_MAX + 1, 0), np.arange(nx.ROW_EXP_MAX + 1)),
             wide_lo_job(rng.integers(-(1 << 31), 1 << 31, size=(3, unit.lanes + 1)),
                         rng.integers(0, nx.ROW_EXP_MAX + 1, size=3))]
    for cols in (2, 2 * unit.lanes, 2 * unit.lanes + 2, 64):
        cos, sin = nx.rope_tables(10000.0, cols, 64)
        pos = rng.integers(0, 64, size=3)
        jobs.append(rotary_job(rng.integers(nx.INT16.lo, nx.INT16.hi, endpoint=True,
                                            size=(3, cols)), cos[pos], sin[pos]))
    await _run_and_check(dut, unit, jobs, seed=8)
