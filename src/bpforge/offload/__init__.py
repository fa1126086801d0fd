"""Offload: running a program, or the part of it a device can run, on another target. Device capability
profiles (data) and the offloadability check say what a device cannot run; `stage` cuts a program where
only its first part can run there: the device runs up to the cut and hands the live state to a host
program through XDP metadata, which continues where the device stopped (and runs the whole program for
frames that did not go through the device); introspection shows and dumps programs and maps.
"""
