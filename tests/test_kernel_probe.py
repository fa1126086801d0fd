"""Feature probes, and what happens where bpf() cannot be used (simulated, so it runs everywhere)."""

from __future__ import annotations

import errno

import pytest
from test_kernel_packets import no_leaked_fds  # noqa: F401  (an autouse fixture)

from bpforge.errors import BpforgeError
from bpforge.kernel import syscall


def test_the_types_bpforge_tests_need_are_there(kernel):
    summary = kernel.probe_summary()
    assert summary["available"] is None
    assert all(summary["prog_types"].values()), summary
    assert all(summary["map_types"].values()), summary


def test_probes_say_no_to_what_cannot_load(kernel):
    assert not kernel.prog_type_supported("mem")  # bpforge's userspace convention, not a kernel type
    assert not kernel.map_type_supported("no_such_type")
    assert not kernel.map_type_supported("struct_ops")  # needs BTF of a kernel struct


def test_helper_probe(kernel):
    assert kernel.helper_supported("map_lookup_elem")
    assert kernel.helper_supported("bpf_xdp_adjust_tail", "xdp")
    assert not kernel.helper_supported("xdp_adjust_tail", "socket_filter")  # XDP-only helper
    assert kernel.helper_supported("skb_load_bytes", "socket_filter")
    with pytest.raises(BpforgeError, match="unknown helper"):
        kernel.helper_supported("no_such_helper")


def test_probes_are_cached(kernel):
    kernel.prog_type_supported("xdp")
    hits = kernel.prog_type_supported.cache_info().hits
    kernel.prog_type_supported("xdp")
    assert kernel.prog_type_supported.cache_info().hits == hits + 1


@pytest.fixture
def no_permission(monkeypatch):
    """bpf() failing with EPERM, as for a process without CAP_BPF."""
    monkeypatch.setattr(syscall, "_raw_bpf", lambda cmd, attr: (-1, errno.EPERM))
    syscall.kernel_available.cache_clear()
    yield
    monkeypatch.undo()
    syscall.kernel_available.cache_clear()


def test_without_permission_everything_says_unavailable(no_permission):
    from bpforge.isa.maptypes import MapSpec
    from bpforge.isa import Insn
    from bpforge.kernel import (
        KernelMap,
        KernelUnavailable,
        kernel_available,
        load_insns,
    )

    reason = kernel_available()
    assert reason is not None and reason.startswith("kernel BPF not available:") and "EPERM" in reason
    with pytest.raises(KernelUnavailable, match="not available"):
        KernelMap.create(MapSpec("m", 2, 4, 4, 1))
    with pytest.raises(KernelUnavailable):
        load_insns([Insn.make("mov64_imm", dst=0, imm=0), Insn.make("exit")], "xdp")


def test_enosys_is_unavailable(monkeypatch):
    from bpforge.kernel import KernelUnavailable

    monkeypatch.setattr(syscall, "_raw_bpf", lambda cmd, attr: (-1, errno.ENOSYS))
    with pytest.raises(KernelUnavailable, match="ENOSYS"):
        syscall.bpf(syscall.BPF_MAP_FREEZE, syscall.MapFdAttr(map_fd=0))


def test_not_linux(monkeypatch):
    from bpforge.kernel import KernelUnavailable

    monkeypatch.setattr(syscall.platform, "machine", lambda: "sparc64")
    with pytest.raises(KernelUnavailable, match="unsupported on"):
        syscall.bpf(syscall.BPF_MAP_FREEZE, syscall.MapFdAttr(map_fd=0))


def test_eperm_from_a_permitted_process_is_an_answer(kernel):
    # A frozen map refuses updates with EPERM; that is the map's answer, not "bpf() unavailable".
    from bpforge.isa.maptypes import MapSpec
    from bpforge.isa.maptypes import MapError

    with kernel.KernelMap.create(MapSpec("m", 2, 4, 4, 1)) as kmap:
        kmap.freeze()
        with pytest.raises(MapError) as info:
            kmap.update(bytes(4), bytes(4))
    assert info.value.errno == errno.EPERM
