"""The quantiser: determinism, the file format, and the invariants the hardware relies on."""

import numpy as np
import pytest

from celosia.sw import numerics as nx
from celosia.sw.quantize import (FORMAT_VERSION, CorruptModelError, IntegerModel,
                                 QuantizedModelError, quantize)


def test_deterministic_and_file_round_trip(minilm, int_model, tmp_path):
    again = quantize(minilm)
    assert again.digest() == int_model.digest()
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    int_model.save(a)
    again.save(b)
    assert a.read_bytes() == b.read_bytes()
    loaded = IntegerModel.load(a)
    assert loaded.digest() == int_model.digest()
    assert loaded.meta["format_version"] == FORMAT_VERSION


def test_bad_files_are_reported(int_model, tmp_path):
    with pytest.raises(QuantizedModelError, match="does not exist"):
        IntegerModel.load(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(QuantizedModelError, match="corrupt"):
        IntegerModel.load(bad)
    old = IntegerModel(dict(int_model.tensors), dict(int_model.meta))
    path = tmp_path / "old.safetensors"
    old.save(path)
    # Rewrite the header's version: a file from another format version is refused.
    raw = path.read_bytes().replace(b'\\"format_version\\": %d' % FORMAT_VERSION, b'\\"format_version\\": 7')
    assert raw != path.read_bytes()
    path.write_bytes(raw)
    with pytest.raises(QuantizedModelError, match="format version"):
        IntegerModel.load(path)


def test_integer_tensors_fit_the_hardware_formats(int_model):
    t = int_model.tensors
    for i in range(int_model.arch.layers):
        for w in ("qkv", "attn_out", "ffn1", "ffn2"):
            assert t[f"L{i}.{w}.weight"].dtype == np.int8
            bias = t[f"L{i}.{w}.bias"]
            assert bias.min() >= nx.INT32.lo and bias.max() <= nx.INT32.hi
        for name in ("qkv_in.rq", "qkv.rq", "softmax", "ctx.rq", "attn_out.rq", "ffn_in.rq",
                     "ffn1.rq", "gelu.rq", "ffn2.rq"):
            m, s = t[f"L{i}.{name}.mult"], t[f"L{i}.{name}.shift"]
            assert m.min() > 0 and m.max() < 2**nx.MULT_BITS
            assert s.min() >= 0 and s.max() <= nx.SHIFT_MAX
        for name in ("qkv_in.rq", "ffn_in.rq", "gelu.rq"):       # per-row exponents need room
            assert t[f"L{i}.{name}.shift"].min() >= nx.ROW_EXP_MAX
        for ln in ("ln1", "ln2"):
            assert np.abs(t[f"L{i}.{ln}.gamma"]).max() < 2**20
            assert np.abs(t[f"L{i}.{ln}.beta"]).max() < 2**40
        assert 0 <= int_model.scalar(f"L{i}.attn_out.res_shift") <= 16
    assert t["L0.softmax.mult"].shape == (int_model.arch.heads,)


def test_the_digest_is_checked_on_load(int_model, tmp_path):
    import json

    from safetensors.numpy import save_file
    path = tmp_path / "m.safetensors"
    int_model.save(path)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x80                        # the last byte of the last tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptModelError, match="its sha256 differs"):
        IntegerModel.load(path)
    # A file written before digests were stored is not trusted either (but is not "corrupt").
    save_file({k: np.ascontiguousarray(v) for k, v in int_model.tensors.items()}, str(path),
              metadata={"celosia": json.dumps(int_model.meta, sort_keys=True)})
    with pytest.raises(QuantizedModelError, match="without a digest") as info:
        IntegerModel.load(path)
    assert not isinstance(info.value, CorruptModelError)
