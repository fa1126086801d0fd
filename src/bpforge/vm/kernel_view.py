"""An object's program as the VM runs it on behalf of the running kernel: CO-RE relocations applied and
externs resolved exactly as for the kernel engine (`elf.externs.relocate_for_kernel`), then what only the
VM needs: kfuncs checked against those it implements, kernel symbols it cannot provide refused, and the
layout of `struct bpf_map` when the program reads map fields through a map pointer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..elf.bpfobject import BpfObject
from ..elf.core import CoreDecision
from ..elf.externs import KCONFIG_SEC, HostKernel, relocate_for_kernel
from ..elf.model import LinkedProgram
from ..elf.vmlinux import KernelBtf, essential_name
from ..errors import BpforgeError
from ..isa import Insn, slot_starts
from ..isa.maptypes import MapSpec
from .kfuncs import check_kfuncs
from .maps import VmMap

# What an lddw of a kfunc's address (bpf_ksym_exists) gives in the VM: nonzero, and no memory there.
KFUNC_ADDRESS_BASE = 0xFFFF_FFFF_0000_0000


@dataclass(frozen=True)
class MapStructLayout:
    """The running kernel's `struct bpf_map`: its size and the (offset, size) of the fields the VM fills."""

    size: int
    fields: dict[str, tuple[int, int]]

    def render(self, vm_map: VmMap) -> bytearray:
        """The bytes of `struct bpf_map` for `vm_map`: type, sizes, max_entries, flags and map_extra as the
        map has them, every other byte zero."""
        buf = bytearray(self.size)
        values = {"map_type": vm_map.type, "key_size": vm_map.key_size, "value_size": vm_map.value_size,
                  "max_entries": vm_map.max_entries, "map_flags": vm_map.flags, "map_extra": vm_map.map_extra}
        for kernel_name, value in values.items():
            where = self.fields.get(kernel_name)
            if where is None:
                continue
            offset, size = where
            buf[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        return buf


@dataclass
class VmView:
    linked: LinkedProgram
    maps: list[MapSpec]  # maps the kernel view adds (.kconfig)
    map_layout: MapStructLayout | None
    core: list[CoreDecision]


def map_struct_layout(target: KernelBtf) -> MapStructLayout | None:
    t = target.find("struct", "bpf_map")
    if t is None:
        return None
    return MapStructLayout(t.size, target.struct_layout("bpf_map") or {})


def vm_view(obj: BpfObject, linked: LinkedProgram, host: HostKernel | None = None) -> VmView:
    """`linked` ready for the VM. BpforgeError for what libbpf refuses, for kfuncs the VM lacks and for
    kernel variables (typed ksyms), which have no memory in the VM."""
    host = host or HostKernel()
    view = relocate_for_kernel(obj, linked, host)
    program = view.linked
    where = dict(file=obj.filename, section=program.section)
    try:
        check_kfuncs(program.insns)
    except BpforgeError as err:
        raise err.at(**where) from None
    insns = list(program.insns)
    starts = slot_starts(insns)
    for i, insn in enumerate(insns):
        if insn.form.name != "lddw_btf_id":
            continue
        target = host.btf("kernel symbols")
        t = target[insn.imm] if 0 < insn.imm < len(target.btf.types) else None
        if t is None or t.kind != "func":
            name = t.name if t is not None else f"#{insn.imm}"
            raise BpforgeError(f"kernel variable '{name}' (a __ksym) has no memory in the VM; only the kernel "
                               "engine can run this program", insn=starts[i], **where)
        insns[i] = Insn.make("lddw", dst=insn.dst, imm64=KFUNC_ADDRESS_BASE | insn.imm)
    if insns != program.insns:
        program = replace(program, insns=insns)
    layout = None
    if any(d.target_id is not None and _is_bpf_map(host, d) for d in view.core):
        layout = map_struct_layout(host.btf("reading struct bpf_map fields"))
    extra = [m for m in view.obj.maps if m.name == KCONFIG_SEC]
    return VmView(program, extra, layout, view.core)


def _is_bpf_map(host: HostKernel, decision: CoreDecision) -> bool:
    """Whether a CO-RE relocation reads the kernel's struct bpf_map (or a struct that embeds it first, such
    as bpf_array: the program then reads through a map pointer)."""
    if not decision.kind.startswith(("byte_", "field_", "signed", "lshift", "rshift")):
        return False
    target = host.btf("reading struct bpf_map fields")
    t = target[decision.target_id]
    if t.kind != "struct":
        return False
    if essential_name(t.name) == "bpf_map":
        return True
    first = t.members[0] if t.members else None
    return first is not None and first.offset == 0 and target.btf.skip_modifiers(first.type).name == "bpf_map"


__all__ = ["KFUNC_ADDRESS_BASE", "MapStructLayout", "VmView", "map_struct_layout", "vm_view"]
