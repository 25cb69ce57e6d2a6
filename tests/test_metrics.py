"""Evaluation metrics, Griffin-Lim baseline and ASR check on a real LJSpeech recording.

Identical audio must score perfectly and added noise must score worse on every metric.
"""
from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from vocoder.audio import load_audio
from vocoder.evaluation import (
    dnsmos,
    f0_metrics,
    griffin_lim_from_mel,
    log_mel_l1,
    multi_resolution_stft_distance,
    pesq_wb,
    stoi,
    transcribe,
    trim_to_shortest,
    word_error_rate,
)
from vocoder.mel import MelConfig, MelSpectrogram

CONFIG = MelConfig()
RATE = CONFIG.sample_rate
CLIP_ID = "LJ001-0001"


def ljspeech_dir() -> Path:
    """The shared LJSpeech clips, which live beside the repository checkout."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech" / "ljspeech"
    assert path.is_dir(), f"speech data missing at {path}"
    return path


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return load_audio(ljspeech_dir() / f"{CLIP_ID}.flac", RATE)


@pytest.fixture(scope="module")
def noisy(clip: np.ndarray) -> np.ndarray:
    """The clip with white noise at 10 dB SNR."""
    noise = np.random.default_rng(0).standard_normal(clip.size).astype(np.float32)
    noise *= np.sqrt(np.mean(clip**2) / np.mean(noise**2) / 10.0)
    return clip + noise


@pytest.fixture(scope="module")
def mel() -> MelSpectrogram:
    return MelSpectrogram(CONFIG)


def test_trim_to_shortest_cuts_the_longer_signal() -> None:
    reference, degraded = trim_to_shortest(np.ones(100), np.zeros(120, dtype=np.float32))
    assert reference.shape == degraded.shape == (100,)
    assert reference.dtype == degraded.dtype == np.float32
    with pytest.raises(ValueError, match="mono"):
        trim_to_shortest(np.ones((2, 100)), np.ones(100))
    with pytest.raises(ValueError, match="empty"):
        trim_to_shortest(np.ones(100), np.ones(0))


def test_identical_audio_scores_perfectly(clip: np.ndarray, mel: MelSpectrogram) -> None:
    assert pesq_wb(clip, clip, RATE) > 4.5
    assert stoi(clip, clip, RATE) > 0.99
    assert multi_resolution_stft_distance(clip, clip) < 1e-6
    assert log_mel_l1(clip, clip, mel) < 1e-6


def test_noise_worsens_every_paired_metric(
    clip: np.ndarray, noisy: np.ndarray, mel: MelSpectrogram,
) -> None:
    assert pesq_wb(clip, noisy, RATE) < 2.0
    assert stoi(clip, noisy, RATE) < 0.95
    assert multi_resolution_stft_distance(clip, noisy) > 0.5
    assert log_mel_l1(clip, noisy, mel) > 0.3


def test_dnsmos_rates_clean_speech_above_noisy(clip: np.ndarray, noisy: np.ndarray) -> None:
    clean_scores = dnsmos(clip, RATE)
    noisy_scores = dnsmos(noisy, RATE)
    assert set(clean_scores) == {"SIG", "BAK", "OVRL", "P808"}
    assert all(1.0 <= value <= 5.0 for value in clean_scores.values())
    assert clean_scores["OVRL"] > 2.8
    assert noisy_scores["OVRL"] < clean_scores["OVRL"] - 0.5
    assert noisy_scores["BAK"] < clean_scores["BAK"] - 0.5


def test_f0_metrics_measure_a_one_semitone_shift(clip: np.ndarray) -> None:
    excerpt = clip[: 2 * RATE]  # pYIN is slow; two seconds hold ~100 voiced frames.
    same = f0_metrics(excerpt, excerpt, RATE)
    assert same["f0_rmse_cents"] == 0.0 and same["vuv_error"] == 0.0
    assert same["voiced_frames"] > 50
    shifted = librosa.effects.pitch_shift(excerpt, sr=RATE, n_steps=1.0)
    scores = f0_metrics(excerpt, shifted, RATE)
    assert 70.0 < scores["f0_rmse_cents"] < 130.0
    assert scores["vuv_error"] < 0.2


def test_f0_rmse_is_nan_without_voicing() -> None:
    silence = np.zeros(RATE // 2, dtype=np.float32)
    scores = f0_metrics(silence, silence, RATE)
    assert np.isnan(scores["f0_rmse_cents"])
    assert scores["voiced_frames"] == 0 and scores["vuv_error"] == 0.0


def test_griffin_lim_reconstructs_the_mel(clip: np.ndarray, mel: MelSpectrogram) -> None:
    excerpt = clip[: 3 * RATE]
    with torch.no_grad():
        log_mel = mel(torch.from_numpy(excerpt))[0].numpy()
    audio = griffin_lim_from_mel(log_mel, CONFIG)
    assert audio.dtype == np.float32
    assert audio.shape == (log_mel.shape[1] * CONFIG.hop_length,)
    assert log_mel_l1(excerpt, audio, mel) < 0.3
    assert griffin_lim_from_mel(log_mel, CONFIG, n_iter=1, length=excerpt.size).shape == excerpt.shape
    with pytest.raises(ValueError, match="shape"):
        griffin_lim_from_mel(log_mel.T, CONFIG)


def test_word_error_rate_counts_word_edits() -> None:
    assert word_error_rate("The cat, sat.", "the CAT sat") == 0.0
    assert word_error_rate("the cat sat down", "the dog sat down") == 0.25
    assert word_error_rate("the cat sat", "the sat") == pytest.approx(1 / 3)
    assert word_error_rate("ne-plus-ultra", "ne plus ultra") == 0.0
    assert word_error_rate("yes", "no no no") == 3.0
    with pytest.raises(ValueError, match="no words"):
        word_error_rate("...", "anything")


def test_transcribe_recognises_the_recording(clip: np.ndarray) -> None:
    metadata = (ljspeech_dir() / "metadata.csv").read_text(encoding="utf-8").splitlines()
    text = next(line.split("|")[2] for line in metadata if line.startswith(f"{CLIP_ID}|"))
    assert word_error_rate(text, transcribe(clip, RATE)) < 0.3
