"""The golden model: the integer MiniLM forward pass, op by op, exactly as the hardware does it.

Everything between the embedding lookup (host) and the pooling (host) is composed from the
integer operations of :mod:`celosia.sw.numerics`; every backend must reproduce the int16 hidden
states this returns, bit for bit. Its shape and structure come from the integer model's
description (``IntegerModel.arch``, :mod:`celosia.sw.arch`); a description with features it
does not implement yet is refused.
"""

from __future__ import annotations

import numpy as np

from . import numerics as nx
from .model import MiniLM, pool
from .quantize import IntegerModel

__all__ = ["embed_int32", "encoder_layer", "forward", "forward_batch", "embedding", "output_scale"]

#: What this module is called in refusals (Transformer.require_runnable).
STAGE = "the golden model"


def embed_int32(model: MiniLM, im: IntegerModel, ids: np.ndarray) -> np.ndarray:
    """Host side: float embedding sum quantised to int32 at the model's power-of-two scale."""
    e = model.embed(ids).astype(np.float64) / im.meta["emb.scale"]
    return nx.saturate(np.round(e), nx.INT32)


def _layernorm(im: IntegerModel, name: str, x: np.ndarray) -> np.ndarray:
    return nx.layernorm(x, im.tensors[f"{name}.gamma"], im.tensors[f"{name}.beta"],
                        im.scalar(f"{name}.shift"), nx.INT16)


def _select(d: nx.Dyadic, index) -> nx.Dyadic:
    return nx.Dyadic(d.multiplier[index], d.shift[index])


def encoder_layer(im: IntegerModel, i: int, h: np.ndarray, trace: dict | None = None,
                  sentences=None) -> np.ndarray:
    """One encoder layer: int16 hidden state (tokens x hidden) in, int16 hidden state out.
    ``trace`` collects the integer intermediates by name. ``sentences``: the token counts of
    a batch whose rows are stacked in ``h`` (attention stays within each sentence; every
    other operation is row-wise); one sentence by default."""
    T = im.tensors
    p = f"L{i}"
    arch = im.arch
    arch.require_runnable(STAGE)
    hidden, heads, dh = arch.hidden, arch.heads, arch.head_dim
    tokens = h.shape[0]
    # Attention block.
    x8, e = nx.requantize_rows(h, im.dyadic(f"{p}.qkv_in.rq"), nx.INT8)
    qkv = nx.requantize(nx.matmul(x8, T[f"{p}.qkv.weight"], bias=T[f"{p}.qkv.bias"], row_shift=e),
                        im.dyadic(f"{p}.qkv.rq"), nx.INT8)
    q, k, v = qkv[:, :hidden], qkv[:, hidden:2 * hidden], qkv[:, 2 * hidden:]
    ctx = np.empty((tokens, hidden), dtype=np.int64)
    ends = np.cumsum([tokens] if sentences is None else sentences)
    for r in (slice(end - n, end) for end, n in zip(ends, np.diff(ends, prepend=0))):
        for head in range(heads):
            cols = slice(head * dh, (head + 1) * dh)
            scores = nx.matmul(q[r, cols], k[r, cols].T)
            probs, x = nx.softmax(scores, _select(im.dyadic(f"{p}.softmax"), head))
            ctx[r, cols] = nx.requantize(nx.matmul(probs, v[r, cols], row_shift=x),
                                         _select(im.dyadic(f"{p}.ctx.rq"), cols), nx.INT8)
    attn = nx.requantize(nx.matmul(ctx, T[f"{p}.attn_out.weight"], bias=T[f"{p}.attn_out.bias"]),
                         im.dyadic(f"{p}.attn_out.rq"), nx.INT32)
    h1 = _layernorm(im, f"{p}.ln1", nx.residual_add(attn, h, im.scalar(f"{p}.attn_out.res_shift")))
    # Feed-forward block.
    x8, e = nx.requantize_rows(h1, im.dyadic(f"{p}.ffn_in.rq"), nx.INT8)
    inter = nx.requantize(nx.matmul(x8, T[f"{p}.ffn1.weight"], bias=T[f"{p}.ffn1.bias"], row_shift=e),
                          im.dyadic(f"{p}.ffn1.rq"), nx.INT16)
    g, e = nx.requantize_rows(nx.gelu(inter), im.dyadic(f"{p}.gelu.rq"), nx.UINT8)
    out = nx.requantize(nx.matmul(g, T[f"{p}.ffn2.weight"], bias=T[f"{p}.ffn2.bias"], row_shift=e),
                        im.dyadic(f"{p}.ffn2.rq"), nx.INT32)
    y = _layernorm(im, f"{p}.ln2", nx.residual_add(out, h1, im.scalar(f"{p}.ffn2.res_shift")))
    if trace is not None:
        trace.update({"qkv": qkv, "ctx": ctx, "attn": attn, "h1": h1, "inter": inter, "gelu": g,
                      "out": out, "y": y})
    return y


def forward(im: IntegerModel, e: np.ndarray, layers: int | None = None,
            sentences=None) -> np.ndarray:
    """int32 embedding sums (tokens x hidden) -> int16 hidden states of the last layer.
    ``sentences``: token counts of a batch whose rows are stacked in ``e``."""
    im.arch.require_runnable(STAGE)
    with nx.one_blas_thread():
        h = _layernorm(im, "emb.ln", e)
        for i in range(im.arch.layers if layers is None else layers):
            h = encoder_layer(im, i, h, sentences=sentences)
    return h


def forward_batch(im: IntegerModel, es, layers: int | None = None) -> list[np.ndarray]:
    """:func:`forward` of several sentences at once, their rows stacked (as the compiler
    batches them): the same integers as one sentence at a time."""
    sentences = [len(e) for e in es]
    h = forward(im, np.concatenate(es), layers, sentences)
    return np.split(h, np.cumsum(sentences)[:-1])


def embedding(model: MiniLM, im: IntegerModel, ids: np.ndarray) -> np.ndarray:
    """Sentence embedding computed by the golden model (pooling, and normalisation when the
    checkpoint's pipeline has it, on the host in float)."""
    h = forward(im, embed_int32(model, im, ids))
    o = model.arch.output
    return pool(h.astype(np.float64) * output_scale(im), o.pooling, o.normalize)


def output_scale(im: IntegerModel) -> float:
    """Real value of one unit of the final int16 hidden state."""
    return im.meta[f"L{im.arch.layers - 1}.ln2.scale"]
