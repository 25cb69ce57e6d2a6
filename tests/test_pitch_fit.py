"""The pitch predictors learn F0 and voicing from pYIN labels of the training clips; the
classifier's harmonic salience and the fit's frequency warp put the F0 where it is."""
import librosa
import numpy as np
import pytest
import soundfile
import torch

from training.data import AudioStore, Clip
from training.pitch_fit import fit_pitch_predictor, warp_frequency
from vocoder.mel import MelConfig, MelSpectrogram
from vocoder.pitch import F0_MIN_HZ, PitchClassifier, build_pitch_predictor

RATE = 22050
# Fit steps, and how close (cents) the fitted predictor must come to each clip's F0.
FITS = {"regression": (600, 300), "classifier": (120, 50)}


def _voice(f0: float, seconds: float = 1.5) -> np.ndarray:
    """A buzzy vowel-like tone (10 harmonics, falling amplitudes) with a silent gap in the middle."""
    t = np.arange(int(seconds * RATE)) / RATE
    tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 11))
    tone[len(t) // 3: len(t) // 2] = 0.0
    return (0.2 * tone).astype(np.float32)


@pytest.mark.parametrize("kind", sorted(FITS))
def test_fit_learns_the_pitch_of_each_clip_and_marks_the_predictor_fitted(tmp_path, kind):
    steps, tolerance_cents = FITS[kind]
    clips = []
    for f0 in (110.0, 220.0):
        path = tmp_path / f"tone{f0:.0f}.flac"
        soundfile.write(path, _voice(f0), RATE)
        clips.append(Clip(path.stem, "tones", path))
    mel = MelSpectrogram(MelConfig())
    torch.manual_seed(0)
    predictor = build_pitch_predictor(kind, mel.config)
    assert not predictor.fitted and not any(p.requires_grad for p in predictor.parameters())
    fit_pitch_predictor(predictor, AudioStore(clips, RATE, cache=True), mel, seed=0, steps=steps)
    assert predictor.fitted and not any(p.requires_grad for p in predictor.parameters())
    predicted = []
    for f0, clip in zip((110.0, 220.0), clips):
        audio = torch.from_numpy(soundfile.read(clip.path, dtype="float32")[0])
        track = predictor.track(mel(audio), mel.config.hop_length, RATE)
        frames = track.f0.shape[1]
        voiced = slice(5, frames // 3 - 3)  # well inside the first tone
        median = float(np.median(track.f0[0, voiced].numpy()))
        # The untrained regressor says 160 Hz for both, the untrained classifier anything.
        assert abs(1200 * np.log2(median / f0)) < tolerance_cents, f"{f0} Hz predicted {median:.0f} Hz"
        assert track.voicing[0, voiced].mean() > 0.7
        assert track.voicing[0, frames // 3 + 4: frames // 2 - 4].mean() < 0.3  # the silent gap
        predicted.append(median)
    assert 1200 * np.log2(predicted[1] / predicted[0]) > 900  # the octave between the clips, nearly


def _salience_peak_hz(classifier, mel: torch.Tensor) -> float:
    salience = classifier.salience(mel)[0, :, 5:-5].mean(dim=1)  # steady frames only
    return F0_MIN_HZ * 2 ** (float(classifier.bin_cents[salience.argmax()]) / 1200)


@pytest.mark.parametrize("f0", [110.0, 150.0, 220.0])
def test_harmonic_salience_peaks_at_the_f0_and_moves_with_a_frequency_warp(f0):
    config = MelConfig()
    mel = MelSpectrogram(config)
    classifier = PitchClassifier(config)
    tone = mel(torch.from_numpy(_voice(f0)[: RATE // 2]))  # before the gap
    assert abs(1200 * np.log2(_salience_peak_hz(classifier, tone) / f0)) <= 20  # one bin
    band_hz = librosa.mel_frequencies(config.n_mels + 2, fmin=config.fmin, fmax=config.fmax)[1:-1]
    factor = 2 ** 0.25
    warped = warp_frequency(tone[0], factor, band_hz)[None]
    assert abs(1200 * np.log2(_salience_peak_hz(classifier, warped) / (f0 * factor))) <= 20
