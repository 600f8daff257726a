"""One matmul for the engine: operands, golden result, memory image and command.

The image follows the layout contract of ``celosia.hdl.params``. Every byte the engine should
not read or write (row padding, gaps) is filled with random garbage, so a missing mask or an
out-of-bounds write shows up as a wrong result or a changed byte. A matrix may be placed as a
column slice of a wider one (``MatmulJob.views``), as attention's head slices are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from celosia.hdl.params import (ADDEND_BYTES, OUT_BYTES, OUT_RANGE, PARAM_BIAS_OFFSET,
                                PARAM_MULT_OFFSET, PARAM_RECORD_BYTES, PARAM_SHIFT_OFFSET,
                                AddendMode, OutFormat, pack_command)
from celosia.sw.numerics import (INT8, INT16, INT32, MULT_BITS, ROW_EXP_MAX, SHIFT_MAX, UINT8,
                                 Dyadic, matmul, requantize, residual_add)

__all__ = ["MatmulJob", "random_job", "MemoryImage"]


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


@dataclass
class MatmulJob:
    a: np.ndarray                       # M x K, int8 or uint8 values
    b: np.ndarray                       # K x N, int8
    a_unsigned: bool = False
    bias: np.ndarray | None = None      # N int32
    scale: Dyadic | None = None         # per-column multiplier and shift: requantise
    out_fmt: OutFormat = OutFormat.INT8
    zero_point: int = 0
    addend_mode: AddendMode = AddendMode.NONE
    addend: np.ndarray | None = None    # M x N int32 (ACC32) or int16 (RESIDUAL16)
    addend_shift: int = 0
    row_shift: np.ndarray | None = None # M exponents 0..ROW_EXP_MAX (None: no row shift)
    b_transposed: bool = False          # B stored N x K in memory
    #: Column-slice placement per matrix ("a", "b", "c", "d"): (byte offset in the row, row
    #: bytes of the wide matrix); the stride is the row bytes rounded up to the port width.
    views: dict = field(default_factory=dict)

    @property
    def shape(self):
        return self.a.shape[0], self.a.shape[1], self.b.shape[1]

    @property
    def requant(self) -> bool:
        return self.scale is not None

    @property
    def use_params(self) -> bool:
        return self.bias is not None or self.scale is not None

    @property
    def out_bytes(self) -> int:
        return OUT_BYTES[self.out_fmt] if self.requant else 4

    def golden(self) -> np.ndarray:
        acc = self.addend if self.addend_mode == AddendMode.ACC32 else None
        c = matmul(self.a, self.b, self.bias, acc, row_shift=self.row_shift)
        if self.addend_mode == AddendMode.RESIDUAL16:
            c = residual_add(c, self.addend, self.addend_shift)
        if self.requant:
            c = requantize(c, self.scale, OUT_RANGE[self.out_fmt], self.zero_point)
        return c

    def compulsory_bytes(self) -> int:
        """Bytes a perfect engine moves: each operand read once, the result written once."""
        m, k, n = self.shape
        total = m * k + k * n + m * n * self.out_bytes
        if self.use_params:
            total += n * PARAM_RECORD_BYTES
        total += m * n * ADDEND_BYTES[self.addend_mode]
        if self.row_shift is not None:
            total += m
        return total

    def image(self, port_bytes: int, *, seed: int = 0, base: int = 0) -> "MemoryImage":
        return MemoryImage(self, port_bytes, seed=seed, base=base)


class MemoryImage:
    """The job laid out in a flat byte array at ``base`` (a multiple of the port width)."""

    def __init__(self, job: MatmulJob, port_bytes: int, *, seed: int = 0, base: int = 0):
        self.job = job
        self.port_bytes = w = port_bytes
        m, k, n = job.shape
        rng = np.random.default_rng(seed)
        align = max(w, 64)
        cursor = _align(base, align)
        regions = {}

        def region(name, rows, row_bytes):
            nonlocal cursor
            offset, wide = job.views.get(name, (0, row_bytes))
            assert offset + row_bytes <= wide, (name, offset, row_bytes, wide)
            stride = _align(wide, w)
            # (address of element 0, stride, rows, row bytes)
            regions[name] = (cursor + offset, stride, rows, row_bytes)
            cursor = _align(cursor + stride * rows, align) + align   # a gap after each
            return regions[name]

        region("a", m, k)
        if job.b_transposed:
            region("b", n, k)
        else:
            region("b", k, n)
        if job.row_shift is not None:
            region("e", 1, m)
        if job.use_params:
            region("p", 1, n * PARAM_RECORD_BYTES)
        if job.addend_mode != AddendMode.NONE:
            region("d", m, n * ADDEND_BYTES[job.addend_mode])
        region("c", m, n * job.out_bytes)
        self.base = base
        self.size = cursor
        self.regions = regions
        self.data = rng.integers(0, 256, size=cursor, dtype=np.uint8)
        self.data[:base] = 0

        def put(name, matrix, dtype):
            addr, stride, rows, row_bytes = regions[name]
            raw = np.ascontiguousarray(matrix.astype(dtype)).view(np.uint8).reshape(rows, row_bytes)
            for r in range(rows):
                self.data[addr + r * stride: addr + r * stride + row_bytes] = raw[r]

        put("a", job.a, np.uint8 if job.a_unsigned else np.int8)
        put("b", job.b.T if job.b_transposed else job.b, np.int8)
        if job.row_shift is not None:
            put("e", np.asarray(job.row_shift).reshape(1, m), np.uint8)
        if job.use_params:
            rec = np.zeros((n, PARAM_RECORD_BYTES), dtype=np.uint8)
            bias = job.bias if job.bias is not None else np.zeros(n, dtype=np.int64)
            mult = job.scale.multiplier if job.scale is not None else np.zeros(n, dtype=np.int64)
            shift = job.scale.shift if job.scale is not None else np.zeros(n, dtype=np.int64)
            rec[:, PARAM_BIAS_OFFSET:PARAM_BIAS_OFFSET + 4] = (
                np.broadcast_to(bias, (n,)).astype("<i4").view(np.uint8).reshape(n, 4))
            rec[:, PARAM_MULT_OFFSET:PARAM_MULT_OFFSET + 2] = (
                np.broadcast_to(mult, (n,)).astype("<u2").view(np.uint8).reshape(n, 2))
            rec[:, PARAM_SHIFT_OFFSET] = np.broadcast_to(shift, (n,)).astype(np.uint8)
            put("p", rec.reshape(1, -1), np.uint8)
        if job.addend_mode == AddendMode.ACC32:
            put("d", job.addend, "<i4")
        elif job.addend_mode == AddendMode.RESIDUAL16:
            put("d", job.addend, "<i2")
        self.initial = self.data.copy()

    def command(self) -> int:
        job = self.job
        m, k, n = job.shape
        r = self.regions
        fields = dict(
            m=m, k=k, n=n,
            a_addr=r["a"][0], a_stride=r["a"][1],
            b_addr=r["b"][0], b_stride=r["b"][1],
            c_addr=r["c"][0], c_stride=r["c"][1],
            a_unsigned=int(job.a_unsigned), use_params=int(job.use_params),
            requant=int(job.requant), out_fmt=int(job.out_fmt),
            addend=int(job.addend_mode), addend_shift=job.addend_shift,
            zero_point=job.zero_point,
            b_transposed=int(job.b_transposed),
        )
        if "e" in r:
            fields.update(row_shift=1, e_addr=r["e"][0])
        if "p" in r:
            fields["p_addr"] = r["p"][0]
        if "d" in r:
            fields.update(d_addr=r["d"][0], d_stride=r["d"][1])
        return pack_command(**fields)

    def result(self, data: np.ndarray | bytes) -> np.ndarray:
        """Read C back from a memory image ``data`` (same addressing as this one)."""
        data = np.frombuffer(bytes(data), dtype=np.uint8) if not isinstance(data, np.ndarray) else data
        job = self.job
        m, _, n = job.shape
        addr, stride, rows, row_bytes = self.regions["c"]
        dtype = {1: np.uint8 if job.requant and job.out_fmt == OutFormat.UINT8 else np.int8,
                 2: np.dtype("<i2"), 4: np.dtype("<i4")}[job.out_bytes]
        out = np.empty((m, n), dtype=np.int64)
        for i in range(m):
            out[i] = data[addr + i * stride: addr + i * stride + row_bytes].view(dtype)
        return out

    def untouched_outside_c(self, data: np.ndarray) -> bool:
        """True if every byte except C's elements still holds its initial value."""
        data = np.asarray(data, dtype=np.uint8)
        expect = self.initial.copy()
        addr, stride, rows, row_bytes = self.regions["c"]
        for i in range(rows):
            expect[addr + i * stride: addr + i * stride + row_bytes] = \
                data[addr + i * stride: addr + i * stride + row_bytes]
        return bool(np.array_equal(expect, data[:len(expect)]))


def random_job(rng: np.random.Generator, m: int, k: int, n: int, *, a_unsigned=None,
               requant=True, out_fmt=None, bias=True, addend_mode=AddendMode.NONE,
               extremes=False, row_shift=False, b_transposed=False) -> MatmulJob:
    """A random job; ``extremes`` draws operands from {-128, 127, 255} to stress saturation.
    ``row_shift`` adds random per-row exponents (0 and ROW_EXP_MAX included)."""
    if a_unsigned is None:
        a_unsigned = bool(rng.integers(2))
    a_range = UINT8 if a_unsigned else INT8
    if extremes:
        a = rng.choice([a_range.lo, a_range.hi], size=(m, k))
        b = rng.choice([INT8.lo, INT8.hi], size=(k, n))
    else:
        a = rng.integers(a_range.lo, a_range.hi + 1, size=(m, k))
        b = rng.integers(INT8.lo, INT8.hi + 1, size=(k, n))
    job = MatmulJob(a=a, b=b, a_unsigned=a_unsigned, b_transposed=bool(b_transposed))
    if row_shift:
        job.row_shift = rng.choice([0, ROW_EXP_MAX, int(rng.integers(ROW_EXP_MAX + 1))], size=m)
        job.row_shift = np.where(rng.random(m) < 0.5, rng.integers(0, ROW_EXP_MAX + 1, size=m),
                                 job.row_shift)
    if bias:
        job.bias = rng.choice([rng.integers(-(1 << 20), 1 << 20, size=n),
                               rng.integers(INT32.lo, INT32.hi + 1, size=n)])
    if requant:
        job.out_fmt = OutFormat(rng.integers(4)) if out_fmt is None else OutFormat(out_fmt)
        # Factors that land results around the output range, plus some extremes.
        target = {OutFormat.INT8: 1 << 7, OutFormat.UINT8: 1 << 8, OutFormat.INT16: 1 << 15,
                  OutFormat.INT32: 1 << 31}[job.out_fmt]
        spread = float(np.sqrt(k)) * (1 << 14) + 1
        factor = target / spread * np.exp2(rng.uniform(-3, 3, size=n))
        job.scale = Dyadic.from_real(np.minimum(factor, float(1 << (MULT_BITS - 1))))
        job.scale = Dyadic(job.scale.multiplier, np.minimum(job.scale.shift, SHIFT_MAX))
        lo, hi = OUT_RANGE[job.out_fmt].lo, OUT_RANGE[job.out_fmt].hi
        job.zero_point = int(rng.integers(max(lo, -200), min(hi, 200) + 1))
    if addend_mode == AddendMode.ACC32:
        job.addend_mode = addend_mode
        job.addend = rng.integers(INT32.lo, INT32.hi + 1, size=(m, n))
    elif addend_mode == AddendMode.RESIDUAL16:
        job.addend_mode = addend_mode
        job.addend = rng.integers(INT16.lo, INT16.hi + 1, size=(m, n))
        job.addend_shift = int(rng.integers(0, 17))
    return job
