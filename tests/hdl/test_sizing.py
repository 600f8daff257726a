"""Board-sized builds (``params.Sizing``): the same results as the full-size units."""

import dataclasses
import random

import numpy as np
import pytest

from celosia.hdl import isa
from celosia.hdl.accelerator import Accelerator
from celosia.hdl.controller import Controller
from celosia.hdl.engine import MatmulEngine
from celosia.hdl.epilogue import Epilogue
from celosia.hdl.isa import CSR, ErrorCode, MachineConfig
from celosia.hdl.params import FULL, SMALL, AddendMode, ErrorCode, OutFormat
from celosia.sim.matmul_job import random_job
from celosia.sim.pysim import MemoryModel, run
from celosia.sim.tb_accelerator import (AxiMemoryModel, axil_read, axil_write, error_image,
                                        matmul_chain, reference, status_bits)

from test_epilogue import golden_rows, random_rows, run_rows

INT32_HI = (1 << 31) - 1


@pytest.mark.parametrize("n,lanes", [(2, 1), (4, 1), (4, 2)])
@pytest.mark.parametrize("fmt,requant", [(OutFormat.INT8, 1), (OutFormat.INT32, 0)])
def test_epilogue_fewer_lanes(n, lanes, fmt, requant):
    rng = random.Random(n * 10 + lanes + int(fmt))
    rows = random_rows(rng, n, 50, row_shift=True)
    zp = rng.choice([0, -7, 100])
    dut = Epilogue(n, lanes=lanes)
    got = run_rows(dut, rows, rng, requant=requant, fmt=fmt, zp=zp,
                   sink_seed=7)
    assert got == golden_rows(rows, requant, fmt, zp)


@pytest.mark.parametrize("registers", [(False, True, True, True, True, True),
                                       (False, False, True, True, False, True)])
def test_epilogue_merged_stages(registers):
    n = 2
    rng = random.Random(sum(registers))
    rows = random_rows(rng, n, 60, row_shift=True)
    dut = Epilogue(n, lanes=1, registers=registers)
    got = run_rows(dut, rows, rng, requant=1, fmt=OutFormat.INT16, zp=-5,
                   sink_seed=8)
    assert got == golden_rows(rows, 1, OutFormat.INT16, -5)


def run_small(img, *, array=2, k_max=64, sizing=SMALL, stall=0.2, max_cycles=300_000,
              memory="axi"):
    """The accelerator built with ``sizing`` running an image, as test_accelerator.run_accel
    (``memory="native"``: its own memory port served by a memory model with stalls)."""
    dut = Accelerator(array, img.config.port_bytes, k_max=k_max, sizing=sizing, memory=memory)
    mem = img.mem.copy()
    if memory == "native":
        model = MemoryModel(dut.mem, mem, img.config.port_bytes, latency=2, req_stall=stall,
                            resp_gap=stall, wr_stall=stall)
    else:
        model = AxiMemoryModel(dut.m_axi, mem, img.config.port_bytes, latency=2, stall=stall)
    regs = {}

    async def host(ctx):
        bus = dut.s_axil
        for name, value in (("WIN_BASE", img.base), ("WIN_SIZE", img.size), ("PROG_ADDR", img.prog)):
            await axil_write(ctx, bus, getattr(CSR, name).offset, value)
        await axil_write(ctx, bus, CSR.CTRL.offset, CSR.CTRL.make(start=1, clear_counters=1))
        while CSR.STATUS.get(await axil_read(ctx, bus, CSR.STATUS.offset), "busy"):
            await ctx.tick().repeat(20)
        for name in ("STATUS", "ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT",
                     "VECTOR_COUNT", "MATMUL_BUSY", "CYCLES_LO", "CYCLES_HI", "CONFIG"):
            regs[name] = await axil_read(ctx, bus, getattr(CSR, name).offset)

    run(dut, host, background=[model], deadline_cycles=max_cycles)
    return mem, regs


@pytest.mark.parametrize("seed,memory", [(0, "axi"), (1, "axi"), (2, "axi"), (3, "native"),
                                         (4, "native")])
def test_small_accelerator_matches_isa_sim(seed, memory):
    """The board-sized accelerator (one epilogue lane, no issue slot, serial span checks,
    16-bit addresses, narrow counters; on the AXI4 port or on its native memory port, as the
    iCEBreaker builds it) computes the same memory and CSRs as isa_sim."""
    img = matmul_chain(seed, MachineConfig(2, 4), links=3, base=0x1000, size=0x6000, max_dim=7)
    mem, regs = run_small(img, memory=memory)
    ref_mem, ref, mach = reference(img)
    for name in ("ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT", "VECTOR_COUNT"):
        assert regs[name] == ref[name], (name, regs[name], ref[name], mach.error_detail)
    assert status_bits(regs["STATUS"]) == ref["STATUS"]
    assert np.array_equal(mem, ref_mem)
    assert CSR.CONFIG.get(regs["CONFIG"], "array") == 2
    assert regs["CYCLES_LO"] > 0 and regs["CYCLES_HI"] == 0 and regs["MATMUL_BUSY"] == 0


@pytest.mark.parametrize("memory", ["axi", "native"])
@pytest.mark.parametrize("kind", ["illegal", "window", "param", "vector", "fetch"])
def test_small_accelerator_errors_match_isa_sim(kind, memory):
    img = error_image(kind, MachineConfig(2, 4), size=0x4000)
    mem, regs = run_small(img, memory=memory)
    ref_mem, ref, mach = reference(img)
    for name in ("ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT"):
        assert regs[name] == ref[name], (name, regs[name], ref[name])
    assert np.array_equal(mem, ref_mem)
    assert regs["ERROR"] != ErrorCode.OK


def test_small_accelerator_window_beyond_reach():
    """A window reaching past 2**addr_bits stops at START with BAD_WINDOW."""
    img = matmul_chain(0, MachineConfig(2, 4), links=1, base=0x1000, size=0x4000, max_dim=4)
    sizing = dataclasses.replace(SMALL, addr_bits=14)        # reaches 0x4000 bytes only
    mem, regs = run_small(img, sizing=sizing)
    assert regs["ERROR"] == ErrorCode.BAD_WINDOW and regs["MATMUL_COUNT"] == 0
    assert np.array_equal(mem, img.mem)


@pytest.mark.parametrize("prog", [0x1_0000, 0x1_0040, 0x2_0000, 0x8000_0040, 0xFFFF_FFC0, 0x1004])
def test_small_accelerator_program_beyond_reach(prog):
    """PROG_ADDR at or past 2**addr_bits (or misaligned) is a FETCH_FAULT at that address, as
    in isa_sim, although the program counter keeps only addr_bits + 1 low bits."""
    img = error_image("ok", MachineConfig(2, 4), size=0x4000)
    img.prog = prog
    mem, regs = run_small(img)
    ref_mem, ref, mach = reference(img)
    for name in ("ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT"):
        assert regs[name] == ref[name], (name, regs[name], ref[name])
    assert regs["ERROR"] == ErrorCode.FETCH_FAULT and regs["ERROR_PC"] == prog
    assert np.array_equal(mem, ref_mem)


@pytest.mark.parametrize("change", [
    dict(a_addr=0x0001_1000),                       # an address above 2**addr_bits
    dict(a_addr=0xFFFF_FFC0),                       # the span wraps 32 bits
    dict(a_stride=0x0100_0000, m=3),                # a stride far past the window
    dict(c_stride=0x0002_0000, m=2),                # rows - 1 = 1 times a stride >= 2**17
    dict(c_stride=0x8000, m=3),                     # a product just past the window
    dict(a_stride=0x1_0000_0000 - 4, m=2),          # 32-bit stride, short rows: BAD_SHAPE
    # rows of 80,000 bytes (above 2**16) and a stride of 2**17: not short, past the window
    dict(n=20000, b_stride=0x8000, b_transposed=0, c_stride=0x2_0000, m=2, requant=0,
         addend=0),
])
@pytest.mark.parametrize("sizing", [SMALL, dataclasses.replace(FULL, serial_check=True)],
                         ids=["small", "full-serial-check"])
def test_small_accelerator_span_checks(change, sizing):
    """The narrowed and the serial span checks give isa_sim's error for addresses and strides
    beyond the 16-bit reach (and, with 32-bit addresses, beyond the window)."""
    img = error_image("ok", MachineConfig(2, 4), size=0x4000, seed=3)
    ins = isa.Instruction.decode(img.mem[img.prog:img.prog + isa.INSTR_BYTES].tobytes())
    f = dict(ins.fields)
    f.update({k: v & 0xFFFF_FFFF for k, v in change.items()})
    raw = isa.Instruction(ins.opcode, f).encode()
    img.mem[img.prog:img.prog + isa.INSTR_BYTES] = np.frombuffer(raw, np.uint8)
    mem, regs = run_small(img, sizing=sizing)
    ref_mem, ref, mach = reference(img)
    for name in ("ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT"):
        assert regs[name] == ref[name], (name, regs[name], ref[name])
    assert np.array_equal(mem, ref_mem)
    assert regs["ERROR"] != ErrorCode.OK


@pytest.mark.parametrize("serial", [False, True])
@pytest.mark.parametrize("fmt", list(OutFormat))
def test_epilogue_saturation_edges(fmt, serial):
    """Products near every saturation boundary (the scaled value is clamped to 35 bits before
    the zero point is added)."""
    from celosia.sw.numerics import INT32, MULT_BITS, SHIFT_MAX
    rng = random.Random(100 + int(fmt))
    rows = []
    for _ in range(120):
        shift = rng.choice([0, 1, 2, 3, 15, 16, 17, 30, 31, 32, 33, 34, 46, SHIFT_MAX])
        mult = rng.choice([1, 2, (1 << MULT_BITS) - 1, rng.randrange(1 << MULT_BITS)])
        target = rng.choice([127, 128, 255, 256, -128, -129, 32767, 32768, -32769, INT32.hi,
                             INT32.hi + 1, INT32.lo, INT32.lo - 1, 1 << 33, -(1 << 33),
                             (1 << 34) + 5, -(1 << 34) - 5, 0, -1])
        # An accumulator that scales to about `target`.
        acc = max(INT32.lo, min(INT32.hi, (target << shift) // max(mult, 1) + rng.randint(-3, 3)))
        rows.append({"acc": [acc, -acc if acc != INT32.lo else INT32.hi], "bias": [0, 0],
                     "addend": [0, 0], "mult": [mult, mult], "shift": [shift, shift],
                     "row_shift": 0})
    zp = rng.choice([0, -7, 100, INT32.hi, INT32.lo])
    dut = Epilogue(2, lanes=1, serial=True) if serial else Epilogue(2)
    got = run_rows(dut, rows, rng, requant=1, fmt=fmt, zp=zp,
                   sink_seed=9, gap=0.2, stall=0.2 if serial else 0.0, deadline=20000)
    assert got == golden_rows(rows, 1, fmt, zp)


ENGINE_CASES = [
    # array, port bytes, M, K, N, addend mode, output format, transposed B, row shift
    (2, 4, 3, 5, 3, AddendMode.NONE, OutFormat.INT8, False, True),
    (2, 4, 5, 9, 7, AddendMode.ACC32, None, True, False),
    (2, 4, 4, 2, 6, AddendMode.RESIDUAL16, OutFormat.INT16, True, True),
    (4, 8, 9, 17, 13, AddendMode.RESIDUAL16, OutFormat.UINT8, False, True),
    (4, 4, 6, 3, 9, AddendMode.ACC32, OutFormat.INT32, True, False),
    # Groups wider than a beat (G = 8 > W = 4), and exponent beats shared by four panels.
    (8, 4, 9, 13, 19, AddendMode.ACC32, OutFormat.INT8, True, True),
    (2, 8, 11, 21, 19, AddendMode.RESIDUAL16, OutFormat.INT16, True, True),
    (2, 8, 7, 30, 13, AddendMode.NONE, OutFormat.UINT8, False, True),
]


@pytest.mark.parametrize("n,w,m,k,cols,mode,fmt,bt,rs", ENGINE_CASES)
def test_small_engine_matches_golden(n, w, m, k, cols, mode, fmt, bt, rs):
    """The engine as SMALL builds it (one epilogue lane, merged stage, the collector passing
    rows in place, 16-bit addresses, the command held by the master) under memory stalls."""
    from test_engine import run_job, tame
    rng = np.random.default_rng(n * 1000 + m * 100 + k * 10 + cols + 3)
    job = random_job(rng, m, k, cols, addend_mode=mode, requant=fmt is not None, out_fmt=fmt,
                     bias=True, row_shift=rs, b_transposed=bt)
    tame(rng, job)
    engine = MatmulEngine(n, w, k_max=32, addr_bits=SMALL.addr_bits, epilogue_lanes=1,
                          serial_epilogue=SMALL.serial_epilogue, bram_pads=True,
                          hold_cmd=True)
    code, img = run_job(engine, job, seed=m + k, stalls=0.3)
    assert code == ErrorCode.OK
    assert np.array_equal(img.result(img.data), job.golden())
    assert img.untouched_outside_c(img.data)


@pytest.mark.parametrize("array,port_bytes,sizing", [
    (4, 8, dataclasses.replace(FULL, vector_lanes=2, vector_finishers=1, serial_check=True)),
    (2, 8, SMALL),
])
def test_sized_accelerator_with_vector_engine(array, port_bytes, sizing):
    """A narrower vector engine, and the controller without issue slot (HOLD) with both units:
    back-to-back commands, SYNCs and hand-overs as isa_sim runs them."""
    from celosia.hdl.accelerator import vector_engine_factory
    if vector_engine_factory() is None:
        pytest.skip("this tree has no vector engine")
    from test_accelerator import check_against_isa, sync_handover_image
    img = sync_handover_image(MachineConfig(array, port_bytes))
    dut = Accelerator(array, port_bytes, k_max=64, vector=True, sizing=sizing)
    mem = img.mem.copy()
    model = AxiMemoryModel(dut.m_axi, mem, port_bytes, latency=2, stall=0.1)
    regs = {}

    async def host(ctx):
        bus = dut.s_axil
        for name, value in (("WIN_BASE", img.base), ("WIN_SIZE", img.size), ("PROG_ADDR", img.prog)):
            await axil_write(ctx, bus, getattr(CSR, name).offset, value)
        await axil_write(ctx, bus, CSR.CTRL.offset, CSR.CTRL.make(start=1, clear_counters=1))
        while CSR.STATUS.get(await axil_read(ctx, bus, CSR.STATUS.offset), "busy"):
            await ctx.tick().repeat(20)
        for name in ("STATUS", "ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT",
                     "VECTOR_COUNT"):
            regs[name] = await axil_read(ctx, bus, getattr(CSR, name).offset)

    run(dut, host, background=[model], deadline_cycles=400_000)
    check_against_isa(img, mem, regs, vector_unit=True)
    assert regs["ERROR"] == 0 and regs["MATMUL_COUNT"] == 3 and regs["VECTOR_COUNT"] == 3


@pytest.mark.parametrize("name", ["test_vector_without_unit_is_unsupported_like_isa_sim",
                                  "test_bad_window_and_misaligned_program",
                                  "test_rejected_command_stops_with_its_address",
                                  "test_rejected_later_command_stops_with_its_address",
                                  "test_abort_waits_for_the_running_command"])
def test_controller_without_issue_slot(monkeypatch, name):
    """test_controller's checks with the controller SMALL builds (HOLD instead of an issue
    slot, serial span checks, a queue of one; 17 address bits for its 68 KiB windows)."""
    import functools
    import test_controller as tc
    monkeypatch.setattr(tc, "Controller", functools.partial(
        Controller, issue_slot=False, serial_check=True, queue=1, addr_bits=17))
    getattr(tc, name)()


@pytest.mark.parametrize("kind", ["illegal", "window", "param", "fetch", "ok"])
def test_controller_without_issue_slot_errors(monkeypatch, kind):
    import functools
    import test_controller as tc
    monkeypatch.setattr(tc, "Controller", functools.partial(
        Controller, issue_slot=False, serial_check=True, queue=1, addr_bits=17))
    tc.test_errors_match_isa_sim(kind)


def test_controller_without_issue_slot_chain(monkeypatch):
    """The commands reach the unit unchanged and in order, each after the previous one is done
    (the controller waits in HOLD, so the SYNCs find the unit idle)."""
    import functools
    import test_controller as tc
    monkeypatch.setattr(tc, "Controller", functools.partial(
        Controller, issue_slot=False, serial_check=True, queue=1, addr_bits=17))
    img = matmul_chain(1, tc.CFG, links=3)
    result, model, (mm,) = tc.run_controller(img)
    tc.expect_like_isa(img, result)
    assert result["done"] and result["code"] == 0 and len(mm.log) == 3
    width = isa.matmul_layout().size
    words = [int.from_bytes(img.mem[img.prog + i * 64:img.prog + i * 64 + 64].tobytes(), "little")
             for i in range(img.notes["instructions"])]
    bodies = [(w >> 8) & ((1 << width) - 1) for w in words if w & 0xFF == isa.Opcode.MATMUL]
    assert [p for _, _, p in mm.log] == bodies
    for (s0, d0, _), (s1, _, _) in zip(mm.log, mm.log[1:]):
        assert s1 > d0
    assert model.writes == 0


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("fmt,requant", [(OutFormat.INT8, 1), (OutFormat.UINT8, 1),
                                         (OutFormat.INT16, 1), (OutFormat.INT32, 1),
                                         (OutFormat.INT32, 0)])
def test_serial_epilogue_matches_golden(n, fmt, requant):
    rng = random.Random(n * 7 + int(fmt) + 50 * requant)
    rows = random_rows(rng, n, 40, row_shift=True)
    zp = rng.choice([0, -7, 100, INT32_HI])
    dut = Epilogue(n, lanes=1, serial=True)
    got = run_rows(dut, rows, rng, requant=requant, fmt=fmt, zp=zp,
                   sink_seed=11, deadline=40000)
    assert got == golden_rows(rows, requant, fmt, zp)


@pytest.mark.parametrize("shift", [3, 4, 16])
def test_serial_epilogue_residual_shift(shift):
    """Residual addends (int16) shifted left by addend_shift before the add."""
    n = 2
    rng = random.Random(shift)
    rows = random_rows(rng, n, 30, row_shift=True)
    for r in rows:
        r["addend"] = [rng.randint(-(1 << 15), (1 << 15) - 1) for _ in range(n)]
    dut = Epilogue(n, lanes=1, serial=True)
    shifted = [dict(r, addend=[a << shift for a in r["addend"]]) for r in rows]
    got = run_rows(dut, rows, rng, requant=1, fmt=OutFormat.INT16, zp=3,
                   sink_seed=12, stall=0.3, addend_shift=shift, deadline=40000)
    assert got == golden_rows(shifted, 1, OutFormat.INT16, 3)


@pytest.mark.parametrize("n,row_shift,addend_shift,shift,requant", [
    (2, 0, 0, 0, 1), (2, 3, 0, 20, 1), (1, 8, 16, 47, 1), (4, 2, 5, 63, 1), (2, 5, 4, 30, 0),
])
def test_serial_epilogue_cycles(n, row_shift, addend_shift, shift, requant):
    """With the input always valid and the output always ready, a row leaves every
    n * (5 + row_shift + addend_shift + shift) cycles (shift clamped to SHIFT_MAX, 0 for a raw
    result), and its results are right."""
    from celosia.sw.numerics import SHIFT_MAX
    rng = random.Random(n + shift)
    row = random_rows(rng, n, 1)[0]
    row.update(row_shift=row_shift, shift=[shift] * n,
               addend=[rng.randint(-(1 << 15), (1 << 15) - 1) for _ in range(n)])
    dut = Epilogue(n, lanes=1, serial=True)
    starts, rows = [], []

    async def tb(ctx):
        ctx.set(dut.requant, requant)
        ctx.set(dut.out_fmt, OutFormat.INT16)
        ctx.set(dut.zero_point, -3)
        ctx.set(dut.addend_shift, addend_shift)
        ctx.set(dut.i.payload, row)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 1)
        cycle = 0
        while len(starts) < 4:
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            cycle += 1
            if valid:
                starts.append(cycle)
                rows.append([int(v) for v in payload])

    run(dut, tb, deadline_cycles=5000)
    per_element = 5 + row_shift + addend_shift + (min(shift, SHIFT_MAX) if requant else 0)
    assert [b - a for a, b in zip(starts, starts[1:])] == [n * per_element] * 3
    shifted = dict(row, addend=[v << addend_shift for v in row["addend"]],
                   shift=[min(shift, SHIFT_MAX)] * n)
    assert rows == golden_rows([shifted] * 4, requant, OutFormat.INT16, -3)
