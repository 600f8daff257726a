"""The compiler: programs for MiniLM that the isa backend runs bit-exactly like the golden model.

The float and integer models come from the session fixtures ``minilm`` and ``int_model``
(tests/conftest.py)."""

import numpy as np
import pytest

from celosia.hdl import isa
from celosia.hdl.isa import Opcode
from celosia.hdl.params import OutFormat
from celosia.sw import golden
from celosia.sw.compiler import Tensor, compile_model
from celosia.sw.driver import Accelerator, open_backend, run_compiled, run_embedding

SENTENCES = [
    "Hello.",
    "The quick brown fox jumps over the lazy dog.",
    "Celosia runs a quantised sentence encoder on a systolic array, and every backend "
    "must return the same integers.",
    "In the beginning the universe was created; this has made a lot of people very angry "
    "and been widely regarded as a bad move, wrote a novelist who also explained that time "
    "is an illusion and lunchtime doubly so, which nobody has disproved since then.",
]


def _run_isa(compiled, im, e):
    backend = open_backend("isa", compiled, im)
    result = run_compiled(backend, compiled, e, timeout_s=120)
    assert backend.machine.hazards == []
    return result


@pytest.mark.parametrize("text", SENTENCES + [None])
def test_isa_backend_is_bit_exact(minilm, int_model, text):
    ids = np.array([101]) if text is None else minilm.tokenizer.encode(text)[0]
    e = golden.embed_int32(minilm, int_model, ids)
    compiled = compile_model(int_model, len(ids))
    result = _run_isa(compiled, int_model, e)
    want = golden.forward(int_model, e)
    assert result.hidden.shape == want.shape == (len(ids), int_model.arch.hidden)
    assert np.array_equal(result.hidden, want)
    counts = compiled.program.counts()
    assert result.counters["instructions"] == len(compiled.program.instructions)
    assert result.counters["matmul_count"] == counts["MATMUL"]
    assert result.counters["vector_count"] == sum(v for k, v in counts.items() if k.startswith("VECTOR"))


def test_dithered_softmax_on_the_isa_backend(minilm, int_model, round_model, monkeypatch):
    """The default recipe compiles its softmax to SOFTMAX_DITHER, the round-to-nearest one to
    SOFTMAX; the isa backend runs each bit-exactly like the golden model, and the verilator
    backend builds the encoder's accelerator for both (SOFTMAX_DITHER is in every build). The
    Verilated runs are tests/sim/test_minilm_verilator.py's."""
    ids = minilm.tokenizer.encode("hello " * 30)[0]
    e = golden.embed_int32(minilm, int_model, ids)
    ops = lambda c: {i.fields["op"] for i in c.program.instructions if i.opcode == Opcode.VECTOR}
    plain = compile_model(round_model, len(ids))
    assert isa.VecOp.SOFTMAX_DITHER not in ops(plain) and isa.VecOp.SOFTMAX in ops(plain)
    compiled = compile_model(int_model, len(ids))
    assert isa.VecOp.SOFTMAX_DITHER in ops(compiled) and isa.VecOp.SOFTMAX not in ops(compiled)
    want = golden.forward(int_model, e)
    assert np.array_equal(_run_isa(compiled, int_model, e).hidden, want)
    want_plain = golden.forward(round_model, e)
    assert np.array_equal(_run_isa(plain, round_model, e).hidden, want_plain)
    assert not np.array_equal(want, want_plain)
    from celosia.sim import verilator_accel
    built = []
    monkeypatch.setattr(verilator_accel, "VerilatorBackend", lambda *a, **kw: built.append(kw))
    open_backend("verilator", compiled, int_model)
    open_backend("verilator", plain, round_model)
    assert [kw["decoder_ops"] for kw in built] == [False, False]


@pytest.mark.parametrize("array,port_bytes,base", [(2, None, 0), (16, None, 0x1_0000),
                                                   (32, None, 0x80), (32, 128, 0x4000_0000)])
def test_other_arrays_ports_and_bases(minilm, int_model, array, port_bytes, base):
    """Port widths above 32 bytes pad each head to W in the QKV and context layouts."""
    ids = minilm.tokenizer.encode(SENTENCES[1])[0][:7]
    e = golden.embed_int32(minilm, int_model, ids)
    compiled = compile_model(int_model, len(ids), array=array, port_bytes=port_bytes, base=base,
                             layers=1)
    W = compiled.config.port_bytes
    assert compiled.tensors["qkv"].cols == 3 * 12 * max(32, W)
    result = _run_isa(compiled, int_model, e)
    assert np.array_equal(result.hidden, golden.forward(int_model, e, layers=1))


def test_program_structure(int_model):
    layers, tokens = int_model.arch.layers, 11
    c = compile_model(int_model, tokens)
    counts = c.program.counts()
    heads = int_model.arch.heads
    assert counts["MATMUL"] == layers * (2 * heads + 4)
    assert counts["VECTOR.SOFTMAX_DITHER"] == layers * heads
    assert counts["VECTOR.LAYERNORM"] == 2 * layers + 1
    assert counts["VECTOR.REQUANT_ROWS"] == 2 * layers
    assert counts["VECTOR.GELU_ROWS"] == layers
    assert counts["HALT"] == 1 and c.program.instructions[-1].opcode == Opcode.HALT
    # Every operand is W-aligned and inside the window; the program too.
    W = c.config.port_bytes
    for ins in c.program.instructions:
        reads, writes = isa.footprint(ins)
        for name, span, addr, stride in reads + writes:
            assert addr % W == 0 and stride % W == 0, (str(ins), name)
            assert c.base <= span.start < span.end <= c.end, (str(ins), name)
    assert c.program_addr % isa.INSTR_BYTES == 0
    assert c.image[c.program_addr - c.base:][:len(c.program.code)] == c.program.code
    assert c.end - c.program_addr >= len(c.program.code)
    # The input and output are where the host expects them.
    assert (c.input.rows, c.input.cols, c.input.fmt) == (tokens, 384, OutFormat.INT32)
    assert (c.output.rows, c.output.cols, c.output.fmt) == (tokens, 384, OutFormat.INT16)
    text = c.program.listing(c.program_addr)
    assert "MATMUL" in text and "VECTOR.SOFTMAX" in text


def test_compile_errors(int_model):
    with pytest.raises(ValueError):
        compile_model(int_model, 0)
    with pytest.raises(ValueError):
        compile_model(int_model, isa.VEC_MAX_COLS + 1)
    with pytest.raises(ValueError):
        compile_model(int_model, 4, base=0x10)
    c = compile_model(int_model, 4, array=4, layers=1)
    backend = open_backend("isa", compile_model(int_model, 4, array=8, layers=1), int_model)
    with pytest.raises(ValueError, match="compiled for"):
        Accelerator(backend).load(c)


def test_tensor_pack_unpack():
    t = Tensor("t", 0, 3, 5, 16, OutFormat.INT16)
    v = np.arange(15).reshape(3, 5) - 7
    raw = t.pack(v)
    assert len(raw) == t.nbytes == 48
    assert np.array_equal(t.unpack(raw), v)
    with pytest.raises(ValueError):
        t.pack(np.full((3, 5), 1 << 15))
    with pytest.raises(ValueError):
        t.pack(np.zeros((2, 5)))


def test_run_embedding_golden_and_isa_agree(minilm, int_model):
    ids = minilm.tokenizer.encode(SENTENCES[1])[0]
    results = {name: run_embedding(name, minilm, int_model, ids) for name in ("golden", "isa")}
    assert np.array_equal(results["golden"].hidden, results["isa"].hidden)
    assert results["isa"].counters["cycles"] > 0 and results["isa"].counters["matmul_busy"] > 0
    emb = results["isa"].embedding
    assert emb.shape == (384,) and abs(np.linalg.norm(emb) - 1) < 1e-9
    assert np.array_equal(emb, golden.embedding(minilm, int_model, ids))
    with pytest.raises(ValueError, match="unknown backend"):
        run_embedding("nonsense", minilm, int_model, ids)


@pytest.mark.parametrize("layers", [1, 2, None])
def test_parts_mark_the_program(int_model, layers):
    """Every layer has the description's parts in order; each mark is the part's first non-SYNC
    instruction; the isa backend's part cycles add up to CYCLES."""
    PARTS = int_model.arch.parts
    compiled = compile_model(int_model, 5, array=4, layers=layers)
    n = int_model.arch.layers if layers is None else layers
    names = [name for _, name, _ in compiled.parts]
    assert names == ["emb_ln"] + list(PARTS[1:]) * n
    assert [layer for layer, _, _ in compiled.parts] == [0] * len(PARTS) + sum(
        ([k] * (len(PARTS) - 1) for k in range(1, n)), [])
    index = [i for _, _, i in compiled.parts]
    assert index == sorted(set(index))
    code = compiled.program.instructions
    assert all(code[i].opcode in (Opcode.MATMUL, Opcode.VECTOR) for i in index)
    assert len(compiled.layer_starts) == n
    e = np.zeros((5, int_model.arch.hidden), dtype=np.int64)
    result = _run_isa(compiled, int_model, e)
    assert [(l, p) for l, p, _ in result.part_cycles] == [(l, p) for l, p, _ in compiled.parts]
    assert sum(c for _, _, c in result.part_cycles) == result.counters["cycles"]
    assert all(c > 0 for _, _, c in result.part_cycles)
    assert sum(result.layer_cycles) == result.counters["cycles"]


@pytest.mark.parametrize("array", [8, 16])
def test_a_batch_gives_each_sentence_its_own_integers(minilm, int_model, array):
    """One program for three sentences (rows stacked for the dense layers, attention per
    sentence): each sentence's rows equal the golden model of that sentence alone."""
    ids = [minilm.tokenizer.encode(t)[0] for t in SENTENCES[:3]]
    es = [golden.embed_int32(minilm, int_model, x) for x in ids]
    compiled = compile_model(int_model, [len(x) for x in ids], array=array, layers=2)
    assert compiled.sentences == tuple(len(x) for x in ids)
    assert compiled.tokens == compiled.input.rows == sum(compiled.sentences)
    result = _run_isa(compiled, int_model, np.concatenate(es))
    got = compiled.split(result.hidden)
    for e, h in zip(es, got):
        assert np.array_equal(h, golden.forward(int_model, e, layers=2))
    # Attention runs per sentence and head; the dense layers once for the whole batch.
    counts = compiled.program.counts()
    assert counts["VECTOR.SOFTMAX_DITHER"] == 2 * 12 * 3
    assert counts["MATMUL"] == 2 * (2 * 12 * 3 + 4)


def test_batched_golden_and_isa_runs_agree(minilm, int_model):
    from celosia.sw.driver import run_batch
    ids = [minilm.tokenizer.encode(t)[0] for t in SENTENCES[:2]]
    results = {name: run_batch(name, minilm, int_model, ids) for name in ("golden", "isa")}
    for g, i, x in zip(results["golden"].sentence_hidden, results["isa"].sentence_hidden, ids):
        assert np.array_equal(g, i)
        assert np.array_equal(g, golden.forward(int_model, golden.embed_int32(minilm, int_model, x)))


def test_batch_compile_errors(int_model):
    with pytest.raises(ValueError, match="at least one sentence"):
        compile_model(int_model, [])
    with pytest.raises(ValueError, match="tokens must be in"):
        compile_model(int_model, [4, 0])
