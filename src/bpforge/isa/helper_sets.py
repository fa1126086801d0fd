"""Which helpers each program type may call, as kernel 6.18 decides (each type's `get_func_proto`, with
`bpf_base_func_proto` under it, for a privileged loader); `tests/test_helper_sets.py` compares every helper
of every type with the running kernel.

A helper outside its type's set is refused before its arguments are looked at ("program of this type
cannot use helper", or "unknown func" for the base set's misses). `SLEEPABLE_ONLY` helpers are in every set
but refused in a program that is not sleepable ("helper call might sleep in a non-sleepable prog").

Not stated here (their sets hang on BTF and the attach point): tracing, lsm, struct_ops and ext programs.
"""

from __future__ import annotations

from .helpers import helper_name

# bpf_base_func_proto for a privileged (CAP_BPF + CAP_PERFMON) loader: what every type may call.
_BASE = frozenset((
    "cgrp_storage_delete", "cgrp_storage_get", "current_task_under_cgroup", "dynptr_data", "dynptr_from_mem",
    "dynptr_read", "dynptr_write", "find_vma", "for_each_map_elem", "get_branch_snapshot", "get_cgroup_classid",
    "get_current_ancestor_cgroup_id", "get_current_cgroup_id", "get_current_comm", "get_current_pid_tgid",
    "get_current_task", "get_current_task_btf", "get_current_uid_gid", "get_ns_current_pid_tgid",
    "get_numa_node_id", "get_prandom_u32", "get_smp_processor_id", "get_task_stack", "jiffies64", "kptr_xchg",
    "ktime_get_boot_ns", "ktime_get_ns", "ktime_get_tai_ns", "loop", "map_delete_elem", "map_lookup_elem",
    "map_lookup_percpu_elem", "map_peek_elem", "map_pop_elem", "map_push_elem", "map_update_elem",
    "per_cpu_ptr", "perf_event_read", "perf_event_read_value", "probe_read_kernel", "probe_read_kernel_str",
    "probe_read_user", "probe_read_user_str", "ringbuf_discard", "ringbuf_discard_dynptr", "ringbuf_output",
    "ringbuf_query", "ringbuf_reserve", "ringbuf_reserve_dynptr", "ringbuf_submit", "ringbuf_submit_dynptr",
    "send_signal", "send_signal_thread", "snprintf", "snprintf_btf", "spin_lock", "spin_unlock", "strncmp",
    "strtol", "strtoul", "tail_call", "task_pt_regs", "task_storage_delete", "task_storage_get", "this_cpu_ptr",
    "timer_cancel", "timer_init", "timer_set_callback", "timer_start", "trace_printk", "trace_vprintk",
    "user_ringbuf_drain",
))
_SKC_CASTS = ("skc_to_mptcp_sock", "skc_to_tcp6_sock", "skc_to_tcp_request_sock", "skc_to_tcp_sock",
              "skc_to_tcp_timewait_sock", "skc_to_udp6_sock", "skc_to_unix_sock")  # bpf_skc_to_* socket casts
SLEEPABLE_ONLY = frozenset(("copy_from_user", "copy_from_user_task"))

# What each type adds to the base set.
_EXTRA: dict[tuple[str, ...], tuple[str, ...]] = {
    ("socket_filter",): (
        "get_netns_cookie", "get_socket_cookie", "get_socket_uid", "ktime_get_coarse_ns", "perf_event_output",
        "skb_load_bytes", "skb_load_bytes_relative",
    ) + _SKC_CASTS,
    ("kprobe", "tracepoint", "raw_tracepoint", "raw_tracepoint_writable"): (
        "get_attach_cookie", "get_func_ip", "get_stack", "get_stackid", "perf_event_output", "probe_read",
        "probe_read_str",
    ),
    ("sched_cls", "sched_act"): (
        "check_mtu", "clone_redirect", "csum_diff", "csum_level", "csum_update", "fib_lookup",
        "get_hash_recalc", "get_listener_sock", "get_netns_cookie", "get_route_realm", "get_socket_cookie",
        "get_socket_uid", "ktime_get_coarse_ns", "l3_csum_replace", "l4_csum_replace", "perf_event_output",
        "redirect", "redirect_neigh", "redirect_peer", "set_hash", "set_hash_invalid", "sk_assign",
        "sk_fullsock", "sk_lookup_tcp", "sk_lookup_udp", "sk_release", "sk_storage_delete", "sk_storage_get",
        "skb_adjust_room", "skb_ancestor_cgroup_id", "skb_cgroup_classid", "skb_cgroup_id", "skb_change_head",
        "skb_change_proto", "skb_change_tail", "skb_change_type", "skb_ecn_set_ce", "skb_get_tunnel_key",
        "skb_get_tunnel_opt", "skb_get_xfrm_state", "skb_load_bytes", "skb_load_bytes_relative",
        "skb_pull_data", "skb_set_tstamp", "skb_set_tunnel_key", "skb_set_tunnel_opt", "skb_store_bytes",
        "skb_under_cgroup", "skb_vlan_pop", "skb_vlan_push", "skc_lookup_tcp", "tcp_check_syncookie",
        "tcp_gen_syncookie", "tcp_raw_check_syncookie_ipv4", "tcp_raw_check_syncookie_ipv6",
        "tcp_raw_gen_syncookie_ipv4", "tcp_raw_gen_syncookie_ipv6", "tcp_sock",
    ) + _SKC_CASTS,
    ("xdp",): (
        "check_mtu", "csum_diff", "fib_lookup", "ktime_get_coarse_ns", "perf_event_output", "redirect",
        "redirect_map", "sk_lookup_tcp", "sk_lookup_udp", "sk_release", "skc_lookup_tcp", "tcp_check_syncookie",
        "tcp_gen_syncookie", "tcp_raw_check_syncookie_ipv4", "tcp_raw_check_syncookie_ipv6",
        "tcp_raw_gen_syncookie_ipv4", "tcp_raw_gen_syncookie_ipv6", "xdp_adjust_head", "xdp_adjust_meta",
        "xdp_adjust_tail", "xdp_get_buff_len", "xdp_load_bytes", "xdp_store_bytes",
    ) + _SKC_CASTS,
    ("perf_event",): (
        "get_attach_cookie", "get_func_ip", "get_stack", "get_stackid", "perf_event_output",
        "perf_prog_read_value", "probe_read", "probe_read_str", "read_branch_records",
    ),
    ("cgroup_skb",): (
        "get_listener_sock", "get_local_storage", "get_netns_cookie", "get_socket_cookie", "get_socket_uid",
        "ktime_get_coarse_ns", "perf_event_output", "sk_ancestor_cgroup_id", "sk_cgroup_id", "sk_fullsock",
        "sk_lookup_tcp", "sk_lookup_udp", "sk_release", "sk_storage_delete", "sk_storage_get",
        "skb_ancestor_cgroup_id", "skb_cgroup_id", "skb_ecn_set_ce", "skb_load_bytes",
        "skb_load_bytes_relative", "skc_lookup_tcp", "tcp_sock",
    ) + _SKC_CASTS,
    ("cgroup_sock",): (
        "get_local_storage", "get_netns_cookie", "get_retval", "get_socket_cookie", "ktime_get_coarse_ns",
        "perf_event_output", "set_retval", "sk_storage_get",
    ),
    ("lwt_in",): (
        "csum_diff", "get_hash_recalc", "get_route_realm", "ktime_get_coarse_ns", "lwt_push_encap",
        "perf_event_output", "skb_load_bytes", "skb_pull_data", "skb_under_cgroup",
    ) + _SKC_CASTS,
    ("lwt_out",): (
        "csum_diff", "get_hash_recalc", "get_route_realm", "ktime_get_coarse_ns", "perf_event_output",
        "skb_load_bytes", "skb_pull_data", "skb_under_cgroup",
    ) + _SKC_CASTS,
    ("lwt_xmit",): (
        "clone_redirect", "csum_diff", "csum_level", "csum_update", "get_hash_recalc", "get_route_realm",
        "ktime_get_coarse_ns", "l3_csum_replace", "l4_csum_replace", "lwt_push_encap", "perf_event_output",
        "redirect", "set_hash_invalid", "skb_change_head", "skb_change_tail", "skb_get_tunnel_key",
        "skb_get_tunnel_opt", "skb_load_bytes", "skb_pull_data", "skb_set_tunnel_key", "skb_set_tunnel_opt",
        "skb_store_bytes", "skb_under_cgroup",
    ) + _SKC_CASTS,
    ("sock_ops",): (
        "get_local_storage", "get_netns_cookie", "get_socket_cookie", "getsockopt", "ktime_get_coarse_ns",
        "load_hdr_opt", "perf_event_output", "reserve_hdr_opt", "setsockopt", "sk_storage_delete",
        "sk_storage_get", "sock_hash_update", "sock_map_update", "sock_ops_cb_flags_set", "store_hdr_opt",
        "tcp_sock",
    ) + _SKC_CASTS,
    ("sk_skb",): (
        "get_socket_cookie", "get_socket_uid", "ktime_get_coarse_ns", "perf_event_output", "sk_lookup_tcp",
        "sk_lookup_udp", "sk_redirect_hash", "sk_redirect_map", "sk_release", "skb_adjust_room",
        "skb_change_head", "skb_change_tail", "skb_load_bytes", "skb_pull_data", "skb_store_bytes",
        "skc_lookup_tcp",
    ) + _SKC_CASTS,
    ("cgroup_device",): (
        "get_local_storage", "perf_event_output",
    ),
    ("sk_msg",): (
        "get_netns_cookie", "ktime_get_coarse_ns", "msg_apply_bytes", "msg_cork_bytes", "msg_pop_data",
        "msg_pull_data", "msg_push_data", "msg_redirect_hash", "msg_redirect_map", "perf_event_output",
        "sk_storage_delete", "sk_storage_get",
    ) + _SKC_CASTS,
    ("cgroup_sock_addr",): (
        "bind", "get_local_storage", "get_netns_cookie", "get_retval", "get_socket_cookie", "getsockopt",
        "ktime_get_coarse_ns", "perf_event_output", "set_retval", "setsockopt", "sk_lookup_tcp",
        "sk_lookup_udp", "sk_release", "sk_storage_delete", "sk_storage_get", "skc_lookup_tcp",
    ) + _SKC_CASTS,
    ("lwt_seg6local",): (
        "csum_diff", "get_hash_recalc", "get_route_realm", "ktime_get_coarse_ns", "lwt_seg6_action",
        "lwt_seg6_adjust_srh", "lwt_seg6_store_bytes", "perf_event_output", "skb_load_bytes", "skb_pull_data",
        "skb_under_cgroup",
    ) + _SKC_CASTS,
    ("sk_reuseport",): (
        "get_socket_cookie", "ktime_get_coarse_ns", "sk_select_reuseport", "skb_load_bytes",
        "skb_load_bytes_relative",
    ),
    ("flow_dissector",): (
        "ktime_get_coarse_ns", "skb_load_bytes",
    ) + _SKC_CASTS,
    ("cgroup_sysctl",): (
        "get_local_storage", "ktime_get_coarse_ns", "perf_event_output", "sysctl_get_current_value",
        "sysctl_get_name", "sysctl_get_new_value", "sysctl_set_new_value",
    ),
    ("cgroup_sockopt",): (
        "get_local_storage", "get_netns_cookie", "get_retval", "perf_event_output", "set_retval",
        "sk_storage_delete", "sk_storage_get", "tcp_sock",
    ),
    ("sk_lookup",): (
        "ktime_get_coarse_ns", "perf_event_output", "sk_assign", "sk_release",
    ) + _SKC_CASTS,
    ("syscall",): (
        "btf_find_by_name_kind", "d_path", "get_func_ip",
        "get_socket_cookie", "get_stack", "get_stackid", "kallsyms_lookup_name", "perf_event_output",
        "probe_read", "probe_read_str", "sk_storage_delete", "sk_storage_get", "skb_output", "sock_from_file",
        "sys_bpf", "sys_close", "xdp_get_buff_len", "xdp_output",
    ) + _SKC_CASTS,
    ("netfilter",): (
    ),
}
_SETS: dict[str, frozenset[str]] = {t: _BASE | frozenset(extra) for types, extra in _EXTRA.items() for t in types}


def known_types() -> frozenset[str]:
    return frozenset(_SETS)


def helper_allowed(prog_type: str, helper: int | str, *, sleepable: bool = False) -> bool:
    """Whether a program of `prog_type` may call `helper` (an id, or a name with or without `bpf_`); syscall
    programs are always sleepable. KeyError for a type whose set is not stated here (`known_types()`)."""
    allowed = _SETS[prog_type]
    name = (helper_name(helper) or "") if isinstance(helper, int) else helper
    name = name.removeprefix("bpf_")
    if name in SLEEPABLE_ONLY:
        return sleepable or prog_type == "syscall"
    return name in allowed


__all__ = ["SLEEPABLE_ONLY", "helper_allowed", "known_types"]
