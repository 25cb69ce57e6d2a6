"""Training checkpoints: an inference checkpoint plus the exact state needed to resume.

Each `step-NNNNNNNN/` directory holds `model.safetensors` + `config.json` (plain weights,
loadable by `Vocoder.from_pretrained`, or by `vocoder.text.checkpoint.load_model` for the
acoustic task), `training_state.safetensors` (parameters as trained, e.g. weight-normed,
optimizer moments, RNG tensors) and `training_state.json` (scalars, optimizer
hyper-parameters, RNG states, data position). It is built under a temporary name and
renamed into place, so a directory with that name is always complete. No pickles.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from training.data import Position
from vocoder.checkpoint import CONFIG_FILE
from vocoder.errors import CheckpointError

STATE_FORMAT = "flow-vocoder-training-state"
STATE_VERSION = 1
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
STEP_DIR = re.compile(r"^step-(\d{8})$")
LATEST_LINK = "latest"


@dataclass
class Progress:
    """Scalars of a run: optimizer steps taken, data position, time, and skipped steps."""

    step: int = 0
    position: Position = field(default_factory=Position)
    wall_time: float = 0.0
    skipped_steps: int = 0
    bad_steps: int = 0
    world_size: int = 1


@dataclass
class RngState:
    """One process's random generators: JSON-able scalars and raw state tensors."""

    scalars: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def capture_rng() -> RngState:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{index}"] = state
    scalars = {"python": [version, list(internal), gauss],
               "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}}
    return RngState(scalars, tensors)


def restore_rng(state: RngState) -> None:
    version, internal, gauss = state.scalars["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state.scalars["numpy"]
    np.random.set_state((numpy_state["kind"], state.tensors["numpy_keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached"]))
    torch.set_rng_state(state.tensors["torch_cpu"])
    cuda = [state.tensors[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in state.tensors]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)


@dataclass
class TrainingState:
    """Everything `--resume` restores besides the config."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any] | None
    progress: Progress
    rng: list[RngState]


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def write_state(directory: Path, state: TrainingState) -> None:
    """Write the training state into an existing (temporary) checkpoint directory."""
    tensors = {f"model.{k}": v for k, v in state.model.items()}
    optimizer_tensors, optimizer_meta = _split_optimizer(state.optimizer)
    tensors.update(optimizer_tensors)
    for rank, rng in enumerate(state.rng):
        tensors.update({f"rng.{rank}.{k}": v for k, v in rng.tensors.items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(directory / STATE_TENSORS))
    document = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "progress": asdict(state.progress),
        "optimizer": optimizer_meta,
        "scaler": state.scaler,
        "rng": [rng.scalars for rng in state.rng],
    }
    (directory / STATE_JSON).write_text(json.dumps(document) + "\n")


def read_state(directory: Path) -> TrainingState:
    """Load what `write_state` wrote, with one-line errors for foreign or damaged files."""
    for name in (STATE_JSON, STATE_TENSORS):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: not a training checkpoint (missing {name})")
    try:
        document = json.loads((directory / STATE_JSON).read_text())
        tensors = load_file(str(directory / STATE_TENSORS))
    except (json.JSONDecodeError, OSError, RuntimeError) as error:
        raise CheckpointError(f"{directory}: damaged training state ({error})") from None
    if document.get("format") != STATE_FORMAT or document.get("version") != STATE_VERSION:
        raise CheckpointError(f"{directory}: training state format {document.get('format')!r} "
                              f"version {document.get('version')!r}, this code reads version {STATE_VERSION}")
    raw = document["progress"]
    progress = Progress(**{**raw, "position": Position(**raw["position"])})
    rng = []
    for rank, scalars in enumerate(document["rng"]):
        prefix = f"rng.{rank}."
        rng.append(RngState(scalars, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}))
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    return TrainingState(model, _join_optimizer(tensors, document["optimizer"]), document["scaler"], progress, rng)


def saved_train_config(directory: Path) -> dict[str, Any] | None:
    """The training config saved in a checkpoint's `config.json` metadata (of either task)."""
    try:
        document = json.loads((directory / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, OSError) as error:
        raise CheckpointError(f"{directory / CONFIG_FILE}: unreadable ({error})") from None
    return document.get("metadata", {}).get("train_config")


def step_dirs(checkpoints: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint directories under `checkpoints`, oldest first."""
    if not checkpoints.is_dir():
        return []
    found = []
    for path in checkpoints.iterdir():
        match = STEP_DIR.match(path.name)
        if match and path.is_dir() and (path / STATE_JSON).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_resume_dir(path: Path) -> Path:
    """A checkpoint directory itself, or the newest one of a run directory."""
    if (path / STATE_JSON).is_file():
        return path
    for candidate in (path / "checkpoints", path):
        found = step_dirs(candidate)
        if found:
            return found[-1][1]
    raise CheckpointError(f"{path}: no training checkpoint to resume from (expected a step-NNNNNNNN "
                          f"directory or a run directory with checkpoints/)")


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def commit_checkpoint(checkpoints: Path, step: int, fill: Any, keep_last: int) -> Path:
    """Build `step-NNNNNNNN` via `fill(temp_dir)`, rename it into place, point `latest` at it,
    and delete all but the newest `keep_last` checkpoints."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / f"step-{step:08d}"
    staging = checkpoints / f".staging-{final.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        fill(staging)
        _fsync_tree(staging)
        if final.exists():
            # Re-saving a step (after a resume) swaps the directories, then drops the old one.
            retired = checkpoints / f".retired-{final.name}-{os.getpid()}"
            os.replace(final, retired)
            os.replace(staging, final)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    link = checkpoints / LATEST_LINK
    temporary_link = checkpoints / f".{LATEST_LINK}-{os.getpid()}"
    if temporary_link.is_symlink():
        temporary_link.unlink()
    temporary_link.symlink_to(final.name)
    os.replace(temporary_link, link)
    for _, old in step_dirs(checkpoints)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_stale_staging(checkpoints: Path) -> None:
    """Drop half-written directories that a killed run left behind."""
    if checkpoints.is_dir():
        for path in checkpoints.glob(".staging-*"):
            shutil.rmtree(path, ignore_errors=True)
        for path in checkpoints.glob(".retired-*"):
            shutil.rmtree(path, ignore_errors=True)
