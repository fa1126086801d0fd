"""bpf(2) through ctypes: just what loading a program needs (BPF_PROG_LOAD with the verifier log)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from dataclasses import dataclass
from functools import lru_cache

from ..errors import BpforgeError
from ..isa.progtypes import PROG_TYPES, check_prog_type

BPF_PROG_LOAD = 5
# x86_64 and aarch64 syscall numbers of bpf(2).
_SYSCALL_NR = {"x86_64": 321, "aarch64": 280}


class KernelUnavailable(BpforgeError):
    """bpf() cannot be used here (not Linux, no permission, unsupported architecture)."""


@dataclass
class LoadResult:
    fd: int | None  # an open program fd when the verifier accepted; the caller closes it
    log: str
    errno: int = 0

    @property
    def accepted(self) -> bool:
        return self.fd is not None


class _ProgLoadAttr(ctypes.Structure):
    # The leading fields of union bpf_attr for BPF_PROG_LOAD; the kernel zero-checks the rest.
    _fields_ = [
        ("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16), ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32), ("_rest", ctypes.c_uint8 * 96),
    ]


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _bpf(cmd: int, attr: ctypes.Structure) -> tuple[int, int]:
    nr = _SYSCALL_NR.get(platform.machine())
    if nr is None or os.uname().sysname != "Linux":
        raise KernelUnavailable(f"kernel BPF not available: bpf() unsupported on {platform.system()} "
                                f"{platform.machine()}")
    result = _libc().syscall(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))
    return result, ctypes.get_errno()


def prog_load(bytecode: bytes, prog_type: str = "xdp", *, license: str = "GPL", log_level: int = 1,
              log_size: int = 1 << 20) -> LoadResult:
    """Ask the kernel's verifier about `bytecode`. Rejection is a result, not an exception; an unusable
    bpf() raises KernelUnavailable."""
    type_id = PROG_TYPES[check_prog_type(prog_type)]
    if type_id is None:
        raise BpforgeError(f"program type {prog_type!r} exists only outside the kernel")
    code = ctypes.create_string_buffer(bytecode, len(bytecode))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(log_size)
    attr = _ProgLoadAttr(prog_type=type_id, insn_cnt=len(bytecode) // 8,
                         insns=ctypes.addressof(code), license=ctypes.addressof(lic), log_level=log_level,
                         log_size=log_size, log_buf=ctypes.addressof(log))
    fd, err = _bpf(BPF_PROG_LOAD, attr)
    text = log.value.decode(errors="replace")
    if fd < 0:
        if err in (1, 38) and not text:  # EPERM / ENOSYS before the verifier ran
            raise KernelUnavailable(f"kernel BPF not available: {os.strerror(err)}")
        return LoadResult(None, text, err)
    return LoadResult(fd, text)


@lru_cache(maxsize=1)
def kernel_available() -> str | None:
    """None when programs can be loaded here, else the reason they cannot."""
    try:
        result = prog_load(bytes.fromhex("b700000002000000" "9500000000000000"))
    except KernelUnavailable as err:
        return err.message
    if result.fd is None:
        return f"kernel BPF not available: loading a trivial program failed: {os.strerror(result.errno)}"
    os.close(result.fd)
    return None
