"""What the running kernel holds: its programs and maps by id (BPF_PROG/MAP_GET_NEXT_ID), opened by id
(BPF_*_GET_FD_BY_ID) or pinned path (BPF_OBJ_GET), described by BPF_OBJ_GET_INFO_BY_FD as `ProgInfo` and
`MapInfo`, and a map's entries (`map_entries`, through `maps.KernelMap`).

Every fd this module opens it closes again before returning: the infos are plain frozen values. What the
info structs do not carry, bpftool reads from /proc/self/fdinfo (memlock, frozen, a prog array's owner) and
/proc/kallsyms (the names of called helpers and of a program's JITed functions); so does this module, so
that `offload.introspect` can print what bpftool prints from the values alone.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..elf.btf import parse_btf
from ..errors import BpforgeError, errno_text
from ..isa.maptypes import PERCPU_TYPES, MapError, map_type_name
from ..isa.progtypes import prog_type_name
from .maps import KernelMap, possible_cpus
from .syscall import (
    BPF_BTF_GET_FD_BY_ID,
    BPF_MAP_GET_FD_BY_ID,
    BPF_MAP_GET_NEXT_ID,
    BPF_OBJ_GET,
    BPF_OBJ_GET_INFO_BY_FD,
    BPF_OBJ_NAME_LEN,
    BPF_PROG_GET_FD_BY_ID,
    BPF_PROG_GET_NEXT_ID,
    GetIdAttr,
    ObjGetAttr,
    ObjInfoAttr,
    bpf,
    close_fd,
)

_u32, _u64 = ctypes.c_uint32, ctypes.c_uint64
_FUNC_INFO = 8  # struct bpf_func_info: insn_off, type_id
_LINE_INFO = 16  # struct bpf_line_info: insn_off, file_name_off, line_off, line_col


class NoSuchObject(BpforgeError):
    """No program or map with that id, pin or name (or the pin holds the other kind of object)."""


class _ProgInfoStruct(ctypes.Structure):
    # struct bpf_prog_info (uapi/linux/bpf.h) up to attach_btf_id; c_uint64 is 8-aligned as __aligned_u64.
    _fields_ = [
        ("type", _u32), ("id", _u32), ("tag", ctypes.c_uint8 * 8), ("jited_prog_len", _u32),
        ("xlated_prog_len", _u32), ("jited_prog_insns", _u64), ("xlated_prog_insns", _u64), ("load_time", _u64),
        ("created_by_uid", _u32), ("nr_map_ids", _u32), ("map_ids", _u64), ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", _u32), ("gpl_compatible", _u32), ("netns_dev", _u64), ("netns_ino", _u64),
        ("nr_jited_ksyms", _u32), ("nr_jited_func_lens", _u32), ("jited_ksyms", _u64), ("jited_func_lens", _u64),
        ("btf_id", _u32), ("func_info_rec_size", _u32), ("func_info", _u64), ("nr_func_info", _u32),
        ("nr_line_info", _u32), ("line_info", _u64), ("jited_line_info", _u64), ("nr_jited_line_info", _u32),
        ("line_info_rec_size", _u32), ("jited_line_info_rec_size", _u32), ("nr_prog_tags", _u32),
        ("prog_tags", _u64), ("run_time_ns", _u64), ("run_cnt", _u64), ("recursion_misses", _u64),
        ("verified_insns", _u32), ("attach_btf_obj_id", _u32), ("attach_btf_id", _u32),
    ]


class _MapInfoStruct(ctypes.Structure):
    _fields_ = [
        ("type", _u32), ("id", _u32), ("key_size", _u32), ("value_size", _u32), ("max_entries", _u32),
        ("map_flags", _u32), ("name", ctypes.c_char * BPF_OBJ_NAME_LEN), ("ifindex", _u32),
        ("btf_vmlinux_value_type_id", _u32), ("netns_dev", _u64), ("netns_ino", _u64), ("btf_id", _u32),
        ("btf_key_type_id", _u32), ("btf_value_type_id", _u32), ("btf_vmlinux_id", _u32), ("map_extra", _u64),
    ]


class _BtfInfoStruct(ctypes.Structure):
    _fields_ = [("btf", _u64), ("btf_size", _u32), ("id", _u32), ("name", _u64), ("name_len", _u32),
                ("kernel_btf", _u32)]


@dataclass(frozen=True)
class ProgInfo:
    """A loaded program as BPF_OBJ_GET_INFO_BY_FD describes it, plus what bpftool adds from elsewhere:
    `memlock` (fdinfo), `loaded_at` (load_time, ns since boot, as wall-clock seconds: bpftool's
    arithmetic), `full_name` (the name of its first function in its BTF when the kernel's 15 characters
    cut it), `btf` (the program's BTF blob), `symbols` (address -> kallsyms name of its JITed functions
    and of the helpers its xlated code calls; `call_base` = __bpf_call_base, to which a helper call's imm
    is relative). `xlated`/`jited` hold the code when it was asked for (else b"")."""

    id: int
    type: int
    name: str
    tag: str
    gpl_compatible: bool
    load_time: int
    loaded_at: int
    created_by_uid: int
    xlated_len: int
    jited_len: int
    map_ids: tuple[int, ...] = ()
    btf_id: int = 0
    ifindex: int = 0
    run_time_ns: int = 0
    run_cnt: int = 0
    recursion_misses: int = 0
    verified_insns: int = 0
    memlock: int | None = None
    full_name: str = ""
    xlated: bytes = field(default=b"", repr=False)
    jited: bytes = field(default=b"", repr=False)
    jited_ksyms: tuple[int, ...] = ()
    jited_func_lens: tuple[int, ...] = ()
    func_info: tuple[tuple[int, int], ...] = ()  # (insn_off, BTF type id of the FUNC)
    line_info: tuple[tuple[int, int, int, int], ...] = ()  # (insn_off, file_name_off, line_off, line_col)
    btf: bytes | None = field(default=None, repr=False)
    symbols: dict[int, str] = field(default_factory=dict, repr=False, hash=False, compare=False)
    call_base: int = 0

    @property
    def type_name(self) -> str | None:
        """The kernel's name of the type (libbpf's spelling, which bpftool prints), None if unknown."""
        return prog_type_name(self.type)

    @property
    def display_name(self) -> str:
        return self.full_name or self.name


@dataclass(frozen=True)
class MapInfo:
    """A map as BPF_OBJ_GET_INFO_BY_FD describes it, plus fdinfo's memlock, frozen and (prog arrays) the
    owner program's type and whether it is JITed."""

    id: int
    type: int
    name: str
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    btf_id: int = 0
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0
    btf_vmlinux_value_type_id: int = 0
    map_extra: int = 0
    ifindex: int = 0
    memlock: int | None = None
    frozen: bool = False
    owner_prog_type: int | None = None
    owner_jited: bool | None = None

    @property
    def type_name(self) -> str | None:
        name = map_type_name(self.type)
        return None if name.startswith("unknown") else name

    @property
    def percpu(self) -> bool:
        return self.type_name in PERCPU_TYPES


@dataclass(frozen=True)
class MapEntry:
    """One element: its key and value (every possible CPU's value, each 8-byte aligned, for per-CPU maps),
    or the errno its lookup failed with (then `value` is None)."""

    key: bytes
    value: bytes | None
    error: int = 0


# ---- ids and fds -------------------------------------------------------------------------------------------

def _ids(cmd: int) -> Iterator[int]:
    current = 0
    while True:
        attr = GetIdAttr(start_id=current)
        result, err = bpf(cmd, attr)
        if err == errno.ENOENT:
            return
        if err:
            raise BpforgeError(f"cannot list kernel objects: {errno_text(err)}")
        current = attr.next_id
        yield current


def prog_ids() -> list[int]:
    """The ids of every program loaded in the kernel, ascending."""
    return list(_ids(BPF_PROG_GET_NEXT_ID))


def map_ids() -> list[int]:
    """The ids of every map in the kernel, ascending."""
    return list(_ids(BPF_MAP_GET_NEXT_ID))


def _fd_by_id(cmd: int, obj_id: int, what: str) -> int:
    fd, err = bpf(cmd, GetIdAttr(start_id=obj_id))
    if fd < 0:
        if err == errno.ENOENT:
            raise NoSuchObject(f"no {what} with id {obj_id}")
        raise BpforgeError(f"cannot open {what} id {obj_id}: {errno_text(err)}")
    return fd


def open_prog(prog_id: int) -> int:
    """An fd of program `prog_id` (the caller closes it)."""
    return _fd_by_id(BPF_PROG_GET_FD_BY_ID, prog_id, "program")


def open_map(map_id: int) -> int:
    """An fd of map `map_id` (the caller closes it)."""
    return _fd_by_id(BPF_MAP_GET_FD_BY_ID, map_id, "map")


def open_pinned(path: str, kind: str) -> int:
    """An fd of the program (`kind` "prog") or map ("map") pinned at `path` in a bpffs."""
    raw = ctypes.create_string_buffer(os.fsencode(path))
    fd, err = bpf(BPF_OBJ_GET, ObjGetAttr(pathname=ctypes.addressof(raw)))
    if fd < 0:
        if err == errno.ENOENT:
            raise NoSuchObject(f"nothing is pinned at {path}")
        raise BpforgeError(f"cannot open pinned object {path}: {errno_text(err)}")
    actual = _fd_kind(fd)
    if actual != kind:
        close_fd(fd)
        raise NoSuchObject(f"{path} holds a {actual or 'non-BPF object'}, not a {kind}")
    return fd


def _fd_kind(fd: int) -> str | None:
    # The anonymous inode behind a BPF fd says what it is (bpftool's get_fd_type does the same).
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return {"anon_inode:bpf-prog": "prog", "anon_inode:bpf-map": "map", "anon_inode:bpf-link": "link"}.get(link)


def _fdinfo(fd: int) -> dict[str, str]:
    """/proc/self/fdinfo/FD as key -> value (the kernel's bpf_prog_show_fdinfo / bpf_map_show_fdinfo)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _obj_info(fd: int, info: ctypes.Structure) -> None:
    attr = ObjInfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _, err = bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    if err:
        raise BpforgeError(f"BPF_OBJ_GET_INFO_BY_FD: {errno_text(err)}")


# ---- programs ----------------------------------------------------------------------------------------------

def prog_info(fd: int, *, code: bool = False, symbols: bool = False) -> ProgInfo:
    """The info of the program open at `fd`. `code`: also its xlated and jited code, JITed function
    addresses and lengths, func_info and line_info, and BTF (a second call with buffers the first call
    sized); `symbols`: resolve helper calls and function addresses through /proc/kallsyms."""
    first = _ProgInfoStruct()
    _obj_info(fd, first)
    # Second call: buffers for what the first one counted. Every array the kernel fills must be asked for
    # explicitly (a zero pointer means "not wanted").
    second = _ProgInfoStruct()
    buffers = []

    def buffer(count_field: str, ptr_field: str, size: int, count: int) -> ctypes.Array | None:
        if not count:
            return None
        buf = ctypes.create_string_buffer(size * count)
        buffers.append(buf)
        setattr(second, count_field, count)
        setattr(second, ptr_field, ctypes.addressof(buf))
        return buf

    maps_buf = buffer("nr_map_ids", "map_ids", 4, first.nr_map_ids)
    xlated = jited = ksyms = lens = finfo = linfo = None
    if code:
        xlated = buffer("xlated_prog_len", "xlated_prog_insns", 1, first.xlated_prog_len)
        jited = buffer("jited_prog_len", "jited_prog_insns", 1, first.jited_prog_len)
        ksyms = buffer("nr_jited_ksyms", "jited_ksyms", 8, first.nr_jited_ksyms)
        lens = buffer("nr_jited_func_lens", "jited_func_lens", 4, first.nr_jited_func_lens)
        if first.nr_func_info:
            second.func_info_rec_size = first.func_info_rec_size
            finfo = buffer("nr_func_info", "func_info", first.func_info_rec_size, first.nr_func_info)
        if first.nr_line_info:
            second.line_info_rec_size = first.line_info_rec_size
            linfo = buffer("nr_line_info", "line_info", first.line_info_rec_size, first.nr_line_info)
    elif first.nr_func_info and len(first.name) == BPF_OBJ_NAME_LEN - 1 and first.btf_id:
        second.func_info_rec_size = first.func_info_rec_size  # the first function's name: see full_name
        finfo = buffer("nr_func_info", "func_info", first.func_info_rec_size, 1)
    if buffers:
        _obj_info(fd, second)
    info = second if buffers else first

    def words(buf, fmt_size: int, count: int) -> tuple[int, ...]:
        if buf is None:
            return ()
        return tuple(int.from_bytes(buf.raw[i * fmt_size:(i + 1) * fmt_size], "little") for i in range(count))

    func_info = ()
    if finfo is not None:
        size = first.func_info_rec_size
        func_info = tuple((int.from_bytes(finfo.raw[i * size:i * size + 4], "little"),
                           int.from_bytes(finfo.raw[i * size + 4:i * size + 8], "little"))
                          for i in range(min(info.nr_func_info, len(finfo.raw) // size)))
    line_info = ()
    if linfo is not None:
        size = first.line_info_rec_size
        line_info = tuple(tuple(int.from_bytes(linfo.raw[i * size + 4 * k:i * size + 4 * k + 4], "little")
                                for k in range(4)) for i in range(info.nr_line_info))
    btf = _btf_bytes(first.btf_id) if first.btf_id and finfo is not None else None
    name = first.name.decode(errors="replace")
    full_name = _func_name(btf, func_info[0][1]) if btf and func_info and len(name) == BPF_OBJ_NAME_LEN - 1 else ""
    ksym_list = words(ksyms, 8, info.nr_jited_ksyms)
    xlated_code = xlated.raw[:info.xlated_prog_len] if xlated is not None else b""
    syms, call_base = ({}, 0)
    if symbols and code:
        syms, call_base = _kallsyms()
    fdinfo = _fdinfo(fd)
    return ProgInfo(
        id=first.id, type=first.type, name=name, tag=bytes(first.tag).hex(),
        gpl_compatible=bool(first.gpl_compatible & 1), load_time=first.load_time,
        loaded_at=_wallclock(first.load_time), created_by_uid=first.created_by_uid,
        xlated_len=first.xlated_prog_len, jited_len=first.jited_prog_len,
        map_ids=words(maps_buf, 4, min(info.nr_map_ids, first.nr_map_ids)), btf_id=first.btf_id,
        ifindex=first.ifindex, run_time_ns=first.run_time_ns, run_cnt=first.run_cnt,
        recursion_misses=first.recursion_misses, verified_insns=first.verified_insns,
        memlock=_int_or_none(fdinfo.get("memlock")), full_name=full_name, xlated=xlated_code,
        jited=jited.raw[:info.jited_prog_len] if jited is not None else b"", jited_ksyms=ksym_list,
        jited_func_lens=words(lens, 4, info.nr_jited_func_lens), func_info=func_info, line_info=line_info,
        btf=btf if code else None, symbols=syms, call_base=call_base)


def _wallclock(load_time: int) -> int:
    """load_time (ns since boot) as seconds since the epoch, computed as bpftool computes it (so both agree
    to the second): (real.sec - boot.sec) + (real.nsec - boot.nsec + load_time) / 1e9, truncated."""
    if not load_time:
        return 0
    real = time.clock_gettime_ns(time.CLOCK_REALTIME)
    boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    real_s, real_ns = divmod(real, 10**9)
    boot_s, boot_ns = divmod(boot, 10**9)
    return (real_s - boot_s) + int((real_ns - boot_ns + load_time) / 10**9)


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _btf_bytes(btf_id: int) -> bytes | None:
    """The raw BTF of kernel BTF object `btf_id` (BPF_BTF_GET_FD_BY_ID, then its info twice); None when the
    kernel does not give it."""
    fd, _ = bpf(BPF_BTF_GET_FD_BY_ID, GetIdAttr(start_id=btf_id))
    if fd < 0:
        return None
    try:
        first = _BtfInfoStruct()
        _obj_info(fd, first)
        buf = ctypes.create_string_buffer(max(first.btf_size, 1))
        second = _BtfInfoStruct(btf=ctypes.addressof(buf), btf_size=first.btf_size)
        _obj_info(fd, second)
        return buf.raw[:second.btf_size]
    except BpforgeError:
        return None
    finally:
        close_fd(fd)


def _func_name(btf: bytes, type_id: int) -> str:
    try:
        t = parse_btf(btf)[type_id]
    except BpforgeError:
        return ""
    return t.name if t.kind == "func" else ""


def _kallsyms() -> tuple[dict[int, str], int]:
    """/proc/kallsyms as address -> name (the first name at an address), and __bpf_call_base's address.
    Empty (addresses all zero) where kptr_restrict hides them."""
    symbols: dict[int, str] = {}
    base = 0
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                address = int(parts[0], 16)
                if not address:
                    continue
                symbols.setdefault(address, parts[2])
                if parts[2] == "__bpf_call_base":
                    base = address
    except (OSError, ValueError):
        return {}, 0
    return symbols, base


def find_programs(*, prog_id: int | None = None, pinned: str | None = None, name: str | None = None,
                  code: bool = False, symbols: bool = False) -> list[ProgInfo]:
    """The programs chosen as bpftool's PROG chooses them (id, pinned path or name), or all of them."""
    if pinned is not None:
        fds_of = iter([lambda: open_pinned(pinned, "prog")])
    elif prog_id is not None:
        fds_of = iter([lambda: open_prog(prog_id)])
    else:
        fds_of = (lambda i=i: open_prog(i) for i in prog_ids())
    found = []
    for opener in fds_of:
        try:
            fd = opener()
        except NoSuchObject:
            if prog_id is not None or pinned is not None:
                raise
            continue  # unloaded between listing and opening
        try:
            # the name is matched before asking for the (large) code of every program
            if name is not None and prog_info(fd).display_name != name:
                continue
            found.append(prog_info(fd, code=code, symbols=symbols))
        finally:
            close_fd(fd)
    if name is not None and not found:
        raise NoSuchObject(f"no program named {name!r}")
    return found


# ---- maps --------------------------------------------------------------------------------------------------

def map_info(fd: int) -> MapInfo:
    """The info of the map open at `fd`."""
    raw = _MapInfoStruct()
    _obj_info(fd, raw)
    fdinfo = _fdinfo(fd)
    owner = _int_or_none(fdinfo.get("owner_prog_type"))
    jited = _int_or_none(fdinfo.get("owner_jited"))
    return MapInfo(
        id=raw.id, type=raw.type, name=raw.name.decode(errors="replace"), key_size=raw.key_size,
        value_size=raw.value_size, max_entries=raw.max_entries, flags=raw.map_flags, btf_id=raw.btf_id,
        btf_key_type_id=raw.btf_key_type_id, btf_value_type_id=raw.btf_value_type_id,
        btf_vmlinux_value_type_id=raw.btf_vmlinux_value_type_id, map_extra=raw.map_extra, ifindex=raw.ifindex,
        memlock=_int_or_none(fdinfo.get("memlock")), frozen=bool(_int_or_none(fdinfo.get("frozen"))),
        owner_prog_type=owner, owner_jited=None if jited is None else bool(jited))


def map_entries(fd: int, info: MapInfo) -> list[MapEntry]:
    """Every element of the map open at `fd`, in BPF_MAP_GET_NEXT_KEY order (KernelMap's walk; per-CPU
    values hold one slot per possible CPU). The fd stays the caller's."""
    kmap = KernelMap(fd, info.name, info.type, info.key_size, info.value_size, info.max_entries, info.flags,
                     possible_cpus() if info.percpu else 1)
    entries = []
    for key in kmap.keys():
        try:
            value = kmap.lookup(key)
        except MapError as err:
            entries.append(MapEntry(key, None, err.errno))
            continue
        entries.append(MapEntry(key, None, errno.ENOENT) if value is None else MapEntry(key, value))
    return entries


def find_maps(*, map_id: int | None = None, pinned: str | None = None, name: str | None = None,
              entries: bool = False) -> list[tuple[MapInfo, list[MapEntry]]]:
    """The maps chosen as bpftool's MAP chooses them (id, pinned path or name), or all of them, with their
    entries when asked."""
    if pinned is not None:
        openers = [lambda: open_pinned(pinned, "map")]
    elif map_id is not None:
        openers = [lambda: open_map(map_id)]
    else:
        openers = [lambda i=i: open_map(i) for i in map_ids()]
    found = []
    for opener in openers:
        try:
            fd = opener()
        except NoSuchObject:
            if map_id is not None or pinned is not None:
                raise
            continue
        try:
            info = map_info(fd)
            if name is not None and info.name != name:
                continue
            found.append((info, map_entries(fd, info) if entries else []))
        finally:
            close_fd(fd)
    if name is not None and not found:
        raise NoSuchObject(f"no map named {name!r}")
    return found


__all__ = ["MapEntry", "MapInfo", "NoSuchObject", "ProgInfo", "find_maps", "find_programs", "map_entries",
           "map_ids", "map_info", "open_map", "open_pinned", "open_prog", "prog_ids", "prog_info"]
