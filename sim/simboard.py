"""``celosia simboard``: a board's gateware, Verilated, served on a TCP port (or a pty).

The simulated board is :class:`celosia.fpga.simtop.SimTop`: the board top's
:class:`celosia.fpga.system.BoardSystem` (the same accelerator, memory window and UART bridge,
with the board's array, vector engine, clock, baud divisor and request timeout) without its
PLL. For the ULX3S its memory is the SDRAM: LiteDRAM's controller on the SDRAM chip model,
whose first protocol violation stops the board. The serial backend reaches it exactly as a
board: ``celosia embed --backend serial --port socket://127.0.0.1:P``.

``--preload-model`` loads the compiled model's weights region and its digest record into the
SDRAM behind the controller (a back-door load, the state a board is in after one weight load
over the link), so the first sentence sends only its program and input.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

from celosia.fpga.boards import BOARDS, uart_divisor

__all__ = ["add_arguments", "run", "board_simulator", "preload_model"]

#: The link the simulated ULX3S runs at unless told otherwise (its FT231X's 3 Mbaud).
DEFAULT_BAUD = 3_000_000


def board_simulator(board: str, *, baud: int = DEFAULT_BAUD, port: int = 0, pty: bool = False,
                    log=None):
    """The :class:`celosia.sim.verilator_uart.SimBoard` of ``board`` (built or cached)."""
    from .verilator_uart import SimBoard

    b = BOARDS[board]
    clk_hz = int(round(b.clock_mhz * 1e6))
    # With the vector engine where the board has a sizing for it: the simulated board runs
    # whole models (the iCEBreaker has none: matmul only, as its bitstream).
    vector = b.vector or b.vector_sizing is not None
    sizing = (b.vector_sizing or b.sizing) if vector else b.sizing
    timeout = clk_hz // 100                 # the board top's 10 ms gap
    return SimBoard(array=b.array, vector=vector, k_max=b.k_max, sizing=sizing, memory=b.memory,
                    window=b.window, mem_bytes=b.mem_bytes,
                    divisor=uart_divisor(clk_hz, baud), clk_hz=clk_hz, timeout_cycles=timeout,
                    active_cycles=4 * timeout + 1, port=port, pty=pty, log=log)


def preload_model(sim, *, model=None, model_file=None, array: int) -> dict:
    """Load the compiled model's weights and digest record into ``sim``'s memory behind the
    controller; returns what was loaded."""
    from celosia.sw.compiler import compile_model
    from celosia.sw.encoder import load_models
    from celosia.sw.memory_map import DIGEST_ADDR

    _, im = load_models(model_file, checkpoint=model, quiet=True)
    compiled = compile_model(im, 1, array=array)
    if compiled.base + compiled.weights_size > sim.mem_bytes:
        raise ValueError(f"the weights ({compiled.weights_size} bytes at {compiled.base:#x}) "
                         f"do not fit the board's {sim.mem_bytes} bytes")
    sim.preload(compiled.base, compiled.weights_image)
    sim.preload(DIGEST_ADDR, compiled.weights_record)
    return {"weights_bytes": compiled.weights_size, "base": compiled.base,
            "digest": compiled.weights_digest.hex()[:16]}


def add_arguments(p) -> None:
    p.add_argument("--board", required=True, choices=sorted(BOARDS),
                   help="the board whose gateware to simulate")
    p.add_argument("--tcp-port", type=int, default=0, metavar="P",
                   help="serve on 127.0.0.1:P (default: a free port; the URL is printed first)")
    p.add_argument("--pty", action="store_true",
                   help="serve on a pseudo-terminal instead (its path is printed first)")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, metavar="B",
                   help=f"the board's UART rate, which sets its divisor (default {DEFAULT_BAUD})")
    p.add_argument("--preload-model", action="store_true",
                   help="load the model's weights into the board's memory before serving, as "
                        "if loaded over the link once")
    p.add_argument("--model", metavar="PATH", default=None,
                   help="with --preload-model: a sentence-transformers checkpoint folder "
                        "(default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--model-file", metavar="PATH", default=None,
                   help="with --preload-model: the integer model file")


def _say(msg: str) -> None:
    print(f"celosia simboard: {msg}", file=sys.stderr, flush=True)


def run(args) -> int:
    b = BOARDS[args.board]
    if args.baud <= 0:
        _say(f"--baud {args.baud}: a positive rate")
        return 2
    try:
        uart_divisor(b.clock_mhz * 1e6, args.baud)
    except ValueError as e:
        _say(f"--baud {args.baud}: {e}")
        return 2
    if not 0 <= args.tcp_port <= 65535:
        _say(f"--tcp-port {args.tcp_port}: a port number 0..65535")
        return 2
    vector = "vector engine" if b.vector or b.vector_sizing else "matmul only"
    _say(f"building the simulated {b.name} ({b.array}x{b.array}, {vector}, memory "
         f"{b.window}; minutes the first time, then cached)")
    t0 = time.monotonic()
    sim = board_simulator(args.board, baud=args.baud, port=args.tcp_port, pty=args.pty)
    _say(f"ready after {time.monotonic() - t0:.1f} s ({b.clock_mhz:g} MHz, "
         f"{args.baud} baud, memory {sim.mem_bytes} bytes)")
    if args.preload_model:
        try:
            loaded = preload_model(sim, model=args.model, model_file=args.model_file,
                                   array=b.array)
        except Exception as e:          # noqa: BLE001 - one line, then out
            _say(f"--preload-model: {e}")
            sim.stop()
            return 1
        _say(f"preloaded {loaded['weights_bytes']} bytes of weights at {loaded['base']:#x} "
             f"(digest {loaded['digest']})")
    try:
        url = sim.start()
    except OSError as e:
        _say(str(e))
        sim.stop()
        return 1
    print(url, flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    status = 0
    while not done.wait(0.5):
        if sim.violation:
            _say(f"stopped: SDRAM protocol violation: {sim.violation}")
            status = 1
            break
    st = sim.stats()
    sim.stop()
    line = f"served {st['cycles']} cycles, {st['bytes_in']} bytes in, {st['bytes_out']} out"
    if "sdram_reads" in st:
        line += (f"; SDRAM {st['sdram_reads']} reads, {st['sdram_writes']} writes (16-bit "
                 f"words), {st['sdram_activates']} activates, {st['sdram_refreshes']} refreshes")
    _say(line)
    return status
