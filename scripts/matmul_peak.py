#!/usr/bin/env python3
"""This CPU's f32 matrix-product ceiling as PyTorch (oneDNN/MKL) reaches it with 2 threads, at
the shapes of a bloom-560m training step (block 256): the bound on any f32 training step here.

    .venv/bin/python scripts/matmul_peak.py
"""

import time

import torch

torch.set_num_threads(2)
SHAPES = [(2048, 2048, 2048), (255, 1024, 4096), (255, 4096, 1024), (255, 1024, 250880)]
for m, k, n in SHAPES:
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(2):
        a @ b
    runs = 3
    started = time.perf_counter()
    for _ in range(runs):
        a @ b
    seconds = (time.perf_counter() - started) / runs
    print(f"{m}x{k} · {k}x{n}: {2 * m * k * n / seconds / 1e9:.0f} GFLOP/s")
