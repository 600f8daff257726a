"""Requantising epilogue: row shift, bias, addend (accumulate or residual) and per-column
dyadic scaling.

Per lane (output column), bit-exact with ``celosia.sw.numerics``::

    x = round_shift(acc, row_shift)                      # matmul(..., row_shift=e), per row
    x = saturate(x + bias, INT32)                        # matmul(..., bias)
    x = saturate(x + addend, INT32)                      # matmul(..., acc) or residual_add
    y = requantize(x, Dyadic(mult, shift), range, zp)    # or y = x (raw int32)

The pipeline has six registered stages and one stall signal for all of them, so it takes one
row per cycle and honours backpressure on its output.
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


def _saturate(value, lo, hi):
    return Mux(value < lo, lo, Mux(value > hi, hi, value))


class Epilogue(wiring.Component):
    """N-lane row shift + bias + addend + requantise pipeline.

    Parameters
    ----------
    n : int
        Lanes (the array width).

    Members
    -------
    i : In(stream.Signature(epilogue_layout(n)))
    o : Out(stream.Signature(ArrayLayout(signed(32), n)))
        Results, already saturated to the output range (the writer keeps the low bytes).
    requant, out_fmt, zero_point : In
        Held constant during a command. ``requant`` low gives the raw saturated int32 sum.
    """

    LATENCY = 6

    def __init__(self, n: int):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"lanes must be a positive int, not {n!r}")
        self.n = n
        super().__init__({
            "i": In(stream.Signature(epilogue_layout(n))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(32), n))),
            "requant": In(1),
            "out_fmt": In(2),
            "zero_point": In(signed(ZERO_POINT_BITS)),
        })

    def elaborate(self, platform):
        m = Module()
        n = self.n
        enable = Signal()
        valid = Signal(self.LATENCY)
        m.d.comb += [
            enable.eq(~self.o.valid | self.o.ready),
            self.i.ready.eq(enable),
            self.o.valid.eq(valid[-1]),
        ]
        with m.If(enable):
            m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))

        # The output range of this command.
        lo = Signal(signed(33))
        hi = Signal(signed(33))
        with m.Switch(self.out_fmt):
            for fmt in OutFormat:
                with m.Case(fmt):
                    m.d.comb += [lo.eq(OUT_RANGE[fmt].lo), hi.eq(OUT_RANGE[fmt].hi)]

        int32_lo, int32_hi = C(INT32.lo, signed(33)), C(INT32.hi, signed(33))
        p = self.i.payload
        # Stage 0: the row's round-half-up shift (one exponent for all lanes). The row travels
        # on with its operands one stage behind.
        row_half = Signal(unsigned(1 << ROW_SHIFT_BITS), name="row_half")
        m.d.comb += row_half.eq((C(1, 1 << ROW_SHIFT_BITS) << p.row_shift) >> 1)
        p0 = Signal(data.StructLayout({name: epilogue_layout(n)[name].shape
                                       for name in ("bias", "addend", "mult", "shift")}), name="p0")
        with m.If(enable):
            m.d.sync += [p0.bias.eq(p.bias), p0.addend.eq(p.addend), p0.mult.eq(p.mult),
                         p0.shift.eq(p.shift)]
        for lane in range(n):
            # Stage 0 output: |acc| < 2**31, so acc + half fits 33 bits and the shifted value 32.
            xs = Signal(signed(ACC_BITS), name=f"xs_{lane}")
            with m.If(enable):
                m.d.sync += xs.eq((p.acc[lane] + row_half) >> p.row_shift)
            # Stage 1: bias.
            x1 = Signal(signed(32), name=f"x1_{lane}")
            addend1 = Signal(signed(32), name=f"addend1_{lane}")
            mult1 = Signal(MULT_BITS, name=f"mult1_{lane}")
            shift1 = Signal(SHIFT_BITS, name=f"shift1_{lane}")
            # Stage 2: addend.
            x2 = Signal(signed(32), name=f"x2_{lane}")
            mult2 = Signal(MULT_BITS, name=f"mult2_{lane}")
            shift2 = Signal(SHIFT_BITS, name=f"shift2_{lane}")
            # Stage 3: product (|x| < 2**31, mult < 2**15: fits 47 bits).
            prod3 = Signal(signed(48), name=f"prod3_{lane}")
            shift3 = Signal(SHIFT_BITS, name=f"shift3_{lane}")
            x3 = Signal(signed(32), name=f"x3_{lane}")
            # Stage 4: round half up and shift.
            rounded4 = Signal(signed(49), name=f"rounded4_{lane}")
            x4 = Signal(signed(32), name=f"x4_{lane}")
            # Stage 5: zero point and saturation, or the raw sum.
            y5 = Signal(signed(32), name=f"y5_{lane}")

            half = Signal(unsigned(SHIFT_MAX), name=f"half_{lane}")
            m.d.comb += half.eq(Mux(shift3 == 0, 0, C(1, SHIFT_MAX) << (shift3 - 1)[:SHIFT_BITS]))
            with m.If(enable):
                m.d.sync += [
                    x1.eq(_saturate(xs + p0.bias[lane], int32_lo, int32_hi)),
                    addend1.eq(p0.addend[lane]),
                    mult1.eq(p0.mult[lane]),
                    shift1.eq(Mux(p0.shift[lane] > SHIFT_MAX, SHIFT_MAX, p0.shift[lane])),

                    x2.eq(_saturate(x1 + addend1, int32_lo, int32_hi)),
                    mult2.eq(mult1),
                    shift2.eq(shift1),

                    prod3.eq(x2 * mult2),
                    shift3.eq(shift2),
                    x3.eq(x2),

                    rounded4.eq((prod3 + half) >> shift3),
                    x4.eq(x3),

                    y5.eq(Mux(self.requant,
                              _saturate(rounded4 + self.zero_point, lo, hi),
                              x4)),
                ]
            m.d.comb += self.o.payload[lane].eq(y5)
        return m
