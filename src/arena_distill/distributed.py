"""Which process and device this is, under a launcher (torchrun / accelerate) or alone."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def train_device() -> str:
    """This process's device: its local GPU under a launcher (``LOCAL_RANK``), else the CPU.

    4-bit (QLoRA) weights are placed at load time, so the device must be known then."""
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
