"""Data-parallel learning with torch.distributed: one learner process per GPU.

torchrun starts the processes and describes the group in the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT):

    torchrun --nproc_per_node=G -m launch.node --role=learner ...

Every rank holds the same `Learner` and trains it on batches of its own;
`Learner.update` averages the gradients across ranks before each optimizer step,
so the parameters stay identical. Rank 0 alone talks to the rest of the run
(publishes weights, writes checkpoints and TensorBoard).

In a single process (no torchrun, or WORLD_SIZE=1) no process group exists and every
helper here is a no-op: rank 0 of 1.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

_control_group = None
"""The gloo group of `all_agree`, made once when the main group is not gloo itself."""


def init_from_env(device: str | torch.device | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; (rank, world_size).

    device: the learner's device; nccl backs a CUDA device, gloo a CPU one. None means
        CUDA when available. With CUDA each rank is pinned to cuda:LOCAL_RANK.
    Without WORLD_SIZE, or with WORLD_SIZE=1, nothing is initialized: (0, 1). Joining
    again (the launcher may have done it) returns the group's figures.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda":
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    """Leave the process group (no-op when there is none)."""
    global _control_group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control_group = None


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_device(device: str | torch.device) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK for a CUDA device under torchrun, else `device`."""
    device = torch.device(device)
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def is_distributed() -> bool:
    """A process group of more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one rank that publishes, checkpoints and logs."""
    return rank() == 0


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace each parameter's .grad by its mean over the ranks (no-op in one process).

    A collective: every rank calls it with the same parameters, in the same order.
    Parameters whose .grad is None are skipped; every rank runs the same update code,
    so the same parameters have gradients on every rank. The gradients travel
    flattened, one all-reduce per (device, dtype).
    """
    if not is_distributed():
        return
    buckets: dict[tuple, list[torch.Tensor]] = defaultdict(list)
    for p in params:
        if p.grad is not None:
            buckets[(p.grad.device, p.grad.dtype)].append(p.grad)
    n = dist.get_world_size()
    for grads in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)  # sum; gloo has no AVG
        flat.div_(n)
        for grad, mean in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(mean.view_as(grad))


@torch.no_grad()
def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite `tensors` in place with rank `src`'s values (no-op in one process)."""
    if not is_distributed():
        return
    for tensor in tensors:
        dist.broadcast(tensor.detach(), src)


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Give `module` rank `src`'s parameters and buffers on every rank."""
    broadcast_tensors([*module.parameters(), *module.buffers()], src)


def _control() -> dist.ProcessGroup | None:
    """A CPU (gloo) group for small control messages; None is the main group when gloo.

    Made on first use, which every rank reaches at the same point (a collective). Keeps
    a host-side decision off the GPU stream: reading an nccl result would wait for the
    queued update.
    """
    global _control_group
    if _control_group is None and dist.get_backend() != "gloo":
        _control_group = dist.new_group(backend="gloo")
    return _control_group


def all_agree(flag: bool) -> bool:
    """True when `flag` is True on every rank. A collective every rank must call."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=_control())
    return bool(value.item())


def lockstep(batches: Iterator[T], should_stop: Callable[[], bool]) -> Iterator[T]:
    """This rank's batches, ending on every rank at the same batch.

    Each rank takes its next batch, then all ranks agree to go on only when every rank
    has one and none is asked to stop; otherwise all of them end (a batch already
    taken is dropped). Ranks whose updates run collectives must stop together, or the
    ones still updating wait forever for the ones that left.
    """
    while True:
        batch = next(batches, None)
        if not all_agree(batch is not None and not should_stop()):
            return
        yield batch
