"""CO-RE relocations: patched instructions checked against what the running kernel's BTF says, and the
programs run in the kernel (BPF_PROG_TEST_RUN) and both VM tiers with the same results; libbpf's rules for
flavors, ambiguity, poisoning and load resizing checked against target BTFs compiled in the test."""

from __future__ import annotations

import pytest

from bpforge.elf.core import POISON_HELPER, CoreError, relocate_linked
from bpforge.elf.externs import HostKernel
from bpforge.elf.vmlinux import KernelBtfMissing, kernel_btf, object_btf_target
from bpforge.kernel.program import VerifierRejected, load_linked
from bpforge.vm import VmFault

from test_core_helpers import build, run_everywhere, run_vm, vmlinux

PACKET = bytes([0x11, 0x22, 0x33, 0x44, 0, 0, 0, 1, 0, 0, 0, 2, 0x5A, 0xF2]) + bytes(50)

CONSTANTS = r"""
struct sk_buff { unsigned int len; unsigned long long no_such_field_here; } __attribute__((preserve_access_index));
enum bpf_map_type___mine { BPF_MAP_TYPE_ARRAY___mine = 99, BPF_MAP_TYPE_NOPE___mine = 5 };
struct no_such_type_anywhere { int a; };
struct list_head { struct list_head *next, *prev; };
__u64 out[12];

SEC("xdp")
int constants(struct xdp_md *ctx)
{
    out[0] = bpf_core_field_offset(struct sk_buff, len);
    out[1] = bpf_core_field_size(struct sk_buff, len);
    out[2] = bpf_core_field_exists(struct sk_buff, no_such_field_here);
    out[3] = bpf_core_type_size(struct sk_buff);
    out[4] = bpf_core_type_exists(struct no_such_type_anywhere);
    out[5] = bpf_core_enum_value(enum bpf_map_type___mine, BPF_MAP_TYPE_ARRAY___mine);
    out[6] = bpf_core_enum_value_exists(enum bpf_map_type___mine, BPF_MAP_TYPE_NOPE___mine);
    out[7] = bpf_core_type_id_kernel(struct sk_buff);
    out[8] = bpf_core_type_id_local(struct sk_buff);
    out[9] = bpf_core_type_matches(struct sk_buff);
    out[10] = bpf_core_type_matches(struct list_head);
    out[11] = bpf_core_field_exists(struct sk_buff, len);
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_constants_follow_the_kernel_btf(tmp_path, kernel):
    obj = build(tmp_path, CONSTANTS)
    btf = vmlinux()
    skb = btf.find("struct", "sk_buff")
    offset, size = btf.struct_layout("sk_buff")["len"]
    array = next(m.value for m in btf.find("enum", "bpf_map_type").members if m.name == "BPF_MAP_TYPE_ARRAY")
    local_skb = obj.btf.find("struct", "sk_buff").id
    retval, out = run_everywhere(obj, PACKET, kernel)
    assert retval == 2
    assert out == (offset, size, 0, skb.size, 0, array, 0, skb.id, local_skb, 0, 1, 1)


def test_decisions_name_the_access_and_the_target(tmp_path):
    obj = build(tmp_path, CONSTANTS)
    btf = vmlinux()
    done = relocate_linked(obj, obj.linked(), btf)
    by_kind = {(d.kind, d.what): d for d in done.decisions}
    size = by_kind[("type_size", "struct sk_buff")]
    assert (size.orig, size.new, size.target_id) == (16, btf.find("struct", "sk_buff").size,
                                                    btf.find("struct", "sk_buff").id)
    missing = by_kind[("field_exists", "struct sk_buff.no_such_field_here (0:1)")]
    assert (missing.orig, missing.new, missing.poisoned) == (1, 0, False)
    # a relocated ALU immediate holds the kernel's value
    patched = done.program.insns[size.insn]
    assert patched.form.kind == "mov" and patched.imm == size.new


CTX = r"""
/* xdp_md with its first two fields swapped: only CO-RE makes the loads right */
struct xdp_md___swapped { __u32 data_end; __u32 data; } __attribute__((preserve_access_index));
struct tcphdr___mine {
    __u16 source; __u16 dest; __u32 seq; __u32 ack_seq;
    __u16 res1:4, doff:4, fin:1, syn:1, rst:1, psh:1, ack:1, urg:1, ece:1, cwr:1;
} __attribute__((preserve_access_index));
__u64 out[4];

SEC("xdp")
int ctx_and_bitfields(struct xdp_md___swapped *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    out[0] = end - data;
    if (data + 20 <= end) {
        struct tcphdr___mine *th = data;
        out[1] = BPF_CORE_READ_BITFIELD(th, doff);
        out[2] = BPF_CORE_READ_BITFIELD(th, syn);
        out[3] = BPF_CORE_READ_BITFIELD(th, cwr);
    }
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_context_loads_and_bitfields_are_relocated(tmp_path, kernel):
    obj = build(tmp_path, CTX)
    btf = vmlinux()
    done = relocate_linked(obj, obj.linked(), btf)
    loads = {d.what: done.program.insns[d.insn] for d in done.decisions if d.kind == "byte_off"}
    layout = btf.struct_layout("xdp_md")
    assert loads["struct xdp_md___swapped.data_end (0:0)"].off == layout["data_end"][0]
    assert loads["struct xdp_md___swapped.data (0:1)"].off == layout["data"][0]
    packet = bytearray(PACKET)
    packet[12], packet[13] = 0x50, 0x82  # doff 5; flags SYN and CWR
    _, out = run_everywhere(obj, bytes(packet), kernel)
    assert out == (len(packet), 5, 1, 1)


POISON = r"""
struct xdp_md___extra { __u32 data; __u32 no_such_ctx_field; } __attribute__((preserve_access_index));
__u64 out[2];

SEC("xdp")
int guarded(struct xdp_md___extra *ctx)
{
    out[0] = 7;
    if (bpf_core_field_exists(ctx->no_such_ctx_field))
        out[1] = ctx->no_such_ctx_field;
    return XDP_PASS;
}

SEC("xdp")
int unguarded(struct xdp_md___extra *ctx)
{
    out[1] = ctx->no_such_ctx_field;
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_unresolvable_access_is_poisoned_and_harmless_when_dead(tmp_path, kernel):
    obj = build(tmp_path, POISON)
    done = relocate_linked(obj, obj.linked("guarded"), vmlinux())
    poisoned = [d for d in done.decisions if d.poisoned]
    assert poisoned and all(done.program.insns[d.insn].imm == POISON_HELPER for d in poisoned)
    assert run_everywhere(obj, PACKET, kernel, "guarded") == (2, (7, 0))


def test_reached_poison_is_refused_by_the_kernel_and_faults_in_the_vm(tmp_path, kernel):
    obj = build(tmp_path, POISON)
    with pytest.raises(VerifierRejected) as rejected:
        load_linked(obj.linked("unguarded"), obj)
    assert "invalid func unknown#195896080" in rejected.value.verdict.log
    for tier in ("interp", "fast"):
        with pytest.raises(VmFault, match="195896080"):
            run_vm(obj, PACKET, tier, section="unguarded")


# ---- libbpf's rules against target BTFs made for the purpose -------------------------------------------

TARGET = r"""
struct foo { int a; int b; } foo;
struct foo___v2 { int b; int a; } foo2;
struct bar___v1 { int pad; int x; } bar;
struct sized { unsigned int u; int s; char *p; } sized;
SEC("xdp") int target(struct xdp_md *ctx) { return 0; }
char LICENSE[] SEC("license") = "GPL";
"""

LOCAL = r"""
struct foo___mine { int a; } __attribute__((preserve_access_index));
struct bar { int x; } __attribute__((preserve_access_index));
struct sized { unsigned long long u; long long s; char *p; } __attribute__((preserve_access_index));
__u64 keep[3];
SEC("xdp") int ambiguous(struct xdp_md *ctx) { return ((struct foo___mine *)keep)->a; }
SEC("xdp") int flavored(struct xdp_md *ctx) { return ((struct bar *)keep)->x; }
SEC("xdp") int resized(struct xdp_md *ctx) { return ((struct sized *)keep)->u; }
SEC("xdp") int signed_resize(struct xdp_md *ctx) { return ((struct sized *)keep)->s; }
char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture
def local_and_target(tmp_path):
    target = build(tmp_path, TARGET, "target")
    return build(tmp_path, LOCAL, "local"), object_btf_target(target.btf, "target.o")


def test_candidates_that_disagree_are_an_ambiguity(local_and_target):
    local, target = local_and_target
    with pytest.raises(CoreError, match="field offset ambiguity: 32 != 0 bits"):
        relocate_linked(local, local.linked("ambiguous"), target)


def test_a_flavored_target_type_is_a_candidate(local_and_target):
    local, target = local_and_target
    done = relocate_linked(local, local.linked("flavored"), target)
    (decision,) = done.decisions
    assert (decision.orig, decision.new) == (0, 4)
    assert done.program.insns[decision.insn].off == 4


def test_unsigned_fields_resize_the_load_and_signed_ones_poison_it(local_and_target):
    local, target = local_and_target
    done = relocate_linked(local, local.linked("resized"), target)
    (decision,) = done.decisions
    load = done.program.insns[decision.insn]
    assert load.form.kind == "ldx" and load.form.size == 4 and load.off == 0  # u64 -> the target's u32
    done = relocate_linked(local, local.linked("signed_resize"), target)
    (decision,) = done.decisions
    assert decision.poisoned and done.program.insns[decision.insn].imm == POISON_HELPER


def test_missing_kernel_btf_is_one_clear_error(tmp_path):
    obj = build(tmp_path, CONSTANTS)
    host = HostKernel(btf=lambda what: kernel_btf(str(tmp_path / "no-vmlinux"), needed_for=what))
    from bpforge.elf.externs import relocate_for_kernel

    with pytest.raises(KernelBtfMissing, match="the CO-RE relocations of program 'constants' needs the running"):
        relocate_for_kernel(obj, obj.linked(), host)
