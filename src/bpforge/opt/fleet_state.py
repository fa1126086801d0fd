"""The state file of `bpforge optimize-many` (OUTDIR/bpforge-fleet.json), which makes a fleet resumable: per
object (its path relative to the fleet) the sha256 of the input and, per program, the row of its last
attempt, status included.

    {"format": "bpforge-fleet/1",
     "objects": {"net/xdp_lb.o": {"sha256": "…", "programs": {"xdp_lb": {"status": "done", "before": …}}}}}

It is rewritten whole after each program, atomically, and only after that program's output object was
written (atomically too): whatever moment a run is killed at, a program the state calls done has its result
in the output. A row recorded against another digest than the input's now is stale and is never read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import BpforgeError
from ..files import read_input, write_atomic
from .fleet_report import FleetRow

STATE_FILE = "bpforge-fleet.json"
CHECKPOINTS = ".bpforge-checkpoints"  # the running program's checkpoint, beside the state
FORMAT = "bpforge-fleet/1"


class FleetState:
    """The state file of one OUTDIR, read once and written after every program."""

    def __init__(self, path: Path, objects: dict[str, dict] | None = None) -> None:
        self.path = path
        self._objects = objects if objects is not None else {}

    @staticmethod
    def read(outdir: Path) -> "FleetState":
        """The state in `outdir`, empty when there is none yet; BpforgeError naming the file when it is not
        one of ours (written by something else: delete it to start over)."""
        path = outdir / STATE_FILE
        if not path.exists():
            return FleetState(path)
        try:
            data = json.loads(read_input(path, what="fleet state"))
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            objects = data["objects"]
            for entry in objects.values():
                str(entry["sha256"])
                for row in entry["programs"].values():
                    FleetRow.from_json(row)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
            raise BpforgeError(f"not a usable fleet state ({err}); delete it to start the fleet over",
                               file=str(path)) from None
        return FleetState(path, objects)

    def rows(self, obj: str, digest: str) -> dict[str, FleetRow]:
        """The rows recorded for the programs of `obj` (by name), if they were made from the input `digest`."""
        entry = self._objects.get(obj)
        if entry is None or entry["sha256"] != digest:
            return {}
        return {name: FleetRow.from_json(row) for name, row in entry["programs"].items()}

    def record(self, obj: str, digest: str, row: FleetRow) -> None:
        """Keep `row` for its program of `obj` and write the state; rows of another input digest go."""
        entry = self._objects.get(obj)
        if entry is None or entry["sha256"] != digest:
            entry = self._objects[obj] = {"sha256": digest, "programs": {}}
        entry["programs"][row.program] = row.as_json()
        self.save()

    def checkpoint_path(self, obj: str, program: str) -> Path:
        """Where the optimizer keeps its checkpoint (`opt.checkpoint`) while `program` of `obj` runs, so a
        program killed mid-way goes on from where it was; removed once the program is done."""
        name = hashlib.sha256(f"{obj}\0{program}".encode()).hexdigest()[:16]
        folder = self.path.parent / CHECKPOINTS
        folder.mkdir(exist_ok=True)
        return folder / f"{name}.json"

    def forget(self, obj: str) -> None:
        """Drop what is recorded for `obj` (its output is gone, so nothing of it can be resumed)."""
        if self._objects.pop(obj, None) is not None:
            self.save()

    def save(self) -> None:
        text = json.dumps({"format": FORMAT, "objects": self._objects}, indent=1) + "\n"
        write_atomic(self.path, text.encode())


__all__ = ["FORMAT", "STATE_FILE", "FleetState"]
