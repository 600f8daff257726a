"""AXI4 and AXI4-Lite for Celosia's host interface: signatures, a memory-port arbiter and an
AXI4 master for the memory port.

* :class:`AXI4LiteSignature` / :class:`AXI4Signature`: the buses, seen from the master, with
  the AXI signal names (``awaddr``, ``wdata``, ...), so that an exported port ``m_axi__awaddr``
  is what cocotbext-axi's ``AxiBus.from_prefix(dut, "m_axi_")`` looks for.
* :class:`MemArbiter`: several :class:`celosia.hdl.engine.MemoryPortSignature` masters (the
  controller's fetch port, the matmul engine, the vector engine) onto one, round robin per
  request, read data routed back in request order through a FIFO of port numbers.
* :class:`AxiMaster`: that one port as an AXI4 master with one ID: every read request is an
  ``INCR`` burst and consecutive read requests to consecutive beats are merged into one burst
  (up to ``max_burst`` beats, never across a 4 KiB boundary); writes are single-beat ``INCR``
  bursts with byte strobes. Responses on one ID return in order, so read data needs no
  reordering. ``writes_idle`` is high when no write is waiting or unacknowledged (``B``
  received): the controller's SYNC and HALT wait for it, so a write is in memory before a
  later command is allowed to read it. With ``faults=True`` it also checks every response
  (RRESP/BRESP) and runs a watchdog, and after a fault *fences* the memory (see the class).
"""

from __future__ import annotations

from amaranth import *
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .engine import MemoryPortSignature
from .params import MEM_TIMEOUT_CYCLES, ErrorCode
from .pipeline import SkidBuffer
from .scratchpad import SyncFifo

__all__ = ["AXI4LiteSignature", "AXI4Signature", "MemArbiter", "AxiMaster", "AxiSlice",
           "BURST_INCR"]

BURST_INCR = 1


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite, master's view (``Out`` = driven by the master)."""

    def __init__(self, addr_width: int = 8, data_width: int = 32):
        self.addr_width, self.data_width = addr_width, data_width
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1),
            "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })


class AXI4Signature(wiring.Signature):
    """AXI4 (full), master's view, without the optional QoS/region/user signals."""

    def __init__(self, addr_width: int = 32, data_width: int = 128, id_width: int = 1):
        self.addr_width, self.data_width, self.id_width = addr_width, data_width, id_width
        members = {}
        for ch in ("aw", "ar"):
            members.update({
                f"{ch}id": Out(id_width), f"{ch}addr": Out(addr_width), f"{ch}len": Out(8),
                f"{ch}size": Out(3), f"{ch}burst": Out(2), f"{ch}lock": Out(1),
                f"{ch}cache": Out(4), f"{ch}prot": Out(3), f"{ch}valid": Out(1),
                f"{ch}ready": In(1),
            })
        members.update({
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bid": In(id_width), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "rid": In(id_width), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
            "rvalid": In(1), "rready": Out(1),
        })
        super().__init__(members)


def _round_robin(m: Module, valids: list, last: Signal, grant: Signal) -> None:
    """Combinational grant: the first valid port after ``last`` (round robin)."""
    n = len(valids)
    with m.Switch(last):
        for prev in range(n):
            with m.Case(prev):
                order = [(prev + 1 + k) % n for k in range(n)]
                with m.If(valids[order[0]]):
                    m.d.comb += grant.eq(order[0])
                for i in order[1:]:
                    with m.Elif(valids[i]):
                        m.d.comb += grant.eq(i)


def _registered_grant(m: Module, name: str, valids: list, taken) -> tuple[Signal, Signal]:
    """A round-robin grant held in a register: it names the port offered to the memory and
    stays while that port offers and ``taken`` is low; otherwise it moves, for the next cycle,
    to the first port offering after it (itself last). Returns the grant and whether the
    granted port offers. The price of the register: a cycle without an offer when the granted
    port stops offering and another starts."""
    grant = Signal(max(1, (len(valids) - 1).bit_length()), name=f"{name}_grant")
    offered = Signal(name=f"{name}_offered")
    nxt = Signal.like(grant, name=f"{name}_next")
    m.d.comb += [offered.eq(Cat(valids).bit_select(grant, 1)), nxt.eq(grant)]
    _round_robin(m, valids, grant, nxt)
    with m.If(~offered | taken):
        m.d.sync += grant.eq(nxt)
    return grant, offered


class MemArbiter(wiring.Component):
    """``ports`` memory-port masters onto ``out``; reads answered in order per port.

    ``outstanding`` bounds the reads in flight (the depth of the FIFO that routes read data
    back). A port must accept its read data eventually (every Celosia master does: it only
    requests what it has room for)."""

    def __init__(self, ports: int, port_bytes: int, outstanding: int = 64):
        self.n, self.port_bytes, self.outstanding = ports, port_bytes, outstanding
        super().__init__({
            **{f"p{i}": In(MemoryPortSignature(port_bytes)) for i in range(ports)},
            "out": Out(MemoryPortSignature(port_bytes)),
            # For the AXI master's fault reports: the port the oldest unanswered read beat
            # belongs to, and the port of the write offered on ``out.wr``.
            "rd_port": Out(max(1, (ports - 1).bit_length())),
            "wr_port": Out(max(1, (ports - 1).bit_length())),
        })

    def port(self, i):
        return getattr(self, f"p{i}")

    def elaborate(self, platform):
        m = Module()
        n = self.n
        ports = [self.port(i) for i in range(n)]
        idx_bits = max(1, (n - 1).bit_length())
        m.submodules.tags = tags = SyncFifo(width=idx_bits, depth=self.outstanding)

        # Read requests, through a registered grant (``_registered_grant``: no port's ready
        # depends on another port's valid in the same cycle).
        rd_last = Signal(idx_bits, init=n - 1)      # the port of the last read taken
        rd_taken = Signal()
        rd_grant, rd_offered = _registered_grant(m, "rd", [p.rd_req.valid for p in ports],
                                                 rd_taken)
        m.d.comb += [self.out.rd_req.valid.eq(rd_offered & tags.w_rdy),
                     rd_taken.eq(self.out.rd_req.valid & self.out.rd_req.ready)]
        with m.Switch(rd_grant):
            for i, p in enumerate(ports):
                with m.Case(i):
                    m.d.comb += [
                        self.out.rd_req.payload.eq(p.rd_req.payload),
                        p.rd_req.ready.eq(self.out.rd_req.ready & tags.w_rdy),
                    ]
        with m.If(rd_taken):
            m.d.comb += [tags.w_en.eq(1), tags.w_data.eq(rd_grant)]
            m.d.sync += rd_last.eq(rd_grant)

        # Read data, back to the port that asked.
        for i, p in enumerate(ports):
            m.d.comb += [
                p.rd_resp.payload.eq(self.out.rd_resp.payload),
                p.rd_resp.valid.eq(self.out.rd_resp.valid & tags.r_rdy & (tags.r_data == i)),
            ]
        with m.Switch(tags.r_data):
            for i, p in enumerate(ports):
                with m.Case(i):
                    m.d.comb += self.out.rd_resp.ready.eq(tags.r_rdy & p.rd_resp.ready)
        # The tag FIFO's output fills a cycle after a read enters it empty: that read, the
        # only one unanswered, is then the last one granted.
        m.d.comb += [tags.r_en.eq(self.out.rd_resp.valid & self.out.rd_resp.ready),
                     self.rd_port.eq(Mux(tags.r_rdy, tags.r_data, rd_last))]

        # Writes, the same way.
        wr_taken = Signal()
        wr_grant, wr_offered = _registered_grant(m, "wr", [p.wr.valid for p in ports], wr_taken)
        m.d.comb += [self.out.wr.valid.eq(wr_offered),
                     wr_taken.eq(self.out.wr.valid & self.out.wr.ready)]
        with m.Switch(wr_grant):
            for i, p in enumerate(ports):
                with m.Case(i):
                    m.d.comb += [
                        self.out.wr.payload.eq(p.wr.payload),
                        p.wr.ready.eq(self.out.wr.ready),
                    ]
        m.d.comb += self.wr_port.eq(wr_grant)
        # The round robin's state, which the arbiter's proof (celosia.sim.properties) states
        # invariants of.
        self._probe = dict(rd_last=rd_last, rd_grant=rd_grant, wr_grant=wr_grant)
        return m


class AxiMaster(wiring.Component):
    """A :class:`MemoryPortSignature` slave in, an AXI4 master out (one ID, in order).

    Reads: a request opens a burst in a holding register; while the next request is the next
    beat (same 4 KiB page, fewer than ``max_burst`` beats so far) it joins the burst, and the
    burst goes out on ``AR`` as soon as a request does not fit or no request came in a cycle.
    Writes: one beat per burst (``AW`` and ``W`` together), at most ``max_writes``
    unacknowledged.

    **Faults** (``faults=True``, the accelerator's build). A read beat with RRESP = SLVERR or
    DECERR, a write response with BRESP = SLVERR or DECERR, or the watchdog (``timeout``
    cycles in a row with a transaction outstanding and no channel moving: no AR/AW/W
    handshake, no RVALID, no BVALID) is a fault: ``fault`` rises the next cycle with
    ``fault_code`` (``MEM_READ_ERROR``, ``MEM_WRITE_ERROR``, ``MEM_TIMEOUT``) and ``fault_port``
    (the arbiter port of the failing beat, write, or for a timeout the oldest unanswered read,
    else the oldest unacknowledged write). All three are registers, and the first fault wins
    until ``clear``.

    From then on the master is *fenced*: it issues nothing more on AXI, accepts every write
    from the port and drops it, and answers every read the port is owed (requests already
    accepted, issued or not, and new ones) itself with a beat of undefined data, so the units
    finish their commands and the controller drains without the memory. On AXI it keeps the
    rules: an AR/AW/W whose valid is up stays up with its payload until the memory takes it;
    RREADY and BREADY stay high, and every beat and response still owed for the transactions
    issued before the fault is counted as *stale* and dropped when (if ever) it arrives, also
    after ``clear`` (the next START), so a late answer is never taken for a new request. A
    memory that never takes a pending AR/AW/W or never answers leaves those stale: the next
    run's requests wait behind them, and that run times out too (only a reset of both sides
    clears such a memory). ``writes_idle`` ignores unacknowledged writes while fenced.
    """

    def __init__(self, port_bytes: int, *, addr_width: int = 32, max_burst: int = 16,
                 max_writes: int = 64, faults: bool = False, timeout: int = MEM_TIMEOUT_CYCLES,
                 ports: int = 1, write_port: int | None = None, max_reads: int = 1024):
        assert port_bytes & (port_bytes - 1) == 0 and 1 <= max_burst <= 256
        assert timeout >= 1
        self.port_bytes, self.addr_width = port_bytes, addr_width
        self.max_burst, self.max_writes = max_burst, max_writes
        self.faults, self.timeout = faults, timeout
        self.port_bits = max(1, (ports - 1).bit_length())
        #: Without a write-port FIFO, every write comes from this port.
        self.write_port = write_port
        self.max_reads = max_reads
        members = {
            "port": In(MemoryPortSignature(port_bytes)),
            "axi": Out(AXI4Signature(addr_width, 8 * port_bytes)),
            "writes_idle": Out(1),
        }
        if faults:
            members.update({
                "rd_port": In(self.port_bits), "wr_port": In(self.port_bits), "clear": In(1),
                "fault": Out(1), "fault_code": Out(4), "fault_port": Out(self.port_bits),
                "quiet": Out(1),
            })
        super().__init__(members)
        # The read burst being gathered and the count of unacknowledged writes. Created here
        # rather than in elaborate(): the protocol proof (celosia.sim.properties) states how
        # they relate to the transfers on both sides.
        self._held = Signal()
        self._h_addr = Signal(addr_width)
        self._h_len = Signal(8)           # beats - 1
        # the held burst's next beat within its 4 KiB page, h_addr[lw:12] + h_len + 1, kept as
        # a register beside them (a carry out of the page's beat bits: the burst cannot grow)
        self._h_next = Signal(max(12 - (port_bytes.bit_length() - 1), 8) + 1)
        self._joins = Signal()            # the request offered now continues the held burst
        self._pending = Signal(range(max_writes + 1))
        # The fault state (``faults``), here for the same reason: the fenced flag, beats put on
        # AR and not yet received, the stale ones among them, read beats owed to the port,
        # and the stale write responses among the unacknowledged writes.
        self._fenced = Signal()
        self._r_out = Signal(16)
        self._stale_r = Signal(16)
        self._stale_nz = Signal()         # stale_r != 0, kept as a register (RREADY's path)
        self._owed = Signal(range(max_reads + 1))
        self._stale_b = Signal(range(max_writes + 1))

    def elaborate(self, platform):
        m = Module()
        w, axi, port = self.port_bytes, self.axi, self.port
        lw = w.bit_length() - 1
        faults = self.faults
        for ch in ("aw", "ar"):
            m.d.comb += [
                getattr(axi, f"{ch}size").eq(lw),
                getattr(axi, f"{ch}burst").eq(BURST_INCR),
                getattr(axi, f"{ch}cache").eq(0b0011),     # normal, bufferable, modifiable
            ]
        fenced = self._fenced
        if faults:
            m.d.comb += self.fault.eq(fenced)

        # --- reads: gather consecutive beats into a burst ---
        held, h_addr, h_len = self._held, self._h_addr, self._h_len
        # The next beat of the burst lies in the same 4 KiB page: only the beat index within
        # the page is added to (a carry out of it means the burst would cross the page).
        addr = port.rd_req.payload.addr
        nxt_beat = self._h_next
        joins = self._joins
        m.d.comb += joins.eq(held & (addr[lw:12] == nxt_beat[:12 - lw])
                             & ~nxt_beat[12 - lw:].any()
                             & (addr[12:] == h_addr[12:]) & (addr[:lw] == h_addr[:lw])
                             & (h_len < self.max_burst - 1))
        ar_free = Signal()
        # After a fault no burst goes out until the stale beats have come in (they come first
        # anyway, one ID); this bounds the beats out by the reads the port may have in flight.
        if faults:
            m.d.comb += ar_free.eq((~axi.arvalid | axi.arready) & ~self._stale_nz)
        else:
            m.d.comb += ar_free.eq(~axi.arvalid | axi.arready)
        ar_load = Signal()                # a burst goes into the AR register this cycle
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += axi.arvalid.eq(0)
        # Accept a request when it joins the held burst, or when the held burst (if any) can
        # be handed to AR this cycle.
        rd_req_ready = joins | ~held | ar_free
        with m.If(port.rd_req.valid & joins):
            m.d.sync += [h_len.eq(h_len + 1), nxt_beat.eq(nxt_beat + 1)]
        with m.Elif(held & ar_free):
            # The held burst is complete (no joining request this cycle): send it.
            m.d.comb += ar_load.eq(1)
            m.d.sync += [axi.arvalid.eq(1), axi.araddr.eq(h_addr), axi.arlen.eq(h_len),
                         held.eq(0)]
            with m.If(port.rd_req.valid):
                m.d.sync += [held.eq(1), h_addr.eq(port.rd_req.payload.addr), h_len.eq(0),
                             nxt_beat.eq(port.rd_req.payload.addr[lw:12] + 1)]
        with m.Elif(port.rd_req.valid & ~held):
            m.d.sync += [held.eq(1), h_addr.eq(port.rd_req.payload.addr), h_len.eq(0),
                         nxt_beat.eq(port.rd_req.payload.addr[lw:12] + 1)]

        if not faults:
            m.d.comb += [
                port.rd_req.ready.eq(rd_req_ready),
                port.rd_resp.valid.eq(axi.rvalid),
                port.rd_resp.payload.eq(axi.rdata),
                axi.rready.eq(port.rd_resp.ready),
            ]
        else:
            # Beats issued on AR (or waiting there) and not yet received; of them, the stale
            # ones (issued before a fault); beats accepted from the port and not yet delivered.
            r_out, stale_r, owed = self._r_out, self._stale_r, self._owed
            r_out_next = Signal(16)
            r_hs = Signal()
            drop = Signal()
            m.d.comb += [
                drop.eq(fenced | self._stale_nz),
                axi.rready.eq(drop | port.rd_resp.ready),
                r_hs.eq(axi.rvalid & axi.rready),
                port.rd_req.ready.eq(fenced | rd_req_ready),
                # Fenced: the port's owed beats are answered here (data undefined).
                port.rd_resp.valid.eq(Mux(fenced, owed != 0, axi.rvalid & ~drop)),
                port.rd_resp.payload.eq(axi.rdata),
                r_out_next.eq(r_out + Mux(ar_load & ~fenced, h_len + 1, 0)
                              - (r_hs & (r_out != 0))),
                self.quiet.eq(owed == 0),
            ]
            m.d.sync += r_out.eq(r_out_next)
            with m.If(fenced):
                # Nothing new goes out: the held burst is answered from ``owed``.
                m.d.sync += held.eq(0)
                with m.If(ar_load):
                    m.d.sync += axi.arvalid.eq(0)
            rq = port.rd_req.valid & port.rd_req.ready
            rs = port.rd_resp.valid & port.rd_resp.ready
            with m.If(rq & ~rs):
                m.d.sync += owed.eq(owed + 1)
            with m.Elif(rs & ~rq):
                m.d.sync += owed.eq(owed - 1)

        # --- writes: one beat per burst ---
        pending = self._pending
        inc = Signal()
        dec = Signal()
        aw_free = Signal()
        w_free = Signal()
        wr_ready = aw_free & w_free & (pending < self.max_writes)
        m.d.comb += [
            aw_free.eq(~axi.awvalid | axi.awready),
            w_free.eq(~axi.wvalid | axi.wready),
            port.wr.ready.eq(wr_ready | fenced),
            inc.eq(port.wr.valid & port.wr.ready & ~fenced),
            axi.bready.eq(1),
            dec.eq(axi.bvalid),
            axi.wlast.eq(1),
            axi.awlen.eq(0),
        ]
        with m.If(axi.awvalid & axi.awready):
            m.d.sync += axi.awvalid.eq(0)
        with m.If(axi.wvalid & axi.wready):
            m.d.sync += axi.wvalid.eq(0)
        with m.If(inc):
            m.d.sync += [
                axi.awvalid.eq(1), axi.awaddr.eq(port.wr.payload.addr),
                axi.wvalid.eq(1), axi.wdata.eq(port.wr.payload.data),
                axi.wstrb.eq(port.wr.payload.strb),
            ]
        pending_next = Signal.like(pending)
        m.d.comb += pending_next.eq(pending + Mux(inc ^ dec, Mux(inc, 1, C(-1, len(pending))), 0))
        m.d.sync += pending.eq(pending_next)
        idle = (pending == 0) & ~port.wr.valid
        m.d.comb += self.writes_idle.eq(Mux(fenced, ~port.wr.valid, idle) if faults else idle)
        if not faults:
            return m

        # --- faults ---
        # The port of each unacknowledged write (one ID: responses come back in order).
        if self.write_port is None:
            m.submodules.wr_tags = wr_tags = fifo.SyncFIFO(width=self.port_bits,
                                                           depth=self.max_writes)
            m.d.comb += [wr_tags.w_en.eq(inc), wr_tags.w_data.eq(self.wr_port),
                         wr_tags.r_en.eq(dec)]
            wr_head = wr_tags.r_data
        else:
            wr_head = C(self.write_port, self.port_bits)
        stale_b = self._stale_b
        b_stale = stale_b != 0
        rd_fault = Signal()
        wr_fault = Signal()
        m.d.comb += [
            rd_fault.eq(axi.rvalid & axi.rready & ~drop & axi.rresp[1]),
            wr_fault.eq(axi.bvalid & ~b_stale & ~fenced & axi.bresp[1]),
        ]
        # Watchdog.
        outstanding = ((r_out != 0) | (pending != 0) | axi.arvalid | axi.awvalid | axi.wvalid)
        moved = (axi.rvalid | axi.bvalid | (axi.arvalid & axi.arready)
                 | (axi.awvalid & axi.awready) | (axi.wvalid & axi.wready))
        quiet_n = Signal(range(self.timeout + 1))
        expired = Signal()
        m.d.comb += expired.eq(quiet_n == self.timeout)
        with m.If(fenced | self.clear | ~outstanding | moved):
            m.d.sync += quiet_n.eq(0)
        with m.Elif(~expired):
            m.d.sync += quiet_n.eq(quiet_n + 1)

        fault_now = Signal()
        m.d.comb += fault_now.eq(~fenced & ~self.clear & (rd_fault | wr_fault | expired))
        stale_r_next = Signal.like(stale_r)
        with m.If(fault_now):
            # Everything still owed by the memory is stale from now on.
            m.d.comb += stale_r_next.eq(r_out_next)
            m.d.sync += stale_b.eq(pending_next)
        with m.Else():
            m.d.comb += stale_r_next.eq(stale_r - (r_hs & self._stale_nz))
            with m.If(dec & b_stale):
                m.d.sync += stale_b.eq(stale_b - 1)
        m.d.sync += [stale_r.eq(stale_r_next), self._stale_nz.eq(stale_r_next != 0)]
        with m.If(self.clear):
            m.d.sync += [fenced.eq(0), self.fault_code.eq(0), self.fault_port.eq(0)]
        with m.Elif(fault_now):
            m.d.sync += fenced.eq(1)
            with m.If(rd_fault):
                m.d.sync += [self.fault_code.eq(ErrorCode.MEM_READ_ERROR),
                             self.fault_port.eq(self.rd_port)]
            with m.Elif(wr_fault):
                m.d.sync += [self.fault_code.eq(ErrorCode.MEM_WRITE_ERROR),
                             self.fault_port.eq(wr_head)]
            with m.Else():
                m.d.sync += [self.fault_code.eq(ErrorCode.MEM_TIMEOUT),
                             self.fault_port.eq(Mux(owed != 0, self.rd_port, wr_head))]
        return m


#: The AXI4 channels and the signals each carries (besides valid and ready), with the
#: direction of the channel seen from the master: True when the master drives it.
_AXI_CHANNELS = {
    "aw": (True, ("awid", "awaddr", "awlen", "awsize", "awburst", "awlock", "awcache", "awprot")),
    "w": (True, ("wdata", "wstrb", "wlast")),
    "ar": (True, ("arid", "araddr", "arlen", "arsize", "arburst", "arlock", "arcache", "arprot")),
    "b": (False, ("bid", "bresp")),
    "r": (False, ("rid", "rdata", "rresp", "rlast")),
}


class AxiSlice(wiring.Component):
    """An AXI4 register slice: a :class:`celosia.hdl.pipeline.SkidBuffer` on each of the five
    channels, so no valid, ready or payload path runs through it in either direction.
    Transfers pass in order, each once, one per cycle and channel when both sides are willing;
    each channel takes one cycle more.

    Members
    -------
    s : ``In(AXI4Signature(...))``
        Towards the master.
    m : ``Out(AXI4Signature(...))``
        Towards the slave.
    """

    def __init__(self, addr_width: int = 32, data_width: int = 128, id_width: int = 1):
        sig = AXI4Signature(addr_width, data_width, id_width)
        self._sig = sig
        super().__init__({"s": In(sig), "m": Out(sig)})

    def elaborate(self, platform):
        m = Module()
        for ch, (forward, names) in _AXI_CHANNELS.items():
            src, dst = (self.s, self.m) if forward else (self.m, self.s)
            fields = [getattr(src, n) for n in names]
            stage = SkidBuffer(unsigned(sum(len(f) for f in fields)))
            m.submodules[f"{ch}_stage"] = stage
            m.d.comb += [stage.i.valid.eq(getattr(src, f"{ch}valid")),
                         stage.i.payload.eq(Cat(*fields)),
                         getattr(src, f"{ch}ready").eq(stage.i.ready),
                         getattr(dst, f"{ch}valid").eq(stage.o.valid),
                         stage.o.ready.eq(getattr(dst, f"{ch}ready"))]
            at = 0
            for n, f in zip(names, fields):
                m.d.comb += getattr(dst, n).eq(stage.o.payload[at:at + len(f)])
                at += len(f)
        return m
