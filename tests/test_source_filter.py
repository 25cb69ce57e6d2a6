"""The source-filter layers: LPC from the mel, the lattice filters, the gain, pitch features."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from speech import speech_clip
from vocoder.audio import load_audio
from tiny import randomise_end_layers
from vocoder.config import PRESETS
from vocoder.evaluation.metrics import comb_level_db
from vocoder.flow import WaveFlow
from vocoder.mel import MelConfig, MelSpectrogram
from vocoder.pitch import PitchTrack, harmonic_features
from vocoder.source_filter import (
    SourceFilter,
    frame_interpolator,
    interpolate_frames,
    lattice_analysis,
    lattice_synthesis,
    levinson_durbin,
    predictor_to_reflection,
)


def _random_reflection(batch: int, frames: int, order: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, frames, order, generator=generator, dtype=torch.float64) * 1.8 - 0.9)


def test_lattice_synthesis_inverts_analysis_with_moving_coefficients():
    frames = _random_reflection(2, 9, 6)
    excitation = torch.randn(2, 8 * 16, dtype=torch.float64)
    audio, _ = lattice_synthesis(excitation, frames, hop=16)
    whitened = lattice_analysis(audio, interpolate_frames(frames, 16, 0, audio.shape[1]))
    assert (whitened - excitation).abs().max() < 1e-9
    assert (audio - excitation).abs().max() > 0.1  # the filter does something


def test_lattice_synthesis_carries_state_across_chunks():
    frames = _random_reflection(2, 9, 6, seed=1)
    excitation = torch.randn(2, 8 * 16, dtype=torch.float64)
    whole, _ = lattice_synthesis(excitation, frames, hop=16)
    first, state = lattice_synthesis(excitation[:, :37], frames, hop=16)
    second, _ = lattice_synthesis(excitation[:, 37:], frames, hop=16, start=37, state=state)
    assert torch.equal(torch.cat([first, second], dim=1), whole)


def test_lattice_synthesis_gradient_is_its_transpose():
    frames = _random_reflection(2, 4, 5, seed=2)
    excitation = torch.randn(2, 40, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: lattice_synthesis(e, frames, hop=12)[0], (excitation,))


def test_levinson_durbin_solves_the_normal_equations():
    generator = torch.Generator().manual_seed(3)
    signal = torch.randn(4000, generator=generator, dtype=torch.float64)
    signal = torch.from_numpy(np.convolve(signal.numpy(), [1.0, -1.6, 0.9])[:4000])
    lags = torch.stack([(signal[: 4000 - k] * signal[k:]).sum() / 4000 for k in range(9)])
    predictor, error = levinson_durbin(lags.numpy(), 8)
    expected = scipy.linalg.solve_toeplitz(lags[:8].numpy(), -lags[1:].numpy())
    assert np.allclose(predictor, expected, atol=1e-9)
    assert error == pytest.approx(float(lags[0] + (torch.from_numpy(predictor) * lags[1:]).sum()), rel=1e-9)


def test_reflection_coefficients_rebuild_the_predictor():
    reflection = _random_reflection(3, 1, 7, seed=4)[:, 0]
    predictor = torch.zeros(3, 0, dtype=torch.float64)
    for m in range(7):  # the step-up recursion
        k = reflection[:, m:m + 1]
        predictor = torch.cat([predictor + k * predictor.flip(-1), k], dim=1)
    for item in range(3):
        assert np.allclose(predictor_to_reflection(predictor[item].numpy()), reflection[item].numpy(), atol=1e-12)


def _speech(seconds: float) -> torch.Tensor:
    audio = load_audio(speech_clip(), MelConfig().sample_rate)[256 * 100:]
    return torch.from_numpy(audio[: int(seconds * 22050) // 256 * 256]).unsqueeze(0)


def test_lpc_from_the_mel_whitens_real_speech():
    audio = _speech(3.0)
    mel_config = MelConfig()
    mel = MelSpectrogram(mel_config)(audio)
    source_filter = SourceFilter(24, 8, mel_config)
    reflection = source_filter.frame_filter(mel).reflection
    assert reflection.abs().max() < 1
    with torch.no_grad():
        excitation, log_det = source_filter.whiten(audio, mel)
    # The mel-predicted gain puts the residual near unit power (the learned correction,
    # still zero here, trims the rest), and the filter removes the spectral envelope.
    assert 0.5 < excitation.std().item() < 2.0
    flatness = [float(torch.exp(torch.log(p + 1e-12).mean()) / p.mean())
                for p in (torch.stft(x[0].double(), 1024, 256, window=torch.hann_window(1024, dtype=torch.float64),
                                     return_complex=True).abs().pow(2).mean(dim=1) for x in (audio, excitation))]
    assert flatness[1] > 3 * flatness[0]
    assert log_det.item() > 0  # speech is quieter than unit power


def test_source_filter_round_trip_on_the_full_preset_with_real_speech():
    audio = _speech(0.5)
    torch.manual_seed(0)
    flow = randomise_end_layers(WaveFlow(PRESETS["source-filter"]), std=0.02).eval()
    mel = MelSpectrogram(MelConfig())(audio)[:, :, :-1]
    with torch.no_grad():
        z, _ = flow(audio, mel)
        restored = flow.infer(mel, sigma=1.0, z=z)
    assert (restored - audio).abs().max() < 1e-4


def test_harmonic_features_follow_a_constant_pitch():
    f0, hop, rate = 150.0, 32, 8000
    frames = 6
    track = PitchTrack(torch.full((1, frames), f0, dtype=torch.float64), torch.ones(1, frames),
                       torch.arange(frames, dtype=torch.float64).view(1, -1) * 2 * math.pi * f0 * hop / rate)
    features = harmonic_features(track, 2, hop, rate, start=10, length=100)
    samples = torch.arange(10, 110, dtype=torch.float64)
    expected = torch.stack([torch.sin(2 * math.pi * f0 * samples / rate), torch.sin(4 * math.pi * f0 * samples / rate),
                            torch.cos(2 * math.pi * f0 * samples / rate), torch.cos(4 * math.pi * f0 * samples / rate)])
    assert torch.allclose(features[0].double(), expected, atol=1e-5)


def test_comb_level_finds_a_group_rate_buzz():
    rate, period = 22050, 256
    noise = np.random.default_rng(0).standard_normal(rate * 3)
    buzz = np.zeros_like(noise)
    buzz[::period] = 8.0
    assert abs(comb_level_db(noise, rate, period)) < 1.5
    assert comb_level_db(noise + buzz, rate, period) > 6


def test_voiced_mean_leaves_out_harmonics_at_or_above_nyquist():
    mel_config = MelConfig()
    harmonics, f0, frames = 30, 400.0, 6
    source_filter = SourceFilter(8, 4, mel_config, voiced_harmonics=harmonics)
    with torch.no_grad():
        source_filter.voiced_net[2].bias.fill_(1.0)  # every sine and cosine amplitude 1
    mel = torch.zeros(1, mel_config.n_mels, frames)
    track = PitchTrack.from_f0(torch.full((1, frames), f0), torch.ones(1, frames), mel_config.hop_length,
                               mel_config.sample_rate)
    length = (frames - 1) * mel_config.hop_length
    mean = source_filter.voiced_mean(source_filter.frame_filter(mel), track, 0, length)
    # 27 x 400 Hz is below 11025 Hz, 28 x 400 Hz above: only the first 27 may sound.
    audible = int((mel_config.sample_rate / 2) // f0)
    features = harmonic_features(track, audible, mel_config.hop_length, mel_config.sample_rate, 0, length)
    assert audible == 27
    assert torch.allclose(mean, features.sum(dim=1).to(mean.dtype), atol=1e-4)


@pytest.mark.parametrize("start, length", [(0, 160), (48, 100), (37, 5), (150, 64)])
def test_frame_interpolator_equals_interpolate_frames(start, length):
    values = torch.randn(2, 9, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    channel = frame_interpolator(values, 16, start, length)
    expected = interpolate_frames(values, 16, start, length)
    for k in range(5):
        assert torch.allclose(channel(k), expected[:, :, k], atol=1e-12)
