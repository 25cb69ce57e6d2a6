"""Process-group setup for torchrun (or a single process) and the few collectives the
trainer needs; every helper is a no-op without a process group."""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from vocoder.errors import VocoderError


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job; rank 0 alone logs and writes checkpoints."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise VocoderError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: str) -> DistributedContext:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT), with NCCL on CUDA and gloo on the CPU."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VocoderError(f"train.device={device} but CUDA is not available")
        target = torch.device("cuda", local_rank) if world_size > 1 or device == "cuda" else torch.device(device)
        torch.cuda.set_device(target)
    elif device == "cpu":
        target = torch.device("cpu")
    else:
        raise VocoderError(f"train.device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=30))
    return DistributedContext(rank, world_size, local_rank, target)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_true(flag: bool, context: DistributedContext) -> bool:
    """True when `flag` holds on every rank."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)


def any_true(flag: bool, context: DistributedContext) -> bool:
    """True when `flag` holds on some rank."""
    return not all_true(not flag, context)


def mean_over_ranks(values: dict[str, float], context: DistributedContext) -> dict[str, float]:
    """Average each scalar over ranks (same keys on every rank)."""
    if not context.enabled or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return {k: float(v) / context.world_size for k, v in zip(keys, tensor.tolist())}


def gather_to_main(value: Any, context: DistributedContext) -> list[Any] | None:
    """Each rank's `value` on rank 0 (a list by rank); None elsewhere."""
    if not context.enabled:
        return [value]
    gathered: list[Any] | None = [None] * context.world_size if context.is_main else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()
