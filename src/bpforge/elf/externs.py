"""Extern symbols resolved the way libbpf resolves them before loading (bpf_object__collect_externs and
bpf_object__resolve_externs): kfuncs and `__ksym` variables against the running kernel's BTF, typeless
ksyms against /proc/kallsyms, `.kconfig` variables from the kernel's configuration and version.

An extern is an undefined global/weak symbol of no type whose name has an extern BTF VAR or FUNC in the
object, in the `.ksyms` or `.kconfig` DATASEC. All of an object's externs are resolved together (the
`.kconfig` layout and "strong extern not resolved" errors are object-wide, as in libbpf):

- kfunc (FUNC in .ksyms): the kernel FUNC of that (essential) name whose prototype is compatible;
  `call` becomes a kfunc call (src_reg BPF_PSEUDO_KFUNC_CALL, imm = its BTF id, off = 0 for vmlinux);
  an lddw of it (bpf_ksym_exists) becomes an lddw of src_reg BPF_PSEUDO_BTF_ID;
- typed ksym (VAR of a type): the kernel VAR of that name, types compatible; lddw src_reg BPF_PSEUDO_BTF_ID;
- typeless ksym (`extern const void x __ksym`): its address in /proc/kallsyms, as a plain 64-bit constant;
- kconfig: LINUX_KERNEL_VERSION, LINUX_HAS_BPF_COOKIE, LINUX_HAS_SYSCALL_WRAPPER, CONFIG_* from
  /boot/config-$(uname -r) or /proc/config.gz; laid out in one read-only `.kconfig` array map (sorted by
  alignment, size, name) that the program reads through lddw map_value;
- a weak extern that does not resolve is 0 (kfunc call imm 0, address 0, kconfig value 0); a strong one
  fails the load.

The facts about the running kernel come through `HostKernel`, so the logic stays pure and testable.
"""

from __future__ import annotations

import gzip
import platform
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from ..errors import BpforgeError
from ..isa import Insn, slot_starts
from ..isa.numbers import M64, fits_signed
from .btf import FUNC_EXTERN, INT_BOOL, INT_SIGNED, VAR_GLOBAL_EXTERN, Btf, BtfType
from .core import CoreDecision, relocate_linked, types_are_compat
from .layout import SHN_UNDEF, STB_GLOBAL, STB_WEAK, STT_NOTYPE
from ..isa.maptypes import BPF_F_MMAPABLE, BPF_F_RDONLY_PROG, MapSpec
from .bpfobject import BpfObject
from .maps import BPF_MAP_TYPE_ARRAY
from .model import LinkedProgram
from .vmlinux import KernelBtf, essential_name, kernel_btf

KCONFIG_SEC, KSYMS_SEC = ".kconfig", ".ksyms"
TRI_NO, TRI_YES, TRI_MODULE = 0, 1, 2
_SYSCALL_PREFIX = {"x86_64": "__x64_", "aarch64": "__arm64_", "s390x": "__s390x_", "riscv64": "__riscv_",
                   "ppc64le": "", "loongarch64": ""}


class ExternError(BpforgeError):
    """An extern libbpf would refuse to resolve: the load fails."""


@dataclass(frozen=True)
class Extern:
    """One extern of the object. `type_id` is the local type behind modifiers (the FUNC's prototype for a
    kfunc; 0 for a typeless ksym)."""

    name: str
    section: str  # .kconfig or .ksyms
    btf_id: int  # the object's VAR or FUNC
    weak: bool
    is_func: bool
    type_id: int
    kcfg_type: str = ""  # bool, char, tristate, int, char_arr
    size: int = 0
    align: int = 0
    signed: bool = False
    data_off: int = 0


@dataclass(frozen=True)
class Resolved:
    """What an extern resolved to: `btf_id` in the kernel's BTF (kfuncs, typed ksyms), `addr` (typeless
    ksyms), both unset when a weak extern stayed unresolved."""

    extern: Extern
    is_set: bool
    btf_id: int = 0
    addr: int = 0


@dataclass
class HostKernel:
    """The running kernel as libbpf consults it. Each source is read only when an extern needs it."""

    # the kernel's BTF, given what needs it (for the error when it is missing)
    btf: Callable[[str], KernelBtf] = field(default=lambda needed_for: kernel_btf(needed_for=needed_for))
    kallsyms: Callable[[Iterable[str]], dict[str, list[int]]] = field(default=None)  # names -> addresses
    kconfig: Callable[[], str] = field(default=None)  # the configuration text
    release: str = field(default_factory=lambda: platform.release())
    machine: str = field(default_factory=lambda: platform.machine())

    def __post_init__(self) -> None:
        if self.kallsyms is None:
            self.kallsyms = read_kallsyms
        if self.kconfig is None:
            self.kconfig = lambda: read_kconfig(self.release)


@dataclass
class ExternResolution:
    """Every extern of an object and its resolution; `kconfig` is the `.kconfig` map's contents."""

    externs: dict[str, Resolved]
    kconfig: bytes | None

    def kconfig_map(self) -> MapSpec | None:
        """The `.kconfig` map libbpf creates (a frozen, read-only, mmapable one-element array)."""
        if self.kconfig is None:
            return None
        return MapSpec(name=KCONFIG_SEC, type=BPF_MAP_TYPE_ARRAY, key_size=4, value_size=len(self.kconfig),
                       max_entries=1, flags=BPF_F_RDONLY_PROG | BPF_F_MMAPABLE, source="data", section=KCONFIG_SEC,
                       initial=self.kconfig)


# ---- reading the host ------------------------------------------------------------------------------------

def read_kallsyms(names: Iterable[str], path: str = "/proc/kallsyms") -> dict[str, list[int]]:
    """Addresses of the wanted symbols in kallsyms (libbpf's kallsyms_cb: data symbols may carry an
    `.llvm.<hash>` suffix, which is cut)."""
    wanted = set(names)
    found: dict[str, list[int]] = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                name = parts[2]
                cut = name.find(".llvm.")
                if cut >= 0 and parts[1] == "d":
                    name = name[:cut]
                if name in wanted:
                    found.setdefault(name, []).append(int(parts[0], 16))
    except OSError as err:
        raise ExternError(f"cannot read {path} to resolve ksyms: {err.strerror or err}") from None
    return found


def read_kconfig(release: str) -> str:
    """The kernel configuration, from /boot/config-RELEASE or else /proc/config.gz (libbpf's order)."""
    for path in (f"/boot/config-{release}", "/proc/config.gz"):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if data[:2] == b"\x1f\x8b":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError) as err:
                raise ExternError(f"{path} is not a readable gzip file: {err}") from None
        return data.decode("utf-8", "replace")
    raise ExternError(f"CONFIG_ externs need the kernel configuration: neither /boot/config-{release} nor "
                      "/proc/config.gz can be read")


def kernel_version(release: str) -> int:
    """libbpf's get_kernel_version: KERNEL_VERSION(a, b, c) of "a.b.c..." (c capped at 255); Ubuntu's
    /proc/version_signature wins when present."""
    try:
        with open("/proc/version_signature") as f:
            match = re.match(r"\S+ \S+ (\d+)\.(\d+)\.(\d+)", f.read())
    except OSError:
        match = None
    match = match or re.match(r"(\d+)\.(\d+)\.(\d+)", release)
    if match is None:
        raise ExternError(f"cannot tell the kernel version from '{release}'")
    a, b, c = (int(x) for x in match.groups())
    return (a << 16) + (b << 8) + min(c, 255)


# ---- collecting ------------------------------------------------------------------------------------------

def collect_externs(obj: BpfObject) -> list[Extern]:
    """The object's externs in libbpf's order (kconfig before ksyms; kconfig by descending alignment,
    ascending size, name) with each kconfig variable's offset in the `.kconfig` map."""
    syms = [s for s in obj.symbols if s.shndx == SHN_UNDEF and s.bind in (STB_GLOBAL, STB_WEAK)
            and s.type == STT_NOTYPE and s.name]
    if not syms:
        return []
    btf = obj.btf
    if btf is None:
        raise ExternError(f"extern '{syms[0].name}' needs BTF, but the object has no .BTF", file=obj.filename)
    sections = _extern_sections(btf)
    externs = []
    for sym in syms:
        t = _extern_btf(btf, sym.name)
        if t is None:
            raise ExternError(f"failed to find BTF for extern '{sym.name}'", file=obj.filename)
        section = sections.get(t.id)
        if section not in (KCONFIG_SEC, KSYMS_SEC):
            raise ExternError(f"extern '{sym.name}' is in unsupported section '{section}'", file=obj.filename)
        weak = sym.bind == STB_WEAK
        if section == KCONFIG_SEC:
            if t.kind == "func":
                raise ExternError(f"extern function '{sym.name}' cannot be in {KCONFIG_SEC}", file=obj.filename)
            kcfg_type, signed = _kcfg_type(btf, t.type)
            if kcfg_type is None:
                raise ExternError(f"extern (kcfg) '{sym.name}': type is unsupported", file=obj.filename)
            externs.append(Extern(sym.name, section, t.id, weak, False, btf.skip_modifiers(t.type).id, kcfg_type,
                                  btf.size_of(t.type), btf.align_of(t.type), signed))
        else:
            type_id = btf.skip_modifiers(t.type).id
            externs.append(Extern(sym.name, section, t.id, weak, t.kind == "func", type_id))
    kcfg = sorted((e for e in externs if e.section == KCONFIG_SEC), key=lambda e: (-e.align, e.size, e.name))
    ksym = sorted((e for e in externs if e.section == KSYMS_SEC), key=lambda e: e.name)
    placed, off = [], 0
    for e in kcfg:
        data_off = -(-off // e.align) * e.align if e.align else off
        placed.append(replace(e, data_off=data_off))
        off = data_off + e.size
    return placed + ksym


def _extern_sections(btf: Btf) -> dict[int, str]:
    out = {}
    for t in btf.types:
        if t.kind == "datasec":
            for var in t.members:
                out[var.type] = t.name
    return out


def _extern_btf(btf: Btf, name: str) -> BtfType | None:
    """find_extern_btf_id: the extern VAR or FUNC of that name."""
    for t in btf.types:
        if t.name == name and ((t.kind == "var" and t.extra == VAR_GLOBAL_EXTERN) or
                               (t.kind == "func" and t.extra == FUNC_EXTERN)):
            return t
    return None


def _kcfg_type(btf: Btf, type_id: int) -> tuple[str | None, bool]:
    """find_kcfg_type: (kind of kconfig value, signed)."""
    t = btf.skip_modifiers(type_id)
    if t.kind == "int":
        enc = t.int_encoding
        if enc & INT_BOOL:
            return ("bool" if t.size == 1 else None), False
        if t.size == 1:
            return "char", bool(enc & INT_SIGNED)
        if t.size not in (2, 4, 8):
            return None, False
        return "int", bool(enc & INT_SIGNED)
    if t.kind in ("enum", "enum64"):
        if t.name != "libbpf_tristate" or (t.kind == "enum" and t.size != 4):
            return None, False
        return "tristate", False
    if t.kind == "array":
        if t.array[2] == 0 or _kcfg_type(btf, t.array[0])[0] != "char":
            return None, False
        return "char_arr", False
    return None, False


# ---- resolving -------------------------------------------------------------------------------------------

def resolve_externs(obj: BpfObject, host: HostKernel | None = None) -> ExternResolution:
    """Resolve every extern of `obj` against the running kernel (`host`). ExternError as libbpf fails."""
    externs = collect_externs(obj)
    if not externs:
        return ExternResolution({}, None)
    host = host or HostKernel()
    where = dict(file=obj.filename)
    out: dict[str, Resolved] = {}
    kcfg = [e for e in externs if e.section == KCONFIG_SEC]
    data = bytearray(max((e.data_off + e.size for e in kcfg), default=0))
    kcfg_set: set[str] = set()
    need_config = False
    for e in kcfg:
        if e.name == "LINUX_KERNEL_VERSION":
            _set_num(e, data, kernel_version(host.release))
            kcfg_set.add(e.name)
        elif e.name == "LINUX_HAS_BPF_COOKIE":
            _set_num(e, data, int(bool(host.kallsyms(["bpf_get_attach_cookie_trace"]))))
            kcfg_set.add(e.name)
        elif e.name == "LINUX_HAS_SYSCALL_WRAPPER":
            prefix = _SYSCALL_PREFIX.get(host.machine, "")
            _set_num(e, data, int(bool(prefix) and bool(host.kallsyms([prefix + "sys_bpf"]))))
            kcfg_set.add(e.name)
        elif e.name.startswith("LINUX_"):
            raise ExternError(f"extern (kcfg) '{e.name}': unrecognized virtual extern", **where)
        elif e.name.startswith("CONFIG_"):
            need_config = True
        else:
            raise ExternError(f"unrecognized extern '{e.name}'", **where)
    if need_config:
        kcfg_set |= _apply_kconfig(host.kconfig(), {e.name: e for e in kcfg if e.name.startswith("CONFIG_")}, data)
    for e in kcfg:
        if e.name not in kcfg_set and not e.weak:
            raise ExternError(f"extern '{e.name}' (strong): not resolved (no such kernel configuration value)",
                              **where)
        out[e.name] = Resolved(e, e.name in kcfg_set)
    ksyms = [e for e in externs if e.section == KSYMS_SEC]
    typeless = [e for e in ksyms if not e.is_func and e.type_id == 0]
    if typeless:
        found = host.kallsyms([e.name for e in typeless])
        for e in typeless:
            addrs = sorted(set(found.get(e.name, [])))
            if len(addrs) > 1:
                raise ExternError(f"extern (ksym) '{e.name}': resolution is ambiguous: "
                                  + " or ".join(f"{a:#x}" for a in addrs), **where)
            out[e.name] = Resolved(e, bool(addrs), addr=addrs[0] if addrs else 0)
    typed = [e for e in ksyms if e.is_func or e.type_id != 0]
    if typed:
        target = host.btf(f"extern '{typed[0].name}' ({'kfunc' if typed[0].is_func else 'ksym'})")
        for e in typed:
            out[e.name] = _resolve_btf_ksym(obj.btf, e, target, where)
    for name, res in out.items():
        if not res.is_set and not res.extern.weak:
            raise ExternError(f"extern '{name}' (strong): not resolved", **where)
    return ExternResolution(out, bytes(data) if kcfg else None)


def _resolve_btf_ksym(btf: Btf, e: Extern, target: KernelBtf, where: dict) -> Resolved:
    if e.is_func:
        kfunc = target.find("func", essential_name(e.name))
        if kfunc is None:
            if e.weak:
                return Resolved(e, False)
            raise ExternError(f"extern (func ksym) '{e.name}': not found in kernel or module BTFs", **where)
        if not types_are_compat(btf, e.type_id, target.btf, kfunc.type):
            if e.weak:
                return Resolved(e, False)
            raise ExternError(f"extern (func ksym) '{e.name}': func_proto [{e.type_id}] incompatible with "
                              f"{target.name} [{kfunc.type}]", **where)
        return Resolved(e, True, btf_id=kfunc.id)
    var = target.find("var", e.name)
    if var is None:
        if e.weak:
            return Resolved(e, False)
        raise ExternError(f"extern (var ksym) '{e.name}': not found in kernel BTF", **where)
    kernel_type = target.btf.skip_modifiers(var.type)
    if not types_are_compat(btf, e.type_id, target.btf, kernel_type.id):
        raise ExternError(f"extern (var ksym) '{e.name}': incompatible types, expected [{e.type_id}] "
                          f"{btf[e.type_id].kind} {btf[e.type_id].name}, but kernel has [{kernel_type.id}] "
                          f"{kernel_type.kind} {kernel_type.name}", **where)
    return Resolved(e, True, btf_id=var.id)


def _apply_kconfig(text: str, wanted: dict[str, Extern], data: bytearray) -> set[str]:
    """bpf_object__process_kconfig_line over the whole configuration: the names it set."""
    done: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("CONFIG_"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ExternError(f"failed to parse '{line}': no separator")
        if not value:
            raise ExternError(f"failed to parse '{line}': no value")
        e = wanted.get(name)
        if e is None or name in done:
            continue
        if value[0] in "ynm":
            _set_tristate(e, data, value[0])
        elif value[0] == '"':
            _set_str(e, data, value)
        else:
            try:
                num = int(value, 0) if not re.fullmatch(r"0[0-7]+", value) else int(value, 8)
            except ValueError:
                raise ExternError(f"extern (kcfg) '{name}': value '{value}' isn't a valid integer") from None
            if e.kcfg_type not in ("int", "char"):
                raise ExternError(f"extern (kcfg) '{name}': value '{value}' implies integer type")
            _set_num(e, data, num & M64)
        done.add(name)
    return done


def _set_tristate(e: Extern, data: bytearray, value: str) -> None:
    if e.kcfg_type == "bool":
        if value == "m":
            raise ExternError(f"extern (kcfg) '{e.name}': value '{value}' implies tristate or char type")
        data[e.data_off] = 1 if value == "y" else 0
    elif e.kcfg_type == "tristate":
        tri = {"y": TRI_YES, "m": TRI_MODULE}.get(value, TRI_NO)
        data[e.data_off:e.data_off + e.size] = tri.to_bytes(e.size, "little")
    elif e.kcfg_type == "char":
        data[e.data_off] = ord(value)
    else:
        raise ExternError(f"extern (kcfg) '{e.name}': value '{value}' implies bool, tristate, or char type")


def _set_str(e: Extern, data: bytearray, value: str) -> None:
    if e.kcfg_type != "char_arr":
        raise ExternError(f"extern (kcfg) '{e.name}': value '{value}' implies char array type")
    if len(value) < 2 or value[-1] != '"':
        raise ExternError(f"extern (kcfg) '{e.name}': invalid string config '{value}'")
    raw = value[1:-1].encode()[:e.size - 1]  # libbpf truncates a long string (and warns)
    data[e.data_off:e.data_off + e.size] = raw + bytes(e.size - len(raw))


def _set_num(e: Extern, data: bytearray, value: int) -> None:
    if e.kcfg_type not in ("int", "char") and not (e.kcfg_type == "bool" and value <= 1):
        raise ExternError(f"extern (kcfg) '{e.name}': value '{value}' implies integer, char, or boolean type")
    bits = e.size * 8
    fits = fits_signed(value, bits) if e.signed \
        else bits == 64 or value >> bits == 0
    if not fits:
        raise ExternError(f"extern (kcfg) '{e.name}': value '{value}' doesn't fit in {e.size} bytes")
    data[e.data_off:e.data_off + e.size] = (value & ((1 << bits) - 1)).to_bytes(e.size, "little")


# ---- applying to a program ---------------------------------------------------------------------------------

def apply_externs(obj: BpfObject, linked: LinkedProgram, resolution: ExternResolution
                  ) -> tuple[LinkedProgram, BpfObject]:
    """The program with its extern references patched as libbpf patches them (kconfig ones become global
    data references to `.kconfig` at the variable's offset), and the object with the `.kconfig` map among
    its maps when it has kconfig externs."""
    if not any(r.kind == "extern" for _, r in linked.relocations):
        return linked, _with_kconfig(obj, resolution)
    insns = list(linked.insns)
    relocations = []
    starts = slot_starts(insns)
    for index, reloc in linked.relocations:
        if reloc.kind != "extern":
            relocations.append((index, reloc))
            continue
        res = resolution.externs.get(reloc.target)
        where = dict(file=obj.filename, section=linked.section, insn=starts[index])
        if res is None:
            raise ExternError(f"'{reloc.target}' is not an extern of the object", **where)
        insn, e = insns[index], res.extern
        if insn.form.kind == "call":
            if not e.is_func:
                raise ExternError(f"call of extern '{e.name}', which is not a function", **where)
            insns[index] = Insn.make("call_kfunc", imm=res.btf_id if res.is_set else 0, off=0)
        elif insn.form.kind == "lddw":
            if e.section == KCONFIG_SEC:
                relocations.append((index, replace(reloc, kind="data", target=KCONFIG_SEC, offset=e.data_off,
                                                   target_section=KCONFIG_SEC)))
            elif res.is_set and (e.is_func or e.type_id):
                insns[index] = Insn.make("lddw_btf_id", dst=insn.dst, imm=res.btf_id, imm_hi=0)
            else:
                insns[index] = Insn.make("lddw", dst=insn.dst, imm64=res.addr)
        else:
            raise ExternError(f"extern '{e.name}' is referenced by a {insn.form.name}, which libbpf cannot patch",
                              **where)
    return replace(linked, insns=insns, relocations=relocations), _with_kconfig(obj, resolution)


def _with_kconfig(obj: BpfObject, resolution: ExternResolution) -> BpfObject:
    kmap = resolution.kconfig_map()
    if kmap is None or any(m.name == KCONFIG_SEC for m in obj.maps):
        return obj
    return replace(obj, maps=[*obj.maps, kmap])


@dataclass
class KernelView:
    """A linked program as libbpf would hand it to the running kernel: CO-RE applied, externs patched;
    `obj` has the `.kconfig` map when the object declares kconfig externs."""

    linked: LinkedProgram
    obj: BpfObject
    core: list[CoreDecision]
    externs: ExternResolution


def relocate_for_kernel(obj: BpfObject, linked: LinkedProgram, host: HostKernel | None = None) -> KernelView:
    """CO-RE relocations (against the kernel's BTF, read only if a relocation needs it) and extern
    resolution, in libbpf's order. Objects with neither come back unchanged."""
    host = host or HostKernel()
    core = relocate_linked(obj, linked, lambda: host.btf(f"the CO-RE relocations of program '{linked.name}'"))
    resolution = resolve_externs(obj, host)
    program, view = apply_externs(obj, core.program, resolution)
    return KernelView(program, view, core.decisions, resolution)


__all__ = ["Extern", "ExternError", "ExternResolution", "HostKernel", "KernelView", "KCONFIG_SEC", "KSYMS_SEC", "Resolved",
           "apply_externs", "collect_externs", "kernel_version", "read_kallsyms", "read_kconfig",
           "relocate_for_kernel", "resolve_externs"]
