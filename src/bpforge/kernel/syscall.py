"""bpf(2) through ctypes: one `bpf(cmd, attr)` and, per command, its part of `union bpf_attr`.

Each command's attribute block is its own ctypes Structure holding the uapi fields in order up to the last
one bpforge sets or reads. The kernel copies min(size we pass, its own sizeof(union bpf_attr)) and zero-fills
the rest, so a shorter block means "every later field zero", which is what we want for fields we do not use;
a longer one would have to be zero in its tail (bpf_check_uarg_tail_zero). Layouts: include/uapi/linux/bpf.h.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from ..errors import BpforgeError, errno_text
from ..isa.progtypes import PROG_TYPES, check_prog_type

# enum bpf_cmd (the ones bpforge issues).
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_MAP_GET_NEXT_KEY = range(5)
BPF_PROG_LOAD = 5
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_NEXT_ID, BPF_MAP_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, BPF_MAP_GET_FD_BY_ID = 11, 12, 13, 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_BTF_LOAD = 18
BPF_BTF_GET_FD_BY_ID = 19
BPF_MAP_FREEZE = 22

BPF_OBJ_NAME_LEN = 16
# x86_64 and aarch64 syscall numbers of bpf(2).
_SYSCALL_NR = {"x86_64": 321, "aarch64": 280}


class KernelUnavailable(BpforgeError):
    """bpf() cannot be used here (not Linux, no permission, unsupported architecture)."""


_u32, _s32, _u64 = ctypes.c_uint32, ctypes.c_int32, ctypes.c_uint64


class MapCreateAttr(ctypes.Structure):
    _fields_ = [
        ("map_type", _u32), ("key_size", _u32), ("value_size", _u32), ("max_entries", _u32),
        ("map_flags", _u32), ("inner_map_fd", _u32), ("numa_node", _u32),
        ("map_name", ctypes.c_char * BPF_OBJ_NAME_LEN), ("map_ifindex", _u32), ("btf_fd", _u32),
        ("btf_key_type_id", _u32), ("btf_value_type_id", _u32), ("btf_vmlinux_value_type_id", _u32),
        ("map_extra", _u64),
    ]


class MapElemAttr(ctypes.Structure):
    # BPF_MAP_LOOKUP_ELEM / UPDATE_ELEM / DELETE_ELEM / GET_NEXT_KEY; `value` doubles as `next_key`.
    # c_uint64 members are 8-aligned on the ABIs we run on, which matches __aligned_u64.
    _fields_ = [("map_fd", _u32), ("key", _u64), ("value", _u64), ("flags", _u64)]


class MapFdAttr(ctypes.Structure):
    # BPF_MAP_FREEZE reads only map_fd (the first field of the MAP_*_ELEM block).
    _fields_ = [("map_fd", _u32)]


class ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", _u32), ("insn_cnt", _u32), ("insns", _u64), ("license", _u64), ("log_level", _u32),
        ("log_size", _u32), ("log_buf", _u64), ("kern_version", _u32), ("prog_flags", _u32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN), ("prog_ifindex", _u32), ("expected_attach_type", _u32),
        ("prog_btf_fd", _u32), ("func_info_rec_size", _u32), ("func_info", _u64), ("func_info_cnt", _u32),
        ("line_info_rec_size", _u32), ("line_info", _u64), ("line_info_cnt", _u32), ("attach_btf_id", _u32),
        ("attach_prog_fd", _u32), ("core_relo_cnt", _u32), ("fd_array", _u64), ("core_relos", _u64),
        ("core_relo_rec_size", _u32),
        ("log_true_size", _u32),  # output (6.4+): the log size the verifier wanted
    ]


class TestRunAttr(ctypes.Structure):
    __test__ = False  # not a pytest class, whatever its name says
    _fields_ = [
        ("prog_fd", _u32), ("retval", _u32), ("data_size_in", _u32), ("data_size_out", _u32),
        ("data_in", _u64), ("data_out", _u64), ("repeat", _u32), ("duration", _u32), ("ctx_size_in", _u32),
        ("ctx_size_out", _u32), ("ctx_in", _u64), ("ctx_out", _u64), ("flags", _u32), ("cpu", _u32),
        ("batch_size", _u32),
    ]


class BtfLoadAttr(ctypes.Structure):
    _fields_ = [("btf", _u64), ("btf_log_buf", _u64), ("btf_size", _u32), ("btf_log_size", _u32),
                ("btf_log_level", _u32)]


class GetIdAttr(ctypes.Structure):
    # BPF_*_GET_NEXT_ID (start_id -> next_id) and BPF_*_GET_FD_BY_ID (the id in the same first field).
    _fields_ = [("start_id", _u32), ("next_id", _u32), ("open_flags", _u32)]


class ObjGetAttr(ctypes.Structure):
    # BPF_OBJ_GET: the fd of what is pinned at `pathname` in a bpffs.
    _fields_ = [("pathname", _u64), ("bpf_fd", _u32), ("file_flags", _u32)]


class ObjInfoAttr(ctypes.Structure):
    # BPF_OBJ_GET_INFO_BY_FD: the kernel fills `info` (a struct bpf_prog_info / bpf_map_info / bpf_btf_info
    # of info_len bytes) and writes back the length it filled.
    _fields_ = [("bpf_fd", _u32), ("info_len", _u32), ("info", _u64)]


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _raw_bpf(cmd: int, attr: ctypes.Structure) -> tuple[int, int]:
    nr = _SYSCALL_NR.get(platform.machine())
    if nr is None or os.uname().sysname != "Linux":
        raise KernelUnavailable(f"kernel BPF not available: bpf() unsupported on {platform.system()} "
                                f"{platform.machine()}")
    ctypes.set_errno(0)
    result = _libc().syscall(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr),
                             ctypes.c_uint(ctypes.sizeof(attr)))
    return result, (ctypes.get_errno() if result < 0 else 0)


def bpf(cmd: int, attr: ctypes.Structure) -> tuple[int, int]:
    """Issue bpf(cmd, &attr, sizeof attr): (result, 0) on success, (-1, errno) when the kernel refuses.

    KernelUnavailable when bpf() cannot be used at all: not Linux / unknown architecture, ENOSYS, or EPERM
    from a process that cannot load programs. EPERM is also an ordinary answer (updating a frozen map), so
    it is only taken as "unavailable" when the probe `kernel_available()` fails too."""
    result, err = _raw_bpf(cmd, attr)
    if err == errno.ENOSYS:
        raise KernelUnavailable("kernel BPF not available: bpf() is not implemented by this kernel (ENOSYS)")
    if err == errno.EPERM:
        reason = kernel_available()
        if reason is not None:
            raise KernelUnavailable(reason)
    return result, err


def close_fd(fd: int | None) -> None:
    """Close a file descriptor we own, tolerating one that is already gone."""
    if fd is not None and fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


def obj_name(name: str | None) -> bytes:
    """A name as the kernel accepts it for maps and programs: at most 15 characters of [A-Za-z0-9_.]
    (bpf_obj_name_cpy refuses anything else with EINVAL)."""
    if not name:
        return b""
    clean = "".join(c if c.isascii() and (c.isalnum() or c in "_.") else "_" for c in name)
    return clean[:BPF_OBJ_NAME_LEN - 1].encode()


# ---- BPF_PROG_LOAD: the one path of every load (programs, their tail-call targets, feature probes) -------

DEFAULT_LOG_SIZE = 1 << 20  # the last MiB of a longer log is kept (see bpf_prog_load)
_FUNC_INFO_SIZE, _LINE_INFO_SIZE = 8, 16  # struct bpf_func_info, struct bpf_line_info


@dataclass
class ProgramBtf:
    """What BPF_PROG_LOAD takes for BTF: the loaded .BTF (`fd`, to close) and the program's func_info and
    line_info records (kernel.btf.program_btf makes them)."""

    fd: int
    func_info: bytes
    func_info_cnt: int
    line_info: bytes
    line_info_cnt: int

    func_info_rec_size = _FUNC_INFO_SIZE
    line_info_rec_size = _LINE_INFO_SIZE

    def close(self) -> None:
        close_fd(self.fd)
        self.fd = -1


@dataclass
class LoadResult:
    """What BPF_PROG_LOAD answered: an open program fd when the verifier accepted (the caller closes it),
    else None and the errno; the verifier's log (empty at log_level 0); `log_truncated` when the log
    outgrew its buffer (`log` then holds its end, kernels >= 6.4)."""

    fd: int | None
    log: str
    errno: int = 0
    log_truncated: bool = False

    @property
    def accepted(self) -> bool:
        return self.fd is not None


def bpf_prog_load(code: bytes, prog_type_id: int, *, name: str | None = None, license: str = "GPL",
                  log_level: int = 1, log_size: int = DEFAULT_LOG_SIZE, prog_flags: int = 0,
                  expected_attach_type: int = 0, fd_array: Sequence[int] | None = None,
                  btf: ProgramBtf | None = None, raw: bool = False) -> LoadResult:
    """BPF_PROG_LOAD of `code` (encoded instructions). A rejection is a result, not an exception; an
    unusable bpf() raises KernelUnavailable (`raw`: not even that, for the availability probe itself).
    `fd_array` resolves BPF_PSEUDO_MAP_IDX references; `btf` sends the program's BTF along."""
    code_buf = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license.encode())
    fds = (ctypes.c_int32 * len(fd_array))(*fd_array) if fd_array else None
    log_size = log_size if log_level else 0
    log = ctypes.create_string_buffer(max(log_size, 1))
    attr = ProgLoadAttr(prog_type=prog_type_id, insn_cnt=len(code) // 8, insns=ctypes.addressof(code_buf),
                        license=ctypes.addressof(lic), log_level=log_level if log_size else 0, log_size=log_size,
                        log_buf=ctypes.addressof(log) if log_size else 0, prog_flags=prog_flags,
                        prog_name=obj_name(name), expected_attach_type=expected_attach_type,
                        fd_array=ctypes.addressof(fds) if fds is not None else 0)
    if btf is not None:
        records = [ctypes.create_string_buffer(b, max(len(b), 1)) for b in (btf.func_info, btf.line_info)]
        attr.prog_btf_fd = btf.fd
        if btf.func_info_cnt:
            attr.func_info_rec_size, attr.func_info_cnt = btf.func_info_rec_size, btf.func_info_cnt
            attr.func_info = ctypes.addressof(records[0])
        if btf.line_info_cnt:
            attr.line_info_rec_size, attr.line_info_cnt = btf.line_info_rec_size, btf.line_info_cnt
            attr.line_info = ctypes.addressof(records[1])
    call = _raw_bpf if raw else bpf
    fd, err = call(BPF_PROG_LOAD, attr)
    truncated = err == errno.ENOSPC and log_size > 0
    if truncated:
        # The log did not fit, and then the kernel fails the load whatever the verdict (errno ENOSPC). Since
        # 6.4 the log keeps its *end*, where the complaint is; growing the buffer would mean verifying again
        # with the (slow) log on, so ask for the verdict alone instead.
        attr.log_level, attr.log_size, attr.log_buf = 0, 0, 0
        fd, err = call(BPF_PROG_LOAD, attr)
    text = log.value.decode(errors="replace") if log_size else ""
    if truncated:
        text = text[text.find("\n") + 1:]  # the kept end starts mid-line
    if fd < 0:
        return LoadResult(None, text, err, truncated)
    return LoadResult(fd, text, 0, truncated)


def prog_type_id(prog_type: str) -> int:
    """The kernel's number of a program type bpforge knows (BpforgeError for the VM-only ones, like mem)."""
    type_id = PROG_TYPES[check_prog_type(prog_type)]
    if type_id is None:
        raise BpforgeError(f"program type {prog_type!r} exists only outside the kernel")
    return type_id


def prog_load(bytecode: bytes, prog_type: str = "xdp", *, license: str = "GPL", log_level: int = 1,
              log_size: int = DEFAULT_LOG_SIZE) -> LoadResult:
    """The verifier's answer on raw `bytecode` of a program type named as bpforge names it (no maps);
    `bpf_prog_load` by type name. (program.load_insns does the same with maps and a verdict.)"""
    return bpf_prog_load(bytecode, prog_type_id(prog_type), license=license, log_level=log_level,
                         log_size=log_size)


@lru_cache(maxsize=1)
def kernel_available() -> str | None:
    """None when programs can be loaded here, else the reason they cannot (cached: asked once)."""
    try:
        result = bpf_prog_load(bytes.fromhex("b700000002000000" "9500000000000000"), PROG_TYPES["xdp"],
                               log_level=0, raw=True)
    except KernelUnavailable as err:
        return err.message
    if result.fd is None:
        if result.errno == errno.EPERM:
            return "kernel BPF not available: loading a program needs CAP_BPF and CAP_NET_ADMIN (EPERM)"
        if result.errno == errno.ENOSYS:
            return "kernel BPF not available: bpf() is not implemented by this kernel (ENOSYS)"
        return f"kernel BPF not available: loading a trivial program failed: {errno_text(result.errno)}"
    os.close(result.fd)
    return None
