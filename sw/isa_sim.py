"""The ``isa`` backend: a functional simulator of Celosia's instruction set, in NumPy.

:class:`IsaMachine` fetches and decodes every instruction from the bytes in its memory (so it
tests the encoding), checks it as docs/isa.md says the controller does (shapes, alignment,
modes, every byte against the memory window, parameter values), and computes its results with
:mod:`celosia.sw.numerics` only. It never writes outside the window: every access is checked
before anything is written.

Besides the architectural state it keeps

* ``hazards``: accesses that the rules of docs/isa.md leave unordered (a command reading what
  an unsynchronised command writes, a command writing what it reads itself, an instruction
  fetched from bytes an unsynchronised command writes, ...): a correct program has none, and
  the memory a program with hazards leaves may differ between this simulator and the RTL;
* an estimate of cycles: each unit runs its commands in order, MATMUL at the ideal rate of
  an N x N array behind a W-byte port (``max(compute, memory)`` per command), VECTOR by a
  model fitted to the RTL's cycles (:meth:`IsaMachine._vector_cycles`), overlapping the other
  unit until a SYNC; this is a model, not a measurement (docs/isa.md, "The cycle model"). The memory
  traffic counters (MEM_READS, MEM_WRITES) are not modelled and read 0.

Its memory never fails: the memory-fault codes (``MEM_READ_ERROR``, ``MEM_WRITE_ERROR``,
``MEM_TIMEOUT``: an AXI error response or a silent memory, docs/reliability.md) come only from
the RTL's AXI master, and a comparison against this simulator cannot include them.

:class:`IsaBackend` wraps the machine in the driver's :class:`celosia.sw.driver.Backend`
interface (CSR and memory access).
"""

from __future__ import annotations

import time

import numpy as np

from celosia.hdl import isa
from celosia.hdl.isa import (CSR, INSTR_BYTES, RES_SHIFT_MAX, VEC_MAX_COLS, VEC_PARAM_DTYPE,
                             WINDOW_ALIGN, ENGINE_PARAM_DTYPE, ErrorCode,
                             Instruction, MachineConfig, Opcode, Unit, VecOp, footprint)
from celosia.hdl.params import ADDEND_BYTES, K_MAX, OUT_BYTES, OUT_RANGE, AddendMode, OutFormat

from . import numerics as nx
from .compiler import DTYPE

__all__ = ["IsaStop", "IsaMachine", "IsaBackend", "matmul_spans", "independent_matmuls"]

_VEC_OPS = {op.value for op in isa.UNIT_OPS}
_DECODER_OPS = {op.value for op in isa.DECODER_OPS}
#: The vector engine's timing, per operation: (cycles a command costs beyond its beats, passes
#: over a row's unit beats that follow the last row's read). Fitted to the Verilated RTL's
#: cycles for single commands of every operation and shape (docs/isa.md, "The cycle model").
_VEC_TIMING = {
    VecOp.SOFTMAX: (86, 2), VecOp.SOFTMAX_DITHER: (86, 2), VecOp.SOFTMAX_WIDE: (88, 2),
    VecOp.LAYERNORM: (191, 2), VecOp.RMSNORM: (171, 3),
    VecOp.REQUANT_ROWS: (101, 1), VecOp.GELU_ROWS: (101, 1), VecOp.SILU_GATE: (85, 1),
    VecOp.GELU: (95, 0), VecOp.REQUANT: (95, 0), VecOp.RESIDUAL: (71, 0),
    VecOp.RESIDUAL32: (58, 0), VecOp.WIDE_SPLIT: (76, 0), VecOp.WIDE_LO: (85, 0),
    VecOp.ROTARY: (57, 0),
}
#: Cycles between a vector command's last write and a SYNC on it retiring.
_VEC_DRAIN = 44
#: The same for a MATMUL: the array's and the epilogue's pipeline, the last results' writes.
_MATMUL_DRAIN = 125


class IsaStop(Exception):
    """An instruction failed a check; ``code`` is the ErrorCode."""

    def __init__(self, code: ErrorCode, detail: str = ""):
        super().__init__(f"{code.name}: {detail}" if detail else code.name)
        self.code = code
        self.detail = detail


def matmul_spans(f: dict) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """The byte ranges ``[lo, hi)`` a MATMUL's fields ``f`` read (A, B, and the addend, the
    records and the row exponents when used) and the one it writes (C), each from the first
    byte of its first row to the last byte of its last."""
    m, k, n = f["m"], f["k"], f["n"]
    ob = OUT_BYTES[OutFormat(f["out_fmt"])] if f["requant"] else 4
    bt = f["b_transposed"]

    def span(addr, rows, stride, row_bytes):
        return addr, addr + (max(rows, 1) - 1) * stride + row_bytes

    reads = [span(f["a_addr"], m, f["a_stride"], k),
             span(f["b_addr"], n if bt else k, f["b_stride"], k if bt else n)]
    if f["addend"] in (AddendMode.ACC32, AddendMode.RESIDUAL16):
        reads.append(span(f["d_addr"], m, f["d_stride"], n * ADDEND_BYTES[AddendMode(f["addend"])]))
    if f["use_params"]:
        reads.append(span(f["p_addr"], 1, 0, n * ENGINE_PARAM_DTYPE.itemsize))
    if f["row_shift"]:
        reads.append(span(f["e_addr"], 1, 0, m))
    return reads, span(f["c_addr"], m, f["c_stride"], n * ob)


def independent_matmuls(fields: list[dict]) -> list[bool]:
    """For each MATMUL of a program in order, whether it reads no byte the MATMUL before it
    writes (the first one: nothing before it), as the controller marks it for the matmul
    engine, which then loads its operands while the one before it still runs."""
    flags, prev = [], None
    for f in fields:
        reads, write = matmul_spans(f)
        flags.append(prev is None or all(hi <= prev[0] or prev[1] <= lo for lo, hi in reads))
        prev = write
    return flags


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


class IsaMachine:
    """Memory (``mem_size`` bytes from address 0), CSRs and an instruction interpreter.

    The host side is :meth:`write_csr`/:meth:`read_csr` and direct access to ``mem``;
    :meth:`step` runs one instruction and :meth:`run` runs until the program stops.
    """

    def __init__(self, config: MachineConfig = MachineConfig(), mem_size: int = 1 << 20,
                 vector_unit: bool = True, decoder_ops: bool | frozenset = False):
        self.config = config
        #: False models a build without the vector unit: VECTOR stops with UNSUPPORTED.
        self.vector_unit = vector_unit
        #: The decoder's operations (isa.DECODER_OPS) the vector unit has: True for all of them,
        #: False for none but ``isa.RTL_ALWAYS_OPS`` (the others stop with BAD_MODE, as on an
        #: RTL build without ``Sizing.decoder_ops``), or a set of them (``Sizing.decoder_op_set()``,
        #: the RTL's; ``isa.RTL_ALWAYS_OPS`` runs whatever the set).
        self.decoder_ops = decoder_ops
        self.mem = np.zeros(mem_size, dtype=np.uint8)
        self.regs = {r.name: 0 for r in CSR}
        self.regs["ID"] = isa.ID_MAGIC
        self.regs["CONFIG"] = CSR.CONFIG.make(isa_version=isa.ISA_VERSION, array=config.array,
                                              port_bytes=config.port_bytes,
                                              instr_bytes=INSTR_BYTES)
        self.running = False
        self.error_detail = ""
        self.hazards: list[str] = []
        self.stats = {"macs": 0, "vector_elements": 0, "sync_count": 0}
        self._reset_timing()

    # --- host interface ----------------------------------------------------------------------

    def read_csr(self, name: str) -> int:
        reg = getattr(CSR, name)
        if reg.access == isa.Access.WO:
            return 0
        if name == "STATUS":
            s = self.regs["STATUS"]
            return s | CSR.STATUS.make(busy=int(self.running))
        if name == "PC":
            return self.pc if self.running else self.regs["PC"]
        return self.regs[name] & 0xFFFFFFFF

    def write_csr(self, name: str, value: int) -> None:
        reg = getattr(CSR, name)
        if reg.access == isa.Access.RO:
            raise PermissionError(f"CSR {name} is read only")
        if reg is CSR.CTRL:
            if reg.get(value, "clear_counters"):
                self._clear_counters()
            if reg.get(value, "abort") and self.running:
                self._stop(ErrorCode.ABORTED, self.pc)
            if reg.get(value, "start") and not self.running:
                self._start()
            return
        self.regs[name] = int(value) & 0xFFFFFFFF

    def _clear_counters(self) -> None:
        for name in ("CYCLES_LO", "CYCLES_HI", "INSTRET", "MATMUL_BUSY", "VECTOR_BUSY",
                     "SYNC_STALL", "MATMUL_COUNT", "VECTOR_COUNT", "MEM_READS", "MEM_WRITES"):
            self.regs[name] = 0
        self.stats = {k: 0 for k in self.stats}
        self._reset_timing()

    def _reset_timing(self) -> None:
        self.now = 0                                   # the controller's cycle
        self.free = {Unit.MATMUL: 0, Unit.VECTOR: 0}   # when each unit can start the next command
        self.done = {Unit.MATMUL: 0, Unit.VECTOR: 0}   # when a SYNC on it sees its queue done
        self.busy = {Unit.MATMUL: 0, Unit.VECTOR: 0}
        self.stall = 0
        self._pending = {u: ([], []) for u in (Unit.MATMUL, Unit.VECTOR)}

    def _start(self) -> None:
        self.regs["STATUS"] = 0
        self.regs["ERROR"] = 0
        self.regs["ERROR_PC"] = 0
        self.error_detail = ""
        self.hazards = []
        self._reset_timing()
        self.base, self.size = self.regs["WIN_BASE"], self.regs["WIN_SIZE"]
        self.pc = self.regs["PROG_ADDR"]
        self.running = True
        if (self.base % WINDOW_ALIGN or self.size % WINDOW_ALIGN or self.size == 0
                or self.base + self.size > len(self.mem)):
            self._stop(ErrorCode.BAD_WINDOW, self.pc, "window not aligned, empty or past memory")

    def _stop(self, code: ErrorCode, pc: int, detail: str = "") -> None:
        self.running = False
        self.regs["PC"] = pc
        self._publish_counters()
        if code == ErrorCode.OK:
            self.regs["STATUS"] = CSR.STATUS.make(done=1)
        else:
            self.regs["STATUS"] = CSR.STATUS.make(error=1)
            self.regs["ERROR"] = int(code)
            self.regs["ERROR_PC"] = pc
            self.error_detail = detail

    def _publish_counters(self) -> None:
        cycles = max(self.now, *self.done.values()) if not self.running else self.now
        self.regs["CYCLES_LO"] = cycles & 0xFFFFFFFF
        self.regs["CYCLES_HI"] = cycles >> 32
        self.regs["MATMUL_BUSY"] = min(self.busy[Unit.MATMUL], 0xFFFFFFFF)
        self.regs["VECTOR_BUSY"] = min(self.busy[Unit.VECTOR], 0xFFFFFFFF)
        self.regs["SYNC_STALL"] = min(self.stall, 0xFFFFFFFF)

    @property
    def error(self) -> ErrorCode:
        return ErrorCode(self.regs["ERROR"])

    def run(self, max_instructions: int | None = None, max_cycles: int | None = None,
            timeout_s: float | None = None) -> bool:
        """Execute until the program stops (True) or a limit (instructions, cycles from now,
        seconds) is reached (False)."""
        t0 = time.monotonic()
        n = 0
        c0 = self.now
        while self.running:
            if max_instructions is not None and n >= max_instructions:
                break
            if max_cycles is not None and self.now - c0 >= max_cycles:
                break
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                break
            self.step()
            n += 1
        self._publish_counters()
        return not self.running

    # --- execution ---------------------------------------------------------------------------

    def step(self) -> None:
        pc = self.pc
        try:
            if pc % INSTR_BYTES or pc < self.base or pc + INSTR_BYTES > self.base + self.size:
                raise IsaStop(ErrorCode.FETCH_FAULT, f"instruction address {pc:#x}")
            self._fetch_hazard(pc)
            ins = Instruction.decode(self.mem[pc:pc + INSTR_BYTES].tobytes())
            if ins.opcode == Opcode.HALT:
                self._wait(Unit.ALL)
                self._retire()
                self._stop(ErrorCode.OK, pc)
                return
            if ins.opcode == Opcode.SYNC:
                self._wait(Unit(ins.fields["units"] & Unit.ALL))
                self.stats["sync_count"] += 1
            elif ins.opcode == Opcode.MATMUL:
                self._matmul(ins)
                self.regs["MATMUL_COUNT"] += 1
            elif ins.opcode == Opcode.VECTOR:
                if not self.vector_unit:
                    raise IsaStop(ErrorCode.UNSUPPORTED, "this build has no vector unit")
                self._vector(ins)
                self.regs["VECTOR_COUNT"] += 1
            else:
                raise IsaStop(ErrorCode.ILLEGAL_OPCODE, f"opcode {ins.opcode:#x}")
        except IsaStop as stop:
            self._stop(stop.code, pc, stop.detail)
            return
        self._retire()
        self.pc = pc + INSTR_BYTES

    def _retire(self) -> None:
        self.regs["INSTRET"] += 1
        self.now += 1

    def _wait(self, units: Unit) -> None:
        until = max([self.done[u] for u in (Unit.MATMUL, Unit.VECTOR) if u & units], default=0)
        if until > self.now:
            self.stall += until - self.now
            self.now = until
        for u in (Unit.MATMUL, Unit.VECTOR):
            if u & units:
                self._pending[u][0].clear()
                self._pending[u][1].clear()

    def _fetch_hazard(self, pc: int) -> None:
        """The controller fetches ahead while commands run: an instruction in bytes that an
        unsynchronised command writes may be fetched before or after the write."""
        code = isa.Span(pc, pc + INSTR_BYTES)
        for u, (_, p_writes) in self._pending.items():
            if any(code.overlaps(w) for w in p_writes):
                self.hazards.append(f"{pc:#x}: instruction fetched from bytes an "
                                    f"unsynchronised {u.name} command writes")

    def _dispatch(self, unit: Unit, ins: Instruction, cycles: int, drain: int = 0) -> None:
        """Timing model and hazard record of an accepted command: it occupies ``unit`` for
        ``cycles`` after the unit's previous command, and a SYNC sees it done ``drain``
        cycles after that."""
        start = max(self.now, self.free[unit])
        self.free[unit] = start + cycles
        self.done[unit] = start + cycles + drain
        self.busy[unit] += cycles
        reads, writes = ([s for _, s, _, _ in lst] for lst in footprint(ins))
        if any(w.overlaps(r) for w in writes for r in reads):
            self.hazards.append(f"{self.pc:#x}: {unit.name} command writes what it reads itself")
        for u, (p_reads, p_writes) in self._pending.items():
            for r in reads:
                if any(r.overlaps(w) for w in p_writes):
                    self.hazards.append(f"{self.pc:#x}: {unit.name} reads what an unsynchronised "
                                        f"{u.name} command writes")
            if u != unit:
                for w in writes:
                    if any(w.overlaps(x) for x in p_reads + p_writes):
                        self.hazards.append(f"{self.pc:#x}: {unit.name} writes what an "
                                            f"unsynchronised {u.name} command accesses")
        self._pending[unit][0].extend(reads)
        self._pending[unit][1].extend(writes)

    # --- memory ----------------------------------------------------------------------------

    def _check_window(self, ins: Instruction) -> None:
        reads, writes = footprint(ins)
        end = self.base + self.size
        for name, span, _, _ in reads + writes:
            if span.start < self.base or span.end > end:
                raise IsaStop(ErrorCode.BAD_ADDRESS,
                              f"{name} [{span.start:#x}, {span.end:#x}) outside the window")

    def _check_rows(self, f, rows, strides, use_res, use_p, use_e, dst_always=False):
        """A VECTOR instruction's stride checks (``strides``: (name, stride, row bytes); a
        stride matters for more than one row, or always for ``dst`` with ``dst_always``), then
        the alignment of every address and stride it uses."""
        for name, stride, row_bytes in strides:
            if (rows > 1 or (name == "dst" and dst_always)) and stride < row_bytes:
                raise IsaStop(ErrorCode.BAD_SHAPE, f"{name}_stride {stride} < row of {row_bytes} bytes")
        self._check_align(f["src_addr"], f["src_stride"], f["dst_addr"], f["dst_stride"])
        if use_res:
            self._check_align(f["res_addr"], f["res_stride"])
        if use_p:
            self._check_align(f["p_addr"])
        if use_e:
            self._check_align(f["e_addr"])

    def _check_align(self, *values: int) -> None:
        W = self.config.port_bytes
        for v in values:
            if v % W:
                raise IsaStop(ErrorCode.BAD_ALIGN, f"{v:#x} is not a multiple of {W}")

    def _matrix(self, addr: int, rows: int, cols: int, stride: int, fmt) -> np.ndarray:
        """A writable view of a strided matrix in memory (the window check came first)."""
        dt = np.dtype(fmt)
        return np.ndarray((rows, cols), dtype=dt, buffer=self.mem, offset=addr,
                          strides=(stride, dt.itemsize))

    def _read(self, addr, rows, cols, stride, fmt) -> np.ndarray:
        return self._matrix(addr, rows, cols, stride, fmt).astype(np.int64)

    def _write(self, addr, stride, values: np.ndarray, fmt) -> None:
        rows, cols = values.shape
        self._matrix(addr, rows, cols, stride, fmt)[...] = values.astype(fmt)

    def _records(self, addr: int, n: int, dtype) -> np.ndarray:
        return np.frombuffer(self.mem, dtype=dtype, count=n, offset=addr)

    # --- MATMUL ----------------------------------------------------------------------------

    def _matmul(self, ins: Instruction) -> None:
        f = ins.fields
        m, k, n = f["m"], f["k"], f["n"]
        addend, bt = f["addend"], f["b_transposed"]
        ob = OUT_BYTES[OutFormat(f["out_fmt"])] if f["requant"] else 4
        db = ADDEND_BYTES.get(AddendMode(addend), 0) if addend in (0, 1, 2) else 0
        # 1. Shapes, and strides at least as long as the rows they separate.
        if m == 0 or k == 0 or n == 0 or k > K_MAX:
            raise IsaStop(ErrorCode.BAD_SHAPE, f"m={m} k={k} n={n}")
        strides = [("a", m, f["a_stride"], k), ("b", n if bt else k, f["b_stride"], k if bt else n),
                   ("c", m, f["c_stride"], n * ob)]
        if db:
            strides.append(("d", m, f["d_stride"], n * db))
        for name, rows, stride, row_bytes in strides:
            if rows > 1 and stride < row_bytes:
                raise IsaStop(ErrorCode.BAD_SHAPE, f"{name}_stride {stride} < row of {row_bytes} bytes")
        # 2. Alignment (the engine's rule).
        self._check_align(f["a_addr"], f["b_addr"], f["c_addr"], f["a_stride"], f["b_stride"], f["c_stride"])
        if f["use_params"]:
            self._check_align(f["p_addr"])
        if addend != AddendMode.NONE:
            self._check_align(f["d_addr"], f["d_stride"])
        if f["row_shift"]:
            self._check_align(f["e_addr"])
        # 3. Modes (the engine's rule).
        if ((f["requant"] and not f["use_params"]) or addend == 3
                or (addend == AddendMode.RESIDUAL16 and f["addend_shift"] > RES_SHIFT_MAX)):
            raise IsaStop(ErrorCode.BAD_MODE, "requantise without parameters or bad addend")
        # 4. The window.
        self._check_window(ins)
        # 5. Values read from memory.
        rec = self._records(f["p_addr"], n, ENGINE_PARAM_DTYPE) if f["use_params"] else None
        if f["requant"] and (np.any(rec["mult"] >= 1 << nx.MULT_BITS) or np.any(rec["shift"] > nx.SHIFT_MAX)):
            raise IsaStop(ErrorCode.BAD_PARAM, "requantisation record out of range")
        a = self._read(f["a_addr"], m, k, f["a_stride"], "u1" if f["a_unsigned"] else "i1")
        if bt:
            b = self._read(f["b_addr"], n, k, f["b_stride"], "i1").T
        else:
            b = self._read(f["b_addr"], k, n, f["b_stride"], "i1")
        e = None
        if f["row_shift"]:
            # Exponents above ROW_EXP_MAX are clamped (hdl/params.py).
            e = np.minimum(self._read(f["e_addr"], 1, m, m, "u1")[0], nx.ROW_EXP_MAX)
        bias = rec["bias"].astype(np.int64) if rec is not None else None
        acc = None
        if addend == AddendMode.ACC32:
            acc = self._read(f["d_addr"], m, n, f["d_stride"], "<i4")
        c = nx.matmul(a, b, bias=bias, acc=acc, row_shift=e)
        if addend == AddendMode.RESIDUAL16:
            c = nx.residual_add(c, self._read(f["d_addr"], m, n, f["d_stride"], "<i2"), f["addend_shift"])
        if f["requant"]:
            fmt = OutFormat(f["out_fmt"])
            c = nx.requantize(c, nx.Dyadic(rec["mult"].astype(np.int64), rec["shift"].astype(np.int64)),
                              OUT_RANGE[fmt], f["zero_point"])
        else:
            fmt = OutFormat.INT32
        self._write(f["c_addr"], f["c_stride"], c, DTYPE[fmt])
        # Timing: output-stationary tiles, at least N steps each, plus fill and drain;
        # memory: A once per column group, B, parameters, addend and C once.
        N, W = self.config.array, self.config.port_bytes
        G = max(N, W)
        compute = _ceil(m, N) * _ceil(n, N) * max(k, N) + 2 * N
        traffic = m * k * _ceil(n, G) + k * n + m * n * (ob + db) + (n * 8 if f["use_params"] else 0)
        self.stats["macs"] += m * k * n
        self._dispatch(Unit.MATMUL, ins, max(compute, _ceil(traffic, W)), _MATMUL_DRAIN)

    # --- VECTOR ----------------------------------------------------------------------------

    def _vector(self, ins: Instruction) -> None:
        f = ins.fields
        op, rows, cols = f["op"], f["rows"], f["cols"]
        if op in _DECODER_OPS and (self.decoder_ops is True or op in isa.RTL_ALWAYS_OPS
                                   or (self.decoder_ops and op in self.decoder_ops)):
            return self._decoder_vector(ins)
        if op not in _VEC_OPS:
            raise IsaStop(ErrorCode.BAD_MODE, f"vector op {op}" + (
                f" ({VecOp(op).name}: a decoder op this build does not have)"
                if op in _DECODER_OPS else ""))
        op = VecOp(op)
        src_fmt, dst_fmt = OutFormat(f["src_fmt"]), OutFormat(f["dst_fmt"])
        use_res = isa.vec_uses_residual(f)
        use_p = isa.vec_uses_params(op)
        use_e = isa.vec_uses_rows_exponent(op)
        # 1. Shapes.
        if rows == 0 or cols == 0 or cols > VEC_MAX_COLS:
            raise IsaStop(ErrorCode.BAD_SHAPE, f"rows={rows} cols={cols}")
        strides = [("src", f["src_stride"], cols * OUT_BYTES[src_fmt]),
                   ("dst", f["dst_stride"], cols * OUT_BYTES[dst_fmt])]
        if use_res:
            strides.append(("res", f["res_stride"], cols * 2))
        # 2. Alignment (after the strides).
        self._check_rows(f, rows, strides, use_res, use_p, use_e)
        # 3. (Modes: every op/format combination is defined.) 4. The window.
        self._check_window(ins)
        # 5. Scalars and parameter records.
        if op in (VecOp.SOFTMAX, VecOp.GELU, VecOp.LAYERNORM) and f["shift"] > nx.SHIFT_MAX:
            raise IsaStop(ErrorCode.BAD_PARAM, f"shift {f['shift']} > {nx.SHIFT_MAX}")
        if use_res and f["res_shift"] > RES_SHIFT_MAX:
            raise IsaStop(ErrorCode.BAD_PARAM, f"res_shift {f['res_shift']} > {RES_SHIFT_MAX}")
        out = OUT_RANGE[dst_fmt]
        rec = self._records(f["p_addr"], cols, VEC_PARAM_DTYPE) if use_p else None
        if rec is not None:
            mult, shift, bias = (rec[name].astype(np.int64) for name in ("mult", "shift", "bias"))
            if op == VecOp.LAYERNORM:
                bad = (np.any(np.abs(mult) >= 1 << nx.LN_GAMMA_BITS)
                       or np.any(np.abs(bias) >= 1 << nx.LN_BETA_BITS))
            else:
                lo = nx.ROW_EXP_MAX if op in (VecOp.REQUANT_ROWS, VecOp.GELU_ROWS) else 0
                bad = (np.any((mult < 0) | (mult >= 1 << nx.MULT_BITS))
                       or np.any((shift < lo) | (shift > nx.SHIFT_MAX)))
            if bad:
                raise IsaStop(ErrorCode.BAD_PARAM, f"{op.name} parameter record out of range")
            per_col = nx.Dyadic(mult, shift)
        x = self._read(f["src_addr"], rows, cols, f["src_stride"], DTYPE[src_fmt])
        if use_res:
            r = self._read(f["res_addr"], rows, cols, f["res_stride"], "<i2")
            x = nx.residual_add(x, r, f["res_shift"])
        e = None
        if op == VecOp.SOFTMAX:
            p = nx.softmax(x, nx.Dyadic(f["mult"], f["shift"]),
                           f["causal_offset"] if f["causal"] else None)
            # Numerics whose softmax has no row exponent: every row's exponent is 0.
            p, e = p if isinstance(p, tuple) else (p, np.zeros(rows, dtype=np.int64))
            y = nx.saturate(p, out)
        elif op == VecOp.LAYERNORM:
            y = nx.layernorm(x, mult, bias, f["shift"], out)
        elif op == VecOp.GELU:
            y = nx.requantize(nx.gelu(nx.requantize(x, per_col, nx.INT16)),
                              nx.Dyadic(f["mult"], f["shift"]), out, f["zero_point"])
        elif op == VecOp.REQUANT:
            y = nx.requantize(x, per_col, out, f["zero_point"])
        elif op == VecOp.RESIDUAL:
            y = nx.saturate(x, out)
        elif op == VecOp.REQUANT_ROWS:
            y, e = nx.requantize_rows(x, per_col, out)
        else:  # GELU_ROWS
            y, e = nx.gelu_rows(x, per_col, out)
        self._write(f["dst_addr"], f["dst_stride"], y, DTYPE[dst_fmt])
        if e is not None:
            self._write(f["e_addr"], rows, e.reshape(1, rows), "u1")
        self.stats["vector_elements"] += rows * cols
        self._dispatch(Unit.VECTOR, ins, self._vector_cycles(op, f, 2 if use_res else 0, use_p),
                       _VEC_DRAIN)


    def _decoder_vector(self, ins: Instruction) -> None:
        """A VecOp of isa.DECODER_OPS (hdl/isa.py): the same checks in the same order as the
        other VECTOR ops, then one function of the numerics."""
        f = ins.fields
        op, rows, cols = VecOp(f["op"]), f["rows"], f["cols"]
        src_fmt, dst_fmt = OutFormat(f["src_fmt"]), OutFormat(f["dst_fmt"])
        second = isa.VEC_SECOND_OPERAND_BYTES.get(op)
        use_res = isa.vec_uses_residual(f)
        rb = second or 2
        use_p = isa.vec_uses_params(op)
        e_written = isa.vec_uses_rows_exponent(op)
        e_read = op == VecOp.WIDE_LO
        # 1. Shapes (a wide split writes two rows per source row; rotary pairs columns).
        if (rows == 0 or cols == 0 or cols > VEC_MAX_COLS
                or (op == VecOp.ROTARY and (cols % 2 or cols > isa.ROTARY_MAX_COLS
                                                   or rows > isa.ROTARY_MAX_ROWS))
                or (op == VecOp.RMSNORM and cols > nx.RMS_MAX_COLS)
                or (op == VecOp.WIDE_LO and rows > isa.WIDE_LO_MAX_ROWS)
                or (op == VecOp.SOFTMAX_WIDE and cols > isa.SOFTMAX_WIDE_MAX_COLS)):
            raise IsaStop(ErrorCode.BAD_SHAPE, f"rows={rows} cols={cols}")
        strides = [("src", f["src_stride"], cols * OUT_BYTES[src_fmt]),
                   ("dst", f["dst_stride"], cols * OUT_BYTES[dst_fmt])]
        if use_res:
            strides.append(("res", f["res_stride"], cols * rb))
        # 2. Alignment (after the strides); WIDE_SPLIT writes two planes even from one row.
        self._check_rows(f, rows, strides, use_res, use_p, e_written or e_read,
                         dst_always=op == VecOp.WIDE_SPLIT)
        # 3. Modes: the operand formats each op is defined for; a second operand is no
        # residual pre-add.
        want_src = {VecOp.SILU_GATE: OutFormat.INT16,
                    VecOp.WIDE_SPLIT: OutFormat.INT16}.get(op)
        want_dst = {VecOp.WIDE_SPLIT: OutFormat.INT8,
                    VecOp.WIDE_LO: OutFormat.INT32}.get(op)
        if ((want_src is not None and src_fmt != want_src)
                or (op == VecOp.ROTARY and src_fmt == OutFormat.INT32)
                or (want_dst is not None and dst_fmt != want_dst)
                or (second is not None and f["add_residual"])):
            raise IsaStop(ErrorCode.BAD_MODE, f"{op.name} with src_fmt {src_fmt.name}, dst_fmt "
                                              f"{dst_fmt.name}, add_residual {f['add_residual']}")
        # 4. The window.
        self._check_window(ins)
        # 5. Scalars and parameter records.
        if (op in (VecOp.RMSNORM, VecOp.SOFTMAX_WIDE, VecOp.SOFTMAX_DITHER)
                and f["shift"] > nx.SHIFT_MAX):
            raise IsaStop(ErrorCode.BAD_PARAM, f"shift {f['shift']} > {nx.SHIFT_MAX}")
        if op == VecOp.SILU_GATE and f["res_shift"] not in (0, nx.WIDE_LO_BITS):
            raise IsaStop(ErrorCode.BAD_PARAM, f"SILU_GATE res_shift {f['res_shift']} is not "
                                               f"0 or {nx.WIDE_LO_BITS}")
        if use_res and f["res_shift"] > RES_SHIFT_MAX:
            raise IsaStop(ErrorCode.BAD_PARAM, f"res_shift {f['res_shift']} > {RES_SHIFT_MAX}")
        out = OUT_RANGE[dst_fmt]
        if use_p:
            rec = self._records(f["p_addr"], cols, VEC_PARAM_DTYPE)
            mult, shift, bias = (rec[name].astype(np.int64) for name in ("mult", "shift", "bias"))
            if op == VecOp.RMSNORM:
                bad = (np.any(np.abs(mult) >= 1 << nx.LN_GAMMA_BITS)
                       or not 0 <= bias[0] < 1 << nx.RMS_EPS_MAX_BITS)
            else:
                bad = (np.any((mult < 0) | (mult >= 1 << nx.MULT_BITS))
                       or np.any((shift < nx.ROW_EXP_MAX) | (shift > nx.SHIFT_MAX)))
            if bad:
                raise IsaStop(ErrorCode.BAD_PARAM, f"{op.name} parameter record out of range")
        x = self._read(f["src_addr"], rows, cols, f["src_stride"], DTYPE[src_fmt])
        r = None
        if use_res:
            r = self._read(f["res_addr"], rows, cols, f["res_stride"], "<i4" if rb == 4 else "<i2")
            if second is None:
                x = nx.residual_add(x, r, f["res_shift"])
        e = None
        e_in = None
        if e_read:
            e_in = np.minimum(self._read(f["e_addr"], 1, rows, rows, "u1")[0], nx.ROW_EXP_MAX)
        try:
            if op == VecOp.RMSNORM:
                y = nx.rmsnorm(x, mult, f["shift"], out, eps=int(bias[0]))
            elif op == VecOp.SILU_GATE:
                # A narrow up is saturated to int8 (isa.VecOp).
                wide = f["res_shift"] == nx.WIDE_LO_BITS
                y, e = nx.gated_silu(x, nx.saturate(r, nx.INT16 if wide else nx.INT8),
                                     nx.Dyadic(mult, shift), out, wide_up=wide)
            elif op == VecOp.ROTARY:
                half = cols // 2
                y = nx.rotary(x, np.arange(rows), (r[:, :half], r[:, half:]), out)
            elif op == VecOp.SOFTMAX_WIDE:
                y, e = nx.softmax(x, nx.Dyadic(f["mult"], f["shift"]),
                                  f["causal_offset"] if f["causal"] else None, nx.INT16.hi)
                y = nx.saturate(y, out)
            elif op == VecOp.SOFTMAX_DITHER:
                y, e = nx.softmax(x, nx.Dyadic(f["mult"], f["shift"]),
                                  f["causal_offset"] if f["causal"] else None, dither=True)
                y = nx.saturate(y, out)
            elif op == VecOp.WIDE_SPLIT:
                y = np.concatenate([x >> nx.WIDE_LO_BITS, x & ((1 << nx.WIDE_LO_BITS) - 1)])
            elif op == VecOp.WIDE_LO:
                one = nx.MULT_BITS - 1
                y = nx.requantize(x, nx.Dyadic(np.int64(1 << one),
                                               one + nx.WIDE_LO_BITS + e_in[:, None]), nx.INT32)
            else:  # RESIDUAL32
                y = nx.saturate(nx.residual_add(x, r, f["res_shift"]), out)
        except ValueError as exc:       # an operand outside the range the op is defined for
            raise IsaStop(ErrorCode.BAD_PARAM, f"{op.name}: {exc}") from None
        if op == VecOp.WIDE_SPLIT:
            # The low plane's bytes are uint8 values written as int8's bits.
            self._write(f["dst_addr"], f["dst_stride"], np.where(y > 127, y - 256, y), "i1")
        else:
            self._write(f["dst_addr"], f["dst_stride"], y, DTYPE[dst_fmt])
        if e is not None:
            self._write(f["e_addr"], rows, np.asarray(e).reshape(1, rows), "u1")
        self.stats["vector_elements"] += rows * cols
        self._dispatch(Unit.VECTOR, ins, self._vector_cycles(op, f, rb if use_res else 0, use_p),
                       _VEC_DRAIN)

    def _vector_cycles(self, op: VecOp, f: dict, res_bytes: int, use_p: bool) -> int:
        """The vector engine's cycles for one command (``res_bytes``: a residual or second
        operand element's bytes, 0 without one): its parameter records (16 bytes a column) or
        row exponents read first, then the larger of the read beats, the write beats and the
        unit's beats, then the last row's remaining passes and the pipeline (_VEC_TIMING)."""
        N, W = self.config.array, self.config.port_bytes
        rows, cols = f["rows"], f["cols"]
        src, dst = OUT_BYTES[OutFormat(f["src_fmt"])], OUT_BYTES[OutFormat(f["dst_fmt"])]
        per_row = _ceil(cols, N)
        # A wide split reads its rows twice (one plane a pass); rotary reads each row and its
        # cos|sin twice (the unit takes the pairs' two halves as two rows).
        passes = 2 if op in (VecOp.WIDE_SPLIT, VecOp.ROTARY) else 1
        params = (_ceil(16 * cols, W) if use_p else
                  _ceil(rows, W) if op == VecOp.WIDE_LO else 0)
        reads = passes * rows * (_ceil(cols * src, W) + (_ceil(cols * res_bytes, W)
                                                          if res_bytes else 0))
        out_rows = 2 * rows if op == VecOp.WIDE_SPLIT else rows
        writes = out_rows * _ceil(cols * dst, W)
        fixed, tail = _VEC_TIMING[op]
        return fixed + params + max(reads, writes, passes * rows * per_row) + tail * per_row


class IsaBackend:
    """The ``isa`` backend of :mod:`celosia.sw.driver`: an :class:`IsaMachine` behind the
    CSR/memory interface every backend has."""

    name = "isa"

    def __init__(self, config: MachineConfig, mem_size: int, vector_unit: bool = True,
                 decoder_ops: bool | frozenset = False):
        self.machine = IsaMachine(config, mem_size, vector_unit, decoder_ops)
        #: Whether VECTOR instructions run (else they stop with UNSUPPORTED).
        self.vector_unit = vector_unit

    @property
    def error_detail(self) -> str:
        return self.machine.error_detail

    def read_memory(self, addr: int, size: int) -> bytes:
        return self.machine.mem[addr:addr + size].tobytes()

    def write_memory(self, addr: int, raw: bytes) -> None:
        if addr < 0 or addr + len(raw) > len(self.machine.mem):
            raise ValueError(f"[{addr:#x}, {addr + len(raw):#x}) is outside the memory")
        self.machine.mem[addr:addr + len(raw)] = np.frombuffer(raw, dtype=np.uint8)

    def read_csr(self, name: str) -> int:
        return self.machine.read_csr(name)

    def write_csr(self, name: str, value: int) -> None:
        self.machine.write_csr(name, value)

    def advance(self, max_cycles: int | None, timeout_s: float | None) -> None:
        self.machine.run(max_cycles=max_cycles, timeout_s=timeout_s)

    def advance_to_retired(self, count: int, max_cycles: int | None,
                           timeout_s: float | None) -> None:
        """Run until INSTRET reaches ``count`` (exactly), the program stops or a limit."""
        left = max(0, count - self.machine.regs["INSTRET"])
        self.machine.run(max_instructions=left, max_cycles=max_cycles, timeout_s=timeout_s)
