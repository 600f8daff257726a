"""Hardware facts of the matmul engine shared by hdl/, sim/ and sw/.

Everything a compiler or a test needs to lay out a matmul in memory for the engine lives here:
the command word, the per-column parameter record, the output and addend formats and the
alignment rules. hdl/ builds its ports from these definitions and sw/ packs commands with them,
so the two cannot drift.

Memory layout contract (all addresses are byte addresses):

* The memory port moves ``port_bytes`` (W) bytes per beat; W is a power of two, 4..128.
* Every matrix is row-major with a row stride that is a multiple of W, and every base address
  is a multiple of W. Bytes between the end of a row and the stride are never used. A matrix
  may be a view into a wider one (a column slice: base = the wide matrix's base plus the
  slice's first byte, stride = the wide row stride) as long as that base and stride are
  multiples of W; see ``view_aligned``. The engine rejects anything else with BAD_ALIGN.
* A is M x K bytes (int8, or uint8 when ``a_unsigned``); B is K x N bytes (int8), or, with
  ``b_transposed``, N x K bytes (element (k, n) of B at ``b_addr + n * b_stride + k``), which
  is how a K operand of attention (tokens x head_dim, row-major) is used for Q @ K^T.
* With ``row_shift``, ``e_addr`` holds M uint8 exponents, one per row of A, contiguous (values
  above ``ROW_EXP_MAX`` are clamped to it); row i of A @ B is rounded and shifted right by
  e[i] (``numerics.matmul(..., row_shift=e)``) before the bias and the addend.
* C is M x N elements of ``out_bytes`` each (int8/uint8/int16/int32, little endian).
* The parameter region holds one ``PARAM_RECORD_BYTES`` record per output column:
  bias int32 at offset 0, requantisation multiplier uint16 at 4, shift uint8 at 6, one pad byte.
* The addend (optional) is M x N int32 (``ACC32``: accumulate into a previous C) or int16
  (``RESIDUAL16``: a residual added as ``residual << addend_shift``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from celosia.sw.numerics import (INT8, INT16, INT32, LN_MAX_COLS, MULT_BITS, ROW_EXP_MAX, SHIFT_MAX,
                                 UINT8, Range)

__all__ = [
    "ARRAY_MIN", "ARRAY_MAX", "DEFAULT_ARRAY", "K_MAX", "ADDR_BITS", "DIM_BITS", "K_BITS",
    "A_BITS", "B_BITS", "ACC_BITS", "SHIFT_BITS", "ZERO_POINT_BITS", "ROW_SHIFT_BITS",
    "PARAM_RECORD_BYTES", "PARAM_BIAS_OFFSET", "PARAM_MULT_OFFSET", "PARAM_SHIFT_OFFSET",
    "OutFormat", "AddendMode", "ErrorCode", "DONE_BITS", "MEM_TIMEOUT_CYCLES", "OUT_RANGE", "OUT_BYTES", "out_bytes_log2", "ADDEND_BYTES",
    "VEC_MAX_COLS",
    "default_port_bytes", "group_cols", "check_config", "command_layout", "pack_command",
    "view_aligned", "Sizing", "FULL", "SMALL",
]

#: Array sizes the engine is built and tested for (powers of two).
ARRAY_MIN, ARRAY_MAX = 2, 32
DEFAULT_ARRAY = 8
#: Longest reduction the operand scratchpads hold (MiniLM's FFN width is 1536).
K_MAX = 4096
#: Longest row of a VECTOR instruction (the vector unit's row FIFOs, parameter memory, column
#: counters and reduction widths are sized from it): LayerNorm's limit in the numerics, 4096,
#: so BERT-base's rows (768 hidden, 3072 FFN, softmax over up to 512 tokens) are one command.
VEC_MAX_COLS = LN_MAX_COLS
ADDR_BITS = 32
#: M and N are 16-bit fields (a sequence or a feature dimension below 65536).
DIM_BITS = 16
#: K is 1..K_MAX.
K_BITS = K_MAX.bit_length()
#: The array's A operand is 9 bits signed so that it carries int8 and uint8 alike.
A_BITS = 9
B_BITS = 8
ACC_BITS = 32
SHIFT_BITS = SHIFT_MAX.bit_length()
ZERO_POINT_BITS = 32
#: Per-row exponents 0..ROW_EXP_MAX (8) travel as 4-bit shifts.
ROW_SHIFT_BITS = ROW_EXP_MAX.bit_length()

PARAM_RECORD_BYTES = 8
PARAM_BIAS_OFFSET = 0
PARAM_MULT_OFFSET = 4
PARAM_SHIFT_OFFSET = 6
assert MULT_BITS <= 16


class OutFormat(enum.IntEnum):
    """Element format of the result C when requantising (raw results are always INT32)."""
    INT8 = 0
    UINT8 = 1
    INT16 = 2
    INT32 = 3


OUT_RANGE: dict[OutFormat, Range] = {
    OutFormat.INT8: INT8, OutFormat.UINT8: UINT8, OutFormat.INT16: INT16, OutFormat.INT32: INT32,
}
OUT_BYTES: dict[OutFormat, int] = {
    OutFormat.INT8: 1, OutFormat.UINT8: 1, OutFormat.INT16: 2, OutFormat.INT32: 4,
}


def out_bytes_log2(fmt):
    """log2 of :data:`OUT_BYTES` of an ``OutFormat`` value, as hardware (INT8/UINT8 0,
    INT16 1, INT32 2)."""
    from amaranth import Mux
    return Mux(fmt == OutFormat.INT32, 2, Mux(fmt == OutFormat.INT16, 1, 0))


class AddendMode(enum.IntEnum):
    """What the epilogue adds to the (biased) accumulator before requantising."""
    NONE = 0
    ACC32 = 1        # matmul(..., acc=C_prev): saturating int32 add
    RESIDUAL16 = 2   # residual_add(x, r, shift): saturating add of int16 r << shift


ADDEND_BYTES = {AddendMode.NONE: 0, AddendMode.ACC32: 4, AddendMode.RESIDUAL16: 2}


class ErrorCode(enum.IntEnum):
    """Why the accelerator stopped (CSR ``ERROR``); ``ERROR_PC`` holds the instruction's address.

    Checks happen in the order of the codes below (for one instruction, the first failing
    check is reported). An instruction that fails a check before ``BAD_PARAM`` writes nothing;
    one that fails ``BAD_PARAM`` (a value read from memory) may have written part of its own
    destination, never anything outside it."""
    OK = 0
    ILLEGAL_OPCODE = 1   #: opcode not in Opcode
    FETCH_FAULT = 2      #: instruction address not INSTR_BYTES-aligned or not inside the window
    BAD_WINDOW = 3       #: at start: base/size not WINDOW_ALIGN multiples, size 0, or past 2**addr_bits
    BAD_SHAPE = 4        #: a dimension 0 or too large, or a row stride shorter than its row
    BAD_ALIGN = 5        #: an address or stride used by the instruction is not a multiple of W
    BAD_MODE = 6         #: an inconsistent or unknown mode (requantise without parameters, ...)
    BAD_ADDRESS = 7      #: a byte the instruction would read or write is outside the window
    BAD_PARAM = 8        #: a scalar or a parameter record value outside its numerics range
    ABORTED = 9          #: the host wrote CTRL.abort
    UNSUPPORTED = 10     #: a VECTOR instruction on a build without the vector unit (at decode)
    MEM_READ_ERROR = 11  #: the memory answered a read with SLVERR or DECERR (RRESP)
    MEM_WRITE_ERROR = 12  #: the memory answered a write with SLVERR or DECERR (BRESP)
    MEM_TIMEOUT = 13     #: the memory stopped answering for MEM_TIMEOUT_CYCLES cycles


#: Width of the units' done codes (an ``ErrorCode``).
DONE_BITS = 4
assert max(ErrorCode) < (1 << DONE_BITS)

#: The AXI4 master's watchdog: a transaction is outstanding (an address waiting for its
#: handshake, write data not taken, read beats or write responses owed) and no channel has
#: moved (no handshake on AR/AW/W, no RVALID or BVALID offered) for this many cycles in a row:
#: the memory has stopped answering, the run stops with ``MEM_TIMEOUT``. A working memory's
#: longest quiet gap is its latency behind a refresh: for the ULX3S SDRAM (LiteDRAM at
#: 25 MHz) some tens of cycles (tRFC, precharge, activate, CAS latency and the controller's
#: pipeline; an estimate from its timing, not a measurement), and an interconnect shared with
#: a CPU adds arbitration of the same order. 2**14 cycles (0.66 ms at 25 MHz) is two orders of
#: magnitude above that and still short for a host that polls STATUS.
MEM_TIMEOUT_CYCLES = 1 << 14


def _is_pow2(x: int) -> bool:
    return x > 0 and (x & (x - 1)) == 0


def default_port_bytes(array: int) -> int:
    """A memory port matched to the array: 2N bytes per beat (128 bits for an 8x8 array).

    The engine streams B once and re-reads A once per column group, which needs about
    N + N*N/M bytes per cycle; 2N leaves room for results and parameters."""
    return max(4, 2 * array)


def group_cols(array: int, port_bytes: int) -> int:
    """Columns of B held on chip at a time: a whole number of array tiles and of port beats."""
    return max(array, port_bytes)


@dataclass(frozen=True)
class Sizing:
    """How large the parts of an accelerator that do not change its results are built.

    The default is the full-size accelerator. A board-sized build (``SMALL``) keeps the ISA, the
    CSR map and the numerics and trades speed and reach for logic:

    addr_bits
        Address bits the engine and the controller compute with: the accelerator reaches bytes
        ``[0, 2**addr_bits)`` and stops at START with ``BAD_WINDOW`` when the window does not
        lie inside (every operand is checked against the window in full 32-bit arithmetic, so
        no address of an accepted command is truncated).
    epilogue_lanes
        Lanes of the requantisation pipeline (``None``: the array width); a row takes
        ``array / epilogue_lanes`` cycles.
    epilogue_registers
        Which of its six stages end in a register (``Epilogue``'s ``registers``): fewer save
        flip-flops at a lower clock.
    serial_epilogue
        The one epilogue lane works on one element at a time over several cycles
        (``5 + row_shift + addend_shift + shift``, about 25 for a typical requantisation) with
        a narrow datapath (``SerialEpilogue``); needs ``epilogue_lanes=1``.
    issue_slot
        The controller holds a checked command in an issue slot and fetches on while the engine
        is busy; without it the controller hands the command over from its instruction register
        and keeps it there until the unit answers (the next fetch waits), so the matmul engine
        keeps no copy of its own.
    serial_check
        The operand-span check multiplies ``(rows - 1) * stride`` one bit per cycle (about 17
        cycles per operand, no DSP) instead of in one cycle.
    queue
        Commands a unit may hold between acceptance and ``done``.
    counter_bits, cycle_bits
        Width of the CSR event counters (INSTRET, the busy/stall counters and the instruction
        counts; saturating counters saturate at ``2**counter_bits - 1``, the others wrap) and of
        CYCLES (up to 64; CYCLES_HI reads the bits above 32).
    outstanding
        Read requests the matmul engine keeps in flight.
    bram_pads
        The parameter and exponent scratchpads (a few lines per buffer) in block RAM instead of
        flip-flops.
    perf_counters
        MATMUL_BUSY, VECTOR_BUSY and SYNC_STALL count (without: they read 0).
    vector_lanes
        Lanes of the vector engine (``None``: the array width).
    vector_finishers
        Finishers of the vector unit, the per-row scalar stage (``None``: enough to keep it at
        full rate on rows of 128; one keeps up with LayerNorm rows of ``finisher_cycles``
        columns per lane and softmax rows of about 14, at a fraction of the area).
    result_tiles
        Tiles of result rows (``result_tiles * N`` rows) the queue behind the never-stalling
        array holds; a tile is closed only when its rows have room there. Four let tiles as
        short as N steps stream back to back; one is enough behind a serial epilogue.
    output_rows
        Result rows the queue behind the never-stalling epilogue holds: 16 cover the round trip
        of its credits so it takes a row every cycle; 0 (no queue) needs the serial epilogue,
        which holds its results until the writer takes them.
    port_stages
        A registered stage on each channel of the matmul engine's memory port, so no handshake
        path crosses it, and a write register in front of each of its scratchpads (without:
        fewer flip-flops at a lower clock).
    decoder_ops
        The controller and the vector engine accept the decoder's VECTOR operations the RTL
        implements (``isa.RTL_DECODER_OPS``; the other ``isa.VecOp`` values still stop
        with ``BAD_MODE``). Off, the hardware is the encoder's, unchanged, and every decoder op
        but the encoder's dithered softmax (``isa.RTL_ALWAYS_OPS``) stops with ``BAD_MODE``.
        The ISA simulator models such a build with
        ``IsaMachine(decoder_ops=Sizing.decoder_op_set())``.
    follow_b
        The matmul engine's feeder follows B's rows into a buffer the loader is still filling,
        so a group starts on its A panel alone (the first load of a command costs N·K/W beats,
        not (N + G)·K/W); off, a group waits for full A and B buffers, for about 70 fewer LUTs
        and a narrower request queue (the iCE40 build, which fills its device).
    prefetch
        The matmul engine's loader works one command ahead: the controller marks each MATMUL
        that reads no byte of the previous MATMUL's result (``mm_cmd_independent``), and the
        engine loads such a command's operands while the one before it still computes and
        writes (a second copy of the command in the engine, the previous result's span in the
        controller). Needs the issue slot, full-width addresses and the corner-turn loader
        (not ``serial_epilogue``).
    """
    addr_bits: int = ADDR_BITS
    epilogue_lanes: int | None = None
    epilogue_registers: tuple = (True,) * 6
    serial_epilogue: bool = False
    issue_slot: bool = True
    serial_check: bool = False
    queue: int = 4
    counter_bits: int = 32
    cycle_bits: int = 64
    outstanding: int = 32
    bram_pads: bool = False
    perf_counters: bool = True
    vector_lanes: int | None = None
    vector_finishers: int | None = None
    result_tiles: int = 4
    output_rows: int = 16
    port_stages: bool = True
    decoder_ops: bool = False
    follow_b: bool = True
    prefetch: bool = True

    def decoder_op_set(self) -> frozenset:
        """The :class:`~celosia.hdl.isa.VecOp` operations this build runs (without
        ``decoder_ops`` only ``isa.RTL_ALWAYS_OPS``, the encoder's dithered softmax)."""
        from .isa import rtl_decoder_ops
        return rtl_decoder_ops(self.decoder_ops)

    def __post_init__(self):
        if not 12 <= self.addr_bits <= ADDR_BITS:
            raise ValueError(f"addr_bits must be in 12..{ADDR_BITS}, not {self.addr_bits}")
        if not 1 <= self.counter_bits <= 32 or not 1 <= self.cycle_bits <= 64:
            raise ValueError("counter_bits must be in 1..32 and cycle_bits in 1..64")
        if self.result_tiles < 1 or self.output_rows < 0:
            raise ValueError("result_tiles must be at least 1 and output_rows at least 0")
        if self.vector_finishers is not None and self.vector_finishers < 1:
            raise ValueError("vector_finishers must be at least 1")
        if self.queue < 1 or self.outstanding < 2:
            raise ValueError("queue must be at least 1 and outstanding at least 2")
        if self.prefetch and (not self.issue_slot or self.serial_epilogue
                              or self.addr_bits < ADDR_BITS):
            raise ValueError("prefetch needs issue_slot, full-width addresses (addr_bits "
                             f"{ADDR_BITS}) and no serial_epilogue")


#: The full-size accelerator.
FULL = Sizing()
#: A small FPGA (iCE40UP5K): 64 KiB reach, one serial epilogue lane, no issue slot, serial span
#: checks, 16-bit event counters (the ISA has no branches, so a run retires at most
#: 2**16 / 64 = 1024 instructions), a 40-bit cycle counter and no busy/stall counters, the
#: small scratchpads in block RAM.
SMALL = Sizing(addr_bits=16, epilogue_lanes=1, serial_epilogue=True, issue_slot=False,
               serial_check=True, queue=1,
               counter_bits=16, cycle_bits=40, outstanding=32, bram_pads=True,
               perf_counters=False, result_tiles=1, output_rows=0, port_stages=False,
               follow_b=False, prefetch=False)


def check_config(array: int, port_bytes: int, k_max: int = K_MAX) -> None:
    """Raise ``TypeError``/``ValueError`` for an engine configuration that cannot be built."""
    for name, value in (("array", array), ("port_bytes", port_bytes), ("k_max", k_max)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, not {value!r}")
    if not (ARRAY_MIN <= array <= ARRAY_MAX and _is_pow2(array)):
        raise ValueError(f"array must be a power of two in {ARRAY_MIN}..{ARRAY_MAX}, not {array}")
    if not (4 <= port_bytes <= 128 and _is_pow2(port_bytes)):
        raise ValueError(f"port_bytes must be a power of two in 4..128, not {port_bytes}")
    if not (1 <= k_max <= K_MAX and _is_pow2(k_max) and k_max >= port_bytes):
        raise ValueError(f"k_max must be a power of two in port_bytes..{K_MAX}, not {k_max}")


def command_layout() -> data.StructLayout:
    """The command the engine accepts: one matmul with its epilogue."""
    return data.StructLayout({
        "m": unsigned(DIM_BITS),
        "k": unsigned(K_BITS),
        "n": unsigned(DIM_BITS),
        "a_addr": unsigned(ADDR_BITS),
        "b_addr": unsigned(ADDR_BITS),
        "c_addr": unsigned(ADDR_BITS),
        "p_addr": unsigned(ADDR_BITS),
        "d_addr": unsigned(ADDR_BITS),
        "a_stride": unsigned(ADDR_BITS),
        "b_stride": unsigned(ADDR_BITS),
        "c_stride": unsigned(ADDR_BITS),
        "d_stride": unsigned(ADDR_BITS),
        "a_unsigned": unsigned(1),
        "use_params": unsigned(1),      # load per-column records (bias, multiplier, shift)
        "requant": unsigned(1),         # 0: raw int32 out
        "out_fmt": unsigned(2),         # OutFormat, when requantising
        "addend": unsigned(2),          # AddendMode
        "addend_shift": unsigned(5),    # 0..16, RESIDUAL16 only
        "zero_point": signed(ZERO_POINT_BITS),
        "row_shift": unsigned(1),       # round-shift row i of A @ B right by e[i] (bytes at e_addr)
        "e_addr": unsigned(ADDR_BITS),  # M uint8 row exponents, when row_shift
        "b_transposed": unsigned(1),    # B is stored N x K row-major (b_stride per n)
    })


def pack_command(**fields) -> int:
    """Pack command fields (missing ones are 0) into the integer the ``cmd`` payload carries."""
    layout = command_layout()
    word = 0
    for name, value in fields.items():
        field = layout[name]      # KeyError for an unknown field
        width = field.shape.width
        value = int(value)
        lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if field.shape.signed else (0, (1 << width) - 1)
        if not lo <= value <= hi:
            raise ValueError(f"command field {name}={value} does not fit {field.shape}")
        word |= (value & ((1 << width) - 1)) << field.offset
    return word


def view_aligned(addr: int, stride: int, port_bytes: int) -> bool:
    """True if a matrix (or a column slice of a wider one) at ``addr`` with row stride
    ``stride`` satisfies the engine's alignment rule: both multiples of the port width W.

    Attention slices: with a tokens x 1152 QKV buffer (stride 1152) at a W-aligned base, the
    head-h slices start at byte offsets 32h (Q), 384 + 32h (K) and 768 + 32h (V), and the
    context slice of a tokens x 384 buffer at 32h. These are aligned for every head when
    W <= 32, i.e. with the default port (W = 2N) for arrays up to N = 16, and for N = 32 built
    with ``port_bytes=32``. With W = 64 or 128 only even (W = 64) or every fourth (W = 128)
    head is aligned: a compiler must then lay the heads out at W-aligned offsets (for example
    pad each head's 32 columns to W in the QKV weight layout) or copy the slice.
    """
    return addr % port_bytes == 0 and stride % port_bytes == 0
