"""The matmul engine as a Verilated C++ model behind a thin ctypes binding.

The host writes a flat memory image, hands over a packed command and the C++ harness clocks the
design until ``done``, serving the memory port itself; Python is not involved per cycle.
"""

from __future__ import annotations

import ctypes
import time

import numpy as np

from celosia.hdl.engine import verilog_text
from celosia.hdl.params import K_MAX, command_layout, default_port_bytes

from .registered_reset import RegisteredReset
from .verilator_build import build_library

__all__ = ["VerilatorEngine"]

_STALL_ONE = 1 << 16


class VerilatorEngine:
    """A Verilated ``MatmulEngine`` with ``mem_bytes`` of memory behind its port."""

    TOP = "celosia_matmul"

    def __init__(self, array: int, port_bytes: int | None = None, *, k_max: int = K_MAX,
                 mem_bytes: int = 1 << 20):
        self.array = array
        self.port_bytes = port_bytes or default_port_bytes(array)
        self.k_max = k_max
        verilog = verilog_text(array, self.port_bytes, k_max=k_max, name=self.TOP,
                               wrap=RegisteredReset)
        self.library, self.build_seconds = build_library(verilog, self.TOP)
        lib = self._lib = ctypes.CDLL(str(self.library))
        lib.celosia_new.restype = ctypes.c_void_p
        lib.celosia_new.argtypes = [ctypes.c_uint64, ctypes.c_uint]
        lib.celosia_free.argtypes = [ctypes.c_void_p]
        lib.celosia_mem.restype = ctypes.POINTER(ctypes.c_uint8)
        lib.celosia_mem.argtypes = [ctypes.c_void_p]
        lib.celosia_reset.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.celosia_port_model.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint32,
                                           ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32]
        lib.celosia_run_command.restype = ctypes.c_int64
        lib.celosia_run_command.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64,
                                            ctypes.c_uint64, ctypes.POINTER(ctypes.c_int)]
        lib.celosia_counter.restype = ctypes.c_uint64
        lib.celosia_counter.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._h = lib.celosia_new(mem_bytes, self.port_bytes)
        self.mem = np.ctypeslib.as_array(lib.celosia_mem(self._h), shape=(mem_bytes,))
        self._cmd_bytes = (command_layout().size + 7) // 8

    def close(self):
        if self._h:
            self._lib.celosia_free(self._h)
            self._h = None
            self.mem = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def port_model(self, *, latency: int = 2, seed: int = 1, req_stall: float = 0.0,
                   resp_gap: float = 0.0, wr_stall: float = 0.0):
        """Read latency (cycles) and chances of a stall per cycle on each channel."""
        def p(x):
            return int(round(min(max(x, 0.0), 1.0) * (_STALL_ONE - 1)))
        self._lib.celosia_port_model(self._h, latency, seed, p(req_stall), p(resp_gap),
                                     p(wr_stall))

    def load(self, data: np.ndarray, base: int = 0):
        self.mem[base:base + len(data)] = data

    def run_command(self, command: int, *, max_cycles: int = 1 << 34) -> tuple[int, int, float]:
        """Run one command; returns (done code, cycles, wall seconds)."""
        code = ctypes.c_int(0)
        raw = command.to_bytes(self._cmd_bytes, "little")
        started = time.perf_counter()
        cycles = self._lib.celosia_run_command(self._h, raw, len(raw), max_cycles,
                                               ctypes.byref(code))
        wall = time.perf_counter() - started
        if cycles == -1:
            raise TimeoutError(f"engine did not finish within {max_cycles} cycles")
        if cycles == -2:
            raise RuntimeError("engine accessed memory out of bounds or unaligned")
        return code.value, cycles, wall

    def counters(self) -> dict:
        return {name: int(self._lib.celosia_counter(self._h, i))
                for i, name in enumerate(("cycles", "reads", "writes"))}
