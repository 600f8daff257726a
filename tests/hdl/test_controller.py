"""The controller in Amaranth's simulator, with stub units: fetch, decode, the checks and their
order (against sw/isa_sim.py), dispatch to two units with overlap, SYNC, HALT, abort, a
rejected command, and no memory traffic for a rejected instruction."""

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring

from celosia.hdl import isa
from celosia.hdl.controller import Controller
from celosia.hdl.isa import CSR, INSTR_BYTES, ErrorCode, MachineConfig, Unit, VecOp
from celosia.hdl.params import OutFormat
from celosia.sim.pysim import MemoryModel, run
from celosia.sim.tb_accelerator import Image, error_image, matmul_chain, reference
from celosia.sw import numerics as nx
from celosia.sw.isa_sim import IsaMachine, independent_matmuls

W = 8
CFG = MachineConfig(4, W)


class StubUnit:
    """Accepts commands, answers each ``latency`` cycles later with ``code(cmd)``; records
    (cycle accepted, cycle done, payload)."""

    def __init__(self, cmd, done, latency=20, code=lambda p: 0, layout=None, flag=None):
        self.cmd, self.done, self.latency, self.code = cmd, done, latency, code
        self.flag = flag          # a signal beside cmd, sampled with each command (``flags``)
        self.log = []
        self.flags = []

    async def testbench(self, ctx):
        cycle = 0
        ctx.set(self.cmd.ready, 1)
        while True:
            valid, payload = ctx.get(self.cmd.valid), ctx.get(self.cmd.payload.as_value())
            if valid and self.flag is not None:
                self.flags.append(bool(ctx.get(self.flag)))
            await ctx.tick()
            cycle += 1
            if valid:
                ctx.set(self.cmd.ready, 0)
                start = cycle
                for _ in range(self.latency):
                    await ctx.tick()
                cycle += self.latency
                ctx.set(self.done.payload, self.code(payload))
                ctx.set(self.done.valid, 1)
                await ctx.tick().until(self.done.ready)
                cycle += 1
                ctx.set(self.done.valid, 0)
                ctx.set(self.cmd.ready, 1)
                self.log.append((start, cycle, payload))


def run_controller(img, *, vector=False, mm_latency=20, vec_latency=20, mm_code=lambda p: 0,
                   abort_at=None, max_cycles=20000, decoder_ops=False, independence=None):
    """Runs ``img`` on a controller with stub units; ``independence``: build it with
    ``mm_independence`` and the given ``serial_check``."""
    extra = {} if independence is None else dict(mm_independence=True,
                                                 serial_check=independence == "serial")
    ctrl = Controller(W, vector=vector, decoder_ops=decoder_ops, **extra)
    mem = img.mem.copy()
    model = MemoryModel(ctrl.mem, mem, W, latency=3)
    mm = StubUnit(ctrl.mm_cmd, ctrl.mm_done, mm_latency, mm_code, flag=ctrl.mm_cmd_independent)
    units = [mm]
    if vector:
        units.append(StubUnit(ctrl.vec_cmd, ctrl.vec_done, vec_latency))
    result = {}

    async def host(ctx):
        ctx.set(ctrl.win_base, img.base)
        ctx.set(ctrl.win_size, img.size)
        ctx.set(ctrl.prog_addr, img.prog)
        ctx.set(ctrl.start, 1)
        await ctx.tick()
        ctx.set(ctrl.start, 0)
        cycles = 0
        counts = {"retire": 0, "retire_mm": 0, "retire_vec": 0, "stall": 0}
        while True:
            sample = await ctx.tick().sample(ctrl.running, *(getattr(ctrl, k) for k in counts))
            cycles += 1
            for k, v in zip(counts, sample[3:]):
                counts[k] += int(v)
            if cycles == abort_at:
                ctx.set(ctrl.abort, 1)
                await ctx.tick()
                ctx.set(ctrl.abort, 0)
            if not sample[2]:
                break
            assert cycles < max_cycles
        result.update(counts, cycles=cycles, done=ctx.get(ctrl.done), error=ctx.get(ctrl.error),
                      code=ctx.get(ctrl.error_code), error_pc=ctx.get(ctrl.error_pc),
                      pc=ctx.get(ctrl.pc))

    run(ctrl, host, background=[model] + units, deadline_cycles=max_cycles + 100)
    return result, model, units


def expect_like_isa(img, result, *, vector_unit=False, decoder_ops=False):
    _, regs, mach = reference(img, vector_unit=vector_unit, decoder_ops=decoder_ops)
    assert result["code"] == regs["ERROR"], (ErrorCode(result["code"]), mach.error_detail)
    assert result["error_pc"] == regs["ERROR_PC"]
    assert result["pc"] == regs["PC"]
    assert result["retire"] == regs["INSTRET"]
    assert result["retire_mm"] == regs["MATMUL_COUNT"]
    assert result["done"] == CSR.STATUS.get(regs["STATUS"], "done")
    return mach


def test_chain_dispatches_in_order_with_syncs():
    img = matmul_chain(1, CFG, links=3)
    result, model, (mm,) = run_controller(img)
    mach = expect_like_isa(img, result)
    assert result["done"] and result["code"] == 0
    assert len(mm.log) == 3
    # Each command is the instruction's body, unchanged.
    prog = [isa.Instruction.decode(img.mem[img.prog + i * 64:img.prog + i * 64 + 64].tobytes())
            for i in range(img.notes["instructions"])]
    bodies = [isa.Instruction(int(isa.Opcode.MATMUL), {}) for _ in prog]
    sent = [p for _, _, p in mm.log]
    fm = isa._Fields.get()[isa.Opcode.MATMUL]
    word_of = [int.from_bytes(img.mem[img.prog + i * 64:img.prog + i * 64 + 64].tobytes(), "little") >> 8
               for i, ins in enumerate(prog) if ins.opcode == isa.Opcode.MATMUL]
    width = isa.matmul_layout().size
    assert sent == [w & ((1 << width) - 1) for w in word_of]
    # SYNC(MATMUL): a command is accepted only after the previous one is done.
    for (s0, d0, _), (s1, _, _) in zip(mm.log, mm.log[1:]):
        assert s1 > d0
    assert result["stall"] > 0
    # The controller reads only instructions and parameter records.
    assert model.writes == 0
    del bodies, mach


def test_without_sync_the_next_fetch_overlaps():
    img = matmul_chain(2, CFG, links=3, fence=False)
    result, _, (mm,) = run_controller(img, mm_latency=200)
    assert result["done"]
    # The second and third commands were checked and queued while the first ran: the
    # program's decode finished long before the engine.
    assert mm.log[1][0] <= mm.log[0][1] + 3
    assert result["stall"] > 0       # HALT waited for the engine


def _vec_program(rng_seed=0):
    """MATMUL, VECTOR, VECTOR, SYNC(VECTOR), MATMUL, HALT on a 4 KiB window (stub units do
    not touch memory)."""
    img = matmul_chain(rng_seed, CFG, links=1)
    mm_raw = img.mem[img.prog:img.prog + INSTR_BYTES].tobytes()
    v = isa.vector(op=VecOp.REQUANT, rows=2, cols=8, src_addr=img.base, src_stride=64,
                   dst_addr=img.base + 0x200, dst_stride=64, p_addr=img.base + 0x400,
                   src_fmt=OutFormat.INT32, dst_fmt=OutFormat.INT8).encode()
    code = mm_raw + v + v + isa.sync(Unit.VECTOR).encode() + mm_raw + isa.halt().encode()
    img.mem[img.prog:img.prog + len(code)] = np.frombuffer(code, np.uint8)
    return img


def test_two_units_overlap_and_sync_waits_for_the_named_unit():
    img = _vec_program()
    result, _, (mm, vec) = run_controller(img, vector=True, mm_latency=300, vec_latency=40)
    assert result["done"] and result["code"] == 0
    assert result["retire_vec"] == 2 and result["retire_mm"] == 2 and result["retire"] == 6
    (m0s, m0d, _), (m1s, _, _) = mm.log
    (v0s, v0d, _), (v1s, v1d, _) = vec.log
    assert v0s < m0d and v1d < m0d            # the vector commands ran under the matmul
    assert v1s >= v0d                          # one at a time in the unit
    assert v1d < m1s < m0d + 10                # SYNC(VECTOR) did not wait for the matmul...
    assert m1s >= m0d                          # ...but the engine takes one command at a time


def test_vector_without_unit_is_unsupported_like_isa_sim():
    img = error_image("vector", CFG)
    result, _, (mm,) = run_controller(img)
    expect_like_isa(img, result, vector_unit=False)
    assert result["code"] == ErrorCode.UNSUPPORTED
    assert len(mm.log) == 1                    # the MATMUL before it ran to completion
    assert IsaMachine(CFG, 16, vector_unit=False).vector_unit is False


@pytest.mark.parametrize("op", [VecOp.RMSNORM, VecOp.RESIDUAL32,
                                VecOp.WIDE_SPLIT, VecOp.SOFTMAX_WIDE])
def test_decoder_vector_ops_stop_with_bad_mode_like_isa_sim(op):
    """Without ``Sizing.decoder_ops`` (the default) the controller stops on the decoder's
    vector operations with BAD_MODE before the vector unit sees them, as the isa simulator
    does for a build without them (its default); SOFTMAX_DITHER (isa.RTL_ALWAYS_OPS) runs on
    every build (tests/sim/test_minilm_verilator.py runs it in the default model)."""
    img = error_image("ok", CFG)
    mm_raw = img.mem[img.prog:img.prog + INSTR_BYTES].tobytes()
    v = isa.vector(op=int(op), rows=2, cols=8, src_addr=img.base, src_stride=64,
                   dst_addr=img.base + 0x200, dst_stride=64, p_addr=img.base + 0x400,
                   res_addr=img.base + 0x600, res_stride=64, src_fmt=OutFormat.INT32,
                   dst_fmt=OutFormat.INT32).encode()
    code = mm_raw + v + isa.halt().encode()
    img.mem[img.prog:img.prog + len(code)] = np.frombuffer(code, np.uint8)
    result, _, (mm, vec) = run_controller(img, vector=True)
    mach = expect_like_isa(img, result, vector_unit=True)
    assert result["code"] == ErrorCode.BAD_MODE and result["error_pc"] == img.prog + INSTR_BYTES
    assert vec.log == [] and op.name in mach.error_detail


@pytest.mark.parametrize("kind", ["illegal", "window", "param", "fetch", "ok"])
def test_errors_match_isa_sim(kind):
    img = error_image(kind, CFG)
    result, model, (mm,) = run_controller(img)
    expect_like_isa(img, result)
    expected = {"illegal": ErrorCode.ILLEGAL_OPCODE, "window": ErrorCode.BAD_ADDRESS,
                "param": ErrorCode.BAD_PARAM, "fetch": ErrorCode.FETCH_FAULT,
                "ok": ErrorCode.OK}[kind]
    assert result["code"] == expected
    if kind in ("window", "param"):
        assert mm.log == []                    # rejected before the engine saw it


def test_window_past_4_gib_is_bad():
    """A window that reaches past 2**32 is refused at START (an operand checked against it
    could wrap around to the bottom of the memory)."""
    img = error_image("ok", CFG)
    img.base, img.size = (1 << 32) - 128, 256
    result, model, _ = run_controller(img)
    assert result["code"] == ErrorCode.BAD_WINDOW and model.reads == 0


def test_bad_window_and_misaligned_program():
    img = error_image("ok", CFG)
    img.base += 8
    result, model, _ = run_controller(img)
    assert result["code"] == ErrorCode.BAD_WINDOW and model.reads == 0
    expect_like_isa(img, result)
    img = error_image("ok", CFG)
    img.prog += 8
    result, model, _ = run_controller(img)
    assert result["code"] == ErrorCode.FETCH_FAULT and model.reads == 0
    expect_like_isa(img, result)


def test_rejected_command_stops_with_its_address():
    img = matmul_chain(3, CFG, links=2)
    result, _, (mm,) = run_controller(img, mm_code=lambda p: ErrorCode.BAD_ALIGN)
    assert result["error"] and result["code"] == ErrorCode.BAD_ALIGN
    assert result["error_pc"] == img.prog and result["pc"] == img.prog
    assert len(mm.log) == 1                    # SYNC saw the error; nothing more issued


def test_rejected_later_command_stops_with_its_address():
    """A unit's error on the third MATMUL names that instruction, not the program start."""
    img = matmul_chain(5, CFG, links=3)
    addrs = []
    addr = img.prog
    while True:
        ins = isa.Instruction.decode(img.mem[addr:addr + INSTR_BYTES].tobytes())
        if ins.opcode == isa.Opcode.HALT:
            break
        if ins.opcode == isa.Opcode.MATMUL:
            addrs.append(addr)
        addr += INSTR_BYTES
    seen = []

    def code(payload):
        seen.append(payload)
        return ErrorCode.BAD_MODE if len(seen) == 3 else ErrorCode.OK   # the third command

    result, _, (mm,) = run_controller(img, mm_code=code)
    assert len(addrs) == 3
    assert result["error"] and result["code"] == ErrorCode.BAD_MODE
    assert result["error_pc"] == addrs[2] and result["pc"] == addrs[2]


def test_abort_waits_for_the_running_command():
    img = matmul_chain(4, CFG, links=3)
    result, _, (mm,) = run_controller(img, mm_latency=400, abort_at=150)   # in the first MATMUL
    assert result["error"] and result["code"] == ErrorCode.ABORTED
    assert len(mm.log) == 1 and result["cycles"] >= mm.log[0][1]


def _decoder_program(img, **fields):
    mm_raw = img.mem[img.prog:img.prog + INSTR_BYTES].tobytes()
    f = dict(rows=2, cols=8, src_addr=img.base, src_stride=64, dst_addr=img.base + 0x200,
             dst_stride=64, res_addr=img.base + 0x600, res_stride=64, src_fmt=OutFormat.INT32,
             dst_fmt=OutFormat.INT32)
    f.update(fields)
    code = mm_raw + isa.vector(**f).encode() + isa.halt().encode()
    img.mem[img.prog:img.prog + len(code)] = np.frombuffer(code, np.uint8)


_R32, _SPLIT, _SMW = VecOp.RESIDUAL32, VecOp.WIDE_SPLIT, VecOp.SOFTMAX_WIDE
_SMD = VecOp.SOFTMAX_DITHER
_I16_I8 = dict(src_fmt=OutFormat.INT16, dst_fmt=OutFormat.INT8)
_RMS = VecOp.RMSNORM
_WLO = VecOp.WIDE_LO
_ROT = VecOp.ROTARY
_I16_I16 = dict(src_fmt=OutFormat.INT16, dst_fmt=OutFormat.INT16)
_SILU = dict(op=VecOp.SILU_GATE, src_fmt=OutFormat.INT16, dst_fmt=OutFormat.INT8,
             p_addr=0x1400, e_addr=0x1800)


@pytest.mark.parametrize("fields,want", [
    (dict(op=_R32), ErrorCode.OK),
    (dict(op=_R32, res_stride=16), ErrorCode.BAD_SHAPE),         # int32 residual rows: 32 bytes
    (dict(op=_R32, add_residual=1), ErrorCode.BAD_MODE),
    (dict(op=_R32, res_addr=0x4000 + 0x1000 - 88), ErrorCode.BAD_ADDRESS),  # int16 rows fit
    (dict(op=_SPLIT, **_I16_I8), ErrorCode.OK),
    (dict(op=_SPLIT, rows=1, dst_stride=0, **_I16_I8), ErrorCode.BAD_SHAPE),  # two rows written
    (dict(op=_SPLIT, dst_addr=0x4000 + 0x1000 - 128, **_I16_I8), ErrorCode.BAD_ADDRESS),
    (dict(op=_SPLIT), ErrorCode.BAD_MODE),                       # int32 source
    (dict(op=_SPLIT, dst_addr=0x1204), ErrorCode.BAD_ALIGN),     # alignment before formats
    (dict(op=_ROT, **_I16_I16), ErrorCode.OK),
    (dict(op=_ROT, src_fmt=OutFormat.INT8, dst_fmt=OutFormat.INT8), ErrorCode.OK),
    (dict(op=_ROT, cols=7, **_I16_I16), ErrorCode.BAD_SHAPE),              # an odd head width
    (dict(op=_ROT, cols=isa.ROTARY_MAX_COLS + 2, src_stride=1024, dst_stride=1024,
          res_stride=1024, **_I16_I16), ErrorCode.BAD_SHAPE),
    (dict(op=_ROT), ErrorCode.BAD_MODE),                                  # int32 source
    (dict(op=_ROT, add_residual=1, **_I16_I16), ErrorCode.BAD_MODE),
    (dict(op=_ROT, res_stride=8, **_I16_I16), ErrorCode.BAD_SHAPE),       # cos | sin: 16 bytes
    (dict(op=_ROT, res_addr=0x4000 + 0x1000 - 72, **_I16_I16), ErrorCode.BAD_ADDRESS),
    (dict(op=_RMS, p_addr=0x1400), ErrorCode.OK),
    (dict(op=_RMS, p_addr=0x1404), ErrorCode.BAD_ALIGN),
    (dict(op=_RMS, p_addr=0x4000 + 0x1000 - 64), ErrorCode.BAD_ADDRESS),   # 8 records: 128 B
    (dict(op=_RMS, p_addr=0x1400, cols=nx.RMS_MAX_COLS + 1, src_stride=8192, dst_stride=8192),
     ErrorCode.BAD_SHAPE),
    (dict(op=_RMS, p_addr=0x1400, shift=nx.SHIFT_MAX + 1), ErrorCode.BAD_PARAM),
    (dict(op=_SMW, e_addr=0x1800, mult=100, shift=10), ErrorCode.OK),
    (dict(op=_SMW, e_addr=0x1800, cols=isa.SOFTMAX_WIDE_MAX_COLS + 1, src_stride=4096,
          dst_stride=4096), ErrorCode.BAD_SHAPE),
    (dict(op=_SMW, e_addr=0x1804), ErrorCode.BAD_ALIGN),
    (dict(op=_SMW, e_addr=0x4000 + 0x1000), ErrorCode.BAD_ADDRESS),       # the row exponents
    (dict(op=_SMW, e_addr=0x1800, shift=48), ErrorCode.BAD_PARAM),
    (dict(op=_SMD, e_addr=0x1800, mult=100, shift=10), ErrorCode.OK),
    (dict(op=_SMD, e_addr=0x1804), ErrorCode.BAD_ALIGN),
    (dict(op=_SMD, e_addr=0x4000 + 0x1000), ErrorCode.BAD_ADDRESS),       # the row exponents
    (dict(op=_SMD, e_addr=0x1800, shift=48), ErrorCode.BAD_PARAM),
    (dict(_SILU), ErrorCode.OK),
    (dict(_SILU, res_shift=8), ErrorCode.OK),
    (dict(_SILU, res_stride=8), ErrorCode.BAD_SHAPE),            # int16 up rows: 16 bytes
    (dict(_SILU, e_addr=0x1804), ErrorCode.BAD_ALIGN),
    (dict(_SILU, src_fmt=OutFormat.INT32), ErrorCode.BAD_MODE),
    (dict(_SILU, add_residual=1), ErrorCode.BAD_MODE),
    (dict(_SILU, p_addr=0x4000 + 0x1000 - 64), ErrorCode.BAD_ADDRESS),   # 8 records: 128 B
    (dict(_SILU, res_shift=4), ErrorCode.BAD_PARAM),
    (dict(_SILU, res_shift=17), ErrorCode.BAD_PARAM),
    (dict(op=_WLO, e_addr=0x1800), ErrorCode.OK),
    (dict(op=_WLO, e_addr=0x1800, rows=isa.WIDE_LO_MAX_ROWS + 1), ErrorCode.BAD_SHAPE),
    (dict(op=_WLO, e_addr=0x1804), ErrorCode.BAD_ALIGN),
    (dict(op=_WLO, e_addr=0x1800, dst_fmt=OutFormat.INT16), ErrorCode.BAD_MODE),
    (dict(op=_WLO, e_addr=0x4000 + 0x1000), ErrorCode.BAD_ADDRESS),       # the exponents read
])
def test_decoder_ops_checks_like_isa_sim(fields, want):
    """A ``Sizing(decoder_ops=True)`` controller: RESIDUAL32's int32 residual span,
    WIDE_SPLIT's two planes (a one-row split still needs a full stride; the second plane past
    the window), their formats (BAD_MODE after the alignment), RMSNORM's records, row length
    and shift, SILU_GATE's operands, formats and res_shift, WIDE_LO's rows, exponents and
    format, ROTARY's head width, formats and tables, each as the isa simulator modelling that
    build."""
    from celosia.hdl.params import Sizing

    img = error_image("ok", CFG)
    assert img.base == 0x1000 and img.size == 0x4000
    _decoder_program(img, **fields)
    if fields["op"] == _RMS and fields["p_addr"] == 0x1400:
        img.mem[0x1400:0x1400 + 16 * 8] = 0       # valid records (gamma 0, no epsilon)
    if fields["op"] == VecOp.SILU_GATE and fields["p_addr"] == 0x1400:
        rec = np.zeros(8, dtype=isa.VEC_PARAM_DTYPE)
        rec["mult"], rec["shift"] = 1000, nx.ROW_EXP_MAX + 10      # valid records
        img.mem[0x1400:0x1400 + 16 * 8] = np.frombuffer(rec.tobytes(), np.uint8)
    ops = Sizing(decoder_ops=True).decoder_op_set()
    result, _, (mm, vec) = run_controller(img, vector=True, decoder_ops=True)
    expect_like_isa(img, result, vector_unit=True, decoder_ops=ops)
    assert result["code"] == want
    assert len(vec.log) == (want == ErrorCode.OK)


def _matmul_program(cmds, *, base=0x1000, size=0x4000):
    """An image running MATMULs with the given fields (the window zeroed; no requantisation,
    so no records are read), then HALT."""
    mem = np.zeros(base + size + 0x100, np.uint8)
    code = b"".join(ins.encode() for ins in [isa.matmul(**f) for f in cmds] + [isa.halt()])
    prog = base + size - 0x400
    mem[prog:prog + len(code)] = np.frombuffer(code, np.uint8)
    return Image(mem, base, size, prog, CFG, {"instructions": len(cmds) + 1})


def _mm(c_addr, a_addr=0x1000, b_addr=0x1400, **extra):
    fields = dict(m=3, k=8, n=8, a_addr=a_addr, a_stride=16, b_addr=b_addr, b_stride=8,
                  c_addr=c_addr, c_stride=32)
    fields.update(extra)
    return fields


# The first MATMUL writes C at 0x2000: 3 rows of 32 bytes at a stride of 32, [0x2000, 0x2060).
# A covers [a_addr, a_addr + 40), B [b_addr, b_addr + 64). Each case: the MATMULs, and the
# flags expected for the second one on.
INDEPENDENCE_CASES = {
    "apart": ([_mm(0x2000), _mm(0x2400)], [True]),
    "A is the previous C": ([_mm(0x2000), _mm(0x2400, a_addr=0x2000)], [False]),
    "A ends where C starts": ([_mm(0x2000), _mm(0x2400, a_addr=0x2000 - 40)], [True]),
    "A's last byte in C": ([_mm(0x2000), _mm(0x2400, a_addr=0x2000 - 32)], [False]),
    "B starts at C's end": ([_mm(0x2000), _mm(0x2400, b_addr=0x2060)], [True]),
    "B's first byte in C": ([_mm(0x2000), _mm(0x2400, b_addr=0x2058)], [False]),
    "transposed B in C": ([_mm(0x2000), _mm(0x2400, b_addr=0x1fa0, b_transposed=1,
                                             b_stride=16)], [False]),
    "addend in C": ([_mm(0x2000), _mm(0x2400, addend=1, d_addr=0x2040, d_stride=32)], [False]),
    "records in C": ([_mm(0x2000), _mm(0x2400, use_params=1, p_addr=0x2020)], [False]),
    "exponents in C": ([_mm(0x2000), _mm(0x2400, row_shift=1, e_addr=0x2058)], [False]),
    "writes over its own reads": ([_mm(0x2000), _mm(0x1000)], [True]),
    "a chain of three": ([_mm(0x2000), _mm(0x2400), _mm(0x2800, a_addr=0x2400, a_stride=32)],
                         [True, False]),
}


@pytest.mark.parametrize("serial_check", [False, True])
@pytest.mark.parametrize("case", sorted(INDEPENDENCE_CASES))
def test_controller_marks_matmuls_that_read_the_previous_result(case, serial_check):
    """``mm_cmd_independent`` beside each MATMUL: set exactly when none of the bytes it reads
    (A, B, the addend, the records, the row exponents: first to last byte) is one the MATMUL
    before it writes, as ``isa_sim.independent_matmuls`` says; with both span checks."""
    cmds, expected = INDEPENDENCE_CASES[case]
    img = _matmul_program(cmds)
    result, _, (mm,) = run_controller(img, independence="serial" if serial_check else "one cycle")
    expect_like_isa(img, result)
    assert result["done"]
    want = independent_matmuls([isa.matmul(**f).fields for f in cmds])
    assert want == [True] + expected
    assert mm.flags == want


def test_controller_marks_a_dependent_chain():
    """matmul_chain without SYNCs: each link reads the one before's result."""
    img = matmul_chain(2, CFG, links=3, fence=False)
    result, _, (mm,) = run_controller(img, independence="one cycle")
    assert result["done"]
    assert mm.flags == [True, False, False]
