"""Output-stationary systolic array of int8 MACs with int32 accumulators.

Each step the array takes one column of A (N values, one per row, 9-bit signed so that int8 and
uint8 both fit) and one row of B (N int8 values, one per column). Row ``r`` of A is skewed by
``r`` steps and column ``c`` of B by ``c`` steps, so the pair ``a[r, k]``, ``b[k, c]`` meets in
processing element (r, c), which accumulates ``C[r, c]`` in place (output-stationary).

The array never stalls: it steps every clock cycle, with zero operands when no step is offered,
and has no clock enable at all. Backpressure is the business of whoever issues the steps: the
engine issues a tile only when the queue behind the array has room for all of its result rows
(credits), so a result row always has somewhere to go. This keeps the array's thousands of
flip-flops off any handshake path, and lets each multiplier use the registers inside its DSP
slice (:class:`celosia.hdl.dsp.Multiplier`: operands in, product out).

The step that carries ``last`` closes a tile: each PE moves ``acc + a*b`` into a shadow register
and restarts from zero, so the next tile streams in with no gap. A row's shadows are complete one
step after its last PE captured; rows complete on consecutive steps and leave through a
one-hot row multiplexer, one int32 row per step, in row order. A tile therefore needs at least N
steps (the sequencer pads K below N with zeros) and the array never idles between tiles.
"""

from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .dsp import Multiplier
from .params import A_BITS, ACC_BITS, ARRAY_MAX, ARRAY_MIN, B_BITS

__all__ = ["step_layout", "row_layout", "SystolicArray"]


def step_layout(n: int) -> data.StructLayout:
    """One step of operands: a column of A, a row of B and the end-of-tile flag."""
    return data.StructLayout({
        "a": data.ArrayLayout(signed(A_BITS), n),
        "b": data.ArrayLayout(signed(B_BITS), n),
        "last": unsigned(1),
    })


def row_layout(n: int) -> data.ArrayLayout:
    """One row of accumulators."""
    return data.ArrayLayout(signed(ACC_BITS), n)


class SystolicArray(wiring.Component):
    """N x N output-stationary array that steps every cycle.

    Parameters
    ----------
    n : int
        Rows and columns of the array (2..32).

    Members
    -------
    i : In(stream.Signature(step_layout(n), always_ready=True))
        Operand steps, one per cycle while ``valid``; a cycle without one is a step of zeros. A
        tile is the run of steps up to and including one with ``last`` set (at least ``n``
        steps long).
    o : Out(stream.Signature(row_layout(n), always_ready=True))
        Result rows, ``n`` per tile in row order; the receiver takes every row it is offered.
    """

    def __init__(self, n: int):
        if not isinstance(n, int):
            raise TypeError(f"array size must be an int, not {n!r}")
        if not ARRAY_MIN <= n <= ARRAY_MAX:
            raise ValueError(f"array size must be in {ARRAY_MIN}..{ARRAY_MAX}, not {n}")
        self.n = n
        super().__init__({
            "i": In(stream.Signature(step_layout(n), always_ready=True)),
            "o": Out(stream.Signature(row_layout(n), always_ready=True)),
        })

    def latency(self) -> int:
        """Cycles from the step that carries ``last`` to the tile's last result row on ``o``:
        input register and row skew (n), column travel (n - 1), the multiplier, the output
        register."""
        return 2 * self.n + Multiplier.LATENCY

    def elaborate(self, platform):
        m = Module()
        n = self.n
        lat = Multiplier.LATENCY

        def delay(value, stages, name):
            for s in range(stages):
                reg = Signal.like(value, name=f"{name}_d{s}")
                m.d.sync += reg.eq(value)
                value = reg
            return value

        # Input register plus skew: row r of A passes r + 1 registers, column c of B c + 1.
        take = self.i.valid
        a_left = [[None] * (n + 1) for _ in range(n)]
        l_left = [[None] * (n + 1) for _ in range(n)]
        b_top = [[None] * n for _ in range(n + 1)]
        for r in range(n):
            a_in = Signal(signed(A_BITS), name=f"a_in{r}")
            l_in = Signal(name=f"l_in{r}")
            m.d.comb += [
                a_in.eq(Mux(take, self.i.payload.a[r], 0)),
                l_in.eq(take & self.i.payload.last),
            ]
            a_left[r][0] = delay(a_in, r + 1, f"a{r}")
            l_left[r][0] = delay(l_in, r + 1, f"l{r}")
        for c in range(n):
            b_in = Signal(signed(B_BITS), name=f"b_in{c}")
            m.d.comb += b_in.eq(Mux(take, self.i.payload.b[c], 0))
            b_top[0][c] = delay(b_in, c + 1, f"b{c}")

        # A PE keeps its finished sum in a shadow register until the row's rightmost PE
        # finishes (that one goes straight to the output register): columns 0..n-2 only.
        shadow = [[Signal(signed(ACC_BITS), name=f"shadow_{r}_{c}") for c in range(n - 1)]
                  for r in range(n)]
        totals = [[None] * n for _ in range(n)]
        closes = [[None] * n for _ in range(n)]
        for r in range(n):
            for c in range(n):
                a, b, last = a_left[r][c], b_top[r][c], l_left[r][c]
                a_reg = Signal(signed(A_BITS), name=f"a_{r}_{c}")
                b_reg = Signal(signed(B_BITS), name=f"b_{r}_{c}")
                l_reg = Signal(name=f"l_{r}_{c}")
                m.d.sync += [a_reg.eq(a), b_reg.eq(b), l_reg.eq(last)]
                a_left[r][c + 1] = a_reg
                l_left[r][c + 1] = l_reg
                b_top[r + 1][c] = b_reg

                mul = Multiplier(A_BITS, B_BITS)
                m.submodules[f"pe_{r}_{c}"] = mul
                m.d.comb += [mul.a.eq(a), mul.b.eq(b)]
                # The end-of-tile flag travels with its product; each PE keeps its own copy
                # (merged copies would fan one register out across the array).
                close = delay(last, lat, f"close_{r}_{c}")
                acc = Signal(signed(ACC_BITS), name=f"acc_{r}_{c}")
                total = Signal(signed(ACC_BITS), name=f"sum_{r}_{c}")
                # |a*b| <= 2**15 and K <= 2**16 terms: the int32 sum cannot overflow.
                m.d.comb += total.eq(acc + mul.p)
                with m.If(close):
                    m.d.sync += acc.eq(0)
                    if c < n - 1:
                        m.d.sync += shadow[r][c].eq(total)
                with m.Else():
                    m.d.sync += acc.eq(total)
                totals[r][c] = total
                closes[r][c] = close

        # Row r is complete when its rightmost PE closes the tile: the row enters the output
        # register in that cycle (one row per cycle, as tiles are at least n steps long).
        row_done = Signal(n)
        m.d.comb += row_done.eq(Cat(closes[r][n - 1] for r in range(n)))
        row_bits = 0
        for r in range(n):
            row_bits = row_bits | Mux(row_done[r], Cat(*shadow[r], totals[r][n - 1]), 0)
        m.d.sync += [self.o.payload.eq(row_bits), self.o.valid.eq(row_done.any())]
        return m
