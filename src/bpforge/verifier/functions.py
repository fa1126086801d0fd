"""Global functions: the subprograms the kernel checks once, on their own, from their BTF prototype.

A function of an object with BTF whose FUNC record has global linkage is not walked into at each call: the
caller's arguments are checked against the prototype, r0 becomes an unknown number, and the function itself
is checked once from a state built from the prototype (btf_prepare_func_args): a pointer to the program
type's context struct is the context, an integer or enum is any number, a pointer to a sized type is memory
of that size that may be NULL. What else a prototype may say (void pointers, decl tags such as `arg:ctx`,
more than five arguments, a non-integer return) is not modelled yet: such a function makes the verdict
unknown when it is called, never wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..elf.btf import FUNC_GLOBAL, Btf
from ..isa import slot_starts

# The context struct each program type's functions are handed (the kernel's bpf_ctx_convert table).
CTX_STRUCTS = {
    "socket_filter": "__sk_buff", "sched_cls": "__sk_buff", "sched_act": "__sk_buff", "cgroup_skb": "__sk_buff",
    "lwt_in": "__sk_buff", "lwt_out": "__sk_buff", "lwt_xmit": "__sk_buff", "lwt_seg6local": "__sk_buff",
    "sk_skb": "__sk_buff", "flow_dissector": "__sk_buff", "xdp": "xdp_md", "sock_ops": "bpf_sock_ops",
    "sk_msg": "sk_msg_md", "cgroup_sock": "bpf_sock", "cgroup_sock_addr": "bpf_sock_addr",
    "kprobe": "pt_regs", "perf_event": "bpf_perf_event_data", "sk_reuseport": "sk_reuseport_md",
    "sk_lookup": "bpf_sk_lookup", "cgroup_sysctl": "bpf_sysctl", "cgroup_sockopt": "bpf_sockopt",
    "raw_tracepoint": "bpf_raw_tracepoint_args", "cgroup_device": "bpf_cgroup_dev_ctx",
}
MAX_ARGS = 5


@dataclass(frozen=True)
class Argument:
    kind: str  # "ctx", "scalar" or "mem" (`size` bytes, or NULL)
    size: int = 0


@dataclass(frozen=True)
class GlobalFunction:
    name: str
    args: tuple[Argument, ...] = ()
    unsupported: str | None = None  # why its prototype is beyond this verifier, if it is


def global_functions(obj, linked, prog_type: str) -> dict[int, GlobalFunction]:
    """The global functions of a linked program (`elf.BpfObject.linked`), by the slot they start at."""
    btf, ext = obj.btf, obj.btf_ext
    if btf is None or ext is None:
        return {}
    placed = {origin: index for index, origin in enumerate(linked.origins)}
    starts = slot_starts(linked.insns)
    tagged = {t.type for t in btf.types if t.kind == "decl_tag"}
    found: dict[int, GlobalFunction] = {}
    for section, infos in ext.func_info.items():
        for info in infos:
            index = placed.get((section, info.insn))
            if not index:  # the program's own function (index 0) is never called as a global
                continue
            func = btf[info.type_id]
            if func.kind != "func" or func.extra != FUNC_GLOBAL:
                continue
            found[starts[index]] = _signature(btf, func, prog_type, func.id in tagged)
    return found


def _signature(btf: Btf, func, prog_type: str, tagged: bool) -> GlobalFunction:
    proto = btf.skip_modifiers(func.type)
    if tagged:
        return GlobalFunction(func.name, unsupported=f"{func.name}() has decl tags on its arguments")
    if len(proto.members) > MAX_ARGS:
        return GlobalFunction(func.name, unsupported=f"{func.name}() takes more than {MAX_ARGS} arguments")
    if btf.skip_modifiers(proto.type).kind not in ("int", "enum", "enum64"):
        return GlobalFunction(func.name, unsupported=f"{func.name}() does not return an integer")
    args = []
    for param in proto.members:
        t = btf.skip_modifiers(param.type)
        if t.kind in ("int", "enum", "enum64"):
            args.append(Argument("scalar"))
            continue
        if t.kind != "ptr":
            return GlobalFunction(func.name, unsupported=f"{func.name}() takes a {t.kind} by value")
        pointee = btf.skip_modifiers(t.type)
        if pointee.kind == "struct" and pointee.name == CTX_STRUCTS.get(prog_type):
            args.append(Argument("ctx"))
        elif pointee.kind in ("int", "enum", "enum64", "struct", "union", "array", "float"):
            args.append(Argument("mem", btf.size_of(pointee.id)))
        else:
            return GlobalFunction(func.name, unsupported=f"{func.name}() takes a pointer to {pointee.kind or 'void'}")
    return GlobalFunction(func.name, tuple(args))


__all__ = ["Argument", "CTX_STRUCTS", "GlobalFunction", "global_functions"]
