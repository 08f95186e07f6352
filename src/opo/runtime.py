"""Process-level tuning: the device, compute precision, thread count, and how the C
allocator hands out large blocks.

Precision: bf16 autocast only pays where the CPU computes bf16 natively (AVX-512 BF16 or AMX).
On an AVX2-only AMD EPYC machine of this project (2026-11-24, ``bench/matmul_peak.py``) an
emulated bf16 matmul ran at 1.3 GFLOP/s against ~89 GFLOP/s in fp32, so ``auto`` picks fp32 there.
On a GPU ``auto`` is bf16 where the GPU computes it (Ampere and later), else fp32 (docs/gpu.md).

Threads: the same 2-vCPU machine timed two intra-op threads 2-3x slower than one early in the day
(a (16, 576) x (576, 1536) fp32 matmul: 0.5 ms against 1.0-1.5 ms; a 4x4x32 RL step 12 s against
28-34 s) and twice as fast hours later, so ``auto`` times a typical matmul at each thread count at
start and keeps the faster.

Allocator: by default glibc serves every allocation above a (dynamic, at most 32 MB) threshold with a fresh
``mmap`` and returns it to the OS on free, so each large temporary (a ``(V, H)`` gradient, a
chunk of logits, a bf16 copy of a weight) is page-faulted in again on every use. Measured on a
machine with native bf16, between training steps of the embedded model: allocating the 113 MB zero-filled embedding
gradient took 21-38 ms by default and 2-5 ms with this setting; the training phase of a
4x4x32 step went from ~3.2 s to ~2.8 s. Serving large blocks from the heap and never trimming
it lets a step reuse the previous step's pages; RSS then stays at the high-water mark of a step
(docs/performance.md reports peak RSS and its growth over 20 steps).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

import torch

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_large_allocations() -> bool:
    """Ask glibc to keep freed large blocks for reuse; returns False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1  # no mmap-per-allocation: large blocks come from the heap
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1  # and freed heap memory is kept, not trimmed
    return bool(ok)


def native_bf16() -> bool:
    """True where bf16 matmuls run natively on this CPU (oneDNN's bf16 ISA check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 path
        return False


def bf16_supported(device: str) -> bool:
    """True where ``device`` (cpu | cuda) computes bf16 matmuls natively."""
    return torch.cuda.is_bf16_supported() if device == "cuda" else native_bf16()


def resolve_precision(precision: str, device: str = "cpu", bf16: Optional[bool] = None) -> str:
    """``auto`` -> ``bf16`` (autocast, fp32 master weights) where ``device`` computes bf16 natively,
    else ``fp32``; other values unchanged. ``bf16``: that answer, when known (None: ask the hardware)."""
    if precision != "auto":
        return precision
    return "bf16" if (bf16_supported(device) if bf16 is None else bf16) else "fp32"


def resolve_precisions(training: str, sampling: str, device: str = "cpu") -> tuple[str, str]:
    """(training, sampling) precisions with ``auto`` resolved; ``auto`` sampling follows training."""
    training = resolve_precision(training, device)
    return training, resolve_precision(training if sampling == "auto" else sampling, device)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error."""
    available = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if available else "cpu"
    if device == "cuda" and not available:
        raise ValueError("model.device=cuda, but torch sees no CUDA GPU here (a CPU build of torch, or no visible "
                         "device: check CUDA_VISIBLE_DEVICES and `nvidia-smi`); use model.device=auto or cpu")
    return device


def torch_device(device: str) -> torch.device:
    """The device this process computes on for a resolved ``model.device``: under torchrun each
    process has its own GPU, ``cuda:LOCAL_RANK`` (torchrun sets ``LOCAL_RANK``)."""
    if device == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s weights (of the local shard under FSDP), where its inputs must be."""
    return next(model.parameters()).device


def _matmul_seconds(threads: int, reps: int) -> float:
    torch.set_num_threads(threads)
    x, w = torch.randn(256, 576), torch.randn(1536, 576)  # a decoder projection of a ~100M model
    for _ in range(3):
        x @ w.T
    t0 = time.perf_counter()
    for _ in range(reps):
        x @ w.T
    return time.perf_counter() - t0


def pick_threads(threads: int = 0, reps: int = 20) -> int:
    """Set torch's intra-op thread count; ``0`` times 1 thread against all cores and keeps the faster.

    Each count is timed twice, alternating, and its best time kept (the machines are shared). Returns
    the count now in use.
    """
    if threads > 0:
        torch.set_num_threads(threads)
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    candidates = sorted({1, cores})
    best = {n: float("inf") for n in candidates}
    for _ in range(2):  # alternating rounds, so a burst of load elsewhere hits both counts
        for n in candidates:
            best[n] = min(best[n], _matmul_seconds(n, reps))
    chosen = min(candidates, key=lambda n: best[n])
    torch.set_num_threads(chosen)
    return chosen


class StopOnSignal:
    """Within ``with``: SIGTERM or SIGINT asks the loop to stop after its current step (``requested``
    names the signal); a second one stops at once. Handlers are restored on exit; outside the main
    thread, where Python cannot install handlers, it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = signal.Signals(signum).name
        for s, handler in self._previous.items():  # the next signal acts as it did before
            signal.signal(s, handler)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
