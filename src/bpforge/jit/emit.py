"""Machine code as a list of pieces: bytes, labels and branches to labels, each tagged with the BPF slot it
was emitted for. `assemble` sizes branches in passes (every branch starts short; one whose target is out of
reach grows, which can push others out of reach, until nothing changes) and returns the code, where each
label landed and which byte ranges came from which slot (what a listing interleaves).

A backend supplies a branch's encodings: `encode(rel, short)` gives the bytes of the branch to `rel` bytes
past its own end, `short_size`/`long_size` their lengths (a short size of 0: no short form).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(eq=False)
class Label:
    name: str


@dataclass
class _Branch:
    label: Label
    encode: Callable[[int, bool], bytes]
    short_size: int
    long_size: int
    slot: int
    short: bool = True
    reach: Callable[[int], bool] | None = None


@dataclass
class Code:
    """Assembled code: `labels` are offsets into `data`; `origins` (offset, length, slot) cover every byte
    (slot -1: the image's own prologue, epilogue and stubs)."""

    data: bytes
    labels: dict[Label, int]
    origins: list[tuple[int, int, int]] = field(default_factory=list)

    def slot_at(self, offset: int) -> int:
        for start, length, slot in self.origins:
            if start <= offset < start + length:
                return slot
        return -1


class Assembler:
    def __init__(self) -> None:
        self.items: list = []
        self.slot = -1  # the BPF slot pieces are emitted for

    def emit(self, *chunks: bytes) -> None:
        for data in chunks:
            if data:
                self.items.append((bytes(data), self.slot))

    def label(self, label: Label) -> None:
        self.items.append(label)

    def branch(self, label: Label, encode: Callable[[int, bool], bytes], short_size: int, long_size: int,
               reach: Callable[[int], bool] | None = None) -> None:
        """`reach(rel)`: whether the short form reaches `rel` bytes past its end (default: a signed byte,
        x86's short jumps)."""
        self.items.append(_Branch(label, encode, short_size, long_size, self.slot, short=short_size > 0,
                                  reach=reach))

    def _layout(self) -> tuple[dict[Label, int], list[int]]:
        labels: dict[Label, int] = {}
        starts: list[int] = []
        pos = 0
        for item in self.items:
            starts.append(pos)
            if isinstance(item, Label):
                labels[item] = pos
            elif isinstance(item, _Branch):
                pos += item.short_size if item.short else item.long_size
            else:
                pos += len(item[0])
        return labels, starts

    def assemble(self) -> Code:
        while True:
            labels, starts = self._layout()
            grew = False
            for item, start in zip(self.items, starts):
                if isinstance(item, _Branch) and item.short:
                    if item.label not in labels:
                        raise ValueError(f"branch to label {item.label.name}, which is never placed")
                    rel = labels[item.label] - (start + item.short_size)
                    if not (item.reach(rel) if item.reach is not None else -128 <= rel < 128):
                        item.short, grew = False, True
            if not grew:
                break
        out = bytearray()
        origins: list[tuple[int, int, int]] = []
        for item, start in zip(self.items, starts):
            if isinstance(item, Label):
                continue
            if isinstance(item, _Branch):
                size = item.short_size if item.short else item.long_size
                data = item.encode(labels[item.label] - (start + size), item.short)
                assert len(data) == size, "a branch encoding of the wrong size"
                slot = item.slot
            else:
                data, slot = item
            if origins and origins[-1][2] == slot and origins[-1][0] + origins[-1][1] == len(out):
                origins[-1] = (origins[-1][0], origins[-1][1] + len(data), slot)
            else:
                origins.append((len(out), len(data), slot))
            out += data
        return Code(bytes(out), labels, origins)
