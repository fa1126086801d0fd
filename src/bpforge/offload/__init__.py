"""Offload to devices: capability profiles (`profile`, data files in `profiles/`), the offloadability
check with its reasons (`check`), loading and running on an emulated device with map placement and cycle
costs (`device`), multi-stage processing with host fallback (`stage`), and bpftool-style introspection
(`introspect`)."""
