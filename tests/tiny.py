"""Tiny random-init flows for fast tests, with the zero-initialised last layers
randomised so that every coupling (and the source-filter gain correction) acts."""
from __future__ import annotations

import torch

from vocoder.config import FlowConfig
from vocoder.flow import WaveFlow

TINY_CONFIGS = {
    "waveglow": FlowConfig(family="waveglow", n_mels=6, hop_length=16, n_group=4, n_flows=4,
                           n_early_every=2, n_early_size=2, n_layers=2, n_channels=8,
                           dilation_cycle=0, upsample_kernel=64),
    "efficient": FlowConfig(family="efficient", n_mels=6, hop_length=16, n_group=8, n_flows=4,
                            n_early_every=2, n_early_size=2, n_layers=3, n_channels=8, dilation_cycle=2),
    "efficient-half-hop": FlowConfig(family="efficient", n_mels=6, hop_length=16, n_group=8, n_flows=3,
                                     n_early_every=4, n_early_size=2, n_layers=2, n_channels=6),
    "efficient-shifted": FlowConfig(family="efficient", n_mels=6, hop_length=16, n_group=8, n_flows=4,
                                    n_early_every=2, n_early_size=2, n_layers=2, n_channels=8, shift_groups=True),
    "source-filter": FlowConfig(family="source-filter", n_mels=6, hop_length=16, n_group=8, n_flows=4,
                                n_early_every=2, n_early_size=2, n_layers=2, n_channels=8, shift_groups=True,
                                lpc_order=4, gain_channels=4, pitch_harmonics=2, pitch_channels=4),
    "source-filter-voiced": FlowConfig(family="source-filter", n_mels=6, hop_length=16, n_group=8, n_flows=4,
                                       n_early_every=2, n_early_size=2, n_layers=2, n_channels=8, shift_groups=True,
                                       lpc_order=4, gain_channels=4, pitch_harmonics=2, pitch_channels=4,
                                       voiced_harmonics=3, pitch_predictor="classifier"),
    "source-filter-symmetric": FlowConfig(family="source-filter", n_mels=6, hop_length=16, n_group=8, n_flows=4,
                                          n_early_every=2, n_early_size=2, n_layers=2, n_channels=8,
                                          shift_groups=True, lpc_order=4, gain_channels=4, pitch_harmonics=2,
                                          pitch_channels=4, symmetric=True),
}


def randomise_end_layers(flow: WaveFlow, std: float = 0.05, seed: int = 0) -> WaveFlow:
    """Also the last layers of the source filter's gain correction and voiced mean, so every
    learned part acts."""
    generator = torch.Generator().manual_seed(seed)
    ends = [end for conditioner in flow.WN
            for end in ([conditioner.end] if hasattr(conditioner, "end") else
                        [conditioner.end_shift, conditioner.end_log_scale])]
    if flow.source_filter is not None:
        ends.append(flow.source_filter.gain_net[-1])
        if flow.source_filter.voiced_net is not None:
            ends.append(flow.source_filter.voiced_net[-1])
    with torch.no_grad():
        for end in ends:
            end.weight.copy_(torch.randn(end.weight.shape, generator=generator) * std)
            if end.bias is not None:
                end.bias.copy_(torch.randn(end.bias.shape, generator=generator) * std)
    return flow


def tiny_flow(name: str, seed: int = 0) -> WaveFlow:
    torch.manual_seed(seed)
    return randomise_end_layers(WaveFlow(TINY_CONFIGS[name]), seed=seed).eval()
