"""Shared helpers of the ELF tests (no tests here): objects built with clang, llvm-objdump parsing, and
loading objects into the kernel with bpftool (each skips with a reason when its tool or bpf() is missing)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import EXAMPLE_OBJECTS, EXAMPLES

ARCH_INCLUDE = f"/usr/include/{os.uname().machine}-linux-gnu"
BPFFS = Path("/sys/fs/bpf")

# A compact object exercising what the examples do not all cover: several programs in one section,
# static and global subprograms called through section and function symbols, a bpf_loop callback
# (lddw of a function address), map-in-map and prog-array initial values, global data and a CO-RE access.
FEATURES_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct xdp_md___x { __u32 data; __u32 data_end; __u32 ingress_ifindex; } __attribute__((preserve_access_index));

typedef unsigned int u32_t;
typedef const volatile u32_t cv_u32;
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 4); __type(key, cv_u32); __type(value, __u64); }
	counts SEC(".maps");
struct inner { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, __u64); }
	in1 SEC(".maps"), in2 SEC(".maps");
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct inner);
} outer SEC(".maps") = { .values = { [1] = &in2 } };

int tail(struct xdp_md *ctx);
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__uint(key_size, 4);
	__uint(value_size, 4);
	__array(values, int (struct xdp_md *));
} jumps SEC(".maps") = { .values = { [0] = (void *)&tail } };

struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 8); __uint(map_flags, BPF_F_NO_PREALLOC);
	 __type(key, char[6]); __type(value, struct { int a; char b[3]; }); } odd SEC(".maps");

__u64 hits;
const volatile __u32 bias = 3;

static __noinline int sub2(int x) { return x * 3 + 1; }
static __noinline int sub1(int x) { return sub2(x) + sub2(x + 1); }
__noinline int gsub(int x) { return x + 7; }

static int cb(__u32 idx, void *ctx)
{
	__u32 k = idx & 3;
	__u64 *v = bpf_map_lookup_elem(&counts, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
	return 0;
}

SEC("xdp") int tail(struct xdp_md *ctx) { return XDP_PASS; }

SEC("xdp") int main_prog(struct xdp_md *ctx)
{
	struct xdp_md___x *x = (void *)ctx;
	__u32 idx = x->ingress_ifindex;
	__sync_fetch_and_add(&hits, 1);
	bpf_loop(4, cb, 0, 0);
	bpf_tail_call(ctx, &jumps, 1);
	return (sub1(idx) + gsub(idx) + bias) & 1 ? XDP_PASS : XDP_DROP;
}

SEC("tc") int tc_prog(struct __sk_buff *skb) { return sub1(skb->len) & 1; }

char LICENSE[] SEC("license") = "GPL";
"""


def need(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed")
    return path


def compile_c(source: str, directory: Path, name: str = "x", cpu: str = "v3") -> Path:
    clang = need("clang-19")
    src = directory / f"{name}.c"
    src.write_text(source)
    out = directory / f"{name}.o"
    result = subprocess.run([clang, "-O2", "-g", "-target", "bpf", f"-mcpu={cpu}", f"-I{ARCH_INCLUDE}", "-c",
                             str(src), "-o", str(out)], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"clang-19 cannot build the test object here: {result.stderr.strip()[:300]}")
    return out


@pytest.fixture(scope="session")
def features_object(tmp_path_factory) -> Path:
    return compile_c(FEATURES_C, tmp_path_factory.mktemp("elf"), "features")


def example_objects() -> list[Path]:
    return list(EXAMPLE_OBJECTS)


def example_ids() -> list[str]:
    return [p.name for p in EXAMPLE_OBJECTS]


_SECTION = re.compile(r"^Disassembly of section (\S+):$")
_SYMBOL = re.compile(r"^[0-9a-f]+ <(.+)>:$")
_INSN = re.compile(r"^\s*(\d+):\t((?:[0-9a-f]{2} ){7}[0-9a-f]{2}(?: (?:[0-9a-f]{2} ){7}[0-9a-f]{2})?)")
_RELOC = re.compile(r"^\s*([0-9a-f]+):\s+(R_BPF_\w+)\s+(\S+)$")


def objdump(path: Path) -> dict[str, dict]:
    """Per section: instructions as (slot, bytes), symbol headers {slot: name}, relocations [(byte, type, sym)]."""
    tool = need("llvm-objdump-19")
    text = subprocess.run([tool, "-d", "-r", str(path)], capture_output=True, text=True, check=True).stdout
    out: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if m := _SECTION.match(line):
            current = out.setdefault(m.group(1), {"insns": [], "symbols": {}, "relocs": []})
        elif current is None:
            continue
        elif m := _SYMBOL.match(line):
            current["symbols"][len(current["insns"])] = m.group(1)
        elif m := _INSN.match(line):
            current["insns"].append((int(m.group(1)), bytes.fromhex(m.group(2).replace(" ", ""))))
        elif m := _RELOC.match(line):
            current["relocs"].append((int(m.group(1), 16), m.group(2), m.group(3)))
    return out


@pytest.fixture(scope="session")
def bpffs():
    """A usable bpffs and bpftool; skips when the kernel or the tools are not there."""
    need("bpftool")
    from bpforge.kernel import kernel_available

    reason = kernel_available()
    if reason is not None:
        pytest.skip(reason)
    if not os.path.ismount(BPFFS):
        result = subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"bpffs not mounted and cannot be mounted: {result.stderr.strip()}")
    return BPFFS


def bpftool_load(path: Path) -> tuple[bool, str]:
    """Load every program of the object with `bpftool prog loadall`; (accepted, libbpf/verifier output)."""
    pin = BPFFS / f"bpforge_elf_test_{uuid.uuid4().hex[:12]}"
    try:
        result = subprocess.run(["bpftool", "prog", "loadall", str(path), str(pin)], capture_output=True, text=True,
                                timeout=600)
        return result.returncode == 0, result.stderr
    finally:
        subprocess.run(["rm", "-rf", str(pin)])


def last_lines(text: str, count: int = 6) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-count:])


__all__ = ["EXAMPLES", "FEATURES_C", "bpffs", "bpftool_load", "compile_c", "example_ids", "example_objects",
           "features_object", "last_lines", "need", "objdump"]
