"""What the trainer trains, behind one small interface: the vocoder (`training.vocoder_task`)
or the text-to-mel model (`training.acoustic`). The trainer owns the loop, optimizer,
precision, non-finite guard, DDP, logging, checkpoints and resume; a task owns its model,
loss, data, validation and the inference checkpoint inside each training checkpoint."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from training.config import TrainConfig
from training.data import Position, ResumableBatchSampler
from training.distributed import DistributedContext
from training.logging_utils import MetricsWriter
from vocoder.checkpoint import check_state_dict
from vocoder.mel import MelConfig


@dataclass
class TrainData:
    """A task's training data: items keyed by `(epoch, index)`, the sampler that yields them
    from a saved position on, and how to collate them (None: torch's default)."""

    dataset: Dataset
    sampler: ResumableBatchSampler
    collate: Callable[[list[Any]], Any] | None = None


class Task(abc.ABC):
    """One kind of model to train. The static methods serve `resolve_model` (config stage);
    the trainer makes one instance per run, after seeding the RNGs."""

    summary: str  # a few words for the trainer's start-up log line

    def __init__(self, config: TrainConfig, context: DistributedContext) -> None:
        self.config, self.context = config, context

    # -- config stage ---------------------------------------------------------------------
    @staticmethod
    @abc.abstractmethod
    def load_checkpoint(path: str | Path) -> Any:
        """An `--init` checkpoint of this task's kind (with `mel` and `state_dict`)."""

    @staticmethod
    @abc.abstractmethod
    def checkpoint_model(checkpoint: Any) -> Any:
        """The model config of a checkpoint from `load_checkpoint`."""

    @staticmethod
    @abc.abstractmethod
    def default_model() -> Any:
        """The model config when neither the recipe nor `--init` gives one."""

    @staticmethod
    @abc.abstractmethod
    def default_mel(model: Any) -> MelConfig:
        """The mel config for `model` when neither the recipe nor `--init` gives one."""

    # -- model ----------------------------------------------------------------------------
    @abc.abstractmethod
    def new_flow(self) -> nn.Module:
        """The freshly initialised model of `config.model`."""

    @staticmethod
    def init_adaptations(init_model: Any, model: Any) -> list[str]:
        """How training adapts the `--init` checkpoint's weights when the recipe's `model`
        differs from the checkpoint's `init_model` (a phrase each, for the log); empty when
        they must match."""
        return []

    def adapt_init_state(self, init_model: Any, state: dict[str, torch.Tensor],
                         fresh: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The `--init` weights `state` made to fit `config.model` (whose new weights are
        `fresh`), as `init_adaptations` says."""
        return state

    def build_flow(self, init: Any | None, init_path: str | None) -> nn.Module:
        """The model to train, with the weights of `init` when given (adapted to the recipe's model)."""
        flow = self.new_flow()
        if init is not None:
            state = self.adapt_init_state(self.checkpoint_model(init), dict(init.state_dict), flow.state_dict())
            check_state_dict(flow.state_dict(), state, init_path or "--init checkpoint")
            flow.load_state_dict(state)
        return flow

    @abc.abstractmethod
    def objective(self, flow: nn.Module) -> nn.Module:
        """The module whose `forward(*to_device(batch))` returns the loss terms as scalars,
        `loss` among them; everything touching parameters happens in it, for DDP."""

    # -- data -----------------------------------------------------------------------------
    @abc.abstractmethod
    def train_data(self, per_rank: int, position: Position) -> TrainData:
        """Find the clips, split off validation (kept for `validate`) and build the data."""

    @abc.abstractmethod
    def to_device(self, batch: Any) -> tuple[Any, ...]:
        """A collated batch as the objective's arguments, on the training device."""

    @abc.abstractmethod
    def batch_seconds(self, batch: Any) -> float:
        """Seconds of audio in this process's batch, for the throughput figure."""

    def train_record(self) -> dict[str, float]:
        """Constant scalars logged with every training record."""
        return {}

    # -- validation and export ------------------------------------------------------------
    @abc.abstractmethod
    def validate(self, flow: nn.Module, step: int, metrics: MetricsWriter) -> dict[str, float]:
        """Validation scalars (empty without val clips); samples may go to `metrics`."""

    @abc.abstractmethod
    def export(self, directory: Path, flow: nn.Module, metadata: dict[str, Any]) -> None:
        """Write the inference checkpoint of `flow` into a training checkpoint directory."""
