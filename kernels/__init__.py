"""Numba kernels for combinatorial work (permutation sets, tile shuffles), each beside a NumPy reference.

Installed as `fastssl.kernels`. The kernels arrive with the pretext-task views.
"""
