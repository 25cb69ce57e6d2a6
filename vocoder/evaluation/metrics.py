"""Objective quality metrics of vocoded speech, on mono float32 numpy audio.

Paired metrics first cut both signals to the shorter one with `trim_to_shortest`.
"""
from __future__ import annotations

import librosa
import numpy as np
import pesq as pesq_backend
import pystoi
import torch
from speechmos import dnsmos as dnsmos_backend

from vocoder.audio import resample
from vocoder.mel import MelSpectrogram
from vocoder.pitch import F0_FRAME_SECONDS, F0_MAX_HZ, F0_MIN_HZ

PESQ_RATE = 16000
DNSMOS_RATE = 16000

STFT_RESOLUTIONS: tuple[tuple[int, int, int], ...] = (
    (512, 128, 512),
    (1024, 256, 1024),
    (2048, 512, 2048),
)
"""`(n_fft, hop_length, win_length)` in samples for `multi_resolution_stft_distance`;
at 22050 Hz the windows span about 23, 46 and 93 ms."""

F0_HOP_SECONDS = 0.010
EDITED_F0_RANGE_HZ = (50.0, 800.0)
"""pYIN search range for pitch-edited speech: wide enough for speaking pitch shifted by +12 st."""

_MAGNITUDE_FLOOR = 1e-7


def _as_mono(audio: np.ndarray, name: str) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"{name} must be mono audio of shape (L,), got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError(f"{name} is empty")
    return audio


def trim_to_shortest(reference: np.ndarray, degraded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both signals `(L,)` cut to the shorter length, as contiguous float32.

    Vocoders emit `frames * hop` samples, a little more than the recording they
    were conditioned on, so the tail past the shorter signal is not compared.
    """
    reference = _as_mono(reference, "reference")
    degraded = _as_mono(degraded, "degraded")
    length = min(reference.size, degraded.size)
    return np.ascontiguousarray(reference[:length]), np.ascontiguousarray(degraded[:length])


def pesq_wb(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2) of `degraded (L,)` against `reference (L,)`; 1.04 to 4.64.

    Both signals are resampled to 16 kHz, the only rate wide-band PESQ defines.
    Raises `pesq.NoUtterancesError` when the reference holds no detectable speech.
    """
    reference, degraded = trim_to_shortest(reference, degraded)
    reference = resample(reference, sample_rate, PESQ_RATE)
    degraded = resample(degraded, sample_rate, PESQ_RATE)
    return float(pesq_backend.pesq(PESQ_RATE, reference, degraded, "wb"))


def stoi(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float:
    """Short-Time Objective Intelligibility of `degraded (L,)` against `reference (L,)`; 0 to 1.

    pystoi resamples to its own 10 kHz internally.
    """
    reference, degraded = trim_to_shortest(reference, degraded)
    return float(pystoi.stoi(reference, degraded, sample_rate, extended=False))


def dnsmos(audio: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Reference-free DNSMOS P.835 scores of `audio (L,)`, each on a 1 to 5 scale.

    Returns `{"SIG", "BAK", "OVRL", "P808"}`: speech quality, background noise,
    overall quality and the P.808 overall estimate. Audio is resampled to 16 kHz;
    clips shorter than 9.01 s are looped to that length by the model wrapper.
    """
    audio = resample(_as_mono(audio, "audio"), sample_rate, DNSMOS_RATE)
    # speechmos rejects any sample outside [-1, 1]; a vocoder may overshoot slightly.
    scores = dnsmos_backend.run(np.clip(audio, -1.0, 1.0), sr=DNSMOS_RATE)
    return {
        "SIG": float(scores["sig_mos"]),
        "BAK": float(scores["bak_mos"]),
        "OVRL": float(scores["ovrl_mos"]),
        "P808": float(scores["p808_mos"]),
    }


def multi_resolution_stft_distance(reference: np.ndarray, degraded: np.ndarray) -> float:
    """Spectral convergence plus log-magnitude L1, averaged over `STFT_RESOLUTIONS`; 0 when equal.

    Per resolution: `||S_ref - S_deg||_F / ||S_ref||_F + mean |log S_ref - log S_deg|`
    on Hann-windowed centred STFT magnitudes `(n_fft // 2 + 1, T)`, with magnitudes
    floored at 1e-7 before the log.
    """
    reference, degraded = trim_to_shortest(reference, degraded)
    distances = []
    for n_fft, hop_length, win_length in STFT_RESOLUTIONS:
        ref_mag, deg_mag = (
            np.abs(librosa.stft(signal, n_fft=n_fft, hop_length=hop_length,
                                win_length=win_length, window="hann", center=True))
            for signal in (reference, degraded)
        )
        convergence = np.linalg.norm(ref_mag - deg_mag) / max(np.linalg.norm(ref_mag), _MAGNITUDE_FLOOR)
        log_l1 = np.mean(np.abs(
            np.log(np.maximum(ref_mag, _MAGNITUDE_FLOOR)) - np.log(np.maximum(deg_mag, _MAGNITUDE_FLOOR))
        ))
        distances.append(convergence + log_l1)
    return float(np.mean(distances))


def log_mel_l1(reference: np.ndarray, degraded: np.ndarray, mel: MelSpectrogram) -> float:
    """Mean absolute difference of the project's log-mel `(n_mels, T)` of both signals.

    Both signals must already be at `mel.config.sample_rate`.
    """
    reference, degraded = trim_to_shortest(reference, degraded)
    device = mel.filterbank.device
    with torch.no_grad():
        batch = torch.from_numpy(np.stack([reference, degraded])).to(device)
        ref_mel, deg_mel = mel(batch)
    return float((ref_mel - deg_mel).abs().mean())


def f0_track(audio: np.ndarray, sample_rate: int,
             f0_range: tuple[float, float] = (F0_MIN_HZ, F0_MAX_HZ)) -> np.ndarray:
    """pYIN F0 in Hz of mono `audio (L,)`, one value per 10 ms hop over 64 ms frames; NaN where
    unvoiced. `f0_range` (Hz) bounds the search; widen it (`EDITED_F0_RANGE_HZ`) for edited pitch."""
    f0, voiced, _ = librosa.pyin(
        audio, fmin=f0_range[0], fmax=f0_range[1], sr=sample_rate,
        frame_length=round(F0_FRAME_SECONDS * sample_rate),
        hop_length=round(F0_HOP_SECONDS * sample_rate),
    )
    return np.where(voiced, f0, np.nan)


def f0_metrics(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> dict[str, float]:
    """Pitch accuracy of `degraded (L,)` against `reference (L,)` from librosa's pYIN.

    pYIN searches 65-400 Hz (low male to high female speaking pitch) with 64 ms
    frames every 10 ms. Returns:
    - `f0_rmse_cents`: RMS of `1200 * log2(f0_deg / f0_ref)` over frames voiced
      in both; NaN when no frame is voiced in both.
    - `vuv_error`: fraction of frames whose voiced/unvoiced decisions differ.
    - `voiced_frames`: how many frames the RMSE was taken over.
    """
    reference, degraded = trim_to_shortest(reference, degraded)
    ref_f0, deg_f0 = f0_track(reference, sample_rate), f0_track(degraded, sample_rate)
    ref_voiced, deg_voiced = np.isfinite(ref_f0), np.isfinite(deg_f0)
    both = ref_voiced & deg_voiced
    if both.any():
        cents = 1200.0 * np.log2(deg_f0[both] / ref_f0[both])
        rmse = float(np.sqrt(np.mean(cents**2)))
    else:
        rmse = float("nan")
    return {
        "f0_rmse_cents": rmse,
        "vuv_error": float(np.mean(ref_voiced != deg_voiced)),
        "voiced_frames": int(both.sum()),
    }


COMB_MAX_HZ = 4000.0
COMB_PEAK_HZ = 2.0
COMB_NEIGHBOURS_HZ = (10.0, 30.0)


def comb_level_db(audio: np.ndarray, sample_rate: int, period: int) -> float:
    """How far the long-term spectrum of `audio (L,)` stands out at the multiples of
    `sample_rate / period` Hz (a buzz at a flow's group rate), in dB.

    For each multiple below 4 kHz: the peak power within 2 Hz of it over the median power
    10-30 Hz away on both sides; the mean over multiples. Smooth spectra score about +3 dB
    (a maximum against a median); a comb scores higher.
    """
    audio = _as_mono(audio, "audio")
    segment = min(8192, audio.size)
    power = np.abs(librosa.stft(audio.astype(np.float64), n_fft=segment, hop_length=segment // 4,
                                center=False, window="hann")) ** 2
    spectrum = power.mean(axis=1) + 1e-20
    frequencies = np.fft.rfftfreq(segment, 1.0 / sample_rate)
    base = sample_rate / period
    levels = []
    for multiple in np.arange(base, min(COMB_MAX_HZ, sample_rate / 2 - COMB_NEIGHBOURS_HZ[1]), base):
        distance = np.abs(frequencies - multiple)
        peak = spectrum[distance <= COMB_PEAK_HZ].max()
        near = spectrum[(distance >= COMB_NEIGHBOURS_HZ[0]) & (distance <= COMB_NEIGHBOURS_HZ[1])]
        levels.append(10 * np.log10(peak / np.median(near)))
    return float(np.mean(levels))
