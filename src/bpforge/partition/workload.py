"""memcached-over-UDP request mixes and a client that replays them: every reply kept (matched to its
request by the frame's request id), requests per second and latency measured.

A mix is deterministic (seeded): the same `Mix` gives the same datagrams, so two servers can be compared
reply by reply. It first stores every key once (so GETs can hit), then draws GETs of stored keys, GETs of
keys never stored (misses), SETs, DELETEs and malformed requests, and "races": a SET immediately followed
by GETs of the same key, sent back to back without waiting for the SET's reply.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import BpforgeError

_FRAME = struct.Struct(">HHHH")  # request id, sequence, datagram count, reserved
# Requests every server must refuse (ERROR), among them the ones an XDP fast path could get wrong.
BAD_REQUESTS = (b"gte a\r\n", b"get\r\n", b"get " + b"k" * 33 + b"\r\n", b"get a b\r\n", b"get a\x00\r\n",
                b"get a", b"set a 1 0 3\r\nab\r\n", b"set a\x00 1 0 1\r\nx\r\n", b"set b 1 0 65\r\n" + b"v" * 65 + b"\r\n",
                b"delete\r\n", b"delete a b\r\n", b"GET a\r\n", b"")


class WorkloadError(BpforgeError):
    """A mix that cannot be made (bad fractions or sizes)."""


@dataclass(frozen=True)
class Mix:
    """What to send: `requests` in all (the stores of the warm-up included), over `keys` stored keys and
    `missing` keys never stored; the fractions of GET, SET, DELETE, malformed requests and races among
    the rest (they are weights: they need not add up to 1); values of 0..`value_max` bytes."""

    requests: int = 2000
    keys: int = 64
    missing: int = 16
    get: float = 0.7
    set: float = 0.12
    delete: float = 0.04
    bad: float = 0.02
    race: float = 0.06
    race_gets: int = 2
    value_max: int = 64
    seed: int = 1
    prefix: str = "key"  # clients with different prefixes share no key, so each sees a sequential server


@dataclass(frozen=True)
class Request:
    """One datagram; requests of one `burst` (a race) are sent back to back. `answered`: whether a server
    replies at all (not to a datagram shorter than the frame header)."""

    payload: bytes
    burst: int
    answered: bool = True


def _key(prefix: str, i: int) -> bytes:
    return b"%s:%d" % (prefix.encode(), i)


def _value(rng: random.Random, value_max: int) -> bytes:
    size = rng.randint(0, value_max)
    value = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(size))
    if size >= 4 and rng.random() < 0.1:  # data may hold the line end: only its length delimits it
        at = rng.randrange(size - 1)
        value = value[:at] + b"\r\n" + value[at + 2:]
    return value


def make_requests(mix: Mix) -> list[Request]:
    """The datagrams of `mix`, in sending order (request id = position, modulo 2^16)."""
    weights = (mix.get, mix.set, mix.delete, mix.bad, mix.race)
    if mix.requests <= 0 or mix.keys <= 0 or mix.missing < 0 or min(weights) < 0 or sum(weights) <= 0:
        raise WorkloadError(f"not a usable mix: {mix}")
    if not 0 < len(mix.prefix) <= 16 or not all(c.isalnum() or c in "_-" for c in mix.prefix):
        raise WorkloadError(f"a key prefix is 1..16 letters, digits, '_' or '-', not {mix.prefix!r}")
    if not 0 <= mix.value_max <= 64:
        raise WorkloadError(f"values are 0..64 bytes, not up to {mix.value_max}")
    rng = random.Random(mix.seed)
    bodies: list[tuple[bytes, int]] = []  # (request body, burst)

    def store(key: bytes, burst: int) -> None:
        value = _value(rng, mix.value_max)
        bodies.append((b"set %s %d 0 %d\r\n%s\r\n" % (key, rng.randrange(1 << 32), len(value), value), burst))

    for i in range(mix.keys):
        store(_key(mix.prefix, i), len(bodies))
    while len(bodies) < mix.requests:
        burst = len(bodies)
        kind = rng.choices(("get", "set", "delete", "bad", "race"), weights)[0]
        key = _key(mix.prefix, rng.randrange(mix.keys))
        if kind == "get":
            if mix.missing and rng.random() < mix.missing / (mix.keys + mix.missing):
                key = _key(mix.prefix + "-miss", rng.randrange(mix.missing))
            bodies.append((b"get %s\r\n" % key, burst))
        elif kind == "set":
            store(key, burst)
        elif kind == "delete":
            bodies.append((b"delete %s\r\n" % key, burst))
        elif kind == "bad":
            bodies.append((rng.choice(BAD_REQUESTS), burst))
        else:
            store(key, burst)
            bodies.extend((b"get %s\r\n" % key, burst) for _ in range(mix.race_gets))
    requests = [Request(_FRAME.pack(i & 0xFFFF, 0, 1, 0) + body, burst)
                for i, (body, burst) in enumerate(bodies[:mix.requests])]
    # One datagram too short for a frame header: no reply is due (and none can be matched).
    if len(requests) > mix.keys + 1:
        at = mix.keys + (len(requests) - mix.keys) // 2
        requests[at] = Request(b"\x00\x01", requests[at].burst, answered=False)
    return requests


@dataclass
class Result:
    """What a replay got back: `replies[i]` is the reply to request i (None: none came, or none was due),
    `latencies` the seconds from sending to the reply of each answered request, `elapsed` from the first
    send to the last reply."""

    replies: list[bytes | None]
    latencies: list[float] = field(repr=False)
    elapsed: float
    sent: int
    lost: int

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, p: float) -> float:
        """The latency below which a fraction `p` of the answered requests were (seconds)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    @property
    def median(self) -> float:
        return self.percentile(0.5)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)


def replay(sock: socket.socket, address: tuple[str, int], requests: Sequence[Request], *, window: int = 1,
           timeout: float = 1.0, duration: float | None = None) -> Result:
    """Send `requests` in order from `sock` to `address`, at most `window` awaiting a reply at a time
    (a race's burst goes out whole, whatever the window), and collect the replies. A request unanswered
    after `timeout` seconds is lost; after `duration` seconds no new request is sent."""
    if not 0 < window < 1 << 15:
        raise WorkloadError(f"window must be 1..32767, not {window}")
    replies: list[bytes | None] = [None] * len(requests)
    latencies: list[float] = []
    waiting: dict[int, tuple[int, float]] = {}  # request id -> (index, time sent)
    sock.setblocking(False)
    start = time.perf_counter()
    last = start
    stop_at = None if duration is None else start + duration
    index, lost = 0, 0
    while index < len(requests) or waiting:
        now = time.perf_counter()
        if stop_at is not None and now >= stop_at and index < len(requests):
            requests = requests[:index]
            replies = replies[:index]
        while index < len(requests) and len(waiting) < window:
            burst = requests[index].burst
            while index < len(requests) and requests[index].burst == burst:
                request = requests[index]
                sock.sendto(request.payload, address)
                if request.answered:
                    waiting[_FRAME.unpack_from(request.payload)[0]] = (index, time.perf_counter())
                index += 1
        if not waiting:
            continue
        oldest = min(sent for _, sent in waiting.values())
        ready, _, _ = select.select([sock], [], [], max(0.0, oldest + timeout - time.perf_counter()))
        if not ready:
            now = time.perf_counter()
            for rid, (i, sent) in list(waiting.items()):
                if now - sent >= timeout:
                    del waiting[rid]
                    lost += 1
            continue
        while True:
            try:
                data = sock.recv(2048)
            except BlockingIOError:
                break
            if len(data) < _FRAME.size:
                continue
            entry = waiting.pop(_FRAME.unpack_from(data)[0], None)
            if entry is None:
                continue  # late, or not ours
            i, sent = entry
            last = time.perf_counter()
            replies[i] = data
            latencies.append(last - sent)
    return Result(replies, latencies, last - start, index, lost)


__all__ = ["BAD_REQUESTS", "Mix", "Request", "Result", "WorkloadError", "make_requests", "replay"]
