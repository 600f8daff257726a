"""``SentenceEncoder``: Celosia's sentence embeddings as a library, with sentence-transformers'
conventions, on any backend.

    >>> from celosia import SentenceEncoder
    >>> encoder = SentenceEncoder()                    # the golden integer model
    >>> encoder.encode("A cat sat on the mat.").shape
    (384,)
    >>> encoder.encode(["first", "second"]).shape
    (2, 384)
    >>> encoder.last_run["tokens"]
    6

Embeddings are float32, L2-normalised when the checkpoint's pipeline ends in a Normalize module
(all-MiniLM-L6-v2 does) or when ``normalize_embeddings=True``, so they feed
``sentence_transformers.util.cos_sim`` and ``semantic_search`` unchanged. Every backend computes
the same integers (the golden model is the spec); ``last_run`` holds what the last ``encode``
measured: tokens, and on the accelerator backends cycles, utilisation and per-layer counters.
The ``celosia embed`` command is built on this class.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import golden
from .errors import CelosiaError, check_text
from .model import pool
from .progress import ProgressBar
from .quantize import default_model_file

__all__ = ["SentenceEncoder", "BACKENDS", "load_models", "array_problem", "model_problem"]

#: Backends: golden (the op-level integer model), isa (the compiled program on the functional
#: simulator of the instruction set; estimated cycles), amaranth (the RTL in Amaranth's
#: simulator; small programs only), verilator (the RTL compiled by Verilator), serial (a board).
BACKENDS = ("golden", "isa", "amaranth", "verilator", "serial")
#: Backends slow enough that a progress bar helps even for one batch.
SLOW_BACKENDS = ("amaranth", "verilator", "serial")


def array_problem(array: int) -> str | None:
    """Why an N x N array cannot be built (None if it can)."""
    from celosia.hdl.params import check_config, default_port_bytes
    try:
        check_config(array, default_port_bytes(array))
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def _note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def model_problem(arch) -> str | None:
    """Why the hardware cannot run an encoder of this shape (None if it can): every
    LayerNorm row (hidden), GELU row (FFN width) and softmax row (tokens) is one vector-unit
    row of at most VEC_MAX_COLS columns. ``arch``: the model's description
    (:class:`celosia.sw.arch.Transformer`)."""
    from celosia.hdl.isa import VEC_MAX_COLS
    c = arch
    for value, name, where in ((c.hidden, "hidden_size", "LayerNorm"),
                               (c.ffn, "intermediate_size", "the GELU over FFN1's output"),
                               (c.max_tokens, "max_seq_length", "softmax")):
        if value > VEC_MAX_COLS:
            return (f"{name} {value} is more than the vector unit's {VEC_MAX_COLS}-column rows "
                    f"({where}; VEC_MAX_COLS in hdl/isa.py)")
    return None


def load_models(model_file: Path | None = None, rebuild: bool = False, quiet: bool = False,
                checkpoint: Path | None = None, config=None):
    """The float model and its integer model; builds and caches the integer model on first use.

    ``checkpoint``: a sentence-transformers folder (default: the bundled all-MiniLM-L6-v2);
    its integer model is cached under the checkpoint's digest unless ``model_file`` names one.
    A damaged file is an error (never silently replaced); the default cache of another format
    version is rebuilt. Before any work whose result must be written, the folder is checked.
    ``config``: the quantiser's QuantConfig when the integer model is built (the default
    recipe if None).
    """
    from .model import ModelError, checkpoint_digest, load_minilm
    from .quantize import (CorruptModelError, IntegerModel, QuantizedModelError, check_writable,
                           checkpoint_model_file, quantize)
    digest = command = None
    if checkpoint is not None:
        if not Path(checkpoint).is_dir():
            raise CelosiaError(f"model {checkpoint}: no such folder")
        digest = checkpoint_digest(checkpoint)
        command = f"celosia quantize --force --model {checkpoint}" + (
            f" -o {model_file}" if model_file else "")
    path = Path(model_file) if model_file else (
        checkpoint_model_file(checkpoint, digest) if checkpoint else default_model_file())
    im = None
    if path.exists() and not rebuild:
        try:
            im = IntegerModel.load(path)
        except CorruptModelError as exc:
            raise exc if command is None else CorruptModelError(exc.problem, path,
                                                                command=command) from None
        except QuantizedModelError as exc:
            if model_file:       # a file the user named: do not overwrite it silently
                raise exc if command is None else QuantizedModelError(exc.problem, path,
                                                                      command=command) from None
            if not quiet:
                _note(f"celosia: {exc.problem}; rebuilding it")
        if im is not None and digest and im.meta.get("checkpoint_sha256") != digest:
            if model_file:
                raise QuantizedModelError(f"integer model {path} was made from another "
                                          f"checkpoint than {checkpoint}", path, command=command)
            im = None
    if im is None:
        check_writable(path)
    try:
        model = load_minilm(checkpoint)
    except ModelError as exc:
        raise CelosiaError(str(exc)) from None
    problem = model_problem(model.arch)
    if problem:
        raise CelosiaError(f"model {checkpoint or 'all-MiniLM-L6-v2'}: {problem}")
    if im is not None:
        return model, im
    name = "all-MiniLM-L6-v2" if checkpoint is None else str(checkpoint)
    if not quiet:
        _note(f"celosia: quantising {name} (once; cached in {path})")
    im = quantize(model) if config is None else quantize(model, config=config)
    if digest:
        im.meta["checkpoint_sha256"] = digest
    try:
        im.save(path)
    except OSError as exc:
        raise CelosiaError(f"cannot write the integer model to {path}: {exc.strerror}") from None
    return model, im


def per_layer(res, im, tokens, array: int) -> list | None:
    """Cycles and utilisation of each encoder layer, and the cycles of its parts against
    their ideal matmul (MACs / N^2) and vector (elements / N) cycles. ``tokens``: the token
    counts of the run's sentences."""
    if res.part_cycles is None:
        return None
    layers: list[dict] = []
    for layer, name, cycles in res.part_cycles:
        while len(layers) <= layer:
            layers.append({"layer": len(layers), "cycles": 0, "ideal_cycles": 0, "parts": []})
        macs, elements = im.arch.part_work(tokens, name)
        entry = layers[layer]
        entry["cycles"] += cycles
        entry["ideal_cycles"] += macs / array ** 2
        entry["parts"].append({"part": name, "cycles": cycles,
                               "matmul_ideal": int(round(macs / array ** 2)),
                               "vector_ideal": int(round(elements / array))})
    for entry in layers:
        c, ideal = entry["cycles"], entry["ideal_cycles"]
        entry["ideal_cycles"] = int(round(ideal))
        entry["utilization"] = round(ideal / c, 4) if c else None
    return layers


def utilization(im, tokens, array: int, cycles: int) -> dict:
    """Cycles against the ideal (every MAC of the sentences on an N x N array, N^2 a cycle)."""
    ideal = im.arch.macs(tokens) / array ** 2
    return {"array": array, "cycles": cycles, "ideal_cycles": int(round(ideal)),
            "utilization": round(ideal / cycles, 4) if cycles else None}


class SentenceEncoder:
    """Sentence embeddings of a BERT-family checkpoint (all-MiniLM-L6-v2 by default) computed
    by a Celosia backend.

    Parameters
    ----------
    model:
        None: the bundled all-MiniLM-L6-v2; or the path of a sentence-transformers folder of a
        BERT encoder (see :func:`celosia.sw.model.load_minilm`), quantised on first use with
        the repository's calibration text and cached under the checkpoint's digest.
    backend:
        One of :data:`BACKENDS`; ``golden`` by default.
    array:
        Size N of the N x N systolic array the program is compiled for (not golden); on the
        serial backend None asks the board (its CONFIG register).
    port, baud:
        The board's serial port (or a pyserial URL) and baud rate (serial backend).
    model_file:
        The integer model file (default: the cache, ``$CELOSIA_CACHE`` or ~/.cache/celosia);
        built on first use.
    timeout:
        Seconds a backend run may take before it is stopped (with its last status).
    quiet:
        No notes on stderr (building the integer model, rebuilding a stale cache).
    backend_options:
        Options for the backend's factory (a waveform file, ...): a dict, or a function of the
        sentence's index that returns one.
    layer_progress:
        A function called once per sentence that returns a progress callback
        ``(retired instructions, program length)`` for an accelerator run; the callback's
        ``finish()``, if it has one, is called when the run ends.

    Members
    -------
    dim: int
        Embedding dimension.
    normalizes: bool
        Whether the checkpoint's pipeline normalises embeddings.
    pooling: str
        The checkpoint's pooling: "mean" or "cls".
    float_model, integer_model:
        The float reference and the integer model the backends run.
    last_run: dict | None
        What the last :meth:`encode` measured: ``backend``, ``sentences``, ``tokens``,
        ``batch_size``, ``wall_s``; on accelerator backends ``array``, ``cycles``,
        ``ideal_cycles`` and ``utilization``; ``batches``, one record per backend run
        (``sentences``, ``tokens``, ``wall_s``, and on accelerator backends ``cycles``,
        ``utilization``, ``per_layer``; on the serial backend ``link_bytes``, both ways, and
        ``weights_loaded``, false when the board already held the weights); and ``per_sentence``, one record each (``tokens``,
        ``batch``, and on accelerator backends ``bit_exact_vs_golden``).
    """

    def __init__(self, model=None, backend: str = "golden", array: int | None = 16, port=None,
                 baud: int | None = None, *, model_file: Path | None = None,
                 timeout: float = 1800.0, quiet: bool = True,
                 backend_options: dict | Callable[[int], dict] | None = None,
                 layer_progress: Callable[[], Callable[[int, int], None]] | None = None):
        if backend not in BACKENDS:
            raise CelosiaError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
        if array is None:
            if backend != "serial":
                raise CelosiaError(f"array=None (the board's) is for the serial backend, not "
                                   f"{backend}")
            from .serial_backend import board_array
            try:
                array = board_array(port, baud)
            except (ValueError, OSError, RuntimeError) as exc:
                raise CelosiaError(f"backend serial: {exc}") from None
        if backend != "golden" and array_problem(array):
            raise CelosiaError(f"array={array}: {array_problem(array)}")
        if backend != "serial" and (port is not None or baud is not None):
            raise CelosiaError(f"port and baud are for the serial backend, not {backend}")
        if not timeout > 0:
            raise CelosiaError(f"timeout must be a number of seconds above 0, not {timeout!r}")
        self.backend, self.array, self.timeout = backend, array, timeout
        self._options = backend_options
        self._serial = {"port": port, "baud": baud} if backend == "serial" else {}
        self._layer_progress = layer_progress
        self.float_model, self.integer_model = load_models(model_file, quiet=quiet,
                                                           checkpoint=model)
        self.pooling = self.float_model.arch.output.pooling
        self.normalizes = self.float_model.arch.output.normalize
        self.dim = self.integer_model.arch.hidden
        self.last_run: dict | None = None

    def encode(self, sentences, batch_size: int = 32, show_progress_bar: bool | None = None,
               convert_to_numpy: bool = True, normalize_embeddings: bool | None = None):
        """Embeddings of ``sentences``: a str gives shape (dim,), a list (n, dim), float32
        (with ``convert_to_numpy=False``, a list of 1-D arrays). Normalised when the pipeline
        has a Normalize module or ``normalize_embeddings`` is true.

        ``batch_size`` sentences go to the backend at a time, as one program whose dense
        layers run over all their token rows (bit-identical to one sentence at a time).
        ``show_progress_bar``: a bar of sentences done on stderr; by default shown when
        stderr is a terminal and the run has several batches or a slow backend."""
        single = isinstance(sentences, str)
        texts = [sentences] if single else list(sentences)
        for n, text in enumerate(texts):
            if not isinstance(text, str):
                raise CelosiaError(f"sentence {n} is a {type(text).__name__}, not a str")
            check_text(text, f"sentence {n}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise CelosiaError(f"batch_size must be 1 or more, not {batch_size!r}")
        normalise = self.normalizes or bool(normalize_embeddings)
        if show_progress_bar is None and not (len(texts) > batch_size
                                              or self.backend in SLOW_BACKENDS):
            show_progress_bar = False             # one quick batch: nothing to wait for
        bar = ProgressBar(len(texts), "sentences", enabled=show_progress_bar)
        t0 = time.perf_counter()
        embeddings, records, batches = [], [], []
        scale = golden.output_scale(self.integer_model)
        try:
            for start in range(0, len(texts), batch_size):
                chunk = texts[start:start + batch_size]
                hidden, batch = self._encode_batch(len(batches), chunk, records)
                batches.append(batch)
                embeddings += [pool(h.astype(np.float64) * scale, self.pooling, normalise)
                               for h in hidden]
                bar.update(len(records))
        finally:
            bar.close()          # an error's message starts on a line of its own
        self.last_run = self._summary(records, batches, batch_size, time.perf_counter() - t0)
        out = np.stack(embeddings) if embeddings else np.zeros((0, self.dim), dtype=np.float32)
        if single:
            return out[0]
        return out if convert_to_numpy else list(out)

    def _encode_batch(self, index: int, texts: list[str], records: list[dict]):
        """Hidden states of a batch of sentences (one backend run); appends a record per
        sentence to ``records`` and returns the batch's record."""
        model, im = self.float_model, self.integer_model
        ids = []
        for text in texts:
            tok, truncated = model.tokenizer.encode(text)
            ids.append(tok)
            records.append({"text": text, "tokens": int(len(tok)), "batch": index,
                            **({"truncated": True} if truncated else {})})
        tokens = [len(x) for x in ids]
        batch = {"batch": index, "sentences": len(ids), "tokens": sum(tokens)}
        t0 = time.perf_counter()
        ref = golden.forward_batch(im, [golden.embed_int32(model, im, x) for x in ids])
        if self.backend == "golden":
            hidden = ref
        else:
            hidden = self._run_on_accelerator(index, ids, batch)
            for record, got, want in zip(records[-len(ids):], hidden, ref):
                record["bit_exact_vs_golden"] = bool(np.array_equal(got, want))
        # Wall time of the run itself; a one-time model build is reported as build_s.
        batch["wall_s"] = round(time.perf_counter() - t0 - batch.get("build_s", 0.0), 4)
        return hidden, batch

    def _run_on_accelerator(self, index: int, ids: list[np.ndarray], batch: dict) -> list:
        """Run the batch's compiled program on the backend; fill the batch record's hardware
        fields."""
        from .driver import AcceleratorError, AcceleratorHung, run_batch
        if self.backend == "verilator":
            import celosia.sim.verilator_accel  # noqa: F401  (registers the backend)
        model, im = self.float_model, self.integer_model
        options = self._options(index) if callable(self._options) else dict(self._options or {})
        options.update(self._serial)
        progress = self._layer_progress() if self._layer_progress else None
        try:
            res = run_batch(self.backend, model, im, ids, array=self.array,
                            timeout_s=self.timeout, progress=progress, backend_options=options)
        except (AcceleratorError, AcceleratorHung, ValueError, OSError, RuntimeError) as exc:
            # ValueError, OSError, RuntimeError: backend set-up (waveform format, port, memory
            # window, a Verilator that is missing or fails to build the model).
            raise CelosiaError(f"backend {self.backend}: {exc}") from None
        finally:
            if hasattr(progress, "finish"):
                progress.finish()
        tokens = [len(x) for x in ids]
        batch.update(utilization(im, tokens, self.array, res.counters["cycles"]))
        batch["per_layer"] = per_layer(res, im, tokens, self.array)
        if "waves" in options:
            batch["waves"] = str(options["waves"])
        if self.backend == "isa":
            batch["cycles_model"] = "isa simulator estimate (docs/isa.md, \"The cycle model\"), not RTL"
        if res.build_s:
            batch["build_s"] = round(res.build_s, 2)
        if res.link_bytes is not None:
            batch.update(link_bytes=res.link_bytes, weights_loaded=res.weights_loaded)
        batch.update(memory_figures(res, len(ids)))
        return res.sentence_hidden

    def _summary(self, records: list[dict], batches: list[dict], batch_size: int,
                 wall: float) -> dict:
        run = {"backend": self.backend, "sentences": len(records),
               "tokens": sum(r["tokens"] for r in records), "batch_size": batch_size,
               "wall_s": round(wall, 4)}
        if self.backend != "golden":
            run.update(utilization(self.integer_model, [r["tokens"] for r in records], self.array,
                                   sum(b["cycles"] for b in batches)))
        run["batches"] = batches
        run["per_sentence"] = records
        return run


#: A board memory this large is its SDRAM (every on-chip window is far smaller).
SDRAM_MIN_BYTES = 1 << 24


def memory_figures(res, sentences: int) -> dict:
    """The run's memory traffic from the accelerator's MEM_READS/MEM_WRITES counters (RTL
    backends; the isa simulator does not model them), and on a board: its clock, the SDRAM
    bandwidth used (against one 16-bit word a clock) and the throughput projected for the
    board at its own clock, the link's time at its baud rate included."""
    out = {}
    beats = res.counters.get("mem_read_beats", 0), res.counters.get("mem_write_beats", 0)
    cycles = res.counters.get("cycles", 0)
    if res.backend == "isa" or not any(beats) or not cycles or res.compiled is None:
        return out
    W = res.compiled.config.port_bytes
    read, written = beats[0] * W, beats[1] * W
    out.update(memory_read_bytes=read, memory_write_bytes=written,
               memory_bytes_per_cycle=round((read + written) / cycles, 4))
    if res.board:
        from celosia.fpga.sdram import SDRAM_WORD_BYTES

        clk, baud = res.board["clk_hz"], res.board["baud"]
        out["board_clock_hz"] = clk
        if res.board["mem_bytes"] >= SDRAM_MIN_BYTES:
            out["sdram_bandwidth_utilization"] = round((read + written)
                                                       / (cycles * SDRAM_WORD_BYTES), 4)
        seconds = cycles / clk + (res.link_bytes or 0) * 10 / baud
        out["projected_seconds_on_board"] = round(seconds, 4)
        out["projected_sentences_per_s"] = round(sentences / seconds, 3)
    return out


def batching_report(encoder: "SentenceEncoder", texts: list[str], sizes: list[int]) -> dict:
    """``celosia bench batching``: the same sentences encoded with each batch size; cycles,
    utilisation (overall and per batch), whether every embedding equals batch size 1's, and
    the per-layer records of the run (summed over its batches)."""
    from .plot import sum_layers
    runs, first = [], None
    for size in sizes:
        emb = encoder.encode(texts, batch_size=size, show_progress_bar=False)
        run = encoder.last_run
        first = emb if first is None else first
        record = {"batch_size": size, "batches": len(run["batches"]),
                  "utilization_per_batch": [b.get("utilization") for b in run["batches"]],
                  "same_embeddings": bool(np.array_equal(emb, first)),
                  "wall_s": run["wall_s"]}
        if "cycles" in run:
            record.update({k: run[k] for k in ("cycles", "ideal_cycles", "utilization")})
            record["bit_exact_vs_golden"] = all(r["bit_exact_vs_golden"]
                                                for r in run["per_sentence"])
            if all(b.get("per_layer") for b in run["batches"]):
                record["per_layer"] = sum_layers([b["per_layer"] for b in run["batches"]])
        runs.append(record)
    tokens = [r["tokens"] for r in encoder.last_run["per_sentence"]]
    report = {"backend": encoder.backend, "array": encoder.array, "sentences": len(texts),
              "tokens": sum(tokens), "tokens_per_sentence": round(sum(tokens) / len(tokens), 2),
              "runs": runs}
    rows = [f"{encoder.backend} backend, {encoder.array}x{encoder.array} array: {len(texts)} "
            f"sentences, {sum(tokens)} tokens ({min(tokens)}..{max(tokens)} a sentence)",
            f"{'batch size':>10}  {'batches':>7}  {'cycles':>10}  {'util':>6}  "
            f"{'util per batch':<24}  {'same as 1':>9}"]
    for r in runs:
        per = " ".join(f"{u:.3f}" for u in r["utilization_per_batch"][:4] if u is not None)
        per += " ..." if len(r["utilization_per_batch"]) > 4 else ""
        rows.append(f"{r['batch_size']:>10}  {r['batches']:>7}  {r.get('cycles', '-'):>10}  "
                    f"{r.get('utilization') or 0:>6.3f}  {per:<24}  "
                    f"{'yes' if r['same_embeddings'] else 'NO':>9}")
    report["table"] = "\n".join(rows)
    return report
