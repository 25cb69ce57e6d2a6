"""The source-filter front of the flow: a mel-derived all-pole (LPC) filter and a gain.

Density direction: audio x -> excitation u = A(x) / g. A is a time-varying lattice analysis
filter, e[n] = x[n] + (a combination of earlier samples), so its Jacobian is unit lower
triangular (log-det 0); g is a per-sample gain (log-det -sum log g). Sampling runs the
inverse: u -> g u -> the lattice synthesis recursion, at C speed through numba.
Both depend on the mel only, so log p(x | mel) stays exact.

The numba kernels compile on first use (about half a second per process) and are not cached
on disk: the service may run from a read-only file system.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import librosa
import numba
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vocoder.config import GAIN_KERNEL_SIZE
from vocoder.errors import VocoderError
from vocoder.mel import MelConfig, hold_last_frame
from vocoder.pitch import PitchTrack, harmonic_angle, harmonic_pairs

# The smooth spectrum gets a floor this far below each frame's peak, so LPC never digs
# notches where the mel says "no energy" (a sparse inversion makes the residual explode).
FLOOR_DB = 50.0
# Gaussian lag window (Hz): widens every formant, which keeps the filter well conditioned.
LAG_WINDOW_HZ = 60.0
# Bandwidth expansion: poles pulled in to radius GAMMA^k (about 40 Hz wider at 22.05 kHz).
BANDWIDTH_GAMMA = 0.994
WHITE_NOISE_CORRECTION = 1e-4


@dataclass
class FrameFilter:
    """Per-frame filter: reflection coefficients `(B, T, p)` (float64) and log gain `(B, T)`;
    with a voiced mean, its sin and cos amplitudes `(B, T, 2 * harmonics)`."""

    reflection: torch.Tensor
    log_gain: torch.Tensor
    voiced: torch.Tensor | None = None


@numba.njit(nogil=True)
def levinson_durbin(autocorrelation: np.ndarray, order: int) -> tuple[np.ndarray, float]:
    """Autocorrelation `(>= order + 1,)` to the predictor `a` `(order,)` of
    A(z) = 1 + sum a_k z^-k and the prediction-error power."""
    a = np.zeros(order)
    previous = np.zeros(order)
    error = autocorrelation[0]
    for m in range(order):
        acc = autocorrelation[m + 1]
        for j in range(m):
            acc += a[j] * autocorrelation[m - j]
        k = -acc / error
        previous[:m] = a[:m]
        for j in range(m):
            a[j] = previous[j] + k * previous[m - 1 - j]
        a[m] = k
        error *= 1 - k * k
    return a, error


@numba.njit(nogil=True)
def predictor_to_reflection(predictor: np.ndarray) -> np.ndarray:
    """The step-down recursion: predictor `(p,)` to reflection coefficients `(p,)`."""
    a = predictor.copy()
    order = a.shape[0]
    reflection = np.empty(order)
    for m in range(order, 0, -1):
        k = a[m - 1]
        reflection[m - 1] = k
        head = a[:m - 1].copy()
        for j in range(m - 1):
            a[j] = (head[j] - k * head[m - 2 - j]) / (1 - k * k)
    return reflection


@numba.njit(nogil=True)
def _frame_lpc(autocorrelation: np.ndarray, order: int, expansion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame `(N, order + 1)`: bandwidth-expanded reflection coefficients `(N, order)` and
    the prediction-error power `(N,)`."""
    frames = autocorrelation.shape[0]
    reflection = np.empty((frames, order))
    error = np.empty(frames)
    for n in range(frames):
        predictor, error[n] = levinson_durbin(autocorrelation[n], order)
        reflection[n] = predictor_to_reflection(predictor * expansion)
    return reflection, error


def interpolate_frames(values: torch.Tensor, hop: int, start: int, length: int) -> torch.Tensor:
    """Per-frame `values` `(B, T, ...)` to per-sample `(B, length, ...)` for samples `start..`.

    Frame t is centred on sample t * hop (centred STFT framing); between centres the values
    change linearly, past the last centre they hold. So chunks of one signal see the same
    per-sample values as the whole signal.
    """
    frames = values.shape[1]
    position = torch.arange(start, start + length, device=values.device, dtype=torch.float64) / hop
    left = position.floor().long().clamp(max=frames - 1)
    right = (left + 1).clamp(max=frames - 1)
    weight = (position - left).clamp(max=1.0).to(values.dtype)
    weight = weight.view(1, length, *[1] * (values.dim() - 2))
    return values[:, left] * (1 - weight) + values[:, right] * weight


def frame_interpolator(values: torch.Tensor, hop: int, start: int, length: int,
                       ) -> Callable[[int], torch.Tensor]:
    """The function of k giving `interpolate_frames(values, hop, start, length)[:, :, k]`,
    `(B, length)`, for per-frame `values` `(B, T, K)`. Each hop of samples lies between the same
    two frames, so the interpolation broadcasts over it and the frames are gathered once:
    5x faster, forward and backward, than per-sample gathers of every channel."""
    batch, frames, _ = values.shape
    offset, first = start % hop, start // hop
    blocks = -(-(offset + length) // hop)
    left = torch.arange(first, first + blocks, device=values.device).clamp(max=frames - 1)
    right = (left + 1).clamp(max=frames - 1)
    weight = torch.arange(hop, device=values.device, dtype=values.dtype) / hop
    at_left, at_right = values[:, left], values[:, right]

    def channel(index: int) -> torch.Tensor:
        mixed = at_left[:, :, index, None] * (1 - weight) + at_right[:, :, index, None] * weight
        return mixed.reshape(batch, blocks * hop)[:, offset:offset + length]

    return channel


def lattice_analysis(audio: torch.Tensor, reflection: torch.Tensor) -> torch.Tensor:
    """Whitening lattice filter: audio `(B, L)` and per-sample reflection `(B, L, p)` to the
    prediction error `(B, L)`. Each stage is one vectorised pass over time."""
    forward = backward = audio
    for m in range(reflection.shape[2]):
        k = reflection[:, :, m]
        delayed = F.pad(backward[:, :-1], (1, 0))
        forward, backward = forward + k * delayed, delayed + k * forward
    return forward


@numba.njit(nogil=True, inline="always")
def _reflection_at(frames: np.ndarray, b: int, n: int, hop: int, out: np.ndarray) -> None:
    """`interpolate_frames` for one sample: `out` gets the reflection of sample `n`."""
    count = frames.shape[1]
    position = n / hop
    left = min(int(np.floor(position)), count - 1)
    right = min(left + 1, count - 1)
    weight = min(position - left, 1.0)
    for m in range(frames.shape[2]):
        out[m] = frames[b, left, m] * (1 - weight) + frames[b, right, m] * weight


@numba.njit(nogil=True)
def _lattice_synthesis(excitation: np.ndarray, frames: np.ndarray, hop: int, start: int,
                       state: np.ndarray) -> np.ndarray:
    """The inverse of `lattice_analysis`, with per-frame reflections `(B, T, p)` interpolated
    per sample as `interpolate_frames` does. `state` `(B, p)` holds each stage's last
    backward value: it is read as the history before sample 0 and left as the history after."""
    batch, length = excitation.shape
    order = frames.shape[2]
    audio = np.empty_like(excitation)
    k = np.empty(order)
    for b in range(batch):
        history = state[b]
        for n in range(length):
            _reflection_at(frames, b, start + n, hop, k)
            value = excitation[b, n]
            for m in range(order, 0, -1):
                value -= k[m - 1] * history[m - 1]
                if m < order:
                    history[m] = k[m - 1] * value + history[m - 1]
            history[0] = value
            audio[b, n] = value
    return audio


@numba.njit(nogil=True)
def _lattice_synthesis_adjoint(grad_audio: np.ndarray, frames: np.ndarray, hop: int, start: int) -> np.ndarray:
    """The transpose of `_lattice_synthesis` from zero history, run backwards in time."""
    batch, length = grad_audio.shape
    order = frames.shape[2]
    grad_excitation = np.empty_like(grad_audio)
    k = np.empty(order)
    for b in range(batch):
        later = np.zeros(order)
        earlier = np.zeros(order)
        for n in range(length - 1, -1, -1):
            _reflection_at(frames, b, start + n, hop, k)
            grad = grad_audio[b, n] + later[0]
            for m in range(1, order + 1):
                if m < order:
                    grad += k[m - 1] * later[m]
                    earlier[m - 1] = later[m] - k[m - 1] * grad
                else:
                    earlier[m - 1] = -k[m - 1] * grad
            grad_excitation[b, n] = grad
            later, earlier = earlier, later
    return grad_excitation


class _LatticeSynthesis(torch.autograd.Function):
    """The synthesis recursion in float64 on the CPU, differentiable in the excitation."""

    @staticmethod
    def forward(ctx, excitation: torch.Tensor, frames: torch.Tensor, hop: int, start: int,
                state: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(frames)
        ctx.layout = (hop, start, excitation.dtype, excitation.device)
        audio = _lattice_synthesis(_numpy64(excitation), _numpy64(frames), hop, start, state.numpy())
        return torch.from_numpy(audio).to(excitation.device, excitation.dtype)

    @staticmethod
    def backward(ctx, grad_audio: torch.Tensor):
        (frames,) = ctx.saved_tensors
        hop, start, dtype, device = ctx.layout
        grad = _lattice_synthesis_adjoint(_numpy64(grad_audio), _numpy64(frames), hop, start)
        return torch.from_numpy(grad).to(device, dtype), None, None, None, None


def _numpy64(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float64).numpy())


def lattice_synthesis(excitation: torch.Tensor, frames: torch.Tensor, hop: int, start: int = 0,
                      state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All-pole synthesis: excitation `(B, L)` for samples `start..` and per-frame reflections
    `(B, T, p)` to audio `(B, L)`, the exact inverse of `lattice_analysis`.

    `state` `(B, p)` (float64, CPU) carries the filter history between chunks; the new one is
    returned. Gradients reach the excitation (they assume a zero starting state).
    """
    if state is None:
        state = torch.zeros(excitation.shape[0], frames.shape[2], dtype=torch.float64)
    state = state.clone()
    audio = _LatticeSynthesis.apply(excitation, frames, hop, start, state)
    return audio, state


def _mel_network(n_mels: int, channels: int, outputs: int) -> nn.Sequential:
    """A small per-frame network on the mel whose last layer starts at zero."""
    network = nn.Sequential(
        nn.Conv1d(n_mels, channels, GAIN_KERNEL_SIZE, padding=GAIN_KERNEL_SIZE // 2, padding_mode="replicate"),
        nn.Tanh(), nn.Conv1d(channels, outputs, 1))
    nn.init.zeros_(network[2].weight)
    nn.init.zeros_(network[2].bias)
    return network


class SourceFilter(nn.Module):
    """Mel `(B, n_mels, T)` to a smooth all-pole filter and gain; whitens and colours audio.

    The gain is the LPC prediction-error gain times exp(h(mel)), where h is a small learned
    network whose last layer starts at zero. With `voiced_harmonics`, the whitened excitation
    also loses its voiced mean: sum over harmonics k of a_k cos(k phi) + b_k sin(k phi),
    weighted by voicing, with phi the pitch track's phase and a, b from another such network,
    leaving out a harmonic in the frames where it is at or above Nyquist (a shift given the mel:
    log-det 0). Sampling adds it back, so the voiced source is a
    harmonic pulse train locked to the phase, with no squeeze grid in it.
    """

    def __init__(self, order: int, gain_channels: int, mel_config: MelConfig, voiced_harmonics: int = 0) -> None:
        super().__init__()
        self.order = order
        self.hop = mel_config.hop_length
        self.sample_rate = mel_config.sample_rate
        self.voiced_harmonics = voiced_harmonics
        self.n_fft = mel_config.n_fft
        c = mel_config
        filterbank = librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin,
                                         fmax=c.fmax, htk=False, norm="slaney").astype(np.float64)
        # A band's mel value is its filter's weighted sum of |X|; dividing by the filter's sum
        # gives the band's mean level, and each bin takes the average of its bands' levels.
        coverage = filterbank.sum(axis=0)
        spread = np.divide(filterbank, coverage, out=np.zeros_like(filterbank), where=coverage > 0)
        # Above the top band the mel is blind; fricatives still have energy there, so those
        # bins hold the top band's level instead of falling to the floor.
        above = np.flatnonzero(coverage == 0)
        spread[-1, above[above > np.argmax(filterbank[-1])]] = 1.0
        self.register_buffer("band_scale", torch.from_numpy(1 / filterbank.sum(axis=1)), persistent=False)
        self.register_buffer("spread", torch.from_numpy(spread), persistent=False)
        # |X|^2 of unit-variance noise under the Hann window averages sum(w^2): dividing by it
        # makes the autocorrelation's lag 0 the signal's variance.
        self.window_power = float((torch.hann_window(c.win_length, dtype=torch.float64, device="cpu") ** 2).sum())
        lags = torch.arange(order + 1, dtype=torch.float64)
        lag_window = torch.exp(-0.5 * (2 * math.pi * LAG_WINDOW_HZ * lags / c.sample_rate) ** 2)
        lag_window[0] += WHITE_NOISE_CORRECTION
        self.register_buffer("lag_window", lag_window, persistent=False)
        self.register_buffer("expansion", BANDWIDTH_GAMMA ** torch.arange(1, order + 1, dtype=torch.float64),
                             persistent=False)
        self.gain_net = _mel_network(c.n_mels, gain_channels, 1)
        self.voiced_net = _mel_network(c.n_mels, gain_channels, 2 * voiced_harmonics) if voiced_harmonics else None

    def frame_filter(self, mel: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> FrameFilter:
        """Mel `(B, n_mels, T)` (natural log magnitude) to the per-frame filter and gain.

        In a padded batch, the mel and the filter past `frame_lengths` repeat each item's last
        valid frame, as the edge padding of a lone item does, so batched equals unbatched.
        """
        mel = hold_last_frame(mel, frame_lengths)
        with torch.no_grad():
            magnitude = torch.exp(mel.detach().to(torch.float64))
            levels = magnitude * self.band_scale.view(1, -1, 1)
            spectrum = torch.einsum("mf,bmt->btf", self.spread, levels)
            power = spectrum * spectrum / self.window_power
            floor = power.amax(dim=-1, keepdim=True) * 10 ** (-FLOOR_DB / 10)
            power = torch.maximum(power, floor)
            autocorrelation = torch.fft.irfft(power, n=self.n_fft)[..., : self.order + 1] * self.lag_window
            batch, frames = autocorrelation.shape[:2]
            reflection, error = _frame_lpc(_numpy64(autocorrelation.reshape(batch * frames, -1)), self.order,
                                           _numpy64(self.expansion))
            reflection = torch.from_numpy(reflection).view(batch, frames, self.order).to(mel.device)
            lpc_log_gain = 0.5 * torch.log(torch.from_numpy(error).view(batch, frames).to(mel.device))
        correction = self.gain_net(mel).squeeze(1)
        log_gain = hold_last_frame(lpc_log_gain.to(correction.dtype) + correction, frame_lengths, dim=1)
        voiced = None if self.voiced_net is None else hold_last_frame(self.voiced_net(mel), frame_lengths)
        return FrameFilter(reflection, log_gain, None if voiced is None else voiced.transpose(1, 2))

    def voiced_mean(self, frame_filter: FrameFilter, pitch: PitchTrack, start: int, length: int) -> torch.Tensor:
        """The voiced mean `(B, length)` at samples `start..` of the signal whose `frame_filter`
        (with voiced amplitudes) and `pitch` track these are."""
        assert frame_filter.voiced is not None, "a source filter without a voiced mean"
        harmonics = self.voiced_harmonics
        angle, voicing = harmonic_angle(pitch, self.hop, self.sample_rate, start, length, frame_filter.voiced.dtype)
        # A harmonic at or above Nyquist would alias: it is silenced in every frame where it is.
        multiples = torch.arange(1, harmonics + 1, device=pitch.f0.device)
        amplitudes = frame_filter.voiced * (pitch.f0[:, :, None] * multiples < self.sample_rate / 2).repeat(1, 1, 2)
        amplitude = frame_interpolator(amplitudes, self.hop, start, length)  # sines' first, then cosines'
        mean = torch.zeros_like(angle)
        for k, (sine, cosine) in enumerate(harmonic_pairs(angle, harmonics)):
            mean = mean + amplitude(k) * sine + amplitude(harmonics + k) * cosine
        return mean * voicing

    def whiten(self, audio: torch.Tensor, mel: torch.Tensor, lengths: torch.Tensor | None = None,
               pitch: PitchTrack | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio `(B, L)` to the excitation `(B, L)` and the log-det `(B,)`, over the first
        `lengths` samples of each item in a padded batch (whose own mel is taken to be its
        first ceil(lengths / hop) frames, the fewest the flow accepts); `pitch` is the mel's
        track: with it, the voiced mean (if this filter has one) is taken out too; without it
        the mean stays in, as when the excitation itself is wanted (`training.losses`)."""
        frame_lengths = None if lengths is None else -torch.div(-lengths, self.hop, rounding_mode="floor")
        frame_filter = self.frame_filter(mel, frame_lengths)
        reflection = interpolate_frames(frame_filter.reflection, self.hop, 0, audio.shape[1])
        log_gain = interpolate_frames(frame_filter.log_gain, self.hop, 0, audio.shape[1])
        residual = lattice_analysis(audio.to(torch.float64), reflection).to(audio.dtype)
        log_gain = log_gain.to(audio.dtype)
        excitation = residual * torch.exp(-log_gain)
        if frame_filter.voiced is not None and pitch is not None:
            excitation = excitation - self.voiced_mean(frame_filter, pitch, 0, audio.shape[1]).to(excitation.dtype)
        if lengths is not None:
            mask = (torch.arange(audio.shape[1], device=audio.device)[None] < lengths.to(audio.device)[:, None])
            log_gain = log_gain * mask
            excitation = excitation * mask
        return excitation, -log_gain.sum(dim=1)

    def colour(self, excitation: torch.Tensor, frame_filter: FrameFilter, start: int = 0,
               state: torch.Tensor | None = None, pitch: PitchTrack | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Excitation `(B, L)` for samples `start..` of the signal whose `frame_filter` and
        `pitch` track these are (computed once for the whole signal, so chunks share them) to
        audio, and the new filter state (see `lattice_synthesis`). The caller silences audio
        past a padded item's length."""
        if frame_filter.voiced is not None:
            if pitch is None:
                raise VocoderError("a source filter with a voiced mean needs the pitch track to colour")
            excitation = excitation + self.voiced_mean(frame_filter, pitch, start, excitation.shape[1]).to(
                excitation.dtype)
        log_gain = interpolate_frames(frame_filter.log_gain, self.hop, start, excitation.shape[1])
        scaled = excitation * torch.exp(log_gain.to(excitation.dtype))
        return lattice_synthesis(scaled, frame_filter.reflection, self.hop, start, state)
