"""kfuncs, ksyms and kconfig externs: resolved as libbpf resolves them, and the kfuncs the VM implements
(open-coded iterators, RCU/preemption no-ops) giving the kernel's results, errnos and iterator states."""

from __future__ import annotations

import errno

import pytest

from bpforge.elf.externs import ExternError, HostKernel, kernel_version, read_kallsyms, relocate_for_kernel
from bpforge.errors import BpforgeError
from bpforge.kernel.program import load_linked
from bpforge.vm import from_object

from test_core_helpers import build, run_everywhere, vmlinux

PACKET = bytes(64)

DECLS = r"""
struct bpf_iter_num { __u64 __opaque[1]; } __attribute__((aligned(8)));
struct bpf_iter_bits { __u64 __opaque[2]; } __attribute__((aligned(8)));
extern int bpf_iter_num_new(struct bpf_iter_num *it, int start, int end) __weak __ksym;
extern int *bpf_iter_num_next(struct bpf_iter_num *it) __weak __ksym;
extern void bpf_iter_num_destroy(struct bpf_iter_num *it) __weak __ksym;
extern int bpf_iter_bits_new(struct bpf_iter_bits *it, const __u64 *unsafe_ptr__ign, __u32 nr_words) __weak __ksym;
extern int *bpf_iter_bits_next(struct bpf_iter_bits *it) __weak __ksym;
extern void bpf_iter_bits_destroy(struct bpf_iter_bits *it) __weak __ksym;
extern void bpf_rcu_read_lock(void) __ksym;
extern void bpf_rcu_read_unlock(void) __ksym;
extern void bpf_preempt_disable(void) __ksym;
extern void bpf_preempt_enable(void) __ksym;
"""

ITERATORS = DECLS + r"""
__u64 out[24];
__u64 mask3[3] = { 0x8000000000000001ULL, 0, 0x30 };
__u64 mask1 = 0xF00000000000000AULL;

static __always_inline void num_range(int start, int end, int slot)
{
    struct bpf_iter_num it;
    int *v;
    __u64 n = 0, sum = 0;
    out[slot] = (__u32)bpf_iter_num_new(&it, start, end);
    while ((v = bpf_iter_num_next(&it))) {
        n++;
        sum += *v;
    }
    out[slot + 1] = n;
    out[slot + 2] = sum;
    out[slot + 3] = bpf_iter_num_next(&it) == 0;  /* stays done */
    bpf_iter_num_destroy(&it);
}

static __always_inline void bits(const __u64 *mask, __u32 nr_words, int slot)
{
    struct bpf_iter_bits it;
    int *bit;
    __u64 seen = 0, n = 0;
    out[slot] = (__u32)bpf_iter_bits_new(&it, mask, nr_words);
    while ((bit = bpf_iter_bits_next(&it))) {
        n++;
        seen = seen * 131 + *bit;
    }
    out[slot + 1] = n;
    out[slot + 2] = seen;
    bpf_iter_bits_destroy(&it);
}

SEC("xdp")
int iterators(struct xdp_md *ctx)
{
    bpf_rcu_read_lock();
    bpf_rcu_read_unlock();
    bpf_preempt_disable();
    bpf_preempt_enable();
    num_range(2, 7, 0);
    num_range(5, 5, 4);
    num_range(9, 3, 8);                       /* start > end: -EINVAL */
    num_range(-2147483647 - 1, 2147483647, 12); /* more than BPF_MAX_LOOPS: -E2BIG */
    bits(&mask1, 1, 16);
    bits(mask3, 3, 19);
    return XDP_PASS;
}

SEC("xdp")
int bits_errors(struct xdp_md *ctx)
{
    bits(mask3, 0, 0);    /* no words: -EINVAL */
    bits(mask3, 512, 3);  /* more than 511 words: -E2BIG */
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


def _eint(code: int) -> int:
    return -code & 0xFFFFFFFF


def _bits_digest(bits: list[int]) -> tuple[int, int]:
    seen = 0
    for bit in bits:
        seen = (seen * 131 + bit) & (1 << 64) - 1
    return len(bits), seen


def test_open_coded_iterators_match_the_kernel(tmp_path, kernel):
    obj = build(tmp_path, ITERATORS)
    retval, out = run_everywhere(obj, PACKET, kernel, "iterators")
    assert retval == 2
    assert out[0:4] == (0, 5, 2 + 3 + 4 + 5 + 6, 1)
    assert out[4:8] == (0, 0, 0, 1)
    assert out[8:12] == (_eint(errno.EINVAL), 0, 0, 1)
    assert out[12:16] == (_eint(errno.E2BIG), 0, 0, 1)
    assert out[16:19] == (0, *_bits_digest([1, 3, 60, 61, 62, 63]))
    assert out[19:22] == (0, *_bits_digest([0, 63, 128 + 4, 128 + 5]))


def test_bits_iterator_errors_match_the_kernel(tmp_path, kernel):
    obj = build(tmp_path, ITERATORS)
    _, out = run_everywhere(obj, PACKET, kernel, "bits_errors")
    assert out[0:6] == (_eint(errno.EINVAL), 0, 0, _eint(errno.E2BIG), 0, 0)


def test_kfunc_calls_carry_the_kernel_btf_ids(tmp_path):
    obj = build(tmp_path, ITERATORS)
    btf = vmlinux()
    view = relocate_for_kernel(obj, obj.linked("iterators"))
    calls = {i.imm for i in view.linked.insns if i.form.name == "call_kfunc"}
    expected = {btf.find("func", name).id for name in ("bpf_iter_num_new", "bpf_iter_num_next",
                                                      "bpf_iter_num_destroy", "bpf_rcu_read_lock",
                                                      "bpf_preempt_enable", "bpf_iter_bits_new")}
    assert expected <= calls
    assert all(i.off == 0 for i in view.linked.insns if i.form.name == "call_kfunc")


UNKNOWN = r"""
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;
extern void bpf_no_such_kfunc_anywhere(void) __weak __ksym;
SEC("xdp")
int unknown(struct xdp_md *ctx)
{
    if (bpf_ksym_exists(bpf_no_such_kfunc_anywhere))
        bpf_no_such_kfunc_anywhere();
    return bpf_cast_to_kern_ctx(ctx) ? XDP_PASS : XDP_DROP;
}
SEC("xdp")
int weak_only(struct xdp_md *ctx)
{
    if (bpf_ksym_exists(bpf_no_such_kfunc_anywhere))
        bpf_no_such_kfunc_anywhere();
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
""".replace("bpf_ksym_exists(", "!!(")


def test_vm_refuses_a_kfunc_it_lacks_when_loading(tmp_path):
    vmlinux()
    obj = build(tmp_path, UNKNOWN)
    with pytest.raises(BpforgeError, match="kfunc bpf_cast_to_kern_ctx is not implemented by the VM"):
        from_object(obj, "unknown")


def test_strong_kfunc_missing_from_the_kernel_fails_and_weak_one_is_zero(tmp_path, kernel):
    vmlinux()
    obj = build(tmp_path, UNKNOWN.replace("bpf_cast_to_kern_ctx", "bpf_cast_to_nope"))
    with pytest.raises(ExternError, match="extern \\(func ksym\\) 'bpf_cast_to_nope': not found in kernel"):
        load_linked(obj.linked("weak_only"), obj)
    # libbpf resolves every extern of the object: drop the strong one and the weak one resolves to 0
    obj = build(tmp_path, UNKNOWN.replace("extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;", "")
                .replace("return bpf_cast_to_kern_ctx(ctx) ? XDP_PASS : XDP_DROP;", "return XDP_PASS;"))
    view = relocate_for_kernel(obj, obj.linked("weak_only"))
    assert not view.externs.externs["bpf_no_such_kfunc_anywhere"].is_set
    assert run_everywhere(obj, PACKET, kernel, "weak_only")[0] == 2


KCONFIG = r"""
extern unsigned int LINUX_KERNEL_VERSION __kconfig;
extern int CONFIG_HZ __kconfig;
extern _Bool CONFIG_BPF_SYSCALL __kconfig;
extern enum libbpf_tristate CONFIG_BPFORGE_NO_SUCH_OPTION __kconfig __weak;
extern const void _stext __ksym;
extern const void bpforge_no_such_symbol __ksym __weak;
__u64 out[6];
SEC("xdp")
int kconfig(struct xdp_md *ctx)
{
    out[0] = LINUX_KERNEL_VERSION;
    out[1] = CONFIG_HZ;
    out[2] = CONFIG_BPF_SYSCALL;
    out[3] = CONFIG_BPFORGE_NO_SUCH_OPTION;
    out[4] = (__u64)&_stext;
    out[5] = (__u64)&bpforge_no_such_symbol;
    return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_kconfig_and_typeless_ksyms_as_libbpf_fills_them(tmp_path, kernel):
    obj = build(tmp_path, KCONFIG)
    host = HostKernel()
    try:
        config = host.kconfig()
    except ExternError as err:
        pytest.skip(err.message)
    hz = int(next(line for line in config.splitlines() if line.startswith("CONFIG_HZ=")).split("=")[1])
    stext = read_kallsyms(["_stext"]).get("_stext")
    if not stext:
        pytest.skip("/proc/kallsyms shows no _stext")
    with load_linked(obj.linked(), obj) as prog:
        assert prog.verdict.btf, prog.verdict.btf_error  # the extern DATASECs were fixed up as libbpf does
    _, out = run_everywhere(obj, PACKET, kernel)
    assert out == (kernel_version(host.release), hz, 1, 0, stext[0], 0)


def test_kconfig_values_are_parsed_and_checked_like_libbpf(tmp_path):
    source = r"""
extern enum libbpf_tristate CONFIG_TRI __kconfig;
extern char CONFIG_STR[4] __kconfig;
extern unsigned char CONFIG_SMALL __kconfig __weak;
extern long long CONFIG_NEG __kconfig;
__u64 out[4];
SEC("xdp") int k(struct xdp_md *ctx)
{ out[0] = CONFIG_TRI; out[1] = CONFIG_STR[0]; out[2] = CONFIG_SMALL; out[3] = CONFIG_NEG; return XDP_PASS; }
char LICENSE[] SEC("license") = "GPL";
"""
    obj = build(tmp_path, source)
    good = "CONFIG_TRI=m\nCONFIG_STR=\"abcdef\"\n# CONFIG_SMALL is not set\nCONFIG_NEG=-5\n"
    res = relocate_for_kernel(obj, obj.linked(), HostKernel(kconfig=lambda: good)).externs
    values = {name: r.extern for name, r in res.externs.items()}
    data = res.kconfig
    assert int.from_bytes(data[values["CONFIG_TRI"].data_off:][:4], "little") == 2  # TRI_MODULE
    assert data[values["CONFIG_STR"].data_off:][:4] == b"abc\0"  # truncated to the array, NUL-terminated
    assert int.from_bytes(data[values["CONFIG_NEG"].data_off:][:8], "little", signed=True) == -5
    assert not res.externs["CONFIG_SMALL"].is_set
    # larger alignment first, then size, then name
    assert values["CONFIG_NEG"].data_off == 0
    with pytest.raises(ExternError, match="value '300' doesn't fit in 1 bytes"):
        relocate_for_kernel(obj, obj.linked(), HostKernel(kconfig=lambda: good + "CONFIG_SMALL=300\n"))
    with pytest.raises(ExternError, match="'CONFIG_TRI' \\(strong\\): not resolved"):
        relocate_for_kernel(obj, obj.linked(), HostKernel(kconfig=lambda: "CONFIG_NEG=1\nCONFIG_STR=\"x\"\n"))
