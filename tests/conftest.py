"""Shared test setup: offline Hugging Face, GPU-marked tests skipped without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (CI lays a copy of it beside the clone).
SHARED_PREFERENCE = REPO_ROOT.parent / "shared" / "data" / "preference"


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_preference_dir() -> Path:
    if not SHARED_PREFERENCE.is_dir():
        pytest.skip(f"shared preference data not found at {SHARED_PREFERENCE}")
    return SHARED_PREFERENCE
