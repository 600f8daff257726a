"""Banked, double-buffered on-chip scratchpads and the tokens that hand their buffers over.

A :class:`Scratchpad` is written one memory-port beat (W bytes) per cycle and read R bytes per
cycle. Its lines are ``max(W, R)`` bytes wide and split into W-byte banks, so a beat writes
exactly one bank and a read gets a whole line (then picks its R bytes). Each scratchpad holds
two buffers: the loader fills one while the compute side reads the other. A buffer is written
only while the loader owns it and read (for data that is used) only while it is full or, for
a buffer whose rows are counted (:class:`PingPong` ``rows``), at rows already written, so reads
and writes never meet at one address (``NO_RW_CHECK``).

A :class:`PingPong` tracks the two buffers of one scratchpad: a buffer is *free*, *claimed*
by the loader (requests issued), *full* (last beat written) and then *released* by its reader.
A buffer filled row after row may also count the rows written so far, so its reader can follow
the loader into a buffer that is not full yet, reading only rows already written.
"""

from amaranth import *
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Scratchpad", "PingPong", "SyncFifo", "NO_RW_CHECK"]

#: Memory attribute telling synthesis that a read never needs the data being written to the
#: same address in the same cycle, so no collision logic is added around block RAM. Yosys
#: applies it when it merges a register into an asynchronous read port, so the memories below
#: read asynchronously into a register of their own (the same behaviour as a synchronous,
#: non-transparent read port).
NO_RW_CHECK = {"no_rw_check": 1}


def _undefined_init(shape):
    """Attributes giving a register an undefined initial value in the netlist (simulation keeps
    0). A register merged into a block RAM read port that has a defined initial value is
    emulated with a flip-flop and an AND gate per data bit, since the RAM's output register
    powers up undefined; the data of the registers below is used only after an enabled read.
    Empty where the RTLIL backend has no undefined constant."""
    try:
        from amaranth.back.rtlil import Undef
    except ImportError:
        return {}
    return {"init": Undef(Shape.cast(shape).width)}


def _read_register(m, memory, en, name):
    """A synchronous read of ``memory`` (data one cycle after an enabled read, held otherwise)
    made of an asynchronous read port and a register; returns ``(port, data)``.

    The register has no reset and an undefined initial value (:func:`_undefined_init`), so it
    becomes the block RAM's own output register."""
    port = memory.read_port(domain="comb")
    data = Signal(memory.shape, name=name, reset_less=True, attrs=_undefined_init(memory.shape))
    with m.If(en):
        m.d.sync += data.eq(port.data)
    return port, data


class SyncFifo(fifo.SyncFIFOBuffered):
    """``amaranth.lib.fifo.SyncFIFOBuffered`` (the same interface and timing) whose storage is
    marked ``NO_RW_CHECK``: it reads an entry only while the FIFO holds it and writes one only
    while it is free, so a read and a write never meet at one address."""

    def elaborate(self, platform):
        if self.depth <= 1:
            return super().elaborate(platform)
        m = Module()
        inner_depth = self.depth - 1
        inner_level = Signal(range(inner_depth + 1))
        produce = Signal(range(inner_depth))
        consume = Signal(range(inner_depth))
        do_write = Signal()
        do_read = Signal()
        do_inner_read = Signal()
        m.d.comb += [
            self.w_level.eq(self.level), self.r_level.eq(self.level),
            self.level.eq(inner_level + self.r_rdy),
            self.w_rdy.eq(inner_level != inner_depth),
            do_write.eq(self.w_rdy & self.w_en),
            do_read.eq(self.r_rdy & self.r_en),
            do_inner_read.eq((inner_level != 0) & (~self.r_rdy | self.r_en)),
        ]
        m.submodules.storage = storage = memory.Memory(shape=self.width, depth=inner_depth,
                                                       init=[], attrs=NO_RW_CHECK)
        wp = storage.write_port()
        rp, r_data = _read_register(m, storage, do_inner_read, "storage_r_data")
        m.d.comb += [wp.addr.eq(produce), wp.data.eq(self.w_data), wp.en.eq(do_write),
                     rp.addr.eq(consume), self.r_data.eq(r_data)]

        def incr(v):
            return Mux(v == inner_depth - 1, 0, v + 1)

        with m.If(do_write):
            m.d.sync += produce.eq(incr(produce))
        with m.If(do_inner_read):
            m.d.sync += [consume.eq(incr(consume)), self.r_rdy.eq(1)]
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)
        with m.If(do_write & ~do_inner_read):
            m.d.sync += inner_level.eq(inner_level + 1)
        with m.If(do_inner_read & ~do_write):
            m.d.sync += inner_level.eq(inner_level - 1)
        return m


def _log2(x: int) -> int:
    assert x > 0 and x & (x - 1) == 0, x
    return x.bit_length() - 1


class Scratchpad(wiring.Component):
    """Two buffers of ``depth_bytes`` each, written ``write_bytes`` and read ``read_bytes`` at a time.

    Parameters
    ----------
    write_bytes : int
        Bytes per write beat (the memory-port width), a power of two.
    read_bytes : int
        Bytes per read, a power of two.
    depth_bytes : int
        Capacity of one buffer, a power of two, at least ``max(write_bytes, read_bytes)``.
    block_ram : bool
        Ask synthesis for block RAM even when the scratchpad is small (``ram_style``), which a
        small FPGA with spare block RAM prefers to flip-flops.
    byte_mask : bool
        Write beats carry a byte mask (``mask``): only the bytes whose bit is set are written.

    Members
    -------
    w : In(stream.Signature(...))
        Write beats ``{buf, addr, data}`` (and ``mask`` with ``byte_mask``); ``addr`` counts
        ``write_bytes`` units. Always ready.
    r_en, r_buf, r_addr : In
        Read request; ``addr`` counts ``read_bytes`` units. When ``r_en`` is low the previous
        read data is held (a stalled pipeline keeps its operands).
    r_data : Out(read_bytes * 8)
        Data of the last enabled read, one cycle after it.
    """

    def __init__(self, *, write_bytes: int, read_bytes: int, depth_bytes: int,
                 block_ram: bool = False, byte_mask: bool = False):
        for name, v in (("write_bytes", write_bytes), ("read_bytes", read_bytes),
                        ("depth_bytes", depth_bytes)):
            if not isinstance(v, int) or v <= 0 or v & (v - 1):
                raise ValueError(f"{name} must be a positive power of two, not {v!r}")
        self.write_bytes = write_bytes
        self.read_bytes = read_bytes
        self.line_bytes = max(write_bytes, read_bytes)
        if depth_bytes < self.line_bytes:
            raise ValueError(f"depth_bytes {depth_bytes} is below one line ({self.line_bytes})")
        self.depth_bytes = depth_bytes
        self.block_ram = block_ram
        self.byte_mask = byte_mask
        self.lines = depth_bytes // self.line_bytes
        super().__init__({
            "w": In(stream.Signature(data.StructLayout({
                "buf": 1,
                "addr": range(depth_bytes // write_bytes),
                "data": unsigned(write_bytes * 8),
                **({"mask": unsigned(write_bytes)} if byte_mask else {}),
            }))),
            "r_en": In(1),
            "r_buf": In(1),
            "r_addr": In(range(depth_bytes // read_bytes)),
            "r_data": Out(read_bytes * 8),
        })

    def elaborate(self, platform):
        m = Module()
        banks = self.line_bytes // self.write_bytes
        chunks = self.line_bytes // self.read_bytes
        lines_log2 = _log2(self.lines)

        m.d.comb += self.w.ready.eq(1)
        w_bank = self.w.payload.addr[:_log2(banks)] if banks > 1 else C(0, 1)
        w_line = self.w.payload.addr[_log2(banks):]
        r_line = self.r_addr[_log2(chunks):]
        line_data = []
        for bank in range(banks):
            mem = memory.Memory(shape=unsigned(self.write_bytes * 8),
                                depth=2 * self.lines, init=[],
                                attrs={**NO_RW_CHECK,
                                       **({"ram_style": "block"} if self.block_ram else {})})
            m.submodules[f"bank{bank}"] = mem
            wp = mem.write_port(granularity=8 if self.byte_mask else None)
            rp, r_data = _read_register(m, mem, self.r_en, f"bank{bank}_r_data")
            write = self.w.valid & (w_bank == bank)
            m.d.comb += [
                wp.addr.eq(Cat(w_line[:lines_log2], self.w.payload.buf)),
                wp.data.eq(self.w.payload.data),
                wp.en.eq(Mux(write, self.w.payload.mask, 0) if self.byte_mask
                         else write.replicate(len(wp.en))),
                rp.addr.eq(Cat(r_line[:lines_log2], self.r_buf)),
            ]
            line_data.append(r_data)
        line = Cat(*line_data)
        if chunks > 1:
            sel = Signal(range(chunks))
            with m.If(self.r_en):
                m.d.sync += sel.eq(self.r_addr[:_log2(chunks)])
            m.d.comb += self.r_data.eq(line.word_select(sel, self.read_bytes * 8))
        else:
            m.d.comb += self.r_data.eq(line)
        return m


class PingPong(wiring.Component):
    """Ownership of the two buffers of a scratchpad.

    Members
    -------
    clear : In(1)
        Make both buffers free (at the start of a command).
    claim, claim_buf : In
        The loader starts filling ``claim_buf`` (it must be free).
    fill, fill_buf : In
        The last beat of ``fill_buf`` was written: it is full.
    release, release_buf : In
        The reader is done with ``release_buf``: it is free again.
    free, full : Out(2)
        Per-buffer state.
    row : In(1)
        With ``rows``: one more row of ``fill_buf`` was written (rows are written in order).
    written : Out(data.ArrayLayout(range(rows + 1), 2))
        With ``rows``: rows of each buffer written since it was last free (up to ``rows``; 0 for
        a buffer filled out of row order, which is read only when full).

    Parameters
    ----------
    rows : int
        Rows a buffer holds, counted by ``row`` (0: not counted).
    """

    def __init__(self, rows: int = 0):
        if not isinstance(rows, int) or rows < 0:
            raise ValueError(f"rows must be an int >= 0, not {rows!r}")
        self.rows = rows
        super().__init__({
            "clear": In(1),
            "claim": In(1), "claim_buf": In(1),
            "fill": In(1), "fill_buf": In(1),
            "release": In(1), "release_buf": In(1),
            "free": Out(2),
            "full": Out(2),
            "row": In(1),
            "written": Out(data.ArrayLayout(range(rows + 1), 2)),
        })

    def elaborate(self, platform):
        m = Module()
        claimed = Signal(2)
        full = Signal(2)
        m.d.comb += [self.free.eq(~claimed), self.full.eq(full)]
        for b in range(2):
            written = self.written[b]
            with m.If(self.clear | (self.release & (self.release_buf == b))):
                m.d.sync += [claimed[b].eq(0), full[b].eq(0)]
                if self.rows:
                    m.d.sync += written.eq(0)
            with m.Else():
                with m.If(self.claim & (self.claim_buf == b)):
                    m.d.sync += claimed[b].eq(1)
                with m.If(self.fill & (self.fill_buf == b)):
                    m.d.sync += full[b].eq(1)
                if self.rows:
                    with m.If(self.row & (self.fill_buf == b) & (written != self.rows)):
                        m.d.sync += written.eq(written + 1)
        return m
