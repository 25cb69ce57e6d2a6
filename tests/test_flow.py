"""The flow is exactly invertible and its log-determinant is the true one."""
import math

import pytest
import torch

from tiny import TINY_CONFIGS, randomise_end_layers, tiny_flow
from vocoder.config import PRESETS, FlowConfig
from vocoder.errors import MelError
from vocoder.flow import WaveFlow
from vocoder.fused import fuse


def _inputs(flow: WaveFlow, frames: int, batch: int = 2, dtype=torch.float32):
    generator = torch.Generator().manual_seed(1)
    c = flow.config
    mel = torch.randn(batch, c.n_mels, frames, generator=generator, dtype=dtype)
    audio = 0.3 * torch.randn(batch, frames * c.hop_length, generator=generator, dtype=dtype)
    return audio, mel


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_round_trip_tiny(name):
    flow = tiny_flow(name)
    audio, mel = _inputs(flow, frames=12)
    with torch.no_grad():
        z, _ = flow(audio, mel)
        restored = flow.infer(mel, sigma=1.0, z=z)
    assert (restored - audio).abs().max() < 1e-4
    assert (z - audio.reshape(2, -1, flow.config.n_group).transpose(1, 2)).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["waveglow", "efficient", "efficient-small", "source-filter"])
def test_round_trip_presets(name):
    torch.manual_seed(0)
    flow = randomise_end_layers(WaveFlow(PRESETS[name]), std=0.02).eval()
    audio, mel = _inputs(flow, frames=8, batch=1)
    with torch.no_grad():
        z, _ = flow(audio, mel)
        restored = flow.infer(mel, sigma=1.0, z=z)
    assert (restored - audio).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["waveglow", "efficient", "efficient-shifted", "source-filter",
                                  "source-filter-voiced", "source-filter-symmetric"])
def test_log_determinant_equals_autograd_jacobian(name):
    flow = tiny_flow(name).double()
    audio, mel = _inputs(flow, frames=3, batch=1, dtype=torch.float64)

    def to_latent(x: torch.Tensor) -> torch.Tensor:
        return flow(x.unsqueeze(0), mel)[0].flatten()

    jacobian = torch.autograd.functional.jacobian(to_latent, audio[0])
    sign, expected = torch.linalg.slogdet(jacobian)
    _, log_det = flow(audio, mel)
    assert sign != 0
    assert abs(log_det.item() - expected.item()) < 1e-3
    assert abs(expected.item()) > 0.1  # the couplings are not the identity


def test_log_likelihood_includes_gaussian_constant():
    flow = WaveFlow(TINY_CONFIGS["efficient"]).eval()  # zero end layers: identity couplings
    for conv in flow.convinv:
        with torch.no_grad():
            conv.weight.copy_(torch.eye(conv.weight.shape[0]))
    audio = torch.zeros(1, 64)
    mel = torch.zeros(1, 6, 4)
    sigma = 0.5
    expected = -0.5 * math.log(2 * math.pi * sigma**2)
    assert flow.log_likelihood(audio, mel, sigma=sigma).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", ["efficient", "efficient-shifted", "source-filter", "source-filter-voiced"])
def test_padded_batch_likelihood_matches_single_items(name):
    flow = tiny_flow(name)
    audio, mel = _inputs(flow, frames=10)
    lengths = torch.tensor([160, 96])
    padded = audio.clone()
    padded[1, 96:] = 0.7  # garbage beyond the valid length must not matter
    with torch.no_grad():
        batched = flow.log_likelihood(padded, mel, lengths=lengths)
        alone = flow.log_likelihood(audio[1:, :96], mel[1:, :, :6])
    assert batched[1].item() == pytest.approx(alone.item(), abs=1e-5)


def test_wrong_mel_bands_is_a_clear_error():
    flow = tiny_flow("efficient")
    with pytest.raises(MelError, match="mel has 5 bands, model expects 6"):
        flow.infer(torch.zeros(1, 5, 4))


def test_invalid_config_names_the_problem():
    with pytest.raises(ValueError, match="must divide hop_length"):
        FlowConfig(n_group=96)


def test_weight_norm_fold_keeps_function_and_names():
    """Training reparametrises the convolutions; `plain_state_dict` folds them back into the plain
    weights that checkpoints hold, which a fresh flow loads to the same function."""
    flow = tiny_flow("waveglow")
    audio, mel = _inputs(flow, frames=6)
    with torch.no_grad():
        before, _ = flow(audio, mel)
    flow.apply_weight_norm()
    plain = flow.plain_state_dict()
    with torch.no_grad():
        during, _ = flow(audio, mel)
    loaded = WaveFlow(flow.config)
    loaded.load_state_dict(plain)
    with torch.no_grad():
        after, _ = loaded(audio, mel)
    assert set(plain) == set(loaded.state_dict())
    assert (before - during).abs().max() < 1e-5 and (before - after).abs().max() < 1e-5


@pytest.mark.parametrize("name,upsample_kernel", [("waveglow", 64), ("waveglow", 40), ("efficient", None),
                                                  ("efficient-half-hop", None), ("source-filter", None),
                                                  ("source-filter-voiced", None)])
def test_fused_flow_equals_the_reference(name, upsample_kernel):
    """The fused copy rearranges the conditioners, the upsampler and the inverse 1x1 convolutions;
    the latent, the log-det and the sample must not depend on which flow ran (a bug shared by both
    directions would keep the round trip)."""
    config = TINY_CONFIGS[name]
    if upsample_kernel is not None:
        config = FlowConfig(**{**config.to_dict(), "upsample_kernel": upsample_kernel})
    torch.manual_seed(0)
    flow = randomise_end_layers(WaveFlow(config)).eval()
    fused = fuse(flow)
    audio, mel = _inputs(flow, frames=7)
    lengths = torch.tensor([7 * config.hop_length, 4 * config.hop_length])
    z = torch.randn(flow.latent_shape(2, 7))
    with torch.no_grad():
        z_reference, log_det_reference = flow(audio, mel, lengths)
        z_fused, log_det_fused = fused(audio, mel, lengths)
        audio_reference = flow.infer(mel, sigma=0.8, z=z, lengths=torch.tensor([7, 4]))
        audio_fused = fused.infer(mel, sigma=0.8, z=z, lengths=torch.tensor([7, 4]))
    assert (z_reference - z_fused).abs().max() < 1e-5
    assert (log_det_reference - log_det_fused).abs().max() < 1e-4
    assert (audio_reference - audio_fused).abs().max() < 1e-4
    assert z_reference.abs().max() > 0.1 and audio_reference.abs().max() > 0.01


def test_fused_flow_shares_and_follows_the_weights():
    flow = randomise_end_layers(WaveFlow(TINY_CONFIGS["efficient"])).eval()
    fused = fuse(flow)
    shared = {id(p) for p in flow.parameters()}
    assert shared == {id(p) for p in fused.parameters()}
    audio, mel = _inputs(flow, frames=5)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.mul_(1.01)
        z_reference, _ = flow(audio, mel)
        z_fused, _ = fused(audio, mel)
        restored = fused.infer(mel, sigma=1.0, z=z_fused)
    assert (z_reference - z_fused).abs().max() < 1e-5  # the cached inverse followed the update too
    assert (restored - audio).abs().max() < 1e-4


def test_symmetric_flow_is_odd_in_the_audio():
    flow = tiny_flow("source-filter-symmetric")
    audio, mel = _inputs(flow, frames=10)
    with torch.no_grad():
        z, log_det = flow(audio, mel)
        z_flipped, log_det_flipped = flow(-audio, mel)
        silence = flow.infer(mel, sigma=0.0)
    assert (z_flipped + z).abs().max() < 1e-5 and (log_det_flipped - log_det).abs().max() < 1e-4
    assert silence.abs().max() == 0  # a zero-mean model: nothing deterministic to repeat per group
    with torch.no_grad():
        asymmetric, _ = tiny_flow("source-filter")(-audio, mel)
        plain, _ = tiny_flow("source-filter")(audio, mel)
    assert (asymmetric + plain).abs().max() > 1e-2  # the other couplings are not odd
