"""What section names mean to a BPF loader (libbpf's bpf_object__elf_collect, iproute2, cilium/ebpf): the one
place that says which sections hold maps, global data or metadata, and so which names code must not take."""

from __future__ import annotations

BTF_MAP_SECTION = ".maps"
LEGACY_MAP_SECTION = "maps"


def is_data_section(name: str) -> bool:
    """Sections libbpf turns into global data maps (.data, .rodata, .bss and their .NAME variants)."""
    return any(name == base or name.startswith(base + ".") for base in (".data", ".rodata", ".bss"))


def is_legacy_map_section(name: str) -> bool:
    """Sections of legacy map definitions: `maps` (libbpf before 1.0, iproute2, samples/bpf) and `maps/NAME`
    (one definition per section, as gobpf, cilium/ebpf and aya read them)."""
    return name == LEGACY_MAP_SECTION or name.startswith(LEGACY_MAP_SECTION + "/")


def is_map_section(name: str) -> bool:
    return name == BTF_MAP_SECTION or is_legacy_map_section(name)


ARENA_SECTION = ".addr_space.1"  # libbpf's ARENA_SEC: the variables declared __arena (address space 1)

# Names a loader reads for what they are, whatever their flags: code under one of them would be misread.
_METADATA = {
    ".BTF": "BTF type information", ".BTF.ext": "BTF function and line information", "license": "the license",
    "version": "the kernel version", ".symtab": "the symbol table", ".strtab": "the string table",
    ".shstrtab": "the section name table", ".kconfig": "kconfig externs", ".ksyms": "ksym externs",
    ".struct_ops": "struct_ops maps", ".struct_ops.link": "struct_ops maps", ARENA_SECTION: "arena globals",
    ".llvm_addrsig": "LLVM's address-significance table",
}


def reserved_section_reason(name: str) -> str | None:
    """Why a section of code cannot be called `name` (what a loader would take it for), or None if it can."""
    if not name:
        return "a section needs a name"
    if "\0" in name:
        return "a section name cannot hold a NUL byte"
    if name in _METADATA:
        return f"'{name}' is the section of {_METADATA[name]}"
    if is_map_section(name):
        return f"'{name}' is a section of map definitions"
    if is_data_section(name):
        return f"'{name}' is a global data section"
    if name.startswith(".rel"):
        return f"'{name}' is the name of a relocation section"
    if name.startswith(".debug_"):
        return f"'{name}' is a DWARF section, which loaders skip"
    return None


__all__ = ["BTF_MAP_SECTION", "LEGACY_MAP_SECTION", "is_data_section", "is_legacy_map_section", "is_map_section",
           "reserved_section_reason"]
