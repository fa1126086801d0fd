"""Program types: the kernel's names and numbers (uapi `enum bpf_prog_type`) and the types libbpf gives
section names. Context layouts and return ranges join this table with the interpreter and verifier.
(Map type names: `elf.model`.)
"""

from __future__ import annotations

import re

from ..errors import BpforgeError

# Index = the kernel's enum value. "mem" is not a kernel type: the userspace-runtime convention
# (r1 = a memory buffer, r2 = its length), so it has no id.
_KERNEL_PROG_TYPES = (
    "unspec", "socket_filter", "kprobe", "sched_cls", "sched_act", "tracepoint", "xdp", "perf_event",
    "cgroup_skb", "cgroup_sock", "lwt_in", "lwt_out", "lwt_xmit", "sock_ops", "sk_skb", "cgroup_device",
    "sk_msg", "raw_tracepoint", "cgroup_sock_addr", "lwt_seg6local", "lirc_mode2", "sk_reuseport",
    "flow_dissector", "cgroup_sysctl", "raw_tracepoint_writable", "cgroup_sockopt", "tracing", "struct_ops",
    "ext", "lsm", "sk_lookup", "syscall", "netfilter",
)
PROG_TYPES: dict[str, int | None] = {name: i for i, name in enumerate(_KERNEL_PROG_TYPES) if i} | {"mem": None}
DEFAULT_PROG_TYPE = "xdp"

# First component of a libbpf SEC() name ("xdp", "tc/ingress", "kprobe/do_exit", "xdp.frags") -> program type.
_SECTION_HEADS = {
    "xdp": "xdp", "tc": "sched_cls", "tcx": "sched_cls", "classifier": "sched_cls", "action": "sched_act",
    "socket": "socket_filter", "kprobe": "kprobe", "kretprobe": "kprobe", "uprobe": "kprobe",
    "uretprobe": "kprobe", "ksyscall": "kprobe", "tracepoint": "tracepoint", "tp": "tracepoint",
    "raw_tracepoint": "raw_tracepoint", "raw_tp": "raw_tracepoint", "perf_event": "perf_event",
    "cgroup_skb": "cgroup_skb", "sk_skb": "sk_skb", "sk_msg": "sk_msg", "sockops": "sock_ops",
    "flow_dissector": "flow_dissector", "lsm": "lsm", "fentry": "tracing", "fexit": "tracing",
    "fmod_ret": "tracing", "iter": "tracing", "syscall": "syscall", "sk_lookup": "sk_lookup",
    "sk_reuseport": "sk_reuseport", "netfilter": "netfilter", "struct_ops": "struct_ops",
    "lwt_in": "lwt_in", "lwt_out": "lwt_out", "lwt_xmit": "lwt_xmit", "lwt_seg6local": "lwt_seg6local",
}


# Names people use for a type more often than the kernel's own.
_ALIASES = {"tc": "sched_cls", "classifier": "sched_cls", "socket": "socket_filter"}


def check_prog_type(name: str) -> str:
    """The canonical name of a `--type` value; FormatError listing the known names otherwise."""
    key = name.strip().lower().removeprefix("bpf_prog_type_")
    key = _ALIASES.get(key, key)
    if key not in PROG_TYPES:
        raise BpforgeError(f"unknown program type '{name}' (known: {', '.join(sorted(PROG_TYPES))})")
    return key


def prog_type_of_section(section: str | None) -> str | None:
    """The program type libbpf would give a section name, or None when the name does not say."""
    if not section:
        return None
    return _SECTION_HEADS.get(re.split(r"[/.]", section, maxsplit=1)[0])


__all__ = ["DEFAULT_PROG_TYPE", "PROG_TYPES", "check_prog_type", "prog_type_of_section"]
