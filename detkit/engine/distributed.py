"""Distributed data-parallel training with PyTorch's launcher, ``torchrun``.

``torchrun --nproc_per_node=N -m detkit train CONFIG`` starts N processes and gives
each ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` in its environment; ``detkit train
--nproc N`` runs ``torchrun --standalone`` for the single-machine case.
:func:`init_from_env` joins the process group (NCCL on GPUs, gloo on the CPU) and
picks the process's device; the other functions are the few collectives the engine
needs, each a no-op in a single process. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from detkit.device import resolve_device
from detkit.errors import ConfigError, DetkitError

#: How long a collective waits for the other ranks before the job fails.
TIMEOUT = _dt.timedelta(minutes=30)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes:
        rank: this process's index in ``[0, world_size)``.
        world_size: processes in the job (1: not distributed).
        local_rank: its index on this machine (picks the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """True on the process that writes files and logs."""
        return self.rank == 0


def env_info() -> DistInfo:
    """The job layout torchrun put in the environment (a single process when absent)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise DetkitError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers: {exc}") from exc
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def current() -> DistInfo:
    """The layout of the initialized process group (a single process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=env_info().local_rank)


def init_from_env(device_name: str, *, source: str = "train.device") -> tuple[DistInfo, torch.device]:
    """Join torchrun's process group when there is one; return the layout and this process's device.

    With ``device_name`` ``auto`` or ``cuda``, rank ``r`` takes GPU ``LOCAL_RANK`` and
    the NCCL backend; on the CPU the backend is gloo.

    Raises:
        ConfigError: a distributed job asked for a named ``cuda:N`` device (each rank
            takes its own), or for more GPUs than the machine has.
    """
    info = env_info()
    device = resolve_device(device_name, source=source)
    if not info.distributed:
        return info, device
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"{source}={device_name!r}: in a distributed run each rank takes GPU LOCAL_RANK; use cuda"
            )
        if info.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"rank {info.rank} has LOCAL_RANK {info.local_rank} but this machine has "
                f"{torch.cuda.device_count()} GPU(s); lower --nproc_per_node"
            )
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return info, device


def shutdown() -> None:
    """Leave the process group (after the last collective)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank."""
    if current().distributed:
        dist.barrier()


def mean_over_ranks(values: Mapping[str, float], device: torch.device) -> dict[str, float]:
    """Each value averaged over the ranks (every rank passes the same keys, in the same order)."""
    if not current().distributed or not values:
        return dict(values)
    keys = list(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist(), strict=True))


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` holds on every rank (so all take the same branch)."""
    if not current().distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not current().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(items: Sequence[Any]) -> list[Any]:
    """Every rank's ``items`` concatenated in rank order on rank 0 (``[]`` elsewhere)."""
    info = current()
    if not info.distributed:
        return list(items)
    gathered: list[Any] = [None] * info.world_size if info.main else []
    dist.gather_object(list(items), gathered if info.main else None, dst=0)
    return [item for part in gathered for item in part] if info.main else []


__all__ = [
    "DistInfo",
    "all_ranks_true",
    "barrier",
    "broadcast",
    "current",
    "env_info",
    "gather_to_main",
    "init_from_env",
    "mean_over_ranks",
    "shutdown",
]
