"""Reading an input file safely: only regular files, never more than a cap; and writing one atomically.

A program path may name /dev/zero (endless), a FIFO without a writer (open() blocks forever) or a directory;
an object may be huge. Every reader of user-named files goes through `read_input`, which opens without
blocking, refuses anything but a regular file, and reads at most `limit` bytes. `write_atomic` is the
other direction, for files a later run reads back (the outputs and state of `bpforge optimize-many`).
This lives at the package root, next to errors.py, because every layer reads files (elf, formats, the
runner's map files, the CLI) and it depends on nothing but the errors.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat

from .errors import BpforgeError, FormatError

# Caps, generous for real inputs: the kernel takes at most 1M instructions (8 MB of code); objects with
# DWARF and BTF for many programs reach tens of MB; packets and map files are far smaller.
MAX_PROGRAM_FILE = 256 << 20
MAX_DATA_FILE = 64 << 20

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_input(path: str | os.PathLike, *, what: str = "input", limit: int = MAX_PROGRAM_FILE,
               error: type[BpforgeError] = FormatError) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; `error` (naming the file) otherwise.

    `what` names the file's role in messages ("program", "packet", "map file")."""
    filename = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer; it changes nothing for files.
        fd = os.open(filename, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise error(f"cannot read the {what}: {err.strerror or err}", file=filename) from None
    size = 0
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):  # the system's own words, as read() would have said them
            raise error(f"{os.strerror(errno.EISDIR)}: the {what} must be a regular file", file=filename)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
            raise error(f"the {what} must be a regular file, not {kind}", file=filename)
        if info.st_size > limit:
            raise error(f"the {what} is {info.st_size} bytes, more than the {limit} bytes bpforge reads",
                        file=filename)
        chunks: list[bytes] = []
        while size <= limit:  # a file still growing stops at the cap too
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise error(f"cannot read the {what}: {err.strerror or err}", file=filename) from None
    finally:
        os.close(fd)
    if size > limit:
        raise error(f"the {what} is more than the {limit} bytes bpforge reads", file=filename)
    return b"".join(chunks)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that anyone reading it (a later run after this one was killed, too) finds
    the old contents or the new, never a part: a temporary file beside it, then os.replace. No fsync: what
    this guards against is the process dying, which leaves the page cache intact, not the machine."""
    target = os.fspath(path)
    directory, name = os.path.split(target)
    temp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
        # 0o666 less the umask, as open() would create the file (mkstemp's 0o600 would stay on the result)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temp, target)
    except BaseException as err:  # a Ctrl-C mid-write too: no temporary file left behind
        if os.path.exists(temp):
            os.unlink(temp)
        if isinstance(err, OSError):
            raise BpforgeError(f"cannot write: {err.strerror or err}", file=target) from None
        raise


__all__ = ["MAX_DATA_FILE", "MAX_PROGRAM_FILE", "read_input", "write_atomic"]
