"""The text-to-mel flow as a training task (`task: acoustic`): `TextToMel` on whole
utterances with transcripts, its own loss (mel NLL + log-duration MSE), validation NLL and
synthesized mels, and text-to-mel checkpoints that `load_text_frontend` serves."""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.config import TrainConfig
from training.data import Position, split_clips
from training.distributed import DistributedContext
from training.logging_utils import MetricsWriter, log
from training.tasks import Task, TrainData
from training.text_data import BucketedBatchSampler, Transcripts, UtteranceDataset, collate, utterances
from vocoder.mel import MelConfig
from vocoder.text.checkpoint import AcousticCheckpoint, load_checkpoint, save_model
from vocoder.text.model import AcousticConfig, TextToMel

VAL_NOISE_SCALE = 0.667
VAL_IMAGES = 2


class AcousticObjective(nn.Module):
    """`TextToMel.loss` as a module call, so DistributedDataParallel can wrap it."""

    def __init__(self, model: TextToMel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model.loss(batch)


class AcousticTask(Task):
    """Train a `TextToMel` (`config.model` is an `AcousticConfig`)."""

    summary = "text to mel"
    load_checkpoint = staticmethod(load_checkpoint)

    def __init__(self, config: TrainConfig, context: DistributedContext) -> None:
        super().__init__(config, context)
        self.collate = partial(collate, silence=config.mel.silence_value)
        self.val = UtteranceDataset([], config.mel, cache=True)
        self._logged_targets = False

    @staticmethod
    def checkpoint_model(checkpoint: AcousticCheckpoint) -> AcousticConfig:
        return checkpoint.config

    @staticmethod
    def default_model() -> AcousticConfig:
        return AcousticConfig()

    @staticmethod
    def default_mel(model: AcousticConfig) -> MelConfig:
        return MelConfig(n_mels=model.n_mels)

    def new_flow(self) -> TextToMel:
        return TextToMel(self.config.model)

    def objective(self, flow: TextToMel) -> AcousticObjective:
        return AcousticObjective(flow)

    def train_data(self, per_rank: int, position: Position) -> TrainData:
        config, loop, context = self.config, self.config.train, self.context
        transcripts = Transcripts()
        train_clips, val_clips = split_clips(config.data, usable=lambda clip: transcripts.ids(clip) is not None)
        transcripts.report()
        train, seconds = utterances(train_clips, transcripts, config.mel, config.model.n_squeeze)
        val, _ = utterances(val_clips, transcripts, config.mel, config.model.n_squeeze)
        log.info("training on %d utterances (%.1f min), validating on %d; %d process(es), batch %d, "
                 "buckets of %d batches", len(train), seconds / 60, len(val), context.world_size, loop.batch_size,
                 config.data.bucket_batches)
        dataset = UtteranceDataset(train, config.mel, config.data.cache_audio)
        if config.data.cache_audio:
            started = time.time()
            dataset.preload()
            log.info("cached the mels of %.1f min of training audio in %.1f s", seconds / 60, time.time() - started)
        sampler = BucketedBatchSampler([u.frames for u in train], config.data.bucket_batches, loop.seed, per_rank,
                                       context.world_size, context.rank, position)
        self.val = UtteranceDataset(val, config.mel, cache=True)
        return TrainData(dataset, sampler, self.collate)

    def to_device(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor]]:
        return ({name: value.to(self.context.device, non_blocking=True) for name, value in batch.items()},)

    def batch_seconds(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["mel_lengths"].sum()) * self.config.mel.hop_length / self.config.mel.sample_rate

    def validate(self, flow: TextToMel, step: int, metrics: MetricsWriter) -> dict[str, float]:
        """Mel NLL and duration loss of the val utterances, and the length of mels synthesized
        from their text relative to the real ones; the synthesized mels of the first few go
        to TensorBoard. Noise comes from a fixed seed, so images are comparable across steps."""
        if not len(self.val):
            return {}
        sums = {"nll": 0.0, "duration": 0.0, "length_ratio": 0.0}
        flow.eval()  # no dropout
        try:
            for index in range(len(self.val)):
                ids, mel = self.val[(0, index)]
                terms = flow.loss(self.collate([(ids, mel)]))
                sums["nll"] += float(terms["nll"])
                sums["duration"] += float(terms["duration"])
                generator = torch.Generator().manual_seed(self.config.train.seed + index)
                synthesized, _ = flow.infer(ids[None], noise_scale=VAL_NOISE_SCALE, generator=generator)
                sums["length_ratio"] += synthesized.shape[2] / mel.shape[1]
                if index < VAL_IMAGES:
                    name = self.val.utterances[index].clip.clip_id
                    # An early model's mels can be wild; the target's range keeps both images on one scale.
                    image = torch.nan_to_num(synthesized[0].cpu()).clamp(float(mel.min()), float(mel.max()))
                    metrics.mel_image(f"val_mel/{name}_synthesized", image, step)
                    if not self._logged_targets:
                        metrics.mel_image(f"val_mel/{name}_target", mel, step)
        finally:
            flow.train()
        self._logged_targets = True
        return {name: value / len(self.val) for name, value in sums.items()}

    def export(self, directory: Path, flow: TextToMel, metadata: dict[str, Any]) -> None:
        parameters = sum(p.numel() for p in flow.parameters())
        description = f"text-to-mel flow ({parameters / 1e6:.2f} M parameters) after {metadata['step']} training steps"
        save_model(directory, flow, self.config.mel, {**metadata, "description": description})
