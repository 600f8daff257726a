"""The compiler: an integer MiniLM and token counts -> a Celosia program and its memory image.

The program runs exactly the operations of :func:`celosia.sw.golden.forward`, in the same
order, on the matmul engine (MATMUL) and the vector unit (VECTOR), so every backend that
executes it returns the golden int16 hidden state bit for bit:

* embedding LayerNorm (the host writes the int32 embedding sums into ``input``);
* per layer: ``requantize_rows`` of the hidden state -> QKV matmul with ``row_shift`` (int8
  q|k|v); per head: ``Q_h @ K_h^T`` (raw int32, K read transposed) -> softmax (uint8) ->
  ``P @ V_h`` with the softmax's row exponents as ``row_shift``, requantised per channel to
  int8; output projection (int32) -> LayerNorm with the
  int16 residual pre-added -> ``requantize_rows`` -> FFN1 with ``row_shift`` (int32 Q10) ->
  GELU + ``requantize_rows`` (uint8) -> FFN2 with ``row_shift`` (int32) -> LayerNorm with the
  residual;
* HALT; the host reads the int16 hidden state from ``output``.

A batch of sentences is one program: their token rows are stacked (sentence after sentence) in
every row-wise buffer, so each dense matmul (QKV, output projection, FFN1, FFN2) and each
row-wise vector operation (LayerNorms, row requantisations, GELU) runs once over all the rows
and reads its weights once; attention (``Q_h @ K_h^T``, softmax, ``P @ V_h``) runs per sentence
on its own rows. Every operation is row-wise or per sentence, so each sentence's rows equal
the program compiled for that sentence alone.

Memory layout (one window, every base and stride a multiple of the port width W): the weights
region (weights and parameter records of every layer: what depends only on the integer model,
at addresses that do not depend on the token counts, named by ``weights_digest``), then from
the next WINDOW_ALIGN boundary the per-run region (activation buffers, then the program). The
window starts at :data:`celosia.sw.memory_map.WEIGHTS_BASE` by default (below it is the
digest record of resident weights); no instruction writes into the weights region. Attention
reads head slices of the tokens x (3 x heads x head pitch) QKV buffer in place; the head pitch is
``dh`` rounded up to W (equal to ``dh`` for W <= 32), and the QKV weight columns, the context
buffer and the output projection's weight rows follow that pitch, with zero weights and zero
parameters in the padding. SYNC instructions are placed by a scoreboard over the memory
footprints of the instructions (docs/isa.md, "Ordering").
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from celosia.hdl import isa, params
from celosia.hdl.isa import (INSTR_BYTES, WINDOW_ALIGN, Instruction, MachineConfig, Opcode,
                             Span, Unit, VecOp, footprint)
from celosia.hdl.params import OutFormat

from .memory_map import WEIGHTS_BASE, digest_record
from .quantize import IntegerModel

__all__ = ["Tensor", "Program", "CompiledModel", "Scoreboard", "compile_model", "DTYPE"]

#: Little-endian NumPy element type of each memory format.
DTYPE = {OutFormat.INT8: np.dtype("i1"), OutFormat.UINT8: np.dtype("u1"),
         OutFormat.INT16: np.dtype("<i2"), OutFormat.INT32: np.dtype("<i4")}


def _round_up(x: int, a: int) -> int:
    return -(-x // a) * a


def _scalar(x) -> int:
    return int(np.asarray(x).reshape(()))


@dataclass(frozen=True)
class Tensor:
    """A row-major matrix in memory: ``rows`` x ``cols`` elements of ``fmt`` at ``addr``,
    rows ``stride`` bytes apart."""
    name: str
    addr: int
    rows: int
    cols: int
    stride: int
    fmt: OutFormat

    @property
    def nbytes(self) -> int:
        return self.rows * self.stride

    @property
    def span(self) -> Span:
        return Span.strided(self.addr, self.rows, self.stride, self.cols * DTYPE[self.fmt].itemsize)

    def pack(self, values) -> bytes:
        """The tensor's bytes (``nbytes``, padding zero); values are range-checked."""
        v = np.asarray(values, dtype=np.int64)
        if v.shape != (self.rows, self.cols):
            raise ValueError(f"{self.name}: expected {self.rows} x {self.cols}, got {v.shape}")
        info = np.iinfo(DTYPE[self.fmt])
        if v.size and (v.min() < info.min or v.max() > info.max):
            raise ValueError(f"{self.name}: values outside {DTYPE[self.fmt]}")
        out = np.zeros((self.rows, self.stride), dtype=np.uint8)
        out[:, :self.cols * info.bits // 8] = v.astype(DTYPE[self.fmt]).view(np.uint8).reshape(self.rows, -1)
        return out.tobytes()

    def unpack(self, raw: bytes) -> np.ndarray:
        """int64 values from the tensor's ``nbytes`` bytes."""
        eb = DTYPE[self.fmt].itemsize
        b = np.frombuffer(raw, dtype=np.uint8, count=self.nbytes).reshape(self.rows, self.stride)
        return np.ascontiguousarray(b[:, :self.cols * eb]).view(DTYPE[self.fmt]).astype(np.int64)


@dataclass
class Program:
    instructions: list[Instruction]

    @property
    def code(self) -> bytes:
        return b"".join(i.encode() for i in self.instructions)

    def counts(self) -> Counter:
        """Instructions by kind: 'HALT', 'SYNC', 'MATMUL', 'VECTOR.SOFTMAX', ..."""
        c = Counter()
        for i in self.instructions:
            name = Opcode(i.opcode).name
            if i.opcode == Opcode.VECTOR:
                name += "." + isa.vec_op_name(i.fields["op"])
            c[name] += 1
        return c

    def listing(self, base: int = 0) -> str:
        return "\n".join(f"{base + n * INSTR_BYTES:#010x}  {i}" for n, i in enumerate(self.instructions))


@dataclass
class CompiledModel:
    """A program and its memory image. ``image`` is the window's contents, from ``base`` for
    ``window_size`` bytes; the host writes the int32 embedding sums into ``input`` (tokens x
    hidden, the sentences' rows one after another), starts at ``program_addr`` and reads the
    int16 hidden state from ``output``."""
    config: MachineConfig
    #: Rows of all the sentences together.
    tokens: int
    base: int
    window_size: int
    image: bytes
    program: Program
    program_addr: int
    input: Tensor
    output: Tensor
    tensors: dict[str, Tensor] = field(default_factory=dict)
    #: The program's parts in order, ``(layer, part, index)``: ``index`` is the part's first
    #: instruction that is not a SYNC. Once INSTRET reaches it every instruction before the
    #: part has issued, and where a SYNC precedes it (between the parts of the description's
    #: ``parts``, except inside "attention") that SYNC has seen the work it waits for finish.
    parts: tuple[tuple[int, str, int], ...] = ()
    #: Token count of each sentence of the batch, in row order.
    sentences: tuple[int, ...] = ()
    #: Bytes of the weights region at ``base`` (the image's first bytes).
    weights_size: int = 0
    #: SHA-256 of the weights region's layout and bytes (see ``_weights_digest``).
    weights_digest: bytes = b""

    @property
    def weights_end(self) -> int:
        """First byte of the per-run region."""
        return self.base + self.weights_size

    @property
    def weights_image(self) -> bytes:
        return self.image[:self.weights_size]

    @property
    def weights_record(self) -> bytes:
        """The digest record that says these weights are loaded (celosia.sw.memory_map)."""
        return digest_record(self.base, self.weights_size, self.weights_digest)

    def split(self, rows: np.ndarray) -> list[np.ndarray]:
        """The rows of each sentence (of ``input`` or ``output`` values)."""
        return np.split(rows, np.cumsum(self.sentences)[:-1])

    @property
    def layer_starts(self) -> tuple[int, ...]:
        """Per encoder layer, the index of its first part (layer 0's includes "emb_ln")."""
        firsts: dict[int, int] = {}
        for layer, _, index in self.parts:
            firsts.setdefault(layer, index)
        return tuple(firsts[k] for k in sorted(firsts))

    @property
    def end(self) -> int:
        return self.base + self.window_size


class Scoreboard:
    """Places SYNC instructions: the rule of docs/isa.md ("Ordering").

    A unit runs its commands in order, and a command's reads finish before a later command of
    the same unit writes; but a command may read before an earlier command of the same unit
    has finished writing, and the two units are not ordered at all. So before a command of
    unit U, wait for every unit V with an unsynchronised command that writes what it reads
    (V = U included), or (V != U) reads or writes what it writes.
    """

    UNITS = (Unit.MATMUL, Unit.VECTOR)

    def __init__(self):
        self.instructions: list[Instruction] = []
        self._reads = {u: [] for u in self.UNITS}
        self._writes = {u: [] for u in self.UNITS}

    @staticmethod
    def unit_of(ins: Instruction) -> Unit:
        return Unit.MATMUL if ins.opcode == Opcode.MATMUL else Unit.VECTOR

    def conflicts(self, ins: Instruction) -> Unit:
        unit = self.unit_of(ins)
        reads, writes = ([s for _, s, _, _ in lst] for lst in footprint(ins))
        need = Unit(0)
        for u in self.UNITS:
            hit = any(r.overlaps(w) for r in reads for w in self._writes[u])
            if u != unit:
                hit = hit or any(w.overlaps(x) for w in writes for x in self._reads[u] + self._writes[u])
            if hit:
                need |= u
        return need

    def retire(self, units: Unit) -> None:
        for u in self.UNITS:
            if u & units:
                self._reads[u].clear()
                self._writes[u].clear()

    def issue(self, ins: Instruction) -> None:
        if ins.opcode in (Opcode.MATMUL, Opcode.VECTOR):
            need = self.conflicts(ins)
            if need:
                self.instructions.append(isa.sync(need))
                self.retire(need)
            reads, writes = footprint(ins)
            unit = self.unit_of(ins)
            self._reads[unit] += [s for _, s, _, _ in reads]
            self._writes[unit] += [s for _, s, _, _ in writes]
        elif ins.opcode == Opcode.SYNC:
            self.retire(Unit(ins.fields["units"] & Unit.ALL))
        elif ins.opcode == Opcode.HALT:
            self.retire(Unit.ALL)
        self.instructions.append(ins)


class _Allocator:
    def __init__(self, base: int, align: int):
        self.top = base
        self.align = align
        self.tensors: dict[str, Tensor] = {}

    def tensor(self, name: str, rows: int, cols: int, fmt: OutFormat) -> Tensor:
        stride = _round_up(cols * DTYPE[fmt].itemsize, self.align)
        t = Tensor(name, self.bytes(rows * stride), rows, cols, stride, fmt)
        self.tensors[name] = t
        return t

    def bytes(self, n: int, align: int | None = None) -> int:
        a = max(align or self.align, self.align)
        addr = _round_up(self.top, a)
        self.top = addr + n
        return addr


class _Image:
    """The window's bytes, written tensor by tensor."""

    def __init__(self, base: int):
        self.base = base
        self.chunks: list[tuple[int, bytes]] = []

    def put(self, addr: int, raw: bytes) -> None:
        self.chunks.append((addr, raw))

    def build(self, size: int) -> bytes:
        img = bytearray(size)
        for addr, raw in self.chunks:
            off = addr - self.base
            img[off:off + len(raw)] = raw
        return bytes(img)


def _engine_records(bias, mult, shift) -> bytes:
    n = len(bias)
    rec = np.zeros(n, dtype=isa.ENGINE_PARAM_DTYPE)
    rec["bias"], rec["mult"], rec["shift"] = bias, mult, shift
    return rec.tobytes()


def _vector_records(mult, shift=0, bias=0, n=None) -> bytes:
    n = len(mult) if n is None else n
    rec = np.zeros(n, dtype=isa.VEC_PARAM_DTYPE)
    rec["mult"], rec["shift"], rec["bias"] = mult, shift, bias
    return rec.tobytes()


def compile_model(im: IntegerModel, tokens, array: int = params.DEFAULT_ARRAY,
                  port_bytes: int | None = None, base: int = WEIGHTS_BASE,
                  layers: int | None = None) -> CompiledModel:
    """Compile ``im`` for ``tokens`` tokens (one sentence) or a sequence of token counts (a
    batch of sentences, rows stacked) on an ``array`` x ``array`` engine with a
    ``port_bytes`` memory port (default: the engine's default for the array), with the
    window at ``base``. ``layers`` limits the encoder layers (all by default). The program's
    shape and structure are the integer model's description (``im.arch``); one with features
    the compiler does not implement yet is refused (NotImplementedError)."""
    arch = im.arch
    arch.require_runnable("the compiler")
    config = MachineConfig(array, port_bytes)
    W = config.port_bytes
    hidden, heads, ffn, dh = arch.hidden, arch.heads, arch.ffn, arch.head_dim
    n_layers = arch.layers if layers is None else layers
    sentences = (int(tokens),) if isinstance(tokens, (int, np.integer)) else tuple(map(int, tokens))
    if not sentences:
        raise ValueError("a batch needs at least one sentence")
    for t in sentences:
        if not 1 <= t <= isa.VEC_MAX_COLS:     # a softmax row holds every token
            raise ValueError(f"tokens must be in 1..{isa.VEC_MAX_COLS}, got {t}")
    tokens, longest = sum(sentences), max(sentences)
    if tokens >= 1 << params.DIM_BITS:
        raise ValueError(f"a batch holds fewer than {1 << params.DIM_BITS} tokens, got {tokens}")
    starts = np.concatenate([[0], np.cumsum(sentences)[:-1]]).tolist()
    if base % WINDOW_ALIGN:
        raise ValueError(f"base must be a multiple of {WINDOW_ALIGN}")
    pitch = _round_up(dh, W)              # head pitch in the QKV and context buffers
    T = im.tensors
    alloc = _Allocator(base, W)
    img = _Image(base)
    I8, U8, I16, I32 = OutFormat.INT8, OutFormat.UINT8, OutFormat.INT16, OutFormat.INT32

    def weight(name: str, values) -> Tensor:
        v = np.asarray(values)
        t = alloc.tensor(name, v.shape[0], v.shape[1], I8)
        img.put(t.addr, t.pack(v))
        return t

    def records(name: str, raw: bytes) -> int:
        addr = alloc.bytes(len(raw))
        alloc.tensors[name] = Tensor(name, addr, 1, len(raw), len(raw), U8)
        img.put(addr, raw)
        return addr

    # QKV columns: part (q, k, v), head h -> column (part * heads + h) * pitch.
    qkv_cols = 3 * heads * pitch
    qkv_dst = np.concatenate([np.arange(dh) + (p * heads + h) * pitch
                              for p in range(3) for h in range(heads)])
    ctx_cols = heads * pitch
    ctx_dst = np.concatenate([np.arange(dh) + h * pitch for h in range(heads)])

    # --- Weights and parameters ----------------------------------------------------------
    emb_ln = records("emb.ln.p", _vector_records(T["emb.ln.gamma"], 0, T["emb.ln.beta"]))
    L = []
    for i in range(n_layers):
        p = f"L{i}"
        w = {}
        wq = np.zeros((hidden, qkv_cols), dtype=np.int64)
        wq[:, qkv_dst] = T[f"{p}.qkv.weight"]
        bias, mult, shift = (np.zeros(qkv_cols, dtype=np.int64) for _ in range(3))
        bias[qkv_dst], mult[qkv_dst], shift[qkv_dst] = (T[f"{p}.qkv.bias"], T[f"{p}.qkv.rq.mult"],
                                                        T[f"{p}.qkv.rq.shift"])
        w["qkv"] = weight(f"{p}.qkv.weight", wq)
        w["qkv.p"] = records(f"{p}.qkv.p", _engine_records(bias, mult, shift))
        w["ctx.p"] = records(f"{p}.ctx.p", _engine_records(np.zeros(hidden, dtype=np.int64),
                                                           T[f"{p}.ctx.rq.mult"], T[f"{p}.ctx.rq.shift"]))
        wo = np.zeros((ctx_cols, hidden), dtype=np.int64)
        wo[ctx_dst, :] = T[f"{p}.attn_out.weight"]
        w["attn_out"] = weight(f"{p}.attn_out.weight", wo)
        w["attn_out.p"] = records(f"{p}.attn_out.p", _engine_records(
            T[f"{p}.attn_out.bias"], T[f"{p}.attn_out.rq.mult"], T[f"{p}.attn_out.rq.shift"]))
        w["ffn1"] = weight(f"{p}.ffn1.weight", T[f"{p}.ffn1.weight"])
        w["ffn1.p"] = records(f"{p}.ffn1.p", _engine_records(
            T[f"{p}.ffn1.bias"], T[f"{p}.ffn1.rq.mult"], T[f"{p}.ffn1.rq.shift"]))
        w["ffn2"] = weight(f"{p}.ffn2.weight", T[f"{p}.ffn2.weight"])
        w["ffn2.p"] = records(f"{p}.ffn2.p", _engine_records(
            T[f"{p}.ffn2.bias"], T[f"{p}.ffn2.rq.mult"], T[f"{p}.ffn2.rq.shift"]))
        for name in ("qkv_in.rq", "ffn_in.rq", "gelu.rq"):
            w[name] = records(f"{p}.{name}.p", _vector_records(T[f"{p}.{name}.mult"], T[f"{p}.{name}.shift"]))
        for name in ("ln1", "ln2"):
            w[name] = records(f"{p}.{name}.p", _vector_records(T[f"{p}.{name}.gamma"], 0, T[f"{p}.{name}.beta"]))
        L.append(w)

    # The per-run region starts on a window boundary after the weights.
    weights_end = alloc.bytes(0, WINDOW_ALIGN)
    weight_tensors = dict(alloc.tensors)

    # --- Activations --------------------------------------------------------------------------
    emb = alloc.tensor("emb", tokens, hidden, I32)
    h = alloc.tensor("h", tokens, hidden, I16)
    h1 = alloc.tensor("h1", tokens, hidden, I16)
    x8 = alloc.tensor("x8", tokens, hidden, I8)
    rowexp = alloc.tensor("row_exp", 1, tokens, U8)
    qkv = alloc.tensor("qkv", tokens, qkv_cols, I8)
    # Attention buffers hold one sentence's scores (the longest), double-buffered.
    scores = [alloc.tensor(f"scores{b}", longest, longest, I32) for b in range(2)]
    probs = [alloc.tensor(f"probs{b}", longest, longest, U8) for b in range(2)]
    probs_exp = [alloc.tensor(f"probs_exp{b}", 1, longest, U8) for b in range(2)]
    ctx = alloc.tensor("ctx", tokens, ctx_cols, I8)
    acc = alloc.tensor("acc", tokens, hidden, I32)
    inter = alloc.tensor("inter", tokens, ffn, I32)
    g = alloc.tensor("gelu", tokens, ffn, U8)

    # --- Program ------------------------------------------------------------------------------
    sb = Scoreboard()
    parts: list[tuple[int, str, int]] = []
    opening: list[tuple[int, str]] = []          # a part that starts with the next command

    def part(layer: int, name: str) -> None:
        opening.append((layer, name))

    def issue(ins) -> None:
        sb.issue(ins)
        if opening:
            layer, name = opening.pop()
            parts.append((layer, name, len(sb.instructions) - 1))

    def rows(t: Tensor, start: int, count: int, cols: int | None = None) -> Tensor:
        """Rows ``start`` .. ``start + count`` of ``t`` (one sentence's), its first ``cols``
        columns (all by default)."""
        return Tensor(t.name, t.addr + start * t.stride, count, t.cols if cols is None else cols,
                      t.stride, t.fmt)

    def vec(op: VecOp, src: Tensor, dst: Tensor, **kw) -> None:
        f = dict(op=op, rows=src.rows, cols=src.cols, src_addr=src.addr, src_stride=src.stride,
                 src_fmt=src.fmt, dst_addr=dst.addr, dst_stride=dst.stride, dst_fmt=dst.fmt)
        res = kw.pop("res", None)
        if res is not None:
            f.update(res_addr=res.addr, res_stride=res.stride)
        f.update(kw)
        issue(isa.vector(**f))

    def mm(a_addr, a_stride, m, k, n, b_addr, b_stride, c: Tensor, c_addr=None, p_addr=None,
           out_fmt=None, **kw) -> None:
        f = dict(m=m, k=k, n=n, a_addr=a_addr, a_stride=a_stride, b_addr=b_addr, b_stride=b_stride,
                 c_addr=c.addr if c_addr is None else c_addr, c_stride=c.stride)
        if p_addr is not None:
            f.update(p_addr=p_addr, use_params=1, requant=1, out_fmt=out_fmt)
        f.update(kw)
        issue(isa.matmul(**f))

    def ln(src: Tensor, dst: Tensor, p_addr: int, shift: int, res: Tensor | None = None,
           res_shift: int = 0) -> None:
        extra = dict(add_residual=1, res=res, res_shift=res_shift) if res is not None else {}
        vec(VecOp.LAYERNORM, src, dst, p_addr=p_addr, shift=shift, **extra)

    def rows_in(src: Tensor, dst: Tensor, p_addr: int, op=VecOp.REQUANT_ROWS) -> None:
        vec(op, src, dst, p_addr=p_addr, e_addr=rowexp.addr)

    part(0, "emb_ln")
    ln(emb, h, emb_ln, _scalar(T["emb.ln.shift"]))
    for i, w in enumerate(L):
        p = f"L{i}"
        # Attention.
        part(i, "qkv_in")
        rows_in(h, x8, w["qkv_in.rq"])
        part(i, "qkv")
        mm(x8.addr, x8.stride, tokens, hidden, qkv_cols, w["qkv"].addr, w["qkv"].stride, qkv,
           p_addr=w["qkv.p"], out_fmt=I8, row_shift=1, e_addr=rowexp.addr)
        sm_mult, sm_shift = T[f"{p}.softmax.mult"], T[f"{p}.softmax.shift"]
        # The default recipe's dithered probabilities (SOFTMAX_DITHER, in every RTL build).
        softmax_op = isa.VecOp.SOFTMAX_DITHER if im.softmax_dither else VecOp.SOFTMAX

        # Attention per sentence and head: item j's scores and probabilities go to buffer j % 2.
        items = [(s0, n, hd) for s0, n in zip(starts, sentences) for hd in range(heads)]

        def head_scores(j: int) -> None:
            s0, n, hd = items[j]
            sc = rows(scores[j % 2], 0, n, n)
            q_rows = rows(qkv, s0, n)
            mm(q_rows.addr + hd * pitch, qkv.stride, n, dh, n,
               q_rows.addr + (heads + hd) * pitch, qkv.stride, sc, b_transposed=1)

        def head_softmax(j: int) -> None:
            _, n, hd = items[j]
            sc, pr = rows(scores[j % 2], 0, n, n), rows(probs[j % 2], 0, n, n)
            vec(softmax_op, sc, pr, mult=int(sm_mult[hd]), shift=int(sm_shift[hd]),
                e_addr=probs_exp[j % 2].addr)

        def head_context(j: int) -> None:
            s0, n, hd = items[j]
            pr = probs[j % 2]
            mm(pr.addr, pr.stride, n, n, dh, rows(qkv, s0, n).addr + (2 * heads + hd) * pitch,
               qkv.stride, ctx, c_addr=rows(ctx, s0, n).addr + hd * pitch,
               p_addr=w["ctx.p"] + hd * dh * params.PARAM_RECORD_BYTES, out_fmt=I8, a_unsigned=1,
               row_shift=1, e_addr=probs_exp[j % 2].addr)

        # Software pipeline over two buffers: after a barrier (item j's softmax and item
        # j+1's scores done), item j+1's softmax on the vector unit runs beside item j's
        # context and item j+2's scores on the matmul engine (a SYNC waits for whole units, so
        # without the barrier first the context would wait for the softmax issued before it).
        part(i, "attention")
        head_scores(0)
        head_softmax(0)
        if len(items) > 1:
            head_scores(1)
        for j in range(len(items)):
            if j + 1 < len(items):
                issue(isa.sync(Unit.ALL))
                head_softmax(j + 1)
            head_context(j)
            if j + 2 < len(items):
                head_scores(j + 2)
        part(i, "attn_out")
        mm(ctx.addr, ctx.stride, tokens, ctx_cols, hidden, w["attn_out"].addr, w["attn_out"].stride,
           acc, p_addr=w["attn_out.p"], out_fmt=I32)
        part(i, "ln1")
        ln(acc, h1, w["ln1"], _scalar(T[f"{p}.ln1.shift"]), res=h,
           res_shift=_scalar(T[f"{p}.attn_out.res_shift"]))
        # Feed-forward.
        part(i, "ffn_in")
        rows_in(h1, x8, w["ffn_in.rq"])
        part(i, "ffn1")
        mm(x8.addr, x8.stride, tokens, hidden, ffn, w["ffn1"].addr, w["ffn1"].stride, inter,
           p_addr=w["ffn1.p"], out_fmt=I32, row_shift=1, e_addr=rowexp.addr)
        part(i, "gelu")
        rows_in(inter, g, w["gelu.rq"], op=VecOp.GELU_ROWS)
        part(i, "ffn2")
        mm(g.addr, g.stride, tokens, ffn, hidden, w["ffn2"].addr, w["ffn2"].stride, acc,
           p_addr=w["ffn2.p"], out_fmt=I32, row_shift=1, e_addr=rowexp.addr, a_unsigned=1)
        part(i, "ln2")
        ln(acc, h, w["ln2"], _scalar(T[f"{p}.ln2.shift"]), res=h1,
           res_shift=_scalar(T[f"{p}.ffn2.res_shift"]))
    issue(isa.halt())

    # The parts emitted are the description's, layer after layer (the first opens layer 0).
    assert [name for _, name, _ in parts] == [arch.parts[0]] + list(arch.parts[1:]) * n_layers
    program = Program(sb.instructions)
    code = program.code
    program_addr = alloc.bytes(len(code), WINDOW_ALIGN)
    img.put(program_addr, code)
    window_size = _round_up(alloc.top - base, WINDOW_ALIGN)
    image = img.build(window_size)
    weights_size = weights_end - base
    _check_per_run(weights_end, alloc.tensors, weight_tensors, program, program_addr)
    return CompiledModel(config, tokens, base, window_size, image, program, program_addr, emb, h,
                         dict(alloc.tensors), tuple(parts), sentences, weights_size,
                         _weights_digest(config, base, image[:weights_size], weight_tensors))


def _weights_digest(config: MachineConfig, base: int, raw: bytes,
                    tensors: dict[str, Tensor]) -> bytes:
    """SHA-256 of the weights region: its layout (machine, base, size, every tensor's place
    and shape) as canonical JSON, a zero byte, then its bytes."""
    layout = {"array": config.array, "port_bytes": config.port_bytes, "base": base,
              "size": len(raw),
              "tensors": [[t.name, t.addr, t.rows, t.cols, t.stride, int(t.fmt)]
                          for t in tensors.values()]}
    h = hashlib.sha256(json.dumps(layout, sort_keys=True).encode() + b"\0")
    h.update(raw)
    return h.digest()


def _check_per_run(weights_end: int, tensors: dict[str, Tensor], weights: dict[str, Tensor],
                   program: Program, program_addr: int) -> None:
    """The per-run data lies beyond the weights and no instruction writes into them, so a run
    never changes the resident weights."""
    for name, t in tensors.items():
        assert name in weights or t.addr >= weights_end, f"{name} overlaps the weights region"
    assert program_addr >= weights_end, "the program overlaps the weights region"
    region = Span(0, weights_end)
    for ins in program.instructions:
        for name, span, _, _ in footprint(ins)[1]:
            assert not span.overlaps(region), f"{ins} writes {name} into the weights region"
