"""kvcache split by hand: xdp_kvcache.c answers GET hits at XDP, this process answers everything else with
the unchanged handler of server.py and keeps the XDP cache (the baseline bench/partition.py compares the
automatic partition with).

    python3 examples/kvcache/hand_server.py --maps DIR [--port 11211] [--bind ADDR]
    python3 examples/kvcache/hand_server.py --dev IFACE [--object examples/obj/xdp_kvcache.o] ...

With --maps the XDP program is loaded and attached by someone else (partition.netlab, in the tests and
the benchmark) who pinned its maps kv_cache, kv_seen and kv_done in the bpffs directory DIR; with --dev
this process loads it, attaches it to IFACE and detaches it when it ends.

Why every reply equals the Python-only server's (server.py processing the same datagrams one after the
other in arrival order), for one client's requests that arrive in the order sent:

- The store is server.py's `cache`, in this process, changed only by `handle`, which runs here on the
  datagrams XDP passes, in their arrival order (one veth receive queue, one socket: the stack keeps their
  order). So every reply made here is the sequential one, provided XDP's answers are.
- kv_seen[b] counts the SET/DELETE datagrams of bucket b that XDP has passed up; kv_done[b] (written only
  here) counts those applied here, each after the store and the kv_cache entry of its key have been
  updated. XDP sees datagrams one at a time in arrival order, so when it handles a GET g of key k in
  bucket b, kv_seen[b] is the number n of writes of bucket b that arrived before g. Written only by XDP,
  kv_seen[b] = kv_done[b] then means this process has applied all n of them and no later one (a later
  datagram has not passed XDP yet), so the store holds for k exactly the value the sequential server
  would read for g.
- XDP answers g only when kv_seen[b] = kv_done[b] and kv_cache[k] exists, and then kv_cache[k] is the
  reply for the store's current value. Take the last write W of kv_cache[k] by this process before g's
  lookup. (a) W applied a write u of k: every write of k applied here before g's lookup had its cache
  update before raising kv_done, so none came after u (W is the last), and the store's k is u's value,
  which W wrote. (b) W was a populate after a GET miss: it wrote the reply for the store as it was at
  W; a write of k applied after W would have updated kv_cache[k] after W, so there was none, and the
  store's k is unchanged since W. XDP itself only deletes entries (on each SET/DELETE it passes), which
  can turn a hit into a miss, never into a wrong answer.
- A populate is only done while kv_seen[b] = kv_done[b] (no write of the bucket in flight): not needed
  for the argument above, which holds anyway, but it keeps stale entries from being written at all.
- The cached value is the handler's own reply to "get KEY" (hit_reply), so an XDP answer is byte for byte
  the handler's; XDP changes only the frame header, as handle() does (sequence 0 of 1).
- Memory order: this process writes kv_cache[k] and then kv_done[b] in two bpf() calls; XDP reads
  kv_seen[b], kv_done[b] and then kv_cache[k]. The hash map publishes a new element with a release
  (rcu_assign_pointer) and x86-64 keeps both stores and both loads in program order, so a GET that sees the
  new kv_done sees the new entry. (A weakly ordered CPU would want a load-acquire of kv_done in XDP.)
- Datagrams that XDP counts but that never get here (a full socket buffer, a bad checksum) leave
  kv_seen[b] > kv_done[b] for good: the bucket's GETs are then all answered here — slower, still right.
  The opposite would be unsound, so kv_done counts only what XDP counts: written_key() is the C rule,
  and requests must arrive as unfragmented IPv4 datagrams through the XDP interface.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import server  # noqa: E402  (the application: its handler and its store)
from server import FRAME, KEY_MAX, bpforge  # noqa: E402

REPLY_MAX = 128
BUCKETS = 1024
OBJECT = HERE.parent / "obj" / "xdp_kvcache.o"
MAPS = ("kv_cache", "kv_seen", "kv_done")

# The XDP half's maps as typed maps (C: struct kv_key, struct kv_reply, __u32 counters).
Reply = bpforge.Struct("Reply", len=bpforge.U32, data=bpforge.Bytes(REPLY_MAX))


def fnv1a(key: bytes) -> int:
    h = 2166136261
    for c in key:
        h = ((h ^ c) * 16777619) & 0xFFFFFFFF
    return h


def bucket(key: bytes) -> int:
    return fnv1a(key) & (BUCKETS - 1)


def written_key(payload: bytes) -> bytes | None:
    """The key XDP counts this datagram under (pass_write in xdp_kvcache.c): after "set " or "delete ",
    1..32 bytes up to ' ', '\\r' or the end; None when XDP does not count it."""
    body = payload[FRAME:] if len(payload) >= FRAME else None
    if body is None or len(body) < 7:  # XDP passes datagrams with fewer than 7 body bytes uncounted
        return None
    for command in (b"set ", b"delete "):
        if body.startswith(command):
            rest = body[len(command):]
            n = 0
            while n < len(rest) and rest[n] not in b" \r":
                n += 1
                if n > KEY_MAX:
                    return None
            return rest[:n] if n else None
    return None


def get_key(payload: bytes) -> bytes | None:
    """The key of a well-formed "get KEY\\r\\n" datagram, else None."""
    body = payload[FRAME:]
    if len(payload) < FRAME or not body.startswith(b"get ") or not body.endswith(b"\r\n"):
        return None
    key = body[4:-2]
    if not 0 < len(key) <= KEY_MAX or any(c <= 32 or c >= 127 for c in key):
        return None
    return key


def hit_reply(key: bytes) -> bytes | None:
    """What the handler answers to "get KEY" now (without the frame header) when KEY is stored, else None:
    the handler itself makes it, so an answer from the cache is the handler's."""
    if key not in server.cache:
        return None
    return server.handle(bytes(FRAME) + b"get " + key + b"\r\n")[FRAME:]


class XdpCache:
    """This side of the coordination with xdp_kvcache.c (the argument is in the module's docstring)."""

    def __init__(self, kv_cache, kv_seen, kv_done):
        self.cache = bpforge.HashMap(key=bpforge.Bytes(KEY_MAX), value=Reply, max_entries=kv_cache.max_entries,
                                     name="kv_cache").attach(kv_cache, carry=False)
        self.seen = bpforge.ArrayMap(value=bpforge.U32, max_entries=BUCKETS, name="kv_seen").attach(kv_seen, carry=False)
        self.done = bpforge.ArrayMap(value=bpforge.U32, max_entries=BUCKETS, name="kv_done").attach(kv_done, carry=False)
        # Before the socket exists every counted datagram is dropped by the stack, so starting from what
        # XDP has counted so far is exact (and makes a restarted server pick up where the last one ended).
        self.applied = [self.seen[b] for b in range(BUCKETS)]
        for b, n in enumerate(self.applied):
            self.done[b] = n

    def after(self, payload: bytes) -> None:
        """Keep the cache after `handle(payload)` has run and its reply has gone."""
        key = written_key(payload)
        if key is not None:
            self._refresh(key)
            b = bucket(key)
            self.applied[b] = (self.applied[b] + 1) & 0xFFFFFFFF
            self.done[b] = self.applied[b]  # only after the cache entry is right
            return
        key = get_key(payload)
        if key is not None:
            b = bucket(key)
            if self.seen[b] == self.applied[b]:
                reply = hit_reply(key)
                if reply is not None:
                    self._store(key, reply)

    def _refresh(self, key: bytes) -> None:
        valid = get_key(bytes(FRAME) + b"get " + key + b"\r\n") is not None
        reply = hit_reply(key) if valid else None
        if reply is None:
            self.cache.delete(key)
        else:
            self._store(key, reply)

    def _store(self, key: bytes, reply: bytes) -> None:
        if self.cache.put(key, Reply(len(reply), reply)) != 0:
            self.cache.delete(key)  # no stale entry may survive a failed update


def open_pinned(directory: str) -> dict:
    from bpforge.kernel.objects import open_pinned_map

    return {name: open_pinned_map(str(Path(directory) / name)) for name in MAPS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--maps", help="bpffs directory with the XDP program's pinned maps")
    where.add_argument("--dev", help="load the XDP program and attach it to this interface")
    parser.add_argument("--object", default=str(OBJECT))
    parser.add_argument("--port", type=int, default=server.PORT)
    parser.add_argument("--bind", default="0.0.0.0")
    args = parser.parse_args(argv)
    server.stop_on_term()
    owned = []  # closed at the end: program, link, maps
    try:
        if args.maps:
            maps = open_pinned(args.maps)
            owned.extend(maps.values())
        else:
            import socket

            from bpforge import kernel
            from bpforge.elf import read_object
            from bpforge.kernel.objects import attach_xdp

            obj = read_object(args.object)
            program = kernel.load_linked(obj.linked(), obj, log_level=0)
            owned.append(program)
            maps = program.maps
            owned.append(attach_xdp(program.fd, socket.if_nametoindex(args.dev)))
        coordination = XdpCache(maps["kv_cache"], maps["kv_seen"], maps["kv_done"])
        sock = server.open_socket(args.bind, args.port)
        print(f"listening on {args.bind}:{args.port}", flush=True)
        server.serve(sock, after=coordination.after)
    except KeyboardInterrupt:
        pass
    finally:
        for thing in reversed(owned):
            thing.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
