"""Program types: the kernel's names and numbers (uapi `enum bpf_prog_type`, `enum bpf_attach_type`) and the
section names libbpf gives them (libbpf.c `section_defs`). Context layouts live in `isa.contexts`.
(Map type names: `isa.maptypes`.)
"""

from __future__ import annotations

from dataclasses import dataclass

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


def prog_type_name(number: int) -> str | None:
    """The kernel's (and libbpf's, bpftool's) name of program type `number`; None past the table."""
    return _KERNEL_PROG_TYPES[number] if 0 <= number < len(_KERNEL_PROG_TYPES) else None

# enum bpf_attach_type, in order (value = index), lower-cased without the BPF_ prefix.
ATTACH_TYPES = (
    "cgroup_inet_ingress", "cgroup_inet_egress", "cgroup_inet_sock_create", "cgroup_sock_ops",
    "sk_skb_stream_parser", "sk_skb_stream_verdict", "cgroup_device", "sk_msg_verdict", "cgroup_inet4_bind",
    "cgroup_inet6_bind", "cgroup_inet4_connect", "cgroup_inet6_connect", "cgroup_inet4_post_bind",
    "cgroup_inet6_post_bind", "cgroup_udp4_sendmsg", "cgroup_udp6_sendmsg", "lirc_mode2", "flow_dissector",
    "cgroup_sysctl", "cgroup_udp4_recvmsg", "cgroup_udp6_recvmsg", "cgroup_getsockopt", "cgroup_setsockopt",
    "trace_raw_tp", "trace_fentry", "trace_fexit", "modify_return", "lsm_mac", "trace_iter",
    "cgroup_inet4_getpeername", "cgroup_inet6_getpeername", "cgroup_inet4_getsockname",
    "cgroup_inet6_getsockname", "xdp_devmap", "cgroup_inet_sock_release", "xdp_cpumap", "sk_lookup", "xdp",
    "sk_skb_verdict", "sk_reuseport_select", "sk_reuseport_select_or_migrate", "perf_event",
    "trace_kprobe_multi", "lsm_cgroup", "struct_ops", "netfilter", "tcx_ingress", "tcx_egress",
    "trace_uprobe_multi", "cgroup_unix_connect", "cgroup_unix_sendmsg", "cgroup_unix_recvmsg",
    "cgroup_unix_getpeername", "cgroup_unix_getsockname", "netkit_primary", "netkit_peer",
    "trace_kprobe_session", "trace_uprobe_session",
)
ATTACH_TYPE_IDS = {name: number for number, name in enumerate(ATTACH_TYPES)}

# BPF_PROG_LOAD prog_flags that section names imply.
BPF_F_SLEEPABLE = 1 << 4
BPF_F_XDP_HAS_FRAGS = 1 << 5


@dataclass(frozen=True)
class SectionDef:
    """One row of libbpf's section table. `pattern` is matched as libbpf does: "name+" is the exact name or
    "name/anything", "name/" only "name/anything", any other pattern only itself. `attach_btf`: the part
    after the prefix names a kernel function or type the program attaches to (fentry/, lsm/, iter/...)."""

    pattern: str
    prog_type: str
    attach_type: str | None = None
    sleepable: bool = False
    xdp_frags: bool = False
    attach_btf: bool = False

    @property
    def expected_attach_type(self) -> int:
        return ATTACH_TYPE_IDS[self.attach_type] if self.attach_type else 0

    @property
    def prog_flags(self) -> int:
        return (BPF_F_SLEEPABLE if self.sleepable else 0) | (BPF_F_XDP_HAS_FRAGS if self.xdp_frags else 0)

    def matches(self, section: str) -> bool:
        if self.pattern.endswith("/"):
            return section.startswith(self.pattern)
        if self.pattern.endswith("+"):
            head = self.pattern[:-1]
            return section == head or section.startswith(head + "/")
        return section == self.pattern

    @property
    def stem(self) -> str:
        """The pattern without libbpf's '+'/'/' markers: what legacy loaders matched as a plain prefix."""
        return self.pattern.rstrip("+/")


def _defs() -> tuple[SectionDef, ...]:
    S = SectionDef
    sleep, btf = dict(sleepable=True), dict(attach_btf=True)
    rows = [
        S("socket", "socket_filter"),
        S("sk_reuseport/migrate", "sk_reuseport", "sk_reuseport_select_or_migrate"),
        S("sk_reuseport", "sk_reuseport", "sk_reuseport_select"),
        S("kprobe+", "kprobe"), S("uprobe+", "kprobe"), S("uprobe.s+", "kprobe", **sleep),
        S("kretprobe+", "kprobe"), S("uretprobe+", "kprobe"), S("uretprobe.s+", "kprobe", **sleep),
        S("kprobe.multi+", "kprobe", "trace_kprobe_multi"), S("kretprobe.multi+", "kprobe", "trace_kprobe_multi"),
        S("kprobe.session+", "kprobe", "trace_kprobe_session"),
        S("uprobe.multi+", "kprobe", "trace_uprobe_multi"), S("uretprobe.multi+", "kprobe", "trace_uprobe_multi"),
        S("uprobe.multi.s+", "kprobe", "trace_uprobe_multi", **sleep),
        S("uretprobe.multi.s+", "kprobe", "trace_uprobe_multi", **sleep),
        S("uprobe.session+", "kprobe", "trace_uprobe_session"),
        S("uprobe.session.s+", "kprobe", "trace_uprobe_session", **sleep),
        S("ksyscall+", "kprobe"), S("kretsyscall+", "kprobe"),
        S("usdt+", "kprobe"), S("usdt.s+", "kprobe", **sleep),
        S("tc/ingress", "sched_cls", "tcx_ingress"), S("tc/egress", "sched_cls", "tcx_egress"),
        S("tcx/ingress", "sched_cls", "tcx_ingress"), S("tcx/egress", "sched_cls", "tcx_egress"),
        S("tc", "sched_cls"), S("classifier", "sched_cls"), S("action", "sched_act"),
        S("netkit/primary", "sched_cls", "netkit_primary"), S("netkit/peer", "sched_cls", "netkit_peer"),
        S("tracepoint+", "tracepoint"), S("tp+", "tracepoint"),
        S("raw_tracepoint+", "raw_tracepoint"), S("raw_tp+", "raw_tracepoint"),
        S("raw_tracepoint.w+", "raw_tracepoint_writable"), S("raw_tp.w+", "raw_tracepoint_writable"),
        S("tp_btf+", "tracing", "trace_raw_tp", **btf), S("fentry+", "tracing", "trace_fentry", **btf),
        S("fmod_ret+", "tracing", "modify_return", **btf), S("fexit+", "tracing", "trace_fexit", **btf),
        S("fentry.s+", "tracing", "trace_fentry", **btf, **sleep),
        S("fmod_ret.s+", "tracing", "modify_return", **btf, **sleep),
        S("fexit.s+", "tracing", "trace_fexit", **btf, **sleep),
        S("freplace+", "ext", **btf),
        S("lsm+", "lsm", "lsm_mac", **btf), S("lsm.s+", "lsm", "lsm_mac", **btf, **sleep),
        S("lsm_cgroup+", "lsm", "lsm_cgroup", **btf),
        S("iter+", "tracing", "trace_iter", **btf), S("iter.s+", "tracing", "trace_iter", **btf, **sleep),
        S("syscall", "syscall", **sleep),
        S("xdp.frags/devmap", "xdp", "xdp_devmap", xdp_frags=True), S("xdp/devmap", "xdp", "xdp_devmap"),
        S("xdp.frags/cpumap", "xdp", "xdp_cpumap", xdp_frags=True), S("xdp/cpumap", "xdp", "xdp_cpumap"),
        S("xdp.frags", "xdp", "xdp", xdp_frags=True), S("xdp", "xdp", "xdp"),
        S("perf_event", "perf_event"),
        S("lwt_in", "lwt_in"), S("lwt_out", "lwt_out"), S("lwt_xmit", "lwt_xmit"),
        S("lwt_seg6local", "lwt_seg6local"),
        S("sockops", "sock_ops", "cgroup_sock_ops"),
        S("sk_skb/stream_parser", "sk_skb", "sk_skb_stream_parser"),
        S("sk_skb/stream_verdict", "sk_skb", "sk_skb_stream_verdict"),
        S("sk_skb", "sk_skb"), S("sk_msg", "sk_msg", "sk_msg_verdict"),
        S("lirc_mode2", "lirc_mode2", "lirc_mode2"), S("flow_dissector", "flow_dissector", "flow_dissector"),
        S("cgroup_skb/ingress", "cgroup_skb", "cgroup_inet_ingress"),
        S("cgroup_skb/egress", "cgroup_skb", "cgroup_inet_egress"),
        S("cgroup/skb", "cgroup_skb"),
        S("cgroup/sock_create", "cgroup_sock", "cgroup_inet_sock_create"),
        S("cgroup/sock_release", "cgroup_sock", "cgroup_inet_sock_release"),
        S("cgroup/sock", "cgroup_sock", "cgroup_inet_sock_create"),
        S("cgroup/post_bind4", "cgroup_sock", "cgroup_inet4_post_bind"),
        S("cgroup/post_bind6", "cgroup_sock", "cgroup_inet6_post_bind"),
    ]
    for hook, attach in (("bind4", "inet4_bind"), ("bind6", "inet6_bind"), ("connect4", "inet4_connect"),
                         ("connect6", "inet6_connect"), ("connect_unix", "unix_connect"),
                         ("sendmsg4", "udp4_sendmsg"), ("sendmsg6", "udp6_sendmsg"),
                         ("sendmsg_unix", "unix_sendmsg"), ("recvmsg4", "udp4_recvmsg"),
                         ("recvmsg6", "udp6_recvmsg"), ("recvmsg_unix", "unix_recvmsg"),
                         ("getpeername4", "inet4_getpeername"), ("getpeername6", "inet6_getpeername"),
                         ("getpeername_unix", "unix_getpeername"), ("getsockname4", "inet4_getsockname"),
                         ("getsockname6", "inet6_getsockname"), ("getsockname_unix", "unix_getsockname")):
        rows.append(S(f"cgroup/{hook}", "cgroup_sock_addr", f"cgroup_{attach}"))
    rows += [
        S("cgroup/sysctl", "cgroup_sysctl", "cgroup_sysctl"),
        S("cgroup/getsockopt", "cgroup_sockopt", "cgroup_getsockopt"),
        S("cgroup/setsockopt", "cgroup_sockopt", "cgroup_setsockopt"),
        S("cgroup/dev", "cgroup_device", "cgroup_device"),
        S("struct_ops+", "struct_ops"), S("struct_ops.s+", "struct_ops", **sleep),
        S("sk_lookup", "sk_lookup", "sk_lookup"), S("netfilter", "netfilter", "netfilter"),
    ]
    return tuple(rows)


SECTION_DEFS = _defs()

# Names people use for a type more often than the kernel's own.
_ALIASES = {"tc": "sched_cls", "classifier": "sched_cls", "socket": "socket_filter"}


def check_prog_type(name: str) -> str:
    """The canonical name of a `--type` value; BpforgeError listing the known names otherwise."""
    key = name.strip().lower().removeprefix("bpf_prog_type_")
    key = _ALIASES.get(key, key)
    if key not in PROG_TYPES:
        raise BpforgeError(f"unknown program type '{name}' (known: {', '.join(sorted(PROG_TYPES))})")
    return key


def section_def(section: str | None) -> SectionDef | None:
    """The row libbpf (1.x) picks for a section name: the first that matches. Names libbpf 1.x no longer
    matches but older loaders did (iproute2, libbpf 0.x, K2's benchmarks: "socket/0", "classifier_x",
    "xdp_prog", "kprobe__sys_open") fall back to the legacy rule, the longest table name the section starts
    with."""
    if not section:
        return None
    for row in SECTION_DEFS:
        if row.matches(section):
            return row
    legacy = [row for row in SECTION_DEFS if section.startswith(row.stem)]
    return max(legacy, key=lambda row: len(row.stem)) if legacy else None


# Types the kernel does not load without an expected attach type (bpf_prog_load_check_attach), with the one
# bpforge gives them when no section name says which.
_REQUIRED_ATTACH = {"sk_lookup": "sk_lookup", "netfilter": "netfilter", "cgroup_sock_addr": "cgroup_inet4_connect",
                    "cgroup_sockopt": "cgroup_getsockopt", "lsm": "lsm_mac"}


def default_attach_type(prog_type: str) -> int:
    """The expected attach type a program of `prog_type` loads with when nothing else says (0: none)."""
    name = _REQUIRED_ATTACH.get(prog_type)
    return ATTACH_TYPE_IDS[name] if name else 0


def required_prog_flags(prog_type: str) -> int:
    """BPF_PROG_LOAD flags the kernel insists on for a type (syscall programs must be sleepable)."""
    return BPF_F_SLEEPABLE if prog_type == "syscall" else 0


def prog_type_of_section(section: str | None) -> str | None:
    """The program type libbpf would give a section name, or None when the name does not say."""
    row = section_def(section)
    return row.prog_type if row else None


__all__ = ["ATTACH_TYPES", "prog_type_name", "ATTACH_TYPE_IDS", "DEFAULT_PROG_TYPE", "PROG_TYPES", "SECTION_DEFS", "SectionDef",
           "check_prog_type", "default_attach_type", "prog_type_of_section", "required_prog_flags", "section_def"]


# ---- what r0 may hold when the program exits (check_return_code) ----------------------------------------

# The types whose return value the verifier checks, with the range of the values it allows; the others may
# return any scalar (and, with privileges, a pointer). Where the attach type decides, `_RANGE_BY_ATTACH`.
_RETURN_RANGES = {
    "cgroup_skb": (0, 1), "cgroup_sock": (0, 1), "cgroup_sock_addr": (0, 1), "cgroup_sysctl": (0, 1),
    "cgroup_sockopt": (0, 1), "cgroup_device": (0, 1), "sock_ops": (0, 1), "sk_lookup": (0, 1),
    "netfilter": (0, 1),
}
_RANGE_BY_ATTACH = {
    ("cgroup_skb", "cgroup_inet_egress"): (0, 3),  # bit 1: congestion notification
    **{("cgroup_sock_addr", name): (1, 1) for name in (
        "cgroup_udp4_recvmsg", "cgroup_udp6_recvmsg", "cgroup_unix_recvmsg", "cgroup_inet4_getpeername",
        "cgroup_inet6_getpeername", "cgroup_unix_getpeername", "cgroup_inet4_getsockname",
        "cgroup_inet6_getsockname", "cgroup_unix_getsockname")},
    ("cgroup_sock_addr", "cgroup_inet4_bind"): (0, 3), ("cgroup_sock_addr", "cgroup_inet6_bind"): (0, 3),
}


def return_range(prog_type: str, attach_type: int = 0) -> tuple[int, int] | None:
    """The values (inclusive, as signed 32-bit numbers) a program of `prog_type` loaded with
    `attach_type` (0: the type's default) may return, or None when the verifier does not check them.
    A checked type must return a scalar known to lie in the range."""
    attach = attach_type or default_attach_type(prog_type)
    name = ATTACH_TYPES[attach] if 0 <= attach < len(ATTACH_TYPES) else None
    return _RANGE_BY_ATTACH.get((prog_type, name), _RETURN_RANGES.get(prog_type))
