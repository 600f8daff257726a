"""The vector unit on the Amaranth simulator, bit-exact against the golden numerics."""

import numpy as np
import pytest

from celosia.hdl.vector import VectorUnit
from celosia.sim.vector_runner import (KINDS, OPS, layernorm_job, random_job, requant_job,
                                       residual_job, run_amaranth, softmax_job)
from celosia.sw import numerics as nx

LANES = 4


@pytest.fixture(scope="module")
def unit():
    return VectorUnit(LANES, max_cols=64)


def _check(jobs, result):
    for job, out, exps in zip(jobs, result.outputs, result.exps):
        np.testing.assert_array_equal(out, job.expected, err_msg=f"{job.op} {job.cmd}")
        np.testing.assert_array_equal(exps, job.expected_exp, err_msg=f"{job.op} row exponents")


@pytest.mark.parametrize("op", OPS)
def test_op_random_and_adversarial(unit, op):
    """Every row flavour and awkward lengths (1, below, at and above a beat) with gaps/stalls."""
    rng = np.random.default_rng(OPS.index(op))
    jobs = []
    for kind in KINDS:
        for cols in (1, 3, LANES, 2 * LANES + 1):
            jobs.append(random_job(op, 2, cols, rng, kind))
    result = run_amaranth(jobs, unit, seed=7, valid_prob=0.7, ready_prob=0.6)
    _check(jobs, result)


def test_softmax_masks(unit):
    rng = np.random.default_rng(3)
    scale = nx.Dyadic.from_real(0.05)
    s = rng.integers(-5000, 5000, size=(6, 9))
    jobs = [
        softmax_job(s, scale, 0),                      # row 0 sees only its diagonal
        softmax_job(s, scale, -2),                     # rows 0-1 fully masked: all zero
        softmax_job(s, scale, 3),
        softmax_job(np.full((3, 7), nx.INT32.lo), scale, None),
        softmax_job(np.array([[nx.INT32.lo, nx.INT32.hi, 0, nx.INT32.hi]]),
                    nx.Dyadic((1 << nx.MULT_BITS) - 1, 0), None),   # d * M at its widest
    ]
    _check(jobs, run_amaranth(jobs, unit, seed=2, valid_prob=0.5, ready_prob=0.5))


def test_layernorm_edges(unit):
    gamma = np.arange(1, 11) * 4099
    beta = np.arange(-5, 5) << 30
    jobs = [
        layernorm_job(np.full((2, 10), 123456), gamma, beta, 12, nx.INT16),     # variance 0
        layernorm_job(np.array([[nx.INT32.hi] * 9 + [nx.INT32.lo]]), gamma, beta, 20, nx.INT8),
        layernorm_job(np.array([[5]]), gamma[:1], beta[:1], 3, nx.INT32),       # one column
        layernorm_job(np.array([[-1, 0] * 5]), -gamma, beta, 30, nx.INT16),    # mean -1/2 floors
    ]
    _check(jobs, run_amaranth(jobs, unit, seed=3, valid_prob=0.6, ready_prob=0.7))


def test_requant_and_residual_edges(unit):
    x = np.array([[nx.INT32.lo, nx.INT32.hi, -1, 0, 1, 2, -3]])
    jobs = [
        requant_job(x, nx.Dyadic(np.full(7, (1 << nx.MULT_BITS) - 1), np.arange(7) * 7), nx.INT8, 5),
        requant_job(x, nx.Dyadic(np.arange(7), np.zeros(7, dtype=np.int64)), nx.INT32, 0),
        requant_job(x, nx.Dyadic(np.full(7, 3), np.full(7, nx.SHIFT_MAX)), nx.UINT8, 0),
        residual_job(x, np.array([[nx.INT16.lo, nx.INT16.hi, nx.INT16.hi, 0, -1, 7, nx.INT16.lo]]), 16),
        residual_job(x, np.array([[nx.INT16.hi, nx.INT16.lo, 0, 0, 1, 2, 3]]), 0),
    ]
    _check(jobs, run_amaranth(jobs, unit, seed=4, valid_prob=0.8, ready_prob=0.4))


def test_mixed_batches_back_to_back(unit):
    """The whole unit: every operation interleaved, rows of several batches in flight."""
    rng = np.random.default_rng(11)
    jobs = []
    for k in range(12):
        op = OPS[int(rng.integers(0, len(OPS)))]
        jobs.append(random_job(op, int(rng.integers(1, 4)), int(rng.integers(1, 20)), rng,
                               KINDS[k % len(KINDS)]))
    _check(jobs, run_amaranth(jobs, unit, seed=5, valid_prob=0.9, ready_prob=0.8))


@pytest.mark.parametrize("op", OPS)
def test_full_rate_rows_of_128(op):
    """Without gaps or stalls, rows of 128 stream at one beat a cycle once the pipe is full:
    the unit keeps up with an array emitting one row beat a cycle."""
    unit = VectorUnit(LANES, max_cols=128)
    rng = np.random.default_rng(1)
    rows, cols = 6, 128
    jobs = [random_job(op, rows, cols, rng)]
    result = run_amaranth(jobs, unit)
    _check(jobs, result)
    beats_per_row = cols // LANES
    # Output beats after the first row: (rows - 1) rows in at most 10% more cycles.
    first_row_end = result.out_cycles[beats_per_row - 1]
    steady = result.out_cycles[-1] - first_row_end
    assert steady <= (rows - 1) * beats_per_row * 1.1, (steady, result.out_cycles)


def test_long_rows():
    """Softmax rows of 512 and LayerNorm rows of 1536 at eight lanes."""
    unit = VectorUnit(8)
    rng = np.random.default_rng(9)
    jobs = [random_job("softmax", 2, 512, rng, "random", causal_offset=300),
            random_job("softmax", 1, 512, rng, "equal"),
            random_job("layernorm", 2, 1536, rng, "random"),
            random_job("layernorm", 1, 1536, rng, "extremes")]
    _check(jobs, run_amaranth(jobs, unit, seed=1, valid_prob=0.9, ready_prob=0.9))


def test_bert_base_rows():
    """The default 4-lane unit (rows up to params.VEC_MAX_COLS = 4096) on BERT-base's shapes:
    GELU_ROWS and REQUANT_ROWS rows of the FFN width 3072, LayerNorm rows of the hidden width
    768 and one of 4096 (past the old 1536 limit), softmax over 512 keys; bit-exact."""
    from celosia.hdl.params import VEC_MAX_COLS
    from celosia.sim.vector_runner import gelu_rows_job

    unit = VectorUnit(LANES)
    assert unit.max_cols == VEC_MAX_COLS >= 4096
    rng = np.random.default_rng(23)
    scale = nx.Dyadic(rng.integers(1 << 14, 1 << 15, size=3072), rng.integers(30, 38, size=3072))
    x = rng.integers(-(8 << 10), 8 << 10, size=(1, 3072))
    x[0, rng.integers(0, 3072, size=8)] = 200 << 10          # a few inputs beyond GELU's table
    jobs = [gelu_rows_job(x, scale, nx.UINT8),
            random_job("requant_rows", 1, 3072, rng, "random"),
            random_job("layernorm", 2, 768, rng, "random"),
            random_job("layernorm", 1, 4096, rng, "extremes"),
            random_job("softmax", 1, 512, rng, "random")]
    _check(jobs, run_amaranth(jobs, unit, seed=5, valid_prob=0.95, ready_prob=0.95))


def test_several_finishers_keep_row_order():
    """Short rows with three finishers in flight (and small FIFOs) come back in order."""
    unit = VectorUnit(LANES, max_cols=16, finishers=3, fifo_depth=8, token_depth=4)
    rng = np.random.default_rng(21)
    jobs = []
    for k in range(10):
        op = ("softmax", "layernorm")[k % 2] if k < 8 else OPS[k % len(OPS)]
        jobs.append(random_job(op, int(rng.integers(2, 6)), int(rng.integers(1, 9)), rng,
                               KINDS[k % len(KINDS)]))
    _check(jobs, run_amaranth(jobs, unit, seed=8, valid_prob=0.95, ready_prob=0.7))


@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_other_lane_counts(lanes):
    """Lane counts that are not the default, including ones that are not powers of two."""
    unit = VectorUnit(lanes, max_cols=40)
    rng = np.random.default_rng(lanes)
    jobs = [random_job(op, 2, cols, rng, kind)
            for op in OPS for cols, kind in ((1, "extremes"), (lanes + 2, "random"), (40, "huge"))]
    _check(jobs, run_amaranth(jobs, unit, seed=lanes, valid_prob=0.8, ready_prob=0.8))


def test_busy_until_the_last_row_leaves(unit):
    """``busy`` rises with the first command and falls only after the last output beat."""
    from amaranth.sim import Simulator

    from celosia.sim.vector_runner import _Driver

    rng = np.random.default_rng(4)
    jobs = [random_job("layernorm", 2, 9, rng), random_job("softmax", 1, 5, rng)]
    drv = _Driver(unit, jobs, 1, 0.8, 0.7, 10_000)
    trace = []

    async def bench(ctx):
        idle_after = 0
        while idle_after < 40:
            d = drv.drive() if not drv.done else {"cmd_valid": 0, "i_valid": 0, "p_valid": 0,
                                                  "o_ready": 1, "cmd": None, "i": None, "p": None}
            for port, key in ((unit.cmd, "cmd"), (unit.i, "i"), (unit.params, "p")):
                ctx.set(port.valid, d[f"{key}_valid"])
                if d[key] is not None:
                    ctx.set(port.payload.as_value(), d[key])
            ctx.set(unit.o.ready, d["o_ready"])
            o_valid = ctx.get(unit.o.valid)
            trace.append((ctx.get(unit.busy), o_valid and d["o_ready"],
                          d["cmd_valid"] and ctx.get(unit.cmd.ready)))
            if not drv.done:
                drv.observe(ctx.get(unit.cmd.ready), ctx.get(unit.i.ready), o_valid,
                            ctx.get(unit.o.payload.as_value()) if o_valid else None)
            else:
                idle_after += 1
            await ctx.tick()

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    first_cmd = min(k for k, (_, _, cmd) in enumerate(trace) if cmd)
    last_out = max(k for k, (_, out, _) in enumerate(trace) if out)
    assert not any(busy for busy, _, _ in trace[:first_cmd + 1])
    assert all(busy for busy, _, _ in trace[first_cmd + 1:last_out + 1])
    assert not any(busy for busy, _, _ in trace[last_out + 1:])


def test_full_rate_across_batches():
    """Attention heads as separate softmax commands follow each other without a bubble."""
    unit = VectorUnit(LANES, max_cols=64)
    rng = np.random.default_rng(2)
    jobs = [random_job("softmax", 3, 32, rng) for _ in range(4)]
    result = run_amaranth(jobs, unit)
    _check(jobs, result)
    beats_per_row = 32 // LANES
    steady = result.out_cycles[-1] - result.out_cycles[beats_per_row - 1]
    assert steady == (4 * 3 - 1) * beats_per_row, result.out_cycles


def test_rows_requantisation_edges(unit):
    """requantize_rows: every exponent 0..8 (peaks just at and above each threshold), peaks past
    2**41, shift 8 (no static rounding), negative ties, zero rows, every output range."""
    from celosia.sim.vector_runner import gelu_rows_job, requant_rows_job

    jobs = []
    for out in (nx.INT8, nx.UINT8, nx.INT16, nx.INT32):
        for k in range(nx.ROW_EXP_MAX + 1):
            for extra in (0, 1):
                peak = ((out.hi << k) >> 0) + extra * (1 << max(k - 1, 0))
                x = nx.saturate(np.array([[peak, -peak, 3, -(1 << max(k - 1, 0)), 0]]), nx.INT32)
                jobs.append(requant_rows_job(x, nx.Dyadic(np.full(5, 1), np.full(5, 8)), out))
        x = np.array([[nx.INT32.lo, nx.INT32.hi, -1, 1, 0, -2]])
        big = nx.Dyadic(np.full(6, (1 << nx.MULT_BITS) - 1), np.full(6, 8))
        jobs.append(requant_rows_job(x, big, out))
        jobs.append(requant_rows_job(np.zeros((2, 6), dtype=np.int64), big, out))
        g = np.array([[nx.INT16.lo, -770, -769, 0, 1, 4095, 4096, nx.INT16.hi, nx.INT32.hi]])
        jobs.append(gelu_rows_job(g, nx.Dyadic(np.full(9, 20000), np.full(9, 30)), out))
        jobs.append(gelu_rows_job(g, nx.Dyadic(np.full(9, (1 << nx.MULT_BITS) - 1), np.full(9, 8)), out))
    _check(jobs, run_amaranth(jobs, unit, seed=12, valid_prob=0.8, ready_prob=0.7))


def test_gelu_rows_beyond_the_table(unit):
    """GELU_ROWS passes inputs beyond Phi's table through (x + offset, not GELU(32)): values
    at and around the table's end (4.0), the old int16 saturation (32.0), the int32 extremes
    and the cap of x + offset; every shift of the factor (8..47, the left-shifted products)
    and every output range, exact against numerics.gelu_rows."""
    from celosia.sim.vector_runner import gelu_rows_job

    one = 1 << nx.GELU_IN_FRAC
    end = nx.GELU_RANGE * one
    top = nx.INT32.hi - nx.GELU_OFFSET_STEPS
    rows = np.array([
        [end - 1, end, end + 1, -end, -end - 1, 32 * one - 1, 32 * one, 32 * one + 1, 0],
        [nx.INT32.hi, nx.INT32.lo, top, top + 1, top - 1, 1 << 30, -(1 << 30), 1 << 21, 77],
        [40 * one, 100 * one, 1000 * one, 3 * one, -3 * one, 5 * one, 64 * one, 1, -1],
    ])
    rng = np.random.default_rng(41)
    jobs = []
    for out in (nx.INT8, nx.UINT8, nx.INT16, nx.INT32):
        for shift in (8, 9, 21, 22, 30, 40, nx.SHIFT_MAX):
            mult = rng.integers(0, 1 << nx.MULT_BITS, size=9)
            mult[:2] = ((1 << nx.MULT_BITS) - 1, 1)
            jobs.append(gelu_rows_job(rows, nx.Dyadic(mult, np.full(9, shift)), out))
    # Random large rows at a model-like factor.
    x = rng.integers(-(1 << 22), 1 << 22, size=(3, 9)) * rng.choice([1, 1 << 8], size=(3, 9))
    jobs.append(gelu_rows_job(nx.saturate(x, nx.INT32),
                              nx.Dyadic(rng.integers(1 << 14, 1 << 15, size=9),
                                        rng.integers(28, 40, size=9)), nx.UINT8))
    _check(jobs, run_amaranth(jobs, unit, seed=14, valid_prob=0.8, ready_prob=0.7))


@pytest.mark.parametrize("op", ["layernorm", "requant_rows", "gelu_rows", "softmax", "requant"])
def test_residual_pre_add(unit, op):
    """``add_residual``: x = residual_add(x, r, res_shift) before the operation, saturating."""
    from celosia.sim.vector_runner import (gelu_rows_job, requant_rows_job, with_residual)

    rng = np.random.default_rng(31)
    jobs = []
    for kind, cols in (("random", 9), ("extremes", 4), ("huge", 1)):
        x = _values_for(rng, (3, cols), kind)
        r = rng.choice([nx.INT16.lo, nx.INT16.hi, 0, -1, 1234], size=(3, cols))
        shift = int(rng.integers(0, 17))
        if op == "layernorm":
            job = with_residual(layernorm_job, x, r, shift, rng.integers(-(1 << 19), 1 << 19, size=cols),
                                rng.integers(-(1 << 39), 1 << 39, size=cols), 20, nx.INT16)
        elif op == "softmax":
            job = with_residual(softmax_job, x, r, shift, nx.Dyadic(9000, 20))
        elif op == "requant":
            job = with_residual(requant_job, x, r, shift,
                                nx.Dyadic(np.full(cols, 12345), np.full(cols, 30)), nx.INT8, 3)
        else:
            make = requant_rows_job if op == "requant_rows" else gelu_rows_job
            job = with_residual(make, x, r, shift, nx.Dyadic(np.full(cols, 20000), np.full(cols, 33)),
                                nx.INT8 if op == "requant_rows" else nx.UINT8)
        jobs.append(job)
    _check(jobs, run_amaranth(jobs, unit, seed=13, valid_prob=0.8, ready_prob=0.8))


def _values_for(rng, shape, kind):
    from celosia.sim.vector_runner import _values
    return _values(rng, shape, kind)


# --- a unit built for the decoder ops (Sizing.decoder_ops): int32 residual lanes ----------------

@pytest.fixture(scope="module")
def dec_unit():
    return VectorUnit(LANES, max_cols=64, decoder_ops=True)


def test_residual_lanes_follow_the_flag(unit, dec_unit):
    """int16 residual lanes without the flag (the encoder's unit, unchanged), int32 with it."""
    assert unit.in_layout["residual"].shape.elem_shape.width == 16
    assert dec_unit.in_layout["residual"].shape.elem_shape.width == 32


def test_int32_residual_add(dec_unit):
    """RESIDUAL32 (the unit's RESIDUAL with an int32 residual): every row flavour on both
    operands, every residual shift at the int32 extremes (r << 16 up to 2**47: the clamp in
    front of the saturating add), rows below, at and above a beat, gaps and stalls."""
    from celosia.sim.vector_runner import residual32_job, residual_job

    rng = np.random.default_rng(41)
    jobs = [residual32_job(rng, 2, cols, kind) for kind in KINDS
            for cols in (1, 3, LANES, 2 * LANES + 1)]
    ext = [nx.INT32.lo, nx.INT32.hi, nx.INT32.lo + 1, nx.INT32.hi - 1, 0, -1, 1, 1 << 15,
           -(1 << 15), (1 << 16) - 1, -(1 << 16), 1 << 30]
    x = np.array([ext, ext[::-1], [0] * len(ext)])
    r = np.array([ext[::-1], ext, ext])
    jobs += [residual_job(x, r, shift) for shift in (0, 1, 2, 15, 16)]
    jobs += [residual32_job(rng, 1, 64, "random")]
    _check(jobs, run_amaranth(jobs, dec_unit, seed=41, valid_prob=0.7, ready_prob=0.6))


@pytest.mark.parametrize("op", ["layernorm", "softmax", "requant_rows", "residual"])
def test_decoder_unit_runs_the_encoder_ops(dec_unit, op):
    """The encoder's ops (int16 residuals sign-extended into the int32 lanes) on the decoder
    build, the residual pre-add included."""
    from celosia.sim.vector_runner import with_residual

    rng = np.random.default_rng(42 + OPS.index(op))
    jobs = [random_job(op, 2, cols, rng, kind) for kind in ("random", "extremes")
            for cols in (3, 2 * LANES + 1)]
    if op == "layernorm":
        x = _values_for(rng, (2, 7), "extremes")
        r = rng.choice([nx.INT16.lo, nx.INT16.hi, 0, -1], size=(2, 7))
        jobs.append(with_residual(layernorm_job, x, r, 16, np.arange(1, 8) * 3001,
                                  np.arange(-3, 4) << 33, 20, nx.INT16))
    _check(jobs, run_amaranth(jobs, dec_unit, seed=43, valid_prob=0.8, ready_prob=0.7))


def test_softmax_wide(dec_unit):
    """SOFTMAX_WIDE (the unit's softmax with prob_wide: R = floor(32767 * 2**24 / sum), 15-bit
    probabilities): every row flavour, masks (a row fully masked, one sees its diagonal only),
    the widest d * M, a row of 64, interleaved with the 8-bit softmax on the same build."""
    from celosia.sim.vector_runner import softmax_wide_job

    rng = np.random.default_rng(44)
    jobs = [softmax_wide_job(rng, 2, cols, kind) for kind in KINDS
            for cols in (1, 3, LANES, 2 * LANES + 1)]
    s = rng.integers(-5000, 5000, size=(6, 9))
    scale = nx.Dyadic.from_real(0.05)
    jobs += [softmax_job(s, scale, 0, wide=True), softmax_job(s, scale, -2, wide=True),
             softmax_job(s, scale, 3),
             softmax_job(np.full((3, 7), nx.INT32.lo), scale, None, wide=True),
             softmax_job(np.array([[nx.INT32.lo, nx.INT32.hi, 0, nx.INT32.hi]]),
                         nx.Dyadic((1 << nx.MULT_BITS) - 1, 0), None, wide=True),
             softmax_job(np.zeros((2, 64), dtype=np.int64), scale, None, wide=True),  # flat: x = 6
             softmax_wide_job(rng, 2, 64, "random", causal_offset=20)]
    _check(jobs, run_amaranth(jobs, dec_unit, seed=44, valid_prob=0.7, ready_prob=0.6))


def _rms_edge_jobs(rng, cols_long):
    """RMSNORM rows at the edges of numerics.rmsnorm: peaks at powers of two of either sign
    (the pre-shift's bit length, -2**31 whose |x| needs 32 bits), all-zero rows, rows where
    the epsilon dominates (k_eps from -30 to 1), the saturating outputs and gamma's extremes."""
    from celosia.sim.vector_runner import rmsnorm_job

    g_hi = (1 << 20) - 1
    jobs = []
    for p in (0, 1, 22, 23, 24, 30, 31):
        for sign in (1, -1):
            v = sign * (1 << p) if p < 31 or sign < 0 else nx.INT32.hi
            x = np.clip([[v, 0, -1, 1, v // 3, 5], [-v, v, 0, 0, 0, 0]], nx.INT32.lo, nx.INT32.hi)
            jobs.append(rmsnorm_job(x, [g_hi, -g_hi, 1, 4096, -3, 0], 12, nx.INT16))
    jobs.append(rmsnorm_job(np.zeros((2, 5), dtype=np.int64), [g_hi] * 5, 0, nx.INT32, 0))
    jobs.append(rmsnorm_job(np.zeros((1, 3), dtype=np.int64), [g_hi] * 3, 0, nx.INT32,
                            (1 << 62) - 1))
    ext = np.array([[nx.INT32.lo, nx.INT32.hi, nx.INT32.lo + 1, -1, 0, 1, nx.INT32.hi - 1]])
    for eps in (1, 2, 3, (1 << 40) + 7, 1 << 59, (1 << 60) + 1, 1 << 61, (1 << 62) - 1):
        jobs.append(rmsnorm_job(rng.integers(-1000, 1000, size=(1, 7)), [g_hi] * 7, 20,
                                nx.INT8, eps))
        jobs.append(rmsnorm_job(ext, rng.integers(-g_hi, g_hi + 1, size=7), 3, nx.INT16, eps))
    jobs.append(rmsnorm_job(ext, [g_hi, -g_hi] * 3 + [g_hi], 0, nx.INT32))
    jobs.append(rmsnorm_job(ext, [g_hi, -g_hi] * 3 + [g_hi], nx.SHIFT_MAX, nx.INT8, 12345))
    x = rng.integers(nx.INT32.lo, nx.INT32.hi, endpoint=True, size=(2, cols_long))
    x[1] = nx.INT32.lo                    # a long row of -2**31: |z| at its bound
    jobs.append(rmsnorm_job(x, rng.integers(-g_hi, g_hi + 1, size=cols_long), 16, nx.INT32))
    return jobs


def test_rmsnorm(dec_unit):
    """RMSNORM (the unit's LayerNorm with rms): every row flavour with random gamma, shift,
    output format and epsilon at awkward lengths, the edges of _rms_edge_jobs, a row of 64,
    interleaved with LayerNorm on the same build, gaps and stalls."""
    from celosia.sim.vector_runner import rmsnorm_random_job

    rng = np.random.default_rng(45)
    jobs = [rmsnorm_random_job(rng, 2, cols, kind) for kind in KINDS
            for cols in (1, 3, LANES, 2 * LANES + 1)]
    jobs += _rms_edge_jobs(rng, 64)
    jobs.insert(5, random_job("layernorm", 2, 2 * LANES + 1, rng, "extremes"))
    _check(jobs, run_amaranth(jobs, dec_unit, seed=45, valid_prob=0.7, ready_prob=0.6))


def test_silu_gate(dec_unit):
    """SILU_GATE (the unit's REQUANT_ROWS with silu): every row flavour of gate and up, both
    widths of up (a narrow up beyond int8 saturated), random per-column scales and output
    formats at awkward lengths; the edges (gates at the int16 extremes and the table's end,
    up at its extremes, the largest multiplier with the smallest shift); interleaved with
    REQUANT_ROWS with a residual pre-add on the same build, gaps and stalls."""
    from celosia.sim.vector_runner import (requant_rows_job, silu_gate_job, silu_gate_random_job,
                                           with_residual)

    rng = np.random.default_rng(47)
    jobs = [silu_gate_random_job(rng, 2, cols, kind) for kind in KINDS
            for cols in (1, 3, LANES, 2 * LANES + 1)]
    edge = [nx.INT16.lo, nx.INT16.hi, -4097, -4096, -4095, 4095, 4096, 0, -1, 1, 256, -256]
    gate = np.array([edge, edge[::-1]])
    big = nx.Dyadic(np.full(len(edge), (1 << nx.MULT_BITS) - 1), np.full(len(edge), nx.ROW_EXP_MAX))
    for wide, hi in ((False, nx.INT8.hi), (True, nx.INT16.hi)):
        up = np.array([[hi, -hi - 1] * (len(edge) // 2), [-hi - 1, hi] * (len(edge) // 2)])
        for out in (nx.INT8, nx.INT16, nx.INT32):
            jobs.append(silu_gate_job(gate, up, big, out, wide))
        jobs.append(silu_gate_job(gate, up, nx.Dyadic(1, nx.SHIFT_MAX), nx.INT8, wide))
    jobs.append(silu_gate_random_job(rng, 1, 64, "random"))
    jobs.insert(3, with_residual(requant_rows_job, rng.integers(-5000, 5000, size=(2, 5)),
                                 rng.integers(-3000, 3000, size=(2, 5)), 4,
                                 nx.Dyadic(20000, 20), nx.INT8))
    _check(jobs, run_amaranth(jobs, dec_unit, seed=47, valid_prob=0.7, ready_prob=0.6))


def test_wide_lo(dec_unit):
    """WIDE_LO (the unit's REQUANT with lo_shift): round_shift(x, 8 + e) per row for every row
    exponent 0..ROW_EXP_MAX, int32 extremes and every row flavour, ties of the rounding
    (x = (2k + 1) * 2**(7 + e)), with the residual pre-add, one-column and long rows,
    interleaved with REQUANT on the same build, gaps and stalls."""
    from celosia.sim.vector_runner import requant_job, wide_lo_job, with_residual

    rng = np.random.default_rng(48)
    E = nx.ROW_EXP_MAX
    ext = [nx.INT32.lo, nx.INT32.hi, nx.INT32.lo + 1, nx.INT32.hi - 1, 0, -1, 1, 127, 128, -128,
           -129, 1 << 20]
    x = np.array([ext] * (E + 1))
    jobs = [wide_lo_job(x, np.arange(E + 1))]
    ties = np.array([[(2 * k + 1) << (7 + e) for k in range(-4, 4)] for e in range(E + 1)])
    jobs.append(wide_lo_job(ties, np.arange(E + 1)))
    for kind in KINDS:
        for cols in (1, 3, LANES, 2 * LANES + 1):
            rows = int(rng.integers(1, 4))
            jobs.append(wide_lo_job(_values_of(rng, (rows, cols), kind),
                                    rng.integers(0, E + 1, size=rows)))
    jobs.append(with_residual(wide_lo_job, rng.integers(-(1 << 31), 1 << 31, size=(3, 7)),
                              rng.integers(-(1 << 15), 1 << 15, size=(3, 7)), 16,
                              np.array([0, E, 3])))
    jobs.append(wide_lo_job(rng.integers(-(1 << 31), 1 << 31, size=(2, 64)), np.array([E, 1])))
    jobs.insert(4, requant_job(rng.integers(-5000, 5000, size=(2, 5)),
                               nx.Dyadic(np.full(5, 20000), np.full(5, 20)), nx.INT8))
    _check(jobs, run_amaranth(jobs, dec_unit, seed=48, valid_prob=0.7, ready_prob=0.6))


def test_rotary(dec_unit):
    """ROTARY (the unit's RESIDUAL with rot, every row twice): head widths 2 to 64 (half a row
    a multiple of the lanes or not: the partner in another lane), int16 extremes with the
    tables' extremes (+-2**14, the largest products), the real tables at random positions,
    one-row and many-row commands, interleaved with RESIDUAL on the same build, gaps and
    stalls."""
    from celosia.sim.vector_runner import residual_job, rotary_job

    rng = np.random.default_rng(49)
    jobs = []
    for cols in (2, 4, 6, 2 * LANES, 2 * LANES + 2, 3 * LANES + 2, 64):
        rows = int(rng.integers(1, 5))
        cos, sin = nx.rope_tables(10000.0, cols, 100)
        pos = rng.integers(0, 100, size=rows)
        x = rng.integers(nx.INT16.lo, nx.INT16.hi, endpoint=True, size=(rows, cols))
        jobs.append(rotary_job(x >> int(rng.integers(0, 12)), cos[pos], sin[pos]))
    one = 1 << nx.ROPE_TRIG_BITS
    for cols in (2, 10):
        ext = np.array([[nx.INT16.lo, nx.INT16.hi] * (cols // 2), [nx.INT16.hi] * cols,
                        [nx.INT16.lo] * cols])
        trig = np.array([[one, -one] * (cols // 4) + [one] * (cols // 2 % 2)] * 3)
        jobs.append(rotary_job(ext, trig, trig))
        jobs.append(rotary_job(ext, trig, -trig))
    jobs.insert(2, residual_job(rng.integers(-5000, 5000, size=(2, 7)),
                                rng.integers(-3000, 3000, size=(2, 7)), 3))
    _check(jobs, run_amaranth(jobs, dec_unit, seed=49, valid_prob=0.7, ready_prob=0.6))


def _values_of(rng, shape, kind):
    from celosia.sim.vector_runner import _values
    return _values(rng, shape, kind)


def test_dither_carry_is_the_dithered_rounding():
    """The unit's SOFTMAX_DITHER rounding (hdl/vector.py, stage 3): floor(p / 2**s) plus the
    carry of p[s-9 : s] + 2k + 1 out of 9 bits, the window taken from p[_DITHER_LO:24] shifted
    by x, is (p + ((2k + 1) << (s - 9))) >> s for every row exponent x (s = 24 - x) and
    threshold k, at every p around each threshold and at random."""
    from celosia.hdl.vector import _DITHER_LO, ROW_EXP_MAX

    rng = np.random.default_rng(45)
    k = np.arange(1 << nx.DITHER_BITS, dtype=np.int64)[:, None]
    for x in range(ROW_EXP_MAX + 1):
        s = nx.RECIP_BITS - x
        d = (2 * k + 1) << (s - nx.DITHER_BITS - 1)
        base = rng.integers(0, 1 << 17, size=(1, 64)) << s
        # Around each threshold (p's fraction 2**s - d plus -2..1), random fractions, 0.
        p = np.concatenate([base + (1 << s) - d + off for off in (-2, -1, 0, 1)]
                           + [base + rng.integers(0, 1 << s, size=(256, 64)), 0 * k], axis=1)
        window = (((p >> _DITHER_LO) & ((1 << (nx.RECIP_BITS - _DITHER_LO)) - 1)) << x
                  >> ROW_EXP_MAX) & ((1 << (nx.DITHER_BITS + 1)) - 1)
        carry = (window + 2 * k + 1) >> (nx.DITHER_BITS + 1)
        np.testing.assert_array_equal((p >> s) + carry, (p + d) >> s, err_msg=f"x = {x}")


def _dominant(rng, rows, cols, big=60000):
    """Rows of one dominant key over a flat tail (the case the dither is for)."""
    s = rng.integers(-20, 20, size=(rows, cols))
    s[np.arange(rows), rng.integers(0, cols, size=rows)] = big
    return s


def test_softmax_dither(dec_unit):
    """SOFTMAX_DITHER (the unit's softmax with dither: each column rounded at its threshold
    (2k_j + 1) / 512, k_j from the column's Weyl phase): every row flavour and length (1,
    below, at and above a beat), long flat rows with one dominant key (tails below half a
    step that dither keeps), masks (fully masked rows, the diagonal only), the widest d * M,
    a flat row of 64 (x = 6), interleaved with SOFTMAX and SOFTMAX_WIDE on the same build (the
    phases restart at every row)."""
    from celosia.sim.vector_runner import softmax_wide_job

    rng = np.random.default_rng(46)
    jobs = [softmax_wide_job(rng, 2, cols, kind, dither=True) for kind in KINDS
            for cols in (1, 3, LANES, 2 * LANES + 1)]
    s = rng.integers(-5000, 5000, size=(6, 9))
    scale = nx.Dyadic.from_real(0.05)
    tail = _dominant(rng, 3, 64)
    jobs += [softmax_job(tail, scale, None, dither=True),
             softmax_job(tail, scale, None),
             softmax_job(s, scale, 0, dither=True), softmax_job(s, scale, -2, dither=True),
             softmax_job(s, scale, 3, wide=True),
             softmax_job(_dominant(rng, 4, 37), scale, 30, dither=True),
             softmax_job(np.full((3, 7), nx.INT32.lo), scale, None, dither=True),
             softmax_job(np.array([[nx.INT32.lo, nx.INT32.hi, 0, nx.INT32.hi]]),
                         nx.Dyadic((1 << nx.MULT_BITS) - 1, 0), None, dither=True),
             softmax_job(np.zeros((2, 64), dtype=np.int64), scale, None, dither=True),
             softmax_wide_job(rng, 2, 64, "random", causal_offset=20, dither=True),
             softmax_job(s, scale, None)]
    # The dominant-key rows keep some of their tail (else the test would not tell the modes apart).
    assert jobs[-11].expected.sum() > jobs[-10].expected.sum()
    _check(jobs, run_amaranth(jobs, dec_unit, seed=46, valid_prob=0.7, ready_prob=0.6))


def test_softmax_dither_rows_of_512():
    """SOFTMAX_DITHER over 512 keys at eight lanes on the encoder's unit (no decoder ops: the
    dithered softmax is in every build): a flat tail behind one dominant key (the phase over 64
    beats), a causal row."""
    unit = VectorUnit(8, max_cols=512)
    rng = np.random.default_rng(47)
    scale = nx.Dyadic.from_real(0.05)
    jobs = [softmax_job(_dominant(rng, 1, 512), scale, None, dither=True),
            softmax_job(rng.integers(-3000, 3000, size=(2, 512)), scale, 300, dither=True)]
    _check(jobs, run_amaranth(jobs, unit, seed=47, valid_prob=0.9, ready_prob=0.9))
