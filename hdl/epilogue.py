"""Requantising epilogue: row shift, bias, addend (accumulate or residual) and per-column
dyadic scaling.

Per lane (output column), bit-exact with ``celosia.sw.numerics``::

    x = round_shift(acc, row_shift)                      # matmul(..., row_shift=e), per row
    x = saturate(x + bias, INT32)                        # matmul(..., bias)
    x = saturate(x + addend, INT32)                      # matmul(..., acc) or residual_add
    y = requantize(x, Dyadic(mult, shift), range, zp)    # or y = x (raw int32)

The pipeline has an input register and six stages (registered unless a board-sized build
merges some, see ``registers``) and never stalls: it takes a row every cycle one is offered and its receiver
takes every result (the engine issues a row only when the queue behind the epilogue has room
for it), so none of its registers has a clock enable.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from celosia.sw.numerics import INT32, MULT_BITS, SHIFT_MAX

from .params import ACC_BITS, OUT_RANGE, ROW_SHIFT_BITS, SHIFT_BITS, ZERO_POINT_BITS, OutFormat

__all__ = ["epilogue_layout", "Epilogue"]


def epilogue_layout(n: int) -> data.StructLayout:
    """One row into the epilogue: accumulators, the row's exponent and, per column, the operands
    that go with them."""
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(ACC_BITS), n),
        "row_shift": unsigned(ROW_SHIFT_BITS),
        "bias": data.ArrayLayout(signed(32), n),
        "addend": data.ArrayLayout(signed(32), n),
        "mult": data.ArrayLayout(unsigned(MULT_BITS), n),
        "shift": data.ArrayLayout(unsigned(SHIFT_BITS), n),
    })


def _members(n: int) -> dict:
    """The ports of an epilogue of ``n`` columns (:class:`Epilogue` and its serial core)."""
    return {
        "i": In(stream.Signature(epilogue_layout(n))),
        "o": Out(stream.Signature(data.ArrayLayout(signed(32), n))),
        "requant": In(1),
        "out_fmt": In(2),
        "zero_point": In(signed(ZERO_POINT_BITS)),
        "addend_shift": In(5),
    }


def _saturate32(value):
    """A sum of two int32 values (33 bits) saturated to INT32: overflow shows as bits 32 and
    31 differing."""
    return Mux(value[32] != value[31],
               Mux(value[32], C(INT32.lo, signed(32)), C(INT32.hi, signed(32))),
               value[:32].as_signed())


def _all_same(bits):
    return ~bits.any() | bits.all()


class Epilogue(wiring.Component):
    """N-lane row shift + bias + addend + requantise pipeline.

    Parameters
    ----------
    n : int
        Lanes (the array width).
    lanes : int
        Lanes built (default ``n``; a divisor of ``n``). With fewer, each row takes
        ``n / lanes`` cycles through one ``lanes``-wide pipeline (a board-sized build: the
        array delivers N rows per tile of at least N steps, so one lane keeps up with K >= N*N).
    registers : six bools
        Which of the six stages end in a register (the last always does); a stage without
        one is merged into the next, which saves flip-flops at a lower clock.
    serial : bool
        One small datapath that works through the row's elements one at a time over several
        cycles each (:class:`SerialEpilogue`) instead of a pipeline; ``lanes`` must be 1.

    Members
    -------
    i : In(stream.Signature(epilogue_layout(n)))
    o : Out(stream.Signature(ArrayLayout(signed(32), n)))
        Results, already saturated to the output range (the writer keeps the low bytes). The
        receiver must take every result it is offered (``o.ready`` high); a row is offered
        on ``i`` only when there is room for its result behind the epilogue.
    requant, out_fmt, zero_point, addend_shift : In
        Held constant during a command. ``requant`` low gives the raw saturated int32 sum.
        ``addend_shift`` shifts every addend left (a residual's ``addend_shift``; 0 otherwise).
    """

    #: An input register, then the six stages.
    LATENCY = 7

    def __init__(self, n: int, lanes: int | None = None, registers=(True,) * 6,
                 serial: bool = False):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"lanes must be a positive int, not {n!r}")
        lanes = n if lanes is None else lanes
        if not isinstance(lanes, int) or lanes < 1 or n % lanes:
            raise ValueError(f"lanes must divide {n}, not {lanes!r}")
        registers = tuple(bool(r) for r in registers)
        if len(registers) != 6 or not registers[-1]:
            raise ValueError("registers: six flags, the last one set")
        if serial and lanes != 1:
            raise ValueError("a serial epilogue has one lane")
        self.n = n
        self.lanes = lanes
        self.serial = serial
        self.registers = registers
        self.latency = 1 + sum(registers)
        super().__init__(_members(n))

    def elaborate(self, platform):
        if self.serial:
            m = Module()
            m.submodules.core = core = SerialEpilogue(self.n)
            wiring.connect(m, wiring.flipped(self.i), core.i)
            wiring.connect(m, core.o, wiring.flipped(self.o))
            m.d.comb += [core.requant.eq(self.requant), core.out_fmt.eq(self.out_fmt),
                         core.zero_point.eq(self.zero_point),
                         core.addend_shift.eq(self.addend_shift)]
            return m
        if self.lanes < self.n:
            return self._time_multiplexed()
        m = Module()
        n = self.n
        keep = self.registers
        valid = Signal(self.latency)
        m.d.comb += [self.i.ready.eq(1), self.o.valid.eq(valid[-1])]
        m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))

        def stage(k, name, shape, value):
            """The value at the end of stage ``k``: a register (no reset: only the valid bits
            say what it holds), or a wire when stage ``k`` is merged into the next."""
            sig = Signal(shape, name=name, reset_less=keep[k])
            if keep[k]:
                m.d.sync += sig.eq(value)
            else:
                m.d.comb += sig.eq(value)
            return sig

        # The output range of this command.
        lo = Signal(signed(32))
        hi = Signal(signed(32))
        with m.Switch(self.out_fmt):
            for fmt in OutFormat:
                with m.Case(fmt):
                    m.d.comb += [lo.eq(OUT_RANGE[fmt].lo), hi.eq(OUT_RANGE[fmt].hi)]
        assert [(OUT_RANGE[f].lo, OUT_RANGE[f].hi) for f in OutFormat] == [
            (-128, 127), (0, 255), (-32768, 32767), (INT32.lo, INT32.hi)]

        def in_range(v):
            """v (signed) lies in the output range: its bits above the format are copies of
            the sign (all zero for UINT8)."""
            ok = Signal(name="in_range")
            with m.Switch(self.out_fmt):
                with m.Case(OutFormat.INT8):
                    m.d.comb += ok.eq(_all_same(v[7:]))
                with m.Case(OutFormat.UINT8):
                    m.d.comb += ok.eq(~v[8:].any())
                with m.Case(OutFormat.INT16):
                    m.d.comb += ok.eq(_all_same(v[15:]))
                with m.Case(OutFormat.INT32):
                    m.d.comb += ok.eq(_all_same(v[31:]))
            return ok

        # The input register: the row arrives from the collector's scratchpad selects (the row
        # exponent picked from its beat and clamped), so the row shift starts from registers.
        p = Signal(epilogue_layout(n), name="row_in", reset_less=True)
        m.d.sync += p.eq(self.i.payload)
        # Stage 0: the row's round-half-up shift (one exponent for all lanes). The row travels
        # on with its operands one stage behind.
        row_half = Signal(unsigned(1 << ROW_SHIFT_BITS), name="row_half")
        m.d.comb += row_half.eq((C(1, 1 << ROW_SHIFT_BITS) << p.row_shift) >> 1)
        p0 = stage(0, "p0", data.StructLayout({name: epilogue_layout(n)[name].shape
                                               for name in ("bias", "addend", "mult", "shift")}),
                   Cat(p.bias, p.addend, p.mult, p.shift))
        for lane in range(n):
            # Stage 0 output: |acc| < 2**31, so acc + half fits 33 bits and the shifted value 32.
            xs = stage(0, f"xs_{lane}", signed(ACC_BITS), (p.acc[lane] + row_half) >> p.row_shift)
            # Stage 1: bias; the addend shifted into place (a residual: int16 << 0..16 fits).
            x1 = stage(1, f"x1_{lane}", signed(32), _saturate32(xs + p0.bias[lane]))
            addend1 = stage(1, f"addend1_{lane}", signed(32),
                            (p0.addend[lane] << self.addend_shift)[:32])
            # A raw result goes through the scaling as x * 1 >> 0 (exact), so it needs no
            # pipeline of its own.
            mult1 = stage(1, f"mult1_{lane}", MULT_BITS, Mux(self.requant, p0.mult[lane], 1))
            shift1 = stage(1, f"shift1_{lane}", SHIFT_BITS,
                           Mux(~self.requant, 0,
                               Mux(p0.shift[lane] > SHIFT_MAX, SHIFT_MAX, p0.shift[lane])))
            # Stage 2: addend.
            x2 = stage(2, f"x2_{lane}", signed(32), _saturate32(x1 + addend1))
            mult2 = stage(2, f"mult2_{lane}", MULT_BITS, mult1)
            shift2 = stage(2, f"shift2_{lane}", SHIFT_BITS, shift1)
            # Stage 3: product (|x| < 2**31, mult < 2**15: fits 47 bits).
            prod3 = stage(3, f"prod3_{lane}", signed(48), x2 * mult2)
            shift3 = stage(3, f"shift3_{lane}", SHIFT_BITS, shift2)
            # Stage 4: round half up and shift, as floor((floor(p / 2**(s-1)) + 1) / 2) for
            # s > 0 (p itself for s = 0). The shifted value is clamped to 35 bits first: beyond
            # that the result saturates whatever the zero point (|zp| < 2**31), and the clamp
            # keeps it beyond.
            t = Signal(signed(49), name=f"t_{lane}")
            m.d.comb += t.eq((prod3 << 1) >> shift3)
            tc = Signal(signed(35), name=f"tc_{lane}")
            t_lo, t_hi = C(-(1 << 34), signed(35)), C((1 << 34) - 1, signed(35))
            m.d.comb += tc.eq(Mux(_all_same(t[34:]), t[:35].as_signed(), Mux(t[48], t_lo, t_hi)))
            rounded4 = stage(4, f"rounded4_{lane}", signed(35), (tc + (shift3 != 0)) >> 1)
            # Stage 5: zero point and saturation, or the raw sum (x2 itself).
            v5 = Signal(signed(36), name=f"v5_{lane}")
            m.d.comb += v5.eq(rounded4 + self.zero_point)
            y5 = stage(5, f"y5_{lane}", signed(32),
                       Mux(self.requant,
                           Mux(in_range(v5), v5[:32], Mux(v5[35], lo, hi)),
                           rounded4[:32]))
            m.d.comb += self.o.payload[lane].eq(y5)
        return m

    def _time_multiplexed(self):
        """``n / lanes`` passes of a ``lanes``-lane pipeline per row: the row is held on the
        input (ready on its last pass) and the results of the earlier passes wait in a register
        until the last pass leaves."""
        m = Module()
        n, L = self.n, self.lanes
        passes = n // L
        m.submodules.core = core = Epilogue(L, registers=self.registers)
        m.d.comb += [core.requant.eq(self.requant), core.out_fmt.eq(self.out_fmt),
                     core.zero_point.eq(self.zero_point), core.addend_shift.eq(self.addend_shift)]
        p, q = self.i.payload, core.i.payload
        sel = Signal(range(passes))
        m.d.comb += [core.i.valid.eq(self.i.valid), q.row_shift.eq(p.row_shift),
                     self.i.ready.eq(core.i.ready & (sel == passes - 1))]
        with m.Switch(sel):
            for s in range(passes):
                with m.Case(s):
                    for j in range(L):
                        for name in ("acc", "bias", "addend", "mult", "shift"):
                            m.d.comb += q[name][j].eq(p[name][s * L + j])
        with m.If(core.i.valid & core.i.ready):
            m.d.sync += sel.eq(Mux(sel == passes - 1, 0, sel + 1))

        osel = Signal(range(passes))
        held = [Signal(data.ArrayLayout(signed(32), L), name=f"held{s}") for s in range(passes - 1)]
        last = osel == passes - 1
        # The core never stalls, and neither does this: the receiver takes every row.
        m.d.comb += [self.o.valid.eq(core.o.valid & last), core.o.ready.eq(1),
                     self.o.payload.eq(Cat(*held, core.o.payload))]
        with m.If(core.o.valid):
            m.d.sync += osel.eq(Mux(last, 0, osel + 1))
            with m.Switch(osel):
                for s in range(passes - 1):
                    with m.Case(s):
                        m.d.sync += held[s].eq(core.o.payload)
        return m


class SerialEpilogue(wiring.Component):
    """The epilogue as a small sequential datapath: the ``n`` elements of a row one after the
    other, each through one 47-bit working register, one adder, the 32x15 product and a 32-bit
    register for the addend, shifting right or left one bit per cycle.

    The same numerics as :class:`Epilogue` (bit-exact) for a fraction of its logic, at
    ``5 + row_shift + addend_shift + shift`` cycles per element when requantising (``shift``
    clamped to ``SHIFT_MAX``) and ``5 + row_shift + addend_shift`` for a raw result. The row is
    taken (``i.ready``) when the result of its last element is registered on ``o``, so it must
    stay on ``i.payload`` meanwhile (a stream's payload does while it waits); the results of
    the row move along a chain of ``n`` output registers as they are made, so an element's
    result waits for the previous row to leave ``o``.

    Per element: the accumulator is loaded through the adder, shifted right by ``row_shift``
    with rounding, the bias added (saturating), the addend shifted left in its register by
    ``addend_shift`` and added (saturating), the product taken, shifted right by ``shift`` with
    rounding, and the zero point added while the result is checked against the output range.
    The rounding shifts use ``round_shift(x, s) = ((x >> (s - 1)) + 1) >> 1`` for s > 0.
    """

    def __init__(self, n: int = 1):
        self.n = n
        super().__init__(_members(n))

    def elaborate(self, platform):
        m = Module()
        n = self.n
        p = self.i.payload
        lane = Signal(range(n))

        def pick(field, shape):
            """The field of the element being worked on."""
            sig = Signal(shape, name=f"{field}_lane")
            with m.Switch(lane):
                for k in range(n):
                    with m.Case(k):
                        m.d.comb += sig.eq(p[field][k])
            return sig

        w = Signal(signed(47))                 # the element being worked on
        cnt = Signal(range(SHIFT_MAX + 1))     # shift steps still to go
        a = Signal(signed(32))                 # the addend, shifted into place
        opnd = Signal(signed(32))
        total = Signal(signed(48))
        m.d.comb += total.eq(w + opnd)
        # The adder's operand: an OR of the sources, each gated by its step.
        use_acc, use_bias, use_a, use_zp, use_one = (Signal(name=f"use_{x}") for x in
                                                     ("acc", "bias", "a", "zp", "one"))

        # The sum of two int32 values (33 bits) saturated to int32, and sign-extended.
        ovf = total[32] ^ total[31]
        sat = Signal(signed(47))
        m.d.comb += sat.eq(Cat(Mux(ovf, (~total[32]).replicate(31), total[:31]),
                               total[32]).as_signed())

        # The result: the zero point added, checked against the output range (a raw result is
        # the saturated int32 sum itself, which passes the int32 check).
        fmt = Signal(2)
        m.d.comb += fmt.eq(Mux(self.requant, self.out_fmt, OutFormat.INT32))
        lo = Signal(signed(32))
        hi = Signal(signed(32))
        ok = Signal()
        # In range: the bits above the format all copy the sign (all 0 for UINT8); the checks
        # of the four formats share their upper parts.
        sign = total[-1]

        def same(a, b):
            return ~(total[a:b] ^ sign.replicate(b - a)).any()

        same31 = same(31, 47)
        same15 = same31 & same(15, 31)
        same8 = same15 & same(8, 15)
        in_range = {OutFormat.INT8: same8 & same(7, 8), OutFormat.UINT8: same8 & ~sign,
                    OutFormat.INT16: same15, OutFormat.INT32: same31}
        with m.Switch(fmt):
            for f in OutFormat:
                with m.Case(f):
                    m.d.comb += [lo.eq(OUT_RANGE[f].lo), hi.eq(OUT_RANGE[f].hi),
                                 ok.eq(in_range[f])]
        result = Mux(ok, total[:32], Mux(total[47], lo, hi))

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        out_free = ~self.o.valid | self.o.ready

        # What the steps do to the working register (w is cleared after each element, so the
        # accumulator goes in through the adder) and to the shift counter.
        w_add, w_shift, w_mul, w_clear = (Signal(name=f"w_{x}") for x in
                                          ("add", "shift", "mul", "clear"))
        a_load, a_shift = Signal(), Signal()
        cnt_load = Signal(range(SHIFT_MAX + 1))
        cnt_set, cnt_dec = Signal(), Signal()
        mult = pick("mult", MULT_BITS)
        shift = pick("shift", SHIFT_BITS)
        with m.If(w_clear):
            m.d.sync += w.eq(0)
        with m.Elif(w_add | w_shift | w_mul):
            m.d.sync += w.eq(Mux(w_mul, w[:32].as_signed() * mult,
                                 Mux(w_shift, total >> 1, sat)))
        with m.If(a_load | a_shift):
            m.d.sync += a.eq(Mux(a_load, pick("addend", signed(32)), a << 1))
        with m.If(cnt_set | cnt_dec):
            m.d.sync += cnt.eq(Mux(cnt_set, cnt_load, cnt - 1))
        m.d.comb += opnd.eq(Mux(use_acc, pick("acc", signed(ACC_BITS)), 0)
                            | Mux(use_bias, pick("bias", signed(32)), 0)
                            | Mux(use_a, a, 0) | Mux(use_zp, self.zero_point, 0) | use_one)

        def shift_step():
            """One step of a rounding shift by ``cnt`` > 0: right by 1, adding 1 first on the
            last step."""
            m.d.comb += [use_one.eq(cnt == 1), w_shift.eq(1), cnt_dec.eq(1)]

        with m.FSM(name="epi"):
            with m.State("LOAD"):
                m.d.comb += [use_acc.eq(1), cnt_load.eq(p.row_shift)]
                with m.If(self.i.valid):
                    m.d.comb += [w_add.eq(1), cnt_set.eq(1)]
                    m.next = "ROW"
            with m.State("ROW"):
                with m.If(cnt == 0):
                    m.d.comb += [use_bias.eq(1), w_add.eq(1), a_load.eq(1),
                                 cnt_load.eq(self.addend_shift), cnt_set.eq(1)]
                    m.next = "ADDEND"
                with m.Else():
                    shift_step()
            with m.State("ADDEND"):
                with m.If(cnt != 0):
                    m.d.comb += [a_shift.eq(1), cnt_dec.eq(1)]
                with m.Else():
                    m.d.comb += [use_a.eq(1), w_add.eq(1)]
                    m.next = "MUL"
            with m.State("MUL"):
                m.d.comb += cnt_load.eq(Mux(shift > SHIFT_MAX, SHIFT_MAX, shift))
                with m.If(self.requant):
                    m.d.comb += [w_mul.eq(1), cnt_set.eq(1)]
                m.next = "SCALE"
            with m.State("SCALE"):
                with m.If(cnt == 0):
                    m.d.comb += use_zp.eq(self.requant)
                    with m.If(out_free):
                        m.d.comb += w_clear.eq(1)
                        m.d.sync += [lane.eq(Mux(lane == n - 1, 0, lane + 1)),
                                     self.o.payload[n - 1].eq(result)]
                        m.d.sync += [self.o.payload[k].eq(self.o.payload[k + 1])
                                     for k in range(n - 1)]
                        with m.If(lane == n - 1):
                            m.d.comb += self.i.ready.eq(1)
                            m.d.sync += self.o.valid.eq(1)
                        m.next = "LOAD"
                with m.Else():
                    shift_step()
        return m
