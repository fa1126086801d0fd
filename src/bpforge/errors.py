"""Errors raised by the library; the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

# The kernel-internal "not supported" (include/linux/errno.h), which user space has no name for but which
# bpf() returns for some map operations and for test runs of types without a runner.
ENOTSUPP = 524


def errno_name(err: int) -> str:
    """The symbolic name of an errno ("ENOENT"), ENOTSUPP included; the number itself when it has none."""
    return errno.errorcode.get(err, "ENOTSUPP" if err == ENOTSUPP else str(err))


def errno_text(err: int, unsupported: str = "not supported") -> str:
    """"ENAME: description", the way every message of the library quotes an errno (`unsupported`: what
    ENOTSUPP means where it is returned, which strerror cannot say)."""
    return f"{errno_name(err)}: {unsupported if err == ENOTSUPP else os.strerror(err)}"


@dataclass
class Location:
    """Where something went wrong: any of file, section, instruction (slot) index, source line/column."""

    file: str | None = None
    section: str | None = None
    insn: int | None = None
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            pos = self.file
            if self.line is not None:
                pos += f":{self.line}"
                if self.col is not None:
                    pos += f":{self.col}"
            parts.append(pos)
        elif self.line is not None:
            parts.append(f"line {self.line}" + (f", column {self.col}" if self.col is not None else ""))
        if self.section is not None:
            parts.append(f"section {self.section}")
        if self.insn is not None:
            parts.append(f"insn {self.insn}")
        return ": ".join(parts)


class BpforgeError(Exception):
    """Base of every error the library raises. Carries a location that callers may complete."""

    def __init__(self, message: str, **where):
        super().__init__(message)
        self.message = message
        self.where = Location(**where)

    def at(self, **where) -> "BpforgeError":
        """Fill in location fields that are still unknown (inner code knows the slot, outer the file)."""
        for key, value in where.items():
            if getattr(self.where, key) is None and value is not None:
                setattr(self.where, key, value)
        return self

    def __str__(self) -> str:
        loc = str(self.where)
        return f"{loc}: {self.message}" if loc else self.message


class DecodeError(BpforgeError):
    """Bytecode that the kernel would refuse to decode (unknown opcode, reserved fields, bad registers)."""


class EncodeError(BpforgeError):
    """An instruction whose fields do not form a valid encoding."""


class AsmError(BpforgeError):
    """Assembly text that does not parse."""


class ElfError(BpforgeError):
    """An object file that is not a usable BPF ELF object."""


class FormatError(BpforgeError):
    """Input in one of the other program formats (raw, word list, K2) that is malformed."""


__all__ = ["ENOTSUPP", "Location", "BpforgeError", "DecodeError", "EncodeError", "AsmError", "ElfError", "FormatError",
           "errno_name", "errno_text"]
