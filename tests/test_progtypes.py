"""Section names -> program types and expected attach types, as libbpf's section table gives them (checked
against the system's libbpf where it is installed), and the legacy prefixes older loaders matched."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from bpforge.isa.progtypes import (
    ATTACH_TYPE_IDS, PROG_TYPES, SECTION_DEFS, default_attach_type, prog_type_of_section, section_def,
)


@pytest.mark.parametrize("section, prog_type, attach", [
    ("cgroup/skb", "cgroup_skb", None), ("cgroup_skb/ingress", "cgroup_skb", "cgroup_inet_ingress"),
    ("cgroup/connect4", "cgroup_sock_addr", "cgroup_inet4_connect"), ("cgroup/recvmsg4", "cgroup_sock_addr",
                                                                     "cgroup_udp4_recvmsg"),
    ("cgroup/sock", "cgroup_sock", "cgroup_inet_sock_create"), ("cgroup/dev", "cgroup_device", "cgroup_device"),
    ("cgroup/sysctl", "cgroup_sysctl", "cgroup_sysctl"), ("cgroup/getsockopt", "cgroup_sockopt", "cgroup_getsockopt"),
    ("lwt_in", "lwt_in", None), ("lwt_out", "lwt_out", None), ("lwt_xmit", "lwt_xmit", None),
    ("sk_skb/stream_parser", "sk_skb", "sk_skb_stream_parser"), ("sk_skb", "sk_skb", None),
    ("sk_msg", "sk_msg", "sk_msg_verdict"), ("flow_dissector", "flow_dissector", "flow_dissector"),
    ("tc/ingress", "sched_cls", "tcx_ingress"), ("tcx/egress", "sched_cls", "tcx_egress"), ("tc", "sched_cls", None),
    ("netfilter", "netfilter", "netfilter"), ("struct_ops/foo", "struct_ops", None),
    ("fentry/do_unlinkat", "tracing", "trace_fentry"), ("fexit.s/x", "tracing", "trace_fexit"),
    ("lsm/file_open", "lsm", "lsm_mac"), ("iter/task", "tracing", "trace_iter"), ("syscall", "syscall", None),
    ("xdp.frags", "xdp", "xdp"), ("xdp/devmap", "xdp", "xdp_devmap"), ("sk_lookup", "sk_lookup", "sk_lookup"),
    ("kprobe/do_exit", "kprobe", None), ("ksyscall/openat", "kprobe", None), ("tp/syscalls/sys_enter_open", "tracepoint", None),
    ("raw_tp/sched_switch", "raw_tracepoint", None), ("sockops", "sock_ops", "cgroup_sock_ops"),
    ("perf_event", "perf_event", None), ("sk_reuseport/migrate", "sk_reuseport", "sk_reuseport_select_or_migrate"),
])
def test_libbpf_section_names(section, prog_type, attach):
    row = section_def(section)
    assert row is not None and row.prog_type == prog_type
    assert row.expected_attach_type == (ATTACH_TYPE_IDS[attach] if attach else 0)


def test_flags_from_section_names():
    assert section_def("xdp.frags").prog_flags == 1 << 5  # BPF_F_XDP_HAS_FRAGS
    assert section_def("fentry.s/x").prog_flags == 1 << 4  # BPF_F_SLEEPABLE
    assert section_def("xdp").prog_flags == 0


def test_legacy_prefixes_and_unknown_names():
    # Names libbpf >= 1.0 no longer matches but iproute2, libbpf 0.x and K2's benchmarks use.
    assert [prog_type_of_section(s) for s in ("socket/0", "xdp_prog", "kprobe__sys_open", "classifier_tc")] == [
        "socket_filter", "xdp", "kprobe", "sched_cls"]
    assert [prog_type_of_section(s) for s in (".text", "license", "maps", "", None)] == [None] * 5
    # "+" rows take exactly the name or name/..., never a longer word; "/" rows only name/...
    kprobe = next(r for r in SECTION_DEFS if r.pattern == "kprobe+")
    assert kprobe.matches("kprobe") and kprobe.matches("kprobe/x") and not kprobe.matches("kprobes")
    assert prog_type_of_section("tc/ingress_hook") == "sched_cls"  # legacy prefix of tc/ingress


def test_required_attach_types():
    assert default_attach_type("sk_lookup") == ATTACH_TYPE_IDS["sk_lookup"] == 36
    assert default_attach_type("xdp") == 0


def _libbpf():
    name = ctypes.util.find_library("bpf")
    if name is None:
        pytest.skip("libbpf.so is not installed (Debian: libbpf1)")
    lib = ctypes.CDLL(name)
    if not hasattr(lib, "libbpf_prog_type_by_name"):
        pytest.skip("this libbpf has no libbpf_prog_type_by_name")
    return lib


def test_table_agrees_with_the_system_libbpf():
    lib = _libbpf()
    checked = 0
    for row in SECTION_DEFS:
        for name in {row.stem, row.stem + "/x"}:
            prog_type, attach = ctypes.c_int(), ctypes.c_int()
            if lib.libbpf_prog_type_by_name(name.encode(), ctypes.byref(prog_type), ctypes.byref(attach)):
                continue  # a name this (older) libbpf does not know yet
            mine = section_def(name)
            assert mine is not None, name
            assert (PROG_TYPES[mine.prog_type], mine.expected_attach_type) == (prog_type.value, attach.value), name
            checked += 1
    assert checked > 80
