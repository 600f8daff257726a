"""The model description: one declarative account of a Transformer's structure.

The float reference (:mod:`celosia.sw.model`), the quantiser (:mod:`celosia.sw.quantize`), the
golden integer model (:mod:`celosia.sw.golden`) and the compiler (:mod:`celosia.sw.compiler`)
all read their structure from a :class:`Transformer`: the embeddings, the block every layer
repeats (its norm, attention and MLP), the output (pooling or an LM head), the checkpoint's
tensor names and shapes, the parts of a layer in program order and the work of each.

A description may declare what Celosia cannot run yet (causal attention, rotary positions,
grouped-query attention, the gated-SiLU MLP, RMSNorm, pre-norm blocks, an LM head); every stage
refuses such a description with :class:`NotImplementedError` (:meth:`Transformer.require_runnable`)
instead of computing something else. The quantiser and golden model have a decoder path that
runs a Llama decoder (:data:`DECODER_RUNNABLE`, :meth:`Transformer.require_decoder`). docs/model.md says how a new family is described.

    >>> from celosia.sw.arch import bert_encoder
    >>> d = bert_encoder(hidden=384, heads=12, layers=6, ffn=1536, max_tokens=256)
    >>> d.head_dim, d.macs(16) // 10**6
    (32, 171)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["NORMS", "PLACEMENTS", "POSITIONS", "MLP_KINDS", "OUTPUTS", "POOLINGS", "NAMINGS",
           "Embeddings", "Attention", "MLP", "Block", "Output", "Transformer", "bert_encoder",
           "llama_decoder", "ENCODER_PARTS", "DECODER_RUNNABLE"]

#: Norm kinds: LayerNorm (mean, variance, gamma and beta) or RMSNorm (root mean square, gamma).
NORMS = ("layernorm", "rmsnorm")
#: Where a block's norms sit: after each residual add (BERT) or before each sublayer, with a
#: final norm after the last block (Llama).
PLACEMENTS = ("post", "pre")
#: Position information: a learned table added to the token embeddings (BERT) or rotary
#: embeddings applied to q and k (Llama). Rotary pairs channel c of a head with channel
#: c + head_dim/2 (the "rotate half" layout of Hugging Face Llama checkpoints; the GGUF loader
#: undoes llama.cpp's interleaved layout, sw/llm.py).
POSITIONS = ("learned", "rotary")
#: MLP kinds: ``gelu`` is down(GELU(up(x))); ``gated_silu`` is down(SiLU(gate(x)) * up(x)).
MLP_KINDS = ("gelu", "gated_silu")
#: Outputs: pooled hidden states (a sentence embedding) or an LM head (next-token logits).
OUTPUTS = ("pool", "lm_head")
#: Poolings of the ``pool`` output: the mean over tokens or the first ([CLS]) token.
POOLINGS = ("mean", "cls")

#: Checkpoint tensor names by naming scheme and role; ``{i}`` is the layer index. A role names
#: a tensor of the description (see :meth:`Transformer.tensors`).
NAMINGS = {
    "bert": {
        "embed.tokens": "embeddings.word_embeddings.weight",
        "embed.positions": "embeddings.position_embeddings.weight",
        "embed.types": "embeddings.token_type_embeddings.weight",
        "embed.norm": "embeddings.LayerNorm",
        "q": "encoder.layer.{i}.attention.self.query",
        "k": "encoder.layer.{i}.attention.self.key",
        "v": "encoder.layer.{i}.attention.self.value",
        "o": "encoder.layer.{i}.attention.output.dense",
        "up": "encoder.layer.{i}.intermediate.dense",
        "down": "encoder.layer.{i}.output.dense",
        "attn_norm": "encoder.layer.{i}.attention.output.LayerNorm",
        "mlp_norm": "encoder.layer.{i}.output.LayerNorm",
    },
    # llama.cpp's GGUF names of a Llama decoder ("final_norm" follows the last pre-norm block,
    # "lm_head" is absent when tied to the token table).
    "gguf": {
        "embed.tokens": "token_embd.weight",
        "q": "blk.{i}.attn_q",
        "k": "blk.{i}.attn_k",
        "v": "blk.{i}.attn_v",
        "o": "blk.{i}.attn_output",
        "gate": "blk.{i}.ffn_gate",
        "up": "blk.{i}.ffn_up",
        "down": "blk.{i}.ffn_down",
        "attn_norm": "blk.{i}.attn_norm",
        "mlp_norm": "blk.{i}.ffn_norm",
        "final_norm": "output_norm",
        "lm_head": "output",
    },
}

#: The parts of a post-norm encoder layer (LayerNorm, bidirectional multi-head attention with
#: learned positions, GELU MLP) in program order; "emb_ln", the embedding LayerNorm, opens
#: layer 0. The compiler marks each part's first instruction; the backends count cycles by part.
ENCODER_PARTS = ("emb_ln", "qkv_in", "qkv", "attention", "attn_out", "ln1", "ffn_in", "ffn1",
                 "gelu", "ffn2", "ln2")


def _check_choice(owner: str, field: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{field} must be one of {', '.join(map(repr, choices))}, "
                         f"not {value!r}")


def _check_positive(owner: str, field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}.{field} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{owner}.{field} must be at least 1, not {value}")


def _check_flag(owner: str, field: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}.{field} must be a bool, not {type(value).__name__}")


@dataclass(frozen=True)
class Embeddings:
    """The token embedding and what is added to it before the first block.

    Parameters
    ----------
    vocab:
        Rows of the token embedding table.
    token_types:
        Rows of the token-type table (BERT's segment embeddings; type 0 is added to every
        token); 0 for none.
    norm:
        Whether a norm (the block's kind) follows the embedding sum (BERT), with its own
        parameters.
    """
    vocab: int
    token_types: int = 0
    norm: bool = False

    def __post_init__(self):
        _check_positive("Embeddings", "vocab", self.vocab)
        if isinstance(self.token_types, bool) or not isinstance(self.token_types, int) \
                or self.token_types < 0:
            raise ValueError(f"Embeddings.token_types must be an int of 0 or more, not "
                             f"{self.token_types!r}")
        _check_flag("Embeddings", "norm", self.norm)


@dataclass(frozen=True)
class Attention:
    """Self-attention of a block.

    Parameters
    ----------
    heads:
        Query heads.
    kv_heads:
        Key/value heads; fewer than ``heads`` is grouped-query attention (each key/value head
        serves ``heads // kv_heads`` query heads).
    causal:
        Whether a token attends only to itself and earlier tokens (a decoder).
    positions:
        One of :data:`POSITIONS`.
    max_positions:
        Rows of the learned position table, or the longest sequence rotary positions are
        tabulated for.
    rope_theta:
        Base of the rotary frequencies (``rotary`` positions only).
    bias:
        Whether the q, k, v and output projections have biases.
    """
    heads: int
    kv_heads: int
    causal: bool = False
    positions: str = "learned"
    max_positions: int = 512
    rope_theta: float | None = None
    bias: bool = True

    def __post_init__(self):
        _check_positive("Attention", "heads", self.heads)
        _check_positive("Attention", "kv_heads", self.kv_heads)
        _check_positive("Attention", "max_positions", self.max_positions)
        if self.heads % self.kv_heads:
            raise ValueError(f"Attention.heads {self.heads} is not a multiple of kv_heads "
                             f"{self.kv_heads}")
        _check_flag("Attention", "causal", self.causal)
        _check_flag("Attention", "bias", self.bias)
        _check_choice("Attention", "positions", self.positions, POSITIONS)
        if (self.rope_theta is not None) != (self.positions == "rotary"):
            raise ValueError("Attention.rope_theta is given with rotary positions and only then")


@dataclass(frozen=True)
class MLP:
    """The feed-forward sublayer: ``kind`` (one of :data:`MLP_KINDS`), its inner width
    ``ffn`` and whether its projections have biases."""
    kind: str
    ffn: int
    bias: bool = True

    def __post_init__(self):
        _check_choice("MLP", "kind", self.kind, MLP_KINDS)
        _check_positive("MLP", "ffn", self.ffn)
        _check_flag("MLP", "bias", self.bias)


@dataclass(frozen=True)
class Block:
    """The block every layer repeats: attention then MLP, each with a residual add and a norm
    (``norm`` of :data:`NORMS`, placed as ``placement`` of :data:`PLACEMENTS`, epsilon ``eps``)."""
    attention: Attention
    mlp: MLP
    norm: str = "layernorm"
    placement: str = "post"
    eps: float = 1e-12

    def __post_init__(self):
        _check_choice("Block", "norm", self.norm, NORMS)
        _check_choice("Block", "placement", self.placement, PLACEMENTS)
        if not (isinstance(self.eps, (int, float)) and self.eps >= 0):
            raise ValueError(f"Block.eps must be a number of 0 or more, not {self.eps!r}")


@dataclass(frozen=True)
class Output:
    """What follows the last block: ``pool`` (``pooling`` of :data:`POOLINGS`, then L2
    normalisation if ``normalize``) or ``lm_head`` (logits over the vocabulary; ``tied``: the
    head is the token embedding table)."""
    kind: str = "pool"
    pooling: str = "mean"
    normalize: bool = False
    tied: bool = False

    def __post_init__(self):
        _check_choice("Output", "kind", self.kind, OUTPUTS)
        _check_choice("Output", "pooling", self.pooling, POOLINGS)
        _check_flag("Output", "normalize", self.normalize)
        _check_flag("Output", "tied", self.tied)


#: What every stage runs today, as (field path, value). A description that differs in any of
#: them is refused by :meth:`Transformer.require_runnable`.
RUNNABLE = (
    (("block", "norm"), "layernorm", "RMSNorm"),
    (("block", "placement"), "post", "pre-norm blocks"),
    (("block", "attention", "causal"), False, "causal attention"),
    (("block", "attention", "positions"), "learned", "rotary positions"),
    (("block", "attention", "bias"), True, "attention without biases"),
    (("block", "mlp", "kind"), "gelu", "the gated-SiLU MLP"),
    (("block", "mlp", "bias"), True, "an MLP without biases"),
    (("output", "kind"), "pool", "an LM head"),
    (("embeddings", "norm"), True, "embeddings without a norm"),
)


#: The decoder the quantiser's and golden model's decoder path run (sw/quantize.py,
#: ``quantize_decoder``; sw/golden.py, ``decoder_logits``), as RUNNABLE: a Llama decoder.
#: The compiler does not run it yet (``unsupported()`` still lists these features).
DECODER_RUNNABLE = (
    (("block", "norm"), "rmsnorm", "LayerNorm"),
    (("block", "placement"), "pre", "post-norm blocks"),
    (("block", "attention", "causal"), True, "bidirectional attention"),
    (("block", "attention", "positions"), "rotary", "learned positions"),
    (("block", "attention", "bias"), False, "attention with biases"),
    (("block", "mlp", "kind"), "gated_silu", "the GELU MLP"),
    (("block", "mlp", "bias"), False, "an MLP with biases"),
    (("output", "kind"), "lm_head", "pooling"),
    (("embeddings", "norm"), False, "an embedding norm"),
    (("embeddings", "token_types"), 0, "token types"),
)


@dataclass(frozen=True)
class Transformer:
    """A Transformer: ``layers`` identical blocks of width ``hidden`` between the embeddings and
    the output, reading sequences of at most ``max_tokens`` tokens; ``naming`` (a key of
    :data:`NAMINGS`) names its checkpoint tensors.

    Members
    -------
    heads, kv_heads, head_dim, ffn: int
        The block's attention heads, key/value heads, head width and MLP width.
    parts: tuple[str, ...]
        The parts of a layer in program order (the first opens layer 0 only).
    """
    hidden: int
    layers: int
    max_tokens: int
    embeddings: Embeddings
    block: Block
    output: Output = Output()
    naming: str = "bert"

    def __post_init__(self):
        for name in ("hidden", "layers", "max_tokens"):
            _check_positive("Transformer", name, getattr(self, name))
        for name, cls in (("embeddings", Embeddings), ("block", Block), ("output", Output)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"Transformer.{name} must be a {cls.__name__}")
        _check_choice("Transformer", "naming", self.naming, tuple(NAMINGS))
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        a = self.block.attention
        if a.positions == "learned" and self.max_tokens > a.max_positions:
            raise ValueError(f"max_tokens {self.max_tokens} exceeds the {a.max_positions} "
                             "position embeddings")
        if a.positions == "rotary" and self.max_tokens > a.max_positions:
            raise ValueError(f"max_tokens {self.max_tokens} exceeds the {a.max_positions} "
                             "rotary positions")
        if a.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head width, not {self.head_dim}")

    # --- Shape --------------------------------------------------------------------------------
    @property
    def heads(self) -> int:
        return self.block.attention.heads

    @property
    def kv_heads(self) -> int:
        return self.block.attention.kv_heads

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def ffn(self) -> int:
        return self.block.mlp.ffn

    def reshaped(self, *, hidden: int | None = None, heads: int | None = None,
                 ffn: int | None = None, layers: int | None = None,
                 max_tokens: int | None = None) -> "Transformer":
        """The same structure at other sizes (multi-head attention keeps kv_heads = heads)."""
        a, b = self.block.attention, self.block
        if heads is not None:
            a = dataclasses.replace(a, heads=heads,
                                    kv_heads=heads if a.kv_heads == a.heads else a.kv_heads)
        mlp = b.mlp if ffn is None else dataclasses.replace(b.mlp, ffn=ffn)
        return dataclasses.replace(
            self, hidden=self.hidden if hidden is None else hidden,
            layers=self.layers if layers is None else layers,
            max_tokens=self.max_tokens if max_tokens is None else max_tokens,
            block=dataclasses.replace(b, attention=a, mlp=mlp))

    # --- What runs ----------------------------------------------------------------------------
    def unsupported(self) -> list[str]:
        """The declared features Celosia cannot run yet (empty if it runs all of them)."""
        missing = []
        for path, value, feature in RUNNABLE:
            got = self
            for name in path:
                got = getattr(got, name)
            if got != value:
                missing.append(feature)
        if self.kv_heads != self.heads:
            missing.append("grouped-query attention")
        return missing

    def decoder_unsupported(self) -> list[str]:
        """What the decoder path of the quantiser and golden model cannot run (empty for a
        Llama decoder: :data:`DECODER_RUNNABLE`)."""
        missing = []
        for path, value, feature in DECODER_RUNNABLE:
            got = self
            for name in path:
                got = getattr(got, name)
            if got != value:
                missing.append(feature)
        return missing

    def require_decoder(self, stage: str) -> None:
        """Raise NotImplementedError naming ``stage`` unless the decoder path runs this
        description."""
        missing = self.decoder_unsupported()
        if missing:
            raise NotImplementedError(f"{stage} does not implement {', '.join(missing)} in a "
                                      "decoder (docs/model.md)")

    def require_runnable(self, stage: str) -> None:
        """Raise NotImplementedError naming ``stage`` and what it cannot run yet."""
        missing = self.unsupported()
        if missing:
            raise NotImplementedError(f"{stage} does not implement {', '.join(missing)} yet "
                                      "(docs/model.md)")

    # --- Tensors ------------------------------------------------------------------------------
    def tensors(self) -> dict[tuple[str, int | None], tuple[int, ...]]:
        """Every float tensor by ``(role, layer)`` (layer None outside the blocks), with its
        shape (projections as (out, in), as checkpoints store them), in checkpoint order. A
        role is a :data:`NAMINGS` role plus ``.weight`` or ``.bias``."""
        d, e, a, m = self.hidden, self.embeddings, self.block.attention, self.block.mlp
        kv = self.kv_heads * self.head_dim
        out: dict[tuple[str, int | None], tuple[int, ...]] = {("embed.tokens", None): (e.vocab, d)}
        if a.positions == "learned":
            out[("embed.positions", None)] = (a.max_positions, d)
        if e.token_types:
            out[("embed.types", None)] = (e.token_types, d)
        norm = ("weight", "bias") if self.block.norm == "layernorm" else ("weight",)
        if e.norm:
            out.update({(f"embed.norm.{p}", None): (d,) for p in norm})
        linear = [("q", d, d, a.bias), ("k", kv, d, a.bias), ("v", kv, d, a.bias),
                  ("o", d, d, a.bias)]
        if m.kind == "gated_silu":
            linear.append(("gate", m.ffn, d, m.bias))
        linear += [("up", m.ffn, d, m.bias), ("down", d, m.ffn, m.bias)]
        for i in range(self.layers):
            for role, n_out, n_in, bias in linear:
                out[(f"{role}.weight", i)] = (n_out, n_in)
                if bias:
                    out[(f"{role}.bias", i)] = (n_out,)
            for role in ("attn_norm", "mlp_norm"):
                out.update({(f"{role}.{p}", i): (d,) for p in norm})
        if self.block.placement == "pre":
            out.update({(f"final_norm.{p}", None): (d,) for p in norm})
        if self.output.kind == "lm_head" and not self.output.tied:
            out[("lm_head.weight", None)] = (e.vocab, d)
        return out

    def tensor_name(self, role: str, layer: int | None = None) -> str:
        """The checkpoint's name of a tensor, e.g. ``("q.weight", 0)`` ->
        ``encoder.layer.0.attention.self.query.weight`` in the ``bert`` naming."""
        stem, _, suffix = role.rpartition(".")
        table = NAMINGS[self.naming]
        if stem not in table and role in table:
            stem, suffix = role, ""
        try:
            name = table[stem]
        except KeyError:
            raise KeyError(f"the {self.naming} naming has no tensor {role!r}") from None
        if ("{i}" in name) != (layer is not None):
            raise ValueError(f"{role!r} is {'a' if '{i}' in name else 'no'} per-layer tensor")
        return name.format(i=layer) + (f".{suffix}" if suffix else "")

    # --- Work ---------------------------------------------------------------------------------
    @property
    def parts(self) -> tuple[str, ...]:
        self.require_runnable("the layer's parts")
        return ENCODER_PARTS

    def part_work(self, tokens, part: str) -> tuple[int, int]:
        """(multiply-accumulates, vector elements) of one part of one layer: the matmul work
        and the elements the vector unit reads (one pass over its input). ``tokens``: a
        sequence's token count, or the token counts of a batch (whose work is the sum of its
        sequences')."""
        if part not in self.parts:
            raise ValueError(f"no part {part!r}; the parts are {', '.join(self.parts)}")
        if not isinstance(tokens, (int, np.integer)):
            work = [self.part_work(int(t), part) for t in tokens]
            return sum(w[0] for w in work), sum(w[1] for w in work)
        T, H, F, heads = int(tokens), self.hidden, self.ffn, self.heads
        return {
            "emb_ln": (0, T * H),
            "qkv_in": (0, T * H),
            "qkv": (T * H * 3 * H, 0),
            "attention": (2 * heads * T * T * self.head_dim, heads * T * T),
            "attn_out": (T * H * H, 0),
            "ln1": (0, T * H),
            "ffn_in": (0, T * H),
            "ffn1": (T * H * F, 0),
            "gelu": (0, T * F),
            "ffn2": (T * F * H, 0),
            "ln2": (0, T * H),
        }[part]

    def macs(self, tokens) -> int:
        """Multiply-accumulates of all the blocks for a sequence of ``tokens`` tokens (or a
        batch of sequences of these token counts)."""
        return self.layers * sum(self.part_work(tokens, p)[0] for p in self.parts)

    # --- Serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON-ready values (the integer model keeps its description this way)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Transformer":
        """The description :meth:`to_dict` wrote; ValueError on anything else."""
        try:
            a = Attention(**d["block"]["attention"])
            m = MLP(**d["block"]["mlp"])
            b = Block(a, m, **{k: v for k, v in d["block"].items() if k not in ("attention", "mlp")})
            return cls(embeddings=Embeddings(**d["embeddings"]), block=b,
                       output=Output(**d["output"]),
                       **{k: v for k, v in d.items() if k not in ("embeddings", "block", "output")})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a model description ({exc!r})") from None


def bert_encoder(*, hidden: int, heads: int, layers: int, ffn: int, max_tokens: int,
                 vocab: int = 30522, max_positions: int = 512, token_types: int = 2,
                 eps: float = 1e-12, pooling: str = "mean", normalize: bool = False) -> Transformer:
    """A BERT sentence encoder: learned positions and token types, an embedding LayerNorm,
    post-norm blocks of bidirectional multi-head attention and a GELU MLP (all with biases),
    then pooling."""
    return Transformer(
        hidden=hidden, layers=layers, max_tokens=max_tokens,
        embeddings=Embeddings(vocab=vocab, token_types=token_types, norm=True),
        block=Block(Attention(heads=heads, kv_heads=heads, max_positions=max_positions),
                    MLP("gelu", ffn), norm="layernorm", placement="post", eps=eps),
        output=Output("pool", pooling=pooling, normalize=normalize), naming="bert")


def llama_decoder(*, hidden: int, heads: int, kv_heads: int, layers: int, ffn: int, vocab: int,
                  max_positions: int, rope_theta: float, eps: float, tied: bool = True,
                  max_tokens: int | None = None, naming: str = "gguf") -> Transformer:
    """A Llama decoder: the token table alone (no norm after it), pre-norm RMSNorm blocks of
    causal grouped-query attention with rotary positions and a gated-SiLU MLP (no biases), a
    final RMSNorm, then an LM head (``tied``: the token table). SmolLM2-135M is
    ``llama_decoder(hidden=576, heads=9, kv_heads=3, layers=30, ffn=1536, vocab=49152,
    max_positions=8192, rope_theta=100000.0, eps=1e-5)``."""
    return Transformer(
        hidden=hidden, layers=layers,
        max_tokens=max_positions if max_tokens is None else max_tokens,
        embeddings=Embeddings(vocab=vocab, token_types=0, norm=False),
        block=Block(Attention(heads=heads, kv_heads=kv_heads, causal=True, positions="rotary",
                              max_positions=max_positions, rope_theta=float(rope_theta),
                              bias=False),
                    MLP("gated_silu", ffn, bias=False), norm="rmsnorm", placement="pre",
                    eps=float(eps)),
        output=Output("lm_head", tied=tied), naming=naming)
