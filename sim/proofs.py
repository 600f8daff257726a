"""``celosia prove``: the registry of Celosia's formal proofs, and the command that runs them.

Each :class:`Proof` names a property harness around one hardware block (the harnesses are in
:mod:`celosia.sim.properties`), the SymbiYosys mode and depth that prove it, and the mutants
(the block with one deliberate bug) that must fail it. The test suite and the command read the
same registry: the tests run every proof, check that every mutant fails and that every
harness's ``Cover`` statements are reachable; the command runs the proofs (and, with
``--mutants``, the mutants) and prints one line per run with its verdict and time.

A proof at ``mode="prove"`` is k-induction: the properties hold in every reachable state,
however long the run. Where a block is too wide for the solver within about a minute, the
registry proves a smaller instance and says so in ``abstraction``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Callable

from amaranth import signed, unsigned
from amaranth.lib import data

from celosia.hdl.axi import AxiMaster, MemArbiter
from celosia.hdl.controller import Controller, SerialSpanCheck, SpanCheck
from celosia.hdl.csr import CsrBlock
from celosia.hdl.engine import MatmulEngine
from celosia.hdl.params import FULL, K_MAX, SMALL, Sizing
from celosia.hdl.pipeline import CreditCounter, SkidBuffer
from celosia.hdl.sequencer import Writer

from . import properties as props
from .formal import FormalResult, prove

__all__ = ["Mutant", "Proof", "PROOFS", "Outcome", "check", "select", "add_arguments", "run"]

#: Exit status when a proof does not pass (or a mutant does not fail).
EXIT_FAILED = 1


@dataclass(frozen=True)
class Mutant:
    """A broken variant of a proof's design; its proof must end in ``FAIL`` (a counterexample
    from reset within the proof's depth).

    Attributes
    ----------
    name : str
        Short name, unique within its proof.
    design : callable
        Builds the harness around the broken block.
    """

    name: str
    design: Callable
    #: Bound of a bounded model check from reset, for a bug that lies deeper than its proof's
    #: induction depth (``None``: the proof's own mode and depth).
    depth: int | None = None


@dataclass(frozen=True)
class Proof:
    """One named proof.

    Attributes
    ----------
    name : str
        The name ``--only`` selects.
    claim : str
        What is proved, in one line.
    design : callable
        Builds the harness around the block (called anew for every run).
    depth : int
        Induction depth (or bound, for ``bmc``); also the depth mutants and covers run at.
    mode : str
        ``"prove"`` (k-induction) or ``"bmc"`` (bounded: no failure within ``depth`` cycles).
    abstraction : str
        What the proved instance leaves out or makes smaller than the built hardware.
    mutants : tuple of Mutant
    cover_depth : int or None
        Cycles within which every ``Cover`` of the harness is reached (the environment's
        assumptions leave the properties something to check); ``None`` where a cover is out of
        reach by design (see the proof) and another instance of the harness shows it.
    slow : bool
        Takes more than about a minute: the test suite runs it only with ``-m slow`` (a
        smaller instance of the same harness is in the default run); ``celosia prove`` runs
        it.
    """

    name: str
    claim: str
    design: Callable
    depth: int
    mode: str = "prove"
    abstraction: str = ""
    mutants: tuple = ()
    cover_depth: int | None = 8
    slow: bool = False


@dataclass(frozen=True)
class Outcome:
    """The verdict of one run of a proof or a mutant.

    Attributes
    ----------
    proof, mutant : str
        The proof's name; the mutant's (empty for the proof itself).
    expected, status : str
        The verdict wanted (``PASS`` for a proof, ``FAIL`` for a mutant) and the one obtained.
    seconds : float
    log : str
        SymbiYosys's output (names the failing assertion).
    """

    proof: str
    mutant: str
    expected: str
    status: str
    seconds: float
    log: str

    @property
    def ok(self) -> bool:
        """Whether the run gave the wanted verdict."""
        return self.status == self.expected

    def as_dict(self) -> dict:
        """The outcome without its log, for JSON."""
        return {"proof": self.proof, "mutant": self.mutant or None, "expected": self.expected,
                "status": self.status, "ok": self.ok, "seconds": round(self.seconds, 2)}


#: The accelerator's memory master (accelerator.py: ``AxiMaster(W)`` with its default burst and
#: write limits, W = 16 bytes, but without the fault logic, ``faults=False``: the response
#: checks, the watchdog and the fence the accelerator builds are not part of this proof) and
#: the reads in flight its arbiter allows (``MemArbiter(outstanding=2 * 32 + 16)``).
AXI_PORT_BYTES, AXI_READS = 16, 80
#: The span check as the full build has it (controller.py: 32-bit addresses and strides, 16-bit
#: rows, 24-bit row bytes, a 33-bit window end).
SPAN_WIDTHS = dict(addr_width=32, rows_width=16, stride_width=32, row_bytes_width=24,
                   end_width=33)
#: Widths at which any byte of any row is checked: with a free row the solver must compare
#: products of it, which takes it minutes already at 13 bits.
SPAN_SMALL_WIDTHS = dict(addr_width=8, rows_width=4, stride_width=8, row_bytes_width=6,
                         end_width=9)


def _axi(cls=AxiMaster):
    return lambda: props.AxiMasterSpec(cls(AXI_PORT_BYTES), reads=AXI_READS)


#: The fenced master's watchdog bound in the proof (short, so that a timeout is within reach).
AXI_FENCE_TIMEOUT = 3


def _axi_fence(cls=AxiMaster):
    return lambda: props.AxiMasterFenceSpec(
        cls(AXI_PORT_BYTES, faults=True, timeout=AXI_FENCE_TIMEOUT, ports=3,
            max_reads=AXI_READS), reads=AXI_READS)


#: The arbiter of the proof: three ports (the build with the vector engine: the controller's
#: fetch port, the matmul engine, the vector engine; 2-bit port numbers, one value unused),
#: W = 16 (the full build's port: 32-bit addresses, 128-bit data, 16 strobes) and a tag FIFO
#: of 8 reads instead of the accelerator's 80 (``2 * outstanding + 16``): the same SyncFifo,
#: whose storage (7 entries) wraps its pointers. 16 reads take the induction 19 s, 32 more
#: than 5 minutes (the harness's order of ports is as deep as the FIFO).
ARB_PORTS, ARB_PORT_BYTES, ARB_OUTSTANDING = 3, 16, 8


def _arbiter(cls=MemArbiter):
    return lambda: props.MemArbiterSpec(cls(ARB_PORTS, ARB_PORT_BYTES,
                                            outstanding=ARB_OUTSTANDING))


def _csr(cls=CsrBlock):
    return lambda: props.CsrSpec(cls(8, 16))


def _span(cls=SpanCheck, widths=SPAN_WIDTHS):
    return lambda: props.SpanCheckSpec(cls(**widths), end_rows=widths is SPAN_WIDTHS)


#: The serial check's widths (6-bit addresses and strides, 3-bit rows, 4-bit row bytes): its
#: accumulator's content is a product of a free prefix of the rows, so the same limit applies;
#: the narrow variant's values carry the flag at bit 6 (``addr_bits`` = 6).
SERIAL_WIDTHS = (6, 3, 6, 4, 7)
SERIAL_NARROW_WIDTHS, SERIAL_FLAG_BIT = (7, 3, 7, 4, 7), 6


def _serial(cls=SerialSpanCheck, narrow=False):
    if narrow:
        return lambda: props.SerialSpanCheckSpec(cls(*SERIAL_NARROW_WIDTHS,
                                                     flag_bit=SERIAL_FLAG_BIT))
    return lambda: props.SerialSpanCheckSpec(cls(*SERIAL_WIDTHS))


def _credits(capacity, cost, cls=CreditCounter):
    return lambda: props.CreditCounterSpec(cls(capacity, cost))


def _skid(shape, cls=SkidBuffer):
    return lambda: props.SkidBufferSpec(cls(shape))


def _controller(cls=Controller, sizing=FULL, port_bytes=16, mem_faults=True, vector=False):
    """The controller as an accelerator of ``sizing`` builds it (without the vector unit
    unless ``vector``)."""
    return cls(port_bytes, vector=vector, k_max=K_MAX, queue=sizing.queue,
               addr_bits=sizing.addr_bits, issue_slot=sizing.issue_slot,
               serial_check=sizing.serial_check, mem_faults=mem_faults)


#: The ULX3S's sizing (fpga/boards.py): the full build with the serial span check.
ULX3S_SIZING = Sizing(serial_check=True)


def _checked_c(cls=Controller, sizing=FULL, vector=False):
    # The iCEBreaker's (SMALL) memory is native: no AXI faults.
    return lambda: props.ControllerSpec(_controller(cls, sizing, mem_faults=sizing is not SMALL,
                                                    vector=vector))


#: The matmul engine's writer of the proof: N = 2, W = 4 (the iCEBreaker's array and port),
#: the K_MAX of the board's build, and 8 address bits: with more, the solver must relate
#: products of a free row and a free stride (at 12 bits, the smallest a build has, the
#: induction did not finish within 5 minutes).
WRITER_ARRAY, WRITER_PORT_BYTES, WRITER_ADDR_BITS, WRITER_K_MAX = 2, 4, 8, 512


def _writer(cls=Writer):
    return lambda: props.WriterSpec(cls(WRITER_ARRAY, WRITER_PORT_BYTES, WRITER_ADDR_BITS,
                                        k_max=WRITER_K_MAX), WRITER_K_MAX)


#: The matmul engine of the write-path proof: N = 2, W = 4, K_MAX 4 and 8 address bits (as the
#: writer's proof), its own command register and write stage as the full build has them, and
#: either the small build's datapath (one serial epilogue lane, no output queue: the default
#: run) or the full build's (``full``: slow).
ENGINE_K_MAX = 4


def _engine(cls=MatmulEngine, full=False):
    def make():
        small = {} if full else dict(epilogue_lanes=1, serial_epilogue=True, bram_pads=True,
                                     result_rows=WRITER_ARRAY, output_rows=0)
        engine = cls(WRITER_ARRAY, WRITER_PORT_BYTES, k_max=ENGINE_K_MAX, outstanding=2,
                     addr_bits=WRITER_ADDR_BITS, hold_cmd=False, port_stages=True, **small)
        return props.EngineWriteSpec(engine, ENGINE_K_MAX)
    return make


#: The vector engine of its write-path proof: N = 2, W = 4, 8 address bits (as the writer's
#: proof), read FIFOs of 2 beats, the decoder build's packer (ROTARY's dropped rows,
#: WIDE_SPLIT's two planes) or the encoder build's; the vector unit a stand-in with free
#: outputs.
VECTOR_ENGINE_LANES = 2
#: The cycles from reset to the first write past the rows in the vector engine's mutants (a
#: command, its last row, the unit's extra beat, its write: found by a bounded check).
VECTOR_MUTANT_DEPTH = 10


def _vector_engine(cls=props.VectorEngineFreeUnit, dec=True):
    return lambda: props.VectorEngineWriteSpec(cls(
        VECTOR_ENGINE_LANES, WRITER_PORT_BYTES, max_cols=8, fifo_beats=2, decoder_ops=dec,
        addr_bits=WRITER_ADDR_BITS))


#: The liveness proof's environment: the memory takes a request and returns each owed beat
#: within LIVENESS_LATENCY cycles, the engine answers a command within LIVENESS_ENGINE cycles;
#: requantising MATMULs of at most LIVENESS_REQUANT_COLS columns. The bounds (cycles from
#: leaving NEXT to being back in NEXT or IDLE) per class, at W = 64 (one beat per fetch and
#: per 8 parameter records); found by bounded model checking at depth 32 (no instruction of
#: the first ones of a run takes longer).
LIVENESS_LATENCY, LIVENESS_ENGINE, LIVENESS_REQUANT_COLS = 2, 4, 8
LIVENESS_PORT_BYTES = 64
LIVENESS_BOUNDS = {"fetch": 7, "halt": 10, "sync": 10, "matmul": 16, "matmul_requant": 20,
                   "vector": 8, "illegal": 8}


def _liveness(cls=Controller):
    return lambda: props.ControllerLivenessSpec(
        _controller(cls, port_bytes=LIVENESS_PORT_BYTES), bounds=LIVENESS_BOUNDS,
        latency=LIVENESS_LATENCY, engine=LIVENESS_ENGINE, requant_cols=LIVENESS_REQUANT_COLS)


_LIVENESS_CLAIM = ("Controller (full build, W = 64): every instruction ends (back between "
                   "instructions, or stopped) within its class's bound when the memory and "
                   "the engine answer in bounded time: "
                   + ", ".join(f"{name} {bound}" for name, bound in LIVENESS_BOUNDS.items())
                   + " cycles")
_LIVENESS_ABSTRACTION = (f"bounded (BMC): the instructions a run starts within the depth "
                         f"minus their bound; memory within {LIVENESS_LATENCY} cycles, engine "
                         f"within {LIVENESS_ENGINE} (one command at a time, answered at the "
                         f"earliest two cycles after it was taken), no memory fault; "
                         f"requantising MATMULs of at most {LIVENESS_REQUANT_COLS} columns; "
                         f"the engine's own run time is abstracted")


_CREDIT_CLAIM = ("credits + in flight = capacity, so within [0, capacity]; a take only with "
                 "enough credit; ok registered and exact")

#: Every proof, in the order the command runs them.
PROOFS: tuple[Proof, ...] = (
    Proof("skid_buffer", "SkidBuffer (32-bit payload): no item lost, duplicated or reordered; "
          "payload held while stalled; valid and ready follow the occupancy",
          _skid(unsigned(32)), 4,
          mutants=(Mutant("losing_skid", _skid(unsigned(4), props.SkidBufferLosingSkid)),
                   Mutant("bypassing_skid", _skid(unsigned(4), props.SkidBufferBypassingSkid)))),
    Proof("skid_buffer_layout", "SkidBuffer (struct payload): the same",
          _skid(data.StructLayout({"a": 2, "b": signed(3)})), 4),
    Proof("credit_counter", f"CreditCounter(8, 3): {_CREDIT_CLAIM}", _credits(8, 3), 4,
          mutants=(Mutant("late_ok", _credits(8, 3, props.CreditCounterLateOk)),)),
    # A take and a give never meet when one take needs every credit, and 1024 credits take 16
    # takes to spend: credit_counter reaches both covers.
    Proof("credit_counter_edges", "CreditCounter(7, 7): the same (one take empties it)",
          _credits(7, 7), 4, cover_depth=None),
    Proof("credit_counter_unit", "CreditCounter(12, 1): the same (one credit a take)",
          _credits(12, 1), 4, cover_depth=14),      # 12 takes to empty it
    Proof("credit_counter_wide", "CreditCounter(1024, 64): the same", _credits(1024, 64), 4,
          cover_depth=None),
    Proof("axi_master", "AxiMaster: AR/AW/W held with a stable payload until ready; W bursts of "
          "awlen + 1 beats, WLAST on the last; AR bursts INCR, at most 16 beats, inside 4 KiB; "
          "read beats conserved, each request in its burst at its address, in order; at most 80 "
          "reads and 64 writes outstanding; AW carries the address of the write handed over, "
          "as a burst of one beat",
          _axi(), 4,
          abstraction="slave and requester free under their promises (R and B only for "
                      "requests made; the requester keeps at most 80 reads in flight); one "
                      "read request followed at a time (the solver picks which)",
          mutants=(Mutant("aw_not_held", _axi(props.AxiMasterAwNotHeld)),
                   Mutant("short_write_burst", _axi(props.AxiMasterShortWriteBurst)),
                   Mutant("long_read_burst", _axi(props.AxiMasterLongReadBurst)),
                   Mutant("moving_burst", _axi(props.AxiMasterMovingBurst)),
                   Mutant("uncounted_writes", _axi(props.AxiMasterUncountedWrites)),
                   Mutant("writing_next_beat", _axi(props.AxiMasterWritingNextBeat)))),
    Proof("axi_master_faults", "AxiMaster with its fault logic (as the accelerator builds it): "
          "AR/AW/W held with a stable payload until ready across faults, fences and STARTs; "
          "nothing new on AR/AW/W while fenced; beats out = beats on AR + beats the slave owes, "
          "all stale while fenced, and otherwise the requester's reads = beats held + live "
          "beats out, so a stale (late) beat is never handed to a request; writes counted "
          "exactly; AR bursts INCR, at most 16 beats, inside 4 KiB",
          _axi_fence(), 6, cover_depth=12,
          abstraction="slave and requester free under the promises of axi_master, responses "
                      "free (any error), clear and port numbers free; watchdog bound 3 cycles",
          mutants=(Mutant("fence_dropping_ar", _axi_fence(props.AxiMasterFenceDroppingAr)),
                   Mutant("forgetting_stale", _axi_fence(props.AxiMasterForgettingStale)))),
    Proof("mem_arbiter", "MemArbiter (3 ports): every read request, write and read response "
          "passes between exactly one port and the memory, unchanged, in the cycle the other "
          "side takes it; each response goes to the port of the oldest unanswered read (the "
          "reads unanswered per port are that port's tags, in order), none is taken while no "
          "read is unanswered; a port's write is acknowledged only when the memory takes it; "
          "a write is offered only while a port offers one, a read only while a port offers "
          "one and fewer than 8 are unanswered, and no two cycles in a row pass without an "
          "offer while a port offers one (and, for reads, a tag is free: the grants are "
          "registers); an offer stays, with its payload, until taken; rd_port names the "
          "oldest unanswered read's port in every cycle; round robin: a waiting port is "
          "passed over at most ports - 1 times",
          _arbiter(), 4, cover_depth=12,
          abstraction="ports and memory free under the stream rule only; a tag FIFO of 8 reads "
                      "(the accelerator's: 80)",
          mutants=(Mutant("dropping_tag", _arbiter(props.MemArbiterDroppingTag)),
                   Mutant("acking_every_write", _arbiter(props.MemArbiterAckingEveryWrite)),
                   Mutant("stuck_grant", _arbiter(props.MemArbiterStuckGrant)),
                   Mutant("switching_stalled_write",
                          _arbiter(props.MemArbiterSwitchingStalledWrite)))),
    Proof("csr", "CsrBlock over AXI4-Lite: PROG_ADDR, WIN_BASE, WIN_SIZE read back what was "
          "written (with byte strobes); ID, CONFIG, CTRL and unmapped offsets read their fixed "
          "values; R and B held until taken",
          _csr(), 4,
          abstraction="the live registers (status, counters) are not checked",
          mutants=(Mutant("ignoring_strobes", _csr(props.CsrBlockIgnoringStrobes)),
                   Mutant("swapped_window", _csr(props.CsrBlockSwappedWindow)))),
    Proof("span_check", "SpanCheck (full build's widths): no byte of the first or the last row "
          "of an operand that passes lies outside the window [base, end) (rows between start "
          "between those), for any operand and window",
          _span(), 1,
          abstraction="not proved here: the narrow builds' widths (serial_span_check_narrow "
                      "proves the boards' check); controller_checked_c and writer_in_span "
                      "carry it to the controller's commands and the engine's writes",
          mutants=(Mutant("without_row_bytes", _span(props.SpanCheckWithoutRowBytes)),
                   Mutant("without_base", _span(props.SpanCheckWithoutBase)))),
    Proof("span_check_any_row", "SpanCheck (8-bit addresses and strides, 4-bit rows): no byte "
          "of any row of an operand that passes lies outside the window",
          _span(widths=SPAN_SMALL_WIDTHS), 1,
          abstraction="small widths: the same circuit as the full build's, narrower",
          mutants=(Mutant("without_row_bytes",
                          _span(props.SpanCheckWithoutRowBytes, SPAN_SMALL_WIDTHS)),)),
    Proof("serial_span_check", "SerialSpanCheck (the boards' check, several cycles): no byte of "
          "any row of an operand that passes lies outside the window, under any restarts",
          _serial(), 5, cover_depth=12,
          abstraction="6-bit addresses and strides, 3-bit rows, 4-bit row bytes",
          mutants=(Mutant("skipping_row_bytes",
                          _serial(props.SerialSpanCheckSkippingRowBytes)),)),
    Proof("serial_span_check_narrow", "SerialSpanCheck of a narrow build (values flagged at "
          "2**ab, window below 2**ab): the same, and no flagged address or stride passes",
          _serial(narrow=True), 5, cover_depth=12,
          abstraction="ab = 6: 7-bit addresses and strides, 3-bit rows, 4-bit row bytes",
          mutants=(Mutant("skipping_row_bytes",
                          _serial(props.SerialSpanCheckSkippingRowBytes, narrow=True)),
                   Mutant("ignoring_overflow",
                          _serial(props.SerialSpanCheckIgnoringOverflow, narrow=True)))),
    Proof("controller_checked_c", "Controller (full build, W = 16): every MATMUL command "
          "offered to the engine has a C operand (its destination) that passed the span check "
          "against the window latched at START, for any instruction stream; that window "
          "holds WIN_BASE/WIN_SIZE as at START and ends at or below 2**32; the controller "
          "never writes",
          _checked_c(), 12, cover_depth=20,
          abstraction="memory data and timing, engine answers, CSR requests and memory faults "
                      "free; the span check's meaning is span_check's proof",
          mutants=(Mutant("wrapped_window",
                          _checked_c(props.ControllerAcceptingWrappedWindow)),
                   Mutant("forgetting_c", _checked_c(props.ControllerForgettingC)))),
    Proof("controller_checked_c_small", "Controller (SMALL sizing: no issue slot, serial span "
          "check, 16 address bits, native memory; W = 16): the same, with the command held in "
          "the instruction register until the engine answers, and a window inside 64 KiB",
          _checked_c(sizing=SMALL), 26, cover_depth=40,
          abstraction="as controller_checked_c; W = 16 rather than the iCEBreaker's 4 (W sets "
                      "only the fetch's beat count); the narrow span check's meaning is "
                      "serial_span_check_narrow's proof",
          mutants=(Mutant("forgetting_c", _checked_c(props.ControllerForgettingC, SMALL)),)),
    Proof("controller_checked_c_ulx3s", "Controller (the ULX3S's sizing: issue slot, serial "
          "span check, 32-bit addresses, AXI faults; W = 16): the same",
          _checked_c(sizing=ULX3S_SIZING), 26, cover_depth=40,
          abstraction="as controller_checked_c",
          mutants=(Mutant("forgetting_c",
                          _checked_c(props.ControllerForgettingC, ULX3S_SIZING)),
                   Mutant("wrapped_window",
                          _checked_c(props.ControllerAcceptingWrappedWindow, ULX3S_SIZING)))),
    Proof("controller_checked_vector", "Controller with the vector unit (full build, W = 16): "
          "the same for MATMUL commands, and every VECTOR command offered to the vector engine "
          "has destination rows and row exponents (when its op writes them) that passed the "
          "span check against the window latched at START",
          _checked_c(vector=True), 12, cover_depth=20,
          abstraction="as controller_checked_c, the vector engine's answers free too; the "
                      "vector engine's own writes are not proved to stay inside those operands",
          mutants=(Mutant("forgetting_dst", _checked_c(props.ControllerForgettingDst,
                                                       vector=True)),
                   Mutant("forgetting_c", _checked_c(props.ControllerForgettingC,
                                                     vector=True)))),
    Proof("writer_in_span", "Writer (the matmul engine's result writer, N = 2, W = 4): every "
          "write beat starts inside the command's C operand [c_addr, c_addr + (M - 1) * "
          "c_stride + N * out_bytes), is W-aligned, and is offered only while a command runs, "
          "for any command the controller issues and any timing of results and port",
          _writer(), 3, cover_depth=8,
          abstraction=f"{WRITER_ADDR_BITS} address bits (the builds have 12..32); the result "
                      "rows' data and timing free (they do not steer the writer); the "
                      "command held from start to done as the engine holds it",
          mutants=(Mutant("writing_empty_beats", _writer(props.WriterWritingEmptyBeats)),)),
    Proof("engine_writes_in_c", "MatmulEngine (N = 2, W = 4, its own command register and "
          "write stage, the small build's datapath): every beat on the memory port's write "
          "channel starts inside the C operand of the command taken last and is W-aligned, "
          "for any command the controller issues and any memory",
          _engine(), 3, cover_depth=None,
          abstraction=f"{WRITER_ADDR_BITS} address bits, K_MAX {ENGINE_K_MAX}; the memory's "
                      "data and timing free; the loader, array and epilogue run as built; "
                      "writer_in_span reaches the writer's cover (the engine's first write "
                      "lies past any depth that runs in CI)",
          mutants=(Mutant("taking_commands_while_busy",
                          _engine(props.EngineTakingCommandsWhileBusy)),)),
    Proof("engine_writes_in_c_full", "MatmulEngine with the full build's datapath (six-stage "
          "epilogue, output queue of 16 rows): the same",
          _engine(full=True), 1, cover_depth=None, slow=True,
          abstraction=f"as engine_writes_in_c; depth 1 (the invariants are 1-inductive; its "
                      "mutant runs on engine_writes_in_c)"),
    Proof("vector_engine_writes_in_dst", "VectorEngine (N = 2, W = 4, the decoder build's "
          "ops): every beat on the memory port's write channel is W-aligned and starts inside "
          "the destination rows or the row exponents of the command taken last, for any "
          "command the controller issues, any memory and any behaviour of the vector unit",
          _vector_engine(), 3, cover_depth=16,
          abstraction=f"{WRITER_ADDR_BITS} address bits; the vector unit a stand-in whose "
                      "output beats and readiness are free (the claim holds whatever the unit "
                      "does); the memory's data and timing free",
          mutants=(Mutant("writing_past_rows", _vector_engine(props.VectorEngineWritingPastRows),
                          depth=VECTOR_MUTANT_DEPTH),
                   Mutant("recording_past_rows",
                          _vector_engine(props.VectorEngineRecordingPastRows),
                          depth=VECTOR_MUTANT_DEPTH))),
    Proof("vector_engine_writes_in_dst_encoder", "VectorEngine as the encoder-only builds "
          "have it (no decoder ops): the same",
          _vector_engine(dec=False), 3, cover_depth=16,
          abstraction="as vector_engine_writes_in_dst",
          mutants=(Mutant("writing_past_rows",
                          _vector_engine(props.VectorEngineWritingPastRows, dec=False),
                          depth=VECTOR_MUTANT_DEPTH),)),
    Proof("controller_liveness", _LIVENESS_CLAIM, _liveness(), 24, mode="bmc",
          cover_depth=16, abstraction=_LIVENESS_ABSTRACTION + "; depth 24: the first "
          "instruction of each class (controller_liveness_deep: 32)",
          mutants=(Mutant("scanning_short", _liveness(props.ControllerScanningShort)),)),
    Proof("controller_liveness_deep", _LIVENESS_CLAIM, _liveness(), 32, mode="bmc",
          cover_depth=None, slow=True,          # the same harness: controller_liveness's covers
          abstraction=_LIVENESS_ABSTRACTION + "; depth 32: also a HALT or SYNC waiting for a "
          "MATMUL issued before it",
          mutants=(Mutant("scanning_short", _liveness(props.ControllerScanningShort)),)),
)


def select(names=None) -> list[Proof]:
    """The registered proofs named in ``names`` (all of them when ``None``), in registry order.

    Raises
    ------
    KeyError
        A name is not registered (the message lists the names that are).
    """
    if names is None:
        return list(PROOFS)
    known = {proof.name for proof in PROOFS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise KeyError(f"no proof named {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return [proof for proof in PROOFS if proof.name in set(names)]


def _mode_depth(proof: Proof, mutant: Mutant | None = None) -> tuple[str, int]:
    """The SymbiYosys mode and depth a run of ``proof`` (or of its ``mutant``) uses."""
    if mutant is not None and mutant.depth is not None:
        return "bmc", mutant.depth
    return proof.mode, proof.depth


def check(proof: Proof, mutant: Mutant | None = None, *, workdir=None) -> Outcome:
    """Run ``proof`` (or one of its mutants, which must fail it) with SymbiYosys.

    Parameters
    ----------
    proof : Proof
    mutant : Mutant, optional
        Run this broken variant instead; the wanted verdict is then ``FAIL``.
    workdir : path-like, optional
        Keep SymbiYosys's files (logs, counterexample traces) there.

    Returns
    -------
    Outcome
    """
    design = proof.design if mutant is None else mutant.design
    mode, depth = _mode_depth(proof, mutant)
    result: FormalResult = prove(design, depth, mode, workdir=workdir)
    return Outcome(proof.name, "" if mutant is None else mutant.name,
                   "PASS" if mutant is None else "FAIL", result.status, result.seconds,
                   result.log)


# --- the command ---------------------------------------------------------------------------------

def add_arguments(p) -> None:
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only the proof NAME (repeatable; default: all of them: "
                        + ", ".join(proof.name for proof in PROOFS) + ")")
    p.add_argument("--mutants", action="store_true",
                   help="also run each proof's mutants (broken variants), which must fail")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _runs(proofs, mutants: bool):
    """(proof, mutant or None, label) of every run, proofs first then their mutants."""
    for proof in proofs:
        yield proof, None, proof.name
        for mutant in proof.mutants if mutants else ():
            yield proof, mutant, f"{proof.name}/{mutant.name}"


def run(args) -> int:
    from celosia.sw.errors import CelosiaError
    try:
        proofs = select(args.only)
    except KeyError as exc:
        raise CelosiaError(exc.args[0]) from None
    runs = list(_runs(proofs, args.mutants))
    width = max(len(label) for _, _, label in runs)
    if not args.json:
        print(f"{'proof':<{width}}  {'mode':<5}  {'depth':>5}  {'want':<4}  {'result':<7}  "
              f"{'seconds':>7}")
    results = []
    for proof, mutant, label in runs:
        outcome = check(proof, mutant)
        mode, depth = _mode_depth(proof, mutant)
        results.append({**outcome.as_dict(), "claim": proof.claim, "mode": mode,
                        "depth": depth, "abstraction": proof.abstraction or None})
        if not args.json:
            print(f"{label:<{width}}  {mode:<5}  {depth:>5}  {outcome.expected:<4}  "
                  f"{outcome.status:<7}  {outcome.seconds:>7.1f}"
                  + ("" if outcome.ok else "  <- not the verdict wanted"), flush=True)
    ok = all(result["ok"] for result in results)
    if args.json:
        json.dump({"ok": ok, "results": results}, sys.stdout)
        sys.stdout.write("\n")
    elif ok:
        print("every proof holds" + (" and every mutant fails" if args.mutants else ""))
    else:
        print("FAILED: a proof does not hold" + (" or a mutant passes" if args.mutants else ""))
    return 0 if ok else EXIT_FAILED
