"""What a test may expect of the device the code picks by itself (``auto``): the CUDA GPUs when
there are any, else the CPU, and the precision that comes with it.

The stages choose for themselves: training runs on ``distributed.train_device()`` with bf16
autocast on a GPU that supports it; prediction (``dtype: auto``) runs float16 on CUDA, float32
on the CPU. A test comparing such a result with a float32 CPU computation, or two CUDA runs
(non-deterministic kernels), uses these tolerances instead of CPU-exact ones.
"""

from __future__ import annotations

import numpy as np
import torch

CUDA = torch.cuda.is_available()

# logits of the tiny test models are O(1): float16 keeps ~3 decimal digits
PREDICT_ATOL = 2e-3 if CUDA else 1e-5
# training: bit-exact on a CPU up to reduction order; on CUDA bf16 autocast and atomic adds in
# backward make two runs (or a run and its resume) agree only to ~1e-3 (test_pipeline.py)
TRAIN_ATOL = 1e-3 if CUDA else 1e-5


def auto_devices() -> list[str]:
    """What ``devices: auto`` resolves to: every visible GPU, else the CPU."""
    if CUDA:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def host(t: torch.Tensor) -> np.ndarray:
    """A tensor on any device, in any dtype, as a float32 NumPy array (for comparisons)."""
    return t.detach().to(device="cpu", dtype=torch.float32).numpy()


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    """Names of the parameters in ``before`` (snapshots kept on the CPU) that ``model`` has
    changed since, wherever its parameters live now (a Trainer moves them to the GPU)."""
    params = dict(model.named_parameters())
    return [n for n, b in before.items() if not torch.equal(params[n].detach().cpu(), b)]


def snapshot_params(model: torch.nn.Module, match: str) -> dict[str, torch.Tensor]:
    """CPU copies of the parameters whose name contains ``match``."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if match in n}
