"""``celosia check``: random programs on a backend, compared with the ``isa`` simulator.

A smoke test for a board (``--backend serial --port ...``) or a simulated accelerator: each
program is a chain of requantising matmuls (``celosia.sim.tb_accelerator.matmul_chain``: random
shapes, transposed B, row shifts, accumulate and residual modes) in a window of the backend's
memory. The backend's whole window and its counters must equal what the ``isa`` simulator
leaves; the memory around the window must not change. Reports cycles, wall time and, over a
serial link, the bytes moved.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from celosia.hdl.isa import CSR, WINDOW_ALIGN, MachineConfig

from .errors import CelosiaError, seconds

__all__ = ["add_arguments", "add_serial_arguments", "run", "check_backend"]

BACKENDS = ("isa", "amaranth", "verilator", "serial")


def _open(args):
    """(backend, memory bytes it has)."""
    if args.backend == "serial":
        from .serial_backend import serial_backend
        b = serial_backend(None, None, port=args.port, baud=args.baud)
        return b, b.mem_bytes
    mem = args.mem_kib * 1024
    config = MachineConfig(args.array)
    if args.backend == "isa":
        from .isa_sim import IsaBackend
        return IsaBackend(config, mem), mem
    if args.backend == "verilator":
        from celosia.sim.verilator_accel import VerilatorBackend
        return VerilatorBackend(config, mem), mem
    from celosia.sim.amaranth_accel import AmaranthBackend
    return AmaranthBackend(config, mem), mem


def check_backend(backend, mem_bytes: int, programs: int = 3, seed: int = 1,
                  timeout_s: float = 600.0, progress=None) -> list[dict]:
    """Run ``programs`` random matmul chains on ``backend``; one result dict each."""
    from celosia.sim.tb_accelerator import matmul_chain, reference
    from .driver import Accelerator

    acc = Accelerator(backend)
    cfg = acc.config
    guard = WINDOW_ALIGN
    size = (mem_bytes - 2 * guard) // WINDOW_ALIGN * WINDOW_ALIGN
    size = min(size, 0x4000)
    if size < 0x800:
        raise ValueError(f"the backend has {mem_bytes} bytes of memory; the check needs "
                         f"at least {0x800 + 2 * guard}")
    results = []
    for k in range(programs):
        img = matmul_chain(seed + k, cfg, links=3, base=guard, size=size, guard=guard,
                           max_dim=4 * cfg.array)
        want_mem, want, _ = reference(img)
        stats0 = dict(getattr(backend, "stats", {}))
        t0 = time.perf_counter()
        backend.write_memory(0, img.mem.tobytes())
        backend.write_csr("WIN_BASE", img.base)
        backend.write_csr("WIN_SIZE", img.size)
        acc.start(img.prog)
        acc.wait(max_cycles=50_000_000, timeout_s=timeout_s)
        got = np.frombuffer(backend.read_memory(0, len(img.mem)), np.uint8)
        wall = time.perf_counter() - t0
        counters = acc.counters()
        diff = np.flatnonzero(got != want_mem)
        r = {"program": k, "matmuls": counters["matmul_count"], "cycles": counters["cycles"],
             "wall_s": round(wall, 3),
             "bit_exact_vs_isa": bool(diff.size == 0
                                      and counters["instructions"] == want["INSTRET"]),
             "bytes_differing": int(diff.size)}
        if diff.size:
            r["first_difference"] = int(diff[0])
        stats = getattr(backend, "stats", None)
        if stats:
            moved = (stats.get("bytes_out", 0) - stats0.get("bytes_out", 0)
                     + stats.get("bytes_in", 0) - stats0.get("bytes_in", 0))
            r.update(link_bytes=moved, link_retries=stats.get("retries", 0)
                     - stats0.get("retries", 0))
        results.append(r)
        if progress is not None:
            progress(r)
    return results


def add_serial_arguments(p) -> None:
    """--port and --baud of the serial backend (``embed`` and ``check``)."""
    p.add_argument("--port", metavar="PORT", default=None,
                   help="serial backend: the board's serial port or a pyserial URL "
                        "(/dev/ttyUSB0, socket://127.0.0.1:PORT; default $CELOSIA_SERIAL_PORT)")
    p.add_argument("--baud", type=int, default=None, metavar="B",
                   help="serial backend: baud rate (default $CELOSIA_SERIAL_BAUD or 115200)")


def add_arguments(p) -> None:
    p.add_argument("--backend", default="serial", choices=BACKENDS,
                   help="where to run (default: serial, a board on --port)")
    add_serial_arguments(p)
    p.add_argument("--array", type=int, default=4, metavar="N",
                   help="array size of a simulated backend (default 4; a board reports its own)")
    p.add_argument("--mem-kib", type=int, default=64, metavar="K",
                   help="memory of a simulated backend in KiB (default 64)")
    p.add_argument("--programs", type=int, default=3, metavar="P",
                   help="random programs to run (default 3)")
    p.add_argument("--seed", type=int, default=1, help="first program's seed (default 1)")
    p.add_argument("--timeout", type=seconds, default=600.0, metavar="S",
                   help="give up on a program after S seconds (default 600)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from .driver import AcceleratorError, AcceleratorHung
    try:
        backend, mem = _open(args)
    except (ValueError, OSError) as exc:
        raise CelosiaError(f"backend {args.backend}: {exc}") from None
    show = None
    if not args.json:
        print(f"{'program':>7}  {'matmuls':>7}  {'cycles':>9}  {'wall s':>7}  bit-exact vs isa")
        show = lambda r: print(f"{r['program']:>7}  {r['matmuls']:>7}  {r['cycles']:>9}  "
                               f"{r['wall_s']:>7.2f}  {'yes' if r['bit_exact_vs_isa'] else 'NO'}",
                               flush=True)
    try:
        results = check_backend(backend, mem, args.programs, args.seed, args.timeout, show)
    except (AcceleratorError, AcceleratorHung, ValueError, OSError) as exc:
        raise CelosiaError(f"backend {args.backend}: {exc}") from None
    finally:
        if hasattr(backend, "close"):
            backend.close()
    ok = all(r["bit_exact_vs_isa"] for r in results)
    if args.json:
        json.dump({"backend": args.backend, "ok": ok, "results": results}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print("all programs bit-exact" if ok else "MISMATCH: the backend differs from the "
              "isa simulator")
    return 0 if ok else 3
