"""The link fault campaign: programs run over the serial link through a :class:`FaultProxy`
that corrupts, drops, duplicates, reorders and truncates bytes and frames and resets the
simulated board, until a given number of faults has been injected. Every run must end
bit-exact (the whole window and the counters equal the isa simulator's) or with a clear error
(an exception that names what went wrong); a run that ends without an error but with a wrong
result is a **silent error**, and there must be none.

::

    python -m celosia.sim.link_campaign --faults 10000 [--seed S] [--json]

The board is the iCEBreaker's accelerator (2x2, no vector engine, board-sized, native memory
port) Verilated behind ``sim/verilator/uart_harness.cpp``; the programs are random chains of
three requantising matmuls (``tb_accelerator.matmul_chain``) in a 6 KiB window. After a clear
error the backend is closed and the next run opens a new one (INFO, which also clears the
board's reset flag). Exit status 0 when there was no silent error and no unexpected exception,
3 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections import Counter

__all__ = ["run_campaign", "main", "CLEAR_ERRORS"]

#: Exceptions that end a run with a clear error (by class name).
CLEAR_ERRORS = ("SerialLinkError", "BridgeError", "BoardResetError", "AcceleratorError",
                "AcceleratorHung")
#: The campaign's board: the iCEBreaker's accelerator.
BOARD = dict(array=2, vector=False, k_max=512, sizing="small", memory="native")
BASE, SIZE = 0x800, 0x1800
#: Host timeouts: the simulated board's (``SimBoard.backend_options``), a shorter wait for a
#: reply's first byte, more resends.
OPTIONS = dict(timeout=0.05, byte_time=0.0005, gap_timeout=0.05, retry_wait=0.02, retries=12)


def _one_run(be, img, cfg):
    """Load, run and read back one program; (registers, window bytes)."""
    from celosia.sw.driver import Accelerator

    acc = Accelerator(be)
    if acc.config != cfg:
        raise RuntimeError(f"board configuration {acc.config}, expected {cfg}")
    be.write_memory(img.base, img.mem[img.base:img.base + img.size].tobytes())
    be.write_csr("WIN_BASE", img.base)
    be.write_csr("WIN_SIZE", img.size)
    acc.start(img.prog)
    acc.wait(max_cycles=2_000_000, timeout_s=120)
    regs = {name: be.read_csr(name) for name in ("STATUS", "ERROR", "ERROR_PC", "PC",
                                                 "INSTRET", "MATMUL_COUNT")}
    return regs, be.read_memory(img.base, img.size)


def run_campaign(faults: int, *, seed: int = 0, spacing=(200, 900), frames: float = 0.05,
                 resets: float = 0.0015, max_runs: int | None = None, board=None,
                 options: dict | None = None, log=None) -> dict:
    """Run programs until the proxy has injected ``faults`` faults (or ``max_runs`` runs);
    the counts. ``board``: a started SimBoard of the campaign's configuration (default: one
    is built and started here). ``spacing``, ``frames``, ``resets``: the FaultProxy's."""
    from celosia.hdl.isa import MachineConfig
    from celosia.sim.tb_accelerator import matmul_chain, reference, status_bits
    from celosia.sw.serial_backend import SerialBackend

    from .verilator_uart import FaultProxy, SimBoard

    own = board is None
    if own:
        board = SimBoard(**BOARD)
        board.start()
    cfg = MachineConfig(BOARD["array"], None)
    opts = dict(OPTIONS, **(options or {}))
    counts = Counter()
    errors: Counter = Counter()
    silent: list[dict] = []
    unexpected: list[str] = []
    t0 = time.monotonic()
    proxy = FaultProxy(board.url, seed=seed, spacing=spacing, frames=frames, resets=resets,
                       reset=board.reset)
    be = None
    run = 0
    try:
        while proxy.faults < faults and (max_runs is None or run < max_runs):
            img = matmul_chain(seed * 1_000_003 + run, cfg, links=3, base=BASE, size=SIZE,
                               max_dim=9)
            run += 1
            f0 = proxy.faults
            try:
                if be is None:
                    be = SerialBackend(proxy.url, **opts)
                regs, got = _one_run(be, img, cfg)
            except Exception as exc:
                name = type(exc).__name__
                if name in CLEAR_ERRORS:
                    counts["clear_errors"] += 1
                    errors[name] += 1
                else:
                    counts["unexpected"] += 1
                    unexpected.append(f"run {run}: {traceback.format_exc()}")
                if be is not None:
                    be.close()
                    be = None
                time.sleep(0.05)        # the proxy and the board see the connection close
                continue
            ref_mem, ref, _ = reference(img)
            want = ref_mem[img.base:img.base + img.size].tobytes()
            bad = [n for n in ("ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT")
                   if regs[n] != ref[n]]
            if status_bits(regs["STATUS"]) != ref["STATUS"]:
                bad.append("STATUS")
            if got != want:
                bad.append(f"{sum(a != b for a, b in zip(got, want))} window bytes")
            if bad:
                counts["silent_errors"] += 1
                silent.append({"run": run, "differ": bad, "faults": proxy.faults - f0})
            else:
                counts["bit_exact"] += 1
            if log is not None and run % 25 == 0:
                log(f"run {run}: {proxy.faults} faults, {dict(counts)}, "
                    f"{time.monotonic() - t0:.0f} s")
    finally:
        if be is not None:
            be.close()
        proxy.stop()
        if own:
            board.stop()
    by_kind = Counter()
    for k, v in proxy.stats.items():
        d, kind = k.split("_", 1)
        if kind != "bytes":
            by_kind[kind] += v
    return {
        "runs": run, "bit_exact": counts["bit_exact"], "clear_errors": counts["clear_errors"],
        "silent_errors": counts["silent_errors"], "unexpected": counts["unexpected"],
        "faults": proxy.faults, "faults_by_kind": dict(by_kind),
        "proxy": dict(proxy.stats), "errors_by_type": dict(errors),
        "silent": silent, "unexpected_tracebacks": unexpected[:5],
        "wall_s": round(time.monotonic() - t0, 1),
        "settings": {"seed": seed, "spacing": list(spacing) if spacing else None,
                     "frames": frames, "resets": resets, "options": opts, "board": BOARD},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m celosia.sim.link_campaign",
        description="Run programs on the simulated iCEBreaker board through a fault-injecting "
                    "proxy (flipped, dropped, duplicated, reordered and truncated bytes and "
                    "frames, board resets) until N faults were injected; report runs, "
                    "bit-exact runs, clear errors and silent errors (exit status 3 on any "
                    "silent error or unexpected exception).")
    p.add_argument("--faults", type=int, default=1000, metavar="N",
                   help="faults to inject (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", type=int, nargs=2, default=(200, 900), metavar=("LO", "HI"),
                   help="bytes between two byte faults in one direction (default 200 900)")
    p.add_argument("--frames", type=float, default=0.05,
                   help="probability of a frame fault (dup/reorder/truncate) per frame")
    p.add_argument("--resets", type=float, default=0.0015,
                   help="probability of a board reset before a frame")
    p.add_argument("--max-runs", type=int, default=None)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    r = run_campaign(args.faults, seed=args.seed, spacing=tuple(args.spacing),
                     frames=args.frames, resets=args.resets, max_runs=args.max_runs,
                     log=None if args.quiet else (lambda s: print(s, file=sys.stderr,
                                                                  flush=True)))
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['runs']} runs, {r['faults']} faults injected {r['faults_by_kind']}: "
              f"{r['bit_exact']} bit-exact, {r['clear_errors']} clear errors "
              f"{r['errors_by_type']}, {r['silent_errors']} silent errors, "
              f"{r['unexpected']} unexpected; {r['wall_s']} s")
        for t in r["unexpected_tracebacks"]:
            print(t, file=sys.stderr)
    return 3 if r["silent_errors"] or r["unexpected"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
