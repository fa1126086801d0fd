"""Device capability profiles: what a device can run and what it costs, read from TOML files.

The package ships one file per device in `offload/profiles/` (`bpforge offload devices` lists them); a path
to a file of the same format names a device of one's own. The format, every key required unless noted:

    name, description      the device's name (how --device names it) and one line about it
    isa                    x86_64 (the host), arm64 or riscv64: the JIT backend and the emulated core
    kind                   host | nic
    clock_mhz              the core's clock, to turn device cycles into time
    prog_types             program types the device attaches (["*"]: all)
    [limits]               insns (max BPF instructions), stack (bytes), packet (bytes the device holds),
                           map_memory (bytes for all device maps), max_entries, max_key_size,
                           max_value_size (per map); 0 means no limit of the device's own
    [maps]                 types (map type names as bpftool spells them, or ["*"]), host_access (may a
                           device program reach maps left on the host, at costs.host_map_access a call)
    [helpers]              supported: helper names without "bpf_" (["*"]: all)
    [features]             division (none | constants | full), signed_division, atomics (operation
                           names: add, or, and, xor, xchg, cmpxchg, or ["*"]), atomic_fetch, tail_calls,
                           bpf_calls, kfuncs, legacy_packet_loads (ld_abs/ld_ind), cpu_v4 (movsx, sign-
                           extending loads, sdiv/smod, bswap, gotol, load-acquire/store-release),
                           may_goto, arena
    [costs]                device cycles: alu32, alu64, mul, div, branch, load_stack, load_memory,
                           store_stack, store_memory, atomic, call (a bpf2bpf call), host_map_access,
                           handoff_byte (per byte of live state handed to the host)
    [costs.helpers]        cycles per helper call by name; `default` for the others
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import BpforgeError
from ..isa.helpers import helper_id
from ..isa.maptypes import MAP_TYPES

ISAS = ("x86_64", "arm64", "riscv64")
DIVISION = ("none", "constants", "full")
ATOMIC_OPS = ("add", "or", "and", "xor", "xchg", "cmpxchg")
_LIMITS = ("insns", "stack", "packet", "map_memory", "max_entries", "max_key_size", "max_value_size")
_FEATURES = {"division": str, "signed_division": bool, "atomics": list, "atomic_fetch": bool, "tail_calls": bool,
             "bpf_calls": bool, "kfuncs": bool, "legacy_packet_loads": bool, "cpu_v4": bool, "may_goto": bool,
             "arena": bool}
COST_KEYS = ("alu32", "alu64", "mul", "div", "branch", "load_stack", "load_memory", "store_stack", "store_memory",
             "atomic", "call", "host_map_access", "handoff_byte")


class ProfileError(BpforgeError):
    """A device profile that cannot be read, or a device that does not exist."""


@dataclass(frozen=True)
class Limits:
    insns: int
    stack: int
    packet: int
    map_memory: int
    max_entries: int
    max_key_size: int
    max_value_size: int


@dataclass(frozen=True)
class Features:
    division: str
    signed_division: bool
    atomics: frozenset[str]
    atomic_fetch: bool
    tail_calls: bool
    bpf_calls: bool
    kfuncs: bool
    legacy_packet_loads: bool
    cpu_v4: bool
    may_goto: bool
    arena: bool


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    isa: str
    kind: str
    clock_mhz: int
    prog_types: frozenset[str]  # "*": all
    limits: Limits
    map_types: frozenset[str]  # "*": all
    host_map_access: bool
    helpers: frozenset[str]  # "*": all
    features: Features
    costs: dict[str, int]
    helper_costs: dict[str, int]  # by helper name; "default" for the others
    source: str  # the file it came from

    def takes_prog_type(self, prog_type: str) -> bool:
        return "*" in self.prog_types or prog_type in self.prog_types

    def holds_map_type(self, type_name: str) -> bool:
        return "*" in self.map_types or type_name in self.map_types

    def serves_helper(self, name: str) -> bool:
        return "*" in self.helpers or name in self.helpers

    def does_atomic(self, op: str) -> bool:
        return "*" in self.features.atomics or op in self.features.atomics

    def helper_cost(self, name: str) -> int:
        return self.helper_costs.get(name, self.helper_costs["default"])

    def as_json(self) -> dict:
        return {"name": self.name, "description": self.description, "isa": self.isa, "kind": self.kind,
                "clock_mhz": self.clock_mhz, "prog_types": sorted(self.prog_types),
                "limits": vars(self.limits).copy(), "map_types": sorted(self.map_types),
                "host_map_access": self.host_map_access, "helpers": sorted(self.helpers),
                "features": {k: sorted(v) if isinstance(v, frozenset) else v for k, v in vars(self.features).items()},
                "costs": dict(self.costs), "helper_costs": dict(self.helper_costs), "source": self.source}


def shipped() -> list[str]:
    """Names of the profiles the package ships."""
    folder = resources.files(__package__) / "profiles"
    return sorted(entry.name.removesuffix(".toml") for entry in folder.iterdir() if entry.name.endswith(".toml"))


def profile(device: str) -> DeviceProfile:
    """A shipped profile by name, or a profile file by path."""
    if device.endswith(".toml") or "/" in device:
        path = Path(device)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ProfileError(f"{device}: {err.strerror or err}") from None
        return parse_profile(text, str(path))
    if device not in shipped():
        raise ProfileError(f"no device '{device}' (devices: {', '.join(shipped())}; or a profile's .toml path)")
    text = (resources.files(__package__) / "profiles" / f"{device}.toml").read_text(encoding="utf-8")
    return parse_profile(text, f"{device}.toml")


def all_profiles() -> list[DeviceProfile]:
    return [profile(name) for name in shipped()]


def parse_profile(text: str, source: str) -> DeviceProfile:
    """A profile from its TOML text; ProfileError naming the file and key for anything missing or wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{source}: not a TOML profile: {err}") from None
    read = _Reader(data, source)
    name = read.value("name", str)
    isa = read.choice("isa", ISAS)
    limits = Limits(**{key: read.count(f"limits.{key}") for key in _LIMITS})
    features = {key: read.value(f"features.{key}", kind) for key, kind in _FEATURES.items()}
    if features["division"] not in DIVISION:
        raise ProfileError(f"{source}: features.division must be one of {', '.join(DIVISION)}")
    atomics = frozenset(read.names("features.atomics", (*ATOMIC_OPS, "*")))
    helpers = read.names("helpers.supported", None)
    unknown = [h for h in helpers if h != "*" and helper_id(h) is None]
    if unknown:
        raise ProfileError(f"{source}: helpers.supported: no helper named {', '.join(unknown)}")
    helper_costs = read.table("costs.helpers")
    if "default" not in helper_costs:
        raise ProfileError(f"{source}: costs.helpers needs a 'default'")
    for key, value in helper_costs.items():
        if key != "default" and helper_id(key) is None or not isinstance(value, int) or value < 0:
            raise ProfileError(f"{source}: costs.helpers.{key}: a helper name and a count of cycles")
    read.finish({"name", "description", "isa", "kind", "clock_mhz", "prog_types", "limits", "maps", "helpers",
                 "features", "costs"})
    return DeviceProfile(
        name=name, description=read.value("description", str), isa=isa, kind=read.choice("kind", ("host", "nic")),
        clock_mhz=read.count("clock_mhz", positive=True), prog_types=frozenset(read.names("prog_types", None)),
        limits=limits, map_types=frozenset(read.names("maps.types", (*MAP_TYPES, "*"))),
        host_map_access=read.value("maps.host_access", bool), helpers=frozenset(helpers),
        features=Features(**{**features, "atomics": atomics}),
        costs={key: read.count(f"costs.{key}") for key in COST_KEYS}, helper_costs=helper_costs, source=source)


class _Reader:
    """Typed access to a profile's keys, every error naming the file and the dotted key."""

    def __init__(self, data: dict, source: str) -> None:
        self.data, self.source = data, source

    def _get(self, dotted: str):
        node = self.data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ProfileError(f"{self.source}: missing key {dotted}")
            node = node[part]
        return node

    def value(self, dotted: str, kind: type):
        found = self._get(dotted)
        if kind is int and isinstance(found, bool) or not isinstance(found, kind):
            raise ProfileError(f"{self.source}: {dotted} must be a {kind.__name__}, not {found!r}")
        return found

    def count(self, dotted: str, positive: bool = False) -> int:
        found = self.value(dotted, int)
        if found < (1 if positive else 0):
            raise ProfileError(f"{self.source}: {dotted} must be {'positive' if positive else 'at least 0'}")
        return found

    def choice(self, dotted: str, allowed) -> str:
        found = self.value(dotted, str)
        if found not in allowed:
            raise ProfileError(f"{self.source}: {dotted} must be one of {', '.join(allowed)}, not {found!r}")
        return found

    def names(self, dotted: str, allowed) -> list[str]:
        found = self.value(dotted, list)
        if not all(isinstance(item, str) for item in found):
            raise ProfileError(f"{self.source}: {dotted} must be a list of names")
        bad = [item for item in found if allowed is not None and item not in allowed]
        if bad:
            raise ProfileError(f"{self.source}: {dotted}: unknown {', '.join(bad)}")
        return found

    def table(self, dotted: str) -> dict:
        found = self.value(dotted, dict)
        return dict(found)

    def finish(self, known: set[str]) -> None:
        """Every key must be one the format has: a misspelt key would otherwise be silently ignored."""
        tables = {"limits": set(_LIMITS), "maps": {"types", "host_access"}, "helpers": {"supported"},
                  "features": set(_FEATURES), "costs": {*COST_KEYS, "helpers"}}
        extra = sorted(set(self.data) - known)
        extra += sorted(f"{table}.{key}" for table, keys in tables.items()
                        for key in set(self.data.get(table, {})) - keys)
        if extra:
            raise ProfileError(f"{self.source}: unknown key {', '.join(extra)}")
