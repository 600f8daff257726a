"""The matmul engine: systolic array, scratchpads, tile sequencer and epilogue behind one command.

A command (``celosia.hdl.params.command_layout``) describes ``C = A @ B`` with its epilogue
(bias, accumulate or residual add, requantisation); the engine loads the operands through its
memory port, computes, stores C and answers on ``done`` with an ``ErrorCode``.
"""

from __future__ import annotations

import argparse
import sys

from amaranth import *
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .epilogue import Epilogue
from .isa import RES_SHIFT_MAX
from .params import (ADDR_BITS, DEFAULT_ARRAY, K_MAX, PARAM_RECORD_BYTES, AddendMode, DONE_BITS, ErrorCode,
                     check_config, command_layout, default_port_bytes, group_cols)
from .pipeline import CreditCounter, SkidBuffer
from .scratchpad import PingPong, Scratchpad, SyncFifo
from .sequencer import (Collector, Feeder, Loader, Writer, compute_plan, plan_layout,
                        read_request_layout, write_layout)
from .systolic import SystolicArray, row_layout

__all__ = ["MemoryPortSignature", "MatmulEngine", "verilog_text",
           "add_verilog_arguments", "run_verilog"]


class MemoryPortSignature(wiring.Signature):
    """A simple memory master port moving ``port_bytes`` bytes per beat.

    Members (seen from the master)
    ------------------------------
    rd_req : Out(stream.Signature({addr}))
        Read one aligned beat at byte address ``addr``.
    rd_resp : In(stream.Signature(port_bytes * 8))
        Read data, in request order.
    wr : Out(stream.Signature({addr, data, strb}))
        Write the bytes of an aligned beat whose ``strb`` bit is set.
    """

    def __init__(self, port_bytes: int):
        self.port_bytes = port_bytes
        super().__init__({
            "rd_req": Out(stream.Signature(read_request_layout())),
            "rd_resp": In(stream.Signature(port_bytes * 8)),
            "wr": Out(stream.Signature(write_layout(port_bytes))),
        })


class MatmulEngine(wiring.Component):
    """An ``array`` x ``array`` int8 matmul engine with a ``port_bytes``-wide memory port.

    Parameters
    ----------
    array : int
        Systolic array size N (a power of two, 2..32).
    port_bytes : int
        Memory-port width W in bytes (a power of two, 4..128); default 2N.
    k_max : int
        Longest reduction the scratchpads hold (default 4096).
    outstanding : int
        Read requests in flight (covers the memory latency).
    addr_bits, epilogue_lanes, epilogue_registers, serial_epilogue, bram_pads
        See :class:`celosia.hdl.params.Sizing` (default: full size).
    result_rows : int
        Rows the queue behind the array holds (default 4N; at least N). A tile closes only when
        the queue has room for its N rows, so short tiles stream back to back when it holds
        the rows of the tiles in flight (about 2N + 4 cycles from a tile's last step to its
        last row).
    output_rows : int
        Result rows the queue behind the epilogue holds (default 16, about the round trip
        from a row's issue into the epilogue to its credit's return, so the epilogue can take
        a row every cycle).
        0: no queue, the serial epilogue (which honours backpressure) feeds the writer.
    port_stages : bool
        A registered stage (:class:`celosia.hdl.pipeline.SkidBuffer`) on each channel of the
        memory port and a write register in front of each scratchpad (default); without, the
        loader and writer meet the port and the scratchpads directly (a small, slow-clocked
        build).
    follow_b : bool
        The feeder follows B's rows into a buffer the loader is still filling, so a group starts
        on its A panel alone (default); without, it waits for full A and B buffers (a smaller
        build).
    hold_cmd : bool
        The master keeps ``cmd.payload`` valid from the hand-over until ``done`` is taken (a
        controller without an issue slot does), so the engine uses it in place and keeps no
        copy.
    prefetch : bool
        The loader works one command ahead: once it has loaded the running command's operands
        it takes the next command offered with ``cmd_independent`` and loads that one's while
        the running one computes and writes (a second copy of the command; default: on unless
        ``hold_cmd`` or ``serial_epilogue``).

    Members
    -------
    cmd : In(stream.Signature(command_layout()))
        A command (``ready`` while idle; with ``prefetch`` also once the loader is done with
        the running command).
    cmd_independent : In(1)
        Beside ``cmd.payload``: the command reads no byte that the one before it writes (the
        controller's check), so its loads may overlap that command. Without it a command starts
        loading only when the one before it has finished.
    done : Out(stream.Signature(DONE_BITS))
        An ``ErrorCode`` per command (OK, BAD_SHAPE, BAD_ALIGN or BAD_MODE), once every result beat has been accepted by the port.
    mem : Out(MemoryPortSignature(port_bytes))
    busy : Out(1)
    """

    def __init__(self, array: int = DEFAULT_ARRAY, port_bytes: int | None = None, *,
                 k_max: int = K_MAX, outstanding: int = 32, addr_bits: int = ADDR_BITS,
                 epilogue_lanes: int | None = None, epilogue_registers=(True,) * 6,
                 bram_pads: bool = False, hold_cmd: bool = False,
                 serial_epilogue: bool = False, result_rows: int | None = None,
                 output_rows: int = 16, port_stages: bool = True, follow_b: bool = True,
                 prefetch: bool | None = None):
        if port_bytes is None:
            port_bytes = default_port_bytes(array) if isinstance(array, int) else 16
        check_config(array, port_bytes, k_max)
        if not isinstance(outstanding, int) or outstanding < 2:
            raise ValueError(f"outstanding must be an int >= 2, not {outstanding!r}")
        self.array = array
        self.port_bytes = port_bytes
        self.k_max = k_max
        self.outstanding = outstanding
        self.addr_bits = addr_bits
        self.epilogue_lanes = epilogue_lanes
        self.epilogue_registers = epilogue_registers
        self.bram_pads = bram_pads
        self.hold_cmd = hold_cmd
        self.serial_epilogue = serial_epilogue
        self.group = group_cols(array, port_bytes)
        if result_rows is None:
            result_rows = 4 * array
        if not isinstance(result_rows, int) or result_rows < array:
            raise ValueError(f"result_rows must be an int >= the array size {array}, "
                             f"not {result_rows!r}")
        if not isinstance(output_rows, int) or output_rows < 0:
            raise ValueError(f"output_rows must be an int >= 0, not {output_rows!r}")
        if output_rows == 0 and not serial_epilogue:
            raise ValueError("output_rows=0 needs the serial epilogue (the pipelined one "
                             "never stalls, so its results need a queue)")
        self.result_rows = result_rows
        self.output_rows = output_rows
        self.port_stages = port_stages
        self.follow_b = follow_b
        if prefetch is None:
            prefetch = not hold_cmd and not serial_epilogue
        if prefetch and (hold_cmd or serial_epilogue):
            raise ValueError("prefetch needs a command copy (not hold_cmd) and the corner-turn "
                             "loader (not serial_epilogue)")
        self.prefetch = prefetch
        super().__init__({
            "cmd": In(stream.Signature(command_layout())),
            "cmd_independent": In(1),
            "done": Out(stream.Signature(DONE_BITS)),
            "mem": Out(MemoryPortSignature(port_bytes)),
            "busy": Out(1),
        })

    @staticmethod
    def _queue(width: int, credits: int) -> SyncFifo:
        """A queue for ``credits`` items behind a unit that never stalls. One entry more than
        the credits: SyncFifo refuses a write while its storage is full even in the cycle it
        moves an entry out to its output register."""
        return SyncFifo(width=width, depth=credits + 1)

    def elaborate(self, platform):
        m = Module()
        n, w, g, k_max = self.array, self.port_bytes, self.group, self.k_max
        lw = w.bit_length() - 1

        # ``lcmd``: the command taken last, which the loader works on; ``cmd``: the one the
        # feeder, collector, epilogue and writer work on. One register without ``prefetch``.
        prefetch = self.prefetch
        lcmd = Signal(command_layout(), name="lcmd")
        if self.hold_cmd:
            m.d.comb += lcmd.eq(self.cmd.payload)
        cmd = Signal(command_layout()) if prefetch else lcmd
        plan_now = Signal(plan_layout(n, w, k_max))
        lplan = Signal(plan_layout(n, w, k_max), name="lplan")
        plan = Signal(plan_layout(n, w, k_max)) if prefetch else lplan
        compute_plan(m, lcmd, plan_now, n, w)
        lstart = Signal()          # the loader starts on lcmd
        start = Signal()           # the others start on cmd
        clear = Signal()           # every buffer is free: parities back to 0
        code = Signal(DONE_BITS)
        lcode = Signal(DONE_BITS)

        # With a serial epilogue (about 25 cycles per element) the sequencer is built for size:
        # a transposed B goes into its scratchpad one byte per cycle, without a corner turn.
        compact = self.serial_epilogue
        m.submodules.loader = loader = Loader(n, w, k_max=k_max, outstanding=self.outstanding,
                                              addr_bits=self.addr_bits, byte_turn=compact,
                                              follow_b=self.follow_b)
        m.submodules.feeder = feeder = Feeder(n, w, k_max=k_max)
        m.submodules.array = array = SystolicArray(n)
        lean = ((self.epilogue_lanes is not None and self.epilogue_lanes < n)
                or self.serial_epilogue)
        m.submodules.collector = collector = Collector(n, w, in_place=lean, k_max=k_max)
        m.submodules.epilogue = epilogue = Epilogue(n, self.epilogue_lanes,
                                                    self.epilogue_registers,
                                                    serial=self.serial_epilogue)
        m.submodules.writer = writer = Writer(n, w, self.addr_bits, k_max=k_max,
                                              ready_registered=self.port_stages)
        m.d.comb += [loader.start.eq(lstart), loader.cmd.eq(lcmd), loader.plan.eq(lplan)]
        for unit in (feeder, collector, writer):
            m.d.comb += [unit.start.eq(start), unit.cmd.eq(cmd), unit.plan.eq(plan)]
        for unit in (loader, feeder, collector, writer):
            m.d.comb += unit.clear.eq(clear)

        # Memory port: a registered stage on each channel (``port_stages``), so no handshake
        # path crosses it.
        def port_stage(name, source, sink, shape):
            if not self.port_stages:
                wiring.connect(m, source, sink)
                return None
            m.submodules[name] = stage = SkidBuffer(shape)
            wiring.connect(m, source, stage.i)
            wiring.connect(m, stage.o, sink)
            return stage

        port_stage("rd_req_stage", loader.rd_req, wiring.flipped(self.mem.rd_req),
                   read_request_layout())
        port_stage("rd_resp_stage", wiring.flipped(self.mem.rd_resp), loader.rd_resp, w * 8)
        wr_stage = port_stage("wr_stage", writer.wr, wiring.flipped(self.mem.wr),
                              write_layout(w))

        # Datapath: array and epilogue never stall; each is followed by a queue, and the unit
        # that feeds it issues only with credit for the queue's room.
        m.submodules.results = results = self._queue(row_layout(n).size, self.result_rows)
        m.submodules.credits = credits = CreditCounter(self.result_rows, n)
        wiring.connect(m, feeder.o, array.i)
        wiring.connect(m, collector.o, epilogue.i)

        def enqueue(queue, source):
            m.d.comb += [queue.w_en.eq(source.valid), queue.w_data.eq(source.payload)]

        def dequeue(queue, sink, counter, name):
            # A credit goes back the cycle after its row leaves the queue: a register between
            # the consumer's ready (the writer's or the collector's whole take decision) and
            # the counter's adder. The counter then holds at most one credit fewer than the
            # room, never more.
            give = Signal(name=f"{name}_give")
            m.d.sync += give.eq(queue.r_rdy & sink.ready)
            m.d.comb += [sink.valid.eq(queue.r_rdy), sink.payload.eq(queue.r_data),
                         queue.r_en.eq(sink.ready), counter.give.eq(give)]

        enqueue(results, array.o)
        dequeue(results, collector.i, credits, "results")
        m.d.comb += [credits.take.eq(feeder.credit_take), feeder.credit_ok.eq(credits.ok)]
        if self.output_rows:
            m.submodules.outputs = outputs = self._queue(32 * n, self.output_rows)
            m.submodules.out_credits = out_credits = CreditCounter(self.output_rows, 1)
            m.d.comb += epilogue.o.ready.eq(1)
            enqueue(outputs, epilogue.o)
            dequeue(outputs, writer.i, out_credits, "outputs")
            m.d.comb += [out_credits.take.eq(collector.credit_take),
                         collector.credit_ok.eq(out_credits.ok)]
        else:
            # The serial epilogue holds its results until the writer takes them.
            wiring.connect(m, epilogue.o, writer.i)
            m.d.comb += collector.credit_ok.eq(1)
        m.d.comb += [
            epilogue.requant.eq(cmd.requant),
            epilogue.out_fmt.eq(cmd.out_fmt),
            epilogue.zero_point.eq(cmd.zero_point),
            epilogue.addend_shift.eq(Mux(cmd.addend == AddendMode.RESIDUAL16, cmd.addend_shift, 0)),
        ]

        # Scratchpads and their tokens.
        a_pads = []
        for r in range(n):
            pad = Scratchpad(write_bytes=w, read_bytes=1, depth_bytes=k_max)
            m.submodules[f"a_pad{r}"] = pad
            a_pads.append(pad)
        m.submodules.b_pad = b_pad = Scratchpad(write_bytes=w, read_bytes=n, depth_bytes=k_max * g,
                                                byte_mask=compact)
        m.submodules.p_pad = p_pad = Scratchpad(write_bytes=w, read_bytes=n * PARAM_RECORD_BYTES,
                                                depth_bytes=g * PARAM_RECORD_BYTES,
                                                block_ram=self.bram_pads)
        m.submodules.d_pad = d_pad = Scratchpad(write_bytes=w, read_bytes=4 * n,
                                                depth_bytes=4 * n * g)
        m.submodules.e_pad = e_pad = Scratchpad(write_bytes=w, read_bytes=n,
                                                block_ram=self.bram_pads,
                                                depth_bytes=max(n, w))
        tokens = []
        for name in ("a", "b", "p", "d", "e"):
            # B's rows are counted (``follow_b``): the feeder follows them into a buffer not
            # yet full.
            tok = PingPong(rows=k_max if name == "b" and self.follow_b else 0)
            m.submodules[f"{name}_tokens"] = tok
            tokens.append(tok)
            m.d.comb += [tok.clear.eq(clear)]

        # With port stages each scratchpad's write beats pass a register of its own, next to
        # its block RAMs (the loader's write bus reaches a dozen scratchpads over the whole
        # array: one register stage, not one net, spans that distance), and a buffer's fill
        # is signalled one cycle later with its last beat.
        def staged(value, name, enable=None):
            if not self.port_stages:
                return value
            reg = Signal.like(value, name=name)
            with m.If(1 if enable is None else enable):
                m.d.sync += reg.eq(value)
            return reg

        fill = staged(loader.fill, "fill_staged")
        fill_buf = staged(loader.fill_buf, "fill_buf_staged")
        b_row = staged(loader.b_row, "b_row_staged")
        for j, tok in enumerate(tokens):
            m.d.comb += [
                loader.free[2 * j:2 * j + 2].eq(tok.free),
                tok.claim.eq(loader.claim[j]), tok.claim_buf.eq(loader.claim_buf),
                tok.fill.eq(fill[j]), tok.fill_buf.eq(fill_buf),
            ]
        a_tok, b_tok, p_tok, d_tok, e_tok = tokens
        m.d.comb += [
            feeder.full.eq(Cat(a_tok.full, b_tok.full)),
            b_tok.row.eq(b_row), feeder.b_written.eq(b_tok.written),
            a_tok.release.eq(feeder.release[0]), a_tok.release_buf.eq(feeder.release_a_buf),
            b_tok.release.eq(feeder.release[1]), b_tok.release_buf.eq(feeder.release_b_buf),
            collector.full.eq(Cat(p_tok.full, d_tok.full, e_tok.full)),
            p_tok.release.eq(collector.release[0]), p_tok.release_buf.eq(collector.release_p_buf),
            d_tok.release.eq(collector.release[1]), d_tok.release_buf.eq(collector.release_d_buf),
            e_tok.release.eq(collector.release[2]), e_tok.release_buf.eq(collector.release_e_buf),
        ]

        def drive_write(pad, valid, name):
            payload = Signal.like(pad.w.payload)
            m.d.comb += [
                payload.buf.eq(loader.w_buf),
                payload.addr.eq(loader.w_addr),
                payload.data.eq(loader.w_data),
            ]
            if pad.byte_mask:
                m.d.comb += payload.mask.eq(loader.w_mask)
            m.d.comb += [pad.w.valid.eq(staged(valid, f"{name}_w_valid")),
                         # loaded only with a beat for this scratchpad: its own register
                         # (synthesis cannot merge the copies), and idle otherwise
                         pad.w.payload.eq(staged(payload, f"{name}_w_payload", valid))]

        for r, pad in enumerate(a_pads):
            drive_write(pad, loader.w_valid[0] & (loader.w_row == r), f"a_pad{r}")
            m.d.comb += [pad.r_en.eq(feeder.a_r_en), pad.r_buf.eq(feeder.a_r_buf),
                         pad.r_addr.eq(feeder.a_r_addr)]
        m.d.comb += feeder.a_r_data.eq(Cat(pad.r_data for pad in a_pads))
        drive_write(b_pad, loader.w_valid[1], "b_pad")
        drive_write(p_pad, loader.w_valid[2], "p_pad")
        drive_write(d_pad, loader.w_valid[3], "d_pad")
        drive_write(e_pad, loader.w_valid[4], "e_pad")
        m.d.comb += [
            b_pad.r_en.eq(feeder.b_r_en), b_pad.r_buf.eq(feeder.b_r_buf),
            b_pad.r_addr.eq(feeder.b_r_addr), feeder.b_r_data.eq(b_pad.r_data),
            p_pad.r_en.eq(collector.p_r_en), p_pad.r_buf.eq(collector.p_r_buf),
            p_pad.r_addr.eq(collector.p_r_addr), collector.p_r_data.eq(p_pad.r_data),
            d_pad.r_en.eq(collector.d_r_en), d_pad.r_buf.eq(collector.d_r_buf),
            d_pad.r_addr.eq(collector.d_r_addr), collector.d_r_data.eq(d_pad.r_data),
            e_pad.r_en.eq(collector.e_r_en), e_pad.r_buf.eq(collector.e_r_buf),
            e_pad.r_addr.eq(collector.e_r_addr), collector.e_r_data.eq(e_pad.r_data),
        ]

        # Command checks, on the command taken last.
        def misaligned(*values):
            return Cat(v[:lw] != 0 for v in values).any()

        use_d = lcmd.addend != AddendMode.NONE
        bad_shape = ((lcmd.m == 0) | (lcmd.k == 0) | (lcmd.n == 0) | (lcmd.k > k_max))
        bad_align = (misaligned(lcmd.a_addr, lcmd.b_addr, lcmd.c_addr,
                                lcmd.a_stride, lcmd.b_stride, lcmd.c_stride) |
                     (lcmd.use_params & misaligned(lcmd.p_addr)) |
                     (use_d & misaligned(lcmd.d_addr, lcmd.d_stride)) |
                     (lcmd.row_shift & misaligned(lcmd.e_addr)))
        bad_mode = ((lcmd.requant & ~lcmd.use_params) | (lcmd.addend == 3) |
                    ((lcmd.addend == AddendMode.RESIDUAL16) & (lcmd.addend_shift > RES_SHIFT_MAX)))

        # Two state machines. The front takes a command, checks it and starts the loader on
        # it; the back (``engine``) runs the feeder, collector and writer on it and answers.
        # Without ``prefetch`` the front takes a command only while the back is idle; with
        # it, as soon as the loader is done with the running command, and an independent
        # command's loads then overlap the running one's compute and writes. Answers keep
        # the order of the commands.
        back_idle = Signal()
        lindep = Signal()          # the command taken last is independent of the one before
        m.d.comb += self.done.payload.eq(code)
        with m.FSM(name="front") as front:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(loader.idle & (back_idle if not prefetch else 1))
                with m.If(self.cmd.valid & self.cmd.ready):
                    if not self.hold_cmd:
                        m.d.sync += lcmd.eq(self.cmd.payload)
                    m.d.sync += lindep.eq(self.cmd_independent)
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += lplan.eq(plan_now)
                with m.If(bad_shape):
                    m.d.sync += lcode.eq(ErrorCode.BAD_SHAPE)
                    m.next = "HOLD"
                with m.Elif(bad_align):
                    m.d.sync += lcode.eq(ErrorCode.BAD_ALIGN)
                    m.next = "HOLD"
                with m.Elif(bad_mode):
                    m.d.sync += lcode.eq(ErrorCode.BAD_MODE)
                    m.next = "HOLD"
                with m.Elif(back_idle | lindep):
                    m.d.sync += lcode.eq(ErrorCode.OK)
                    m.next = "LOAD"
            with m.State("LOAD"):
                # With nothing in flight every buffer is free: the parities restart.
                m.d.comb += [lstart.eq(1), clear.eq(back_idle)]
                m.next = "HOLD"
            with m.State("HOLD"):
                # The command waits for the back (which takes it in its IDLE state).
                with m.If(back_idle):
                    m.next = "IDLE"

        with m.FSM(name="engine") as fsm:
            with m.State("IDLE"):
                m.d.comb += back_idle.eq(1)
                with m.If(front.ongoing("HOLD")):
                    m.d.sync += code.eq(lcode)
                    if prefetch:
                        m.d.sync += [cmd.eq(lcmd), plan.eq(lplan)]
                    with m.If(lcode == ErrorCode.OK):
                        m.next = "START"
                    with m.Else():
                        m.next = "DONE"
            with m.State("START"):
                m.d.comb += [start.eq(1), self.busy.eq(1)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                with m.If(writer.done):
                    m.next = "FLUSH"
            with m.State("FLUSH"):
                # The last beats leave the write stage: done means every beat was accepted by
                # the port.
                m.d.comb += self.busy.eq(1)
                with m.If(~wr_stage.o.valid if wr_stage is not None else 1):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.valid.eq(1)
                with m.If(self.done.ready):
                    m.next = "IDLE"
        # What the write-address proof (celosia.sim.properties) states invariants of, and what
        # the tests watch.
        self._probe = dict(fsm=fsm, front=front, cmd=cmd, lcmd=lcmd, plan=plan, lplan=lplan,
                           plan_now=plan_now, writer=writer,
                           wr_stage=wr_stage, feeder=feeder, b_tokens=b_tok)
        return m


def verilog_text(array: int = DEFAULT_ARRAY, port_bytes: int | None = None, *,
                 k_max: int = K_MAX, name: str = "celosia_matmul", wrap=None) -> str:
    """The engine's Verilog (Yosys through Amaranth); ``wrap(engine)``, when given, is the top
    written instead (a component with the engine's ports)."""
    from amaranth.back import verilog

    engine = MatmulEngine(array, port_bytes, k_max=k_max)
    return verilog.convert(engine if wrap is None else wrap(engine), name=name, emit_src=False)


def add_verilog_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``celosia verilog``."""
    parser.add_argument("--array", type=int, default=DEFAULT_ARRAY, help="array size N")
    parser.add_argument("--port-bytes", type=int, default=None,
                        help="memory-port width in bytes (default 2N)")
    parser.add_argument("--k-max", type=int, default=K_MAX, help="longest reduction K")
    parser.add_argument("--name", default="celosia_matmul", help="top module name")
    parser.add_argument("-o", "--output", default="-", help="output file (default stdout)")


def run_verilog(args: argparse.Namespace) -> int:
    """``celosia verilog``: write the engine's Verilog."""
    try:
        text = verilog_text(args.array, args.port_bytes, k_max=args.k_max, name=args.name)
    except (TypeError, ValueError) as exc:
        print(f"celosia verilog: {exc}", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as f:
            f.write(text)
    return 0
