"""Pitch conditioning: a small mel -> (log F0, voicing) network, and the harmonic phase
features at audio rate that the couplings of the source-filter family see.

F0 is computed from the mel alone, so conditioning on it keeps log p(x | mel) exact. The
network is fitted to pYIN labels before the flow trains (training/pitch_fit.py), then frozen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from vocoder.mel import hold_last_frame

# The speaking-pitch range searched by pYIN, for labels and for evaluation alike.
F0_MIN_HZ = 65.0
F0_MAX_HZ = 400.0
# pYIN's analysis window, for labels and for evaluation alike.
F0_FRAME_SECONDS = 0.064
# The network predicts log F0 around this centre.
F0_CENTRE_HZ = 160.0
# `align_phase` demodulates over this many hops around each frame: about 4 periods of the
# lowest F0 searched.
ALIGN_WINDOW_HOPS = 4


@dataclass
class PitchTrack:
    """Per-frame pitch `(B, T)`: F0 in Hz, voicing probability, and the phase (radians, float64)
    reached at each frame centre, counted from frame 0 of the whole signal."""

    f0: torch.Tensor
    voicing: torch.Tensor
    phase: torch.Tensor

    def frames(self, start: int, end: int) -> "PitchTrack":
        return PitchTrack(self.f0[:, start:end], self.voicing[:, start:end], self.phase[:, start:end])

    @classmethod
    def from_f0(cls, f0: torch.Tensor, voicing: torch.Tensor, hop: int, sample_rate: int) -> "PitchTrack":
        """The track whose phase integrates the piecewise-linear `f0` (Hz, `(B, T)`) exactly,
        frame by frame, from 0 at frame 0."""
        f0 = f0.to(torch.float64)
        advance = math.pi * hop / sample_rate * (f0[:, :-1] + f0[:, 1:])
        phase = torch.cat([torch.zeros_like(f0[:, :1]), advance.cumsum(dim=1)], dim=1)
        return cls(f0, voicing, phase)


class PitchPredictor(nn.Module):
    """Mel `(B, n_mels, T)` to log F0 `(B, T)` and a voicing logit `(B, T)`.

    Its parameters never train with the flow (they are created frozen); `fitted` records
    whether `training/pitch_fit.py` has fitted them.
    """

    def __init__(self, n_mels: int, channels: int = 128, kernel_size: int = 5) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.hidden = nn.ModuleList([
            nn.Conv1d(n_mels, channels, kernel_size, padding=padding, padding_mode="replicate"),
            nn.Conv1d(channels, channels, kernel_size, padding=padding, padding_mode="replicate")])
        self.out = nn.Conv1d(channels, 2, 1)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.requires_grad_(False)

    def forward(self, mel: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each layer's output past `frame_lengths` repeats the last valid frame, as the next
        layer's edge padding would for a lone item."""
        hidden = hold_last_frame(mel, frame_lengths)
        for conv in self.hidden:
            hidden = hold_last_frame(torch.tanh(conv(hidden)), frame_lengths)
        out = self.out(hidden)
        return math.log(F0_CENTRE_HZ) + out[:, 0], out[:, 1]

    def track(self, mel: torch.Tensor, hop: int, sample_rate: int,
              frame_lengths: torch.Tensor | None = None) -> PitchTrack:
        """The pitch track of a whole signal's mel (in a padded batch, the mel and the track past
        `frame_lengths` repeat the last valid frame)."""
        with torch.no_grad():
            log_f0, voicing_logit = self(mel, frame_lengths)
            f0 = log_f0.exp().clamp(F0_MIN_HZ, F0_MAX_HZ)
        return PitchTrack.from_f0(f0, torch.sigmoid(voicing_logit), hop, sample_rate)


def _wrapped(angle: torch.Tensor) -> torch.Tensor:
    """`angle` in [-pi, pi)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


def sample_phase(track: PitchTrack, hop: int, sample_rate: int, start: int,
                 length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The phase (float64) and voicing of samples `start..start+length` of the track's signal,
    `(B, length)` each. Between frame centres the phase follows the F0 integral, plus the linear
    ramp (shortest way round) that lands it on the next frame's phase: zero for a track built by
    `PitchTrack.from_f0`, a small correction for one moved by `align_phase`."""
    frames = track.f0.shape[1]
    samples = torch.arange(start, start + length, device=track.f0.device)
    left = torch.div(samples, hop, rounding_mode="floor").clamp(max=frames - 1)
    right = (left + 1).clamp(max=frames - 1)
    offset = (samples - left * hop).to(torch.float64)
    inside = right > left
    f0_left, f0_right = track.f0[:, left], track.f0[:, right]
    slope = torch.where(inside, (f0_right - f0_left) / hop, torch.zeros_like(f0_left))
    step = 2 * math.pi / sample_rate
    full_advance = step * hop * 0.5 * (f0_left + f0_right)
    correction = torch.where(inside, _wrapped(track.phase[:, right] - track.phase[:, left] - full_advance),
                             torch.zeros_like(f0_left))
    fraction = offset / hop
    phase = (track.phase[:, left] + step * (f0_left * offset + 0.5 * slope * offset * offset)
             + correction * fraction.clamp(max=1.0))
    weight = fraction.clamp(max=1.0).to(track.voicing.dtype)
    voicing = track.voicing[:, left] * (1 - weight) + track.voicing[:, right] * weight
    return phase, voicing


def harmonic_features(track: PitchTrack, harmonics: int, hop: int, sample_rate: int, start: int,
                      length: int) -> torch.Tensor:
    """Voicing-weighted sin and cos of the first `harmonics` multiples of the F0 phase, at
    samples `start..start+length` of the track's signal: `(B, 2 * harmonics, length)`."""
    phase, voicing = sample_phase(track, hop, sample_rate, start, length)
    # The phase needs float64 to stay exact over long signals; once wrapped, float32 does.
    angle = torch.remainder(phase, 2 * math.pi).to(voicing.dtype)
    sine, cosine = angle.sin(), angle.cos()
    sines, cosines = [sine], [cosine]
    for _ in range(harmonics - 1):  # the angle-addition formulas give the higher harmonics
        sines.append(sines[-1] * cosine + cosines[-1] * sine)
        cosines.append(cosines[-1] * cosine - sines[-2] * sine)
    return torch.stack(sines + cosines, dim=1) * voicing.unsqueeze(1)


def align_phase(track: PitchTrack, signal: torch.Tensor, hop: int, sample_rate: int) -> PitchTrack:
    """`track` with each frame's phase moved so that the fundamental of `signal` `(B, L)` (the
    recording's own excitation) has phase 0 there: its first-harmonic demodulation over a Hann
    window of ALIGN_WINDOW_HOPS hops around the frame centre.

    Training conditions on this phase, so the couplings see where the recording's glottal
    pulses fall; a track from the mel alone only knows their rate."""
    frames = track.f0.shape[1]
    length = (frames - 1) * hop + 1
    signal = F.pad(signal.to(torch.float64), (0, max(0, length - signal.shape[1])))[:, :length]
    phase, _ = sample_phase(track, hop, sample_rate, 0, length)
    carrier = torch.stack([signal * phase.cos(), -signal * phase.sin()], dim=1).reshape(-1, 1, length)
    width = ALIGN_WINDOW_HOPS * hop + 1
    window = torch.hann_window(width + 2, periodic=False, dtype=torch.float64, device=signal.device)[1:-1]
    sums = F.conv1d(F.pad(carrier, (width // 2, width // 2)), window.view(1, 1, -1), stride=hop)
    real, imaginary = sums.view(signal.shape[0], 2, frames).unbind(dim=1)
    return PitchTrack(track.f0, track.voicing, track.phase + torch.atan2(imaginary, real))
