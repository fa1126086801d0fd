"""bpforge: load, verify, optimize, offload and partition eBPF programs.

`bpforge.load(path)` reads a program file in any format the `bpforge` command takes and returns a `Program`
with `.run(...)`, `.disasm()` and `.info()`; README.md ("Python API") shows it at work. Errors are
`bpforge.BpforgeError`s that name the file, section and instruction (slot).
"""

from typing import TYPE_CHECKING

from .errors import BpforgeError

__version__ = "0.1.0"

# The API (api.py) is imported on first use, not with the package: every `import bpforge.isa` (and the
# command's --version) imports this file first, and should not pay for the ELF reader and the formats.
_LAZY = {"load": "api", "optimize": "api", "optimize_many": "api", "devices": "api", "Program": "api",
         "Info": "views", "RunReport": "runner", "kernel_programs": "api", "kernel_maps": "api",
         "kernel_map_entries": "api"}
# What a partitionable application writes (`bpforge.HashMap(...)`, `@bpforge.offload(...)`): partition.runtime.
_LAZY.update({name: "partition.runtime" for name in ("U8", "U16", "U32", "U64", "Bytes", "Struct", "HashMap",
                                                      "ArrayMap", "offload")})

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from .api import (Program, devices, kernel_map_entries, kernel_maps, kernel_programs, load, optimize,
                      optimize_many)
    from .partition.runtime import U8, U16, U32, U64, ArrayMap, Bytes, HashMap, Struct, offload
    from .runner import RunReport
    from .views import Info


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'bpforge' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_LAZY[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["U8", "U16", "U32", "U64", "ArrayMap", "BpforgeError", "Bytes", "HashMap", "Info", "Program", "RunReport",
           "Struct", "__version__", "devices", "kernel_map_entries", "kernel_maps", "kernel_programs", "load", "offload",
           "optimize", "optimize_many"]
