"""Pitch conditioning: a small mel -> (log F0, voicing) network, and the harmonic phase
features at audio rate that the couplings of the source-filter family see.

F0 is computed from the mel alone, so conditioning on it keeps log p(x | mel) exact. The
network is fitted to pYIN labels before the flow trains (training/pitch_fit.py), then frozen.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import librosa
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vocoder.config import PitchPredictorKind
from vocoder.mel import MelConfig, hold_last_frame

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

    A subclass maps the mel to `scores`, and says how to `decode` them and how to fit them to
    pYIN labels (`fit_loss`). Its parameters never train with the flow (they are created
    frozen); `fitted` records whether `training/pitch_fit.py` has fitted them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def scores(self, mel: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def fit_loss(self, scores: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
        """The loss against pYIN F0 (Hz) and voicing (0 or 1), `(B, T)` each."""
        raise NotImplementedError

    def forward(self, mel: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(self.scores(mel, frame_lengths))

    def track(self, mel: torch.Tensor, hop: int, sample_rate: int,
              frame_lengths: torch.Tensor | None = None) -> PitchTrack:
        """The pitch track of a whole signal's mel (in a padded batch, the mel and the track past
        `frame_lengths` repeat the last valid frame)."""
        with torch.no_grad():
            log_f0, voicing_logit = self(mel, frame_lengths)
            f0 = log_f0.exp().clamp(F0_MIN_HZ, F0_MAX_HZ)
        return PitchTrack.from_f0(f0, torch.sigmoid(voicing_logit), hop, sample_rate)


def _voicing_loss(voicing_logit: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(voicing_logit, voiced)


def voiced_log_f0_error(log_f0: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
    """The mean absolute error of `log_f0` against the label `f0` (Hz) over `voiced` frames."""
    return ((log_f0 - f0.clamp(min=1).log()).abs() * voiced).sum() / voiced.sum().clamp(min=1)


class PitchRegressor(PitchPredictor):
    """Two tanh convolutions (9 frames seen) regressing log F0 by L1: the first source-filter
    checkpoints' predictor, kept so that they load. It averages between octaves where the mel
    is ambiguous, and misses unseen voices by hundreds of cents (docs/SOURCE_FILTER_STUDY.md)."""

    def __init__(self, n_mels: int, channels: int = 128, kernel_size: int = 5) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.hidden = nn.ModuleList([
            nn.Conv1d(n_mels, channels, kernel_size, padding=padding, padding_mode="replicate"),
            nn.Conv1d(channels, channels, kernel_size, padding=padding, padding_mode="replicate")])
        self.out = nn.Conv1d(channels, 2, 1)
        self.requires_grad_(False)

    def scores(self, mel: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Each layer's output past `frame_lengths` repeats the last valid frame, as the next
        layer's edge padding would for a lone item."""
        hidden = hold_last_frame(mel, frame_lengths)
        for conv in self.hidden:
            hidden = hold_last_frame(torch.tanh(conv(hidden)), frame_lengths)
        return self.out(hidden)

    def decode(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return math.log(F0_CENTRE_HZ) + scores[:, 0], scores[:, 1]

    def fit_loss(self, scores: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
        log_f0, voicing_logit = self.decode(scores)
        return voiced_log_f0_error(log_f0, f0, voiced) + _voicing_loss(voicing_logit, voiced)


# The classifier's F0 bins, F0_MIN_HZ up to F0_MAX_HZ, and the spread of its training target.
BIN_CENTS = 20.0
TARGET_SPREAD_CENTS = 25.0
# Decoding averages the bins this close to the most likely one, so an octave's competing peak
# never pulls the estimate between octaves.
DECODE_HALF_WIDTH_BINS = 4
# Harmonics below this frequency are resolved by the 80-band mel (its bands are ~38 Hz apart
# up to 1 kHz), so only these bands enter the harmonic salience.
SALIENCE_MAX_HZ = 1500.0
SALIENCE_PEAK_WIDTH_HZ = 25.0


def harmonic_templates(mel_config: MelConfig, bin_hz: np.ndarray) -> torch.Tensor:
    """`(bins, bands)`: the low mel bands' response to a harmonic comb at each F0 of `bin_hz`,
    centred and of unit norm, so that a template's dot product with a frame's centred, normalised
    low bands is their correlation. (NumPy, so that it also builds under a meta-device context.)"""
    c = mel_config
    filterbank = librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin,
                                     fmax=c.fmax).astype(np.float64)
    centres = librosa.mel_frequencies(c.n_mels + 2, fmin=c.fmin, fmax=c.fmax or c.sample_rate / 2)[1:-1]
    bands = max(2, int((centres < SALIENCE_MAX_HZ).sum()))  # a correlation needs 2
    frequencies = np.fft.rfftfreq(c.n_fft, 1 / c.sample_rate)
    comb = np.zeros((bin_hz.shape[0], frequencies.shape[0]))
    for harmonic in range(1, math.ceil(SALIENCE_MAX_HZ / F0_MIN_HZ) + 1):
        partial = bin_hz[:, None] * harmonic
        peak = np.exp(-0.5 * ((frequencies[None] - partial) / SALIENCE_PEAK_WIDTH_HZ) ** 2)
        comb += (partial < SALIENCE_MAX_HZ) * peak / math.sqrt(harmonic)
    templates = (comb ** 2 @ filterbank.T)[:, :bands]
    templates = templates / templates.sum(axis=1, keepdims=True)
    templates = templates - templates.mean(axis=1, keepdims=True)
    templates = templates / np.maximum(np.linalg.norm(templates, axis=1, keepdims=True), 1e-12)
    return torch.from_numpy(templates.astype(np.float32))


class _DilatedBlock(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.dilated = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation, padding_mode="replicate")
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.mix(F.gelu(self.dilated(hidden)))


class PitchClassifier(PitchPredictor):
    """A distribution over F0 bins (20 cents apart) and a voicing logit per frame, from the mel
    and its harmonic salience (the correlation of the low bands with a harmonic comb at each
    bin's F0), through dilated residual convolutions that see 63 frames (0.73 s).

    Classifying rather than regressing keeps octave errors rare: the decoded F0 is the mean
    over the bins around the most likely one only."""

    def __init__(self, mel_config: MelConfig, channels: int = 128, blocks: int = 8) -> None:
        super().__init__()
        bin_cents = np.arange(math.ceil(1200 * math.log2(F0_MAX_HZ / F0_MIN_HZ) / BIN_CENTS) + 1) * BIN_CENTS
        bins = bin_cents.shape[0]
        self.register_buffer("bin_cents", torch.from_numpy(bin_cents.astype(np.float32)))
        self.register_buffer("templates", harmonic_templates(mel_config, F0_MIN_HZ * 2 ** (bin_cents / 1200)))
        self.input = nn.Conv1d(mel_config.n_mels + bins, channels, 3, padding=1, padding_mode="replicate")
        self.blocks = nn.ModuleList([_DilatedBlock(channels, 2 ** (index % 4)) for index in range(blocks)])
        self.out = nn.Conv1d(channels, bins + 1, 1)
        self.requires_grad_(False)

    def salience(self, mel: torch.Tensor) -> torch.Tensor:
        """`(B, bins, T)` in [-1, 1]."""
        low = mel[:, : self.templates.shape[1]]
        low = low - low.mean(dim=1, keepdim=True)
        low = low / (low.norm(dim=1, keepdim=True) + 1e-3)
        return torch.einsum("kc,bct->bkt", self.templates, low)

    def scores(self, mel: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Each layer's output past `frame_lengths` repeats the last valid frame, as the next
        layer's edge padding would for a lone item."""
        mel = hold_last_frame(mel, frame_lengths)
        # The salience is a correlation; x4 brings it to the mel's spread.
        hidden = hold_last_frame(self.input(torch.cat([mel, 4 * self.salience(mel)], dim=1)), frame_lengths)
        for block in self.blocks:
            hidden = hold_last_frame(block(hidden), frame_lengths)
        return self.out(F.gelu(hidden))

    def decode(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = scores[:, :-1].softmax(dim=1)
        bins = probabilities.shape[1]
        offsets = torch.arange(-DECODE_HALF_WIDTH_BINS, DECODE_HALF_WIDTH_BINS + 1, device=scores.device)
        near = (probabilities.argmax(dim=1, keepdim=True) + offsets[None, :, None]).clamp(0, bins - 1)
        weights = probabilities.gather(1, near)
        cents = (self.bin_cents[near] * weights).sum(dim=1) / weights.sum(dim=1)
        return math.log(F0_MIN_HZ) + cents * (math.log(2) / 1200), scores[:, -1]

    def fit_loss(self, scores: torch.Tensor, f0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against a Gaussian bump over the bins at the label's F0, on voiced frames."""
        cents = 1200 * torch.log2(f0.clamp(min=1) / F0_MIN_HZ)
        target = torch.exp(-0.5 * ((self.bin_cents[None, :, None] - cents[:, None]) / TARGET_SPREAD_CENTS) ** 2)
        target = target / target.sum(dim=1, keepdim=True).clamp(min=1e-8)
        cross_entropy = -(target * scores[:, :-1].log_softmax(dim=1)).sum(dim=1)
        voiced_frames = voiced.sum().clamp(min=1)
        return (cross_entropy * voiced).sum() / voiced_frames + _voicing_loss(scores[:, -1], voiced)


def build_pitch_predictor(kind: PitchPredictorKind, mel_config: MelConfig) -> PitchPredictor:
    if kind == "classifier":
        return PitchClassifier(mel_config)
    return PitchRegressor(mel_config.n_mels)


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


def harmonic_angle(track: PitchTrack, hop: int, sample_rate: int, start: int, length: int,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The track's phase wrapped to [0, 2 pi) and its voicing at samples `start..start+length`,
    `(B, length)` each, in `dtype`."""
    phase, voicing = sample_phase(track, hop, sample_rate, start, length)
    # The phase needs float64 to stay exact over long signals; once wrapped, float32 does.
    return torch.remainder(phase, 2 * math.pi).to(dtype), voicing.to(dtype)


def harmonic_pairs(angle: torch.Tensor, harmonics: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """sin(k angle) and cos(k angle) for k = 1..`harmonics`, by the angle-addition formulas."""
    sine, cosine = angle.sin(), angle.cos()
    higher_sine, higher_cosine = sine, cosine
    for k in range(1, harmonics + 1):
        yield higher_sine, higher_cosine
        if k < harmonics:
            higher_sine, higher_cosine = (higher_sine * cosine + higher_cosine * sine,
                                          higher_cosine * cosine - higher_sine * sine)


def harmonic_features(track: PitchTrack, harmonics: int, hop: int, sample_rate: int, start: int,
                      length: int) -> torch.Tensor:
    """Voicing-weighted sin and cos of the first `harmonics` multiples of the F0 phase, at
    samples `start..start+length` of the track's signal: `(B, 2 * harmonics, length)`."""
    angle, voicing = harmonic_angle(track, hop, sample_rate, start, length, track.voicing.dtype)
    sines, cosines = zip(*harmonic_pairs(angle, harmonics))
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
