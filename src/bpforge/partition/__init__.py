"""Partitioning a Python network application into a BPF fast path and a user-space rest (issue 12).

    runtime   what an application imports to be partitionable, and what it runs on as plain Python: typed
              scalars and byte strings (U8..U64, Bytes(n), Struct), typed maps (HashMap, ArrayMap) that can
              be backed by a kernel map so both halves share state, the @offload marker of the handler
    netlab    a network namespace lab: veth pairs, XDP attach/detach, pinned maps, server processes in
              the namespace, all removed again however the run ends
    workload  memcached-over-UDP request mixes and a UDP client that replays them and measures
              requests per second and latency

The partitioner itself (handler -> IR -> slices -> cut -> both halves) builds on these.
"""
