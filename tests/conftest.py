"""Shared test fixtures: the examples corpus, external tools and the kernel oracle (each skips with a reason)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXAMPLE_OBJECTS = sorted((EXAMPLES / "obj").glob("*.o"))


def tool(name: str) -> str:
    """Path of an external tool, or skip the test saying which one is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (make test installs it)")
    return path


def compile_cases(out: Path, stem: str, source: str, cases) -> dict:
    """Build one BPF object per case of a C source whose `#if CASE == N` arms hold the variants, with clang-19
    as the examples are built (-g -O2 -mcpu=v3, the host's asm headers): case -> `elf.BpfObject`. Skips
    when clang-19 is missing."""
    import subprocess

    from bpforge.elf import read_object

    clang = tool("clang-19")
    arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True).stdout.strip() or \
        "x86_64-linux-gnu"
    (out / f"{stem}.c").write_text(source)
    built = {}
    for case in cases:
        obj = out / f"{stem}{case}.o"
        subprocess.run([clang, "-g", "-O2", "-target", "bpf", "-mcpu=v3", f"-I/usr/include/{arch}", f"-DCASE={case}",
                        "-c", str(out / f"{stem}.c"), "-o", str(obj)], check=True, capture_output=True)
        built[case] = read_object(obj)
    return built


def code_runner(arch: str, mode: str, first_register: str):
    """run(code, n): execute `code` under unicorn from a fresh mapping and give register n (numbered from
    `first_register` in unicorn's constants, e.g. "arm64_const.UC_ARM64_REG_X0"). Skips without unicorn."""
    unicorn = pytest.importorskip("unicorn", reason="unicorn is not installed (pip install 'bpforge[jit]')")
    module, name = first_register.split(".")
    base = getattr(getattr(__import__(f"unicorn.{module}"), module), name)

    def run(code: bytes, reg: int) -> int:
        uc = unicorn.Uc(getattr(unicorn, arch), getattr(unicorn, mode))
        uc.mem_map(0x10000, 0x1000)
        uc.mem_write(0x10000, code)
        uc.emu_start(0x10000, 0x10000 + len(code))
        return uc.reg_read(base + reg)

    return run


@pytest.fixture(scope="session")
def kernel():
    """The running kernel's bpf(); skips where it cannot be used."""
    from bpforge.kernel import kernel_available

    reason = kernel_available()
    if reason is not None:
        pytest.skip(reason)
    from bpforge import kernel as module

    return module


@pytest.fixture(scope="session")
def arenas(kernel):
    """The kernel's arena maps, or skip: kernels before 6.9, without a JIT that supports them, or refusing
    them to this process (creating one asks for more than CAP_BPF on some kernels: EPERM)."""
    from bpforge.isa.maptypes import MapError, MapSpec
    from bpforge.kernel.maps import KernelMap

    try:
        KernelMap.create(MapSpec("probe", 33, 0, 0, 1, flags=0x400)).close()
    except MapError as err:
        pytest.skip(f"the kernel makes no arena maps here: {err.message}")
    return kernel

from hypothesis import settings  # noqa: E402

# HYPOTHESIS_PROFILE=deep runs the property tests much longer than CI does.
settings.register_profile("ci", deadline=None)
settings.register_profile("deep", deadline=None, max_examples=5000)
settings.load_profile(__import__("os").environ.get("HYPOTHESIS_PROFILE", "ci"))
