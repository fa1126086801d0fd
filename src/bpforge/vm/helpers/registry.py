"""The helper table: helper id -> the Python function that does what the kernel's does, and the few things
every helper uses (errno results, argument narrowing, reading the run's context)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...isa import helper_id, helper_name
from ...isa.contexts import SK_BUFF, TEST_RUN_KINDS
from ...isa.numbers import M64
from ..memory import VmFault

Helper = Callable[..., object]
_HELPERS: dict[int, Helper] = {}


def helper(*names: str):
    """Register the decorated function as the helper(s) `names` (without the bpf_ prefix)."""
    def register(fn: Helper) -> Helper:
        for name in names:
            hid = helper_id(name)
            assert hid is not None, name
            _HELPERS[hid] = fn
        return fn
    return register


@dataclass
class TailCall:
    """A helper's request to continue in another program (bpf_tail_call that found its target)."""

    program: object


def call_helper(vm, hid: int, r1: int, r2: int, r3: int, r4: int, r5: int):
    """r0 after helper `hid`, or a TailCall, or None when the helper leaves r0 as it was.

    `vm` is the run state both tiers pass: .machine, .input, .tail_calls and call_function(addr, r1..r5)
    (a BPF function called back from a helper, in a new frame)."""
    fn = _HELPERS.get(hid)
    if fn is None:
        name = helper_name(hid)
        raise VmFault(f"helper {name}#{hid} is not implemented by the interpreter"
                      if name else f"unknown helper id {hid}")
    result = fn(vm, r1, r2, r3, r4, r5)
    return result & M64 if isinstance(result, int) else result


def implemented() -> dict[int, str]:
    return {hid: helper_name(hid) for hid in sorted(_HELPERS)}


def err(code: int) -> int:
    """-code as the 64-bit r0 a helper returns."""
    return -code & M64


def packet(vm):
    """The run's packet; a fault for a program type that has none."""
    pkt = vm.input.packet
    if pkt is None:
        raise VmFault("this helper needs a packet")
    return pkt


def is_skb(vm) -> bool:
    """Whether the program runs on a socket buffer (the helper is the skb flavour)."""
    return TEST_RUN_KINDS.get(vm.input.prog_type) == "skb"


def skb_field(vm, name: str) -> int:
    """A field of the run's struct __sk_buff as the program would read it."""
    return SK_BUFF.get(vm.input.ctx.buf, name)


def set_skb_field(vm, name: str, value: int) -> None:
    SK_BUFF.put(vm.input.ctx.buf, name, value)


def dummy_socket(vm) -> int:
    """The address of the socket test_run hangs on its skb (skb->sk), 0 where there is none."""
    ctx = vm.input.ctx
    if ctx is None or not is_skb(vm) or ctx.pointers is None:
        return 0
    sk = ctx.pointers.get(SK_BUFF.offset("sk"))
    return 0 if sk is None else sk()


def needs(vm, condition: bool, what: str) -> None:
    """A fault for a call the verifier would have refused (a program type or argument the helper is not
    for), rather than a made-up answer."""
    if not condition:
        raise VmFault(what)


__all__ = ["TailCall", "call_helper", "dummy_socket", "err", "helper", "implemented", "is_skb", "needs", "packet",
           "set_skb_field", "skb_field"]
