"""The vector engine: the vector unit behind a memory port, executing one VECTOR instruction body
(``isa.vector_layout()``) per command, byte for byte as ``sw/isa_sim.py`` does.

Per command::

    CHECK ─▶ PARAMS (records ─▶ unit parameter memory, range checks) ─▶ START (unit command) ─▶ RUN ─▶ DONE

* CHECK: unknown op (BAD_MODE), shapes (BAD_SHAPE), alignment to W (BAD_ALIGN), scalar shifts
  (BAD_PARAM), in ``isa_sim``'s order; the window is the controller's. A rejected command reads
  and writes nothing.
* PARAMS: the per-column records are read (``ceil(16 cols / W)`` beats), repacked N columns to a
  unit parameter beat and range-checked as ``isa_sim`` does (BAD_PARAM before any write).
* RUN: source rows (and residual rows) are read through a credit-limited request generator into
  per-stream beat FIFOs; a gearbox per stream turns W-byte beats into N-lane unit beats (1, 2 or
  4 bytes an element); the unit's output beats are packed to the destination format, saturated
  to its range and written as W-byte beats with byte strobes, row by row; row exponents (SOFTMAX,
  REQUANT_ROWS, GELU_ROWS) are gathered into W-byte beats at ``e_addr``.
* DONE: the status (an ``isa.ErrorCode``) once every write has been accepted by the port.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from celosia.sw import numerics as nx

from . import isa
from .engine import MemoryPortSignature
from .pipeline import SkidBuffer
from .scratchpad import SyncFifo
from .isa import (RES_SHIFT_MAX, UNIT_OPS, WIDE_LO_MAX_ROWS, rtl_decoder_ops,
                  VEC_MAX_COLS, decoder_vector_checks, VEC_PARAM_RECORD_BYTES, ErrorCode, VecOp)
from .params import (ADDR_BITS, DONE_BITS, DEFAULT_ARRAY, OUT_RANGE, OutFormat, check_config,
                     default_port_bytes, out_bytes_log2)
from .sequencer import read_request_layout, write_layout
from .vector import VectorOp, VectorUnit

__all__ = ["VectorEngine"]

assert VEC_PARAM_RECORD_BYTES == 16

_REC = VEC_PARAM_RECORD_BYTES


def _log2(n: int) -> int:
    assert n > 0 and n & (n - 1) == 0, n
    return n.bit_length() - 1


class _Gearbox(wiring.Component):
    """W-byte beats of a row stream in, unit beats (N elements of 1 << elog bytes) out.

    Every row starts on a beat boundary; a row is ``beats = ceil(cols << elog / W)`` beats in and
    ``nub = ceil(cols / N)`` unit beats out. A unit beat takes the next ``N << elog`` bytes; the
    last of a row takes every byte left of the row (the tail of its last beat is dropped).

    Unit and memory beats are powers of two and rows start on beat boundaries, so a unit beat
    starts at a multiple of its own size: inside one memory beat when it is narrower, on a beat
    boundary when it is wider. The buffer is therefore a shift register of whole beats and the
    offset into the head beat, and the output a choice among ``W / N`` positions, not a byte
    shifter. ``avail`` and the push condition are those of a ``2 max(W, U)``-byte buffer.
    """

    def __init__(self, port_bytes: int, lanes: int, max_elog: int):
        self.W, self.N = port_bytes, lanes
        self.U = lanes << max_elog
        self.C = 2 * max(port_bytes, self.U)
        super().__init__({
            "beat": In(stream.Signature(8 * port_bytes)),
            "elog": In(2),                          # held during a command
            "last_take": In(range(self.C + 1)),     # bytes the last unit beat of a row takes
            "last": In(1),                          # the unit beat being offered is a row's last
            "avail": Out(1),                        # a unit beat is available
            "take": In(1),                          # ... and is taken now
            "bytes": Out(8 * self.U),               # the unit beat (low bytes first)
            "clear": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        W, N, U = self.W, self.N, self.U
        lw, ln = _log2(W), _log2(N)
        D = self.C // W                      # beats the buffer holds
        R = max(1, U // W)                   # beats a widest unit beat spans
        # Beats past ``count`` are don't-care: no reset, and a clear leaves them.
        q = [Signal(8 * W, name=f"q{j}", reset_less=True) for j in range(D)]
        count = Signal(range(D + 1))
        off = Signal(max(1, lw))             # bytes of the head beat already taken
        need = Signal(range(self.C + 1))
        m.d.comb += need.eq(Mux(self.last, self.last_take, N << self.elog))
        span = Signal(range(W + self.C + 1))
        m.d.comb += span.eq(off + need)
        m.d.comb += self.avail.eq((count << lw) >= span)
        pop = Signal(range(D + 1))           # whole beats leaving
        m.d.comb += pop.eq(Mux(self.take, span >> lw, 0))
        # A beat comes in while a slot is free before this cycle's take (the buffer's two
        # widest unit beats keep the unit fed all the same), so the intake does not wait for
        # the take's decision.
        push = Signal()
        m.d.comb += [push.eq(self.beat.valid & (count < D)), self.beat.ready.eq(push)]
        # The unit beat starts at a multiple of N bytes inside the head beat.
        window = Cat(*q[:R], C(0, 8 * U))
        if lw > ln:
            with m.Switch(off[ln:lw]):
                for k in range(W // N):
                    with m.Case(k):
                        m.d.comb += self.bytes.eq(window[8 * N * k:8 * N * k + 8 * U])
        else:
            m.d.comb += self.bytes.eq(window[:8 * U])
        with m.If(self.clear):
            m.d.sync += [count.eq(0), off.eq(0)]
        with m.Else():
            m.d.sync += [count.eq(count - pop + push),
                         off.eq(Mux(self.take, span, off)[:len(off)])]
        # The incoming beat goes in at ``count``, then every slot moves down by the beats
        # leaving (the last choice, so the take's decision comes in at the end); slots past
        # the count keep stale beats.
        qq = [Mux(push & (count == j), self.beat.payload, q[j]) for j in range(D)]
        for j in range(D):
            with m.Switch(pop):
                for k in range(0, min(R, D - 1 - j) + 1):
                    with m.Case(k):
                        m.d.sync += q[j].eq(qq[j + k])
        return m


class VectorEngine(wiring.Component):
    """The vector unit with a memory port: one VECTOR instruction body per command.

    Parameters
    ----------
    lanes : int
        Vector lanes N (the systolic array's size; a power of two).
    port_bytes : int or None
        Memory-port width W (default 2N); W <= 16 N (a beat holds at most N parameter records).
    max_cols : int
        Longest row (default ``isa.VEC_MAX_COLS``).
    fifo_beats : int
        Read beats in flight or buffered per stream (source, residual): at least the read
        round trip through the accelerator's memory path (more than 16 cycles), or a lone
        stream runs below a beat a cycle (docs/vector.md).
    decoder_ops : bool
        Also run the decoder operations of ``isa.RTL_DECODER_OPS`` (``Sizing.decoder_ops``):
        RESIDUAL32 (the unit's residual add with int32 residual lanes), WIDE_SPLIT (the
        source rows passed through the unit twice, the high then the low byte of each element
        written), SOFTMAX_WIDE (the unit's softmax with ``prob_wide``), RMSNORM (its LayerNorm
        with ``rms``), SILU_GATE (its REQUANT_ROWS with ``silu``), WIDE_LO (its REQUANT with
        ``lo_shift``, the rows' exponents read in the PARAMS phase) and ROTARY (its RESIDUAL
        with ``rot``, every row twice). Without it the engine
        is the encoder's. SOFTMAX_DITHER (the unit's softmax with ``dither``,
        ``isa.RTL_ALWAYS_OPS``) runs on every build.
    addr_bits : int
        Width of the address registers (default ``params.ADDR_BITS``); the engine's addresses
        are zero-extended to the memory port's.
    unit_kwargs
        Passed to :class:`celosia.hdl.vector.VectorUnit`.

    Members
    -------
    cmd : In(stream.Signature(isa.vector_layout()))
    done : Out(stream.Signature(4))
        An ``isa.ErrorCode`` per command (OK, BAD_SHAPE, BAD_ALIGN, BAD_MODE, BAD_PARAM).
    mem : Out(MemoryPortSignature(port_bytes))
    busy : Out(1)
    """

    def __init__(self, lanes: int = DEFAULT_ARRAY, port_bytes: int | None = None, *,
                 max_cols: int = VEC_MAX_COLS, fifo_beats: int = 32, decoder_ops: bool = False,
                 addr_bits: int = ADDR_BITS, **unit_kwargs):
        if port_bytes is None:
            port_bytes = default_port_bytes(lanes) if isinstance(lanes, int) else 16
        check_config(lanes, port_bytes)
        if port_bytes > _REC * lanes:
            raise ValueError(f"port_bytes {port_bytes} > 16 * lanes: a beat would hold more "
                             f"parameter records than a unit parameter beat")
        if not isinstance(fifo_beats, int) or fifo_beats < 2:
            raise ValueError("fifo_beats must be an int >= 2")
        self.lanes, self.port_bytes, self.max_cols = lanes, port_bytes, max_cols
        self.fifo_beats = fifo_beats
        self.decoder_ops = bool(decoder_ops)
        if not isinstance(addr_bits, int) or not 1 <= addr_bits <= ADDR_BITS:
            raise ValueError(f"addr_bits must be an int in 1..{ADDR_BITS}")
        self.addr_bits = addr_bits
        self.unit_kwargs = unit_kwargs
        super().__init__({
            "cmd": In(stream.Signature(isa.vector_layout())),
            "done": Out(stream.Signature(DONE_BITS)),
            "mem": Out(MemoryPortSignature(port_bytes)),
            "busy": Out(1),
        })

    def _make_unit(self):
        return VectorUnit(self.lanes, max_cols=self.max_cols,
                          **({"decoder_ops": True} if self.decoder_ops else {}), **self.unit_kwargs)

    def elaborate(self, platform):
        m = Module()
        N, W = self.lanes, self.port_bytes
        ab = self.addr_bits
        lw, ln = _log2(W), _log2(N)
        D = self.fifo_beats
        dec = self.decoder_ops
        m.submodules.unit = unit = self._make_unit()
        # Registered stages on the unit's beat streams: the gearboxes and the output packer
        # (whose readiness follows the memory port) never share a path with the unit's intake
        # or its output queue.
        m.submodules.unit_in = unit_in = SkidBuffer(unit.in_layout)
        m.submodules.unit_out = unit_out = SkidBuffer(unit.out_layout)
        wiring.connect(m, unit_in.o, unit.i)
        wiring.connect(m, unit.o, unit_out.i)

        cmd = Signal(isa.vector_layout())
        code = Signal(DONE_BITS)
        op = cmd.op
        rows, cols = cmd.rows, cmd.cols

        # --- per-command constants ---------------------------------------------------------
        # SOFTMAX_DITHER (every build, isa.RTL_ALWAYS_OPS) is the unit's SOFTMAX with dithered
        # rounding (dither).
        is_smd = op == VecOp.SOFTMAX_DITHER
        sl = Signal(2)           # log2 bytes of a source element
        dl = Signal(2)           # ... of a destination element
        m.d.comb += [sl.eq(out_bytes_log2(cmd.src_fmt)), dl.eq(out_bytes_log2(cmd.dst_fmt))]
        if dec:
            # The decoder ops' uses and checks (isa.decoder_vector_checks, the controller's too).
            # RESIDUAL32 is the unit's RESIDUAL with an int32 residual; WIDE_SPLIT passes each
            # source row (after the optional residual pre-add) through the unit's RESIDUAL with
            # a zero residual twice: rows 0..rows-1 write byte 1 of each result, rows
            # rows..2*rows-1 byte 0 (isa_sim's int8 write of x >> 8 and x & 255).
            # SOFTMAX_WIDE is the unit's SOFTMAX with 15-bit probabilities (prob_wide).
            # RMSNORM is the unit's LAYERNORM with rms (no mean, a per-row pre-shift, the
            # epsilon of record 0's bias, no beta).
            # SILU_GATE is the unit's REQUANT_ROWS with silu: x = silu(gate) * up, the gate the
            # int16 source, up the second operand (int16 lanes at res_addr; res_shift 8 for a
            # wide up, else 0 and up saturated to int8).
            # WIDE_LO is the unit's REQUANT with lo_shift: round_shift(x, 8 + e[i]), the rows'
            # exponents read from e_addr in the PARAMS phase (in place of records) into a
            # buffer, and given to the unit with each beat of their row.
            # ROTARY is the unit's RESIDUAL with rot: every row given to the unit twice (its
            # cos | sin row from res_addr in the residual lanes), the second pass's results
            # written.
            dchk = decoder_vector_checks(op, rows, cols, cmd.src_fmt, cmd.dst_fmt,
                                         cmd.add_residual, cmd.res_shift)
            is_r32, is_split, is_smw, is_rms, is_silu, is_wlo, is_rot = (
                dchk["is"][o] for o in ("RESIDUAL32", "WIDE_SPLIT", "SOFTMAX_WIDE", "RMSNORM",
                                        "SILU_GATE", "WIDE_LO", "ROTARY"))
        else:
            is_r32 = is_split = is_smw = is_rms = is_silu = is_wlo = is_rot = C(0, 1)
        use_res = (op == VecOp.RESIDUAL) | cmd.add_residual
        use_p = ((op == VecOp.LAYERNORM) | (op == VecOp.GELU) | (op == VecOp.REQUANT)
                 | (op == VecOp.REQUANT_ROWS) | (op == VecOp.GELU_ROWS))
        use_e = ((op == VecOp.SOFTMAX) | (op == VecOp.REQUANT_ROWS) | (op == VecOp.GELU_ROWS)
                 | is_smd)
        if dec:
            use_res, use_p, use_e = (use_res | dchk["use_res"], use_p | dchk["use_params"],
                                     use_e | dchk["writes_e"])
        is_rows_op = (op == VecOp.REQUANT_ROWS) | (op == VecOp.GELU_ROWS) | is_silu
        nub = Signal(16)         # unit beats a row
        m.d.comb += nub.eq((cols + N - 1) >> ln)
        src_bytes = Signal(16)
        res_bytes = Signal(16)
        dst_bytes = Signal(16)
        rl = Mux(is_r32, 2, 1) if dec else 1        # log2 bytes of a residual element
        m.d.comb += [src_bytes.eq(cols << sl), res_bytes.eq(cols << rl), dst_bytes.eq(cols << dl)]
        src_beats = Signal(16)
        res_beats = Signal(16)
        m.d.comb += [src_beats.eq((src_bytes + W - 1) >> lw), res_beats.eq((res_bytes + W - 1) >> lw)]
        p_beats = Signal(20)
        p_base = Signal(ab)
        m.d.comb += [p_beats.eq(Mux(is_wlo, (rows + W - 1) >> lw, ((cols << 4) + W - 1) >> lw)),
                     p_base.eq(Mux(is_wlo, cmd.e_addr, cmd.p_addr))]
        # The same facts registered for the run-time paths (the handshakes and the gearboxes):
        # ``cmd`` holds from CHECK on, and nothing runs before START, so they are settled by then
        # and no length arithmetic sits in front of a handshake.
        def settled(value, width, name):
            r = Signal(width, name=name)
            m.d.sync += r.eq(value)
            return r
        nub_m1 = settled(nub - 1, 16, "nub_m1")
        src_beats_m1 = settled(src_beats - 1, 16, "src_beats_m1")
        res_beats_m1 = settled(res_beats - 1, 16, "res_beats_m1")
        # Rows the unit passes (WIDE_SPLIT: every source row twice).
        rows_run = settled(rows << (is_split | is_rot), 17, "rows_run") if dec else rows
        # Rows written (ROTARY writes one of the unit's two rows a row).
        rows_out = settled(Mux(is_rot, rows, rows << is_split), 17, "rows_out") if dec else rows

        # --- checks (isa_sim order: op, shapes, alignment, scalars) ----------------------------
        def misaligned(*values):
            return Cat(v[:lw] != 0 for v in values).any()

        bad_op = ~op.matches(*sorted(UNIT_OPS | rtl_decoder_ops(dec)))
        many = rows > 1
        bad_shape = ((rows == 0) | (cols == 0) | (cols > VEC_MAX_COLS)
                     | (many & (cmd.src_stride < src_bytes))
                     | (((many | is_split) if dec else many) & (cmd.dst_stride < dst_bytes))
                     | (many & use_res & (cmd.res_stride < res_bytes)))
        if dec:
            bad_shape = bad_shape | dchk["bad_shape"]
        bad_align = (misaligned(cmd.src_addr, cmd.src_stride, cmd.dst_addr, cmd.dst_stride)
                     | (use_res & misaligned(cmd.res_addr, cmd.res_stride))
                     | (use_p & misaligned(cmd.p_addr))
                     | ((use_e | is_wlo) & misaligned(cmd.e_addr)))
        shift_ops = ((op == VecOp.SOFTMAX) | (op == VecOp.GELU) | (op == VecOp.LAYERNORM)
                     | is_smd)
        if dec:
            shift_ops = shift_ops | dchk["shift_ops"]
        bad_scalar = ((shift_ops & (cmd.shift > nx.SHIFT_MAX))
                      | (use_res & (cmd.res_shift > RES_SHIFT_MAX)))
        if dec:
            bad_scalar = bad_scalar | dchk["bad_param"]
        # The decoder ops' operand formats (isa_sim's mode check, after the alignment).
        bad_mode = dchk["bad_mode"] if dec else C(0, 1)

        # --- the unit's command -----------------------------------------------------------
        ucmd = Signal(unit.cmd_layout)
        out_lo = Signal(signed(32))
        out_hi = Signal(signed(32))
        with m.Switch(cmd.dst_fmt):
            for fmt in OutFormat:
                with m.Case(fmt):
                    m.d.comb += [out_lo.eq(OUT_RANGE[fmt].lo), out_hi.eq(OUT_RANGE[fmt].hi)]
        if dec:
            with m.If(is_split):
                # The unit passes x whole; the output keeps one byte of it.
                m.d.comb += [out_lo.eq(nx.INT32.lo), out_hi.eq(nx.INT32.hi)]
            is_resid = (op == VecOp.RESIDUAL) | is_r32 | is_split
            unit_op = Mux(is_r32 | is_split | is_rot, VectorOp.RESIDUAL,
                          Mux(is_smw | is_smd, VectorOp.SOFTMAX,
                              Mux(is_rms, VectorOp.LAYERNORM,
                                  Mux(is_silu, VectorOp.REQUANT_ROWS,
                                      Mux(is_wlo, VectorOp.REQUANT, op[:3])))))
            m.d.comb += [ucmd.prob_wide.eq(is_smw), ucmd.rms.eq(is_rms), ucmd.silu.eq(is_silu),
                         ucmd.lo_shift.eq(is_wlo), ucmd.rot.eq(is_rot)]
        else:
            is_resid = op == VecOp.RESIDUAL
            unit_op = Mux(is_smd, VectorOp.SOFTMAX, op[:3])
        m.d.comb += ucmd.dither.eq(is_smd)
        m.d.comb += [
            ucmd.op.eq(unit_op), ucmd.rows.eq(Mux(is_rot, rows << 1, rows)), ucmd.cols.eq(cols),
            ucmd.causal.eq(cmd.causal), ucmd.causal_offset.eq(cmd.causal_offset),
            ucmd.mult.eq(cmd.mult),
            ucmd.shift.eq(Mux(is_resid, cmd.res_shift, cmd.shift)),
            ucmd.add_residual.eq(cmd.add_residual & ~is_resid), ucmd.res_shift.eq(cmd.res_shift),
            ucmd.zero_point.eq(cmd.zero_point), ucmd.out_lo.eq(out_lo), ucmd.out_hi.eq(out_hi),
            unit.cmd.payload.eq(ucmd),
        ]

        # --- memory port: a registered stage on each channel, so no handshake path runs
        # between the engine and the memory side --------------------------------------------
        stages = {}
        for name, shape, source_is_port in (("rd_req", read_request_layout(), False),
                                            ("rd_resp", 8 * W, True),
                                            ("wr", write_layout(W), False)):
            m.submodules[f"{name}_stage"] = stage = stages[name] = SkidBuffer(shape)
            if source_is_port:
                wiring.connect(m, wiring.flipped(getattr(self.mem, name)), stage.i)
            else:
                wiring.connect(m, stage.o, wiring.flipped(getattr(self.mem, name)))

        # --- read side ----------------------------------------------------------------------
        rd = stages["rd_req"].i
        resp = stages["rd_resp"].o
        phase_params = Signal()
        phase_run = Signal()

        # Parameter records: requests and responses counted.
        p_req = Signal(20)
        p_resp = Signal(20)
        # Source / residual streams: row address, beat in the row, rows left to request.
        s_row_addr = Signal(ab)
        s_beat = Signal(16)
        s_row = Signal(17)
        r_row_addr = Signal(ab)
        r_beat = Signal(16)
        r_row = Signal(17)
        s_pend = Signal(range(D + 1))
        r_pend = Signal(range(D + 1))
        m.submodules.s_fifo = s_fifo = SyncFifo(width=8 * W, depth=D)
        m.submodules.r_fifo = r_fifo = SyncFifo(width=8 * W, depth=D)
        m.submodules.tags = tags = SyncFifo(width=1, depth=2 * D)
        s_more = s_row < rows_run
        r_more = use_res & (r_row < rows_run)
        s_can = phase_run & s_more & (s_pend < D) & tags.w_rdy
        r_can = phase_run & r_more & (r_pend < D) & tags.w_rdy
        last_grant_res = Signal()
        pick_res = Signal()
        m.d.comb += pick_res.eq(r_can & (~s_can | ~last_grant_res))
        p_can = phase_params & (p_req < p_beats)
        with m.If(p_can):
            m.d.comb += [rd.valid.eq(1), rd.payload.addr.eq((p_base + (p_req << lw))[:ab])]
        with m.Elif(pick_res):
            m.d.comb += [rd.valid.eq(1), rd.payload.addr.eq((r_row_addr + (r_beat << lw))[:ab])]
        with m.Elif(s_can):
            m.d.comb += [rd.valid.eq(1), rd.payload.addr.eq((s_row_addr + (s_beat << lw))[:ab])]
        fire_rd = rd.valid & rd.ready
        s_req = fire_rd & ~p_can & ~pick_res
        r_req = fire_rd & ~p_can & pick_res
        m.d.comb += [tags.w_en.eq(s_req | r_req), tags.w_data.eq(r_req)]
        with m.If(fire_rd & p_can):
            m.d.sync += p_req.eq(p_req + 1)
        with m.If(s_req | r_req):
            m.d.sync += last_grant_res.eq(r_req)
        # WIDE_SPLIT: the second pass reads the source (and residual) rows again.
        again_s = (is_split & (s_row + 1 == rows)) if dec else C(0, 1)
        again_r = (is_split & (r_row + 1 == rows)) if dec else C(0, 1)
        with m.If(s_req):
            with m.If(s_beat == src_beats_m1):
                m.d.sync += [s_beat.eq(0), s_row.eq(s_row + 1),
                             s_row_addr.eq(Mux(again_s, cmd.src_addr,
                                               Mux(is_rot & ~s_row[0], s_row_addr,
                                                   s_row_addr + cmd.src_stride))
                                           if dec else s_row_addr + cmd.src_stride)]
            with m.Else():
                m.d.sync += s_beat.eq(s_beat + 1)
        with m.If(r_req):
            with m.If(r_beat == res_beats_m1):
                m.d.sync += [r_beat.eq(0), r_row.eq(r_row + 1),
                             r_row_addr.eq(Mux(again_r, cmd.res_addr,
                                               Mux(is_rot & ~r_row[0], r_row_addr,
                                                   r_row_addr + cmd.res_stride))
                                           if dec else r_row_addr + cmd.res_stride)]
            with m.Else():
                m.d.sync += r_beat.eq(r_beat + 1)

        # Responses: parameter records in PARAMS, else by tag to the stream FIFOs (room reserved).
        m.d.comb += resp.ready.eq(phase_params | phase_run)
        fire_resp = resp.valid & resp.ready
        resp_data = phase_run & fire_resp
        m.d.comb += [
            tags.r_en.eq(resp_data),
            s_fifo.w_data.eq(resp.payload), r_fifo.w_data.eq(resp.payload),
            s_fifo.w_en.eq(resp_data & ~tags.r_data), r_fifo.w_en.eq(resp_data & tags.r_data),
        ]
        m.d.sync += [s_pend.eq(s_pend + s_req - (s_fifo.r_en & s_fifo.r_rdy)),
                     r_pend.eq(r_pend + r_req - (r_fifo.r_en & r_fifo.r_rdy))]

        # --- parameter records ----------------------------------------------------------------
        rec_layout = data.StructLayout({"mult": signed(32), "shift": unsigned(8), "pad": unsigned(24),
                                        "bias": signed(64)})
        G = max(1, W // _REC)                 # records completed per completing beat
        per_rec = max(1, _REC // W)           # beats per record
        rec_idx = Signal(range(self.max_cols + G + 1))     # first record of the next group
        asm = Signal(8 * max(W, _REC))
        asm_beat = Signal(range(per_rec + 1))
        staging = Signal(data.ArrayLayout(unit.params.payload.data.shape().elem_shape, N))
        bad_rec = Signal()
        group_done = Signal()
        group = Signal(8 * G * _REC)
        if per_rec == 1:
            m.d.comb += [group.eq(resp.payload), group_done.eq(phase_params & fire_resp)]
        else:
            m.d.comb += [group.eq(Cat(asm[8 * W:], resp.payload)),
                         group_done.eq(phase_params & fire_resp & (asm_beat == per_rec - 1))]
            with m.If(phase_params & fire_resp):
                m.d.sync += [asm.eq(Cat(asm[8 * W:], resp.payload)),
                             asm_beat.eq(Mux(asm_beat == per_rec - 1, 0, asm_beat + 1))]
        new_stage = Signal.like(staging)
        m.d.comb += new_stage.eq(staging)
        slot = rec_idx[:ln] if ln else C(0, 1)
        recs = [rec_layout(group[8 * _REC * g:8 * _REC * (g + 1)]) for g in range(G)]
        with m.Switch(slot >> _log2(G) if G > 1 else slot):
            for base in range(N // G):
                with m.Case(base):
                    for g in range(G):
                        r = recs[g]
                        m.d.comb += [new_stage[base * G + g].mult.eq(r.mult),
                                     new_stage[base * G + g].shift.eq(r.shift),
                                     new_stage[base * G + g].bias.eq(r.bias)]
        rec_bad = []
        for g, r in enumerate(recs):
            gamma_bad = (r.mult >= (1 << nx.LN_GAMMA_BITS)) | (r.mult <= -(1 << nx.LN_GAMMA_BITS))
            ln_bad = (gamma_bad | (r.bias >= (1 << nx.LN_BETA_BITS))
                      | (r.bias <= -(1 << nx.LN_BETA_BITS)))
            lo_shift = Mux(is_rows_op, nx.ROW_EXP_MAX, 0)
            rq_bad = ((r.mult < 0) | (r.mult >= (1 << nx.MULT_BITS))
                      | (r.shift < lo_shift) | (r.shift > nx.SHIFT_MAX))
            if dec:
                # RMSNORM: gamma as LayerNorm's; record 0's bias is the epsilon,
                # 0..2**RMS_EPS_MAX_BITS - 1 (the other biases are not read).
                rms_bad = (gamma_bad | ((rec_idx + g == 0)
                                        & ((r.bias < 0) | (r.bias >= (1 << nx.RMS_EPS_MAX_BITS)))))
                rec_bad.append((rec_idx + g < cols)
                               & Mux(is_rms, rms_bad, Mux(op == VecOp.LAYERNORM, ln_bad, rq_bad)))
            else:
                rec_bad.append((rec_idx + g < cols) & Mux(op == VecOp.LAYERNORM, ln_bad, rq_bad))
        last_group = rec_idx + G >= cols
        full = (slot + G == N) if N > G else C(1, 1)
        if dec:
            # RMSNORM's epsilon goes to the unit with its parameter address 0.
            eps_reg = Signal(64)
            with m.If(group_done & (rec_idx == 0)):
                m.d.sync += eps_reg.eq(recs[0].bias)
            m.d.comb += unit.params.payload.eps.eq(Mux(rec_idx == 0, recs[0].bias, eps_reg))
        m.d.comb += [
            unit.params.valid.eq(group_done & (full | last_group) & ~is_wlo),
            unit.params.payload.addr.eq(rec_idx >> ln),
            unit.params.payload.data.eq(new_stage),
        ]
        with m.If(group_done):
            m.d.sync += [staging.eq(new_stage), rec_idx.eq(rec_idx + G)]
            with m.If(Cat(rec_bad).any() & ~is_wlo):
                m.d.sync += bad_rec.eq(1)

        # --- source and residual gearboxes into the unit ---------------------------------------
        m.submodules.g_src = g_src = _Gearbox(W, N, 2)
        m.submodules.g_res = g_res = _Gearbox(W, N, 2 if dec else 1)
        m.d.comb += [g_src.beat.valid.eq(s_fifo.r_rdy), g_src.beat.payload.eq(s_fifo.r_data),
                     s_fifo.r_en.eq(g_src.beat.ready)]
        m.d.comb += [g_res.beat.valid.eq(r_fifo.r_rdy), g_res.beat.payload.eq(r_fifo.r_data),
                     r_fifo.r_en.eq(g_res.beat.ready)]
        in_beat = Signal(16)       # unit beat in the row
        in_row = Signal(17)
        # "This is the row's last unit beat", a register kept with the counter (as o_last):
        # the comparison runs beside the handshake, not in front of it.
        in_last = Signal()
        src_last_take = settled(((src_beats << lw) - ((nub - 1) << (ln + sl)))[:16], 16,
                                "src_last_take")
        res_last_take = settled(((res_beats << lw) - ((nub - 1) << (ln + rl)))[:16], 16,
                                "res_last_take")
        m.d.comb += [g_src.elog.eq(sl), g_src.last.eq(in_last), g_src.last_take.eq(src_last_take),
                     g_res.elog.eq(rl), g_res.last.eq(in_last), g_res.last_take.eq(res_last_take)]
        in_open = Signal()          # in_row < rows_run, a register kept with the counter
        in_ok = phase_run & in_open & g_src.avail & (g_res.avail | ~use_res)
        m.d.comb += unit_in.i.valid.eq(in_ok)
        fire_in = in_ok & unit_in.i.ready
        m.d.comb += [g_src.take.eq(fire_in), g_res.take.eq(fire_in & use_res)]
        with m.If(fire_in):
            with m.If(in_last):
                m.d.sync += [in_beat.eq(0), in_row.eq(in_row + 1), in_last.eq(nub_m1 == 0),
                             in_open.eq(in_row + 1 < rows_run)]
            with m.Else():
                m.d.sync += [in_beat.eq(in_beat + 1), in_last.eq(in_beat + 1 == nub_m1)]
        if dec:
            # WIDE_LO's row exponents: the PARAMS phase's beats in a buffer, read for the row
            # the next unit beat belongs to (its data follows the address by a cycle, when
            # in_row has moved on with it), clamped to ROW_EXP_MAX.
            m.submodules.e_rows = e_rows = memory.Memory(
                shape=unsigned(8 * W), depth=max(2, WIDE_LO_MAX_ROWS // W), init=[])
            ew, er = e_rows.write_port(), e_rows.read_port()
            m.d.comb += [ew.en.eq(is_wlo & phase_params & fire_resp), ew.addr.eq(p_resp),
                         ew.data.eq(resp.payload)]
            next_row = Mux(fire_in & in_last, in_row + 1, in_row)
            m.d.comb += er.addr.eq(next_row >> lw)
            e_byte = Signal(8)
            m.d.comb += e_byte.eq(er.data.word_select(in_row[:lw], 8) if lw else er.data)
            row_e = Signal(range(nx.ROW_EXP_MAX + 1))
            m.d.comb += row_e.eq(Mux(e_byte > nx.ROW_EXP_MAX, nx.ROW_EXP_MAX, e_byte))
        sb = g_src.bytes
        for k in range(N):
            lane = Signal(signed(32), name=f"in_lane{k}")
            with m.Switch(cmd.src_fmt):
                with m.Case(OutFormat.INT8):
                    m.d.comb += lane.eq(sb[8 * k:8 * k + 8].as_signed())
                with m.Case(OutFormat.UINT8):
                    m.d.comb += lane.eq(sb[8 * k:8 * k + 8])
                with m.Case(OutFormat.INT16):
                    m.d.comb += lane.eq(sb[16 * k:16 * k + 16].as_signed())
                with m.Case(OutFormat.INT32):
                    m.d.comb += lane.eq(sb[32 * k:32 * k + 32].as_signed())
            m.d.comb += unit_in.i.payload.data[k].eq(lane)
            if dec:
                m.d.comb += unit_in.i.payload.rexp.eq(row_e)
                # int16 residual lanes sign-extended, RESIDUAL32's int32 ones; 0 without a
                # residual (WIDE_SPLIT runs the unit's RESIDUAL, which always adds).
                rb = g_res.bytes
                m.d.comb += unit_in.i.payload.residual[k].eq(
                    Mux(~use_res, 0, Mux(is_r32, rb[32 * k:32 * k + 32].as_signed(),
                                         rb[16 * k:16 * k + 16].as_signed())))
            else:
                m.d.comb += unit_in.i.payload.residual[k].eq(
                    g_res.bytes[16 * k:16 * k + 16].as_signed())

        # --- output: pack, saturate, write rows; row exponents ---------------------------------
        Cb = 2 * max(W, 4 * N)
        obuf = Signal(8 * Cb)
        olevel = Signal(range(Cb + 1))
        oflush = Signal()
        o_beat = Signal(16)        # unit beat of the output row
        o_row = Signal(17)         # output rows fully written
        w_row_addr = Signal(ab)
        w_beat = Signal(16)
        wr = stages["wr"].i
        e_buf = Signal(8 * W)
        e_strb = Signal(W)
        e_pend = Signal()
        e_row = Signal(17)         # rows whose exponent is recorded
        e_word_addr = Signal(ab)

        # Write port: a pending exponent beat first, else a data beat; data only for the
        # command's rows (a fence: the unit's beats past them are never written). The fences
        # are registers (o_row < rows_out and e_row < rows, updated with the counters), and
        # every decision below is taken from registers and the write stage's registered ready,
        # never from the bytes this cycle's write pops.
        row_fence = Signal()
        o_open = Signal()                   # o_row < rows_out
        m.d.comb += row_fence.eq(o_open)
        d_want = phase_run & row_fence & ((olevel >= W) | (oflush & (olevel != 0)))
        m.d.comb += [wr.payload.addr.eq(Mux(e_pend, e_word_addr, (w_row_addr + (w_beat << lw))[:ab])),
                     wr.payload.data.eq(Mux(e_pend, e_buf, obuf[:8 * W])),
                     wr.valid.eq(e_pend | d_want)]
        d_strb = Signal(W)
        with m.If(olevel >= W):
            m.d.comb += d_strb.eq((1 << W) - 1)
        with m.Else():
            m.d.comb += d_strb.eq((Const(1, W + 1) << olevel) - 1)
        m.d.comb += wr.payload.strb.eq(Mux(e_pend, e_strb, d_strb))
        d_fire = wr.ready & ~e_pend & d_want
        # A write pops W bytes, or on a row's last write (flushing) all olevel <= W of them.
        last_write = oflush & (olevel <= W)
        flush_done = last_write & d_fire
        with m.If(d_fire):
            with m.If(flush_done):
                m.d.sync += [w_beat.eq(0), w_row_addr.eq(w_row_addr + cmd.dst_stride),
                             o_row.eq(o_row + 1), oflush.eq(0), o_open.eq(o_row + 1 < rows_out)]
            with m.Else():
                m.d.sync += w_beat.eq(w_beat + 1)
        with m.If(wr.ready & e_pend):
            m.d.sync += [e_pend.eq(0), e_strb.eq(0), e_buf.eq(0)]

        o_last = Signal()
        # WIDE_SPLIT: the unit's output rows of the high plane (byte 1) are still coming.
        o_hi = Signal()
        o_urow = Signal(17)
        V = Signal(range(4 * N + 1))
        v_last = settled((dst_bytes - ((nub - 1) << (ln + dl)))[:len(V)], len(V), "v_last")
        v_mid = settled(N << dl, len(V), "v_mid")
        # ROTARY: the unit's first row of each pair (its even rows) is not written.
        o_drop = (is_rot & ~o_urow[0]) if dec else C(0, 1)
        m.d.comb += V.eq(Mux(o_drop, 0, Mux(o_last, v_last, v_mid)))
        # A unit beat goes in below half the buffer (olevel < Cb / 2, so olevel + V <= Cb: the
        # insertion shifter spans half the positions), or while flushing in the cycle the row's
        # last write leaves the buffer empty.
        Ch = Cb // 2
        o_ok = (phase_run & Mux(oflush, flush_done, olevel < Ch)
                & ~(e_pend & use_e & o_last))
        m.d.comb += unit_out.o.ready.eq(o_ok)
        fire_o = unit_out.o.valid & o_ok
        packed = Signal(8 * 4 * N)
        for k in range(N):
            ys = unit_out.o.payload.data[k]     # saturated to the destination's range by the unit
            with m.Switch(dl):
                for b in range(3):
                    with m.Case(b):
                        eb = 1 << b
                        if dec and b == 0:
                            m.d.comb += packed[8 * k:8 * (k + 1)].eq(Mux(o_hi, ys[8:16], ys[:8]))
                        else:
                            m.d.comb += packed[8 * eb * k:8 * eb * (k + 1)].eq(ys[:8 * eb])
        vmask = Signal(8 * 4 * N)
        for byte in range(4 * N):
            m.d.comb += vmask[8 * byte:8 * byte + 8].eq(Mux(byte < V, 0xFF, 0))
        # Inside a row every unit beat but the last brings N << dl bytes and a write takes W
        # (both powers of two), and a row starts at level 0 (after the previous row's flush):
        # a unit beat always goes in at a multiple of min(N, W) bytes.
        lg = _log2(min(N, W))
        # Bytes of obuf at and above olevel are always zero (it starts zeroed, the unit's beats
        # are masked to V bytes, and bytes come out at the bottom). Outside a flush a beat goes
        # in at olevel and a write then moves everything down by W bytes; a flush's last write
        # leaves nothing, and a beat taken with it goes in at 0.
        ins = Signal(8 * Cb)
        m.d.comb += ins.eq(Mux(fire_o, packed & vmask, 0)
                           << Mux(oflush, 0, olevel[lg:_log2(Ch)] << (3 + lg)))
        merged = Signal(8 * Cb)
        m.d.comb += merged.eq(Mux(flush_done, 0, obuf) | ins)
        m.d.sync += obuf.eq(Mux(d_fire & ~last_write, merged >> (8 * W), merged))
        # The level: + V for a beat taken, - W for a write, or V alone after a flush's last one.
        v_in = Mux(fire_o, V, 0)
        lvl_in = Signal(range(Cb + 1))
        m.d.comb += lvl_in.eq(olevel + v_in)
        m.d.sync += olevel.eq(Mux(flush_done, v_in, Mux(d_fire, lvl_in - W, lvl_in)))
        with m.If(fire_o):
            with m.If(o_last):
                m.d.sync += [o_beat.eq(0), oflush.eq(~o_drop), o_last.eq(nub_m1 == 0)]
                if dec:
                    m.d.sync += o_urow.eq(o_urow + 1)
                    with m.If(o_urow + 1 == rows):
                        m.d.sync += o_hi.eq(0)
            with m.Else():
                m.d.sync += [o_beat.eq(o_beat + 1), o_last.eq(o_beat + 1 == nub_m1)]
        # Row exponents: one byte per row, W rows a beat.
        e_pos = e_row[:lw] if lw else C(0, 1)
        e_fence = Signal()                   # (a fence, as d_want's)
        e_open = Signal()                    # e_row < rows
        m.d.comb += e_fence.eq(e_open)
        with m.If(fire_o & o_last & use_e & e_fence):
            m.d.sync += [e_buf.eq(e_buf | (unit_out.o.payload.exp << (e_pos << 3))),
                         e_strb.eq(e_strb | (Const(1, 1) << e_pos)), e_row.eq(e_row + 1),
                         e_open.eq(e_row + 1 < rows)]
            with m.If((e_pos == W - 1) | (e_row + 1 == rows)):
                m.d.sync += [e_pend.eq(1),
                             e_word_addr.eq(cmd.e_addr + ((e_row >> lw) << lw))]

        # --- control ----------------------------------------------------------------------
        clear = Signal()
        m.d.comb += [g_src.clear.eq(clear), g_res.clear.eq(clear)]
        ucmd_again = Signal()
        m.d.comb += self.done.payload.eq(code)
        with m.FSM(name="vector_engine") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += cmd.eq(self.cmd.payload)
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += [self.busy.eq(1), clear.eq(1)]
                m.d.sync += [p_req.eq(0), p_resp.eq(0), rec_idx.eq(0), asm_beat.eq(0),
                             bad_rec.eq(0), staging.eq(0),
                             s_row_addr.eq(cmd.src_addr), s_beat.eq(0), s_row.eq(0),
                             r_row_addr.eq(cmd.res_addr), r_beat.eq(0), r_row.eq(0),
                             in_beat.eq(0), in_row.eq(0), o_beat.eq(0), o_row.eq(0),
                             oflush.eq(0), olevel.eq(0), obuf.eq(0),
                             w_row_addr.eq(cmd.dst_addr), w_beat.eq(0),
                             e_buf.eq(0), e_strb.eq(0), e_pend.eq(0), e_row.eq(0),
                             in_open.eq(1), o_open.eq(1), e_open.eq(1), last_grant_res.eq(0)]
                with m.If(bad_op):
                    m.d.sync += code.eq(ErrorCode.BAD_MODE)
                    m.next = "DONE"
                with m.Elif(bad_shape):
                    m.d.sync += code.eq(ErrorCode.BAD_SHAPE)
                    m.next = "DONE"
                with m.Elif(bad_align):
                    m.d.sync += code.eq(ErrorCode.BAD_ALIGN)
                    m.next = "DONE"
                if dec:
                    with m.Elif(bad_mode):
                        m.d.sync += code.eq(ErrorCode.BAD_MODE)
                        m.next = "DONE"
                with m.Elif(bad_scalar):
                    m.d.sync += code.eq(ErrorCode.BAD_PARAM)
                    m.next = "DONE"
                with m.Elif(use_p | is_wlo):
                    m.d.sync += [code.eq(ErrorCode.OK), phase_params.eq(1)]
                    m.next = "PARAMS"
                with m.Else():
                    m.d.sync += code.eq(ErrorCode.OK)
                    m.next = "START"
            with m.State("PARAMS"):
                m.d.comb += self.busy.eq(1)
                with m.If(phase_params & fire_resp):
                    m.d.sync += p_resp.eq(p_resp + 1)
                with m.If(p_resp == p_beats):
                    m.d.sync += phase_params.eq(0)
                    with m.If(bad_rec):
                        m.d.sync += code.eq(ErrorCode.BAD_PARAM)
                        m.next = "DONE"
                    with m.Else():
                        m.next = "START"
            with m.State("START"):
                m.d.comb += [self.busy.eq(1), unit.cmd.valid.eq(1)]
                # nub_m1 has settled by now (it follows cmd by a cycle; CHECK came first).
                m.d.sync += [in_last.eq(nub_m1 == 0), o_last.eq(nub_m1 == 0)]
                if dec:
                    m.d.sync += [o_hi.eq(is_split), o_urow.eq(0)]
                with m.If(unit.cmd.ready):
                    m.d.sync += phase_run.eq(1)
                    if dec:
                        m.d.sync += ucmd_again.eq(is_split)
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                if dec:
                    # WIDE_SPLIT's second pass: the same command to the unit once more.
                    m.d.comb += unit.cmd.valid.eq(ucmd_again)
                    with m.If(unit.cmd.ready):
                        m.d.sync += ucmd_again.eq(0)
                with m.If((o_row == rows_out) & ~e_pend & ~stages["wr"].o.valid):
                    m.d.sync += phase_run.eq(0)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.busy.eq(1), self.done.valid.eq(1)]
                with m.If(self.done.ready):
                    m.next = "IDLE"
        # For the write-path proof (sim/properties.py).
        self._probe = dict(fsm=fsm, cmd=cmd, phase_run=phase_run, rows_out=rows_out,
                           nub_m1=nub_m1, dst_bytes=dst_bytes, dl=dl, use_e=use_e, o_row=o_row,
                           o_beat=o_beat, o_last=o_last, olevel=olevel, oflush=oflush,
                           o_drop=o_drop, w_row_addr=w_row_addr, w_beat=w_beat, e_pend=e_pend,
                           e_row=e_row, e_word_addr=e_word_addr, wr_stage=stages["wr"],
                           row_fence=row_fence, e_fence=e_fence,
                           o_open=o_open, e_open=e_open)
        return m
