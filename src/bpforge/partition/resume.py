"""The user half of a partitioned handler: the handler's rest from each user point as Python source, the
trailer the BPF half appends read back, and the dispatcher that runs in the handler's place.

The resume functions are the application's own statements (from the point on, the tails of the enclosing
blocks after them) in a function whose parameters are the payload and the live locals the trailer
carries; they run in the application's module namespace, so its constants, functions and typed maps are
the ones the original handler sees. Point 0 is the original handler itself (a restart).
"""

from __future__ import annotations

import ast
import copy
import struct
import types
from dataclasses import dataclass
from typing import Any, Callable

from .analyze import PartitionError
from .codegen import SYNC_STRIDE, TRAILER_TAIL, UserPoint

RESUME = "_bpforge_resume_{}"
DISPATCH = "_bpforge_dispatch"


def resume_source(points: list[UserPoint], param: str, source: str, handler: str) -> str:
    """The user module: one function per user point."""
    out = [f'"""The user half of {handler} in {source}, written by bpforge partition: the handler\'s rest from',
           'each point where the BPF half passes a datagram up (point 0, a restart, runs the handler itself)."""', ""]
    for point in points:
        args = [ast.arg(param)] + [ast.arg(name) for name, _, _ in point.live]
        body = [copy.deepcopy(s) for s in point.statements] or [ast.Pass()]
        fn = ast.FunctionDef(RESUME.format(point.number), ast.arguments([], args, None, [], [], None, []), body, [],
                             None, type_params=[])
        live = ", ".join(f"{name} ({kind})" for name, kind, _ in point.live) or "nothing"
        out += ["", f"# point {point.number}: line {point.line}, paths {point.paths}; the trailer carries {live}",
                ast.unparse(ast.fix_missing_locations(fn)), ""]
    return "\n".join(out)


@dataclass(frozen=True)
class Trailer:
    point: int
    counted: tuple[int, ...]  # the pending counters (pt_sync indexes of their "seen") it was counted in
    values: tuple
    payload: bytes


def read_trailer(datagram: bytes, nonce: bytes, kinds: dict[int, list[tuple[str, Any]]]) -> Trailer | None:
    """The trailer at the end of `datagram`, or None when it has none of ours (it did not come through the
    BPF half)."""
    end = len(datagram)
    if end < TRAILER_TAIL or datagram[end - 8:] != nonce:
        return None
    fields_len, point, mask, bucket_mask = struct.unpack_from("<HHHH", datagram, end - TRAILER_TAIL)
    start = end - TRAILER_TAIL - fields_len
    if start < 0 or (point != 0 and point not in kinds):
        return None
    at, values = start, []
    for kind, desc in kinds.get(point, []):
        value, at = _field(datagram, at, kind, desc)
        values.append(value)
    counted = [m * SYNC_STRIDE for m in _bits(mask)]
    for m in _bits(bucket_mask):  # then one u16 bucket per map the BPF half counted by key
        (bucket,) = struct.unpack_from("<H", datagram, at)
        counted.append(m * SYNC_STRIDE + 2 + 2 * bucket)
        at += 2
    if at != end - TRAILER_TAIL:
        return None
    return Trailer(point, tuple(counted), tuple(values), datagram[:start])


def _bits(mask: int) -> list[int]:
    """The set bits of `mask`, lowest first (most trailers have none)."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def _field(data: bytes, at: int, kind: str, desc: Any) -> tuple[Any, int]:
    if kind == "int":
        return struct.unpack_from("<q", data, at)[0], at + 8
    if kind == "bytes":
        (length,) = struct.unpack_from("<H", data, at)
        return bytes(data[at + 2:at + 2 + length]), at + 2 + length
    if kind == "struct":
        return desc.decode(data[at:at + desc.size]), at + desc.size
    if kind == "opt":
        if data[at] == 0:
            return None, at + 1
        inner_kind, inner_desc = desc
        return _field(data, at + 1, inner_kind, inner_desc)
    raise PartitionError(f"unknown trailer field kind {kind!r}")


class Dispatcher:
    """Runs in the handler's place: a datagram with our trailer resumes at its point, any other runs the
    original handler; afterwards the "done" of each pending counter the datagram was counted in is raised
    (`finished(seen_index, count)` writes pt_sync[seen_index + 1] = count to the kernel)."""

    def __init__(self, original: Callable, resumes: dict[int, Callable], nonce: bytes,
                 kinds: dict[int, list[tuple[str, Any]]], finished: Callable[[int, int], None]) -> None:
        self.original, self.resumes, self.nonce, self.kinds = original, resumes, nonce, kinds
        self.finished = finished
        self.done: dict[int, int] = {}
        self.counts = {"restart": 0, "resumed": 0, "untagged": 0}

    def __call__(self, datagram: bytes):
        trailer = read_trailer(datagram, self.nonce, self.kinds)
        if trailer is None:
            self.counts["untagged"] += 1
            return self.original(datagram)
        try:
            if trailer.point == 0:
                self.counts["restart"] += 1
                return self.original(trailer.payload)
            self.counts["resumed"] += 1
            return self.resumes[trailer.point](trailer.payload, *trailer.values)
        finally:
            for index in trailer.counted:
                self.done[index] = self.done.get(index, 0) + 1
                self.finished(index, self.done[index])


def install(namespace: dict, handler: str, source: str, filename: str, make: Callable[[Callable, dict], Callable]) -> Callable:
    """Define the resume functions of `source` in the application's `namespace` and make its handler run
    `make(original, resumes)`'s dispatcher. The handler's function object stays (other code holds it, as a
    default argument of the server loop, say): its code is replaced by a call of the dispatcher. The
    original is returned."""
    function = namespace[handler]
    if not isinstance(function, types.FunctionType) or function.__code__.co_freevars:
        raise PartitionError(f"{filename}: the handler {handler} must be a plain module-level function")
    original = types.FunctionType(function.__code__, function.__globals__, function.__name__,
                                  function.__defaults__, function.__closure__)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - the application's own statements
    resumes = {int(name.rsplit("_", 1)[1]): value for name, value in namespace.items()
               if name.startswith(RESUME.format(""))}
    namespace[DISPATCH] = make(original, resumes)
    stub: dict = {}
    exec(f"def {handler}(*args, **kwargs):\n    return {DISPATCH}(*args, **kwargs)\n", namespace, stub)  # noqa: S102
    function.__code__ = stub[handler].__code__
    return original


__all__ = ["Dispatcher", "Trailer", "install", "read_trailer", "resume_source"]
