"""The mel front-end matches a plain librosa computation and loads any audio file."""
import io

import librosa
import numpy as np
import pytest
import soundfile
import torch

from speech import SPEECH_DIR, speech_clip
from vocoder.audio import load_audio
from vocoder.errors import AudioError
from vocoder.mel import MelConfig, MelSpectrogram


def librosa_log_mel(audio: np.ndarray, config: MelConfig) -> np.ndarray:
    magnitude = np.abs(librosa.stft(audio, n_fft=config.n_fft, hop_length=config.hop_length,
                                    win_length=config.win_length, window="hann", center=True,
                                    pad_mode="reflect"))
    basis = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                                fmin=config.fmin, fmax=config.fmax, htk=False, norm="slaney")
    return np.log(np.maximum(basis @ magnitude, config.clamp_min))


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return load_audio(speech_clip(), 22050)[: 22050 * 3]


def test_parity_with_librosa_float64(clip):
    config = MelConfig()
    expected = librosa_log_mel(clip.astype(np.float64), config)
    ours = MelSpectrogram(config).double()(torch.from_numpy(clip.astype(np.float64)))[0].numpy()
    assert ours.shape == expected.shape == (80, clip.shape[0] // 256 + 1)
    assert np.abs(ours - expected).max() < 1e-3


def test_parity_with_librosa_float32(clip):
    config = MelConfig()
    expected = librosa_log_mel(clip.astype(np.float64), config)
    ours = MelSpectrogram(config)(torch.from_numpy(clip))[0].numpy()
    assert np.abs(ours - expected).max() < 2e-3


def test_batched_equals_single(clip):
    mel = MelSpectrogram()
    batch = torch.from_numpy(np.stack([clip, clip[::-1].copy()]))
    assert torch.allclose(mel(batch)[0], mel(batch[0])[0], atol=1e-5)


def test_silence_reaches_the_floor():
    mel = MelSpectrogram()(torch.zeros(4096))
    assert torch.allclose(mel, torch.full_like(mel, MelConfig().silence_value))


def test_load_any_rate_and_channels(tmp_path, clip):
    stereo = np.stack([clip, 0.5 * clip], axis=1)
    path = tmp_path / "stereo.ogg"
    soundfile.write(path, stereo, 44100, format="OGG", subtype="VORBIS")
    loaded = load_audio(path, 22050)
    assert loaded.dtype == np.float32 and loaded.ndim == 1
    assert abs(loaded.shape[0] - clip.shape[0] // 2) <= 2  # 44.1 kHz -> 22.05 kHz halves the length


def test_load_resamples_shared_24k_clip():
    path = next((SPEECH_DIR / "ljspeech_24k").glob("*.flac"))
    info = soundfile.info(path)
    loaded = load_audio(path, 22050)
    assert abs(loaded.shape[0] - round(info.frames * 22050 / info.samplerate)) <= 2


@pytest.mark.parametrize("payload, message", [
    (b"", "not a readable audio file"),
    (b"RIFF....garbage", "not a readable audio file"),
])
def test_unreadable_input_is_a_clear_error(payload, message):
    with pytest.raises(AudioError, match=message):
        load_audio(payload, 22050)


def test_empty_audio_is_a_clear_error():
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(0, dtype=np.float32), 22050, format="WAV")
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(buffer.getvalue(), 22050)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "absent.wav", 22050)


def test_too_short_for_framing():
    with pytest.raises(ValueError, match="audio too short"):
        MelSpectrogram()(torch.zeros(100))
