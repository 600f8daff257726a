"""The host driver: one interface to every backend that runs a compiled Celosia program.

A backend is anything with the accelerator's host interface (:class:`Backend`): byte access to
the memory the accelerator sees, and the CSR block of :mod:`celosia.hdl.isa`, plus ``advance``
(let the accelerator run for at most so many cycles or seconds; real hardware just sleeps).
Everything else — loading an image, starting, waiting, reading status and counters — is
written once here, on top of those, so the ``isa`` simulator, the RTL simulators and the FPGA
over a serial link are driven by the same code.

``run_embedding(backend, model, im, ids)`` is the whole path: embed on the host, compile, load,
start, wait, read the int16 hidden state and the counters.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from celosia.hdl import isa
from celosia.hdl.isa import CSR, ErrorCode, MachineConfig

from . import golden
from .compiler import CompiledModel, compile_model
from .memory_map import DIGEST_ADDR, RECORD_BYTES, WEIGHTS_BASE
from .model import mean_pool_normalise
from .quantize import IntegerModel

__all__ = ["Backend", "Status", "ERROR_TEXT", "describe_error", "AcceleratorError", "AcceleratorHung", "Accelerator", "Load",
           "RunResult", "BACKENDS", "register_backend", "open_backend", "run_compiled",
           "run_embedding", "run_batch", "COUNTERS"]


@runtime_checkable
class Backend(Protocol):
    """The accelerator's host interface, as each backend provides it."""
    name: str

    def read_memory(self, addr: int, size: int) -> bytes: ...

    def write_memory(self, addr: int, raw: bytes) -> None: ...

    def read_csr(self, name: str) -> int: ...

    def write_csr(self, name: str, value: int) -> None: ...

    def advance(self, max_cycles: int | None, timeout_s: float | None) -> None:
        """Let the accelerator run (at most ``max_cycles`` more cycles / ``timeout_s``
        seconds); returns early when it stops."""

    # Optional: ``advance_to_retired(count, max_cycles, timeout_s)``, like ``advance`` but
    # also returning once INSTRET reaches ``count``. Backends that have it report the cycles
    # of each encoder layer (RunResult.layer_cycles).


@dataclass(frozen=True)
class Status:
    """A snapshot of STATUS, ERROR, ERROR_PC and PC."""
    busy: bool
    done: bool
    error: ErrorCode
    error_pc: int
    pc: int
    detail: str = ""

    def __str__(self) -> str:
        state = "busy" if self.busy else "done" if self.done else "stopped" if self.error else "idle"
        err = f", error {self.error.name} at {self.error_pc:#x}" if self.error else ""
        extra = f" ({self.detail})" if self.detail else ""
        return f"{state}, pc {self.pc:#x}{err}{extra}"


#: What each ``ErrorCode`` means, in words (docs/isa.md, "Checks and error codes";
#: docs/reliability.md, "Memory faults").
ERROR_TEXT: dict[ErrorCode, str] = {
    ErrorCode.OK: "no error",
    ErrorCode.ILLEGAL_OPCODE: "the instruction's opcode is not one the accelerator knows",
    ErrorCode.FETCH_FAULT: "the instruction address is not a multiple of 64 or lies outside "
                           "the window",
    ErrorCode.BAD_WINDOW: "the window (WIN_BASE, WIN_SIZE) is not aligned, is empty or lies "
                          "beyond the memory this build reaches",
    ErrorCode.BAD_SHAPE: "a dimension is 0 or too large, or a stride is shorter than its row",
    ErrorCode.BAD_ALIGN: "an address or stride is not a multiple of the memory port width",
    ErrorCode.BAD_MODE: "an unknown or inconsistent mode",
    ErrorCode.BAD_ADDRESS: "the instruction would read or write outside the window",
    ErrorCode.BAD_PARAM: "a scalar or a parameter record value is out of range",
    ErrorCode.ABORTED: "the host aborted the program",
    ErrorCode.UNSUPPORTED: "a VECTOR instruction on a build without the vector unit",
    ErrorCode.MEM_READ_ERROR: "the memory answered one of the instruction's reads with an "
                              "error (AXI SLVERR or DECERR: a failing or unmapped address); "
                              "the run stopped, and nothing outside the instruction's "
                              "destination was written after it",
    ErrorCode.MEM_WRITE_ERROR: "the memory answered one of the instruction's writes with an "
                               "error (AXI SLVERR or DECERR: a failing or unmapped address); "
                               "that write did not happen, the run stopped, and nothing outside "
                               "the instruction's destination was written after it",
    ErrorCode.MEM_TIMEOUT: "the memory stopped answering (no response within the watchdog's "
                           "bound); the run stopped and the accelerator is ready to start "
                           "again, but a memory that is still silent will time out again",
}
assert set(ERROR_TEXT) == set(ErrorCode)


def describe_error(code: int) -> str:
    """``ERROR``'s value as a phrase: its name and what it means (unknown values included)."""
    try:
        code = ErrorCode(code)
    except ValueError:
        return f"unknown error code {code}"
    return f"{code.name}: {ERROR_TEXT[code]}"


class AcceleratorError(RuntimeError):
    """The program stopped with an error code."""

    def __init__(self, status: Status):
        super().__init__(f"accelerator stopped with {status.error.name} at instruction "
                         f"{status.error_pc:#x} ({ERROR_TEXT[status.error]}): {status}")
        self.status = status


class AcceleratorHung(TimeoutError):
    """The program did not stop within the cycle or time limit."""

    def __init__(self, status: Status, limit: str):
        super().__init__(f"accelerator still running after {limit}: {status}")
        self.status = status


#: Counter name -> CSR(s) (64-bit counters read as LO/HI pairs).
COUNTERS = {"cycles": ("CYCLES_LO", "CYCLES_HI"), "instructions": ("INSTRET",),
            "matmul_busy": ("MATMUL_BUSY",), "vector_busy": ("VECTOR_BUSY",),
            "sync_stall": ("SYNC_STALL",), "matmul_count": ("MATMUL_COUNT",),
            "vector_count": ("VECTOR_COUNT",), "mem_read_beats": ("MEM_READS",),
            "mem_write_beats": ("MEM_WRITES",)}


#: Chunks of the weights region compared before resident weights are trusted, and their size.
RESIDENT_SAMPLES, SAMPLE_BYTES = 8, 32


@dataclass(frozen=True)
class Load:
    """What :meth:`Accelerator.load` wrote: whether the weights went too, and the bytes."""
    weights_loaded: bool
    bytes_written: int


class Accelerator:
    """Driver operations over a :class:`Backend`."""

    def __init__(self, backend: Backend):
        if not isinstance(backend, Backend):
            raise TypeError(f"{backend!r} does not implement the Backend interface")
        self.backend = backend
        ident = backend.read_csr("ID")
        if ident != isa.ID_MAGIC:
            raise RuntimeError(f"backend {backend.name}: ID register reads {ident:#x}, "
                               f"expected {isa.ID_MAGIC:#x}")
        cfg = backend.read_csr("CONFIG")
        self.config = MachineConfig(CSR.CONFIG.get(cfg, "array"), CSR.CONFIG.get(cfg, "port_bytes"))
        if CSR.CONFIG.get(cfg, "isa_version") != isa.ISA_VERSION:
            raise RuntimeError(f"backend {backend.name} implements ISA version "
                               f"{CSR.CONFIG.get(cfg, 'isa_version')}, expected {isa.ISA_VERSION}")

    def load(self, compiled: CompiledModel, resident: bool = False) -> Load:
        """Write the program and its data and set the window.

        Without ``resident``, the whole image. With it, the weights stay on the backend
        between runs (docs/fpga.md, "Resident weights"): the digest record is read back, and
        only when it names other weights, or a few sampled chunks of the weights region differ
        from the image, are the weights written (the record cleared first, written after).
        Then only the program is written: the activation buffers are the program's own output
        before it reads them, and the host writes the input."""
        if compiled.config != self.config:
            raise ValueError(f"program compiled for {compiled.config}, backend is {self.config}")
        writes: list[tuple[int, bytes]] = []
        if not resident:
            if compiled.base >= WEIGHTS_BASE:
                writes.append((DIGEST_ADDR, bytes(RECORD_BYTES)))   # the weights are replaced
            writes.append((compiled.base, compiled.image))
            loaded = True
        else:
            if compiled.base < WEIGHTS_BASE:
                raise ValueError(f"resident weights need the window at {WEIGHTS_BASE:#x} or "
                                 f"above (the digest area), not at {compiled.base:#x}")
            loaded = not self.weights_resident(compiled)
            if loaded:
                writes += [(DIGEST_ADDR, bytes(RECORD_BYTES)),
                           (compiled.base, compiled.weights_image),
                           (DIGEST_ADDR, compiled.weights_record)]
            assert compiled.program_addr >= compiled.weights_end
            writes.append((compiled.program_addr, compiled.program.code))
        for addr, raw in writes:
            self.backend.write_memory(addr, raw)
        self.backend.write_csr("WIN_BASE", compiled.base)
        self.backend.write_csr("WIN_SIZE", compiled.window_size)
        return Load(loaded, sum(len(raw) for _, raw in writes))

    def weights_resident(self, compiled: CompiledModel, samples: int = RESIDENT_SAMPLES) -> bool:
        """Whether the backend holds ``compiled``'s weights: its digest record, and
        ``samples`` chunks of SAMPLE_BYTES at random places in the weights region equal to
        the image (a region overwritten by something that did not clear the record)."""
        b = self.backend
        if b.read_memory(DIGEST_ADDR, RECORD_BYTES) != compiled.weights_record:
            return False
        size = compiled.weights_size
        rng = random.Random()
        for _ in range(samples if size else 0):
            n = min(SAMPLE_BYTES, size)
            off = rng.randrange(0, size - n + 1)
            if b.read_memory(compiled.base + off, n) != compiled.image[off:off + n]:
                return False
        return True

    def start(self, program_addr: int) -> None:
        self.backend.write_csr("PROG_ADDR", program_addr)
        self.backend.write_csr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))

    def status(self) -> Status:
        b = self.backend
        s = b.read_csr("STATUS")
        return Status(bool(CSR.STATUS.get(s, "busy")), bool(CSR.STATUS.get(s, "done")),
                      ErrorCode(b.read_csr("ERROR")), b.read_csr("ERROR_PC"), b.read_csr("PC"),
                      getattr(b, "error_detail", ""))

    def wait(self, max_cycles: int | None = None, timeout_s: float | None = None,
             poll_s: float = 0.0, progress: Callable[[int], None] | None = None,
             progress_cycles: int = 1 << 18, marks: list[int] | None = None) -> Status:
        """Run until the program stops; AcceleratorError for an error code, AcceleratorHung
        when a limit passes first. ``progress`` is called with the count of retired
        instructions every ``progress_cycles`` cycles.

        ``marks``: ascending INSTRET values; on a backend with ``advance_to_retired`` the
        CYCLES counter is read as each is reached, into ``self.mark_cycles`` (None on other
        backends, and for marks the program did not reach)."""
        t0 = time.monotonic()
        pending = list(marks or [])
        track = bool(pending) and hasattr(self.backend, "advance_to_retired")
        self.mark_cycles: list[int | None] | None = [None] * len(pending) if track else None
        k = 0
        while True:
            left = None if timeout_s is None else timeout_s - (time.monotonic() - t0)
            cycles = self.counters()["cycles"]
            left_cycles = None if max_cycles is None else max_cycles - cycles
            status = self.status()
            if track:
                retired = self.backend.read_csr("INSTRET")
                while k < len(pending) and retired >= pending[k]:
                    self.mark_cycles[k] = cycles
                    k += 1
            if not status.busy:
                break
            if (left is not None and left <= 0) or (left_cycles is not None and left_cycles <= 0):
                limit = f"{cycles} cycles" if left_cycles is not None and left_cycles <= 0 \
                    else f"{timeout_s} s"
                raise AcceleratorHung(status, limit)
            step = left_cycles
            if progress is not None:
                step = progress_cycles if left_cycles is None else min(left_cycles, progress_cycles)
            if track and k < len(pending):
                self.backend.advance_to_retired(pending[k], step, left)
            else:
                self.backend.advance(step, left)
            if progress is not None:
                progress(self.counters()["instructions"])
            if poll_s:
                time.sleep(poll_s)
        if status.error != ErrorCode.OK:
            raise AcceleratorError(status)
        return status

    def counters(self) -> dict[str, int]:
        out = {}
        for name, regs in COUNTERS.items():
            v = 0
            for k, reg in enumerate(regs):
                v |= self.backend.read_csr(reg) << (32 * k)
            out[name] = v
        return out


# --- Backends ------------------------------------------------------------------------------------

#: name -> factory(compiled, im) returning a Backend with memory for ``compiled``.
BACKENDS: dict[str, Callable[[CompiledModel, IntegerModel], Backend]] = {}


def register_backend(name: str, factory: Callable[[CompiledModel, IntegerModel], Backend]) -> None:
    """Make a backend available to :func:`open_backend` (the RTL backends register here)."""
    BACKENDS[name] = factory


def open_backend(name: str, compiled: CompiledModel, im: IntegerModel, **options) -> Backend:
    """A backend with memory for ``compiled``; ``options`` go to its factory (e.g. ``waves``
    for the RTL simulators)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](compiled, im, **options)


class GoldenBackend:
    """The reference: the host interface of an accelerator that computes
    :func:`celosia.sw.golden.forward` on the program's input instead of executing the
    instructions (it knows where the compiler put the input and the output)."""

    name = "golden"

    def __init__(self, compiled: CompiledModel, im: IntegerModel, layers: int | None = None):
        self.compiled, self.im, self.layers = compiled, im, layers
        self.mem = bytearray(compiled.end)
        self.regs = {r.name: 0 for r in CSR}
        self.regs["ID"] = isa.ID_MAGIC
        c = compiled.config
        self.regs["CONFIG"] = CSR.CONFIG.make(isa_version=isa.ISA_VERSION, array=c.array,
                                              port_bytes=c.port_bytes, instr_bytes=isa.INSTR_BYTES)
        self._run = False

    def read_memory(self, addr: int, size: int) -> bytes:
        return bytes(self.mem[addr:addr + size])

    def write_memory(self, addr: int, raw: bytes) -> None:
        self.mem[addr:addr + len(raw)] = raw

    def read_csr(self, name: str) -> int:
        if name == "STATUS":
            return self.regs["STATUS"] | CSR.STATUS.make(busy=int(self._run))
        return self.regs[name]

    def write_csr(self, name: str, value: int) -> None:
        if name == "CTRL":
            if CSR.CTRL.get(value, "start"):
                self._run = True
                self.regs["STATUS"] = 0
            return
        self.regs[name] = value

    def advance(self, max_cycles: int | None, timeout_s: float | None) -> None:
        if not self._run:
            return
        c = self.compiled
        e = c.input.unpack(self.read_memory(c.input.addr, c.input.nbytes))
        h = golden.forward(self.im, e, self.layers, c.sentences or None)
        self.write_memory(c.output.addr, c.output.pack(h))
        self._run = False
        self.regs["STATUS"] = CSR.STATUS.make(done=1)


def _isa_backend(compiled: CompiledModel, im: IntegerModel) -> Backend:
    from .isa_sim import IsaBackend
    return IsaBackend(compiled.config, compiled.end)


def _verilator_backend(compiled: CompiledModel, im: IntegerModel, **options) -> Backend:
    from celosia.sim.verilator_accel import verilator_backend
    return verilator_backend(compiled, im, **options)


def _gatelevel_backend(compiled: CompiledModel, im: IntegerModel, **options) -> Backend:
    from celosia.sim.gatelevel import gatelevel_backend
    return gatelevel_backend(compiled, im, **options)


def _amaranth_backend(compiled: CompiledModel, im: IntegerModel, **options) -> Backend:
    from celosia.sim.amaranth_accel import amaranth_backend
    return amaranth_backend(compiled, im, **options)


def _serial_backend(compiled: CompiledModel, im: IntegerModel, **options) -> Backend:
    from .serial_backend import serial_backend
    return serial_backend(compiled, im, **options)


register_backend("golden", GoldenBackend)
register_backend("isa", _isa_backend)
register_backend("amaranth", _amaranth_backend)
register_backend("verilator", _verilator_backend)
register_backend("gatelevel", _gatelevel_backend)
register_backend("serial", _serial_backend)


# --- The whole path ------------------------------------------------------------------------------

@dataclass
class RunResult:
    """The int16 hidden state of the last layer, the counters and the backend's name."""
    hidden: np.ndarray
    counters: dict[str, int]
    backend: str
    output_scale: float = 1.0
    compiled: CompiledModel | None = field(default=None, repr=False)
    #: Seconds the backend spent building itself (a Verilator model on a cache miss).
    build_s: float = 0.0
    #: Cycles of each part of the program, ``[(layer, part, cycles)]`` in program order
    #: (CompiledModel.parts), from the backend's counters at the part boundaries; None when
    #: the backend cannot stop there.
    part_cycles: list[tuple[int, str, int]] | None = None
    #: Whether the run wrote the weights (False: they were resident on the backend).
    weights_loaded: bool = True
    #: Bytes the run moved over the backend's link, both ways (None: no link).
    link_bytes: int | None = None
    #: A board's own figures: ``clk_hz`` (its core clock), ``mem_bytes`` and the link's
    #: ``baud`` (None: not a board).
    board: dict | None = None

    @property
    def layer_cycles(self) -> list[int] | None:
        """Cycles of each encoder layer (the first includes the embedding LayerNorm)."""
        if self.part_cycles is None:
            return None
        out: dict[int, int] = {}
        for layer, _, c in self.part_cycles:
            out[layer] = out.get(layer, 0) + c
        return [out[k] for k in sorted(out)]

    @property
    def sentence_hidden(self) -> list[np.ndarray]:
        """The int16 hidden state of each sentence of the batch."""
        return self.compiled.split(self.hidden)

    @property
    def embedding(self) -> np.ndarray:
        """Sentence embedding: mean pooling and L2 normalisation on the host, in float."""
        return mean_pool_normalise(self.hidden.astype(np.float64) * self.output_scale)


def _link_bytes(backend: Backend) -> int | None:
    """Bytes the backend has moved over its link so far (None without a link)."""
    stats = getattr(backend, "stats", None)
    if not isinstance(stats, dict) or "bytes_out" not in stats:
        return None
    return stats["bytes_out"] + stats["bytes_in"]


def run_compiled(backend: Backend, compiled: CompiledModel, e: np.ndarray,
                 max_cycles: int | None = None, timeout_s: float | None = None,
                 progress: Callable[[int], None] | None = None,
                 resident: bool = False) -> RunResult:
    """Load ``compiled`` into ``backend`` (keeping resident weights with ``resident``, see
    :meth:`Accelerator.load`), write the int32 embedding sums ``e``, run, read back."""
    link0 = _link_bytes(backend)
    acc = Accelerator(backend)
    load = acc.load(compiled, resident)
    backend.write_memory(compiled.input.addr, compiled.input.pack(e))
    acc.start(compiled.program_addr)
    marks = [index for _, _, index in compiled.parts[1:]]
    acc.wait(max_cycles=max_cycles, timeout_s=timeout_s, progress=progress, marks=marks)
    out = compiled.output
    hidden = out.unpack(backend.read_memory(out.addr, out.nbytes))
    build_s = float(getattr(getattr(backend, "model", None), "build_seconds", 0.0) or 0.0)
    counters = acc.counters()
    part_cycles = None
    found = [] if len(compiled.parts) == 1 else acc.mark_cycles
    if compiled.parts and counters["cycles"] and found is not None and None not in found:
        edges = [0, *found, counters["cycles"]]
        part_cycles = [(layer, name, b - a)
                       for (layer, name, _), a, b in zip(compiled.parts, edges, edges[1:])]
    link = _link_bytes(backend)
    board = ({"clk_hz": backend.clk_hz, "mem_bytes": backend.mem_bytes, "baud": backend.baud}
             if hasattr(backend, "clk_hz") else None)
    return RunResult(hidden, counters, backend.name, compiled=compiled, build_s=build_s,
                     part_cycles=part_cycles, weights_loaded=load.weights_loaded,
                     link_bytes=None if link is None else link - link0, board=board)


def run_embedding(backend_name: str, model, im: IntegerModel, ids, **kw) -> RunResult:
    """Token ids of one sentence -> int16 hidden state (and counters): :func:`run_batch` of
    one sentence."""
    return run_batch(backend_name, model, im, [ids], **kw)


def run_batch(backend_name: str, model, im: IntegerModel, batch, array: int = 8,
              port_bytes: int | None = None, max_cycles: int | None = None,
              timeout_s: float | None = 600.0,
              progress: Callable[[int, int], None] | None = None,
              backend_options: dict | None = None, resident: bool | None = None) -> RunResult:
    """Token ids of each sentence of ``batch`` -> int16 hidden states (rows stacked; see
    ``RunResult.sentence_hidden``) and counters, in one run on the named backend.

    ``model`` (the float MiniLM) supplies the embedding tables; the host quantises the
    embedding sums (golden.embed_int32), the compiler builds one program for the batch's
    token counts on an ``array`` x ``array`` engine, and the backend runs it. ``progress`` is
    called with (retired instructions, program length) while it runs; ``backend_options``
    go to the backend's factory. The backend is closed afterwards when it has ``close``
    (which finishes a waveform file). ``resident`` (default: on the serial backend, whose
    board keeps its memory between runs) keeps the weights on the backend between runs.
    """
    batch = [np.asarray(ids) for ids in batch]
    e = np.concatenate([golden.embed_int32(model, im, ids) for ids in batch])
    compiled = compile_model(im, [len(ids) for ids in batch], array=array, port_bytes=port_bytes)
    backend = open_backend(backend_name, compiled, im, **(backend_options or {}))
    total = len(compiled.program.instructions)
    try:
        result = run_compiled(backend, compiled, e, max_cycles=max_cycles, timeout_s=timeout_s,
                              progress=None if progress is None else (lambda n: progress(n, total)),
                              resident=backend_name == "serial" if resident is None else resident)
    finally:
        if hasattr(backend, "close"):
            backend.close()
    result.output_scale = golden.output_scale(im)
    return result
