"""Kernel objects that outlive one call: pins in a bpffs (BPF_OBJ_PIN / BPF_OBJ_GET), a pinned map opened
again as a `KernelMap` (described by BPF_OBJ_GET_INFO_BY_FD), and XDP links (BPF_LINK_CREATE), which detach
when their last fd closes, so a crashed owner never leaves a program on an interface.

An XDP link attaches to an interface index *of the calling thread's network namespace*: a caller that
works on a device in another namespace enters it first (partition.netlab does).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from ..errors import BpforgeError, errno_text
from ..isa.progtypes import ATTACH_TYPE_IDS
from .info import map_info, open_pinned as open_pinned_kind
from .maps import KernelMap, possible_cpus
from .syscall import ObjGetAttr, bpf, close_fd

BPF_OBJ_PIN = 6
BPF_LINK_CREATE, BPF_LINK_DETACH = 28, 34
# XDP attach modes (include/uapi/linux/if_link.h XDP_FLAGS_*), by the names `ip link` uses.
XDP_MODES = {"native": 1 << 2, "generic": 1 << 1, "offload": 1 << 3, "any": 0}

_u32 = ctypes.c_uint32


class _LinkCreateAttr(ctypes.Structure):
    _fields_ = [("prog_fd", _u32), ("target_ifindex", _u32), ("attach_type", _u32), ("flags", _u32)]


class _LinkDetachAttr(ctypes.Structure):
    _fields_ = [("link_fd", _u32)]


class ObjectError(BpforgeError):
    """The kernel refused to pin, open, describe or attach an object; `errno` says how."""

    def __init__(self, err: int, message: str, **where):
        self.errno = err
        super().__init__(f"{message}: {errno_text(err)}", **where)


def pin(fd: int, path: str) -> None:
    """Pin the map, program or link `fd` at `path`, a new name in a mounted bpffs."""
    raw = ctypes.create_string_buffer(os.fsencode(path))
    _, err = bpf(BPF_OBJ_PIN, ObjGetAttr(pathname=ctypes.addressof(raw), bpf_fd=fd))  # BPF_OBJ_PIN's attr too
    if err:
        raise ObjectError(err, f"cannot pin fd {fd} at {path}")


def map_of_fd(fd: int, name: str | None = None) -> KernelMap:
    """A KernelMap over an open map fd (which it then owns): type, sizes and flags from the kernel."""
    info = map_info(fd)
    kmap = KernelMap(fd, name or info.name, info.type, info.key_size, info.value_size, info.max_entries,
                     info.flags)
    if kmap.percpu:
        kmap.ncpus = possible_cpus()
    return kmap


def open_pinned_map(path: str, name: str | None = None) -> KernelMap:
    """The map pinned at `path`, as a KernelMap to close when done (`name`: default, the file's name)."""
    fd = open_pinned_kind(path, "map")
    try:
        return map_of_fd(fd, name or os.path.basename(path))
    except BaseException:
        close_fd(fd)
        raise


@dataclass(eq=False)
class XdpLink:
    """An XDP program attached to interface `ifindex` through a BPF link. `close()` (or `with`) detaches
    it; so does the end of the owning process."""

    fd: int
    ifindex: int
    prog_fd: int

    def close(self) -> None:
        if self.fd >= 0:
            # Detach explicitly: the fd may have been inherited or pinned, and closing ours would not do it.
            bpf(BPF_LINK_DETACH, _LinkDetachAttr(link_fd=self.fd))
            close_fd(self.fd)
            self.fd = -1

    def __enter__(self) -> XdpLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def attach_xdp(prog_fd: int, ifindex: int, mode: str = "native") -> XdpLink:
    """BPF_LINK_CREATE of an XDP program on `ifindex` (of this thread's network namespace) in `mode`
    (native, generic, offload, or any: what the driver does best). EBUSY when a program is attached
    already."""
    if mode not in XDP_MODES:
        raise BpforgeError(f"XDP mode must be one of {', '.join(XDP_MODES)}, not {mode!r}")
    attr = _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=ATTACH_TYPE_IDS["xdp"],
                           flags=XDP_MODES[mode])
    fd, err = bpf(BPF_LINK_CREATE, attr)
    if fd < 0:
        raise ObjectError(err, f"cannot attach XDP program fd {prog_fd} to ifindex {ifindex} ({mode})")
    return XdpLink(fd, ifindex, prog_fd)


__all__ = ["ObjectError", "XDP_MODES", "XdpLink", "attach_xdp", "map_of_fd", "open_pinned_map", "pin"]
