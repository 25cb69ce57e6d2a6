"""Typed training configuration: YAML recipes plus dotted `section.key=value` overrides.

Every key is checked against the dataclasses below, so a typo is one clear error naming
the key; the resolved config (with the model and mel filled in) is saved in checkpoints.
`task` picks what is trained: the vocoder (`FlowConfig`) or the text-to-mel model
(`AcousticConfig`); everything else is shared.
"""
from __future__ import annotations

import difflib
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from vocoder.config import FlowConfig, preset
from vocoder.errors import VocoderError
from vocoder.mel import MelConfig
from vocoder.text.model import AcousticConfig

Task = Literal["vocoder", "acoustic"]
Precision = Literal["fp32", "bf16", "fp16"]
Schedule = Literal["constant", "cosine"]
DEFAULT_STFT_RESOLUTIONS = [[512, 128, 512], [1024, 256, 1024], [2048, 512, 2048]]


class ConfigError(VocoderError):
    """A recipe or override is malformed, names an unknown key, or has a bad value."""


@dataclass
class DataConfig:
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


@dataclass
class OptimConfig:
    """Adam with a warmup then constant or cosine (to `min_lr_ratio * lr`) learning rate."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 0.0


@dataclass
class LossConfig:
    """Vocoder: NLL under N(0, sigma^2) latents, plus optional losses on audio sampled at
    `aux_sigma` (the acoustic model's loss is fixed: `TextToMel.loss`).

    Each `stft_resolutions` entry is `[n_fft, hop, win]` of the multi-resolution STFT loss.
    """

    sigma: float = 1.0
    stft_weight: float = 0.0
    mel_weight: float = 0.0
    aux_sigma: float = 0.6
    stft_resolutions: list[list[int]] = field(default_factory=lambda: [list(r) for r in DEFAULT_STFT_RESOLUTIONS])


@dataclass
class LoopConfig:
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


@dataclass
class TrainConfig:
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SECTIONS = {"data": DataConfig, "optim": OptimConfig, "loss": LossConfig, "train": LoopConfig}


def _unknown_key(key: str, known: typing.Iterable[str], where: str) -> ConfigError:
    name = f"{where}.{key}" if where else key
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"unknown config key {name!r}{hint}")


def _coerce(value: Any, kind: Any, name: str) -> Any:
    """Check `value` against the annotation `kind`, converting YAML's forms where harmless."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        return _coerce(value, next(o for o in options if o is not type(None)), name)
    if origin is Literal:
        if value not in typing.get_args(kind):
            raise ConfigError(f"config key {name!r} must be one of {list(typing.get_args(kind))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {name!r} must be a list, got {value!r}")
        (item,) = typing.get_args(kind)
        return [_coerce(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {name!r} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {name!r} must be an integer, got {value!r}")
        return value
    if kind is float:
        # YAML 1.1 reads `1e-4` (no dot) as a string, so numeric strings are accepted.
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {name!r} must be a number, got {value!r}") from None
    if kind is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key {name!r} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"config key {name!r} has an unsupported type")  # a bug in this module, not user input


def _build_section(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section {where!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in known:
            raise _unknown_key(str(key), known, where)
        values[key] = _coerce(value, hints[key], f"{where}.{key}")
    return cls(**values)


def _model_fields(cls: type, data: dict[str, Any], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """`data` checked and coerced against the fields of the model config class `cls`."""
    hints = typing.get_type_hints(cls)
    changes = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key(str(key), [*hints, *extra], "model")
        changes[key] = _coerce(value, hints[key], f"model.{key}")
    return changes


def _build_model(data: Any, task: Task) -> FlowConfig | AcousticConfig | None:
    """`model` is a preset name, or a mapping of FlowConfig fields with an optional `preset`
    they override (without one, the fields override the FlowConfig defaults); for the
    acoustic task, a mapping of AcousticConfig fields over its defaults."""
    if data is None:
        return None
    if task == "acoustic":
        if not isinstance(data, dict):
            raise ConfigError(f"config key 'model' must be a mapping of AcousticConfig fields for the "
                              f"acoustic task, got {data!r}")
        changes = _model_fields(AcousticConfig, data)
        try:
            return AcousticConfig(**changes)
        except ValueError as error:
            raise ConfigError(f"model: {error}") from None
    if isinstance(data, str):
        data = {"preset": data}
    if not isinstance(data, dict):
        raise ConfigError(f"config key 'model' must be a preset name or a mapping, got {data!r}")
    data = dict(data)
    name = data.pop("preset", None)
    try:
        base = preset(name) if name is not None else FlowConfig()
    except ValueError as error:
        raise ConfigError(f"model.preset: {error}") from None
    changes = _model_fields(FlowConfig, data, ("preset",))
    try:
        return base.updated(**changes)
    except ValueError as error:
        raise ConfigError(f"model: {error}") from None


def _build_mel(data: Any) -> MelConfig | None:
    if data is None:
        return None
    return _build_section(MelConfig, data, "mel")


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build and check a TrainConfig from a plain mapping (a parsed recipe)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a training config must be a mapping of sections, got {type(raw).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    for key in raw:
        if key not in known:
            raise _unknown_key(str(key), known, "")
    try:
        mel = _build_mel(raw.get("mel"))
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"mel: {error}") from None
    sections = {name: _build_section(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
    out_dir = _coerce(raw.get("out_dir", TrainConfig.out_dir), str, "out_dir")
    task = _coerce(raw.get("task", TrainConfig.task), Task, "task")
    config = TrainConfig(task=task, model=_build_model(raw.get("model"), task), mel=mel, out_dir=out_dir,
                         **sections)
    check_values(config)
    return config


def check_values(config: TrainConfig) -> None:
    """Range checks that do not depend on the model."""
    loop, optim, data, loss = config.train, config.optim, config.data, config.loss
    positive = {"train.max_steps": loop.max_steps, "train.batch_size": loop.batch_size,
                "train.segment_length": loop.segment_length, "train.log_every": loop.log_every,
                "train.val_every": loop.val_every, "train.checkpoint_every": loop.checkpoint_every,
                "train.keep_last": loop.keep_last, "train.max_bad_steps": loop.max_bad_steps,
                "optim.lr": optim.lr, "loss.sigma": loss.sigma, "data.bucket_batches": data.bucket_batches}
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key {name!r} must be positive, got {value}")
    non_negative = {"train.num_workers": loop.num_workers, "train.threads": loop.threads,
                    "optim.warmup_steps": optim.warmup_steps, "optim.grad_clip": optim.grad_clip,
                    "optim.weight_decay": optim.weight_decay, "data.val_clips": data.val_clips,
                    "loss.stft_weight": loss.stft_weight, "loss.mel_weight": loss.mel_weight,
                    "loss.aux_sigma": loss.aux_sigma}
    for name, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"config key {name!r} must not be negative, got {value}")
    if len(optim.betas) != 2 or not all(0 <= b < 1 for b in optim.betas):
        raise ConfigError(f"config key 'optim.betas' must be two numbers in [0, 1), got {optim.betas}")
    if not 0 <= optim.min_lr_ratio <= 1:
        raise ConfigError(f"config key 'optim.min_lr_ratio' must be within 0-1, got {optim.min_lr_ratio}")
    for i, resolution in enumerate(loss.stft_resolutions):
        if len(resolution) != 3 or min(resolution) <= 0 or resolution[2] > resolution[0]:
            raise ConfigError(f"config key 'loss.stft_resolutions[{i}]' must be [n_fft, hop, win] with "
                              f"win <= n_fft, got {resolution}")


def check_against_model(config: TrainConfig) -> None:
    """Checks that need the resolved model and mel configs."""
    model, mel, loop = config.model, config.mel, config.train
    assert model is not None and mel is not None, "resolve the model before checking against it"
    if config.task == "acoustic":
        if model.n_mels != mel.n_mels:
            raise ConfigError(f"model makes {model.n_mels} mel bands, mel config gives {mel.n_mels}")
        if loop.precision != "fp32":
            # The log-determinants and the alignment search are sensitive to half precision.
            raise ConfigError(f"the acoustic task trains in fp32 only, got train.precision={loop.precision}")
        return
    if (model.n_mels, model.hop_length) != (mel.n_mels, mel.hop_length):
        raise ConfigError(f"model expects {model.n_mels} mels / hop {model.hop_length}, "
                          f"mel config gives {mel.n_mels} / {mel.hop_length}")
    if loop.segment_length % model.n_group:
        raise ConfigError(f"train.segment_length {loop.segment_length} must be a multiple of the "
                          f"model's n_group {model.n_group}")
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
    raw = _deep_copy(raw)
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


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


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

