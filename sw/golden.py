"""The golden model: the integer MiniLM forward pass, op by op, exactly as the hardware does it.

Everything between the embedding lookup (host) and the pooling (host) is composed from the
integer operations of :mod:`celosia.sw.numerics`; every backend must reproduce the int16 hidden
states this returns, bit for bit. Its shape and structure come from the integer model's
description (``IntegerModel.arch``, :mod:`celosia.sw.arch`); a description with features it
does not implement yet is refused.

The decoder (a Llama description, :func:`quantize_decoder`'s integer model) runs through
:func:`decoder_logits`: the int32 residual stream through pre-norm layers of RMSNorm, rotary,
causal grouped-query attention over an integer KV cache (:class:`DecoderCache`) and the gated
SiLU MLP, then the LM head's int32 logits; prefill and decode give the same rows bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import numerics as nx
from .model import MiniLM, pool
from .quantize import IntegerModel

__all__ = ["embed_int32", "encoder_layer", "forward", "forward_batch", "embedding", "output_scale",
           "DecoderCache", "decoder_embed", "decoder_attention", "decoder_mlp", "decoder_layer", "decoder_logits", "logit_scale",
           "decoder_generate"]

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
            probs, x = nx.softmax(scores, _select(im.dyadic(f"{p}.softmax"), head),
                                  dither=im.softmax_dither)
            ctx[r, cols] = nx.requantize(nx.matmul(probs, v[r, cols], row_shift=x),
                                         _select(im.dyadic(f"{p}.ctx.rq"), cols), nx.INT8)
    attn = nx.requantize(nx.matmul(ctx, T[f"{p}.attn_out.weight"], bias=T[f"{p}.attn_out.bias"]),
                         im.dyadic(f"{p}.attn_out.rq"), nx.INT32)
    h1 = _layernorm(im, f"{p}.ln1", nx.residual_add(attn, h, im.scalar(f"{p}.attn_out.res_shift")))
    # Feed-forward block.
    x8, e = nx.requantize_rows(h1, im.dyadic(f"{p}.ffn_in.rq"), nx.INT8)
    inter = nx.requantize(nx.matmul(x8, T[f"{p}.ffn1.weight"], bias=T[f"{p}.ffn1.bias"], row_shift=e),
                          im.dyadic(f"{p}.ffn1.rq"), nx.INT32)
    g, e = nx.gelu_rows(inter, im.dyadic(f"{p}.gelu.rq"), nx.UINT8)
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


# --- The decoder: prefill and token-by-token decode with an integer KV cache -------------------

@dataclass
class DecoderCache:
    """The integer keys (int8, after rotary) and values (int8) of the tokens seen so far, per
    layer: (kv_heads, tokens, head_dim) arrays."""
    keys: dict[int, np.ndarray] = field(default_factory=dict)
    values: dict[int, np.ndarray] = field(default_factory=dict)
    length: int = 0


def decoder_embed(im: IntegerModel, ids) -> np.ndarray:
    """The token rows of the int8 table, requantised per channel (undoing the LM head's
    smoothing of a tied table), then by each token's own factor to the int32 residual stream
    (tokens x hidden)."""
    ids = np.asarray(ids, dtype=np.int64)
    rows = nx.requantize(im.tensors["emb.tokens"][:, ids].T, im.dyadic("emb.unsmooth"), nx.INT32)
    rq = im.dyadic("emb.rq")
    return nx.requantize(rows, nx.Dyadic(rq.multiplier[ids][:, None], rq.shift[ids][:, None]),
                         nx.INT32)


def _rmsnorm(im: IntegerModel, name: str, x: np.ndarray) -> np.ndarray:
    return nx.rmsnorm(x, im.tensors[f"{name}.gamma"], im.scalar(f"{name}.shift"), nx.INT16,
                      eps=im.scalar("rms.eps"))


def _wide(im: IntegerModel, name: str) -> bool:
    """Whether the decoder's matmul operand ``name`` is int16 (numerics.matmul_wide)."""
    return name in im.meta.get("wide", ())


def _operand(im: IntegerModel, name: str, x: np.ndarray, p: str = "") -> tuple:
    """A matmul operand with per-row exponents: int8, or int16 when it is wide."""
    return nx.requantize_rows(x, im.dyadic(f"{p}{name}.rq"),
                              nx.INT16 if _wide(im, name) else nx.INT8)


def _product(im: IntegerModel, name: str, a: np.ndarray, b: np.ndarray, e=None) -> np.ndarray:
    """The matmul of operand ``name``: one int8 pass, or two (matmul_wide) when it is wide;
    either way at the int8 operand's scale."""
    return (nx.matmul_wide if _wide(im, name) else nx.matmul)(a, b, row_shift=e)


def decoder_attention(im: IntegerModel, i: int, x: np.ndarray, cache: DecoderCache | None = None,
                      trace: dict | None = None) -> np.ndarray:
    """Layer ``i``'s attention sublayer on the int32 residual stream (tokens x hidden) of
    tokens that follow the ``cache``'s (whose layer ``i`` keys and values they join): the
    output projection's int32 result, to be added to the stream shifted by
    ``attn_out.res_shift``."""
    T = im.tensors
    p = f"L{i}"
    a = im.arch
    heads, kv_heads, dh, hidden = a.heads, a.kv_heads, a.head_dim, a.hidden
    tokens, start = x.shape[0], 0 if cache is None else cache.length
    kv = kv_heads * dh
    h = _rmsnorm(im, f"{p}.attn_norm", x)
    xq, e = _operand(im, "qkv_in", h, f"{p}.")
    acc = _product(im, "qkv_in", xq, T[f"{p}.qkv.weight"], e)
    # q, k and v requantised per channel: int8, or int16 where q (or k) is wide.
    q_out = nx.INT16 if _wide(im, "q") else nx.INT8
    k_out = nx.INT16 if _wide(im, "k") else nx.INT8
    rq = im.dyadic(f"{p}.qkv.rq")
    qkv = np.concatenate([nx.requantize(acc[:, cols], _select(rq, cols), out) for cols, out in
                          ((slice(0, hidden), q_out), (slice(hidden, hidden + kv), k_out),
                           (slice(hidden + kv, None), nx.INT8))], axis=1)
    q = qkv[:, :hidden].reshape(tokens, heads, dh).transpose(1, 0, 2)
    k = qkv[:, hidden:hidden + kv].reshape(tokens, kv_heads, dh).transpose(1, 0, 2)
    v = qkv[:, hidden + kv:].reshape(tokens, kv_heads, dh).transpose(1, 0, 2)
    tables = nx.rope_tables(a.block.attention.rope_theta, dh, a.max_tokens)
    positions = start + np.arange(tokens)
    q, k = nx.rotary(q, positions, tables, q_out), nx.rotary(k, positions, tables, k_out)
    if cache is not None:
        if i in cache.keys:
            k = np.concatenate([cache.keys[i], k], axis=1)
            v = np.concatenate([cache.values[i], v], axis=1)
        cache.keys[i], cache.values[i] = k, v
    ctx = nx.attention(q, k, v, im.dyadic(f"{p}.softmax"), im.dyadic(f"{p}.ctx.rq"),
                       causal_offset=start, out=nx.INT16 if _wide(im, "ctx") else nx.INT8,
                       wide_q=_wide(im, "q"),
                       prob_max=nx.INT16.hi if _wide(im, "probs") else nx.PROB_MAX,
                       wide_k=_wide(im, "k"))
    if trace is not None:
        trace.update({f"{i}.qkv_in": xq, f"{i}.qkv": qkv, f"{i}.ctx": ctx})
    return nx.requantize(_product(im, "ctx", ctx, T[f"{p}.attn_out.weight"]),
                         im.dyadic(f"{p}.attn_out.rq"), nx.INT32)


def decoder_mlp(im: IntegerModel, i: int, x: np.ndarray, trace: dict | None = None) -> np.ndarray:
    """Layer ``i``'s gated MLP on the int32 residual stream: the down projection's int32
    result, to be added to the stream shifted by ``down.res_shift``."""
    T = im.tensors
    p = f"L{i}"
    h = _rmsnorm(im, f"{p}.mlp_norm", x)
    xq, e = _operand(im, "mlp_in", h, f"{p}.")
    gu = _product(im, "mlp_in", xq, T[f"{p}.gate_up.weight"], e)
    ffn = im.arch.ffn
    gate = nx.requantize(gu[:, :ffn], im.dyadic(f"{p}.gate.rq"), nx.INT16)
    up = nx.requantize(gu[:, ffn:], im.dyadic(f"{p}.up.rq"),
                       nx.INT16 if _wide(im, "up") else nx.INT8)
    inner, e = nx.gated_silu(gate, up, im.dyadic(f"{p}.inner.rq"),
                             nx.INT16 if _wide(im, "inner") else nx.INT8, _wide(im, "up"))
    if trace is not None:
        trace.update({f"{i}.mlp_in": xq, f"{i}.gate": gate, f"{i}.up": up, f"{i}.inner": inner})
    return nx.requantize(_product(im, "inner", inner, T[f"{p}.down.weight"], e),
                         im.dyadic(f"{p}.down.rq"), nx.INT32)


def decoder_layer(im: IntegerModel, i: int, x: np.ndarray, cache: DecoderCache | None = None,
                  trace: dict | None = None) -> np.ndarray:
    """One pre-norm decoder layer on the int32 residual stream (tokens x hidden)."""
    p = f"L{i}"
    h = nx.residual_add(x, decoder_attention(im, i, x, cache, trace),
                        im.scalar(f"{p}.attn_out.res_shift"))
    y = nx.residual_add(h, decoder_mlp(im, i, h, trace), im.scalar(f"{p}.down.res_shift"))
    if trace is not None:
        trace.update({f"{i}.h": h, f"{i}.y": y})
    return y


def decoder_logits(im: IntegerModel, ids, cache: DecoderCache | None = None,
                   trace: dict | None = None) -> np.ndarray:
    """int32 next-token logits (tokens x vocab) at :func:`logit_scale`: the prefill of
    ``ids``, or with a ``cache`` their continuation of the cached tokens (one token a step is
    decode), which they join. The rows are those of one prefill of all the tokens, bit for bit."""
    a = im.arch
    a.require_decoder(STAGE)
    ids = np.asarray(ids, dtype=np.int64)
    start = 0 if cache is None else cache.length
    if start + len(ids) > a.max_tokens:
        raise ValueError(f"{start + len(ids)} tokens exceed the model's {a.max_tokens}")
    with nx.one_blas_thread():
        x = decoder_embed(im, ids)
        for i in range(a.layers):
            x = decoder_layer(im, i, x, cache, trace)
        h = _rmsnorm(im, "final_norm", x)
        xq, e = _operand(im, "head_in", h)
        if trace is not None:
            trace.update({"final": h, "head_in": xq})
        head = im.tensors["emb.tokens" if a.output.tied else "lm_head.weight"]
        logits = nx.requantize(_product(im, "head_in", xq, head, e), im.dyadic("lm_head.rq"),
                               nx.INT32)
    if cache is not None:
        cache.length += len(ids)
    return logits


def logit_scale(im: IntegerModel) -> float:
    """Real value of one unit of the integer logits."""
    return 2.0 ** -im.meta["logit_frac"]


def decoder_generate(im: IntegerModel, ids, tokens: int, stop: int | None = None) -> list[int]:
    """Greedy continuation of ``ids`` by up to ``tokens`` tokens (stopping after ``stop``):
    the prompt's prefill, then one decode step a token through the integer KV cache."""
    cache = DecoderCache()
    out: list[int] = []
    step = np.asarray(ids, dtype=np.int64)
    for _ in range(tokens):
        nxt = int(np.argmax(decoder_logits(im, step, cache)[-1]))
        out.append(nxt)
        if nxt == stop:
            break
        step = np.array([nxt])
    return out
