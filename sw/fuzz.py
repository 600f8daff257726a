"""Programs for ``celosia check``: valid, random and mutated instruction streams, run on a
backend and judged against the ``isa`` simulator.

Three kinds of program, chosen in turn by seed (program ``seed`` is made by
:func:`make_case` from that seed alone, so any one can be made again):

* ``chain``: a valid chain of requantising matmuls (``celosia.sim.tb_accelerator.matmul_chain``:
  random shapes, transposed B, row shifts, accumulate and raw int32 modes), fenced by SYNC.
* ``random``: 1..12 random instructions (:func:`fuzz_instruction`): illegal opcodes, addresses
  in and around the window and anywhere, zero, huge and plausible shapes, short strides, random
  modes and parameters; hazards arise by chance.
* ``mutated``: a valid chain with one to three mutations (:data:`MUTATIONS`): a flipped bit, a
  wrong opcode, one field set to a boundary value (an operand one row past the window, a zero
  or too large dimension, a stride shorter than its row), a SYNC emptied (an unordered read of
  an earlier command's output), two instructions swapped, a destination over the code, the
  HALT removed.

Each program runs with the window in the middle of the memory and a random pattern around it,
under a random read latency and stall chance when the backend's memory has them
(``memory_model``). :func:`judge` compares the run with the ``isa`` simulator's and gives one
of :data:`VERDICTS`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from celosia.hdl import isa
from celosia.hdl.isa import CSR, INSTR_BYTES, WINDOW_ALIGN, ErrorCode, MachineConfig, Opcode, \
    Unit, VecOp
from celosia.hdl.params import K_MAX, OutFormat
from celosia.sim.tb_accelerator import CSR_RESULTS, Image, matmul_chain, reference, status_bits

from .program_file import ProgramCase

__all__ = ["KINDS", "MUTATIONS", "VERDICTS", "FAILURES", "fuzz_instruction", "make_case",
           "run_case", "judge", "Outcome", "memory_layout", "probe_vector_unit"]

KINDS = ("chain", "random", "mutated")
#: Verdicts of a run; the last three are failures (the program is saved for replay).
VERDICTS = ("bit_exact", "expected_error", "hazard", "hang", "outside_window", "mismatch")
FAILURES = VERDICTS[3:]
#: Bytes of memory below the window (a random pattern that must not change; the digest area
#: of the compiled models' layout is also one such guard).
GUARD = 0x800
#: Window of the generated programs (the rest of the memory, above it, is the upper guard).
WINDOW_BYTES = 0x4000
#: A program's cycle limit: the longest chain at N = 2 takes ~60k cycles on the RTL with
#: stalls; anything still running after this is a hang.
MAX_CYCLES = 2_000_000


def memory_layout(mem_bytes: int) -> tuple[int, int, int]:
    """(base, size) of the window the programs use on a backend with ``mem_bytes`` of memory,
    and the bytes of memory from address 0 each program image covers (the window with a
    guard of GUARD bytes on either side: less to move over a serial link than the whole
    memory)."""
    size = min(WINDOW_BYTES, (mem_bytes - 2 * GUARD) // WINDOW_ALIGN * WINDOW_ALIGN)
    if size < 0x800:
        raise ValueError(f"the backend has {mem_bytes} bytes of memory; the check needs at "
                         f"least {0x800 + 2 * GUARD}")
    return GUARD, size, GUARD + size + GUARD


# --- random instructions ------------------------------------------------------------------------

def _plausible(rng, opcode, f, w: int) -> None:
    """Repair some fields so that more instructions get past the first checks."""
    if opcode == Opcode.MATMUL:
        f["addend"] = int(rng.integers(0, 3))
        f["addend_shift"] = int(rng.integers(0, 17))
        f["use_params"] |= f["requant"]
        for d in ("m", "k", "n"):
            f[d] = int(rng.integers(1, 24))
        ob = (1, 1, 2, 4)[f["out_fmt"]] if f["requant"] else 4
        rows = {"a": f["k"], "b": f["k"] if f["b_transposed"] else f["n"], "c": f["n"] * ob,
                "d": f["n"] * (0, 4, 2)[f["addend"]]}
    else:
        f["op"] = int(rng.integers(0, len(isa.UNIT_OPS)))      # the unit's own commands
        f["shift"] = int(rng.integers(0, 48))
        f["res_shift"] = int(rng.integers(0, 17))
        f["rows"], f["cols"] = int(rng.integers(1, 8)), int(rng.integers(1, 40))
        eb = (1, 1, 2, 4)
        rows = {"src": f["cols"] * eb[f["src_fmt"]], "dst": f["cols"] * eb[f["dst_fmt"]],
                "res": f["cols"] * 2}
    for name, row_bytes in rows.items():
        f[f"{name}_stride"] = -(-row_bytes // w) * w * int(rng.integers(1, 3))
    for name in f:
        if name.endswith("_addr"):
            f[name] -= f[name] % w


def fuzz_instruction(rng, lo: int, hi: int, *, port_bytes: int = 8, vector: bool = True) -> bytes:
    """A random instruction whose addresses fall mostly in or near [lo, hi) (``vector``:
    VECTOR instructions too)."""
    kinds, p = ["matmul", "vector", "sync", "halt", "illegal"], [0.4, 0.4, 0.1, 0.03, 0.07]
    if not vector:
        kinds, p = kinds[:1] + kinds[2:], [0.8, 0.1, 0.03, 0.07]
    kind = rng.choice(kinds, p=p)
    if kind == "illegal":
        raw = bytearray(rng.integers(0, 256, INSTR_BYTES, dtype=np.uint8).tobytes())
        raw[0] = int(rng.choice([0, 5, 77, 255]))
        return bytes(raw)
    if kind == "halt":
        return isa.halt().encode()
    if kind == "sync":
        return isa.sync(Unit(int(rng.integers(0, 4)))).encode()
    opcode = Opcode.MATMUL if kind == "matmul" else Opcode.VECTOR
    fmap = isa._Fields.get()[opcode]
    f = {}
    for name, (_, width, signed) in fmap.items():
        if "addr" in name:
            near = rng.integers(lo - 256, hi + 256)
            f[name] = int(near) if rng.random() < 0.9 else int(rng.integers(0, 1 << 32))
            if rng.random() < 0.7:
                f[name] -= f[name] % port_bytes
            f[name] = max(0, min(f[name], (1 << 32) - 1))
        elif "stride" in name:
            f[name] = int(rng.choice([0, 8, 16, 64, 128, int(rng.integers(0, 300)),
                                      int(rng.integers(0, 1 << 32))]))
        elif name in ("m", "k", "n", "rows", "cols"):
            f[name] = int(rng.choice([0, 1, int(rng.integers(1, 24)),
                                      int(rng.integers(0, 1 << width))]))
        else:
            top = (1 << width) - 1
            v = int(rng.integers(0, top + 1)) if rng.random() < 0.5 \
                else int(rng.integers(0, min(top, 20) + 1))
            f[name] = v - (1 << width) if signed and v >> (width - 1) else v
    if rng.random() < 0.75:
        _plausible(rng, opcode, f, port_bytes)
    return isa.Instruction.make(opcode, **f).encode()


# --- mutations ----------------------------------------------------------------------------------

def _slots(img: Image) -> int:
    """Instructions of ``img``'s program (up to and including its HALT)."""
    return img.notes["instructions"]


def _ins(img: Image, i: int) -> bytes:
    a = img.prog + i * INSTR_BYTES
    return img.mem[a:a + INSTR_BYTES].tobytes()


def _put(img: Image, i: int, raw: bytes) -> None:
    a = img.prog + i * INSTR_BYTES
    img.mem[a:a + INSTR_BYTES] = np.frombuffer(raw, np.uint8)


def _pick(img: Image, rng, opcodes) -> int | None:
    found = [i for i in range(_slots(img)) if _ins(img, i)[0] in opcodes]
    return int(rng.choice(found)) if found else None


def _mutate_bit(img, rng):
    i = int(rng.integers(0, _slots(img)))
    raw = bytearray(_ins(img, i))
    bit = int(rng.integers(0, 8 * INSTR_BYTES))
    raw[bit // 8] ^= 1 << bit % 8
    _put(img, i, bytes(raw))
    return f"bit {bit} of instruction {i}"


def _mutate_opcode(img, rng):
    i = int(rng.integers(0, _slots(img)))
    raw = bytearray(_ins(img, i))
    raw[0] = int(rng.choice([0, 5, 0x77, 0xFF, *[o.value for o in Opcode]]))
    _put(img, i, bytes(raw))
    return f"opcode {raw[0]} at instruction {i}"


def _mutate_field(img, rng):
    """One field of a MATMUL set to a value at or past a boundary."""
    i = _pick(img, rng, (Opcode.MATMUL,))
    if i is None:
        return None
    ins = isa.Instruction.decode(_ins(img, i))
    f = dict(ins.fields)
    w = img.config.port_bytes
    name = str(rng.choice(["a_addr", "b_addr", "c_addr", "p_addr", "m", "k", "n",
                           "a_stride", "c_stride", "out_fmt", "addend", "addend_shift"]))
    width = isa._Fields.get()[Opcode.MATMUL][name][1]
    top = (1 << width) - 1
    if name.endswith("_addr"):
        choices = [img.base - w, img.base + img.size - w, img.base + img.size, f[name] + 1, 0]
    elif name.endswith("_stride"):
        choices = [0, w, max(f[name] - w, 0), f[name] + 1]
    elif name in ("m", "n"):
        choices = [0, top, f[name] * 64]
    elif name == "k":
        choices = [0, K_MAX, K_MAX + 1, top]
    else:
        choices = list(range(top + 1))
    f[name] = min(max(int(rng.choice(choices)), 0), top)
    _put(img, i, isa.Instruction(Opcode.MATMUL, f).encode())
    return f"{name}={f[name]} in instruction {i}"


def _mutate_unsync(img, rng):
    i = _pick(img, rng, (Opcode.SYNC,))
    if i is None:
        return None
    _put(img, i, isa.sync(Unit(0)).encode())
    return f"SYNC {i} waits for nothing"


def _mutate_swap(img, rng):
    n = _slots(img)
    if n < 2:
        return None
    i = int(rng.integers(0, n - 1))
    a, b = _ins(img, i), _ins(img, i + 1)
    _put(img, i, b)
    _put(img, i + 1, a)
    return f"instructions {i} and {i + 1} swapped"


def _mutate_code_write(img, rng):
    i = _pick(img, rng, (Opcode.MATMUL,))
    if i is None:
        return None
    f = dict(isa.Instruction.decode(_ins(img, i)).fields)
    f["c_addr"] = img.prog + int(rng.integers(0, _slots(img))) * INSTR_BYTES
    _put(img, i, isa.Instruction(Opcode.MATMUL, f).encode())
    return f"instruction {i} writes over the code"


def _mutate_no_halt(img, rng):
    raw = rng.integers(0, 256, INSTR_BYTES, dtype=np.uint8).tobytes() if rng.random() < 0.5 \
        else bytes(INSTR_BYTES)
    _put(img, _slots(img) - 1, raw)
    return "HALT replaced"


#: Name -> function(image, rng) changing the program in place; returns what it did, or None
#: when the program has nothing to apply it to.
MUTATIONS = {"bit": _mutate_bit, "opcode": _mutate_opcode, "field": _mutate_field,
             "unsync": _mutate_unsync, "swap": _mutate_swap, "code_write": _mutate_code_write,
             "no_halt": _mutate_no_halt}


# --- programs -----------------------------------------------------------------------------------

def make_case(seed: int, config: MachineConfig, mem_bytes: int, *, vector_unit: bool = False,
              memory_model: bool = False, kinds=KINDS) -> ProgramCase:
    """Program ``seed`` of a campaign: its kind is ``kinds[seed % len(kinds)]``; everything
    else comes from ``seed`` alone. ``memory_model``: draw a read latency and stall chance."""
    rng = np.random.default_rng([seed, 0xCE1051A])
    kind = kinds[seed % len(kinds)]
    base, size, image_bytes = memory_layout(mem_bytes)
    guard = image_bytes - base - size
    w = config.port_bytes
    if kind == "random":
        mem = rng.integers(0, 256, image_bytes, dtype=np.uint8)
        if rng.random() < 0.5:      # zeroed data: parameter records are valid, more instructions run
            mem[base:base + size] = 0
        n = int(rng.integers(1, 13))
        code = b"".join(fuzz_instruction(rng, base, base + size, port_bytes=w,
                                         vector=vector_unit) for _ in range(n))
        prog = base + int(rng.integers(0, (size - len(code)) // INSTR_BYTES + 1)) * INSTR_BYTES
        mem[prog:prog + len(code)] = np.frombuffer(code, np.uint8)
        img = Image(mem, base, size, prog, config, {"instructions": n})
    else:
        img = matmul_chain(int(rng.integers(0, 1 << 31)), config, links=int(rng.integers(1, 4)),
                           base=base, size=size, guard=guard, max_dim=4 * config.array)
        if kind == "mutated":
            done = []
            for name in rng.choice(list(MUTATIONS), size=int(rng.integers(1, 4))):
                what = MUTATIONS[str(name)](img, rng)
                if what:
                    done.append(f"{name}: {what}")
            img.notes["mutations"] = done
    img.notes.update(kind=kind, seed=seed)
    case = ProgramCase(img, vector_unit=vector_unit, memory_seed=seed & 0xFFFFFFFF,
                       max_cycles=MAX_CYCLES)
    if memory_model:
        case.latency = int(rng.integers(1, 9))
        case.stall = float(rng.choice([0.0, 0.0, 0.1, 0.3]))
    return case


def probe_vector_unit(backend, mem_bytes: int, timeout_s: float | None = None) -> bool:
    """Whether ``backend`` runs VECTOR instructions, for a backend that does not say (a
    board): a VECTOR of zero rows stops with UNSUPPORTED at decode on a build without the
    vector unit and with BAD_SHAPE on one with it; neither writes anything."""
    base, size, _ = memory_layout(mem_bytes)
    code = (isa.vector(op=VecOp.REQUANT, rows=0, cols=1, src_addr=base, dst_addr=base,
                       p_addr=base).encode() + isa.halt().encode())
    backend.write_memory(base, code)
    for name, value in (("WIN_BASE", base), ("WIN_SIZE", size), ("PROG_ADDR", base),
                        ("CTRL", CSR.CTRL.make(start=1, clear_counters=1))):
        backend.write_csr(name, value)
    backend.advance(100_000, timeout_s)
    return ErrorCode(backend.read_csr("ERROR")) != ErrorCode.UNSUPPORTED


@dataclass
class Outcome:
    """A backend's run of a case: its CSRs (``CSR_RESULTS`` and CYCLES), its memory (the
    image's bytes) and whether it stopped within the cycle limit."""
    regs: dict
    mem: np.ndarray
    stopped: bool


def run_case(backend, case: ProgramCase, timeout_s: float | None = None) -> Outcome:
    """Load ``case`` into ``backend`` (the whole memory, the window, the memory model when the
    backend has one), start it and let it run; a run that does not stop is aborted."""
    img = case.image
    if hasattr(backend, "memory_model"):
        backend.memory_model(latency=case.latency, stall=case.stall, seed=case.memory_seed)
    backend.write_memory(0, img.mem.tobytes())
    backend.write_csr("WIN_BASE", img.base)
    backend.write_csr("WIN_SIZE", img.size)
    backend.write_csr("PROG_ADDR", img.prog)
    backend.write_csr("CTRL", CSR.CTRL.make(start=1, clear_counters=1))
    backend.advance(case.max_cycles, timeout_s)
    stopped = not CSR.STATUS.get(backend.read_csr("STATUS"), "busy")
    regs = {name: backend.read_csr(name) for name in CSR_RESULTS}
    regs["CYCLES"] = backend.read_csr("CYCLES_LO") | backend.read_csr("CYCLES_HI") << 32
    if not stopped:                 # leave the backend usable for the next program
        backend.write_csr("CTRL", CSR.CTRL.make(abort=1))
        backend.advance(100_000, timeout_s)
    mem = np.frombuffer(backend.read_memory(0, len(img.mem)), np.uint8).copy()
    return Outcome(regs, mem, stopped)


def judge(case: ProgramCase, out: Outcome) -> dict:
    """The verdict on ``out`` against the isa simulator's run of ``case``, with details:
    ``hang`` (did not stop), ``outside_window`` (a byte outside the window changed),
    ``mismatch`` (a CSR or a window byte differs), ``hazard`` (the program breaks an ordering
    rule of docs/isa.md, so its memory is undefined: only the window and the stop are
    checked), ``expected_error`` (stopped with the isa simulator's error code, everything
    equal) or ``bit_exact``."""
    img = case.image
    want_mem, want, mach = reference(img, vector_unit=case.vector_unit,
                                     max_instructions=img.size // INSTR_BYTES + 1)
    r = {"kind": img.notes.get("kind"), "seed": img.notes.get("seed"),
         "error": ErrorCode(want["ERROR"]).name, "cycles": out.regs["CYCLES"]}
    outside = np.ones(len(img.mem), bool)
    outside[img.base:img.base + img.size] = False
    moved = np.flatnonzero((out.mem != img.mem) & outside)
    if not out.stopped:
        return {**r, "verdict": "hang", "detail": f"still busy after {case.max_cycles} cycles"}
    if moved.size:
        return {**r, "verdict": "outside_window",
                "detail": f"{moved.size} bytes outside the window changed, first at "
                          f"{int(moved[0]):#x}"}
    if mach.hazards:
        return {**r, "verdict": "hazard", "detail": mach.hazards[0]}
    # A vector record out of range is found while the rows stream: ERROR_PC names the VECTOR,
    # but its destination and later matmuls are undefined (docs/isa.md, "Precise and imprecise
    # stops").
    imprecise = (want["ERROR"] == ErrorCode.BAD_PARAM and want["ERROR_PC"] < len(img.mem)
                 and img.mem[want["ERROR_PC"]] == Opcode.VECTOR)
    names = ("ERROR", "ERROR_PC") if imprecise else \
        ("ERROR", "ERROR_PC", "PC", "INSTRET", "MATMUL_COUNT", "VECTOR_COUNT")
    for name in names:
        if out.regs[name] != want[name]:
            return {**r, "verdict": "mismatch",
                    "detail": f"{name} {out.regs[name]:#x}, the isa simulator {want[name]:#x}"}
    if not imprecise:
        if status_bits(out.regs["STATUS"]) != want["STATUS"]:
            return {**r, "verdict": "mismatch", "detail": f"STATUS {out.regs['STATUS']:#x}, "
                                                          f"the isa simulator {want['STATUS']:#x}"}
        diff = np.flatnonzero(out.mem != want_mem)
        if diff.size:
            return {**r, "verdict": "mismatch",
                    "detail": f"{diff.size} window bytes differ from the isa simulator's, "
                              f"first at {int(diff[0]):#x}"}
    ok = want["ERROR"] == ErrorCode.OK
    return {**r, "verdict": "bit_exact" if ok else "expected_error"}
