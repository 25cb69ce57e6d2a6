"""Latent editing: exact encode/decode, speed by whole z columns, formant-keeping pitch shift,
temperature and interpolation. Pitch and speed are checked on real speech through Griffin-Lim,
since a random flow has no pitch; the slow test checks them through the bundled model."""
import re

import librosa
import numpy as np
import pytest
import soundfile
import torch

from speech import speech_clip
from tiny import TINY_CONFIGS, randomise_end_layers
from vocoder import latents
from vocoder.audio import load_audio
from vocoder.cli import main
from vocoder.config import FlowConfig
from vocoder.evaluation.griffin_lim import griffin_lim_from_mel
from vocoder.evaluation.metrics import EDITED_F0_RANGE_HZ, f0_track
from vocoder.inference import Vocoder
from vocoder.mel import MelConfig, MelSpectrogram
from vocoder.mel_transform import EditError, frame_map, shift_pitch
from vocoder.pretrained import default_checkpoint

CLIP = "LJ001-0002"  # 1.9 s, voiced over most of its length
PITCH_TOLERANCE = 0.5
SPEED_PITCH_TOLERANCE = 0.3


def tiny_vocoder(name: str) -> Vocoder:
    config = TINY_CONFIGS[name]
    mel = MelConfig(n_mels=config.n_mels, hop_length=config.hop_length, n_fft=64, win_length=64,
                    sample_rate=8000, fmax=4000)
    model = Vocoder.from_config(config, mel, seed=0)
    randomise_end_layers(model.flow, std=0.02)
    return model.eval()


def noise_clip(samples: int = 1000) -> np.ndarray:
    return (0.3 * np.random.default_rng(0).standard_normal(samples)).astype(np.float32)


def semitones_between(reference: np.ndarray, edited: np.ndarray, rate: float = 1.0) -> float:
    """Median F0 change in semitones over frames voiced in both, edited frame i set against
    reference frame i * rate (the frame the speed edit took it from)."""
    source = np.minimum(np.round(np.arange(len(edited)) * rate).astype(int), len(reference) - 1)
    return float(np.nanmedian(12.0 * np.log2(edited / reference[source])))


@pytest.fixture(scope="module")
def speech():
    config = MelConfig()
    audio = load_audio(speech_clip("ljspeech", CLIP), config.sample_rate)
    with torch.inference_mode():
        mel = MelSpectrogram(config)(torch.from_numpy(audio))[0].numpy()
    return config, audio, mel, f0_track(audio, config.sample_rate, EDITED_F0_RANGE_HZ)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_encode_decode_round_trip(name):
    model = tiny_vocoder(name)
    audio = noise_clip()
    latent = latents.encode(model, audio)
    frames = audio.size // model.hop_length + 1
    assert latent.mel.shape == (1, model.flow.config.n_mels, frames)
    assert tuple(latent.z.shape) == model.flow.latent_shape(1, frames)
    assert np.abs(latents.decode(model, latent) - audio).max() <= 1e-3
    # The flow really transforms: the same z under another mel gives other audio.
    other = latents.Latent(latent.mel + 1.0, latent.z, latent.length, latent.config)
    assert np.abs(latents.decode(model, other) - audio).max() > 1e-3


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.8, 1.25, 2.0, 4.0])
def test_speed_moves_whole_z_columns(rate):
    model = tiny_vocoder("waveglow")  # 4 z columns per frame
    audio = noise_clip()
    latent = latents.encode(model, audio)
    fast = latents.speed(latent, rate)
    out = latents.decode(model, fast)
    assert abs(out.size - audio.size / rate) <= model.hop_length
    per = latent.groups_per_frame
    sources = []
    for j in range(fast.frames):
        block = fast.z[0, :, j * per:(j + 1) * per]
        matches = [t for t in range(latent.frames) if torch.equal(block, latent.z[0, :, t * per:(t + 1) * per])]
        assert matches, f"output frame {j} holds z columns that are not a copy of any input frame"
        assert torch.equal(fast.mel[0, :, j], latent.mel[0, :, matches[0]])
        sources.append(matches[0])
    assert sources == sorted(sources)


def test_speed_one_is_identity():
    model = tiny_vocoder("efficient")
    audio = noise_clip()
    assert np.abs(latents.decode(model, latents.speed(latents.encode(model, audio), 1.0)) - audio).max() <= 1e-3


@pytest.mark.parametrize("semitones", [-7, -3, 3, 7])
def test_pitch_shift_through_griffin_lim(speech, semitones):
    config, audio, mel, reference = speech
    shifted = griffin_lim_from_mel(shift_pitch(mel, semitones, config), config, length=audio.size)
    measured = semitones_between(reference, f0_track(shifted, config.sample_rate, EDITED_F0_RANGE_HZ))
    assert abs(measured - semitones) <= PITCH_TOLERANCE, f"asked {semitones:+} st, measured {measured:+.2f}"


def test_pitch_shift_keeps_formants(speech):
    """The shape of the long-term spectrum barely moves, unlike after a resampling pitch shift,
    which moves the formants with the harmonics. (Its level may: wider-spaced harmonics leave
    less energy in each band.)"""
    config, audio, mel, _ = speech
    front_end = MelSpectrogram(config)

    def envelope(log_mel: np.ndarray) -> np.ndarray:
        return np.convolve(log_mel.mean(axis=1), np.ones(9) / 9, mode="valid")

    with torch.inference_mode():
        resampled = front_end(torch.from_numpy(librosa.effects.pitch_shift(audio, sr=config.sample_rate,
                                                                            n_steps=7)))[0].numpy()
    kept = np.std(envelope(shift_pitch(mel, 7, config)) - envelope(mel))
    moved = np.std(envelope(resampled) - envelope(mel))
    assert kept < 0.5 * moved


def test_zero_pitch_shift_is_identity(speech):
    config, _, mel, _ = speech
    assert np.array_equal(shift_pitch(mel, 0, config), mel)


@pytest.mark.parametrize("rate", [0.8, 1.25, 2.0])
def test_speed_through_griffin_lim_keeps_pitch(speech, rate):
    config, audio, mel, reference = speech
    source, length = frame_map(mel.shape[1], audio.size, rate, config.hop_length)
    assert abs(length - audio.size / rate) <= config.hop_length
    faster = griffin_lim_from_mel(mel[:, source], config, length=length)
    measured = semitones_between(reference, f0_track(faster, config.sample_rate, EDITED_F0_RANGE_HZ), rate)
    assert abs(measured) <= SPEED_PITCH_TOLERANCE, f"speed {rate} moved the pitch by {measured:+.2f} st"


@pytest.mark.parametrize("edit, value, words", [
    (latents.speed, 0.2, "0.25-4"), (latents.speed, 5.0, "0.25-4"), (latents.speed, float("nan"), "0.25-4"),
    (latents.pitch, 12.5, "-12 to +12"), (latents.pitch, -13.0, "-12 to +12"),
])
def test_out_of_range_edits_name_the_range(edit, value, words):
    latent = latents.encode(tiny_vocoder("efficient"), noise_clip())
    with pytest.raises(EditError, match=re.escape(words)):
        edit(latent, value)


def test_mel_input_sigma_and_edits():
    model = tiny_vocoder("efficient")
    mel = torch.randn(model.flow.config.n_mels, 50) - 5
    latent = latents.from_mel(model, mel, sigma=0.5, seed=3)
    assert latent.length == 50 * model.hop_length
    assert abs(latent.z.std().item() - 0.5) < 0.05
    assert torch.equal(latent.z, latents.from_mel(model, mel, sigma=0.5, seed=3).z)
    # Same noise and temperature as plain inference with that seed.
    expected = model.infer(mel, sigma=0.5, z=model.sample_latent(50, seed=3), chunk_frames=None)[0].numpy()
    assert np.abs(latents.decode(model, latent) - expected).max() < 1e-4
    assert latents.from_mel(model, mel, sigma=0.0).z.abs().max() == 0
    edited = latents.speed(latents.pitch(latent, 3), 2.0)
    assert edited.length == 25 * model.hop_length and latents.decode(model, edited).shape == (edited.length,)
    assert abs(latents.redraw(latent, sigma=1.2, seed=0).z.std().item() - 1.2) < 0.1
    with pytest.raises(EditError, match="sigma"):
        latents.redraw(latent, sigma=-1.0)


def test_interpolation_endpoints_and_prior():
    model = tiny_vocoder("efficient")
    n_mels = model.flow.config.n_mels
    a = latents.from_mel(model, torch.randn(n_mels, 200) - 5, sigma=1.0, seed=1)
    b = latents.from_mel(model, torch.randn(n_mels, 200) - 5, sigma=1.0, seed=2)
    start, end = latents.interpolate(a, b, 0.0), latents.interpolate(a, b, 1.0)
    assert torch.equal(start.mel, a.mel) and torch.equal(start.z, a.z)
    assert torch.allclose(end.mel, b.mel) and torch.allclose(end.z, b.z, atol=1e-6)
    middle = latents.interpolate(a, b, 0.5)
    assert torch.allclose(middle.mel, (a.mel + b.mel) / 2)
    assert abs(middle.z.std().item() - 1.0) < 0.05  # a linear mix would give 0.71
    same_noise = latents.from_mel(model, torch.randn(n_mels, 200) - 5, sigma=1.0, seed=1)
    assert torch.equal(latents.interpolate(a, same_noise, 0.5).z, a.z)
    with pytest.raises(EditError, match="same length"):
        latents.interpolate(a, latents.from_mel(model, torch.randn(n_mels, 120) - 5, seed=2), 0.5)
    with pytest.raises(EditError, match="0-1"):
        latents.interpolate(a, b, 1.5)


def test_decode_rejects_latent_of_another_model():
    latent = latents.encode(tiny_vocoder("efficient"), noise_clip())
    with pytest.raises(EditError, match="this model needs"):
        latents.decode(tiny_vocoder("waveglow"), latent)


def test_cli_edit(tmp_path, capsys):
    model = Vocoder.from_config(FlowConfig(n_group=256, n_flows=2, n_early_every=4, n_layers=2, n_channels=8),
                                seed=0)
    randomise_end_layers(model.flow)
    checkpoint = model.save_pretrained(tmp_path / "tiny")
    clip, mel_path, out = speech_clip("ljspeech", CLIP), tmp_path / "m.npy", tmp_path / "out.wav"
    assert main(["edit", str(clip), "--pitch", "3", "--speed", "1.25", "-o", str(out),
                 "--checkpoint", str(checkpoint)]) == 0
    source = soundfile.info(clip)
    written, rate = soundfile.read(out)
    assert rate == 22050 and abs(written.shape[0] - source.frames / 1.25) <= 256

    assert main(["mel", str(clip), "-o", str(mel_path)]) == 0
    assert main(["edit", str(mel_path), "--speed", "0.5", "--sigma", "0.3", "--seed", "1", "-o", str(out),
                 "--checkpoint", str(checkpoint)]) == 0
    assert soundfile.info(out).frames == round(np.load(mel_path).shape[1] / 0.5) * 256

    capsys.readouterr()
    assert main(["edit", str(clip), "--speed", "10", "-o", str(out), "--checkpoint", str(checkpoint)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "0.25-4" in error


@pytest.mark.slow
def test_bundled_model_edits_end_to_end(speech):
    path = default_checkpoint()
    if path is None:
        pytest.fail("no bundled checkpoint in vocoder/weights/default: the end-to-end editing tolerances "
                    "need a trained model")
    config, audio, _, reference = speech
    model = Vocoder.from_pretrained(path)
    latent = latents.encode(model, audio)
    assert np.abs(latents.decode(model, latent) - audio).max() <= 1e-3
    for semitones in (-7, -3, 3, 7):
        shifted = latents.edit_and_decode(model, latent, semitones=semitones)
        measured = semitones_between(reference, f0_track(shifted, config.sample_rate, EDITED_F0_RANGE_HZ))
        assert abs(measured - semitones) <= PITCH_TOLERANCE, f"asked {semitones:+} st, measured {measured:+.2f}"
    for rate in (0.8, 1.25):
        faster = latents.edit_and_decode(model, latent, rate=rate)
        assert abs(faster.size - audio.size / rate) <= model.hop_length
        measured = semitones_between(reference, f0_track(faster, config.sample_rate, EDITED_F0_RANGE_HZ), rate)
        assert abs(measured) <= SPEED_PITCH_TOLERANCE, f"speed {rate} moved the pitch by {measured:+.2f} st"


def test_pitch_conditioned_models_redraw_a_recordings_latent_to_edit_it():
    model = tiny_vocoder("source-filter")
    latent = latents.encode(model, noise_clip(1600))
    assert latent.encoded and not latents.redraw(latent).encoded
    edited = latents.edit_and_decode(model, latent, semitones=3)
    expected = latents.decode(model, latents.pitch(latents.redraw(latent, latents.EDIT_SIGMA, seed=0), 3))
    assert np.array_equal(edited, expected)
    assert np.abs(latents.edit_and_decode(model, latent) - latents.decode(model, latent)).max() == 0
    plain = tiny_vocoder("efficient")
    plain_latent = latents.encode(plain, noise_clip(1600))
    assert np.array_equal(latents.edit_and_decode(plain, plain_latent, semitones=3),
                          latents.decode(plain, latents.pitch(plain_latent, 3)))
