"""Helpers about the running program rather than its packet (kernel/bpf/helpers.c, kernel/trace/bpf_trace.c):
time, randomness, the CPU, the current task, string parsing and comparison, bpf_loop, spin locks and
bpf_trace_printk.

Clocks are the machine's deterministic clock (`Machine.clock_ns`, moving on with each reading), so runs
repeat exactly. The current task is the process running the VM, as test_run's is the process calling
bpf(): its pid, tgid, uid, gid and thread name are this process's.
"""

from __future__ import annotations

import errno
import os
import re
import threading

from ...isa.numbers import M32, M64
from .registry import err, helper

BPF_MAX_LOOPS = 1 << 23  # the kernel's cap on bpf_loop (and on bpf_iter_num ranges: vm.kfuncs)
HZ = 250  # CONFIG_HZ of the jiffies clock the VM derives from its clock
INITIAL_JIFFIES = (-300 * HZ) & M64  # jiffies start 5 minutes before wrapping
TASK_COMM_LEN = 16
BPF_STRTOX_BASE_MASK = 0x1F
_STRTOX_MAX_CHARS = 63  # __bpf_strtoull parses a copy of at most 63 characters
# lib/ctype.c: space is \t \n \v \f \r, ' ' and the Latin-1 no-break space.
_SPACE = frozenset(b"\t\n\v\f\r \xa0")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


# ---- time ---------------------------------------------------------------------------------------------------

@helper("ktime_get_ns", "ktime_get_boot_ns", "ktime_get_coarse_ns", "ktime_get_tai_ns")
def _ktime(vm, *_):
    vm.machine.clock_ns += 1  # a deterministic clock that still moves forward
    return vm.machine.clock_ns


@helper("jiffies64")
def _jiffies64(vm, *_):
    return (INITIAL_JIFFIES + vm.machine.clock_ns * HZ // 1_000_000_000) & M64


# ---- randomness, the CPU ------------------------------------------------------------------------------------

@helper("get_prandom_u32")
def _prandom(vm, *_):
    return vm.machine.rng.getrandbits(32)


@helper("get_smp_processor_id")
def _cpu(vm, *_):
    return vm.machine.cpu


@helper("get_numa_node_id")
def _numa_node(vm, *_):
    """The VM's CPUs are all on node 0 (a machine with one memory node)."""
    return 0


# ---- the current task ---------------------------------------------------------------------------------------

@helper("get_current_pid_tgid")
def _current_pid_tgid(vm, *_):
    return os.getpid() << 32 | threading.get_native_id()


@helper("get_current_uid_gid")
def _current_uid_gid(vm, *_):
    return os.getgid() << 32 | os.getuid()


def _current_comm() -> bytes:
    try:
        with open("/proc/thread-self/comm", "rb") as f:
            return f.read().rstrip(b"\n")[:TASK_COMM_LEN - 1]
    except OSError:
        return b"python"


@helper("get_current_comm")
def _current_comm_helper(vm, buf_ptr, size, *_):
    """strscpy_pad: at most size - 1 bytes of the name, NUL-terminated, the rest zeros."""
    size &= M32
    comm = _current_comm()[:max(size - 1, 0)]
    vm.machine.memory.write(buf_ptr, comm + bytes(size - len(comm)))
    return 0


# ---- strings ------------------------------------------------------------------------------------------------

def _strtoull(data: bytes, flags: int) -> tuple[int, int, bool]:
    """__bpf_strtoull: (characters consumed or -errno, value, negative)."""
    base = flags & BPF_STRTOX_BASE_MASK
    if not data or base not in (0, 8, 10, 16) or flags & ~BPF_STRTOX_BASE_MASK:
        return -errno.EINVAL, 0, False
    i = 0
    while i < len(data) and data[i] in _SPACE:
        i += 1
    negative = i < len(data) and data[i] == ord("-")
    if negative:
        i += 1
    consumed = i
    if consumed == len(data):
        return -errno.EINVAL, 0, negative
    text = data[i:i + _STRTOX_MAX_CHARS] + b"\0"
    pos = 0
    if base == 0:  # _parse_integer_fixup_radix
        if text[0] == ord("0"):
            base = 16 if text[1:2].lower() == b"x" and len(text) > 2 and text[2] in _HEX_DIGITS else 8
        else:
            base = 10
    if base == 16 and text[0:1] == b"0" and text[1:2].lower() == b"x":
        pos = 2
    value, digits, overflow = 0, 0, False
    while pos < len(text):
        c = text[pos]
        lc = c | 0x20
        if 0x30 <= c <= 0x39:
            digit = c - 0x30
        elif 0x61 <= lc <= 0x66:
            digit = lc - 0x61 + 10
        else:
            break
        if digit >= base:
            break
        if value >> 60 and value > (M64 - digit) // base:
            overflow = True
        value = (value * base + digit) & M64
        digits += 1
        pos += 1
    if overflow:
        return -errno.ERANGE, 0, negative
    if digits == 0:
        return -errno.EINVAL, 0, negative
    return consumed + pos, value, negative


def _parse_into(vm, buf_ptr, buf_len, flags, res_ptr) -> tuple[int, int, bool]:
    """What bpf_strtol and bpf_strtoul share: *res zeroed first, then (consumed or -errno, value, sign)."""
    mem = vm.machine.memory
    mem.write(res_ptr, bytes(8))
    return _strtoull(mem.read(buf_ptr, buf_len & M32), flags)


@helper("strtol")
def _strtol(vm, buf_ptr, buf_len, flags, res_ptr, _):
    consumed, value, negative = _parse_into(vm, buf_ptr, buf_len, flags, res_ptr)
    if consumed < 0:
        return err(-consumed)
    if negative:
        value = -value & M64
        if value and not value >> 63:  # (long long)-res > 0
            return err(errno.ERANGE)
    elif value >> 63:
        return err(errno.ERANGE)
    vm.machine.memory.write(res_ptr, value.to_bytes(8, "little"))
    return consumed


@helper("strtoul")
def _strtoul(vm, buf_ptr, buf_len, flags, res_ptr, _):
    consumed, value, negative = _parse_into(vm, buf_ptr, buf_len, flags, res_ptr)
    if consumed < 0:
        return err(-consumed)
    if negative:
        return err(errno.EINVAL)
    vm.machine.memory.write(res_ptr, value.to_bytes(8, "little"))
    return consumed


@helper("strncmp")
def _strncmp(vm, s1_ptr, s1_size, s2_ptr, *_):
    """lib/string.c strncmp over at most s1_size bytes: -1, 0 or 1. s2 is a constant string (read-only map
    data), read up to its NUL."""
    mem = vm.machine.memory
    for i in range(s1_size & M32):
        c1, c2 = mem.read(s1_ptr + i, 1)[0], mem.read(s2_ptr + i, 1)[0]
        if c1 != c2:
            return -1 if c1 < c2 else 1
        if not c1:
            break
    return 0


# ---- bpf_loop, spin locks ----------------------------------------------------------------------------------

@helper("loop")
def _loop(vm, nr_loops, callback, callback_ctx, flags, _):
    """callback(i, ctx) for i = 0.. until it returns non-zero: the number of calls made."""
    nr_loops &= M32
    if flags:
        return err(errno.EINVAL)
    if nr_loops > BPF_MAX_LOOPS:
        return err(errno.E2BIG)
    for i in range(nr_loops):
        if vm.call_function(callback, i, callback_ctx, 0, 0, 0):
            return i + 1
    return nr_loops


@helper("spin_lock", "spin_unlock")
def _spin_lock(vm, lock_ptr, *_):
    """One program runs at a time: taking and releasing the lock are no-ops, but the lock (4 bytes in a map
    value) must be there."""
    vm.machine.memory.read(lock_ptr, 4)
    return 0


# ---- bpf_trace_printk -------------------------------------------------------------------------------------

@helper("trace_printk")
def _trace_printk(vm, fmt_ptr, fmt_size, a1, a2, a3):
    raw = vm.machine.memory.read(fmt_ptr, fmt_size)
    fmt = raw.split(b"\0", 1)[0].decode("latin-1")
    args = iter((a1, a2, a3))

    def one(m: re.Match) -> str:
        spec = m.group(0)
        if spec == "%%":
            return "%"
        value = next(args, 0)
        conv = spec[-1]
        bits = 64 if "l" in spec else 32
        value &= (1 << bits) - 1
        if conv in "di":
            value = value - (1 << bits) if value >> (bits - 1) else value
            return str(value)
        if conv == "u":
            return str(value)
        if conv in "xX":
            return format(value, conv)
        if conv == "p":
            return hex(value)
        return spec

    text = re.sub(r"%%|%l{0,2}[diuxXp]", one, fmt)
    vm.machine.trace.append(text)
    return len(text) + 1

