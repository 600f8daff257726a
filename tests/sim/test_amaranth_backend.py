"""The ``amaranth`` backend: the accelerator in Amaranth's Python simulator behind the driver's
Backend interface. Matmul programs (with and without AXI stalls) and a one-layer encoder
(attention and FFN, a MiniLM layer cut down to 16 features) give the memory, CSRs and integers
of the isa backend and the golden model; error programs stop with isa_sim's code; the driver's
cycle limit raises AcceleratorHung and the run resumes; waveforms and bus errors.

The Python simulator runs some hundreds to a couple of thousand cycles per second (N = 8 to 2),
so these programs are small (a few thousand cycles) and the arrays 2x2 and 4x4; the full-size
MiniLM layer at N = 8 is marked slow."""

from __future__ import annotations

import time

import numpy as np
import pytest

from celosia.hdl.isa import CSR, ErrorCode, MachineConfig
from celosia.sim.amaranth_accel import AmaranthBackend, amaranth_backend
from celosia.sim.tb_accelerator import error_image, matmul_chain, reference, status_bits
from celosia.sw import driver, golden
from celosia.sw.compiler import compile_model
from celosia.sw.driver import Accelerator, AcceleratorError, AcceleratorHung, run_compiled
from celosia.sw.isa_sim import IsaBackend
from celosia.sw.quantize import IntegerModel

CFG = MachineConfig(2, 8)


def load_image(backend, img) -> Accelerator:
    """Write ``img`` (a tb_accelerator Image) and its window through the driver."""
    acc = Accelerator(backend)
    backend.write_memory(0, img.mem.tobytes())
    backend.write_csr("WIN_BASE", img.base)
    backend.write_csr("WIN_SIZE", img.size)
    return acc


@pytest.mark.parametrize("cfg,latency,stall", [(CFG, 2, 0.0), (MachineConfig(2, 4), 1, 0.0),
                                               (MachineConfig(4, 8), 6, 0.3)])
def test_matmul_program_matches_isa_sim(cfg, latency, stall):
    """A chain of three MATMULs (modes varied: transposed B, row shifts, ACC32 addend), each
    reading the previous one's output; with random stalls on every AXI channel in the last."""
    img = matmul_chain(11, cfg, links=3, max_dim=8)
    backend = AmaranthBackend(cfg, len(img.mem), latency=latency, stall=stall)
    acc = load_image(backend, img)
    assert acc.config == cfg
    acc.start(img.prog)
    t0 = time.perf_counter()
    c0 = backend.model.cycle
    status = acc.wait(max_cycles=100_000, timeout_s=60)
    wall = time.perf_counter() - t0
    assert status.done and status.error == ErrorCode.OK
    ref_mem, ref, mach = reference(img)
    for name in ("ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT", "VECTOR_COUNT"):
        assert backend.read_csr(name) == ref[name], name
    assert status_bits(backend.read_csr("STATUS")) == ref["STATUS"]
    mem = np.frombuffer(backend.read_memory(0, len(img.mem)), np.uint8)
    diff = np.flatnonzero(mem != ref_mem)
    assert diff.size == 0, f"{diff.size} bytes differ, first at {diff[0]:#x}"
    counters = acc.counters()
    assert counters["matmul_count"] == 3 and counters["cycles"] > 0
    sim = backend.model.cycle - c0
    print(f"matmul chain on N={cfg.array}, W={cfg.port_bytes}, latency {latency}, stall {stall}: "
          f"{counters['cycles']} cycles (isa_sim model {ref['CYCLES']}), "
          f"{sim} simulated in {wall:.2f} s, {sim / wall:.0f} cycles/s")


def tiny_model(im: IntegerModel, hidden: int = 16, heads: int = 2, ffn: int = 32,
               layers: int = 1) -> IntegerModel:
    """The first ``layers`` layers of ``im`` cut down to ``hidden`` features, ``heads`` heads
    (the first ``hidden // heads`` dimensions of each of the first heads) and ``ffn`` FFN units:
    real layers' integer parameters, small enough for the Python simulator."""
    H, n_heads = im.arch.hidden, im.arch.heads
    dh0, dh = H // n_heads, hidden // heads
    hid = np.arange(hidden)
    ctx = np.concatenate([h * dh0 + np.arange(dh) for h in range(heads)])
    qkv = np.concatenate([p * H + ctx for p in range(3)])
    ff = np.arange(ffn)
    per_hidden = ("qkv_in.", "attn_out.rq.", "attn_out.bias", "ln1.", "ffn_in.", "ffn2.bias",
                  "ffn2.rq.", "ln2.")
    out = {}
    for key, value in im.tensors.items():
        v = np.asarray(value)
        layer, _, name = key.partition(".")
        if layer.startswith("L"):
            if int(layer[1:]) >= layers:
                continue
        else:
            name = None
        if v.ndim == 0:
            out[key] = v
        elif name is None or name.startswith(per_hidden):
            out[key] = v[hid]
        elif name == "qkv.weight":
            out[key] = v[np.ix_(hid, qkv)]
        elif name.startswith("qkv."):
            out[key] = v[qkv]
        elif name.startswith("softmax."):
            out[key] = v[:heads]
        elif name.startswith("ctx."):
            out[key] = v[ctx]
        elif name == "attn_out.weight":
            out[key] = v[np.ix_(ctx, hid)]
        elif name == "ffn1.weight":
            out[key] = v[np.ix_(hid, ff)]
        elif name.startswith(("ffn1.", "gelu.")):
            out[key] = v[ff]
        elif name == "ffn2.weight":
            out[key] = v[np.ix_(ff, hid)]
        else:
            raise KeyError(key)
    arch = im.arch.reshaped(hidden=hidden, heads=heads, ffn=ffn, layers=layers)
    return IntegerModel(out, dict(im.meta, arch=arch.to_dict()))


@pytest.mark.parametrize("array,tokens,layers,latency,stall", [(4, 4, 1, 2, 0.0),
                                                               (2, 2, 1, 5, 0.25),
                                                               (4, 2, 2, 3, 0.0)])
def test_small_model_is_bit_exact(minilm, int_model, array, tokens, layers, latency, stall):
    """Embedding LayerNorm, then whole encoder layers (QKV, per-head scores, softmax, context,
    output projection, residual + LayerNorm, FFN with GELU, residual + LayerNorm): the int16
    hidden state of golden.forward and of the isa backend (at N = 2 with AXI stalls); with two
    layers, the cycles of each (the driver stops at the layer boundary with
    advance_to_retired)."""
    tm = tiny_model(int_model, layers=layers)
    ids = minilm.tokenizer.encode("Hello world.")[0][:tokens]
    assert len(ids) == tokens
    e = golden.embed_int32(minilm, int_model, ids)[:, :tm.arch.hidden]
    compiled = compile_model(tm, len(ids), array=array)
    want = golden.forward(tm, e)
    isa = run_compiled(IsaBackend(compiled.config, compiled.end), compiled, e)
    assert np.array_equal(isa.hidden, want)

    t0 = time.perf_counter()
    backend = amaranth_backend(compiled, tm, latency=latency, stall=stall)
    built = time.perf_counter()
    c0 = backend.model.cycle
    result = run_compiled(backend, compiled, e, max_cycles=100_000, timeout_s=120)
    wall = time.perf_counter() - built
    assert result.backend == "amaranth"
    assert np.array_equal(result.hidden, want)
    for name in ("instructions", "matmul_count", "vector_count"):
        assert result.counters[name] == isa.counters[name], name
    per_layer = getattr(result, "layer_cycles", None)
    if layers > 1 and hasattr(compiled, "layer_starts"):
        assert per_layer is not None and len(per_layer) == layers
        assert sum(per_layer) == result.counters["cycles"] and min(per_layer) > 0
    sim = backend.model.cycle - c0
    print(f"{layers} layer(s), 16 features, {len(ids)} tokens, N={array}, stall {stall}: "
          f"per layer {per_layer}, "
          f"{result.counters['cycles']} cycles (isa_sim model {isa.counters['cycles']}), "
          f"build {built - t0:.2f} s, {sim} simulated in {wall:.2f} s, {sim / wall:.0f} cycles/s")


def test_illegal_instruction_stops_with_its_code():
    img = error_image("illegal", CFG)
    backend = AmaranthBackend(CFG, len(img.mem))
    acc = load_image(backend, img)
    acc.start(img.prog)
    with pytest.raises(AcceleratorError) as info:
        acc.wait(max_cycles=20_000)
    _, ref, _ = reference(img)
    status = info.value.status
    assert status.error == ErrorCode.ILLEGAL_OPCODE == ref["ERROR"]
    assert status.error_pc == ref["ERROR_PC"] == img.prog + 64
    assert not status.busy and not status.done


@pytest.mark.parametrize("kind,vector,code", [("window", True, ErrorCode.BAD_ADDRESS),
                                              ("fetch", True, ErrorCode.FETCH_FAULT),
                                              ("vector", False, ErrorCode.UNSUPPORTED)])
def test_other_errors_match_isa_sim(kind, vector, code):
    """C past the window, running off the end of the window, and a VECTOR on a build without
    the vector engine: the code, PC and memory of isa_sim (nothing written outside the
    window)."""
    img = error_image(kind, CFG)
    backend = AmaranthBackend(CFG, len(img.mem), vector=vector)
    acc = load_image(backend, img)
    acc.start(img.prog)
    with pytest.raises(AcceleratorError) as info:
        acc.wait(max_cycles=20_000)
    ref_mem, ref, _ = reference(img, vector_unit=vector)
    assert info.value.status.error == code == ref["ERROR"]
    for name in ("ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT", "VECTOR_COUNT"):
        assert backend.read_csr(name) == ref[name], name
    assert np.array_equal(np.frombuffer(backend.read_memory(0, len(img.mem)), np.uint8), ref_mem)


def test_cycle_limit_raises_hung_and_the_run_resumes():
    img = matmul_chain(4, CFG, links=3, max_dim=8)
    backend = AmaranthBackend(CFG, len(img.mem))
    acc = load_image(backend, img)
    acc.start(img.prog)
    with pytest.raises(AcceleratorHung) as info:
        acc.wait(max_cycles=60)
    assert info.value.status.busy
    assert 60 <= acc.counters()["cycles"] < 60 + 200
    # Stop again once two instructions (the first MATMUL and its SYNC) have retired.
    backend.advance_to_retired(2, 100_000, None)
    assert 2 <= backend.read_csr("INSTRET") < 5 and acc.status().busy
    status = acc.wait(max_cycles=100_000)          # the same run goes on to the end
    assert status.done
    ref_mem, ref, _ = reference(img)
    assert acc.counters()["instructions"] == ref["INSTRET"] == 6
    assert np.array_equal(np.frombuffer(backend.read_memory(0, len(img.mem)), np.uint8), ref_mem)


def test_registered_backend_and_waveform(tmp_path, monkeypatch):
    """Through driver.open_backend under the name "amaranth", with a VCD of the run; a fetch
    past the simulated memory is reported as a bus error."""
    monkeypatch.setitem(driver.BACKENDS, "amaranth", amaranth_backend)
    img = error_image("illegal", CFG)

    class Compiled:                       # what the factory reads of a CompiledModel
        config, end = CFG, len(img.mem)

    vcd = tmp_path / "run.vcd"
    backend = driver.BACKENDS["amaranth"](Compiled, None, waves=vcd, waves_cycles=40)
    acc = load_image(backend, img)
    acc.start(img.prog)
    with pytest.raises(AcceleratorError) as info:       # the run goes on past the 40 cycles
        acc.wait(max_cycles=20_000)
    assert info.value.status.error == ErrorCode.ILLEGAL_OPCODE
    assert backend.model.cycle > 100
    backend.close()
    text = vcd.read_text()
    assert "m_axi__arvalid" in text and "s_axil__awvalid" in text
    stamps = [int(line[1:]) for line in text.splitlines() if line.startswith("#")]
    assert "$timescale 1 fs" in text and max(stamps) == 40 * 10_000_000     # 40 cycles of 10 ns
    with pytest.raises(ValueError, match="VCD"):
        amaranth_backend(Compiled, None, waves=tmp_path / "run.fst")
    with pytest.raises(ValueError, match="waves_skip"):
        amaranth_backend(Compiled, None, waves=vcd, waves_skip=10)

    Compiled.end = 0x1000
    backend = driver.open_backend("amaranth", Compiled, None)
    assert backend.name == "amaranth"
    Accelerator(backend)
    backend.write_csr("WIN_BASE", 0)
    backend.write_csr("WIN_SIZE", 0x10000)           # reaches past the 4 KiB simulated
    backend.write_csr("PROG_ADDR", 0x8000)
    backend.write_csr("CTRL", CSR.CTRL.make(start=1))
    with pytest.raises(RuntimeError, match="outside the simulated memory"):
        backend.advance(10_000, None)
    assert "outside the simulated memory" in backend.error_detail


@pytest.mark.slow
def test_minilm_layer_bit_exact_slow(minilm, int_model):
    """The first MiniLM encoder layer, full size (384 features, 12 heads, FFN 1536), for 2
    tokens at N = 8: the golden model's int16 hidden state (236 k cycles; 16 minutes at 254
    cycles/s on a loaded 2-core machine)."""
    ids = minilm.tokenizer.encode("Hello")[0][:2]
    e = golden.embed_int32(minilm, int_model, ids)
    compiled = compile_model(int_model, len(ids), array=8, layers=1)
    want = golden.forward(int_model, e, layers=1)
    backend = amaranth_backend(compiled, int_model)
    t0 = time.perf_counter()
    c0 = backend.model.cycle
    result = run_compiled(backend, compiled, e, timeout_s=3600)
    wall = time.perf_counter() - t0
    assert np.array_equal(result.hidden, want)
    assert result.counters["instructions"] == len(compiled.program.instructions)
    sim = backend.model.cycle - c0
    print(f"MiniLM layer 0, {len(ids)} tokens, N=8: {result.counters['cycles']} cycles, "
          f"{sim} simulated in {wall:.0f} s, {sim / wall:.0f} cycles/s")
