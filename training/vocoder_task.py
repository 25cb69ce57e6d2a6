"""The vocoder as a training task: `WaveFlow` on random fixed-length audio segments, the
`FlowObjective` loss, copy-synthesis validation and vocoder checkpoints."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from training.config import TrainConfig
from training.data import AudioStore, Clip, Position, ResumableBatchSampler, SegmentDataset, drop_short, split_clips
from training.distributed import DistributedContext
from training.logging_utils import MetricsWriter, log
from training.pitch_fit import continuous_f0, fit_pitch_predictor, label_clips
from training.losses import FlowObjective
from training.tasks import Task, TrainData
from vocoder.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from vocoder.config import FlowConfig
from vocoder.flow import WaveFlow
from vocoder.mel import MelConfig, MelSpectrogram
from vocoder.options import SIGMA

VAL_SIGMA = SIGMA.default
VAL_AUDIO_CLIPS = 2


class VocoderTask(Task):
    """Train a `WaveFlow` (`config.model` is a `FlowConfig`)."""

    load_checkpoint = staticmethod(load_checkpoint)

    def __init__(self, config: TrainConfig, context: DistributedContext) -> None:
        super().__init__(config, context)
        self.val_clips: list[Clip] = []
        self.val_store = AudioStore([], config.mel.sample_rate, cache=True)
        self.mel = MelSpectrogram(config.mel).to(context.device)
        self._logged_targets = False

    @staticmethod
    def checkpoint_model(checkpoint: Checkpoint) -> FlowConfig:
        return checkpoint.model

    @staticmethod
    def default_model() -> FlowConfig:
        return FlowConfig()

    @staticmethod
    def init_adaptations(init_model: FlowConfig, model: FlowConfig) -> list[str]:
        """Another kind of pitch predictor, fitted before the first step (a flow trained with
        `loss.pitch_phase=aligned` never saw the old one's output), and more voiced harmonics,
        the new ones starting at 0 (so the model starts as the checkpoint's)."""
        changes, adapted = [], init_model
        if model.pitch_predictor != init_model.pitch_predictor:
            changes.append(f"its pitch predictor is replaced by a new {model.pitch_predictor}, fitted afresh")
            adapted = adapted.updated(pitch_predictor=model.pitch_predictor)
        if model.voiced_harmonics > init_model.voiced_harmonics > 0:
            changes.append(f"its voiced mean grows from {init_model.voiced_harmonics} to {model.voiced_harmonics} "
                           f"harmonics, the new ones starting at 0")
            adapted = adapted.updated(voiced_harmonics=model.voiced_harmonics)
        return changes if adapted == model else []

    def adapt_init_state(self, init_model: FlowConfig, state: dict[str, torch.Tensor],
                         fresh: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model = self.config.model
        if model.pitch_predictor != init_model.pitch_predictor:
            state = {key: value for key, value in state.items() if not key.startswith("pitch.")}
            state.update({key: value for key, value in fresh.items() if key.startswith("pitch.")})
        old, new = init_model.voiced_harmonics, model.voiced_harmonics
        if new > old > 0:
            for key in ("source_filter.voiced_net.2.weight", "source_filter.voiced_net.2.bias"):
                grown = torch.zeros_like(fresh[key])
                grown[:old], grown[new:new + old] = state[key][:old], state[key][old:]  # sines, then cosines
                state[key] = grown
        return state

    @staticmethod
    def default_mel(model: FlowConfig) -> MelConfig:
        return MelConfig(n_mels=model.n_mels, hop_length=model.hop_length)

    @property
    def summary(self) -> str:
        return f"sigma {self.config.loss.sigma:.2f}"

    def new_flow(self) -> WaveFlow:
        return WaveFlow(self.config.model, self.config.mel)

    def build_flow(self, init: Checkpoint | None, init_path: str | None) -> WaveFlow:
        flow = super().build_flow(init, init_path)
        if self.config.train.weight_norm:
            flow.apply_weight_norm()
        self.flow = flow
        return flow

    def objective(self, flow: WaveFlow) -> FlowObjective:
        return FlowObjective(flow, self.config.mel, self.config.loss)

    def train_data(self, per_rank: int, position: Position) -> TrainData:
        config, loop, context = self.config, self.config.train, self.context
        train_clips, self.val_clips = split_clips(config.data)
        min_seconds = max(config.mel.min_samples, config.model.n_group) / config.mel.sample_rate
        train_clips, seconds = drop_short(train_clips, min_seconds)
        log.info("training on %d clips (%.1f min), validating on %d; %d process(es), batch %d x %d samples",
                 len(train_clips), seconds / 60, len(self.val_clips), context.world_size,
                 loop.batch_size, loop.segment_length)
        store = AudioStore(train_clips, config.mel.sample_rate, config.data.cache_audio)
        if config.data.cache_audio:
            started = time.time()
            cached = store.preload()
            log.info("cached %.1f min of training audio in memory in %.1f s", cached / 60, time.time() - started)
        sampler = ResumableBatchSampler(len(store), loop.seed, per_rank, context.world_size, context.rank, position)
        self.val_store = AudioStore(self.val_clips, config.mel.sample_rate, cache=True)
        predictor, labels, recorded = self.flow.pitch, None, None
        if config.loss.pitch_phase == "aligned" or (predictor is not None and not bool(predictor.fitted)):
            labels = label_clips(store, config.mel.sample_rate, config.mel.hop_length)
        if predictor is not None and not bool(predictor.fitted):
            # Every process fits the same predictor from the same seed before the first step.
            fit_pitch_predictor(predictor, store, self.mel, loop.seed, labels=labels)
        if config.loss.pitch_phase == "aligned":
            recorded = [(continuous_f0(clip), clip[1]) for clip in labels]
        return TrainData(SegmentDataset(store, loop.segment_length, config.model.n_group, loop.seed,
                                        recorded, config.mel.hop_length), sampler)

    def to_device(self, batch: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Audio and lengths, and with `loss.pitch_phase=aligned` the recording's F0 and voicing."""
        device = self.context.device
        return tuple(tensor.to(device, non_blocking=True) for tensor in batch)

    def batch_seconds(self, batch: list[torch.Tensor]) -> float:
        return batch[0].numel() / self.config.mel.sample_rate

    def train_record(self) -> dict[str, float]:
        return {"sigma": self.config.loss.sigma}

    def validate(self, flow: WaveFlow, step: int, metrics: MetricsWriter) -> dict[str, float]:
        """Held-out NLL and copy-synthesis log-mel L1 on the val clips; audio and mel images
        of the first few go to TensorBoard. Latents come from a fixed seed, so samples are
        comparable across steps and the training RNG stream is untouched."""
        if not self.val_clips:
            return {}
        device, n_group = self.context.device, self.config.model.n_group
        sample_rate = self.config.mel.sample_rate
        nll_sum, l1_sum = 0.0, 0.0
        for index in range(len(self.val_store)):
            audio = self.val_store.load(index)
            audio = torch.from_numpy(audio[: audio.shape[0] // n_group * n_group]).to(device).unsqueeze(0)
            mel = self.mel(audio)
            nll_sum += float(-flow.log_likelihood(audio, mel, self.config.loss.sigma)[0])
            generator = torch.Generator().manual_seed(self.config.train.seed + index)
            z = torch.randn(flow.latent_shape(1, mel.shape[2]), generator=generator).to(device)
            synthesized = flow.infer(mel, VAL_SIGMA, z=z)[:, : audio.shape[1]]
            synthesized_mel = self.mel(synthesized)
            l1_sum += float((synthesized_mel - mel).abs().mean())
            if index < VAL_AUDIO_CLIPS:
                name = self.val_clips[index].clip_id
                metrics.audio(f"val_audio/{name}_generated", synthesized[0], step, sample_rate)
                metrics.mel_image(f"val_mel/{name}_generated", synthesized_mel[0], step)
                if not self._logged_targets:
                    metrics.audio(f"val_audio/{name}_target", audio[0], step, sample_rate)
                    metrics.mel_image(f"val_mel/{name}_target", mel[0], step)
        self._logged_targets = True
        return {"nll": nll_sum / len(self.val_store), "mel_l1": l1_sum / len(self.val_store)}

    def export(self, directory: Path, flow: WaveFlow, metadata: dict[str, Any]) -> None:
        save_checkpoint(directory, Checkpoint(model=flow.config, mel=self.config.mel,
                                              state_dict=flow.plain_state_dict(), metadata=metadata))
