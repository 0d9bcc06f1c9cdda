"""Which process and device this is, under a launcher (torchrun / accelerate) or alone."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class LaunchError(RuntimeError):
    """A launch that cannot work: more processes on this machine than it has GPUs."""


def train_device() -> str:
    """This process's device: its local GPU under a launcher (``LOCAL_RANK``), else the CPU.

    4-bit (QLoRA) weights are placed at load time, so the device must be known then. One
    process per GPU: a launch with more local processes than visible GPUs is refused here with
    what to change, instead of CUDA's "invalid device ordinal" deep inside a model load."""
    if not torch.cuda.is_available():
        return "cpu"
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    gpus = torch.cuda.device_count()
    if rank >= gpus:
        local = os.environ.get("LOCAL_WORLD_SIZE", str(rank + 1))
        raise LaunchError(
            f"process with LOCAL_RANK {rank} (of {local} on this machine) but only {gpus} "
            f"visible GPU(s): launch one process per GPU (e.g. torchrun --nproc_per_node {gpus}), "
            "or set CUDA_VISIBLE_DEVICES to the GPUs to use"
        )
    return f"cuda:{rank}"


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
