"""Data parallelism on torch.distributed: which prompts a process samples, and what it shares.

Launched by ``torchrun`` (which sets ``RANK``/``WORLD_SIZE``), every process holds the whole
policy and samples its own contiguous share of each step's prompts, so the K completions of a
prompt (its group) always stay on one process. The processes then exchange their rollouts and
rewards (lists of token ids and floats, a few KB), so every process holds the *global* batch:
advantages, the token-mean normaliser and the step's metrics are computed on it exactly as a
single process would, for group baselines (opo, grpo, rloo) and batch-level ones (opo_batch,
reinforce_pp*) alike. Each process runs forward and backward only on its own groups; the
gradients are summed across processes (one all-reduce per optimizer step), which gives exactly
the full-batch gradient because every process divides by the global normaliser.

Why not ``DistributedDataParallel``: opo runs the decoder and the output layer separately (shared
prompt prefix, chunked log-softmax), which DDP's forward wrapper does not see; and with gradient
accumulation DDP also all-reduces once per optimizer step. The single all-reduce here does the
same communication without the wrapper.

With ``train.fsdp`` the weights, gradients and optimizer state are instead sharded with FSDP2
(``fully_shard``): each decoder layer is one unit, and a :class:`Sharded` root holds the rest
(embeddings, final norm, output layer). FSDP's collectives run inside every forward pass, so
every process runs as many passes as the busiest one (:meth:`Dist.aligned`).

On GPUs (``model.device`` cuda) each process drives the GPU ``LOCAL_RANK`` and the collectives
run on nccl, with their tensors on that GPU; on CPUs they run on gloo.

With one process (no ``torchrun``), every function here is a no-op and no process group exists.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Optional, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from opo.runtime import torch_device

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world`` processes, computing on ``device``
    (cpu | cuda), which also holds the collectives' tensors."""

    rank: int = 0
    world: int = 1
    fsdp: bool = False
    device: str = "cpu"

    @property
    def _comm(self) -> torch.device:
        """Where a collective's own tensors live: nccl reduces only GPU tensors, gloo CPU ones."""
        return torch_device(self.device)

    @property
    def main(self) -> bool:
        """Rank 0 logs, evaluates and writes checkpoints."""
        return self.rank == 0

    def share(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items (sizes differ by at most one, rank order)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def gather(self, items: list[T]) -> list[T]:
        """Every rank's ``items`` (picklable), concatenated in rank order, on every rank."""
        if self.world == 1:
            return items
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, items)
        return [x for part in out for x in part]

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def reduce(self, values: dict[str, float], op: str = "sum") -> dict[str, float]:
        """Element-wise ``sum`` or ``max`` over ranks of a dict of floats with the same keys on every rank."""
        if self.world == 1 or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._comm)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return dict(zip(keys, t.tolist()))

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on some rank."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self._comm)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def aligned(self, batches: list[T], spare: T, calls: Callable[[T], int]) -> list[tuple[T, bool, int]]:
        """``(batch, True, c)`` for each of ``batches``; under FSDP, then ``(spare, False, c)`` until this
        process has as many passes as the busiest one (a ``False`` pass must add nothing).

        Each FSDP unit gathers its weights at every call, so the collectives pair up across processes
        only if pass ``i`` makes as many decoder calls everywhere: ``c`` is the largest ``calls(batch)``
        of pass ``i`` over the processes (0 without FSDP). Agreeing is itself collective, made here."""
        out = [(b, True) for b in batches]
        if not self.fsdp:
            return [(b, real, 0) for b, real in out]
        most = int(self.reduce({"n": float(len(batches))}, op="max")["n"])
        out += [(spare, False)] * (most - len(batches))
        need = self.reduce({f"{i:09d}": float(calls(b)) for i, (b, _) in enumerate(out)}, op="max")
        return [(b, real, int(need[f"{i:09d}"])) for i, (b, real) in enumerate(out)]

    def sum_gradients(self, model: torch.nn.Module, bucket_bytes: int = 64 << 20) -> None:
        """All-reduce (sum) every parameter's gradient; a parameter without one contributes zeros.
        A parameter that no process reached keeps no gradient, as on one process, so AdamW neither
        decays its moments nor applies weight decay to it. Under FSDP a no-op: its backward already
        reduce-scatters the gradients.

        Gradients travel in flat fp32 buckets of about ``bucket_bytes``: few collective calls
        without a second full copy of the gradients.
        """
        if self.world == 1 or self.fsdp:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        reached = torch.tensor([float(p.grad is not None) for p in params], device=self._comm)  # (P,)
        dist.all_reduce(reached, op=dist.ReduceOp.MAX)
        params = [p for p, r in zip(params, reached.tolist()) if r]
        for p in params:  # a rank whose groups never reached a parameter still takes part
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket: list[torch.Tensor] = []
        size = 0
        for p in params:
            bucket.append(p.grad)
            size += p.grad.numel() * p.grad.element_size()
            if size >= bucket_bytes:
                _all_reduce_flat(bucket)
                bucket, size = [], 0
        if bucket:
            _all_reduce_flat(bucket)

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Make every rank's weights rank 0's (they load the same files; this guarantees it)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """FSDP2 over all processes: each decoder layer is one unit, the rest of the weights belong to
        the returned :class:`Sharded` root. Without ``fsdp``, ``model`` itself."""
        if not self.fsdp:
            return model
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # opo never modifies the root's outputs in place, which is what this warning is about
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        mesh = init_device_mesh(self.device, (self.world,))
        root = Sharded(model)
        for unit in [*model.get_decoder().layers, root]:
            fully_shard(unit, mesh=mesh)
            unit.set_gradient_divide_factor(1.0)  # sum: the loss is already divided by the global count
            if backend_for(self.device) == "gloo":
                unit.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum (nccl has)
        return root

    def model_state(self, model: torch.nn.Module) -> Optional[dict[str, torch.Tensor]]:
        """The full weights (gathered on rank 0 under FSDP, a collective call), or None when the
        model's own ``state_dict`` is complete."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class Sharded(torch.nn.Module):
    """The FSDP root around a policy: ``root(fn, *args)`` runs ``fn(policy, *args)`` inside the
    root's forward, so FSDP gathers the weights outside the decoder layers (and reduce-scatters
    their gradients) although opo calls the decoder and the output layer separately."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.model, *args, **kwargs)


def run(model: torch.nn.Module, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(model, *args, **kwargs)``, through the FSDP root when ``model`` is one."""
    if isinstance(model, Sharded):
        return model(fn, *args, **kwargs)
    return fn(model, *args, **kwargs)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole of a possibly sharded tensor (gathering it is a collective call)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _all_reduce_flat(tensors: list[torch.Tensor]) -> None:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def backend_for(device: str) -> str:
    """The process group's backend for a resolved ``model.device``: nccl on GPUs, gloo on CPUs."""
    return "nccl" if device == "cuda" else "gloo"


def setup(fsdp: bool = False, timeout_s: float = 1800.0, device: str = "cpu") -> Dist:
    """Join the job ``torchrun`` started, or a single process without it; ``fsdp``: shard weights,
    gradients and optimizer state (with more than one process); ``device``: the resolved
    ``model.device`` (cuda: this process takes GPU ``LOCAL_RANK`` and the group runs on nccl)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        gpu = torch_device(device) if device == "cuda" else None
        if gpu is not None:
            torch.cuda.set_device(gpu)  # the collectives of *_object and barrier use the current GPU
        dist.init_process_group(backend_for(device), timeout=timedelta(seconds=timeout_s), device_id=gpu)
    return Dist(dist.get_rank(), dist.get_world_size(), fsdp, device)


def teardown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def local_world_size() -> int:
    """Processes of this job on this machine (``torchrun`` sets ``LOCAL_WORLD_SIZE``)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def sampling_seed(seed: int, step: int, rank: int) -> int:
    """The sampler's seed for one step on one rank.

    Seeding every step from (seed, step, rank) instead of carrying one stream through the run
    makes a resumed run draw the same samples without saved sampler state, on any number of
    processes.
    """
    digest = hashlib.sha256(f"opo-sampler/{seed}/{step}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
