"""The one mel front-end: audio in [-1, 1] to natural-log magnitude mel frames.

Training, inference, serving and evaluation all call this module, so a mel made
anywhere in the project is interchangeable with one made anywhere else.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import librosa
import torch
from torch import nn

from vocoder.serialization import DictConfig


@dataclass(frozen=True)
class MelConfig(DictConfig):
    """Parameters of the log-mel front-end (Tacotron 2 / WaveGlow defaults)."""

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = 8000.0
    clamp_min: float = 1e-5

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")
        if self.hop_length <= 0 or self.n_mels <= 0 or self.sample_rate <= 0:
            raise ValueError("sample_rate, hop_length and n_mels must be positive")

    @property
    def silence_value(self) -> float:
        """The log-mel value of digital silence: log(clamp_min)."""
        return float(torch.tensor(self.clamp_min, dtype=torch.float64).log())

    @property
    def min_samples(self) -> int:
        """Shortest audio the centred STFT can frame (reflect padding needs n_fft/2 + 1)."""
        return self.n_fft // 2 + 1


    @property
    def value_range(self) -> tuple[float, float]:
        """The log-mel values a request may hold: from silence to the loudest mel of audio in
        [-1, 1] (every window sample at full scale in every bin of the widest band), each
        widened by `MEL_VALUE_MARGIN` for mels that other models predict."""
        return (self.silence_value - MEL_VALUE_MARGIN, _loudest_log_mel(self) + MEL_VALUE_MARGIN)

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for `num_samples` of audio (centred framing)."""
        return num_samples // self.hop_length + 1


# Natural-log units by which `MelConfig.value_range` exceeds what the front-end can produce.
MEL_VALUE_MARGIN = 2.0


@functools.cache
def _loudest_log_mel(config: MelConfig) -> float:
    filterbank = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                                     fmin=config.fmin, fmax=config.fmax, htk=False, norm="slaney")
    window_sum = float(torch.hann_window(config.win_length, dtype=torch.float64).sum())
    return math.log(window_sum * float(filterbank.sum(axis=1).max()))


class MelSpectrogram(nn.Module):
    """Batched log-mel spectrogram.

    The Slaney filterbank and the Hann window are buffers, so the module follows
    `.to(device)` and `.double()`.

    Input: audio `(B, L)` or `(L,)` in [-1, 1]. Output: `(B, n_mels, L // hop + 1)`.
    """

    def __init__(self, config: MelConfig | None = None) -> None:
        super().__init__()
        self.config = config or MelConfig()
        c = self.config
        filterbank = librosa.filters.mel(
            sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin, fmax=c.fmax,
            htk=False, norm="slaney",
        )
        self.register_buffer("filterbank", torch.from_numpy(filterbank).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(c.win_length), persistent=False)

    def magnitude(self, audio: torch.Tensor) -> torch.Tensor:
        """Linear STFT magnitude `(B, n_fft // 2 + 1, T)` with reflect-padded centred frames."""
        c = self.config
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        if audio.shape[-1] < c.min_samples:
            raise ValueError(
                f"audio too short: {audio.shape[-1]} samples, need at least {c.min_samples}"
            )
        spectrum = torch.stft(
            audio.to(self.window.dtype), n_fft=c.n_fft, hop_length=c.hop_length,
            win_length=c.win_length, window=self.window, center=True, pad_mode="reflect",
            return_complex=True,
        )
        return spectrum.abs()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(self.filterbank, self.magnitude(audio))
        return torch.log(torch.clamp(mel, min=self.config.clamp_min))


def hold_last_frame(frames: torch.Tensor, frame_lengths: torch.Tensor | None, dim: int = 2) -> torch.Tensor:
    """A padded batch (frames along `dim`) whose frames past each item's length repeat its
    last valid frame: what edge padding makes of a lone item, so batched equals unbatched."""
    if frame_lengths is None:
        return frames
    shape = [1] * frames.dim()
    shape[0], shape[dim] = -1, 1
    last = (frame_lengths.to(frames.device).clamp(min=1) - 1).view(shape)
    shape[0], shape[dim] = 1, -1
    positions = torch.arange(frames.shape[dim], device=frames.device).view(shape)
    return torch.gather(frames, dim, torch.minimum(positions, last).expand_as(frames))
