"""Batched, chunked and denoised inference agree with the plain unbatched pass."""
import numpy as np
import pytest
import torch

from tiny import TINY_CONFIGS, randomise_end_layers
from vocoder.config import PRESETS
from vocoder.inference import Vocoder
from vocoder.mel import MelConfig


def tiny_vocoder(name: str) -> Vocoder:
    config = TINY_CONFIGS[name]
    model = Vocoder.from_config(config, MelConfig(n_mels=config.n_mels, hop_length=config.hop_length, n_fft=64,
                                                  win_length=64, sample_rate=8000, fmax=4000), seed=0)
    randomise_end_layers(model.flow)
    return model.eval()


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_batched_equals_unbatched(name):
    model = tiny_vocoder(name)
    mel = torch.randn(3, model.flow.config.n_mels, 40) - 5
    lengths = torch.tensor([40, 23, 9])
    z = model.sample_latent(40, 3, seed=5)
    batched = model.infer(mel, lengths=lengths, z=z, chunk_frames=None)
    per_group = model.flow.config.groups_per_frame
    hop = model.hop_length
    for i, frames in enumerate(lengths.tolist()):
        alone = model.infer(mel[i:i + 1, :, :frames], z=z[i:i + 1, :, :frames * per_group], chunk_frames=None)
        assert (batched[i, :frames * hop] - alone[0]).abs().max() < 1e-4
        assert batched[i, frames * hop:].abs().sum() == 0  # padding comes out as silence


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_chunked_equals_unchunked(name):
    model = tiny_vocoder(name)
    frames = 3 * model.flow.config.receptive_field_frames() + 17
    mel = torch.randn(2, model.flow.config.n_mels, frames) - 5
    z = model.sample_latent(frames, 2, seed=3)
    whole = model.infer(mel, z=z, chunk_frames=None)
    chunked = model.infer(mel, z=z, chunk_frames=7)
    assert chunked.shape == whole.shape
    assert (chunked - whole).abs().max() < 1e-4


def test_chunk_overlap_is_needed():
    """A chunk with too little mel context differs from the whole signal, so the overlap is real.

    `receptive_field_frames` is an upper bound: here (8 frames) the output is already exact
    from 5 frames on, as the influence of far frames dies out through the couplings."""
    model = tiny_vocoder("efficient")
    randomise_end_layers(model.flow, std=0.5)
    context = model.flow.config.receptive_field_frames()
    frames = 4 * context
    mel = torch.randn(1, model.flow.config.n_mels, frames) - 5
    z = model.sample_latent(frames, 1, seed=3)
    whole = model.infer(mel, z=z, chunk_frames=None)
    start, short_context = 2 * context, 2
    with torch.no_grad():
        short = model.fused.infer(mel[:, :, start - short_context:], z=z[:, :, (start - short_context) * 2:])
    offset = short_context * model.hop_length
    assert (short[0, offset:offset + model.hop_length] - whole[0, start * 16:(start + 1) * 16]).abs().max() > 1e-5


def test_waveglow_chunk_context_is_about_a_second():
    frames = PRESETS["waveglow"].receptive_field_frames()
    assert 0.9 < frames * 256 / 22050 < 1.3


def test_seed_gives_same_audio_and_sigma_zero_is_deterministic():
    model = tiny_vocoder("efficient")
    mel = torch.randn(1, 6, 20) - 5
    first = model.infer(mel, z=model.sample_latent(20, seed=7))
    second = model.infer(mel, z=model.sample_latent(20, seed=7))
    assert torch.equal(first, second)
    assert torch.equal(model.infer(mel, sigma=0.0), model.infer(mel, sigma=0.0))


def test_denoiser_keeps_length_and_reduces_bias():
    model = tiny_vocoder("efficient")
    mel = torch.full((1, 6, 50), model.mel.config.silence_value)
    plain = model.infer(mel, sigma=0.0)
    cleaned = model.infer(mel, sigma=0.0, denoise=1.0)
    assert cleaned.shape == plain.shape
    assert cleaned.pow(2).mean() < plain.pow(2).mean()


def test_resynthesize_trims_to_input_length():
    model = tiny_vocoder("efficient")
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, 1000).astype(np.float32)
    out = model.resynthesize(audio, seed=1)
    assert out.shape == audio.shape and np.isfinite(out).all()


def test_stream_with_denoiser_handles_a_runt_last_chunk():
    model = tiny_vocoder("efficient")
    mel = torch.randn(1, 6, 17) - 5
    pieces = list(model.stream(mel, chunk_frames=16, denoise=0.5, z=model.sample_latent(17, seed=0)))
    assert sum(piece.shape[1] for piece in pieces) == 17 * model.hop_length


def test_sigma_only_scales_the_latent():
    """The service batches requests of different sigma by folding sigma into z."""
    model = tiny_vocoder("waveglow")
    mel = torch.randn(1, 6, 12) - 5
    z = model.sample_latent(12, seed=2)
    assert torch.allclose(model.infer(mel, sigma=0.4, z=z), model.infer(mel, sigma=1.0, z=0.4 * z), atol=1e-6)
