"""Reading the binary files a user names (safetensors checkpoints, integer models, program
images), refusing hostile ones before anything is allocated.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, then the data. A damaged or crafted header can claim a length of
2**62, hold something that is not JSON, or name byte ranges past the end of the file or of
another size than its shape; the safetensors library refuses some of these only after mapping
the file, and a file that it accepts can still hold tensors of the wrong shape or dtype for the
model that reads it. :func:`safetensors_header` reads the header alone (at most
:data:`MAX_HEADER_BYTES`) and checks every entry against the file's size, and
:func:`check_tensors` checks the entries against the shapes and dtypes the reader expects. Both
raise :class:`celosia.sw.errors.FileFormatError`, one line naming the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import FileFormatError

__all__ = ["MAX_HEADER_BYTES", "DTYPE_BYTES", "safetensors_header", "check_tensors", "ANY"]

#: Largest header accepted: the safetensors library's own limit (100 MB). Celosia's files have
#: headers of a few hundred KB at most (MiniLM's integer model: 230 tensors, about 30 KB).
MAX_HEADER_BYTES = 100_000_000
#: Bytes per element of each safetensors dtype.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
               "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
#: Bytes of the length field before the header.
_LENGTH_BYTES = 8
#: A dimension :func:`check_tensors` accepts at any size of 1 or more.
ANY = None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def safetensors_header(path, what: str) -> tuple[dict[str, dict], dict[str, str]]:
    """``({tensor name: {"dtype", "shape", "data_offsets"}}, metadata)`` of the safetensors
    file ``path`` (``what`` names it in errors), every entry checked: a known dtype, a shape of
    non-negative integers, a byte range inside the data whose length is the shape's, no two
    ranges overlapping, the data ending where the last range ends."""
    path = Path(path)

    def refuse(reason: str) -> FileFormatError:
        return FileFormatError(f"{what} {path} {reason}", reason)

    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            head = f.read(_LENGTH_BYTES)
            if len(head) < _LENGTH_BYTES:
                raise refuse(f"is not a safetensors file: {size} bytes, too short for the "
                             f"{_LENGTH_BYTES}-byte header length")
            n = int.from_bytes(head, "little")
            if n > min(MAX_HEADER_BYTES, size - _LENGTH_BYTES):
                limit = (f"the {size}-byte file" if n > size - _LENGTH_BYTES
                         else f"the {MAX_HEADER_BYTES}-byte limit")
                raise refuse(f"is not a valid safetensors file: its header length {n} "
                             f"exceeds {limit}")
            raw = f.read(n)
    except FileNotFoundError:
        raise refuse("does not exist") from None
    except IsADirectoryError:
        raise refuse("is a directory") from None
    except OSError as exc:
        raise refuse(f"cannot be read: {exc.strerror or exc}") from None
    bad = "is not a valid safetensors file"
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise refuse(f"{bad}: its header is not JSON") from None
    if not isinstance(header, dict):
        raise refuse(f"{bad}: its header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not (isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str)
                                           for k, v in meta.items())):
        raise refuse(f"{bad}: its __metadata__ is not a map of strings")
    data = size - _LENGTH_BYTES - n
    spans = []
    for name, entry in header.items():
        where = f"{bad}: tensor {name[:60]!r}"
        if not isinstance(entry, dict):
            raise refuse(f"{where} is not described by an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise refuse(f"{where} has unknown dtype {str(dtype)[:20]!r}")
        if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
            raise refuse(f"{where} has shape {str(shape)[:40]}, not a list of "
                                  "non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(_is_int(o) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise refuse(f"{where} has data_offsets {str(offsets)[:40]}, not "
                                  "[begin, end] with 0 <= begin <= end")
        if offsets[1] > data:
            raise refuse(f"{where} ends at byte {offsets[1]} of the data, past its end "
                                  f"({data} bytes: the file is truncated or its header wrong)")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise refuse(f"{where} holds {offsets[1] - offsets[0]} bytes, not the "
                                  f"{math.prod(shape) * DTYPE_BYTES[dtype]} of its {dtype} "
                                  f"shape {shape}")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin < end:
            raise refuse(f"{bad}: tensor {name[:60]!r} overlaps another")
        end = stop
    if end != data:
        raise refuse(f"{bad}: its tensors end at byte {end} of the data, which has "
                              f"{data} bytes")
    return header, meta


def check_tensors(header: dict[str, dict], expected: dict[str, tuple], path, what: str) -> None:
    """Each tensor named in ``expected`` (name -> (dtype or tuple of dtypes, shape)) is in
    ``header`` with that dtype and shape; a dimension given as :data:`ANY` matches any size
    but 0,
    a shape given as ``"scalar"`` any shape of one element. Other tensors are not checked."""
    def refuse(reason: str) -> FileFormatError:
        return FileFormatError(f"{what} {path}: {reason}", reason)

    for name, (dtypes, shape) in expected.items():
        entry = header.get(name)
        if entry is None:
            raise refuse(f"tensor {name} is missing")
        dtypes = (dtypes,) if isinstance(dtypes, str) else dtypes
        if entry["dtype"] not in dtypes:
            raise refuse(f"tensor {name} is {entry['dtype']}, expected {' or '.join(dtypes)}")
        got = entry["shape"]
        if shape == "scalar":
            ok = math.prod(got) == 1
        else:
            ok = len(got) == len(shape) and all(g == w or (w is ANY and g >= 1)
                                                for g, w in zip(got, shape))
        if not ok:
            want = "one element" if shape == "scalar" else \
                "[" + ", ".join("*" if w is ANY else str(w) for w in shape) + "]"
            raise refuse(f"tensor {name} has shape {got}, expected {want}")
