"""The loaders' rules bpforge follows when reading objects: old LLVM's e_machine 0, legacy map sections with
map-in-map definitions (iproute2's struct bpf_elf_map, samples/bpf's inner_map_idx, `maps/NAME` sections),
libbpf's rule for a .text function that is the only program, every BTF kind as libbpf parses it (checked
against bpftool's dump), linear cost in sections and symbols, iterative linking of long call chains."""

from __future__ import annotations

import json
import struct
import subprocess

import pytest

from bpforge.elf import build_object, read_object
from bpforge.elf.btf import parse_btf
from bpforge.elf.layout import EHDR
from bpforge.errors import ElfError
from bpforge.formats import load_program
from bpforge.isa import AsmProgram, AsmSection, Insn, parse
from bpforge.runner import run_loaded
from test_elf_support import compile_c, features_object, need  # noqa: F401  (features_object: a fixture)
from test_kernel_packets import no_leaked_fds  # noqa: F401  (an autouse fixture)

PACKET = bytes(64)


def with_header_field(data: bytes, index: int, value: int) -> bytes:
    """The object with one field of its ELF header (in EHDR order) replaced."""
    fields = list(EHDR.unpack_from(data))
    fields[index] = value
    return EHDR.pack(*fields) + data[EHDR.size:]


def both_engines(kernel, path, **options) -> list[int]:
    """retval of one run in the interpreter and in the kernel, of the program `load_program` picks."""
    loaded = load_program(path, **options)
    return [run_loaded(loaded, PACKET, engine=engine).retval for engine in ("interp", "kernel")]


# ---- e_machine and e_type (libbpf's bpf_object__elf_init) --------------------------------------------------

def test_old_llvm_machine_none_is_a_bpf_object(kernel, tmp_path):
    source = "#include <linux/bpf.h>\n__attribute__((section(\"xdp\"))) int f(struct xdp_md *c) { return 2; }\n" \
             "char LICENSE[] __attribute__((section(\"license\"))) = \"GPL\";\n"
    original = compile_c(source, tmp_path, "em")
    old = tmp_path / "em_none.o"
    old.write_bytes(with_header_field(original.read_bytes(), 2, 0))  # e_machine = EM_NONE, as LLVM < 3.9 wrote
    obj = read_object(old)
    assert [p.name for p in obj.programs] == ["f"] and obj.image.machine == 0
    assert both_engines(kernel, old) == [2, 2]


def test_other_machines_and_non_relocatable_files_are_refused(tmp_path):
    data = build_object(parse(".section xdp\nf:\n r0 = 1\n exit\n"))
    with pytest.raises(ElfError, match="ELF machine 62"):
        read_object(with_header_field(data, 2, 62))
    for e_type in (0, 2, 3, 4):  # ET_NONE, ET_EXEC, ET_DYN, ET_CORE: libbpf wants ET_REL
        with pytest.raises(ElfError, match=f"not a relocatable object: ELF type {e_type}"):
            read_object(with_header_field(data, 1, e_type), filename="t.o")


# ---- legacy map sections with map-in-map definitions --------------------------------------------------------

IPROUTE2_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct bpf_elf_map { __u32 type, size_key, size_value, max_elem, flags, id, pinning, inner_id, inner_idx; };
struct bpf_elf_map SEC("maps") map_inner = {
	.type = BPF_MAP_TYPE_ARRAY, .size_key = 4, .size_value = 4, .max_elem = 1, .id = 42, .inner_idx = 0,
};
struct bpf_elf_map SEC("maps") map_outer = {
	.type = BPF_MAP_TYPE_ARRAY_OF_MAPS, .size_key = 4, .size_value = 4, .max_elem = 2, .inner_id = 42,
};
struct bpf_elf_map SEC("maps") unplaced = {
	.type = BPF_MAP_TYPE_ARRAY, .size_key = 4, .size_value = 4, .max_elem = 1, .id = 42, .inner_idx = -1,
};
SEC("xdp")
int prog(struct xdp_md *ctx)
{
	int key = 0, *val;
	void *inner = bpf_map_lookup_elem(&map_outer, &key);
	if (!inner)
		return 100;
	val = bpf_map_lookup_elem(inner, &key);
	if (val)
		__sync_fetch_and_add(val, 5);
	val = bpf_map_lookup_elem(&map_inner, &key);  /* the same map, reached directly */
	return val ? *val : 200;
}
char LICENSE[] SEC("license") = "GPL";
"""

SAMPLES_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct bpf_map_def { unsigned int type, key_size, value_size, max_entries, map_flags, inner_map_idx, numa_node; };
struct bpf_map_def SEC("maps") port_a = { .type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 4,
					  .max_entries = 4 };
struct bpf_map_def SEC("maps") a_of_port_a = { .type = BPF_MAP_TYPE_ARRAY_OF_MAPS, .key_size = 4,
					       .inner_map_idx = 0, .max_entries = 2 };
struct bpf_map_def SEC("maps") h_of_port_a = { .type = BPF_MAP_TYPE_HASH_OF_MAPS, .key_size = 4,
					       .inner_map_idx = 0, .max_entries = 2 };
SEC("xdp")
int prog(struct xdp_md *ctx)
{
	int key = 0;
	void *inner = bpf_map_lookup_elem(&a_of_port_a, &key);
	void *other = bpf_map_lookup_elem(&h_of_port_a, &key);
	return (inner ? 2 : 1) + (other ? 20 : 10);
}
char LICENSE[] SEC("license") = "GPL";
"""

SLASH_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct bpf_map_def { unsigned int type, key_size, value_size, max_entries, map_flags; };
struct bpf_map_def SEC("maps/outer") outer = { .type = BPF_MAP_TYPE_HASH_OF_MAPS, .key_size = 4, .value_size = 4,
					       .max_entries = 8 };
struct bpf_map_def SEC("maps/counts") counts = { .type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 8,
						 .max_entries = 4 };
SEC("xdp")
int prog(struct xdp_md *ctx)
{
	int key = 0;
	long *v = bpf_map_lookup_elem(&counts, &key);
	if (v)
		*v += 1;
	return bpf_map_lookup_elem(&outer, &key) ? 2 : 3;
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_iproute2_map_in_map_is_read_with_its_inner_map_and_slot(kernel, tmp_path):
    path = compile_c(IPROUTE2_C, tmp_path, "iproute2")
    maps = {m.name: m for m in read_object(path).maps}
    outer = maps["map_outer"]
    assert (outer.type_name, outer.key_size, outer.value_size, outer.max_entries) == ("array_of_maps", 4, 4, 2)
    assert outer.inner.name == "map_inner" and outer.inner.type_name == "array"
    # bpf_maps_attach_all: a map with this id and inner_idx != -1 goes to slot inner_idx; `unplaced` does not
    assert outer.values == {0: "map_inner"}
    assert maps["map_inner"].inner is None and maps["map_inner"].values == {}
    # the counter bumped through the outer map is the one read directly: 5 in both engines
    assert both_engines(kernel, path) == [5, 5]


def test_samples_bpf_inner_map_idx(kernel, tmp_path):
    path = compile_c(SAMPLES_C, tmp_path, "samples")
    maps = {m.name: m for m in read_object(path).maps}
    for name in ("a_of_port_a", "h_of_port_a"):
        assert maps[name].inner.name == "port_a"
        assert maps[name].value_size == 4  # left out by bpf_load users: map-in-map values are fds
        assert maps[name].values == {}  # bpf_load fills nothing: both outer maps start empty
    assert both_engines(kernel, path) == [11, 11]


def test_maps_slash_sections_are_legacy_map_sections(tmp_path):
    path = compile_c(SLASH_C, tmp_path, "slash")
    obj = read_object(path)
    maps = {m.name: m for m in obj.maps}
    assert {n: (m.section, m.type_name, m.source) for n, m in maps.items()} == {
        "outer": ("maps/outer", "hash_of_maps", "legacy"), "counts": ("maps/counts", "array", "legacy")}
    assert maps["outer"].inner is None  # a bare struct bpf_map_def has no room for an inner definition
    relocs = {r.target: (r.kind, r.target_section) for r in obj.programs[0].relocations.values()}
    assert relocs == {"counts": ("map", "maps/counts"), "outer": ("map", "maps/outer")}
    loaded = load_program(path)
    with pytest.raises(Exception, match="map of maps needs its inner map"):
        run_loaded(loaded, PACKET, engine="interp")


def test_definitions_that_do_not_divide_the_section_are_refused():
    from bpforge.elf.layout import STT_OBJECT, STB_GLOBAL, Sym
    from bpforge.elf.maps import legacy_maps

    syms = [Sym(1, "a", 0, 0, 20, STT_OBJECT, STB_GLOBAL, 0, 3), Sym(2, "b", 0, 20, 20, STT_OBJECT, STB_GLOBAL, 0, 3)]
    with pytest.raises(ElfError, match="41 bytes of legacy map definitions do not divide among 2 maps"):
        legacy_maps(bytes(41), syms, "maps", 3, "x.o")


# ---- a .text function as the program (libbpf's prog_is_subprog) -------------------------------------------

def test_only_function_in_text_is_the_program(kernel, tmp_path):
    path = compile_c("#include <linux/bpf.h>\n"
                     "int lone(struct xdp_md *ctx) { return ctx->data_end - ctx->data > 20 ? 2 : 1; }\n"
                     "char LICENSE[] __attribute__((section(\"license\"))) = \"GPL\";\n", tmp_path, "lone")
    obj = read_object(path)
    assert [(p.name, p.section, p.is_subprogram) for p in obj.programs] == [("lone", ".text", False)]
    assert [p.name for p in load_program(path, link=False).programs] == ["lone"]
    assert both_engines(kernel, path, prog_type="xdp") == [2, 2]


def test_text_functions_are_subprograms_when_there_are_others(features_object):  # noqa: F811
    obj = read_object(features_object)
    assert {p.name for p in obj.subprograms} == {"sub1", "sub2", "gsub", "cb"}
    assert all(p.section != ".text" for p in obj.programs)
    two = read_object(build_object(parse(".text\n.globl a\na:\n r0 = 1\n exit\n.globl b\nb:\n r0 = 2\n exit\n")))
    assert two.programs == [] and [p.name for p in two.subprograms] == ["a", "b"]


# ---- BTF: every kind, as libbpf reads it (bpftool's JSON dump is the oracle) --------------------------------

KINDS_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct fwd_s; union fwd_u;
struct bits { unsigned int a:3; int b:5; unsigned long long c:40; char d; };
union u { int i; float f; };
enum neg { NEG_A = -5, NEG_B = 7 };
enum big { BIG_A = 0xfffffffffffULL, BIG_B = 1 };
enum sbig { SBIG_A = -0x1ffffffffLL, SBIG_B = 2 };
typedef volatile const int cvint;
struct holder { struct fwd_s *s; union fwd_u *u; int * restrict r; double dd; cvint cv; struct bits bits;
		union u uu; enum neg n; enum big big; enum sbig sb; char arr[3][4]; };
struct holder g_holder __attribute__((btf_decl_tag("holder_tag")));
int g_counter SEC(".data.counter") = 1;
static __attribute__((noinline)) int helper(int x __attribute__((btf_decl_tag("param_tag"))))
{ return x + g_holder.bits.b + g_holder.sb; }
SEC("xdp")
int prog(struct xdp_md *ctx) { return helper(ctx->data_end) + g_counter + g_holder.n + (int)g_holder.big; }
char LICENSE[] SEC("license") = "GPL";
"""

_LINKAGE = {0: "static", 1: "global", 2: "extern"}
_ENCODING = {0: "(none)", 1: "SIGNED", 2: "CHAR", 4: "BOOL"}


def as_bpftool(btf, t) -> dict:
    """One of our BtfTypes in the shape of `bpftool btf dump -j` (libbpf's reading of the same bytes)."""
    out = {"id": t.id, "kind": t.kind.upper(), "name": t.name or "(anon)"}
    if t.kind == "int":
        out |= {"size": t.size, "bits_offset": t.extra >> 16 & 0xFF, "nr_bits": t.extra & 0xFF,
                "encoding": _ENCODING[t.extra >> 24 & 0x0F]}
    elif t.kind in ("ptr", "typedef", "volatile", "const", "restrict", "type_tag"):
        out["type_id"] = t.type
    elif t.kind == "array":
        out |= {"type_id": t.array[0], "index_type_id": t.array[1], "nr_elems": t.array[2]}
    elif t.kind in ("struct", "union"):
        out |= {"size": t.size, "vlen": len(t.members), "members": [
            {"name": m.name or "(anon)", "type_id": m.type, "bits_offset": m.offset}
            | ({"bitfield_size": m.size} if m.size else {}) for m in t.members]}
    elif t.kind in ("enum", "enum64"):
        out |= {"encoding": "SIGNED" if t.kflag else "UNSIGNED", "size": t.size, "vlen": len(t.members),
                "values": [{"name": m.name, "val": m.value} for m in t.members]}
    elif t.kind == "fwd":
        out["fwd_kind"] = "union" if t.kflag else "struct"
    elif t.kind == "func":
        out |= {"type_id": t.type, "linkage": _LINKAGE[t.extra]}
    elif t.kind == "func_proto":
        out |= {"ret_type_id": t.type, "vlen": len(t.members),
                "params": [{"name": m.name or "(anon)", "type_id": m.type} for m in t.members]}
    elif t.kind == "var":
        out |= {"type_id": t.type, "linkage": _LINKAGE[t.extra] if t.extra < 2 else "extern"}
    elif t.kind == "datasec":
        out |= {"size": t.size, "vlen": len(t.members),
                "vars": [{"type_id": m.type, "offset": m.offset, "size": m.size} for m in t.members]}
    elif t.kind == "float":
        out["size"] = t.size
    elif t.kind == "decl_tag":
        out |= {"type_id": t.type, "component_idx": t.extra}
    return out


def test_btf_kinds_read_as_libbpf_reads_them(tmp_path):
    bpftool = need("bpftool")
    path = compile_c(KINDS_C, tmp_path, "kinds")
    result = subprocess.run([bpftool, "btf", "dump", "file", str(path), "-j"], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"bpftool cannot dump BTF here: {result.stderr.strip()[:200]}")
    expected = json.loads(result.stdout)["types"]
    btf = read_object(path).btf
    assert [as_bpftool(btf, t) for t in btf.types[1:]] == [
        {k: v for k, v in t.items() if k != "vlen" or t["kind"] in ("STRUCT", "UNION", "ENUM", "ENUM64",
                                                                    "FUNC_PROTO", "DATASEC")} for t in expected]
    kinds = {t["kind"] for t in expected}
    assert {"FWD", "ENUM", "ENUM64", "DECL_TAG", "FLOAT", "RESTRICT", "VOLATILE", "CONST", "DATASEC"} <= kinds


def raw_btf(types: list[bytes], strings: bytes) -> bytes:
    body = b"".join(types)
    return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings)) + body + strings


def test_btf_type_tags_signed_values_and_tag_components():
    strings = b"\0int\0user\0e\0A\0t\0"
    info = lambda kind, vlen=0, kflag=0: kflag << 31 | kind << 24 | vlen  # noqa: E731
    types = [
        struct.pack("<IIII", 1, info(1), 4, 1 << 24 | 32),  # 1: int (signed, 32 bits)
        struct.pack("<III", 5, info(18), 1),  # 2: type_tag "user" -> int
        struct.pack("<III", 5, info(18, kflag=1), 2),  # 3: type_tag with kflag (an attribute, 6.14+)
        struct.pack("<III", 0, info(2), 3),  # 4: ptr -> 3
        struct.pack("<III", 10, info(19, 1, kflag=1), 8) + struct.pack("<III", 12, 0xFFFFFFFE, 0xFFFFFFFF),
        struct.pack("<III", 14, info(17), 1) + struct.pack("<i", -1),  # 6: decl_tag "t" on the whole type 1
    ]
    btf = parse_btf(raw_btf(types, strings))
    assert [t.kind for t in btf.types] == ["void", "int", "type_tag", "type_tag", "ptr", "enum64", "decl_tag"]
    assert btf.skip_modifiers(4).kind == "ptr" and btf.skip_modifiers(3).kind == "int"
    assert btf.types[5].members[0].value == -2  # a signed enum64 holds two's complement
    assert btf.types[6].extra == -1
    with pytest.raises(ElfError, match="unknown kind 20"):
        parse_btf(raw_btf([struct.pack("<III", 0, info(20), 0)], b"\0"))


def test_btf_modifier_cycles_and_out_of_range_ids_are_errors():
    info = lambda kind: kind << 24  # noqa: E731
    cycle = parse_btf(raw_btf([struct.pack("<III", 0, info(8), 2), struct.pack("<III", 0, info(10), 1)], b"\0"))
    with pytest.raises(ElfError, match="cycle"):
        cycle.skip_modifiers(1)
    dangling = parse_btf(raw_btf([struct.pack("<III", 0, info(8), 99)], b"\0"))
    with pytest.raises(ElfError, match="type id 99 out of range"):
        dangling.size_of(1)


# ---- cost linear in sections, symbols and call depth ---------------------------------------------------------

def test_twenty_thousand_sections():
    # Each section's functions were looked up among all symbols (12 s for this object); now one pass each.
    count = 20_000
    text = "".join(f".section s{i}\n.globl p{i}\np{i}:\n r0 = {i}\n exit\n" for i in range(count))
    obj = read_object(build_object(parse(text)), filename="many.o")
    assert len(obj.programs) == count
    assert obj.program("p12345").insns[0] == Insn.make("mov64_imm", imm=12345)


def test_chain_of_a_thousand_subprograms_links_in_libbpf_order():
    depth = 1000
    text = ".section xdp\n.globl main\nmain:\n call f0\n call f999\n exit\n.text\n" + "".join(
        f".globl f{i}\nf{i}:\n call f{i + 1}\n exit\n" for i in range(depth)) + \
        f".globl f{depth}\nf{depth}:\n r0 = 1\n exit\n"
    obj = read_object(build_object(parse(text)))
    linked = obj.linked("main")
    # depth-first in order of first reference: f0 pulls in f1 ... f1000 before main's second call is seen
    assert list(linked.functions.values()) == ["main"] + [f"f{i}" for i in range(depth + 1)]
    starts = {name: index for index, name in linked.functions.items()}
    for index, name in linked.functions.items():
        if name.startswith("f") and name != f"f{depth}":
            call = linked.insns[index]
            assert index + 1 + call.imm == starts[f"f{int(name[1:]) + 1}"]


def test_asm_refuses_more_sections_than_elf_numbers():
    from bpforge.errors import AsmError

    exit_ = [Insn.make("exit")]
    program = AsmProgram([AsmSection(f"s{i}", list(exit_), functions={f"p{i}": 0}) for i in range(65_300)])
    with pytest.raises(AsmError, match="65300 sections make an object of 65305 ELF sections"):
        build_object(program, filename="big.s")


def test_a_map_definition_that_is_its_own_inner_map_is_refused_as_libbpf_does(tmp_path):
    path = compile_c(r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct m { __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS); __uint(max_entries, 2); __type(key, __u32);
	   struct m *values[]; } outer SEC(".maps");
SEC("xdp") int f(struct xdp_md *c) { int k = 0; return bpf_map_lookup_elem(&outer, &k) ? 1 : 2; }
char LICENSE[] SEC("license") = "GPL";
""", tmp_path, "selfref")
    with pytest.raises(ElfError, match="multi-level inner maps are not supported") as err:
        read_object(path)
    assert err.value.where.file == str(path)
