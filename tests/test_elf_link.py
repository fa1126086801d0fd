"""`BpfObject.linked()` against libbpf itself: the instructions libbpf 1.x hands to BPF_PROG_LOAD (read
back with bpf_program__insns() after bpf_object__load(), through ctypes) must equal ours, except where
libbpf writes what only it can know: map fds, data-map fds, kfunc BTF ids and CO-RE-adjusted fields."""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import pytest

from bpforge.elf import read_object
from bpforge.isa import decode
from test_elf_support import bpffs, example_ids, example_objects, features_object  # noqa: F401


@pytest.fixture(scope="module")
def libbpf(bpffs):  # noqa: F811
    try:
        lib = ctypes.CDLL("libbpf.so.1")
    except OSError:
        pytest.skip("libbpf.so.1 not installed")
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    for name, res, args in (("bpf_object__open_file", vp, [cp, vp]), ("libbpf_get_error", ctypes.c_long, [vp]),
                            ("bpf_object__load", ctypes.c_int, [vp]), ("bpf_object__close", None, [vp]),
                            ("bpf_object__find_program_by_name", vp, [vp, cp]), ("bpf_program__insns", vp, [vp]),
                            ("bpf_program__insn_cnt", ctypes.c_size_t, [vp]), ("libbpf_set_print", vp, [vp])):
        getattr(lib, name).restype, getattr(lib, name).argtypes = res, args
    lib.libbpf_set_print(None)  # libbpf would print its warnings on our stderr
    return lib


def _compare(lib, path: Path) -> int:
    obj = read_object(path)
    handle = lib.bpf_object__open_file(str(path).encode(), None)
    if not handle or lib.libbpf_get_error(handle):
        pytest.skip(f"libbpf cannot open {path.name}")
    try:
        if lib.bpf_object__load(handle):
            pytest.skip(f"libbpf does not load {path.name}")
        compared = 0
        core = {(sec, c.insn) for sec, records in (obj.btf_ext.core_relos.items() if obj.btf_ext else ())
                for c in records}
        for prog in obj.programs:
            handle_prog = lib.bpf_object__find_program_by_name(handle, prog.name.encode())
            count = lib.bpf_program__insn_cnt(handle_prog)
            theirs = decode(ctypes.string_at(lib.bpf_program__insns(handle_prog), count * 8))
            mine = obj.linked(prog)
            assert len(mine.insns) == len(theirs), prog.name
            relocs = dict(mine.relocations)
            for i, (a, b) in enumerate(zip(theirs, mine.insns)):
                reloc = relocs.get(i)
                if reloc is not None and reloc.kind == "map":
                    assert a.form.name == "lddw_map_fd" and b.form.kind == "lddw", (prog.name, i)
                elif reloc is not None and reloc.kind == "data":
                    assert a.form.name == "lddw_map_value" and a.imm_hi == reloc.offset, (prog.name, i)
                elif reloc is None and mine.origins[i] not in core:
                    assert a == b, (prog.name, i, str(a), str(b))
            compared += 1
        return compared
    finally:
        lib.bpf_object__close(handle)


@pytest.mark.parametrize("path", example_objects(), ids=example_ids())
def test_linked_equals_what_libbpf_loads(libbpf, path: Path):
    if path.name.startswith("legacy_maps"):
        pytest.skip("libbpf >= 1.0 refuses legacy maps sections")
    if not read_object(path).programs:
        pytest.skip("no programs (only .text)")
    assert _compare(libbpf, path) >= 1


def test_linked_features_equal_libbpf(libbpf, features_object):  # noqa: F811
    assert _compare(libbpf, features_object) == 3


@pytest.mark.parametrize("name", ["features", "bpf2bpf_loop.o", "bpf2bpf_loop.v4.o", "global_data.o"])
def test_linked_of_an_edited_object_equals_libbpf(libbpf, features_object, tmp_path: Path, name: str):  # noqa: F811
    """After no-ops were inserted everywhere (calls across sections fixed by the writer), libbpf links the
    rewritten object exactly as we do."""
    from bpforge.elf import insert_insns, write_object
    from bpforge.isa import Insn

    path = features_object if name == "features" else Path(__file__).parent.parent / "examples" / "obj" / name
    obj = read_object(path)
    nop = Insn.make("ja", off=0)
    edits = {s.name: insert_insns(s, {k: [nop] for k in range(0, len(s.insns), 2)}) for s in obj.sections}
    out = tmp_path / "edited.o"
    out.write_bytes(write_object(obj, edits))
    assert _compare(libbpf, out) == len(obj.programs)
