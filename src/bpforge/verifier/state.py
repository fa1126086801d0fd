"""A verifier state: the frames of the call chain, each with its registers and its stack, as the kernel's
`struct bpf_verifier_state` holds them. States are copied when a path forks and compared when paths meet.

The stack of a frame is 512 bytes, each of one type (`STACK_INVALID`, `STACK_MISC`, `STACK_ZERO`,
`STACK_SPILL`) as the kernel's `slot_type`, with the register spilled into each 8-byte slot that holds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .regs import NOT_INIT, Reg

STACK_SIZE = 512
SLOT = 8
INVALID, MISC, ZERO, SPILL = 0, 1, 2, 3
TYPE_NAMES = {INVALID: "?", MISC: "m", ZERO: "0", SPILL: "r"}


@dataclass
class Frame:
    regs: list[Reg]
    types: bytearray = field(default_factory=lambda: bytearray(STACK_SIZE))  # index i: byte at fp - 512 + i
    spilled: dict[int, Reg] = field(default_factory=dict)  # slot index (byte index // 8) -> the register
    callsite: int = -1  # the slot of the call that made this frame (-1: the program's)
    function: int = 0  # the slot where this frame's function starts
    callback: bool = False  # a callback a helper calls (bpf_loop): it returns to the helper's call
    callback_depth: int = 0  # how many times the callbacks of the helper this frame is calling returned

    def forget_spills(self, start: int, size: int) -> None:
        """A write of `size` bytes at byte `start` overlaps the 8-byte slots it touches: a register spilled
        there is gone, and what is left of it is plain bytes."""
        for s in range(start // SLOT, (start + size - 1) // SLOT + 1):
            if self.spilled.pop(s, None) is not None:
                chunk = self.types[s * SLOT:(s + 1) * SLOT]
                self.types[s * SLOT:(s + 1) * SLOT] = bytes(MISC if k == SPILL else k for k in chunk)

    def copy(self) -> "Frame":
        return Frame(list(self.regs), bytearray(self.types), dict(self.spilled), self.callsite, self.function,
                     self.callback, self.callback_depth)

    def stack_text(self) -> str:
        """The stack slots in use, as the kernel's log prints them (`fp-8=mmmm????`, `fp-16=ctx`)."""
        parts = []
        for slot in range(STACK_SIZE // SLOT - 1, -1, -1):
            kinds = self.types[slot * SLOT:(slot + 1) * SLOT]
            if not any(kinds):
                continue
            off = slot * SLOT - STACK_SIZE
            if slot in self.spilled and all(k == SPILL for k in kinds):
                parts.append(f"fp{off}={self.spilled[slot]}")
            else:
                parts.append(f"fp{off}={''.join(TYPE_NAMES[k] for k in reversed(kinds))}")
        return " ".join(parts)


@dataclass
class State:
    frames: list[Frame]
    refs: list[tuple[int, int]] = field(default_factory=list)  # (reference id, slot that acquired it)

    @property
    def frame(self) -> Frame:
        return self.frames[-1]

    @property
    def regs(self) -> list[Reg]:
        return self.frames[-1].regs

    def copy(self) -> "State":
        return State([f.copy() for f in self.frames], list(self.refs))

    def all_regs(self):
        """(frame, register number or ('stack', slot), value) of every register and spilled register."""
        for frame in self.frames:
            for n, reg in enumerate(frame.regs):
                yield frame, n, reg
            for slot, reg in frame.spilled.items():
                yield frame, ("stack", slot), reg

    def replace_all(self, match, change) -> None:
        """Give every register and spilled register for which `match(reg)` holds the value `change(reg)`."""
        for frame in self.frames:
            for n, reg in enumerate(frame.regs):
                if match(reg):
                    frame.regs[n] = change(reg)
            for slot, reg in list(frame.spilled.items()):
                if match(reg):
                    frame.spilled[slot] = change(reg)

    def text(self) -> str:
        """The current frame's registers and stack, as the kernel's log prints a state."""
        regs = " ".join(f"R{n}={reg}" for n, reg in enumerate(self.regs) if reg.kind != "not_init")
        stack = self.frame.stack_text()
        return f"{regs} {stack}".strip()


def entry_state(function: int = 0) -> State:
    """The state at a program's first instruction: r1 the context, r10 the frame pointer."""
    regs = [NOT_INIT] * 11
    regs[1] = Reg("ctx")
    regs[10] = Reg("fp")
    return State([Frame(regs, function=function)])


__all__ = ["Frame", "INVALID", "MISC", "SLOT", "SPILL", "STACK_SIZE", "State", "ZERO", "entry_state"]
