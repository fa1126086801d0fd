"""perf_event_array and bpf_perf_event_output against the kernel: max_entries 0 as libbpf reads it (one
slot per possible CPU), the syscall side, the helper's flags (index, BPF_F_CURRENT_CPU, the packet bytes
BPF_F_CTXLEN_MASK appends) in XDP and socket buffer programs, with empty slots (what a test run normally
has) and with a real BPF output perf event on the CPU the program runs on (a `PerfEvent` in the VM)."""

from __future__ import annotations

import ctypes
import mmap
import os
import struct

import pytest
from test_kernel_packets import ETH_P_IP, eth, ipv4, udp
from vmdiff import outcome, RUN_CPU, md, run_asm, same

from bpforge.vm.maps import PerfEvent, create_map

kernel_maps = pytest.importorskip("bpforge.kernel.maps")
KernelMap = kernel_maps.KernelMap
FRAME = eth(ETH_P_IP, ipv4("10.0.0.1", "10.0.0.2", 17, udp("10.0.0.1", "10.0.0.2", 7, 7, b"p" * 30)))
BIG = bytes(range(256)) * 20  # 5120 bytes: an XDP frame with a fragment
CURRENT_CPU = 0xFFFFFFFF
PERF_ARRAY = md("perf_event_array", max_entries=0, name="events")



def test_max_entries_zero_is_one_slot_per_possible_cpu(kernel):
    vm = create_map(PERF_ARRAY, num_cpus=kernel_maps.possible_cpus())
    with KernelMap.create(PERF_ARRAY) as kmap:
        assert vm.max_entries == kmap.max_entries == kernel_maps.possible_cpus()
        ops = [("update", b"\0" * 4, struct.pack("<I", 0x7FFFFFF0)), ("update", struct.pack("<I", 64), b"\0" * 4),
               ("update", b"\0" * 4, b"\0" * 4, 1), ("lookup", b"\0" * 4), ("delete", b"\0" * 4),
               ("delete", struct.pack("<I", 64)), ("keys",), ("next_key", None)]
        for op, *args in ops:
            assert outcome(getattr(vm, op), *args) == outcome(getattr(kmap, op), *args), op


@pytest.mark.parametrize("mapdef", [md("perf_event_array", flags=0x800), md("perf_event_array", flags=0x80),
                                    md("perf_event_array", flags=0x400), md("perf_event_array", flags=0x1000),
                                    md("perf_event_array", key_size=8)])
def test_creation_matches_kernel(mapdef, kernel):
    mine = outcome(lambda: create_map(mapdef, num_cpus=kernel_maps.possible_cpus()))
    theirs = outcome(KernelMap.create, mapdef)
    assert mine[0] == theirs[0] and (mine[0] == "ok" or mine == theirs)
    if theirs[0] == "ok":
        theirs[1].close()


def output_program(flags: int, size: int = 8) -> str:
    return f"""
    r6 = r1
    r1 = 0x1122334455667788 ll
    *(u64 *)(r10 - 8) = r1
    r1 = r6
    r2 = map_fd(0) ll
    r3 = {flags:#x} ll
    r4 = r10
    r4 += -8
    r5 = {size}
    call 25
    exit
    """


def ctxlen(n: int) -> int:
    return n << 32


FLAGS = [0, 1, CURRENT_CPU, 64, CURRENT_CPU | ctxlen(14), ctxlen(len(FRAME)), ctxlen(len(FRAME) + 1),
         ctxlen(0xFFFFF), 1 << 52, 1 << 63, CURRENT_CPU | ctxlen(3600), CURRENT_CPU | ctxlen(5120),
         CURRENT_CPU | ctxlen(5121)]


@pytest.mark.parametrize("prog_type,frame", [("xdp", FRAME), ("xdp", BIG), ("sched_cls", FRAME),
                                             ("socket_filter", FRAME)])
@pytest.mark.parametrize("flags", FLAGS, ids=[f"{f:#x}" for f in FLAGS])
def test_output_to_empty_slots_matches_kernel(prog_type, frame, flags, kernel):
    same(run_asm(output_program(flags), prog_type, frame, maps=[PERF_ARRAY]))


PERF_TYPE_SOFTWARE, PERF_COUNT_SW_BPF_OUTPUT, PERF_SAMPLE_RAW, PERF_FLAG_FD_CLOEXEC = 1, 10, 1 << 10, 8
_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241}


def perf_event_open(cpu: int) -> int:
    """A BPF output event on `cpu` (what libbpf's perf_buffer opens), or skip."""
    number = _SYS_PERF_EVENT_OPEN.get(os.uname().machine)
    if number is None:
        pytest.skip("perf_event_open's syscall number is not known for this architecture")
    attr = bytearray(128)
    struct.pack_into("<IIQQQ", attr, 0, PERF_TYPE_SOFTWARE, len(attr), PERF_COUNT_SW_BPF_OUTPUT, 1, PERF_SAMPLE_RAW)
    struct.pack_into("<I", attr, 48, 1)  # wakeup_events
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(number, buf, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        pytest.skip(f"perf_event_open: {os.strerror(ctypes.get_errno())}")
    return fd


class Events:
    """Perf events in the slots of one map, the same in both worlds: in the kernel BPF output events opened
    per CPU (and their rings mapped, `ring_pages` data pages, or not mapped at all for 0); in the VM
    PerfEvents with rings of that size."""

    def __init__(self, slots: list[int], ring_pages: int) -> None:
        self.slots, self.ring_pages = slots, ring_pages
        self.fds: list[int] = []
        self.rings: dict[int, mmap.mmap] = {}
        self.vm_events: dict[int, PerfEvent] = {}

    def prepare(self, index, m) -> None:
        for slot in self.slots:
            if isinstance(m, KernelMap):
                fd = perf_event_open(slot)
                self.fds.append(fd)
                if self.ring_pages:
                    self.rings[slot] = mmap.mmap(fd, (1 + self.ring_pages) * mmap.PAGESIZE, mmap.MAP_SHARED,
                                                 mmap.PROT_READ | mmap.PROT_WRITE)
                m.update(struct.pack("<I", slot), struct.pack("<I", fd))
            else:
                event = self.vm_events[slot] = PerfEvent(slot, ring_size=self.ring_pages * mmap.PAGESIZE)
                m.set(slot, event)

    def kernel_records(self, slot: int) -> list[bytes]:
        """The samples in the kernel's ring (PERF_RECORD_SAMPLE: header, u32 size, raw data)."""
        ring = self.rings[slot]
        head, = struct.unpack_from("<Q", ring, 1024)  # perf_event_mmap_page.data_head
        data = ring[mmap.PAGESIZE:mmap.PAGESIZE + head]
        out, at = [], 0
        while at < len(data):
            kind, _, size = struct.unpack_from("<IHH", data, at)
            if kind == 9:
                raw, = struct.unpack_from("<I", data, at + 8)
                out.append(data[at + 12:at + 12 + raw])
            at += size
        return out

    def vm_records(self, slot: int) -> list[bytes]:
        """The VM's samples as the ring shows them: raw data padded (with zeros, on a fresh ring) so that
        size and data end on 8 bytes."""
        return [r.ljust(((len(r) + 4 + 7) & ~7) - 4, b"\0") for r in self.vm_events[slot].records]

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        for fd in self.fds:
            os.close(fd)


@pytest.mark.parametrize("flags", [CURRENT_CPU, RUN_CPU, CURRENT_CPU | ctxlen(20), RUN_CPU ^ 1, 2])
@pytest.mark.parametrize("ring_pages", [1, 0])
def test_output_to_a_perf_event_matches_kernel(flags, ring_pages, kernel):
    """Slot RUN_CPU holds an event of that CPU, slot RUN_CPU ^ 1 (when there is one) an event of another
    CPU: output succeeds only to the event of the CPU the program runs on, and only into a mapped ring."""
    cpus = kernel_maps.possible_cpus()
    events = Events(sorted({RUN_CPU, RUN_CPU ^ 1} & set(range(cpus))), ring_pages)
    try:
        outcomes = run_asm(output_program(flags), "xdp", FRAME, maps=[PERF_ARRAY], prepare=events.prepare)
        same(outcomes, maps=True)  # the kernel's slots show nothing through the syscall; the VM's show events
        for slot in events.rings:
            assert events.kernel_records(slot) == events.vm_records(slot)
    finally:
        events.close()


def test_a_full_ring_loses_samples_as_the_kernel_does(kernel):
    events = Events([RUN_CPU], 1)
    try:
        outcomes = run_asm(output_program(CURRENT_CPU | ctxlen(20)), "xdp", FRAME, maps=[PERF_ARRAY],
                           prepare=events.prepare, repeat=130)  # 40 bytes a sample: 102 fit in a page
        assert same(outcomes, maps=True).retval == (-28) & 0xFFFFFFFF  # ENOSPC
        assert events.kernel_records(RUN_CPU) == events.vm_records(RUN_CPU)
        assert events.vm_events[RUN_CPU].lost == 130 - 102
    finally:
        events.close()


def test_what_reached_an_event_is_kept_with_it():
    vm_map = create_map(PERF_ARRAY, num_cpus=2)
    event = PerfEvent(0)
    vm_map.set(0, event)
    assert vm_map.output(CURRENT_CPU, 0, b"abc") == 0
    assert vm_map.output(1, 0, b"x") == -2  # ENOENT: slot 1 is empty
    assert vm_map.output(0, 1, b"y") == -95  # EOPNOTSUPP: the event is CPU 0's, the program runs on 1
    assert list(event.records) == [b"abc"]
    attempts = vm_map.dump()["attempts"]
    assert [(a["index"], a["result"], a["data"]) for a in attempts] == [(0, 0, "616263"), (1, -2, "78"), (0, -95, "79")]
