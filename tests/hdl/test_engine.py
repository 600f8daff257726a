"""The whole engine in Amaranth's simulator on small shapes, with a stalling memory."""

import random

import numpy as np
import pytest

from celosia.hdl.engine import MatmulEngine
from celosia.hdl.params import (AddendMode, ErrorCode, OutFormat, check_config, command_layout,
                                pack_command, view_aligned)
from celosia.sim.matmul_job import MatmulJob, random_job
from celosia.sw.numerics import ROW_EXP_MAX, Dyadic
from celosia.sim.pysim import MemoryModel, run, run_command, run_commands


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
    assert code == ErrorCode.OK
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
    assert codes == [ErrorCode.OK, ErrorCode.OK]
    assert np.array_equal(img0.result(data), jobs[0].golden())
    assert np.array_equal(img1.result(data), jobs[1].golden())


@pytest.mark.parametrize("m", [1, 3])
def test_engine_writes_no_beat_past_c(m):
    """A tile's row longer than a beat (N = 2 int32 results, W = 4) and a single column: the
    beat past C's last column holds nothing of C and is not written (it was, with every
    strobe low, at an address past C). C ends where the memory does, so such a beat would be
    an access out of bounds."""
    rng = np.random.default_rng(5 + m)
    job = random_job(rng, m, 4, 1, requant=False, bias=False)
    engine = MatmulEngine(2, 4, k_max=16)
    img = job.image(4, seed=1)
    c_addr, stride, rows, row_bytes = img.regions["c"]
    img.data = img.data[:c_addr + (rows - 1) * stride + row_bytes].copy()
    mem = MemoryModel(engine.mem, img.data, 4, rng=random.Random(3), req_stall=0.2,
                      wr_stall=0.2)
    out = {}

    async def main(ctx):
        out["code"], _ = await run_command(ctx, engine, img.command(), timeout=20_000)

    run(engine, main, background=[mem], deadline_cycles=50_000)
    assert out["code"] == ErrorCode.OK
    assert np.array_equal(img.result(img.data), job.golden())
    assert mem.writes == m          # one beat per row


@pytest.mark.parametrize("fields,code", [
    (dict(m=0, k=4, n=4), ErrorCode.BAD_SHAPE),
    (dict(m=2, k=17, n=4), ErrorCode.BAD_SHAPE),
    (dict(m=2, k=4, n=4, a_addr=2), ErrorCode.BAD_ALIGN),
    (dict(m=2, k=4, n=4, c_stride=6), ErrorCode.BAD_ALIGN),
    (dict(m=2, k=4, n=4, requant=1), ErrorCode.BAD_MODE),
    (dict(m=2, k=4, n=4, addend=3), ErrorCode.BAD_MODE),
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


def tame(rng, job):
    """Bias and addend small next to A @ B, so that results are not all saturated (the
    saturating extremes have their own tests)."""
    m, _, cols = job.shape
    if job.bias is not None:
        job.bias = rng.integers(-(1 << 12), 1 << 12, size=cols)
    if job.addend_mode == AddendMode.ACC32:
        job.addend = rng.integers(-(1 << 14), 1 << 14, size=(m, cols))
    elif job.addend_mode == AddendMode.RESIDUAL16:
        job.addend_shift = min(job.addend_shift, 2)
    return job


ROW_SHIFT_CASES = [
    # array, port bytes, M, K, N, b_transposed, row_shift, addend mode, output format
    (2, 4, 5, 7, 6, False, True, AddendMode.NONE, OutFormat.INT8),
    (2, 8, 7, 3, 9, True, False, AddendMode.NONE, None),
    (4, 4, 9, 13, 10, True, True, AddendMode.ACC32, OutFormat.INT16),
    (4, 8, 3, 20, 5, True, True, AddendMode.RESIDUAL16, OutFormat.INT32),
    (4, 16, 13, 9, 37, True, True, AddendMode.NONE, OutFormat.UINT8),
    (4, 16, 6, 32, 20, False, True, AddendMode.ACC32, None),
    (2, 4, 1, 1, 1, True, True, AddendMode.NONE, None),
]


@pytest.mark.parametrize("n,w,m,k,cols,bt,rs,mode,fmt", ROW_SHIFT_CASES)
def test_engine_row_shift_and_transposed_b(n, w, m, k, cols, bt, rs, mode, fmt):
    rng = np.random.default_rng(n * 1000 + m * 100 + k * 10 + cols + 7)
    job = random_job(rng, m, k, cols, addend_mode=mode, requant=fmt is not None, out_fmt=fmt,
                     bias=True, row_shift=rs, b_transposed=bt)
    tame(rng, job)
    engine = MatmulEngine(n, w, k_max=32)
    code, img = run_job(engine, job, seed=m + k)
    assert code == ErrorCode.OK
    assert np.array_equal(img.result(img.data), job.golden())
    assert img.untouched_outside_c(img.data)


@pytest.mark.parametrize("n,w", [(2, 8), (4, 8), (4, 16)])
def test_engine_row_shift_extremes(n, w):
    """-128 * -128 and 255 * -128 over K = k_max with every exponent; raw int32 out, and the
    exponent bytes above ROW_EXP_MAX clamped to it."""
    rng = np.random.default_rng(n + w)
    m = 2 * (ROW_EXP_MAX + 1) + 1
    job = random_job(rng, m, 32, n + 1, a_unsigned=True, requant=False, bias=False,
                     row_shift=True, b_transposed=True)
    job.a[::2] = 255
    job.a[1::2] = 0
    job.a[1::4] = 1
    job.b[:] = -128
    job.b[::3, ::2] = 127
    job.row_shift = np.concatenate([np.arange(ROW_EXP_MAX + 1)] * 2 + [[ROW_EXP_MAX]])
    engine = MatmulEngine(n, w, k_max=32)
    img = job.image(w, seed=5)
    # The last row's exponent byte reads 255: the engine clamps it to ROW_EXP_MAX.
    img.data[img.regions["e"][0] + m - 1] = 255
    mem = MemoryModel(engine.mem, img.data, w, rng=random.Random(1), latency=2, req_stall=0.2,
                      resp_gap=0.2, wr_stall=0.2)
    out = {}

    async def main(ctx):
        out["code"], _ = await run_command(ctx, engine, img.command(), timeout=100_000)

    run(engine, main, background=[mem], deadline_cycles=200_000)
    assert out["code"] == ErrorCode.OK
    assert np.array_equal(img.result(img.data), job.golden())


def test_engine_random_row_shift_transposed_shapes():
    rng = np.random.default_rng(23)
    for i in range(6):
        n, w = [(2, 4), (2, 8), (4, 4), (4, 16), (4, 8), (2, 16)][i]
        m, k, cols = (int(rng.integers(1, 3 * n + 2)), int(rng.integers(1, 33)),
                      int(rng.integers(1, 3 * max(n, w) + 2)))
        job = random_job(rng, m, k, cols, addend_mode=AddendMode(i % 3), requant=i % 4 != 3,
                         row_shift=bool(i % 2 == 0 or i == 5), b_transposed=bool(i % 3 != 1))
        if i != 4:
            tame(rng, job)
        engine = MatmulEngine(n, w, k_max=32)
        code, img = run_job(engine, job, seed=i, stalls=0.3)
        assert code == ErrorCode.OK
        assert np.array_equal(img.result(img.data), job.golden()), (i, n, w, m, k, cols)
        assert img.untouched_outside_c(img.data)


def _first_step_and_full_b(engine, job, w, rng, **memory):
    """Runs ``job`` on ``engine``: the cycles of the first array step and of the first B
    buffer's ``full``, and the B rows written at that step; the result checked exact."""
    img = job.image(w, seed=4)
    mem = MemoryModel(engine.mem, img.data, w, rng=random.Random(2), latency=3, **memory)
    out, seen = {}, {}

    async def main(ctx):
        out["code"], _ = await run_command(ctx, engine, img.command(), timeout=100_000)

    async def watch(ctx):
        feeder, b_tok = engine._probe["feeder"], engine._probe["b_tokens"]
        # B's row count (absent without follow_b).
        rows = [b_tok.written[0]] if hasattr(b_tok, "written") else []
        cycle = 0
        async for _, _, step, full, *written in ctx.tick().sample(feeder.o.valid, b_tok.full,
                                                                   *rows):
            cycle += 1
            if step and "step" not in seen:
                seen["step"], seen["written"] = cycle, (written or [None])[0]
            if full & 1 and "full" not in seen:
                seen["full"] = cycle

    run(engine, main, background=[mem, watch], deadline_cycles=200_000)
    assert out["code"] == ErrorCode.OK
    assert np.array_equal(img.result(img.data), job.golden())
    return seen


@pytest.mark.parametrize("bt,compact", [(False, False), (True, False), (False, True)])
def test_engine_first_step_before_b_is_full(bt, compact):
    """B's rows of K are written in order (a transposed B's after the corner turn) and the
    feeder follows them: the first step enters the array while the first group's B is still
    arriving, not after its last beat (which cost every command K x G / W cycles first).
    The compact build (no corner turn) included; the results stay exact."""
    rng = np.random.default_rng(31)
    n, w, k = 4, 8, 32
    job = random_job(rng, 6, k, 11, row_shift=True, addend_mode=AddendMode.ACC32,
                     b_transposed=bt)
    tame(rng, job)
    sizing = dict(serial_epilogue=True, epilogue_lanes=1, output_rows=0) if compact else {}
    seen = _first_step_and_full_b(MatmulEngine(n, w, k_max=k, **sizing), job, w, rng)
    # The first step is issued when B's first row is written, far ahead of its 32nd.
    assert seen["step"] < seen["full"] - k // 2
    assert 1 <= seen["written"] < k


@pytest.mark.parametrize("bt", [False, True])
def test_engine_without_follow_b_waits_for_full_b(bt):
    """``follow_b=False`` (the iCE40 build): B is loaded before A and the first step waits
    for the full B buffer; the results are the same."""
    rng = np.random.default_rng(37)
    n, w, k = 4, 8, 32
    job = random_job(rng, 6, k, 11, row_shift=True, addend_mode=AddendMode.ACC32,
                     b_transposed=bt)
    tame(rng, job)
    engine = MatmulEngine(n, w, k_max=k, serial_epilogue=True, epilogue_lanes=1,
                          output_rows=0, port_stages=False, follow_b=False)
    seen = _first_step_and_full_b(engine, job, w, rng, req_stall=0.2, resp_gap=0.2,
                                  wr_stall=0.2)
    assert seen["full"] < seen["step"]


@pytest.mark.parametrize("head", [0, 1, 3])
def test_engine_attention_head_views(head):
    """Scores of one head, Q_h @ K_h^T, with Q_h and K_h column slices of a tokens x (3*hidden)
    QKV buffer (K_h read transposed), then the context probs @ V_h stored into a column slice
    of a tokens x hidden buffer. Scaled down: head_dim 8, 4 heads, port width 8."""
    n, w, dh, heads, tokens = 4, 8, 8, 4, 11
    hidden = dh * heads
    rng = np.random.default_rng(head)
    q = rng.integers(-128, 128, size=(tokens, dh))
    kh = rng.integers(-128, 128, size=(tokens, dh))
    vh = rng.integers(-128, 128, size=(tokens, dh))
    probs = rng.integers(0, 256, size=(tokens, tokens))
    scores = MatmulJob(a=q, b=kh.T, b_transposed=True,
                       views={"a": (dh * head, 3 * hidden), "b": (hidden + dh * head, 3 * hidden)})
    ctx = random_job(rng, tokens, tokens, dh, a_unsigned=True, out_fmt=OutFormat.INT8)
    ctx.a, ctx.b = probs, vh
    ctx.bias = rng.integers(-(1 << 12), 1 << 12, size=dh)
    ctx.scale = Dyadic.from_real(np.full(dh, 1 / 2000))
    ctx.views = {"b": (2 * hidden + dh * head, 3 * hidden), "c": (dh * head, hidden)}
    for job in (scores, ctx):
        for name, (offset, wide) in job.views.items():
            assert view_aligned(offset, wide, w)
        engine = MatmulEngine(n, w, k_max=32)
        code, img = run_job(engine, job, seed=head)
        assert code == ErrorCode.OK
        assert np.array_equal(img.result(img.data), job.golden())
        assert img.untouched_outside_c(img.data)


@pytest.mark.parametrize("fields", [
    dict(m=2, k=4, n=4, row_shift=1, e_addr=2),
    dict(m=2, k=4, n=4, b_transposed=1, b_stride=6),
])
def test_engine_rejects_misaligned_new_fields(fields):
    engine = MatmulEngine(2, 4, k_max=16)
    mem = MemoryModel(engine.mem, np.zeros(64, dtype=np.uint8), 4)
    got = {}

    async def main(ctx):
        got["code"], _ = await run_command(ctx, engine, pack_command(**fields), timeout=100)

    run(engine, main, background=[mem], deadline_cycles=1000)
    assert got["code"] == ErrorCode.BAD_ALIGN
    assert mem.reads == 0 and mem.writes == 0


def _run_sequence(engine, jobs, independent, *, seed=0, stalls=0.2, latency=6, link=None):
    """Runs ``jobs`` back to back (one memory image, each after the one before); ``link``
    (i, j): job j's A is job i's C. Returns the done codes, the cycles, the images, the data."""
    w = engine.port_bytes
    imgs, base = [], 0
    for i, job in enumerate(jobs):
        img = job.image(w, seed=seed + i, base=base)
        imgs.append(img)
        base = img.size
    data = imgs[0].data[:imgs[0].size].copy()
    for img in imgs[1:]:
        data = np.concatenate([data, img.data[len(data):img.size]])
    if link is not None:
        i, j = link
        c_addr, c_stride, rows, row_bytes = imgs[i].regions["c"]
        imgs[j].regions["a"] = (c_addr, c_stride, rows, row_bytes)
        jobs[j].a = jobs[i].golden()
    mem = MemoryModel(engine.mem, data, w, rng=random.Random(seed), latency=latency,
                      req_stall=stalls, resp_gap=stalls, wr_stall=stalls)
    out = {}

    async def main(ctx):
        out["codes"], out["cycles"] = await run_commands(
            ctx, engine, [img.command() for img in imgs], independent=independent)

    run(engine, main, background=[mem], deadline_cycles=400_000)
    return out["codes"], out["cycles"], imgs, data


def _mixed_jobs(rng, n):
    """Commands of one to three work items, of every kind the loader handles differently."""
    jobs = [
        random_job(rng, 3, 9, 2 * n + 1, b_transposed=True),
        random_job(rng, n + 2, 5, 3, row_shift=True, addend_mode=AddendMode.ACC32),
        random_job(rng, 2, 17, n, addend_mode=AddendMode.RESIDUAL16, out_fmt=OutFormat.INT16),
        random_job(rng, 5, 4, 5, requant=False, bias=False),
        random_job(rng, n, 12, 3 * n, b_transposed=True, row_shift=True),
    ]
    for job in jobs:
        tame(rng, job)
    return jobs


@pytest.mark.parametrize("n,w", [(4, 8), (2, 8)])
def test_engine_loads_independent_commands_ahead(n, w):
    """With ``cmd_independent`` the loader takes the next command as soon as it has loaded the
    running one's operands, and loads it while that one computes and writes (the buffers'
    parities run on from command to command). Every result is exact, as when the commands run
    one at a time, and the sequence takes fewer cycles."""
    engine_jobs = _mixed_jobs(np.random.default_rng(n), n)
    results = {}
    for independent in (False, True):
        jobs = [MatmulJob(**{f: getattr(j, f) for f in j.__dataclass_fields__})
                for j in engine_jobs]
        engine = MatmulEngine(n, w, k_max=32)
        assert engine.prefetch
        codes, cycles, imgs, data = _run_sequence(engine, jobs, independent)
        assert codes == [ErrorCode.OK] * len(jobs)
        for img, job in zip(imgs, jobs):
            assert np.array_equal(img.result(data), job.golden())
        results[independent] = cycles
    assert results[True] < results[False] - 40, results


def test_engine_waits_for_a_command_that_is_not_independent():
    """The second command reads the first one's result as its A: offered without
    ``cmd_independent`` it is loaded only after the first has written it, and is exact. The
    same pair offered as independent reads A before it is written (which is why the controller
    marks such a command), so the check below can fail."""
    n, w = 4, 8
    outcomes = {}
    for independent in (False, True):
        rng = np.random.default_rng(5)
        first = random_job(rng, 6, 8, 16, out_fmt=OutFormat.INT8)
        second = random_job(rng, 6, 16, 5, out_fmt=OutFormat.INT8)
        tame(rng, first)
        tame(rng, second)
        engine = MatmulEngine(n, w, k_max=32)
        codes, _, imgs, data = _run_sequence(engine, [first, second], [False, independent],
                                             stalls=0, latency=3, link=(0, 1))
        assert codes == [ErrorCode.OK] * 2
        assert np.array_equal(imgs[0].result(data), first.golden())
        outcomes[independent] = np.array_equal(imgs[1].result(data), second.golden())
    assert outcomes == {False: True, True: False}


def test_engine_answers_in_order_around_a_bad_command():
    """A bad command taken while another runs is answered after it, and the one after it
    still runs."""
    n, w = 4, 8
    rng = np.random.default_rng(9)
    jobs = [random_job(rng, 5, 7, 9), random_job(rng, 3, 3, 3), random_job(rng, 4, 6, 11)]
    for job in jobs:
        tame(rng, job)
    engine = MatmulEngine(n, w, k_max=32)
    imgs, base = [], 0
    for i, job in enumerate(jobs):
        imgs.append(job.image(w, seed=i, base=base))
        base = imgs[-1].size
    data = imgs[0].data[:imgs[0].size].copy()
    for img in imgs[1:]:
        data = np.concatenate([data, img.data[len(data):img.size]])
    commands = [img.command() for img in imgs]
    commands[1] = pack_command(m=2, k=4, n=4, a_addr=2)      # misaligned
    mem = MemoryModel(engine.mem, data, w, rng=random.Random(1), latency=3)
    out = {}

    async def main(ctx):
        out["codes"], _ = await run_commands(ctx, engine, commands, independent=True)

    run(engine, main, background=[mem], deadline_cycles=100_000)
    assert out["codes"] == [ErrorCode.OK, ErrorCode.BAD_ALIGN, ErrorCode.OK]
    assert np.array_equal(imgs[0].result(data), jobs[0].golden())
    assert np.array_equal(imgs[2].result(data), jobs[2].golden())
