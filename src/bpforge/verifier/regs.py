"""What the verifier knows about one register: `struct bpf_reg_state`, as immutable values.

`kind` names the type in the verifier log's words (`scalar`, `ctx`, `fp`, `pkt`, `pkt_end`, `pkt_meta`,
`map_ptr`, `map_value`, `map_value_or_null`, `flow_keys`, `sock_common_or_null`, `sock_or_null`, `func`,
`mem` and `mem_or_null` (`size` bytes: a global function's pointer argument), `ringbuf_mem(_or_null)` (a
ring buffer record of `size` bytes), `sock`, `sock_common`, `tcp_sock` (and their `_or_null`)), or `not_init`.
`ref` is the reference a pointer holds (ref_obj_id: a socket looked up, a record reserved) that the program
must release before it exits. A pointer's address is its region plus `off` (a fixed offset) plus `var` (a `Scalar`: the
variable part, known zero for most pointers); a scalar's value is `var`. `id` links registers that hold
the same packet pointer or the same possibly-null map value (a check on one refines all); `range` is a
packet pointer's proven-readable length past its offset. `precise` marks a scalar of a kept state whose exact
value a path relied on (the kernel's precision tracking); it takes no part in equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..isa.maptypes import MapSpec
from .format import format_scalar
from .scalar import Scalar

ZERO = Scalar.known(0)
POINTER_KINDS = frozenset({"ctx", "fp", "pkt", "pkt_end", "pkt_meta", "map_ptr", "map_ptr_or_null", "map_value",
                           "map_value_or_null",
                           "flow_keys", "sock_common_or_null", "sock_or_null", "func", "mem", "mem_or_null",
                           "ringbuf_mem", "ringbuf_mem_or_null", "sock", "sock_common", "tcp_sock",
                           "tcp_sock_or_null"})
MEMORY_KINDS = frozenset({"mem", "ringbuf_mem"})  # PTR_TO_MEM: `size` bytes
SOCKET_KINDS = frozenset({"sock", "sock_common", "tcp_sock"})
PACKET_KINDS = frozenset({"pkt", "pkt_meta"})
NULLABLE = {"map_value_or_null": "map_value", "map_ptr_or_null": "map_ptr", "sock_common_or_null": "sock_common",
            "sock_or_null": "sock", "mem_or_null": "mem", "ringbuf_mem_or_null": "ringbuf_mem", "tcp_sock_or_null": "tcp_sock"}


@dataclass(frozen=True, slots=True)
class Reg:
    kind: str = "not_init"
    var: Scalar = ZERO
    off: int = 0
    id: int = 0
    range: int = 0
    map: MapSpec | None = None
    frame: int = 0  # fp: the frame whose stack it points into
    target: int = 0  # func: the callee's slot
    size: int = 0  # mem: how many bytes it may access
    ref: int = 0  # the reference it holds (0: none)
    # A scalar linked to the others of its `id` by a constant: it is theirs + `delta` (the kernel's
    # BPF_ADD_CONST, from `rX = rY; rX += c`); `linked` is the width of that addition (32 or 64), 0 when
    # the scalar is a plain copy.
    delta: int = 0
    linked: int = 0
    precise: bool = field(default=False, compare=False)

    @property
    def is_pointer(self) -> bool:
        return self.kind in POINTER_KINDS

    @property
    def is_scalar(self) -> bool:
        return self.kind == "scalar"

    def with_(self, **changes) -> "Reg":
        return replace(self, **changes)

    def __str__(self) -> str:
        return describe(self)


NOT_INIT = Reg()


def scalar(value: Scalar, id: int = 0) -> Reg:
    return Reg("scalar", value, id=id)


def known(value: int) -> Reg:
    return Reg("scalar", Scalar.known(value))


def unknown() -> Reg:
    return Reg("scalar", Scalar.unknown())


def describe(reg: Reg) -> str:
    """The register as the kernel's log prints it (print_verifier_state), for messages."""
    if reg.kind == "not_init":
        return "not_init"
    if reg.kind == "scalar":
        return format_scalar(reg.var, id=reg.id, delta=reg.delta if reg.linked else None)
    if reg.kind == "fp":
        return f"fp{reg.off}" if reg.var.is_const() and reg.var.var_off.value == 0 else f"fp(off={reg.off})"
    parts = []
    if reg.id:
        parts.append(f"id={reg.id}")
    if reg.ref:
        parts.append(f"ref_obj_id={reg.ref}")
    if reg.map is not None and reg.kind in ("map_ptr", "map_ptr_or_null", "map_value", "map_value_or_null"):
        parts.append(f"map={reg.map.name}")
        if reg.kind not in ("map_ptr", "map_ptr_or_null"):
            parts.append(f"ks={reg.map.key_size},vs={reg.map.value_size}")
    if reg.off:
        parts.append(f"off={reg.off}")
    if reg.kind in MEMORY_KINDS or NULLABLE.get(reg.kind) in MEMORY_KINDS:
        parts.append(f"sz={reg.size}")
    if reg.kind in PACKET_KINDS:
        parts.append(f"r={reg.range}")
    if not (reg.var.is_const() and reg.var.var_off.value == 0):
        parts.append(format_scalar(reg.var).removeprefix("scalar(").removesuffix(")"))
    return f"{reg.kind}({','.join(p for p in parts if p)})"


__all__ = ["MEMORY_KINDS", "NOT_INIT", "NULLABLE", "SOCKET_KINDS", "PACKET_KINDS", "POINTER_KINDS", "Reg", "ZERO", "describe", "known", "scalar",
           "unknown"]
