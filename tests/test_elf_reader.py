"""Reading BPF objects: every example against llvm-objdump-19 (instructions, functions, relocations), maps
against the C sources and against the maps the kernel creates, programs, data, BTF.ext, linking."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from bpforge.elf import read_object
from bpforge.isa import encode, slot_starts
from test_elf_support import (BPFFS, bpffs, compile_c, example_ids, example_objects,  # noqa: F401
                              features_object, objdump)

OBJECTS = example_objects()


@pytest.mark.parametrize("path", OBJECTS, ids=example_ids())
def test_instructions_match_objdump(path: Path):
    obj = read_object(path)
    dump = objdump(path)
    assert [s.name for s in obj.sections] == [name for name in dump if dump[name]["insns"]]
    for sec in obj.sections:
        expected = dump[sec.name]
        assert len(sec.insns) == len(expected["insns"]), sec.name
        for insn, slot, (dump_slot, raw) in zip(sec.insns, slot_starts(sec.insns), expected["insns"]):
            assert slot == dump_slot
            assert encode([insn]) == raw, f"{sec.name} slot {slot}"
        assert sec.functions == expected["symbols"], sec.name
        relocs = {(slot_starts(sec.insns)[i] * 8, r.type, r.symbol) for i, r in sec.relocations.items()}
        assert relocs == set(expected["relocs"]), sec.name


@pytest.mark.parametrize("path", OBJECTS, ids=example_ids())
def test_programs_cover_their_sections(path: Path):
    obj = read_object(path)
    for sec in obj.sections:
        funcs = [p for p in obj.programs + obj.subprograms if p.section == sec.name]
        assert sum(len(p.insns) for p in funcs) == len(sec.insns)
        for prog in funcs:
            assert prog.insns == sec.insns[prog.start:prog.start + len(prog.insns)]
            assert all(0 <= i < len(prog.insns) and r.insn == i for i, r in prog.relocations.items())
    # libbpf's prog_is_subprog (1.1): .text functions are subprograms, unless one is the object's only function
    only = len(obj.programs) + len(obj.subprograms) == 1
    assert all(p.section != ".text" or only for p in obj.programs)
    assert all(p.section == ".text" and not only for p in obj.subprograms)
    assert all(p.is_subprogram == (p in obj.subprograms) for p in obj.programs + obj.subprograms)
    assert obj.license == ("GPL" if obj.image.index("license") is not None else None)


@pytest.mark.parametrize("path", OBJECTS, ids=example_ids())
def test_btf_ext_agrees_with_functions(path: Path):
    obj = read_object(path)
    if obj.btf_ext is None:
        pytest.skip("no .BTF.ext (assembled object)")
    for sec in obj.sections:
        infos = obj.btf_ext.func_info.get(sec.name, [])
        assert {f.insn: f.name for f in infos} == sec.functions
        lines = obj.btf_ext.line_info.get(sec.name, [])
        assert [li.insn for li in lines] == sorted({li.insn for li in lines})
        assert set(sec.functions) <= {li.insn for li in lines}  # the kernel requires a line at each function
        assert all(li.line > 0 and li.file for li in lines)


# What the C sources declare (type, max_entries, flags, key size, value size).
EXPECTED_MAPS = {
    "xdp_counter": {"class_stats": ("percpu_array", None, 0, 4, None), "size_hist": ("array", 24, 0, 4, 8)},
    "xdp_firewall": {"src4_deny": ("lpm_trie", 16384, 1, None, None), "src6_deny": ("lpm_trie", 16384, 1, None, None),
                     "port_deny": ("hash", 1024, 0, None, None), "drop_stats": ("percpu_array", 256, 0, 4, None)},
    "xdp_lb": {"vip_map": ("hash", 512, 0, None, None), "ch_rings": ("array", 64 * 4099, 0, 4, 4),
               "reals": ("array", 4096, 0, 4, None), "conn_table": ("lru_hash", 1 << 18, 0, None, None),
               "rev_nat": ("lru_hash", 1 << 18, 0, None, None), "lb_stats": ("percpu_array", 69, 0, 4, None),
               "ctl_array": ("array", 1, 0, 4, None)},
    "xdp_ratelimit": {"config": ("array", 1, 0, 4, 8), "buckets": ("lru_hash", 65536, 0, 4, 16),
                      "counters": ("percpu_array", 3, 0, 4, 8)},
    "tc_classifier": {"dscp_class": ("hash", 64, 0, 1, 20), "port_class": ("hash", 1024, 0, 4, 20),
                      "class_stats": ("percpu_array", 64, 0, 4, 8)},
    "bpf2bpf_loop": {"tlv_stats": ("array", 32, 0, 4, 16), "verdicts": ("array", 2, 0, 4, 8)},
    "legacy_maps": {"proto_count": ("percpu_array", 256, 0, 4, 8), "src_seen": ("hash", 4096, 1, 4, 8)},
    "global_data": {".rodata": ("array", 1, 0x480, 4, 8), ".data": ("array", 1, 0x400, 4, 16),
                    ".bss": ("array", 1, 0x400, 4, 24), ".rodata.cst16": ("array", 1, 0x480, 4, 16)},
}


@pytest.mark.parametrize("path", OBJECTS, ids=example_ids())
def test_maps_match_the_c_source(path: Path):
    stem = path.name.split(".")[0]
    expected = EXPECTED_MAPS.get(stem)
    if expected is None:
        pytest.skip("no maps declared")
    maps = {m.name: m for m in read_object(path).maps}
    assert set(expected) <= set(maps)
    for name, (type_name, max_entries, flags, key_size, value_size) in expected.items():
        m = maps[name]
        assert m.type_name == type_name, name
        assert max_entries is None or m.max_entries == max_entries, name
        assert m.flags == flags, name
        assert key_size is None or m.key_size == key_size, name
        assert value_size is None or m.value_size == value_size, name
        assert m.source == ("legacy" if stem == "legacy_maps" else "data" if name.startswith(".") else "btf")


def test_global_data_sections():
    obj = read_object(Path(__file__).parent.parent / "examples" / "obj" / "global_data.o")
    data = {d.name: d for d in obj.data}
    assert data[".data"].data[8:16] == b"bpforge\0"
    assert data[".data"].data[:8] == (100000).to_bytes(8, "little")
    assert data[".bss"].data == bytes(24) and not data[".bss"].readonly
    assert data[".rodata"].readonly and set(data[".rodata"].symbols) == {"enabled", "target_proto", "drop_one_in"}
    assert data[".rodata.cst16"].data == b"".join(v.to_bytes(4, "little") for v in (1, 2, 3, 5))
    relocs = [r for r in obj.sections[0].relocations.values()]
    assert {r.kind for r in relocs} == {"data"}
    by_symbol = {r.symbol: (r.target, r.offset) for r in relocs}
    assert by_symbol["drop_one_in"] == (".rodata", 4)
    assert by_symbol["packets_dropped"] == (".bss", 16)
    assert by_symbol[".rodata.cst16"] == (".rodata.cst16", 0)


def _kernel_maps(path: Path) -> list[dict]:
    pin, maps_dir = BPFFS / f"bpforge_elf_p_{uuid.uuid4().hex[:10]}", BPFFS / f"bpforge_elf_m_{uuid.uuid4().hex[:10]}"
    try:
        result = subprocess.run(["bpftool", "prog", "loadall", str(path), str(pin), "pinmaps", str(maps_dir)],
                                capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"libbpf does not load {path.name}: {result.stderr.strip().splitlines()[-1]}")
        if not maps_dir.exists():  # an object without maps
            return []
        return [json.loads(subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(f)], capture_output=True,
                                          text=True, check=True).stdout) for f in sorted(maps_dir.iterdir())]
    finally:
        subprocess.run(["rm", "-rf", str(pin), str(maps_dir)])


@pytest.mark.parametrize("path", OBJECTS, ids=example_ids())
def test_maps_match_the_kernel(path: Path, bpffs):  # noqa: F811
    ours = read_object(path).maps
    kernel = _kernel_maps(path)
    assert len(kernel) == len(ours)
    for km in kernel:
        name = km["name"]
        match = [m for m in ours if m.name[:15] == name or m.source == "data" and name.endswith(m.name)]
        assert len(match) == 1, name
        m = match[0]
        assert (m.type_name, m.key_size, m.value_size, m.max_entries, m.flags) == \
            (km["type"], km["bytes_key"], km["bytes_value"], km["max_entries"], km["flags"]), name


def test_features_object(features_object):  # noqa: F811
    obj = read_object(features_object)
    assert [(p.name, p.section) for p in obj.programs] == [("tail", "xdp"), ("main_prog", "xdp"), ("tc_prog", "tc")]
    assert sorted(p.name for p in obj.subprograms) == ["cb", "gsub", "sub1", "sub2"]
    assert {p.name: p.is_global for p in obj.subprograms} == {"cb": False, "gsub": True, "sub1": False, "sub2": False}
    maps = {m.name: m for m in obj.maps}
    assert (maps["counts"].key_size, maps["counts"].value_size) == (4, 8)  # key through typedef + const volatile
    assert (maps["odd"].key_size, maps["odd"].value_size, maps["odd"].flags) == (6, 8, 1)
    outer = maps["outer"]
    assert outer.type_name == "array_of_maps" and outer.values == {1: "in2"}
    assert outer.inner is not None and (outer.inner.type_name, outer.inner.max_entries) == ("array", 1)
    assert maps["jumps"].type_name == "prog_array" and maps["jumps"].values == {0: "tail"}
    assert (maps["jumps"].key_size, maps["jumps"].value_size) == (4, 4)
    main = obj.program("main_prog")
    kinds = sorted((r.kind, r.target) for r in main.relocations.values())
    assert kinds == [("call", "gsub"), ("call", "sub1"), ("data", ".bss"), ("data", ".rodata"), ("func", "cb"),
                     ("map", "jumps")]
    calls = {r.target: r for r in main.relocations.values() if r.kind in ("call", "func")}
    text = obj.section(".text")
    for name, reloc in calls.items():
        assert reloc.target_section == ".text" and text.functions[reloc.offset] == name
    assert calls["sub1"].symbol == ".text" and calls["gsub"].symbol == "gsub"  # section vs function symbol
    assert obj.btf_ext.core_relos["xdp"], "the CO-RE access is recorded"


def test_program_selection(features_object):  # noqa: F811
    obj = read_object(features_object)
    assert obj.program().name == "tail"
    assert obj.program("tc").name == "tc_prog"
    assert obj.program("tc_prog").section == "tc"
    assert obj.program("sub1").section == ".text"
    from bpforge.errors import ElfError

    with pytest.raises(ElfError, match="several programs.*tail, main_prog"):
        obj.program("xdp")
    with pytest.raises(ElfError, match="no program or section named 'nope'.*main_prog \\(xdp\\)") as err:
        obj.program("nope")
    assert err.value.where.file == str(features_object)


def test_only_text_object_offers_its_function():
    obj = read_object(Path(__file__).parent.parent / "examples" / "obj" / "asm_mem_sum.o")
    # libbpf (1.1) loads the only function of an object as its program, even in .text (prog_is_subprog)
    assert [p.name for p in obj.programs] == ["mem_sum"] and obj.subprograms == []
    assert obj.program().name == "mem_sum"


def test_linked_program_appends_called_subprograms(features_object):  # noqa: F811
    obj = read_object(features_object)
    linked = obj.linked("main_prog")
    # libbpf's order: depth-first, in order of first reference: cb (bpf_loop), then sub1 -> sub2, then gsub.
    assert list(linked.functions.values()) == ["main_prog", "cb", "sub1", "sub2", "gsub"]
    starts = slot_starts(linked.insns)
    index_of_slot = {s: i for i, s in enumerate(starts)}
    targets = []
    for i, insn in enumerate(linked.insns):
        if insn.form.name in ("call_local", "lddw_func"):
            target = starts[i] + 1 + insn.imm
            targets.append(linked.functions[index_of_slot[target]])
    assert sorted(targets) == ["cb", "gsub", "sub1", "sub2", "sub2"]
    assert {r.kind for _, r in linked.relocations} == {"map", "data"}
    for i, reloc in linked.relocations:
        assert linked.insns[i].form.kind == "lddw" and reloc.insn == i
    assert [linked.origins[i] for i in linked.functions] == [("xdp", 2), (".text", 3), (".text", 14),
                                                             (".text", 22), (".text", 0)]
    assert len(obj.linked("tail").insns) == 2


def test_linked_program_loads_in_the_kernel(features_object, bpffs):  # noqa: F811
    """A linked program without maps, loaded directly with BPF_PROG_LOAD: the calls are right."""
    from bpforge.kernel import prog_load
    import os

    obj = read_object(features_object)
    linked = obj.linked("tc_prog")
    assert list(linked.functions.values()) == ["tc_prog", "sub1", "sub2"] and not linked.relocations
    result = prog_load(encode(linked.insns), "sched_cls")
    assert result.accepted, result.log[-2000:]
    os.close(result.fd)


EXTERNS_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
extern void bpf_rcu_read_lock(void) __ksym;
extern int LINUX_KERNEL_VERSION __kconfig;
__u32 _version SEC("version") = 0x060c00;
SEC("xdp") int k(struct xdp_md *ctx) { bpf_rcu_read_lock(); return LINUX_KERNEL_VERSION > 5 ? XDP_PASS : XDP_DROP; }
char LICENSE[] SEC("license") = "Dual BSD/GPL";
"""


def test_externs_version_and_license(tmp_path: Path):
    obj = read_object(compile_c(EXTERNS_C, tmp_path, "externs"))
    assert obj.kernel_version == 0x060C00 and obj.license == "Dual BSD/GPL"
    relocs = sorted((r.type, r.kind, r.target) for r in obj.program("k").relocations.values())
    assert relocs == [("R_BPF_64_32", "extern", "bpf_rcu_read_lock"), ("R_BPF_64_64", "extern", "LINUX_KERNEL_VERSION")]
    assert obj.btf_bytes[:2] == b"\x9f\xeb" and obj.btf_ext_bytes[:2] == b"\x9f\xeb"
    assert {i for i, _ in obj.linked("k").relocations} == set(obj.program("k").relocations)
