"""`bpforge verify`, run in-process: the examples are accepted as the kernel accepts them; small C programs
(compiled here with clang-19) and assembly that break one rule each are rejected with the instruction, the
C line, a reason and a hint with the program's numbers, the path and the failure slice; --kernel shows
the kernel's verdict beside ours, --log our state along the failing path; bad input is one line, exit 2."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import bpforge
from bpforge.cli import main
from bpforge.isa import assemble, encode
from bpforge.isa.helper_sets import helper_allowed
from bpforge.isa.helpers import HELPER_IDS, HELPER_SIGNATURES
from bpforge.verifier.report import KernelSide, VerifyReport

from conftest import EXAMPLE_OBJECTS

NOT_KERNEL_PROGRAMS = {"asm_mem_sum.o"}  # a "mem" program (r1 = buffer, r2 = length), not a kernel type


def verify(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["verify", *map(str, args)])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def verify_json(capsys, *args) -> tuple[int, dict, str]:
    code, out, err = verify(capsys, *args, "--json")
    return code, json.loads(out), err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bpforge: ") and "Traceback" not in err, err
    return lines[0]


# ---- the examples ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [p for p in EXAMPLE_OBJECTS if p.name not in NOT_KERNEL_PROGRAMS],
                         ids=lambda p: p.name)
def test_examples_are_accepted_as_the_kernel_accepts_them(capsys, path):
    from bpforge.kernel import kernel_available

    args = [path, "--budget", "120"] + (["--kernel"] if kernel_available() is None else [])
    code, report, err = verify_json(capsys, *args)
    if report["verdict"] == "unknown":
        assert code == (2 if "kernel" not in report else 0 if report["kernel"]["verdict"] == "accept" else 1)
        pytest.skip(f"our verifier cannot decide yet: {report['message']}")
    assert report["verdict"] == "accept", report["reason"]
    assert code == 0 and err == ""
    assert report["processed"] > 0 and report["insn"] is None and report["slice"] == []
    if "kernel" in report:
        assert report["kernel"]["verdict"] == "accept" and report["disagreement"] is None


def test_the_mem_example_is_no_kernel_program(capsys):
    path = next(p for p in EXAMPLE_OBJECTS if p.name == "asm_mem_sum.o")
    code, report, _ = verify_json(capsys, path)  # read as the default type, xdp: r2 holds nothing
    assert (code, report["verdict"], report["message"]) == (1, "reject", "R2 !read_ok")
    code, out, err = verify(capsys, path, "--type", "mem")
    assert code == 2 and out == "" and "'mem' is the userspace convention" in one_line(err)


# ---- rejected C programs -----------------------------------------------------------------------------------

COMMON = """\
#define SEC(name) __attribute__((section(name), used))
typedef unsigned int u32;
typedef unsigned long long u64;
struct xdp_md { u32 data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex; };
struct __sk_buff { u32 len; };
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *) 1;
char _license[] SEC("license") = "GPL";
"""

# Each breaks one rule on the line marked FAIL (the statement the kernel refuses).
C_PROGRAMS = {
    "pkt": """
SEC("xdp")
int pkt(struct xdp_md *ctx)
{
	unsigned char *data = (void *)(long)ctx->data;
	unsigned char *end = (void *)(long)ctx->data_end;
	if (data + 14 > end)
		return 2;
	return data[20] == 6 ? 1 : 2; /* FAIL */
}
""",
    "null": """
struct {
	int (*type)[1];
	int (*max_entries)[16];
	u32 *key;
	u64 *value;
} counts SEC(".maps");

SEC("xdp")
int null(struct xdp_md *ctx)
{
	u32 key = ctx->ingress_ifindex;
	u64 *value = bpf_map_lookup_elem(&counts, &key); /* LOOKUP */
	*value += 1; /* FAIL */
	return 2;
}
""",
    "uninit": """
SEC("xdp")
int uninit(struct xdp_md *ctx)
{
	u64 x;
	asm volatile("%[x] = r4" : [x] "=r"(x)); /* FAIL */
	return x ? 1 : 2;
}
""",
    "ret": """
SEC("cgroup_skb/ingress")
int ret(struct __sk_buff *skb)
{
	return skb->len > 100 ? 7 : 1; /* FAIL */
}
""",
    "stack": """
SEC("xdp")
int stack(struct xdp_md *ctx)
{
	u64 x = ctx->ingress_ifindex;
	asm volatile("*(u64 *)(r10 - 520) = %[x]" :: [x] "r"(x) : "memory"); /* FAIL */
	return 2;
}
""",
    "div": """
SEC("xdp")
int div(struct xdp_md *ctx)
{
	u64 n = ctx->ingress_ifindex;
	asm volatile("%[n] /= 0" : [n] "+r"(n)); /* FAIL */
	return n;
}
""",
}


def _line_of(source: str, marker: str) -> int:
    return next(i for i, line in enumerate(source.splitlines(), 1) if f"/* {marker} */" in line)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (object, its C source) for every program of C_PROGRAMS."""
    clang = shutil.which("clang-19")
    if clang is None:
        pytest.skip("clang-19 not installed (make test installs it)")
    root = tmp_path_factory.mktemp("c")
    out = {}
    for name, body in C_PROGRAMS.items():
        source = COMMON + body
        c = root / f"{name}.c"
        c.write_text(source)
        obj = root / f"{name}.o"
        subprocess.run([clang, "-g", "-O2", "-target", "bpf", "-c", str(c), "-o", str(obj)], check=True,
                       capture_output=True, cwd=root)
        out[name] = (obj, source)
    return out


def _rejected_c(capsys, compiled, name):
    obj, source = compiled[name]
    code, report, err = verify_json(capsys, obj, "--log")
    assert code == 1 and err == "", err
    assert report["verdict"] == "reject" and isinstance(report["insn"], int)
    assert report["line"] == f"{name}.c:{_line_of(source, 'FAIL')}"
    slice_texts = [s["text"] for s in report["slice"]]
    assert report["slice"][-1]["insn"] == report["insn"]  # the failing instruction ends its slice
    path_texts = [row["text"] for row in report["log"]]
    return report, slice_texts, path_texts, source


def test_c_missing_data_end_check(capsys, compiled):
    report, slice_texts, path_texts, _ = _rejected_c(capsys, compiled, "pkt")
    assert report["reason"] == ("reads 1 byte at packet offset 20, but only 14 bytes past the packet start were "
                                "checked against data_end")
    assert report["hint"].startswith("compare data + 21 with data_end before this access")
    assert report["path"] and report["path"][0]["taken"] is False  # the check fell through to the access
    assert report["path"][0]["insn"] in [s["insn"] for s in report["slice"]]
    assert "r2 = *(u32 *)(r1 + 4)" in slice_texts and "r1 = *(u32 *)(r1 + 0)" in slice_texts  # data_end, data
    assert any(text.endswith("+= 14") for text in slice_texts)
    assert "r0 = 2" in path_texts and "r0 = 2" not in slice_texts  # the XDP_PASS default is no part of it


def test_c_null_map_value(capsys, compiled):
    report, slice_texts, path_texts, source = _rejected_c(capsys, compiled, "null")
    lookup = next(s for s in report["slice"] if s["text"] == "call bpf_map_lookup_elem#1")
    assert lookup["line"] == f"null.c:{_line_of(source, 'LOOKUP')}"
    assert report["reason"] == (f"reads 8 bytes through r0, which may be NULL: bpf_map_lookup_elem at insn "
                                f"{lookup['insn']} ({lookup['line']}) returns NULL when it finds nothing")
    assert report["hint"].startswith(f"check that the pointer bpf_map_lookup_elem returned (r0 at insn "
                                     f"{lookup['insn']} ({lookup['line']})) is not NULL before using it")
    assert report["state"]["registers"] == {"r0": "map_value_or_null(id=1,map=counts,ks=4,vs=8)"}
    assert "r1 = *(u32 *)(r1 + 12)" in path_texts and "r1 = *(u32 *)(r1 + 12)" not in slice_texts  # the key


def test_c_uninitialised_register(capsys, compiled):
    report, slice_texts, _, _ = _rejected_c(capsys, compiled, "uninit")
    assert report["message"] == "R4 !read_ok"
    assert report["reason"].startswith("reads r4, which is never given a value on the path to here")
    assert report["hint"] == f"set r4 before insn {report['insn']}"
    assert slice_texts == ["r1 = r4"] and report["path"] == []


def test_c_bad_return_value(capsys, compiled):
    report, slice_texts, _, _ = _rejected_c(capsys, compiled, "ret")
    assert report["reason"] == "returns 7, but a cgroup_skb program must return a value in [0, 1]"
    assert report["hint"].startswith("return a value in [0, 1] (1 lets the packet through, 0 drops it); r0 gets "
                                     "its value at insn")
    assert report["path"] and "r0 = 7" in slice_texts and "exit" in slice_texts


def test_c_stack_out_of_bounds(capsys, compiled):
    report, slice_texts, _, _ = _rejected_c(capsys, compiled, "stack")
    assert report["reason"] == "writes 8 bytes at fp-520 through r10, outside the 512-byte stack (fp-512 to fp-1)"
    assert "per-CPU array" in report["hint"]
    assert slice_texts[-1].startswith("*(u64 *)(r10 - 520) = r")


def test_c_division_by_zero(capsys, compiled):
    report, slice_texts, _, _ = _rejected_c(capsys, compiled, "div")
    assert re.fullmatch(r"divides r\d by the constant 0", report["reason"]), report["reason"]
    assert "non-zero constant" in report["hint"]
    assert re.fullmatch(r"r\d /= 0", slice_texts[-1]) and len(slice_texts) == 2  # and what set the dividend


def test_c_rejections_agree_with_the_kernel(capsys, compiled, kernel):
    for name, (obj, _) in compiled.items():
        code, report, err = verify_json(capsys, obj, "--kernel")
        assert code == 1 and err == "", (name, err)
        theirs = report["kernel"]
        assert theirs["verdict"] == "reject" and theirs["insn"] == report["insn"], (name, theirs)
        assert theirs["line"] == report["line"] and report["disagreement"] is None
        assert theirs["processed"] is not None and theirs["reason"]


def test_text_output_of_a_rejection(capsys, compiled):
    obj, source = compiled["pkt"]
    code, out, err = verify(capsys, obj)
    lines = out.splitlines()
    assert code == 1 and err == ""
    assert lines[0] == (f"{obj}: section xdp: insn {lines[0].split('insn ')[1].split(' ')[0]} "
                        f"(pkt.c:{_line_of(source, 'FAIL')}): reads 1 byte at packet offset 20, but only 14 bytes "
                        "past the packet start were checked against data_end")
    labels = [line.split(":")[0].strip() for line in lines[1:] if not line.startswith("    ")]
    assert labels == ["message", "registers", "state", "path", "slice", "hint", "ours"]


# ---- rejected assembly, --log, --kernel ----------------------------------------------------------------------

PACKET = """
    r0 = 2
    r2 = *(u32 *)(r1 + 0)
    r3 = *(u32 *)(r1 + 4)
    r4 = r2
    r4 += 14
    if r4 > r3 goto out
    r0 = *(u8 *)(r2 + 20)
out:
    exit
"""


def test_log_prints_one_line_per_instruction_of_the_failing_path(capsys, tmp_path):
    from bpforge.verifier.check import verify_program

    source = tmp_path / "p.s"
    source.write_text(PACKET)
    trace = verify_program(assemble(PACKET), "xdp").trace
    code, out, _ = verify(capsys, source, "--log")
    log = out.split("log (our state before each instruction of the failing path):\n")[1].splitlines()
    assert code == 1 and len(log) == len(trace) == 7
    assert [int(line.split(":")[0]) for line in log] == trace
    assert log[-1].split(";", 1)[1].strip() == "R0=2 R1=ctx() R2=pkt(r=14) R3=pkt_end() R4=pkt(off=14,r=14) R10=fp0"
    code, out, _ = verify(capsys, source, "--log", "--json")
    assert [row["insn"] for row in json.loads(out)["log"]] == trace


def test_log_of_an_accepted_program(capsys, tmp_path):
    source = tmp_path / "ok.s"
    source.write_text("r0 = 2\nexit\n")
    code, out, err = verify(capsys, source, "--log")
    assert code == 0 and err == ""
    assert out == (f"{source}: section .text: accepted (2 insns processed, 0 states)\n"
                   "log: no failing path (the program is accepted)\n")


def test_kernel_beside_ours(capsys, tmp_path, kernel):
    source = tmp_path / "p.s"
    source.write_text(PACKET)
    code, out, err = verify(capsys, source, "--kernel")
    assert code == 1 and err == ""
    assert "  kernel: rejects at insn 6 (7 insns processed): invalid access to packet, off=20 size=1" in out
    assert "  the kernel agrees" in out
    ok = tmp_path / "ok.s"
    ok.write_text("r0 = 2\nexit\n")
    code, report, err = verify_json(capsys, ok, "--kernel")
    assert code == 0 and report["kernel"] == {"verdict": "accept", "insn": None, "line": None, "message": "",
                                              "reason": None, "hint": None, "processed": 2}


def test_a_disagreement_is_said_clearly():
    report = VerifyReport("p.o", "xdp", "p", "xdp", "accept", processed=3)
    report.kernel = KernelSide("reject", "R0 !read_ok", 2, None, 3, "the program exits without ...", None)
    assert report.disagreement.startswith("DISAGREEMENT: our verifier accepts, the kernel rejects at insn 2")
    assert report.disagreement in report.text() and report.as_json()["disagreement"] == report.disagreement
    assert report.outcome == "reject"  # the kernel's verdict counts


# ---- undecided ---------------------------------------------------------------------------------------------

def _unmodelled_helper() -> int:
    """A helper XDP programs may call whose signature our helper table does not have yet."""
    for name, helper in sorted(HELPER_IDS.items(), key=lambda item: item[1]):
        if helper not in HELPER_SIGNATURES and helper_allowed("xdp", helper):
            return helper
    pytest.skip("every helper XDP may call has a signature: nothing undecided to show")


def test_undecided_is_one_line_and_exit_2(capsys, tmp_path):
    source = tmp_path / "u.s"
    source.write_text(f"call {_unmodelled_helper()}\nr0 = 2\nexit\n")
    code, out, err = verify(capsys, source)
    assert code == 2 and out == ""
    assert re.fullmatch(rf"bpforge: {re.escape(str(source))}: section \.text: (insn \d+: )?cannot decide: .+",
                        one_line(err))
    code, report, err = verify_json(capsys, source)
    assert code == 2 and report["verdict"] == "unknown" and report["message"] and "cannot decide" in one_line(err)


def test_undecided_beside_the_kernel_follows_the_kernel(capsys, tmp_path, kernel):
    source = tmp_path / "u.s"
    source.write_text(f"call {_unmodelled_helper()}\nr0 = 2\nexit\n")
    code, report, err = verify_json(capsys, source, "--kernel")
    assert report["verdict"] == "unknown" and report["disagreement"] is None
    assert code == (0 if report["kernel"]["verdict"] == "accept" else 1) and err == ""
    code, out, _ = verify(capsys, source, "--kernel")
    assert "cannot decide" in out.splitlines()[0] and "  kernel: " in out


def test_a_time_budget_that_runs_out(capsys):
    path = next(p for p in EXAMPLE_OBJECTS if p.name == "xdp_lb.o")
    code, out, err = verify(capsys, path, "--budget", "1e-9")
    assert code == 2 and out == "" and one_line(err).endswith("(the time budget ran out)")
    code, _, err = verify(capsys, path, "--budget", "0")
    assert code == 2 and "--budget must be a positive number" in one_line(err)


# ---- bad input ---------------------------------------------------------------------------------------------

def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a program\n")
    broken = tmp_path / "broken.bin"
    code = bytearray(encode(assemble("r0 = 2\nr0 += 1\nexit")))
    code[8] = 0xFF
    broken.write_bytes(bytes(code))
    ok = tmp_path / "ok.s"
    ok.write_text("r0 = 2\nexit\n")
    for args, words in (([text], "notes.txt"), ([broken], "unknown opcode 0xff"),
                        ([ok, "--type", "nope"], "unknown program type 'nope'"),
                        ([tmp_path / "missing.o"], "missing.o")):
        status, out, err = verify(capsys, *args)
        assert status == 2 and out == "" and words in one_line(err), (args, err)


# ---- the API -----------------------------------------------------------------------------------------------

def test_program_verify(tmp_path):
    source = tmp_path / "p.s"
    source.write_text(PACKET)
    seen = []
    report = bpforge.load(source).verify(progress=seen.append)
    assert not report.accepted and report.verdict == "reject" and report.insn == 6
    assert report.explanation.reason.startswith("reads 1 byte at packet offset 20")
    keys = {"verdict", "insn", "line", "message", "state", "path", "reason", "hint", "slice", "processed", "states"}
    assert keys <= set(report.as_json())
    assert report.text().startswith(f"{source}: section .text: insn 6: reads 1 byte")
    accepted = bpforge.load(next(p for p in EXAMPLE_OBJECTS if p.name == "xdp_counter.o")).verify()
    assert accepted.accepted and accepted.as_json()["insn"] is None and accepted.kernel is None
