"""One run over several processes with torchrun: data-parallel training of one experiment.

    torchrun --standalone --nproc-per-node K -m advmoe run --preset P --only NAME

starts K copies of the CLI. Each joins the process group (gloo on a CPU, nccl on GPUs, one GPU per process; the
rendezvous on this machine with --standalone), takes its 1/K of every global batch (the spec's batch_size, drawn and
augmented exactly as one process draws it) and averages the gradients over the processes before every optimizer
step: what DistributedDataParallel computes. Its wrapper is not used because the methods' steps do not fit it: a
TRADES step runs two forward passes per backward pass, and every attack runs its forward and backward passes inside
the step. Rank 0 alone writes checkpoints and results, and evaluates; every rank resumes from the same checkpoint.

So that K processes train what one process trains at the same global batch (up to float rounding, tested): inside a
training step (`sharded`), BatchNorm normalises with the statistics of the global batch (sums all-reduced,
`_batch_norm`), and an attack draws its random start for the whole global batch and keeps its rows (`random_like`).
Where experts run on their routed samples only (the Robust Experts and dual-model MoEs), a rank may run an expert
on no sample: their BatchNorm keeps its rank's statistics (not synchronised, so not equivalent), and a parameter that
received no gradient on any rank is left without one, as in one process.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

_STATE = {"rank": 0, "world": 1, "sync_norm": False}
_BATCH_NORM = F.batch_norm  # torch's own


def world() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) outside torchrun."""
    return _STATE["rank"], _STATE["world"]


def is_main() -> bool:
    return _STATE["rank"] == 0


def launched() -> int:
    """The number of processes torchrun started (WORLD_SIZE), 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str) -> None:
    """Join torchrun's process group when it started more than one process; check that there are enough devices."""
    size = launched()
    if size == 1:
        return
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if size > torch.cuda.device_count():
            raise ValueError(f"torchrun started {size} processes on {torch.cuda.device_count()} GPU(s): use "
                             f"--nproc-per-node {max(1, torch.cuda.device_count())} at most")
        torch.cuda.set_device(local)
    elif size > (os.cpu_count() or 1):
        raise ValueError(f"torchrun started {size} processes on {os.cpu_count()} CPU core(s): use --nproc-per-node "
                         f"{os.cpu_count()} at most")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    _STATE.update(rank=dist.get_rank(), world=dist.get_world_size())


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _STATE.update(rank=0, world=1)


def barrier() -> None:
    if _STATE["world"] > 1:
        import torch.distributed as dist

        dist.barrier()


def check_batch(batch_size: int) -> None:
    size = launched()
    if batch_size % size:
        raise ValueError(f"the global batch {batch_size} does not split over {size} processes: use a "
                         f"--nproc-per-node that divides it, or --set batch_size=...")


def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a global batch."""
    rank, size = world()
    n = len(x) // size
    return x[rank * n:(rank + 1) * n]


def mean(value: float) -> float:
    """The mean over the processes of a number each computed on its shard (equal shards)."""
    if _STATE["world"] == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / _STATE["world"]


def average_gradients(params) -> None:
    """Average the gradients of `params` over the processes, as DistributedDataParallel does (one all-reduce of one
    flat buffer). A parameter without a gradient on some rank counts as zero there; one without a gradient on every
    rank keeps none (an optimizer skips it, as in one process)."""
    if _STATE["world"] == 1:
        return
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    if not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    kept = [p for p, h in zip(params, has.tolist()) if h]
    for p in kept:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in kept])
    dist.all_reduce(flat)
    flat /= _STATE["world"]
    offset = 0
    for p in kept:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def synced(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer, its gradients averaged over the processes before every step (no-op in one process)."""
    if _STATE["world"] > 1:
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: average_gradients([p for g in opt.param_groups for p in g["params"]]))
    return optimizer


def random_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """torch.rand of x's shape; inside a training step over several processes, this rank's rows of a draw for the
    whole global batch, so that every example gets the noise one process gives it (x: this rank's shard)."""
    rank, size = world()
    if not _STATE["sync_norm"] or size == 1:
        return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    n = len(x)
    return torch.rand((n * size, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)[rank * n:
                                                                                                     (rank + 1) * n]


def _batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """F.batch_norm with the statistics of the global batch in training mode (a differentiable all-reduce of the
    per-channel sums, sums of squares and counts); torch's own otherwise."""
    if not training or not _STATE["sync_norm"]:
        return _BATCH_NORM(input, running_mean, running_var, weight, bias, training, momentum, eps)
    from torch.distributed.nn.functional import all_reduce

    c = input.shape[1]
    dims = [0, *range(2, input.dim())]
    count = torch.full((1,), input.numel() / c, dtype=input.dtype, device=input.device)
    stats = all_reduce(torch.cat([input.sum(dims), (input * input).sum(dims), count]))
    n = stats[-1]
    mu = stats[:c] / n
    var = stats[c:2 * c] / n - mu * mu
    if running_mean is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mu.detach())
            running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1))
    shape = (1, c, *[1] * (input.dim() - 2))
    out = (input - mu.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out


@contextlib.contextmanager
def sharded(sync_norm: bool):
    """Around one training step over several processes: BatchNorm with the global batch's statistics and attacks'
    random starts drawn for the global batch (when `sync_norm`: every BatchNorm sees every sample of its rank)."""
    if _STATE["world"] == 1 or not sync_norm:
        yield
        return
    _STATE["sync_norm"] = True
    F.batch_norm = _batch_norm
    try:
        yield
    finally:
        F.batch_norm = _BATCH_NORM
        _STATE["sync_norm"] = False
