"""The verifier: abstract domains and, on top of them, the kernel's analysis.

`tnum` and `scalar` are the kernel's scalar tracking (tnum x signed/unsigned 64/32-bit ranges), `branch`
its branch prediction and refinement, `format` prints a scalar the way the verifier log does.
"""
