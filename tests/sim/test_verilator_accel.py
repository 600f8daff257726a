"""The Verilated accelerator behind its C++ AXI harness (the ``verilator`` backend): random
matmul programs and random instruction streams (sw/fuzz.py) give the memory, CSRs and error codes of
sw/isa_sim.py; nothing outside the window changes; the driver runs over it."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from celosia.hdl import isa
from celosia.hdl.isa import CSR, INSTR_BYTES, ErrorCode, MachineConfig
from celosia.sim.tb_accelerator import (CSR_RESULTS, error_image, matmul_chain, reference,
                                        status_bits)
from celosia.sim.verilator_accel import VerilatorAccel, VerilatorBackend
from celosia.sw.driver import Accelerator, AcceleratorError
from celosia.sw.fuzz import fuzz_instruction
from celosia.sw.isa_sim import IsaMachine

CFG = MachineConfig(4, 8)
MEM = 1 << 17


@pytest.fixture(scope="module")
def accel():
    with VerilatorAccel(CFG.array, CFG.port_bytes, mem_bytes=MEM) as v:
        yield v


def run_image(v, img, *, max_cycles=4_000_000):
    v.reset()
    v.mem[:] = 0
    v.mem[:len(img.mem)] = img.mem
    for name, value in (("WIN_BASE", img.base), ("WIN_SIZE", img.size), ("PROG_ADDR", img.prog)):
        v.write_csr(name, value)
    v.write_csr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))
    v.run(max_cycles)
    regs = {name: v.read_csr(name) for name in CSR_RESULTS}
    assert not CSR.STATUS.get(regs["STATUS"], "busy"), "did not stop"
    regs["CYCLES"] = v.read_csr("CYCLES_LO") | v.read_csr("CYCLES_HI") << 32
    return v.mem[:len(img.mem)].copy(), regs


def compare(img, mem, regs, *, memory=True):
    ref_mem, ref, mach = reference(img)
    for name in ("ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT", "VECTOR_COUNT"):
        assert regs[name] == ref[name], (name, regs[name], ref[name], mach.error_detail)
    assert status_bits(regs["STATUS"]) == ref["STATUS"]
    if memory:
        diff = np.flatnonzero(mem != ref_mem)
        assert diff.size == 0, f"{diff.size} bytes differ, first at {diff[0]:#x}"
    return ref


def test_random_matmul_programs(accel):
    ratios = []
    for seed in range(10):
        accel.memory_model(latency=2 + seed % 7, seed=seed + 1, stall=0.25 if seed % 3 == 1 else 0.0)
        img = matmul_chain(100 + seed, CFG, links=2 + seed % 3, max_dim=40)
        mem, regs = run_image(accel, img)
        ref = compare(img, mem, regs)
        assert regs["ERROR"] == ErrorCode.OK
        ratios.append(regs["CYCLES"] / max(ref["CYCLES"], 1))
    print(f"RTL cycles / isa_sim model cycles: {min(ratios):.2f}..{max(ratios):.2f}")
    accel.memory_model()


@pytest.mark.parametrize("kind", ["illegal", "window", "param", "vector", "fetch"])
def test_error_programs(accel, kind):
    img = error_image(kind, CFG)
    mem, regs = run_image(accel, img)
    compare(img, mem, regs)
    assert regs["ERROR"] != ErrorCode.OK


def test_isa_fuzz_streams(accel):
    """The isa tests' random instruction streams (without a vector unit): same stop, same
    ERROR/ERROR_PC/PC, counts and memory where isa_sim records no hazard (a program that
    breaks an ordering rule of docs/isa.md -- an unfenced read of an earlier command's
    output, a command writing its own operands, an unfenced write to the code -- leaves
    undefined memory); never a byte outside the window."""
    rng = np.random.default_rng(7)
    guard, size = 0x800, 0x2000
    base = guard
    outcomes, compared = {}, 0
    def instruction(no_vector):
        while True:
            raw = fuzz_instruction(rng, base, base + size)
            if not (no_vector and raw[0] == isa.Opcode.VECTOR):
                return raw

    trials = 512
    for trial in range(trials):
        mem = rng.integers(0, 256, base + size + guard, dtype=np.uint8)
        pattern = mem.copy()
        if trial % 2:
            mem[base:base + size] = 0
        n = int(rng.integers(1, 12))
        code = b"".join(instruction(trial % 4 != 3) for _ in range(n))
        prog = base + int(rng.integers(0, (size - len(code)) // INSTR_BYTES + 1)) * INSTR_BYTES
        mem[prog:prog + len(code)] = np.frombuffer(code, np.uint8)
        from celosia.sim.tb_accelerator import Image
        img = Image(mem, base, size, prog, CFG)
        out, regs = run_image(accel, img)
        _, ref, mach = reference(img)
        clean = not mach.hazards
        if clean:
            compare(img, out, regs)
        compared += clean
        outcomes[ErrorCode(regs["ERROR"]).name] = outcomes.get(ErrorCode(regs["ERROR"]).name, 0) + 1
        assert np.array_equal(out[:base], pattern[:base]) and np.array_equal(
            out[base + size:], pattern[base + size:]), f"trial {trial} wrote outside the window"
    print(outcomes, f"memory compared on {compared} of {trials}")
    assert compared >= trials // 2 and len(outcomes) >= 5


def test_driver_over_the_verilator_backend():
    backend = VerilatorBackend(CFG, MEM)
    acc = Accelerator(backend)
    assert acc.config == CFG
    img = error_image("param", CFG)
    backend.write_memory(0, img.mem.tobytes())
    backend.write_csr("WIN_BASE", img.base)
    backend.write_csr("WIN_SIZE", img.size)
    acc.start(img.prog)
    with pytest.raises(AcceleratorError) as info:
        acc.wait(max_cycles=100_000)
    assert info.value.status.error == ErrorCode.BAD_PARAM
    assert info.value.status.error_pc == img.prog
    img = matmul_chain(3, CFG, links=3)
    backend.write_memory(0, img.mem.tobytes())
    acc.start(img.prog)
    acc.wait(max_cycles=1_000_000)
    assert acc.counters()["matmul_count"] == 3


def test_throughput(accel):
    """One large matmul: simulated cycles per wall second of the C++ path."""
    m, k, n = 64, 256, 64
    rng = np.random.default_rng(0)
    base, size = 0x1000, 0x10000
    mem = np.zeros(base + size, np.uint8)
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    mem[base:base + a.size] = a.view(np.uint8).ravel()
    mem[base + 0x4000:base + 0x4000 + b.size] = b.view(np.uint8).ravel()
    c_addr = base + 0x8000
    prog = base + 0xF000
    code = (isa.matmul(m=m, k=k, n=n, a_addr=base, a_stride=k, b_addr=base + 0x4000, b_stride=n,
                       c_addr=c_addr, c_stride=4 * n).encode() + isa.halt().encode())
    mem[prog:prog + len(code)] = np.frombuffer(code, np.uint8)
    from celosia.sim.tb_accelerator import Image
    img = Image(mem, base, size, prog, CFG)
    t0 = time.perf_counter()
    out, regs = run_image(accel, img)
    wall = time.perf_counter() - t0
    c = out[c_addr:c_addr + 4 * m * n].view("<i4").reshape(m, n)
    assert np.array_equal(c, a.astype(np.int64) @ b.astype(np.int64))
    _, ref, _ = reference(img)
    print(f"{m}x{k}x{n} on N={CFG.array}: {regs['CYCLES']} cycles (isa_sim model {ref['CYCLES']}, "
          f"ideal {m * k * n // CFG.array ** 2}), {regs['CYCLES'] / wall / 1e6:.2f} M cycles/s")


def _sync_handover_image():
    path = Path(__file__).parents[1] / "hdl" / "test_accelerator.py"
    spec = importlib.util.spec_from_file_location("_accel_sync_handover", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.sync_handover_image


def test_sync_after_back_to_back_commands_with_the_vector_engine():
    """The build with the vector engine at N = 8 (the MiniLM build): two commands of one unit
    back to back, a SYNC naming it, then the other unit reading the second one's output, in
    both directions, under several memory latencies: memory and CSRs of isa_sim. (A SYNC
    once passed in the cycle its unit took the second command out of the issue slot.)"""
    from celosia.hdl.accelerator import vector_engine_factory
    if vector_engine_factory() is None:
        pytest.skip("this tree has no vector engine")
    make = _sync_handover_image()
    cfg = MachineConfig(8, 16)
    with VerilatorAccel(cfg.array, cfg.port_bytes, vector=True, mem_bytes=1 << 16) as v:
        for seed in range(6):
            img = make(cfg, seed=seed, k=32 + 16 * seed)
            v.memory_model(latency=1 + 2 * seed, seed=seed + 1, stall=0.2 if seed % 2 else 0.0)
            out, regs = run_image(v, img)
            ref_mem, ref, mach = reference(img, vector_unit=True)
            for name in ("ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT", "VECTOR_COUNT"):
                assert regs[name] == ref[name], (seed, name, regs[name], ref[name])
            diff = np.flatnonzero(out != ref_mem)
            assert diff.size == 0, f"seed {seed}: {diff.size} bytes differ, first at {diff[0]:#x}"
