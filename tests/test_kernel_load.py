"""Loading programs into the kernel: every loadable example object, map and global-data relocation, BTF,
raw instruction lists with the map-reference convention, and verifier rejections as results."""

from __future__ import annotations

import dataclasses
import errno
import os
import struct

import pytest
from conftest import EXAMPLE_OBJECTS, EXAMPLES
from test_kernel_packets import no_leaked_fds  # noqa: F401  (an autouse fixture)

from bpforge.elf import Reloc, read_object
from bpforge.errors import BpforgeError
from bpforge.isa import Insn
from bpforge.isa.maptypes import MapError
from bpforge.isa.opcodes import PSEUDO_MAP_FD, PSEUDO_MAP_VALUE
from bpforge.isa.progtypes import prog_type_of_section

LOADABLE = [p for p in EXAMPLE_OBJECTS if not p.name.startswith("asm_mem")]


def obj(name: str):
    path = EXAMPLES / "obj" / name
    return read_object(path.read_bytes(), filename=str(path))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("path", LOADABLE, ids=lambda p: p.name)
def test_every_example_program_loads(kernel, path):
    o = read_object(path.read_bytes(), filename=str(path))
    before = open_fds()
    for prog in o.programs:
        linked = o.linked(prog)
        with kernel.load_linked(linked, o, prog_type=prog_type_of_section(prog.section)) as loaded:
            assert loaded.fd >= 0 and loaded.verdict.accepted
            assert loaded.verdict.processed_insns and loaded.verdict.processed_insns > 0
            referenced = {r.target for _, r in linked.relocations}
            assert set(loaded.maps) == referenced
            assert all(not m.closed for m in loaded.maps.values())
        assert loaded.fd == -1 and all(m.closed for m in loaded.maps.values())
    assert open_fds() == before


def test_map_and_data_relocations_are_resolved_as_libbpf_does(kernel):
    o = obj("global_data.o")
    linked = o.linked()
    with kernel.load_linked(linked, o, prog_type="xdp") as prog:
        for index, reloc in linked.relocations:
            insn, kmap = prog.insns[index], prog.maps[reloc.target]
            assert insn.src == PSEUDO_MAP_VALUE and insn.imm == kmap.fd and insn.imm_hi == reloc.offset
        assert prog.maps[".rodata"].frozen and not prog.maps[".data"].frozen
        assert prog.maps[".data"].lookup(bytes(4)) == struct.pack("<q", 100000) + b"bpforge\0"
        assert prog.maps[".bss"].lookup(bytes(4)) == bytes(24)
    o = obj("xdp_counter.o")
    linked = o.linked()
    with kernel.load_linked(linked, o, prog_type="xdp") as prog:
        for index, reloc in linked.relocations:
            insn = prog.insns[index]
            assert insn.src == PSEUDO_MAP_FD and insn.imm == prog.maps[reloc.target].fd and insn.imm_hi == 0


def test_given_maps_are_used_and_stay_open(kernel):
    o = obj("xdp_counter.o")
    size_hist = next(m for m in o.maps if m.name == "size_hist")
    with kernel.KernelMap.create(size_hist) as mine:
        with kernel.load_linked(o.linked(), o, prog_type="xdp", maps={"size_hist": mine}) as prog:
            assert prog.maps["size_hist"] is mine
            assert prog.maps["class_stats"] is not mine
        assert not mine.closed


def test_max_entries_shrinks_named_maps(kernel):
    o = obj("xdp_lb.o")
    with kernel.load_linked(o.linked(), o, prog_type="xdp",
                             max_entries={"conn_table": 256, "rev_nat": 256}) as prog:
        assert prog.maps["conn_table"].max_entries == 256 and prog.maps["vip_map"].max_entries == 512


def test_btf_makes_global_functions_verifiable(kernel):
    # With func_info the kernel verifies payload_offset/value_sum/sample_stats once each; without it every
    # call is verified inline and the program exceeds the verifier's 1M instruction budget.
    o = obj("bpf2bpf_loop.o")
    with kernel.load_linked(o.linked(), o, prog_type="xdp") as prog:
        assert prog.verdict.btf and prog.verdict.btf_error is None
    # (no log and no second, logged load to explain: hitting the budget takes the verifier seconds)
    verdict = kernel.verify_linked(o.linked(), o, prog_type="xdp", btf=False, log_level=0, explain=False)
    assert not verdict.accepted and not verdict.btf
    assert verdict.errno == errno.E2BIG and verdict.log == "" and verdict.message.startswith("E2BIG")


def test_func_info_the_kernel_refuses_is_left_out(kernel, monkeypatch):
    from bpforge.kernel import program

    def bogus(obj, linked):  # a func_info record naming a type that is not a FUNC
        prog_btf = real(obj, linked)
        prog_btf.func_info = struct.pack("<II", 0, 1)
        return prog_btf

    real = program.program_btf
    monkeypatch.setattr(program, "program_btf", bogus)
    o = obj("xdp_counter.o")
    with kernel.load_linked(o.linked(), o) as prog:  # prog_type from the section name
        assert prog.prog_type == "xdp" and not prog.verdict.btf
        assert prog.verdict.btf_error == "invalid type id 1 in func info"


def test_btf_line_info_reaches_the_log(kernel):
    o = obj("xdp_counter.o")
    linked = o.linked()
    broken = list(linked.insns)
    broken[1] = Insn.make("ldx8", dst=0, src=2, off=0)  # r2 was never set
    bad = dataclasses.replace(linked, insns=broken)
    verdict = kernel.verify_linked(bad, o, prog_type="xdp")
    assert not verdict.accepted and verdict.btf
    assert (verdict.message, verdict.slot) == ("R2 !read_ok", 1)
    assert "@ xdp_counter.c:" in verdict.log  # the C source line of each traced instruction


def test_verifier_rejection_is_a_verdict_with_the_log(kernel):
    # r2 = ctx->data; r0 = *(u8 *)(r2 + 0); exit -- a packet read without a bounds check
    insns = [Insn.make("ldx32", dst=2, src=1, off=0), Insn.make("ldx8", dst=0, src=2, off=0), Insn.make("exit")]
    with pytest.raises(kernel.VerifierRejected) as info:
        kernel.load_insns(insns, "xdp")
    verdict = info.value.verdict
    assert not verdict.accepted and verdict.errno == errno.EACCES
    assert "outside of the packet" in verdict.message
    assert verdict.slot == 1 and verdict.insn == 1
    assert "invalid access to packet" in verdict.log
    assert info.value.where.insn == 1 and "verifier rejects" in str(info.value)
    # the same as a plain result, and with the fast no-log path asking again for the explanation
    quiet = kernel.verify_insns(insns, "xdp", log_level=0)
    assert (quiet.accepted, quiet.slot, quiet.message) == (False, 1, verdict.message)
    assert kernel.verify_insns([Insn.make("mov64_imm", dst=0, imm=2), Insn.make("exit")], "xdp").accepted


def test_a_log_too_long_for_its_buffer_keeps_its_end(kernel):
    # The kernel fails even a good load when the log overflows (ENOSPC); bpforge keeps the end of the log,
    # where the complaint is, and takes the verdict from a second, log-less load.
    insns = [Insn.make("ldx32", dst=2, src=1, off=0), Insn.make("ldx8", dst=0, src=2, off=0), Insn.make("exit")]
    verdict = kernel.verify_insns(insns, "xdp", log_size=200)
    assert verdict.log_truncated and verdict.errno == errno.EACCES
    assert "outside of the packet" in verdict.message and len(verdict.log) < 200
    with kernel.load_insns([Insn.make("mov64_imm", dst=0, imm=2), Insn.make("exit")], "xdp", log_level=2,
                           log_size=128) as prog:
        assert prog.verdict.accepted and prog.verdict.log_truncated


def test_rejection_without_an_instruction(kernel):
    verdict = kernel.verify_insns([Insn.make("mov64_imm", dst=0, imm=2)], "xdp")
    assert not verdict.accepted and verdict.slot is None and verdict.insn is None
    assert "last insn is not an exit or jmp" in verdict.message


def test_instruction_index_counts_lddw_once(kernel):
    insns = [Insn.make("lddw", dst=3, imm64=1 << 40), Insn.make("ldx32", dst=2, src=1, off=0),
             Insn.make("ldx8", dst=0, src=2, off=0), Insn.make("exit")]
    verdict = kernel.verify_insns(insns, "xdp")
    assert (verdict.slot, verdict.insn) == (3, 2)


def test_load_insns_map_convention(kernel):
    # imm of lddw_map_fd / lddw_map_value = a key into `maps`; map_idx goes through fd_array.
    from bpforge.isa.maptypes import MapSpec

    prog = [
        Insn.make("st32", dst=10, off=-4, imm=1),            # key = 1
        Insn.make("mov64_reg", dst=2, src=10), Insn.make("add64_imm", dst=2, imm=-4),
        Insn.make("lddw_map_fd", dst=1, imm=7),              # map "7"
        Insn.make("call", imm=1),                            # map_lookup_elem
        Insn.make("jeq_imm", dst=0, imm=0, off=1),
        Insn.make("st64", dst=0, off=0, imm=99),
        Insn.make("lddw_map_value", dst=3, imm=3, imm_hi=8),  # &global[0] + 8 (single-element arrays only)
        Insn.make("st64", dst=3, off=0, imm=55),
        Insn.make("mov64_imm", dst=0, imm=2), Insn.make("exit"),
    ]
    with kernel.KernelMap.create(MapSpec("cells", 2, 4, 8, 4)) as cells, \
            kernel.KernelMap.create(MapSpec("global", 2, 4, 16, 1)) as glob:
        with kernel.load_insns(prog, "xdp", maps={7: cells, 3: glob}) as loaded:
            assert loaded.insns[3].imm == cells.fd and loaded.insns[7].imm == glob.fd
            assert loaded.maps == {"cells": cells, "global": glob}
            assert kernel.test_run(loaded, bytes(64)).retval == 2
        assert cells.lookup(struct.pack("<I", 1)) == struct.pack("<Q", 99)
        assert glob.lookup(bytes(4)) == bytes(8) + struct.pack("<Q", 55)
        by_index = prog[:3] + [Insn.make("lddw_map_idx", dst=1, imm=0)] + prog[4:7] + prog[9:]
        with kernel.load_insns(by_index, "xdp", maps=[cells]) as loaded:
            assert loaded.insns[3].imm == 0  # the kernel resolves the index through fd_array
            assert kernel.test_run(loaded, bytes(64)).retval == 2
        with pytest.raises(BpforgeError, match="refers to map 7"):
            kernel.load_insns(prog, "xdp", maps=[cells])
        with pytest.raises(BpforgeError, match="none given"):
            kernel.load_insns(prog, "xdp")
        assert not cells.closed and not glob.closed  # the caller's maps


def test_extern_relocation_is_a_clear_error(kernel):
    o = obj("xdp_counter.o")
    linked = o.linked()
    index, _ = linked.relocations[0]
    ext = Reloc(index, "R_BPF_64_64", "bpf_some_kfunc", "extern", "bpf_some_kfunc")
    with pytest.raises(BpforgeError, match="extern") as info:
        kernel.load_linked(dataclasses.replace(linked, relocations=[(index, ext)]), o, prog_type="xdp")
    assert info.value.where.section == "xdp"


def test_object_maps_need_the_object(kernel):
    o = obj("xdp_counter.o")
    with pytest.raises(BpforgeError, match="pass the object"):
        kernel.load_linked(o.linked(), None, prog_type="xdp")


def test_map_creation_failure_closes_what_was_made(kernel):
    o = obj("xdp_counter.o")
    bad = [dataclasses.replace(m, max_entries=0) if m.name == "size_hist" else m for m in o.maps]
    o2 = dataclasses.replace(o, maps=bad)
    before = open_fds()
    with pytest.raises(MapError):
        kernel.load_linked(o2.linked(), o2, prog_type="xdp")
    assert open_fds() == before


def test_loader_output_loads(kernel):
    from bpforge.formats.loader import load_program as read

    with kernel.load_loaded(read(EXAMPLES / "obj" / "tc_classifier.o")) as prog:
        assert prog.prog_type == "sched_cls" and set(prog.maps) == {"port_class", "dscp_class", "class_stats"}
    with kernel.load_loaded(read(EXAMPLES / "asm" / "xdp_pass.s")) as prog:
        assert prog.prog_type == "xdp" and prog.maps == {}


def test_mem_type_is_not_a_kernel_type(kernel):
    with pytest.raises(BpforgeError, match="only outside the kernel"):
        kernel.load_insns([Insn.make("mov64_imm", dst=0, imm=0), Insn.make("exit")], "mem")
