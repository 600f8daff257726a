"""Program image files: a memory image with its program, the window and program address to
run it with, and the memory behaviour to run it under; what ``celosia check`` saves for each
failing program and replays (``--save-failures DIR``, ``--replay FILE``).

The file is a safetensors file (:mod:`celosia.sw.files` reads its header first) with one
tensor, ``memory`` (U8, the whole memory the program sees, from address 0), and one metadata
entry, ``celosia_program``: a JSON object of the descriptors in :data:`DESCRIPTORS`.
Every descriptor is checked before the memory is read or a backend is opened: a window or a
program address outside the memory, an array the hardware cannot be built with, a latency
or a cycle limit out of range is one :class:`~celosia.sw.errors.FileFormatError` line.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from celosia.hdl.isa import MachineConfig
from celosia.sim.tb_accelerator import Image

from .errors import FileFormatError
from .files import ANY, check_tensors, safetensors_header

__all__ = ["FORMAT_VERSION", "MAX_MEMORY_BYTES", "MAX_LATENCY", "MAX_STALL", "ProgramCase",
           "save_program", "load_program"]

FORMAT_VERSION = 1
#: Metadata key of the descriptors.
META_KEY = "celosia_program"
#: Largest memory image accepted (the backends allocate this much): the compiled MiniLM
#: image is 23 MB.
MAX_MEMORY_BYTES = 1 << 28
#: Read latency (cycles) and per-cycle stall chance a simulated memory is given at most.
MAX_LATENCY, MAX_STALL = 64, 0.9
#: Cycle limit a program is given at most.
MAX_CYCLES = 1 << 40
_U32 = 1 << 32


@dataclass
class ProgramCase:
    """One program to run: ``image`` (its memory from address 0, the window and program
    address written to the CSRs, the machine it was made for, and ``notes``: how it was made,
    what went wrong), whether the reference has a vector unit, the simulated memory's read
    ``latency`` and ``stall`` chance (``memory_seed`` seeds the stalls) and a cycle limit."""
    image: Image
    vector_unit: bool = False
    latency: int = 4
    stall: float = 0.0
    memory_seed: int = 1
    max_cycles: int = 4_000_000

    def descriptors(self) -> dict:
        img = self.image
        return {"format_version": FORMAT_VERSION, "base": img.base, "size": img.size,
                "prog": img.prog, "array": img.config.array,
                "port_bytes": img.config.port_bytes, "vector_unit": self.vector_unit,
                "latency": self.latency, "stall": self.stall, "memory_seed": self.memory_seed,
                "max_cycles": self.max_cycles, "note": img.notes}


def save_program(path, case: ProgramCase) -> None:
    """Write ``case`` to ``path`` atomically (a temporary file, then a rename)."""
    from safetensors.numpy import save_file
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({"memory": np.ascontiguousarray(case.image.mem, dtype=np.uint8)}, tmp,
                  metadata={META_KEY: json.dumps(case.descriptors(), sort_keys=True)})
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _int(d: dict, key: str, lo: int, hi: int, refuse) -> int:
    v = d.get(key)
    if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
        raise refuse(f"{key} is {str(v)[:30]}, expected an integer in {lo}..{hi}")
    return v


def load_program(path) -> ProgramCase:
    """Read and check a program image file (FileFormatError, one line, if anything is wrong)."""
    from celosia.hdl.params import check_config
    path = Path(path)
    what = "program image"

    def refuse(reason: str) -> FileFormatError:
        return FileFormatError(f"{what} {path}: {reason}", reason)

    header, extra = safetensors_header(path, what)
    check_tensors(header, {"memory": ("U8", (ANY,))}, path, what)
    if len(header) != 1:
        raise refuse(f"holds {len(header)} tensors, expected only memory")
    try:
        d = json.loads(extra.get(META_KEY, ""))
    except ValueError:
        d = None
    if not isinstance(d, dict):
        raise refuse(f"its {META_KEY} metadata is missing or not a JSON object")
    if d.get("format_version") != FORMAT_VERSION:
        raise refuse(f"format version {str(d.get('format_version'))[:20]}, expected "
                     f"{FORMAT_VERSION}")
    mem_bytes = header["memory"]["shape"][0]
    if mem_bytes > MAX_MEMORY_BYTES:
        raise refuse(f"its memory of {mem_bytes} bytes is more than the {MAX_MEMORY_BYTES} "
                     "a program image may have")
    base = _int(d, "base", 0, _U32 - 1, refuse)
    size = _int(d, "size", 0, _U32 - 1, refuse)
    prog = _int(d, "prog", 0, _U32 - 1, refuse)
    if base + size > mem_bytes:
        raise refuse(f"its window [{base:#x}, {base + size:#x}) reaches past its "
                     f"{mem_bytes}-byte memory")
    array = _int(d, "array", 1, _U32, refuse)
    port_bytes = _int(d, "port_bytes", 1, _U32, refuse)
    try:
        check_config(array, port_bytes)
    except (TypeError, ValueError) as exc:
        raise refuse(f"machine {array}x{array}, {port_bytes}-byte port: {exc}") from None
    stall = d.get("stall")
    if not (isinstance(stall, (int, float)) and not isinstance(stall, bool)
            and math.isfinite(stall) and 0 <= stall <= MAX_STALL):
        raise refuse(f"stall is {str(stall)[:30]}, expected a number in 0..{MAX_STALL}")
    vector_unit, note = d.get("vector_unit"), d.get("note", {})
    if not isinstance(vector_unit, bool):
        raise refuse("vector_unit is not true or false")
    if not isinstance(note, dict):
        raise refuse("note is not a JSON object")
    latency = _int(d, "latency", 1, MAX_LATENCY, refuse)
    memory_seed = _int(d, "memory_seed", 0, _U32 - 1, refuse)
    max_cycles = _int(d, "max_cycles", 1, MAX_CYCLES, refuse)
    begin, end = header["memory"]["data_offsets"]
    with open(path, "rb") as f:
        f.seek(8 + int.from_bytes(f.read(8), "little") + begin)
        raw = f.read(end - begin)
    if len(raw) != end - begin:
        raise refuse("changed while it was read")
    image = Image(np.frombuffer(raw, np.uint8).copy(), base, size, prog,
                  MachineConfig(array, port_bytes), note)
    return ProgramCase(image, vector_unit, latency, float(stall), memory_seed, max_cycles)
