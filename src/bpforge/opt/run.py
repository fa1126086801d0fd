"""`bpforge optimize` as a library call: a loaded program in, the optimized program written out and a
report back. The CLI and `bpforge.optimize` are thin layers over `optimize_loaded`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import BpforgeError
from ..formats.loader import LoadedProgram
from .backends import Backend
from .gate import Subject
from .optimize import OptimizeOptions, Progress, optimize_subject
from .output import default_format, editable, write_optimized
from .report import OptimizeReport

COSTS = ("size", "latency")
FORMATS = ("elf", "raw", "asm", "k2")


def check_options(options: OptimizeOptions) -> None:
    if options.cost not in COSTS:
        raise BpforgeError(f"--cost must be one of {', '.join(COSTS)}, not '{options.cost}'")
    if options.budget is not None and not options.budget > 0:
        raise BpforgeError(f"--budget must be a positive number of seconds, not {options.budget}")
    if options.jobs < 1:
        raise BpforgeError(f"--jobs must be at least 1, not {options.jobs}")
    if not options.checkpoint_every > 0:
        raise BpforgeError("--checkpoint-every must be a positive number of seconds, not "
                           f"{options.checkpoint_every}")


def optimize_loaded(loaded: LoadedProgram, options: OptimizeOptions = OptimizeOptions(), *,
                    output: str | Path | None = None, fmt: str | None = None, progress: Progress | None = None,
                    stop: Callable[[], bool] | None = None, backend: Backend | None = None) -> OptimizeReport:
    """Optimize what `formats.load_program` read; write the result to `output` (format `fmt`, default the
    input's kind) when given. The result is written even when the run was interrupted: it is the best
    accepted version found so far. `backend`: where the search runs (default: what the options ask for,
    for this run only)."""
    check_options(options)
    fmt = fmt or default_format(loaded)
    if fmt not in FORMATS:
        raise BpforgeError(f"--format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    if fmt == "elf" and loaded.object is None:
        raise BpforgeError("--format elf needs an ELF object as input (this is "
                           f"{loaded.kind}); choose raw, asm or k2", file=loaded.filename)
    subject = Subject.of(loaded, kernel=options.kernel)
    subject.editable = editable(loaded)
    with subject:
        try:
            outcome = optimize_subject(subject, options, progress=progress, stop=stop, backend=backend)
        except BpforgeError as err:
            raise err.at(file=loaded.filename, section=loaded.section) from None
    report = OptimizeReport(loaded.filename, loaded.section, loaded.name, loaded.prog_type, outcome)
    if output is not None:
        data = write_optimized(loaded, outcome.transformation, fmt)
        Path(output).write_bytes(data)
        report.output = str(output)
    return report


__all__ = ["COSTS", "FORMATS", "check_options", "optimize_loaded"]
