"""Celosia's integer numerics: the bit-exact specification every backend must match.

Each function here is one operation of the hardware, written over NumPy int64 arrays with the
widths, rounding and saturation stated in its docstring and in docs/numerics.md. The hardware
(hdl/) imports the format constants from here; the golden model (sw/golden.py) composes these
functions; nothing else defines what a result bit is.

Conventions
-----------
* Integers are carried in ``np.int64``; every intermediate is proven to fit (widths are stated).
* "floor shift" ``x >> s`` is an arithmetic shift (rounds toward minus infinity).
* "round" means round half up: ``(x + (1 << (s - 1))) >> s`` (for ``s == 0``, no rounding term).
* "saturate" clamps to the stated range; nothing wraps.
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

__all__ = [
    "INT8", "UINT8", "INT16", "INT32", "Range",
    "MULT_BITS", "SHIFT_MAX", "RES_SHIFT_MAX", "Dyadic",
    "saturate", "round_shift", "requantize", "ROW_EXP_MAX", "requantize_rows",
    "FLOAT64_EXACT", "exact_sum_bound", "integer_matmul", "int64_matmuls", "one_blas_thread",
    "matmul", "WIDE_LO_BITS", "matmul_wide",
    "residual_add",
    "EXP_FRAC_BITS", "EXP_ONE_BITS", "EXP2_LUT", "PROB_MAX", "RECIP_BITS", "softmax",
    "LN_IN_BITS", "LN_NORM_FRAC", "LN_INV_BITS", "LN_MAX_COLS", "LN_GAMMA_BITS", "LN_BETA_BITS",
    "isqrt", "layernorm",
    "GELU_IN_FRAC", "GELU_PHI_BITS", "GELU_STEP_FRAC", "GELU_RANGE", "GELU_PHI_TABLE", "GELU_MIN",
    "GELU_OFFSET_STEPS", "GELU_OFFSET", "GELU_OUT_MAX", "gelu", "gelu_rows",
    "RMS_PEAK_BITS", "RMS_INV_BITS", "RMS_NORM_FRAC", "RMS_MAX_COLS", "RMS_EPS_BITS",
    "RMS_EPS_MAX_BITS", "rmsnorm",
    "SILU_IN_FRAC", "SILU_SIG_BITS", "SILU_STEP_FRAC", "SILU_RANGE", "SILU_SIG_TABLE", "SILU_OUT_FRAC",
    "silu", "gated_silu",
    "ROPE_TRIG_BITS", "rope_tables", "rotary",
    "kv_head", "attention",
]


@dataclass(frozen=True)
class Range:
    """An inclusive integer range, such as a saturation target."""
    lo: int
    hi: int

    @property
    def bits(self) -> int:
        return (self.hi - self.lo).bit_length()


INT8 = Range(-128, 127)
UINT8 = Range(0, 255)
INT16 = Range(-(1 << 15), (1 << 15) - 1)
INT32 = Range(-(1 << 31), (1 << 31) - 1)


def saturate(x, rng: Range) -> np.ndarray:
    return np.clip(np.asarray(x, dtype=np.int64), rng.lo, rng.hi)


def round_shift(x, shift) -> np.ndarray:
    """Round-half-up arithmetic right shift: ``(x + 2**(shift-1)) >> shift`` (``x`` if shift is 0)."""
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    return (x + half) >> shift


# --- Dyadic requantisation ------------------------------------------------------------------

#: Width of a requantisation multiplier: an unsigned value below 2**MULT_BITS, so it fits a
#: signed 16-bit operand (one 18x18 DSP with a 32-bit operand split in two halves).
MULT_BITS = 15
#: Largest shift; with |x| < 2**32 and multiplier < 2**15 the product fits 47 bits, so any shift
#: up to 47 is meaningful and larger ones only give 0 or -1.
SHIFT_MAX = 47


@dataclass(frozen=True)
class Dyadic:
    """A positive real factor ``multiplier * 2**-shift``; arrays give one factor per channel."""
    multiplier: np.ndarray
    shift: np.ndarray

    @classmethod
    def from_real(cls, factor) -> "Dyadic":
        """Nearest dyadic factor with a normalised ``MULT_BITS``-bit multiplier.

        Raises ValueError for factors that are not positive and finite or too large
        (above ``2**(MULT_BITS-1)``: the shift would be negative).
        """
        f = np.atleast_1d(np.asarray(factor, dtype=np.float64))
        if not np.all(np.isfinite(f)) or np.any(f <= 0):
            raise ValueError(f"dyadic factors must be positive and finite, got {f[~(f > 0)][:4]}")
        exp = np.floor(np.log2(f)).astype(np.int64)
        shift = (MULT_BITS - 1) - exp
        if np.any(shift < 0):
            raise ValueError(f"dyadic factor too large: {f.max()} (at most 2**{MULT_BITS - 1})")
        shift = np.minimum(shift, SHIFT_MAX)
        mult = np.round(f * np.exp2(shift.astype(np.float64))).astype(np.int64)
        # Rounding may reach 2**MULT_BITS: renormalise.
        top = mult >= (1 << MULT_BITS)
        mult = np.where(top, mult >> 1, mult)
        shift = np.where(top, shift - 1, shift)
        return cls(mult.reshape(np.shape(factor)), shift.reshape(np.shape(factor)))

    def to_real(self) -> np.ndarray:
        return np.asarray(self.multiplier, dtype=np.float64) * np.exp2(-np.asarray(self.shift, dtype=np.float64))


def requantize(x, scale: Dyadic, out: Range, zero_point=0) -> np.ndarray:
    """Dyadic requantisation: ``saturate(round_shift(x * M, S) + zero_point, out)``.

    ``x``: signed, |x| < 2**32 (an int32 accumulator, or an int32 sum with a bias).
    ``M``: 0 <= M < 2**MULT_BITS; ``S``: 0 <= S <= SHIFT_MAX; the product fits 47 bits + sign.
    ``M``, ``S`` and ``zero_point`` broadcast over the last axis (per output channel) or are
    scalars (per tensor). Rounding is half up, then the zero point is added, then saturation.
    """
    x = np.asarray(x, dtype=np.int64)
    m = np.asarray(scale.multiplier, dtype=np.int64)
    s = np.asarray(scale.shift, dtype=np.int64)
    if np.any((m < 0) | (m >= (1 << MULT_BITS))) or np.any((s < 0) | (s > SHIFT_MAX)):
        raise ValueError("requantize: multiplier or shift out of range")
    return saturate(round_shift(x * m, s) + np.asarray(zero_point, dtype=np.int64), out)


#: float64 holds every integer of magnitude up to 2**53 exactly (53-bit significand).
FLOAT64_EXACT = 1 << 53


def exact_sum_bound(a_absmax: int, b_absmax: int, k: int) -> int:
    """Largest |partial sum| a product of K terms |a*b| can reach: ``k * max|a| * max|b|``.

    Any partial sum of ``A @ B``, in any order a BLAS library adds the terms (with or without
    fused multiply-adds), is a sum of a subset of the K products of one row and column, so its
    magnitude is at most this bound. Python integers: the bound itself cannot overflow.
    """
    return int(k) * int(a_absmax) * int(b_absmax)


def integer_matmul(a, b, a_absmax: int | None = None, b_absmax: int | None = None) -> np.ndarray:
    """Exact integer ``A @ B`` (int64 out), through float64 BLAS when that is provably exact.

    When :func:`exact_sum_bound` is below ``FLOAT64_EXACT``, every product and every partial
    sum is an integer float64 represents exactly, so each floating-point operation is exact and
    the float64 product equals the integer one bit for bit. Otherwise NumPy's int64 matmul (no
    BLAS, many times slower) is used. ``a_absmax``/``b_absmax`` are upper bounds of the
    operands' magnitudes when the caller knows them (measured here if not).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a_absmax is None:
        a_absmax = _absmax_int(a)
    if b_absmax is None:
        b_absmax = _absmax_int(b)
    if _float_matmuls and exact_sum_bound(a_absmax, b_absmax, a.shape[-1]) < FLOAT64_EXACT:
        return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    return a.astype(np.int64) @ b.astype(np.int64)


_float_matmuls = True


@contextmanager
def int64_matmuls():
    """Within this block :func:`integer_matmul` always takes the int64 path: the reference
    the float64 path is compared with (tests) and timed against (``celosia bench golden``)."""
    global _float_matmuls
    saved, _float_matmuls = _float_matmuls, False
    try:
        yield
    finally:
        _float_matmuls = saved


@functools.cache
def _blas_threads():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def one_blas_thread():
    """A block in which BLAS runs on one thread. The integer matmuls of a sentence are small
    (rows = tokens): extra BLAS threads cost more than they give, and when the other cores are
    busy a thread that waits for one makes every product slow (measured on a shared 2-core
    machine: 32 dev-set sentences in 0.8 s on one thread, 7.4 s on two)."""
    return _blas_threads().limit(limits=1, user_api="blas")


def _absmax_int(x: np.ndarray) -> int:
    """max|x| as a Python int (exact for int64, whose most negative value has no int64 abs)."""
    return max(-int(x.min(initial=0)), int(x.max(initial=0)))


def matmul(a, b, bias=None, acc=None, row_shift=None) -> np.ndarray:
    """Integer matrix product ``A @ B (>> row_shift) (+ bias) (+ acc)``, int32 saturating.

    ``A`` (M x K) holds int8 or uint8 values (the array's A operand is 9 bits signed);
    ``B`` (K x N) holds int8. Each MAC is exact: |a*b| <= 2**15, so K <= 2**16 terms cannot
    leave 32 bits. ``row_shift`` (M values in 0..ROW_EXP_MAX) undoes the per-row exponents of
    an A operand made by :func:`requantize_rows`: row i of the product is
    ``round_shift(., row_shift[i])``. Then ``bias`` (int32, per output column) and ``acc``
    (int32, M x N, a previous result to accumulate into) are added with saturation to int32.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    a_lo, a_hi = int(a.min(initial=0)), int(a.max(initial=0))
    b_lo, b_hi = int(b.min(initial=0)), int(b.max(initial=0))
    if a_lo < INT8.lo or a_hi > UINT8.hi:
        raise ValueError("matmul: A operand outside int8/uint8")
    if b_lo < INT8.lo or b_hi > INT8.hi:
        raise ValueError("matmul: B operand outside int8")
    c = integer_matmul(a, b, max(-a_lo, a_hi), max(-b_lo, b_hi))
    if row_shift is not None:
        e = np.asarray(row_shift, dtype=np.int64)
        if e.shape != (a.shape[0],) or e.min(initial=0) < 0 or e.max(initial=0) > ROW_EXP_MAX:
            raise ValueError(f"matmul: row_shift must hold one value in 0..{ROW_EXP_MAX} per row")
        c = round_shift(c, e[:, None])
    if bias is not None:
        c = saturate(c + np.asarray(bias, dtype=np.int64), INT32)
    if acc is not None:
        c = saturate(c + np.asarray(acc, dtype=np.int64), INT32)
    return saturate(c, INT32)


#: Largest per-row exponent of :func:`requantize_rows` (a row may be scaled up by 2**8).
ROW_EXP_MAX = 8

#: A wide (int16) matmul operand is split into its high byte (int8) and its low
#: WIDE_LO_BITS bits (uint8): ``a = hi * 2**8 + lo``.
WIDE_LO_BITS = 8


def matmul_wide(a, b, row_shift=None) -> np.ndarray:
    """An int16 A operand (M x K) times int8 ``B`` (K x N) in two passes of the int8 array:
    ``round(A @ B / 2**(8 + e))`` per row (``e`` = ``row_shift``, 0..ROW_EXP_MAX, as
    :func:`matmul`'s), int32, at 2**8 times the step of A's rows.

    1. ``hi = a >> 8`` (floor: int8), ``lo = a & 255`` (uint8), so ``a = 256 * hi + lo``.
    2. Low pass: ``c_lo = requantize(matmul(lo, B), (2**14, 22 + e) per row, int32)``, which
       is ``round_shift(lo @ B, 8 + e)`` (|lo @ B| <= K * 255 * 128 < 2**31 for K <= 2**16).
    3. High pass: ``matmul(hi, B, row_shift=e, acc=c_lo)`` = ``round_shift(hi @ B, e) + c_lo``.

    Every step is exact int32 (|result| <= K * 2**15 * 2**7 / 2**8, below 2**31 for
    K <= 2**16) and the result is within one unit of ``A @ B / 2**(8 + e)`` (two roundings
    of half a unit). The operand carries 8 more bits than an int8 one for twice the array
    passes.
    """
    a = np.asarray(a, dtype=np.int64)
    if a.min(initial=0) < INT16.lo or a.max(initial=0) > INT16.hi:
        raise ValueError("matmul_wide: A operand outside int16")
    rows = a.shape[0]
    e = np.zeros(rows, dtype=np.int64) if row_shift is None else np.asarray(row_shift, np.int64)
    if e.shape != (rows,) or e.min(initial=0) < 0 or e.max(initial=0) > ROW_EXP_MAX:
        raise ValueError(f"matmul_wide: row_shift must hold one value in 0..{ROW_EXP_MAX} per row")
    hi, lo = a >> WIDE_LO_BITS, a & ((1 << WIDE_LO_BITS) - 1)
    one = MULT_BITS - 1                   # the multiplier 2**14 exactly: a plain shift
    c_lo = requantize(matmul(lo, b), Dyadic(np.int64(1 << one), one + WIDE_LO_BITS + e[:, None]),
                      INT32)
    return matmul(hi, b, row_shift=e, acc=c_lo)


def requantize_rows(x, scale: Dyadic, out: Range) -> tuple[np.ndarray, np.ndarray]:
    """Requantisation with a per-row power-of-two exponent on top of the static factors.

    A matmul operand row whose values are small next to the calibrated range is scaled up by
    ``2**e`` so it uses the whole int8/uint8 range; the matmul undoes it with ``row_shift``.
    Per row of ``x`` (last axis = channels, per-channel ``scale`` with every S >= ROW_EXP_MAX):

    1. ``v = round_shift(x * M, S - ROW_EXP_MAX)``: the row at 2**ROW_EXP_MAX times the
       static scale (|x| < 2**32, so |x * M| < 2**47; :func:`gelu_rows` passes GELU outputs
       below 2**45, so |x * M| < 2**60).
    2. ``peak = max(|v|)`` over the row.
    3. ``k`` = the smallest k in 0..ROW_EXP_MAX with ``round_shift(peak, k) <= out.hi``
       (ROW_EXP_MAX if none).
    4. ``q = saturate(round_shift(v, k), out)``; the row's exponent is ``e = ROW_EXP_MAX - k``.

    Returns (q, e) with e of shape x.shape[:-1].
    """
    x = np.asarray(x, dtype=np.int64)
    m = np.asarray(scale.multiplier, dtype=np.int64)
    s = np.asarray(scale.shift, dtype=np.int64)
    if np.any((m < 0) | (m >= (1 << MULT_BITS))) or np.any((s < ROW_EXP_MAX) | (s > SHIFT_MAX)):
        raise ValueError(f"requantize_rows: multiplier out of range or shift not in {ROW_EXP_MAX}..{SHIFT_MAX}")
    v = round_shift(x * m, s - ROW_EXP_MAX)
    peak = np.abs(v).max(axis=-1, keepdims=True)
    k = np.full(peak.shape, ROW_EXP_MAX, dtype=np.int64)
    for cand in range(ROW_EXP_MAX - 1, -1, -1):
        k = np.where(round_shift(peak, cand) <= out.hi, cand, k)
    return saturate(round_shift(v, k), out), (ROW_EXP_MAX - k)[..., 0]


#: residual_add's largest shift (an int16 residual aligned to the top of an int32 sum).
RES_SHIFT_MAX = 16


def residual_add(x, residual, shift: int) -> np.ndarray:
    """``saturate(x + (residual << shift), int32)``: the int16 residual stream aligned to an
    int32 sum whose scale is ``2**-shift`` times finer (0 <= shift <= RES_SHIFT_MAX)."""
    if not 0 <= shift <= RES_SHIFT_MAX:
        raise ValueError(f"residual_add: shift must be in 0..{RES_SHIFT_MAX}")
    r = np.asarray(residual, dtype=np.int64)
    return saturate(np.asarray(x, dtype=np.int64) + (r << shift), INT32)


# --- Softmax -----------------------------------------------------------------------------------

#: Fractional bits of the base-2 exponent t = (max - s) * scale * log2(e).
EXP_FRAC_BITS = 8
#: exp values are Q(EXP_ONE_BITS): 2**0 is 1 << EXP_ONE_BITS.
EXP_ONE_BITS = 15
#: 2**(-f / 2**EXP_FRAC_BITS) in Q15 for every fraction f: entries in [2**14, 2**15].
EXP2_LUT = np.array([round(2.0 ** (EXP_ONE_BITS - f / (1 << EXP_FRAC_BITS)))
                     for f in range(1 << EXP_FRAC_BITS)], dtype=np.int64)
#: Probabilities are uint8 with scale 1/PROB_MAX (1.0 is 255).
PROB_MAX = 255
#: Reciprocal precision: R = floor(PROB_MAX * 2**RECIP_BITS / sum).
RECIP_BITS = 24
#: Shifts of the exp table beyond this are all the same (0); the cap keeps shifts in int64.
_EXP_SHIFT_CAP = 31


#: Bits of the ordered-dither threshold of :func:`softmax` (256 thresholds, (k + 1/2) / 256).
DITHER_BITS = 8
#: The thresholds follow a Weyl sequence: column j's is the top DITHER_BITS bits of
#: ``(j * DITHER_STEP) mod 2**16``, DITHER_STEP = 2**16 / golden ratio (odd). Any arithmetic
#: progression of columns (the keys of one token in a periodic input) spreads its thresholds
#: over the unit interval; a bit-reversed index would not (period 2 would give the even
#: columns the low half of the thresholds and the odd ones the high half).
DITHER_STEP = 40503
_DITHER_MOD_BITS = 16


def dither_thresholds(cols: int) -> np.ndarray:
    """Column j's dither threshold index k (0..255) for a row of ``cols`` columns."""
    j = np.arange(cols, dtype=np.int64)
    return ((j * DITHER_STEP) & ((1 << _DITHER_MOD_BITS) - 1)) >> (_DITHER_MOD_BITS - DITHER_BITS)


def softmax(scores, scale: Dyadic, causal_offset: int | None = None,
            prob_max: int = PROB_MAX, dither: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Integer softmax over the last axis of int32 ``scores`` (rows of 1..512): uint8
    probabilities (or up to 15 bits, ``prob_max``) with a per-row exponent, as
    :func:`requantize_rows` gives.

    Per row, over the unmasked columns (column j of row i is masked when ``causal_offset`` is
    given and j > i + causal_offset):

    1. ``m = max(s)``; ``d = m - s`` (0 <= d < 2**32).
    2. ``t = round_shift(d * M, S)``: ``(m - s) * scale * log2(e)`` in Q8, with the dyadic
       factor ``scale`` = (M, S) folding the score scale, 1/sqrt(d_head) and log2(e).
    3. ``e = round_shift(EXP2_LUT[t & 255], min(t >> 8, 31))`` (rounded, so the tail of a long
       row is not biased down; it is 0 once ``t >> 8 >= 17``); masked columns get 0.
       e is Q15 (16 bits unsigned); the row maximum has e = 2**15.
    4. ``sum = sum(e)`` (< 2**24 for rows up to 512); ``R = floor(P * 2**24 / sum)`` with
       ``P = prob_max`` (255: R < 2**17; the decoder's 32767 for :func:`matmul_wide`: R < 2**24).
    5. Row exponent ``x = clamp(floor(log2(sum)) - 15, 0, ROW_EXP_MAX)`` (0 for sum 0): a flat
       row, whose probabilities are all small, is scaled up by ``2**x`` so that its largest
       probability (the one with e = 2**15) still lands in 128..255.
    6. ``p = min(P, round_shift(e * R, 24 - x))``: probabilities with scale 2**-x / P;
       the P @ V matmul takes ``x`` as its row shift. With ``dither``, column j is rounded at
       an ordered-dither threshold instead of one half: ``p = min(P, (e * R + D) >> (24 - x))``
       with ``D = (2 * k_j + 1) << (15 - x)``, ``k_j = dither_thresholds(cols)[j]`` (the
       thresholds (k + 1/2) / 256 in a Weyl sequence over the columns). A long flat tail of
       probabilities below half a step (a row with one dominant key) then keeps its mass on
       average instead of rounding to 0; each column depends on its own index only (no carry
       between columns, so the lanes of a beat stay independent).

    Returns (p, x) with x of shape scores.shape[:-1].
    """
    s = np.asarray(scores, dtype=np.int64)
    if s.ndim < 1 or s.shape[-1] < 1:
        raise ValueError("softmax: rows must hold at least one column")
    if not UINT8.hi <= prob_max <= INT16.hi:
        raise ValueError(f"softmax: prob_max must be in {UINT8.hi}..{INT16.hi}")
    rows, cols = s.shape[-2] if s.ndim >= 2 else 1, s.shape[-1]
    if causal_offset is not None:
        i = np.arange(rows)[:, None]
        j = np.arange(cols)[None, :]
        valid = np.broadcast_to(j <= i + causal_offset, s.shape)
    else:
        valid = np.ones(s.shape, dtype=bool)
    m = np.max(np.where(valid, s, INT32.lo - 1), axis=-1, keepdims=True)
    d = np.where(valid, m - s, 0)
    t = round_shift(d * np.int64(scale.multiplier), np.int64(scale.shift))
    z = t >> EXP_FRAC_BITS
    f = t & ((1 << EXP_FRAC_BITS) - 1)
    e = np.where(valid, round_shift(EXP2_LUT[f], np.minimum(z, _EXP_SHIFT_CAP)), 0)
    total = e.sum(axis=-1, keepdims=True)
    # A row whose columns are all masked has sum 0: its probabilities are all 0.
    recip = np.where(total > 0, (prob_max << RECIP_BITS) // np.maximum(total, 1), 0)
    log2_total = np.floor(np.log2(np.maximum(total, 1))).astype(np.int64)   # exact below 2**53
    x = np.clip(log2_total - EXP_ONE_BITS, 0, ROW_EXP_MAX)
    if dither:
        d = (2 * dither_thresholds(cols) + 1) << (RECIP_BITS - DITHER_BITS - 1 - x)
        p = np.minimum((e * recip + d) >> (RECIP_BITS - x), prob_max)
    else:
        p = np.minimum(round_shift(e * recip, RECIP_BITS - x), prob_max)
    return p, x[..., 0]


# --- LayerNorm -----------------------------------------------------------------------------------

#: LayerNorm inputs are saturated to this many bits (signed) before any arithmetic.
LN_IN_BITS = 24
#: Fractional bits of the normalised value (x - mean) / std.
LN_NORM_FRAC = 12
#: inv = floor(2**LN_INV_BITS / std): at least 2**21 for any std below 2**25.
LN_INV_BITS = 46
#: Longest row (4096: BERT-base's FFN width 3072 fits; int24 sums then fit 36 bits and the
#: squared deviations' sums 62 bits).
LN_MAX_COLS = 4096
#: |gamma| < 2**LN_GAMMA_BITS and |beta| < 2**LN_BETA_BITS (LayerNorm's and RMSNorm's
#: per-column records; the ISA refuses others with BAD_PARAM).
LN_GAMMA_BITS = 20
LN_BETA_BITS = 40


def isqrt(v) -> np.ndarray:
    """Exact floor square root of non-negative int64 values (below 2**62)."""
    v = np.asarray(v, dtype=np.int64)
    if np.any(v < 0):
        raise ValueError("isqrt of a negative value")
    r = np.floor(np.sqrt(v.astype(np.float64))).astype(np.int64)
    # float64 is within one of the true root here: correct both ways.
    r = np.where(r * r > v, r - 1, r)
    r = np.where((r + 1) * (r + 1) <= v, r + 1, r)
    r = np.where(r * r > v, r - 1, r)
    return r


def layernorm(x, gamma, beta, shift: int, out: Range) -> np.ndarray:
    """Integer LayerNorm over the last axis (rows of 1..LN_MAX_COLS), with affine output.

    1. ``x = saturate(x, int24)``.
    2. ``mean = floor(sum(x) / n)``; ``d = x - mean`` (|d| < 2**25).
    3. ``var = floor(sum(d*d) / n)`` (d*d < 2**50; the sum fits 62 bits for n <= 4096).
    4. ``std = max(1, isqrt(var))``; ``inv = floor(2**46 / std)``.
    5. ``z = round_shift(d * inv, 46 - 12)``: (x - mean)/std in Q12, |z| <= sqrt(n) * 2**12.
    6. ``y = saturate(round_shift(z * gamma + beta, shift), out)``; ``gamma`` (|gamma| < 2**20)
       and ``beta`` (|beta| < 2**40) are per-column integers carrying the output scale:
       gamma_int = gamma / s_out * 2**(shift-12), beta_int = beta / s_out * 2**shift.

    The model's epsilon (1e-12) is below the integer resolution of the variance and is dropped.
    """
    x = saturate(x, Range(-(1 << (LN_IN_BITS - 1)), (1 << (LN_IN_BITS - 1)) - 1))
    n = x.shape[-1]
    if not 1 <= n <= LN_MAX_COLS:
        raise ValueError(f"layernorm: rows of 1..{LN_MAX_COLS} columns, got {n}")
    mean = np.floor_divide(x.sum(axis=-1, keepdims=True), n)
    d = x - mean
    var = np.floor_divide((d * d).sum(axis=-1, keepdims=True), n)
    std = np.maximum(isqrt(var), 1)
    inv = np.floor_divide(np.int64(1) << LN_INV_BITS, std)
    z = round_shift(d * inv, LN_INV_BITS - LN_NORM_FRAC)
    g = np.asarray(gamma, dtype=np.int64)
    b = np.asarray(beta, dtype=np.int64)
    return saturate(round_shift(z * g + b, shift), out)


# --- GELU --------------------------------------------------------------------------------------

#: GELU input is a signed fixed-point value with this many fractional bits: int32 (FFN1's
#: requantised output; |x| < 2**21) for GELU_ROWS, int16 (|x| < 32) for the GELU operation.
GELU_IN_FRAC = 10
#: Phi(x) = P(X <= x) of a standard normal is computed in Q14.
GELU_PHI_BITS = 14
#: Phi is interpolated from a table with a knot every 2**-GELU_STEP_FRAC ...
GELU_STEP_FRAC = 4
#: ... over |x| < GELU_RANGE (beyond it Phi is 0 or 1: 1 - Phi(4) = 3.2e-5).
GELU_RANGE = 4
#: Phi at the knots k / 16, k = 0..64, in Q14 (65 entries, 15 bits unsigned).
GELU_PHI_TABLE = np.array(
    [round((1 << GELU_PHI_BITS) * 0.5 * (1.0 + math.erf(k / (1 << GELU_STEP_FRAC) / math.sqrt(2.0))))
     for k in range(GELU_RANGE * (1 << GELU_STEP_FRAC) + 1)], dtype=np.int64)
_GELU_FRAC_BITS = GELU_IN_FRAC - GELU_STEP_FRAC     # bits of x between two knots
#: GELU's minimum is -0.16997 (at x = -0.7518): the output is offset by about this much so
#: that it is non-negative and fills a uint8 with no zero point. The offset is a whole number
#: of input steps (174 / 2**10 = 0.169922, in Q24 ``174 << 14``), so that beyond the table,
#: where GELU(x) = x, the offset output ``(x + 174) << 14`` is the input itself plus a
#: constant; GELU's values between -0.16997 and -0.16992 (within 5e-5 of its minimum) clamp
#: to 0.
GELU_OFFSET_STEPS = round(0.16997 * (1 << GELU_IN_FRAC))
GELU_OFFSET = GELU_OFFSET_STEPS << GELU_PHI_BITS
#: The value the offset stands for (what FFN2's bias takes back): -GELU_OFFSET in real units.
GELU_MIN = -GELU_OFFSET / (1 << (GELU_IN_FRAC + GELU_PHI_BITS))
#: gelu's largest output: ``(INT32.hi) << 14``, reached where x + GELU_OFFSET_STEPS passes the
#: int32 maximum (x within 174 steps of it).
GELU_OUT_MAX = INT32.hi << GELU_PHI_BITS


def gelu(x) -> np.ndarray:
    """Integer GELU: x * Phi(x), Phi linearly interpolated from a 65-entry table; Q24 out.

    ``x``: int32 fixed point, Q10 (the caller requantises the accumulator into it; FFN1 gives
    an int32, so nothing saturates below |x| = 2**21).

    1. ``a = |x|``; if ``a >= 4096`` (|x| >= 4.0), ``phi_pos = 2**14``; otherwise
       ``i = a >> 6``, ``f = a & 63`` and
       ``phi_pos = T[i] + (((T[i+1] - T[i]) * f) >> 6)`` (floor shift; T[i+1]-T[i] < 2**12).
    2. ``phi = phi_pos`` for x >= 0, ``2**14 - phi_pos`` for x < 0: Phi(x) in Q14.
    3. ``g = max(0, x * phi + GELU_OFFSET)``, at most ``GELU_OUT_MAX``.

    Beyond the table (|x| >= 4) the result is the input itself: ``(x + 174) << 14`` for
    x >= 4 (``saturate(x + 174, int32) << 14``: the cap only bites within 174 steps of the
    int32 maximum) and ``GELU_OFFSET`` (GELU = 0) for x <= -4. For |x| < 4, g < 2**27; in
    all, ``0 <= g < 2**45``.

    Interpolation error of Phi is below 1.3e-4, so |GELU error| < 5.3e-4 for |x| < 4.
    """
    x = np.asarray(x, dtype=np.int64)
    if x.min(initial=0) < INT32.lo or x.max(initial=0) > INT32.hi:
        raise ValueError("gelu: input outside int32")
    phi = _symmetric_cdf(x, GELU_PHI_TABLE, GELU_RANGE << GELU_IN_FRAC, _GELU_FRAC_BITS,
                         GELU_PHI_BITS)
    return np.minimum(np.maximum(x * phi + GELU_OFFSET, 0), GELU_OUT_MAX)


def gelu_rows(x, scale: Dyadic, out: Range) -> tuple[np.ndarray, np.ndarray]:
    """GELU and the per-row requantisation of its output (the vector unit's GELU_ROWS, FFN2's
    operand): ``requantize_rows(gelu(x), scale, out)`` for int32 Q10 ``x``.

    ``gelu``'s output reaches 2**45 (inputs beyond the table are passed through, not
    saturated), so ``v = round_shift(g * M, S - 8)`` takes products up to 2**60; the rest is
    :func:`requantize_rows`. Returns (q, e).
    """
    return requantize_rows(gelu(x), scale, out)


def _symmetric_cdf(x: np.ndarray, table: np.ndarray, end: int, frac_bits: int,
                   one_bits: int) -> np.ndarray:
    """A CDF-like curve F (F(-x) = 1 - F(x), F = 1 past ``end``) in Q``one_bits`` from the
    knots ``table`` of its positive half, ``2**frac_bits`` input steps apart: ``a = |x|``,
    ``T[a >> frac] + (((T[.+1] - T[.]) * (a & (2**frac - 1))) >> frac)`` (floor shift) below
    ``end``, ``2**one_bits`` from there; mirrored for x < 0 (GELU's Phi, SiLU's sigmoid)."""
    a = np.abs(x)
    inside = a < end
    ac = np.where(inside, a, 0)
    i = ac >> frac_bits
    f = ac & ((1 << frac_bits) - 1)
    lo, hi = table[i], table[i + 1]
    pos = np.where(inside, lo + (((hi - lo) * f) >> frac_bits), 1 << one_bits)
    return np.where(x < 0, (1 << one_bits) - pos, pos)


# --- RMSNorm (decoders) ---------------------------------------------------------------------------

#: RMSNorm brings every row's peak to this many bits (a per-row power-of-two shift: left for
#: small rows, rounded right for large ones) before squaring; RMSNorm does not see the shift.
RMS_PEAK_BITS = 23
#: inv = floor(2**RMS_INV_BITS / rms) (rms of the shifted row >= 2**22 / sqrt(n) > 2**16).
RMS_INV_BITS = 46
#: Fractional bits of the normalised value x / rms.
RMS_NORM_FRAC = 12
#: Longest row (squares < 2**46, so the sum of 1536 fits 57 bits).
RMS_MAX_COLS = 1536
#: The epsilon, shifted with the row, stays below 2**RMS_EPS_BITS (mean square plus epsilon
#: then stays below isqrt's 2**62).
RMS_EPS_BITS = 61
#: RMSNORM's epsilon: 0 <= eps < 2**RMS_EPS_MAX_BITS (isqrt's range).
RMS_EPS_MAX_BITS = 62


def rmsnorm(x, gamma, shift: int, out: Range, eps: int = 0) -> np.ndarray:
    """Integer RMSNorm over the last axis (rows of 1..RMS_MAX_COLS int32 values), times gamma.

    1. ``peak = max|x|``; ``k = max(bit_length(peak) - RMS_PEAK_BITS, k_eps)`` (``k_eps`` for
       a zero row) with ``k_eps = ceil((bit_length(eps) - 61) / 2)`` (a constant of the
       layer); ``u = x << -k`` if k < 0, else ``round_shift(x, k)``: the row's peak now has
       23 bits (|u| <= 2**23; a leading-zero count and a shifter), or fewer where the epsilon
       dominates the row.
    2. ``ms = floor(sum(u*u) / n)`` (u*u <= 2**46, the sum < 2**57).
    3. ``eps`` (0 <= eps < 2**62, the model's epsilon in units of the input scale squared,
       ``round(eps_f / s_in**2)``) follows the row's shift: ``eps_k = round_shift(eps, 2k)``
       for k >= 0, ``eps << -2k`` for k < 0 (< 2**61 by the choice of k);
       ``rms = max(1, isqrt(ms + eps_k))`` (>= 2**22 / sqrt(n) for a nonzero row);
       ``inv = floor(2**46 / rms)`` (>= 2**15).
    4. ``z = round_shift(u * inv, 46 - 12)``: x / rms(x) in Q12 (|z| <= sqrt(n) * 2**12).
    5. ``y = saturate(round_shift(z * gamma, shift), out)``, gamma per column
       (``round(gamma_f / s_out * 2**(shift - 12))``, |gamma| < 2**20).

    Without epsilon the result does not depend on the input scale: ``rmsnorm(x * 2**j)``
    equals ``rmsnorm(x)`` bit for bit, so the residual stream keeps its whole int32 range.
    A zero row gives 0.
    """
    x = saturate(x, INT32)
    n = x.shape[-1]
    if not 1 <= n <= RMS_MAX_COLS:
        raise ValueError(f"rmsnorm: rows of 1..{RMS_MAX_COLS} columns, got {n}")
    if not 0 <= int(eps) < (1 << RMS_EPS_MAX_BITS):
        raise ValueError(f"rmsnorm: eps must be in 0..2**{RMS_EPS_MAX_BITS} - 1")
    k_eps = -((RMS_EPS_BITS - int(eps).bit_length()) // 2)
    peak = np.abs(x).max(axis=-1, keepdims=True)
    bits = np.where(peak > 0, np.floor(np.log2(np.maximum(peak, 1))).astype(np.int64) + 1, 0)
    k = np.maximum(np.where(peak > 0, bits - RMS_PEAK_BITS, k_eps), k_eps)
    u = np.where(k < 0, x << np.maximum(-k, 0), round_shift(x, np.maximum(k, 0)))
    ms = np.floor_divide((u * u).sum(axis=-1, keepdims=True), n)
    e = np.int64(eps)
    eps_k = np.where(k < 0, e << np.maximum(-2 * k, 0), round_shift(e, 2 * np.maximum(k, 0)))
    rms = np.maximum(isqrt(ms + eps_k), 1)
    inv = np.floor_divide(np.int64(1) << RMS_INV_BITS, rms)
    z = round_shift(u * inv, RMS_INV_BITS - RMS_NORM_FRAC)
    return saturate(round_shift(z * np.asarray(gamma, dtype=np.int64), shift), out)


# --- SiLU and the gated MLP -------------------------------------------------------------------------

#: SiLU input (the gate projection) is int16 with this many fractional bits (|x| < 128).
SILU_IN_FRAC = 8
#: sigmoid(x) is computed in Q16 (the table's resolution, not its interpolation, dominated the
#: error at Q14: 5.3e-4 against 1.7e-4 now, over every int16 input).
SILU_SIG_BITS = 16
#: sigmoid is interpolated from a table with a knot every 2**-SILU_STEP_FRAC ...
SILU_STEP_FRAC = 4
#: ... over |x| < SILU_RANGE (beyond it sigmoid is 0 or 1: x * sigmoid(-x) < 2e-6 there).
SILU_RANGE = 16
#: sigmoid at the knots k / 16, k = 0..256, in Q16 (257 entries, 17 bits unsigned).
SILU_SIG_TABLE = np.array(
    [round((1 << SILU_SIG_BITS) / (1.0 + math.exp(-k / (1 << SILU_STEP_FRAC))))
     for k in range(SILU_RANGE * (1 << SILU_STEP_FRAC) + 1)], dtype=np.int64)
_SILU_FRAC_BITS = SILU_IN_FRAC - SILU_STEP_FRAC     # bits of x between two knots
#: SiLU's output, before the gated product, is rounded to this many fractional bits (|SiLU(x)|
#: <= |x| < 128, so it is an int24).
SILU_OUT_FRAC = 16


def silu(x) -> np.ndarray:
    """Integer SiLU, x * sigmoid(x), sigmoid interpolated from a 257-entry table; Q16 out.

    ``x``: int16 fixed point, Q8 (the caller requantises the gate's int32 accumulator into it).

    1. ``a = |x|``; if ``a >= 4096`` (|x| >= 16), ``sig_pos = 2**16``; otherwise
       ``i = a >> 4``, ``f = a & 15`` and ``sig_pos = T[i] + (((T[i+1] - T[i]) * f) >> 4)``
       (floor shift; T[i+1] - T[i] < 2**12).
    2. ``sig = sig_pos`` for x >= 0, ``2**16 - sig_pos`` for x < 0: sigmoid(x) in Q16.
    3. ``round_shift(x * sig, 8 + 16 - 16)``: SiLU(x) in Q16 (|x * sig| < 2**31).

    Error against x * sigmoid(x) over every int16 input: below 1.8e-4 (measured 1.71e-4).
    """
    x = np.asarray(x, dtype=np.int64)
    if x.min(initial=0) < INT16.lo or x.max(initial=0) > INT16.hi:
        raise ValueError("silu: input outside int16")
    sig = _symmetric_cdf(x, SILU_SIG_TABLE, SILU_RANGE << SILU_IN_FRAC, _SILU_FRAC_BITS,
                         SILU_SIG_BITS)
    return round_shift(x * sig, SILU_IN_FRAC + SILU_SIG_BITS - SILU_OUT_FRAC)


def gated_silu(gate, up, scale: Dyadic, out: Range,
               wide_up: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The gated MLP's inner activation SiLU(gate) * up, requantised with per-row exponents
    for the down projection.

    ``gate``: int16 Q8 (:func:`silu`); ``up``: int8 (the up projection requantised per
    channel). ``p = silu(gate) * up`` (|p| < 2**23 * 2**7 = 2**30), then
    ``requantize_rows(p, scale, out)`` (per-channel ``scale``, every S >= ROW_EXP_MAX):
    ``out`` int8 for :func:`matmul`, or int16 for :func:`matmul_wide`. With ``wide_up``, up
    is int16 (int8 with 8 more fractional bits) and ``p = round_shift(silu(gate) * up, 8)``
    (|silu * up| < 2**38, |p| < 2**30, at the scale of the int8 case).
    Returns (q, e) as :func:`requantize_rows`.
    """
    u = np.asarray(up, dtype=np.int64)
    r = INT16 if wide_up else INT8
    if u.min(initial=0) < r.lo or u.max(initial=0) > r.hi:
        raise ValueError(f"gated_silu: up operand outside int{r.bits}")
    p = silu(gate) * u
    return requantize_rows(round_shift(p, WIDE_LO_BITS) if wide_up else p, scale, out)


# --- Rotary positions ---------------------------------------------------------------------------

#: cos and sin of the rotary angles are signed Q14 (2**14 is 1.0; 15 bits and a sign).
ROPE_TRIG_BITS = 14


@functools.cache
def _rope_tables(theta: float, head_dim: int, positions: int) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = float(theta) ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    one = 1 << ROPE_TRIG_BITS
    cos = np.round(np.cos(angles) * one).astype(np.int64)
    sin = np.round(np.sin(angles) * one).astype(np.int64)
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin


def rope_tables(theta: float, head_dim: int, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """The rotary tables (positions x head_dim/2): ``round(2**14 * cos(p * theta**(-2c/d)))``
    and likewise sin, the angle in float64 (host-side tables, like the exp table)."""
    if head_dim % 2 or head_dim < 2 or positions < 1:
        raise ValueError("rope_tables: an even head width and at least one position")
    return _rope_tables(float(theta), int(head_dim), int(positions))


def rotary(x, positions, tables: tuple[np.ndarray, np.ndarray], out: Range) -> np.ndarray:
    """Rotary embedding of the integer q or k rows ``x`` (..., tokens, head_dim), |x| <= 2**15.

    Channel c of a head pairs with c + head_dim/2; the token at position ``p`` (one per row,
    ``positions[t]``: cached tokens come first, so a decode step passes its absolute position)
    turns pair c by the table's angle: with ``C = cos[p, c]``, ``S = sin[p, c]``,

    ``y1 = saturate(round_shift(x1 * C - x2 * S, 14), out)``,
    ``y2 = saturate(round_shift(x2 * C + x1 * S, 14), out)`` (sums < 2**30).

    A rotation keeps the pair's length, so an int8 result does not saturate when the quantiser
    sets the q/k scale on the largest pair length |(x1, x2)| rather than the largest value.
    """
    x = np.asarray(x, dtype=np.int64)
    cos, sin = tables
    half = x.shape[-1] // 2
    if x.shape[-1] != 2 * cos.shape[-1]:
        raise ValueError(f"rotary: rows of {2 * cos.shape[-1]} channels, got {x.shape[-1]}")
    if x.min(initial=0) < INT16.lo or x.max(initial=0) > INT16.hi:
        raise ValueError("rotary: input outside int16")
    p = np.asarray(positions, dtype=np.int64)
    if p.shape != (x.shape[-2],) or p.min(initial=0) < 0 or p.max(initial=0) >= cos.shape[0]:
        raise ValueError(f"rotary: one position in 0..{cos.shape[0] - 1} per row")
    c, s = cos[p], sin[p]
    x1, x2 = x[..., :half], x[..., half:]
    y1 = round_shift(x1 * c - x2 * s, ROPE_TRIG_BITS)
    y2 = round_shift(x2 * c + x1 * s, ROPE_TRIG_BITS)
    return saturate(np.concatenate([y1, y2], axis=-1), out)


# --- Attention over heads ------------------------------------------------------------------------

def kv_head(head: int, heads: int, kv_heads: int) -> int:
    """The key/value head that query head ``head`` reads: grouped-query attention shares each
    key/value head among ``heads // kv_heads`` consecutive query heads."""
    if heads % kv_heads or not 0 <= head < heads:
        raise ValueError(f"kv_head: head {head} of {heads} with {kv_heads} key/value heads")
    return head // (heads // kv_heads)


def attention(q, k, v, softmax_scale: Dyadic, ctx_scale: Dyadic,
              causal_offset: int | None = None, out: Range = INT8,
              wide_q: bool = False, prob_max: int = PROB_MAX, wide_k: bool = False) -> np.ndarray:
    """Attention of one sequence, every query head: int8 context (tokens x heads * head_dim),
    or ``out`` (int16 for :func:`matmul_wide`). With ``wide_q`` q is int16 and the scores are
    ``matmul_wide(q_h, k_g.T)``; with ``wide_k`` k is int16 and they are
    ``matmul_wide(k_g, q_h.T).T`` (either at the int8 operand's scale). With ``prob_max``
    above 255 the probabilities are int16 and go through ``matmul_wide(p, v_g, row_shift=x)``.

    ``q``: int8 (heads, tokens, head_dim); ``k``, ``v``: int8 (kv_heads, keys, head_dim), the
    cached tokens first (``causal_offset`` of them with causal attention: :func:`softmax`
    masks key j for query t when j > t + causal_offset). Query head h reads key/value head
    :func:`kv_head`; per head: ``scores = matmul(q_h, k_g.T)``, ``(p, x) = softmax(scores,
    softmax_scale[h])``, ``ctx_h = requantize(matmul(p, v_g, row_shift=x), ctx_scale[cols of
    h], out)``. Nothing but the choice of g differs from multi-head attention.
    """
    q, k, v = (np.asarray(a, dtype=np.int64) for a in (q, k, v))
    heads, tokens, dh = q.shape
    kv_heads = k.shape[0]
    if k.shape != v.shape or k.shape[0] != kv_heads or k.shape[2] != dh or heads % kv_heads:
        raise ValueError(f"attention: k and v of (kv_heads, keys, {dh}) with kv_heads dividing "
                         f"{heads}, got {k.shape} and {v.shape}")
    ctx = np.empty((tokens, heads * dh), dtype=np.int64)
    m, s = np.broadcast_to(softmax_scale.multiplier, (heads,)), np.broadcast_to(softmax_scale.shift, (heads,))
    cm = np.broadcast_to(ctx_scale.multiplier, (heads * dh,))
    cs = np.broadcast_to(ctx_scale.shift, (heads * dh,))
    for h in range(heads):
        g = kv_head(h, heads, kv_heads)
        cols = slice(h * dh, (h + 1) * dh)
        if wide_k:
            scores = matmul_wide(k[g], q[h].T).T
        else:
            scores = (matmul_wide if wide_q else matmul)(q[h], k[g].T)
        probs, x = softmax(scores, Dyadic(m[h], s[h]), causal_offset, prob_max)
        pv = (matmul_wide if prob_max > UINT8.hi else matmul)(probs, v[g], row_shift=x)
        ctx[:, cols] = requantize(pv, Dyadic(cm[cols], cs[cols]), out)
    return ctx
