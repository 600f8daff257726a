"""SentenceEncoder: sentence-transformers' conventions, the golden integers on every backend,
what last_run reports, one-line errors, and the README's example."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from celosia.sw import golden
from celosia.sw.encoder import SentenceEncoder
from celosia.sw.errors import CelosiaError

TEXTS = ["Hi", "A cat sat on the mat.", "Rust and Go are both popular for systems programming."]


@pytest.fixture(scope="module")
def model_file(int_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "minilm-int8.safetensors"
    int_model.save(path)
    return path


@pytest.fixture(scope="module")
def encoder(model_file):
    return SentenceEncoder(model_file=model_file)


def test_package_exports_the_encoder():
    import celosia
    assert celosia.SentenceEncoder is SentenceEncoder


def test_shapes_dtype_and_the_golden_integers(encoder, minilm, int_model):
    one = encoder.encode(TEXTS[1])
    assert one.shape == (384,) and one.dtype == np.float32
    many = encoder.encode(TEXTS, batch_size=2)
    assert many.shape == (3, 384) and many.dtype == np.float32
    for text, row in zip(TEXTS, many):
        ids, _ = minilm.tokenizer.encode(text)
        assert np.array_equal(row, golden.embedding(minilm, int_model, ids))
    assert np.array_equal(many[1], one)
    as_list = encoder.encode(TEXTS, convert_to_numpy=False)
    assert isinstance(as_list, list) and len(as_list) == 3
    assert all(np.array_equal(a, b) for a, b in zip(as_list, many))
    assert encoder.encode([]).shape == (0, 384)


def test_last_run_on_golden(encoder, minilm):
    encoder.encode(TEXTS)
    run = encoder.last_run
    tokens = [len(minilm.tokenizer.encode(t)[0]) for t in TEXTS]
    assert run["backend"] == "golden" and run["sentences"] == 3
    assert run["tokens"] == sum(tokens) == 3 + 9 + 12
    assert [r["tokens"] for r in run["per_sentence"]] == tokens
    assert "cycles" not in run


def test_normalisation_follows_the_pipeline_or_the_caller(encoder):
    assert encoder.normalizes                    # MiniLM's modules.json ends in Normalize
    assert encoder.pooling == "mean"
    assert abs(np.linalg.norm(encoder.encode("x", normalize_embeddings=False)) - 1) < 1e-6
    encoder.normalizes = False                    # a checkpoint whose pipeline has no Normalize
    try:
        raw = encoder.encode(TEXTS[1])
        asked = encoder.encode(TEXTS[1], normalize_embeddings=True)
    finally:
        encoder.normalizes = True
    assert abs(np.linalg.norm(raw) - 1) > 0.1
    assert np.allclose(asked, raw / np.linalg.norm(raw), atol=1e-7)
    assert np.array_equal(asked, encoder.encode(TEXTS[1]))


def test_isa_backend_gives_the_same_embeddings_and_counters(encoder, model_file):
    isa = SentenceEncoder(backend="isa", array=8, model_file=model_file)
    got = isa.encode(TEXTS[:2], batch_size=1)
    assert np.array_equal(got, encoder.encode(TEXTS[:2]))
    run = isa.last_run
    assert run["backend"] == "isa" and run["array"] == 8 and run["sentences"] == 2
    assert run["cycles"] == sum(b["cycles"] for b in run["batches"]) > run["ideal_cycles"] > 0
    assert 0 < run["utilization"] <= 1
    assert [r["batch"] for r in run["per_sentence"]] == [0, 1]
    for r in run["per_sentence"]:
        assert r["bit_exact_vs_golden"] is True
    for b in run["batches"]:
        assert [x["layer"] for x in b["per_layer"]] == list(range(6))
        assert sum(x["cycles"] for x in b["per_layer"]) == b["cycles"]


def test_batches_are_bit_identical_and_use_the_array_better(encoder, model_file):
    """Eight sentences in one program: the embeddings of one at a time, in fewer cycles."""
    texts = ["A man is eating a plate of food.", "A man is riding a white horse.",
             "A woman slices an onion slowly.", "Someone is cooking dinner for friends.",
             "The cat sleeps on the warm sofa.", "Heavy rain is expected this evening.",
             "He plays the guitar in a band.", "Stock prices fell sharply on Monday."]
    isa = SentenceEncoder(backend="isa", array=16, model_file=model_file)
    together = isa.encode(texts, batch_size=8)
    run8 = isa.last_run
    assert len(run8["batches"]) == 1 and run8["batches"][0]["sentences"] == 8
    assert all(r["bit_exact_vs_golden"] for r in run8["per_sentence"])
    alone = isa.encode(texts, batch_size=1)
    run1 = isa.last_run
    assert len(run1["batches"]) == 8
    assert np.array_equal(together, alone)
    assert np.array_equal(together, encoder.encode(texts, batch_size=1))
    assert np.array_equal(together, encoder.encode(texts, batch_size=3))
    assert run8["ideal_cycles"] == run1["ideal_cycles"]
    assert run8["utilization"] >= 0.85 > run1["utilization"]
    assert run8["batches"][0]["utilization"] == run8["utilization"]


def test_the_cli_returns_what_the_api_returns(encoder, model_file, capsys):
    from celosia.sw import cli
    assert cli.main(["embed", "--json", "--model-file", str(model_file), *TEXTS]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    want = encoder.encode(TEXTS)
    assert [r["embedding"] for r in results] == want.tolist()
    assert [r["tokens"] for r in results] == [r["tokens"] for r in encoder.last_run["per_sentence"]]


def test_output_feeds_sentence_transformers_util(encoder):
    util = pytest.importorskip("sentence_transformers.util")
    corpus = ["A man is eating food.", "A man is riding a horse.", "A woman slices an onion."]
    scores = util.cos_sim(encoder.encode("Someone is cooking."), encoder.encode(corpus))
    assert tuple(scores.shape) == (1, 3)
    assert abs(float(scores[0, 0]) - float(encoder.encode("Someone is cooking.")
                                            @ encoder.encode(corpus[0]))) < 1e-6
    hits = util.semantic_search(encoder.encode(["Someone is cooking."]), encoder.encode(corpus),
                                top_k=2)
    assert [h["corpus_id"] for h in hits[0]] == [0, 2]


@pytest.mark.parametrize("kwargs, message", [
    ({"model": "/some/checkpoint"}, "model /some/checkpoint: no such folder"),
    ({"backend": "nosuch"}, "unknown backend 'nosuch'"),
    ({"backend": "isa", "array": 3}, "array=3: array must be"),
    ({"port": "/dev/ttyUSB0"}, "port and baud are for the serial backend, not golden"),
    ({"timeout": float("nan")}, "timeout must be a number of seconds above 0"),
])
def test_constructor_errors_are_one_line(model_file, kwargs, message):
    with pytest.raises(CelosiaError, match=re.escape(message)) as info:
        SentenceEncoder(model_file=model_file, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("sentences, kwargs, message", [
    (["fine", 3], {}, "sentence 1 is a int, not a str"),
    (["caf\udce9"], {}, "sentence 0 is not UTF-8 text"),
    (["x"], {"batch_size": 0}, "batch_size must be 1 or more"),
])
def test_encode_errors_are_one_line(encoder, sentences, kwargs, message):
    with pytest.raises(CelosiaError, match=re.escape(message)):
        encoder.encode(sentences, **kwargs)


def test_readme_semantic_search_example_runs_as_written(model_file, monkeypatch, capsys):
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("CELOSIA_CACHE", str(model_file.parent))
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"example: semantic-search.*?```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("A man is eating food.") and lines[1].endswith("A woman slices an onion.")
    assert lines[2] == "5 sentences, 43 tokens"


def test_progress_bar_only_when_asked_or_on_a_terminal(encoder, capsys, monkeypatch):
    encoder.encode(TEXTS, batch_size=2)              # stderr is not a terminal here
    assert capsys.readouterr().err == ""
    encoder.encode(TEXTS, batch_size=2, show_progress_bar=True)
    err = capsys.readouterr().err
    assert re.fullmatch(r"\r  \[#{13}\.{7}\] 2/3 sentences  \d+ s, ~\d+ s left"
                        r"\r  \[#{20}\] 3/3 sentences  \d+ s\n", err), err
    monkeypatch.setattr("celosia.sw.progress.stderr_is_terminal", lambda: True)
    encoder.encode(TEXTS, batch_size=2)              # on a terminal: shown for several batches
    assert re.search(r"3/3 sentences  \d+ s\n$", capsys.readouterr().err)
    encoder.encode(TEXTS, batch_size=3)              # one quick batch: nothing to wait for
    assert capsys.readouterr().err == ""


def test_a_backend_that_cannot_start_is_one_line(model_file, monkeypatch):
    """A missing Verilator (or a model that fails to build) raises RuntimeError in the
    backend's factory: one line, not a traceback."""
    from celosia.sw import driver

    def no_verilator(*args, **kwargs):
        raise RuntimeError("verilator is not available: [Errno 2] No such file or directory")
    monkeypatch.setattr(driver, "open_backend", no_verilator)
    isa = SentenceEncoder(backend="isa", array=8, model_file=model_file)
    with pytest.raises(CelosiaError, match=re.escape(
            "backend isa: verilator is not available: [Errno 2] No such file or directory")):
        isa.encode("x")
