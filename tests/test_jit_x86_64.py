"""The x86-64 JIT: encodings against capstone, the native runtime against the interpreter (results, faults
and their messages, repeat loops, tail calls and callbacks are covered by the differential harness and the
helper tests, which run the jit engine beside the others), `bpforge run --engine jit` and `bpforge jit`.

The random-program and example differentials (tests/test_differential.py) and every kernel-differential
helper test (tests/vmdiff.py) include the jit engine: verified where our verifier accepts the program,
sandboxed where it does not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpforge.jit.native import native_available
from bpforge.jit.x86_64 import encode as X
from bpforge.jit.x86_64.encode import Mem

from conftest import EXAMPLES

capstone = pytest.importorskip("capstone", reason="capstone not installed (pip install 'bpforge[jit]')")
native = pytest.mark.skipif(native_available() is not None, reason=str(native_available()))

BPFORGE = [sys.executable, "-m", "bpforge.cli"]
IPV4_TCP = ("000000000000" "020000000001" "0800" "4500003200010000400600000a0000020a000001"
            "3039005000000001000000005002200000000000" + "00" * 10)
_MD = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
Q = {8: "byte", 16: "word", 32: "dword", 64: "qword"}
R = {64: X.NAMES,
     32: ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi") + tuple(f"r{i}d" for i in range(8, 16)),
     16: ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di") + tuple(f"r{i}w" for i in range(8, 16)),
     8: ("al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil") + tuple(f"r{i}b" for i in range(8, 16))}


def text(code: bytes) -> str:
    insns = list(_MD.disasm(code, 0))
    assert sum(i.size for i in insns) == len(code), code.hex()
    assert len(insns) == 1, [i.mnemonic for i in insns]
    return f"{insns[0].mnemonic} {insns[0].op_str}".strip()


def mem_text(m: Mem, width: int) -> str:
    inner = X.NAMES[m.base]
    if m.index is not None:
        inner += f" + {X.NAMES[m.index]}" + (f"*{m.scale}" if m.scale > 1 else "")
    if m.disp:
        shown = abs(m.disp) if abs(m.disp) < 10 else hex(abs(m.disp))  # capstone's spelling
        inner += f" {'-' if m.disp < 0 else '+'} {shown}"
    return f"{Q[width]} ptr [{inner}]"


regs = st.integers(0, 15)
bases = st.integers(0, 15)
indexes = st.one_of(st.none(), st.integers(0, 15).filter(lambda r: r != X.RSP))
mems = st.builds(Mem, bases, st.integers(-(1 << 31), (1 << 31) - 1) | st.integers(-200, 200), indexes,
                 st.sampled_from((1, 2, 4, 8)))
widths = st.sampled_from((8, 16, 32, 64))


def _norm(m: Mem) -> Mem:
    return m if m.index is not None else Mem(m.base, m.disp)


@settings(max_examples=300)
@given(st.sampled_from(("add", "or", "and", "sub", "xor", "cmp", "mov", "test")), widths, regs, regs)
def test_register_alu(op, width, dst, src):
    assert text(X.alu_rr(op, width, dst, src)) == f"{op} {R[width][dst]}, {R[width][src]}"


@settings(max_examples=300)
@given(st.sampled_from(("add", "sub", "and", "or", "xor", "cmp", "mov")), widths, mems, regs)
def test_memory_operands(op, width, mem, reg):
    mem = _norm(mem)
    assert text(X.alu_rr(op, width, mem, reg)) == f"{op} {mem_text(mem, width)}, {R[width][reg]}"
    assert text(X.alu_rm(op, width, reg, mem)) == f"{op} {R[width][reg]}, {mem_text(mem, width)}"


@settings(max_examples=300)
@given(st.sampled_from(("add", "sub", "and", "or", "xor", "cmp")), st.sampled_from((32, 64)), regs,
       st.integers(-(1 << 31), (1 << 31) - 1))
def test_immediates(op, width, dst, imm):
    expected = imm & ((1 << width) - 1)
    got = _MD.disasm(X.alu_ri(op, width, dst, imm), 0).__next__()
    assert got.mnemonic == op and got.op_str.startswith(R[width][dst] + ", ")
    assert int(got.op_str.split(", ")[1], 0) & ((1 << width) - 1) == expected


@settings(max_examples=200)
@given(regs, st.integers(0, (1 << 64) - 1))
def test_constants_load_exactly(dst, value):
    insns = list(_MD.disasm(X.mov_const(dst, value), 0))
    assert len(insns) == 1
    mnemonic, ops = insns[0].mnemonic, insns[0].op_str.split(", ")
    if mnemonic == "xor":
        assert value == 0
    else:
        shown = int(ops[1], 0)
        width = 32 if ops[0] in R[32] else 64
        assert shown & ((1 << width) - 1) == value if width == 32 else shown & (1 << 64) - 1 == value


@pytest.mark.parametrize("code, expected", [
    (X.movzx(X.R9, Mem(X.R13, 3), 8), "movzx r9d, byte ptr [r13 + 3]"),
    (X.movsx(X.RAX, Mem(X.RBP, -1), 8), "movsx rax, byte ptr [rbp - 1]"),
    (X.movsx(X.RSI, X.RDI, 32), "movsxd rsi, edi"),
    (X.bswap(32, X.R14), "bswap r14d"),
    (X.bswap(64, X.RAX), "bswap rax"),
    (X.shift_cl("sar", 32, X.R15), "sar r15d, cl"),
    (X.shift_imm("shl", 64, X.RSI, 3), "shl rsi, 3"),
    (X.shift_imm("ror", 16, X.RCX, 8), "ror cx, 8"),
    (X.unary_group3("div", 64, X.R11), "div r11"),
    (X.unary_group3("idiv", 32, X.R11), "idiv r11d"),
    (X.lock_alu("add", 32, Mem(X.R11, -8, X.RBX), X.RSI), "lock add dword ptr [r11 + rbx - 8], esi"),
    (X.xadd(64, Mem(X.RDI), X.R8), "lock xadd qword ptr [rdi], r8"),
    (X.cmpxchg(32, Mem(X.RSP), X.RBX), "lock cmpxchg dword ptr [rsp], ebx"),
    (X.xchg(64, Mem(X.RBP, -16), X.R15), "xchg qword ptr [rbp - 0x10], r15"),
    (X.push(X.R12), "push r12"), (X.pop(X.RBX), "pop rbx"),
    (X.push_mem(Mem(X.R12, 80)), "push qword ptr [r12 + 0x50]"),
    (X.pop_mem(Mem(X.R12, 80)), "pop qword ptr [r12 + 0x50]"),
    (X.store_imm(Mem(X.RBP, -2), 0xABCD, 2), "mov word ptr [rbp - 2], 0xabcd"),
    (X.store_imm(Mem(X.RBP, -1), 0xFF, 1), "mov byte ptr [rbp - 1], 0xff"),
    (X.imul_ri(64, X.RAX, X.RDX, -1000), "imul rax, rdx, -0x3e8"),
    (X.imul_rr(32, X.R9, X.R10), "imul r9d, r10d"),
    (X.lea(64, X.R11, Mem(X.RBX, -4)), "lea r11, [rbx - 4]"),
    (X.call_indirect(Mem(X.R12, 80)), "call qword ptr [r12 + 0x50]"),
    (X.jmp_indirect(Mem(X.R12, 88)), "jmp qword ptr [r12 + 0x58]"),
    (X.inc_dec("dec", 64, Mem(X.R12, 32)), "dec qword ptr [r12 + 0x20]"),
    (X.cqo(64), "cqo"), (X.cqo(32), "cdq"), (X.ret(), "ret"), (X.ud2(), "ud2"),
])
def test_other_forms(code, expected):
    assert text(code) == expected


@pytest.mark.parametrize("cond", list(X.CC))
def test_branches(cond):
    assert text(X.jcc(cond, -2, True)).split()[0] in {f"j{cond}", *_aliases(cond)}
    assert _MD.disasm(X.jcc(cond, 1000, False), 0).__next__().op_str == hex(1006)
    assert text(X.jmp(0x7F, True)) == "jmp 0x81"


def _aliases(cond: str) -> set[str]:
    return {"b": {"jb"}, "ae": {"jae"}, "e": {"je"}, "ne": {"jne"}, "p": {"jp"}, "np": {"jnp"}}.get(cond, set())


# ---- the runtime against the interpreter -----------------------------------------------------------------

def _both(text_: str, data: bytes, prog_type: str = "mem", **jit):
    """(interpreter outcome, jit outcome): (retval, data_out) or the error's text."""
    from bpforge import vm
    from bpforge.errors import BpforgeError
    from bpforge.isa import decode
    from bpforge.isa.asm import parse
    from bpforge.jit.native import JitSession, run_native

    insns = decode(text_) if isinstance(text_, bytes) else parse(text_).sections[0].insns
    out = []
    for engine in ("interp", "jit"):
        machine = vm.Machine(vm.from_insns(insns, []), budget=jit.get("budget", 10_000_000))
        try:
            if engine == "interp":
                result = machine.run(data, prog_type)
            else:
                session = JitSession(True, lambda p: None, blind=jit.get("blind", False))
                result = run_native(machine, session, data, prog_type)
            out.append((result.retval, result.data_out))
        except BpforgeError as err:
            out.append(str(err))
    return out


FAULTS = {
    "out of bounds": "r0 = *(u32 *)(r1 + 100)\nexit\n",
    "below the buffer": "r1 += -1\nr0 = *(u8 *)(r1 + 0)\nexit\n",
    "store past the end": "*(u64 *)(r1 + 4) = r1\nr0 = 0\nexit\n",
    "no memory there": "r1 = 12345\nr0 = *(u8 *)(r1 + 0)\nexit\n",
    "stack underflow": "r0 = *(u64 *)(r10 + 8)\nexit\n",
    "atomic out of bounds": "r2 = 1\nlock *(u64 *)(r1 + 16) += r2\nr0 = 0\nexit\n",
    "endless loop": "l:\nr0 += 1\ngoto l\n",
    "fall off the end": "r0 = 1\n",
    # goto +1 into the second slot of an lddw (raw bytes: the assembler refuses it)
    "jump into an lddw": bytes.fromhex("0500010000000000" "1800000001000000" "0000000000000000" "9500000000000000"),
    "recursion": "call f\nexit\nf:\ncall f\nexit\n",
    "callx to a non-function": "r1 = 77\ncallx r1\nexit\n",
    "unknown helper": "call 999\nexit\n",
}


@native
@pytest.mark.parametrize("name", FAULTS)
def test_sandbox_faults_as_the_interpreter(name):
    interp, jit = _both(FAULTS[name], bytes(8), budget=100_000)
    assert isinstance(interp, str), f"the interpreter does not fault: {interp}"
    assert jit == interp


@native
@pytest.mark.parametrize("program, data", [
    ("r0 = 0\nl:\nif r2 == 0 goto d\nr3 = *(u8 *)(r1 + 0)\nr0 += r3\nr1 += 1\nr2 -= 1\ngoto l\nd:\nexit\n",
     bytes(range(1, 40))),
    ("r2 = 0x1122334455667788 ll\n*(u64 *)(r1 + 0) = r2\nr3 = r2\nr3 = be16 r3\nr4 = r2\nr4 = bswap32 r4\n"
     "r2 = be64 r2\n"
     "*(u64 *)(r1 + 8) = r2\nr0 = r3\nr0 <<= 32\nr0 |= r4\nexit\n", bytes(16)),
    ("r0 = -7\nr2 = 2\nr0 s/= r2\nr3 = -7\nr3 s%= r2\nr4 = 0\nr5 = 9\nr5 /= r4\nw6 = 9\nw6 %= w4\n"
     "r0 += r3\nr0 += r5\nr0 += r6\nexit\n", b""),
    ("r0 = 0x80000000\nr0 <<= 32\nr2 = -1\nr0 s/= r2\nw3 = -2147483648\nw2 = -1\nw3 s%= w2\nr0 += r3\nexit\n", b""),
    ("r2 = 5\nr3 = 63\nr2 <<= r3\nr4 = 1\nw5 = 40\nw4 <<= w5\nr0 = r2\nr0 += r4\nr1 = -1\nr1 s>>= 3\n"
     "w6 = -1\nw6 >>= 4\nr0 ^= r1\nr0 += r6\nexit\n", bytes(8)),
    ("r2 = 1\n*(u64 *)(r1 + 0) = r2\nr3 = 4\nlock *(u64 *)(r1 + 0) += r3\nr3 = atomic_fetch_add((u64 *)(r1 + 0), r3)\n"
     "r4 = 0xf0\nr4 = atomic_fetch_or((u64 *)(r1 + 0), r4)\nr0 = 0xfd\nr5 = 7\n"
     "r0 = cmpxchg_64(r1 + 0, r0, r5)\nr0 += r3\nr0 += r4\nexit\n", bytes(8)),
    ("r0 = 0\nr6 = 3\ncall f\nr0 += r6\nexit\nf:\nr6 = 10\nr0 = r6\nexit\n", b""),
], ids=["loop", "byte swaps", "division", "division edge cases", "shifts", "atomics", "bpf2bpf"])
@pytest.mark.parametrize("blind", [False, True], ids=["plain", "blinded"])
def test_sandbox_results_as_the_interpreter(program, data, blind):
    interp, jit = _both(program, data, blind=blind)
    assert not isinstance(interp, str), interp
    assert jit == interp


# ---- the CLI ---------------------------------------------------------------------------------------------

def bpforge(*args, check=True):
    result = subprocess.run([*BPFORGE, *map(str, args)], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@native
def test_run_engine_jit_agrees_with_the_interpreter():
    path = EXAMPLES / "obj" / "xdp_counter.o"
    outs = [json.loads(bpforge("run", path, "--data", IPV4_TCP, "--engine", e, "--repeat", "5", "--dump-maps",
                               "--json").stdout) for e in ("interp", "jit")]
    assert outs[0]["retval"] == outs[1]["retval"] and outs[0]["data_out"] == outs[1]["data_out"]
    assert outs[0]["maps"] == outs[1]["maps"] and outs[1]["engine"] == "jit" and outs[1]["repeat"] == 5


@native
def test_unverified_program_needs_the_sandbox(tmp_path):
    src = tmp_path / "bad.s"
    src.write_text("r0 = *(u32 *)(r1 + 100)\nexit\n")
    refused = bpforge("run", src, "--type", "xdp", "--data", "00" * 20, "--engine", "jit", check=False)
    assert refused.returncode == 2 and "--sandbox" in refused.stderr and len(refused.stderr.splitlines()) == 1
    faulted = bpforge("run", src, "--type", "xdp", "--data", "00" * 20, "--engine", "jit", "--sandbox", check=False)
    interp = bpforge("run", src, "--type", "xdp", "--data", "00" * 20, "--engine", "interp", check=False)
    assert faulted.returncode == interp.returncode == 2 and faulted.stderr == interp.stderr


def test_listing_maps_every_native_instruction(tmp_path):
    path = EXAMPLES / "obj" / "xdp_lb.o"
    image = tmp_path / "xdp_lb.bin"
    listing = json.loads(bpforge("jit", path, "--arch", "x86_64", "-o", image, "--json").stdout)
    assert listing["mode"] == "verified" and listing["arch"] == "x86_64"
    slots = {entry["slot"] for entry in listing["insns"]}
    assert {entry["slot"] for entry in listing["insns"] if entry["slot"] >= 0} <= set(range(listing["bpf_insns"] * 2))
    native_bytes = sum(len(n["bytes"]) // 2 for entry in listing["insns"] for n in entry["native"])
    assert native_bytes == listing["code_bytes"] == image.stat().st_size
    bpf_with_code = [e for e in listing["insns"] if e["slot"] >= 0 and e["native"]]
    assert len(bpf_with_code) == listing["bpf_insns"] and -1 in slots
    meta = json.loads((tmp_path / "xdp_lb.bin.json").read_text())
    assert {r["kind"] for r in meta["relocations"]} >= {"map", "ctx_field", "callback"}
    assert sum(o["length"] for o in meta["origins"]) == listing["code_bytes"]
    text = bpforge("jit", path).stdout
    assert "verified" in text.splitlines()[0] and "<function at slot 0>" in text


def test_jit_refuses_an_unknown_arch():
    result = bpforge("jit", EXAMPLES / "obj" / "xdp_counter.o", "--arch", "sparc", check=False)
    assert result.returncode == 2 and "sparc" in result.stderr and "Traceback" not in result.stderr


# ---- inlined lookups: what the caches remember is what the map holds ---------------------------------------

# Look key 7 up (a miss the cache remembers), insert it, look it up again (the insert emptied the cache), write
# through the pointer, look up once more (now from the cache), delete it, and look a last time: r0 mixes every
# step's result; the map's contents are compared too. Straight-line, so both verifiers take it at once.
_LOOKUP = """
r1 = map_fd(0) ll
r2 = r10
r2 += -8
call 1
"""
LOOKUP_UPDATE_LOOKUP = f"""
r6 = 0
r7 = 0
*(u64 *)(r10 - 8) = r7
*(u64 *)(r10 - 16) = r7
r7 = 7
*(u32 *)(r10 - 8) = r7
{_LOOKUP}
if r0 != 0 goto wrong
r6 += 1
r1 = map_fd(0) ll
r2 = r10
r2 += -8
r3 = r10
r3 += -16
r4 = 0
call 2
{_LOOKUP}
if r0 == 0 goto wrong
r1 = *(u32 *)(r0 + 0)
r1 += 100
*(u32 *)(r0 + 0) = r1
r6 += r1
{_LOOKUP}
if r0 == 0 goto wrong
r1 = *(u32 *)(r0 + 0)
r1 <<= 4
r6 += r1
r1 = map_fd(0) ll
r2 = r10
r2 += -8
call 3
{_LOOKUP}
if r0 != 0 goto wrong
r6 += 100000
r0 = r6
exit
wrong:
r0 = 0xdead
exit
"""


@native
@pytest.mark.parametrize("type_name, key_size", [("hash", 8), ("lru_hash", 8), ("percpu_hash", 8), ("hash", 4),
                                                  ("lpm_trie", 8), ("hash", 1), ("hash", 3), ("lru_hash", 6)])
def test_cached_lookups_follow_updates_and_deletes(type_name, key_size):
    from vmdiff import md, run_asm, same

    text = LOOKUP_UPDATE_LOOKUP
    flags = 1 if type_name == "lpm_trie" else 0  # BPF_F_NO_PREALLOC, which LPM tries require
    if type_name == "lpm_trie":  # key: prefix length 32, then the 4 address bytes
        text = text.replace("r7 = 7\n*(u32 *)(r10 - 8) = r7", "r7 = 32\n*(u32 *)(r10 - 8) = r7\nr7 = 7\n"
                                                             "*(u32 *)(r10 - 4) = r7")
    outcomes = run_asm(text, "xdp", bytes(64), maps=[md(type_name, key_size, 4, 8, flags)], repeat=3)
    assert "jit" in outcomes
    same(outcomes)


@native
def test_inlined_lookups_are_compiled():
    """The lookups above really are inlined (not served by the helper each time)."""
    from bpforge import vm
    from bpforge.isa.asm import parse
    from bpforge.jit import compile_program
    from bpforge.jit.facts import facts_of_insns
    from bpforge.vm.maps import create_map

    from vmdiff import md

    insns = parse(LOOKUP_UPDATE_LOOKUP).sections[0].insns
    spec = md("hash", 8, 4, 8)
    program = vm.from_insns(insns, [create_map(spec)])
    facts = facts_of_insns(insns, "xdp", [spec])
    assert facts.accepted, facts.message
    image = compile_program(program, facts)
    assert [inline.kind for inline in image.lowered.lookups.values()] == ["cache"] * 4


# bpf_skb_load_bytes inside the packet (copied natively), reaching past its end, and at an offset no packet
# has (both the helper's -EFAULT with the buffer zeroed): r0 mixes the results and the bytes read.
SKB_LOAD_BYTES = """
r6 = r1
r7 = -1
*(u64 *)(r10 - 8) = r7
r1 = r6
r2 = 10
r3 = r10
r3 += -8
r4 = 8
call bpf_skb_load_bytes
r8 = *(u64 *)(r10 - 8)
r8 += r0
r1 = r6
r2 = %d
r3 = r10
r3 += -8
r4 = 8
call bpf_skb_load_bytes
r9 = *(u64 *)(r10 - 8)
r8 ^= r9
r8 += r0
r1 = r6
r2 = -1
r3 = r10
r3 += -8
r4 = 3
call bpf_skb_load_bytes
r8 += r0
r0 = r8
r0 >>= 7
exit
"""


@native
@pytest.mark.parametrize("prog_type", ["socket_filter", "sched_cls"])
@pytest.mark.parametrize("second", [0, 56, 57, 64])
def test_skb_load_bytes_inline_agrees(prog_type, second):
    from vmdiff import run_asm, same

    data = bytes(range(14, 78))  # 64 bytes
    outcomes = run_asm(SKB_LOAD_BYTES % second, prog_type, data, repeat=2)
    assert "jit" in outcomes
    same(outcomes)


# ---- constant blinding ---------------------------------------------------------------------------------

CONSTANTS = """
r0 = 0x5a5a1234
r2 = 0x1122334455667788 ll
*(u32 *)(r10 - 4) = 0x7e7e4321
r3 = *(u32 *)(r10 - 4)
r0 += r3
r0 ^= r2
r0 &= 0x3c3c6789
exit
"""


@pytest.mark.parametrize("sandbox", [False, True], ids=["verified", "sandboxed"])
def test_blinded_constants_are_not_in_the_code(sandbox):
    from bpforge import vm
    from bpforge.isa.asm import parse
    from bpforge.jit import compile_program
    from bpforge.jit.facts import facts_of_insns

    insns = parse(CONSTANTS).sections[0].insns
    facts = None if sandbox else facts_of_insns(insns, "xdp", [])
    written = [(0x5a5a1234).to_bytes(4, "little"), (0x7e7e4321).to_bytes(4, "little"),
               (0x3c3c6789).to_bytes(4, "little"), (0x11223344).to_bytes(4, "little"),
               (0x55667788).to_bytes(4, "little")]
    plain = compile_program(vm.from_insns(insns, []), facts).code
    blinded = [compile_program(vm.from_insns(insns, []), facts, blind=True).code for _ in range(2)]
    assert all(c in plain for c in written)
    assert not any(c in code for code in blinded for c in written)
    assert blinded[0] != blinded[1]  # a fresh key for every compile


@native
@pytest.mark.parametrize("name", ["xdp_counter", "xdp_lb", "tc_classifier", "socket_filter"])
def test_blinded_examples_agree_with_the_interpreter(name):
    from bpforge import load

    program = load(EXAMPLES / "obj" / f"{name}.o")
    interp = program.run(bytes.fromhex(IPV4_TCP), engine="interp", repeat=3, dump_maps=True)
    jit = program.run(bytes.fromhex(IPV4_TCP), engine="jit", repeat=3, dump_maps=True, blind=True)
    assert (jit.retval, jit.data_out, jit.maps) == (interp.retval, interp.data_out, interp.maps)


@native
def test_cli_blind():
    path = EXAMPLES / "obj" / "xdp_counter.o"
    out = json.loads(bpforge("run", path, "--data", IPV4_TCP, "--engine", "jit", "--blind", "--json").stdout)
    assert out["engine"] == "jit"
    listing = bpforge("jit", path, "--blind").stdout
    assert "xor" in listing
