"""Celosia's instruction set and host register map: the one definition hdl/ and sw/ share.

A program is a sequence of fixed-size instructions (``INSTR_BYTES`` bytes, little endian) in
the memory window, fetched from the program address the host writes into ``PROG_ADDR``.
Every instruction is one ``instruction_layout`` (an :mod:`amaranth.lib.data` struct): an 8-bit
opcode and a body whose meaning depends on it.

* ``MATMUL``: one matmul-engine command; the body *is* :func:`celosia.hdl.params.command_layout`,
  so the controller hands it to the engine unchanged.
* ``VECTOR``: one vector-unit batch of rows read from and written to memory (``vector_layout``).
* ``SYNC``: wait until every unit named in its mask has finished all its commands.
* ``HALT``: wait until every unit is idle, then stop (status DONE).

The same module describes the CSR block (``CSR_REGISTERS``), the error codes
(:class:`ErrorCode`), the vector-unit parameter record and the memory footprint of an
instruction (:func:`footprint`), which both the compiler (to place fences) and the simulators
(to bounds-check and to find missing fences) use. See docs/isa.md.

The plain-Python helpers (:class:`Instruction`, :func:`pack_fields`, :func:`unpack_fields`)
turn instructions into bytes and back; they take field offsets from the layouts, so the
software view cannot drift from the hardware's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from amaranth.hdl import Shape, signed, unsigned
from amaranth.lib import data
from amaranth.lib import enum as hdl_enum

from celosia.sw import numerics as nx

from . import params
from .params import ADDEND_BYTES, OUT_BYTES, PARAM_RECORD_BYTES, AddendMode, ErrorCode, OutFormat

__all__ = [
    "ISA_VERSION", "INSTR_BYTES", "INSTR_BITS", "WINDOW_ALIGN", "VEC_MAX_COLS", "RES_SHIFT_MAX",
    "SOFTMAX_WIDE_MAX_COLS", "WIDE_LO_MAX_ROWS", "ROTARY_MAX_COLS", "ROTARY_MAX_ROWS",
    "Opcode", "VecOp", "UNIT_OPS", "DECODER_OPS", "RTL_DECODER_OPS", "RTL_ALWAYS_OPS", "rtl_decoder_ops", "vec_op_name", "Unit", "ErrorCode",
    "VEC_PARAM_RECORD_BYTES", "VEC_PARAM_MULT_OFFSET", "VEC_PARAM_SHIFT_OFFSET",
    "VEC_PARAM_BIAS_OFFSET", "ENGINE_PARAM_DTYPE", "VEC_PARAM_DTYPE",
    "matmul_layout", "vector_layout", "sync_layout", "instruction_layout",
    "leaf_fields", "pack_fields", "unpack_fields", "Instruction", "MachineConfig",
    "Span", "footprint", "vec_uses_params", "vec_uses_rows_exponent", "vec_uses_residual",
    "VEC_SECOND_OPERAND_BYTES", "decoder_vector_checks",
    "Access", "Register", "CSR_REGISTERS", "CSR", "Ctrl", "Status", "CSR_BYTES", "ID_MAGIC",
]

ISA_VERSION = 1

#: Every instruction is this many bytes (a MATMUL body alone is 411 bits, so 32 bytes is too
#: small; 64 bytes is one beat of a 512-bit port and a cache line on most hosts).
INSTR_BYTES = 64
INSTR_BITS = 8 * INSTR_BYTES
#: The memory window's base and size are multiples of the widest memory port (128 bytes), so
#: a beat-aligned access is inside the window exactly when its bytes are.
WINDOW_ALIGN = 128
#: Longest vector row (``params.VEC_MAX_COLS``, which sizes the vector unit).
VEC_MAX_COLS = params.VEC_MAX_COLS
#: numerics.residual_add's shift range.
RES_SHIFT_MAX = nx.RES_SHIFT_MAX
#: Longest SOFTMAX_WIDE row (numerics.softmax's rows of up to 512).
SOFTMAX_WIDE_MAX_COLS = 512
#: Most rows of one WIDE_LO (the vector engine holds their exponents while it runs).
WIDE_LO_MAX_ROWS = 512
#: ROTARY's longest row (a head's width; the vector unit holds one row while it runs) and most
#: rows (the unit takes each row twice, in one command of at most 2**16 - 1 rows).
ROTARY_MAX_COLS = 256
ROTARY_MAX_ROWS = (1 << 15) - 1


class Opcode(enum.IntEnum):
    """Instruction opcodes. 0 is not an opcode, so running into zeroed memory traps."""
    HALT = 1
    MATMUL = 2
    VECTOR = 3
    SYNC = 4


class VecOp(hdl_enum.IntEnum, shape=4):
    """Operation of a VECTOR instruction (its 4-bit ``op`` field): every vector operation of
    the ISA, the encoder's and the decoder's, in one enum.

    ``x`` is the source row, after the optional residual pre-add
    ``x = residual_add(x, r, res_shift)``; ``out`` the range of ``dst_fmt``. The ``*_ROWS``
    operations add a per-row exponent output (numerics.requantize_rows). SOFTMAX, REQUANT_ROWS
    and GELU_ROWS write one uint8 exponent per row to ``e_addr`` (for SOFTMAX, the
    probabilities' row exponent; 0 with numerics whose softmax has none).

    The values below 8 (:data:`UNIT_OPS`) are the vector unit's own commands
    (:data:`celosia.hdl.vector.VectorOp`, the unit's 3-bit command enum, is made from them).
    The others (:data:`DECODER_OPS`) run on one of them with a modifier of the unit's command:
    RESIDUAL32 and WIDE_SPLIT on the residual-add pass, SOFTMAX_WIDE and SOFTMAX_DITHER on the
    softmax with ``prob_wide`` or ``dither``, RMSNORM on the LayerNorm with ``rms``, SILU_GATE on
    REQUANT_ROWS with ``silu``, WIDE_LO on REQUANT with ``lo_shift``, ROTARY on RESIDUAL with
    ``rot``. A build with ``Sizing(decoder_ops=True)`` runs them all (:data:`RTL_DECODER_OPS`);
    every other build runs only :data:`RTL_ALWAYS_OPS` (SOFTMAX_DITHER, the encoder's) and
    stops on the rest with ``BAD_MODE``, as the isa simulator does for an op its
    ``decoder_ops`` set lacks. Value 7 stays free for the unit's next command. Each decoder op
    is one function of :mod:`celosia.sw.numerics` (docs/isa.md, "Decoder vector operations"):

    * RMSNORM: ``rmsnorm(x, gamma=P.mult, shift, out, eps=P[0].bias)``.
    * SILU_GATE: ``q, e = requantize_rows(round_shift(silu(x) * r, res_shift), P, out)`` with
      ``x`` the int16 gate and ``r`` the ``up`` operand read as int16 at ``res_addr``
      (``res_shift`` 0, or 8 for a wide up: numerics.gated_silu), saturated to int8 when
      ``res_shift`` is 0; e to ``e_addr``.
    * ROTARY: ``rotary(x, tables=r)`` for rows of one head (``cols`` = head width, even, at
      most :data:`ROTARY_MAX_COLS`; at most :data:`ROTARY_MAX_ROWS` rows), ``x`` int8, uint8
      or int16, ``r`` at ``res_addr`` holding each row's ``cos | sin`` (int16 Q14, head
      width / 2 each).
    * SOFTMAX_WIDE: SOFTMAX with 15-bit probabilities (prob_max 32767, for matmul_wide);
      ``causal``/``causal_offset`` as SOFTMAX's (the KV cache's offset); e to ``e_addr``.
    * WIDE_SPLIT: an int16 operand as two byte planes for the two passes of matmul_wide:
      ``x >> 8`` (int8) in rows 0..rows-1 of ``dst``, ``x & 255`` (uint8) in rows
      rows..2*rows-1 (after an optional residual pre-add, each plane is that byte of ``x``).
    * WIDE_LO: the low pass's rescale, ``requantize(x, (2**14, 22 + e[i]), int32)`` per row,
      ``e`` (uint8, one per row, clamped to ROW_EXP_MAX) read from ``e_addr``; at most
      :data:`WIDE_LO_MAX_ROWS` rows.
    * RESIDUAL32: ``saturate(residual_add(x, r, res_shift), out)`` with an int32 ``r``.
    * SOFTMAX_DITHER: SOFTMAX with its probabilities rounded at ordered-dither thresholds
      (``softmax(..., dither=True)``): an encoder's softmax that keeps the mass of a long flat
      tail behind one dominant key (docs/numerics.md, "Numerics under stress"); e to ``e_addr``.
    """
    SOFTMAX = 0        #: p, e = softmax(x, Dyadic(mult, shift), causal_offset if causal); saturate(p, out)
    LAYERNORM = 1      #: layernorm(x, gamma[j], beta[j], shift, out)
    GELU = 2           #: requantize(gelu(requantize(x, P[j], INT16)), Dyadic(mult, shift), out, zp)
    REQUANT = 3        #: requantize(x, P[j], out, zero_point)
    RESIDUAL = 4       #: saturate(residual_add(x, r, res_shift), out)
    REQUANT_ROWS = 5   #: q, e = requantize_rows(x, P[j], out); e (uint8) to e_addr
    GELU_ROWS = 6      #: q, e = requantize_rows(gelu(saturate(x, INT16)), P[j], out)
    RMSNORM = 8
    SILU_GATE = 9
    ROTARY = 10
    SOFTMAX_WIDE = 11
    WIDE_SPLIT = 12
    WIDE_LO = 13
    RESIDUAL32 = 14
    SOFTMAX_DITHER = 15


#: The vector unit's own commands (3 bits in the unit).
UNIT_OPS = frozenset(op for op in VecOp if op < 8)
#: The operations that run on a unit command with a modifier (the decoder's, and the
#: encoder's dithered softmax): the isa simulator's ``decoder_ops``.
DECODER_OPS = frozenset(VecOp) - UNIT_OPS


#: The operations of :data:`DECODER_OPS` every build of the RTL runs, with or without
#: ``Sizing.decoder_ops``: the encoder's dithered softmax (the default recipe's softmax).
RTL_ALWAYS_OPS = frozenset({VecOp.SOFTMAX_DITHER})
#: The decoder operations the RTL implements with ``Sizing(decoder_ops=True)`` (a superset of
#: :data:`RTL_ALWAYS_OPS`).
RTL_DECODER_OPS = frozenset({VecOp.RMSNORM, VecOp.SOFTMAX_WIDE, VecOp.WIDE_SPLIT,
                             VecOp.RESIDUAL32, VecOp.SILU_GATE, VecOp.WIDE_LO,
                             VecOp.ROTARY}) | RTL_ALWAYS_OPS


def rtl_decoder_ops(decoder_ops: bool) -> frozenset:
    """The :data:`DECODER_OPS` an RTL build runs: all of :data:`RTL_DECODER_OPS` with
    ``Sizing.decoder_ops``, else :data:`RTL_ALWAYS_OPS`; every other op of
    :data:`DECODER_OPS` stops it with ``BAD_MODE`` (with the values no op has)."""
    return RTL_DECODER_OPS if decoder_ops else RTL_ALWAYS_OPS


def vec_op_name(op: int) -> str:
    """The name of a VECTOR op value (a number when it is none)."""
    return VecOp(op).name if op in VecOp._value2member_map_ else str(op)


class Unit(enum.IntFlag):
    """Units a SYNC waits for (its ``units`` mask)."""
    MATMUL = 1
    VECTOR = 2
    ALL = 3




# --- Parameter records ------------------------------------------------------------------------

#: Vector-unit per-column parameter record: LayerNorm gamma / requantisation multiplier (int32
#: at 0), shift (uint8 at 4), three pad bytes, LayerNorm beta (int64 at 8: |beta| < 2**40).
VEC_PARAM_RECORD_BYTES = 16
VEC_PARAM_MULT_OFFSET = 0
VEC_PARAM_SHIFT_OFFSET = 4
VEC_PARAM_BIAS_OFFSET = 8


def _record_dtype(spec: dict, itemsize: int):
    import numpy as np
    names = list(spec)
    return np.dtype({"names": names, "formats": [spec[n][1] for n in names],
                     "offsets": [spec[n][0] for n in names], "itemsize": itemsize})


#: NumPy views of the two record formats (little endian).
ENGINE_PARAM_DTYPE = _record_dtype({"bias": (params.PARAM_BIAS_OFFSET, "<i4"),
                                    "mult": (params.PARAM_MULT_OFFSET, "<u2"),
                                    "shift": (params.PARAM_SHIFT_OFFSET, "u1")},
                                   PARAM_RECORD_BYTES)
VEC_PARAM_DTYPE = _record_dtype({"mult": (VEC_PARAM_MULT_OFFSET, "<i4"),
                                 "shift": (VEC_PARAM_SHIFT_OFFSET, "u1"),
                                 "bias": (VEC_PARAM_BIAS_OFFSET, "<i8")},
                                VEC_PARAM_RECORD_BYTES)


# --- Instruction layouts ----------------------------------------------------------------------

_ADDR = unsigned(params.ADDR_BITS)


def matmul_layout() -> data.StructLayout:
    """The MATMUL body: the matmul engine's command, field for field."""
    return params.command_layout()


def vector_layout() -> data.StructLayout:
    """The VECTOR body: one batch of ``rows`` rows of ``cols`` columns.

    Element (i, j) of the source is at ``src_addr + i * src_stride + j * bytes(src_fmt)``;
    the residual (int16), the destination and the source alike with their own address, stride
    and format. ``p_addr``: one VEC_PARAM_RECORD_BYTES record per column. ``e_addr``: one
    uint8 exponent per row (``*_ROWS`` operations).
    """
    return data.StructLayout({
        "op": unsigned(4),                     # VecOp
        "rows": unsigned(params.DIM_BITS),
        "cols": unsigned(params.DIM_BITS),
        "src_addr": _ADDR, "src_stride": _ADDR,
        "dst_addr": _ADDR, "dst_stride": _ADDR,
        "res_addr": _ADDR, "res_stride": _ADDR,
        "p_addr": _ADDR,
        "e_addr": _ADDR,
        "src_fmt": unsigned(2),                # OutFormat of the source elements
        "dst_fmt": unsigned(2),                # OutFormat of the results (and their range)
        "add_residual": unsigned(1),           # x = residual_add(x, r, res_shift) first
        "res_shift": unsigned(5),              # 0..RES_SHIFT_MAX
        "causal": unsigned(1),                 # softmax: mask j > i + causal_offset
        "causal_offset": signed(params.DIM_BITS + 1),
        "mult": unsigned(nx.MULT_BITS),        # softmax scale / GELU output multiplier
        "shift": unsigned(params.SHIFT_BITS),  # softmax / GELU output shift, LayerNorm shift
        "zero_point": signed(params.ZERO_POINT_BITS),
    })


def sync_layout() -> data.StructLayout:
    return data.StructLayout({"units": unsigned(8)})   # Unit mask; 0 is a no-op


def instruction_layout() -> data.StructLayout:
    """One instruction: ``opcode`` (8 bits), ``body`` (a union), reserved bits to INSTR_BITS.
    Reserved bits, and body bits past the used member, are written 0 and ignored."""
    body = data.UnionLayout({"matmul": matmul_layout(), "vector": vector_layout(),
                             "sync": sync_layout()})
    used = 8 + body.size
    assert used <= INSTR_BITS, f"instruction needs {used} bits"
    return data.StructLayout({"opcode": unsigned(8), "body": body,
                              "reserved": unsigned(INSTR_BITS - used)})


_BODY = {Opcode.MATMUL: "matmul", Opcode.VECTOR: "vector", Opcode.SYNC: "sync"}


def leaf_fields(layout, offset: int = 0) -> dict[str, tuple[int, int, bool]]:
    """Flatten a struct layout into ``{name: (bit offset, width, signed)}`` (names of nested
    structs are not prefixed; they must be unique)."""
    out = {}
    for name, f in layout:
        if isinstance(f.shape, data.Layout):
            out.update(leaf_fields(f.shape, offset + f.offset))
        else:
            shape = Shape.cast(f.shape)
            out[name] = (offset + f.offset, shape.width, shape.signed)
    return out


def pack_fields(fields_of: dict, values: dict) -> int:
    """Pack ``values`` (missing fields are 0) by the ``leaf_fields`` map; range-checked."""
    word = 0
    for name, value in values.items():
        try:
            off, width, is_signed = fields_of[name]
        except KeyError:
            raise KeyError(f"unknown instruction field {name!r}") from None
        value = int(value)
        lo, hi = ((-(1 << (width - 1)), (1 << (width - 1)) - 1) if is_signed
                  else (0, (1 << width) - 1))
        if not lo <= value <= hi:
            raise ValueError(f"instruction field {name}={value} does not fit {width} bits"
                             f"{' signed' if is_signed else ''}")
        word |= (value & ((1 << width) - 1)) << off
    return word


def unpack_fields(fields_of: dict, word: int) -> dict[str, int]:
    out = {}
    for name, (off, width, is_signed) in fields_of.items():
        v = (word >> off) & ((1 << width) - 1)
        if is_signed and v >> (width - 1):
            v -= 1 << width
        out[name] = v
    return out


class _Fields:
    """Leaf-field maps of each body, built once."""
    _cache: dict | None = None

    @classmethod
    def get(cls) -> dict:
        if cls._cache is None:
            layout = instruction_layout()
            body = layout["body"]
            base = body.offset
            cls._cache = {
                "opcode": (layout["opcode"].offset, 8, False),
                Opcode.MATMUL: leaf_fields(matmul_layout(), base),
                Opcode.VECTOR: leaf_fields(vector_layout(), base),
                Opcode.SYNC: leaf_fields(sync_layout(), base),
                Opcode.HALT: {},
            }
        return cls._cache


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction: the opcode (an int, so illegal ones can be represented) and
    the body's fields (every field of the body, 0 when not given)."""
    opcode: int
    fields: dict = field(default_factory=dict)

    @classmethod
    def make(cls, opcode: Opcode, **values) -> "Instruction":
        fmap = _Fields.get()[Opcode(opcode)]
        pack_fields(fmap, values)            # range check now, not at encode time
        full = {name: 0 for name in fmap}
        full.update({k: int(v) for k, v in values.items()})
        return cls(int(opcode), full)

    def encode(self) -> bytes:
        fm = _Fields.get()
        word = self.opcode & 0xFF
        if self.opcode in fm:
            word |= pack_fields(fm[self.opcode], self.fields)
        return word.to_bytes(INSTR_BYTES, "little")

    @classmethod
    def decode(cls, raw: bytes) -> "Instruction":
        if len(raw) != INSTR_BYTES:
            raise ValueError(f"an instruction is {INSTR_BYTES} bytes, got {len(raw)}")
        word = int.from_bytes(raw, "little")
        opcode = word & 0xFF
        fm = _Fields.get()
        fields = unpack_fields(fm[opcode], word) if opcode in (o.value for o in Opcode) else {}
        return cls(opcode, fields)

    def __getattr__(self, name):
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None

    def __str__(self) -> str:
        try:
            name = Opcode(self.opcode).name
        except ValueError:
            return f"<illegal opcode {self.opcode:#x}>"
        shown = ", ".join(f"{k}={v:#x}" if "addr" in k else f"{k}={v}"
                          for k, v in self.fields.items() if v and k != "op")
        if self.opcode == Opcode.VECTOR:
            op = self.fields.get("op", 0)
            name += "." + vec_op_name(op)
        return f"{name} {shown}"


def halt() -> Instruction:
    return Instruction.make(Opcode.HALT)


def sync(units: Unit) -> Instruction:
    return Instruction.make(Opcode.SYNC, units=int(units))


def matmul(**fields) -> Instruction:
    return Instruction.make(Opcode.MATMUL, **fields)


def vector(**fields) -> Instruction:
    return Instruction.make(Opcode.VECTOR, **fields)


__all__ += ["halt", "sync", "matmul", "vector"]


# --- Machine configuration and memory footprints -------------------------------------------------

@dataclass(frozen=True)
class MachineConfig:
    """Build parameters a program depends on (CSR ``CONFIG``): array size N, port width W."""
    array: int = params.DEFAULT_ARRAY
    port_bytes: int | None = None

    def __post_init__(self):
        if self.port_bytes is None:
            object.__setattr__(self, "port_bytes", params.default_port_bytes(self.array))
        params.check_config(self.array, self.port_bytes)


@dataclass(frozen=True)
class Span:
    """Bytes ``[start, end)`` a strided access covers (rows x row_bytes at a stride)."""
    start: int
    end: int

    @classmethod
    def strided(cls, addr: int, rows: int, stride: int, row_bytes: int) -> "Span":
        return cls(addr, addr + (rows - 1) * stride + row_bytes)

    def overlaps(self, other: "Span") -> bool:
        return self.start < other.end and other.start < self.end


def decoder_vector_checks(op, rows, cols, src_fmt, dst_fmt, add_residual, res_shift) -> dict:
    """What the RTL's decoder build adds to a VECTOR's operand uses and checks (the
    controller's and the vector engine's one definition, isa_sim's rules), as Amaranth
    expressions of the instruction's fields:

    ``is``: op name -> "the op is it"; ``use_res``: a second operand at ``res_addr``;
    ``use_params``: records; ``writes_e``/``reads_e``: row exponents at ``e_addr``;
    ``shift_ops``: ``shift`` is checked; ``bad_shape``, ``bad_mode`` (the operand formats,
    ``add_residual`` where ``res_addr`` is a second operand), ``bad_param``."""
    d = VecOp
    is_ = {o.name: op == o for o in (d.RESIDUAL32, d.WIDE_SPLIT, d.SOFTMAX_WIDE, d.RMSNORM,
                                     d.SILU_GATE, d.WIDE_LO, d.ROTARY)}
    r32, split, smw, rms = is_["RESIDUAL32"], is_["WIDE_SPLIT"], is_["SOFTMAX_WIDE"], is_["RMSNORM"]
    silu, wlo, rot = is_["SILU_GATE"], is_["WIDE_LO"], is_["ROTARY"]
    fmt = OutFormat
    return {
        "is": is_,
        "use_res": r32 | silu | rot,
        "use_params": rms | silu,
        "writes_e": smw | silu,
        "reads_e": wlo,
        "shift_ops": smw | rms,
        "bad_shape": ((smw & (cols > SOFTMAX_WIDE_MAX_COLS)) | (rms & (cols > nx.RMS_MAX_COLS))
                      | (wlo & (rows > WIDE_LO_MAX_ROWS))
                      | (rot & (cols[0] | (cols > ROTARY_MAX_COLS) | (rows > ROTARY_MAX_ROWS)))),
        "bad_mode": ((split & ((src_fmt != fmt.INT16) | (dst_fmt != fmt.INT8)))
                     | ((r32 | silu | rot) & add_residual)
                     | (silu & (src_fmt != fmt.INT16))
                     | (wlo & (dst_fmt != fmt.INT32))
                     | (rot & (src_fmt == fmt.INT32))),
        "bad_param": silu & (res_shift != 0) & (res_shift != nx.WIDE_LO_BITS),
    }


def vec_uses_params(op: int) -> bool:
    return op in (VecOp.LAYERNORM, VecOp.GELU, VecOp.REQUANT, VecOp.REQUANT_ROWS, VecOp.GELU_ROWS,
                  VecOp.RMSNORM, VecOp.SILU_GATE)


def vec_uses_rows_exponent(op: int) -> bool:
    """Whether the op writes one uint8 exponent per row to ``e_addr``."""
    return op in (VecOp.SOFTMAX, VecOp.REQUANT_ROWS, VecOp.GELU_ROWS, VecOp.SILU_GATE,
                  VecOp.SOFTMAX_WIDE, VecOp.SOFTMAX_DITHER)


#: Decoder ops whose second operand (at ``res_addr``) is not a residual pre-add, and its
#: element bytes.
VEC_SECOND_OPERAND_BYTES = {VecOp.SILU_GATE: 2, VecOp.ROTARY: 2,
                            VecOp.RESIDUAL32: 4}


def vec_uses_residual(f: dict) -> bool:
    return (f["op"] == VecOp.RESIDUAL or f["op"] in VEC_SECOND_OPERAND_BYTES
            or bool(f["add_residual"]))


def footprint(ins: Instruction) -> tuple[list[tuple[str, Span, int, int]], list[tuple[str, Span, int, int]]]:
    """Reads and writes of a MATMUL or VECTOR as ``(name, span, address, stride)`` lists
    (empty for other instructions). Shapes are taken as given (not validated here)."""
    f = ins.fields
    reads, writes = [], []
    if ins.opcode == Opcode.MATMUL:
        m, k, n = f["m"], f["k"], f["n"]
        reads.append(("a", Span.strided(f["a_addr"], m, f["a_stride"], k), f["a_addr"], f["a_stride"]))
        if f["b_transposed"]:
            reads.append(("b", Span.strided(f["b_addr"], n, f["b_stride"], k), f["b_addr"], f["b_stride"]))
        else:
            reads.append(("b", Span.strided(f["b_addr"], k, f["b_stride"], n), f["b_addr"], f["b_stride"]))
        if f["use_params"]:
            reads.append(("p", Span(f["p_addr"], f["p_addr"] + n * PARAM_RECORD_BYTES), f["p_addr"], 0))
        if f["addend"] in (AddendMode.ACC32, AddendMode.RESIDUAL16):
            db = ADDEND_BYTES[AddendMode(f["addend"])]
            reads.append(("d", Span.strided(f["d_addr"], m, f["d_stride"], n * db), f["d_addr"], f["d_stride"]))
        if f["row_shift"]:
            reads.append(("e", Span(f["e_addr"], f["e_addr"] + m), f["e_addr"], 0))
        ob = OUT_BYTES[OutFormat(f["out_fmt"])] if f["requant"] else 4
        writes.append(("c", Span.strided(f["c_addr"], m, f["c_stride"], n * ob), f["c_addr"], f["c_stride"]))
    elif ins.opcode == Opcode.VECTOR:
        rows, cols, op = f["rows"], f["cols"], f["op"]
        sb, db = OUT_BYTES[OutFormat(f["src_fmt"])], OUT_BYTES[OutFormat(f["dst_fmt"])]
        reads.append(("src", Span.strided(f["src_addr"], rows, f["src_stride"], cols * sb),
                      f["src_addr"], f["src_stride"]))
        if vec_uses_residual(f):
            rb = VEC_SECOND_OPERAND_BYTES.get(op, 2)
            reads.append(("res", Span.strided(f["res_addr"], rows, f["res_stride"], cols * rb),
                          f["res_addr"], f["res_stride"]))
        if vec_uses_params(op):
            reads.append(("p", Span(f["p_addr"], f["p_addr"] + cols * VEC_PARAM_RECORD_BYTES), f["p_addr"], 0))
        if op == VecOp.WIDE_LO:
            reads.append(("e", Span(f["e_addr"], f["e_addr"] + rows), f["e_addr"], 0))
        out_rows = 2 * rows if op == VecOp.WIDE_SPLIT else rows
        writes.append(("dst", Span.strided(f["dst_addr"], out_rows, f["dst_stride"], cols * db),
                       f["dst_addr"], f["dst_stride"]))
        if vec_uses_rows_exponent(op):
            writes.append(("e", Span(f["e_addr"], f["e_addr"] + rows), f["e_addr"], 0))
    return reads, writes


# --- Host interface: the CSR block ------------------------------------------------------------

class Access(enum.Enum):
    RO = "ro"      #: read only
    RW = "rw"      #: read/write
    WO = "wo"      #: write only (reads 0); writing 1 to a bit triggers it


@dataclass(frozen=True)
class Register:
    """One 32-bit register of the CSR block at byte ``offset``; ``fields`` name bit ranges
    ``{name: (lsb, width)}`` (a register without fields is one 32-bit value)."""
    name: str
    offset: int
    access: Access
    doc: str
    fields: dict = field(default_factory=dict)

    def layout(self) -> data.StructLayout:
        """The register's fields as an amaranth layout (32 bits)."""
        pos, members = 0, {}
        for name, (lsb, width) in sorted(self.fields.items(), key=lambda kv: kv[1][0]):
            if lsb > pos:
                members[f"_pad{pos}"] = unsigned(lsb - pos)
            members[name] = unsigned(width)
            pos = lsb + width
        if pos < 32:
            members[f"_pad{pos}"] = unsigned(32 - pos)
        return data.StructLayout(members) if self.fields else data.StructLayout({"value": unsigned(32)})

    def get(self, word: int, name: str) -> int:
        lsb, width = self.fields[name]
        return (word >> lsb) & ((1 << width) - 1)

    def make(self, **values) -> int:
        word = 0
        for name, v in values.items():
            lsb, width = self.fields[name]
            if not 0 <= int(v) < (1 << width):
                raise ValueError(f"{self.name}.{name}={v} does not fit {width} bits")
            word |= int(v) << lsb
        return word


#: "CELO" in ASCII: the ID register's value, so a driver knows it talks to this block.
ID_MAGIC = 0x43454C4F
CSR_BYTES = 4

CSR_REGISTERS = (
    Register("ID", 0x00, Access.RO, "ID_MAGIC"),
    Register("CONFIG", 0x04, Access.RO, "build parameters the compiler needs",
             {"isa_version": (0, 8), "array": (8, 8), "port_bytes": (16, 8),
              "instr_bytes": (24, 8)}),
    Register("CTRL", 0x08, Access.WO, "start a program at PROG_ADDR; abort; clear counters",
             {"start": (0, 1), "abort": (1, 1), "clear_counters": (2, 1)}),
    Register("STATUS", 0x0C, Access.RO, "state of the controller and the units",
             {"busy": (0, 1), "done": (1, 1), "error": (2, 1),
              "matmul_busy": (3, 1), "vector_busy": (4, 1)}),
    Register("ERROR", 0x10, Access.RO, "ErrorCode of the last stop (0 = OK)"),
    Register("ERROR_PC", 0x14, Access.RO, "address of the instruction that failed"),
    Register("PROG_ADDR", 0x18, Access.RW, "address of the first instruction"),
    Register("PC", 0x1C, Access.RO, "address of the instruction being executed"),
    Register("WIN_BASE", 0x20, Access.RW, "first byte of the memory window (WINDOW_ALIGN multiple)"),
    Register("WIN_SIZE", 0x24, Access.RW, "bytes in the memory window (WINDOW_ALIGN multiple)"),
    Register("CYCLES_LO", 0x28, Access.RO, "cycles since start, low word (latches the high word)"),
    Register("CYCLES_HI", 0x2C, Access.RO, "cycles since start, high word"),
    Register("INSTRET", 0x30, Access.RO, "instructions retired"),
    Register("MATMUL_BUSY", 0x34, Access.RO, "cycles the matmul engine was busy"),
    Register("VECTOR_BUSY", 0x38, Access.RO, "cycles the vector unit was busy"),
    Register("SYNC_STALL", 0x3C, Access.RO, "cycles the controller waited in SYNC or HALT"),
    Register("MATMUL_COUNT", 0x40, Access.RO, "MATMUL instructions retired"),
    Register("VECTOR_COUNT", 0x44, Access.RO, "VECTOR instructions retired"),
    Register("MEM_READS", 0x48, Access.RO,
             "memory read beats (CONFIG.port_bytes bytes each) since start"),
    Register("MEM_WRITES", 0x4C, Access.RO, "memory write beats since start"),
)


class _CSRMap:
    """``CSR.STATUS`` etc.: the registers by name."""

    def __init__(self, regs):
        self._regs = {r.name: r for r in regs}
        offsets = [r.offset for r in regs]
        assert len(set(offsets)) == len(offsets) and all(o % CSR_BYTES == 0 for o in offsets)

    def __getattr__(self, name) -> Register:
        try:
            return self._regs[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self):
        return iter(self._regs.values())

    def by_offset(self, offset: int) -> Register | None:
        return next((r for r in self._regs.values() if r.offset == offset), None)


CSR = _CSRMap(CSR_REGISTERS)
Ctrl = CSR.CTRL
Status = CSR.STATUS
