"""Arithmetic helpers of the vector unit: division, square root, base-2 exp, GELU's Phi and the
multiply-round-saturate step every output lane is built from.

All of them are bit-exact implementations of pieces of :mod:`celosia.sw.numerics`; tables and
widths are derived from the constants there, never copied.
"""


import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from celosia.sw import numerics as nx

from .dsp import lut_product

__all__ = [
    "Divider", "Isqrt", "Exp2", "GeluPhi", "SiluSigmoid", "CurveTable",
    "clamp", "mul_round_sat", "round_shift_add", "round_shifted", "round_add",
    "EXP_T_BITS", "EXP_E_BITS", "GELU_PHI_WIDTH", "SILU_SIG_WIDTH",
]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Divider(wiring.Component):
    """Iterative restoring divider: ``quotient = dividend // divisor`` for unsigned operands.

    ``unroll`` quotient bits are produced per cycle. A division is started with ``start`` and
    a number of ``steps``; it develops ``steps * unroll`` quotient bits and takes ``steps + 1``
    cycles (the first aligns the dividend, from registers). The caller guarantees ``dividend >> (steps * unroll) < divisor`` (the quotient fits),
    which lets short quotients (the softmax reciprocal) finish early in a wide divider.

    Parameters
    ----------
    dividend_width, divisor_width : int
        Operand widths (unsigned).
    unroll : int
        Quotient bits per cycle (restoring steps chained combinationally).
    quotient_widths : tuple of int or None
        The only quotient widths the caller divides for, when it knows them (``steps`` is then
        always ``steps_for`` one of them): the alignment is a multiplexer of fixed shifts
        instead of a barrel shifter, a fraction of the LUTs.

    Members
    -------
    start : In(1)
        Latches ``dividend``, ``divisor`` and ``steps`` when the divider is not busy.
    busy : Out(1)
        High while the division runs.
    done : Out(1)
        Pulses for one cycle when ``quotient`` and ``remainder`` become valid; they stay valid
        until the next start.
    """

    def __init__(self, dividend_width: int, divisor_width: int, unroll: int = 1,
                 quotient_widths=None):
        for name, v in (("dividend_width", dividend_width), ("divisor_width", divisor_width),
                        ("unroll", unroll)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, not {v!r}")
        self.dividend_width = dividend_width
        self.divisor_width = divisor_width
        self.unroll = unroll
        self.max_steps = _ceil_div(dividend_width, unroll)
        self.step_counts = None
        if quotient_widths is not None:
            if not quotient_widths or not all(isinstance(q, int) and q >= 0
                                              for q in quotient_widths):
                raise ValueError(f"quotient_widths must be non-negative integers, "
                                 f"not {quotient_widths!r}")
            self.step_counts = tuple(sorted({self.steps_for(q) for q in quotient_widths}))
        super().__init__({
            "start": In(1),
            "dividend": In(dividend_width),
            "divisor": In(divisor_width),
            "steps": In(range(self.max_steps + 1)),
            "busy": Out(1),
            "done": Out(1),
            "quotient": Out(dividend_width),
            "remainder": Out(divisor_width),
        })

    def steps_for(self, quotient_bits: int) -> int:
        """Steps needed to develop ``quotient_bits`` quotient bits."""
        return min(self.max_steps, _ceil_div(quotient_bits, self.unroll))

    def elaborate(self, platform):
        m = Module()
        W, D, U = self.dividend_width, self.divisor_width, self.unroll
        # Padded so that any steps * unroll <= Wp can be left-aligned.
        Wp = self.max_steps * U
        q = Signal(Wp)          # dividend bits still to consume (left-aligned), quotient bits in
        rem = Signal(D + 1)
        div = Signal(D)
        left = Signal(range(self.max_steps + 1))
        # The operands as started: the alignment shift runs from these registers in the
        # cycle after ``start`` (a shifter and the steps' carry chains never share a cycle).
        dividend = Signal(W)
        align = Signal()

        m.d.sync += self.done.eq(0)
        with m.If(align):
            wide = Signal(2 * Wp)
            # dividend << (Wp - steps * U): the low dividend bits left-aligned in q, the high
            # ones (already below the divisor) as the initial remainder.
            if self.step_counts is None:
                sh = Signal(range(Wp + 1))
                m.d.comb += [sh.eq(Wp - left * U), wide.eq(dividend << sh)]
            else:
                with m.Switch(left):
                    for n in self.step_counts:
                        with m.Case(n):
                            m.d.comb += wide.eq(dividend << (Wp - n * U))
            m.d.sync += [q.eq(wide[:Wp]), rem.eq(wide[Wp:]), align.eq(0)]
            with m.If(left == 0):
                m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        with m.Elif(self.busy):
            r, qq = rem, q
            for k in range(U):
                t = Signal(D + 2, name=f"t{k}")
                d = Signal(signed(D + 3), name=f"d{k}")
                r_k = Signal(D + 1, name=f"rem{k}")
                q_k = Signal(Wp, name=f"q{k}")
                # One carry chain a step: the trial subtraction's sign is the comparison.
                m.d.comb += [
                    t.eq((r << 1) | qq[Wp - 1]),
                    d.eq(t - div),
                    r_k.eq(Mux(d[-1], t, d)),
                    q_k.eq((qq << 1) | ~d[-1]),
                ]
                r, qq = r_k, q_k
            m.d.sync += [rem.eq(r), q.eq(qq), left.eq(left - 1)]
            with m.If(left == 1):
                m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        with m.Elif(self.start):
            m.d.sync += [
                dividend.eq(self.dividend),
                div.eq(self.divisor),
                left.eq(self.steps),
                align.eq(1),
                self.busy.eq(1),
            ]
        m.d.comb += [self.quotient.eq(q), self.remainder.eq(rem)]
        return m


class Isqrt(wiring.Component):
    """Digit-recurrence floor square root: ``root = isqrt(radicand)``, ``unroll`` root bits a cycle.

    Members
    -------
    start : In(1)
        Latches ``radicand`` when not busy.
    busy, done : Out(1)
        As for :class:`Divider`; ``root`` stays valid until the next start.
    short : In(1)
        Only with ``short_width``: the radicand is below ``2**(2 short_width)``; its leading
        zero digits are skipped (the root of a short radicand in fewer steps).
    """

    def __init__(self, root_width: int, unroll: int = 1, short_width: int | None = None):
        if not isinstance(root_width, int) or root_width < 1:
            raise ValueError(f"root_width must be a positive integer, not {root_width!r}")
        if not isinstance(unroll, int) or unroll < 1:
            raise ValueError(f"unroll must be a positive integer, not {unroll!r}")
        self.root_width = root_width
        self.unroll = unroll
        self.steps = _ceil_div(root_width, unroll)
        self.short_steps = None if short_width is None else _ceil_div(short_width, unroll)
        ports = {
            "start": In(1),
            "radicand": In(2 * root_width),
            "busy": Out(1),
            "done": Out(1),
            "root": Out(root_width),
        }
        if short_width is not None:
            ports["short"] = In(1)
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        R = self.steps * self.unroll        # padded root width
        x = Signal(2 * R)
        rem = Signal(R + 2)
        root = Signal(R)
        left = Signal(range(self.steps + 1))
        m.d.sync += self.done.eq(0)
        with m.If(self.busy):
            xx, r, rt = x, rem, root
            for k in range(self.unroll):
                # Named signals per step keep the unrolled expression linear in size.
                t = Signal(R + 3, name=f"t{k}")
                trial = Signal(R + 3, name=f"trial{k}")
                d = Signal(signed(R + 4), name=f"d{k}")
                r_k = Signal(R + 2, name=f"rem{k}")
                rt_k = Signal(R, name=f"root{k}")
                m.d.comb += [
                    t.eq((r << 2) | xx[2 * R - 2:]),
                    trial.eq((rt << 2) | 1),
                    d.eq(t - trial),
                    r_k.eq(Mux(d[-1], t, d)),
                    rt_k.eq((rt << 1) | ~d[-1]),
                ]
                r, rt = r_k, rt_k
                xx = (xx << 2)[:2 * R]
            m.d.sync += [x.eq(xx), rem.eq(r), root.eq(rt), left.eq(left - 1)]
            with m.If(left == 1):
                m.d.sync += [self.busy.eq(0), self.done.eq(1)]
        with m.Elif(self.start):
            m.d.sync += [x.eq(self.radicand), rem.eq(0), root.eq(0), left.eq(self.steps),
                         self.busy.eq(1)]
            if self.short_steps is not None:
                # The skipped steps would take zero digits: root and remainder stay 0.
                with m.If(self.short):
                    skip = 2 * (self.steps - self.short_steps) * self.unroll
                    m.d.sync += [x.eq(self.radicand << skip), left.eq(self.short_steps)]
        m.d.comb += self.root.eq(root)
        return m


# --- Softmax exponent ----------------------------------------------------------------------

#: Width of t = round_shift(d * M, S) with d < 2**32 and M < 2**MULT_BITS.
EXP_T_BITS = 32 + nx.MULT_BITS
#: Width of e (Q15, at most 2**15).
EXP_E_BITS = nx.EXP_ONE_BITS + 1
#: e = round_shift(EXP2_LUT[f], t >> EXP_FRAC_BITS): from this shift on every entry rounds to 0.
_EXP_ZERO_SHIFT = next(z for z in range(64)
                       if int(nx.round_shift(np.int64(max(nx.EXP2_LUT)), z)) == 0)


def clamp(x, lo, hi):
    """``lo`` if ``x < lo``, else ``hi`` if ``x > hi``, else ``x`` (``lo`` wins when ``lo > hi``).

    A signed ``x`` wider than both bounds is compared in their width: outside it, its sign
    alone decides (it is below every ``lo`` or above every ``hi``), which saves the wide
    comparators.
    """
    x, lo, hi = Value.cast(x), Value.cast(lo), Value.cast(hi)
    bw = max(len(lo), len(hi)) if lo.shape().signed and hi.shape().signed else 0
    if not (x.shape().signed and bw and len(x) > bw):
        return Mux(x < lo, lo, Mux(x > hi, hi, x))
    top = x[bw - 1:]
    fits = (top == 0) | (top == (1 << len(top)) - 1)
    xn = x[:bw].as_signed()
    return Mux(fits, Mux(xn < lo, lo, Mux(xn > hi, hi, xn)), Mux(x[-1], lo, hi))


def round_shift_add(m, x, shift, add=0, *, name):
    """``round_shift(x, shift) + add`` (half up, the numerics' rounding) without a decoded
    rounding half: ``((2x >> shift) + 2 add + 1) >> 1``, one adder after the shifter.

    ``floor((floor(2x / 2**s) + 1) / 2) = floor((x + 2**(s-1)) / 2**s)`` for s >= 1 (the floor
    of 2x / 2**s keeps the bit that decides the rounding), and ``x`` for s = 0; the addend
    rides in the same carry chain.
    """
    return round_add(round_shifted(m, x, shift, add, name=name), add)


def round_shifted(m, x, shift, add=0, *, name):
    """The shifter of :func:`round_shift_add`: ``2x >> shift``."""
    x, add = Value.cast(x), Value.cast(add)
    signed_ = x.shape().signed or add.shape().signed
    w = len(x) + 1
    q = Signal(signed(w) if signed_ else unsigned(w), name=f"{name}_q")
    m.d.comb += q.eq((x << 1) >> shift)
    return q


def round_add(q, add=0):
    """The adder of :func:`round_shift_add`: ``(q + 2 add + 1) >> 1``."""
    add = Value.cast(add)
    if len(add) == 0 or (isinstance(add, Const) and add.value == 0):
        return (q + 1) >> 1
    return (q + Cat(Const(1, 1), add).as_signed() if add.shape().signed
            else q + Cat(Const(1, 1), add)) >> 1


def mul_round_sat(m, p, shift, zp, lo, hi, saturate, *, width, name, stage=None,
                  round_bit=None):
    """``y = saturate ? clamp(round_shift(p, shift) + zp, lo, hi) : round_shift(p, shift) + zp``.

    ``p`` is a product (plus addend) the caller builds from DSP limbs (:func:`limb_product`)
    with operands cut to their proven widths; ``width`` bounds ``p`` plus the rounding half.
    The one multiply-and-scale step of the output multiplier bank: every operation of the unit
    is a chain of these with per-operation operands.

    With ``stage`` (``stage(value, shape, name)`` returns ``value`` registered one pipeline
    slice later), the shifter's output and ``zp``, ``lo``, ``hi``, ``saturate`` are
    registered: the shifter and the adder with its saturation take a cycle each.

    ``round_bit`` (with ``stage`` only): ``(en, bit)``, values of the shifter's slice; with
    ``en`` the shifter's lowest output bit (the rounding bit, ``p[shift - 1]``) is replaced by
    ``bit``, so the result is ``floor(p / 2**shift) + bit + zp`` (the softmax's dithered
    rounding gives its threshold's carry).
    """
    ps = Signal(signed(width), name=f"{name}_p")
    m.d.comb += ps.eq(p)
    r = Signal(signed(width + 1), name=f"{name}_r")
    if stage is None:
        m.d.comb += r.eq(round_shift_add(m, ps, shift, zp, name=name))
    else:
        q = round_shifted(m, ps, shift, zp, name=name)
        if round_bit is not None:
            en, bit = round_bit
            qd = Signal(q.shape(), name=f"{name}_qd")
            m.d.comb += qd.eq(Cat(Mux(en, bit, q[0]), q[1:]))
            q = qd
        q = stage(q, q.shape(), f"{name}_qr")
        zp, lo, hi, saturate = (stage(v, Value.cast(v).shape(), f"{name}_{n}r")
                                for v, n in ((zp, "zp"), (lo, "lo"), (hi, "hi"),
                                             (saturate, "sat")))
        m.d.comb += r.eq(round_add(q, zp))
    y = Signal(signed(width + 1), name=f"{name}_y")
    m.d.comb += y.eq(Mux(saturate, clamp(r, lo, hi), r))
    return y


class Exp2(wiring.Component):
    """One lane of the softmax exponent from ``t = round_shift((max - s) * M, S)`` (the
    multiplier and the rounding shifter live in the stage):
    ``e = round_shift(EXP2_LUT[t & 255], t >> 8)`` (0 once the shift rounds every entry away),
    step 3 of :func:`celosia.sw.numerics.softmax`. The table is read synchronously (block RAM)
    and its data registered (the rounding shift follows in the next cycle): ``e`` belongs to the
    ``t`` presented two cycles before, ``en`` high in both (``LATENCY``).
    """

    t: In(EXP_T_BITS + 1)
    en: In(1)
    e: Out(EXP_E_BITS)

    #: Cycles from ``t`` to its ``e``.
    LATENCY = 2

    def elaborate(self, platform):
        m = Module()
        m.submodules.lut = lut = memory.Memory(
            shape=unsigned(EXP_E_BITS), depth=len(nx.EXP2_LUT),
            init=[int(v) for v in nx.EXP2_LUT])
        rd = lut.read_port()
        m.d.comb += [rd.en.eq(self.en), rd.addr.eq(self.t[:nx.EXP_FRAC_BITS])]
        z1 = Signal(len(self.t) - nx.EXP_FRAC_BITS)
        z = Signal(len(self.t) - nx.EXP_FRAC_BITS)
        data = Signal.like(rd.data)
        with m.If(self.en):
            m.d.sync += [z1.eq(self.t[nx.EXP_FRAC_BITS:]), z.eq(z1), data.eq(rd.data)]
        zs = Signal(range(_EXP_ZERO_SHIFT))
        m.d.comb += zs.eq(z)
        rounded = Signal(EXP_E_BITS + 1)
        m.d.comb += rounded.eq(round_shift_add(m, data, zs, name="e"))
        m.d.comb += self.e.eq(Mux(z < _EXP_ZERO_SHIFT, rounded, 0))
        return m


# --- GELU's Phi and SiLU's sigmoid: a symmetric curve from a table of knots ------------------

class _Curve:
    """A curve F with F(-x) = 2**one_bits - F(x), interpolated from the knots ``table`` of its
    positive half, 2**step_frac knots per unit of x (Q``in_frac``), flat 2**one_bits from
    ``range_`` on: numerics._symmetric_cdf's arguments, taken from the numerics' constants."""

    def __init__(self, table, in_frac: int, step_frac: int, range_: int, one_bits: int):
        self.table = [int(v) for v in table]
        self.frac = in_frac - step_frac          # bits of x between two knots
        self.knots = len(self.table) - 1
        self.inside = range_ << in_frac
        self.one_bits = one_bits
        #: The curve's width (it reaches 2**one_bits exactly).
        self.width = one_bits + 1
        #: The table is indexed by x >> frac (signed), clamped to this many bits: the end
        #: buckets lie beyond the last knot, where the curve is flat.
        self.index_bits = self.knots.bit_length() + 1

    def at(self, xs) -> np.ndarray:
        """F of int16 ``xs`` (numerics._symmetric_cdf itself)."""
        return nx._symmetric_cdf(np.asarray(xs, dtype=np.int64), np.asarray(self.table),
                                 self.inside, self.frac, self.one_bits)

    def buckets(self):
        """One entry per bucket of 2**frac consecutive x (``x >> frac`` in the signed index
        range, the end buckets standing for everything beyond): ``(base, slope, zero)`` with
        ``F(x) = base + ((slope * f + c) >> frac)``, ``f = x & (2**frac - 1)``,
        ``c = 2**frac - 1`` for x < 0 (there the mirrored interpolation
        ``2**one - T[k] - floor(S (2**frac - f) / 2**frac)`` is ``2**one - T[k+1] +
        ceil(S f / 2**frac)``), 0 otherwise; ``zero``: F is 0 at f = 0 (x = -range, where the
        table's last knot may be below 2**one). Every x of a bucket is checked against the
        definition."""
        F, t = self.frac, self.table
        lo_i, hi_i = -(1 << (self.index_bits - 1)), (1 << (self.index_bits - 1)) - 1
        rows = []
        for i in range(lo_i, hi_i + 1):
            c = (1 << F) - 1 if i < 0 else 0
            if 0 <= i < self.knots:
                slope = t[i + 1] - t[i]
            elif -self.knots <= i < 0:
                slope = t[-i] - t[-i - 1]
            else:
                slope = 0
            want = [int(v) for v in self.at(np.arange(i << F, (i + 1) << F))]
            base = want[1] - ((slope + c) >> F)
            zero = want[0] != base + (c >> F)
            got = [base + ((slope * f + c) >> F) for f in range(1 << F)]
            if zero:
                got[0] = 0
            if got != want or base < 0:
                raise AssertionError(f"bucket {i} is not linear: {got} != {want}")
            rows.append((base, slope, int(zero)))
        # The end buckets stand for every x beyond them: F is flat there.
        assert rows[0][1] == 0 and rows[-1][1] == 0 and self.inside <= (hi_i << F)
        return rows


#: GELU's Phi (numerics.gelu: x int16 Q10, Phi Q14).
GELU_CURVE = _Curve(nx.GELU_PHI_TABLE, nx.GELU_IN_FRAC, nx.GELU_STEP_FRAC, nx.GELU_RANGE,
                    nx.GELU_PHI_BITS)
#: SiLU's sigmoid (numerics.silu: x int16 Q8, sigmoid Q16).
SILU_CURVE = _Curve(nx.SILU_SIG_TABLE, nx.SILU_IN_FRAC, nx.SILU_STEP_FRAC, nx.SILU_RANGE,
                    nx.SILU_SIG_BITS)
#: Width of Phi in Q14 (it reaches 2**14 exactly).
GELU_PHI_WIDTH = GELU_CURVE.width
#: Width of the sigmoid in Q16.
SILU_SIG_WIDTH = SILU_CURVE.width


class CurveTable(wiring.Component):
    """F(x) of a :class:`_Curve` (``x`` int16): a knot and the slope to the next one from a
    table in block RAM, read synchronously and then registered (the block RAM's data goes
    straight into a register, the interpolation follows in the next cycle): ``y`` belongs to
    the ``x`` presented two cycles before, ``en`` high in both (``LATENCY``).

    The table is indexed by ``x >> frac`` as a signed number (clamped: the curve is flat beyond
    its range), so neither |x| nor the mirrored ``2**one - F(|x|)`` is computed: the negative
    buckets hold the mirrored knots and round the interpolation up.
    """

    #: Cycles from ``x`` to its ``y``.
    LATENCY = 2

    def __init__(self, curve: _Curve):
        self.curve = curve
        super().__init__({"x": In(signed(16)), "en": In(1), "y": Out(curve.width)})

    def elaborate(self, platform):
        m = Module()
        cv = self.curve
        F = cv.frac
        rows = cv.buckets()
        slope_bits = max(1, max(r[1] for r in rows).bit_length())
        base_bits = cv.width
        ib = cv.index_bits
        m.submodules.table = table = memory.Memory(
            shape=unsigned(base_bits + slope_bits + 1), depth=len(rows),
            init=[b | (s << base_bits) | (z << (base_bits + slope_bits))
                  for b, s, z in rows[1 << (ib - 1):] + rows[:1 << (ib - 1)]])
        rd = table.read_port()
        # x >> F clamped to ib signed bits, as the address (two's complement, so the
        # non-negative buckets come first).
        top = self.x[F + ib - 1:]
        fits = (top == 0) | (top == (1 << len(top)) - 1)
        m.d.comb += [rd.en.eq(self.en),
                     rd.addr.eq(Mux(fits, self.x[F:F + ib], Mux(self.x[-1], 1 << (ib - 1),
                                                                (1 << (ib - 1)) - 1)))]
        f1, neg1 = Signal(F), Signal()
        f, neg = Signal(F), Signal()
        data = Signal.like(rd.data)
        with m.If(self.en):
            m.d.sync += [f1.eq(self.x[:F]), neg1.eq(self.x[-1]),
                         f.eq(f1), neg.eq(neg1), data.eq(rd.data)]
        base = data[:base_bits]
        slope = data[base_bits:base_bits + slope_bits]
        zero = data[-1]
        # The slope times the fraction is a shift-and-add: no DSP slice for it.
        interp = Signal(slope_bits + F + 1)
        m.d.comb += interp.eq(lut_product(f, slope, m=m, name="slope_f")
                              + Mux(neg, (1 << F) - 1, 0))
        m.d.comb += self.y.eq(Mux(zero & (f == 0), 0, base + (interp >> F)))
        return m


class GeluPhi(CurveTable):
    """Phi(x) of :func:`celosia.sw.numerics.gelu` (``x`` int16 Q10, ``phi`` Q14)."""

    def __init__(self):
        super().__init__(GELU_CURVE)

    @property
    def phi(self):
        return self.y


class SiluSigmoid(CurveTable):
    """sigmoid(x) of :func:`celosia.sw.numerics.silu` (``x`` int16 Q8, ``y`` Q16)."""

    def __init__(self):
        super().__init__(SILU_CURVE)
