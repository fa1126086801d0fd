"""A UDP client for kvcache: replays a request mix (bpforge.partition.workload) and prints requests per
second, median and p99 latency and how many replies came back.

    python3 examples/kvcache/client.py --server 10.11.0.1 [--port 11211] [--requests 5000] [--window 8]
        [--duration 10] [--seed 1] [--show N]
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

# The checkout's own bpforge first (this file lives in it), whatever else is installed.
_SRC = Path(__file__).resolve().parents[2] / "src"
if (_SRC / "bpforge").is_dir():
    sys.path.insert(0, str(_SRC))
from bpforge.partition.workload import Mix, make_requests, replay  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--port", type=int, default=11211)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--window", type=int, default=8, help="requests awaiting a reply at a time")
    parser.add_argument("--duration", type=float, default=10.0, help="stop sending after this many seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show", type=int, default=0, help="print the first N replies")
    args = parser.parse_args(argv)
    requests = make_requests(Mix(requests=args.requests, seed=args.seed))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        result = replay(sock, (args.server, args.port), requests, window=args.window, duration=args.duration)
    for request, reply in list(zip(requests, result.replies))[:args.show]:
        print(f"{request.payload[8:]!r} -> {reply[8:] if reply else reply!r}")
    print(f"{len(result.latencies)}/{result.sent} answered, {result.lost} lost, {result.rps:.0f} requests/s, "
          f"median {result.median * 1e6:.0f} us, p99 {result.p99 * 1e6:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
