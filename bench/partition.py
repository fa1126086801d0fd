"""kvcache on a veth pair in namespaces: requests per second and median/p99 latency of the Python-only
server, the automatic partition (`bpforge partition examples/kvcache/server.py`, profiled on a trace of
the same mix, deployed with `bpforge partition run`) and the hand-written split (xdp_kvcache.c +
hand_server.py), on the same set-up and the same request mix, bounded in count and time; and the cost
model's predicted speedup against the measured one. The last line gives the ratios.

    python3 bench/partition.py [--quick] [--requests N] [--window W] [--clients C] [--duration S]

Needs root (namespaces, XDP). Clients are processes in the client namespace (examples/kvcache/client.py's
library, bpforge.partition.workload), each replaying its own seeded mix on its own keys (so each sees a sequential server and the replies of
the two servers can be compared one for one); figures are summed (rps) or
taken over all replies (latency). Every reply of the split is also checked against the Python server's.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from bpforge import kernel  # noqa: E402
from bpforge.elf import read_object  # noqa: E402
from bpforge.partition.build import partition  # noqa: E402
from bpforge.partition.netlab import Lab, lab_unavailable  # noqa: E402
from bpforge.partition.workload import Mix, make_requests  # noqa: E402

KVCACHE = ROOT / "examples" / "kvcache"
OBJECT = ROOT / "examples" / "obj" / "xdp_kvcache.o"
MAPS = ("kv_cache", "kv_seen", "kv_done")
# One client: replays a mix and prints its result as JSON (replies as hex, to compare the servers).
CLIENT = """
import json, socket, sys
from bpforge.partition.workload import Mix, make_requests, replay
server, requests, window, duration, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
print("listening", flush=True)  # started: the bench waits for every client before timing
sys.stdin.readline()
mix = make_requests(Mix(requests=requests, seed=seed, keys=256, missing=64, prefix=f"c{seed}"))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    r = replay(sock, (server, 11211), mix, window=window, duration=duration, timeout=2.0)
print(json.dumps({"latencies": r.latencies, "elapsed": r.elapsed, "sent": r.sent, "lost": r.lost,
                  "replies": [x.hex() if x is not None else None for x in r.replies]}))
"""


def run_clients(lab: Lab, args) -> dict:
    env = {"PYTHONPATH": str(ROOT / "src")}
    clients = [lab.start([sys.executable, "-c", CLIENT, lab.server_ip, str(args.requests), str(args.window),
                          str(args.duration), str(seed)], side="client", env=env, stdin=True)
               for seed in range(1, args.clients + 1)]
    for client in clients:  # all at once
        client.popen.stdin.write(b"go\n")
        client.popen.stdin.flush()
    results = []
    for client in clients:
        out, _ = client.popen.communicate(timeout=args.duration + 60)
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    latencies = sorted(x for r in results for x in r["latencies"])
    elapsed = max(r["elapsed"] for r in results)
    return {"rps": len(latencies) / elapsed if elapsed else 0.0,
            "median": latencies[len(latencies) // 2] if latencies else float("nan"),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
            "answered": len(latencies), "lost": sum(r["lost"] for r in results),
            "replies": [r["replies"] for r in results]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (3000 requests per client)")
    parser.add_argument("--requests", type=int, default=20000, help="per client")
    parser.add_argument("--window", type=int, default=16, help="requests in flight per client")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds a client sends at most")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.duration = 3000, 5.0
    reason = kernel.kernel_available() or lab_unavailable()
    if reason:
        print(f"bench/partition.py needs the kernel and namespaces: {reason}", file=sys.stderr)
        return 2
    figures = {}
    obj = read_object(OBJECT)
    with tempfile.TemporaryDirectory(prefix="bpforge-bench-") as work:
        trace = Path(work) / "trace.txt"  # the profile: the first client's mix
        mix = make_requests(Mix(requests=min(args.requests, 2000), seed=1, keys=256, missing=64, prefix="c1"))
        trace.write_text("".join(r.payload.hex() + "\n" for r in mix))
        auto = partition(KVCACHE / "server.py", trace=trace, out_dir=Path(work) / "kvcache",
                         optimize_budget=0 if args.quick else 20)
        with Lab(tag="bench") as lab:
            server = lab.start([sys.executable, str(KVCACHE / "server.py"), "--bind", lab.server_ip])
            figures["python"] = run_clients(lab, args)
            server.stop()
            server = lab.start([sys.executable, "-m", "bpforge", "partition", "run", str(auto.out_dir), "--dev",
                                lab.server_dev, "--", "--bind", lab.server_ip], env={"PYTHONPATH": str(ROOT / "src")})
            figures["auto"] = run_clients(lab, args)
            server.stop()
            figures.update(hand_split(lab, args, obj))
    return report(args, figures, auto.predicted_speedup)


def hand_split(lab: Lab, args, obj) -> dict:
    """The hand-written split's figures, and how many GETs its XDP half answered."""
    with kernel.load_linked(obj.linked(), obj, log_level=0) as prog:
        pins = lab.pin_maps({name: prog.maps[name] for name in MAPS})
        lab.attach_xdp(prog.fd)
        server = lab.start([sys.executable, str(KVCACHE / "hand_server.py"), "--bind", lab.server_ip,
                            "--maps", pins])
        hand = run_clients(lab, args)
        server.stop()
        hits = struct.unpack("<Q", prog.maps["kv_stats"].lookup(struct.pack("<I", 0)))[0]
    return {"hand": hand, "hits": hits}


def report(args, figures: dict, predicted: float) -> int:
    python, auto, hand = figures["python"], figures["auto"], figures["hand"]
    same_auto = python["replies"] == auto["replies"]
    same_hand = python["replies"] == hand["replies"]
    print(f"kvcache on veth: {args.clients} clients x {args.requests} requests (window {args.window}, "
          f"at most {args.duration:g} s), {os.cpu_count()} CPUs")
    print(f"{'':14}{'requests/s':>12}{'median us':>11}{'p99 us':>9}{'answered':>10}{'lost':>6}")
    for name, f in (("python-only", python), ("automatic", auto), ("hand split", hand)):
        print(f"{name:14}{f['rps']:12.0f}{f['median'] * 1e6:11.0f}{f['p99'] * 1e6:9.0f}{f['answered']:10}{f['lost']:6}")
    print(f"every reply equal to python-only's: automatic {same_auto}, hand split {same_hand} "
          f"(the hand split's XDP answered {figures['hits']} GETs)")
    measured = auto["rps"] / python["rps"]
    print(f"cost model: predicted {predicted:.2f}x, measured {measured:.2f}x (rps): error {predicted / measured - 1:+.0%}")
    print(f"auto/python: rps {measured:.2f}x, median {auto['median'] / python['median']:.2f}x, "
          f"p99 {auto['p99'] / python['p99']:.2f}x; hand/python: rps {hand['rps'] / python['rps']:.2f}x, "
          f"median {hand['median'] / python['median']:.2f}x, p99 {hand['p99'] / python['p99']:.2f}x")
    return 0 if same_auto and same_hand else 1


if __name__ == "__main__":
    sys.exit(main())
