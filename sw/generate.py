"""``TextGenerator``: text generation with the integer SmolLM2-135M-Instruct decoder, as a
library; the ``celosia generate`` command is built on it.

    >>> from celosia import TextGenerator
    >>> gen = TextGenerator()                       # the golden integer decoder
    >>> gen.generate("What is the capital of France?", max_new_tokens=10)
    'The capital of France is Paris.'
    >>> gen.last_run["generated_ids"][-1] == gen.tokenizer.eos_id
    True

The prompt goes through the chat template of the GGUF file (a user turn and the assistant's
generation prompt) unless ``raw=True``. Decoding is greedy by default; ``temperature > 0``
samples, optionally from the ``top_k`` most likely tokens, with a seeded NumPy generator (the
same seed gives the same tokens). Generation stops after the end-of-sequence token or
``max_new_tokens`` tokens. The prompt runs as one prefill (a matmul per projection with M =
prompt length), then one decode step a token through the integer KV cache
(:func:`celosia.sw.golden.decoder_logits`); ``last_run`` holds the ids, the text and the
time of the prefill and of the decode steps apart.

Backends (:data:`DECODER_BACKENDS`): ``golden``, the integer model in NumPy; ``isa`` and
``verilator``: each block compiled to a program (:class:`celosia.sw.decoder_compiler.
DecoderSession`, the KV cache resident in the accelerator's memory, the final norm and LM
head on it too), run on the instruction-set simulator of a build with the decoder's vector
operations (the simulator's cycle estimate) or on that build's Verilated RTL (its cycles;
minutes a token), bit for bit the golden model's tokens. ``amaranth`` and ``serial`` do not
run the decoder (no board build has the decoder's vector operations).

The integer model is built from the GGUF file on first use (the quantiser calibrates on
``sw/data/chat_calibration.tsv``: about 70 s) and cached beside MiniLM's, under the GGUF file's
digest (:func:`decoder_model_file`); a cache of another format version or another GGUF file is
rebuilt, and so is one made by other sources of the quantiser (:data:`QUANTISER_SOURCES`);
a damaged one is an error.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import golden
from .encoder import BACKENDS
from .errors import CelosiaError, check_text

__all__ = ["TextGenerator", "DECODER_BACKENDS", "decoder_model_file", "load_decoder",
           "file_digest", "backend_problem", "sampling_problem", "sample", "load_float_decoder",
           "first_divergence", "generate_benchmark"]

#: Backends that run the decoder today: golden (the integer model in NumPy) and isa (the
#: compiled program on the instruction-set simulator of a build with the decoder's vector
#: operations, which the RTL does not have yet; estimated cycles).
DECODER_BACKENDS = ("golden", "isa", "verilator")
#: The backends that run the decoder as compiled programs (DecoderSession).
SESSION_BACKENDS = ("isa", "verilator")


def _note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def backend_problem(backend) -> str | None:
    """Why ``backend`` cannot run the decoder (None if it can)."""
    if backend in DECODER_BACKENDS:
        return None
    runs = (f"the decoder runs on the {', '.join(DECODER_BACKENDS[:-1])} and "
            f"{DECODER_BACKENDS[-1]} backends only today")
    if backend in BACKENDS:
        return (f"backend {backend} does not run the decoder yet: {runs} (no board build has "
                f"the decoder's vector operations; it runs the MiniLM encoder: celosia embed)")
    return f"unknown backend {backend!r}: {runs}"


#: The settings' names in messages (the command line passes its option names).
SETTING_NAMES = {"max_new_tokens": "max_new_tokens", "temperature": "temperature",
                 "top_k": "top_k", "seed": "seed"}


def sampling_problem(max_new_tokens, temperature, top_k, seed,
                     names: dict[str, str] = SETTING_NAMES) -> str | None:
    """Why these generation settings are refused (None if they are fine); ``names``: how the
    message names each setting."""
    n = names
    if not (isinstance(max_new_tokens, (int, np.integer)) and not isinstance(max_new_tokens, bool)
            and max_new_tokens >= 1):
        return f"{n['max_new_tokens']} must be 1 or more, not {max_new_tokens!r}"
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        t = math.nan
    if not (math.isfinite(t) and t >= 0):
        return f"{n['temperature']} must be a finite number of 0 or more, not {temperature!r}"
    if top_k is not None and not (isinstance(top_k, (int, np.integer))
                                  and not isinstance(top_k, bool) and top_k >= 1):
        return f"{n['top_k']} must be 1 or more, not {top_k!r}"
    if seed is not None and not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)
                                 and seed >= 0):
        return f"{n['seed']} must be an integer of 0 or more, not {seed!r}"
    if t == 0 and (top_k is not None or seed is not None):
        return (f"{n['top_k']} and {n['seed']} are for sampling: give a {n['temperature']} "
                f"above 0 ({n['temperature']} 0, the default, is greedy decoding)")
    return None


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: The sources the integer decoder is made from (beside the GGUF file): a change to any of
#: them rebuilds the cache, so a cached model is never older than the code.
QUANTISER_SOURCES = ("quantize.py", "numerics.py", "llm.py", "arch.py",
                     "data/chat_calibration.tsv")


def quantiser_digest() -> str:
    """SHA-256 over :data:`QUANTISER_SOURCES`."""
    h = hashlib.sha256()
    for name in QUANTISER_SOURCES:
        path = Path(__file__).parent / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"-"))
    return h.hexdigest()


def decoder_model_file(digest: str) -> Path:
    """Where the integer decoder of the GGUF file with this digest is cached: beside MiniLM's
    integer model ($CELOSIA_CACHE or ~/.cache/celosia)."""
    from .quantize import default_model_file
    return default_model_file().parent / f"smollm2-135m-instruct-{digest[:16]}-int8.safetensors"


def load_decoder(model_file: Path | None = None, rebuild: bool = False, quiet: bool = False):
    """``(tokenizer, integer model)`` of the bundled SmolLM2-135M-Instruct; the integer model
    is built on first use and cached (:func:`decoder_model_file`), or read from ``model_file``.

    A damaged file is an error (never silently replaced); the default cache of another format
    version, made from another GGUF file or by other quantiser sources, is rebuilt; a file
    the user named is never overwritten (made by other quantiser sources, it is used with a
    warning)."""
    from .llm import GGUFTokenizer, LLMError, smollm2_path
    from .quantize import (CorruptModelError, IntegerModel, QuantizedModelError,
                           check_writable)
    gguf = smollm2_path()
    digest = file_digest(gguf)
    path = Path(model_file) if model_file else decoder_model_file(digest)
    command = "celosia generate --rebuild-model" + (f" --model-file {model_file}"
                                                    if model_file else "")
    source = quantiser_digest()
    im = None
    if path.exists() and not rebuild:
        try:
            im = IntegerModel.load(path)
        except CorruptModelError as exc:
            raise CorruptModelError(exc.problem, path, command=command) from None
        except QuantizedModelError as exc:
            if model_file:
                raise QuantizedModelError(exc.problem, path, command=command) from None
            if not quiet:
                _note(f"celosia: {exc.problem}; rebuilding it")
        if im is not None and im.meta.get("gguf_sha256") != digest:
            if model_file:
                what = ("is not an integer decoder" if "gguf_sha256" not in im.meta
                        else f"was made from another GGUF file than {gguf}")
                raise QuantizedModelError(f"integer model {path} {what}", path, command=command)
            im = None
        if im is not None and im.meta.get("quantiser_sha256") != source:
            if model_file:
                if not quiet:
                    _note(f"celosia: warning: {path} was made by another version of the "
                          f"quantiser; {command} makes it again")
            else:
                if not quiet:
                    _note(f"celosia: {path} was made by another version of the quantiser; "
                          "rebuilding it")
                im = None
    if im is None:
        check_writable(path)
    try:
        from gguf import GGUFReader
    except ImportError:
        from .llm import INSTALL_HINT
        raise LLMError(f"the gguf package is not installed; {INSTALL_HINT}") from None
    tokenizer = GGUFTokenizer(GGUFReader(str(gguf)))
    if im is not None:
        return tokenizer, im
    from .llm import FloatTransformer, load_gguf
    from .quantize import quantize_decoder
    if not quiet:
        _note(f"celosia: quantising SmolLM2-135M-Instruct (about a minute, once; cached in "
              f"{path})")
    model = load_gguf(gguf)
    im = quantize_decoder(FloatTransformer(model.weights, model.arch), model.tokenizer)
    im.meta["gguf_sha256"] = digest
    im.meta["quantiser_sha256"] = source
    try:
        im.save(path)
    except OSError as exc:
        raise CelosiaError(f"cannot write the integer model to {path}: {exc.strerror}") from None
    return tokenizer, im


def load_float_decoder():
    """The float reference of the bundled SmolLM2-135M-Instruct: the GGUF file's dequantised
    weights in :class:`celosia.sw.llm.FloatTransformer` (float32 NumPy; about 10 s to read)."""
    from .llm import FloatTransformer, load_smollm2
    model = load_smollm2()
    return FloatTransformer(model.weights, model.arch)


def first_divergence(a, b) -> int | None:
    """The first position where token lists ``a`` and ``b`` differ (the shorter one's length
    when one is a prefix of the other), None when they are equal."""
    a, b = [int(t) for t in a], [int(t) for t in b]
    for n, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return n
    return None if len(a) == len(b) else min(len(a), len(b))


class _TextStream:
    """The text of a growing list of byte-level BPE tokens, handed out as it becomes whole:
    a token can end inside a multi-byte UTF-8 character, whose bytes decode to U+FFFD until
    the next token completes it."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.sent = tokenizer, [], 0

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.sent = text[self.sent:], len(text)
        return piece

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        piece, self.sent = text[self.sent:], len(text)
        return piece


def sample(logits: np.ndarray, scale: float, temperature: float, top_k: int | None,
           rng: np.random.Generator | None) -> int:
    """The next token of one row of integer logits: the argmax at temperature 0 (the lowest id
    on a tie, as ``np.argmax``), else a draw from softmax(logits * scale / temperature) over
    the ``top_k`` largest (all with None; ties at the k-th value broken by the lower id)."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) * (scale / temperature)
    ids = np.arange(len(z))
    if top_k is not None and top_k < len(z):
        ids = np.sort(np.argsort(-z, kind="stable")[:top_k])
        z = z[ids]
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(ids[rng.choice(len(ids), p=p)])


class TextGenerator:
    """Text generation with the integer SmolLM2-135M-Instruct on a Celosia backend.

    Parameters
    ----------
    backend:
        One of :data:`DECODER_BACKENDS`: ``golden`` (the integer model in NumPy), ``isa``
        (the compiled blocks on the instruction-set simulator, with its cycle estimate) or
        ``verilator`` (the compiled blocks on the Verilated RTL built with the decoder's
        vector operations, its cycles; a build of a few minutes on first use, then minutes
        a token).
    array:
        Size N of the N x N array the isa and verilator backends' programs are compiled for.
    model_file:
        The integer decoder file (default: the cache, :func:`decoder_model_file`); built on
        first use.
    quiet:
        No notes on stderr (building the integer model, rebuilding a stale cache).
    rebuild:
        Quantise again and rewrite the file.

    :meth:`generate` and :meth:`stream` continue one prompt; :meth:`generate_batch` several,
    decoded together.

    Members
    -------
    tokenizer, integer_model:
        The GGUF file's tokenizer and chat template; the integer model the backend runs.
    last_run: dict | None
        What the last :meth:`generate` or :meth:`stream` did: ``backend``, ``prompt``,
        ``chat_template`` (applied or not), ``prompt_ids``, ``generated_ids`` (the
        end-of-sequence token included when it was produced), ``text`` (without it),
        ``stopped`` (``eos``, ``max_new_tokens`` or ``context``), ``sampling``
        (``temperature``, ``top_k``, ``seed``: None when greedy), ``prefill`` and
        ``decode`` (``tokens``, ``seconds``, ``tokens_per_s``: the prefill's prompt tokens,
        which give the first new token; the decode steps, one per further token; on isa and
        verilator also ``cycles``, and ``cycles_per_token`` of decode), and on isa and
        verilator ``array`` and ``cycles_model`` (where the cycles come from); ``max_new_tokens``; after
        :meth:`reference`, ``reference``.
    """

    def __init__(self, backend: str = "golden", *, model_file: Path | None = None,
                 quiet: bool = True, rebuild: bool = False, array: int = 16):
        problem = backend_problem(backend)
        if problem:
            raise CelosiaError(problem)
        if backend in SESSION_BACKENDS:
            from .encoder import array_problem
            if array_problem(array):
                raise CelosiaError(f"array={array}: {array_problem(array)}")
        self.backend, self.array = backend, array
        self.tokenizer, self.integer_model = load_decoder(model_file, rebuild=rebuild,
                                                          quiet=quiet)
        self.last_run: dict | None = None
        self._float = None

    @classmethod
    def from_model(cls, tokenizer, integer_model, backend: str = "golden", *, array: int = 16,
                   float_model=None) -> "TextGenerator":
        """A generator on a tokenizer and integer decoder already loaded (no file is read);
        ``float_model``: the float reference :meth:`reference` uses (default: read on first
        use)."""
        problem = backend_problem(backend)
        if problem:
            raise CelosiaError(problem)
        gen = cls.__new__(cls)
        gen.backend, gen.array = backend, array
        gen.tokenizer, gen.integer_model = tokenizer, integer_model
        gen.last_run, gen._float = None, float_model
        return gen

    @property
    def float_model(self):
        """The float reference (:func:`load_float_decoder`), read on first use."""
        if self._float is None:
            self._float = load_float_decoder()
        return self._float

    def reference(self) -> dict:
        """The last run against the float reference, also stored as ``last_run["reference"]``:
        ``float_ids``, float's greedy continuation of the same prompt ids (the same chat
        template or none, the same ``max_new_tokens`` and context, stopping after the
        end-of-sequence token) and ``float_text``; ``first_divergence``, the first position
        where the run's generated ids differ from float's (None when they are equal; with
        sampling, the sampled ids against float's greedy ones); and the teacher-forced
        ``agreement`` (:func:`celosia.sw.accuracy.teacher_forced`: the integer model's argmax
        at each position of float's continuation against float's, over ``tokens`` positions,
        ``agreeing`` of them) and the perplexities of that continuation under both models.
        The integer logits of the teacher forcing are the golden model's (the isa backend's
        are the same bit for bit)."""
        from .accuracy import teacher_forced
        run = self.last_run
        if run is None:
            raise CelosiaError("no run to compare: generate first")
        ids = run["prompt_ids"]
        most = min(run["max_new_tokens"], self.context - len(ids) + 1)
        lm = self.float_model
        cont = lm.generate(np.asarray(ids, dtype=np.int64), most, stop=self.tokenizer.eos_id)
        tf = teacher_forced(lm, self.integer_model, ids, cont)
        ref = {"float_ids": [int(t) for t in cont],
               "float_text": self.tokenizer.decode([t for t in cont
                                                    if t != self.tokenizer.eos_id]),
               "first_divergence": first_divergence(run["generated_ids"], cont),
               "agreement": tf["agreement"], "agreeing": int(tf["agrees"].sum()),
               "tokens": len(cont),
               "perplexity_integer": float(np.exp(tf["nll_integer"].mean())),
               "perplexity_float": float(np.exp(tf["nll_float"].mean())),
               "integer_logits": "golden (teacher-forced; bit for bit the isa backend's)"}
        run["reference"] = ref
        return ref

    @property
    def context(self) -> int:
        """Most tokens (prompt and new ones) the backend reads: the model's context on golden;
        on isa and verilator the softmax's longest row (512)."""
        a = self.integer_model.arch
        return a.max_tokens if self.backend == "golden" else min(512, a.max_tokens)

    def prompt_ids(self, prompt: str, raw: bool = False) -> np.ndarray:
        """The token ids of ``prompt``: as a user turn through the chat template (with the
        assistant's generation prompt), or as it is with ``raw``."""
        if not isinstance(prompt, str):
            raise CelosiaError(f"the prompt is a {type(prompt).__name__}, not a str")
        check_text(prompt, "the prompt")
        text = prompt if raw else self.tokenizer.chat([{"role": "user", "content": prompt}])
        ids = self.tokenizer.encode(text)
        if len(ids) == 0:
            raise CelosiaError("the prompt is empty (it has no tokens)")
        limit = self.context
        if len(ids) >= limit:
            raise CelosiaError(f"the prompt has {len(ids)} tokens: the model reads at most "
                               f"{limit}, new tokens included")
        return ids

    def generate(self, prompt: str, max_new_tokens: int = 64, *, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | None = None, raw: bool = False,
                 callback: Callable[[str], None] | None = None,
                 progress: bool | None = False) -> str:
        """The text generated after ``prompt`` (without the end-of-sequence token);
        ``callback`` receives each piece of text as soon as it is produced; ``progress`` as
        :meth:`stream`'s."""
        for piece in self.stream(prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                                 seed=seed, raw=raw, progress=progress):
            if callback is not None:
                callback(piece)
        return self.last_run["text"]

    def stream(self, prompt: str, max_new_tokens: int = 64, *, temperature: float = 0.0,
               top_k: int | None = None, seed: int | None = None,
               raw: bool = False, progress: bool | None = False) -> Iterator[str]:
        """Yield the generated text piece by piece (a token's text, or nothing while a token
        ends inside a UTF-8 character); ``last_run`` is complete when the iterator ends.
        Bad settings or a bad prompt raise :class:`CelosiaError` here, before any token.
        ``progress``: on the isa and verilator backends, a bar on stderr of the block programs
        of the prefill and of each decode step (True: always; None: when stderr is a
        terminal; False: never)."""
        problem = sampling_problem(max_new_tokens, temperature, top_k, seed)
        if problem:
            raise CelosiaError(problem)
        ids = self.prompt_ids(prompt, raw)
        return self._run(prompt, ids, max_new_tokens, float(temperature), top_k, seed, raw,
                         progress)

    def generate_batch(self, prompts, max_new_tokens: int = 64, *, temperature: float = 0.0,
                       top_k: int | None = None, seed: int | None = None, raw: bool = False,
                       progress: bool | None = False) -> list[str]:
        """The texts generated after each of ``prompts`` (1 to 64), decoded together: on the
        isa and verilator backends one session of ``len(prompts)`` sequences
        (:class:`DecoderSession` with ``logits_batch``), so each step runs one program per
        block for every sequence still generating and reads each weight once for all of them;
        on golden one integer KV cache per prompt. Each text is, token for token, what
        :meth:`generate` gives its prompt alone with the same settings (with sampling, each
        prompt draws from its own generator seeded with ``seed``); each sequence stops on its
        own. ``last_run``: ``backend``, ``sequences``, ``runs`` (each prompt's ``prompt``,
        ``prompt_ids``, ``generated_ids``, ``text``, ``stopped``, ``sampling`` as in
        :meth:`generate`), ``prefill`` (every prompt's tokens in one step) and ``decode`` (the
        steps after it, ``tokens`` the new tokens they gave), on isa and verilator with
        ``cycles`` and ``cycles_per_token``, ``array`` and ``cycles_model``."""
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise CelosiaError("generate_batch takes a list of prompts")
        from .decoder_compiler import MAX_SEQUENCES
        if not 1 <= len(prompts) <= MAX_SEQUENCES:
            raise CelosiaError(f"generate_batch takes 1 to {MAX_SEQUENCES} prompts, not "
                               f"{len(prompts)}")
        problem = sampling_problem(max_new_tokens, temperature, top_k, seed)
        if problem:
            raise CelosiaError(problem)
        ids = [self.prompt_ids(p, raw) for p in prompts]
        for _ in self._decode(list(prompts), ids, max_new_tokens, float(temperature), top_k,
                              seed, raw, progress):
            pass
        return [run["text"] for run in self.last_run["runs"]]

    def _run(self, prompt, ids, max_new_tokens, temperature, top_k, seed, raw, progress=False):
        for _, piece in self._decode([prompt], [ids], max_new_tokens, temperature, top_k, seed,
                                     raw, progress):
            yield piece

    def _decode(self, prompts, ids, max_new_tokens, temperature, top_k, seed, raw, progress):
        """Generate after every prompt at once, yielding ``(prompt index, text piece)`` as
        each piece is produced; ``last_run`` is the one run's record for one prompt, the
        batch's (:meth:`generate_batch`) for several."""
        im, tok = self.integer_model, self.tokenizer
        B = len(prompts)
        if temperature > 0 and seed is None:
            seed = int(np.random.SeedSequence().entropy % (1 << 63))
        rngs = [np.random.default_rng(seed) if temperature > 0 else None for _ in range(B)]
        scale = golden.logit_scale(im)
        limit = self.context
        runs = [{"backend": self.backend, "prompt": prompts[k], "chat_template": not raw,
                 "prompt_ids": [int(i) for i in ids[k]], "max_new_tokens": int(max_new_tokens),
                 "generated_ids": [], "text": "", "stopped": "max_new_tokens",
                 "sampling": {"temperature": temperature, "top_k": top_k, "seed": seed}}
                for k in range(B)]
        batch = ({"backend": self.backend, "sequences": B, "runs": runs} if B > 1 else None)
        self.last_run = batch if batch is not None else runs[0]
        compiled = self.backend in SESSION_BACKENDS
        cycles = []
        if compiled:
            from .decoder_compiler import DecoderSession
            session = DecoderSession(im, self.array, limit, backend=self.backend, sequences=B)

            def logits_of(steps):
                from .progress import ProgressBar
                what = ("prefill" if not cycles else
                        f"{'token' if B == 1 else 'step'} {len(cycles) + 1}")
                bar = ProgressBar(im.arch.layers + 1, f"programs ({what})", progress)
                try:
                    return session.logits_batch(steps, last_only=True,
                                                progress=lambda done, total: bar.update(done))
                finally:
                    bar.close()
        else:
            caches = [golden.DecoderCache() for _ in range(B)]

            def logits_of(steps):
                return [golden.decoder_logits(im, st, caches[k]) if len(st) else None
                        for k, st in enumerate(steps)]
        streams = [_TextStream(tok) for _ in range(B)]
        steps = [np.asarray(t, dtype=np.int64) for t in ids]
        active = [True] * B
        times, step_tokens = [], []
        none = np.zeros(0, dtype=np.int64)
        try:
            for n in range(max_new_tokens):
                for k in range(B):
                    if active[k] and len(ids[k]) + n > limit:
                        runs[k]["stopped"] = "context"
                        active[k] = False
                if not any(active):
                    break
                t0 = time.perf_counter()
                before = session.cycles if compiled else 0
                logits = logits_of([steps[k] if active[k] else none for k in range(B)])
                times.append(time.perf_counter() - t0)
                step_tokens.append(sum(active))
                if compiled:
                    cycles.append(session.cycles - before)
                for k in range(B):
                    if not active[k]:
                        continue
                    nxt = sample(logits[k][-1], scale, temperature, top_k, rngs[k])
                    runs[k]["generated_ids"].append(nxt)
                    if nxt == tok.eos_id:
                        runs[k]["stopped"] = "eos"
                        active[k] = False
                        continue
                    piece = streams[k].push(nxt)
                    runs[k]["text"] += piece
                    if piece:
                        yield k, piece
                    steps[k] = np.array([nxt], dtype=np.int64)
            for k in range(B):
                piece = streams[k].flush()
                runs[k]["text"] += piece
                if piece:
                    yield k, piece
        finally:
            if compiled:
                session.close()
        rec = self.last_run
        rec["prefill"] = _rate(sum(len(t) for t in ids), times[:1])
        rec["decode"] = _rate(sum(step_tokens[1:]), times[1:])
        if compiled:
            rec["prefill"]["cycles"] = cycles[0] if cycles else 0
            rec["decode"]["cycles"] = sum(cycles[1:])
            rec["decode"]["cycles_per_token"] = (round(sum(cycles[1:]) / sum(step_tokens[1:]))
                                                 if sum(step_tokens[1:]) else None)
            rec["array"] = self.array
            rec["cycles_model"] = (
                "isa simulator estimate (docs/isa.md, \"The cycle model\") of a build with the "
                "decoder's vector operations, not RTL" if self.backend == "isa" else
                "the Verilated RTL (Sizing(decoder_ops=True)), cycles counted by the "
                "accelerator")


def _rate(tokens: int, times: list[float]) -> dict:
    s = float(sum(times))
    return {"tokens": tokens, "seconds": round(s, 4),
            "tokens_per_s": round(tokens / s, 2) if tokens and s > 0 else None}


#: The issue's targets the generation benchmark checks (issue 16): teacher-forced top-1
#: agreement, perplexity ratios to float, and decode cycles per token against the memory
#: roofline.
TARGETS = {"agreement": 0.96, "perplexity_ratio": 1.03, "roofline_ratio": 0.8}


#: The board whose build clock the projections assume unless given one.
PROJECTION_BOARD = "ulx3s-85f"


def board_clock_mhz() -> float:
    """The core clock of the :data:`PROJECTION_BOARD` build (the whole accelerator, both
    engines, meets timing there: docs/fpga.md), the clock the projected tokens/s assume by
    default."""
    from celosia.fpga.boards import BOARDS
    return BOARDS[PROJECTION_BOARD].clock_mhz


def _clock_note(c) -> str:
    return f" (the {PROJECTION_BOARD} build's clock)" if c["clock_from"] != "given" else ""


def generate_benchmark(tokenizer, im, lm, prompts: list[str], paragraph: str | None = None,
                       tokens: int = 32, array: int = 16, isa_tokens: int = 2,
                       clock_mhz: float | None = None,
                       progress: Callable[[str], None] | None = None,
                       decode_batch: int = 8) -> dict:
    """``celosia bench generate``: the integer decoder ``im`` against the float reference
    ``lm`` and the isa backend's decode against the memory roofline.

    * quality: :func:`celosia.sw.accuracy.decoder_quality` over ``prompts`` (float's greedy
      continuations of up to ``tokens`` tokens, teacher-forced), with each prompt's first
      greedy divergence, and the perplexity of ``paragraph``;
    * speed: the golden backend's prefill and decode tokens/s, generating up to ``tokens``
      tokens after the prompt whose float continuation is the longest (the first such);
    * cycles: the isa backend (``array`` x ``array``) on the same prompt, its prefill and
      ``isa_tokens`` decode steps (about 10 s a step), decode cycles per token against
      :func:`celosia.sw.decoder_compiler.decode_roofline`, and the tokens/s they project at
      ``clock_mhz`` (default :func:`board_clock_mhz`);
    * batched decode: the first ``decode_batch`` prompts (repeated when there are fewer)
      prefilled in one :class:`~celosia.sw.decoder_compiler.DecoderSession` of that many
      sequences, then one decode step of all of them together (their rows stacked, each
      weight read once for the batch): the step's cycles, its cycles per token against the
      same roofline (the target's figure: the mapping that uses the array best at M = 1 is
      several sequences decoded together, docs/model.md) and the projected tokens/s. 0 skips
      it.

    ``progress`` receives a line at each stage and each prompt."""
    from .accuracy import decoder_quality
    from .decoder_compiler import decode_roofline
    note = progress or (lambda msg: None)
    if not prompts:
        raise CelosiaError("no prompts to measure")
    if tokens < 1:
        raise CelosiaError(f"tokens must be 1 or more, not {tokens}")
    if isa_tokens < 1:
        raise CelosiaError(f"isa_tokens must be 1 or more, not {isa_tokens}")
    from .decoder_compiler import MAX_SEQUENCES
    if not 0 <= decode_batch <= MAX_SEQUENCES:
        raise CelosiaError(f"the decode batch must be 0..{MAX_SEQUENCES} sequences, not "
                           f"{decode_batch}")
    clock_from = "given"
    if clock_mhz is None:
        clock_mhz, clock_from = board_clock_mhz(), f"{PROJECTION_BOARD} build"
    if not (math.isfinite(clock_mhz) and clock_mhz > 0):
        raise CelosiaError(f"the clock must be above 0 MHz, not {clock_mhz}")
    t0 = time.perf_counter()
    note(f"quality: {len(prompts)} prompts, float's greedy continuations of up to {tokens} "
         f"tokens, teacher-forced" + (", then the paragraph" if paragraph else ""))
    q = decoder_quality(lm, im, tokenizer, prompts, paragraph, tokens, progress=progress)
    q.pop("table")
    longest = max(range(len(prompts)), key=lambda n: (q["per_prompt"][n]["tokens"], -n))
    prompt = prompts[longest]
    note(f"speed: golden, up to {tokens} tokens after prompt {longest + 1} ({prompt[:40]!r})")
    gen = TextGenerator.from_model(tokenizer, im, "golden")
    gen.generate(prompt, tokens)
    run = gen.last_run
    speed = {"prompt": prompt, "prompt_tokens": run["prefill"]["tokens"],
             "prefill": run["prefill"], "decode": run["decode"],
             "generated_ids": run["generated_ids"],
             "greedy_first_divergence": first_divergence(
                 run["generated_ids"], q["per_prompt"][longest]["continuation_ids"])}
    note(f"cycles: isa at {array}x{array}, the same prompt's prefill and {isa_tokens} decode "
         f"steps (about 10 s each)")
    isa_gen = TextGenerator.from_model(tokenizer, im, "isa", array=array)
    isa_gen.generate(prompt, 1 + isa_tokens)
    irun = isa_gen.last_run
    steps = irun["decode"]["tokens"]
    if steps < 1:
        raise CelosiaError(f"the isa run stopped after its prefill ({irun['stopped']}): no "
                           "decode step to measure")
    per_token = irun["decode"]["cycles"] / steps
    roof = decode_roofline(im, array)
    ratio = roof["cycles"] / per_token
    hz = clock_mhz * 1e6
    cycles = {"array": array, "prompt_tokens": irun["prefill"]["tokens"],
              "prefill_cycles": irun["prefill"]["cycles"], "decode_steps": steps,
              "decode_cycles": irun["decode"]["cycles"], "decode_cycles_per_token": per_token,
              "same_tokens_as_golden": irun["generated_ids"] ==
              run["generated_ids"][:len(irun["generated_ids"])],
              "cycles_model": irun["cycles_model"],
              "roofline_weight_bytes": roof["weight_bytes"],
              "roofline_port_bytes": roof["port_bytes"], "roofline_cycles": roof["cycles"],
              "roofline_ratio": ratio, "clock_mhz": clock_mhz, "clock_from": clock_from,
              "projected_decode_tokens_per_s": hz / per_token,
              "projected_prefill_tokens_per_s": hz * irun["prefill"]["tokens"]
              / irun["prefill"]["cycles"],
              "roofline_tokens_per_s": hz / roof["cycles"]}
    if decode_batch:
        cycles["batched"] = batched = _batched_decode(tokenizer, im, prompts, array,
                                                      decode_batch, roof, hz, note)
        ratio = batched["roofline_ratio"]
    targets = {"agreement": q["agreement"] >= TARGETS["agreement"],
               "perplexity_ratio": q["perplexity_ratio"] <= TARGETS["perplexity_ratio"],
               "roofline_ratio": ratio >= TARGETS["roofline_ratio"]}
    if paragraph is not None:
        targets["paragraph_perplexity_ratio"] = (q["paragraph_perplexity_ratio"]
                                                 <= TARGETS["perplexity_ratio"])
    report = {"quality": q, "speed": speed, "cycles": cycles, "targets": TARGETS,
              "targets_met": targets, "wall_s": round(time.perf_counter() - t0, 1)}
    report["table"] = _benchmark_table(report, tokens)
    return report


def _batched_decode(tokenizer, im, prompts, array, batch, roof, hz, note) -> dict:
    """One decode step of ``batch`` sequences together on the isa backend (see
    :func:`generate_benchmark`)."""
    from .decoder_compiler import DecoderSession
    chosen = [prompts[n % len(prompts)] for n in range(batch)]
    ids = [tokenizer.encode(tokenizer.chat([{"role": "user", "content": p}])) for p in chosen]
    note(f"cycles: isa at {array}x{array}, {batch} prompts prefilled together "
         f"({sum(map(len, ids))} tokens), then one decode step of all {batch}")
    session = DecoderSession(im, array=array, sequences=batch)
    first = session.logits_batch(ids, last_only=True)
    before = session.cycles
    session.logits_batch([[int(np.argmax(f[-1]))] for f in first], last_only=True)
    step = session.cycles - before
    per_token = step / batch
    return {"sequences": batch, "prompt_tokens": [len(t) for t in ids],
            "prefill_cycles": before, "step_cycles": step,
            "decode_cycles_per_token": per_token,
            "step_roofline_ratio": roof["cycles"] / step,
            "roofline_ratio": roof["cycles"] / per_token,
            "projected_decode_tokens_per_s": hz / per_token}


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _benchmark_table(r: dict, tokens: int) -> str:
    q, s, c, met, t = r["quality"], r["speed"], r["cycles"], r["targets_met"], r["targets"]
    rows = [f"integer SmolLM2-135M-Instruct vs float on {q['prompts']} chat prompts "
            f"({q['continuation_tokens']} tokens of float's greedy continuations, up to "
            f"{tokens} each, teacher-forced)",
            f"  top-1 agreement           {q['agreement']:.4f}  (target >= {t['agreement']}: "
            f"{_met(met['agreement'])})",
            f"  perplexity, continuations {q['perplexity_integer']:.4f} integer, "
            f"{q['perplexity_float']:.4f} float: x{q['perplexity_ratio']:.4f}  (target <= "
            f"x{t['perplexity_ratio']}: {_met(met['perplexity_ratio'])})"]
    if "paragraph_perplexity_ratio" in q:
        rows.append(f"  perplexity, paragraph     {q['paragraph_perplexity_integer']:.4f} integer, "
                    f"{q['paragraph_perplexity_float']:.4f} float: "
                    f"x{q['paragraph_perplexity_ratio']:.4f}  ({q['paragraph_tokens']} tokens; "
                    f"{_met(met['paragraph_perplexity_ratio'])}); agreement "
                    f"{q['paragraph_agreement']:.4f}")
    rows.append("  first greedy divergence (new tokens before the integer model's greedy "
                "choice differs from float's; '-': none), for information:")
    rows += [f"    {p['first_divergence'] if p['first_divergence'] is not None else '-':>3} of "
             f"{p['tokens']:>3}  agreement {p['agreement']:.3f}  {p['prompt'][:56]}"
             for p in q["per_prompt"]]
    pre, dec = s["prefill"], s["decode"]

    def rate(x):
        return f"{x['tokens_per_s']:.2f} tokens/s" if x["tokens_per_s"] else "-"
    rows += [f"golden backend speed (prompt {s['prompt'][:40]!r}): prefill {pre['tokens']} "
             f"tokens, {rate(pre)}; decode {dec['tokens']} tokens, {rate(dec)}",
             f"isa backend at {c['array']}x{c['array']} (the simulator's cycle estimate, not "
             f"RTL): prefill {c['prompt_tokens']} tokens {c['prefill_cycles']:,} cycles; "
             f"decode {c['decode_cycles_per_token']:,.0f} cycles a token "
             f"({c['decode_steps']} steps; tokens "
             f"{'the same as' if c['same_tokens_as_golden'] else 'DIFFERENT from'} golden's)",
             f"  memory roofline: {c['roofline_weight_bytes']:,} weight bytes / "
             f"{c['roofline_port_bytes']} bytes a cycle = {c['roofline_cycles']:,} cycles a token",
             f"  one sequence: decode at {c['roofline_ratio']:.3f} of the roofline (each wide "
             f"product's two passes read the weights twice, and at M = 1 the array takes N of "
             f"the port's 2N bytes a cycle: docs/model.md)",
             f"  projected at {c['clock_mhz']:g} MHz{_clock_note(c)}: decode "
             f"{c['projected_decode_tokens_per_s']:.2f} tokens/s, prefill "
             f"{c['projected_prefill_tokens_per_s']:.1f} tokens/s "
             f"(at the roofline: {c['roofline_tokens_per_s']:.1f} tokens/s), on a board with the "
             f"memory to hold the model"]
    bt = c.get("batched")
    if bt:
        rows += [f"  {bt['sequences']} sequences decoded together (prompts of "
                 f"{min(bt['prompt_tokens'])}..{max(bt['prompt_tokens'])} tokens): one step "
                 f"{bt['step_cycles']:,} cycles ({bt['step_roofline_ratio']:.3f} of one "
                 f"token's roofline), {bt['decode_cycles_per_token']:,.0f} cycles a token",
                 f"  decode at {bt['roofline_ratio']:.3f} of the roofline a token (target >= "
                 f"{t['roofline_ratio']}: {_met(met['roofline_ratio'])}); projected "
                 f"{bt['projected_decode_tokens_per_s']:.1f} tokens/s at {c['clock_mhz']:g} MHz"]
    else:
        rows.append(f"  decode target >= {t['roofline_ratio']} of the roofline: "
                    f"{_met(met['roofline_ratio'])} (one sequence; no batch measured)")
    rows.append(f"wall time {r['wall_s']:.0f} s")
    return "\n".join(rows)
