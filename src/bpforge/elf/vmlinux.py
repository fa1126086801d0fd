"""The running kernel's BTF (/sys/kernel/btf/vmlinux), read once per process and indexed by name.

It lives in `elf/`, not `kernel/`, on purpose: reading it is parsing a file in the format `elf.btf` already
parses (no bpf() involved), and both engines need it — the kernel engine for what libbpf resolves before
BPF_PROG_LOAD (CO-RE, kfuncs, ksyms), the VM because it emulates this same kernel (CO-RE offsets, the layout
of `struct bpf_map`, kfunc prototypes). `vm/` may import from `elf/` but not from `kernel/`.

The parse (about a second for 5 MB) is cached by path, modification time and size, so a suite or a
long-lived process pays it once and a replaced file is read again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import BpforgeError
from .btf import Btf, BtfType, parse_btf

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"


class KernelBtfMissing(BpforgeError):
    """The running kernel's BTF is needed but cannot be read."""


def essential_name(name: str) -> str:
    """A type or enumerator name without its `___flavor` suffix, as libbpf's bpf_core_essential_name_len
    cuts it: at the last `X___Y` where neither X nor Y is an underscore."""
    for i in range(len(name) - 5, -1, -1):
        if name[i] != "_" and name[i + 1:i + 4] == "___" and name[i + 4] != "_":
            return name[:i + 1]
    return name


@dataclass(eq=False)  # compared (and hashed, for caches keyed by it) by identity
class KernelBtf:
    """A target BTF with the lookups libbpf makes in it. `name` says where it came from ("vmlinux")."""

    btf: Btf
    name: str = "vmlinux"
    path: str | None = None
    _by_name: dict[str, list[int]] | None = field(default=None, repr=False)
    _by_essential: dict[str, list[int]] | None = field(default=None, repr=False)

    def __getitem__(self, type_id: int) -> BtfType:
        return self.btf[type_id]

    def ids_named(self, name: str) -> list[int]:
        """Type ids with exactly this name, in id order."""
        if self._by_name is None:
            table: dict[str, list[int]] = {}
            for t in self.btf.types:
                if t.name:
                    table.setdefault(t.name, []).append(t.id)
            self._by_name = table
        return self._by_name.get(name, [])

    def ids_with_essential_name(self, name: str) -> list[int]:
        """Type ids whose essential name (flavor suffix cut) is `name`, in id order (CO-RE candidates)."""
        if self._by_essential is None:
            table: dict[str, list[int]] = {}
            for t in self.btf.types:
                if t.name:
                    table.setdefault(essential_name(t.name), []).append(t.id)
            self._by_essential = table
        return self._by_essential.get(name, [])

    def find(self, kind: str, name: str) -> BtfType | None:
        """The first type of `kind` named `name` (libbpf's btf__find_by_name_kind)."""
        for type_id in self.ids_named(name):
            t = self.btf.types[type_id]
            if t.kind == kind:
                return t
        return None

    def struct_layout(self, name: str) -> dict[str, tuple[int, int]] | None:
        """Byte offset and size of each named (non-bitfield) member of `struct name`, or None when the
        struct is not there."""
        t = self.find("struct", name)
        if t is None:
            return None
        out = {}
        for m in t.members:
            if m.name and m.offset % 8 == 0:
                try:
                    out[m.name] = (m.offset // 8, self.btf.size_of(m.type))
                except BpforgeError:
                    continue
        return out


def kernel_btf(path: str = VMLINUX_BTF, *, needed_for: str = "this") -> KernelBtf:
    """The BTF at `path` (default: the running kernel's), parsed once per (path, mtime, size).
    KernelBtfMissing naming `needed_for` when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise KernelBtfMissing(f"{needed_for} needs the running kernel's BTF, but {path} cannot be read "
                               f"({err.strerror or err}); the kernel must be built with CONFIG_DEBUG_INFO_BTF")
    return _parsed(path, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=4)
def _parsed(path: str, mtime_ns: int, size: int) -> KernelBtf:  # noqa: ARG001 (the key, not the input)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise KernelBtfMissing(f"cannot read {path}: {err.strerror or err}") from None
    try:
        btf = parse_btf(data)
    except BpforgeError as err:
        raise KernelBtfMissing(f"{path} is not usable BTF: {err.message}") from None
    return KernelBtf(btf, "vmlinux" if path == VMLINUX_BTF else os.path.basename(path), path)


def object_btf_target(btf: Btf, name: str) -> KernelBtf:
    """Another BTF (an object's, a saved vmlinux) as a CO-RE target, like libbpf's btf_custom_path."""
    return KernelBtf(btf, name)


__all__ = ["KernelBtf", "KernelBtfMissing", "VMLINUX_BTF", "essential_name", "kernel_btf", "object_btf_target"]
