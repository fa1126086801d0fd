"""Kernel helper functions by id (the order of the kernel's __BPF_FUNC_MAPPER, ids 1..211), and the argument
and return kinds of those bpforge implements.
"""

from __future__ import annotations

from dataclasses import dataclass

# Index i holds the name of helper id i + 1, without the "bpf_" prefix the C declarations carry.
_NAMES = (
    "map_lookup_elem", "map_update_elem", "map_delete_elem", "probe_read", "ktime_get_ns", "trace_printk",
    "get_prandom_u32", "get_smp_processor_id", "skb_store_bytes", "l3_csum_replace", "l4_csum_replace",
    "tail_call", "clone_redirect", "get_current_pid_tgid", "get_current_uid_gid", "get_current_comm",
    "get_cgroup_classid", "skb_vlan_push", "skb_vlan_pop", "skb_get_tunnel_key", "skb_set_tunnel_key",
    "perf_event_read", "redirect", "get_route_realm", "perf_event_output", "skb_load_bytes", "get_stackid",
    "csum_diff", "skb_get_tunnel_opt", "skb_set_tunnel_opt", "skb_change_proto", "skb_change_type",
    "skb_under_cgroup", "get_hash_recalc", "get_current_task", "probe_write_user", "current_task_under_cgroup",
    "skb_change_tail", "skb_pull_data", "csum_update", "set_hash_invalid", "get_numa_node_id",
    "skb_change_head", "xdp_adjust_head", "probe_read_str", "get_socket_cookie", "get_socket_uid", "set_hash",
    "setsockopt", "skb_adjust_room", "redirect_map", "sk_redirect_map", "sock_map_update", "xdp_adjust_meta",
    "perf_event_read_value", "perf_prog_read_value", "getsockopt", "override_return", "sock_ops_cb_flags_set",
    "msg_redirect_map", "msg_apply_bytes", "msg_cork_bytes", "msg_pull_data", "bind", "xdp_adjust_tail",
    "skb_get_xfrm_state", "get_stack", "skb_load_bytes_relative", "fib_lookup", "sock_hash_update",
    "msg_redirect_hash", "sk_redirect_hash", "lwt_push_encap", "lwt_seg6_store_bytes", "lwt_seg6_adjust_srh",
    "lwt_seg6_action", "rc_repeat", "rc_keydown", "skb_cgroup_id", "get_current_cgroup_id",
    "get_local_storage", "sk_select_reuseport", "skb_ancestor_cgroup_id", "sk_lookup_tcp", "sk_lookup_udp",
    "sk_release", "map_push_elem", "map_pop_elem", "map_peek_elem", "msg_push_data", "msg_pop_data",
    "rc_pointer_rel", "spin_lock", "spin_unlock", "sk_fullsock", "tcp_sock", "skb_ecn_set_ce",
    "get_listener_sock", "skc_lookup_tcp", "tcp_check_syncookie", "sysctl_get_name",
    "sysctl_get_current_value", "sysctl_get_new_value", "sysctl_set_new_value", "strtol", "strtoul",
    "sk_storage_get", "sk_storage_delete", "send_signal", "tcp_gen_syncookie", "skb_output", "probe_read_user",
    "probe_read_kernel", "probe_read_user_str", "probe_read_kernel_str", "tcp_send_ack", "send_signal_thread",
    "jiffies64", "read_branch_records", "get_ns_current_pid_tgid", "xdp_output", "get_netns_cookie",
    "get_current_ancestor_cgroup_id", "sk_assign", "ktime_get_boot_ns", "seq_printf", "seq_write",
    "sk_cgroup_id", "sk_ancestor_cgroup_id", "ringbuf_output", "ringbuf_reserve", "ringbuf_submit",
    "ringbuf_discard", "ringbuf_query", "csum_level", "skc_to_tcp6_sock", "skc_to_tcp_sock",
    "skc_to_tcp_timewait_sock", "skc_to_tcp_request_sock", "skc_to_udp6_sock", "get_task_stack",
    "load_hdr_opt", "store_hdr_opt", "reserve_hdr_opt", "inode_storage_get", "inode_storage_delete", "d_path",
    "copy_from_user", "snprintf_btf", "seq_printf_btf", "skb_cgroup_classid", "redirect_neigh", "per_cpu_ptr",
    "this_cpu_ptr", "redirect_peer", "task_storage_get", "task_storage_delete", "get_current_task_btf",
    "bprm_opts_set", "ktime_get_coarse_ns", "ima_inode_hash", "sock_from_file", "check_mtu",
    "for_each_map_elem", "snprintf", "sys_bpf", "btf_find_by_name_kind", "sys_close", "timer_init",
    "timer_set_callback", "timer_start", "timer_cancel", "get_func_ip", "get_attach_cookie", "task_pt_regs",
    "get_branch_snapshot", "trace_vprintk", "skc_to_unix_sock", "kallsyms_lookup_name", "find_vma", "loop",
    "strncmp", "get_func_arg", "get_func_ret", "get_func_arg_cnt", "get_retval", "set_retval",
    "xdp_get_buff_len", "xdp_load_bytes", "xdp_store_bytes", "copy_from_user_task", "skb_set_tstamp",
    "ima_file_hash", "kptr_xchg", "map_lookup_percpu_elem", "skc_to_mptcp_sock", "dynptr_from_mem",
    "ringbuf_reserve_dynptr", "ringbuf_submit_dynptr", "ringbuf_discard_dynptr", "dynptr_read", "dynptr_write",
    "dynptr_data", "tcp_raw_gen_syncookie_ipv4", "tcp_raw_gen_syncookie_ipv6", "tcp_raw_check_syncookie_ipv4",
    "tcp_raw_check_syncookie_ipv6", "ktime_get_tai_ns", "user_ringbuf_drain", "cgrp_storage_get",
    "cgrp_storage_delete",
)

HELPER_NAMES: dict[int, str] = {i + 1: "bpf_" + name for i, name in enumerate(_NAMES)}
HELPER_IDS: dict[str, int] = {name: hid for hid, name in HELPER_NAMES.items()}


def helper_name(helper_id: int) -> str | None:
    return HELPER_NAMES.get(helper_id)


def helper_id(name: str) -> int | None:
    """Id of a helper named with or without the bpf_ prefix."""
    return HELPER_IDS.get(name if name.startswith("bpf_") else "bpf_" + name)


@dataclass(frozen=True)
class HelperSignature:
    """Argument and return kinds of a helper, as the kernel's bpf_func_proto declares them (the verifier
    checks calls against these; the interpreter implements the helpers that have one)."""

    args: tuple[str, ...]
    ret: str


_CTX, _MAP, _ANY, _SIZE, _SIZE0 = "ptr_to_ctx", "const_map_ptr", "anything", "const_size", "const_size_or_zero"
_ROMEM, _NULLABLE_ROMEM, _UNINIT = "ptr_to_mem_readonly", "ptr_to_mem_readonly_or_null", "ptr_to_uninit_mem"
_INT, _VOID = "integer", "void"
_FUNC, _STACK0 = "ptr_to_func", "ptr_to_stack_or_null"  # a callback, and the context it is given
_SOCK_COMMON, _BTF_SOCK = "ptr_to_sock_common", "ptr_to_btf_id_sock_common"
_SOCKET0 = "ptr_to_socket_or_null"
_UNINIT_VALUE = "ptr_to_uninit_map_value"  # ARG_PTR_TO_MAP_VALUE | MEM_UNINIT | MEM_WRITE (pop, peek)
_LONG = "ptr_to_long"  # ARG_PTR_TO_FIXED_SIZE_MEM of 8 aligned bytes the helper writes
_SKB_FIX = ((_CTX, _ANY, _ANY), _INT)  # skb_change_proto, skb_change_tail, skb_change_head
_PROBE = ((_UNINIT, _SIZE0, _ANY), _INT)  # bpf_probe_read_*
_CLOCK = ((), _INT)

_SIGNATURES = {
    "map_lookup_elem": ((_MAP, "ptr_to_map_key"), "ptr_to_map_value_or_null"),
    "map_update_elem": ((_MAP, "ptr_to_map_key", "ptr_to_map_value", _ANY), _INT),
    "map_delete_elem": ((_MAP, "ptr_to_map_key"), _INT),
    "ktime_get_ns": ((), _INT),
    "ktime_get_boot_ns": ((), _INT),
    "trace_printk": ((_ROMEM, _SIZE, _ANY, _ANY, _ANY), _INT),
    "get_prandom_u32": ((), _INT),
    "get_smp_processor_id": ((), _INT),
    "skb_store_bytes": ((_CTX, _ANY, _ROMEM, _SIZE, _ANY), _INT),
    "l3_csum_replace": ((_CTX, _ANY, _ANY, _ANY, _ANY), _INT),
    "l4_csum_replace": ((_CTX, _ANY, _ANY, _ANY, _ANY), _INT),
    "tail_call": ((_CTX, _MAP, _ANY), _VOID),
    "redirect": ((_ANY, _ANY), _INT),
    "get_hash_recalc": ((_CTX,), _INT),
    "skb_load_bytes": ((_CTX, _ANY, _UNINIT, _SIZE), _INT),
    "csum_diff": ((_NULLABLE_ROMEM, _SIZE0, _NULLABLE_ROMEM, _SIZE0, _ANY), _INT),
    "xdp_adjust_head": ((_CTX, _ANY), _INT),
    "redirect_map": ((_MAP, _ANY, _ANY), _INT),
    "xdp_adjust_meta": ((_CTX, _ANY), _INT),
    "xdp_adjust_tail": ((_CTX, _ANY), _INT),
    "fib_lookup": ((_CTX, "ptr_to_mem", _SIZE, _ANY), _INT),
    "ringbuf_output": ((_MAP, _ROMEM, _SIZE0, _ANY), _INT),
    "ringbuf_reserve": ((_MAP, "const_alloc_size_or_zero", _ANY), "ptr_to_ringbuf_mem_or_null"),
    "ringbuf_submit": (("ptr_to_ringbuf_mem", _ANY), _VOID),
    "ringbuf_discard": (("ptr_to_ringbuf_mem", _ANY), _VOID),
    "ringbuf_query": ((_MAP, _ANY), _INT),
    # maps
    "map_lookup_percpu_elem": ((_MAP, "ptr_to_map_key", _ANY), "ptr_to_map_value_or_null"),
    "map_push_elem": ((_MAP, "ptr_to_map_value", _ANY), _INT),
    "map_pop_elem": ((_MAP, _UNINIT_VALUE), _INT),
    "map_peek_elem": ((_MAP, _UNINIT_VALUE), _INT),
    "for_each_map_elem": ((_MAP, _FUNC, _STACK0, _ANY), _INT),
    "get_local_storage": ((_MAP, _ANY), "ptr_to_map_value"),
    "sk_storage_get": ((_MAP, _BTF_SOCK, "ptr_to_map_value_or_null", _ANY), "ptr_to_map_value_or_null"),
    "sk_storage_delete": ((_MAP, _BTF_SOCK), _INT),
    "perf_event_output": ((_CTX, _MAP, _ANY, _ROMEM, _SIZE0), _INT),
    "perf_event_read": ((_MAP, _ANY), _INT),
    "perf_event_read_value": ((_MAP, _ANY, _UNINIT, _SIZE), _INT),
    # packets
    "xdp_get_buff_len": ((_CTX,), _INT),
    "xdp_load_bytes": ((_CTX, _ANY, _UNINIT, _SIZE), _INT),
    "xdp_store_bytes": ((_CTX, _ANY, _UNINIT, _SIZE), _INT),
    "redirect_peer": ((_ANY, _ANY), _INT),
    "redirect_neigh": ((_ANY, _NULLABLE_ROMEM, _SIZE0, _ANY), _INT),
    "skb_load_bytes_relative": ((_CTX, _ANY, _UNINIT, _SIZE, _ANY), _INT),
    "skb_pull_data": ((_CTX, _ANY), _INT),
    "skb_change_proto": _SKB_FIX,
    "skb_change_tail": _SKB_FIX,
    "skb_change_head": _SKB_FIX,
    "skb_change_type": ((_CTX, _ANY), _INT),
    "skb_adjust_room": ((_CTX, _ANY, _ANY, _ANY), _INT),
    "csum_update": ((_CTX, _ANY), _INT),
    "csum_level": ((_CTX, _ANY), _INT),
    "set_hash": ((_CTX, _ANY), _INT),
    "set_hash_invalid": ((_CTX,), _INT),
    "skb_get_tunnel_key": ((_CTX, _UNINIT, _SIZE, _ANY), _INT),
    "skb_set_tunnel_key": ((_CTX, _ROMEM, _SIZE, _ANY), _INT),
    "skb_get_tunnel_opt": ((_CTX, _UNINIT, _SIZE), _INT),
    "skb_set_tunnel_opt": ((_CTX, _ROMEM, _SIZE), _INT),
    "get_route_realm": ((_CTX,), _INT),
    "skb_ecn_set_ce": ((_CTX,), _INT),
    # sockets
    "sk_lookup_tcp": ((_CTX, _ROMEM, _SIZE, _ANY, _ANY), _SOCKET0),
    "sk_lookup_udp": ((_CTX, _ROMEM, _SIZE, _ANY, _ANY), _SOCKET0),
    "skc_lookup_tcp": ((_CTX, _ROMEM, _SIZE, _ANY, _ANY), "ptr_to_sock_common_or_null"),
    "sk_release": ((_BTF_SOCK,), _INT),
    "sk_fullsock": ((_SOCK_COMMON,), _SOCKET0),
    "tcp_sock": ((_SOCK_COMMON,), "ptr_to_tcp_sock_or_null"),
    "get_listener_sock": ((_SOCK_COMMON,), _SOCKET0),
    "get_socket_cookie": ((_CTX,), _INT),
    "get_socket_uid": ((_CTX,), _INT),
    "get_netns_cookie": (("ptr_to_ctx_or_null",), _INT),
    # the program, its task, time, strings
    "ktime_get_coarse_ns": _CLOCK,
    "ktime_get_tai_ns": _CLOCK,
    "jiffies64": _CLOCK,
    "get_numa_node_id": _CLOCK,
    "get_current_pid_tgid": _CLOCK,
    "get_current_uid_gid": _CLOCK,
    "get_current_comm": ((_UNINIT, _SIZE), _INT),
    "loop": ((_ANY, _FUNC, _STACK0, _ANY), _INT),
    "spin_lock": (("ptr_to_spin_lock",), _VOID),
    "spin_unlock": (("ptr_to_spin_lock",), _VOID),
    "strtol": ((_ROMEM, _SIZE, _ANY, _LONG), _INT),
    "strtoul": ((_ROMEM, _SIZE, _ANY, _LONG), _INT),
    "strncmp": ((_ROMEM, _SIZE, "ptr_to_const_str"), _INT),
    "probe_read": _PROBE,
    "probe_read_str": _PROBE,
    "probe_read_user": _PROBE,
    "probe_read_user_str": _PROBE,
    "probe_read_kernel": _PROBE,
    "probe_read_kernel_str": _PROBE,
}
HELPER_SIGNATURES: dict[int, HelperSignature] = {
    HELPER_IDS["bpf_" + name]: HelperSignature(args, ret) for name, (args, ret) in _SIGNATURES.items()
}

# bpf_helper_changes_pkt_data (net/core/filter.c): helpers after which every packet pointer a program holds
# is stale, because the packet may have moved or changed length. The verifier forgets them all.
CHANGES_PACKET_DATA: frozenset[int] = frozenset(HELPER_IDS["bpf_" + name] for name in (
    "clone_redirect", "l3_csum_replace", "l4_csum_replace", "lwt_push_encap", "lwt_seg6_action",
    "lwt_seg6_adjust_srh", "lwt_seg6_store_bytes", "msg_pop_data", "msg_pull_data", "msg_push_data",
    "skb_adjust_room", "skb_change_head", "skb_change_proto", "skb_change_tail", "skb_pull_data",
    "skb_store_bytes", "skb_vlan_pop", "skb_vlan_push", "store_hdr_opt", "xdp_adjust_head", "xdp_adjust_meta",
    "xdp_adjust_tail"))
