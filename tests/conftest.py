"""Shared fixtures: the genuine speech clips beside the repository and a tiny, fast
training recipe (small mel, small flow) and torch-settings hygiene for trainer tests."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

SPEECH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    """`../shared/data/speech`: one dataset per source dir; fails loudly (never skips) when absent."""
    if not (SPEECH_DIR / "ljspeech" / "metadata.csv").is_file():
        raise FileNotFoundError(f"shared speech data missing: {SPEECH_DIR} (tests need ../shared/data/speech)")
    return SPEECH_DIR


@pytest.fixture
def tiny_recipe() -> dict[str, Any]:
    """A training config mapping for a flow of a few thousand parameters on 2048-sample
    segments; a few steps take well under a second on one CPU thread."""
    return {
        "model": {"family": "efficient", "n_mels": 20, "hop_length": 64, "n_group": 16, "n_flows": 4,
                  "n_early_every": 2, "n_early_size": 2, "n_layers": 2, "n_channels": 16},
        "mel": {"n_mels": 20, "hop_length": 64, "n_fft": 256, "win_length": 256},
        "data": {"val_clips": 2},
        "optim": {"lr": 1e-3, "warmup_steps": 3, "schedule": "cosine", "grad_clip": 50.0},
        "loss": {"stft_weight": 0.1, "mel_weight": 0.1, "stft_resolutions": [[128, 32, 128], [256, 64, 256]]},
        "train": {"max_steps": 20, "batch_size": 4, "segment_length": 2048, "log_every": 1, "val_every": 10,
                  "checkpoint_every": 5, "keep_last": 2, "threads": 1, "deterministic": True},
    }


@pytest.fixture
def restore_torch_globals():
    """Undo the process-wide settings a Trainer makes (thread count, deterministic mode), so
    tests that run later in the same process see torch as they would alone."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
