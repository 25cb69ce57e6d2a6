"""Mel-domain transforms behind the latent edits: the frame-index map of a speed change and a
pitch shift of a log-mel that moves the harmonics but keeps the spectral envelope.
Plain numpy on one mel `(n_mels, T)`; no model is involved."""
from __future__ import annotations

import librosa
import numpy as np
import scipy.fft

from vocoder.errors import VocoderError
from vocoder.mel import MelConfig
from vocoder.options import PITCH, SPEED

ENVELOPE_DETAIL_HZ = 500.0
"""Spectral ripple with a period above this is envelope (formants); below it, fine
structure (the harmonics of any speaking F0 up to about 400 Hz)."""
ENVELOPE_ITERATIONS = 30
DIP_FILL_HZ = 500.0
"""Below this the envelope's dip under the first harmonic is filled (see `spectral_envelope`)."""


class EditError(VocoderError):
    """An edit outside its supported range, or latents that cannot be combined."""


def check_speed(rate: float) -> float:
    low, high = SPEED.low, SPEED.high
    if not low <= rate <= high:
        raise EditError(f"speed rate must be within {low:g}-{high:g}, got {rate:g}")
    return float(rate)


def check_pitch(semitones: float) -> float:
    low, high = PITCH.low, PITCH.high
    if not low <= semitones <= high:
        raise EditError(f"pitch shift must be within {low:+g} to {high:+g} semitones, got {semitones:g}")
    return float(semitones)


def frame_map(frames: int, length: int, rate: float, hop_length: int) -> tuple[np.ndarray, int]:
    """Source frame `(T_out,)` of each output frame, and the output length in samples,
    for playing `frames` mel frames (`length` samples) `rate` times faster.

    Output frame j is centred at `j * hop`, which is time `j * hop * rate` of the input:
    it takes the nearest input frame, so frames are repeated or dropped, never blended.
    """
    check_speed(rate)
    out_frames = max(1, round(frames / rate))
    out_length = min(round(length / rate), out_frames * hop_length)
    source = np.floor(np.arange(out_frames) * rate + 0.5).astype(np.int64)
    return np.minimum(source, frames - 1), out_length


def band_centres(config: MelConfig) -> np.ndarray:
    """Centre frequency in Hz `(n_mels,)` of each band of the front-end's Slaney filterbank."""
    fmax = config.sample_rate / 2 if config.fmax is None else config.fmax
    return librosa.mel_frequencies(config.n_mels + 2, fmin=config.fmin, fmax=fmax, htk=False)[1:-1]


def _interpolation_matrix(points: np.ndarray, knots: np.ndarray, zero_beyond: bool = False) -> np.ndarray:
    """`(len(points), len(knots))` weights of linear interpolation, so one product interpolates
    every frame; like `np.interp` it holds the edge values, unless `zero_beyond` gives 0 past
    the last knot."""
    index = np.clip(np.searchsorted(knots, points, side="right") - 1, 0, len(knots) - 2)
    weight = np.clip((points - knots[index]) / (knots[index + 1] - knots[index]), 0.0, 1.0)
    matrix = np.zeros((len(points), len(knots)))
    rows = np.arange(len(points))
    matrix[rows, index] = 1.0 - weight
    matrix[rows, index + 1] = weight
    if zero_beyond:
        matrix[points > knots[-1]] = 0.0
    return matrix


def _lifter(log_spectrum: np.ndarray, order: int) -> np.ndarray:
    coefficients = scipy.fft.dct(log_spectrum, type=2, axis=0, norm="ortho")
    coefficients[order:] = 0.0
    return scipy.fft.idct(coefficients, type=2, axis=0, norm="ortho")


def spectral_envelope(log_mel: np.ndarray, config: MelConfig) -> np.ndarray:
    """Smooth upper envelope of a log-mel `(n_mels, T)`, at the band centres `(n_mels, T)`.

    Each frame is read as a log-magnitude spectrum by interpolating the bands onto the
    STFT's linear-frequency bins; a true envelope (cepstral smoothing iterated towards the
    harmonic peaks) then passes over the peaks rather than between them. Below the first
    harmonic any voice is silent whatever its formants, so that dip is filled with the
    level above it: a lowered fundamental then keeps the level of the old one.
    """
    centres = band_centres(config)
    step = config.sample_rate / config.n_fft
    grid = np.arange(0.0, centres[-1] + step, step)
    log_spectrum = _interpolation_matrix(grid, centres) @ log_mel
    order = max(1, round(2 * grid[-1] / ENVELOPE_DETAIL_HZ))
    envelope = _lifter(log_spectrum, order)
    for _ in range(ENVELOPE_ITERATIONS):
        envelope = _lifter(np.maximum(log_spectrum, envelope), order)
    low = int(np.searchsorted(grid, DIP_FILL_HZ))
    envelope[:low] = np.maximum.accumulate(envelope[:low][::-1], axis=0)[::-1]
    return _interpolation_matrix(centres, grid) @ envelope


def shift_pitch(log_mel: np.ndarray, semitones: float, config: MelConfig) -> np.ndarray:
    """Log-mel `(n_mels, T)` with its harmonics moved by `semitones` and its envelope kept.

    The fine structure (log-mel minus `spectral_envelope`) is resampled along frequency,
    harmonic k moving from k F0 to k F0 2^(s/12), and added back to the unchanged envelope.
    Every frame is edited alone, so duration and timing are untouched; 0 semitones returns
    the input. Fine structure that would come from above the top band is taken as flat.
    """
    check_pitch(semitones)
    log_mel = np.asarray(log_mel, dtype=np.float64)
    if log_mel.ndim != 2 or log_mel.shape[0] != config.n_mels:
        raise EditError(f"log-mel must have shape ({config.n_mels}, T), got {log_mel.shape}")
    envelope = spectral_envelope(log_mel, config)
    centres = band_centres(config)
    ratio = 2.0 ** (semitones / 12.0)
    moved = _interpolation_matrix(centres / ratio, centres, zero_beyond=True) @ (log_mel - envelope)
    return np.maximum(envelope + moved, config.silence_value).astype(np.float32)
