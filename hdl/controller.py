"""The controller: fetches, checks and dispatches Celosia instructions (docs/isa.md).

It runs the program at ``PROG_ADDR`` one instruction at a time:

1. **Fetch** the 64-byte instruction through its own memory port (``INSTR_BYTES / W`` beats,
   or half of one beat when W = 128), after checking that the address is aligned and inside
   the window (``FETCH_FAULT``).
2. **Decode** the opcode: HALT and SYNC wait for the units; MATMUL and VECTOR are checked;
   VECTOR on a build without the vector unit stops with ``UNSUPPORTED``; anything else stops
   with ``ILLEGAL_OPCODE``.
3. **Check** a command exactly as ``sw/isa_sim.py`` does and in the same order: shapes
   (dimensions, strides at least as long as their rows), alignment to W, modes, then every
   operand's span against the window ``[WIN_BASE, WIN_BASE + WIN_SIZE)``, one operand per
   cycle through one multiplier (``(rows - 1) * stride``). All of this is decided from the
   instruction alone, before any memory traffic. For a requantising MATMUL the controller
   then reads the per-column records (``ceil(8N / W)`` beats) and stops with ``BAD_PARAM``
   when a multiplier or a shift is out of range, before the engine sees the command; for a
   VECTOR it checks the scalar shifts (record values are the vector engine's to report).
4. **Dispatch** the command into the unit's issue slot and go on with the next instruction:
   the slot hands the command to the engine when it is ready, so the other unit's commands,
   and the next fetch, overlap a running command. SYNC waits until the units it names have
   empty slots, no command in flight and (for every unit) no unacknowledged write.

A unit answers each command on ``done``; a non-OK answer (which the checks above should make
impossible) becomes an error stop with the address of that command, never a hang. Any stop
(HALT, an error, CTRL.abort) first lets the commands already issued finish: they precede the
stopping instruction in program order, as in the functional simulator.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from celosia.sw import numerics as nx

from . import isa
from .engine import MemoryPortSignature
from .scratchpad import SyncFifo
from .isa import (INSTR_BITS, INSTR_BYTES, RES_SHIFT_MAX, UNIT_OPS, rtl_decoder_ops,
                  VEC_MAX_COLS, VEC_PARAM_RECORD_BYTES, WINDOW_ALIGN, ErrorCode,
                  decoder_vector_checks,
                  Opcode, VecOp)
from .params import (ADDR_BITS, DONE_BITS, K_MAX, PARAM_MULT_OFFSET, PARAM_RECORD_BYTES,
                     PARAM_SHIFT_OFFSET, AddendMode, OutFormat, command_layout, out_bytes_log2)

__all__ = ["Controller", "SpanCheck", "SerialSpanCheck", "ERROR_BITS"]

#: Both engines answer each command with an ErrorCode; the controller stops with one.
ERROR_BITS = DONE_BITS
assert PARAM_RECORD_BYTES == 8 and PARAM_MULT_OFFSET == 4 and PARAM_SHIFT_OFFSET == 6
#: The 32-bit address and stride fields of the two command bodies.
_MM_ADDR_FIELDS = ("a_addr", "b_addr", "c_addr", "p_addr", "d_addr", "e_addr",
                   "a_stride", "b_stride", "c_stride", "d_stride")
_VEC_ADDR_FIELDS = ("src_addr", "src_stride", "dst_addr", "dst_stride", "res_addr", "res_stride",
                    "p_addr", "e_addr")


def _span_members(addr_width, rows_width, stride_width, row_bytes_width, end_width) -> dict:
    """The members of :class:`SpanCheck` and :class:`SerialSpanCheck`: an operand and a window
    in, the verdict out."""
    return {
        "used": In(1), "addr": In(addr_width), "rows": In(rows_width),
        "stride": In(stride_width), "row_bytes": In(row_bytes_width),
        "base": In(end_width), "end": In(end_width), "outside": Out(1),
        # One past the operand's last byte (its low addr_width + 1 bits: exact for an operand
        # inside a window of a full build).
        "span_end": Out(addr_width + 1),
    }


class SpanCheck(wiring.Component):
    """Whether an operand reaches outside the window ``[base, end)``: the address check of
    every command, one operand at a time (combinational).

    An operand covers ``rows`` rows of ``row_bytes`` bytes, row ``r`` starting at
    ``addr + r * stride``. It is inside when its first byte is at or above ``base`` and the end
    of its last row, ``addr + (rows - 1) * stride + row_bytes``, is at or below ``end``. Every
    sum and product is as wide as its operands need, so nothing wraps; a row never starts
    beyond the last one's start (strides are unsigned), so these two comparisons bound every
    byte of every row. The proof (``celosia.sim.properties``) checks exactly that claim: no
    byte of an operand that passes lies outside the window.

    Parameters
    ----------
    addr_width, rows_width, stride_width, row_bytes_width, end_width : int
        Widths of the inputs (``base`` is ``end_width`` bits too).

    Members
    -------
    used : In(1)
        The command uses this operand (an unused one is never outside).
    addr, rows, stride, row_bytes : In
        The operand: first byte, rows (0 counts as 1), bytes between row starts, bytes per row.
    base, end : In(end_width)
        The window: first byte and one past the last.
    outside : Out(1)
        Some byte of the operand lies outside the window.
    """

    def __init__(self, addr_width: int, rows_width: int, stride_width: int,
                 row_bytes_width: int, end_width: int):
        super().__init__(_span_members(addr_width, rows_width, stride_width, row_bytes_width,
                                       end_width))

    def elaborate(self, platform):
        m = Module()
        rows_m1 = Signal.like(self.rows)
        m.d.comb += rows_m1.eq(Mux(self.rows == 0, 0, self.rows - 1))
        span_end = self.addr + rows_m1 * self.stride + self.row_bytes
        m.d.comb += [self.outside.eq(self.used & ((self.addr < self.base) | (span_end > self.end))),
                     self.span_end.eq(span_end)]
        return m


class SerialSpanCheck(wiring.Component):
    """:class:`SpanCheck`'s verdict computed over several cycles with one adder and one
    register, in phases (no path from the operand through more than one adder):

    * MUL: ``(rows - 1) * stride`` by shift and add, most significant bit of ``rows - 1``
      first (``rows_width`` cycles, none when ``rows`` is 0 or 1);
    * ADDR, ROWB: add the address, then the row bytes: the span's end;
    * CMP: ``done``; ``outside`` compares the registered end with the window's.

    The operand's fields go through a register before they reach the adder (the controller
    selects them from its operand table in the same cycle), so the first cycle after a
    restart only loads that register: the operand may still change in that cycle (the
    controller moves to the next operand as it restarts), and must stay put from the next one
    until ``done``; the window must stay put from ``restart`` until ``done``.

    Parameters
    ----------
    addr_width, rows_width, stride_width, row_bytes_width, end_width : int
        As for :class:`SpanCheck`.
    flag_bit : int, optional
        A narrow build's ``ab``: bit ``ab`` of ``addr`` and ``stride`` is a flag "at least
        2**ab" and the window ends at or below 2**ab, so the span is computed in ``ab`` bits
        plus an overflow flag (any carry out of them is past the window's end).

    Members
    -------
    used, addr, rows, stride, row_bytes, base, end, outside
        As for :class:`SpanCheck`; ``outside`` is the verdict while ``done``.
    restart : In(1)
        Start over (back to MUL); has priority over ``run``.
    run : In(1)
        Advance one phase step this cycle.
    done : Out(1)
        The verdict is ready (CMP).
    """

    def __init__(self, addr_width: int, rows_width: int, stride_width: int,
                 row_bytes_width: int, end_width: int, *, flag_bit: int | None = None):
        self.flag_bit = flag_bit
        self.acc_width = flag_bit if flag_bit is not None else addr_width + rows_width + 1
        super().__init__({**_span_members(addr_width, rows_width, stride_width,
                                          row_bytes_width, end_width),
                          "restart": In(1), "run": In(1), "done": Out(1)})
        # The phase registers; created here rather than in elaborate(): the proof states
        # what the accumulator holds in each phase.
        self._phase = Signal(2)               # 0 MUL, 1 ADDR, 2 ROWB, 3 CMP
        self._mul_n = Signal(range(rows_width + 1))
        self._acc = Signal(self.acc_width)
        self._ovf = Signal()
        # The operand's registered copy (rows as rows - 1, with its "at most one row" flag),
        # and whether it is loaded (low in the cycle after a restart or the reset).
        self._loaded = Signal()
        self._addr_r = Signal(addr_width)
        self._rows_m1_r = Signal(rows_width)
        self._one_row_r = Signal()
        self._stride_r = Signal(stride_width)
        self._row_bytes_r = Signal(row_bytes_width)

    def elaborate(self, platform):
        m = Module()
        phase, mul_n, acc, ovf = self._phase, self._mul_n, self._acc, self._ovf
        rows_width, pw, ab = len(self.rows), self.acc_width, self.flag_bit
        addr, rows_m1, stride = self._addr_r, self._rows_m1_r, self._stride_r
        m.d.sync += [self._loaded.eq(~self.restart), addr.eq(self.addr),
                     rows_m1.eq(Mux(self.rows == 0, 0, self.rows - 1)),
                     self._one_row_r.eq(self.rows <= 1), stride.eq(self.stride),
                     self._row_bytes_r.eq(self.row_bytes)]
        mul_done = (mul_n == rows_width) | self._one_row_r
        mul_bit = Signal()
        m.d.comb += mul_bit.eq(rows_m1[::-1].bit_select(
            mul_n[:max(1, (rows_width - 1).bit_length())], 1))
        addend = Signal(max(pw, len(self.addr), len(self.row_bytes)))
        acc_next = Signal(len(addend) + 2)
        with m.Switch(phase):
            with m.Case(0):
                m.d.comb += addend.eq(Mux(mul_bit, stride, 0))
            with m.Case(1):
                m.d.comb += addend.eq(addr)
            with m.Default():
                m.d.comb += addend.eq(self._row_bytes_r)
        m.d.comb += [acc_next.eq(Mux(phase == 0, acc << 1, acc) + addend),
                     self.done.eq(phase == 3), self.span_end.eq(acc)]
        if ab is not None:
            m.d.comb += self.outside.eq(self.used & ((addr[:ab] < self.base) | ovf
                                                     | (acc > self.end)))
        else:
            m.d.comb += self.outside.eq(self.used & ((addr < self.base) | (acc > self.end)))

        with m.If(self.restart):
            m.d.sync += [mul_n.eq(0), acc.eq(0), ovf.eq(0), phase.eq(0)]
        with m.Elif(self.run & self._loaded):
            step = Signal()                   # this cycle updates the accumulator
            with m.Switch(phase):
                with m.Case(0):
                    m.d.comb += step.eq(~mul_done)
                    with m.If(~mul_done):
                        m.d.sync += mul_n.eq(mul_n + 1)
                    with m.Else():
                        m.d.sync += phase.eq(1)
                with m.Case(1, 2):
                    m.d.comb += step.eq(1)
                    m.d.sync += phase.eq(phase + 1)
            with m.If(step):
                m.d.sync += acc.eq(acc_next[:pw])
                if ab is not None:
                    m.d.sync += ovf.eq(ovf | (acc_next[pw:] != 0)
                                       | ((phase == 0) & mul_bit & stride[ab]))
        return m


class Controller(wiring.Component):
    """Instruction fetch, checks, dispatch to the units, SYNC/HALT and the stop state.

    Parameters
    ----------
    port_bytes : int
        Memory-port width W (bytes per beat).
    vector : bool
        Whether a vector engine is attached (``vec_cmd``/``vec_done`` exist).
    queue : int
        Commands a unit may hold between acceptance and ``done``.
    k_max : int
        The matmul engine's longest K (``K_MAX`` in a full build; a smaller test build
        rejects longer ones with BAD_SHAPE, where the ISA simulator would accept them).
    decoder_ops : bool
        Accept the decoder VECTOR operations of ``isa.RTL_DECODER_OPS`` (``Sizing.decoder_ops``;
        the vector engine must be built with it too). Without it they stop with BAD_MODE, but
        for ``isa.RTL_ALWAYS_OPS`` (the encoder's dithered softmax), which every build runs.
    addr_bits, issue_slot, serial_check : see :class:`celosia.hdl.params.Sizing`. Without an
        issue slot a unit's ``cmd.payload`` stays valid from the hand-over until its ``done``
        (the controller waits in HOLD), so the unit need not copy it.

    Members
    -------
    mem : Out(MemoryPortSignature(port_bytes))
        Instruction fetch and parameter-record reads (never writes).
    mm_cmd, mm_done : the matmul engine's ``cmd`` and ``done`` streams.
    vec_cmd, vec_done : the vector engine's (``vector_layout()`` body; done is an ErrorCode).
    writes_idle : In(1)
        No write is outstanding in the memory system.
    start, abort : In(1)
        One-cycle requests from the CSR block.
    prog_addr, win_base, win_size : In(32)
    running, done, error : Out(1)
        STATUS: busy, stopped by HALT, stopped by an error.
    error_code, error_pc, pc : CSR values.
    mm_busy, vec_busy : Out(1)
        A unit holds an issued command.
    stall, retire, retire_mm, retire_vec : Out(1)
        Counter events: a cycle waiting in SYNC/HALT, an instruction retired (MATMUL, VECTOR).
    mem_fault, mem_fault_code, mem_fault_port, mem_quiet, mem_clear : with ``mem_faults``
        A memory fault (``MEM_READ_ERROR``, ``MEM_WRITE_ERROR``, ``MEM_TIMEOUT``) from the
        AXI master, the port it concerns, no read owed to any port, and the clear at START.
        A fault stops the run: nothing more is fetched or issued, the units finish against
        the fenced master, and the stop reports the fault (it takes precedence over any other
        code of the same stop) with ``ERROR_PC`` the instruction that owned the access: the
        instruction being fetched or scanned (port 0), or the oldest command in flight in the
        unit (ports 1, 2; the unit's last finished command if none is in flight any more).
    """

    def __init__(self, port_bytes: int, *, vector: bool = False, queue: int = 4,
                 k_max: int = K_MAX, addr_bits: int = ADDR_BITS, issue_slot: bool = True,
                 serial_check: bool = False, mem_faults: bool = False,
                 decoder_ops: bool = False, mm_independence: bool = False):
        assert port_bytes & (port_bytes - 1) == 0 and 4 <= port_bytes <= 128
        assert 12 <= addr_bits <= ADDR_BITS
        self.port_bytes = port_bytes
        self.k_max = k_max
        self.vector = vector
        self.queue = queue
        self.addr_bits = addr_bits
        self.issue_slot = issue_slot
        self.serial_check = serial_check
        self.mem_faults = mem_faults
        self.decoder_ops = bool(decoder_ops)
        if mm_independence and (not issue_slot or addr_bits < ADDR_BITS):
            raise ValueError("mm_independence needs the issue slot and full-width addresses")
        self.mm_independence = mm_independence
        members = {
            "mem": Out(MemoryPortSignature(port_bytes)),
            "mm_cmd": Out(stream.Signature(command_layout())),
            # Beside mm_cmd: the command reads no byte the MATMUL before it writes.
            "mm_cmd_independent": Out(1),
            "mm_done": In(stream.Signature(DONE_BITS)),
            "writes_idle": In(1, init=1),
            "start": In(1), "abort": In(1),
            "prog_addr": In(ADDR_BITS), "win_base": In(ADDR_BITS), "win_size": In(ADDR_BITS),
            "running": Out(1), "done": Out(1), "error": Out(1),
            "error_code": Out(ERROR_BITS), "error_pc": Out(ADDR_BITS), "pc": Out(ADDR_BITS),
            "mm_busy": Out(1), "vec_busy": Out(1),
            "stall": Out(1), "retire": Out(1), "retire_mm": Out(1), "retire_vec": Out(1),
            "unretire_mm": Out(1), "unretire_vec": Out(1),
        }
        if vector:
            members["vec_cmd"] = Out(stream.Signature(isa.vector_layout()))
            members["vec_done"] = In(stream.Signature(DONE_BITS))
        if mem_faults:
            # The AXI master's fault report (registers; port 0 is this controller's own port,
            # 1 the matmul engine's, 2 the vector engine's) and its clear at START.
            members.update({"mem_fault": In(1), "mem_fault_code": In(ERROR_BITS),
                            "mem_fault_port": In(2), "mem_quiet": In(1, init=1),
                            "mem_clear": Out(1)})
        super().__init__(members)

    def _window_beyond(self, ab):
        """Whether the window ``[WIN_BASE, WIN_BASE + WIN_SIZE)`` reaches past the addresses this
        build reaches, ``2**ab`` (on a full build, past 2**32: an operand checked against it
        could wrap around to the bottom of the memory)."""
        return (self.win_base + self.win_size) > (1 << ab)

    def elaborate(self, platform):
        m = Module()
        W = self.port_bytes
        lw = W.bit_length() - 1
        # Every address the units see lies inside the window, which lies inside
        # [0, 2**addr_bits): the window and the issued commands' addresses need only these bits.
        ab = self.addr_bits

        base = Signal(ab)
        size = Signal(ab + 1)
        win_end = Signal(ab + 1)
        m.d.comb += win_end.eq(base + size)
        # A narrow build: the window lies inside [0, 2**ab) with ab < 32.
        narrow = ab < ADDR_BITS
        pc = Signal(ADDR_BITS)
        m.d.comb += self.pc.eq(pc)
        if narrow:
            # The program counter only advances from a fetch inside the window, so past
            # PROG_ADDR it stays below 2**ab + INSTR_BYTES: the bits above ab are PROG_ADDR's.
            pc_lo = Signal(ab + 1)
            pc_hi = Signal(ADDR_BITS - ab - 1)
            m.d.comb += pc.eq(Cat(pc_lo, pc_hi))

            def set_pc(value):
                return [pc_lo.eq(value[:ab + 1]), pc_hi.eq(value[ab + 1:])]

            def advance_pc():
                return pc_lo.eq(pc_lo + INSTR_BYTES)

            fetch_fault = ((pc_lo[:6] != 0) | (pc_hi != 0) | (pc_lo < base)
                           | (pc_lo + INSTR_BYTES > win_end))
        else:
            def set_pc(value):
                return [pc.eq(value)]

            def advance_pc():
                return pc.eq(pc + INSTR_BYTES)

            fetch_fault = (pc[:6] != 0) | (pc < base) | (pc + INSTR_BYTES > win_end)

        instr = Signal(isa.instruction_layout())
        # A narrow build keeps of each 32-bit address and stride field only the low ``ab`` bits
        # and a flag "some higher bit is set" (``hi``), taken as the words arrive (``hi_range``:
        # the field's instruction bits at and above ab). Only the checks read the flags: an
        # accepted command has none set, so the units get the low bits zero-extended and the
        # high bits of the register are never read.
        mm, vec = instr.body.matmul, instr.body.vector
        hi = {}                           # (body, field) -> flag
        hi_range = {}                     # (body, field) -> (first, end) instruction bit
        if narrow:
            body_off = isa.instruction_layout()["body"].offset
            bodies = [("mm", mm, command_layout(), _MM_ADDR_FIELDS)]
            if self.vector:
                bodies.append(("vec", vec, isa.vector_layout(), _VEC_ADDR_FIELDS))
            views = {}
            for body, field, layout, names in bodies:
                views[body] = view = Signal(layout, name=f"{body}_src")
                m.d.comb += view.eq(field)
                for name in names:
                    off = body_off + layout[name].offset
                    hi[body, name] = Signal(name=f"{body}_{name}_hi")
                    hi_range[body, name] = (off + ab, off + ADDR_BITS)
                    m.d.comb += view[name].eq(getattr(field, name)[:ab])
            mm, vec = views["mm"], views.get("vec", vec)

        def hi_of(body, name):
            return hi.get((body, name), C(0, 1))

        # --- error state ---
        code = Signal(ERROR_BITS)         # the stop being prepared (DRAIN)
        code_pc = Signal(ADDR_BITS)
        unit_err = Signal()               # a unit answered a command with an error
        unit_code = Signal(ERROR_BITS)
        unit_pc = Signal(ab)
        unit_vec = Signal()               # the failing unit is the vector engine
        abort_req = Signal()
        with m.If(self.abort & self.running):
            m.d.sync += abort_req.eq(1)

        # --- units: an issue slot and a FIFO of the addresses of commands in flight ---
        units = {}
        heads = {}

        def unit(name, cmd, done, layout, source, is_vector=0):
            # Without an issue slot these are combinational: ISSUE offers the command straight
            # from the instruction register.
            slot_valid = Signal(name=f"{name}_slot_valid")
            slot_cmd = Signal(layout, name=f"{name}_slot_cmd")
            slot_pc = Signal(ab, name=f"{name}_slot_pc")
            busy = Signal(name=f"{name}_busy")
            if self.issue_slot:
                q = SyncFifo(width=ab, depth=self.queue)
                m.submodules[f"{name}_inflight"] = q
                m.d.comb += [
                    cmd.valid.eq(slot_valid & q.w_rdy),
                    q.w_data.eq(slot_pc),
                    q.w_en.eq(cmd.valid & cmd.ready),
                    q.r_en.eq(done.valid),
                ]
                with m.If(cmd.valid & cmd.ready):
                    m.d.sync += slot_valid.eq(0)
                failed_pc = q.r_data
                # In flight counts from the cycle after the hand-over: the FIFO's level, not
                # its r_rdy, which a SyncFIFOBuffered raises one cycle later (a SYNC or HALT
                # sampling that cycle would pass a command that has only just started).
                m.d.comb += busy.eq(slot_valid | (q.level != 0))
            else:
                # One command at a time: the controller waits in HOLD, with the program
                # counter on the command, until the unit answers.
                inflight = Signal(name=f"{name}_inflight")
                with m.If(cmd.valid & cmd.ready):
                    m.d.sync += inflight.eq(1)
                with m.Elif(done.valid):
                    m.d.sync += inflight.eq(0)
                m.d.comb += [cmd.valid.eq(slot_valid), slot_cmd.eq(source), slot_pc.eq(pc),
                             busy.eq(slot_valid | inflight)]
                failed_pc = pc[:ab]
            m.d.comb += [cmd.payload.eq(slot_cmd), done.ready.eq(1)]
            with m.If(done.valid & (done.payload != 0) & ~unit_err):
                m.d.sync += [unit_err.eq(1), unit_code.eq(done.payload),
                             unit_pc.eq(failed_pc), unit_vec.eq(is_vector)]
            # The command a memory fault of this unit's port is blamed on: the oldest in
            # flight, else the last one that finished (a write's response may come after).
            last_pc = Signal(ab, name=f"{name}_last_pc")
            head_pc = Signal(ab, name=f"{name}_head_pc")
            with m.If(done.valid):
                m.d.sync += last_pc.eq(failed_pc)
            if self.issue_slot:
                # (The FIFO's r_rdy lags the hand-over by a cycle; a command's first memory
                # access comes later than that.)
                m.d.comb += head_pc.eq(Mux(q.r_rdy, q.r_data, last_pc))
            else:
                m.d.comb += head_pc.eq(Mux(busy, pc[:ab], last_pc))
            heads[name] = head_pc
            units[name] = (slot_valid, slot_cmd, slot_pc, busy)
            return busy

        mm_busy = unit("mm", self.mm_cmd, self.mm_done, command_layout(), mm)
        m.d.comb += self.mm_busy.eq(mm_busy)
        if self.vector:
            vec_busy = unit("vec", self.vec_cmd, self.vec_done, isa.vector_layout(), vec, 1)
            m.d.comb += self.vec_busy.eq(vec_busy)
        else:
            vec_busy = C(0, 1)

        # --- memory faults ---
        if self.mem_faults:
            # A fault is stopped with like a unit's error (unit_err, unit_code, unit_pc), and
            # takes precedence: it overwrites a unit error taken before it (which may be its
            # consequence: a BAD_PARAM on undefined data), and no later one overwrites it. Every
            # address fetched or issued lies inside the window, so ``ab`` bits hold it.
            mem_seen = Signal()           # the stop is a memory fault
            fault_pc = Signal(ab)         # the instruction the reported fault concerns
            with m.Switch(self.mem_fault_port):
                with m.Case(1):
                    m.d.comb += fault_pc.eq(heads["mm"])
                with m.Case(2):
                    m.d.comb += fault_pc.eq(heads["vec"] if self.vector else pc[:ab])
                with m.Default():
                    m.d.comb += fault_pc.eq(pc[:ab])
            with m.If(self.mem_fault & ~mem_seen & self.running):
                m.d.sync += [mem_seen.eq(1), unit_err.eq(1), unit_code.eq(self.mem_fault_code),
                             unit_pc.eq(fault_pc)]
            # The raw fault too: DECODE may see it in the cycle it is latched.
            mem_stop = self.mem_fault
            # The stop waits until the fault is latched and no read is owed to a port.
            mem_drained = ~self.mem_fault | (mem_seen & self.mem_quiet)
        else:
            mem_stop = C(0, 1)
            mem_drained = C(1, 1)

        # --- fetch/record-read port: requests counted out, responses counted in ---
        # At most 64 / W beats of an instruction or ceil(8 * 65535 / W) of records (which, on
        # a narrow build, lie inside the window: at most 2**ab / W beats).
        cnt_bits = ((1 << ab) // W).bit_length() if narrow else ((8 * 65535) // W + 1).bit_length()
        req_n = Signal(cnt_bits)
        resp_n = Signal(cnt_bits)
        beats = Signal(cnt_bits)          # beats to read in this FETCH or PSCAN
        # The request's address, the base plus req_n * W, kept as a register with req_n (set
        # with the base, advanced by W with each request), so no adder sits in front of the
        # memory arbiter and the AXI master's burst gathering.
        rd_addr = Signal(ab)
        m.d.comb += self.mem.rd_req.payload.addr.eq(rd_addr)
        with m.If(self.mem.rd_req.valid & self.mem.rd_req.ready):
            m.d.sync += rd_addr.eq(rd_addr + W)

        # --- command checks ---
        # Matmul.
        # Element sizes as log2 of the bytes (row bytes are shifts, not products).
        ob_log = Signal(2)                # output bytes per element: 1, 2 or 4
        with m.If(~mm.requant | (mm.out_fmt == 3)):
            m.d.comb += ob_log.eq(2)
        with m.Elif(mm.out_fmt == 2):
            m.d.comb += ob_log.eq(1)
        db_log = Signal(2)                # addend bytes per element: 4 or 2 (when used)
        m.d.comb += db_log.eq(Mux(mm.addend == AddendMode.ACC32, 2, 1))

        def misaligned(*values):
            return Cat(v[:lw] != 0 for v in values).any()

        use_d = mm.addend != AddendMode.NONE
        mm_bad_dims = (mm.m == 0) | (mm.k == 0) | (mm.n == 0) | (mm.k > self.k_max)
        mm_bad_align = (misaligned(mm.a_addr, mm.b_addr, mm.c_addr,
                                   mm.a_stride, mm.b_stride, mm.c_stride)
                        | (mm.use_params & misaligned(mm.p_addr))
                        | (use_d & misaligned(mm.d_addr, mm.d_stride))
                        | (mm.row_shift & misaligned(mm.e_addr)))
        mm_bad_mode = ((mm.requant & ~mm.use_params) | (mm.addend == 3)
                       | ((mm.addend == AddendMode.RESIDUAL16) & (mm.addend_shift > RES_SHIFT_MAX)))
        # Vector.
        vsb_log = Signal(2)
        vdb_log = Signal(2)
        m.d.comb += [vsb_log.eq(out_bytes_log2(vec.src_fmt)), vdb_log.eq(out_bytes_log2(vec.dst_fmt))]
        dec = self.decoder_ops
        if dec:
            # The decoder ops' uses and checks (isa.decoder_vector_checks, the vector
            # engine's too): RESIDUAL32's int32 residual, WIDE_SPLIT's two planes, the second
            # operands of SILU_GATE (up) and ROTARY (cos | sin), WIDE_LO's exponents read.
            dchk = decoder_vector_checks(vec.op, vec.rows, vec.cols, vec.src_fmt, vec.dst_fmt,
                                         vec.add_residual, vec.res_shift)
            v_r32, v_split = dchk["is"]["RESIDUAL32"], dchk["is"]["WIDE_SPLIT"]
            v_use_res = (vec.op == VecOp.RESIDUAL) | vec.add_residual | dchk["use_res"]
            # isa_sim's mode check (after the alignment): the operand formats of the ops.
            v_bad_fmt = dchk["bad_mode"]
        else:
            v_use_res = (vec.op == VecOp.RESIDUAL) | vec.add_residual
        v_use_p = vec.op.matches(VecOp.LAYERNORM, VecOp.GELU, VecOp.REQUANT,
                                 VecOp.REQUANT_ROWS, VecOp.GELU_ROWS)
        # SOFTMAX_DITHER (every build: isa.RTL_ALWAYS_OPS) is SOFTMAX's with dithered rounding.
        v_smd = vec.op == VecOp.SOFTMAX_DITHER
        v_use_e = vec.op.matches(VecOp.SOFTMAX, VecOp.REQUANT_ROWS, VecOp.GELU_ROWS) | v_smd
        v_bad_mode = ~vec.op.matches(*sorted(UNIT_OPS | rtl_decoder_ops(dec)))
        v_bad_dims = (vec.rows == 0) | (vec.cols == 0) | (vec.cols > VEC_MAX_COLS)
        v_shift_ops = vec.op.matches(VecOp.SOFTMAX, VecOp.GELU, VecOp.LAYERNORM) | v_smd
        if dec:
            # The row exponents' span: written, or read by WIDE_LO.
            v_use_e = v_use_e | dchk["writes_e"] | dchk["reads_e"]
            v_use_p = v_use_p | dchk["use_params"]
            v_bad_dims = v_bad_dims | dchk["bad_shape"]
            v_shift_ops = v_shift_ops | dchk["shift_ops"]
        v_bad_align = (misaligned(vec.src_addr, vec.src_stride, vec.dst_addr, vec.dst_stride)
                       | (v_use_res & misaligned(vec.res_addr, vec.res_stride))
                       | (v_use_p & misaligned(vec.p_addr))
                       | (v_use_e & misaligned(vec.e_addr)))
        v_bad_param = ((v_shift_ops & (vec.shift > nx.SHIFT_MAX))
                       | (v_use_res & (vec.res_shift > RES_SHIFT_MAX)))
        if dec:
            v_bad_param = v_bad_param | dchk["bad_param"]

        # Operand table, one operand per cycle: (used, addr, rows, stride, row bytes).
        is_vec = Signal()
        idx = Signal(3)
        op_used = Signal()
        op_addr = Signal(ab + 1 if narrow else ADDR_BITS)
        op_rows = Signal(17 if self.decoder_ops else 16)
        op_stride = Signal(ab + 1 if narrow else ADDR_BITS)
        op_rb = Signal(24)
        def ref(body, view, name):
            # A field's value; on a narrow build the low bits with the high flag above them
            # (the flag stands for "at least 2**ab").
            v = getattr(view, name)
            return Cat(v[:ab], hi_of(body, name)) if narrow else v

        def mref(name):
            return ref("mm", mm, name)

        def vref(name):
            return ref("vec", vec, name)

        mm_ops = [
            (1, mref("a_addr"), mm.m, mref("a_stride"), mm.k),
            (1, mref("b_addr"), Mux(mm.b_transposed, mm.n, mm.k), mref("b_stride"),
             Mux(mm.b_transposed, mm.k, mm.n)),
            (1, mref("c_addr"), mm.m, mref("c_stride"), mm.n << ob_log),
            (mm.addend.matches(AddendMode.ACC32, AddendMode.RESIDUAL16), mref("d_addr"), mm.m,
             mref("d_stride"), mm.n << db_log),
            (mm.use_params, mref("p_addr"), 1, 0, mm.n * PARAM_RECORD_BYTES),
            (mm.row_shift, mref("e_addr"), 1, 0, mm.m),
        ]
        N_OPS = len(mm_ops)

        def drive(ops):
            with m.Switch(idx):
                for i, (used, addr, rows, stride, rb) in enumerate(ops):
                    with m.Case(i):
                        m.d.comb += [op_used.eq(used), op_addr.eq(addr), op_rows.eq(rows),
                                     op_stride.eq(stride), op_rb.eq(rb)]

        if self.vector:
            # WIDE_SPLIT writes two rows a source row; RESIDUAL32's residual is int32.
            vec_ops = [
                (1, vref("src_addr"), vec.rows, vref("src_stride"), vec.cols << vsb_log),
                (v_use_res, vref("res_addr"), vec.rows, vref("res_stride"),
                 Mux(v_r32, vec.cols << 2, vec.cols << 1) if dec else vec.cols * 2),
                (v_use_p, vref("p_addr"), 1, 0, vec.cols * VEC_PARAM_RECORD_BYTES),
                (1, vref("dst_addr"), (vec.rows << v_split) if dec else vec.rows,
                 vref("dst_stride"), vec.cols << vdb_log),
                (v_use_e, vref("e_addr"), 1, 0, vec.rows),
            ]
            with m.If(is_vec):
                drive(vec_ops)
            with m.Else():
                drive(mm_ops)
        else:
            drive(mm_ops)
        short = Signal()
        outside = Signal()
        if narrow:
            # Bit ab of an address or stride is its high flag (the value is at least 2**ab).
            m.d.comb += short.eq(op_used & (op_rows > 1) & ~op_stride[ab]
                                 & (op_stride[:ab] < op_rb))
        else:
            m.d.comb += short.eq(op_used & (op_rows > 1) & (op_stride < op_rb))
        # A narrow build (window inside [0, 2**ab)) computes the span in ab + 1 bits plus an
        # overflow flag: an address, a stride in use or a product reaching 2**ab puts the span
        # past the window (every row is at least one byte long unless a dimension is 0, and a
        # zero dimension is reported first as BAD_SHAPE). The one-cycle check sees a flagged
        # value as at least 2**ab, so its span ends past the window's end: outside too.
        widths = (len(op_addr), len(op_rows), len(op_stride), len(op_rb), len(win_end))
        if self.serial_check:
            span_check = SerialSpanCheck(*widths, flag_bit=ab if narrow else None)
        else:
            span_check = SpanCheck(*widths)
        m.submodules.span_check = span_check
        m.d.comb += [
            span_check.used.eq(op_used), span_check.addr.eq(op_addr),
            span_check.rows.eq(op_rows), span_check.stride.eq(op_stride),
            span_check.row_bytes.eq(op_rb), span_check.base.eq(base),
            span_check.end.eq(win_end), outside.eq(span_check.outside),
        ]
        any_short = Signal()
        any_outside = Signal()

        # --- independence of consecutive MATMULs (``mm_independence``) ---
        # The span of the last issued MATMUL's C; while a MATMUL is checked, whether an operand
        # it reads overlaps that span (the engine then loads it only after the one before it
        # has written its result).
        if self.mm_independence:
            prev_c = Signal(2 * (ADDR_BITS + 1), name="mm_prev_c")     # [lo, hi)
            next_c = Signal(2 * (ADDR_BITS + 1), name="mm_next_c")
            mm_dep = Signal()
            mm_slot_indep = Signal()
            prev_lo, prev_hi = prev_c[:ADDR_BITS + 1], prev_c[ADDR_BITS + 1:]
            reads_prev = (op_used & (op_addr < prev_hi) & (prev_lo < span_check.span_end))
            m.d.comb += self.mm_cmd_independent.eq(mm_slot_indep)

        # --- parameter-record scan (requantising MATMUL) ---
        lanes = W // 4
        scan_bad = Signal()
        rec_lanes = Signal(18)            # 32-bit lanes of the records: 2 per column
        m.d.comb += rec_lanes.eq(mm.n << 1)
        beat_bad = []
        for j in range(lanes):
            lane = self.mem.rd_resp.payload[32 * j:32 * j + 32]
            g = (resp_n << (lanes.bit_length() - 1)) + j     # lane index from p_addr
            mult = lane[8 * (PARAM_MULT_OFFSET - 4):8 * (PARAM_MULT_OFFSET - 4) + 16]
            shift = lane[8 * (PARAM_SHIFT_OFFSET - 4):8 * (PARAM_SHIFT_OFFSET - 4) + 8]
            beat_bad.append(g[0] & (g < rec_lanes)
                            & ((mult >= (1 << nx.MULT_BITS)) | (shift > nx.SHIFT_MAX)))

        # --- the main FSM ---
        halting = Signal()                # WAIT is for HALT (else SYNC)
        wait_mask = Signal(2)
        idle_mm = ~mm_busy
        idle_vec = ~vec_busy
        m.d.comb += self.error_code.eq(Mux(self.error, code, 0))
        # Both are kept from the stop until the next START.
        m.d.comb += self.error_pc.eq(Mux(self.error, Mux(unit_err, unit_pc, code_pc), 0))

        def stop_with(err, at):
            m.d.sync += [code.eq(err), code_pc.eq(at)]
            m.next = "DRAIN"

        def next_instruction():
            m.d.comb += self.retire.eq(1)
            m.d.sync += advance_pc()
            m.next = "NEXT"

        with m.FSM(name="ctrl") as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    if self.mem_faults:
                        m.d.comb += self.mem_clear.eq(1)
                        m.d.sync += mem_seen.eq(0)
                    m.d.sync += [
                        base.eq(self.win_base), size.eq(self.win_size), *set_pc(self.prog_addr),
                        self.running.eq(1), self.done.eq(0), self.error.eq(0),
                        code.eq(0), code_pc.eq(0),
                        unit_err.eq(0), abort_req.eq(0),
                    ]
                    beyond = self._window_beyond(ab)
                    with m.If((self.win_base % WINDOW_ALIGN != 0) | (self.win_size % WINDOW_ALIGN != 0)
                              | (self.win_size == 0) | beyond):
                        m.d.sync += [code.eq(ErrorCode.BAD_WINDOW), code_pc.eq(self.prog_addr)]
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "NEXT"

            with m.State("NEXT"):
                # Between instructions: memory faults, unit errors and aborts are taken here.
                with m.If(mem_stop | unit_err):
                    m.next = "DRAIN"
                with m.Elif(abort_req):
                    stop_with(ErrorCode.ABORTED, pc)
                with m.Elif(fetch_fault):
                    stop_with(ErrorCode.FETCH_FAULT, pc)
                with m.Else():
                    m.d.sync += [req_n.eq(0), resp_n.eq(0),
                                 beats.eq(max(1, INSTR_BYTES // W)),
                                 rd_addr.eq(pc & ~(W - 1))]
                    m.d.sync += [flag.eq(0) for flag in hi.values()]
                    m.next = "FETCH"

            with m.State("FETCH"):
                m.d.comb += [self.mem.rd_req.valid.eq(req_n < beats),
                             self.mem.rd_resp.ready.eq(1)]
                with m.If(self.mem.rd_req.valid & self.mem.rd_req.ready):
                    m.d.sync += req_n.eq(req_n + 1)
                with m.If(self.mem.rd_resp.valid):
                    m.d.sync += resp_n.eq(resp_n + 1)
                    # Beat j fills bits [8W*j, 8W*(j+1)) of the instruction, in place (a
                    # shift register would keep every bit that passes through a used one).
                    if W < INSTR_BYTES:
                        words = [(j, j * 8 * W, self.mem.rd_resp.payload)
                                 for j in range(INSTR_BYTES // W)]
                    else:
                        words = [(0, 0, self.mem.rd_resp.payload.word_select(pc[6:lw], INSTR_BITS)
                                  if W > INSTR_BYTES else self.mem.rd_resp.payload)]
                    for j, lo, word in words:
                        with m.If(resp_n[:(len(words) - 1).bit_length()] == j):
                            m.d.sync += instr.as_value()[lo:lo + len(word)].eq(word)
                            for key, (f_lo, f_hi) in hi_range.items():
                                a, b = max(f_lo, lo), min(f_hi, lo + len(word))
                                if a < b:
                                    m.d.sync += hi[key].eq(hi[key] | (word[a - lo:b - lo] != 0))
                    with m.If(resp_n == beats - 1):
                        m.next = "DECODE"

            with m.State("DECODE"):
                m.d.sync += [idx.eq(0), any_short.eq(0), any_outside.eq(0), is_vec.eq(0)]
                if self.mm_independence:
                    m.d.sync += mm_dep.eq(0)
                if self.serial_check:
                    m.d.comb += span_check.restart.eq(1)
                with m.If(mem_stop):
                    # The instruction may have come from a failed read: it is not decoded.
                    m.next = "DRAIN"
                with m.Else():
                    with m.Switch(instr.opcode):
                        with m.Case(Opcode.HALT):
                            m.d.sync += [halting.eq(1), wait_mask.eq(0b11)]
                            m.next = "WAIT"
                        with m.Case(Opcode.SYNC):
                            m.d.sync += [halting.eq(0), wait_mask.eq(instr.body.sync.units[:2])]
                            m.next = "WAIT"
                        with m.Case(Opcode.MATMUL):
                            m.next = "CHECK"
                        with m.Case(Opcode.VECTOR):
                            if self.vector:
                                m.d.sync += is_vec.eq(1)
                                m.next = "CHECK"
                            else:
                                stop_with(ErrorCode.UNSUPPORTED, pc)
                        with m.Default():
                            stop_with(ErrorCode.ILLEGAL_OPCODE, pc)

            with m.State("CHECK"):
                if self.serial_check:
                    m.d.comb += span_check.run.eq(1)
                    checked = span_check.done | ~op_used
                else:
                    checked = C(1, 1)
                with m.If(checked):
                    m.d.sync += [any_short.eq(any_short | short),
                                 any_outside.eq(any_outside | outside),
                                 idx.eq(idx + 1)]
                    if self.mm_independence:
                        # Operand 2 is C (mm_ops' order); the others are read.
                        with m.If(~is_vec & (idx == 2)):
                            m.d.sync += next_c.eq(Cat(op_addr, C(0, 1), span_check.span_end))
                        with m.Elif(~is_vec & reads_prev):
                            m.d.sync += mm_dep.eq(1)
                    if self.serial_check:
                        m.d.comb += span_check.restart.eq(1)
                    with m.If(idx == N_OPS - 1):
                        m.next = "RESOLVE"
                check_step = checked

            with m.State("RESOLVE"):
                with m.If(is_vec):
                    with m.If(v_bad_mode):
                        stop_with(ErrorCode.BAD_MODE, pc)
                    with m.Elif(v_bad_dims | any_short):
                        stop_with(ErrorCode.BAD_SHAPE, pc)
                    with m.Elif(v_bad_align):
                        stop_with(ErrorCode.BAD_ALIGN, pc)
                    if dec:
                        with m.Elif(v_bad_fmt):
                            stop_with(ErrorCode.BAD_MODE, pc)
                    with m.Elif(any_outside):
                        stop_with(ErrorCode.BAD_ADDRESS, pc)
                    with m.Elif(v_bad_param):
                        stop_with(ErrorCode.BAD_PARAM, pc)
                    with m.Else():
                        m.next = "ISSUE"
                with m.Else():
                    with m.If(mm_bad_dims | any_short):
                        stop_with(ErrorCode.BAD_SHAPE, pc)
                    with m.Elif(mm_bad_align):
                        stop_with(ErrorCode.BAD_ALIGN, pc)
                    with m.Elif(mm_bad_mode):
                        stop_with(ErrorCode.BAD_MODE, pc)
                    with m.Elif(any_outside):
                        stop_with(ErrorCode.BAD_ADDRESS, pc)
                    with m.Elif(mm.requant):
                        m.d.sync += [req_n.eq(0), resp_n.eq(0), scan_bad.eq(0),
                                     rd_addr.eq(mm.p_addr),
                                     beats.eq((mm.n * PARAM_RECORD_BYTES + W - 1) >> lw)]
                        m.next = "PSCAN"
                    with m.Else():
                        m.next = "ISSUE"

            with m.State("PSCAN"):
                m.d.comb += [self.mem.rd_req.valid.eq(req_n < beats),
                             self.mem.rd_resp.ready.eq(1)]
                with m.If(self.mem.rd_req.valid & self.mem.rd_req.ready):
                    m.d.sync += req_n.eq(req_n + 1)
                with m.If(self.mem.rd_resp.valid):
                    m.d.sync += resp_n.eq(resp_n + 1)
                    with m.If(Cat(beat_bad).any()):
                        m.d.sync += scan_bad.eq(1)
                    with m.If(resp_n == beats - 1):
                        m.next = "SCANNED"

            with m.State("SCANNED"):
                with m.If(scan_bad):
                    stop_with(ErrorCode.BAD_PARAM, pc)
                with m.Else():
                    m.next = "ISSUE"

            with m.State("ISSUE"):
                mm_slot_valid, mm_slot_cmd, mm_slot_pc, _ = units["mm"]
                with m.If(mem_stop | unit_err):
                    m.next = "DRAIN"
                with m.Elif(abort_req):
                    stop_with(ErrorCode.ABORTED, pc)
                if self.issue_slot:
                    if self.vector:
                        v_slot_valid, v_slot_cmd, v_slot_pc, _ = units["vec"]
                        with m.Elif(is_vec & ~v_slot_valid):
                            m.d.sync += [v_slot_valid.eq(1), v_slot_cmd.eq(vec), v_slot_pc.eq(pc)]
                            m.d.comb += self.retire_vec.eq(1)
                            next_instruction()
                    with m.Elif(~is_vec & ~mm_slot_valid):
                        m.d.sync += [mm_slot_valid.eq(1), mm_slot_cmd.eq(mm), mm_slot_pc.eq(pc)]
                        if self.mm_independence:
                            m.d.sync += [prev_c.eq(next_c), mm_slot_indep.eq(~mm_dep)]
                        m.d.comb += self.retire_mm.eq(1)
                        next_instruction()
                else:
                    # The command goes to the unit from the instruction register, which holds
                    # it until the unit answers (HOLD).
                    if self.vector:
                        v_slot_valid, v_slot_cmd, v_slot_pc, _ = units["vec"]
                        with m.Elif(is_vec):
                            m.d.comb += v_slot_valid.eq(1)
                            with m.If(self.vec_cmd.valid & self.vec_cmd.ready):
                                m.d.comb += [self.retire_vec.eq(1), self.retire.eq(1)]
                                m.next = "HOLD"
                    with m.Elif(~is_vec):
                        m.d.comb += mm_slot_valid.eq(1)
                        with m.If(self.mm_cmd.valid & self.mm_cmd.ready):
                            m.d.comb += [self.retire_mm.eq(1), self.retire.eq(1)]
                            m.next = "HOLD"

            if not self.issue_slot:
                with m.State("HOLD"):
                    # The unit reads its command from ``instr`` until it answers.
                    with m.If(idle_mm & idle_vec):
                        m.d.sync += advance_pc()
                        m.next = "NEXT"

            with m.State("WAIT"):
                ready = ((~wait_mask[0] | idle_mm) & (~wait_mask[1] | idle_vec)
                         & (~wait_mask.any() | self.writes_idle))
                with m.If(mem_stop | unit_err):
                    m.next = "DRAIN"
                with m.Elif(abort_req):
                    stop_with(ErrorCode.ABORTED, pc)
                with m.Elif(ready):
                    with m.If(halting):
                        m.d.comb += self.retire.eq(1)
                        m.d.sync += [code.eq(ErrorCode.OK), code_pc.eq(pc)]
                        m.next = "DRAIN"
                    with m.Else():
                        next_instruction()
                with m.Else():
                    m.d.comb += self.stall.eq(1)

            with m.State("DRAIN"):
                # Commands issued before the stop finish; then the stop is published.
                with m.If(idle_mm & idle_vec & self.writes_idle & mem_drained):
                    m.d.sync += [self.running.eq(0), abort_req.eq(0)]
                    with m.If(unit_err):
                        # The failing command was counted when issued; isa_sim does not
                        # count an instruction that fails. (A memory fault, which isa_sim
                        # does not model, leaves the counts as they are.)
                        unretire = ~mem_seen if self.mem_faults else C(1, 1)
                        m.d.comb += [self.unretire_mm.eq(~unit_vec & unretire),
                                     self.unretire_vec.eq(unit_vec & unretire)]
                        m.d.sync += [self.error.eq(1), code.eq(unit_code),
                                     *set_pc(unit_pc)]
                    with m.Elif(code == ErrorCode.OK):
                        m.d.sync += self.done.eq(1)
                    with m.Else():
                        m.d.sync += [self.error.eq(1),
                                     *set_pc(code_pc)]
                    m.next = "IDLE"
        # What the proofs (celosia.sim.properties) state invariants of: the state, the window,
        # the instruction's matmul body, the operand checks and the matmul unit's slot.
        self._probe = dict(fsm=fsm, base=base, size=size, win_end=win_end, mm=mm, idx=idx,
                           is_vec=is_vec, any_outside=any_outside, outside=outside,
                           check_step=check_step, c_op=mm_ops[2], unit_err=unit_err,
                           abort_req=abort_req, mm_unit=units["mm"], instr=instr,
                           vec=vec, vec_ops=vec_ops if self.vector else None,
                           vec_unit=units.get("vec"),
                           op=(op_used, op_addr, op_rows, op_stride, op_rb),
                           scan_req=req_n, scan_beats=beats)
        return m
