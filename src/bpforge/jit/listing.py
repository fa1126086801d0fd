"""An image's native code disassembled (capstone) and interleaved with the BPF instruction each part
came from; the image's own code (entry points, epilogue, the call-back dispatch) listed apart."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..errors import BpforgeError
from ..isa import Insn, slot_starts
from . import abi
from .image import Image

# (architecture, mode) by capstone constant names; the first one this capstone has (5.x calls arm64
# CS_ARCH_ARM64, 6.x CS_ARCH_AARCH64)
_CAPSTONE_ARCH = {"x86_64": [("CS_ARCH_X86", "CS_MODE_64")],
                  "arm64": [("CS_ARCH_ARM64", "CS_MODE_ARM"), ("CS_ARCH_AARCH64", "CS_MODE_ARM")],
                  "riscv64": [("CS_ARCH_RISCV", "CS_MODE_RISCV64")]}


@dataclass
class NativeInsn:
    offset: int
    data: bytes
    text: str
    mnemonic: str = ""
    operands: str = ""  # capstone's op_str


@dataclass
class JitListing:
    image: Image
    mode: str  # "verified" or "sandbox"
    bpf: dict[int, str]  # slot -> BPF instruction text
    native: dict[int, list[NativeInsn]] = field(default_factory=dict)  # slot (-1: the image's own) -> code

    @property
    def native_per_bpf(self) -> float:
        counted = [len(v) for slot, v in self.native.items() if slot >= 0]
        return sum(counted) / max(len(self.bpf), 1)

    def text(self) -> str:
        img = self.image
        lines = [f"{img.name or 'program'}: {img.arch}, {len(img.code)} bytes of code for {len(self.bpf)} BPF "
                 f"instructions ({self.native_per_bpf:.2f} native instructions each), {self.mode}",
                 f"entry {img.entry:#x}, call_function {img.call_function:#x}, repeat {img.repeat:#x}"]
        for slot in sorted(self.native):
            if slot < 0:
                continue
            if slot in img.functions:
                lines.append(f"<function at slot {slot}> {img.functions[slot]:#x}:")
            lines.append(f"{slot:>6}: {self.bpf.get(slot, '?')}")
            lines += [f"        {n.offset:6x}:  {n.data.hex():<22} {n.text}" for n in self.native[slot]]
        lines.append("<image: entry points, epilogue, dispatch>:")
        lines += [f"        {n.offset:6x}:  {n.data.hex():<22} {n.text}" for n in self.native.get(-1, [])]
        return "\n".join(lines)

    def as_json(self) -> dict:
        img = self.image
        return {"arch": img.arch, "name": img.name, "mode": self.mode, "code_bytes": len(img.code),
                "bpf_insns": len(self.bpf), "native_per_bpf": round(self.native_per_bpf, 3),
                "entry": img.entry, "call_function": img.call_function, "repeat": img.repeat,
                "functions": {str(k): v for k, v in img.functions.items()},
                "insns": [{"slot": slot, "bpf": self.bpf.get(slot),
                           "native": [{"offset": n.offset, "bytes": n.data.hex(), "asm": n.text} for n in code]}
                          for slot, code in sorted(self.native.items())],
                "relocations": img.relocations(), "control_block": control_block_layout()}


def control_block_layout() -> dict:
    """The control block as a loader must lay it out (byte offsets)."""
    names = ("STATUS", "R0", "SLOT", "SAVED_SP", "DEPTH", "MAY_GOTO", "EXPIRED", "EXECUTED", "BUDGET", "LIMIT",
             "CALLBACK", "TAIL_TARGET", "TAIL_CALLS", "ERROR", "R1_IN", "R2_IN", "VALUE", "NREGIONS", "ARGS",
             "STACK_TOP", "PKT_DATA", "PKT_LEN", "CELLS", "DELTA", "LO", "HI", "FLAGS", "SIZE")
    return {name.lower(): getattr(abi, name) for name in names}


def disassemble(image: Image) -> list[NativeInsn]:
    out = disassemble_code(image.code, image.arch)
    if sum(len(n.data) for n in out) != len(image.code):
        raise BpforgeError(f"capstone could not decode all of the {image.arch} image (a JIT bug)")
    return out


def disassemble_code(code: bytes, arch: str) -> list[NativeInsn]:
    """`code` for `arch` (x86_64, arm64, riscv64) disassembled by capstone from offset 0; it stops where
    capstone meets bytes it cannot decode (the caller compares the lengths)."""
    try:
        import capstone
    except ImportError:
        raise BpforgeError("listing native code needs capstone (pip install 'bpforge[jit]')") from None
    if arch not in _CAPSTONE_ARCH:
        raise BpforgeError(f"unknown architecture {arch!r} (known: {', '.join(_CAPSTONE_ARCH)})")
    found = [(a, m) for a, m in _CAPSTONE_ARCH[arch] if hasattr(capstone, a) and hasattr(capstone, m)]
    if not found:
        raise BpforgeError(f"this capstone ({capstone.__version__}) cannot disassemble {arch}")
    arch_id, mode = found[0]
    md = capstone.Cs(getattr(capstone, arch_id), getattr(capstone, mode))
    return [NativeInsn(i.address, bytes(i.bytes), f"{i.mnemonic} {i.op_str}".strip(), i.mnemonic, i.op_str)
            for i in md.disasm(code, 0)]


def listing(image: Image, insns: list[Insn], mode: str) -> JitListing:
    bpf = {slot: str(insn) for insn, slot in zip(insns, slot_starts(insns))}
    result = JitListing(image, mode, bpf)
    for native in disassemble(image):
        result.native.setdefault(image.slot_at(native.offset), []).append(native)
    return result


def write_image(image: Image, path: str, mode: str) -> None:
    """The code as raw bytes at `path`, and beside it `path`.json: entry points, functions, the slot of
    every byte range, what a loader fills in and the control block's layout."""
    with open(path, "wb") as out:
        out.write(image.code)
    meta = {"arch": image.arch, "name": image.name, "mode": mode, "entry": image.entry,
            "call_function": image.call_function, "repeat": image.repeat,
            "functions": {str(k): v for k, v in image.functions.items()},
            "origins": [{"offset": o, "length": n, "slot": s} for o, n, s in image.origins],
            "relocations": image.relocations(), "control_block": control_block_layout()}
    with open(path + ".json", "w") as out:
        json.dump(meta, out, indent=1)
