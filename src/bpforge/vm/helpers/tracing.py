"""bpf_probe_read_* (kernel/trace/bpf_trace.c, mm/maccess.c): copying from an address the program cannot
dereference itself. Everything a VM program can address is kernel memory in the kernel (the stack, map
values, the packet, ring buffer records, each exactly as big as it is), and there is no user memory:

- *_kernel copy VM memory; any other address faults, and the helper returns what the kernel returns for an
  address with nothing behind it: -ERANGE below TASK_SIZE_MAX + PAGE_SIZE (copy_from_kernel_nofault_allowed
  refuses user-space addresses, NULL included), -EFAULT above;
- *_user fail with -EFAULT (a kernel address is not a user one, and there is no user address space);
- bpf_probe_read / bpf_probe_read_str (tracing programs, which pick the flavour by address) copy VM memory
  and fail with -EFAULT elsewhere.

The destination is zeroed on failure.
The _str flavours copy up to and including the first NUL, at most size - 1 bytes then a NUL, and return
the bytes written.
"""

from __future__ import annotations

import errno

from ...isa.numbers import M32, PAGE_SIZE
from ..memory import VmFault
from .registry import err, helper

TASK_SIZE_MAX = (1 << 47) - 4096


def _unmapped(addr: int, kernel: bool) -> int:
    if kernel and addr < TASK_SIZE_MAX + PAGE_SIZE:
        return errno.ERANGE
    return errno.EFAULT


def _probe_read(vm, dst, size, src, kernel: bool, user: bool = False):
    size &= M32
    mem = vm.machine.memory
    if user:
        mem.write(dst, bytes(size))
        return err(errno.EFAULT)
    try:
        data = mem.read(src, size) if size else b""
    except VmFault:
        mem.write(dst, bytes(size))
        return err(_unmapped(src, kernel))
    mem.write(dst, data)
    return 0


def _probe_read_str(vm, dst, size, src, kernel: bool, user: bool = False):
    size &= M32
    mem = vm.machine.memory
    if size == 0:
        return 0
    if user:
        mem.write(dst, bytes(size))
        return err(errno.EFAULT)
    out = bytearray()
    try:
        while len(out) < size:
            byte = mem.read(src + len(out), 1)
            out += byte
            if byte == b"\0":
                break
    except VmFault:
        mem.write(dst, bytes(size))
        return err(_unmapped(src, kernel))
    out[-1:] = b"\0"  # truncated: the last byte becomes the NUL
    mem.write(dst, bytes(out))
    return len(out)


@helper("probe_read_kernel")
def _probe_read_kernel(vm, dst, size, src, *_):
    return _probe_read(vm, dst, size, src, True)


@helper("probe_read_user")
def _probe_read_user(vm, dst, size, src, *_):
    return _probe_read(vm, dst, size, src, False, user=True)


@helper("probe_read")
def _probe_read_compat(vm, dst, size, src, *_):
    return _probe_read(vm, dst, size, src, False)


@helper("probe_read_kernel_str")
def _probe_read_kernel_str(vm, dst, size, src, *_):
    return _probe_read_str(vm, dst, size, src, True)


@helper("probe_read_user_str")
def _probe_read_user_str(vm, dst, size, src, *_):
    return _probe_read_str(vm, dst, size, src, False, user=True)


@helper("probe_read_str")
def _probe_read_compat_str(vm, dst, size, src, *_):
    return _probe_read_str(vm, dst, size, src, False)
