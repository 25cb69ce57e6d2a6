"""Optional denoiser, as NVIDIA WaveGlow users know it: subtract the model's own
spectral bias (its output for a silent mel) from the magnitude spectrum."""
from __future__ import annotations

import torch
from torch import nn

from vocoder.errors import AudioError


class Denoiser(nn.Module):
    """Audio `(B, L)` -> audio `(B, L)` with `strength * bias` removed from every STFT frame."""

    def __init__(self, bias_audio: torch.Tensor, n_fft: int = 1024, hop_length: int = 256) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.register_buffer("window", torch.hann_window(n_fft).to(bias_audio.device), persistent=False)
        magnitude = self._stft(bias_audio.float()).abs()
        # Frames far from the edges hold the steady-state bias; the edges see padding.
        self.register_buffer("bias", magnitude.mean(dim=(0, 2))[:, None], persistent=False)

    def _stft(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.stft(audio, self.n_fft, self.hop_length, window=self.window, center=True,
                          pad_mode="reflect", return_complex=True)

    def forward(self, audio: torch.Tensor, strength: float = 0.1) -> torch.Tensor:
        if strength <= 0:
            return audio
        if audio.shape[-1] <= self.n_fft // 2:
            # The centred STFT reflect-pads n_fft / 2 samples, which needs more audio than that.
            raise AudioError(f"denoising needs at least {self.n_fft // 2 + 1} samples of audio, "
                             f"got {audio.shape[-1]}: give a longer mel or leave denoising off")
        spectrum = self._stft(audio.float())
        magnitude = torch.clamp(spectrum.abs() - strength * self.bias, min=0.0)
        cleaned = torch.polar(magnitude, spectrum.angle())
        return torch.istft(cleaned, self.n_fft, self.hop_length, window=self.window, center=True,
                           length=audio.shape[-1]).to(audio.dtype)
