"""Griffin-Lim baseline: audio from a project log-mel with no learned model.

Any trained vocoder should beat it; the evaluation reports it as the floor.
"""
from __future__ import annotations

import librosa
import numpy as np

from vocoder.mel import MelConfig


def griffin_lim_from_mel(
    log_mel: np.ndarray, config: MelConfig, n_iter: int = 60, length: int | None = None,
) -> np.ndarray:
    """Invert a log-mel `(n_mels, T)` from `vocoder.mel` to float32 audio `(length,)`.

    The mel is exponentiated, mapped to a linear magnitude `(n_fft // 2 + 1, T)`
    by non-negative least squares against the front-end's Slaney filterbank
    (power 1, as the front-end is magnitude), then given phase by `n_iter` rounds
    of fast Griffin-Lim (momentum 0.99, seeded so runs repeat).
    `length` defaults to `T * hop_length`, the length a vocoder emits.
    """
    log_mel = np.asarray(log_mel, dtype=np.float32)
    if log_mel.ndim != 2 or log_mel.shape[0] != config.n_mels:
        raise ValueError(f"log_mel must have shape ({config.n_mels}, T), got {log_mel.shape}")
    magnitude = librosa.feature.inverse.mel_to_stft(
        np.exp(log_mel), sr=config.sample_rate, n_fft=config.n_fft, power=1.0,
        fmin=config.fmin, fmax=config.fmax, htk=False, norm="slaney",
    )
    # No `length` here: librosa would re-frame a T * hop signal into T + 1 frames
    # mid-iteration and fail; the natural (T - 1) * hop output is padded afterwards.
    audio = librosa.griffinlim(
        magnitude, n_iter=n_iter, hop_length=config.hop_length, win_length=config.win_length,
        n_fft=config.n_fft, window="hann", center=True, pad_mode="reflect", random_state=0,
    )
    target = log_mel.shape[1] * config.hop_length if length is None else length
    return librosa.util.fix_length(audio, size=target).astype(np.float32)
