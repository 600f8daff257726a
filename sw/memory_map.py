"""The accelerator memory as the host lays it out: a reserved digest area, the resident
weights, then each run's data (docs/fpga.md, "Resident weights").

::

    0x000  DIGEST_ADDR    digest record (DIGEST_AREA_BYTES reserved; outside every window)
    0x080  WEIGHTS_BASE   weights region: weights, per-column parameters, constant tables
                          (the compiler's default window base; depends on the model only)
    ...    weights end    per-run region: activations, scratch, the program

The compiler lays the weights out first at fixed addresses and names them by a SHA-256 digest
(:attr:`celosia.sw.compiler.CompiledModel.weights_digest`); the driver writes the digest record
right after it has loaded the weights and reads it back before a run
(:meth:`celosia.sw.driver.Accelerator.load`). The window the accelerator works in starts at
the weights, so no program can write the record.
"""

from __future__ import annotations

import struct

from celosia.hdl.isa import WINDOW_ALIGN

__all__ = ["DIGEST_ADDR", "DIGEST_AREA_BYTES", "WEIGHTS_BASE", "DIGEST_MAGIC", "RECORD_BYTES",
           "digest_record"]

#: The digest record lives at the bottom of memory.
DIGEST_ADDR = 0
#: Bytes reserved for it: one window alignment, so the window can start right after.
DIGEST_AREA_BYTES = WINDOW_ALIGN
#: First byte of the weights region (and of the compiled window).
WEIGHTS_BASE = DIGEST_ADDR + DIGEST_AREA_BYTES
#: Opens a valid record; format version in the last byte.
DIGEST_MAGIC = b"CELOSIA\x01"
#: magic, weights base (u32), weights size (u32), SHA-256 (32 bytes), little endian.
_RECORD = struct.Struct("<8sII32s")
RECORD_BYTES = _RECORD.size
assert RECORD_BYTES <= DIGEST_AREA_BYTES


def digest_record(base: int, size: int, digest: bytes) -> bytes:
    """The record saying that ``size`` bytes of weights with ``digest`` are at ``base``."""
    return _RECORD.pack(DIGEST_MAGIC, base, size, digest)
