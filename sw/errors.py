"""User-facing errors, and reading the text files a user names.

An error the user can fix (a bad option, a missing or malformed file, a damaged model cache) is
a :class:`CelosiaError` whose message is one line; the command line prints it and exits with
status 1, never with a traceback. Modules that only report such errors import this one, not the
command line.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = ["CelosiaError", "FileFormatError", "read_text", "text_lines", "check_text", "seconds"]


class CelosiaError(Exception):
    """A user-facing error with a one-line message."""


class FileFormatError(CelosiaError):
    """A file the user named (a checkpoint, an integer model, a program image) is missing,
    malformed or of the wrong shape: refused before any of its contents is used
    (:mod:`celosia.sw.files`). ``reason`` is the message without the file's name, for a
    reader that names the file its own way."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def read_text(path, what: str) -> str:
    """The UTF-8 text of a file the user named; ``what`` names it in errors (``--file``)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        reason = "no such file"
    except IsADirectoryError:
        reason = "it is a directory"
    except PermissionError:
        reason = "permission denied"
    except UnicodeDecodeError:
        reason = "not UTF-8 text"
    except OSError as exc:
        reason = exc.strerror or str(exc)
    raise CelosiaError(f"cannot read {what} {path}: {reason}")


def text_lines(content: str) -> list[str]:
    r"""The non-blank lines of ``content``, split on ``\n`` and ``\r\n`` only: a form feed or a
    U+2028 inside a sentence stays in it (``str.splitlines`` would split there)."""
    return [line.removesuffix("\r") for line in content.split("\n") if line.strip()]


def check_text(text: str, what: str) -> str:
    """``text`` if it is valid Unicode; an argument or stream that was not UTF-8 reaches Python
    with its bad bytes as lone surrogates (surrogateescape), which no tokenizer accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CelosiaError(f"{what} is not UTF-8 text") from None
    return text


def seconds(text: str) -> float:
    """An argparse type: a time limit in seconds, finite and above 0 (-5, 0, nan and inf are
    refused with argparse's own one-line message and exit status 2)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, not {text!r}")
    return value
