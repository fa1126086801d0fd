"""Socket helpers as a test run sees them (net/core/filter.c). The only socket a test run has is the dummy
one BPF_PROG_TEST_RUN hangs on a socket buffer (sk_alloc + sock_init_data: a full socket in TCP_CLOSE,
protocol 0, owned by uid 0); there is none to find by a lookup.

- bpf_sk_lookup_tcp/udp and bpf_skc_lookup_tcp look up the caller's network namespace; a test run's tuple
  usually matches nothing there, and the interpreter knows no host sockets: NULL. (A tuple naming a socket
  the host really has, such as a listening sshd, would find it in the kernel.)
- cookies: the kernel hands out socket cookies from a global counter, so no run can reproduce them; the
  dummy socket's cookie here is a fixed non-zero number. The network namespace cookie is the caller's
  (SO_NETNS_COOKIE), as test_run runs in the caller's namespace.
"""

from __future__ import annotations

import socket
from functools import lru_cache

from .registry import dummy_socket, helper, is_skb, needs

SO_NETNS_COOKIE = 71
DUMMY_SOCKET_COOKIE = 0x1000  # a stand-in for the global counter's next value
BPF_SOCK_TUPLE_V4, BPF_SOCK_TUPLE_V6 = 12, 36  # sizeof the ipv4 / ipv6 halves of struct bpf_sock_tuple


@lru_cache(maxsize=1)
def netns_cookie() -> int:
    """The cookie of this process's network namespace (init_net's, 1, where the kernel cannot say)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
    except OSError:
        return 1


@helper("sk_lookup_tcp", "sk_lookup_udp", "skc_lookup_tcp")
def _sk_lookup(vm, ctx, tuple_ptr, tuple_size, netns, flags):
    """No socket matches: NULL (a wrong tuple size or flags give NULL too)."""
    return 0


@helper("sk_release")
def _sk_release(vm, sk, *_):
    needs(vm, sk != 0 and sk == dummy_socket(vm), f"bpf_sk_release of {sk:#x}, which is not a socket a lookup returned")
    return 0


@helper("sk_fullsock")
def _sk_fullsock(vm, sk, *_):
    """The dummy socket is a full socket (not a request or time-wait one)."""
    needs(vm, sk != 0 and sk == dummy_socket(vm), f"bpf_sk_fullsock of {sk:#x}, which is not a socket")
    return sk


@helper("tcp_sock", "get_listener_sock")
def _tcp_sock(vm, sk, *_):
    """The dummy socket is neither TCP nor listening: NULL."""
    needs(vm, sk != 0 and sk == dummy_socket(vm), f"{sk:#x} is not a socket")
    return 0


@helper("get_socket_cookie")
def _get_socket_cookie(vm, ctx, *_):
    needs(vm, is_skb(vm), f"bpf_get_socket_cookie is modelled for socket buffer programs, not {vm.input.prog_type}")
    return DUMMY_SOCKET_COOKIE if dummy_socket(vm) else 0


@helper("get_netns_cookie")
def _get_netns_cookie(vm, ctx, *_):
    needs(vm, is_skb(vm) or ctx == 0, f"bpf_get_netns_cookie is modelled for socket buffer programs, "
                                      f"not {vm.input.prog_type}")
    return netns_cookie()


@helper("get_socket_uid")
def _get_socket_uid(vm, *_):
    """sock_init_data gave the dummy socket uid 0."""
    needs(vm, is_skb(vm), "bpf_get_socket_uid is for socket buffer programs")
    return 0
