"""The ``serial`` backend: the driver's :class:`celosia.sw.driver.Backend` over the UART bridge
of an FPGA board (``fpga/bridge.py``; frames in docs/fpga.md, "The UART protocol").

``SerialBackend(port_or_url)`` opens any pyserial port or URL (``/dev/ttyUSB0``,
``socket://127.0.0.1:PORT`` for the simulated board of ``sim/verilator_uart.py``), reads INFO
(memory size, core clock) and then speaks one request, one reply:

* ``read_csr``/``write_csr``: READ_CSR/WRITE_CSR at the offset of ``celosia.hdl.isa.CSR``;
* ``read_memory``/``write_memory``: READ_MEM/WRITE_MEM in chunks of up to 256 bytes (halved,
  down to 32, while chunks need more than two attempts, split after four failed ones; doubled
  back after 8 clean ones);
* ``advance``: polls STATUS until ``busy`` clears or the cycle limit (CYCLES_LO/HI) or the
  time limit passes; ``advance_to_retired`` also stops when INSTRET reaches a count (the
  driver's per-layer cycles).

``serial_backend(compiled, im, port=..., baud=..., timeout=...)`` is the factory for
``driver.register_backend("serial", ...)`` (port and rate default to ``$CELOSIA_SERIAL_PORT``
and ``$CELOSIA_SERIAL_BAUD``).

Protocol version 2 (fpga/bridge.py): every request carries a sequence number that its reply
echoes, and both carry CRC-16. A reply is looked for after the sync byte 0x5A (bytes before it
are skipped); its length follows from the status and the request, its sequence number must be
the one awaited and its CRC must match: a reply to an earlier request (a late, duplicated or
reordered one) is skipped like stray bytes. A reply that does not come in time (``timeout``
plus twice the frame's transfer time for the first byte, then at most ``gap_timeout`` between
bytes), is cut short, fails its CRC or reports that the board saw a corrupted request
(BAD_CRC, BAD_CMD, BAD_LEN, or BAD_ADDR for an address the host checked) makes the backend
wait (``retry_wait`` times the attempt, always over the board's 10 ms resynchronisation gap),
flush its input and send the same frame (same sequence number) again, at most ``retries``
more times. A port that closes or reports end of file, or a request with no valid reply after
the retries, raises :class:`SerialLinkError` naming the request; the backend never waits
without a deadline (except in ``advance`` without limits, which polls until the program
stops).

Idempotence. The board executes a write whose sequence number equals that of the last write
it executed (since INFO) only once, and acknowledges the copy: so a resent request takes
effect once, a CTRL start included. The backend never gives a new write the number of the
last acknowledged one, and after a request it gave up on (an error, or an interrupt) it opens
a new session (INFO, which makes the board forget the last write) before the next request.
Reads are executed again; they have no side effects.

Resets. From its reset until an INFO has been answered the board flags every reply
(RESET_FLAG, that INFO's reply included): a reply so flagged after this backend's first INFO
(a later INFO too) means the board lost its CSRs and any running program, and raises
:class:`BoardResetError` (then and on every later request: open a new backend).
``board_was_reset`` tells whether the first INFO found the board reset or powered up since
the last session.

Opening. The backend drains the line until it is quiet (a reply to an interrupted earlier
session), reads INFO (a new session), and with ``abort_running`` (the default) aborts a
program still running from an interrupted run (CTRL abort), so Ctrl-C during a run leaves the
board usable by the next one.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from celosia.fpga.bridge import (MAX_LEN, REPLY_OVERHEAD, REPLY_SYNC, RESET_FLAG, WRITES,
                                 BridgeStatus, Cmd, crc16, reply_length, request)
from celosia.hdl.isa import CSR

__all__ = ["SerialBackend", "SerialLinkError", "BridgeError", "BoardResetError",
           "serial_backend", "serial_backend_factory", "DEFAULT_BAUD"]

DEFAULT_BAUD = 115200
#: Smallest memory chunk on a noisy line.
MIN_CHUNK = 32
#: Attempts at a memory chunk larger than MIN_CHUNK before it is split.
SPLIT_ATTEMPTS = 4
#: Seconds each read call of the port may block (the deadlines are checked between calls).
READ_SLICE = 0.01

#: Statuses that say the board received a corrupted request (and did nothing).
_REJECTED = (BridgeStatus.BAD_CRC, BridgeStatus.BAD_CMD, BridgeStatus.BAD_LEN)
_STATUS_CODES = {int(s) for s in BridgeStatus}


class SerialLinkError(ConnectionError):
    """The link to the board is gone: the port closed or reported end of file, or a request
    got no valid reply after the retries. ``request`` describes the last request,
    ``attempts`` how often it was sent and ``reason`` what went wrong last."""

    def __init__(self, reason: str, request: str = "", attempts: int = 0):
        where = f" ({request}" + (f", {attempts} attempts" if attempts else "") + ")" \
            if request else ""
        super().__init__(f"serial link: {reason}{where}")
        self.reason, self.request, self.attempts = reason, request, attempts


class BridgeError(RuntimeError):
    """The board answered a well-formed request with an error (BUS_ERROR from the CSR bus)."""

    def __init__(self, status: BridgeStatus, request: str):
        super().__init__(f"board answered {status.name} to {request}")
        self.status, self.request = status, request


class BoardResetError(RuntimeError):
    """The board was reset since this backend read INFO: its CSRs and any running program are
    lost, so the run cannot go on (open a new backend and run again)."""

    def __init__(self, request: str):
        super().__init__(f"the board was reset during this session (its registers and any "
                         f"running program are lost; noticed at {request}); open the link "
                         f"again and rerun")
        self.request = request


class _TooNoisy(Exception):
    """A memory chunk failed SPLIT_ATTEMPTS times: send it in smaller pieces."""


class _BadReply(Exception):
    def __init__(self, reason: str, timeout: bool = False):
        super().__init__(reason)
        self.timeout = timeout


#: Seconds per byte assumed on a ``socket://`` link (see SerialBackend's ``byte_time``).
SOCKET_BYTE_TIME = 0.005


class SerialBackend:
    """The accelerator on a board behind its UART bridge.

    Parameters
    ----------
    port_or_url : a pyserial port name or URL, or an open serial-like object (``read``,
        ``write``, ``reset_input_buffer``, ``close``; tests pass fakes).
    baud : the UART rate (ignored by ``socket://``).
    timeout : seconds the board may take to start a reply, on top of the transfer time.
    retries : resends after a failed attempt.
    retry_wait : seconds before the first resend (``retry_wait * attempt`` before later ones,
        at most 4x); must exceed the board's 10 ms resynchronisation gap.
    byte_time : seconds per byte on the line (default ``10 / baud``, and SOCKET_BYTE_TIME on
        a ``socket://`` URL: a simulated board, or a board behind a network bridge, moves
        bytes far slower than its nominal baud rate; the simulated ULX3S with its SDRAM
        takes about 2 ms a byte).
    gap_timeout : longest silence inside a reply (default ``max(0.05, 32 * byte_time)``).
    poll_s : pause between STATUS polls in ``advance``.
    abort_running : on opening, abort a program the board is still running (one an
        interrupted earlier run left behind).
    """

    name = "serial"

    def __init__(self, port_or_url, baud: int = DEFAULT_BAUD, timeout: float = 0.1, *,
                 retries: int = 8, retry_wait: float = 0.02, byte_time: float | None = None,
                 gap_timeout: float | None = None, poll_s: float = 0.0,
                 abort_running: bool = True):
        if retry_wait <= 0.01:
            raise ValueError("retry_wait must exceed the board's 10 ms resynchronisation gap")
        self.baud, self.timeout, self.retries, self.retry_wait = baud, timeout, retries, retry_wait
        if byte_time is None:
            byte_time = (SOCKET_BYTE_TIME if isinstance(port_or_url, str)
                         and port_or_url.startswith("socket://") else 10.0 / baud)
        self.byte_time = byte_time
        self.gap_timeout = max(0.05, 32 * self.byte_time) if gap_timeout is None else gap_timeout
        self.poll_s = poll_s
        #: Link statistics: requests, resends, timeouts, bad replies, drains, bytes each way.
        self.stats = dict(requests=0, retries=0, timeouts=0, bad_replies=0, rejected=0,
                          drains=0, bytes_out=0, bytes_in=0, skipped_bytes=0, sessions=0,
                          aborted_on_open=0, min_chunk=MAX_LEN, splits=0)
        #: Bytes per READ_MEM/WRITE_MEM (adapts to the line, see _adapt).
        self.chunk = MAX_LEN
        self._attempts, self._clean = 1, 0
        if isinstance(port_or_url, str):
            self.port = port_or_url
            self._ser = self._open(port_or_url)
        else:
            self.port = getattr(port_or_url, "port", None) or repr(port_or_url)
            self._ser = port_or_url
        self._closed = False
        self._seq = int.from_bytes(os.urandom(1), "little")
        self._last_write_seq: int | None = None
        self._session = False       # INFO read; no request given up on since
        self._reset_seen = ""       # the request at which a board reset was noticed
        try:
            self._ser.reset_input_buffer()
        except Exception as exc:
            raise SerialLinkError(f"cannot use port {self.port}: {exc}") from exc
        self._drain("opening")
        #: INFO on opening found the board reset (or powered up) since the last session.
        self.board_was_reset = False
        try:
            self._new_session(first=True)
        except SerialLinkError as exc:
            if self.stats["bytes_in"] and not self.stats["sessions"]:
                raise SerialLinkError(
                    f"{exc.reason}; bytes came back but no protocol 2 reply (a bitstream "
                    f"from before protocol 2?)", exc.request, exc.attempts) from exc
            raise
        if abort_running and CSR.STATUS.get(self.read_csr("STATUS"), "busy"):
            self._abort()

    def _new_session(self, first: bool = False) -> None:
        """INFO: the board forgets the last write's sequence number and clears its reset
        flag; memory size and clock. In the middle of a session (``first`` false), a flagged
        INFO reply means the board was reset meanwhile: BoardResetError."""
        self._session = True        # (INFO itself needs none)
        try:
            info, reset = self._transact(Cmd.INFO, what="INFO", flag=True)
        except BaseException:
            self._session = False
            raise
        if first:
            self.board_was_reset = reset
        elif reset:
            self._reset_seen = "INFO (a new session after a failed request)"
            raise BoardResetError(self._reset_seen)
        self.stats["sessions"] += 1
        self._last_write_seq = None
        self.mem_bytes = int.from_bytes(info[:4], "little")
        self.clk_hz = int.from_bytes(info[4:8], "little")

    def _abort(self, timeout_s: float = 5.0) -> None:
        """Abort the running program (CTRL abort) and wait until the board is idle."""
        self.stats["aborted_on_open"] += 1
        self._write_csr("CTRL", CSR.CTRL.make(abort=1))
        end = time.monotonic() + timeout_s
        while CSR.STATUS.get(self.read_csr("STATUS"), "busy"):
            if time.monotonic() > end:
                raise SerialLinkError(f"the board stays busy {timeout_s:g} s after CTRL abort",
                                      "CTRL abort")

    def _open(self, url: str):
        import serial

        try:
            return serial.serial_for_url(url, baudrate=self.baud, timeout=READ_SLICE,
                                         write_timeout=max(1.0, 4 * MAX_LEN * self.byte_time))
        except (serial.SerialException, OSError, ValueError) as exc:
            raise SerialLinkError(f"cannot open {url}: {exc}") from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._ser.close()
            except Exception:
                pass

    def __enter__(self) -> "SerialBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- Backend interface -------------------------------------------------------------------

    def read_memory(self, addr: int, size: int) -> bytes:
        self._check_range(addr, size)
        out = bytearray()
        at, end = addr, addr + size
        while at < end:
            n = min(self.chunk, end - at)
            try:
                out += self._transact(Cmd.READ_MEM, at, n, what=f"READ_MEM {n} bytes at {at:#x}",
                                      split=n > MIN_CHUNK)
            except _TooNoisy:
                self.chunk = max(MIN_CHUNK, n // 2)
                continue
            self._adapt()
            at += n
        return bytes(out)

    def write_memory(self, addr: int, raw: bytes) -> None:
        raw = bytes(raw)
        self._check_range(addr, len(raw))
        off = 0
        while off < len(raw):
            chunk = raw[off:off + self.chunk]
            try:
                self._transact(Cmd.WRITE_MEM, addr + off, len(chunk), chunk,
                               what=f"WRITE_MEM {len(chunk)} bytes at {addr + off:#x}",
                               split=len(chunk) > MIN_CHUNK)
            except _TooNoisy:
                self.chunk = max(MIN_CHUNK, len(chunk) // 2)
                continue
            self._adapt()
            off += len(chunk)

    def _adapt(self) -> None:
        """Memory chunk size: halved (down to MIN_CHUNK) after a chunk that needed more than
        two attempts (a chunk that fails SPLIT_ATTEMPTS times is split at once), doubled back
        (up to 256) after 8 chunks that went through at once, so a noisy line still moves
        data."""
        if self._attempts > 2:
            self.chunk = max(MIN_CHUNK, self.chunk // 2)
            self._clean = 0
        elif self._attempts == 1:
            self._clean += 1
            if self._clean >= 8 and self.chunk < MAX_LEN:
                self.chunk = min(MAX_LEN, 2 * self.chunk)
                self._clean = 0
        self.stats["min_chunk"] = min(self.stats["min_chunk"], self.chunk)

    def read_csr(self, name: str) -> int:
        reg = getattr(CSR, name)
        return int.from_bytes(self._transact(Cmd.READ_CSR, reg.offset, what=f"READ_CSR {name}"),
                              "little")

    def write_csr(self, name: str, value: int) -> None:
        self._write_csr(name, int(value) & 0xFFFFFFFF)

    def advance(self, max_cycles: int | None, timeout_s: float | None) -> None:
        """Poll STATUS until ``busy`` clears, ``max_cycles`` more cycles have run (CYCLES) or
        ``timeout_s`` seconds have passed."""
        self._poll(None, max_cycles, timeout_s)

    def advance_to_retired(self, count: int, max_cycles: int | None,
                           timeout_s: float | None) -> None:
        """``advance`` that also returns once INSTRET reaches ``count``."""
        self._poll(count, max_cycles, timeout_s)

    def _poll(self, retired: int | None, max_cycles: int | None, timeout_s: float | None) -> None:
        t0 = time.monotonic()
        c0 = self.cycles() if max_cycles is not None else 0
        while CSR.STATUS.get(self.read_csr("STATUS"), "busy"):
            if retired is not None and self.read_csr("INSTRET") >= retired:
                return
            if timeout_s is not None and time.monotonic() - t0 >= timeout_s:
                return
            if max_cycles is not None and self.cycles() - c0 >= max_cycles:
                return
            if self.poll_s:
                time.sleep(self.poll_s)

    # --- helpers -----------------------------------------------------------------------------

    def cycles(self) -> int:
        """CYCLES (reading LO latches HI)."""
        lo = self.read_csr("CYCLES_LO")
        return lo | self.read_csr("CYCLES_HI") << 32

    def _check_range(self, addr: int, size: int) -> None:
        if addr < 0 or size < 0 or addr + size > self.mem_bytes:
            raise ValueError(f"[{addr:#x}, {addr + size:#x}) is outside the board's memory "
                             f"({self.mem_bytes} bytes)")

    def _write_csr(self, name: str, value: int) -> None:
        reg = getattr(CSR, name)
        self._transact(Cmd.WRITE_CSR, reg.offset, 4, value.to_bytes(4, "little"),
                       what=f"WRITE_CSR {name} = {value:#x}")

    # --- framing -----------------------------------------------------------------------------

    def _transact(self, cmd: Cmd, addr: int = 0, length: int = 1, payload: bytes = b"", *,
                  what: str, split: bool = False, flag: bool = False):
        """Send one request until a valid OK reply with its sequence number comes; its data.
        Every attempt sends the same frame, so the board executes a write once. ``split``: give
        up with _TooNoisy after SPLIT_ATTEMPTS attempts (the caller sends the range in smaller
        chunks, under new sequence numbers). A reply with the reset flag raises
        BoardResetError; with ``flag`` (INFO) it is returned instead: (data, flag)."""
        if self._closed:
            raise SerialLinkError("port closed", what)
        if self._reset_seen:
            raise BoardResetError(self._reset_seen)
        if not self._session:
            # An earlier request was given up on (the board may hold it as its last write):
            # let the line settle, then a new session.
            self._recover(1, what)
            self._new_session()
        seq = self._next_seq(cmd in WRITES)
        frame = request(cmd, addr, length, payload, seq=seq)
        expect = reply_length(cmd, length)
        self.stats["requests"] += 1
        self._session = False       # until this request is settled
        reason = ""
        for attempt in range(self.retries + 1):
            if split and attempt == SPLIT_ATTEMPTS:
                self._recover(attempt, what)
                self.stats["splits"] += 1
                self._clean = 0
                raise _TooNoisy()
            if attempt:
                self.stats["retries"] += 1
                self._recover(attempt, what)
            self._send(frame, what)
            try:
                status, data, reset = self._receive(expect, len(frame), seq, what)
            except _BadReply as bad:
                reason = str(bad)
                self.stats["timeouts" if bad.timeout else "bad_replies"] += 1
                continue
            if reset and not flag:
                self._reset_seen = what
                raise BoardResetError(what)
            if status == BridgeStatus.OK:
                self._attempts = attempt + 1
                if cmd in WRITES:
                    self._last_write_seq = seq
                self._session = True
                return (data, reset) if flag else data
            # BAD_CRC/BAD_CMD/BAD_LEN, or BAD_ADDR for a range checked here: the board saw a
            # corrupted request. BUS_ERROR is the board's answer when it comes twice in a row
            # (once, it may be a reply whose status byte was hit and whose CRC matched anyway).
            if status == BridgeStatus.BUS_ERROR and reason == "board answered BUS_ERROR":
                self._session = True        # a failed write is not the board's last write
                raise BridgeError(status, what)
            self.stats["rejected"] += 1
            reason = f"board answered {status.name}"
        raise SerialLinkError(f"no valid reply after {self.retries + 1} attempts, last: {reason}",
                              what, self.retries + 1)

    def _next_seq(self, write: bool) -> int:
        """The next sequence number; a write never gets that of the last acknowledged write
        (the board would take it for a copy of it)."""
        self._seq = (self._seq + 1) & 0xFF
        if write and self._seq == self._last_write_seq:
            self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def _send(self, frame: bytes, what: str) -> None:
        try:
            self._ser.reset_input_buffer()    # nothing may be pending between exchanges
            self._ser.write(frame)
        except Exception as exc:       # SerialException, OSError, timeouts: the link is gone
            raise SerialLinkError(f"write failed: {exc}", what) from exc
        self.stats["bytes_out"] += len(frame)

    def _chunk(self, n: int, what: str) -> bytes:
        """What the port has of the next ``n`` bytes within its read timeout, counted."""
        try:
            chunk = self._ser.read(n)
        except Exception as exc:   # EOF on a socket, a vanished device, a closed port
            raise SerialLinkError(f"connection lost: {exc}", what) from exc
        self.stats["bytes_in"] += len(chunk)
        return chunk

    def _read(self, n: int, deadline: float, what: str, *, gap: bool = False) -> bytes:
        """Up to ``n`` bytes, until ``deadline`` (with ``gap``: until ``gap_timeout`` passes
        without a byte)."""
        buf = bytearray()
        while len(buf) < n:
            chunk = self._chunk(n - len(buf), what)
            now = time.monotonic()
            if chunk:
                buf += chunk
                if gap:
                    deadline = now + self.gap_timeout
            elif now >= deadline:
                break
        return bytes(buf)

    def _receive(self, expect: int, sent: int, seq: int,
                 what: str) -> tuple[BridgeStatus, bytes, bool]:
        """The reply with sequence number ``seq``: (status, data, reset flag). Bytes before a
        sync byte and replies to other requests are skipped; _BadReply when no such reply
        comes in time, or it is cut short or garbled."""
        deadline = (time.monotonic() + self.timeout
                    + 2 * self.byte_time * (sent + expect + REPLY_OVERHEAD))
        buf = bytearray()
        skipped = 0
        try:
            while True:
                i = buf.find(REPLY_SYNC)
                drop = len(buf) if i < 0 else i
                if drop:
                    skipped += drop
                    del buf[:drop]
                if len(buf) >= 3:
                    if buf[1] != seq:             # not a reply to this request: skip it
                        skipped += 1
                        del buf[:1]
                        continue
                    n = expect if buf[2] & ~RESET_FLAG == BridgeStatus.OK else 0
                    total = REPLY_OVERHEAD + n
                    if len(buf) >= total:
                        if crc16(bytes(buf[1:total])) != 0:
                            raise _BadReply("reply CRC mismatch")
                        code = buf[2] & ~RESET_FLAG
                        if code not in _STATUS_CODES:
                            raise _BadReply(f"unknown status {buf[2]:#x}")
                        return (BridgeStatus(code), bytes(buf[3:total - 2]),
                                bool(buf[2] & RESET_FLAG))
                chunk = self._chunk(max(1, (REPLY_OVERHEAD + expect) - len(buf)), what)
                now = time.monotonic()
                if chunk:
                    buf += chunk
                    if REPLY_SYNC in buf:     # inside a reply: the gap limit from now on
                        deadline = max(deadline, now + self.gap_timeout)
                elif now >= deadline:
                    if buf:
                        raise _BadReply(f"reply cut short ({len(buf)} bytes)", timeout=True)
                    raise _BadReply("no reply" + (f" ({skipped} stray bytes)" if skipped else ""),
                                    timeout=True)
        finally:
            self.stats["skipped_bytes"] += skipped

    def _recover(self, attempt: int, what: str) -> None:
        """Wait over the board's resynchronisation gap, then drop whatever arrived."""
        time.sleep(self.retry_wait * min(attempt, 4))
        try:
            self._ser.reset_input_buffer()
        except Exception as exc:
            raise SerialLinkError(f"connection lost: {exc}", what) from exc

    def _drain(self, what: str) -> None:
        """Read and drop bytes until the line has been quiet for a while (replies to an
        interrupted earlier session), at most a second."""
        self.stats["drains"] += 1
        quiet = max(self.retry_wait, self.gap_timeout)
        end = time.monotonic() + 1.0
        last = time.monotonic()
        while time.monotonic() < end and time.monotonic() - last < quiet:
            if self._read(1, 0.0, what):
                last = time.monotonic()


# --- factories ---------------------------------------------------------------------------------

def serial_backend(compiled=None, im=None, *, port=None, baud: int | None = None,
                   timeout: float | None = None, **options) -> SerialBackend:
    """The ``serial`` backend factory for ``driver.register_backend``: a
    :class:`SerialBackend` on ``port`` (a pyserial port or URL, default
    ``$CELOSIA_SERIAL_PORT``) at ``baud`` (default ``$CELOSIA_SERIAL_BAUD`` or 115200);
    ``timeout`` and ``options`` go to SerialBackend. Checks that the compiled window fits the
    board's memory."""
    port = port or os.environ.get("CELOSIA_SERIAL_PORT")
    if not port:
        raise ValueError("the serial backend needs a port (e.g. /dev/ttyUSB0 or "
                         "socket://127.0.0.1:PORT): pass --port or set CELOSIA_SERIAL_PORT")
    baud = int(baud or os.environ.get("CELOSIA_SERIAL_BAUD", DEFAULT_BAUD))
    backend = SerialBackend(port, baud, 0.1 if timeout is None else timeout, **options)
    if compiled is not None and compiled.end > backend.mem_bytes:
        backend.close()
        raise ValueError(f"the program's window ends at {compiled.end:#x}; the board on "
                         f"{backend.port} has {backend.mem_bytes} bytes of memory")
    return backend


def board_array(port=None, baud: int | None = None) -> int:
    """The array size of the board on ``port`` (its CONFIG register), for a program compiled
    to fit it: the link is opened, CONFIG read and the link closed."""
    backend = serial_backend(None, port=port, baud=baud)
    try:
        return CSR.CONFIG.get(backend.read_csr("CONFIG"), "array")
    finally:
        backend.close()


def serial_backend_factory(port, baud: int = DEFAULT_BAUD, timeout: float = 0.1,
                           **options) -> Callable:
    """``serial_backend`` with the port and options bound: ``(compiled, im) -> backend``."""

    def factory(compiled, im=None, **more) -> SerialBackend:
        return serial_backend(compiled, im, port=port, baud=baud, timeout=timeout,
                              **{**options, **more})

    return factory
