"""Checkpoints as data: a directory with `model.safetensors` and `config.json`.

The JSON carries a format version, the flow config, the mel config and free-form
metadata (training config, provenance). Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vocoder.config import FlowConfig
from vocoder.errors import CheckpointError, ConfigError
from vocoder.flow import WaveFlow
from vocoder.mel import MelConfig

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class Checkpoint:
    model: FlowConfig
    mel: MelConfig
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)


def resolve_checkpoint_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name in (WEIGHTS_FILE, CONFIG_FILE):
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory (expected {WEIGHTS_FILE} and {CONFIG_FILE})")
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: missing {name}")
    return path


def read_config_json(path: str | Path, what: str, version: int) -> tuple[Path, dict[str, Any]]:
    """Resolve a checkpoint directory and parse its `config.json`, checking the format version."""
    path = resolve_checkpoint_dir(path)
    try:
        raw = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path / CONFIG_FILE}: not valid UTF-8 JSON ({error})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path / CONFIG_FILE}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("format_version") != version:
        raise CheckpointError(
            f"{path}: {what} format version {raw.get('format_version')!r}, this code reads version {version}")
    return path, raw


@contextmanager
def config_sections(path: Path) -> Iterator[None]:
    """Turn a missing or invalid config section into a `CheckpointError` naming the file."""
    try:
        yield
    except KeyError as error:
        raise CheckpointError(f"{path / CONFIG_FILE}: missing section {error}") from None
    except ConfigError as error:
        raise CheckpointError(f"{path / CONFIG_FILE}: {error}") from None


def read_config(path: str | Path) -> tuple[FlowConfig, MelConfig, dict[str, Any]]:
    """Read and validate a checkpoint's `config.json` without loading weights."""
    path, raw = read_config_json(path, "checkpoint", FORMAT_VERSION)
    with config_sections(path):
        model = FlowConfig.from_dict(raw["model"], "model")
        mel = MelConfig.from_dict(raw["mel"], "mel")
        model.check_mel(mel)
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path / CONFIG_FILE}: metadata must be a JSON object, got {type(metadata).__name__}")
    return model, mel, metadata


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of `path/model.safetensors` as float32; a damaged file is a `CheckpointError`."""
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except SafetensorError as error:
        raise CheckpointError(f"{path / WEIGHTS_FILE}: not a readable safetensors file ({error})") from None
    return {key: value.float() for key, value in tensors.items()}


def check_weights_fit(checkpoint: Checkpoint, where: str) -> None:
    """Check the weights against the tensors the config asks for, on a meta-device flow:
    shapes without storage, so an absurd config (n_channels 10**7) fails here instead of
    allocating tens of gigabytes before the weights are looked at."""
    with torch.device("meta"):
        expected = WaveFlow(checkpoint.model, checkpoint.mel).state_dict()
    check_state_dict(expected, checkpoint.state_dict, where)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint directory; weights come back as float32 on the CPU, checked to fit the config."""
    model, mel, metadata = read_config(path)
    path = resolve_checkpoint_dir(path)
    checkpoint = Checkpoint(model=model, mel=mel, state_dict=load_weights(path), metadata=metadata)
    check_weights_fit(checkpoint, str(path))
    return checkpoint


def atomic_write(target: Path, write: Any) -> None:
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        write(temporary)
        # mkstemp creates 0600 files; checkpoints are meant to be shared and shipped.
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def save_checkpoint(path: str | Path, checkpoint: Checkpoint, dtype: torch.dtype = torch.float32) -> Path:
    """Write a checkpoint directory atomically per file; `dtype=torch.float16` halves its size."""
    config = {
        "format_version": FORMAT_VERSION,
        "model": checkpoint.model.to_dict(),
        "mel": checkpoint.mel.to_dict(),
        "metadata": checkpoint.metadata,
    }
    return write_checkpoint_files(path, checkpoint.state_dict, config, dtype)


def write_checkpoint_files(path: str | Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any],
                           dtype: torch.dtype) -> Path:
    """Write `model.safetensors` (as `dtype`) and `config.json` into `path`, each atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu", dtype).contiguous() for key, value in state_dict.items()}
    atomic_write(path / WEIGHTS_FILE, lambda name: save_file(tensors, name))
    atomic_write(path / CONFIG_FILE, lambda name: Path(name).write_text(json.dumps(config, indent=2) + "\n"))
    return path


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], where: str) -> None:
    """Fail with one message listing missing, unexpected and mis-shaped tensors."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [f"{key}: checkpoint {tuple(given[key].shape)} vs model {tuple(expected[key].shape)}"
              for key in sorted(set(expected) & set(given)) if given[key].shape != expected[key].shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (first: {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[:3]})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (first: {shapes[:3]})")
    if problems:
        raise CheckpointError(f"{where}: weights do not fit the config: " + "; ".join(problems))
