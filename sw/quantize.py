"""The quantiser: a float BERT encoder (all-MiniLM-L6-v2 by default) -> the integer model the
accelerator runs, its structure read from the model's description (:mod:`celosia.sw.arch`).

Recipe (measured choices, see docs/numerics.md):

* Weights: symmetric int8 per output channel, stored K x N (the array's B operand).
* Matmul inputs made from the hidden state (Q/K/V and FFN1) and from the GELU output (FFN2):
  SmoothQuant migrates per-channel outliers into the weight rows (the per-channel factor is
  applied by the per-channel requantisation that makes the operand), then a static per-tensor
  scale from the calibration set (sw/data/calibration.txt) with headroom, then a per-row
  power-of-two exponent (numerics.requantize_rows) so that tokens far below the calibrated
  maximum (everything but [CLS]-like outlier rows) still use the whole int8/uint8 range. The
  matmul shifts each row back before the bias.
* q and k: per-channel balance (q_c * g_c, k_c / g_c), one scale per head; v: a scale per
  channel; the attention context: smoothed against the output projection.
* The hidden state (every LayerNorm output, the residual stream) is int16; residual sums and
  LayerNorm inputs are int32 on a scale 2**k finer than the hidden state.
* GELU output is offset by 0.17 (GELU >= -0.17) so it is a plain uint8; FFN2's bias takes the
  offset back.
* Softmax probabilities are uint8 with scale 1/255.

Deterministic: the same model and calibration text give the same integer model, byte for byte.

A Llama decoder (SmolLM2) has its own recipe, :func:`quantize_decoder` (docs/numerics.md, "The
integer decoder"): the same weight formats, int16 matmul operands (two int8 passes,
numerics.matmul_wide), an int32 residual stream at one scale, q/k on their rotary pair
lengths, the tied token table as the int8 LM head.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from . import numerics as nx
from .arch import Transformer
from .errors import CelosiaError, FileFormatError
from .files import check_tensors, safetensors_header
from .model import MiniLM

__all__ = ["FORMAT_VERSION", "QuantConfig", "IntegerModel", "quantize", "calibration_texts",
           "QuantizedModelError", "CorruptModelError", "default_model_file", "rebuild_command",
           "check_writable", "checkpoint_model_file", "integer_model_shapes", "LOGIT_FRAC",
           "DecoderQuantConfig", "chat_calibration", "quantize_decoder"]

#: 2: the metadata holds the model description (``arch``) instead of loose shape keys.
#: 3: FFN1's output is int32 (GELU past its table is the input itself) and GELU's offset a
#: whole number of input steps, so a file of version 2 has the old FFN2 bias.
#: 4: the metadata says whether the softmax rounds with ordered dither (``softmax_dither``).
#: 5: the softmax rounds with ordered dither by default.
FORMAT_VERSION = 5
CALIBRATION_FILE = Path(__file__).parent / "data" / "calibration.txt"

#: Headroom over the calibrated maximum for int16 hidden states and int32 LayerNorm inputs:
#: unseen inputs may reach further than the calibration set; int16 has bits to spare.
HIDDEN_HEADROOM = 2.0
#: LayerNorm inputs are int24 (numerics.LN_IN_BITS); keep the calibrated max this far below 2**23.
LN_IN_HEADROOM = 4.0
#: Headroom over the calibrated maximum for int8/uint8 operands quantised with per-row
#: exponents: rows that reach further than the calibration set are not clipped, and rows
#: below the maximum lose nothing (their exponent scales them up).
ACT_HEADROOM = 2.0


#: Key of the file's SHA-256 digest (IntegerModel.digest, over the tensors and the rest of the
#: metadata) in the metadata JSON, checked on every load. It lives inside the one metadata
#: entry: safetensors writes several entries in no fixed order, and the file must be
#: byte-for-byte deterministic.
DIGEST_KEY = "sha256"


class QuantizedModelError(CelosiaError):
    """The integer model file is missing, of another format version, or corrupt: ``problem``
    says which, the message adds the command that rebuilds it."""

    def __init__(self, problem: str, path: Path, action: str = "rebuild it",
                 command: str | None = None):
        self.problem = problem
        super().__init__(f"{problem}; {action}: {command or rebuild_command(path)}")


class CorruptModelError(QuantizedModelError):
    """The integer model file is damaged (unreadable, truncated, or its digest differs): never
    rebuilt behind the user's back, since the damage may be a sign of a failing disk."""


def default_model_file() -> Path:
    """Where the integer model is kept: $CELOSIA_CACHE or ~/.cache/celosia."""
    base = os.environ.get("CELOSIA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "celosia")
    return Path(base) / "minilm-int8.safetensors"


def checkpoint_model_file(folder: Path, digest: str) -> Path:
    """Where the integer model of a sentence-transformers checkpoint is kept: beside the
    default one, under the checkpoint's folder name and digest (another checkpoint, or the
    same folder with other weights, gets another file)."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(folder).resolve().name)
    return default_model_file().parent / f"{name}-{digest[:16]}-int8.safetensors"


def rebuild_command(path: Path) -> str:
    """The command that rebuilds the integer model file ``path``."""
    if Path(path) == default_model_file():
        return "celosia quantize --force"
    return f"celosia quantize --force -o {path}"


def check_writable(path: Path) -> None:
    """Raise CelosiaError unless the folder of ``path`` exists (or can be made) and takes
    a new file: checked before any work whose result would be written there."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CelosiaError(f"cannot write the integer model to {folder}: {exc.strerror or exc} "
                           "(set $CELOSIA_CACHE, or --model-file, to a writable place)") from None


@dataclass(frozen=True)
class QuantConfig:
    """Knobs of the recipe; the defaults were chosen on the calibration set (docs/numerics.md)."""
    #: SmoothQuant migration strength for the LayerNorm outputs entering Q/K/V and FFN1.
    smooth_alpha: float = 0.7
    #: ... for the GELU output entering FFN2.
    gelu_alpha: float = 0.5
    #: ... for the attention context entering the output projection.
    ctx_alpha: float = 0.5
    #: Exponent of the per-channel q/k balance sqrt(max|k| / max|q|) (0 = off).
    qk_balance: float = 1.0
    #: Headroom of the static q, k, v and context scales over their calibrated maxima.
    attn_headroom: float = 1.0
    #: Round the softmax's uint8 probabilities with ordered dither (numerics.softmax): a long
    #: row with one dominant key keeps its tail's mass ("hello " x 200: cosine 0.972 ->
    #: 0.997). Every build of the RTL runs it (SOFTMAX_DITHER, isa.RTL_ALWAYS_OPS); off gives
    #: the plain round-to-nearest softmax (SOFTMAX).
    softmax_dither: bool = True


def calibration_texts(path: Path = CALIBRATION_FILE) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@dataclass
class IntegerModel:
    """Integer tensors (keyed ``L{i}.{name}`` and ``emb.{name}``) plus float metadata; the
    metadata's ``arch`` is the model description (:meth:`Transformer.to_dict`)."""
    tensors: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    @cached_property
    def arch(self) -> Transformer:
        """The description of the model these tensors quantise."""
        if "arch" not in self.meta:
            raise ValueError("the integer model's metadata has no model description ('arch')")
        return Transformer.from_dict(self.meta["arch"])

    @property
    def softmax_dither(self) -> bool:
        """Whether the softmax rounds its probabilities with ordered dither
        (numerics.softmax's ``dither``; the vector op SOFTMAX_DITHER, a decoder op of the RTL)."""
        return bool(self.meta.get("softmax_dither", False))

    def scalar(self, name: str) -> int:
        """A one-element integer tensor (a shift) as a Python int."""
        return int(np.asarray(self.tensors[name]).reshape(()))

    def dyadic(self, name: str) -> nx.Dyadic:
        return nx.Dyadic(self.tensors[f"{name}.mult"], self.tensors[f"{name}.shift"])

    def set_dyadic(self, name: str, factor, min_shift: int = 0) -> None:
        d = nx.Dyadic.from_real(factor)
        if np.min(d.shift) < min_shift:
            raise ValueError(f"{name}: requantisation factor {np.max(factor):.3g} is too large "
                             f"for per-row exponents (shift below {min_shift})")
        self.tensors[f"{name}.mult"] = np.asarray(d.multiplier, dtype=np.int64)
        self.tensors[f"{name}.shift"] = np.asarray(d.shift, dtype=np.int64)

    def digest(self) -> str:
        h = hashlib.sha256()
        for k in sorted(self.tensors):
            h.update(k.encode())
            h.update(np.ascontiguousarray(self.tensors[k]).tobytes())
        h.update(json.dumps(self.meta, sort_keys=True).encode())
        return h.hexdigest()

    def save(self, path: Path) -> None:
        """Write the file atomically (a temporary file in the same folder, then a rename): a
        reader sees the old file or the new one, never a half-written one."""
        from safetensors.numpy import save_file
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            os.chmod(tmp, 0o644)        # mkstemp's 0600 would make a shared cache unreadable
            save_file({k: np.ascontiguousarray(v) for k, v in self.tensors.items()}, tmp,
                      metadata={"celosia": json.dumps({**self.meta, DIGEST_KEY: self.digest()},
                                                      sort_keys=True)})
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: Path) -> "IntegerModel":
        """Read and verify an integer model file: QuantizedModelError if it is missing or
        of another format version, CorruptModelError if it is damaged (its digest differs)."""
        from safetensors import safe_open
        path = Path(path)
        if not path.is_file():
            raise QuantizedModelError(f"integer model {path} does not exist", path, "build it")
        # The header alone first: a damaged or crafted file (a huge header, byte ranges past
        # its end, tensors of the wrong shape or dtype) is refused before its data is read.
        try:
            header, extra = safetensors_header(path, "integer model")
        except FileFormatError as exc:
            raise CorruptModelError(f"integer model {path} is corrupt ({exc.reason})",
                                    path) from None
        try:
            meta = json.loads(extra.get("celosia", "{}"))
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            raise CorruptModelError(f"integer model {path} is corrupt (its celosia metadata "
                                    "is not a JSON object)", path)
        if meta.get("format_version") != FORMAT_VERSION:
            raise QuantizedModelError(f"integer model {path} has format version "
                                      f"{meta.get('format_version')}, expected {FORMAT_VERSION}", path)
        digest = meta.pop(DIGEST_KEY, None)
        if digest is None:
            raise QuantizedModelError(f"integer model {path} was written without a digest "
                                      "(by an older celosia)", path)
        try:
            shapes = integer_model_shapes(meta, len(header))
        except FileFormatError as exc:
            raise CorruptModelError(f"integer model {path} is corrupt ({exc})", path) from None
        try:
            check_tensors(header, shapes, path, "integer model")
        except FileFormatError as exc:
            raise CorruptModelError(f"integer model {path} is corrupt ({exc.reason})",
                                    path) from None
        try:
            with safe_open(str(path), framework="numpy") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types on bad files
            detail = " ".join(str(exc).split())[:120]
            raise CorruptModelError(f"integer model {path} is corrupt ({detail})", path) from None
        model = cls(tensors, meta)
        if model.digest() != digest:
            raise CorruptModelError(f"integer model {path} is corrupt (its sha256 differs from "
                                    "the one written with it)", path)
        return model


def integer_model_shapes(meta: dict, tensors: int) -> dict:
    """The tensors of an integer model with ``meta`` (name -> (dtype, shape)), as
    :func:`quantize` writes them; FileFormatError if ``meta`` does not hold a model description
    whose tensors could be among ``tensors`` of them (a crafted layer count would make the
    schema itself huge)."""
    if not isinstance(meta.get("arch"), dict):
        raise FileFormatError("its metadata lacks the model description (arch)")
    try:
        arch = Transformer.from_dict(meta["arch"])
    except (ValueError, TypeError) as exc:
        raise FileFormatError(f"its model description is invalid ({exc})") from None
    h, f, heads, layers = arch.hidden, arch.block.mlp.ffn, arch.heads, arch.layers
    if layers > tensors:
        raise FileFormatError(f"it holds {tensors} tensors, too few for {layers} layers")
    if arch.output.kind == "lm_head":
        return _decoder_shapes(arch, meta)
    for key in ("emb.scale", f"L{layers - 1}.ln2.scale"):
        if not (isinstance(meta.get(key), float) and math.isfinite(meta[key]) and meta[key] > 0):
            raise FileFormatError(f"its metadata lacks {key} (a positive number)")
    i8, i64 = "I8", "I64"
    shapes = {}

    def ln(name):
        shapes.update({f"{name}.gamma": (i64, (h,)), f"{name}.beta": (i64, (h,)),
                       f"{name}.shift": (i64, "scalar")})

    def rq(name, n):
        shapes.update({f"{name}.rq.mult": (i64, (n,)), f"{name}.rq.shift": (i64, (n,))})

    ln("emb.ln")
    for i in range(layers):
        p = f"L{i}."
        for name, k, n in (("qkv", h, 3 * h), ("attn_out", h, h), ("ffn1", h, f),
                           ("ffn2", f, h)):
            shapes[f"{p}{name}.weight"] = (i8, (k, n))
            shapes[f"{p}{name}.bias"] = (i64, (n,))
            rq(p + name, n)
        for name in ("attn_out", "ffn2"):
            shapes[f"{p}{name}.res_shift"] = (i64, "scalar")
        for name, n in (("qkv_in", h), ("ctx", h), ("ffn_in", h), ("gelu", f)):
            rq(p + name, n)
        ln(p + "ln1")
        ln(p + "ln2")
        shapes[f"{p}softmax.mult"] = shapes[f"{p}softmax.shift"] = (i64, (heads,))
    return shapes


def _decoder_shapes(arch: Transformer, meta: dict) -> dict:
    """The tensors :func:`quantize_decoder` writes (name -> (dtype, shape))."""
    if not (isinstance(meta.get("residual.scale"), float) and math.isfinite(meta["residual.scale"])
            and meta["residual.scale"] > 0):
        raise FileFormatError("its metadata lacks residual.scale (a positive number)")
    if not isinstance(meta.get("logit_frac"), int):
        raise FileFormatError("its metadata lacks logit_frac (an integer)")
    h, f, v, kv = arch.hidden, arch.ffn, arch.embeddings.vocab, arch.kv_heads * arch.head_dim
    i8, i64 = "I8", "I64"
    shapes = {"rms.eps": (i64, "scalar"), "emb.tokens": (i8, (h, v))}

    def rq(name, n):
        shapes.update({f"{name}.mult": (i64, (n,)), f"{name}.shift": (i64, (n,))})

    def norm(name):
        shapes.update({f"{name}.gamma": (i64, (h,)), f"{name}.shift": (i64, "scalar")})

    rq("emb.rq", v)
    rq("emb.unsmooth", h)
    for i in range(arch.layers):
        p = f"L{i}."
        norm(p + "attn_norm")
        norm(p + "mlp_norm")
        for name, k, n in (("qkv", h, h + 2 * kv), ("attn_out", h, h), ("gate_up", h, 2 * f),
                           ("down", f, h)):
            shapes[f"{p}{name}.weight"] = (i8, (k, n))
        for name, n in (("qkv_in.rq", h), ("qkv.rq", h + 2 * kv), ("softmax", arch.heads),
                        ("ctx.rq", h), ("attn_out.rq", h), ("mlp_in.rq", h), ("gate.rq", f),
                        ("up.rq", f), ("inner.rq", f), ("down.rq", h)):
            rq(p + name, n)
        shapes[f"{p}attn_out.res_shift"] = shapes[f"{p}down.res_shift"] = (i64, "scalar")
    norm("final_norm")
    rq("head_in.rq", h)
    rq("lm_head.rq", v)
    if not arch.output.tied:
        shapes["lm_head.weight"] = (i8, (h, v))
    return shapes


def _absmax(arrays, axis=None):
    """Largest |value| over calibration activations: overall, or per channel with axis=-1."""
    stacked = np.concatenate([np.abs(a).reshape(-1, a.shape[-1]) for a in arrays], axis=0)
    return stacked.max(axis=0) if axis == -1 else float(stacked.max())


def _weight_int8(w_out_in: np.ndarray):
    """Per-output-channel symmetric int8 of a (out, in) weight: (int8 K x N, scales[N])."""
    scale = np.maximum(np.abs(w_out_in).max(axis=1), 1e-12) / 127.0
    q = np.clip(np.round(w_out_in / scale[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q.T), scale


def _bias_int32(bias: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip(np.round(bias / scale), nx.INT32.lo, nx.INT32.hi).astype(np.int64)


def _residual_shift(pre_ln_max: float, hidden_scale: float) -> int:
    """Largest k in 0..16 so the LayerNorm input (scale hidden_scale / 2**k) keeps its
    calibrated maximum LN_IN_HEADROOM times below the int24 limit."""
    limit = (1 << (nx.LN_IN_BITS - 1)) / LN_IN_HEADROOM
    k = math.floor(math.log2(limit / (pre_ln_max / hidden_scale)))
    return int(min(max(k, 0), 16))


def _ln_params(im: IntegerModel, name: str, gamma, beta, out_scale: float, out: nx.Range):
    """Integer gamma/beta for numerics.layernorm, producing ``out`` at ``out_scale``."""
    shift = 16
    g = np.round(gamma / out_scale * 2.0 ** (shift - nx.LN_NORM_FRAC)).astype(np.int64)
    b = np.round(beta / out_scale * 2.0 ** shift).astype(np.int64)
    while np.abs(g).max() >= (1 << nx.LN_GAMMA_BITS):
        shift -= 1
        g = np.round(gamma / out_scale * 2.0 ** (shift - nx.LN_NORM_FRAC)).astype(np.int64)
        b = np.round(beta / out_scale * 2.0 ** shift).astype(np.int64)
    im.tensors[f"{name}.gamma"] = g
    im.tensors[f"{name}.beta"] = b
    im.tensors[f"{name}.shift"] = np.asarray(shift, dtype=np.int64)
    im.meta[f"{name}.scale"] = float(out_scale)


def quantize(model: MiniLM, texts: list[str] | None = None,
             config: QuantConfig = QuantConfig()) -> IntegerModel:
    """Calibrate on ``texts`` (default: the repository's calibration set) and build the
    integer model."""
    texts = calibration_texts() if texts is None else texts
    c = model.arch
    c.require_runnable("the quantiser")
    trace: dict = {}
    embeds = []
    for text in texts:
        ids, _ = model.tokenizer.encode(text)
        embeds.append(model.embed(ids))
        model.forward(ids, trace)
    im = IntegerModel({}, {"format_version": FORMAT_VERSION, "arch": c.to_dict(),
                           "smooth_alpha": config.smooth_alpha, "gelu_alpha": config.gelu_alpha,
                           "ctx_alpha": config.ctx_alpha, "qk_balance": config.qk_balance,
                           "softmax_dither": bool(config.softmax_dither)})
    # Embedding sum -> int32 at a power-of-two scale (the host's quantisation), then LN0 -> int16.
    emb_max = _absmax(embeds)
    emb_shift = int(math.floor(math.log2((1 << (nx.LN_IN_BITS - 1)) / LN_IN_HEADROOM / emb_max)))
    im.meta["emb.scale"] = 2.0 ** -emb_shift
    h_scale = _absmax(trace["emb_ln"]) * HIDDEN_HEADROOM / nx.INT16.hi
    _ln_params(im, "emb.ln", model.weight("embed.norm.weight"), model.weight("embed.norm.bias"),
               h_scale, nx.INT16)

    for i in range(c.layers):
        L = lambda role: model.weight(role, i)  # noqa: E731
        t = {k.split(".", 1)[1]: v for k, v in trace.items() if k.startswith(f"{i}.")}
        p = f"L{i}"
        # --- Q/K/V: int16 hidden -> smoothed int8 -> one (384 x 1152) matmul -> int8 q|k|v.
        w_qkv = np.concatenate([L("q.weight"), L("k.weight"), L("v.weight")], axis=0)
        b_qkv = np.concatenate([L("q.bias"), L("k.bias"), L("v.bias")])
        x_scale, w_q, w_s = _smoothed_input(im, f"{p}.qkv_in", t["x"], w_qkv, h_scale, config)
        im.tensors[f"{p}.qkv.weight"] = w_q
        im.tensors[f"{p}.qkv.bias"] = _bias_int32(b_qkv, x_scale * w_s)
        # q and k: balanced channel by channel (q_c * g_c and k_c / g_c leave q.k unchanged),
        # then one scale per head each (the softmax takes a factor per head).
        # v: a scale per channel (ctx_c = P @ v_c, so the context's requantisation undoes it).
        # The context is smoothed against the output projection. All of it lives in the
        # per-channel requantisations; only the output projection's weights change.
        dh, heads = c.head_dim, c.heads
        q_max = np.maximum(_absmax(t["q"], axis=-1), 1e-5)
        k_max = np.maximum(_absmax(t["k"], axis=-1), 1e-5)
        v_max = np.maximum(_absmax(t["v"], axis=-1), 1e-5)
        g = np.sqrt(k_max / q_max) ** config.qk_balance
        s_q = np.repeat((q_max * g).reshape(heads, dh).max(axis=1) * config.attn_headroom / 127.0, dh)
        s_k = np.repeat((k_max / g).reshape(heads, dh).max(axis=1) * config.attn_headroom / 127.0, dh)
        s_v = v_max * config.attn_headroom / 127.0
        out_scale = np.concatenate([s_q / g, s_k * g, s_v])
        im.set_dyadic(f"{p}.qkv.rq", x_scale * w_s / out_scale)
        # --- softmax per head: t = (max - s) * s_q * s_k / sqrt(d) * log2(e), in Q8.
        im.set_dyadic(f"{p}.softmax", (s_q * s_k)[::dh] / math.sqrt(dh) * math.log2(math.e)
                      * (1 << nx.EXP_FRAC_BITS))
        # --- P (uint8, 1/255) @ V (int8) -> context int8, per-channel scale f_ctx * s_ctx.
        w_o_float = L("o.weight")
        f_ctx = _smooth_factor(_absmax(t["ctx"], axis=-1), np.abs(w_o_float).max(axis=0), config.ctx_alpha)
        s_ctx = float(_absmax([x / f_ctx for x in t["ctx"]])) * config.attn_headroom / 127.0
        im.set_dyadic(f"{p}.ctx.rq", s_v / nx.PROB_MAX / (f_ctx * s_ctx))
        w_o, w_os = _weight_int8(w_o_float * f_ctx[None, :])
        # --- output projection -> int32 residual sum -> LN1 -> int16 h1.
        im.tensors[f"{p}.attn_out.weight"] = w_o
        im.tensors[f"{p}.attn_out.bias"] = _bias_int32(L("o.bias"), s_ctx * w_os)
        pre_ln1 = [x + a for x, a in zip(t["x"], t["attn"])]
        k1 = _residual_shift(_absmax(pre_ln1), h_scale)
        im.tensors[f"{p}.attn_out.res_shift"] = np.asarray(k1, dtype=np.int64)
        im.set_dyadic(f"{p}.attn_out.rq", s_ctx * w_os / (h_scale / 2.0 ** k1))
        h1_scale = _absmax(t["h"]) * HIDDEN_HEADROOM / nx.INT16.hi
        _ln_params(im, f"{p}.ln1", L("attn_norm.weight"), L("attn_norm.bias"), h1_scale,
                   nx.INT16)
        # --- FFN1: int16 h1 -> smoothed int8 -> matmul -> int32 Q10 -> GELU -> uint8.
        x2_scale, w_1, w_1s = _smoothed_input(im, f"{p}.ffn_in", t["h"], L("up.weight"),
                                              h1_scale, config)
        im.tensors[f"{p}.ffn1.weight"] = w_1
        im.tensors[f"{p}.ffn1.bias"] = _bias_int32(L("up.bias"), x2_scale * w_1s)
        im.set_dyadic(f"{p}.ffn1.rq", x2_scale * w_1s * (1 << nx.GELU_IN_FRAC))
        # GELU output (offset by -GELU_MIN so it is >= 0): uint8 with per-row exponents on
        # a per-channel scale whose factor is folded into FFN2's weight rows (SmoothQuant over
        # the GELU output's outlier channels). The offset comes back through FFN2's bias.
        w2 = L("down.weight")
        g_range = np.maximum(_absmax(t["gelu"], axis=-1), 1e-3) - nx.GELU_MIN
        f = _smooth_factor(g_range, np.abs(w2).max(axis=0), config.gelu_alpha)
        s_g = float((g_range / f).max()) * ACT_HEADROOM / nx.UINT8.hi
        im.set_dyadic(f"{p}.gelu.rq", 2.0 ** -(nx.GELU_IN_FRAC + nx.GELU_PHI_BITS) / (f * s_g),
                      min_shift=nx.ROW_EXP_MAX)
        w_2, w_2s = _weight_int8(w2 * f[None, :])
        w2_used = (w_2.T.astype(np.float64) * w_2s[:, None]) / f[None, :]
        im.tensors[f"{p}.ffn2.weight"] = w_2
        im.tensors[f"{p}.ffn2.bias"] = _bias_int32(L("down.bias") + nx.GELU_MIN * w2_used.sum(axis=1),
                                                   s_g * w_2s)
        pre_ln2 = [h + o for h, o in zip(t["h"], t["out"])]
        k2 = _residual_shift(_absmax(pre_ln2), h1_scale)
        im.tensors[f"{p}.ffn2.res_shift"] = np.asarray(k2, dtype=np.int64)
        im.set_dyadic(f"{p}.ffn2.rq", s_g * w_2s / (h1_scale / 2.0 ** k2))
        h_scale = _absmax(t["y"]) * HIDDEN_HEADROOM / nx.INT16.hi
        _ln_params(im, f"{p}.ln2", L("mlp_norm.weight"), L("mlp_norm.bias"), h_scale, nx.INT16)
    return im


def _wide_gain(wide: bool) -> float:
    """An int16 operand of numerics.matmul_wide is its int8 counterpart with 8 more
    fractional bits: its requantisation factor is 2**8 times the int8 one's."""
    return 2.0 ** nx.WIDE_LO_BITS if wide else 1.0


def _smooth_factor(act_max, w_max, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel factor ``max|X_c|**alpha / max|W_c|**(1-alpha)``."""
    return np.maximum(act_max, 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)


def _smoothed_input(im: IntegerModel, name: str, acts, w_out_in: np.ndarray, h_scale: float,
                    config: QuantConfig, wide: bool = False):
    """SmoothQuant for a matmul whose input is an int16 hidden state.

    Per input channel c: ``f_c = max|X_c|**a / max|W_:c|**(1-a)``. The int8 input is
    ``X_c / f_c`` at one per-tensor scale and a per-row exponent (a per-channel
    requantisation of the int16 state, numerics.requantize_rows);
    the weight rows are multiplied by ``f_c`` before per-output-channel int8 quantisation.
    A ``wide`` input is int16 at ``2**-g`` times the int8 scale (numerics.matmul_wide), g
    the largest in 0..8 that keeps the requantisation factor within per-row exponents' reach
    (an int16 state has only so many bits to give); the product's scale is then ``2**(8-g)``
    times the int8 product's.
    Returns (scale of the product's input, int8 weight K x N, weight scales).
    """
    f = _smooth_factor(_absmax(acts, axis=-1), np.abs(w_out_in).max(axis=0), config.smooth_alpha)
    smoothed = [x / f for x in acts]
    x_scale = _absmax(smoothed) * getattr(config, "act_headroom", ACT_HEADROOM) / 127.0
    factor = h_scale / (f * x_scale)
    g = 0
    if wide:
        reach = 2.0 ** (nx.MULT_BITS - 1 - nx.ROW_EXP_MAX)     # a shift of at least 8
        g = int(np.clip(math.floor(math.log2(reach / float(np.max(factor)))), 0,
                        nx.WIDE_LO_BITS))
    im.set_dyadic(f"{name}.rq", factor * 2.0 ** g, min_shift=nx.ROW_EXP_MAX)
    w_q, w_s = _weight_int8(w_out_in * f[None, :])
    return x_scale * (2.0 ** (nx.WIDE_LO_BITS - g) if wide else 1.0), w_q, w_s


# --- The decoder (a Llama description: sw/arch.py, DECODER_RUNNABLE) ---------------------------

#: Conversations the decoder is calibrated on (a user turn, a tab, the answer; ``\n`` is a
#: newline), rendered through the model's chat template.
DECODER_CALIBRATION_FILE = Path(__file__).parent / "data" / "chat_calibration.tsv"
#: Headroom of the int32 residual stream over its calibrated maximum. The stream is one int32
#: scale through every layer (RMSNorm does not see its input's scale, numerics.rmsnorm), so a
#: residual add is a plain int32 add; at 2x, SmolLM2's largest value (24926, the first token's
#: "attention sink" channel) sits at 2**30 and a row of rms 0.085 (layer 0) still has 12 bits.
RESIDUAL_HEADROOM = 2.0
#: Fractional bits of the integer logits (int32): SmolLM2's logits reach 41, 2.7M units.
LOGIT_FRAC = 16
#: The embedding lookup's per-channel requantisation (undoing the LM head's smoothing of a
#: tied table) gains this many bits over the smallest factor: int8 x 2**13 fits int21.
EMB_UNSMOOTH_BITS = 13


@dataclass(frozen=True)
class DecoderQuantConfig:
    """Knobs of the decoder's recipe, chosen on development prompts (docs/numerics.md, "The
    integer decoder")."""
    #: SmoothQuant strength for the RMSNorm outputs entering q/k/v and gate/up.
    smooth_alpha: float = 0.7
    #: ... for the gated product entering the down projection.
    inner_alpha: float = 0.5
    #: ... for the attention context entering the output projection.
    ctx_alpha: float = 0.5
    #: ... for the final RMSNorm's output entering the LM head (0 = off).
    head_alpha: float = 0.5
    #: Headroom over the calibrated maximum of the operands with per-row exponents (the
    #: matmul inputs and the gated product).
    act_headroom: float = 4.0
    #: Exponent of the q/k balance per rotary pair (0 = off).
    qk_balance: float = 1.0
    #: Headroom of the static q and k scales over their calibrated maxima.
    qk_headroom: float = 1.0
    #: ... of the v and context scales, and of up's.
    attn_headroom: float = 1.0
    up_headroom: float = 2.0
    #: The operands that are int16 (numerics.matmul_wide: two int8 passes; the int8 scale
    #: divided by 2**8) instead of int8: "qkv_in", "mlp_in" (the RMSNorm outputs into q|k|v
    #: and gate|up), "q" (against the int8 keys), "probs" (15-bit probabilities through v),
    #: "ctx" (into o), "up" (into the gated product), "inner" (the gated product into down),
    #: "head_in" (into the LM head); "k" (int16 keys, the scores as k @ q.T) is not used.
    wide: tuple = ("qkv_in", "mlp_in", "q", "probs", "ctx", "up", "inner", "head_in")


def chat_calibration(path: Path = DECODER_CALIBRATION_FILE) -> list[list[dict]]:
    """The calibration conversations: ``[{"role": "user", ...}, {"role": "assistant", ...}]``."""
    convs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        user, answer = (part.replace("\\n", "\n") for part in line.split("\t"))
        convs.append([{"role": "user", "content": user}, {"role": "assistant", "content": answer}])
    return convs


def _rms_params(im: IntegerModel, name: str, gamma, out_scale: float) -> None:
    """Integer gamma and shift for numerics.rmsnorm, producing int16 at ``out_scale``."""
    shift = 24
    while True:
        g = np.round(np.asarray(gamma, np.float64) / out_scale
                     * 2.0 ** (shift - nx.RMS_NORM_FRAC)).astype(np.int64)
        if np.abs(g).max() < (1 << nx.LN_GAMMA_BITS):
            break
        shift -= 1
    im.tensors[f"{name}.gamma"] = g
    im.tensors[f"{name}.shift"] = np.asarray(shift, dtype=np.int64)
    im.meta[f"{name}.scale"] = float(out_scale)


def _to_residual(im: IntegerModel, name: str, acc_scale: np.ndarray, s_res: float) -> None:
    """Requantisation of a projection that joins the residual stream: to int32 at the
    stream's scale times ``2**k``, added as ``residual_add(stream, result, k)``, with the
    smallest k in 0..16 that keeps the factor within a multiplier (k > 0 where one unit of the
    accumulator is worth more than 2**14 units of the stream: SmolLM2's down projections of
    layers 11, which writes the first token's 24926, and 28, both with k = 4)."""
    limit = 2.0 ** (nx.MULT_BITS - 1)
    k = max(0, math.ceil(math.log2(float(np.max(acc_scale)) / s_res / limit * 1.001)))
    if k > 16:
        raise ValueError(f"{name}: accumulator scale {np.max(acc_scale):.3g} is beyond the "
                         "residual stream's reach")
    im.set_dyadic(f"{name}.rq", acc_scale / (s_res * 2.0 ** k))
    im.tensors[f"{name}.res_shift"] = np.asarray(k, dtype=np.int64)


def _pair_length(x: np.ndarray) -> np.ndarray:
    """|(x_c, x_{c+d/2})| of rotary pairs: (..., head_dim) -> (..., head_dim/2)."""
    half = x.shape[-1] // 2
    return np.hypot(x[..., :half], x[..., half:])


def quantize_decoder(lm, tokenizer, conversations: list[list[dict]] | None = None,
                     config: DecoderQuantConfig = DecoderQuantConfig()) -> IntegerModel:
    """The integer model of a decoder (``lm``: a :class:`celosia.sw.llm.FloatTransformer`),
    calibrated on ``conversations`` (default :data:`DECODER_CALIBRATION_FILE`) through
    ``tokenizer``'s chat template. Every shape and role comes from ``lm.arch``.

    Per layer: RMSNorm to int16; SmoothQuant per channel into an int8 operand with per-row
    exponents (as MiniLM's Q/K/V input) for q/k/v and gate/up; q and k int8 on the largest
    rotary pair length per head (after a balance per pair), v per channel; the context
    smoothed against the output projection; the gate int16 Q8, up int8 per channel, the gated
    product smoothed against the down projection; output and down projections requantised to
    the int32 residual stream. The token table, int8 per row, is the LM head (tied) and the
    embedding lookup; logits are int32 at 2**-LOGIT_FRAC. Each operand named in
    ``config.wide`` is int16 instead of int8 (the same scale divided by 2**8, or by less where
    an int16 RMSNorm output has fewer bits to give), the probabilities 15 bits.
    """
    a = lm.arch
    a.require_decoder("the quantiser")
    convs = chat_calibration() if conversations is None else conversations
    trace: dict = {}
    finals = []
    for conv in convs:
        ids = tokenizer.encode(tokenizer.chat(conv, add_generation_prompt=False))
        finals.append(lm.hidden(ids, trace=trace))
    t = lambda i, name: trace[f"{i}.{name}"]  # noqa: E731
    heads, kv_heads, dh, hidden, ffn = a.heads, a.kv_heads, a.head_dim, a.hidden, a.ffn
    group, half = heads // kv_heads, dh // 2
    recipe = dataclasses.asdict(config) | {"wide": list(config.wide)}   # as JSON reads it back
    im = IntegerModel({}, {"format_version": FORMAT_VERSION, "arch": a.to_dict(),
                           "recipe": recipe, "logit_frac": LOGIT_FRAC,
                           "wide": sorted(config.wide)})
    # The residual stream: one int32 scale; RMSNorm's epsilon in its units squared.
    res_max = max(_absmax(t(i, n)) for i in range(a.layers) for n in ("x", "h", "y"))
    s_res = res_max * RESIDUAL_HEADROOM / nx.INT32.hi
    im.meta["residual.scale"] = float(s_res)
    im.tensors["rms.eps"] = np.asarray(round(a.block.eps / s_res ** 2), dtype=np.int64)

    # The LM head's input is smoothed per channel against the head (SmoothQuant): a tied
    # table is stored times the factor, and the embedding lookup takes it back out.
    head_float = lm.weight("embed.tokens" if a.output.tied else "lm_head.weight")
    f_head = (_smooth_factor(_absmax(finals, axis=-1), np.abs(head_float).max(axis=0),
                             config.head_alpha) if config.head_alpha else np.ones(hidden))
    # The token table: int8 per row. The embedding lookup requantises a row per channel
    # (undoing the head's smoothing, at 2**EMB_UNSMOOTH_BITS times the factor's smallest
    # step), then per token to the stream.
    table = lm.weight("embed.tokens")
    f_emb = f_head if a.output.tied else np.ones(hidden)
    w_emb, s_emb = _weight_int8(table * f_emb[None, :])  # hidden x vocab, a scale per token
    im.tensors["emb.tokens"] = w_emb
    gain = 2.0 ** EMB_UNSMOOTH_BITS * float(f_emb.min())
    im.set_dyadic("emb.unsmooth", gain / f_emb)
    im.set_dyadic("emb.rq", s_emb / (gain * s_res))

    for i in range(a.layers):
        L = lambda role: lm.weight(role, i)  # noqa: E731
        p = f"L{i}"
        # --- RMSNorm -> int16 -> smoothed int8 (or int16) with row exponents -> q|k|v.
        s_n = _absmax(t(i, "attn_in")) * HIDDEN_HEADROOM / nx.INT16.hi
        _rms_params(im, f"{p}.attn_norm", L("attn_norm.weight"), s_n)
        w_qkv = np.concatenate([L("q.weight"), L("k.weight"), L("v.weight")], axis=0)
        x_scale, w_q, w_s = _smoothed_input(im, f"{p}.qkv_in", t(i, "attn_in"), w_qkv, s_n,
                                            config, "qkv_in" in config.wide)
        im.tensors[f"{p}.qkv.weight"] = w_q
        # q and k: rotation keeps a pair's length, so each head's scale is its largest pair
        # length (int8 after rotary does not saturate); a balance per pair (k-head g, pair c)
        # moves range between q and k without changing q.k: q * b, k / b.
        q_len = np.max([_pair_length(q).max(axis=1) for q in t(i, "q")], axis=0)  # heads x d/2
        k_len = np.max([_pair_length(k).max(axis=1) for k in t(i, "k")], axis=0)  # kv x d/2
        q_len, k_len = np.maximum(q_len, 1e-5), np.maximum(k_len, 1e-5)
        q_group = q_len.reshape(kv_heads, group, half).max(axis=1)
        b = np.sqrt(k_len / q_group) ** config.qk_balance                     # kv x d/2
        b_q = np.repeat(b, group, axis=0)                                       # heads x d/2
        s_q = (q_len * b_q).max(axis=1) * config.qk_headroom / nx.INT8.hi                           # heads
        s_k = (k_len / b).max(axis=1) * config.qk_headroom / nx.INT8.hi                             # kv heads
        v_max = np.maximum(np.max([np.abs(v).max(axis=1) for v in t(i, "v")], axis=0), 1e-5)
        s_v = v_max * config.attn_headroom / nx.INT8.hi                                               # kv x dh
        q_out = (s_q[:, None] / np.concatenate([b_q, b_q], axis=1)).reshape(-1) \
            / _wide_gain("q" in config.wide)
        k_out = (s_k[:, None] * np.concatenate([b, b], axis=1)).reshape(-1) \
            / _wide_gain("k" in config.wide)
        im.set_dyadic(f"{p}.qkv.rq", x_scale * w_s / np.concatenate([q_out, k_out,
                                                                     s_v.reshape(-1)]))
        # --- softmax per query head: (max - s) * s_q * s_k / sqrt(dh) * log2(e), Q8.
        im.set_dyadic(f"{p}.softmax", s_q * np.repeat(s_k, group) / math.sqrt(dh)
                      * math.log2(math.e) * (1 << nx.EXP_FRAC_BITS))
        # --- context (P @ v per head) -> int8, smoothed against the output projection.
        w_o_float = L("o.weight")
        f_ctx = _smooth_factor(_absmax(t(i, "ctx"), axis=-1), np.abs(w_o_float).max(axis=0),
                               config.ctx_alpha)
        s_ctx = _absmax([c / f_ctx for c in t(i, "ctx")]) * config.attn_headroom / nx.INT8.hi
        s_v_ctx = np.repeat(s_v, group, axis=0).reshape(-1)      # v channel of each ctx column
        if "probs" in config.wide:      # 15-bit probabilities, matmul_wide through v
            ctx_factor = s_v_ctx * (_wide_gain(True) / nx.INT16.hi) / (f_ctx * s_ctx)
        else:
            ctx_factor = s_v_ctx / nx.PROB_MAX / (f_ctx * s_ctx)
        im.set_dyadic(f"{p}.ctx.rq", ctx_factor * _wide_gain("ctx" in config.wide))
        w_o, w_os = _weight_int8(w_o_float * f_ctx[None, :])
        im.tensors[f"{p}.attn_out.weight"] = w_o
        _to_residual(im, f"{p}.attn_out", s_ctx * w_os, s_res)
        # --- MLP: RMSNorm -> smoothed int8 (or int16) -> gate (int16 Q8) | up per channel.
        s_m = _absmax(t(i, "mlp_in")) * HIDDEN_HEADROOM / nx.INT16.hi
        _rms_params(im, f"{p}.mlp_norm", L("mlp_norm.weight"), s_m)
        w_gu = np.concatenate([L("gate.weight"), L("up.weight")], axis=0)
        x2_scale, w_gu_q, w_gu_s = _smoothed_input(im, f"{p}.mlp_in", t(i, "mlp_in"), w_gu, s_m,
                                                   config, "mlp_in" in config.wide)
        im.tensors[f"{p}.gate_up.weight"] = w_gu_q
        im.set_dyadic(f"{p}.gate.rq", x2_scale * w_gu_s[:ffn] * (1 << nx.SILU_IN_FRAC))
        s_up = np.maximum(_absmax(t(i, "up"), axis=-1), 1e-5) * config.up_headroom / nx.INT8.hi
        im.set_dyadic(f"{p}.up.rq",
                      x2_scale * w_gu_s[ffn:] / s_up * _wide_gain("up" in config.wide))
        # --- gated product (SiLU Q16 x up int8) -> int8 with row exponents, smoothed
        # against the down projection, whose result joins the residual stream.
        w_d_float = L("down.weight")
        f_in = _smooth_factor(_absmax(t(i, "inner"), axis=-1), np.abs(w_d_float).max(axis=0),
                              config.inner_alpha)
        s_in = _absmax([x / f_in for x in t(i, "inner")]) * config.act_headroom / nx.INT8.hi
        im.set_dyadic(f"{p}.inner.rq", 2.0 ** -nx.SILU_OUT_FRAC * s_up / (f_in * s_in)
                      * _wide_gain("inner" in config.wide), min_shift=nx.ROW_EXP_MAX)
        w_d, w_ds = _weight_int8(w_d_float * f_in[None, :])
        im.tensors[f"{p}.down.weight"] = w_d
        _to_residual(im, f"{p}.down", s_in * w_ds, s_res)

    # --- final RMSNorm -> int16 -> int8 with row exponents -> LM head -> int32 logits.
    s_f = _absmax(finals) * HIDDEN_HEADROOM / nx.INT16.hi
    _rms_params(im, "final_norm", lm.weight("final_norm.weight"), s_f)
    s_hx = _absmax([x / f_head for x in finals]) * config.act_headroom / nx.INT8.hi
    im.set_dyadic("head_in.rq", s_f / (f_head * s_hx) * _wide_gain("head_in" in config.wide),
                  min_shift=nx.ROW_EXP_MAX)
    if a.output.tied:
        w_head, s_head = w_emb, s_emb
    else:
        w_head, s_head = _weight_int8(head_float * f_head[None, :])
        im.tensors["lm_head.weight"] = w_head
    im.set_dyadic("lm_head.rq", s_hx * s_head * 2.0 ** LOGIT_FRAC)
    return im
