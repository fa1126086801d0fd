"""bpf_fib_lookup against the machine's own route table (`Machine(fib={ipv4_dst: (ifindex, smac, dmac)})`,
IPv4 only): the kernel's FIB is the host's, which a VM run cannot see."""

from __future__ import annotations

import struct

from ...isa.contexts import AF_INET
from .registry import helper

BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_NOT_FWDED = 0, 4


@helper("fib_lookup")
def _fib_lookup(vm, ctx, params_ptr, plen, flags, _):
    mem = vm.machine.memory
    params = bytearray(mem.read(params_ptr, 64))
    if params[0] != AF_INET:
        return BPF_FIB_LKUP_RET_NOT_FWDED
    route = vm.machine.fib.get(int.from_bytes(params[32:36], "big"))
    if route is None:
        return BPF_FIB_LKUP_RET_NOT_FWDED
    ifindex, smac, dmac = route
    struct.pack_into("<I", params, 8, ifindex)
    params[52:58], params[58:64] = smac, dmac
    mem.write(params_ptr, bytes(params))
    return BPF_FIB_LKUP_RET_SUCCESS
