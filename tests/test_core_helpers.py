"""Helpers shared by the CO-RE, kfunc and arena tests (C programs compiled with clang-19 in the test, run in
the kernel and both VM tiers), and tests of the small pieces they rest on."""

from __future__ import annotations

import platform
import struct
import subprocess
from pathlib import Path

import pytest

from bpforge.elf.reader import read_object
from bpforge.elf.vmlinux import KernelBtfMissing, essential_name, kernel_btf

from conftest import tool

HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
"""


def build(tmp_path: Path, source: str, name: str = "prog"):
    """Compile `source` (HEADER prepended) with clang-19 and read the object."""
    clang = tool("clang-19")
    src = tmp_path / f"{name}.c"
    src.write_text(HEADER + source)
    obj = tmp_path / f"{name}.o"
    include = f"-I/usr/include/{platform.machine()}-linux-gnu"
    done = subprocess.run([clang, "-O2", "-g", "-target", "bpf", include, "-c", str(src), "-o", str(obj)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return read_object(obj)


def vmlinux():
    """The running kernel's BTF, or skip."""
    try:
        return kernel_btf()
    except KernelBtfMissing as err:
        pytest.skip(err.message)


def words(raw: bytes) -> tuple[int, ...]:
    return struct.unpack(f"<{len(raw) // 8}Q", raw)


def run_vm(obj, data: bytes, tier: str, prog_type: str = "xdp", section: str | None = None):
    """(retval, .bss as u64 words) of one run in a VM tier."""
    from bpforge.vm import Machine, from_object, run_fast

    program = from_object(obj, section)
    machine = Machine(program)
    result = machine.run(data, prog_type) if tier == "interp" else run_fast(machine, data, prog_type)
    bss = program.map(".bss").lookup(bytes(4)) if ".bss" in program.map_names else b""
    return result.retval, words(bss)


def run_kernel(obj, data: bytes, section: str | None = None, prog_type: str | None = None):
    """(retval, .bss as u64 words) of one BPF_PROG_TEST_RUN."""
    from bpforge.kernel.program import load_linked

    with load_linked(obj.linked(section), obj, prog_type=prog_type) as prog:
        result = prog.test_run(data)
        bss = prog.maps[".bss"].lookup(bytes(4)) if ".bss" in prog.maps else b""
        return result.retval, words(bss)


def run_everywhere(obj, data: bytes, kernel, section: str | None = None, prog_type: str = "xdp"):
    """The same run in the kernel, the interpreter and the fast tier: all three must agree."""
    results = {"kernel": run_kernel(obj, data, section, prog_type),
               "interp": run_vm(obj, data, "interp", prog_type, section),
               "fast": run_vm(obj, data, "fast", prog_type, section)}
    assert results["interp"] == results["kernel"], results
    assert results["fast"] == results["kernel"], results
    return results["kernel"]


# ---- the pieces --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, essential", [
    ("task_struct", "task_struct"), ("task_struct___v2", "task_struct"), ("a___b___c", "a___b"),
    ("x____y", "x____y"), ("___x", "___x"), ("x___", "x___"), ("x___y", "x"), ("", ""),
])
def test_essential_names_cut_flavors_as_libbpf(name, essential):
    assert essential_name(name) == essential


def test_vmlinux_btf_is_parsed_once_and_indexed():
    first = vmlinux()
    assert kernel_btf() is first  # cached by path, mtime and size
    skb = first.find("struct", "sk_buff")
    assert skb is not None and skb.size > 100
    assert "len" in first.struct_layout("sk_buff")
    assert first.find("func", "bpf_iter_num_new") is not None


def test_missing_kernel_btf_names_what_needed_it(tmp_path):
    with pytest.raises(KernelBtfMissing, match="the thing under test needs the running kernel's BTF"):
        kernel_btf(str(tmp_path / "nothing"), needed_for="the thing under test")
