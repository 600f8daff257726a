"""The decoder's integer operations (RMSNorm, SiLU and the gated product, rotary positions,
causal softmax over a KV cache, grouped-query attention): exact cases, adversarial rows
(constant, zero, huge, one spike) and error bounds against their float counterparts. Each
bound is the measured worst case over these rows (docs/numerics.md) with a small margin."""

import math

import numpy as np
import pytest

from celosia.sw import numerics as nx

RNG_SEED = 16
#: Measured worst cases (docs/numerics.md, "Decoder operations"), each asserted below with the
#: margin stated where it is used.
RMSNORM_ERROR = 3.1e-4     # |x / rms(x) - z / 2**12|, normalised units (3.03e-4, n = 1536)
SILU_ERROR = 1.71e-4       # |SiLU(x) - silu(x) / 2**16| over every int16 input
GATED_ERROR_LSB = 0.51     # |float - integer| of the gated product, output steps of each row
ROTARY_ERROR_LSB = {"int8": 0.51, "int16": 1.5}   # |float rotation - integer|, output steps
SOFTMAX_ERROR = 2.1e-3     # |p_float - p|, probability units, rows of 1..1024 keys (1.95e-3)
ATTENTION_ERROR_LSB = 4.0  # |float attention - integer context|, context steps (2.3..3.5)
WIDE_SOFTMAX_ERROR = 3.0e-4 # ... with 15-bit probabilities (prob_max 32767; 2.73e-4)
WIDE_ATTENTION_ERROR_LSB = 0.4  # ... int8 steps, with them and an int16 context (0.20..0.34)


def _rows(rng, n: int) -> np.ndarray:
    """int32 rows: random at scales 2**0..2**31, and adversarial ones (constant, zero, one
    spike, alternating int32 extremes, a row of ones, small values)."""
    rows = [np.clip(np.round(rng.standard_normal(n) * 2.0 ** e), nx.INT32.lo, nx.INT32.hi)
            for e in range(0, 32, 3)]
    rows += [np.full(n, 12345), np.full(n, -7), np.zeros(n), np.where(np.arange(n) == n // 2, 1 << 30, 0),
             np.where(np.arange(n) % 2 == 0, nx.INT32.hi, nx.INT32.lo), np.ones(n),
             rng.integers(-3, 4, n), np.where(np.arange(n) == 0, -(1 << 31), 1)]
    return np.array(rows, dtype=np.int64)


# --- RMSNorm -------------------------------------------------------------------------------------

def _rmsnorm_z(x: np.ndarray) -> np.ndarray:
    """The normalised value z / 2**12 (gamma 1.0 at shift 12, int32 out)."""
    n = x.shape[-1]
    return nx.rmsnorm(x, np.full(n, 1 << 12), 12, nx.INT32) / 2.0 ** nx.RMS_NORM_FRAC


def _float_rms(x: np.ndarray) -> np.ndarray:
    xf = x.astype(np.float64)
    rms = np.sqrt(np.mean(xf * xf, axis=-1, keepdims=True))
    return np.divide(xf, rms, out=np.zeros_like(xf), where=rms > 0)


def rmsnorm_errors(seed=RNG_SEED):
    rng = np.random.default_rng(seed)
    return {n: np.abs(_rmsnorm_z(x) - _float_rms(x)).max()
            for n in (1, 2, 64, 576, nx.RMS_MAX_COLS) for x in [_rows(rng, n)]}


def test_rmsnorm_exact_case():
    # [3, 4] -> peak 4 has 3 bits: shifted left by 20; ms = 12.5 * 2**40, rms = isqrt.
    x = np.array([[3, 4]])
    u = x << 20
    rms = math.isqrt(int((u * u).sum()) // 2)
    inv = (1 << 46) // rms
    z = [math.floor((int(v) * inv + (1 << 33)) / 2**34) for v in u[0]]
    assert nx.rmsnorm(x, np.array([1 << 12, 1 << 12]), 12, nx.INT32).tolist() == [z]
    assert z == [round(3 / math.sqrt(12.5) * 4096), round(4 / math.sqrt(12.5) * 4096)]


def test_rmsnorm_adversarial_rows():
    n = 576
    g = np.full(n, 1 << 12)
    assert nx.rmsnorm(np.zeros((1, n)), g, 12, nx.INT32).tolist() == [[0] * n]
    # A constant row is +-1 whatever its value; one spike is sqrt(n) there and 0 elsewhere.
    for c in (1, -7, 12345, nx.INT32.hi, nx.INT32.lo):
        assert set(nx.rmsnorm(np.full((1, n), c), g, 12, nx.INT32)[0]) == {4096 * np.sign(c)}
    spike = np.where(np.arange(n) == 5, -(1 << 31), 0)[None, :]
    y = nx.rmsnorm(spike, g, 12, nx.INT32)
    assert y[0, 5] == -24 * 4096 and np.count_nonzero(y) == 1
    # Saturating output, and a row too long.
    y = nx.rmsnorm(np.where(np.arange(n) % 2, 1, -1)[None, :], np.full(n, 1 << 20), 16, nx.INT16)
    assert y.min() == nx.INT16.lo and y.max() == nx.INT16.hi
    with pytest.raises(ValueError):
        nx.rmsnorm(np.zeros((1, nx.RMS_MAX_COLS + 1)), np.zeros(nx.RMS_MAX_COLS + 1), 12, nx.INT8)


def test_rmsnorm_does_not_see_the_input_scale():
    rng = np.random.default_rng(RNG_SEED)
    x = rng.integers(-1000, 1000, (4, 576))
    gamma = rng.integers(-(1 << 19), 1 << 19, 576)
    y = nx.rmsnorm(x, gamma, 20, nx.INT16)
    for j in range(1, 21):
        assert (nx.rmsnorm(x << j, gamma, 20, nx.INT16) == y).all()


def test_rmsnorm_epsilon_follows_the_row_shift():
    """eps is in units of the input scale squared: scaling the input by 2**j and eps by 4**j
    changes nothing, and it is the float epsilon of the same rows."""
    rng = np.random.default_rng(RNG_SEED)
    x = np.concatenate([rng.integers(-1000, 1000, (3, 576)), np.full((1, 576), 3),
                        np.zeros((1, 576), dtype=np.int64)])
    g = np.full(576, 1 << 12)
    for eps in (1, 40_000, 10**9, (1 << 62) - 1):
        y = nx.rmsnorm(x, g, 12, nx.INT32, eps=eps)
        for j in (1, 9, 21):
            if eps << 2 * j < 1 << 62:
                assert (nx.rmsnorm(x << j, g, 12, nx.INT32, eps=eps << 2 * j) == y).all(), (eps, j)
        xf = x.astype(np.float64)
        ref = xf / np.sqrt(np.mean(xf * xf, axis=-1, keepdims=True) + eps)
        assert np.abs(y / 4096 - ref).max() <= RMSNORM_ERROR
    with pytest.raises(ValueError):
        nx.rmsnorm(x, g, 12, nx.INT32, eps=-1)


def test_rmsnorm_close_to_float():
    """Measured worst case 3.0e-4 of a normalised unit (n = 1536, where |z| reaches
    sqrt(n) = 39; 1.2e-4 up to n = 576): the Q12 rounding (1.2e-4) plus the integer rms, exact
    to 1 part in 2**16.7 after the peak shift."""
    errors = rmsnorm_errors()
    assert max(errors.values()) <= RMSNORM_ERROR


def test_rmsnorm_with_gamma_and_scale_close_to_float():
    rng = np.random.default_rng(RNG_SEED + 1)
    n, shift, out_scale = 576, 16, 1 / 1024
    x = _rows(rng, n)
    gamma = rng.uniform(-3, 3, n)
    g = np.round(gamma / out_scale * 2.0 ** (shift - nx.RMS_NORM_FRAC)).astype(np.int64)
    y = nx.rmsnorm(x, g, shift, nx.INT32) * out_scale
    ref = _float_rms(x) * gamma
    # z's error times |gamma| <= 3, plus gamma's rounding (2**-15 relative, |z| <= 24) and
    # half an output step.
    assert np.abs(y - ref).max() <= 3 * RMSNORM_ERROR + 24 * 3 * 2**-15 + 0.5 * out_scale


# --- SiLU and the gated product --------------------------------------------------------------------

def _float_silu(x):
    return x * 0.5 * (1.0 + np.tanh(0.5 * x))


def silu_error():
    x = np.arange(nx.INT16.lo, nx.INT16.hi + 1)
    return np.abs(nx.silu(x) / 2.0 ** nx.SILU_OUT_FRAC - _float_silu(x / 2.0 ** nx.SILU_IN_FRAC)).max()


def test_silu_exact_cases():
    one = 1 << nx.SILU_IN_FRAC
    assert nx.silu(np.array([0, one, -one, 16 * one, -16 * one, nx.INT16.hi])).tolist() == [
        0, round(1 / (1 + math.exp(-1)) * 2**16), -round(1 / (1 + math.exp(1)) * 2**16),
        16 << 16, 0, nx.INT16.hi << 8]
    with pytest.raises(ValueError):
        nx.silu(np.array([nx.INT16.hi + 1]))


def test_silu_close_to_float_everywhere():
    x = np.arange(nx.INT16.lo, nx.INT16.hi + 1)
    y = nx.silu(x)
    assert silu_error() <= SILU_ERROR * 1.02
    # Its minimum -0.2785 (at x = -1.278), and within int24 for the gated product.
    assert abs(y.min() / 2**16 + 0.27846) < 2e-4 and np.abs(y).max() < 1 << 23


def gated_errors(seed=RNG_SEED):
    """Steps of each output row between float SiLU(g) * u (of the same integers) and the
    requantised integer product, over random and adversarial gate/up rows."""
    rng = np.random.default_rng(seed)
    n = 1536
    gate = np.concatenate([rng.integers(-4096, 4096, (6, n)), np.full((1, n), nx.INT16.hi),
                           np.full((1, n), nx.INT16.lo), np.zeros((1, n), dtype=np.int64),
                           rng.integers(nx.INT16.lo, nx.INT16.hi + 1, (2, n))])
    up = np.concatenate([rng.integers(-127, 128, (6, n)), np.full((1, n), 127),
                         np.full((1, n), -128), rng.integers(-127, 128, (1, n)),
                         np.ones((1, n), dtype=np.int64), rng.integers(-3, 4, (1, n))])
    factor = rng.uniform(0.5, 2.0, n) * 2.0 ** -16 / 8     # real-to-int8 scale of the product
    scale = nx.Dyadic.from_real(factor)
    q, e = nx.gated_silu(gate, up, scale, nx.INT8)
    ref = _float_silu(gate / 2.0 ** nx.SILU_IN_FRAC) * up * 2.0 ** 16 * scale.to_real()
    got = q / 2.0 ** e[:, None]
    step = 2.0 ** -e[:, None]
    inside = np.abs(ref) <= 127.5 * step                  # saturated values aside
    return np.where(inside, np.abs(got - ref) / step, 0).max(), q, e, ref


def test_gated_silu_close_to_float():
    """Half an output step of rounding, and SiLU's 1.7e-4 times |up| <= 128 at the scale."""
    err, q, e, ref = gated_errors()
    assert err <= GATED_ERROR_LSB
    # Every row with a nonzero value uses the upper half of int8 (its exponent), a zero gate
    # row is zero.
    peak = np.abs(q).max(axis=1)
    assert (peak[peak > 0] >= 64).all() and peak[8] == 0 and q.min() >= -128 and q.max() <= 127
    with pytest.raises(ValueError):
        nx.gated_silu(np.zeros((1, 2)), np.array([[0, 128]]), nx.Dyadic.from_real(1e-3), nx.INT8)


# --- Rotary positions --------------------------------------------------------------------------

def _float_rotate(x, positions, head_dim, theta):
    ang = positions[:, None] * theta ** (-np.arange(0, head_dim, 2) / head_dim)[None, :]
    x1, x2 = x[..., : head_dim // 2], x[..., head_dim // 2:]
    return np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang),
                           x2 * np.cos(ang) + x1 * np.sin(ang)], axis=-1)


def rotary_errors(seed=RNG_SEED):
    rng = np.random.default_rng(seed)
    dh, theta, npos = 64, 100000.0, 8192
    tables = nx.rope_tables(theta, dh, npos)
    positions = np.concatenate([[0, 1, 2, npos - 1], rng.integers(0, npos, 60)])
    t = len(positions)
    xs = [rng.integers(-90, 91, (3, t, dh)),                 # int8 whose pairs stay within 127
          rng.integers(-(1 << 14), 1 << 14, (3, t, dh)),     # int16 rows
          np.full((1, t, dh), 89), np.zeros((1, t, dh), dtype=np.int64)]
    worst = {}
    for kind, x in zip(("int8", "int16", "int8", "int8"), xs):
        y = nx.rotary(x, positions, tables, nx.INT16)
        err = np.abs(y - _float_rotate(x.astype(np.float64), positions, dh, theta)).max()
        worst[kind] = max(worst.get(kind, 0.0), err)
    return worst


def test_rope_tables():
    cos, sin = nx.rope_tables(10000.0, 8, 3)
    assert cos.shape == sin.shape == (3, 4)
    assert cos[0].tolist() == [1 << 14] * 4 and sin[0].tolist() == [0] * 4
    assert sin[1, 0] == round(math.sin(1.0) * 2**14) and cos[2, 1] == round(math.cos(0.2) * 2**14)
    assert nx.rope_tables(10000.0, 8, 3)[0] is cos                 # cached, read-only
    with pytest.raises(ValueError):
        cos[0, 0] = 1
    with pytest.raises(ValueError):
        nx.rope_tables(10000.0, 7, 3)


def test_rotary_exact_cases():
    tables = nx.rope_tables(10000.0, 4, 16)
    x = np.array([[3, -5, 7, 11], [3, -5, 7, 11]])
    y = nx.rotary(x, np.array([0, 1]), tables, nx.INT8)
    assert y[0].tolist() == x[0].tolist()                         # position 0 is no turn
    c, s = tables[0][1], tables[1][1]
    want = [nx.round_shift(3 * c[0] - 7 * s[0], 14), nx.round_shift(-5 * c[1] - 11 * s[1], 14),
            nx.round_shift(7 * c[0] + 3 * s[0], 14), nx.round_shift(11 * c[1] - 5 * s[1], 14)]
    assert y[1].tolist() == [int(v) for v in want]
    # Saturation at the int8 corners: a pair of (127, 127) turned by 45 degrees is 179.6.
    t45 = (np.array([[0], [11585]]), np.array([[0], [11585]]))   # cos = sin = 2**14 / sqrt(2)
    assert nx.rotary(np.array([[127, 127]]), np.array([1]), t45, nx.INT8).tolist() == [[0, 127]]
    for bad in (np.array([0, 16]), np.array([-1, 0]), np.array([0])):
        with pytest.raises(ValueError):
            nx.rotary(x, bad, tables, nx.INT8)


def test_rotary_close_to_float():
    """Half a step of the final rounding plus the Q14 table error, (|x1| + |x2|) * 2**-15 at
    most: 0.5055 steps for int8 rows, 1.5 for int16 rows below 2**14 (measured 1.37)."""
    errors = rotary_errors()
    assert all(errors[kind] <= bound for kind, bound in ROTARY_ERROR_LSB.items())


def test_rotary_keeps_relative_positions():
    """q_m . k_n depends on m - n alone (up to the rounding of both rotations)."""
    rng = np.random.default_rng(RNG_SEED)
    tables = nx.rope_tables(100000.0, 64, 8192)
    q, k = rng.integers(-90, 91, (2, 1, 64))
    dots = [int(nx.rotary(q, np.array([m]), tables, nx.INT16)[0]
                @ nx.rotary(k, np.array([m - 5]), tables, nx.INT16)[0]) for m in (5, 700, 8000)]
    assert max(dots) - min(dots) <= 0.01 * np.abs(q).sum() * 90


# --- Causal softmax over a KV cache ------------------------------------------------------------------

def _float_softmax(s, f, valid):
    z = np.where(valid, s * f, -np.inf)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.where(valid, np.exp(z), 0.0)
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_scale(f):
    return nx.Dyadic.from_real(f * math.log2(math.e) * (1 << nx.EXP_FRAC_BITS))


def softmax_errors(seed=RNG_SEED, prob_max=nx.PROB_MAX):
    """Probability error of the causal softmax with a cache offset, rows of 1..1024 keys."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for keys, offset, f in ((8, 0, 1e-3), (64, 56, 3e-4), (520, 500, 1e-4), (1024, 1000, 2e-5),
                            (300, 299, 1e-2)):
        tokens = keys - offset
        s = np.concatenate([rng.integers(-(1 << 16), 1 << 16, (tokens, keys)),
                            np.full((1, keys), 77), np.zeros((1, keys), dtype=np.int64),
                            np.where(np.arange(keys) % 2, nx.INT32.hi, nx.INT32.lo)[None, :]])[:tokens]
        p, x = nx.softmax(s, _softmax_scale(f), causal_offset=offset, prob_max=prob_max)
        assert p.min() >= 0 and p.max() <= prob_max
        valid = np.arange(keys)[None, :] <= offset + np.arange(tokens)[:, None]
        prob = p / prob_max / 2.0 ** x[:, None]
        worst = max(worst, np.abs(prob - _float_softmax(s.astype(np.float64), f, valid)).max())
    return worst


def test_causal_softmax_with_an_offset_is_the_prefill_s_rows():
    """Rows of a decode step over a cache of ``offset`` tokens are the last rows of the
    prefill of all the tokens, bit for bit."""
    rng = np.random.default_rng(RNG_SEED)
    scale = _softmax_scale(1e-3)
    s = rng.integers(-(1 << 15), 1 << 15, (40, 40))
    p, x = nx.softmax(s, scale, causal_offset=0)
    for offset in (0, 1, 17, 39):
        q, y = nx.softmax(s[offset:], scale, causal_offset=offset)
        assert (q == p[offset:]).all() and (y == x[offset:]).all()
        assert (q[:, offset + 1:][np.triu_indices(40 - offset - 1)] == 0).all()   # the future


def test_causal_softmax_close_to_float():
    """Measured worst case 1.95e-3: half a uint8 step of the largest probability plus the
    exp table and the row-sum rounding (docs/numerics.md)."""
    assert softmax_errors() <= SOFTMAX_ERROR


# --- Grouped-query attention ------------------------------------------------------------------------

def _qkv(rng, heads, kv_heads, tokens, keys, dh=64):
    return (rng.integers(-127, 128, (heads, tokens, dh)), rng.integers(-127, 128, (kv_heads, keys, dh)),
            rng.integers(-127, 128, (kv_heads, keys, dh)))


def _scales(rng, heads, dh=64):
    return (_softmax_scale(rng.uniform(2e-4, 1e-3, heads)),
            nx.Dyadic.from_real(rng.uniform(0.5, 1.5, heads * dh) / 255 * 4))


def test_kv_head():
    assert [nx.kv_head(h, 9, 3) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [nx.kv_head(h, 4, 4) for h in range(4)] == [0, 1, 2, 3]
    for bad in ((9, 9, 3), (0, 9, 2), (-1, 4, 2)):
        with pytest.raises(ValueError):
            nx.kv_head(*bad)


def test_grouped_query_attention_is_multi_head_with_shared_keys_and_values():
    rng = np.random.default_rng(RNG_SEED)
    q, k, v = _qkv(rng, 9, 3, 5, 12)
    sm, cs = _scales(rng, 9)
    ctx = nx.attention(q, k, v, sm, cs, causal_offset=7)
    mha = nx.attention(q, np.repeat(k, 3, axis=0), np.repeat(v, 3, axis=0), sm, cs, causal_offset=7)
    assert (ctx == mha).all() and ctx.shape == (5, 9 * 64)
    # The per-head composition, spelled out for head 4 (key/value head 1).
    p, x = nx.softmax(nx.matmul(q[4], k[1].T), nx.Dyadic(sm.multiplier[4], sm.shift[4]), 7)
    want = nx.requantize(nx.matmul(p, v[1], row_shift=x),
                         nx.Dyadic(cs.multiplier[256:320], cs.shift[256:320]), nx.INT8)
    assert (ctx[:, 256:320] == want).all()
    # A decode step over the cache is the prefill's last row.
    full = nx.attention(q, k[:, :5], v[:, :5], sm, cs, causal_offset=0)
    step = nx.attention(q[:, 4:], k[:, :5], v[:, :5], sm, cs, causal_offset=4)
    assert (step == full[4:]).all()
    with pytest.raises(ValueError):
        nx.attention(q, k[:2], v[:2], sm, cs)


def attention_error(seed=RNG_SEED, wide=False):
    """Context steps between float attention (softmax of the same integer scores, the same
    v) and the integer context, 9 query heads over 3 key/value heads; ``wide``: int16
    probabilities (two passes through v) and an int16 context, its steps counted as int8's
    (2**8 of them)."""
    rng = np.random.default_rng(seed)
    heads, kv_heads, tokens, keys, dh = 9, 3, 6, 40, 64
    q, k, v = _qkv(rng, heads, kv_heads, tokens, keys)
    f = rng.uniform(2e-4, 1e-3, heads)
    sm = _softmax_scale(f)
    cs = nx.Dyadic.from_real(rng.uniform(0.5, 1.5, heads * dh) / 255 * 4)
    if wide:
        wide_cs = nx.Dyadic.from_real(cs.to_real() * 2.0 ** 16 * nx.PROB_MAX / nx.INT16.hi)
        ctx = nx.attention(q, k, v, sm, wide_cs, causal_offset=keys - tokens, out=nx.INT16,
                           prob_max=nx.INT16.hi) / 2.0 ** 8
    else:
        ctx = nx.attention(q, k, v, sm, cs, causal_offset=keys - tokens)
    valid = np.arange(keys)[None, :] <= keys - tokens + np.arange(tokens)[:, None]
    ref = np.empty(ctx.shape)
    for h in range(heads):
        g = h // 3
        fh = sm.to_real()[h] / math.log2(math.e) / (1 << nx.EXP_FRAC_BITS)
        p = _float_softmax((q[h] @ k[g].T).astype(np.float64), fh, valid)
        cols = slice(h * dh, (h + 1) * dh)
        ref[:, cols] = (p * 255) @ v[g] * cs.to_real()[cols]
    return np.abs(ctx - np.clip(ref, -128, nx.INT16.hi / 2.0 ** 8 if wide else 127)).max()


def test_grouped_query_attention_close_to_float():
    """Half a step of the final rounding plus the uint8 probabilities' error carried through
    v: random full-range int8 v is the worst case for it (measured 2.3 to 3.5 steps over
    four seeds, of a context range of +-127)."""
    assert attention_error() <= ATTENTION_ERROR_LSB


def test_wide_softmax_and_attention_close_to_float():
    """Probabilities of 15 bits (prob_max 32767, two passes through v): the error is the exp
    table's and the row sum's (measured in docs/numerics.md), the context within a small part
    of an int8 step."""
    assert softmax_errors(prob_max=nx.INT16.hi) <= WIDE_SOFTMAX_ERROR
    assert attention_error(wide=True) <= WIDE_ATTENTION_ERROR_LSB


def test_wide_attention_operands_compose_as_stated():
    """An int16 q (``wide_q``) or an int16 k (``wide_k``) of int8 values shifted by 8 gives
    the int8 attention bit for bit; int16 probabilities go through matmul_wide."""
    rng = np.random.default_rng(RNG_SEED)
    q, k, v = _qkv(rng, 9, 3, 5, 12)
    sm, cs = _scales(rng, 9)
    base = nx.attention(q, k, v, sm, cs, causal_offset=7)
    assert (nx.attention(q << 8, k, v, sm, cs, causal_offset=7, wide_q=True) == base).all()
    assert (nx.attention(q, k << 8, v, sm, cs, causal_offset=7, wide_k=True) == base).all()
    ctx = nx.attention(q, k, v, sm, cs, causal_offset=7, out=nx.INT16, prob_max=nx.INT16.hi)
    p, x = nx.softmax(nx.matmul(q[4], k[1].T), nx.Dyadic(sm.multiplier[4], sm.shift[4]), 7,
                      prob_max=nx.INT16.hi)
    want = nx.requantize(nx.matmul_wide(p, v[1], row_shift=x),
                         nx.Dyadic(cs.multiplier[256:320], cs.shift[256:320]), nx.INT16)
    assert (ctx[:, 256:320] == want).all() and p.max() > nx.UINT8.hi


# --- The wide (int16) matmul operand -------------------------------------------------------------

def _wide_reference(a, b, e) -> list:
    """matmul_wide in Python integers: each int16 value split by divmod into its high byte
    and low byte, the two products summed exactly, each rounded half up by floor division."""
    out = []
    for row, s in zip(np.asarray(a).tolist(), np.asarray(e).tolist()):
        split = [divmod(v, 256) for v in row]
        res = []
        for col in np.asarray(b).T.tolist():
            hi = sum(h * w for (h, _), w in zip(split, col))
            lo = sum(l * w for (_, l), w in zip(split, col))
            res.append((hi + (1 << s >> 1)) // (1 << s) + (lo + (1 << (s + 7))) // (1 << (s + 8)))
        out.append(res)
    return out


def _wide_rows(rng, k: int) -> np.ndarray:
    """int16 rows: random at several scales and adversarial ones (both extremes, -1 (high byte
    -1, low byte 255), byte boundaries 255/256 and -256/-257, zero, alternating extremes)."""
    rows = [rng.integers(-(1 << b), 1 << b, k) for b in (4, 8, 12, 15)]
    rows += [np.full(k, nx.INT16.hi), np.full(k, nx.INT16.lo), np.full(k, -1),
             np.where(np.arange(k) % 2, 255, 256), np.where(np.arange(k) % 2, -256, -257),
             np.zeros(k, dtype=np.int64),
             np.where(np.arange(k) % 2, nx.INT16.hi, nx.INT16.lo)]
    return np.array(rows, dtype=np.int64)


def test_matmul_wide_exact_against_a_python_reference():
    rng = np.random.default_rng(RNG_SEED)
    for k in (1, 3, 64, 1536):
        a = _wide_rows(rng, k)
        b = np.concatenate([rng.integers(-128, 128, (k, 3)), np.full((k, 1), -128),
                            np.full((k, 1), 127), np.where(np.arange(k) % 2, 127, -128)[:, None]],
                           axis=1)
        for e in (np.zeros(len(a), dtype=np.int64), rng.integers(0, nx.ROW_EXP_MAX + 1, len(a)),
                  np.full(len(a), nx.ROW_EXP_MAX)):
            got = nx.matmul_wide(a, b, row_shift=e)
            assert got.tolist() == _wide_reference(a, b, e)
            # ... within one unit of the exact product at 2**(8 + e) steps of A.
            exact = (a.astype(object) @ b.astype(object)).astype(np.float64)
            exact /= 2.0 ** (8 + e[:, None])
            assert np.abs(got - exact).max() <= 1.0
    # The longest row the accelerator takes at its extremes: no int32 saturation anywhere.
    k = 1 << 16
    a = np.full((2, k), nx.INT16.lo)
    a[1] = nx.INT16.hi
    b = np.full((k, 2), -128)
    b[:, 1] = 127
    assert nx.matmul_wide(a, b).tolist() == [[128 * 128 * k, -128 * 127 * k],
                                             [-32767 * 128 * k // 256, 32767 * 127 * k // 256]]
    # Without a row shift it is the rounded product: int8 values give matmul's result / 256.
    a8 = rng.integers(-128, 128, (4, 9))
    b8 = rng.integers(-128, 128, (9, 5))
    assert np.array_equal(nx.matmul_wide(a8 << 8, b8), nx.matmul(a8, b8))


def test_matmul_wide_rejects_bad_operands():
    with pytest.raises(ValueError, match="int16"):
        nx.matmul_wide(np.array([[nx.INT16.hi + 1]]), np.array([[1]]))
    with pytest.raises(ValueError, match="row_shift"):
        nx.matmul_wide(np.array([[1]]), np.array([[1]]), row_shift=np.array([nx.ROW_EXP_MAX + 1]))
    with pytest.raises(ValueError, match="B operand"):
        nx.matmul_wide(np.array([[1]]), np.array([[128]]))


def test_gated_silu_to_a_wide_operand():
    """The gated product as int16 with row exponents: every nonzero row's peak in the upper
    half of int16 (or saturated), within half an output step and SiLU's error of float."""
    rng = np.random.default_rng(RNG_SEED)
    n = 1536
    gate = np.concatenate([rng.integers(-4096, 4096, (3, n)), rng.integers(-64, 64, (1, n)),
                           np.full((1, n), nx.INT16.hi), np.zeros((1, n), dtype=np.int64)])
    up = np.concatenate([rng.integers(-127, 128, (4, n)), np.full((1, n), -128),
                         rng.integers(-3, 4, (1, n))])
    factor = rng.uniform(0.5, 2.0, n) * 2.0 ** -12        # |p| < 2**27 -> about 2**15
    q, e = nx.gated_silu(gate, up, nx.Dyadic.from_real(factor), nx.INT16)
    scale = nx.Dyadic.from_real(factor).to_real()
    ref = _float_silu(gate / 2.0 ** nx.SILU_IN_FRAC) * up * 2.0 ** 16 * scale
    step = 2.0 ** -e[:, None]
    inside = np.abs(ref) <= (nx.INT16.hi + 0.5) * step
    # Half a step of rounding, SiLU's 1.71e-4 times |up| <= 128 at the row's scale.
    bound = 0.5 + SILU_ERROR * 128 * 2.0 ** 16 * scale.max() * 2.0 ** e
    assert (np.where(inside, np.abs(q * step - ref) / step, 0).max(axis=1) <= bound).all()
    peak = np.abs(q).max(axis=1)
    assert (peak[:4] >= 1 << 14).all() and e[3] > 0 and peak[5] == 0
    assert q[4].min() == nx.INT16.lo and q.max() <= nx.INT16.hi      # saturated, not wrapped


def test_gated_silu_with_a_wide_up():
    """An int16 up (``wide_up``: the product rounded by 2**8 before the requantisation) of
    int8 values shifted by 8 is the int8 up bit for bit; finer values stay within half an
    output step and SiLU's error of float; up beyond int16 is refused."""
    rng = np.random.default_rng(RNG_SEED)
    n = 1536
    gate = np.concatenate([rng.integers(-4096, 4096, (3, n)), np.full((1, n), nx.INT16.hi)])
    up8 = np.concatenate([rng.integers(-128, 128, (3, n)), np.full((1, n), -128)])
    scale = nx.Dyadic.from_real(rng.uniform(0.5, 2.0, n) * 2.0 ** -12)
    q8, e8 = nx.gated_silu(gate, up8, scale, nx.INT16)
    q16, e16 = nx.gated_silu(gate, up8 << 8, scale, nx.INT16, wide_up=True)
    assert (q16 == q8).all() and (e16 == e8).all()
    up = rng.integers(nx.INT16.lo, nx.INT16.hi + 1, (4, n))
    q, e = nx.gated_silu(gate, up, scale, nx.INT16, wide_up=True)
    ref = (_float_silu(gate / 2.0 ** nx.SILU_IN_FRAC) * up / 2.0 ** 8 * 2.0 ** 16
           * scale.to_real())
    step = 2.0 ** -e[:, None]
    inside = np.abs(ref) <= (nx.INT16.hi + 0.5) * step
    # Half a step of the final rounding, half a unit of the product's rounding by 2**8 and
    # SiLU's error times |up| < 2**15, at the row's scale.
    f = scale.to_real().max() * 2.0 ** e
    bound = 0.5 + 0.5 * f + SILU_ERROR * 2.0 ** 15 * 2.0 ** 8 * f
    assert (np.where(inside, np.abs(q * step - ref) / step, 0).max(axis=1) <= bound).all()
    with pytest.raises(ValueError, match="int16"):
        nx.gated_silu(gate[:1], np.full((1, n), nx.INT16.hi + 1), scale, nx.INT16, wide_up=True)
