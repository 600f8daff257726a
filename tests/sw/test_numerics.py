"""The integer operations: exact cases, extremes, and error bounds against float."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from celosia.sw import numerics as nx

I32 = st.integers(nx.INT32.lo, nx.INT32.hi)


# --- round_shift / Dyadic / requantize --------------------------------------------------------

def test_round_shift_exact_cases():
    x = np.array([5, 6, 7, -5, -6, -7, 0, 1, -1])
    assert nx.round_shift(x, 1).tolist() == [3, 3, 4, -2, -3, -3, 0, 1, 0]   # half up
    assert nx.round_shift(x, 0).tolist() == x.tolist()
    assert nx.round_shift(np.array([2**46 - 1]), 46).tolist() == [1]


@given(x=st.integers(-(2**46), 2**46), s=st.integers(0, 47))
def test_round_shift_is_round_half_up(x, s):
    want = math.floor(x / 2**s + 0.5) if s else x
    assert int(nx.round_shift(np.int64(x), s)) == want


@given(f=st.floats(1e-12, 2.0**14, allow_nan=False))
def test_dyadic_from_real_precision(f):
    d = nx.Dyadic.from_real(f)
    assert 0 <= int(d.multiplier) < 2**nx.MULT_BITS
    assert 0 <= int(d.shift) <= nx.SHIFT_MAX
    if f > 2.0**-30:      # normalised multiplier: 15 significant bits
        assert abs(float(d.to_real()) / f - 1) <= 2.0**-14


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), 2.0**15])
def test_dyadic_rejects_bad_factors(bad):
    with pytest.raises(ValueError):
        nx.Dyadic.from_real(bad)


def test_requantize_exact_and_saturating():
    d = nx.Dyadic(np.int64(3), np.int64(2))                        # x * 0.75
    x = np.array([0, 1, 2, 3, -1, -2, -3, 1000, -1000])
    assert nx.requantize(x, d, nx.INT8).tolist() == [0, 1, 2, 2, -1, -1, -2, 127, -128]
    assert nx.requantize(x, d, nx.UINT8, zero_point=10).tolist() == [10, 11, 12, 12, 9, 9, 8, 255, 0]
    # Extremes: int32 limits times the largest multiplier fit the 47-bit product.
    big = nx.Dyadic(np.int64(2**15 - 1), np.int64(47))
    assert nx.requantize(np.array([nx.INT32.hi, nx.INT32.lo]), big, nx.INT32).tolist() == [0, 0]
    one = nx.Dyadic(np.int64(2**14), np.int64(14))
    assert nx.requantize(np.array([nx.INT32.hi, nx.INT32.lo]), one, nx.INT32).tolist() == [nx.INT32.hi, nx.INT32.lo]
    assert nx.requantize(np.array([nx.INT32.hi, nx.INT32.lo]), one, nx.INT16).tolist() == [32767, -32768]


def test_requantize_per_channel_broadcasts_over_last_axis():
    d = nx.Dyadic(np.array([1, 2, 4]), np.array([0, 0, 1]))
    x = np.array([[10, 10, 10], [-3, -3, -3]])
    assert nx.requantize(x, d, nx.INT32).tolist() == [[10, 20, 20], [-3, -6, -6]]


def test_requantize_rejects_out_of_range_parameters():
    with pytest.raises(ValueError):
        nx.requantize(np.array([1]), nx.Dyadic(np.int64(2**15), np.int64(0)), nx.INT8)
    with pytest.raises(ValueError):
        nx.requantize(np.array([1]), nx.Dyadic(np.int64(1), np.int64(48)), nx.INT8)


@given(x=I32, f=st.floats(1e-6, 100.0))
def test_requantize_error_within_half_lsb(x, f):
    d = nx.Dyadic.from_real(f)
    y = int(nx.requantize(np.int64(x), d, nx.INT32))
    exact = x * float(d.to_real())
    if nx.INT32.lo < exact < nx.INT32.hi:
        assert abs(y - exact) <= 0.5
    # ...and the factor itself is within 2**-14 of the real one.
    assert abs(float(d.to_real()) / f - 1) <= 2.0**-14


# --- matmul and residual ------------------------------------------------------------------------

def test_matmul_exact_and_extremes():
    a = np.array([[1, -2], [255, 0]])
    b = np.array([[3, 4], [5, -128]])
    assert nx.matmul(a, b).tolist() == [[-7, 260], [765, 1020]]
    assert nx.matmul(a, b, bias=np.array([1, -1])).tolist() == [[-6, 259], [766, 1019]]
    # -128 * -128 summed over K = 4096 is 2**26: exact.
    k = 4096
    assert nx.matmul(np.full((1, k), -128), np.full((k, 1), -128)).tolist() == [[2**26]]
    # uint8 * int8 extreme.
    assert nx.matmul(np.full((1, k), 255), np.full((k, 1), -128)).tolist() == [[-255 * 128 * k]]
    # Accumulation saturates at int32.
    acc = np.array([[nx.INT32.hi]])
    assert nx.matmul(np.ones((1, 1)), np.ones((1, 1)), acc=acc).tolist() == [[nx.INT32.hi]]


def test_matmul_rejects_bad_operands():
    with pytest.raises(ValueError):
        nx.matmul(np.array([[256]]), np.array([[1]]))
    with pytest.raises(ValueError):
        nx.matmul(np.array([[1]]), np.array([[128]]))
    with pytest.raises(ValueError):
        nx.matmul(np.array([[1]]), np.array([[1]]), row_shift=np.array([nx.ROW_EXP_MAX + 1]))


@given(data=st.data())
@settings(max_examples=50)
def test_matmul_row_shift_then_bias(data):
    m, k, n = (data.draw(st.integers(1, 6)) for _ in range(3))
    a = data.draw(hnp.arrays(np.int64, (m, k), elements=st.integers(-128, 127)))
    b = data.draw(hnp.arrays(np.int64, (k, n), elements=st.integers(-128, 127)))
    e = data.draw(hnp.arrays(np.int64, (m,), elements=st.integers(0, nx.ROW_EXP_MAX)))
    bias = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(-(2**20), 2**20)))
    got = nx.matmul(a, b, bias=bias, row_shift=e)
    for i in range(m):
        for j in range(n):
            raw = int(sum(int(a[i, t]) * int(b[t, j]) for t in range(k)))
            want = (math.floor(raw / 2 ** e[i] + 0.5) if e[i] else raw) + int(bias[j])
            assert got[i, j] == want


def _exact_product(a, b) -> list:
    """A @ B in Python integers (no int64 or float64 arithmetic)."""
    return (np.asarray(a).astype(object) @ np.asarray(b).astype(object)).tolist()


@given(data=st.data())
@settings(max_examples=80)
def test_integer_matmul_is_exact_on_either_path(data):
    """Random shapes and magnitudes from int8 to 2**30: some products take the float64 path,
    some the int64 path; every result equals the Python-integer product."""
    m, k, n = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 7)), data.draw(st.integers(1, 5))
    bits = data.draw(st.integers(1, 30))
    elems = st.integers(-(1 << bits), 1 << bits)
    a = data.draw(hnp.arrays(np.int64, (m, k), elements=elems))
    b = data.draw(hnp.arrays(np.int64, (k, n), elements=elems))
    got = nx.integer_matmul(a, b)
    assert got.dtype == np.int64
    assert got.tolist() == _exact_product(a, b)


def test_integer_matmul_matches_the_int64_path_on_random_operands():
    rng = np.random.default_rng(14)
    for m, k, n in ((1, 1, 1), (7, 384, 1152), (13, 1536, 384), (256, 32, 256)):
        a = rng.integers(nx.INT8.lo, nx.UINT8.hi + 1, (m, k))
        b = rng.integers(nx.INT8.lo, nx.INT8.hi + 1, (k, n), dtype=np.int8)
        with nx.int64_matmuls():
            want = nx.matmul(a, b)
        assert np.array_equal(nx.matmul(a, b), want)


def test_integer_matmul_extremes_at_the_bound():
    # The matmul operands' own bound: K * 255 * 128 stays below 2**53 far beyond K = 2**16.
    assert nx.exact_sum_bound(nx.UINT8.hi, -nx.INT8.lo, 1 << 16) < nx.FLOAT64_EXACT
    # Just below 2**53: float64 path, and every term has the same sign (no cancellation).
    a = np.array([[(1 << 25), (1 << 25)]])
    b = np.array([[(1 << 27) - 1], [(1 << 27) - 1]])
    assert nx.exact_sum_bound(1 << 25, (1 << 27) - 1, 2) == (1 << 53) - (1 << 26)
    assert nx.integer_matmul(a, b).tolist() == [[(1 << 53) - (1 << 26)]]
    # Alternating extremes that cancel: the exact answer is small, the partial sums are not.
    k = 4096
    a = np.tile([nx.UINT8.hi, nx.UINT8.hi], (3, k // 2))
    b = np.tile([[nx.INT8.lo], [nx.INT8.hi]], (k // 2, 2))
    b[-1, 1] = nx.INT8.lo
    assert nx.matmul(a, b).tolist() == _exact_product(a, b)
    assert nx.matmul(a, b)[0].tolist() == [-255 * k // 2, -255 * k // 2 - 255 * 255]


def test_integer_matmul_falls_back_to_int64_past_the_bound():
    """(2**30 + 1)**2 + 1 needs 61 bits: float64 would round it, so the bound sends it to int64."""
    a = np.array([[(1 << 30) + 1, 1]])
    b = np.array([[(1 << 30) + 1], [1]])
    want = ((1 << 30) + 1) ** 2 + 1
    assert nx.exact_sum_bound((1 << 30) + 1, (1 << 30) + 1, 2) >= nx.FLOAT64_EXACT
    assert int((a.astype(np.float64) @ b.astype(np.float64))[0, 0]) != want   # float64 rounds
    assert nx.integer_matmul(a, b).tolist() == [[want]]
    # int64's most negative value has no int64 magnitude: the bound is still taken exactly.
    assert nx.integer_matmul(np.array([[np.iinfo(np.int64).min]]), np.array([[1]])).tolist() == \
        [[np.iinfo(np.int64).min]]


def test_residual_add():
    assert nx.residual_add(np.array([5, nx.INT32.hi]), np.array([-3, 32767]), 4).tolist() == [5 - 48, nx.INT32.hi]
    with pytest.raises(ValueError):
        nx.residual_add(np.array([1]), np.array([1]), 17)


# --- requantize_rows ------------------------------------------------------------------------------

def test_requantize_rows_exact_case():
    d = nx.Dyadic(np.array([1 << 13] * 3), np.array([14] * 3))      # factor 0.5
    x = np.array([[100, -50, 0],       # 50 at e=0; 100 at e=1 fits, 200 at e=2 does not
                  [2, 1, 0],           # tiny row: 1 at e=0, scaled up by 2**6 to 64
                  [1000, 0, 0]])       # 500 saturates even at e=0
    q, e = nx.requantize_rows(x, d, nx.INT8)
    assert e.tolist() == [1, 6, 0]
    assert q.tolist() == [[100, -50, 0], [64, 32, 0], [127, 0, 0]]


@given(data=st.data())
@settings(max_examples=100)
def test_requantize_rows_uses_range_and_reconstructs(data):
    rows, cols = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 8))
    x = data.draw(hnp.arrays(np.int64, (rows, cols), elements=st.integers(-(2**15), 2**15 - 1)))
    f = data.draw(hnp.arrays(np.float64, (cols,), elements=st.floats(1e-4, 0.05)))
    unsigned = data.draw(st.booleans())
    out = nx.UINT8 if unsigned else nx.INT8
    if unsigned:
        x = np.abs(x)
    d = nx.Dyadic.from_real(f)
    q, e = nx.requantize_rows(x, d, out)
    assert q.min() >= out.lo and q.max() <= out.hi
    exact = x * d.to_real() * 2.0 ** e[:, None]          # what q approximates
    for i in range(rows):
        if e[i] < nx.ROW_EXP_MAX:
            # A larger exponent would have overflowed (so the row uses its range) ...
            assert np.abs(x[i] * d.to_real()).max() * 2.0 ** (e[i] + 1) > out.hi - 1
        # ... and the row is within one unit (double rounding) unless it saturated.
        inside = np.abs(exact[i]) <= out.hi
        assert np.all(np.abs(q[i] - exact[i])[inside] <= 1.0)


def test_requantize_rows_needs_shift_room():
    with pytest.raises(ValueError):
        nx.requantize_rows(np.array([[1]]), nx.Dyadic(np.array([1]), np.array([nx.ROW_EXP_MAX - 1])), nx.INT8)


# --- softmax ------------------------------------------------------------------------------------------

def _float_softmax(s, factor, valid):
    z = np.where(valid, s * factor, -np.inf)
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=-1, keepdims=True)


def test_softmax_exact_cases():
    scale = nx.Dyadic.from_real(256.0)       # t = d * 256: one score unit is a factor 2
    p, x = nx.softmax(np.array([[0, 0, 0, 0]]), scale)
    assert p.tolist() == [[255, 255, 255, 255]] and x.tolist() == [2]   # 255/4 * 2**2
    p, x = nx.softmax(np.array([[5]]), scale)
    assert p.tolist() == [[255]] and x.tolist() == [0]
    p, x = nx.softmax(np.array([[1, 0]]), scale)  # 2:1, sum 1.5 * 2**15: no exponent
    assert p.tolist() == [[170, 85]] and x.tolist() == [0]
    # Causal: row i sees columns <= i.
    p, x = nx.softmax(np.zeros((3, 3), dtype=np.int64), scale, causal_offset=0)
    assert p.tolist() == [[255, 0, 0], [255, 255, 0], [170, 170, 170]] and x.tolist() == [0, 1, 1]
    # Every column masked (negative offset): all zero.
    p, x = nx.softmax(np.zeros((1, 3), dtype=np.int64), scale, causal_offset=-1)
    assert p.tolist() == [[0, 0, 0]] and x.tolist() == [0]


def test_softmax_extremes():
    scale = nx.Dyadic.from_real(1.0)
    s = np.array([[nx.INT32.hi, nx.INT32.lo, 0, nx.INT32.hi]])
    p, x = nx.softmax(s, scale)
    assert p.tolist() == [[255, 0, 0, 255]] and x.tolist() == [1]
    # A flat row of 512: 255/512 per column, scaled by 2**8 -> 127.5 -> 128.
    p, x = nx.softmax(np.full((1, 512), -7), scale)
    assert x.tolist() == [nx.ROW_EXP_MAX] and p.min() == p.max() == 128
    p, x = nx.softmax(np.where(np.arange(512) == 3, 100, 0)[None, :], nx.Dyadic.from_real(256.0))
    assert p[0, 3] == 255 and p.sum() == 255 and x.tolist() == [0]


@given(data=st.data())
@settings(max_examples=100)
def test_softmax_close_to_float(data):
    n = data.draw(st.integers(1, 512))
    s = data.draw(hnp.arrays(np.int64, (1, n), elements=st.integers(-(2**20), 2**20)))
    f = data.draw(st.floats(1e-6, 1e-2))     # score units to natural-log units
    scale = nx.Dyadic.from_real(f * math.log2(math.e) * (1 << nx.EXP_FRAC_BITS))
    p, x = nx.softmax(s, scale)
    assert p.max() >= 128                     # the exponent keeps the largest in the top half
    prob = p / nx.PROB_MAX / 2.0 ** x[:, None]
    ref = _float_softmax(s.astype(np.float64), f, np.ones_like(s, dtype=bool))
    # Relative to the row's largest probability: uint8 rounding (half a step of 128..255),
    # exp table (2**-9) and the Q8 exponent rounding (2**-9 * ln 2) on each term; plus the
    # Q15 rounding of every exp term, which moves the row sum by up to n/2 units of 2**-15.
    assert np.abs(prob - ref).max() <= ref.max() * (0.5 / 128 + 0.004) + 0.5 * n / 2**15


def _dither_reference(row, mult, shift):
    """numerics.softmax(dither=True) of one row in Python integers, step by step."""
    m = max(row)
    es = []
    for v in row:
        t = ((m - v) * mult + (1 << (shift - 1))) >> shift if shift else (m - v) * mult
        z, f = t >> 8, t & 255
        z = min(z, 31)
        es.append((int(nx.EXP2_LUT[f]) + ((1 << (z - 1)) if z else 0)) >> z)
    total = sum(es)
    recip = (255 << 24) // total
    x = min(max(total.bit_length() - 1 - 15, 0), 8)
    order = [(j * 40503 % 65536) // 256 for j in range(len(row))]
    return [min(255, (e * recip + ((2 * k + 1) << (15 - x))) >> (24 - x))
            for e, k in zip(es, order)], x


@given(data=st.data())
@settings(max_examples=50)
def test_softmax_dither_exact(data):
    n = data.draw(st.integers(1, 300))
    row = data.draw(st.lists(st.integers(-(2**20), 2**20), min_size=n, max_size=n))
    scale = nx.Dyadic.from_real(data.draw(st.floats(1e-4, 1.0)))
    p, x = nx.softmax(np.array([row]), scale, dither=True)
    ref, rx = _dither_reference(row, int(scale.multiplier), int(scale.shift))
    assert p[0].tolist() == ref and int(x[0]) == rx


def test_softmax_dither_keeps_a_flat_tail():
    # One key at 2**9 times each of 200 others: 0.36 of a step a column (71.6 in all).
    scale = nx.Dyadic.from_real(256.0)           # one score unit is a factor 2
    s = np.array([[9] + [0] * 200])
    p, x = nx.softmax(s, scale)
    assert x.tolist() == [0] and p[0, 0] == 183 and p[0, 1:].max() == 0      # the tail is lost
    pd, xd = nx.softmax(s, scale, dither=True)
    assert xd.tolist() == [0] and pd[0, 0] == 183 and pd[0, 1:].sum() == 72
    assert pd[0, 1:].max() == 1
    # Every residue class of a period (the keys of one token in a periodic input) keeps its
    # share (thresholds in bit-reversed column order would give period 2 [0, 72]): within 2.5
    # for periods 2..4, and more than half of it up to period 8.
    for period in range(2, 9):
        sums = np.array([pd[0, 1 + c::period].sum() for c in range(period)])
        assert sums.min() > 71.6 / period / 2 and (period > 4 or np.abs(sums - 71.6 / period).max() <= 2.5)
    # Without a tail to keep, the dithered rounding is within one step of round half up.
    assert nx.softmax(np.array([[1, 0]]), scale, dither=True)[0].tolist() == [[170, 85]]


# --- layernorm --------------------------------------------------------------------------------------

def test_isqrt_exact():
    v = np.array([0, 1, 2, 3, 4, 15, 16, 17, 2**50 - 1, 2**50, 2**61 + 12345, (2**31 - 1) ** 2])
    assert nx.isqrt(v).tolist() == [math.isqrt(int(x)) for x in v]


@given(st.integers(0, 2**62 - 1))
def test_isqrt_property(v):
    assert int(nx.isqrt(np.int64(v))) == math.isqrt(v)


def test_layernorm_exact_case():
    # x = [-2, 0, 2] * 2**10: mean 0, var 8/3 * 2**20, std = isqrt(2796202) = 1672.
    x = np.array([[-2048, 0, 2048]])
    g = np.full(3, 1 << (16 - 12))             # gamma 1.0 at out scale 1, shift 16
    y = nx.layernorm(x, g, np.zeros(3, dtype=np.int64), 16, nx.INT32)
    inv = (1 << 46) // 1672
    z = [math.floor((d * inv + (1 << 33)) / 2**34) for d in (-2048, 0, 2048)]
    assert y.tolist() == [[math.floor((v * 16 + 2**15) / 2**16) for v in z]]


def test_layernorm_extremes():
    n = nx.LN_MAX_COLS
    x = np.where(np.arange(n) % 2 == 0, nx.INT32.hi, nx.INT32.lo)[None, :]   # saturates to int24
    y = nx.layernorm(x, np.full(n, 1 << 20 - 1), np.zeros(n, dtype=np.int64), 16, nx.INT16)
    assert y.min() == nx.INT16.lo and y.max() == nx.INT16.hi
    # A constant row has zero variance: output is beta alone.
    y = nx.layernorm(np.full((1, 8), 12345), np.full(8, 100), np.full(8, 7 << 16), 16, nx.INT16)
    assert y.tolist() == [[7] * 8]
    # One column.
    assert nx.layernorm(np.array([[99]]), np.array([5]), np.array([3 << 16]), 16, nx.INT8).tolist() == [[3]]
    with pytest.raises(ValueError):
        nx.layernorm(np.zeros((1, n + 1)), np.zeros(n + 1), np.zeros(n + 1), 16, nx.INT8)


@given(data=st.data())
@settings(max_examples=60)
def test_layernorm_close_to_float(data):
    n = data.draw(st.integers(2, 384))
    # The integer square root resolves the standard deviation to 1 part in std: the quantiser
    # keeps LayerNorm inputs at std >= 2**10 (see docs/numerics.md), as here.
    std = data.draw(st.floats(2.0**11, 2.0**20))
    x = np.round(data.draw(hnp.arrays(np.float64, (1, n), elements=st.floats(-3, 3))) * std).astype(np.int64)
    if x.std() < 2**10:
        return
    gamma = data.draw(hnp.arrays(np.float64, (n,), elements=st.floats(-2, 2)))
    beta = data.draw(hnp.arrays(np.float64, (n,), elements=st.floats(-1, 1)))
    out_scale = 1 / 1024                           # Q10 int32 output
    shift = 16
    g = np.round(gamma / out_scale * 2.0 ** (shift - nx.LN_NORM_FRAC)).astype(np.int64)
    b = np.round(beta / out_scale * 2.0 ** shift).astype(np.int64)
    y = nx.layernorm(x, g, b, shift, nx.INT32) * out_scale
    xf = np.clip(x, -(2**23), 2**23 - 1).astype(np.float64)
    ref = (xf - xf.mean()) / xf.std() * gamma + beta
    # Q12 normalisation, the floor mean and the integer std give a few 1e-3 at most.
    assert np.abs(y - ref).max() <= 4e-3 * (1 + np.abs(gamma).max() * math.sqrt(n) / 8)


# --- gelu ---------------------------------------------------------------------------------------------

def test_gelu_exact_cases():
    one = 1 << nx.GELU_IN_FRAC
    off = nx.GELU_OFFSET
    assert int(nx.gelu(np.int64(0))) == off
    assert int(nx.gelu(np.int64(8 * one))) == 8 * one * (1 << 14) + off      # Phi = 1 beyond 4
    assert int(nx.gelu(np.int64(-8 * one))) == off                          # Phi = 0
    # At a knot the table value is used as it is.
    assert int(nx.gelu(np.int64(one))) == one * int(nx.GELU_PHI_TABLE[16]) + off
    assert int(nx.gelu(np.int64(nx.INT16.hi))) == nx.INT16.hi * (1 << 14) + off
    # The offset is a whole number of input steps.
    assert off == nx.GELU_OFFSET_STEPS << 14 and nx.GELU_MIN == -off / 2**24
    assert abs(nx.GELU_MIN + 0.16997) < 2**-11
    # int32 inputs: passed through beyond the table, capped where x + offset leaves int32.
    assert int(nx.gelu(np.int64(nx.INT16.hi + 1))) == (nx.INT16.hi + 1) * (1 << 14) + off
    assert int(nx.gelu(np.int64(nx.INT32.lo))) == off
    assert int(nx.gelu(np.int64(nx.INT32.hi))) == nx.GELU_OUT_MAX == nx.INT32.hi << 14
    top = nx.INT32.hi - nx.GELU_OFFSET_STEPS
    assert int(nx.gelu(np.int64(top))) == nx.GELU_OUT_MAX
    assert int(nx.gelu(np.int64(top - 1))) == nx.GELU_OUT_MAX - (1 << 14)
    for bad in (nx.INT32.hi + 1, nx.INT32.lo - 1):
        with pytest.raises(ValueError):
            nx.gelu(np.int64(bad))


def test_gelu_large_inputs_are_the_input_itself():
    """Beyond the old int16 Q10 range (|x| = 32) GELU is the input: the offset output is
    (x + offset) << 14 and GELU_ROWS gives the row requantisation of exactly that (the old
    model saturated the input at 32, so 40 and 1000 gave GELU(32))."""
    one = 1 << nx.GELU_IN_FRAC
    x = np.array([[40 * one, 1000 * one, -1000 * one, 32 * one, 5 * one, 0]])
    g = nx.gelu(x)
    np.testing.assert_array_equal(g[0, :2], (x[0, :2] + nx.GELU_OFFSET_STEPS) << 14)
    assert g[0, 2] == nx.GELU_OFFSET
    assert g[0, 0] != nx.gelu(np.int64(nx.INT16.hi))
    scale = nx.Dyadic(np.full(6, 20000), np.full(6, 36))
    q, e = nx.gelu_rows(x, scale, nx.UINT8)
    ref = [round(v * 20000 / 2**28) for v in ((x[0] + nx.GELU_OFFSET_STEPS) << 14)[:2]]
    v = nx.round_shift(((x + nx.GELU_OFFSET_STEPS) << 14) * 20000, 28)
    assert e[0] == 0 and list(v[0, :2]) == ref
    np.testing.assert_array_equal(q[0, :2], np.minimum(nx.round_shift(v[0, :2], 8), 255))
    # The row's largest value decides its exponent: 1000.0 gives e = 0, where the old model's
    # GELU(32) would have left room for more.
    q40, e40 = nx.gelu_rows(x[:, :1], nx.Dyadic(np.full(1, 20000), np.full(1, 36)), nx.UINT8)
    v40 = int(nx.round_shift(np.int64((40 * one + nx.GELU_OFFSET_STEPS) << 14) * 20000, 28))
    k = next(k for k in range(9) if int(nx.round_shift(np.int64(v40), k)) <= 255)
    assert e40[0] == 8 - k and q40[0, 0] == nx.round_shift(np.int64(v40), k)


def test_gelu_never_negative_and_close_to_float_everywhere():
    x = np.arange(nx.INT16.lo, nx.INT16.hi + 1)
    y = nx.gelu(x)
    assert y.min() >= 0 and y.max() < 2**30
    xf = x / (1 << nx.GELU_IN_FRAC)
    erf = np.vectorize(math.erf)
    ref = 0.5 * xf * (1 + erf(xf / math.sqrt(2)))
    got = y / 2.0 ** (nx.GELU_IN_FRAC + nx.GELU_PHI_BITS) + nx.GELU_MIN
    assert np.abs(got - ref).max() <= 6e-4
