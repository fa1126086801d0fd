"""The arm64 and riscv64 JITs on their emulated devices (unicorn), against the reference interpreter:
results of every hard form (atomics with cmpxchg 32/64, sdiv/smod edge cases, movsx, byte swaps, jmp32,
bpf2bpf calls, tail calls, bpf_loop callbacks), every sandbox fault with the interpreter's message,
`bpforge run --engine jit --arch` and `bpforge jit --arch` listings.

The random-program and example differentials (tests/test_differential.py) run the device engines too
(`difftest.engines.vm_engines`)."""

from __future__ import annotations

import json

import pytest

from bpforge.jit.device import DEVICE_ARCHES, unicorn_available

from conftest import EXAMPLES
from test_jit_x86_64 import FAULTS, IPV4_TCP, bpforge

pytestmark = pytest.mark.skipif(unicorn_available() is not None, reason=str(unicorn_available()))
arches = pytest.mark.parametrize("arch", DEVICE_ARCHES)


def _both(text_, data: bytes, arch: str, prog_type: str = "mem", budget: int = 10_000_000, maps=()):
    """(interpreter outcome, device outcome): (retval, data_out) or the error's text."""
    from bpforge import vm
    from bpforge.errors import BpforgeError
    from bpforge.isa import decode
    from bpforge.isa.asm import parse
    from bpforge.jit.device import DeviceSession, run_device

    insns = decode(text_) if isinstance(text_, bytes) else parse(text_).sections[0].insns
    out = []
    for engine in ("interp", arch):
        machine = vm.Machine(vm.from_insns(insns, list(maps)), budget=budget)
        try:
            if engine == "interp":
                result = machine.run(data, prog_type)
            else:
                result = run_device(machine, DeviceSession(True, lambda p: None, arch), data, prog_type)
            out.append((result.retval, result.data_out))
        except BpforgeError as err:
            out.append(str(err))
    return out


@arches
@pytest.mark.parametrize("name", FAULTS)
def test_sandbox_faults_as_the_interpreter(name, arch):
    interp, device = _both(FAULTS[name], bytes(8), arch, budget=100_000)
    assert isinstance(interp, str), f"the interpreter does not fault: {interp}"
    assert device == interp


RESULTS = {
    "loop": ("r0 = 0\nl:\nif r2 == 0 goto d\nr3 = *(u8 *)(r1 + 0)\nr0 += r3\nr1 += 1\nr2 -= 1\ngoto l\nd:\nexit\n",
             bytes(range(1, 40))),
    "byte swaps": ("r2 = 0x1122334455667788 ll\n*(u64 *)(r1 + 0) = r2\nr3 = r2\nr3 = be16 r3\nr4 = r2\n"
                   "r4 = bswap32 r4\nr5 = r2\nr5 = le16 r5\nr6 = r2\nr6 = le32 r6\nr2 = be64 r2\n"
                   "*(u64 *)(r1 + 8) = r2\nr0 = r3\nr0 <<= 32\nr0 |= r4\nr0 += r5\nr0 ^= r6\nexit\n", bytes(16)),
    "division": ("r0 = -7\nr2 = 2\nr0 s/= r2\nr3 = -7\nr3 s%= r2\nr4 = 0\nr5 = 9\nr5 /= r4\nw6 = 9\nw6 %= w4\n"
                 "r7 = -9\nr7 s%= r4\nw8 = -9\nw8 s/= w4\nr0 += r3\nr0 += r5\nr0 += r6\nr0 += r7\nr0 += r8\nexit\n",
                 b""),
    "division edge cases": ("r0 = 0x80000000\nr0 <<= 32\nr2 = -1\nr0 s/= r2\nw3 = -2147483648\nw2 = -1\n"
                            "w3 s%= w2\nw4 = -2147483648\nw4 s/= w2\nr5 = 0x80000000\nr5 <<= 32\nr5 s%= r2\n"
                            "r0 += r3\nr0 += r4\nr0 += r5\nr6 = 7\nw6 /= w2\nr0 += r6\nexit\n", b""),
    "shifts": ("r2 = 5\nr3 = 63\nr2 <<= r3\nr4 = 1\nw5 = 40\nw4 <<= w5\nr0 = r2\nr0 += r4\nr1 = -1\nr1 s>>= 3\n"
               "w6 = -1\nw6 >>= 4\nw7 = -16\nw7 s>>= w5\nr0 ^= r1\nr0 += r6\nr0 += r7\nexit\n", bytes(8)),
    "movsx": ("r2 = 0x80ff7f81 ll\nr0 = (s8)r2\nr3 = (s16)r2\nr4 = (s32)r2\nw5 = (s8)w2\nw6 = (s16)w2\n"
              "r7 = *(s8 *)(r1 + 0)\nr8 = *(s16 *)(r1 + 0)\nr9 = *(s32 *)(r1 + 0)\n"
              "r0 ^= r3\nr0 += r4\nr0 ^= r5\nr0 += r6\nr0 ^= r7\nr0 += r8\nr0 ^= r9\nexit\n",
              bytes.fromhex("fe8f2e9a00000000")),
    "jmp32": ("r0 = 0\nr2 = 0x1ffffffff ll\nr3 = 1\nif w2 s< w3 goto +1\nr0 |= 1\nif w2 > w3 goto +1\nr0 |= 2\n"
              "if w2 == -1 goto +1\nr0 |= 4\nif w2 & 0x80000000 goto +1\nr0 |= 8\nif r2 s> r3 goto +1\nr0 |= 16\n"
              "if w2 s>= 0 goto +1\nr0 |= 32\nif w3 != 1 goto +1\nr0 |= 64\nif w2 <= 0x7fffffff goto +1\n"
              "r0 |= 128\nexit\n", b""),
    "atomics": ("r2 = 1\n*(u64 *)(r1 + 0) = r2\nr3 = 4\nlock *(u64 *)(r1 + 0) += r3\n"
                "r3 = atomic_fetch_add((u64 *)(r1 + 0), r3)\nr4 = 0xf0\nr4 = atomic_fetch_or((u64 *)(r1 + 0), r4)\n"
                "r5 = 0x1f\nr5 = atomic_fetch_and((u64 *)(r1 + 0), r5)\nr6 = 3\nr6 = atomic_fetch_xor((u64 *)(r1 + 0), r6)\n"
                "r7 = 99\nr7 = xchg_64(r1 + 0, r7)\nr0 = 99\nr8 = 7\nr0 = cmpxchg_64(r1 + 0, r0, r8)\n"
                "r9 = r0\nr0 = 5\nr0 = cmpxchg_64(r1 + 0, r0, r8)\nr0 += r9\nr0 += r3\nr0 += r4\nr0 += r5\n"
                "r0 += r6\nr0 += r7\nexit\n", bytes(8)),
    "atomics 32": ("r2 = -1\n*(u64 *)(r1 + 0) = r2\nw3 = 4\nlock *(u32 *)(r1 + 0) += w3\n"
                   "w3 = atomic_fetch_add((u32 *)(r1 + 0), w3)\nw4 = 0xf0\nw4 = atomic_fetch_xor((u32 *)(r1 + 4), w4)\n"
                   "w5 = 8\nw5 = xchg32_32(r1 + 4, w5)\nr0 = -1\nw0 = 3\nr6 = 0x77\nw0 = cmpxchg32_32(r1 + 0, w0, w6)\n"
                   "r7 = r0\nr0 = 0x100000008 ll\nw0 = cmpxchg32_32(r1 + 0, w0, w6)\nr0 <<= 8\nr0 += r7\nr0 += r3\n"
                   "r0 += r4\nr0 += r5\nexit\n", bytes(8)),
    # 32-bit results read whole (zero-extended on every machine) beside ones only 32-bit consumers read
    # (riscv64 leaves their zero-extension out: analysis.upper)
    "upper halves": ("w2 = -1\nr0 = r2\nw3 = -1\nw3 += 1\nw4 = -8\n*(u32 *)(r1 + 0) = r4\nw5 = 0x80000000\n"
                     "if w5 s< 0 goto +1\nr0 = 0\nw6 = -3\nw6 s>>= 1\nw0 += w6\nw0 += w3\n"
                     "r7 = *(u32 *)(r1 + 0)\nr0 += r7\nw8 = -1\nr8 <<= 0\nr0 ^= r8\nexit\n", bytes(8)),
    "bpf2bpf": ("r0 = 0\nr6 = 3\ncall f\nr0 += r6\nexit\nf:\nr6 = 10\nr1 = 5\ncall g\nr0 += r6\nexit\ng:\nr0 = r1\nexit\n",
                b""),
    "stack and large offsets": ("r2 = 0x1234\n*(u64 *)(r10 - 512) = r2\n*(u16 *)(r10 - 300) = r2\n"
                                "r0 = *(u64 *)(r10 - 512)\nr3 = *(u16 *)(r10 - 300)\nr0 += r3\n"
                                "*(u32 *)(r10 - 4) = 0x7fffffff\nr4 = *(u32 *)(r10 - 4)\nr0 += r4\n"
                                "r5 = 0x123456789 ll\nr0 *= r5\nr0 += 0x7fffffff\nw0 *= 3\nexit\n", b""),
}


@arches
@pytest.mark.parametrize("name", RESULTS)
def test_results_as_the_interpreter(name, arch):
    program, data = RESULTS[name]
    interp, device = _both(program, data, arch)
    assert not isinstance(interp, str), interp
    assert device == interp


# ---- the CLI ---------------------------------------------------------------------------------------------

@arches
def test_run_engine_jit_arch_agrees_with_the_interpreter(arch):
    path = EXAMPLES / "obj" / "xdp_counter.o"
    outs = [json.loads(bpforge("run", path, "--data", IPV4_TCP, "--engine", e, "--arch", arch, "--repeat", "3",
                               "--dump-maps", "--json").stdout) for e in ("interp", "jit")]
    assert outs[0]["retval"] == outs[1]["retval"] and outs[0]["data_out"] == outs[1]["data_out"]
    assert outs[0]["maps"] == outs[1]["maps"] and outs[1]["engine"] == "jit" and outs[1]["repeat"] == 3


@arches
def test_sandbox_fault_on_the_device_is_the_interpreters(tmp_path, arch):
    src = tmp_path / "bad.s"
    src.write_text("r0 = *(u32 *)(r1 + 100)\nexit\n")
    args = ("run", src, "--type", "xdp", "--data", "00" * 20)
    faulted = bpforge(*args, "--engine", "jit", "--arch", arch, "--sandbox", check=False)
    interp = bpforge(*args, "--engine", "interp", check=False)
    assert faulted.returncode == interp.returncode == 2 and faulted.stderr == interp.stderr


@arches
def test_listing_maps_every_native_instruction(tmp_path, arch):
    pytest.importorskip("capstone", reason="capstone not installed (pip install 'bpforge[jit]')")
    path = EXAMPLES / "obj" / "xdp_lb.o"
    image = tmp_path / "xdp_lb.bin"
    listing = json.loads(bpforge("jit", path, "--arch", arch, "-o", image, "--json").stdout)
    assert listing["mode"] == "verified" and listing["arch"] == arch
    native = [n for entry in listing["insns"] for n in entry["native"]]
    assert sum(len(n["bytes"]) // 2 for n in native) == listing["code_bytes"] == image.stat().st_size
    assert all(len(n["bytes"]) == 8 for n in native)  # fixed-width: every 4 bytes decoded as one instruction
    bpf_with_code = [e for e in listing["insns"] if e["slot"] >= 0 and e["native"]]
    assert len(bpf_with_code) == listing["bpf_insns"]
    meta = json.loads((tmp_path / "xdp_lb.bin.json").read_text())
    assert meta["arch"] == arch and {r["kind"] for r in meta["relocations"]} >= {"map", "ctx_field", "callback"}
    assert sum(o["length"] for o in meta["origins"]) == listing["code_bytes"]
    text = bpforge("jit", path, "--arch", arch, "--sandbox").stdout
    assert arch in text.splitlines()[0] and "sandbox" in text.splitlines()[0] and "<function at slot 0>" in text


def test_device_counts_its_instructions():
    from bpforge import vm
    from bpforge.isa.asm import parse
    from bpforge.jit.device import DeviceSession, run_device

    insns = parse("r0 = 0\nr2 = 100\nl:\nr0 += r2\nr2 -= 1\nif r2 != 0 goto l\nexit\n").sections[0].insns
    counts = {}
    for arch in DEVICE_ARCHES:
        session = DeviceSession(True, lambda p: None, arch)
        assert run_device(vm.Machine(vm.from_insns(insns, [])), session, b"", "mem").retval == 5050
        counts[arch] = session.last_executed
    assert all(300 < count < 3000 for count in counts.values()), counts  # the loop: 3 x 100 BPF instructions


@arches
@pytest.mark.parametrize("sandbox", [False, True], ids=["verified", "sandbox"])
def test_tail_calls_on_the_device(arch, sandbox):
    """A program that counts its runs and tail-calls itself stops after 33 tail calls, as the interpreter's;
    then one tail call into another program (compiled mid-run, placed in the device's code memory)."""
    from bpforge import vm
    from bpforge.isa.asm import parse
    from bpforge.isa.maptypes import MAP_TYPE_IDS, MapSpec
    from bpforge.jit.device import DeviceSession, run_device
    from bpforge.vm.maps import create_map

    text = ("r6 = r1\nr1 = 0\n*(u32 *)(r10 - 4) = r1\nr2 = r10\nr2 += -4\nr1 = map_fd(1) ll\ncall bpf_map_lookup_elem\n"
            "if r0 == 0 goto +3\nr1 = 1\nlock *(u64 *)(r0 + 0) += r1\nr1 = r6\nr2 = map_fd(0) ll\nr3 = {slot}\n"
            "call bpf_tail_call\nr0 = 7\nexit\n")
    for slot, expected_runs, expected_r0 in ((0, 34, 7), (1, 1, 42)):
        outcomes = []
        for engine in ("interp", arch):
            jumps = create_map(MapSpec("jumps", MAP_TYPE_IDS["prog_array"], 4, 4, 2))
            counter = create_map(MapSpec("counter", MAP_TYPE_IDS["array"], 4, 8, 1))
            program = vm.from_insns(parse(text.format(slot=slot)).sections[0].insns, [jumps, counter])
            jumps.set(0, program)
            jumps.set(1, vm.from_insns(parse("r0 = 42\nexit\n").sections[0].insns, []))
            machine = vm.Machine(program)
            if engine == "interp":
                result = machine.run(bytes(64), "xdp")
            else:
                session = DeviceSession(sandbox, (lambda p: None), arch)
                result = run_device(machine, session, bytes(64), "xdp")
            outcomes.append((result.retval, counter.lookup(bytes(4))))
        assert outcomes[0] == outcomes[1] == (expected_r0, expected_runs.to_bytes(8, "little"))


def test_riscv64_leaves_out_zero_extensions_no_one_reads(monkeypatch):
    from bpforge import vm
    from bpforge.isa.asm import parse
    from bpforge.jit import compile_program, risc

    text = "w2 = w1\nw2 += 3\nw2 *= 5\n*(u32 *)(r10 - 4) = r2\nw0 = w2\nw0 <<= 1\nexit\n"
    program = vm.from_insns(parse(text).sections[0].insns, [])
    lean = len(compile_program(program, None, arch="riscv64").code)
    monkeypatch.setattr(risc, "_upper_dead", lambda lowered: frozenset())
    full = len(compile_program(program, None, arch="riscv64").code)
    # no slli+srli pair after w2 += 3 and w2 *= 5, a plain mv for w2 = w1 and w0 = w2; w0 <<= 1 is read at exit
    assert full - lean == 4 * (2 + 2 + 1 + 1)
