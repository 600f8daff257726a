"""The vector unit: N-lane streaming softmax, LayerNorm, GELU, requantisation and residual add.

Rows stream in as beats of N lanes (column ``j`` of a row is lane ``j % N`` of beat ``j // N``),
and stream out the same way, bit-exact with :mod:`celosia.sw.numerics`. A command selects the
operation and its parameters for a batch of rows. See docs/vector.md for the datapaths.

Structure (every arrow is a FIFO, so every stage runs at one beat a cycle on its own row)::

    cmd ─▶ ingest ─beats─▶ [row FIFO A] ─▶ exp/square ─beats─▶ [row FIFO B] ─▶ output ─▶ o
           (max, Σx,        tokens ─▶ T1     (e, Σe, Σx²)        ▲    multiplier bank
            residual add)                      tokens ─▶ T2 ─▶ finishers ─▶ T3
                                                        (reciprocal, mean, var, isqrt, 1/std)

A *token* carries one row's command and its reductions from stage to stage; rows stay in order.
"""

from math import isqrt

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, enum, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from celosia.sw import numerics as nx

from .dsp import limb_product
from .pipeline import CreditCounter
from .isa import ROTARY_MAX_COLS, UNIT_OPS
from .params import VEC_MAX_COLS
from .scratchpad import SyncFifo
from .vector_arith import (EXP_E_BITS, EXP_T_BITS, SILU_SIG_WIDTH, Divider, Exp2, GeluPhi, Isqrt,
                           SiluSigmoid, clamp,
                           mul_round_sat, round_add, round_shifted)

__all__ = [
    "VectorOp", "COLS_BITS", "ROWS_BITS", "GAMMA_BITS", "BETA_BITS",
    "command_layout", "param_layout", "token_layout", "unit_command_layout", "unit_token_layout",
    "PROB_MAX_WIDE",
    "VectorFinisher", "VectorUnit", "pack", "unpack",
]


def _unit_ops() -> type:
    """The unit's 3-bit command enum: the members of :data:`celosia.hdl.isa.UNIT_OPS`, by the
    same names and values (one definition: the ISA's :class:`~celosia.hdl.isa.VecOp`)."""
    ns = enum.EnumType.__prepare__("VectorOp", (enum.IntEnum,), shape=3)
    ns["__doc__"] = ("The vector unit's command: the ISA's VecOp members below 8 (the decoder "
                     "ops run on these with the command's modifiers).")
    ns["__module__"] = __name__
    for op in sorted(UNIT_OPS):
        ns[op.name] = op.value
    return enum.EnumType("VectorOp", (enum.IntEnum,), ns, shape=3)


#: The operation of a command (values equal to the ISA's :class:`~celosia.hdl.isa.VecOp`).
VectorOp = _unit_ops()


#: A row has at most 2**COLS_BITS - 1 columns (the longest VECTOR row, params.VEC_MAX_COLS,
#: fits).
COLS_BITS = VEC_MAX_COLS.bit_length()
#: Rows in one command.
ROWS_BITS = 16
#: Per-column LayerNorm gamma and beta as signed fields (|gamma| < 2**nx.LN_GAMMA_BITS,
#: |beta| < 2**nx.LN_BETA_BITS: numerics.layernorm).
GAMMA_BITS = nx.LN_GAMMA_BITS + 1
BETA_BITS = nx.LN_BETA_BITS + 1
#: Shift fields: up to SHIFT_MAX for requantisation.
SHIFT_BITS = nx.SHIFT_MAX.bit_length()

#: GELU's output offset (x * Phi(x) + offset, clamped at 0) when the numerics define one.
GELU_CLAMP = hasattr(nx, "GELU_OFFSET")
GELU_OFFSET = int(getattr(nx, "GELU_OFFSET", 0))
#: GELU_ROWS passes an input beyond Phi's table (x >= GELU_RANGE) through as
#: ``g = saturate(x + GELU_OFFSET_STEPS, int32) << GELU_PHI_BITS`` (numerics.gelu).
GELU_OFFSET_STEPS = int(getattr(nx, "GELU_OFFSET_STEPS", 0))
_GELU_BIG = nx.GELU_RANGE << nx.GELU_IN_FRAC
assert _GELU_BIG & (_GELU_BIG - 1) == 0     # x >= _GELU_BIG: a test of x's high bits

#: Softmax rows carry a power-of-two exponent when the numerics define one:
#: ``x = clamp(floor(log2(sum)) - EXP_ONE_BITS, 0, ROW_EXP_MAX)``, probabilities scaled by 2**x.
ROW_EXP_MAX = int(getattr(nx, "ROW_EXP_MAX", 0))
ROW_EXP_BITS = max(1, ROW_EXP_MAX.bit_length())


def _softmax_has_row_exponent() -> bool:
    import numpy as np
    return isinstance(nx.softmax(np.zeros((1, 1), dtype=np.int64), nx.Dyadic(1, 0)), tuple)


SOFTMAX_ROW_EXP = _softmax_has_row_exponent()

#: Quotient (and root) bits a finisher's divider and square root develop per cycle: each bit
#: is one carry chain of about 30 bits, and two chained fit the clock the board aims at.
#: Rows of 128 still go at full rate: the unit adds finishers (``VectorUnit.finishers``).
FINISHER_UNROLL = 2

#: softmax running max starts below every int32.
_MAX_INIT = nx.INT32.lo - 1
_INT24 = nx.Range(-(1 << (nx.LN_IN_BITS - 1)), (1 << (nx.LN_IN_BITS - 1)) - 1)

_COMMAND_FIELDS = {
    "op": VectorOp,
    "rows": unsigned(ROWS_BITS),
    "cols": unsigned(COLS_BITS),
    # Softmax: column j of row i is masked when causal and j > i + causal_offset.
    "causal": unsigned(1),
    "causal_offset": signed(ROWS_BITS + 1),
    # Softmax: scale (M, S). GELU: output requantisation (M, S). LayerNorm: output shift (S).
    # Residual: residual shift (S, 0..16).
    "mult": unsigned(nx.MULT_BITS),
    # Any operation: x = residual_add(x, r, res_shift) first (RESIDUAL always adds, by ``shift``).
    "add_residual": unsigned(1),
    "res_shift": unsigned(5),
    "shift": unsigned(SHIFT_BITS),
    # Requantise and GELU: output zero point. Every operation's output is saturated to
    # [out_lo, out_hi] (the destination format's range; int32's for a pass kept whole).
    "zero_point": signed(32),
    "out_lo": signed(32),
    "out_hi": signed(32),
}


def unit_command_layout(decoder_ops: bool = False) -> data.StructLayout:
    """The unit's command: ``dither`` (softmax: the probabilities rounded at ordered-dither
    thresholds, SOFTMAX_DITHER) after the common fields; with ``decoder_ops`` three more fields
    at the end, ``prob_wide`` (softmax: 15-bit probabilities, the decoder's SOFTMAX_WIDE),
    ``rms`` (LayerNorm as the decoder's RMSNORM), ``silu`` (REQUANT_ROWS as the decoder's
    SILU_GATE), ``lo_shift`` (REQUANT as the decoder's WIDE_LO) and ``rot`` (RESIDUAL as the
    decoder's ROTARY), so a command packed without them has the same bits."""
    fields = dict(_COMMAND_FIELDS)
    fields["dither"] = unsigned(1)
    if decoder_ops:
        fields["prob_wide"] = unsigned(1)
        # LayerNorm as the decoder's RMSNORM: no mean, a per-row pre-shift and the epsilon.
        fields["rms"] = unsigned(1)
        # The row requantisation as the decoder's SILU_GATE: x = silu(gate) * up, the gate in
        # the data lanes (int16), up in the residual lanes (int8; int16 with res_shift 8).
        fields["silu"] = unsigned(1)
        # REQUANT as the decoder's WIDE_LO: round_shift(x, 8 + e) with e each row's ``rexp``
        # (the input beat's field).
        fields["lo_shift"] = unsigned(1)
        # RESIDUAL as the decoder's ROTARY: every row comes twice, the first time kept, the
        # second time turned by the kept row (x and the residual lanes' cos | sin).
        fields["rot"] = unsigned(1)
    return data.StructLayout(fields)


command_layout = unit_command_layout(False)
#: Softmax's probability limit with ``prob_wide`` (numerics.softmax's prob_max for matmul_wide).
PROB_MAX_WIDE = nx.INT16.hi
#: The dithered softmax (numerics.softmax(dither=True)): column j's threshold index is the top
#: DITHER_BITS of a 16-bit phase, (j * DITHER_STEP) mod 2**16.
_DITHER_PHASE_BITS = 16
assert nx.dither_thresholds(3).tolist() == [
    (j * nx.DITHER_STEP % (1 << _DITHER_PHASE_BITS)) >> (_DITHER_PHASE_BITS - nx.DITHER_BITS)
    for j in range(3)]
#: The dither's D = (2k + 1) << (s - DITHER_BITS - 1) with s = RECIP_BITS - x: the bits of
#: p = e * R it meets lie in p[_DITHER_LO : RECIP_BITS] for every row exponent x.
_DITHER_LO = nx.RECIP_BITS - nx.DITHER_BITS - 1 - ROW_EXP_MAX
assert _DITHER_LO >= 0

#: Per-column parameters: LayerNorm gamma (mult) and beta (bias); requantise and GELU's input
#: requantisation multiplier (mult, below 2**MULT_BITS) and shift.
param_layout = data.StructLayout({
    "mult": signed(GAMMA_BITS),
    "shift": unsigned(SHIFT_BITS),
    "bias": signed(BETA_BITS),
})

#: The per-column parameters stage 2 reads (the row requantisations' M and S).
_PARAM2_LAYOUT = data.StructLayout({"mult": unsigned(nx.MULT_BITS), "shift": unsigned(SHIFT_BITS)})

#: One row in flight. ``a``: softmax max / LayerNorm sum, then mean. ``b``: softmax exp sum,
#: then reciprocal / LayerNorm sum of squares, then floor(2**46 / std).
def unit_token_layout(decoder_ops: bool = False) -> data.StructLayout:
    return data.StructLayout({
        "cmd": unit_command_layout(decoder_ops),
        "row": unsigned(ROWS_BITS),
        "a": signed(2 + nx.LN_IN_BITS + COLS_BITS),
        "b": unsigned(2 * nx.LN_IN_BITS + COLS_BITS),
        "exp": unsigned(ROW_EXP_BITS),
    })


token_layout = unit_token_layout(False)

_SX_BITS = 2 + nx.LN_IN_BITS + COLS_BITS            # |sum x| < 2**(23 + COLS_BITS)
_SXX_BITS = 2 * nx.LN_IN_BITS + COLS_BITS           # sum x*x < 2**(46 + COLS_BITS)
_ESUM_BITS = EXP_E_BITS + COLS_BITS                 # sum e <= (2**COLS_BITS - 1) * 2**15
_RECIP_NUM = nx.PROB_MAX << nx.RECIP_BITS
#: The exp sum of a row with any unmasked column is at least 2**EXP_ONE_BITS (its maximum).
_RECIP_QBITS = _RECIP_NUM.bit_length() - nx.EXP_ONE_BITS
_RECIP_NUM_WIDE = PROB_MAX_WIDE << nx.RECIP_BITS
_RECIP_QBITS_WIDE = _RECIP_NUM_WIDE.bit_length() - nx.EXP_ONE_BITS
_MEAN_QBITS = _SX_BITS - 1
_VAR_QBITS = 2 * (nx.LN_IN_BITS + 1)                # |d| < 2**25, so var < 2**50
_STD_BITS = nx.LN_IN_BITS + 1
_INV_QBITS = nx.LN_INV_BITS + 1
_INV_BITS = nx.LN_INV_BITS + 1
_DIVISOR_BITS = max(_ESUM_BITS, _STD_BITS, COLS_BITS)
_DIVIDEND_BITS = max(_RECIP_NUM.bit_length(), _SXX_BITS, nx.LN_INV_BITS + 1)
assert _RECIP_NUM_WIDE.bit_length() <= _DIVIDEND_BITS
#: R < 2**24 with prob_wide: stage 3's multiplier takes it whole (softmax's a is e <= 2**15,
#: inside the product's high-limb operand).
assert _RECIP_QBITS_WIDE <= _INV_BITS

# RMSNORM (numerics.rmsnorm), a decoder build's LayerNorm with ``rms``:
#: the epsilon (P[0].bias) is below 2**62;
_EPS_BITS = 62
#: the row's pre-shift k = max(bit_length(max|x|) - RMS_PEAK_BITS, k_eps) is in -30..9;
_RMS_K_SHAPE = signed(7)
#: 2u = 2 round_shift(x, k) (or 2x << -k) is below 2**24 in magnitude, u below 2**23 + 1;
_RMS_Q_BITS = nx.RMS_PEAK_BITS + 3
#: rms = isqrt(ms + eps_k) < 2**31 (ms <= 2**46, eps_k < 2**61): the root and the divisor.
_RMS_STD_BITS = 31
_DIVISOR_BITS_DEC = max(_DIVISOR_BITS, _RMS_STD_BITS)
assert nx.RMS_MAX_COLS << (2 * nx.RMS_PEAK_BITS) < 1 << _SXX_BITS
assert nx.RMS_INV_BITS == nx.LN_INV_BITS and nx.RMS_NORM_FRAC == nx.LN_NORM_FRAC


#: SILU_GATE's product takes this many slices of stage 1 (VectorUnit._silu_gate).
_SILU_SLICES = 7


def _is_reduction(op):
    return (op == VectorOp.SOFTMAX) | (op == VectorOp.LAYERNORM)


def _is_rows(op):
    """Operations with a per-row exponent from the row's peak (numerics.requantize_rows)."""
    return (op == VectorOp.REQUANT_ROWS) | (op == VectorOp.GELU_ROWS)


# Proven operand widths of the output multiplier bank (signed), so that every product is built
# from as few DSP limbs and as narrow a shifter as its values need:
#: LayerNorm's d = x - mean of int24 values.
_LN_D_BITS = nx.LN_IN_BITS + 1
#: LayerNorm's z = round_shift(d * inv, LN_INV_BITS - LN_NORM_FRAC). |d| < sqrt(n) * (std + 1)
#: (d*d <= sum of squares < n * (var + 1) <= n * (std + 1)**2) and inv <= 2**46 / max(1, std),
#: so |d * inv| < (isqrt(n) + 1) * 2**47 and |z| <= (isqrt(n) + 1) * 2**13, n < 2**COLS_BITS.
_LN_DINV_MAX = (isqrt((1 << COLS_BITS) - 1) + 1) << (nx.LN_INV_BITS + 1)
_Z_BITS = ((_LN_DINV_MAX >> (nx.LN_INV_BITS - nx.LN_NORM_FRAC)) + 1).bit_length() + 1
#: GELU's g = x * Phi(x) + offset, x int16, Phi <= 2**14.
_G_BITS = ((1 << 15 << nx.GELU_PHI_BITS) + GELU_OFFSET).bit_length() + 1
#: The shared stage-2 multiplier's second operand: softmax's and the row requantisations' M,
#: LayerNorm's |x|. A GELU_ROWS input beyond the table multiplies M << _GELU_PRE (still in
#: the operand's width) and the product is shifted by the rest of GELU_PHI_BITS after it.
_OPB_BITS = max(nx.MULT_BITS, nx.LN_IN_BITS)
_GELU_PRE = _OPB_BITS - nx.MULT_BITS
_GELU_POST = nx.GELU_PHI_BITS - _GELU_PRE
#: Widths of the steps' products (plus rounding half, which reaches 2**(SHIFT_MAX-1)).
_HALF_BITS = nx.SHIFT_MAX + 1
_M1_PROD_BITS = max(_LN_DINV_MAX.bit_length() + 1, 32 + nx.MULT_BITS, _HALF_BITS) + 1
#: GELU_ROWS beyond the table in M1: b = M << _M1_GELU_PRE fills the low 17-bit DSP limb, the
#: product is shifted by the rest of GELU_PHI_BITS (|xo * M << 14| < 2**60).
_M1_GELU_PRE = 17 - nx.MULT_BITS
_M1_GELU_POST = nx.GELU_PHI_BITS - _M1_GELU_PRE
_M1_BITS = max(_M1_PROD_BITS, 31 + nx.MULT_BITS + nx.GELU_PHI_BITS + 1)
_M2_BITS = max(_Z_BITS + GAMMA_BITS, BETA_BITS) + 1          # z * gamma + beta, unshifted
_M3_BITS = max(_G_BITS + nx.MULT_BITS, _M2_BITS, _HALF_BITS) + 1

#: |v| of requantize_rows is clamped here: beyond it every k gives a saturated output anyway
#: (round_shift(2**40, ROW_EXP_MAX) >= 2**32), so the exponent and the outputs are unchanged.
_ROWS_V_BITS = 42
_ROWS_V_MAX = (1 << (_ROWS_V_BITS - 1)) - 1


def _rows_exponent(m, peak, out_hi):
    """``ROW_EXP_MAX - k``, k the smallest in 0..ROW_EXP_MAX with round_shift(peak, k) <= out_hi
    (ROW_EXP_MAX if none): step 3 of numerics.requantize_rows."""
    k = Signal(ROW_EXP_BITS, name="rows_k")
    m.d.comb += k.eq(ROW_EXP_MAX)
    for c in range(ROW_EXP_MAX - 1, -1, -1):     # the smallest fitting k wins (last assignment)
        r = (peak + ((1 << c) >> 1)) >> c
        with m.If(r <= out_hi):
            m.d.comb += k.eq(c)
    return ROW_EXP_MAX - k


class VectorFinisher(wiring.Component):
    """Per-row scalar work between the reduction passes and the output pass.

    Softmax: ``R = floor(255 * 2**24 / sum)`` (0 for an all-masked row). LayerNorm: floor mean
    and its remainder ``r = sum(x) - n*mean``, ``S2 = sum(x*x) - mean * (sum(x) + r)`` (as
    ``2*sum(x) - n*mean = sum(x) + r``, exactly ``sum((x - mean)**2)``), floor variance, isqrt,
    ``inv = floor(2**46 / max(1, std))``. Other operations pass through.
    One divider (``unroll`` quotient bits a cycle) serves every division. With ``decoder_ops``
    a softmax command's ``prob_wide`` takes ``R = floor(32767 * 2**24 / sum)``, and a
    LayerNorm command's ``rms`` (RMSNORM) skips the mean: ``a`` comes in as the row's pre-shift
    k, ``ms = floor(sum(u*u) / n)``, ``rms = isqrt(ms + eps_k)`` with ``eps_k`` the epsilon
    (``eps``, held by the unit) shifted by 2k, ``inv = floor(2**46 / max(1, rms))``, and ``a``
    goes out as 0 (the mean stage 3 subtracts).
    """

    def __init__(self, unroll: int = FINISHER_UNROLL, decoder_ops: bool = False):
        self.unroll = unroll
        self.decoder_ops = decoder_ops
        self.tok_layout = unit_token_layout(decoder_ops)
        ports = {
            "i": In(stream.Signature(self.tok_layout)),
            "o": Out(stream.Signature(self.tok_layout)),
        }
        if decoder_ops:
            ports["eps"] = In(_EPS_BITS)
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        qwidths = (_RECIP_QBITS, _MEAN_QBITS, _VAR_QBITS, _INV_QBITS)
        if self.decoder_ops:
            qwidths += (_RECIP_QBITS_WIDE,)
        dec = self.decoder_ops
        m.submodules.div = div = Divider(_DIVIDEND_BITS, _DIVISOR_BITS_DEC if dec else _DIVISOR_BITS,
                                         self.unroll, quotient_widths=qwidths)
        # A decoder build's root has RMSNORM's 31 bits; LayerNorm's (25) skips the top steps.
        m.submodules.sqrt = sqrt = (Isqrt(_RMS_STD_BITS, self.unroll, short_width=_STD_BITS)
                                    if dec else Isqrt(_STD_BITS, self.unroll))

        tok = Signal(self.tok_layout)
        sx = Signal(signed(_SX_BITS))
        # The mean of int24 values is an int24.
        mean = Signal(signed(nx.LN_IN_BITS))
        rem = Signal(_DIVISOR_BITS)
        s2 = Signal(unsigned(_SXX_BITS + 1))
        m.d.comb += self.o.payload.eq(tok)
        cols = tok.cmd.cols
        # mean * (sum + r), taken in state PRODUCT (outside the FSM: its partial sums are carry
        # chains of their own, see limb_product).
        # In three cycles: the sum, the product, the difference.
        f = Signal(signed(_SX_BITS + 1))
        # |sum + r| < 2**(23 + COLS_BITS) + 2**COLS_BITS: 38 bits at 13 column bits.
        f_bits = nx.LN_IN_BITS + COLS_BITS + 1
        mf = Signal(signed(nx.LN_IN_BITS + f_bits))
        # The top limb of f (f_bits - 34 bits) is multiplied in LUTs: four DSP multiplies.
        mf_comb = limb_product(mean, f[:f_bits].as_signed(), lut_bits=f_bits - 34, m=m, name="mf")
        if dec:
            # RMSNORM's eps_k = round_shift(eps, 2k) (k >= 1) or eps << -2k (k <= 0), while the
            # mean square is divided: 2 eps is loaded shifted by 2 (|k| & 1) and then shifted
            # by 4 bits a cycle, |k| >> 1 <= 15 times (a shift register, not a barrel shifter
            # in each finisher); eps_k = (that + 1) >> 1, a register behind it, valid with
            # eps_ok.
            k = tok.a[:_RMS_K_SHAPE.width].as_signed()
            left = k[-1]
            kmag = Signal(5)
            m.d.comb += kmag.eq(Mux(left, -k, k))
            eps2 = Cat(Const(0, 1), self.eps)
            eps_sh = Signal(_EPS_BITS + 1)
            eps_steps = Signal(4)
            epsk = Signal(_EPS_BITS)
            eps_ok = Signal()
            with m.If(eps_steps != 0):
                m.d.sync += [eps_sh.eq(Mux(left, eps_sh << 4, eps_sh >> 4)),
                             eps_steps.eq(eps_steps - 1)]
            m.d.sync += [epsk.eq(Mux(tok.cmd.rms, (eps_sh + 1) >> 1, 0)),
                         eps_ok.eq(eps_steps == 0)]

            def eps_load():
                m.d.sync += [eps_sh.eq(Mux(kmag[0], Mux(left, eps2 << 2, eps2 >> 2), eps2)),
                             eps_steps.eq(kmag >> 1), eps_ok.eq(0)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [tok.eq(self.i.payload), sx.eq(self.i.payload.a)]
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                with m.Switch(tok.cmd.op):
                    with m.Case(VectorOp.SOFTMAX):
                        if SOFTMAX_ROW_EXP:
                            m.d.sync += tok.exp.eq(_row_exponent(m, tok.b[:_ESUM_BITS]))
                        with m.If(tok.b == 0):
                            m.next = "DONE"
                        with m.Else():
                            m.d.comb += [div.start.eq(1), div.dividend.eq(_RECIP_NUM),
                                         div.divisor.eq(tok.b),
                                         div.steps.eq(div.steps_for(_RECIP_QBITS))]
                            if self.decoder_ops:
                                with m.If(tok.cmd.prob_wide):
                                    m.d.comb += [
                                        div.dividend.eq(_RECIP_NUM_WIDE),
                                        div.steps.eq(div.steps_for(_RECIP_QBITS_WIDE))]
                            m.next = "RECIP"
                    with m.Case(VectorOp.LAYERNORM):
                        def mean_division():
                            # floor(a / n) = ~(~a // n) for negative a.
                            m.d.comb += [div.start.eq(1),
                                         div.dividend.eq(Mux(sx < 0, ~sx, sx)[:_SX_BITS]),
                                         div.divisor.eq(cols),
                                         div.steps.eq(div.steps_for(_MEAN_QBITS))]
                            m.next = "MEAN"
                        if dec:
                            # RMSNORM: no mean; b is the sum of squares.
                            with m.If(tok.cmd.rms):
                                m.d.sync += s2.eq(tok.b)
                                eps_load()
                                m.next = "VAR"
                            with m.Else():
                                mean_division()
                        else:
                            mean_division()
                    with m.Case(VectorOp.REQUANT_ROWS, VectorOp.GELU_ROWS):
                        m.d.sync += tok.exp.eq(_rows_exponent(m, tok.b, tok.cmd.out_hi))
                        m.next = "DONE"
                    with m.Default():
                        m.next = "DONE"
            with m.State("RECIP"):
                with m.If(div.done):
                    m.d.sync += tok.b.eq(div.quotient)
                    m.next = "DONE"
            with m.State("MEAN"):
                with m.If(div.done):
                    q = div.quotient[:_SX_BITS].as_signed()
                    # For a negative sum, ~sum = n*q + r: sum = n*~q + (n - 1 - r).
                    m.d.sync += [mean.eq(Mux(sx < 0, ~q, q)),
                                 rem.eq(Mux(sx < 0, cols - 1 - div.remainder, div.remainder))]
                    m.next = "SQUARES"
            with m.State("SQUARES"):
                m.d.sync += [f.eq(sx + rem), tok.a.eq(mean)]
                m.next = "PRODUCT"
            with m.State("PRODUCT"):
                m.d.sync += mf.eq(mf_comb)
                m.next = "DIFFERENCE"
            with m.State("DIFFERENCE"):
                m.d.sync += s2.eq(tok.b - mf)
                m.next = "VAR"
            with m.State("VAR"):
                m.d.comb += [div.start.eq(1), div.dividend.eq(s2), div.divisor.eq(cols),
                             div.steps.eq(div.steps_for(_VAR_QBITS))]
                m.next = "SQRT"
            with m.State("SQRT"):
                with m.If(div.done):
                    if dec:
                        # RMSNORM adds its shifted epsilon (the quotient stays valid).
                        with m.If(tok.cmd.rms):
                            m.next = "EPS"
                        with m.Else():
                            m.d.comb += [sqrt.start.eq(1), sqrt.radicand.eq(div.quotient),
                                         sqrt.short.eq(1)]
                            m.next = "INV"
                    else:
                        m.d.comb += [sqrt.start.eq(1), sqrt.radicand.eq(div.quotient)]
                        m.next = "INV"
            if dec:
                with m.State("EPS"):
                    with m.If(eps_ok):
                        m.d.comb += [sqrt.start.eq(1), sqrt.radicand.eq(div.quotient + epsk)]
                        m.next = "INV"
            with m.State("INV"):
                with m.If(sqrt.done):
                    m.d.comb += [div.start.eq(1), div.dividend.eq(1 << nx.LN_INV_BITS),
                                 div.divisor.eq(Mux(sqrt.root == 0, 1, sqrt.root)),
                                 div.steps.eq(div.steps_for(_INV_QBITS))]
                    m.next = "INV_WAIT"
            with m.State("INV_WAIT"):
                with m.If(div.done):
                    m.d.sync += tok.b.eq(div.quotient)
                    if dec:
                        with m.If(tok.cmd.rms):
                            m.d.sync += tok.a.eq(0)
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.next = "IDLE"
        return m


def _row_exponent(m, total):
    """``clamp(floor(log2(total)) - EXP_ONE_BITS, 0, ROW_EXP_MAX)`` (0 for a zero total)."""
    log2 = Signal(range(len(total)), name="row_log2")
    for k in range(len(total)):          # the highest set bit wins (last assignment)
        with m.If(total[k]):
            m.d.comb += log2.eq(k)
    x = Signal(ROW_EXP_BITS, name="row_exp")
    m.d.comb += x.eq(Mux(log2 <= nx.EXP_ONE_BITS, 0,
                         Mux(log2 - nx.EXP_ONE_BITS >= ROW_EXP_MAX, ROW_EXP_MAX,
                             log2 - nx.EXP_ONE_BITS)))
    return x


def _ceil_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class VectorUnit(wiring.Component):
    """N-lane vector unit for softmax, LayerNorm, GELU, requantisation and residual add.

    Parameters
    ----------
    lanes : int
        Lanes (columns per beat); matches the systolic array's N.
    max_cols : int
        Longest row (columns). Sizes the row FIFOs and the parameter memory.
    unroll : int
        Quotient (and root) bits per cycle of each finisher's divider and square root.
    finishers : int or None
        Finishers working on successive rows in parallel (None: enough for rows of 128 to keep
        the unit at full rate).
    fifo_depth : int or None
        Depth in beats of each row FIFO (None: one more than a power of two that holds a
        longest row and twice the finisher latency).
    token_depth : int
        Rows that may wait between two stages.
    decoder_ops : bool
        For the decoder's operations (``Sizing.decoder_ops``): the residual lanes are int32
        (RESIDUAL32 adds an int32 residual; int16 without), the command has ``prob_wide``
        (softmax with probabilities up to 32767, SOFTMAX_WIDE), ``dither`` (softmax rounded at
        ordered-dither thresholds, SOFTMAX_DITHER) and ``rms`` (LayerNorm as
        RMSNORM: numerics.rmsnorm with gamma from the records), and the parameter beat an
        ``eps`` (RMSNORM's epsilon, taken with address 0).

    Members
    -------
    cmd : In(stream.Signature(command_layout))
        One command per batch of rows (``unit_command_layout(decoder_ops)``).
    i : In(stream.Signature(StructLayout({"data": N x signed(32), "residual": N x signed(16)})))
        Input beats (``residual`` is read by the residual add only; signed(32) lanes with
        ``decoder_ops``).
    o : Out(stream.Signature(StructLayout({"data": N x signed(32), "exp": unsigned(4)})))
        Output beats; lanes beyond the row's length are unspecified. ``exp`` is the row's
        power-of-two exponent (softmax; 0 for the other operations).
    params : In(stream.Signature(StructLayout({"addr", "data": N x param_layout})))
        Per-column parameters, one beat (N columns) per address; load them before the batch
        that uses them (the port is always ready).
    busy : Out(1)
        Some row is in the unit (a command being taken, a beat or token in a FIFO, a finisher
        or output register in use). Low means every accepted row has left.
    """

    def __init__(self, lanes: int, *, max_cols: int = VEC_MAX_COLS,
                 unroll: int = FINISHER_UNROLL,
                 finishers: int | None = None, fifo_depth: int | None = None,
                 token_depth: int = 16, decoder_ops: bool = False):
        if not isinstance(lanes, int) or not 1 <= lanes <= 64:
            raise ValueError(f"lanes must be an integer in 1..64, not {lanes!r}")
        if not isinstance(max_cols, int) or not 1 <= max_cols < (1 << COLS_BITS):
            raise ValueError(f"max_cols must be in 1..{(1 << COLS_BITS) - 1}, not {max_cols!r}")
        if not isinstance(unroll, int) or unroll < 1:
            raise ValueError(f"unroll must be a positive integer, not {unroll!r}")
        self.lanes = lanes
        self.max_cols = max_cols
        self.max_beats = -(-max_cols // lanes)
        self.decoder_ops = bool(decoder_ops)
        self.unroll = unroll
        if finishers is None:
            # A LayerNorm row keeps a finisher busy for finisher_cycles() cycles; rows of
            # 128 arrive every 128 / lanes cycles.
            finishers = max(1, -(-self.finisher_cycles() * lanes // 128))
        if not isinstance(finishers, int) or finishers < 1:
            raise ValueError(f"finishers must be a positive integer, not {finishers!r}")
        self.finishers = finishers
        if fifo_depth is None:
            # Storage (depth - 1 entries) of a power of two that holds a longest row and at
            # least twice a finisher's latency: rows of up to storage - finisher_cycles() - 8
            # beats (half of it at least) stream at full rate; a longest row may wait for the
            # finisher of the one before (a block RAM of 2**k entries, not 2**(k+1)).
            fifo_depth = _ceil_pow2(max(self.max_beats, 2 * (self.finisher_cycles() + 8))) + 1
        if not isinstance(fifo_depth, int) or fifo_depth < self.max_beats + 1:
            raise ValueError(f"fifo_depth must hold a longest row ({self.max_beats} beats)")
        self.fifo_depth = fifo_depth
        self.token_depth = token_depth
        self.decoder_ops = bool(decoder_ops)
        #: Bits of a residual lane.
        self.residual_bits = 32 if self.decoder_ops else 16
        self.cmd_layout = unit_command_layout(self.decoder_ops)
        self.tok_layout = unit_token_layout(self.decoder_ops)

        in_fields = {
            "data": data.ArrayLayout(signed(32), lanes),
            "residual": data.ArrayLayout(signed(self.residual_bits), lanes),
        }
        if self.decoder_ops:
            # WIDE_LO (``lo_shift``): the row's exponent, 0..ROW_EXP_MAX, with each beat.
            in_fields["rexp"] = unsigned(ROW_EXP_BITS)
        self.in_layout = data.StructLayout(in_fields)
        self.out_layout = data.StructLayout({
            "data": data.ArrayLayout(signed(32), lanes),
            "exp": unsigned(ROW_EXP_BITS),
        })
        pw_fields = {
            "addr": unsigned(max(1, (self.max_beats - 1).bit_length())),
            "data": data.ArrayLayout(param_layout, lanes),
        }
        if self.decoder_ops:
            # RMSNORM's epsilon (the record of column 0's whole bias), taken with address 0.
            pw_fields["eps"] = unsigned(_EPS_BITS)
        self.param_write_layout = data.StructLayout(pw_fields)
        super().__init__({
            "cmd": In(stream.Signature(self.cmd_layout)),
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
            "params": In(stream.Signature(self.param_write_layout)),
            "busy": Out(1),
        })

    def finisher_cycles(self) -> int:
        """Cycles one finisher spends on a LayerNorm row (the slowest operation)."""
        u = self.unroll
        # Each division: an alignment cycle, its steps, the done cycle; the square root: its
        # steps and the done cycle; eight more for the FSM's other states.
        divisions = sum(-(-q // u) + 2 for q in (_MEAN_QBITS, _VAR_QBITS, _INV_QBITS))
        # (A decoder build's RMSNORM row is shorter: no mean, 3 more root steps.)
        return divisions + -(-_STD_BITS // u) + 1 + 8

    # --- helpers -------------------------------------------------------------------------------

    def _lane_valid(self, m, name, tok_cmd, row, col):
        """Per-lane column validity: inside the row and, for a causal softmax, not masked."""
        N = self.lanes
        valid = Signal(N, name=f"{name}_lane_valid")
        causal = tok_cmd.causal & (tok_cmd.op == VectorOp.SOFTMAX)
        limit = Signal(signed(ROWS_BITS + 3), name=f"{name}_limit")
        m.d.comb += limit.eq(row + tok_cmd.causal_offset)
        for k in range(N):
            j = col + k
            m.d.comb += valid[k].eq((j < tok_cmd.cols) & (~causal | (j <= limit)))
        return valid

    def _max_tree(self, m, name, values, shape=signed(33), *, levels=None):
        """The maximum of ``values`` (a list of one), or after ``levels`` levels of pairs."""
        level = 0
        while len(values) > 1 and (levels is None or level < levels):
            nxt = []
            for k in range(0, len(values) - 1, 2):
                s = Signal(shape, name=f"{name}_max{level}_{k}")
                m.d.comb += s.eq(Mux(values[k] > values[k + 1], values[k], values[k + 1]))
                nxt.append(s)
            if len(values) % 2:
                nxt.append(values[-1])
            values, level = nxt, level + 1
        return values

    def _silu_gate(self, m, ctl):
        """SILU_GATE's x, ``silu(gate) * up`` (numerics.gated_silu before its requantisation),
        per lane, in the _SILU_SLICES slices of stage 1 (``ctl``: its control per slice): the
        sigmoid's table read (slice 1) and its register (2), its interpolation (3), gate *
        sigmoid (4), the rounding to SiLU in Q16 (5), SiLU * up (6), and for an int16 up the
        rounding by 8 (7).
        The gate is the data lane's int16, up the residual lane's int8 (int16 with the
        command's res_shift 8), saturated to that range."""
        out = []
        for k in range(self.lanes):
            def piped(value, shape, name):
                return _piped(m, 1, value, shape, f"s1_silu_{name}{k}")
            sig = SiluSigmoid()
            m.submodules[f"silu_sig{k}"] = sig
            assert SiluSigmoid.LATENCY == 2
            g0 = self.i.payload.data[k][:16].as_signed()
            m.d.comb += [sig.x.eq(g0), sig.en.eq(1)]
            g1 = piped(g0, signed(16), "g1_")
            r1 = piped(self.i.payload.residual[k], signed(self.residual_bits), "r1_")
            wide1 = ctl[1]["cmd"].res_shift != 0
            u1 = Mux(wide1, clamp(r1, nx.INT16.lo, nx.INT16.hi), clamp(r1, nx.INT8.lo, nx.INT8.hi))
            # Slice 2: the gate and up held (the table's register).
            g2 = piped(g1, signed(16), "g2_")
            u2 = piped(u1, signed(16), "u2_")
            # Slice 3: the sigmoid (Q16, 0..2**16), the gate and up held.
            s3 = piped(sig.y, unsigned(SILU_SIG_WIDTH), "sig3_")
            g3 = piped(g2, signed(16), "g3_")
            u3 = piped(u2, signed(16), "u3_")
            # Slice 4: gate * sigmoid (|.| <= 2**31).
            gs4 = piped(limb_product(g3, s3, m=m, name=f"s1_silu_gs{k}"), signed(33), "gs4_")
            u4 = piped(u3, signed(16), "u4_")
            # Slice 5: SiLU in Q16, round_shift(gate * sigmoid, 8): |.| < 2**23.
            sh = nx.SILU_IN_FRAC + nx.SILU_SIG_BITS - nx.SILU_OUT_FRAC
            s5 = piped((gs4 + (1 << (sh - 1))) >> sh, signed(25), "silu5_")
            u5 = piped(u4, signed(16), "u5_")
            # Slice 6: SiLU * up (|.| < 2**38).
            p6 = piped(limb_product(s5, u5, m=m, name=f"s1_silu_p{k}"), signed(40), "p6_")
            # Slice 7: an int16 up's product rounded by 8 (|.| < 2**30 either way).
            wide6 = ctl[6]["cmd"].res_shift != 0
            lo = nx.WIDE_LO_BITS
            p7 = piped(Mux(wide6, (p6 + (1 << (lo - 1))) >> lo, p6), signed(32), "p7_")
            out.append(p7)
        return out

    def _rotary(self, m, ctl, col1):
        """ROTARY's results (numerics.rotary), per lane, in the _SILU_SLICES slices of stage 1
        (``ctl``: its control per slice; ``col1``: the column of the beat's lane 0). Every row
        comes twice (the command's rows are twice the op's): the first time (an even row of
        the command) its beats are kept in a buffer, a bank per lane (x and the residual
        lane's cos | sin, 16 bits each); the second time each column c is paired with the
        kept column c + half (c < half) or c - half, read from the bank that holds it:
        ``x[c] r[c] - x[c+h] r[c+h]`` (x1 C - x2 S) or ``x[c] r[c-h] + x[c-h] r[c]``
        (x2 C + x1 S), rounded by 14. The engine writes the second rows' results only.

        Slices: the banks' reads (1), the rotation of the read lanes by ``half mod N`` onto
        their lanes (2), the operands (3), the two products (4), their sum or difference (5),
        the rounding (6), then registers up to SILU_GATE's last slice."""
        N = self.lanes
        ln = (N - 1).bit_length()
        depth = max(2, ROTARY_MAX_COLS // N)
        cmd0 = ctl[0]["cmd"]
        half0 = cmd0.cols >> 1
        j = col1 >> ln
        q = half0 >> ln
        rr = half0[:ln] if ln else Const(0, 1)
        second = ctl[0]["row"][0]

        def piped(value, shape, name):
            return _piped(m, 1, value, shape, f"s1_rot_{name}")

        ups, downs = [], []
        for b in range(N):
            bank = memory.Memory(shape=unsigned(32), depth=depth, init=[])
            m.submodules[f"rot_bank{b}"] = bank
            wp = bank.write_port()
            m.d.comb += [wp.en.eq(ctl[0]["valid"] & cmd0.rot & ~second), wp.addr.eq(j),
                         wp.data.eq(Cat(self.i.payload.data[b][:16],
                                        self.i.payload.residual[b][:16]))]
            up, down = bank.read_port(), bank.read_port()
            # Lane k = (b - rr) mod N reads column c + half from bank b; lane (b + rr) mod N
            # reads c - half: entries j + q (+1 past the wrap) and j - q (-1 past it).
            m.d.comb += [up.addr.eq(j + q + (b < rr)),
                         down.addr.eq(j - q - (b >= N - rr))]
            ups.append(up.data)
            downs.append(down.data)
        # Slice 1: the banks' data; rotated onto the lanes by rr (a barrel shifter).
        rr1 = piped(rr, unsigned(max(1, ln)), "rr1")
        up_l, down_l = Cat(*ups), Cat(*downs)
        for s_ in range(ln):
            k = 1 << s_
            up_l = Mux(rr1[s_], up_l.rotate_right(32 * k), up_l)
            down_l = Mux(rr1[s_], down_l.rotate_left(32 * k), down_l)
        out = []
        for k in range(N):
            upper0 = (col1 + k) < half0
            own1 = piped(Cat(self.i.payload.data[k][:16], self.i.payload.residual[k][:16]),
                         unsigned(32), f"own1_{k}")
            upper1 = piped(upper0, 1, f"upper1_{k}")
            # Slice 2: own and partner values, (x, r) each.
            own2 = piped(own1, unsigned(32), f"own2_{k}")
            upper2 = piped(upper1, 1, f"upper2_{k}")
            part2 = piped(Mux(upper1, up_l.word_select(k, 32), down_l.word_select(k, 32)),
                          unsigned(32), f"part2_{k}")
            ox, orr = own2[:16].as_signed(), own2[16:].as_signed()
            px, pr = part2[:16].as_signed(), part2[16:].as_signed()
            # Slice 3: the operands: x[c] * (upper ? r[c] : r[partner]) and
            # x[partner] * (upper ? r[partner] : r[c]).
            a3 = piped(Cat(ox, Mux(upper2, orr, pr)), unsigned(32), f"a3_{k}")
            b3 = piped(Cat(px, Mux(upper2, pr, orr)), unsigned(32), f"b3_{k}")
            upper3 = piped(upper2, 1, f"upper3_{k}")
            # Slice 4: the products (|.| <= 2**30).
            pa = piped(limb_product(a3[:16].as_signed(), a3[16:].as_signed(), m=m,
                                    name=f"s1_rot_pa{k}"), signed(32), f"pa4_{k}")
            pb = piped(limb_product(b3[:16].as_signed(), b3[16:].as_signed(), m=m,
                                    name=f"s1_rot_pb{k}"), signed(32), f"pb4_{k}")
            upper4 = piped(upper3, 1, f"upper4_{k}")
            # Slice 5: x1 C - x2 S, or x2 C + x1 S.
            t5 = piped(Mux(upper4, pa - pb, pa + pb), signed(33), f"t5_{k}")
            # Slice 6: round_shift(., 14); held until SILU_GATE's last slice.
            sh = nx.ROPE_TRIG_BITS
            y = piped((t5 + (1 << (sh - 1))) >> sh, signed(32), f"y6_{k}")
            for i in range(7, _SILU_SLICES + 1):
                y = piped(y, signed(32), f"y{i}_{k}")
            out.append(y)
        return out

    # --- stages --------------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        N = self.lanes
        col_shape = unsigned(COLS_BITS + 1 + max(1, N.bit_length()))
        lanes32 = data.ArrayLayout(signed(32), N)

        m.submodules.fifo_a = fa = SyncFifo(width=lanes32.size, depth=self.fifo_depth)
        m.submodules.fifo_b = fb = SyncFifo(width=lanes32.size, depth=self.fifo_depth)
        command_layout, token_layout = self.cmd_layout, self.tok_layout
        m.submodules.tok1 = t1 = SyncFifo(width=token_layout.size, depth=self.token_depth)
        m.submodules.tok2 = t2 = SyncFifo(width=token_layout.size, depth=self.token_depth)
        m.submodules.tok3 = t3 = SyncFifo(width=token_layout.size, depth=self.token_depth)

        # --- Stage 1: ingest. Saturation and residual add (slice 1), the first half of the
        # max / sum trees over the lanes (slice 2), the rest and the running max / sum as the
        # beat goes into FIFO A. The slices move together when the last can write. -------------
        cmd = Signal(command_layout)
        have = Signal()
        row1 = Signal(ROWS_BITS)
        col1 = Signal(col_shape)
        acc_max = Signal(signed(33), init=_MAX_INIT)
        acc_sum = Signal(signed(_SX_BITS))

        valid1 = self._lane_valid(m, "s1", cmd, row1, col1)
        first1 = Signal(init=1)    # col1 == 0, kept with col1 (off the intake's handshake)
        fire1 = Signal()
        last1 = _row_end(m, "last1", N, col1, cmd.cols, fire1)
        last_row1 = Signal()       # row1 + 1 == cmd.rows, kept with row1
        # The slices never stall: a beat goes in only with credit for its place in FIFO A (and
        # for its token in T1), so backpressure stops intake, not the datapath.
        m.submodules.fa_credit = fa_cr = _credits(fa)
        m.submodules.t1_credit = t1_cr = _credits(t1)
        tok_in1 = Mux(_is_reduction(cmd.op), last1, first1)
        m.d.comb += [
            self.i.ready.eq(have & fa_cr.ok & (~tok_in1 | t1_cr.ok)),
            fire1.eq(self.i.ready & self.i.valid),
            fa_cr.take.eq(fire1), t1_cr.take.eq(fire1 & tok_in1),
        ]

        def piped1(value, shape, name):
            return _piped(m, 1, value, shape, name)

        is_res1 = cmd.op == VectorOp.RESIDUAL
        pre_add1 = is_res1 | cmd.add_residual
        if self.decoder_ops:
            pre_add1 = pre_add1 & ~cmd.rot       # ROTARY's residual lanes are cos | sin
        res_shift1 = Mux(is_res1, cmd.shift[:5], cmd.res_shift)
        ctl1 = [{"valid": fire1, "cmd": cmd, "row": row1, "first": first1, "last": last1,
                 "lanes": valid1, "pre_add": pre_add1}]
        if self.decoder_ops:
            ctl1[0]["rexp"] = self.i.payload.rexp
        dec = self.decoder_ops
        # The beat goes into FIFO A from slice L1: 4, or 7 in a decoder build, whose SILU_GATE
        # product takes seven slices from the unit's input (its last three only delay the
        # rest).
        L1 = 4 + (_SILU_SLICES - 4 if dec else 0)
        for i in range(1, L1 + 1):
            ctl1.append({n: piped1(v, command_layout if n == "cmd" else Value.cast(v).shape(),
                                   f"s1_{n}_{i}") for n, v in ctl1[-1].items()})
        # Slice 1: the shifted residual. Slice 2: x (after the residual pre-add; int24 for
        # LayerNorm).
        xa = []
        c1 = ctl1[1]
        for k in range(N):
            raw = piped1(self.i.payload.data[k], signed(32), f"s1_raw{k}")
            if self.decoder_ops:
                # An int32 residual: r << shift is clamped to [-2**32, 2**32 - 1] (no int32 x
                # brings a sum beyond that back into int32: the saturated sum is unchanged).
                rsh = Signal(signed(32 + 16), name=f"s1_rsh{k}")
                m.d.comb += rsh.eq(self.i.payload.residual[k] << res_shift1)
                big = rsh[32:] != Mux(rsh[-1], 0xFFFF, 0)
                rsv = Mux(big, Mux(rsh[-1], -(1 << 32), (1 << 32) - 1), rsh[:33].as_signed())
                rs = piped1(rsv, signed(34), f"s1_rs{k}")
            else:
                rs = piped1(self.i.payload.residual[k] << res_shift1, signed(34), f"s1_rs{k}")
            # The residual pre-add: x = saturate(x + (r << shift), int32) (numerics.residual_add).
            res = Signal(signed(34), name=f"s1_res{k}")
            m.d.comb += res.eq(raw + rs)
            x = Signal(signed(32), name=f"s1_x{k}")
            m.d.comb += x.eq(Mux(c1["pre_add"], clamp(res, nx.INT32.lo, nx.INT32.hi), raw))
            xs = Signal(signed(nx.LN_IN_BITS), name=f"s1_xsat{k}")
            m.d.comb += xs.eq(clamp(x, _INT24.lo, _INT24.hi))
            is_ln1 = c1["cmd"].op == VectorOp.LAYERNORM
            if dec:
                is_ln1 = is_ln1 & ~c1["cmd"].rms     # RMSNORM: the int32 x
            xa.append(piped1(Mux(is_ln1, xs, x), signed(32), f"s1_xa{k}"))
        # Slice 3: the first half of the trees (softmax: masked max, a masked lane is
        # -2**31 - 1; LayerNorm: masked sum of the int24 values). Slice 4: the rest.
        lanes1 = ctl1[2]["lanes"]
        if dec:
            # RMSNORM: the max of w = 2 m + (x < 0), m = x ^ sign (|x| or |x| - 1, no carry):
            # max |x| = ceil(max w / 2) (a lane with the largest m wins the tie if negative).
            rms1 = ctl1[2]["cmd"].rms
            maxes = [Mux(lanes1[k], Mux(rms1, Cat(xa[k][31], xa[k][:31] ^ xa[k][31].replicate(31)),
                                        xa[k]), _MAX_INIT) for k in range(N)]
        else:
            maxes = [Mux(lanes1[k], xa[k], _MAX_INIT) for k in range(N)]
        sums = [Mux(lanes1[k], xa[k][:nx.LN_IN_BITS].as_signed(), 0) for k in range(N)]
        levels = (N - 1).bit_length()
        half = (levels + 1) // 2
        maxes = self._max_tree(m, "s1a", maxes, levels=half)
        sums = _sum_tree(m, "s1a", sums, signed(_SX_BITS), levels=half)
        maxes = [piped1(v, signed(33), f"s1_max2_{j}") for j, v in enumerate(maxes)]
        sums = [piped1(v, signed(_SX_BITS), f"s1_sum2_{j}") for j, v in enumerate(sums)]
        xb = []
        for k, v in enumerate(xa):
            for i in range(3, L1 + 1):
                v = piped1(v, signed(32), f"s1_x{i}_{k}")
            xb.append(v)
        beat_max = piped1(self._max_tree(m, "s1b", maxes)[0], signed(33), "s1_beat_max")
        beat_sum = piped1(_sum_tree(m, "s1b", sums, signed(_SX_BITS))[0], signed(_SX_BITS),
                          "s1_beat_sum")
        for i in range(5, L1 + 1):
            beat_max = piped1(beat_max, signed(33), f"s1_beat_max{i}")
            beat_sum = piped1(beat_sum, signed(_SX_BITS), f"s1_beat_sum{i}")
        # The running max / sum, into FIFO A and T1.
        c2 = ctl1[L1]
        new_max = Signal(signed(33))
        new_sum = Signal(signed(_SX_BITS))
        m.d.comb += [new_max.eq(Mux(~c2["first"] & (acc_max > beat_max), acc_max, beat_max)),
                     new_sum.eq(Mux(c2["first"], 0, acc_sum) + beat_sum)]
        cmd2 = c2["cmd"]
        tok_now1 = Mux(_is_reduction(cmd2.op), c2["last"], c2["first"])
        write1 = Signal()
        m.d.comb += write1.eq(c2["valid"])
        out1 = lanes32(fa.w_data)
        tok1 = token_layout(t1.w_data)
        if dec:
            silu = self._silu_gate(m, ctl1)
            rot = self._rotary(m, ctl1, col1)
            m.d.comb += [out1[k].eq(Mux(cmd2.silu, silu[k], Mux(cmd2.rot, rot[k], xb[k])))
                         for k in range(N)]
        else:
            m.d.comb += [out1[k].eq(xb[k]) for k in range(N)]
        m.d.comb += [
            fa.w_en.eq(write1),
            t1.w_en.eq(write1 & tok_now1),
            tok1.cmd.eq(cmd2), tok1.row.eq(c2["row"]), tok1.b.eq(0),
            tok1.exp.eq(Mux(cmd2.lo_shift, c2["rexp"], 0) if dec else 0),
            tok1.a.eq(Mux(((cmd2.op == VectorOp.SOFTMAX) | cmd2.rms) if dec
                          else cmd2.op == VectorOp.SOFTMAX, new_max, new_sum)),
        ]
        with m.If(write1):
            m.d.sync += [acc_max.eq(new_max), acc_sum.eq(new_sum)]
        stage1_slices = [c["valid"] for c in ctl1[1:]]
        with m.If(fire1):
            with m.If(last1):
                m.d.sync += [col1.eq(0), first1.eq(1), row1.eq(row1 + 1),
                             last_row1.eq(row1 + 2 == cmd.rows)]
                with m.If(last_row1):
                    m.d.sync += have.eq(0)
            with m.Else():
                m.d.sync += [col1.eq(col1 + N), first1.eq(0)]
        # The next command is taken in the cycle the last beat of a batch goes in: batches follow
        # each other without a bubble.
        m.d.comb += self.cmd.ready.eq(~have | (fire1 & last1 & last_row1))
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [cmd.eq(self.cmd.payload), have.eq(self.cmd.payload.rows != 0),
                         row1.eq(0), col1.eq(0), first1.eq(1),
                         last1.eq(self.cmd.payload.cols <= N),
                         last_row1.eq(self.cmd.payload.rows == 1)]

        # Per-column parameters: stage 3 reads whole records, stage 2 (the row requantisations'
        # peak) the multiplier and shift only, each through a synchronous read port of its own
        # copy (block RAM), addressed with the beat each stage takes next.
        m.submodules.params = pmem = memory.Memory(
            shape=data.ArrayLayout(param_layout, N), depth=self.max_beats, init=[])
        m.submodules.params2 = pmem2 = memory.Memory(
            shape=data.ArrayLayout(_PARAM2_LAYOUT, N), depth=self.max_beats, init=[])
        pw = pmem.write_port()
        pw2 = pmem2.write_port()
        pr = pmem.read_port()
        pr2 = pmem2.read_port()
        m.d.comb += [self.params.ready.eq(1), pw.en.eq(self.params.valid),
                     pw.addr.eq(self.params.payload.addr), pw.data.eq(self.params.payload.data),
                     pw2.en.eq(self.params.valid), pw2.addr.eq(self.params.payload.addr)]
        for k in range(N):
            m.d.comb += [pw2.data[k].mult.eq(self.params.payload.data[k].mult),
                         pw2.data[k].shift.eq(self.params.payload.data[k].shift)]
        if dec:
            # RMSNORM's epsilon, held like the records (loaded before the batch that uses
            # it), and its k_eps = -floor((RMS_EPS_BITS - bit_length(eps)) / 2).
            eps = Signal(_EPS_BITS)
            with m.If(self.params.valid & (self.params.payload.addr == 0)):
                m.d.sync += eps.eq(self.params.payload.eps)
            k_eps_c = Signal(_RMS_K_SHAPE)
            m.d.comb += k_eps_c.eq(-(nx.RMS_EPS_BITS // 2))
            for b in range(_EPS_BITS):            # the highest set bit wins
                with m.If(eps[b]):
                    m.d.comb += k_eps_c.eq(-((nx.RMS_EPS_BITS - (b + 1)) // 2))
            k_eps = Signal(_RMS_K_SHAPE)
            m.d.sync += k_eps.eq(k_eps_c)

        # --- Stage 2: exponent (softmax), squares (LayerNorm), peak (row requantisations), in
        # five slices that move together when the last one can write its beat (and token). ----
        tok2 = Signal(token_layout)
        loaded2 = Signal()
        col2 = Signal(col_shape)
        beat2 = Signal(range(self.max_beats + 1))
        fire2 = Signal()
        load2 = Signal()
        last2 = _row_end(m, "last2", N, col2, tok2.cmd.cols, fire2, load2,
                         token_layout(t1.r_data).cmd.cols)
        # As in stage 1: a beat is taken from FIFO A only with credit for FIFO B (and T2).
        m.submodules.fb_credit = fb_cr = _credits(fb)
        m.submodules.t2_credit = t2_cr = _credits(t2)
        tok_in2 = Mux(_is_reduction(tok2.cmd.op) | _is_rows(tok2.cmd.op), last2, col2 == 0)
        m.d.comb += [fire2.eq(loaded2 & fa.r_rdy & fb_cr.ok & (~tok_in2 | t2_cr.ok)),
                     fb_cr.take.eq(fire2), t2_cr.take.eq(fire2 & tok_in2)]

        def piped2(value, shape, name):
            return _piped(m, 1, value, shape, name)

        def carry(values, slices, prefix):
            """``values`` (name -> value) through ``slices`` slices: a list of dicts per slice."""
            out = [values]
            for i in range(1, slices + 1):
                out.append({n: piped2(v, Value.cast(v).shape(), f"s2_{prefix}{n}_{i}")
                            for n, v in out[-1].items()})
            return out

        # Slices 1-11 work per lane (L5 is the last); slice 12 holds the masked lane values, 13
        # half of each lane tree (sums, peak), 14 the beat's sums, so the running sums (one
        # carry chain) share a cycle with nothing else.
        L5, L2 = 11, 14
        in2 = lanes32(fa.r_data)
        ctl = carry({"valid": fire2, "tok": tok2, "first": col2 == 0, "last": last2,
                     "lanes": self._lane_valid(m, "s2", tok2.cmd, tok2.row, col2)}, L2, "")
        ctl = [{**c, "tok": token_layout(c["tok"])} for c in ctl]
        op_at = [c["tok"].cmd.op for c in ctl]
        tok_now = Mux(_is_reduction(op_at[L2]) | _is_rows(op_at[L2]), ctl[L2]["last"],
                      ctl[L2]["first"])
        stage2_slices = [c["valid"] for c in ctl[1:]]

        out2 = lanes32(fb.w_data)
        es, sqs, peaks = [], [], []
        for k in range(N):
            x = in2[k]
            p2 = pr2.data[k]
            c0 = ctl[0]["tok"]
            # Slice 1: the operands' magnitudes and GELU_ROWS' int16 input; the softmax
            # difference (max - s).
            x16 = Signal(signed(16), name=f"s2_x16_{k}")
            m.d.comb += x16.eq(clamp(x, nx.INT16.lo, nx.INT16.hi))
            # GELU_ROWS beyond the table (x >= 4, a test of the sign and the high bits):
            # xo = saturate(x + offset, int32), the input itself (g = xo << 14).
            big = Signal(name=f"s2_big{k}")
            m.d.comb += big.eq(~x[-1] & (x[_GELU_BIG.bit_length() - 1:] != 0))
            xo_sum = Signal(signed(32), name=f"s2_xo_sum{k}")
            m.d.comb += xo_sum.eq(x + GELU_OFFSET_STEPS)
            xo = Signal(signed(32), name=f"s2_xo{k}")     # only x >= 0 can overflow
            m.d.comb += xo.eq(Mux(~x[-1] & xo_sum[-1], nx.INT32.hi, xo_sum))
            s1v = {"x": x, "x16": x16, "big": big, "xo": xo,
                   "mag": Mux(x < 0, -x, x)[:nx.LN_IN_BITS],
                   "diff": (c0.a - x)[:32], "mult": p2.mult, "shift": p2.shift}
            if dec:
                # RMSNORM: u = round_shift(x, k) or x << -k as ((2x shifted) + 1) >> 1, the
                # shifter here, the adder in slice 2 (|2u| <= 2**24 by the choice of k).
                rk = c0.a[:_RMS_K_SHAPE.width].as_signed()
                ql = Signal(signed(_RMS_Q_BITS), name=f"s2_rms_ql{k}")
                qr = Signal(signed(_RMS_Q_BITS), name=f"s2_rms_qr{k}")
                m.d.comb += [ql.eq((x[:_RMS_Q_BITS - 1] << 1) << (-rk)[:5]),
                             qr.eq((x << 1) >> rk[:4])]
                s1v["rq"] = Mux(rk[-1] | (rk == 0), ql, qr)
            s1 = carry(s1v, 1, f"l{k}_")[1]
            # Slices 2 to 4: Phi(x16) (GELU_ROWS: g = gelu(saturate(x, int16)), Q24,
            # 0 <= g < 2**30), its table read (block RAM) with slice 2 from slice 1's x16 (FIFO
            # A's block RAM data never reaches the table's address in the same cycle), its
            # data registered in slice 3, its interpolation in slice 4.
            phi2 = GeluPhi()
            m.submodules[f"phi_s2_{k}"] = phi2
            assert GeluPhi.LATENCY == 2
            m.d.comb += [phi2.x.eq(s1["x16"]), phi2.en.eq(1)]
            if dec:
                s2v = {n: v for n, v in s1.items() if n != "rq"}
                s2v["u"] = Signal(signed(_RMS_Q_BITS - 1), name=f"s2_rms_u{k}")
                m.d.comb += s2v["u"].eq(round_add(s1["rq"]))
                s2 = carry(s2v, 1, f"l{k}_")[1]
            else:
                s2 = carry(s1, 1, f"l{k}_")[1]
            s2 = carry(s2, 1, f"l{k}_t")[1]
            s2 = carry({**s2, "phi": phi2.phi}, 1, f"l{k}_w")[1]
            # Slice 5: x16 * Phi, each limb's product registered (the DSP's output register).
            gprod = limb_product(s2["x16"], s2["phi"], m=m, name=f"s2_gx{k}", stage=piped2)
            s2 = carry({n: v for n, v in s2.items() if n not in ("phi", "x16")}, 1,
                       f"l{k}_g")[1]
            # Slice 6: g, and the shared multiplier's operands: (max - s) * M for softmax,
            # |x| * |x| for LayerNorm, |a| * M[j] for the row requantisations (a = x or g).
            c2 = ctl[5]["tok"]
            gx = Signal(signed(_G_BITS + 1), name=f"s2_gx{k}")
            m.d.comb += gx.eq(gprod + GELU_OFFSET)
            g = Signal(signed(32), name=f"s2_g{k}")
            m.d.comb += g.eq(Mux(GELU_CLAMP & (gx < 0), 0, gx))
            is_grows = c2.cmd.op == VectorOp.GELU_ROWS
            # A GELU_ROWS lane beyond the table: a = xo, the product |a| * (M << 9) is shifted
            # left by the other 5 bits of 2**14 in slice 5 (|v| = round_shift(xo * M << 14,
            # S - 8)); it goes into FIFO B as ~xo (g >= 0, so the sign marks it for stage 3).
            big = Signal(name=f"s2_gbig{k}")
            m.d.comb += big.eq(is_grows & s2["big"])
            ra = Signal(signed(32), name=f"s2_ra{k}")
            m.d.comb += ra.eq(Mux(is_grows, Mux(s2["big"], s2["xo"], g), s2["x"]))
            is_sm, is_rows = c2.cmd.op == VectorOp.SOFTMAX, _is_rows(c2.cmd.op)
            mag = s2["mag"]
            pass3 = Mux(is_grows, Mux(s2["big"], ~s2["xo"], g), s2["x"])
            if dec:
                # RMSNORM squares |u| (at most 2**23) and passes u on to stage 3.
                u = s2["u"]
                mag = Mux(c2.cmd.rms, Mux(u < 0, -u, u)[:nx.LN_IN_BITS], mag)
                pass3 = Mux(c2.cmd.rms, u, pass3)
            opa = Mux(is_sm, s2["diff"], Mux(is_rows, Mux(ra < 0, -ra, ra)[:32], mag))
            opb = Mux(is_sm, c2.cmd.mult,
                      Mux(is_rows, Mux(big, s2["mult"] << _GELU_PRE, s2["mult"]), mag))
            s3 = carry({"opa": opa[:32], "opb": opb[:_OPB_BITS], "big": big,
                        "neg": ra < 0, "shift": s2["shift"], "pass": pass3},
                       1, f"l{k}_")[1]
            # Slices 7 and 8: the limbs' products (each registered), their sum; its sign for
            # the row requantisations.
            c3 = ctl[6]["tok"]
            prod = limb_product(s3["opa"], s3["opb"], m=m, name=f"s2_prod{k}", stage=piped2)
            s3w = carry({"neg": s3["neg"] & _is_rows(c3.cmd.op), "big": s3["big"],
                         "pass": s3["pass"], "shift": s3["shift"]}, 1, f"l{k}_p")[1]
            s4 = carry({"prod": prod[:32 + len(s3["opb"])], **s3w}, 1, f"l{k}_")[1]
            # Slice 9: one rounding shifter: the softmax exponent's t = round_shift(dm, S), the
            # row requantisations' |v|, v = round_shift(+-a * M, S[j] - ROW_EXP_MAX) (only the
            # peak max |v| is taken here), LayerNorm's square unshifted. For a negative a,
            # |round_shift(-p, s)| = ceil((p - 2**(s-1)) / 2**s) = round_shift(p - 1, s) when
            # s >= 1 (p when s = 0): one decrement instead of negating p and then v.
            c4 = ctl[8]["tok"]
            amt = Signal(SHIFT_BITS, name=f"s2_amt{k}")
            sprod = Signal(signed(len(s4["prod"]) + _GELU_POST + 1), name=f"s2_sprod{k}")
            m.d.comb += sprod.eq(Mux(s4["big"], s4["prod"] << _GELU_POST,
                                     s4["prod"] - (s4["neg"] & (amt != 0))))
            with m.Switch(c4.cmd.op):
                with m.Case(VectorOp.SOFTMAX):
                    m.d.comb += amt.eq(c4.cmd.shift)
                with m.Case(VectorOp.REQUANT_ROWS, VectorOp.GELU_ROWS):
                    m.d.comb += amt.eq(s4["shift"] - ROW_EXP_MAX)
            # Slice 9: the decremented product and its shift; slice 10: the shifter; slice 11:
            # the rounding adder.
            s5 = carry({"sprod": sprod, "amt": amt, "pass": s4["pass"]}, 1, f"l{k}_")[1]
            q = round_shifted(m, s5["sprod"], s5["amt"], name=f"s2_rs{k}")
            s5q = carry({"q": q, "pass": s5["pass"]}, 1, f"l{k}_q")[1]
            r = Signal(signed(len(sprod) + 1), name=f"s2_r{k}")
            m.d.comb += r.eq(round_add(s5q["q"]))
            s6 = carry({"r": r, "pass": s5q["pass"]}, 1, f"l{k}_")[1]
            # The beat: e (softmax), |v| for the peak, the square.
            lane_ok = ctl[L5]["lanes"][k]
            v = s6["r"]
            vmag = Signal(len(v) - 1, name=f"s2_vmag{k}")
            m.d.comb += vmag.eq(v)     # never negative
            pk = Signal(_ROWS_V_BITS, name=f"s2_peak{k}")
            m.d.comb += pk.eq(Mux(lane_ok, Mux(vmag > _ROWS_V_MAX, _ROWS_V_MAX, vmag), 0))
            peaks.append(piped2(pk, pk.shape(), f"s2_peak7_{k}"))
            exp = Exp2()
            m.submodules[f"exp{k}"] = exp
            # The table lookup is the slice's register (block RAM): t goes in with slice 11;
            # its data is registered again (slice 12), and e, rounded from it, belongs to
            # slice 12 (no register of its own: the table's data register is that slice's).
            assert Exp2.LATENCY == 2
            m.d.comb += [exp.t.eq(r[:EXP_T_BITS + 1]), exp.en.eq(1)]
            e = Signal(EXP_E_BITS, name=f"s2_e{k}")
            m.d.comb += e.eq(Mux(ctl[L5 + 1]["lanes"][k], exp.e, 0))
            es.append(e)
            sqs.append(piped2(Mux(lane_ok, v[:2 * nx.LN_IN_BITS], 0), unsigned(2 * nx.LN_IN_BITS),
                              f"s2_sq7_{k}"))
            o = Mux(op_at[L5 + 1] == VectorOp.SOFTMAX, e,
                    piped2(s6["pass"], signed(32), f"s2_pass12_{k}"))
            for i in range(L5 + 2, L2 + 1):
                o = piped2(o, signed(32), f"s2_out{i}_{k}")
            m.d.comb += out2[k].eq(o)

        tokL = ctl[L2]["tok"]
        firstL = ctl[L2]["first"]
        acc_e = Signal(_ESUM_BITS)
        acc_sq = Signal(_SXX_BITS)
        acc_peak = Signal(_ROWS_V_BITS)
        new_e = Signal(_ESUM_BITS)
        new_sq = Signal(_SXX_BITS)
        half = ((N - 1).bit_length() + 1) // 2
        beat = []
        for name, values, shape, tree in (
                ("peak", peaks, unsigned(_ROWS_V_BITS), self._max_tree),
                ("e", es, unsigned(_ESUM_BITS), _sum_tree), ("sq", sqs, unsigned(_SXX_BITS), _sum_tree)):
            values = [piped2(v, shape, f"s2_{name}8_{j}")
                      for j, v in enumerate(tree(m, f"s2a_{name}", values, shape, levels=half))]
            beat.append(piped2(tree(m, f"s2b_{name}", values, shape)[0], shape, f"s2_beat_{name}"))
        beat_peak, beat_e, beat_sq = beat
        new_peak = Signal(_ROWS_V_BITS)
        m.d.comb += [new_e.eq(Mux(firstL, 0, acc_e) + beat_e),
                     new_sq.eq(Mux(firstL, 0, acc_sq) + beat_sq),
                     new_peak.eq(Mux(~firstL & (acc_peak > beat_peak), acc_peak, beat_peak))]
        write2 = Signal()
        m.d.comb += write2.eq(ctl[L2]["valid"])
        tok2o = token_layout(t2.w_data)
        is_smL = op_at[L2] == VectorOp.SOFTMAX
        m.d.comb += [
            fb.w_en.eq(write2), t2.w_en.eq(write2 & tok_now),
            tok2o.cmd.eq(tokL.cmd), tok2o.row.eq(tokL.row), tok2o.a.eq(tokL.a),
            tok2o.exp.eq(tokL.exp),
            tok2o.b.eq(Mux(is_smL, new_e, Mux(_is_rows(op_at[L2]), new_peak, new_sq))),
        ]
        with m.If(write2):
            m.d.sync += [acc_e.eq(new_e), acc_sq.eq(new_sq), acc_peak.eq(new_peak)]

        m.d.comb += [fa.r_en.eq(fire2), fa_cr.give.eq(fire2)]
        with m.If(fire2):
            m.d.sync += [col2.eq(col2 + N), beat2.eq(beat2 + 1)]
        can_load2 = ~loaded2 | (fire2 & last2)
        m.d.comb += pr2.addr.eq(Mux(can_load2 & t1.r_rdy, 0, Mux(fire2, beat2 + 1, beat2)))
        m.d.comb += [load2.eq(can_load2 & t1.r_rdy),
                     t1.r_en.eq(can_load2 & t1.r_rdy), t1_cr.give.eq(can_load2 & t1.r_rdy)]
        with m.If(can_load2 & t1.r_rdy):
            m.d.sync += [tok2.eq(t1.r_data), loaded2.eq(1), col2.eq(0), beat2.eq(0)]
            if dec:
                # RMSNORM: a (stage 1's max w) becomes the row's pre-shift
                # k = max(bit_length(ceil(w / 2)) - RMS_PEAK_BITS, k_eps).
                t1tok = token_layout(t1.r_data)
                peak = Signal(32, name="rms_peak")
                m.d.comb += peak.eq((t1tok.a[:32] + 1) >> 1)
                kp = Signal(_RMS_K_SHAPE, name="rms_kp")
                m.d.comb += kp.eq(-nx.RMS_PEAK_BITS)
                for b in range(32):
                    with m.If(peak[b]):
                        m.d.comb += kp.eq(b + 1 - nx.RMS_PEAK_BITS)
                with m.If(t1tok.cmd.rms):
                    m.d.sync += tok2.a.eq(Mux(kp > k_eps, kp, k_eps))
        with m.Elif(fire2 & last2):
            m.d.sync += loaded2.eq(0)

        # --- Finishers: per-row scalars, several rows in flight, taken and returned in order. --
        fins = []
        for f in range(self.finishers):
            fin = VectorFinisher(self.unroll, **({"decoder_ops": True} if self.decoder_ops else {}))
            m.submodules[f"finisher{f}"] = fin
            if dec:
                m.d.comb += fin.eps.eq(eps)
            fins.append(fin)
        # At least one bit wide: a zero-width case subject is simulated differently by Icarus.
        wp = Signal(range(max(2, self.finishers)))
        rp = Signal(range(max(2, self.finishers)))
        with m.Switch(wp):
            for f, fin in enumerate(fins):
                with m.Case(f):
                    m.d.comb += [fin.i.payload.eq(t2.r_data), fin.i.valid.eq(t2.r_rdy),
                                 t2.r_en.eq(t2.r_rdy & fin.i.ready)]
                    with m.If(t2.r_rdy & fin.i.ready):
                        m.d.sync += wp.eq(0 if f == self.finishers - 1 else f + 1)
        m.d.comb += t2_cr.give.eq(t2.r_en & t2.r_rdy)
        with m.Switch(rp):
            for f, fin in enumerate(fins):
                with m.Case(f):
                    m.d.comb += [t3.w_data.eq(fin.o.payload), t3.w_en.eq(fin.o.valid),
                                 fin.o.ready.eq(t3.w_rdy)]
                    with m.If(fin.o.valid & t3.w_rdy):
                        m.d.sync += rp.eq(0 if f == self.finishers - 1 else f + 1)

        # --- Stage 3: output through the multiplier bank (three multiply-round-saturate steps
        # a lane) in fourteen slices that never stall, into the output queue: a beat is taken
        # from FIFO B only with credit for its place in the queue. ---------------------------

        tok3 = Signal(token_layout)
        loaded3 = Signal()
        col3 = Signal(col_shape)
        beat3 = Signal(range(self.max_beats + 1))
        m.submodules.out_queue = oq = SyncFifo(width=self.out_layout.size, depth=_OUT_QUEUE)
        m.submodules.out_credit = o_cr = _credits(oq)
        m.d.comb += [self.o.valid.eq(oq.r_rdy), self.o.payload.eq(oq.r_data),
                     oq.r_en.eq(self.o.ready), o_cr.give.eq(self.o.valid & self.o.ready)]
        fire3 = Signal()
        load3 = Signal()
        last3 = _row_end(m, "last3", N, col3, tok3.cmd.cols, fire3, load3,
                         token_layout(t3.r_data).cmd.cols)
        m.d.comb += [fire3.eq(loaded3 & fb.r_rdy & o_cr.ok), fb.r_en.eq(fire3),
                     fb_cr.give.eq(fire3), o_cr.take.eq(fire3)]
        with m.If(fire3):
            m.d.sync += [col3.eq(col3 + N), beat3.eq(beat3 + 1)]
        can_load3 = ~loaded3 | (fire3 & last3)
        m.d.comb += pr.addr.eq(Mux(can_load3 & t3.r_rdy, 0, Mux(fire3, beat3 + 1, beat3)))
        m.d.comb += [load3.eq(can_load3 & t3.r_rdy), t3.r_en.eq(can_load3 & t3.r_rdy)]
        with m.If(can_load3 & t3.r_rdy):
            m.d.sync += [tok3.eq(t3.r_data), loaded3.eq(1), col3.eq(0), beat3.eq(0)]
        with m.Elif(fire3 & last3):
            m.d.sync += loaded3.eq(0)
        # The dithered softmax: lane k's column j = col3 + k has the phase
        # (j * DITHER_STEP) mod 2**16, from (k * DITHER_STEP) at a row's first beat, stepping
        # by N * DITHER_STEP a beat (a token of stage 3 is one row).
        pmask = (1 << _DITHER_PHASE_BITS) - 1
        phase3 = [Signal(_DITHER_PHASE_BITS, init=k * nx.DITHER_STEP & pmask,
                         name=f"s3_phase{k}") for k in range(N)]
        for k in range(N):
            with m.If(fire3):
                m.d.sync += phase3[k].eq(phase3[k] + (N * nx.DITHER_STEP & pmask))
            with m.If(can_load3 & t3.r_rdy):
                m.d.sync += phase3[k].eq(k * nx.DITHER_STEP & pmask)

        in3 = lanes32(fb.r_data)
        op3 = tok3.cmd.op
        c3 = tok3.cmd
        o_beat = self.out_layout(oq.w_data)
        out = o_beat.data

        def piped(value, shape, name):
            return _piped(m, 1, value, shape, name)

        # Fourteen slices, three multiply steps. Each step's operands are registered in front of
        # its product (the DSP's input registers), its product behind it (the output
        # registers); then its rounding shifter and its adder with the saturation take a slice
        # each. At most one carry chain or one multiplier in a slice.
        valid, cmd, exp = [fire3], [c3], [Mux((op3 == VectorOp.SOFTMAX) | _is_rows(op3),
                                               tok3.exp, 0)]
        for i in range(1, _S3_SLICES + 1):
            valid.append(piped(valid[-1], 1, f"s3_valid{i}"))
            cmd.append(piped(cmd[-1], command_layout, f"s3_cmd{i}"))
            exp.append(piped(exp[-1], ROW_EXP_BITS, f"s3_exp{i}"))
        slices3 = valid[1:]
        m.d.comb += [oq.w_en.eq(valid[-1]), o_beat.exp.eq(exp[-1])]

        ln_z_shift = nx.LN_INV_BITS - nx.LN_NORM_FRAC
        dither2 = (op3 == VectorOp.SOFTMAX) & c3.dither
        for i in range(1, 4):
            dither2 = piped(dither2, 1, f"m1_dither{i}")
        for k in range(N):
            p = pr.data[k]
            x = in3[k]
            # Step 1: softmax e*R; LayerNorm (x - mean) * inv; requantise; GELU's input requant.
            a = Signal(signed(32), name=f"m1_a{k}")
            b = Signal(unsigned(_INV_BITS), name=f"m1_b{k}")
            sh = Signal(SHIFT_BITS, name=f"m1_sh{k}")
            zp = Signal(signed(32), name=f"m1_zp{k}")
            lo = Signal(signed(32), name=f"m1_lo{k}")
            hi = Signal(signed(32), name=f"m1_hi{k}")
            sat = Signal(name=f"m1_sat{k}")
            big = Signal(name=f"m1_big{k}")
            m.d.comb += [a.eq(x), b.eq(1), sh.eq(0), zp.eq(0), sat.eq(0), lo.eq(0), hi.eq(0),
                         big.eq(0)]
            with m.Switch(op3):
                with m.Case(VectorOp.SOFTMAX):
                    m.d.comb += [b.eq(tok3.b), sh.eq(nx.RECIP_BITS - tok3.exp), sat.eq(1),
                                 lo.eq(0), hi.eq(nx.PROB_MAX)]
                    if self.decoder_ops:
                        with m.If(c3.prob_wide):
                            m.d.comb += hi.eq(PROB_MAX_WIDE)
                with m.Case(VectorOp.LAYERNORM):
                    m.d.comb += [a.eq(x - tok3.a), b.eq(tok3.b), sh.eq(ln_z_shift)]
                with m.Case(VectorOp.REQUANT):
                    m.d.comb += [b.eq(p.mult[:nx.MULT_BITS]), sh.eq(p.shift), zp.eq(c3.zero_point),
                                 sat.eq(1), lo.eq(c3.out_lo), hi.eq(c3.out_hi)]
                    if self.decoder_ops:
                        # WIDE_LO: round_shift(x, 8 + e) (requantize(x, (2**14, 22 + e))).
                        with m.If(c3.lo_shift):
                            m.d.comb += [b.eq(1), sh.eq(nx.WIDE_LO_BITS + tok3.exp),
                                         zp.eq(0)]
                with m.Case(VectorOp.GELU):
                    m.d.comb += [b.eq(p.mult[:nx.MULT_BITS]), sh.eq(p.shift), sat.eq(1),
                                 lo.eq(nx.INT16.lo), hi.eq(nx.INT16.hi)]
                with m.Case(VectorOp.REQUANT_ROWS):
                    # v = round_shift(a * M[j], S[j] - ROW_EXP_MAX).
                    m.d.comb += [b.eq(p.mult[:nx.MULT_BITS]), sh.eq(p.shift - ROW_EXP_MAX)]
                with m.Case(VectorOp.GELU_ROWS):
                    # The same with a = g (stage 2), or for a lane beyond GELU's table, which
                    # stage 2 marks as ~xo (g >= 0 otherwise), g = xo << 14: a = xo, b = M << 2
                    # in the low DSP limb and the product shifted by the other 12 bits.
                    m.d.comb += [a.eq(Mux(x[-1], ~x, x)), big.eq(x[-1]),
                                 b.eq(Mux(x[-1], p.mult[:nx.MULT_BITS] << _M1_GELU_PRE,
                                          p.mult[:nx.MULT_BITS])),
                                 sh.eq(p.shift - ROW_EXP_MAX)]
            # Slice 1: operands. Slice 2: the limbs' products (b beyond its low DSP limb is
            # LayerNorm's inv only, whose a is a 25-bit d). Slice 3: their sum. Slice 4: the
            # shift. Slice 5: round, saturate.
            a1 = piped(a, a.shape(), f"m1_a1_{k}")
            b1 = piped(b, b.shape(), f"m1_b1_{k}")
            big1 = piped(big, 1, f"m1_big1_{k}")
            ctl1 = [piped(v, v.shape(), f"{v.name}_1") for v in (sh, zp, lo, hi, sat)]
            gamma = piped(p.mult, signed(GAMMA_BITS), f"gamma1_{k}")
            beta = piped(p.bias, signed(BETA_BITS), f"beta1_{k}")
            lb = 17
            prod1 = Signal(signed(_M1_PROD_BITS), name=f"m1_prod{k}")
            m.d.comb += prod1.eq(limb_product(a1, b1[:lb], m=m, name=f"m1_lo{k}", stage=piped)
                                 + (limb_product(a1[:_LN_D_BITS].as_signed(), b1[lb:], lut_bits=0,
                                                 m=m, name=f"m1_hi{k}", stage=piped) << lb))
            big2 = piped(big1, 1, f"m1_big2_{k}")
            p1 = piped(Mux(big2, prod1 << _M1_GELU_POST, prod1), signed(_M1_BITS), f"m1_p{k}")
            ctl2 = [piped(piped(v, v.shape(), f"{v.name[:-2]}_2"), v.shape(),
                          f"{v.name[:-2]}_3") for v in ctl1]
            for i in range(2, 8):
                gamma = piped(gamma, signed(GAMMA_BITS), f"gamma{i}_{k}")
                beta = piped(beta, signed(BETA_BITS), f"beta{i}_{k}")
            # The dithered softmax: p = min(P, (e*R + D) >> s), D = (2k + 1) << (s - 9),
            # s = 24 - x, is floor(e*R / 2**s) plus the carry of p[s-9 : s] + 2k + 1 out of
            # 9 bits (the bits of p below s - 9 cannot reach it): the carry takes the
            # place of the rounding bit. The 9 bits come from a narrow window of p
            # shifted by x (in the shifter's slice), the carry is one 9-bit add.
            kd = phase3[k][_DITHER_PHASE_BITS - nx.DITHER_BITS:]
            for i in range(1, 4):
                kd = piped(kd, len(kd), f"m1_dk{i}_{k}")
            below = Signal(nx.DITHER_BITS + 1, name=f"m1_below{k}")
            m.d.comb += below.eq((p1[_DITHER_LO:nx.RECIP_BITS] << exp[3])
                                 [ROW_EXP_MAX:ROW_EXP_MAX + nx.DITHER_BITS + 1])
            dsum = Signal(nx.DITHER_BITS + 2, name=f"m1_dsum{k}")
            m.d.comb += dsum.eq(below + Cat(Const(1, 1), kd))
            round_bit = {"round_bit": (dither2, dsum[-1])}
            r1 = mul_round_sat(m, p1, *ctl2[:4], ctl2[4], width=_M1_BITS, name=f"m1_{k}",
                               stage=piped, **round_bit)
            y1 = piped(r1, r1.shape(), f"y1_{k}")     # full width: the rows' bound needs it
            # Slices 6 and 7: GELU's Phi(y1) (its table is read, block RAM, with slice 6 and
            # registered; the interpolation is slice 7's: GELU's y1 is an int16), and one
            # register for the row requantisations' bounded |v| or the passing y1 (the rows'
            # round_shift(v, k) and saturation are M3's), then one to wait for Phi.
            phi = GeluPhi()
            m.submodules[f"phi{k}"] = phi
            assert GeluPhi.LATENCY == 2
            m.d.comb += [phi.x.eq(y1[:16]), phi.en.eq(1)]
            y1 = piped(Mux(_is_rows(cmd[5].op), clamp(y1, -_ROWS_V_MAX, _ROWS_V_MAX),
                           y1[:33].as_signed()), signed(_ROWS_V_BITS), f"y1m_{k}")
            y1 = piped(y1, signed(_ROWS_V_BITS), f"y1w_{k}")

            # Step 2: LayerNorm z * gamma + beta (rounded and saturated by step 3); GELU
            # max(0, x * Phi(x) + offset); the row requantisations' v passes (step 3 rounds
            # and saturates it).
            c = cmd[7]
            is_ln, is_gelu = c.op == VectorOp.LAYERNORM, c.op == VectorOp.GELU
            b2 = Signal(signed(GAMMA_BITS + 1), name=f"m2_b{k}")
            m.d.comb += b2.eq(Mux(is_ln, gamma, Mux(is_gelu, phi.phi, 0)))
            add2 = Signal(signed(BETA_BITS), name=f"m2_add{k}")
            # RMSNORM has no beta (its records' bias is the epsilon, column 0's only).
            m.d.comb += add2.eq(Mux(is_ln & ~c.rms if dec else is_ln, beta,
                                    Mux(is_gelu, GELU_OFFSET, 0)))
            # Slice 8: operands (y1 is z for LayerNorm or an int16 for GELU: _Z_BITS hold
            # either), the row requantisations' rounded value and the passing value.
            z8 = piped(y1[:_Z_BITS].as_signed(), signed(_Z_BITS), f"m2_z8_{k}")
            b8 = piped(b2, b2.shape(), f"m2_b8_{k}")
            add8 = piped(add2, add2.shape(), f"m2_add8_{k}")
            pass8 = piped(y1, signed(_ROWS_V_BITS), f"m2_pass8_{k}")
            # Slice 9: the limbs' products. Slice 10: their sum; the row requantisations'
            # saturation. Slice 11: GELU's clamp (the offset keeps it at or above 0).
            add9 = piped(add8, add8.shape(), f"m2_add9_{k}")
            p2 = piped(limb_product(z8, b8, lut_bits=5, m=m, name=f"m2_{k}", stage=piped) + add9,
                       signed(_M2_BITS), f"m2_p{k}")
            pass10 = piped(piped(pass8, signed(_ROWS_V_BITS), f"m2_pass9_{k}"),
                           signed(_ROWS_V_BITS), f"m2_pass10_{k}")
            c = cmd[10]
            g2 = Mux(GELU_CLAMP & (p2 < 0), 0, p2)
            y2 = piped(Mux(c.op == VectorOp.LAYERNORM, p2,
                           Mux(c.op == VectorOp.GELU, g2, pass10)), signed(_M2_BITS), f"y2_{k}")

            # Step 3: GELU's output requantisation (per tensor, from the command), LayerNorm's
            # output shift and saturation. Slice 12: the limbs' products (LayerNorm's y2
            # passes). Slice 13: their sum. Slice 14: the shift; the queue's write rounds and
            # saturates.
            c = cmd[11]
            g3 = limb_product(y2[:_G_BITS].as_signed(), c.mult, m=m, name=f"m3_{k}", stage=piped)
            gelu12 = piped(c.op == VectorOp.GELU, 1, f"m3_gelu12_{k}")
            y2 = piped(y2, signed(_M2_BITS), f"y2d_{k}")
            p3 = piped(Mux(gelu12, g3, y2), signed(_M3_BITS), f"m3_p{k}")
            c = cmd[13]
            is_gelu = c.op == VectorOp.GELU
            # Every operation leaves through this one rounding and saturation: GELU and
            # LayerNorm by the command's shift, the row requantisations by k = ROW_EXP_MAX - e
            # (q = saturate(round_shift(v, k), out)), the others by 0 (a clamp to
            # [out_lo, out_hi]).
            kk9 = Signal(ROW_EXP_BITS, name=f"m3_k{k}")
            m.d.comb += kk9.eq(ROW_EXP_MAX - exp[13])
            sh3 = Signal(SHIFT_BITS, name=f"m3_sh{k}")
            m.d.comb += sh3.eq(Mux(is_gelu | (c.op == VectorOp.LAYERNORM), c.shift,
                                   Mux(_is_rows(c.op), kk9, 0)))
            r3 = mul_round_sat(m, p3, sh3, Mux(is_gelu, c.zero_point, 0), c.out_lo,
                               c.out_hi, 1, width=_M3_BITS, name=f"m3_{k}", stage=piped)
            m.d.comb += out[k].eq(r3)

        fifos_used = [f.r_level != 0 for f in (fa, fb, t1, t2, t3, oq)]
        finishers_used = [~fin.i.ready for fin in fins]
        m.d.comb += self.busy.eq(have | loaded2 | loaded3
                                 | _any(fifos_used + finishers_used + slices3
                                        + stage2_slices + stage1_slices))
        return m


def _sum_tree(m, name, values, shape, *, levels=None):
    """The sum of ``values`` (a list of one), or after ``levels`` levels of pairs."""
    level = 0
    while len(values) > 1 and (levels is None or level < levels):
        nxt = []
        for k in range(0, len(values) - 1, 2):
            s = Signal(shape, name=f"{name}_sum{level}_{k}", attrs={"keep": 1})
            m.d.comb += s.eq(values[k] + values[k + 1])
            nxt.append(s)
        if len(values) % 2:
            nxt.append(values[-1])
        values, level = nxt, level + 1
    return values


#: Slices of the output pass (stage 3).
_S3_SLICES = 14
#: Output queue (beats): room for the output slices in flight (``_S3_SLICES``) plus the
#: queue's own latency, so the credits never cut the rate of a consumer that is always ready
#: (a power of two: 32).
_OUT_QUEUE = 1 << (_S3_SLICES + 4).bit_length()


def _row_end(m, name, N, col, cols, fire, load=None, load_cols=None):
    """``col + N >= cols`` (the beat at column ``col`` is its row's last) as a register kept
    with ``col``: set from the next command's ``load_cols`` when ``load`` (``col`` goes to 0),
    else, when ``fire`` moves ``col`` on, from ``col + 2N`` (or, with ``load`` None, back to
    0 after the last beat). The handshakes that depend on it then start at a flip-flop, not
    behind ``col``'s adder and comparator."""
    last = Signal(name=name)
    with m.If(fire):
        if load is None:
            m.d.sync += last.eq(Mux(last, cols <= N, col + 2 * N >= cols))
        else:
            m.d.sync += last.eq(col + 2 * N >= cols)
    if load is not None:
        with m.If(load):
            m.d.sync += last.eq(load_cols <= N)
    return last


def _credits(queue):
    """Credits for ``queue`` (a :class:`SyncFifo`): its depth less one, so every beat in
    flight finds room (the FIFO's ``w_rdy`` looks at its inner storage, ``depth - 1`` entries,
    whatever its read register holds)."""
    return CreditCounter(queue.depth - 1, 1)


def _piped(m, en, value, shape, name):
    """``value`` one slice later: a register that moves when its pipeline advances (``en``)."""
    r = Signal(shape, name=name)
    with m.If(en):
        m.d.sync += r.eq(value)
    return r


def _any(values):
    out = 0
    for v in values:
        out = out | v
    return out


# --- Packing helpers for testbenches and drivers ------------------------------------------------

def pack(layout, value) -> int:
    """Pack a nested dict/list/int ``value`` into the integer bit pattern of ``layout``."""
    if isinstance(layout, data.StructLayout):
        bits = 0
        for name, field in layout:
            if name in value:
                bits |= pack(field.shape, value[name]) << field.offset
        return bits
    if isinstance(layout, data.ArrayLayout):
        w = _shape_width(layout.elem_shape)
        bits = 0
        for k, v in enumerate(value):
            bits |= pack(layout.elem_shape, v) << (k * w)
        return bits
    if isinstance(layout, type) and issubclass(layout, enum.Enum):
        return int(layout(value).value)
    w = _shape_width(layout)
    return int(value) & ((1 << w) - 1)


def unpack(layout, bits: int):
    """Inverse of :func:`pack`: dicts for structs, lists for arrays, ints for plain shapes."""
    if isinstance(layout, data.StructLayout):
        return {name: unpack(field.shape, (bits >> field.offset) & ((1 << field.width) - 1))
                for name, field in layout}
    if isinstance(layout, data.ArrayLayout):
        w = _shape_width(layout.elem_shape)
        return [unpack(layout.elem_shape, (bits >> (k * w)) & ((1 << w) - 1))
                for k in range(layout.length)]
    from amaranth.hdl import Shape
    s = Shape.cast(layout)
    bits &= (1 << s.width) - 1
    if s.signed and bits >> (s.width - 1):
        bits -= 1 << s.width
    return bits


def _shape_width(shape) -> int:
    from amaranth.hdl import Shape
    if isinstance(shape, data.Layout):
        return shape.size
    return Shape.cast(shape).width
