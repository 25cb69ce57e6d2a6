"""Text-to-mel checkpoints as data: a directory with `model.safetensors` and `config.json`
holding a format version, the acoustic config, the mel config and the symbol set the ids
refer to, so a model never silently meets a different alphabet or mel convention."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vocoder.checkpoint import (
    check_state_dict, config_sections, load_weights, read_config_json, resolve_checkpoint_dir, write_checkpoint_files,
)
from vocoder.errors import CheckpointError
from vocoder.mel import MelConfig
from vocoder.pretrained import TTS_DIR, bundled
from vocoder.text.model import AcousticConfig, TextToMel
from vocoder.text.symbols import SYMBOLS

FORMAT_VERSION = 1
KIND = "text-to-mel"
BUNDLED_DIR = TTS_DIR


@dataclass
class AcousticCheckpoint:
    config: AcousticConfig
    mel: MelConfig
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)


def bundled_checkpoint() -> Path | None:
    """The text-to-mel checkpoint copied into the package, or None (the slot ships empty)."""
    return bundled(BUNDLED_DIR)


def read_config(path: str | Path) -> tuple[AcousticConfig, MelConfig, dict[str, Any]]:
    """Read and validate a text-to-mel checkpoint's `config.json` without loading weights."""
    path, raw = read_config_json(path, "text-to-mel", FORMAT_VERSION)
    if raw.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a text-to-mel checkpoint (kind {raw.get('kind')!r}, expected {KIND!r})")
    if raw.get("symbols") != SYMBOLS:
        raise CheckpointError(
            f"{path}: trained on the symbol set {raw.get('symbols')!r}, this code uses {SYMBOLS!r}")
    with config_sections(path):
        config = AcousticConfig.from_dict(raw["acoustic"], "acoustic")
        mel = MelConfig.from_dict(raw["mel"], "mel")
        config.check_mel(mel)
    if config.n_symbols != len(SYMBOLS):
        raise CheckpointError(f"{path}: model embeds {config.n_symbols} symbols, the symbol set has {len(SYMBOLS)}")
    return config, mel, raw.get("metadata", {})


def load_checkpoint(path: str | Path) -> AcousticCheckpoint:
    """Load a text-to-mel checkpoint directory; weights come back as float32 on the CPU."""
    config, mel, metadata = read_config(path)
    state = load_weights(resolve_checkpoint_dir(path))
    return AcousticCheckpoint(config=config, mel=mel, state_dict=state, metadata=metadata)


def save_checkpoint(path: str | Path, checkpoint: AcousticCheckpoint, dtype: torch.dtype = torch.float32) -> Path:
    """Write a text-to-mel checkpoint directory, each file atomically."""
    checkpoint.config.check_mel(checkpoint.mel)
    config = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "symbols": SYMBOLS,
        "acoustic": checkpoint.config.to_dict(),
        "mel": checkpoint.mel.to_dict(),
        "metadata": checkpoint.metadata,
    }
    return write_checkpoint_files(path, checkpoint.state_dict, config, dtype)


def save_model(path: str | Path, model: TextToMel, mel: MelConfig, metadata: dict[str, Any] | None = None,
               dtype: torch.dtype = torch.float32) -> Path:
    """Save a `TextToMel` with the mel convention it was trained on."""
    return save_checkpoint(path, AcousticCheckpoint(model.config, mel, model.state_dict(), dict(metadata or {})),
                           dtype=dtype)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[TextToMel, AcousticCheckpoint]:
    """A `TextToMel` in eval mode on `device`, and the checkpoint it came from."""
    checkpoint = load_checkpoint(path)
    model = TextToMel(checkpoint.config)
    check_state_dict(model.state_dict(), checkpoint.state_dict, str(path))
    model.load_state_dict(checkpoint.state_dict)
    return model.to(device).eval(), checkpoint
