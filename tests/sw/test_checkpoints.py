"""Other BERT-family checkpoints (SentenceEncoder(model=PATH), celosia embed --model): small
sentence-transformers folders of other shapes, written by the tests, run on golden and isa
bit-exactly and close to the float reference; each unsupported piece is one line naming it."""

import json
import re

import numpy as np
import pytest

from celosia.sw import golden
from celosia.sw.encoder import SentenceEncoder
from celosia.sw.errors import CelosiaError


TEXTS = ["A man is eating food.", "The new movie is awesome!", "x",
         "Two men pushed carts through the woods.",
         "GPU vs. FPGA: which accelerator wins for int8 inference?"]

#: (name, shape and pipeline): 3 layers, hidden 256, 4 heads, CLS pooling, no Normalize,
#: names with the "bert." prefix; 2 layers, hidden 128, 2 heads of 64, mean + Normalize; and
#: one layer of BERT-base's widths.
SHAPES = {
    "cls-256": dict(layers=3, hidden=256, heads=4, ffn=1024, pooling="cls", normalize=False,
                    prefix="bert.", max_seq_length=128),
    "mean-128": dict(layers=2, hidden=128, heads=2, ffn=512, pooling="mean", normalize=True,
                     max_seq_length=64, seed=1),
    # BERT-base's widths (hidden 768, 12 heads, FFN 3072: vector rows past the old 1536-column
    # limit), one layer.
    "base-768": dict(layers=1, hidden=768, heads=12, ffn=3072, pooling="mean", normalize=True,
                     max_seq_length=64, seed=2),
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module", params=sorted(SHAPES))
def checkpoint(request, tmp_path_factory, cache, make_checkpoint):
    folder = make_checkpoint(tmp_path_factory.mktemp(request.param), **SHAPES[request.param])
    return request.param, folder


@pytest.fixture
def use_cache(cache, monkeypatch):
    monkeypatch.setenv("CELOSIA_CACHE", str(cache))
    return cache


def _cosines(a, b):
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_checkpoint_runs_bit_exact_and_close_to_float(checkpoint, use_cache):
    name, folder = checkpoint
    shape = SHAPES[name]
    enc = SentenceEncoder(model=folder)
    assert (enc.dim, enc.pooling, enc.normalizes) == (shape["hidden"], shape["pooling"],
                                                      shape["normalize"])
    arch = enc.integer_model.arch
    assert (arch.layers, arch.heads, arch.ffn) == (shape["layers"], shape["heads"],
                                                            shape["ffn"])
    assert enc.float_model.tokenizer.max_tokens == shape["max_seq_length"]
    got = enc.encode(TEXTS)
    assert got.shape == (len(TEXTS), shape["hidden"])
    norms = np.linalg.norm(got, axis=1)
    assert np.allclose(norms, 1, atol=1e-6) if shape["normalize"] else norms.min() > 1.5
    # The golden integers, one sentence at a time, pooled as the checkpoint says.
    model, im = enc.float_model, enc.integer_model
    for text, row in zip(TEXTS, got):
        h = golden.forward(im, golden.embed_int32(model, im, model.tokenizer.encode(text)[0]))
        # The hidden state in real units (float64), then the pooling (sw/model.pool's order:
        # scale, then mean, so the float32 result is the API's to the bit).
        x = h.astype(np.float64) * golden.output_scale(im)
        expect = x[0] if shape["pooling"] == "cls" else x.mean(axis=0)
        if shape["normalize"]:
            expect = expect / np.linalg.norm(expect)
        assert np.array_equal(row, expect.astype(np.float32))
    # The isa backend runs the compiled program, batched, to the same integers.
    isa = SentenceEncoder(model=folder, backend="isa", array=8)
    assert np.array_equal(isa.encode(TEXTS, batch_size=3), got)
    assert all(r["bit_exact_vs_golden"] for r in isa.last_run["per_sentence"])
    assert [len(b["per_layer"]) for b in isa.last_run["batches"]] == [shape["layers"]] * 2
    # Close to the float reference (sw/model.py).
    ref = np.stack([model.encode(t)[0] for t in TEXTS])
    assert _cosines(got, ref).min() >= 0.99


def test_float_reference_matches_sentence_transformers(checkpoint):
    st = pytest.importorskip("sentence_transformers")
    name, folder = checkpoint
    from celosia.sw.model import load_minilm
    model = load_minilm(folder)
    want = st.SentenceTransformer(str(folder), device="cpu").encode(TEXTS)
    ours = np.stack([model.encode(t)[0] for t in TEXTS])
    assert np.abs(ours - want).max() <= 1e-4


def test_the_integer_model_is_cached_under_the_checkpoint_digest(checkpoint, use_cache,
                                                                 monkeypatch):
    from celosia.sw import quantize
    from celosia.sw.model import checkpoint_digest
    name, folder = checkpoint
    SentenceEncoder(model=folder)
    digest = checkpoint_digest(folder)
    path = quantize.checkpoint_model_file(folder, digest)
    assert path.parent == use_cache and digest[:16] in path.name and path.is_file()
    assert quantize.IntegerModel.load(path).meta["checkpoint_sha256"] == digest

    def no_quantising(*args, **kwargs):
        raise AssertionError("quantised again")
    monkeypatch.setattr(quantize, "quantize", no_quantising)
    SentenceEncoder(model=folder)                       # from the cache
    # A damaged cache file is one line naming the command that rebuilds it.
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    try:
        with pytest.raises(CelosiaError, match=re.escape(
                f"corrupt (its sha256 differs from the one written with it); rebuild it: "
                f"celosia quantize --force --model {folder}")):
            SentenceEncoder(model=folder)
    finally:
        path.unlink()


def test_the_cli_embeds_with_a_checkpoint(checkpoint, use_cache, capsys):
    from celosia.sw import cli
    name, folder = checkpoint
    assert cli.main(["embed", "--json", "--model", str(folder), *TEXTS[:2]]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    want = SentenceEncoder(model=folder).encode(TEXTS[:2])
    assert [r["embedding"] for r in results] == want.tolist()


@pytest.mark.parametrize("change, message", [
    (dict(config={"model_type": "roberta"}), "config.json: model_type 'roberta' is not supported"),
    (dict(config={"hidden_act": "gelu_new"}),
     "config.json: hidden_act 'gelu_new' is not supported"),
    (dict(pooling="max"), "config.json: pooling pooling_mode_max_tokens is not supported"),
    (dict(modules=[{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                   {"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]),
     "module 'sentence_transformers.models.Dense' is not supported"),
    (dict(hidden=64, heads=2, ffn=4160, layers=1),
     "intermediate_size 4160 is more than the vector unit's 4096-column rows"),
    (dict(max_seq_length=600), "max_seq_length 600 exceeds the 512 position embeddings"),
])
def test_unsupported_pieces_are_one_line(tmp_path, use_cache, capsys, change, message,
                                         make_checkpoint):
    from celosia.sw import cli
    folder = make_checkpoint(tmp_path / "ckpt", **{"hidden": 64, "heads": 2, "ffn": 128,
                                                   "layers": 1, **change})
    assert cli.main(["embed", "--model", str(folder), "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not list(use_cache.glob("ckpt-*"))      # refused before any work


def test_safetensors_weights_only(tmp_path, use_cache, make_checkpoint):
    folder = make_checkpoint(tmp_path / "ckpt", hidden=64, heads=2, ffn=128, layers=1)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CelosiaError, match="pytorch_model.bin: only safetensors weights"):
        SentenceEncoder(model=folder)
