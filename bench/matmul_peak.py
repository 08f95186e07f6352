"""The machine facts behind opo's `auto` precision and thread choices, measured side by side.

    .venv/bin/python bench/matmul_peak.py

Prints fp32 and bf16 matmul throughput (2048^3 in fp32 and native bf16; 512^3 for emulated bf16,
which would take minutes at 2048) and a decoder projection of 16 rows x 576 -> 1536 at one thread
and at every core, the shape a decode step of the embedded model runs ~200 times.
"""

from __future__ import annotations

import os
import time

import torch

from opo.runtime import native_bf16


def gflops(m: int, k: int, n: int, dtype: torch.dtype, threads: int, reps: int) -> tuple[float, float]:
    """(GFLOP/s, ms per call) of an (m, k) x (k, n) matmul, best of two timed rounds."""
    torch.set_num_threads(threads)
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * m * k * n / best / 1e9, best * 1e3


def main() -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {native_bf16()}, {cores} cores")
    for threads in sorted({1, cores}):
        f32, _ = gflops(2048, 2048, 2048, torch.float32, threads, 5)
        n = 2048 if native_bf16() else 512
        bf16, _ = gflops(n, n, n, torch.bfloat16, threads, 5 if native_bf16() else 2)
        _, decode_ms = gflops(16, 576, 1536, torch.float32, threads, 300)
        print(f"{threads} thread(s): fp32 2048^3 {f32:.1f} GFLOP/s | bf16 {n}^3 {bf16:.2f} GFLOP/s | "
              f"fp32 16x576x1536 {decode_ms:.3f} ms")


if __name__ == "__main__":
    main()
