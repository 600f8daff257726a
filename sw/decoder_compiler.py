"""One decoder block, a prompt's prefill or a decode step through the KV cache, as a Celosia
program (the ``isa`` backend's first decoder path).

:func:`compile_decoder_block` turns layer ``i`` of an integer decoder
(:func:`celosia.sw.quantize.quantize_decoder`) and a prompt's int32 residual stream
(tokens x hidden: a prompt's prefill, or with the layer's KV cache a continuation of it, one
token being a decode step) into MATMUL and VECTOR instructions;
:func:`run_decoder_block` runs them on the instruction-set simulator with the decoder's
vector operations (:data:`celosia.hdl.isa.DECODER_OPS`, ``IsaMachine(decoder_ops=True)``)
and returns the block's output stream, bit for bit :func:`celosia.sw.golden.decoder_layer`'s.

The mapping, step by step as golden.decoder_attention and golden.decoder_mlp:

* RMSNorm (RMSNORM) and the smoothed operand with row exponents (REQUANT_ROWS, int16 where
  the recipe makes it wide);
* a wide operand times int8 weights is numerics.matmul_wide's two passes: WIDE_SPLIT writes
  the operand's high (int8) and low (uint8) byte planes, the low plane's MATMUL gives int32,
  WIDE_LO rescales it per row, and the high plane's MATMUL adds it (ACC32) after its own row
  shift;
* q, k and v requantised per channel (REQUANT), rotary per head (ROTARY, the host writes the
  prompt positions' cos | sin rows), scores per query head against its key/value head
  (grouped-query attention: B transposed), SOFTMAX_WIDE (causal, 15-bit probabilities), the
  probabilities times v (two passes), the context per head (REQUANT into its columns);
* the output and down projections requantised to int32 (REQUANT) and added to the stream
  (RESIDUAL32); the gate and up requantised, SILU_GATE, the down projection's two passes.

The KV cache is a block of rows in memory (the cached tokens' keys after rotary, and values,
int8); a block writes its new tokens' rows in place. :class:`DecoderSession` is the whole
decoder this way: the weights, the LM head and every layer's cache stay in one simulated
machine's memory, and each call runs a program per block and one for the final RMSNorm and
the LM head (``celosia generate --backend isa``). The embedding lookup is done on the host.
Not done: one program for all the blocks (the stream returns to the host between blocks), and
the RTL (which has none of the decoder's vector operations: they stop with BAD_MODE there). A
vector command is at most VEC_MAX_COLS columns, so wider rows go as several commands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from celosia.hdl import isa
from celosia.hdl.isa import CSR, INSTR_BYTES, MachineConfig, Unit, VecOp
from celosia.hdl.params import AddendMode, OutFormat

from . import numerics as nx
from .compiler import DTYPE, Tensor, _vector_records
from .golden import _select, _wide
from .quantize import IntegerModel

__all__ = ["DecoderBlockProgram", "decode_roofline", "compile_decoder_block", "run_decoder_block",
           "DecoderSession"]

_I8, _U8, _I16, _I32 = OutFormat.INT8, OutFormat.UINT8, OutFormat.INT16, OutFormat.INT32


@dataclass
class DecoderBlockProgram:
    """A compiled block: the memory image (instructions at ``prog``), where the input stream
    goes and where the output stream is read, and the machine it is compiled for."""
    config: MachineConfig
    image: bytearray
    prog: int
    x: Tensor
    y: Tensor
    instructions: list
    k_cache: Tensor | None = None
    v_cache: Tensor | None = None
    head_dim: int = 64

    def counts(self) -> dict:
        out: dict[str, int] = {}
        for ins in self.instructions:
            name = isa.Opcode(ins.opcode).name
            if ins.opcode == isa.Opcode.VECTOR:
                name += "." + isa.vec_op_name(ins.fields["op"])
            out[name] = out.get(name, 0) + 1
        return out


class _Builder:
    """A bump allocator over a growing memory image, and the instruction list."""

    def __init__(self, config: MachineConfig):
        self.config = config
        self.W = config.port_bytes
        self.image = bytearray()
        self.code: list = []

    def _alloc(self, nbytes: int) -> int:
        addr = len(self.image)
        self.image += bytes(-(-max(nbytes, 1) // self.W) * self.W)
        return addr

    def tensor(self, name: str, rows: int, cols: int, fmt: OutFormat, values=None) -> Tensor:
        stride = -(-cols * DTYPE[fmt].itemsize // self.W) * self.W
        t = Tensor(name, self._alloc(rows * stride), rows, cols, stride, fmt)
        if values is not None:
            self.image[t.addr:t.addr + t.nbytes] = t.pack(values)
        return t

    def raw(self, data: bytes) -> int:
        addr = self._alloc(len(data))
        self.image[addr:addr + len(data)] = data
        return addr

    def cols(self, t: Tensor, start: int, count: int) -> Tensor:
        """Columns start..start+count of ``t`` (the same rows and stride)."""
        return Tensor(f"{t.name}[{start}:]", t.addr + start * DTYPE[t.fmt].itemsize, t.rows,
                      count, t.stride, t.fmt)

    def rows(self, t: Tensor, start: int, count: int, fmt: OutFormat | None = None) -> Tensor:
        return Tensor(f"{t.name}[rows {start}:]", t.addr + start * t.stride, count, t.cols,
                      t.stride, fmt or t.fmt)

    def sync(self, units=Unit.ALL) -> None:
        self.code.append(isa.sync(units))

    def vector(self, op, src: Tensor, dst: Tensor, **kw) -> None:
        """One VECTOR per VEC_MAX_COLS columns of ``src`` (and ``dst``, and the second
        operand's and parameters' columns alike)."""
        step = isa.VEC_MAX_COLS
        for c0 in range(0, src.cols, step):
            n = min(step, src.cols - c0)
            s, d = self.cols(src, c0, n), self.cols(dst, c0, n)
            extra = dict(kw)
            if "res" in extra:
                r = self.cols(extra.pop("res"), c0, n)
                extra.update(res_addr=r.addr, res_stride=r.stride)
            if "p_addr" in extra:
                extra["p_addr"] += c0 * isa.VEC_PARAM_RECORD_BYTES
            self.code.append(isa.vector(op=int(op), rows=s.rows, cols=n, src_addr=s.addr,
                                        src_stride=s.stride, src_fmt=int(s.fmt), dst_addr=d.addr,
                                        dst_stride=d.stride, dst_fmt=int(d.fmt), **extra))

    def matmul(self, a: Tensor, b: Tensor, c: Tensor, transposed: bool = False, **kw) -> None:
        self.code.append(isa.matmul(m=a.rows, k=a.cols, n=b.rows if transposed else b.cols,
                                    a_addr=a.addr, a_stride=a.stride, b_addr=b.addr,
                                    b_stride=b.stride, c_addr=c.addr, c_stride=c.stride,
                                    a_unsigned=int(a.fmt == _U8), b_transposed=int(transposed),
                                    **kw))

    def product(self, name: str, a: Tensor, b: Tensor, e: int | None, wide: bool,
                transposed: bool = False) -> Tensor:
        """``a @ b`` as golden._product: one int8 MATMUL, or numerics.matmul_wide's two
        passes for an int16 ``a``; ``e``: the address of a's row exponents (None: 0)."""
        n = b.rows if transposed else b.cols
        out = self.tensor(name, a.rows, n, _I32)
        shift = {} if e is None else {"row_shift": 1, "e_addr": e}
        if not wide:
            self.matmul(a, b, out, transposed, **shift)
            return out
        planes = self.tensor(f"{name}.planes", 2 * a.rows, a.cols, _I8)
        self.vector(VecOp.WIDE_SPLIT, a, planes)
        self.sync(Unit.VECTOR)
        lo = self.tensor(f"{name}.lo", a.rows, n, _I32)
        self.matmul(self.rows(planes, a.rows, a.rows, _U8), b, lo, transposed)
        self.sync(Unit.MATMUL)
        if e is None:
            e = self.raw(bytes(a.rows))
        lo2 = self.tensor(f"{name}.lo2", a.rows, n, _I32)
        step = isa.WIDE_LO_MAX_ROWS       # rows of one WIDE_LO
        for r0 in range(0, a.rows, step):
            r = min(step, a.rows - r0)
            self.vector(VecOp.WIDE_LO, self.rows(lo, r0, r), self.rows(lo2, r0, r),
                        e_addr=e + r0)
        self.sync(Unit.VECTOR)
        self.matmul(self.rows(planes, 0, a.rows), b, out, transposed, addend=int(AddendMode.ACC32),
                    d_addr=lo2.addr, d_stride=lo2.stride, **shift)
        return out

    def requant(self, src: Tensor, dst: Tensor, d: nx.Dyadic) -> None:
        m = np.broadcast_to(d.multiplier, (src.cols,))
        s = np.broadcast_to(d.shift, (src.cols,))
        self.vector(VecOp.REQUANT, src, dst, p_addr=self.raw(_vector_records(m, s)))

    def operand(self, im: IntegerModel, name: str, h: Tensor, prefix: str) -> tuple[Tensor, int]:
        """golden._operand: the smoothed operand and the address of its row exponents."""
        fmt = _I16 if _wide(im, name) else _I8
        out = self.tensor(name, h.rows, h.cols, fmt)
        e = self.raw(bytes(h.rows))
        d = im.dyadic(f"{prefix}{name}.rq")
        self.vector(VecOp.REQUANT_ROWS, h, out, e_addr=e,
                    p_addr=self.raw(_vector_records(np.broadcast_to(d.multiplier, (h.cols,)),
                                                    np.broadcast_to(d.shift, (h.cols,)))))
        return out, e

    def rmsnorm(self, im: IntegerModel, name: str, x: Tensor) -> Tensor:
        out = self.tensor(name, x.rows, x.cols, _I16)
        gamma = im.tensors[f"{name}.gamma"]
        eps = np.zeros(x.cols, dtype=np.int64)
        eps[0] = im.scalar("rms.eps")
        self.vector(VecOp.RMSNORM, x, out, shift=im.scalar(f"{name}.shift"),
                    p_addr=self.raw(_vector_records(gamma, 0, eps)))
        return out


def compile_decoder_block(im: IntegerModel, i: int, x: np.ndarray, array: int = 16,
                          cache_k: np.ndarray | None = None,
                          cache_v: np.ndarray | None = None) -> DecoderBlockProgram:
    """Layer ``i`` on the int32 residual stream ``x`` (tokens x hidden) as one program:
    weights, tables, the KV cache, the input, scratch, then the code.

    Without a cache, the prompt's prefill (positions 0..tokens-1). With ``cache_k`` and
    ``cache_v`` (golden.DecoderCache's layer ``i``: kv_heads x start x head_dim, int8 after
    rotary), the continuation at positions start..start+tokens-1 (one token: a decode step):
    the cache sits in memory as (start + tokens) x (kv_heads * head_dim) rows, the new keys
    and values are written into its last rows in place, and the causal softmax masks with
    offset ``start``."""
    a = im.arch
    a.require_decoder("the decoder compiler")
    T = im.tensors
    p = f"L{i}"
    x = np.asarray(x, dtype=np.int64)
    tokens, hidden = x.shape
    heads, kv_heads, dh, ffn = a.heads, a.kv_heads, a.head_dim, a.ffn
    kv = kv_heads * dh
    start = 0 if cache_k is None else int(np.shape(cache_k)[1])
    keys = start + tokens
    if hidden != a.hidden or tokens < 1 or keys > min(512, a.max_tokens):
        raise ValueError(f"compile_decoder_block: tokens x {a.hidden} with 1..512 tokens in "
                         f"all (the softmax's longest row), got {x.shape} after {start}")
    if (cache_k is None) != (cache_v is None) or (cache_k is not None and (
            np.shape(cache_k) != (kv_heads, start, dh) or np.shape(cache_v) != np.shape(cache_k))):
        raise ValueError(f"compile_decoder_block: a cache of keys and values, each "
                         f"({kv_heads}, start, {dh})")
    b = _Builder(MachineConfig(array))
    W = {name: b.tensor(name, *T[f"{p}.{name}.weight"].shape, _I8, T[f"{p}.{name}.weight"])
         for name in ("qkv", "attn_out", "gate_up", "down")}
    cos, sin = nx.rope_tables(a.block.attention.rope_theta, dh, a.max_tokens)
    trig = b.tensor("cos|sin", tokens, dh, _I16,
                    np.concatenate([cos[start:keys], sin[start:keys]], axis=1))
    if _wide(im, "k"):
        raise NotImplementedError("the decoder compiler does not map a wide k yet")
    # The KV cache: a row per token, kv_heads * head_dim int8 columns (head g at g * dh).
    kv_rows = {name: np.zeros((keys, kv), dtype=np.int64) for name in ("k", "v")}
    if start:
        for name, c in (("k", cache_k), ("v", cache_v)):
            kv_rows[name][:start] = np.asarray(c).transpose(1, 0, 2).reshape(start, kv)
    k_cache = b.tensor("k cache", keys, kv, _I8, kv_rows["k"])
    v_cache = b.tensor("v cache", keys, kv, _I8, kv_rows["v"])
    xin = b.tensor("x", tokens, hidden, _I32, x)
    y = _emit_block(b, im, i, xin, [_Seq(0, tokens, start, k_cache, v_cache)], W, trig)
    b.code.append(isa.halt())
    b.image += bytes(-len(b.image) % INSTR_BYTES)      # instructions are INSTR_BYTES-aligned
    prog = b.raw(b"".join(ins.encode() for ins in b.code))
    b._alloc(isa.WINDOW_ALIGN)          # the window ends on WINDOW_ALIGN past the code
    pad = -len(b.image) % isa.WINDOW_ALIGN
    b.image += bytes(pad)
    return DecoderBlockProgram(b.config, b.image, prog, xin, y, b.code, k_cache, v_cache, dh)


def run_decoder_block(program: DecoderBlockProgram, backend=None, max_cycles: int | None = None,
                      timeout_s: float | None = None,
                      retire_cycles: bool = False) -> tuple[np.ndarray, dict]:
    """Run a compiled block: ``(output stream, figures)``, the figures its cycles and counts,
    and ``k_cache``/``v_cache`` the cache read back (kv_heads x tokens x head_dim, as
    golden.DecoderCache holds it).

    ``backend``: a :class:`celosia.sw.driver.Backend` of the block's machine with the
    decoder's vector operations and memory for its image (e.g. the ``verilator`` backend's
    ``VerilatorBackend(config, len(image), vector=True, decoder_ops=True)``); by default the
    isa simulator modelling such a build, whose unordered accesses come back as ``hazards``
    (None on other backends). ``max_cycles``/``timeout_s`` bound the run
    (:class:`celosia.sw.driver.AcceleratorHung` past them). ``retire_cycles``: the figures
    also hold ``retire_cycles``, the cycle counter as each instruction retired (the run
    stops at every instruction to read it: slower)."""
    from .driver import Accelerator, AcceleratorError
    from .isa_sim import IsaBackend
    if backend is None:
        backend = IsaBackend(program.config, len(program.image), decoder_ops=True)
    acc = Accelerator(backend)
    if acc.config != program.config:
        raise ValueError(f"the block is compiled for {program.config}, the backend is "
                         f"{acc.config}")
    backend.write_memory(0, bytes(program.image))
    backend.write_csr("WIN_BASE", 0)
    backend.write_csr("WIN_SIZE", len(program.image))
    acc.start(program.prog)
    try:
        acc.wait(max_cycles=max_cycles, timeout_s=timeout_s,
                 marks=list(range(1, len(program.instructions) + 1)) if retire_cycles else None)
    except AcceleratorError as exc:
        st = exc.status
        raise RuntimeError(f"the decoder block stopped with {st.error.name} at "
                           f"{st.error_pc:#x}: {st.detail}") from None

    def read(t: Tensor) -> np.ndarray:
        return t.unpack(backend.read_memory(t.addr, t.nbytes))

    y = read(program.y)
    caches = {}
    for name in ("k_cache", "v_cache"):
        rows = read(getattr(program, name))
        heads = rows.shape[1] // program.head_dim
        caches[name] = rows.reshape(rows.shape[0], heads, program.head_dim).transpose(1, 0, 2)
    macs = sum(ins.fields["m"] * ins.fields["k"] * ins.fields["n"]
               for ins in program.instructions if ins.opcode == isa.Opcode.MATMUL)
    hazards = list(backend.machine.hazards) if isinstance(backend, IsaBackend) else None
    return y, {"cycles": acc.counters()["cycles"], "instructions": len(program.instructions),
               "hazards": hazards, "macs": macs, "array": program.config.array,
               "counts": program.counts(), "backend": backend.name,
               "instr_bytes": INSTR_BYTES * len(program.instructions), **caches,
               **({"retire_cycles": acc.mark_cycles} if retire_cycles else {})}


#: Most sequences one DecoderSession holds (and so decodes together).
MAX_SEQUENCES = 64


@dataclass
class _Seq:
    """One sequence of a block's stream: its ``tokens`` rows from ``row0``, at positions
    start..start+tokens-1, and its cache's first start + tokens rows (the new ones are
    written)."""
    row0: int
    tokens: int
    start: int
    k_cache: Tensor
    v_cache: Tensor


def _emit_block(b: "_Builder", im: IntegerModel, i: int, xin: Tensor, seqs: list, W: dict,
                trig: Tensor) -> Tensor:
    """The instructions of layer ``i`` on the stream ``xin``: the rows of the sequences
    ``seqs`` (:class:`_Seq`, their rows in order), ``W`` the layer's weight tensors, ``trig``
    the rows' cos | sin. Everything but attention runs on all rows at once; attention runs a
    sequence at a time against its own cache. Returns the output stream's tensor; ends with
    the vector unit busy."""
    a = im.arch
    p = f"L{i}"
    tokens, hidden = xin.rows, xin.cols
    heads, kv_heads, dh, ffn = a.heads, a.kv_heads, a.head_dim, a.ffn
    kv = kv_heads * dh
    batch = len(seqs) > 1

    # --- attention -------------------------------------------------------------------------
    h = b.rmsnorm(im, f"{p}.attn_norm", xin)
    b.sync(Unit.VECTOR)
    xq, e = b.operand(im, "qkv_in", h, f"{p}.")
    b.sync(Unit.VECTOR)
    acc = b.product("qkv", xq, W["qkv"], e, _wide(im, "qkv_in"))
    b.sync(Unit.MATMUL)
    q_fmt = _I16 if _wide(im, "q") else _I8
    k_fmt = _I16 if _wide(im, "k") else _I8
    rq = im.dyadic(f"{p}.qkv.rq")
    parts = {}
    for name, c0, n, fmt in (("q", 0, hidden, q_fmt), ("k", hidden, kv, k_fmt),
                             ("v", hidden + kv, kv, _I8)):
        d = _select(rq, slice(c0, c0 + n))
        if name != "v":
            parts[name] = b.tensor(name, tokens, n, fmt)
            b.requant(b.cols(acc, c0, n), parts[name], d)
            continue
        for sq in seqs:                                      # v goes into each cache in place
            b.requant(b.rows(b.cols(acc, c0, n), sq.row0, sq.tokens),
                      b.rows(sq.v_cache, sq.start, sq.tokens), d)
    b.sync(Unit.VECTOR)
    rot_q = b.tensor("q.rot", tokens, hidden, q_fmt)
    for g in range(heads):
        b.vector(VecOp.ROTARY, b.cols(parts["q"], g * dh, dh), b.cols(rot_q, g * dh, dh),
                 res=trig)
    for g in range(kv_heads):                                # k after rotary: in place too
        for sq in seqs:
            b.vector(VecOp.ROTARY, b.cols(b.rows(parts["k"], sq.row0, sq.tokens), g * dh, dh),
                     b.cols(b.rows(sq.k_cache, sq.start, sq.tokens), g * dh, dh),
                     res=b.rows(trig, sq.row0, sq.tokens))
    b.sync(Unit.VECTOR)
    sm = im.dyadic(f"{p}.softmax")
    sm_m = np.broadcast_to(sm.multiplier, (heads,))
    sm_s = np.broadcast_to(sm.shift, (heads,))
    ctx_fmt = _I16 if _wide(im, "ctx") else _I8
    ctx = b.tensor("ctx", tokens, hidden, ctx_fmt)
    ctx_rq = im.dyadic(f"{p}.ctx.rq")
    wide_probs = _wide(im, "probs")
    for n_sq, sq in enumerate(seqs):
        keys, tag = sq.start + sq.tokens, f"s{n_sq}." if batch else ""
        q_rows, ctx_rows = (b.rows(t, sq.row0, sq.tokens) for t in (rot_q, ctx))
        for hd in range(heads):
            g = nx.kv_head(hd, heads, kv_heads)
            qh, kg = b.cols(q_rows, hd * dh, dh), b.cols(sq.k_cache, g * dh, dh)
            vg = b.cols(sq.v_cache, g * dh, dh)
            scores = b.product(f"{tag}scores{hd}", qh, kg, None, _wide(im, "q"),
                               transposed=True)
            b.sync(Unit.MATMUL)
            probs = b.tensor(f"{tag}probs{hd}", sq.tokens, keys, _I16 if wide_probs else _U8)
            pe = b.raw(bytes(sq.tokens))
            b.vector(VecOp.SOFTMAX_WIDE if wide_probs else VecOp.SOFTMAX, scores, probs,
                     e_addr=pe, mult=int(sm_m[hd]), shift=int(sm_s[hd]), causal=1,
                     causal_offset=sq.start)
            b.sync(Unit.VECTOR)
            pv = b.product(f"{tag}pv{hd}", probs, vg, pe, wide_probs)
            b.sync(Unit.MATMUL)
            b.requant(pv, b.cols(ctx_rows, hd * dh, dh),
                      _select(ctx_rq, slice(hd * dh, (hd + 1) * dh)))
    b.sync(Unit.VECTOR)
    o = b.product("attn_out", ctx, W["attn_out"], None, _wide(im, "ctx"))
    b.sync(Unit.MATMUL)
    o32 = b.tensor("attn_out.rq", tokens, hidden, _I32)
    b.requant(o, o32, im.dyadic(f"{p}.attn_out.rq"))
    b.sync(Unit.VECTOR)
    h1 = b.tensor("h", tokens, hidden, _I32)
    b.vector(VecOp.RESIDUAL32, xin, h1, res=o32,
             res_shift=im.scalar(f"{p}.attn_out.res_shift"))
    b.sync(Unit.VECTOR)

    # --- the gated MLP ---------------------------------------------------------------------
    hn = b.rmsnorm(im, f"{p}.mlp_norm", h1)
    b.sync(Unit.VECTOR)
    xq, e = b.operand(im, "mlp_in", hn, f"{p}.")
    b.sync(Unit.VECTOR)
    gu = b.product("gate_up", xq, W["gate_up"], e, _wide(im, "mlp_in"))
    b.sync(Unit.MATMUL)
    wide_up = _wide(im, "up")
    if not wide_up:
        raise NotImplementedError("the decoder compiler maps the recipe's int16 up operand only")
    gate = b.tensor("gate", tokens, ffn, _I16)
    up = b.tensor("up", tokens, ffn, _I16)
    b.requant(b.cols(gu, 0, ffn), gate, im.dyadic(f"{p}.gate.rq"))
    b.requant(b.cols(gu, ffn, ffn), up, im.dyadic(f"{p}.up.rq"))
    b.sync(Unit.VECTOR)
    inner_fmt = _I16 if _wide(im, "inner") else _I8
    inner = b.tensor("inner", tokens, ffn, inner_fmt)
    ie = b.raw(bytes(tokens))
    d = im.dyadic(f"{p}.inner.rq")
    b.vector(VecOp.SILU_GATE, gate, inner, res=up, e_addr=ie,
             res_shift=nx.WIDE_LO_BITS if wide_up else 0,
             p_addr=b.raw(_vector_records(np.broadcast_to(d.multiplier, (ffn,)),
                                          np.broadcast_to(d.shift, (ffn,)))))
    b.sync(Unit.VECTOR)
    dn = b.product("down", inner, W["down"], ie, _wide(im, "inner"))
    b.sync(Unit.MATMUL)
    d32 = b.tensor("down.rq", tokens, hidden, _I32)
    b.requant(dn, d32, im.dyadic(f"{p}.down.rq"))
    b.sync(Unit.VECTOR)
    y = b.tensor("y", tokens, hidden, _I32)
    b.vector(VecOp.RESIDUAL32, h1, y, res=d32, res_shift=im.scalar(f"{p}.down.res_shift"))
    return y


#: Memory a backend other than isa has for each program beyond the resident weights, tables
#: and caches (the isa simulator's memory grows as a program needs).
SESSION_PROGRAM_BYTES = 96 << 20


class DecoderSession:
    """The whole decoder on one accelerator, one program per block: every layer's weights,
    the token table (the tied LM head), the rotary table and each layer's KV cache stay in the
    machine's memory; :meth:`logits` runs the tokens that follow the cached ones through a
    program per layer (the stream goes back to the host between them) and one for the final
    RMSNorm and the LM head, appending to the caches in place. The embedding lookup is done
    on the host (``golden.decoder_embed``), as MiniLM's is.

    ``backend``: ``"isa"`` (the instruction-set simulator modelling a build with the decoder's
    vector operations; estimated cycles) or ``"verilator"`` (the Verilated accelerator built
    with them, ``Sizing(decoder_ops=True)``: RTL cycles; its memory is the resident part plus
    :data:`SESSION_PROGRAM_BYTES`).

    ``sequences``: how many sequences the session holds (each its own KV caches);
    :meth:`logits_batch` runs all of them in one program per block, their tokens stacked as
    the rows of every projection (each weight read once for the batch), :meth:`logits` the
    one sequence of a session of one.

    ``cycles``: the backend's cycles so far; ``length``: the tokens cached (``lengths``: per
    sequence); ``programs``: the
    programs run; ``hazards``: unordered accesses the isa simulator saw (none expected; always
    empty on other backends)."""

    def __init__(self, im: IntegerModel, array: int = 16, context: int = 512,
                 backend: str = "isa", sequences: int = 1):
        from .driver import Accelerator
        from .isa_sim import IsaBackend
        a = im.arch
        a.require_decoder("the decoder compiler")
        if not 1 <= sequences <= MAX_SEQUENCES:
            raise ValueError(f"DecoderSession: 1..{MAX_SEQUENCES} sequences, got {sequences}")
        self.im, self.context = im, min(context, 512, a.max_tokens)
        self.sequences = sequences
        T = im.tensors
        b = _Builder(MachineConfig(array))
        self.W = [{name: b.tensor(f"L{i}.{name}", *T[f"L{i}.{name}.weight"].shape, _I8,
                                  T[f"L{i}.{name}.weight"])
                   for name in ("qkv", "attn_out", "gate_up", "down")} for i in range(a.layers)]
        head = T["emb.tokens" if a.output.tied else "lm_head.weight"]
        self.head = b.tensor("lm_head", *head.shape, _I8, head)
        cos, sin = nx.rope_tables(a.block.attention.rope_theta, a.head_dim, a.max_tokens)
        n = self.context
        self._trig_rows = np.concatenate([cos[:n], sin[:n]], axis=1)
        self.trig = b.tensor("cos|sin", n, a.head_dim, _I16, self._trig_rows)
        kv = a.kv_heads * a.head_dim
        # Each sequence's caches: self.k[s][i], self.v[s][i] (layer i).
        self.k = [[b.tensor(f"s{s} L{i} k cache", n, kv, _I8) for i in range(a.layers)]
                  for s in range(sequences)]
        self.v = [[b.tensor(f"s{s} L{i} v cache", n, kv, _I8) for i in range(a.layers)]
                  for s in range(sequences)]
        b.image += bytes(-len(b.image) % isa.WINDOW_ALIGN)
        self.b, self.scratch = b, len(b.image)
        if backend == "isa":
            self.backend = IsaBackend(b.config, self.scratch + (16 << 20), decoder_ops=True)
        elif backend == "verilator":
            from celosia.sim.verilator_accel import VerilatorBackend
            self.backend = VerilatorBackend(b.config, self.scratch + SESSION_PROGRAM_BYTES,
                                            vector=True, decoder_ops=True)
        else:
            raise ValueError(f"DecoderSession: backend {backend!r} is not isa or verilator")
        self.accel = Accelerator(self.backend)
        self.backend.write_memory(0, bytes(b.image))
        #: Tokens cached, per sequence.
        self.lengths = [0] * sequences
        self.cycles = 0
        self.programs = 0
        #: Unordered accesses the simulator saw in any program (a correct one has none).
        self.hazards: list[str] = []

    def close(self) -> None:
        """Free the backend (a Verilated model); the session is not usable after."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def _run(self, build) -> np.ndarray:
        """Build one program in the scratch memory (``build(builder)`` returns the tensor to
        read back), run it, return that tensor's values."""
        from .driver import AcceleratorError
        from .isa_sim import IsaBackend
        b, be = self.b, self.backend
        del b.image[self.scratch:]
        b.code = []
        out = build(b)
        b.code.append(isa.halt())
        b.image += bytes(-len(b.image) % INSTR_BYTES)
        prog = b.raw(b"".join(ins.encode() for ins in b.code))
        b.image += bytes(-len(b.image) % isa.WINDOW_ALIGN)
        end = len(b.image)
        if isinstance(be, IsaBackend):
            m = be.machine
            if end > len(m.mem):
                m.mem = np.concatenate([m.mem, np.zeros(end - len(m.mem) + (16 << 20), np.uint8)])
        elif end > self.scratch + SESSION_PROGRAM_BYTES:
            raise RuntimeError(f"a decoder program needs {end - self.scratch:,} bytes beyond the "
                               f"resident ones; the {be.name} backend has "
                               f"{SESSION_PROGRAM_BYTES:,} (SESSION_PROGRAM_BYTES)")
        be.write_memory(self.scratch, bytes(b.image[self.scratch:]))
        be.write_csr("WIN_BASE", 0)
        be.write_csr("WIN_SIZE", end)
        self.accel.start(prog)
        try:
            self.accel.wait()
        except AcceleratorError as exc:
            st = exc.status
            raise RuntimeError(f"a decoder program stopped with {st.error.name} at "
                               f"{st.error_pc:#x}: {st.detail}") from None
        self.cycles += self.accel.counters()["cycles"]
        self.programs += 1
        if isinstance(be, IsaBackend):
            self.hazards += be.machine.hazards      # the start cleared them
        return out.unpack(be.read_memory(out.addr, out.nbytes))

    @property
    def length(self) -> int:
        """Tokens cached (of the first sequence)."""
        return self.lengths[0]

    def logits(self, ids, last_only: bool = False, progress=None) -> np.ndarray:
        """int32 logits (tokens x vocab) of ``ids`` following the cached tokens, as
        golden.decoder_logits with a cache gives them; ``last_only``: the last token's row
        only (1 x vocab), the LM head run on that token alone (what generation needs);
        ``progress(done, total)`` is called after each of the call's programs. A session of
        one sequence."""
        if self.sequences != 1:
            raise ValueError(f"DecoderSession.logits: a session of {self.sequences} sequences "
                             f"takes logits_batch")
        return self.logits_batch([ids], last_only, progress)[0]

    def logits_batch(self, ids, last_only: bool = False, progress=None) -> list:
        """:meth:`logits` of every sequence at once: ``ids[s]`` (one or more tokens) follow
        sequence ``s``'s cached tokens; one program per layer runs all of them, their rows
        stacked, so each weight is read once for the whole batch (attention runs a sequence
        at a time against its own cache). Returns each sequence's logits, bit for bit those
        of a session of that sequence alone. A sequence given no tokens takes no step (its
        logits: 0 rows); at least one must have some."""
        from .golden import decoder_embed
        im, a = self.im, self.im.arch
        total = a.layers + 1
        if len(ids) != self.sequences:
            raise ValueError(f"DecoderSession: ids for {self.sequences} sequences, got "
                             f"{len(ids)}")
        ids = [np.asarray(t, dtype=np.int64).reshape(-1) for t in ids]
        # (sequence, first row, rows, cached tokens) of each sequence that takes a step.
        seq_rows, row0 = [], 0
        for s, t in enumerate(ids):
            start = self.lengths[s]
            if start + len(t) > self.context:
                raise ValueError(f"{start + len(t)} tokens exceed the isa decoder's context of "
                                 f"{self.context} (the softmax's longest row)")
            if len(t):
                seq_rows.append((s, row0, len(t), start))
                row0 += len(t)
        if not seq_rows:
            raise ValueError("DecoderSession: no sequence has a token to run")
        tokens = row0
        x = decoder_embed(im, np.concatenate(ids))
        one = len(seq_rows) == 1
        trig = None if one else np.concatenate(
            [self._trig_rows[start:start + n] for _, _, n, start in seq_rows])
        for i in range(a.layers):
            def block(b, i=i, x=x):
                xin = b.tensor("x", tokens, a.hidden, _I32, x)
                seqs = [_Seq(r0, n, start, b.rows(self.k[s][i], 0, start + n),
                             b.rows(self.v[s][i], 0, start + n))
                        for s, r0, n, start in seq_rows]
                rows = (b.rows(self.trig, seq_rows[0][3], tokens) if one
                        else b.tensor("cos|sin", tokens, a.head_dim, _I16, trig))
                return _emit_block(b, im, i, xin, seqs, self.W[i], rows)
            x = self._run(block)
            if progress is not None:
                progress(i + 1, total)

        last = [r0 + n - 1 for _, r0, n, _ in seq_rows]
        rows = x[last] if last_only else x

        def head(b):
            xin = b.tensor("x", len(rows), a.hidden, _I32, rows)
            h = b.rmsnorm(im, "final_norm", xin)
            b.sync(Unit.VECTOR)
            xq, e = b.operand(im, "head_in", h, "")
            b.sync(Unit.VECTOR)
            acc = b.product("head", xq, self.head, e, _wide(im, "head_in"))
            b.sync(Unit.MATMUL)
            out = b.tensor("logits", len(rows), self.head.cols, _I32)
            b.requant(acc, out, im.dyadic("lm_head.rq"))
            return out
        logits = self._run(head)
        if progress is not None:
            progress(total, total)
        out = [np.zeros((0, self.head.cols), dtype=logits.dtype)] * self.sequences
        for k, (s, r0, n, _) in enumerate(seq_rows):
            self.lengths[s] += n
            out[s] = logits[k:k + 1] if last_only else logits[r0:r0 + n]
        return out


def decode_roofline(im: IntegerModel, array: int = 16) -> dict:
    """The memory roofline of one decode step on an ``array`` x ``array`` build: every weight
    the step multiplies by (each layer's q|k|v, output, gate|up and down projections and the
    LM head, all int8) read once from memory, at the memory port's bytes a cycle
    (``MachineConfig(array).port_bytes``). The KV cache, the vector operations' records and
    the activations are left out, so no mapping reaches it.

    ``weight_bytes``, ``port_bytes`` and ``cycles`` (weight_bytes / port_bytes, rounded up)."""
    a = im.arch
    a.require_decoder("the decode roofline")
    T = im.tensors
    names = [f"L{i}.{name}.weight" for i in range(a.layers)
             for name in ("qkv", "attn_out", "gate_up", "down")]
    names.append("emb.tokens" if a.output.tied else "lm_head.weight")
    weight_bytes = sum(int(np.asarray(T[n]).nbytes) for n in names)
    port = MachineConfig(array).port_bytes
    return {"weight_bytes": weight_bytes, "port_bytes": port, "cycles": -(-weight_bytes // port)}

