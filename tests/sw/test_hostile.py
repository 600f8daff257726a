"""Hostile files: safetensors checkpoints, integer models and program images that are truncated,
have huge or malformed headers, or hold tensors of the wrong shape or dtype are refused with
one line (a CelosiaError) before their data is read, and never reach the code that uses them."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from celosia.hdl.isa import MachineConfig
from celosia.sim.tb_accelerator import Image
from celosia.sw import cli
from celosia.sw.errors import CelosiaError, FileFormatError
from celosia.sw.files import safetensors_header
from celosia.sw.program_file import ProgramCase, load_program, save_program


def safetensors_bytes(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    """A safetensors file with ``header`` as given (not checked) and ``data`` after it."""
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


GOOD = {"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}

#: (name, file bytes, words the one-line error must hold).
HOSTILE = [
    ("empty", b"", "too short"),
    ("short", b"\x01\x02\x03", "too short"),
    ("huge header length", struct.pack("<Q", 2 ** 62) + b"{}", "header length 4611686018427387904"),
    ("header past the file", safetensors_bytes(GOOD, bytes(16), length=10_000), "exceeds the"),
    ("not JSON", struct.pack("<Q", 6) + b"{{{{{{", "not JSON"),
    ("not UTF-8", struct.pack("<Q", 4) + b"\xff\xfe\x00\x01", "not JSON"),
    ("a JSON list", safetensors_bytes([1, 2]), "not a JSON object"),
    ("deep nesting", struct.pack("<Q", 200_000) + b"[" * 200_000, "not JSON"),
    ("unknown dtype", safetensors_bytes({"x": {**GOOD["x"], "dtype": "Q8"}}, bytes(16)),
     "unknown dtype"),
    ("negative shape", safetensors_bytes({"x": {**GOOD["x"], "shape": [-2, -2]}}, bytes(16)),
     "not a list of non-negative integers"),
    ("offsets past the data", safetensors_bytes({"x": {**GOOD["x"],
                                                       "data_offsets": [0, 2 ** 62]}}, bytes(16)),
     "past its end"),
    ("truncated data", safetensors_bytes(GOOD, bytes(10)), "past its end"),
    ("size differs from shape", safetensors_bytes({"x": {**GOOD["x"], "shape": [4, 4]}},
                                                  bytes(16)), "not the 64"),
    ("reversed offsets", safetensors_bytes({"x": {**GOOD["x"], "data_offsets": [16, 0]}},
                                           bytes(16)), "0 <= begin <= end"),
    ("overlapping tensors", safetensors_bytes(
        {"x": GOOD["x"], "y": {"dtype": "U8", "shape": [8], "data_offsets": [8, 16]}},
        bytes(16)), "overlaps"),
    ("trailing bytes", safetensors_bytes(GOOD, bytes(20)), "which has 20"),
    ("bad metadata", safetensors_bytes({**GOOD, "__metadata__": {"a": 1}}, bytes(16)),
     "__metadata__"),
]


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and len(text) < 400, text
    return text


@pytest.mark.parametrize("name,raw,words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_header_is_refused(tmp_path, name, raw, words):
    path = tmp_path / "f.safetensors"
    path.write_bytes(raw)
    with pytest.raises(FileFormatError) as info:
        safetensors_header(path, "weights")
    assert words in one_line(info.value) and str(path) in str(info.value)


def test_a_header_over_the_limit_is_refused_unread(tmp_path):
    """A file long enough for its claimed header (sparse: no disk used) is refused on the
    length alone."""
    path = tmp_path / "f.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", 100_000_001) + b"{")
        f.truncate(8 + 100_000_001 + 16)
    with pytest.raises(FileFormatError, match="exceeds the 100000000-byte limit"):
        safetensors_header(path, "weights")


def test_a_good_header_is_read(tmp_path):
    path = tmp_path / "f.safetensors"
    path.write_bytes(safetensors_bytes({**GOOD, "__metadata__": {"k": "v"}}, bytes(16)))
    header, meta = safetensors_header(path, "weights")
    assert header == GOOD and meta == {"k": "v"}


# --- the float checkpoint ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from checkpoints import make_checkpoint
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "small", hidden=16, heads=2,
                           layers=1, ffn=32, max_seq_length=16)


def _rewrite(src, dst, change):
    """Copy the checkpoint folder ``src`` to ``dst`` with ``change(weights)`` applied to its
    model.safetensors."""
    import shutil

    from safetensors.numpy import load_file, save_file
    shutil.copytree(src, dst)
    weights = load_file(str(src / "model.safetensors"))
    change(weights)
    save_file(weights, str(dst / "model.safetensors"))
    return dst


CHECKPOINT_DAMAGE = [
    ("wrong shape", lambda w: w.update({"encoder.layer.0.intermediate.dense.weight":
                                        np.zeros((16, 16), np.float32)}),
     "intermediate.dense.weight has shape [16, 16], expected [32, 16]"),
    ("wrong dtype", lambda w: w.update({"embeddings.LayerNorm.weight":
                                        w["embeddings.LayerNorm.weight"].astype(np.float16)}),
     "is F16, expected F32"),
    ("missing tensor", lambda w: w.pop("encoder.layer.0.output.LayerNorm.bias"),
     "output.LayerNorm.bias is missing"),
    ("too few positions", lambda w: w.update({"embeddings.position_embeddings.weight":
                                              np.zeros((8, 16), np.float32)}),
     "expected [512, 16]"),
    ("too few word rows", lambda w: w.update({"embeddings.word_embeddings.weight":
                                              np.zeros((100, 16), np.float32)}),
     "expected [30522, 16]"),
]


@pytest.mark.parametrize("name,change,words", CHECKPOINT_DAMAGE,
                         ids=[d[0] for d in CHECKPOINT_DAMAGE])
def test_a_damaged_checkpoint_is_refused(checkpoint, tmp_path, name, change, words):
    from celosia.sw.model import load_minilm
    folder = _rewrite(checkpoint, tmp_path / "bad", change)
    with pytest.raises(CelosiaError) as info:
        load_minilm(folder)
    assert words in one_line(info.value)


def test_a_tokenizer_larger_than_the_embeddings_is_refused(checkpoint, tmp_path):
    """The config and the weights agree on 100 rows of word embeddings; the tokenizer's ids
    must still index them."""
    from celosia.sw.model import load_minilm
    folder = _rewrite(checkpoint, tmp_path / "bad", lambda w: w.update(
        {"embeddings.word_embeddings.weight": np.zeros((100, 16), np.float32)}))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vocab_size"] = 100
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CelosiaError, match="30522 tokens, more than the 100 rows"):
        load_minilm(folder)


def test_a_huge_layer_count_is_refused_before_the_schema(checkpoint, tmp_path):
    import shutil
    folder = tmp_path / "bad"
    shutil.copytree(checkpoint, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] = 10 ** 12
    (folder / "config.json").write_text(json.dumps(cfg))
    from celosia.sw.model import load_minilm
    with pytest.raises(CelosiaError, match="too few for the 1000000000000 layers"):
        load_minilm(folder)


def test_the_cli_refuses_a_hostile_checkpoint_in_one_line(checkpoint, tmp_path, capsys,
                                                           monkeypatch):
    """Header damage: refused before safetensors maps the file (its loader is never called)."""
    import shutil

    import safetensors.numpy
    monkeypatch.setenv("CELOSIA_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "bad"
    shutil.copytree(checkpoint, folder)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2 ** 62) + b"{}")
    monkeypatch.setattr(safetensors.numpy, "load_file",
                        lambda *a, **k: pytest.fail("the weights were loaded"))
    assert cli.main(["embed", "hello", "--model", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "header length 4611686018427387904" in err[0], err


# --- the integer model ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_im():
    from checkpoints import tiny_encoder
    return tiny_encoder()[1]


def _crafted(im, change):
    """A copy of ``im`` with ``change(tensors, meta)`` applied: saved with a digest of its own,
    so only the shape checks can find it out."""
    from celosia.sw.quantize import IntegerModel
    tensors, meta = dict(im.tensors), json.loads(json.dumps(im.meta))
    change(tensors, meta)
    return IntegerModel(tensors, meta)


INTEGER_DAMAGE = [
    ("wrong weight shape", lambda t, m: t.update({"L0.ffn1.weight": np.zeros((16, 16), np.int8)}),
     "L0.ffn1.weight has shape [16, 16], expected [16, 32]"),
    ("wrong dtype", lambda t, m: t.update({"L0.qkv.weight": t["L0.qkv.weight"].astype(np.int16)}),
     "is I16, expected I8"),
    ("missing tensor", lambda t, m: t.pop("L0.ln2.beta"), "L0.ln2.beta is missing"),
    ("heads differ", lambda t, m: m["arch"]["block"]["attention"].update(heads=4, kv_heads=4),
     "L0.softmax.mult has shape [2], expected [4]"),
    ("huge layer count", lambda t, m: m["arch"].update(layers=10 ** 12),
     "too few for 1000000000000 layers"),
    ("no hidden size", lambda t, m: m["arch"].pop("hidden"), "model description is invalid"),
    ("no description", lambda t, m: m.pop("arch"), "lacks the model description"),
    ("no output scale", lambda t, m: m.pop("L0.ln2.scale"), "lacks L0.ln2.scale"),
]


@pytest.mark.parametrize("name,change,words", INTEGER_DAMAGE, ids=[d[0] for d in INTEGER_DAMAGE])
def test_a_crafted_integer_model_is_refused(tiny_im, tmp_path, name, change, words):
    from celosia.sw.quantize import CorruptModelError, IntegerModel
    path = tmp_path / "im.safetensors"
    _crafted(tiny_im, change).save(path)
    with pytest.raises(CorruptModelError) as info:
        IntegerModel.load(path)
    assert words in one_line(info.value) and "celosia quantize --force" in str(info.value)


def test_the_tiny_integer_model_loads(tiny_im, tmp_path):
    """The crafted files above differ from a good one only by their damage."""
    from celosia.sw.quantize import IntegerModel
    path = tmp_path / "im.safetensors"
    _crafted(tiny_im, lambda t, m: None).save(path)
    assert IntegerModel.load(path).digest() == tiny_im.digest()


def test_the_schema_is_what_the_quantiser_writes(tiny_im):
    from celosia.sw.quantize import integer_model_shapes
    shapes = integer_model_shapes(tiny_im.meta, len(tiny_im.tensors))
    assert set(shapes) == set(tiny_im.tensors)
    for name, (dtype, shape) in shapes.items():
        t = tiny_im.tensors[name]
        assert {"I8": np.int8, "I64": np.int64}[dtype] == t.dtype, name
        assert (t.size == 1) if shape == "scalar" else t.shape == shape, name


@pytest.mark.parametrize("name,raw,words", HOSTILE[:6], ids=[h[0] for h in HOSTILE[:6]])
def test_a_hostile_integer_model_names_its_rebuild(tmp_path, capsys, name, raw, words):
    path = tmp_path / "im.safetensors"
    path.write_bytes(raw)
    assert cli.main(["embed", "hi", "--model-file", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is corrupt" in err[0] and words in err[0] \
        and "celosia quantize --force" in err[0], err


# --- program images ---------------------------------------------------------------------------

def _case(**change) -> ProgramCase:
    mem = np.arange(4096, dtype=np.uint32).astype(np.uint8)
    return ProgramCase(Image(mem, 0x400, 0x800, 0x400, MachineConfig(4), {"kind": "test"}),
                       latency=3, stall=0.25, memory_seed=9, **change)


def test_a_program_image_round_trips(tmp_path):
    path = tmp_path / "p.safetensors"
    save_program(path, _case())
    got = load_program(path)
    assert np.array_equal(got.image.mem, _case().image.mem)
    assert got.descriptors() == _case().descriptors()


def _with_descriptors(tmp_path, **change):
    path = tmp_path / "p.safetensors"
    save_program(path, _case())
    header, meta = safetensors_header(path, "p")
    d = json.loads(meta["celosia_program"])
    d.update(change)
    data = path.read_bytes()[8 + int.from_bytes(path.read_bytes()[:8], "little"):]
    path.write_bytes(safetensors_bytes({**header, "__metadata__": {"celosia_program":
                                                                   json.dumps(d)}}, data))
    return path


PROGRAM_DAMAGE = [
    ({"base": 0x800, "size": 0x1000}, "window [0x800, 0x1800) reaches past its 4096-byte memory"),
    ({"prog": 1 << 32}, "prog is 4294967296"),
    ({"base": -64}, "base is -64"),
    ({"size": "big"}, "size is big"),
    ({"array": 3}, "array must be a power of two"),
    ({"port_bytes": 6}, "port_bytes must be a power of two"),
    ({"latency": 0}, "latency is 0"),
    ({"latency": 10 ** 9}, "latency is 1000000000"),
    ({"stall": float("nan")}, "stall is nan"),
    ({"max_cycles": 2 ** 70}, "max_cycles is"),
    ({"vector_unit": "yes"}, "vector_unit is not true or false"),
    ({"format_version": 7}, "format version 7"),
]


@pytest.mark.parametrize("change,words", PROGRAM_DAMAGE, ids=[str(d[0]) for d in PROGRAM_DAMAGE])
def test_a_program_image_with_bad_descriptors_is_refused(tmp_path, change, words):
    path = _with_descriptors(tmp_path, **change)
    with pytest.raises(FileFormatError) as info:
        load_program(path)
    assert words in one_line(info.value)


@pytest.mark.parametrize("tensors,words", [
    ({"memory": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, "is F32, expected U8"),
    ({"memory": {"dtype": "U8", "shape": [4, 4], "data_offsets": [0, 16]}}, "expected [*]"),
    ({"memory": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}, "expected [*]"),
    ({"image": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]}}, "memory is missing"),
    ({"memory": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
      "more": {"dtype": "U8", "shape": [8], "data_offsets": [8, 16]}}, "2 tensors"),
])
def test_a_program_image_of_the_wrong_tensors_is_refused(tmp_path, tensors, words):
    path = tmp_path / "p.safetensors"
    path.write_bytes(safetensors_bytes({**tensors, "__metadata__": {"celosia_program": json.dumps(
        _case().descriptors())}}, bytes(max(t["data_offsets"][1] for t in tensors.values()))))
    with pytest.raises(FileFormatError) as info:
        load_program(path)
    assert words in one_line(info.value)


def test_a_program_image_without_descriptors_is_refused(tmp_path):
    path = tmp_path / "p.safetensors"
    path.write_bytes(safetensors_bytes({"memory": {"dtype": "U8", "shape": [16],
                                                   "data_offsets": [0, 16]}}, bytes(16)))
    with pytest.raises(FileFormatError, match="metadata is missing"):
        load_program(path)
