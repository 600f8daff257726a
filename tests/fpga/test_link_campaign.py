"""The hardened link end to end on the simulated iCEBreaker board (sim/link_campaign.py,
sim/verilator_uart.py): a slice of the fault campaign (flipped, dropped, duplicated, reordered
and truncated bytes and frames, board resets) with no silent error; a board reset in the
middle of a run is a clear error and the next run is bit-exact; Ctrl-C in the middle of a run
leaves the board usable by the next backend, which aborts the program left running.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from celosia.hdl.isa import CSR, MachineConfig

CFG = MachineConfig(2, 4)


@pytest.fixture(scope="module")
def board():
    from celosia.sim.link_campaign import BOARD
    from celosia.sim.verilator_uart import SimBoard

    with SimBoard(**BOARD) as b:
        yield b


def long_image(reps: int = 78):
    """``reps`` int32 matmuls of 16x64 by 64x64 on the same operands (some 1.3 M cycles on
    the 2x2 array, seconds on the Verilated board), then HALT."""
    from celosia.hdl import isa
    from celosia.sim.tb_accelerator import Image

    rng = np.random.default_rng(7)
    base, size = 0x800, 0x3800
    mem = np.zeros(base + size, np.uint8)
    a, b, c, prog = base, base + 0x400, base + 0x1400, base + 0x2400
    mem[a:a + 0x400] = rng.integers(0, 256, 0x400, np.uint8)
    mem[b:b + 0x1000] = rng.integers(0, 256, 0x1000, np.uint8)
    program = [isa.matmul(m=16, k=64, n=64, a_addr=a, a_stride=64, b_addr=b, b_stride=64,
                          c_addr=c, c_stride=256) for _ in range(reps)]
    program += [isa.sync(isa.Unit.MATMUL), isa.halt()]
    raw = b"".join(i.encode() for i in program)
    assert prog + len(raw) <= base + size
    mem[prog:prog + len(raw)] = np.frombuffer(raw, np.uint8)
    return Image(mem, base, size, prog, CFG, {})


def _chain(seed):
    from celosia.sim.link_campaign import BASE, SIZE
    from celosia.sim.tb_accelerator import matmul_chain

    return matmul_chain(seed, CFG, links=3, base=BASE, size=SIZE, max_dim=9)


def _bit_exact(be, img):
    """Run ``img`` through the driver; assert the window and counters equal the isa
    simulator's, integer for integer."""
    from celosia.sim.link_campaign import _one_run
    from celosia.sim.tb_accelerator import reference

    regs, got = _one_run(be, img, CFG)
    ref_mem, ref, _ = reference(img)
    for name in ("ERROR", "PC", "INSTRET", "MATMUL_COUNT"):
        assert regs[name] == ref[name], name
    want = ref_mem[img.base:img.base + img.size]
    got = np.frombuffer(got, np.uint8)
    assert np.array_equal(got, want), np.flatnonzero(got != want)[:8]


def _start(be, img):
    from celosia.sw.driver import Accelerator

    acc = Accelerator(be)
    be.write_memory(img.base, img.mem[img.base:img.base + img.size].tobytes())
    be.write_csr("WIN_BASE", img.base)
    be.write_csr("WIN_SIZE", img.size)
    acc.start(img.prog)
    return acc


def test_campaign_slice(board):
    """A couple of hundred injected faults of every kind: every run bit-exact or a clear
    error; then three runs with frequent board resets, each a clear error or bit-exact."""
    from celosia.sim.link_campaign import run_campaign

    t0 = time.monotonic()
    r = run_campaign(200, seed=11, board=board, resets=0.0)
    print(f"\ncampaign slice: {r['runs']} runs, {r['faults']} faults {r['faults_by_kind']}, "
          f"{r['bit_exact']} bit-exact, {r['clear_errors']} clear errors "
          f"{r['errors_by_type']}, {time.monotonic() - t0:.1f} s")
    assert r["silent_errors"] == 0, r["silent"]
    assert r["unexpected"] == 0, r["unexpected_tracebacks"]
    assert r["faults"] >= 200 and r["bit_exact"] >= 1
    assert r["bit_exact"] + r["clear_errors"] == r["runs"]
    for kind in ("flips", "drops", "dups", "reorders", "truncations"):
        assert r["faults_by_kind"][kind] > 0, kind
    r = run_campaign(10**9, seed=12, board=board, resets=0.02, max_runs=3)
    print(f"with resets: {r['runs']} runs, {r['faults_by_kind']}, {r['bit_exact']} bit-exact, "
          f"{r['errors_by_type']}")
    assert r["silent_errors"] == 0 and r["unexpected"] == 0
    assert r["faults_by_kind"]["resets"] >= 1
    assert set(r["errors_by_type"]) <= {"BoardResetError"} and r["clear_errors"] >= 1


def test_board_reset_mid_run(board):
    """The board reset while a program runs: BoardResetError at the next poll, not a wrong
    result; the next backend finds the reset (INFO), runs a program bit-exact."""
    from celosia.sw.serial_backend import BoardResetError, SerialBackend

    with SerialBackend(board.url, **board.backend_options()) as be:
        acc = _start(be, long_image())
        assert CSR.STATUS.get(be.read_csr("STATUS"), "busy")
        board.reset()
        with pytest.raises(BoardResetError, match="reset during this session"):
            acc.wait(timeout_s=60)
    with SerialBackend(board.url, **board.backend_options()) as be:
        assert be.board_was_reset
        _bit_exact(be, _chain(1))


def test_ctrl_c_mid_run(board):
    """KeyboardInterrupt from the driver's progress callback while a long program runs: the
    next backend on the port aborts it, and the next run is bit-exact; then Ctrl-C half way
    through a memory write, and again a bit-exact run."""
    from celosia.sw.serial_backend import SerialBackend

    be = SerialBackend(board.url, **board.backend_options())
    acc = _start(be, long_image())

    def progress(retired):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        acc.wait(timeout_s=60, progress=progress, progress_cycles=2000)
    assert CSR.STATUS.get(be.read_csr("STATUS"), "busy")
    be.close()
    with SerialBackend(board.url, **board.backend_options()) as be:
        assert be.stats["aborted_on_open"] == 1 and not be.board_was_reset
        assert not CSR.STATUS.get(be.read_csr("STATUS"), "busy")
        _bit_exact(be, _chain(2))
        # Interrupted with half a frame on the line.
        real = be._ser.write

        def half(data):
            real(bytes(data[:len(data) // 2]))
            raise KeyboardInterrupt

        be._ser.write = half
        with pytest.raises(KeyboardInterrupt):
            be.write_memory(0x800, bytes(200))
        be._ser.write = real
        _bit_exact(be, _chain(3))
    with SerialBackend(board.url, **board.backend_options()) as be:
        assert be.stats["aborted_on_open"] == 0
        _bit_exact(be, _chain(4))
