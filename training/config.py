"""Typed training configuration: YAML recipes plus dotted `section.key=value` overrides.

Every key is checked against the dataclasses below by the loader that also reads checkpoints
(`vocoder.serialization.load`), so a typo is one clear error naming the key; the resolved config (with the model and mel filled in) is saved in checkpoints.
`task` picks what is trained: the vocoder (`FlowConfig`) or the text-to-mel model
(`AcousticConfig`); everything else is shared.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from vocoder.config import FlowConfig, preset
from vocoder.errors import ConfigError
from vocoder.mel import MelConfig
from vocoder.options import SIGMA
from vocoder.serialization import DictConfig, FieldError, check_ranges
from vocoder.text.model import AcousticConfig

Task = Literal["vocoder", "acoustic"]
Precision = Literal["fp32", "bf16", "fp16"]
PitchPhase = Literal["predicted", "aligned"]
Schedule = Literal["constant", "cosine"]
DEFAULT_STFT_RESOLUTIONS = [[512, 128, 512], [1024, 256, 1024], [2048, 512, 2048]]


@dataclass
class DataConfig(DictConfig):
    """Where clips come from and how validation clips are chosen.

    `paths`: dataset directories (`metadata.csv` with audio in `wavs/` or beside it), parent
    directories of several such datasets, or filelists of audio paths. `train_filelist` /
    `val_filelist` (one utterance id or audio path per line) restrict the clips; without a val
    filelist, `val_clips` clips are picked by a hash of their id and never trained on.
    `val_clips` also caps the size of a val filelist (0: all of it). `cache_audio` keeps the
    training inputs in memory (audio for the vocoder, mels for the acoustic model).
    Acoustic task only: `bucket_batches` batches' worth of shuffled utterances are sorted by
    length before being cut into batches, so a batch holds utterances of similar length
    (1: batches of random utterances).
    """

    paths: list[str] = field(default_factory=list)
    train_filelist: str | None = None
    val_filelist: str | None = None
    val_clips: int = 4
    cache_audio: bool = True
    bucket_batches: int = 8

    def __post_init__(self) -> None:
        check_ranges(self, positive=["bucket_batches"], non_negative=["val_clips"])


@dataclass
class OptimConfig(DictConfig):
    """Adam with a warmup then constant or cosine (to `min_lr_ratio * lr`) learning rate."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        check_ranges(self, positive=["lr"], non_negative=["warmup_steps", "grad_clip", "weight_decay"])
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise FieldError("betas", f"must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise FieldError("min_lr_ratio", f"must be within 0-1, got {self.min_lr_ratio}")


@dataclass
class LossConfig(DictConfig):
    """Vocoder: NLL under N(0, sigma^2) latents, plus optional losses on audio sampled at
    `aux_sigma` (the acoustic model's loss is fixed: `TextToMel.loss`).

    Each `stft_resolutions` entry is `[n_fft, hop, win]` of the multi-resolution STFT loss.

    `pitch_phase` is the pitch track that a pitch-conditioned model sees in training: the
    mel's own (`predicted`, what it sees when sampling), or the recording's pYIN F0 and voicing
    with the phase aligned to its excitation (`aligned`), so that the couplings learn where its
    glottal pulses fall (docs/SOURCE_FILTER.md).
    """

    sigma: float = 1.0
    stft_weight: float = 0.0
    mel_weight: float = 0.0
    aux_sigma: float = SIGMA.default
    stft_resolutions: list[list[int]] = field(default_factory=lambda: [list(r) for r in DEFAULT_STFT_RESOLUTIONS])
    pitch_phase: PitchPhase = "predicted"

    def __post_init__(self) -> None:
        check_ranges(self, positive=["sigma"], non_negative=["stft_weight", "mel_weight", "aux_sigma"])
        for i, resolution in enumerate(self.stft_resolutions):
            if len(resolution) != 3 or min(resolution) <= 0 or resolution[2] > resolution[0]:
                raise FieldError(f"stft_resolutions[{i}]", f"must be [n_fft, hop, win] with win <= n_fft, "
                                                           f"got {resolution}")


@dataclass
class LoopConfig(DictConfig):
    """The training loop. `batch_size` is global (split evenly over processes); steps count
    optimizer steps, skipped non-finite ones included. The acoustic model trains on whole
    utterances, so it ignores `segment_length` and `weight_norm`, and needs fp32."""

    max_steps: int = 100_000
    batch_size: int = 12
    segment_length: int = 16384
    log_every: int = 50
    val_every: int = 1000
    checkpoint_every: int = 1000
    keep_last: int = 3
    seed: int = 1234
    num_workers: int = 0
    precision: Precision = "fp32"
    weight_norm: bool = True
    max_bad_steps: int = 20
    deterministic: bool = False
    device: str = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, positive=["max_steps", "batch_size", "segment_length", "log_every", "val_every",
                                     "checkpoint_every", "keep_last", "max_bad_steps"],
                     non_negative=["num_workers", "threads"])


@dataclass
class TrainConfig(DictConfig):
    """A whole training run. `model`/`mel` None means: take them from `--init`'s checkpoint
    (or the defaults when there is none)."""

    task: Task = "vocoder"
    model: FlowConfig | AcousticConfig | None = None
    mel: MelConfig | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    out_dir: str = "runs/train"


def _model_config(data: Any, task: Task) -> FlowConfig | AcousticConfig | None:
    """`model` is a preset name, or a mapping of FlowConfig fields with an optional `preset`
    they override (without one, the fields override the FlowConfig defaults); for the
    acoustic task, a mapping of AcousticConfig fields over its defaults."""
    if data is None:
        return None
    if task == "acoustic":
        if not isinstance(data, dict):
            raise ConfigError(f"config key 'model' must be a mapping of AcousticConfig fields for the "
                              f"acoustic task, got {data!r}")
        return AcousticConfig.from_dict(data, "model", yaml_forms=True)
    if isinstance(data, str):
        data = {"preset": data}
    if not isinstance(data, dict):
        raise ConfigError(f"config key 'model' must be a preset name or a mapping, got {data!r}")
    changes = dict(data)
    name = changes.pop("preset", None)
    try:
        base = preset(name) if name is not None else FlowConfig()
    except ValueError as error:
        raise ConfigError(f"model.preset: {error}") from None
    return FlowConfig.from_dict({**base.to_dict(), **changes}, "model", yaml_forms=True)


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build and check a TrainConfig from a plain mapping (a parsed recipe)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a training config must be a mapping of sections, got {type(raw).__name__}")
    sections = dict(raw)
    # The model's type depends on `task`, and a flow may start from a preset: built apart.
    model = sections.pop("model", None)
    config = TrainConfig.from_dict(sections, yaml_forms=True)
    return replace(config, model=_model_config(model, config.task))


def check_against_model(config: TrainConfig) -> None:
    """The checks across sections, which need the resolved model and mel configs; each
    section checks its own values when it is built."""
    model, mel, loop = config.model, config.mel, config.train
    assert model is not None and mel is not None, "resolve the model before checking against it"
    model.check_mel(mel)
    if config.task == "acoustic":
        if loop.precision != "fp32":
            # The log-determinants and the alignment search are sensitive to half precision.
            raise ConfigError(f"the acoustic task trains in fp32 only, got train.precision={loop.precision}")
        return
    if loop.segment_length % model.n_group:
        raise ConfigError(f"train.segment_length {loop.segment_length} must be a multiple of the "
                          f"model's n_group {model.n_group}")
    if config.loss.pitch_phase == "aligned" and not (model.pitch_harmonics and model.lpc_order):
        raise ConfigError("loss.pitch_phase=aligned needs a source-filter model with pitch conditioning "
                          "(model.pitch_harmonics and model.lpc_order above 0)")
    if loop.segment_length < max(mel.min_samples, mel.n_fft):
        raise ConfigError(f"train.segment_length {loop.segment_length} is shorter than one STFT frame "
                          f"({mel.n_fft} samples)")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` to (["section", "key"], value parsed as YAML)."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `a.b=value` set; unknown keys are caught when building."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if isinstance(child, str) and path[:i + 1] == ["model"]:
                child = {"preset": child}  # `model: efficient` refined by `model.n_flows=8`
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:i + 1])} is not a section")
            node[part] = child
            node = child
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file as a mapping, with one-line errors for missing or malformed files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a recipe (or start from defaults when `path` is None) and apply overrides."""
    raw = read_yaml(path) if path is not None else {}
    return config_from_dict(apply_overrides(raw, list(overrides)))


def dump_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)

