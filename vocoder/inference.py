"""`Vocoder`: a flow plus its mel front-end, loaded from a checkpoint and ready to run.

Inference handles batches of variable-length mels, long inputs in overlapping chunks
with constant activation memory, an optional denoiser, and autocast on CUDA.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vocoder.checkpoint import Checkpoint, check_weights_fit, load_checkpoint, save_checkpoint
from vocoder.config import FlowConfig
from vocoder.denoiser import Denoiser
from vocoder.errors import CheckpointError, MelError, VocoderError
from vocoder.flow import WaveFlow
from vocoder.fused import fuse
from vocoder.mel import MelConfig, MelSpectrogram
from vocoder.options import MAX_SEED, SIGMA
from vocoder.pretrained import default_checkpoint

DEFAULT_CHUNK_FRAMES = 512


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None`/"auto" picks CUDA when present, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise VocoderError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise VocoderError(f"device {device!r} asked for, but this torch build or machine has no usable CUDA GPU")
    return resolved


def mel_range_message(smallest: float, largest: float, config: MelConfig) -> str:
    """The one-line error for a mel outside `config.value_range` (often a power or dB mel)."""
    low, high = config.value_range
    return (f"mel values span {smallest:.4g} to {largest:.4g}, outside {low:.1f} to {high:.1f}: expected the natural "
            f"log of a magnitude mel, silence at log({config.clamp_min:g}) = {config.silence_value:.1f} "
            f"(a dB or power mel is a common cause)")


def check_seed(seed: int | None) -> int | None:
    """Refuse a seed outside 0-`MAX_SEED`, which torch would reject with a bare overflow."""
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise VocoderError(f"seed must be within 0-{MAX_SEED} (2**63 - 1), got {seed}")
    return seed


def standard_noise(shape: tuple[int, ...] | torch.Size, seed: int | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """N(0, 1) noise of `shape`, drawn on the CPU so that a seed gives the same noise, and so the
    same audio, on every device."""
    if generator is None and check_seed(seed) is not None:
        generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator)


def temper(z: torch.Tensor, sigma: float | Sequence[float]) -> torch.Tensor:
    """Standard-normal `z` `(B, n_group, groups)` at temperature `sigma` (`sigma * z`): one value,
    or a list of one per batch row, so requests of different temperatures share a batch.

    This is how sigma reaches the flow on every path (batch, stream, edit): it scales the noise
    once, here, and the flow inverts the latent it is given as it is (at sigma 1). `SIGMA`'s
    range is checked here for the same reason.
    """
    if isinstance(sigma, (list, tuple)):
        if len(sigma) != z.shape[0]:
            raise VocoderError(f"got {len(sigma)} sigmas for a batch of {z.shape[0]}")
        rows = [float(SIGMA.check(value)) for value in sigma]
        return torch.tensor(rows, dtype=z.dtype, device=z.device)[:, None, None] * z
    return float(SIGMA.check(sigma)) * z


def as_audio_tensor(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Mono audio `(L,)` or a batch `(B, L)` as a float32 tensor `(B, L)`."""
    tensor = torch.as_tensor(np.asarray(audio) if not torch.is_tensor(audio) else audio, dtype=torch.float32)
    return tensor.unsqueeze(0) if tensor.dim() == 1 else tensor


class Vocoder(nn.Module):
    """Mel-conditioned flow vocoder with its front-end and metadata."""

    def __init__(self, flow: WaveFlow, mel_config: MelConfig | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        mel_config = mel_config or MelConfig(n_mels=flow.config.n_mels, hop_length=flow.config.hop_length)
        if (mel_config.n_mels, mel_config.hop_length) != (flow.config.n_mels, flow.config.hop_length):
            raise CheckpointError(
                f"mel config ({mel_config.n_mels} mels, hop {mel_config.hop_length}) does not match the flow "
                f"({flow.config.n_mels} mels, hop {flow.config.hop_length})")
        self.flow = flow
        # Inference runs the fused copy; `flow` stays the reference (and what checkpoints save).
        self.fused = fuse(flow)
        self.mel = MelSpectrogram(mel_config)
        self.metadata = dict(metadata or {})
        self._denoiser: Denoiser | None = None

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: FlowConfig, mel_config: MelConfig | None = None, seed: int | None = None) -> "Vocoder":
        """A randomly initialised model (for training, tests and the no-checkpoint fallback)."""
        if seed is not None:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                return cls(WaveFlow(config, mel_config), mel_config)
        return cls(WaveFlow(config, mel_config), mel_config)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, device: str | torch.device | None = "cpu",
                        where: str = "checkpoint") -> "Vocoder":
        check_weights_fit(checkpoint, where)
        flow = WaveFlow(checkpoint.model, checkpoint.mel)
        flow.load_state_dict(checkpoint.state_dict)
        model = cls(flow, checkpoint.mel, checkpoint.metadata)
        return model.to(resolve_device(device)).eval()

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device | None = "cpu") -> "Vocoder":
        """Load a checkpoint directory; with no path, the bundled default model."""
        if path is None:
            path = default_checkpoint()
            if path is None:
                raise CheckpointError("no checkpoint given and no bundled default checkpoint is installed")
        return cls.from_checkpoint(load_checkpoint(path), device, where=str(path))

    @classmethod
    def load_or_random(cls, path: str | Path | None, device: str | torch.device | None = "cpu") -> "Vocoder":
        """Like `from_pretrained`, but fall back to a random-init model, loudly, when nothing is bundled."""
        if path is None and default_checkpoint() is None:
            warnings.warn("NO TRAINED CHECKPOINT: using a RANDOMLY INITIALISED vocoder; its output is noise",
                          stacklevel=2)
            model = cls.from_config(FlowConfig(), seed=0)
            model.metadata["random_init"] = True
            return model.to(resolve_device(device)).eval()
        return cls.from_pretrained(path, device)

    def to_checkpoint(self, metadata: dict[str, Any] | None = None) -> Checkpoint:
        return Checkpoint(model=self.flow.config, mel=self.mel.config, state_dict=self.flow.plain_state_dict(),
                          metadata={**self.metadata, **(metadata or {})})

    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float32,
                        metadata: dict[str, Any] | None = None) -> Path:
        return save_checkpoint(path, self.to_checkpoint(metadata), dtype=dtype)

    # -- properties -------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.mel.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.mel.config.hop_length

    @property
    def device(self) -> torch.device:
        return self.mel.filterbank.device

    # -- features ---------------------------------------------------------------------------
    @torch.inference_mode()
    def mel_spectrogram(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Audio `(L,)` or `(B, L)` to log-mel `(B, n_mels, L // hop + 1)` with the model's front-end."""
        return self.mel(as_audio_tensor(audio).to(self.device))

    def check_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """Validate a mel `(n_mels, T)` or `(B, n_mels, T)` and return it batched on the model's device."""
        if mel.dim() == 2:
            mel = mel.unsqueeze(0)
        if mel.dim() != 3:
            raise MelError(f"mel must have shape (n_mels, T) or (B, n_mels, T), got {tuple(mel.shape)}")
        if mel.shape[1] != self.mel.config.n_mels:
            raise MelError(f"mel has {mel.shape[1]} bands, model expects {self.mel.config.n_mels}")
        if mel.shape[2] < 1:
            raise MelError("mel has no frames")
        if mel.shape[0] < 1:
            raise MelError(f"mel batch is empty, got shape {tuple(mel.shape)}")
        if not torch.isfinite(mel).all():
            raise MelError("mel contains NaN or infinite values")
        low, high = self.mel.config.value_range
        smallest, largest = float(mel.min()), float(mel.max())
        if smallest < low or largest > high:
            raise MelError(mel_range_message(smallest, largest, self.mel.config))
        return mel.to(self.device, torch.float32)

    def sample_latent(self, frames: int, batch: int = 1, seed: int | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard-normal latent `(B, n_group, frames * hop / n_group)` (`standard_noise`)."""
        return standard_noise(self.flow.latent_shape(batch, frames), seed, generator)

    # -- inference --------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def denoiser(self) -> Denoiser:
        if self._denoiser is None:
            silent = torch.full((1, self.mel.config.n_mels, 88), self.mel.config.silence_value, device=self.device)
            with torch.inference_mode():
                bias = self.fused.infer(silent, sigma=0.0)
            self._denoiser = Denoiser(bias, self.mel.config.n_fft, self.hop_length)
        return self._denoiser

    def _chunk_bounds(self, frames: int, chunk_frames: int | None) -> list[tuple[int, int]]:
        """`[start, end)` frame ranges of at most `chunk_frames`; a runt tail too short to
        STFT (the denoiser needs n_fft / 2 samples) joins the chunk before it."""
        chunk = frames if not chunk_frames or chunk_frames >= frames else chunk_frames
        bounds = [(start, min(start + chunk, frames)) for start in range(0, frames, chunk)]
        min_frames = self.mel.config.min_samples // self.hop_length + 1
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_frames:
            bounds[-2:] = [(bounds[-2][0], frames)]
        return bounds

    @torch.inference_mode()
    def stream(self, mel: torch.Tensor, sigma: float | Sequence[float] = SIGMA.default,
               lengths: torch.Tensor | None = None, z: torch.Tensor | None = None, generator: torch.Generator | None = None,
               chunk_frames: int | None = DEFAULT_CHUNK_FRAMES, denoise: float = 0.0,
               progress: bool = False) -> Iterator[torch.Tensor]:
        """Yield audio `(B, chunk_samples)` pieces of `infer`'s result, in order.

        Each chunk runs with `receptive_field_frames` of mel context on both sides, and the
        source-filter family's synthesis filter carries its state from chunk to chunk, so the
        concatenation equals the unchunked output for the same `z`. `z` is standard normal (drawn
        when not given); `sigma` scales it (`temper`: one value, or one per batch row).
        """
        mel = self.check_mel(mel)
        batch, _, frames = mel.shape
        if z is None:
            z = self.sample_latent(frames, batch, generator=generator)
        z = temper(z, sigma).to(self.device)
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=self.device)
        context = self.flow.config.receptive_field_frames()
        groups, hop = self.flow.config.groups_per_frame, self.hop_length
        bounds = self._chunk_bounds(frames, chunk_frames)
        denoiser = self.denoiser() if denoise > 0 else None
        source_filter, filter_state = self.flow.source_filter, None
        # Per-frame quantities of the whole signal, once, rather than again for every chunk's context.
        frame_filter = None if source_filter is None else source_filter.frame_filter(mel, lengths)
        pitch = None
        if self.flow.pitch is not None:
            pitch = self.flow.pitch.track(mel, hop, self.sample_rate, lengths)
        for start, end in tqdm(bounds, desc="vocoding", unit="chunk", disable=not progress or len(bounds) == 1):
            left, right = max(0, start - context), min(frames, end + context)
            part_lengths = None if lengths is None else (lengths - left).clamp(0, right - left)
            part_mel = mel[:, :, left:right]
            with self._autocast():
                audio = self.fused.infer_flow(part_mel, 1.0, part_lengths, z[:, :, left * groups:right * groups],
                                             pitch=None if pitch is None else pitch.frames(left, right))
            audio = audio.float()[:, (start - left) * hop:(end - left) * hop]
            if source_filter is not None:
                audio, filter_state = source_filter.colour(audio, frame_filter, start * hop, filter_state, pitch)
                if lengths is not None:
                    audio = audio * (torch.arange(start * hop, end * hop, device=audio.device)[None]
                                     < lengths[:, None] * hop)
            if denoiser is not None:
                audio = denoiser(audio, denoise)
            yield audio

    def infer(self, mel: torch.Tensor, sigma: float | Sequence[float] = SIGMA.default,
              lengths: torch.Tensor | None = None, z: torch.Tensor | None = None, generator: torch.Generator | None = None,
              chunk_frames: int | None = DEFAULT_CHUNK_FRAMES, denoise: float = 0.0,
              progress: bool = False) -> torch.Tensor:
        """Mel `(B, n_mels, T)` (or `(n_mels, T)`) to audio `(B, T * hop)` in [-1, 1]-ish float32.

        `lengths` (frames) marks valid frames of a padded batch; audio past them is silence.
        `z` and `sigma` as in `stream`.
        """
        pieces = list(self.stream(mel, sigma, lengths, z, generator, chunk_frames, 0.0, progress))
        audio = torch.cat(pieces, dim=1)
        if denoise > 0:
            # Denoising the whole signal avoids STFT seams at chunk borders.
            audio = self.denoiser()(audio, denoise)
            if lengths is not None:
                audio = audio * (torch.arange(audio.shape[1], device=audio.device)[None]
                                 < (torch.as_tensor(lengths, device=audio.device)[:, None] * self.hop_length))
        return audio

    def resynthesize(self, audio: np.ndarray | torch.Tensor, sigma: float = SIGMA.default, seed: int | None = None,
                     denoise: float = 0.0, progress: bool = False) -> np.ndarray:
        """Copy-synthesis of mono audio `(L,)`: audio -> mel -> audio, trimmed to `L` samples."""
        audio = as_audio_tensor(audio)
        mel = self.mel_spectrogram(audio)
        z = self.sample_latent(mel.shape[2], mel.shape[0], seed=seed)
        out = self.infer(mel, sigma=sigma, z=z, denoise=denoise, progress=progress)
        return out[0, : audio.shape[1]].cpu().numpy()
