"""Numba kernels for combinatorial work (permutation sets, tile gathering), each beside a NumPy reference.

Installed as `fastssl.kernels`: `fastssl.kernels.permutations` chooses jigsaw permutation sets of
maximal Hamming distance.
"""
