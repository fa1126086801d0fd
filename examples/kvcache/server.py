"""kvcache: a key-value cache speaking a memcached text-protocol subset over UDP (the application that
bpforge partitions; hand_server.py is the same server split by hand with xdp_kvcache.c).

    python3 examples/kvcache/server.py --port 11211 [--bind ADDR]

Every datagram is a memcached UDP frame: an 8-byte header (request id, sequence number, datagram count,
reserved: 16 bits each, big-endian), then one request. The reply repeats the request id, with sequence 0
of 1 datagram. Requests (keys: 1..32 bytes of printable ASCII without spaces; values: 0..64 bytes):

    get KEY\\r\\n                                -> VALUE KEY FLAGS BYTES\\r\\nDATA\\r\\nEND\\r\\n, or END\\r\\n
    set KEY FLAGS EXPTIME BYTES\\r\\nDATA\\r\\n    -> STORED\\r\\n (SERVER_ERROR ... when the cache is full)
    delete KEY\\r\\n                             -> DELETED\\r\\n, or NOT_FOUND\\r\\n

FLAGS is a decimal 32-bit number given back by get; EXPTIME is decimal and ignored (nothing expires);
BYTES is the decimal length of DATA. Anything else (other commands, several keys, `noreply`, a key or a
value too long, numbers too big, missing or extra bytes) gets ERROR\\r\\n; a datagram shorter than the
frame header gets no reply.

`handle` is the per-packet handler, in the style the partitioner can offload: fixed-width integers, bytes
read at checked positions, loops with constant bounds, state only in the typed map `cache`; the socket
loop and everything else stay outside it.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from pathlib import Path

# The checkout's own bpforge first (this file lives in it), whatever else is installed.
_SRC = Path(__file__).resolve().parents[2] / "src"
if (_SRC / "bpforge").is_dir():
    sys.path.insert(0, str(_SRC))
import bpforge  # noqa: E402

PORT = 11211
FRAME = 8  # memcached UDP frame header
KEY_MAX = 32
VALUE_MAX = 64
LINE_MAX = 64  # the longest command line: "set " key " " flags " " exptime " " bytes
NUMBER_MAX = 10  # digits of a 32-bit decimal
ENTRIES = 4096

Entry = bpforge.Struct("Entry", flags=bpforge.U32, length=bpforge.U32, data=bpforge.Bytes(VALUE_MAX))
cache = bpforge.HashMap(key=bpforge.Bytes(KEY_MAX), value=Entry, max_entries=ENTRIES, name="kv_store")

ERROR = b"ERROR\r\n"
END = b"END\r\n"
STORED = b"STORED\r\n"
DELETED = b"DELETED\r\n"
NOT_FOUND = b"NOT_FOUND\r\n"
FULL = b"SERVER_ERROR out of memory storing object\r\n"


def line_end(payload: bytes, start: int) -> int:
    """Where the "\\r\\n" ending the command line at `start` is, or -1 (none within LINE_MAX bytes)."""
    for i in range(LINE_MAX):
        at = start + i
        if at + 1 >= len(payload):
            return -1
        if payload[at] == 13 and payload[at + 1] == 10:
            return at
    return -1


def token_end(payload: bytes, start: int, stop: int, limit: int) -> int:
    """The end of the token at `start` (the next space or `stop`), or -1 when it is empty or longer than
    `limit` bytes."""
    for i in range(limit + 1):
        at = start + i
        if at == stop or payload[at] == 32:
            return at if i > 0 else -1
    return -1


def valid_key(payload: bytes, start: int, end: int) -> bool:
    for i in range(KEY_MAX):
        at = start + i
        if at == end:
            return True
        if payload[at] <= 32 or payload[at] >= 127:
            return False
    return True


def number(payload: bytes, start: int, end: int) -> int:
    """The decimal number payload[start:end] (at most NUMBER_MAX digits), or -1 when it is not one."""
    value = 0
    for i in range(NUMBER_MAX):
        at = start + i
        if at == end:
            return value
        digit = payload[at] - 48
        if digit < 0 or digit > 9:
            return -1
        value = value * 10 + digit
    return value if start + NUMBER_MAX == end else -1


def decimal(value: int) -> bytes:
    """`value` (0 <= value < 2**32) in decimal."""
    digits = b""
    for _ in range(NUMBER_MAX):
        digits = bytes([48 + value % 10]) + digits
        value = value // 10
        if value == 0:
            break
    return digits


@bpforge.offload(hook="xdp", port=PORT)
def handle(payload: bytes) -> bytes | None:
    """The reply to one datagram (frame header included), or None for no reply."""
    if len(payload) < FRAME:
        return None
    header = payload[0:2] + b"\x00\x00\x00\x01\x00\x00"
    eol = line_end(payload, FRAME)
    if eol < 0:
        return header + ERROR
    if payload[FRAME:FRAME + 4] == b"get ":
        return header + get(payload, FRAME + 4, eol)
    if payload[FRAME:FRAME + 4] == b"set ":
        return header + set_(payload, FRAME + 4, eol)
    if payload[FRAME:FRAME + 7] == b"delete ":
        return header + delete(payload, FRAME + 7, eol)
    return header + ERROR


def get(payload: bytes, start: int, eol: int) -> bytes:
    if eol + 2 != len(payload) or token_end(payload, start, eol, KEY_MAX) != eol or not valid_key(payload, start, eol):
        return ERROR
    key = payload[start:eol]
    entry = cache.get(key)
    if entry is None:
        return END
    return b"VALUE " + key + b" " + decimal(entry.flags) + b" " + decimal(entry.length) + b"\r\n" + \
        entry.data[0:entry.length] + b"\r\n" + END


def set_(payload: bytes, start: int, eol: int) -> bytes:
    key_end = token_end(payload, start, eol, KEY_MAX)
    if key_end < 0 or key_end == eol or not valid_key(payload, start, key_end):
        return ERROR
    flags_end = token_end(payload, key_end + 1, eol, NUMBER_MAX)
    if flags_end < 0 or flags_end == eol:
        return ERROR
    exptime_end = token_end(payload, flags_end + 1, eol, NUMBER_MAX)
    if exptime_end < 0 or exptime_end == eol:
        return ERROR
    bytes_end = token_end(payload, exptime_end + 1, eol, NUMBER_MAX)
    if bytes_end != eol:
        return ERROR
    flags = number(payload, key_end + 1, flags_end)
    exptime = number(payload, flags_end + 1, exptime_end)
    length = number(payload, exptime_end + 1, bytes_end)
    if flags < 0 or flags > 0xFFFFFFFF or exptime < 0 or length < 0 or length > VALUE_MAX:
        return ERROR
    data = eol + 2
    if data + length + 2 != len(payload) or payload[data + length:data + length + 2] != b"\r\n":
        return ERROR
    if cache.put(payload[start:key_end], Entry(flags, length, payload[data:data + length])) != 0:
        return FULL
    return STORED


def delete(payload: bytes, start: int, eol: int) -> bytes:
    if eol + 2 != len(payload) or token_end(payload, start, eol, KEY_MAX) != eol or not valid_key(payload, start, eol):
        return ERROR
    if cache.delete(payload[start:eol]) != 0:
        return NOT_FOUND
    return DELETED


# ---- the server around the handler (never offloaded) -----------------------------------------------------

def serve(sock: socket.socket, handler=handle, after=None) -> None:
    """Answer datagrams until SIGTERM/SIGINT. `after(payload)`, when given, runs after each reply is sent
    (hand_server.py keeps the XDP cache there)."""
    while True:
        try:
            payload, peer = sock.recvfrom(2048)
        except InterruptedError:
            continue
        reply = handler(payload)
        if reply is not None:
            sock.sendto(reply, peer)
        if after is not None:
            after(payload)


def open_socket(bind: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((bind, port))
    return sock


def stop_on_term() -> None:
    """SIGTERM ends the server as Ctrl-C does (the harness stops servers with it)."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--bind", default="0.0.0.0")
    args = parser.parse_args(argv)
    stop_on_term()
    sock = open_socket(args.bind, args.port)
    print(f"listening on {args.bind}:{args.port}", flush=True)  # the harness waits for this line
    try:
        serve(sock)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
