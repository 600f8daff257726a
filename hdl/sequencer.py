"""Tile sequencing of one matmul: what to load, what to compute, what to store, in which order.

The result C (M x N) is cut into *groups* of G columns (G = max(array, port width), so a row of
a group is a whole number of port beats) and *panels* of ``array`` rows. A *work item* is one
(group, panel) pair and a *tile* is one array-sized block of it; the order is::

    for g in groups:            # B[:, g] (K x G bytes) and the column parameters stay on chip
        for p in panels:        # A[p, :] (array x K bytes) and the addend tile are loaded
            for blk in blocks:  # G / array tiles, each K steps through the array
                ...

Four units walk this order independently and meet only at double-buffered scratchpads, each
guarded by a :class:`~celosia.hdl.scratchpad.PingPong`:

* :class:`Loader` issues read requests for the next item's operands while the current one
  computes, and steers the in-order responses into the scratchpads (a transposed B passes
  through a W x W byte corner turn on the way).
* :class:`Feeder` reads A and B from the scratchpads and streams steps into the array.
* :class:`Collector` pairs each result row leaving the array with its column parameters and
  addend row, for the epilogue.
* :class:`Writer` packs the epilogue's rows into memory beats with byte strobes, clipped to
  M x N.

B is read from memory once; A once per group (about N*N/G bytes per array step); the array is
busy whenever the loader keeps one item ahead.
"""

from amaranth import *
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .epilogue import epilogue_layout
from .params import (ADDR_BITS, DIM_BITS, K_BITS, K_MAX, PARAM_BIAS_OFFSET, PARAM_MULT_OFFSET,
                     PARAM_RECORD_BYTES, PARAM_SHIFT_OFFSET, AddendMode, OutFormat,
                     command_layout, group_cols)
from .scratchpad import SyncFifo
from .systolic import row_layout, step_layout
from celosia.sw.numerics import MULT_BITS, ROW_EXP_MAX

__all__ = ["plan_layout", "compute_plan", "read_request_layout", "write_layout",
           "Loader", "Feeder", "Collector", "Writer", "RESOURCES"]

#: Scratchpads in the order the tokens and loader targets use.
RESOURCES = ("a", "b", "p", "d", "e")
A, B, P, D, E = range(5)
NRES = len(RESOURCES)


#: The loader's job slots within one item (panel of A and group of B), in order. The feeder
#: needs the whole A panel (a row of A is K contiguous bytes, a step takes a column) but
#: follows B row after row while it arrives (``Loader.b_row``), so A goes first when its buffer
#: is free as the item starts (``EARLY_A``); otherwise it waits in its slot after B and the
#: parameters (``LATE_A``), and they load during the wait.
JOB_SLOTS = (A, B, P, A, E, D)
EARLY_A, LATE_A = 0, 3
#: The job order of a loader whose feeder waits for full buffers (``follow_b`` off).
FULL_BUFFER_SLOTS = (B, P, A, E, D)


def _job_needed(cmd, p_idx, j):
    """Whether job ``j`` loads anything for the item at panel ``p_idx``: B and the parameters
    once per group, A always, the addend and the row exponents when the command uses them."""
    first_of_group = p_idx == 0
    return {A: 1, B: first_of_group, P: first_of_group & cmd.use_params,
            D: cmd.addend != AddendMode.NONE, E: cmd.row_shift}[j]


def _slot_needed(cmd, p_idx, slots, pos, a_free, a_early):
    """Whether slot ``pos`` of ``slots`` loads anything; in JOB_SLOTS, A in the early slot when
    its buffer is free (``a_free``, as the item starts), else in the late one (``a_early``: it
    went early)."""
    if slots is JOB_SLOTS and pos == EARLY_A:
        return a_free
    if slots is JOB_SLOTS and pos == LATE_A:
        return ~a_early
    return _job_needed(cmd, p_idx, slots[pos])


def _log2(x: int) -> int:
    assert x > 0 and x & (x - 1) == 0, x
    return x.bit_length() - 1


def read_request_layout() -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(ADDR_BITS)})


def write_layout(port_bytes: int) -> data.StructLayout:
    return data.StructLayout({
        "addr": unsigned(ADDR_BITS),
        "data": unsigned(port_bytes * 8),
        "strb": unsigned(port_bytes),
    })


def plan_layout(array: int, port_bytes: int, k_max: int = K_MAX) -> data.StructLayout:
    """Quantities derived once per command from its shape (``k_max``: the engine's longest K)."""
    g = group_cols(array, port_bytes)
    return data.StructLayout({
        "kp_m1": range(max(k_max, array)),     # steps per tile, max(K, array), minus one
        "a_words": range(k_max // port_bytes + 1),                   # beats per A row
        "ng_m1": unsigned(DIM_BITS - _log2(g)),        # groups minus one (the last group)
        "np_m1": unsigned(DIM_BITS - _log2(array)),    # panels minus one (the last panel)
        "last_rows": range(array + 1),         # rows of the last panel
        "nblk_m1": range(g // array),          # tiles in the last group minus one
        "bw_last": range(g // port_bytes + 1),                       # B beats per row, last group
        "cols_last": range(g + 1),             # columns of the last group
        "pw_last": range(PARAM_RECORD_BYTES * g // port_bytes + 1),  # parameter beats, last group
        "dw_last": range(4 * g // port_bytes + 1),                   # addend beats per row, last group
        "dw_full": range(4 * g // port_bytes + 1),                   # ... other groups
        "ew_last": range(max(1, array // port_bytes) + 1),           # exponent beats, last panel
        "d_log2": range(3),                    # log2 of addend bytes (int32: 2, int16: 1)
        "ob_log2": range(3),                   # log2 of result bytes
    })


def compute_plan(m: Module, cmd, plan, array: int, port_bytes: int):
    """Drive the ``plan`` signal (plan_layout) combinationally from ``cmd`` (command_layout).

    Meaningful for a command that passes the engine's checks (M, K, N at least 1)."""
    g = group_cols(array, port_bytes)
    lg, ln, lw = _log2(g), _log2(array), _log2(port_bytes)
    n_m1 = Signal(DIM_BITS)
    m_m1 = Signal(DIM_BITS)
    rem = Signal(range(g + 1))
    m.d.comb += [
        n_m1.eq(cmd.n - 1),
        m_m1.eq(cmd.m - 1),
        rem.eq(n_m1[:lg] + 1),
        plan.kp_m1.eq(Mux(cmd.k < array, array - 1, cmd.k - 1)),
        plan.a_words.eq((cmd.k + (port_bytes - 1)) >> lw),
        plan.ng_m1.eq(n_m1 >> lg),
        plan.np_m1.eq(m_m1 >> ln),
        plan.last_rows.eq(m_m1[:ln] + 1),
        plan.nblk_m1.eq(n_m1[ln:lg] if g > array else 0),
        plan.bw_last.eq((rem + (port_bytes - 1)) >> lw),
        plan.cols_last.eq(rem),
        plan.ew_last.eq((plan.last_rows + (port_bytes - 1)) >> lw),
        plan.pw_last.eq(((rem * PARAM_RECORD_BYTES) + (port_bytes - 1)) >> lw),
        plan.d_log2.eq(Mux(cmd.addend == AddendMode.RESIDUAL16, 1, 2)),
        plan.dw_last.eq(((rem << plan.d_log2) + (port_bytes - 1)) >> lw),
        plan.dw_full.eq((g << plan.d_log2) >> lw),
        plan.ob_log2.eq(Mux(cmd.requant,
                            Mux(cmd.out_fmt == OutFormat.INT32, 2,
                                Mux(cmd.out_fmt == OutFormat.INT16, 1, 0)),
                            2)),
    ]


class _Walk:
    """The (group, panel, tile) order, as registers advanced one tile at a time."""

    def __init__(self, m: Module, plan, array: int, port_bytes: int, name: str):
        blocks = group_cols(array, port_bytes) // array
        self.g = Signal(len(plan.ng_m1), name=f"{name}_g")
        self.p = Signal(len(plan.np_m1), name=f"{name}_p")
        self.blk = Signal(range(blocks), name=f"{name}_blk")
        # The buffer parities run on from command to command (reset by ``clear`` only), so
        # a loader working ahead on the next command fills the buffers its reader takes next.
        self.item_parity = Signal(name=f"{name}_item_parity")
        self.gpar = Signal(name=f"{name}_group_parity")
        self.g_last = Signal(name=f"{name}_g_last")
        self.p_last = Signal(name=f"{name}_p_last")
        self.blk_last = Signal(name=f"{name}_blk_last")
        self.group_last = Signal(name=f"{name}_group_last")
        self.final = Signal(name=f"{name}_final")
        m.d.comb += [
            self.g_last.eq(self.g == plan.ng_m1),
            self.p_last.eq(self.p == plan.np_m1),
            self.blk_last.eq(self.blk == Mux(self.g_last, plan.nblk_m1, blocks - 1)),
            self.group_last.eq(self.blk_last & self.p_last),
            self.final.eq(self.group_last & self.g_last),
        ]

    @property
    def group_parity(self):
        return self.gpar

    def reset(self):
        """Back to the first tile of a command (the parities run on)."""
        return [self.g.eq(0), self.p.eq(0), self.blk.eq(0)]

    def clear(self):
        """Both buffers of every scratchpad free again: parities back to 0."""
        return [self.item_parity.eq(0), self.gpar.eq(0)]

    def advance(self, m: Module, domain="sync"):
        """Statements (under the caller's condition) moving to the next tile."""
        with m.If(self.blk_last):
            m.d[domain] += [self.blk.eq(0), self.item_parity.eq(~self.item_parity)]
            with m.If(self.p_last):
                m.d[domain] += [self.p.eq(0), self.g.eq(self.g + 1), self.gpar.eq(~self.gpar)]
            with m.Else():
                m.d[domain] += self.p.eq(self.p + 1)
        with m.Else():
            m.d[domain] += self.blk.eq(self.blk + 1)


class _Unit(wiring.Component):
    def __init__(self, array, port_bytes, members, addr_bits=ADDR_BITS, k_max=K_MAX):
        self.array = array
        self.port_bytes = port_bytes
        #: Address bits computed with (``params.Sizing.addr_bits``); the ports carry ADDR_BITS.
        self.addr_bits = addr_bits
        self.group = group_cols(array, port_bytes)
        super().__init__({
            "start": In(1),
            # The scratchpads' buffers were all made free: the buffer parities restart at 0.
            "clear": In(1),
            "cmd": In(command_layout()),
            "plan": In(plan_layout(array, port_bytes, k_max)),
            **members,
        })


class Loader(_Unit):
    """Reads each work item's operands from the memory port into the scratchpads.

    Per item, in order (``JOB_SLOTS``): the A panel if its buffer is free as the item starts,
    the B group and its column parameters (first panel of a group only), the A panel if it did
    not go first, the row exponents (``row_shift``), the addend tile. Each load waits for its
    buffer to be free; the buffer becomes full when its last beat is written. B's rows of K are
    written in order, and ``b_row`` marks each one complete, so the feeder can start a group on
    a full A panel while its B still arrives. Descriptors of outstanding requests wait in a
    FIFO, so responses (in order) need no tags.

    A transposed B (``b_transposed``: memory row n holds column n of B) is read W columns at a
    time for one W-byte chunk of K: those W beats fill the columns of a W x W byte corner turn,
    whose rows (one k each, W columns) then go to the B scratchpad in the layout of an ordinary
    B, one per cycle. Responses wait while the corner turn drains, so a transposed B group
    costs about two cycles per beat (the drain stops at K).

    ``byte_turn`` (a board-sized build): no corner turn. A transposed B is read like any other
    operand, row after row of memory (one column of B each), and every beat is written into the
    B scratchpad one byte per cycle with a byte mask (``w_mask``): byte i of the beat holding
    column c, chunk kc is element (kc*W + i, c). A transposed B group then costs W cycles per
    beat. The scratchpad address of every beat is computed when it is requested, so the
    descriptors are narrow, and the read address is ``row address + word * W``. Such a B
    completes no row of K before its last beat, so it gives no ``b_row`` and is read full.

    Members
    -------
    rd_req : Out(stream.Signature(read_request_layout()))
    rd_resp : In(stream.Signature(port_bytes * 8))
    free : In(2 * NRES)
        ``free[2*r + b]``: buffer b of resource r (A, B, P, D, E) is free.
    claim, fill : Out(NRES)
        One-cycle pulses per resource, for buffer ``claim_buf`` / ``fill_buf``.
    w_valid : Out(NRES)
        A scratchpad beat for resource r: ``w_buf``, ``w_row`` (A bank), ``w_addr``, ``w_data``.
    b_row : Out(1)
        One more row of B (the next k, all the group's columns) written to buffer ``fill_buf``
        (with ``follow_b``; without, the loader keeps the order ``FULL_BUFFER_SLOTS``, for a
        feeder that waits for full buffers, and ``b_row`` stays low).
    """

    def __init__(self, array, port_bytes, *, k_max, outstanding=32, addr_bits=ADDR_BITS,
                 byte_turn=False, follow_b=True):
        self.k_max = k_max
        self.follow_b = follow_b
        self.slots = JOB_SLOTS if follow_b else FULL_BUFFER_SLOTS
        self.outstanding = outstanding
        self.byte_turn = byte_turn
        g = group_cols(array, port_bytes)
        self.max_words = max(k_max // port_bytes, PARAM_RECORD_BYTES * g // port_bytes, g)
        self.max_rows = max(k_max, array)
        super().__init__(array, port_bytes, {
            "rd_req": Out(stream.Signature(read_request_layout())),
            "rd_resp": In(stream.Signature(port_bytes * 8)),
            "free": In(2 * NRES),
            "claim": Out(NRES), "claim_buf": Out(1),
            "fill": Out(NRES), "fill_buf": Out(1),
            "w_valid": Out(NRES),
            "w_buf": Out(1),
            "w_row": Out(range(array)),
            "w_addr": Out(range(max(self.max_words, k_max * g // port_bytes,
                                    4 * array * g // port_bytes))),
            "w_data": Out(port_bytes * 8),
            "w_mask": Out(port_bytes),
            "b_row": Out(1),
            "idle": Out(1),
        }, addr_bits, k_max)

    def elaborate(self, platform):
        if self.byte_turn:
            return self._elaborate_byte_turn()
        m = Module()
        m.d.comb += self.w_mask.eq(-1)
        n, w, g = self.array, self.port_bytes, self.group
        lw = _log2(w)
        ab = self.addr_bits
        cmd, plan = self.cmd, self.plan
        desc_layout = data.StructLayout({
            "target": range(NRES), "buf": 1, "last": 1,
            "row": range(self.max_rows), "word": range(self.max_words),
            "flush": 1,         # transposed B: the last column of a corner-turn block
            "row_last": 1,      # transposed B: the last chunk of K
            "row_end": int(self.follow_b),      # the last word of a row
        })
        m.submodules.pending = pending = SyncFifo(
            width=desc_layout.size, depth=self.outstanding)

        # --- Request side --------------------------------------------------------------------
        g_idx = Signal(DIM_BITS)
        p_idx = Signal(DIM_BITS)
        item_parity = Signal()
        g_par = Signal()         # B's and P's buffer: one per group, run on across commands
        g_last = Signal()
        p_last = Signal()
        m.d.comb += [g_last.eq(g_idx == plan.ng_m1), p_last.eq(p_idx == plan.np_m1)]

        b_gbase = Signal(ab)     # b_addr + g*G (transposed: b_addr + g*G*b_stride)
        p_gbase = Signal(ab)     # p_addr + g*G*8
        a_pbase = Signal(ab)     # a_addr + p*N*a_stride
        d_pbase = Signal(ab)     # d_addr + p*N*d_stride + g*G*eb
        d_gbase = Signal(ab)     # d_addr + g*G*eb
        e_pbase = Signal(ab)     # e_addr + p*N

        target = Signal(range(NRES))
        buf = Signal()
        rows = Signal(range(self.max_rows + 1))
        words = Signal(range(self.max_words + 1))
        stride = Signal(ab)      # address step from row to row
        step = Signal(ab)        # address step from word to word
        row_addr = Signal(ab)
        addr = Signal(ab)
        row = Signal(range(self.max_rows))
        word = Signal(range(self.max_words))

        panel_rows = Mux(p_last, plan.last_rows, n)
        e_full = max(1, n // w)

        a_free = self.free.word_select(Cat(item_parity, C(A, 3)), 1)
        a_early = Signal()       # this item's A went in the early slot

        follow = self.follow_b

        def slot_needed(pos):
            return _slot_needed(cmd, p_idx, self.slots, pos, a_free, a_early)

        order = self.slots

        def setup(j):
            """Statements preparing job j of the current item."""
            stmts = [target.eq(j), row.eq(0), word.eq(0)]
            if j != B:
                stmts.append(step.eq(w))
            if j == B:
                stmts += [buf.eq(g_par), row_addr.eq(b_gbase), addr.eq(b_gbase)]
                with m.If(cmd.b_transposed):
                    # Rows are W-byte chunks of K, words are the group's columns.
                    m.d.sync += [rows.eq(plan.a_words), stride.eq(w), step.eq(cmd.b_stride),
                                 words.eq(Mux(g_last, plan.cols_last, g))]
                with m.Else():
                    m.d.sync += [rows.eq(cmd.k), stride.eq(cmd.b_stride), step.eq(w),
                                 words.eq(Mux(g_last, plan.bw_last, g // w))]
                return stmts
            elif j == P:
                stmts += [buf.eq(g_par), rows.eq(1), stride.eq(0),
                          words.eq(Mux(g_last, plan.pw_last, PARAM_RECORD_BYTES * g // w)),
                          row_addr.eq(p_gbase), addr.eq(p_gbase)]
            elif j == A:
                stmts += [buf.eq(item_parity), rows.eq(panel_rows), stride.eq(cmd.a_stride),
                          words.eq(plan.a_words), row_addr.eq(a_pbase), addr.eq(a_pbase)]
            elif j == E:
                # The beats holding this panel's N exponents (one beat shared by W/N panels).
                e_beat = Cat(C(0, lw), e_pbase[lw:])
                stmts += [buf.eq(item_parity), rows.eq(1), stride.eq(0),
                          words.eq(Mux(p_last, plan.ew_last, e_full)),
                          row_addr.eq(e_beat), addr.eq(e_beat)]
            else:
                stmts += [buf.eq(item_parity), rows.eq(panel_rows), stride.eq(cmd.d_stride),
                          words.eq(Mux(g_last, plan.dw_last, plan.dw_full)),
                          row_addr.eq(d_pbase), addr.eq(d_pbase)]
            return stmts

        row_last = Signal()
        word_last = Signal()
        m.d.comb += [row_last.eq(row == rows - 1), word_last.eq(word == words - 1)]
        desc = Signal(desc_layout)
        m.d.comb += [
            desc.target.eq(target), desc.buf.eq(buf), desc.row.eq(row), desc.word.eq(word),
            desc.last.eq(row_last & word_last),
            desc.flush.eq(word_last | (word[:lw] == w - 1)),
            desc.row_last.eq(row_last),
            desc.row_end.eq(word_last),
            pending.w_data.eq(desc),
            self.rd_req.payload.addr.eq(addr),
            self.claim_buf.eq(buf),
        ]

        with m.FSM(name="load") as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        g_idx.eq(0), p_idx.eq(0),
                        b_gbase.eq(cmd.b_addr), p_gbase.eq(cmd.p_addr),
                        a_pbase.eq(cmd.a_addr), d_pbase.eq(cmd.d_addr), d_gbase.eq(cmd.d_addr),
                        e_pbase.eq(cmd.e_addr),
                    ]
                    m.next = "SETUP_0"
            for pos, j in enumerate(order):
                def nxt(pos=pos):
                    """Go to the next slot (past the late A when A went early)."""
                    if follow and pos + 1 == LATE_A:
                        with m.If(a_early):
                            m.next = f"SETUP_{LATE_A + 1}"
                        with m.Else():
                            m.next = f"SETUP_{LATE_A}"
                    else:
                        m.next = f"SETUP_{pos + 1}" if pos + 1 < len(order) else "NEXT_ITEM"
                with m.State(f"SETUP_{pos}"):
                    if follow and pos == EARLY_A:
                        m.d.sync += a_early.eq(a_free)
                    with m.If(slot_needed(pos)):
                        m.d.sync += setup(j)
                        m.next = f"CLAIM_{pos}"
                    with m.Else():
                        nxt()
                with m.State(f"CLAIM_{pos}"):
                    with m.If(self.free.word_select(Cat(buf, C(j, 3)), 1)):
                        m.d.comb += self.claim.eq(1 << j)
                        m.next = f"ISSUE_{pos}"
                with m.State(f"ISSUE_{pos}"):
                    m.d.comb += [
                        self.rd_req.valid.eq(pending.w_rdy),
                        pending.w_en.eq(self.rd_req.ready),
                    ]
                    with m.If(self.rd_req.valid & self.rd_req.ready):
                        with m.If(word_last):
                            m.d.sync += [word.eq(0), row.eq(row + 1),
                                         row_addr.eq(row_addr + stride),
                                         addr.eq(row_addr + stride)]
                            with m.If(row_last):
                                nxt()
                        with m.Else():
                            m.d.sync += [word.eq(word + 1), addr.eq(addr + step)]
            with m.State("NEXT_ITEM"):
                m.d.sync += item_parity.eq(~item_parity)
                def next_item():
                    # The next item's A goes early if its buffer is free now (only the loader
                    # claims buffers); if not, its early slot is passed at once.
                    if not follow:
                        m.next = "SETUP_0"
                        return
                    with m.If(self.free.word_select(Cat(~item_parity, C(A, 3)), 1)):
                        m.next = "SETUP_0"
                    with m.Else():
                        m.d.sync += a_early.eq(0)
                        m.next = "SETUP_1"
                with m.If(p_last):
                    m.d.sync += [
                        p_idx.eq(0), g_idx.eq(g_idx + 1), g_par.eq(~g_par),
                        b_gbase.eq(b_gbase + Mux(cmd.b_transposed, cmd.b_stride << _log2(g), g)),
                        p_gbase.eq(p_gbase + PARAM_RECORD_BYTES * g),
                        a_pbase.eq(cmd.a_addr),
                        d_pbase.eq(d_gbase + (g << plan.d_log2)),
                        d_gbase.eq(d_gbase + (g << plan.d_log2)),
                        e_pbase.eq(cmd.e_addr),
                    ]
                    with m.If(g_last):
                        m.next = "IDLE"
                    with m.Else():
                        next_item()
                with m.Else():
                    m.d.sync += [
                        p_idx.eq(p_idx + 1),
                        a_pbase.eq(a_pbase + (cmd.a_stride << _log2(n))),
                        d_pbase.eq(d_pbase + (cmd.d_stride << _log2(n))),
                        e_pbase.eq(e_pbase + n),
                    ]
                    next_item()

        # --- Response side ------------------------------------------------------------------
        resp = Signal(desc_layout)
        # Corner turn for a transposed B: turn[i] holds k = chunk*W + i of W columns.
        turn = [Signal(8 * w, name=f"turn{i}") for i in range(w)]
        draining = Signal()
        d_i = Signal(range(w))
        d_chunk = Signal(range(max(2, self.k_max // w)))
        d_blk = Signal(range(max(2, g // w)))
        d_buf = Signal()
        d_last = Signal()
        d_chunk_last = Signal()
        d_row_end = Signal()    # the chunk's last block: each row drained completes a k
        d_end = Signal()
        m.d.comb += d_end.eq((d_i == w - 1) | (d_chunk_last & (d_i == (cmd.k - 1)[:lw])))

        m.d.comb += [
            resp.eq(pending.r_data),
            self.rd_resp.ready.eq(pending.r_rdy & ~draining),
            pending.r_en.eq(self.rd_resp.valid & ~draining),
        ]
        beat = self.rd_resp.valid & pending.r_rdy & ~draining
        lgw = _log2(g // w)
        turned = cmd.b_transposed & (resp.target == B)
        m.d.comb += [
            self.w_buf.eq(Mux(draining, d_buf, resp.buf)),
            self.w_row.eq(resp.row),
            self.w_data.eq(Mux(draining, turn[0], self.rd_resp.payload)),
            self.fill_buf.eq(Mux(draining, d_buf, resp.buf)),
        ]
        with m.If(draining):
            m.d.comb += [self.w_addr.eq(Cat(d_blk[:lgw], d_i, d_chunk)), self.w_valid[B].eq(1)]
            m.d.sync += [turn[i].eq(turn[i + 1]) for i in range(w - 1)]
            m.d.sync += d_i.eq(d_i + 1)
            if follow:
                m.d.comb += self.b_row.eq(d_row_end)
            with m.If(d_end):
                m.d.sync += draining.eq(0)
                with m.If(d_last):
                    m.d.comb += self.fill[B].eq(1)
        with m.Else():
            with m.Switch(resp.target):
                with m.Case(A, P, E):
                    m.d.comb += self.w_addr.eq(resp.word)
                with m.Case(B):
                    m.d.comb += self.w_addr.eq(Cat(resp.word[:lgw], resp.row))
                with m.Case(D):
                    # Row r of the addend tile starts at beat r * (G * eb / W).
                    m.d.comb += self.w_addr.eq(
                        Mux(plan.d_log2 == 2,
                            Cat(resp.word[:lgw + 2], resp.row),
                            Cat(resp.word[:lgw + 1], resp.row)))
            for j in range(NRES):
                with m.If(beat & (resp.target == j) & ~(turned if j == B else C(0, 1))):
                    m.d.comb += self.w_valid[j].eq(1)
                    with m.If(resp.last):
                        m.d.comb += self.fill[j].eq(1)
                    if j == B and follow:
                        m.d.comb += self.b_row.eq(resp.row_end)
            with m.If(beat & turned):
                with m.Switch(resp.word[:lw]):
                    for col in range(w):
                        with m.Case(col):
                            m.d.sync += [turn[i][8 * col:8 * col + 8].eq(
                                self.rd_resp.payload[8 * i:8 * i + 8]) for i in range(w)]
                with m.If(resp.flush):
                    m.d.sync += [draining.eq(1), d_i.eq(0), d_chunk.eq(resp.row),
                                 d_blk.eq(resp.word >> lw), d_buf.eq(resp.buf),
                                 d_last.eq(resp.last), d_chunk_last.eq(resp.row_last),
                                 d_row_end.eq(resp.row_end)]
        with m.If(self.start):
            m.d.sync += draining.eq(0)
        # Every request issued and every response written: ready for another command.
        m.d.comb += self.idle.eq(fsm.ongoing("IDLE") & (pending.level == 0) & ~draining)
        with m.If(self.clear):
            m.d.sync += [item_parity.eq(0), g_par.eq(0)]
        return m

    def _elaborate_byte_turn(self):
        m = Module()
        n, w, g = self.array, self.port_bytes, self.group
        ln, lw, lg = _log2(n), _log2(w), _log2(g)
        lgw = lg - lw
        ab = self.addr_bits
        cmd, plan = self.cmd, self.plan
        addr_width = len(self.w_addr)
        # Rows of a job: K (B), the group's columns (transposed B) or a panel's rows; words of a
        # row: beats of K (A, transposed B), of the group's columns (B) or of its records (P, D).
        max_rows = max(self.k_max, n, g)
        max_words = max(self.k_max // w, PARAM_RECORD_BYTES * g // w)
        desc_layout = data.StructLayout({
            "target": range(NRES), "buf": 1, "last": 1,
            # A: the panel row (scratchpad bank); transposed B: the column's byte lane.
            "row": range(max(n, w)),
            # Scratchpad beat address (transposed B: without the two lowest bits of k).
            "addr": unsigned(addr_width),
            "row_end": int(self.follow_b),      # the last word of a row
        })
        m.submodules.pending = pending = SyncFifo(
            width=desc_layout.size, depth=self.outstanding)

        # --- Request side --------------------------------------------------------------------
        g_idx = Signal(len(plan.ng_m1))
        p_idx = Signal(len(plan.np_m1))
        item_parity = Signal()
        g_par = Signal()         # B's and P's buffer: one per group, run on across commands
        g_last = Signal()
        p_last = Signal()
        m.d.comb += [g_last.eq(g_idx == plan.ng_m1), p_last.eq(p_idx == plan.np_m1)]

        # Bases that need a multiplication are carried from job to job (the address past a
        # job's last row is the next panel's or group's); the others are computed.
        b_gbase = Signal(ab)     # b_addr + g*G (transposed: b_addr + g*G*b_stride)
        a_pbase = Signal(ab)     # a_addr + p*N*a_stride
        d_pbase = Signal(ab)     # d_addr + p*N*d_stride + g*G*eb (p > 0)
        p_gbase = Signal(ab)
        d_gbase = Signal(ab)
        e_beat = Signal(ab)
        m.d.comb += [
            p_gbase.eq(cmd.p_addr + (g_idx << (lg + _log2(PARAM_RECORD_BYTES)))),
            d_gbase.eq(cmd.d_addr + (g_idx << (lg + plan.d_log2))),
            # The beat holding this panel's N exponents (one beat shared by W/N panels).
            e_beat.eq(cmd.e_addr + (p_idx[lw - ln:] << lw) if w > n else
                      cmd.e_addr + (p_idx << ln)),
        ]

        target = Signal(range(NRES))
        buf = Signal()
        rows = Signal(range(max_rows + 1))
        words = Signal(range(max_words + 1))
        row_addr = Signal(ab)
        row = Signal(range(max_rows))
        word = Signal(range(max_words))
        transposed = cmd.b_transposed

        # Address step from row to row (P and E load one row).
        stride = Signal(ab)
        m.d.comb += stride.eq(Mux(target == A, cmd.a_stride,
                                  Mux(target == D, cmd.d_stride, cmd.b_stride)))
        next_row = Signal(ab)
        m.d.comb += next_row.eq(row_addr + stride)

        panel_rows = Mux(p_last, plan.last_rows, n)
        e_full = max(1, n // w)

        a_free = self.free.word_select(Cat(item_parity, C(A, 3)), 1)
        a_early = Signal()       # this item's A went in the early slot
        slot = Signal(range(len(self.slots)))

        follow = self.follow_b

        def slot_needed(pos):
            return _slot_needed(cmd, p_idx, self.slots, pos, a_free, a_early)

        order = self.slots

        def setup(j):
            stmts = [row.eq(0), word.eq(0), target.eq(j)]
            if j == B:
                stmts += [buf.eq(g_par), row_addr.eq(b_gbase),
                          rows.eq(Mux(transposed, Mux(g_last, plan.cols_last, g), cmd.k)),
                          words.eq(Mux(transposed, plan.a_words,
                                       Mux(g_last, plan.bw_last, g // w)))]
            elif j == P:
                stmts += [buf.eq(g_par), rows.eq(1),
                          words.eq(Mux(g_last, plan.pw_last, PARAM_RECORD_BYTES * g // w)),
                          row_addr.eq(p_gbase)]
            elif j == A:
                stmts += [buf.eq(item_parity), rows.eq(panel_rows), words.eq(plan.a_words),
                          row_addr.eq(a_pbase)]
            elif j == E:
                stmts += [buf.eq(item_parity), rows.eq(1),
                          words.eq(Mux(p_last, plan.ew_last, e_full)),
                          row_addr.eq(e_beat)]
            else:
                stmts += [buf.eq(item_parity), rows.eq(panel_rows),
                          words.eq(Mux(g_last, plan.dw_last, plan.dw_full)),
                          row_addr.eq(Mux(p_idx == 0, d_gbase, d_pbase))]
            return stmts

        row_last = Signal()
        word_last = Signal()
        m.d.comb += [row_last.eq(row == rows - 1), word_last.eq(word == words - 1)]
        desc = Signal(desc_layout)
        m.d.comb += [
            desc.target.eq(target), desc.buf.eq(buf), desc.last.eq(row_last & word_last),
            desc.row_end.eq(word_last),
            pending.w_data.eq(desc),
            self.rd_req.payload.addr.eq((row_addr + (word << lw))[:ab]),
            self.claim_buf.eq(buf),
        ]
        # Scratchpad addresses, in beats.
        with m.Switch(target):
            with m.Case(A):
                m.d.comb += [desc.row.eq(row), desc.addr.eq(word)]
            with m.Case(B):
                with m.If(transposed):
                    # Row = column c of the group, word = chunk of K.
                    m.d.comb += [desc.row.eq(row[:lw]),
                                 desc.addr.eq(Cat(row[lw:lg], word) if lgw else word)]
                with m.Else():
                    m.d.comb += desc.addr.eq(Cat(word[:lgw], row) if lgw else row)
            with m.Case(D):
                # Row r of the addend tile starts at beat r * (G * eb / W).
                m.d.comb += desc.addr.eq(Mux(plan.d_log2 == 2, Cat(word[:lgw + 2], row),
                                             Cat(word[:lgw + 1], row)))
            with m.Default():
                m.d.comb += desc.addr.eq(word)

        # One state per step of a job; ``slot`` walks the job slots, ``target`` is its job.
        def next_slot(now):
            """The slot after ``now`` (past the late A when A went early)."""
            if not follow:
                return now + 1
            return Mux((now + 1 == LATE_A) & a_early, LATE_A + 1, now + 1)

        with m.FSM(name="load") as fsm:
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        g_idx.eq(0), p_idx.eq(0), slot.eq(0),
                        b_gbase.eq(cmd.b_addr), a_pbase.eq(cmd.a_addr),
                    ]
                    m.next = "SETUP"
            with m.State("SETUP"):
                with m.Switch(slot):
                    for pos, j in enumerate(order):
                        with m.Case(pos):
                            if follow and pos == EARLY_A:
                                m.d.sync += a_early.eq(a_free)
                            with m.If(slot_needed(pos)):
                                m.d.sync += setup(j)
                                m.next = "CLAIM"
                            with m.Else():
                                if pos + 1 < len(order):
                                    m.d.sync += slot.eq(next_slot(pos))
                                else:
                                    m.next = "NEXT_ITEM"
            with m.State("CLAIM"):
                with m.If(self.free.word_select(Cat(buf, target), 1)):
                    m.d.comb += self.claim.eq(1 << target)
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += [
                    self.rd_req.valid.eq(pending.w_rdy),
                    pending.w_en.eq(self.rd_req.ready),
                ]
                with m.If(self.rd_req.valid & self.rd_req.ready):
                    with m.If(word_last):
                        m.d.sync += [word.eq(0), row.eq(row + 1), row_addr.eq(next_row)]
                        with m.If(row_last):
                            # The address past the last row is the next panel's (A, D) or the
                            # next group's (transposed B).
                            with m.Switch(target):
                                with m.Case(A):
                                    m.d.sync += a_pbase.eq(Mux(p_last, cmd.a_addr, next_row))
                                with m.Case(D):
                                    m.d.sync += d_pbase.eq(next_row)
                                with m.Case(B):
                                    with m.If(transposed):
                                        m.d.sync += b_gbase.eq(next_row)
                            with m.If(slot == len(order) - 1):
                                m.next = "NEXT_ITEM"
                            with m.Else():
                                m.d.sync += slot.eq(next_slot(slot))
                                m.next = "SETUP"
                    with m.Else():
                        m.d.sync += word.eq(word + 1)
            with m.State("NEXT_ITEM"):
                m.d.sync += item_parity.eq(~item_parity)
                # The next item's A goes early if its buffer is free now (only the loader
                # claims buffers); if not, its early slot is passed at once.
                if follow:
                    with m.If(self.free.word_select(Cat(~item_parity, C(A, 3)), 1)):
                        m.d.sync += slot.eq(EARLY_A)
                    with m.Else():
                        m.d.sync += [slot.eq(EARLY_A + 1), a_early.eq(0)]
                else:
                    m.d.sync += slot.eq(0)
                with m.If(p_last):
                    m.d.sync += [p_idx.eq(0), g_idx.eq(g_idx + 1), g_par.eq(~g_par)]
                    with m.If(~transposed):
                        m.d.sync += b_gbase.eq(b_gbase + g)
                    with m.If(g_last):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "SETUP"
                with m.Else():
                    m.d.sync += p_idx.eq(p_idx + 1)
                    m.next = "SETUP"

        # --- Response side ------------------------------------------------------------------
        resp = Signal(desc_layout)
        turned = Signal()
        sub = Signal(lw)            # the byte of a transposed B beat being written
        beat_done = Signal()
        m.d.comb += [
            resp.eq(pending.r_data),
            turned.eq(transposed & (resp.target == B)),
            beat_done.eq(~turned | (sub == w - 1)),
            self.rd_resp.ready.eq(pending.r_rdy & beat_done),
            pending.r_en.eq(self.rd_resp.valid & beat_done),
        ]
        beat = self.rd_resp.valid & pending.r_rdy
        payload = self.rd_resp.payload
        m.d.comb += [
            self.w_buf.eq(resp.buf), self.fill_buf.eq(resp.buf),
            self.w_row.eq(resp.row),
            self.w_addr.eq(Mux(turned,
                               Cat(resp.addr[:lgw], sub, resp.addr[lgw:]) if lgw else
                               Cat(sub, resp.addr),
                               resp.addr)),
            self.w_data.eq(Mux(turned, payload.word_select(sub, 8).replicate(w), payload)),
            self.w_mask.eq(Mux(turned, C(1, w) << resp.row[:lw], (1 << w) - 1)),
        ]
        with m.If(beat & turned):
            m.d.sync += sub.eq(sub + 1)
        for j in range(NRES):
            with m.If(beat & (resp.target == j)):
                m.d.comb += self.w_valid[j].eq(1)
                with m.If(resp.last & beat_done):
                    m.d.comb += self.fill[j].eq(1)
        # A row of an ordinary B is complete with its last word (a transposed one completes no
        # row of K before its last beat).
        if follow:
            m.d.comb += self.b_row.eq(beat & (resp.target == B) & ~transposed & resp.row_end)
        m.d.comb += self.idle.eq(fsm.ongoing("IDLE") & (pending.level == 0))
        with m.If(self.clear):
            m.d.sync += [item_parity.eq(0), g_par.eq(0)]
        return m


class Feeder(_Unit):
    """Streams A columns and B rows from the scratchpads into the array, tile after tile.

    Steps past K (tiles shorter than the array are padded to ``array`` steps) carry zeros.
    A step needs the A panel full and, for B, either the buffer full or its row k already
    written (``b_written``: rows of each B buffer written so far), so a group starts while
    its B still arrives, one row ahead of the steps.
    Reads are pipelined one cycle. The array never stalls, so nothing here waits on it: the
    step that closes a tile is issued only with ``credit_ok`` (the result queue behind the
    array has room for the tile's ``array`` rows), and that step takes the credits
    (``credit_take``).
    """

    def __init__(self, array, port_bytes, *, k_max):
        self.k_max = k_max
        g = group_cols(array, port_bytes)
        super().__init__(array, port_bytes, {
            "full": In(4),                       # A buffers 0,1 then B buffers 0,1
            "b_written": In(data.ArrayLayout(range(k_max + 1), 2)),
            "release": Out(2), "release_a_buf": Out(1), "release_b_buf": Out(1),
            "a_r_en": Out(1), "a_r_buf": Out(1), "a_r_addr": Out(range(k_max)),
            "a_r_data": In(array * 8),
            "b_r_en": Out(1), "b_r_buf": Out(1), "b_r_addr": Out(range(k_max * g // array)),
            "b_r_data": In(array * 8),
            "o": Out(stream.Signature(step_layout(array), always_ready=True)),
            "credit_ok": In(1), "credit_take": Out(1),
            "busy": Out(1),
        }, k_max=k_max)

    def elaborate(self, platform):
        m = Module()
        n = self.array
        cmd, plan = self.cmd, self.plan
        walk = _Walk(m, plan, n, self.port_bytes, "feed")
        running = Signal()
        k = Signal.like(plan.kp_m1)
        k_last = Signal()
        m.d.comb += [k_last.eq(k == plan.kp_m1), self.busy.eq(running)]

        a_buf = walk.item_parity
        b_buf = walk.group_parity
        b_row_ok = self.full.bit_select(2 + b_buf, 1) | (k < self.b_written[b_buf])
        ready_tokens = self.full.bit_select(a_buf, 1) & b_row_ok

        v1 = Signal()
        live1 = Signal()
        last1 = Signal()
        issue = Signal()
        m.d.comb += [
            issue.eq(running & ready_tokens & (~k_last | self.credit_ok)),
            self.credit_take.eq(running & ready_tokens & k_last),
            self.a_r_en.eq(1), self.a_r_buf.eq(a_buf), self.a_r_addr.eq(k),
            self.b_r_en.eq(1), self.b_r_buf.eq(b_buf),
            self.b_r_addr.eq(Cat(walk.blk, k) if self.group > n else k),
            self.release_a_buf.eq(a_buf), self.release_b_buf.eq(b_buf),
        ]
        with m.If(self.start):
            m.d.sync += [running.eq(1), k.eq(0), *walk.reset()]
        with m.If(self.clear):
            m.d.sync += walk.clear()
        with m.If(issue):
            m.d.sync += [v1.eq(1), live1.eq(k < cmd.k), last1.eq(k_last)]
            with m.If(k_last):
                m.d.sync += k.eq(0)
                walk.advance(m)
                with m.If(walk.blk_last):
                    m.d.comb += self.release[0].eq(1)
                with m.If(walk.group_last):
                    m.d.comb += self.release[1].eq(1)
                with m.If(walk.final):
                    m.d.sync += running.eq(0)
            with m.Else():
                m.d.sync += k.eq(k + 1)
        with m.Else():
            m.d.sync += v1.eq(0)

        m.d.comb += [self.o.valid.eq(v1), self.o.payload.last.eq(last1)]
        for r in range(n):
            byte = self.a_r_data[8 * r:8 * r + 8]
            value = Mux(cmd.a_unsigned, byte.as_unsigned(), byte.as_signed())
            m.d.comb += self.o.payload.a[r].eq(Mux(live1, value, 0))
            m.d.comb += self.o.payload.b[r].eq(
                Mux(live1, self.b_r_data[8 * r:8 * r + 8].as_signed(), 0))
        return m


class Collector(_Unit):
    """Joins each result row of the array with its column parameters, addend row and row
    exponent.

    ``in_place``: instead of registering the row, read the scratchpads for the row the array
    offers, then offer it on ``o`` straight from the array's output register and take it from
    the array when the epilogue takes it (two cycles per row, which an epilogue with fewer lanes
    than the array needs anyway).

    A row is taken only with ``credit_ok`` (the queue behind the epilogue has room for its
    result) and takes that credit (``credit_take``): the epilogue never stalls."""

    def __init__(self, array, port_bytes, in_place=False, *, k_max=K_MAX):
        self.in_place = in_place
        g = group_cols(array, port_bytes)
        self.e_chunks = max(1, port_bytes // array)     # panels sharing one exponent beat
        super().__init__(array, port_bytes, {
            "full": In(6),                       # P buffers 0,1, D buffers 0,1, E buffers 0,1
            "release": Out(3), "release_p_buf": Out(1), "release_d_buf": Out(1),
            "release_e_buf": Out(1),
            "e_r_en": Out(1), "e_r_buf": Out(1), "e_r_addr": Out(range(self.e_chunks)),
            "e_r_data": In(array * 8),
            "p_r_en": Out(1), "p_r_buf": Out(1), "p_r_addr": Out(range(g // array)),
            "p_r_data": In(array * PARAM_RECORD_BYTES * 8),
            "d_r_en": Out(1), "d_r_buf": Out(1), "d_r_addr": Out(range(g)),
            "d_r_data": In(array * 4 * 8),
            "i": In(stream.Signature(row_layout(array))),
            "o": Out(stream.Signature(epilogue_layout(array))),
            "credit_ok": In(1), "credit_take": Out(1),
        }, k_max=k_max)

    def elaborate(self, platform):
        m = Module()
        n = self.array
        cmd, plan = self.cmd, self.plan
        walk = _Walk(m, plan, n, self.port_bytes, "collect")
        running = Signal()
        row = Signal(range(n))
        row_last = Signal()
        m.d.comb += row_last.eq(row == n - 1)

        p_buf = walk.group_parity
        d_buf = walk.item_parity
        e_buf = walk.item_parity
        use_d = cmd.addend != AddendMode.NONE
        ready_tokens = ((~cmd.use_params | self.full.bit_select(p_buf, 1)) &
                        (~use_d | self.full.bit_select(2 + d_buf, 1)) &
                        (~cmd.row_shift | self.full.bit_select(4 + e_buf, 1)))

        v1 = Signal()
        acc1 = Signal(row_layout(n))
        half1 = Signal()
        row1 = Signal(range(n))
        enable = Signal()
        accept = Signal()
        # Addend beat index of this row: row * (G / N) + blk, in 4N-byte units for int32 and
        # 2N-byte units (two per read) for int16.
        t = Signal(range(self.group))
        m.d.comb += t.eq(Cat(walk.blk, row) if self.group > n else row)
        m.d.comb += [
            accept.eq(self.i.valid & self.i.ready),
            self.credit_take.eq(accept),
            self.p_r_en.eq(enable), self.p_r_buf.eq(p_buf), self.p_r_addr.eq(walk.blk),
            self.d_r_en.eq(enable), self.d_r_buf.eq(d_buf),
            self.d_r_addr.eq(Mux(plan.d_log2 == 2, t, t >> 1)),
            self.release_p_buf.eq(p_buf), self.release_d_buf.eq(d_buf),
            self.e_r_en.eq(enable), self.e_r_buf.eq(e_buf),
            self.e_r_addr.eq(walk.p[:_log2(self.e_chunks)] if self.e_chunks > 1 else 0),
            self.release_e_buf.eq(e_buf),
        ]
        if self.in_place:
            # Phase 0: the scratchpads are read for the offered row; phase 1: it is offered on.
            phase = Signal()
            m.d.comb += [
                enable.eq(~phase),
                self.o.valid.eq(phase & self.i.valid),
                self.i.ready.eq(phase & self.o.ready),
                acc1.eq(self.i.payload), half1.eq(t[0]), row1.eq(row),
            ]
            with m.If(~phase & self.i.valid & running & ready_tokens & self.credit_ok):
                m.d.sync += phase.eq(1)
            with m.If(accept | self.start):
                m.d.sync += phase.eq(0)
        else:
            m.d.comb += [
                enable.eq(~v1 | self.o.ready),
                self.i.ready.eq(enable & running & ready_tokens & self.credit_ok),
                self.o.valid.eq(v1),
            ]
            with m.If(accept):
                m.d.sync += [v1.eq(1), acc1.eq(self.i.payload), half1.eq(t[0]), row1.eq(row)]
            with m.Elif(enable):
                m.d.sync += v1.eq(0)
        with m.If(self.start):
            m.d.sync += [running.eq(1), row.eq(0), *walk.reset()]
        with m.If(self.clear):
            m.d.sync += walk.clear()
        with m.If(accept):
            with m.If(row_last):
                m.d.sync += row.eq(0)
                walk.advance(m)
                with m.If(walk.blk_last & use_d):
                    m.d.comb += self.release[1].eq(1)
                with m.If(walk.blk_last & cmd.row_shift):
                    m.d.comb += self.release[2].eq(1)
                with m.If(walk.group_last & cmd.use_params):
                    m.d.comb += self.release[0].eq(1)
                with m.If(walk.final):
                    m.d.sync += running.eq(0)
            with m.Else():
                m.d.sync += row.eq(row + 1)

        o = self.o.payload
        m.d.comb += o.acc.eq(acc1)
        exp = self.e_r_data.word_select(row1, 8)
        m.d.comb += o.row_shift.eq(Mux(cmd.row_shift, Mux(exp > ROW_EXP_MAX, ROW_EXP_MAX, exp), 0))
        rec = PARAM_RECORD_BYTES * 8
        d16 = Mux(half1, self.d_r_data[n * 16:], self.d_r_data[:n * 16])
        for lane in range(n):
            base = lane * rec
            bias = self.p_r_data[base + 8 * PARAM_BIAS_OFFSET:][:32].as_signed()
            mult = self.p_r_data[base + 8 * PARAM_MULT_OFFSET:][:MULT_BITS]
            shift = self.p_r_data[base + 8 * PARAM_SHIFT_OFFSET:][:8]
            acc32 = self.d_r_data[32 * lane:32 * lane + 32].as_signed()
            res16 = d16[16 * lane:16 * lane + 16].as_signed()
            m.d.comb += [
                o.bias[lane].eq(Mux(cmd.use_params, bias, 0)),
                o.mult[lane].eq(mult),
                o.shift[lane].eq(Mux(shift > 63, 63, shift)),
            ]
            with m.Switch(cmd.addend):
                with m.Case(AddendMode.ACC32):
                    m.d.comb += o.addend[lane].eq(acc32)
                with m.Case(AddendMode.RESIDUAL16):
                    # Shifted by addend_shift in the epilogue.
                    m.d.comb += o.addend[lane].eq(res16)
                with m.Default():
                    m.d.comb += o.addend[lane].eq(0)
        return m


class Writer(_Unit):
    """Stores result rows as memory beats with byte strobes, skipping rows and columns past M, N.

    A row of a tile is ``array`` elements of 1, 2 or 4 bytes; it fills part of one beat or a
    whole number of beats (everything is a power of two and aligned). Since C's base and stride
    are multiples of W and a group is a whole number of beats, where a row lands in its beats
    depends only on the element size, the tile within the group and the beat, so each byte lane
    of a beat chooses among the few element bytes that can reach it.
    """

    def __init__(self, array, port_bytes, addr_bits=ADDR_BITS, *, k_max=K_MAX,
                 ready_registered: bool = False):
        super().__init__(array, port_bytes, {
            "i": In(stream.Signature(data.ArrayLayout(signed(32), array))),
            "wr": Out(stream.Signature(write_layout(port_bytes))),
            "done": Out(1),
        }, addr_bits, k_max)
        #: ``wr.ready`` never waits for ``wr.valid`` (a registered stage behind the writer):
        #: a skipped beat then waits for it too, which takes the strobes out of the take
        #: decision.
        self.ready_registered = ready_registered

    def elaborate(self, platform):
        m = Module()
        n, w, g = self.array, self.port_bytes, self.group
        ab = self.addr_bits
        cmd, plan = self.cmd, self.plan
        ln, lw, lg = _log2(n), _log2(w), _log2(g)
        blocks = g // n
        walk = _Walk(m, plan, n, w, "write")
        running = Signal()
        row = Signal(range(n))
        beat = Signal(range(max(1, 4 * n // w)))
        row_last = Signal()
        m.d.comb += row_last.eq(row == n - 1)

        panel_addr = Signal(ab)      # c_addr + p*N*c_stride
        row_addr = Signal(ab)        # panel_addr + row*c_stride
        next_row = Signal(ab)
        m.d.comb += next_row.eq(row_addr + cmd.c_stride)

        # Beats per row: max(1, N * out_bytes / W).
        beat_last = Signal()
        beats_m1 = [max(1, (n << ob_log2) // w) - 1 for ob_log2 in range(3)]
        m.d.comb += beat_last.eq(beat == Mux(plan.ob_log2 == 2, beats_m1[2],
                                             Mux(plan.ob_log2 == 1, beats_m1[1], beats_m1[0])))

        # The tile's first column, col0 = g*G + blk*N, as a byte offset within the row: a whole
        # number of beats plus, for a row shorter than a beat, a fixed offset within it (below).
        # The beat counter never overlaps those whole beats (a row of several beats starts at a
        # multiple of its length), so it is ORed in.
        col0 = Signal(DIM_BITS)
        m.d.comb += col0.eq(Cat(C(0, ln), walk.blk, walk.g) if blocks > 1 else
                            Cat(C(0, ln), walk.g))
        col_beats = Signal(ab - lw)
        m.d.comb += col_beats.eq((col0 << plan.ob_log2)[lw:] | beat)
        row_valid = ~walk.p_last | (row < plan.last_rows)
        m.d.comb += self.wr.payload.addr.eq(Cat(C(0, lw), (row_addr[lw:] + col_beats)[:ab - lw]))

        # Columns inside N: all of them except in the last group, where column blk*N + e of
        # the group must be below cols_last.
        inside = Signal(n)
        m.d.comb += inside.eq(Cat(~walk.g_last | ((walk.blk * n + e) < plan.cols_last)
                                  for e in range(n)))

        # Every (element size, tile, beat) case, and for each byte lane the element byte it
        # takes (None: not written).
        sources = [dict() for _ in range(w)]      # lane -> {(element, byte): [conditions]}
        for ob_log2 in range(3):
            ob = 1 << ob_log2
            span = n * ob
            for blk in range(blocks):
                off = (blk * span) % w
                for bt in range(max(1, span // w)):
                    cond = plan.ob_log2 == ob_log2
                    if blocks > 1:
                        cond = cond & (walk.blk == blk)
                    if span > w:
                        cond = cond & (beat == bt)
                    for j in range(w):
                        pos = j + bt * w - off
                        if 0 <= pos < span:
                            sources[j].setdefault((pos >> ob_log2, pos & (ob - 1)), []).append(cond)
        for j in range(w):
            srcs = sorted(sources[j].items(), key=lambda kv: -len(kv[1]))
            lane = self.i.payload[srcs[0][0][0]].as_unsigned().word_select(srcs[0][0][1], 8)
            strb = C(0, 1)
            for (e, b), conds in srcs:
                hit = Cat(*conds).any()
                if (e, b) != srcs[0][0]:
                    lane = Mux(hit, self.i.payload[e].as_unsigned().word_select(b, 8), lane)
                strb = strb | (hit & inside[e])
            m.d.comb += [self.wr.payload.data.word_select(j, 8).eq(lane),
                         self.wr.payload.strb[j].eq(strb)]

        # A beat none of whose bytes is an element of C (a row of the tile longer than a beat,
        # past N in the last group) is skipped, not written with all strobes low: its address
        # may lie past the end of C, and so past the window's end. Behind a registered stage
        # (``ready_registered``) it still waits for the stage's ready like a written beat, so
        # that the take decision does not wait for the strobes (the tile's columns inside N
        # and their OR); a ready that may wait for valid is not waited for.
        beat_used = Signal()
        m.d.comb += beat_used.eq(self.wr.payload.strb.any())
        take_row = Signal()
        with m.If(running & self.i.valid):
            with m.If(row_valid):
                m.d.comb += self.wr.valid.eq(beat_used)
                with m.If(self.wr.ready if self.ready_registered
                          else self.wr.ready | ~beat_used):
                    with m.If(beat_last):
                        m.d.comb += take_row.eq(1)
                        m.d.sync += beat.eq(0)
                    with m.Else():
                        m.d.sync += beat.eq(beat + 1)
            with m.Else():
                m.d.comb += take_row.eq(1)
        m.d.comb += self.i.ready.eq(take_row)

        with m.If(self.start):
            m.d.sync += [running.eq(1), row.eq(0), beat.eq(0), *walk.reset(),
                         panel_addr.eq(cmd.c_addr), row_addr.eq(cmd.c_addr)]
        with m.If(take_row):
            with m.If(row_last):
                m.d.sync += row.eq(0)
                walk.advance(m)
                with m.If(walk.blk_last):
                    # Past the panel's last row is the next panel.
                    with m.If(walk.p_last):
                        m.d.sync += [panel_addr.eq(cmd.c_addr), row_addr.eq(cmd.c_addr)]
                    with m.Else():
                        m.d.sync += [panel_addr.eq(next_row), row_addr.eq(next_row)]
                with m.Else():
                    m.d.sync += row_addr.eq(panel_addr)
                with m.If(walk.final):
                    m.d.sync += running.eq(0)
                    m.d.comb += self.done.eq(1)
            with m.Else():
                m.d.sync += [row.eq(row + 1), row_addr.eq(next_row)]
        # The state the write-address proof (celosia.sim.properties) states invariants of.
        self._probe = dict(running=running, row=row, beat=beat, panel_addr=panel_addr,
                           row_addr=row_addr, walk=walk, row_valid=row_valid,
                           beat_last=beat_last)
        return m
