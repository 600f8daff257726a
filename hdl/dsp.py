"""A registered signed multiplier that maps onto an FPGA's DSP slice with its own registers.

The processing elements of the systolic array (and any other datapath that multiplies every
cycle) use :class:`Multiplier`: its operands are registered on the way in and the product on the
way out, so a multiply never shares a clock period with the routing that feeds it or with the
adder that consumes it. Those are exactly the registers inside an ECP5 ``MULT18X18D`` (input
registers A and B, output register P), which Yosys does not absorb into the slice by itself:
on an ECP5 platform the multiplier is the primitive, instantiated with those registers enabled;
everywhere else (simulation, iCE40, Verilog export) it is a behavioural twin with the same
latency and the same result, so simulation and bitstream agree cycle for cycle.
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Multiplier", "ecp5_dsp", "MULT18_BITS", "LIMB_BITS", "limb_product",
           "lut_product", "add_chain", "dsp_count"]

#: Operand width of one ECP5 sysDSP multiplier (signed).
MULT18_BITS = 18
#: Widest unsigned limb one sysDSP multiplier takes (an 18-bit signed operand).
LIMB_BITS = MULT18_BITS - 1
#: Limb pairs with a limb this narrow or narrower are multiplied in LUTs by :func:`limb_product`.
LUT_LIMB_BITS = 8


def ecp5_dsp(platform) -> bool:
    """True when elaborating for an ECP5 device (its multipliers are ``MULT18X18D`` slices)."""
    return getattr(platform, "family", None) == "ecp5"


def _limbs(value):
    """``value`` as ``[(limb, offset)]``: unsigned limbs of :data:`LIMB_BITS` from the bottom,
    the top limb signed when ``value`` is (at most :data:`MULT18_BITS` bits)."""
    value = Value.cast(value)
    shape = value.shape()
    width = shape.width
    if shape.signed and width <= MULT18_BITS or not shape.signed and width <= LIMB_BITS:
        return [(value, 0)]
    limbs, offset = [], 0
    while True:
        rest = width - offset
        if shape.signed and rest <= MULT18_BITS or not shape.signed and rest <= LIMB_BITS:
            top = value[offset:]
            limbs.append((top.as_signed() if shape.signed else top, offset))
            return limbs
        limbs.append((value[offset:offset + LIMB_BITS], offset))
        offset += LIMB_BITS


def _tree_sum(terms, m=None, name="sum"):
    """A balanced adder tree (shorter paths than a chain of additions).

    With a module ``m``, every partial sum is a signal of its own with a ``keep`` attribute:
    Yosys then maps each addition onto a carry chain (ECP5: CCU2C, one slice per two bits).
    Without it, ``alumacc`` merges the whole tree into one multi-operand ``$macc``, which
    ``maccmap`` builds as a carry-save tree of full adders in LUTs, about twice the area.
    """
    terms = list(terms)
    if not terms:
        return C(0, 1)
    n = 0
    while len(terms) > 1:
        nxt = []
        for k in range(0, len(terms), 2):
            if k + 1 < len(terms):
                s = terms[k] + terms[k + 1]
                if m is not None:
                    s = _kept(m, s, f"{name}_{n}")
                    n += 1
                nxt.append(s)
            else:
                nxt.append(terms[k])
        terms = nxt
    return terms[0]


def _kept(m, value, name):
    """``value`` through a signal Yosys keeps (a boundary ``alumacc`` does not merge across)."""
    value = Value.cast(value)
    s = Signal(value.shape(), name=name, attrs={"keep": 1})
    m.d.comb += s.eq(value)
    return s


def add_chain(m, terms, name="sum"):
    """``sum(terms)`` as a tree of two-input additions on carry chains (see :func:`_tree_sum`)."""
    return _tree_sum(terms, m, name)


def lut_product(x, y, *, m=None, name="lp"):
    """``x * y`` as a shift-and-add of ``y`` over the bits of ``x`` (the narrow operand).

    Synthesis sees additions, not a multiplication, so the product is built from LUTs and carry
    chains and never takes a DSP slice. A signed ``x`` weighs its top bit negatively. With a
    module ``m`` the additions are kept apart (carry chains, see :func:`_tree_sum`).
    """
    x, y = Value.cast(x), Value.cast(y)
    k = len(x)
    terms = [Mux(x[i], y, 0) << i for i in range(k)]
    if x.shape().signed:
        terms[-1] = -terms[-1]
    return _tree_sum(terms, m, name)


def limb_product(a, b, *, lut_bits: int = LUT_LIMB_BITS, m=None, name="limb", stage=None):
    """``a * b`` exactly, from one DSP multiply per pair of wide limbs.

    Both operands are cut into :data:`LIMB_BITS`-bit unsigned limbs (the top one signed for a
    signed operand), so each limb pair is one 18x18 sysDSP multiply; pairs with a limb of at
    most ``lut_bits`` bits are shift-and-adds in LUTs instead (:func:`lut_product`). The caller
    shapes the operands: every bit it can prove zero is a limb not paid for. With a module ``m``
    the partial products are summed on carry chains (see :func:`_tree_sum`).

    ``stage`` (``stage(value, shape, name)`` -> the value a pipeline slice later) puts every
    partial product through a register before the sum (the DSP's output register): the
    product then belongs to the operands of the slice before.
    """
    terms = []
    for i, (la, oa) in enumerate(_limbs(a)):
        for j, (lb, ob) in enumerate(_limbs(b)):
            if min(len(la), len(lb)) <= lut_bits:
                narrow, wide = (la, lb) if len(la) <= len(lb) else (lb, la)
                p = lut_product(narrow, wide, m=m, name=f"{name}_l{i}{j}")
            else:
                p = la * lb
            if stage is not None:
                p = stage(p, Value.cast(p).shape(), f"{name}_p{i}{j}")
            terms.append(p << (oa + ob) if oa + ob else p)
    return _tree_sum(terms, m, name)


def dsp_count(a_shape, b_shape, *, lut_bits: int = LUT_LIMB_BITS) -> int:
    """sysDSP multiplies :func:`limb_product` spends on operands of these shapes."""
    a = Signal(a_shape)
    b = Signal(b_shape)
    return sum(min(len(la), len(lb)) > lut_bits for la, _ in _limbs(a) for lb, _ in _limbs(b))


class Multiplier(wiring.Component):
    """``p = a * b`` two cycles after ``a`` and ``b`` are presented, every cycle, no enable.

    Parameters
    ----------
    a_width, b_width : int
        Widths of the signed operands (1..18 each, one ``MULT18X18D``).
    primitive : bool or None
        ``True``: always the ECP5 primitive; ``False``: always the behavioural twin; ``None``
        (default): the primitive when the platform is an ECP5 device.

    Members
    -------
    a : In(signed(a_width))
    b : In(signed(b_width))
    p : Out(signed(a_width + b_width))
        The product of the operands presented ``LATENCY`` cycles earlier.
    """

    #: Operand registers, then the product register.
    LATENCY = 2

    def __init__(self, a_width: int, b_width: int, *, primitive: bool | None = None):
        for name, width in (("a_width", a_width), ("b_width", b_width)):
            if not isinstance(width, int) or isinstance(width, bool):
                raise TypeError(f"{name} must be an int, not {width!r}")
            if not 1 <= width <= MULT18_BITS:
                raise ValueError(f"{name} must be in 1..{MULT18_BITS}, not {width}")
        self.a_width = a_width
        self.b_width = b_width
        self.primitive = primitive
        super().__init__({
            "a": In(signed(a_width)),
            "b": In(signed(b_width)),
            "p": Out(signed(a_width + b_width)),
        })

    def elaborate(self, platform):
        m = Module()
        use_primitive = ecp5_dsp(platform) if self.primitive is None else self.primitive
        if not use_primitive:
            # No reset, like the slice's registers (the array flushes them with zero operands).
            a_reg = Signal(signed(self.a_width), name="a_reg", reset_less=True)
            b_reg = Signal(signed(self.b_width), name="b_reg", reset_less=True)
            p_reg = Signal(signed(self.a_width + self.b_width), name="p_reg", reset_less=True)
            m.d.sync += [a_reg.eq(self.a), b_reg.eq(self.b), p_reg.eq(a_reg * b_reg)]
            m.d.comb += self.p.eq(p_reg)
            return m

        a18 = Signal(signed(MULT18_BITS))
        b18 = Signal(signed(MULT18_BITS))
        p36 = Signal(signed(2 * MULT18_BITS))
        m.d.comb += [a18.eq(self.a), b18.eq(self.b), self.p.eq(p36)]
        ports = {}
        for i in range(MULT18_BITS):
            ports[f"i_A{i}"] = a18[i]
            ports[f"i_B{i}"] = b18[i]
            ports[f"i_C{i}"] = C(0, 1)
        for i in range(2 * MULT18_BITS):
            ports[f"o_P{i}"] = p36[i]
        # The registers are clocked by CLK0 with CE0 tied high and no reset (RST0 low): the same
        # free-running registers as the twin. CLKx_DIV is the clock divider of the slice's
        # high-speed mode, unused here.
        m.submodules.mult = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK="CLK0", p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
            p_REG_INPUTB_CLK="CLK0", p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
            p_REG_INPUTC_CLK="NONE",
            p_REG_PIPELINE_CLK="NONE",
            p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
            p_GSR="DISABLED", p_RESETMODE="SYNC", p_MULT_BYPASS="DISABLED",
            p_SOURCEB_MODE="B_SHIFT", p_CAS_MATCH_REG="FALSE",
            p_CLK0_DIV="DISABLED", p_CLK1_DIV="DISABLED", p_CLK2_DIV="DISABLED",
            p_CLK3_DIV="DISABLED",
            i_SIGNEDA=C(1, 1), i_SIGNEDB=C(1, 1), i_SOURCEA=C(0, 1), i_SOURCEB=C(0, 1),
            i_CLK0=ClockSignal(), i_CLK1=C(0, 1), i_CLK2=C(0, 1), i_CLK3=C(0, 1),
            i_CE0=C(1, 1), i_CE1=C(0, 1), i_CE2=C(0, 1), i_CE3=C(0, 1),
            i_RST0=C(0, 1), i_RST1=C(0, 1), i_RST2=C(0, 1), i_RST3=C(0, 1),
            **ports,
        )
        return m
