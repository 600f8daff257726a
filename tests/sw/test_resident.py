"""Resident weights (sw/memory_map.py, CompiledModel's weights region, Accelerator.load with
``resident``): one weights region per model, the digest record, what a run sends, and the
reloads when the backend's memory does not hold the weights. On the isa backend; the same
over the simulated board's link is in tests/fpga/test_serial.py."""

import numpy as np
import pytest
from checkpoints import run_bit_exact, tiny_encoder

from celosia.hdl import isa
from celosia.hdl.isa import MachineConfig
from celosia.sw.compiler import Program, _check_per_run, compile_model
from celosia.sw.driver import Accelerator
from celosia.sw.isa_sim import IsaBackend
from celosia.sw.memory_map import DIGEST_ADDR, RECORD_BYTES, WEIGHTS_BASE, digest_record

CFG = MachineConfig(4, 8)
SENTENCES = ([1, 7, 23, 11, 0], [1, 9, 4, 0], [1, 3, 30, 5, 17, 2, 0])


def test_one_weights_region_for_every_sentence_and_batch(int_model):
    """MiniLM compiled for two sentences and a batch: the same weights bytes at the same
    addresses under the same digest; the per-run parts differ."""
    runs = [compile_model(int_model, t, array=8) for t in (5, 12, [3, 9, 7])]
    first = runs[0]
    assert first.base == WEIGHTS_BASE and first.weights_end % isa.WINDOW_ALIGN == 0
    assert first.weights_size > 10_000_000
    for c in runs[1:]:
        assert c.weights_size == first.weights_size
        assert c.weights_image == first.weights_image
        assert c.weights_digest == first.weights_digest
        assert c.weights_record == first.weights_record
        assert c.program.code != first.program.code
    assert len({c.end for c in runs}) == 3
    assert first.weights_record == digest_record(WEIGHTS_BASE, first.weights_size,
                                                 first.weights_digest)
    # Every per-run buffer and the program lie beyond the weights.
    for name in ("emb", "h", "qkv", "gelu"):
        assert first.tensors[name].addr >= first.weights_end


def test_digest_names_model_and_layout():
    _, im0 = tiny_encoder(0)
    _, im1 = tiny_encoder(1)
    digests = {compile_model(im, 5, array=a, port_bytes=w, base=b).weights_digest
               for im, a, w, b in ((im0, 4, 8, WEIGHTS_BASE), (im1, 4, 8, WEIGHTS_BASE),
                                   (im0, 8, 16, WEIGHTS_BASE), (im0, 4, 8, 2 * WEIGHTS_BASE))}
    assert len(digests) == 4


def test_no_run_writes_the_weights():
    """The compiler's check refuses a per-run buffer, the program or an instruction's write
    inside the weights region."""
    c = compile_model(tiny_encoder(0)[1], 5, array=4, port_bytes=8)
    weights = {k: t for k, t in c.tensors.items() if t.addr < c.weights_end}
    _check_per_run(c.weights_end, c.tensors, weights, c.program, c.program_addr)
    with pytest.raises(AssertionError, match="program overlaps"):
        _check_per_run(c.weights_end, c.tensors, weights, c.program, c.weights_end - 64)
    bad = isa.matmul(m=1, k=8, n=8, a_addr=c.weights_end, a_stride=8, b_addr=c.weights_end,
                     b_stride=8, c_addr=c.weights_end - 64, c_stride=64)
    with pytest.raises(AssertionError, match="writes c into the weights region"):
        _check_per_run(c.weights_end, c.tensors, weights, Program([bad]), c.program_addr)
    with pytest.raises(AssertionError, match="emb overlaps"):
        _check_per_run(c.weights_end + 64, c.tensors, weights, c.program, c.program_addr)


def _run(backend, model, im, sentences, **options):
    return run_bit_exact(backend, model, im, sentences, CFG, **options)


def test_resident_runs_on_the_isa_backend():
    """First run loads the weights; later sentences and a batch send the program only; a
    record of other weights, a corrupted weights region and a full (non-resident) load each
    make the next run load them again. Every run bit-exact with the golden model."""
    model, im = tiny_encoder(0)
    backend = IsaBackend(CFG, 1 << 15)
    rng = np.random.default_rng(0)
    # Garbage everywhere: the activation buffers are not sent, the program writes them first.
    backend.write_memory(0, rng.integers(0, 256, 1 << 15, np.uint8).tobytes())
    acc = Accelerator(backend)
    c, r = _run(backend, model, im, [SENTENCES[0]], resident=True)
    assert r.weights_loaded
    assert backend.read_memory(DIGEST_ADDR, RECORD_BYTES) == c.weights_record
    for ids in ([SENTENCES[1]], SENTENCES):
        c, r = _run(backend, model, im, ids, resident=True)
        assert not r.weights_loaded
    # What a resident load writes: the program, nothing else.
    assert acc.load(c, resident=True).bytes_written == len(c.program.code)
    # Another model's record.
    _, im1 = tiny_encoder(1)
    backend.write_memory(DIGEST_ADDR, compile_model(im1, 5, array=4, port_bytes=8).weights_record)
    assert acc.load(c, resident=True).bytes_written == (2 * RECORD_BYTES + c.weights_size
                                                        + len(c.program.code))
    # The weights region overwritten behind the record's back (every sample lands in it).
    backend.write_memory(c.base, rng.integers(0, 256, c.weights_size, np.uint8).tobytes())
    c, r = _run(backend, model, im, [SENTENCES[2]], resident=True)
    assert r.weights_loaded
    # A full load replaces the weights and clears the record.
    _run(backend, model, im, [SENTENCES[0]])
    assert backend.read_memory(DIGEST_ADDR, RECORD_BYTES) == bytes(RECORD_BYTES)
    _, r = _run(backend, model, im, [SENTENCES[0]], resident=True)
    assert r.weights_loaded


def test_resident_needs_the_digest_area_free():
    model, im = tiny_encoder(0)
    c = compile_model(im, 5, array=4, port_bytes=8, base=0)
    with pytest.raises(ValueError, match="resident weights need the window at 0x80"):
        Accelerator(IsaBackend(CFG, 1 << 15)).load(c, resident=True)
