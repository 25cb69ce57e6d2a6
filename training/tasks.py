"""What the trainer trains, behind one small interface: the vocoder (`training.vocoder_task`)
or the text-to-mel model (`training.acoustic`). The trainer owns the loop, optimizer,
precision, non-finite guard, DDP, logging, checkpoints and resume; a task owns its model,
loss, data, validation and the inference checkpoint inside each training checkpoint."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
    def refitted_parts(init_model: Any, model: Any) -> list[str]:
        """The state-dict prefixes that training fits afresh when the recipe's `model` differs
        from the `--init` checkpoint's `init_model` only there; empty when they must match."""
        return []

    def build_flow(self, init: Any | None, init_path: str | None) -> nn.Module:
        """The model to train, with the weights of `init` when given (less its refitted parts)."""
        flow = self.new_flow()
        if init is not None:
            state = dict(init.state_dict)
            for prefix in self.refitted_parts(self.checkpoint_model(init), self.config.model):
                state = {key: value for key, value in state.items() if not key.startswith(prefix)}
                state.update({key: value for key, value in flow.state_dict().items() if key.startswith(prefix)})
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
