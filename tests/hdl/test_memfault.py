"""Memory faults on the whole accelerator in Amaranth's simulator: the Python AXI4 memory
answers one read or one write with SLVERR or DECERR, or stops answering for a while; the run
stops with MEM_READ_ERROR / MEM_WRITE_ERROR / MEM_TIMEOUT at the instruction that owned the
access, nothing after it is written, and the same accelerator (no reset) then runs the program
again bit-exact with the isa simulator, late answers of the old run dropped on the way."""

import numpy as np
import pytest

from celosia.hdl import isa
from celosia.hdl.accelerator import Accelerator
from celosia.hdl.isa import CSR, ErrorCode, MachineConfig, Opcode
from celosia.sim.pysim import run
from celosia.sim.tb_accelerator import (AxiMemoryModel, axil_read, axil_write, matmul_chain,
                                        reference)

SLVERR, DECERR = 2, 3
#: A short watchdog bound for the tests (the built default is params.MEM_TIMEOUT_CYCLES).
TIMEOUT = 150
CONFIG = MachineConfig(2, 8)


def program_of(img):
    """[(address, Instruction)] of the image's program, up to its HALT."""
    out = []
    addr = img.prog
    while True:
        ins = isa.Instruction.decode(bytes(img.mem[addr:addr + isa.INSTR_BYTES]))
        out.append((addr, ins))
        if ins.opcode == Opcode.HALT:
            return out
        addr += isa.INSTR_BYTES


def once(match, value):
    """A fault function: ``value`` for the first beat whose address ``match`` accepts, 0 after."""
    fired = []

    def f(addr):
        if not fired and match(addr):
            fired.append(addr)
            return value
        return 0
    f.fired = fired
    return f


def in_span(span):
    return lambda addr: span.start <= addr < span.end


def before(img, k):
    """Memory after the isa simulator ran the program's instructions before the k-th."""
    prog = program_of(img)
    cut = img.mem.copy()
    cut[prog[k][0]:prog[k][0] + isa.INSTR_BYTES] = np.frombuffer(isa.halt().encode(), np.uint8)
    from celosia.sim.tb_accelerator import Image
    mem, _, _ = reference(Image(cut, img.base, img.size, img.prog, img.config, {}),
                          vector_unit=True)
    mem[prog[k][0]:prog[k][0] + isa.INSTR_BYTES] = img.mem[prog[k][0]:prog[k][0] + isa.INSTR_BYTES]
    return mem


def session(img, *, runs=2, abort_when=None, gap=0, latency=2, stall=0.0, max_cycles=60_000,
            vector=False, **faults):
    """Start the image's program ``runs`` times on one accelerator (no reset between runs),
    writing CTRL.abort between runs (the last one ``gap`` cycles after the stop before it) (and, in the first run, 20 cycles after ``abort_when()``
    turns true); returns the memory model, the memory after the first run and each run's
    registers."""
    dut = Accelerator(2, CONFIG.port_bytes, k_max=64, mem_timeout=TIMEOUT, vector=vector)
    mem = img.mem.copy()
    model = AxiMemoryModel(dut.m_axi, mem, CONFIG.port_bytes, latency=latency, stall=stall,
                           **faults)
    results, first = [], []
    model.first_run_log = None

    async def host(ctx):
        bus = dut.s_axil
        for name, value in (("WIN_BASE", img.base), ("WIN_SIZE", img.size),
                            ("PROG_ADDR", img.prog)):
            await axil_write(ctx, bus, getattr(CSR, name).offset, value)
        for r in range(runs):
            if r == runs - 1 and r and gap:
                await ctx.tick().repeat(gap)
            if r:
                # What a driver does after an error: abort (ignored when stopped), start again.
                await axil_write(ctx, bus, CSR.CTRL.offset, CSR.CTRL.make(abort=1))
            await axil_write(ctx, bus, CSR.CTRL.offset, CSR.CTRL.make(start=1, clear_counters=1))
            if r == 0 and abort_when is not None:
                while not abort_when():
                    await ctx.tick()
                await ctx.tick().repeat(20)
                await axil_write(ctx, bus, CSR.CTRL.offset, CSR.CTRL.make(abort=1))
            while CSR.STATUS.get(await axil_read(ctx, bus, CSR.STATUS.offset), "busy"):
                await ctx.tick().repeat(20)
            regs = {name: await axil_read(ctx, bus, getattr(CSR, name).offset)
                    for name in ("STATUS", "ERROR", "ERROR_PC", "PC", "INSTRET")}
            results.append(regs)
            if r == 0:
                first.append(mem.copy())
                model.first_run_log = list(model.log)

    run(dut, host, background=[model], deadline_cycles=max_cycles)
    return model, first[0], results


def check_recovered(img, mem_after, regs, vector=False):
    ref_mem, ref, _ = reference(img, vector_unit=vector)
    assert regs["ERROR"] == ErrorCode.OK and regs["INSTRET"] == ref["INSTRET"]
    diff = np.flatnonzero(mem_after != ref_mem)
    assert diff.size == 0, f"{diff.size} bytes differ after the second run, first at {diff[0]:#x}"


def check_stopped(img, k, mem, regs, code, at=None):
    """Stopped with ``code`` at instruction k (or at the instruction index ``at``); outside
    k's destination, memory as after the instructions before k."""
    prog = program_of(img)
    at = k if at is None else at
    assert ErrorCode(regs["ERROR"]) == code, (ErrorCode(regs["ERROR"]), regs)
    assert regs["ERROR_PC"] == prog[at][0] and regs["PC"] == prog[at][0]
    assert CSR.STATUS.get(regs["STATUS"], "error") and not CSR.STATUS.get(regs["STATUS"], "busy")
    expect = before(img, k)
    changed = np.flatnonzero(mem != expect)
    _, writes = isa.footprint(prog[k][1])
    dest = [span for _, span, _, _ in writes]
    outside = [a for a in changed if not any(s.start <= a < s.end for s in dest)]
    assert not outside, f"{len(outside)} bytes written outside instruction {k}'s destination"


def chain():
    img = matmul_chain(5, CONFIG, links=3, max_dim=6)
    prog = program_of(img)
    mm = [i for i, (_, ins) in enumerate(prog) if ins.opcode == Opcode.MATMUL]
    assert len(mm) == 3
    return img, prog, mm


@pytest.mark.parametrize("resp", [SLVERR, DECERR])
def test_read_error_in_a_unit_read(resp):
    """The second MATMUL's B operand read fails: MEM_READ_ERROR at that MATMUL; the third
    never runs; the program then runs again bit-exact."""
    img, prog, mm = chain()
    k = mm[1]
    reads, _ = isa.footprint(prog[k][1])
    b = dict((name, span) for name, span, _, _ in reads)["b"]
    fault = once(in_span(b), resp)
    model, mem1, (r1, r2) = session(img, rresp=fault)
    assert fault.fired
    check_stopped(img, k, mem1, r1, ErrorCode.MEM_READ_ERROR)
    check_recovered(img, model.mem, r2)


@pytest.mark.parametrize("resp", [SLVERR, DECERR])
def test_read_error_in_an_instruction_fetch(resp):
    """The fetch of the third instruction fails: it is not decoded, MEM_READ_ERROR names it."""
    img, prog, mm = chain()
    k = 2
    fault = once(lambda a: prog[k][0] <= a < prog[k][0] + isa.INSTR_BYTES, resp)
    model, mem1, (r1, r2) = session(img, rresp=fault)
    check_stopped(img, k, mem1, r1, ErrorCode.MEM_READ_ERROR)
    assert r1["INSTRET"] == k
    check_recovered(img, model.mem, r2)


def test_read_error_in_a_record_scan():
    """The controller's parameter-record scan of the first MATMUL fails."""
    img, prog, mm = chain()
    k = mm[0]
    reads, _ = isa.footprint(prog[k][1])
    p = dict((name, span) for name, span, _, _ in reads)["p"]
    fault = once(in_span(p), SLVERR)
    model, mem1, (r1, r2) = session(img, rresp=fault)
    check_stopped(img, k, mem1, r1, ErrorCode.MEM_READ_ERROR)
    check_recovered(img, model.mem, r2)


@pytest.mark.parametrize("resp", [SLVERR, DECERR])
def test_write_error(resp):
    """A result write of the second MATMUL fails: MEM_WRITE_ERROR at that MATMUL; nothing
    is written after the fault, the third MATMUL never runs."""
    img, prog, mm = chain()
    k = mm[1]
    _, writes = isa.footprint(prog[k][1])
    fault = once(in_span(writes[0][1]), resp)
    model, mem1, (r1, r2) = session(img, bresp=fault)
    assert fault.fired
    check_stopped(img, k, mem1, r1, ErrorCode.MEM_WRITE_ERROR)
    # The writes that reached the memory after the failing one (issued before its response
    # came back) are the MATMUL's own.
    log = model.first_run_log
    i = next(j for j, e in enumerate(log) if e[0] == "w" and e[2])
    c = writes[0][1]
    late = [a for kind, a, _ in log[i + 1:] if kind == "w"]
    assert all(c.start <= a < c.end for a in late), late
    check_recovered(img, model.mem, r2)


def test_timeout_while_still_silent():
    """A START while the memory is still silent (since the second MATMUL's first read of its
    column parameters, after A and B) times out again (the master does not take new requests
    past transactions the memory still owes); once it answers, the next run is bit-exact."""
    img, prog, mm = chain()
    k = mm[1]
    reads, _ = isa.footprint(prog[k][1])
    p = dict((name, span) for name, span, _, _ in reads)["p"]
    frozen = once(in_span(p), 3 * TIMEOUT)
    model, mem1, (r1, r2, r3) = session(img, runs=3, freeze=frozen, gap=2 * TIMEOUT)
    check_stopped(img, k, mem1, r1, ErrorCode.MEM_TIMEOUT)
    assert r2["ERROR"] == ErrorCode.MEM_TIMEOUT and r2["ERROR_PC"] == img.prog
    check_recovered(img, model.mem, r3)


def test_timeout_then_restart():
    """The memory stops answering (all channels) when the second MATMUL reads its column
    parameters (after A and B, so the controller's fetch ahead has been answered; the first
    read of A comes with that fetch), for twice the watchdog bound: MEM_TIMEOUT at that
    MATMUL; the next START comes while the memory is still silent and owes the old run's
    beats, which arrive late and are dropped, and the new run's requests are answered after
    them."""
    img, prog, mm = chain()
    k = mm[1]
    reads, _ = isa.footprint(prog[k][1])
    p = dict((name, span) for name, span, _, _ in reads)["p"]
    frozen = once(in_span(p), 2 * TIMEOUT)
    model, mem1, (r1, r2) = session(img, freeze=frozen)
    assert frozen.fired
    check_stopped(img, k, mem1, r1, ErrorCode.MEM_TIMEOUT)
    check_recovered(img, model.mem, r2)


def test_abort_of_a_run_stuck_on_memory():
    """The host aborts while the memory does not answer: the abort cannot drain through the
    memory, the watchdog ends it (MEM_TIMEOUT, the more telling code), and the accelerator
    runs the program again without a reset. The oldest unanswered read here is the fetch of
    the SYNC after the MATMUL (the controller fetches ahead), so ERROR_PC names the SYNC; the
    MATMUL's destination is all that may have changed."""
    img, prog, mm = chain()
    k = mm[0]
    reads, _ = isa.footprint(prog[k][1])
    b = dict((name, span) for name, span, _, _ in reads)["b"]
    frozen = once(in_span(b), 2 * TIMEOUT)
    model, mem1, (r1, r2) = session(img, freeze=frozen, abort_when=lambda: frozen.fired)
    assert frozen.fired
    assert prog[k + 1][1].opcode == Opcode.SYNC
    check_stopped(img, k, mem1, r1, ErrorCode.MEM_TIMEOUT, at=k + 1)
    check_recovered(img, model.mem, r2)


@pytest.mark.parametrize("kind", ["read", "write"])
def test_vector_engine_faults(kind):
    """With the vector engine: a read of the first VECTOR's residual operand, or a write of
    its destination, fails; the stop names that VECTOR (the vector engine's port, and for the
    write the master's FIFO of write ports), and the program then runs again bit-exact."""
    from celosia.hdl.accelerator import vector_engine_factory
    if vector_engine_factory() is None:
        pytest.skip("this tree has no vector engine")
    from test_accelerator import sync_handover_image
    img = sync_handover_image(CONFIG)
    prog = program_of(img)
    k = next(i for i, (_, ins) in enumerate(prog) if ins.opcode == Opcode.VECTOR)
    reads, writes = isa.footprint(prog[k][1])
    if kind == "read":
        span = dict((name, sp) for name, sp, _, _ in reads)["res"]
        fault = once(in_span(span), SLVERR)
        model, mem1, (r1, r2) = session(img, vector=True, rresp=fault)
        code = ErrorCode.MEM_READ_ERROR
    else:
        fault = once(in_span(writes[0][1]), DECERR)
        model, mem1, (r1, r2) = session(img, vector=True, bresp=fault)
        code = ErrorCode.MEM_WRITE_ERROR
    assert fault.fired
    check_stopped(img, k, mem1, r1, code)
    check_recovered(img, model.mem, r2, vector=True)
