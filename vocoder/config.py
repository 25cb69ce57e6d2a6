"""Typed configuration of the flow, with the named presets of both families.

`waveglow` is NVIDIA's published layout; `efficient` is the CPU-friendly family
(mel at frame rate, large n_group, depthwise-separable conditioner).
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from vocoder.errors import ConfigError
from vocoder.serialization import DictConfig

if TYPE_CHECKING:
    from vocoder.mel import MelConfig

Family = Literal["waveglow", "efficient", "source-filter"]
PitchPredictorKind = Literal["regression", "classifier"]
# Mel frames the source-filter gain network sees at once (vocoder/source_filter.py).
GAIN_KERNEL_SIZE = 5


@dataclass(frozen=True)
class FlowConfig(DictConfig):
    """Shape of a WaveGlow-style flow.

    Audio is squeezed into `n_group` channels; the flow has `n_flows` steps, and every
    `n_early_every` steps `n_early_size` channels leave early. Each coupling is driven by a
    conditioner of `n_layers` gated layers with `n_channels` channels; dilation doubles per
    layer and restarts every `dilation_cycle` layers (0: never restarts).

    `shift_groups` moves the squeeze grid by half a group on every odd step, so no group
    boundary sits at the same place in every step. The `source-filter` family (the
    `efficient` conditioner on a source-filter front) whitens audio with a mel-derived
    all-pole filter of order `lpc_order` and a gain before the flow (vocoder/source_filter.py);
    `gain_channels` sizes the network that corrects the gain. With `pitch_harmonics` > 0 the
    couplings also see the sin and cos of that many harmonics of the F0 phase at audio rate
    (vocoder/pitch.py), projected once to `pitch_channels` channels; `pitch_predictor` picks the
    network that predicts the F0 from the mel (`classifier`; `regression` is the first
    source-filter checkpoints' network, the default so that they load). With `voiced_harmonics` > 0
    the excitation's voiced mean, that many harmonics of the same phase with amplitudes from the
    mel, is taken out before the flow (vocoder/source_filter.py). `symmetric` makes every
    coupling odd in the audio (vocoder/conditioner.py), so p(x | mel) = p(-x | mel).
    """

    family: Family = "efficient"
    n_mels: int = 80
    hop_length: int = 256
    n_group: int = 256
    n_flows: int = 12
    n_early_every: int = 4
    n_early_size: int = 16
    n_layers: int = 6
    n_channels: int = 128
    kernel_size: int = 3
    dilation_cycle: int = 3
    upsample_kernel: int = 1024
    shift_groups: bool = False
    lpc_order: int = 0
    gain_channels: int = 64
    pitch_harmonics: int = 0
    pitch_channels: int = 32
    pitch_predictor: PitchPredictorKind = "regression"
    voiced_harmonics: int = 0
    symmetric: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.family not in typing.get_args(Family):
            problems.append(f"family must be one of {typing.get_args(Family)}, got {self.family!r}")
        if self.n_group % 2 or self.n_group <= 0:
            problems.append(f"n_group must be a positive even number, got {self.n_group}")
        elif self.hop_length % self.n_group:
            problems.append(f"n_group {self.n_group} must divide hop_length {self.hop_length}")
        if self.kernel_size % 2 == 0:
            problems.append(f"kernel_size must be odd, got {self.kernel_size}")
        if self.n_early_size % 2 or self.n_early_every <= 0:
            problems.append("n_early_size must be even and n_early_every positive")
        if self.n_channels % 2:
            problems.append(f"n_channels must be even, got {self.n_channels}")
        if self.remaining_channels(self.n_flows - 1) < 2:
            problems.append("early outputs leave fewer than 2 channels for the last flow")
        if self.family == "source-filter" and self.lpc_order < 1:
            problems.append(f"the source-filter family needs lpc_order >= 1, got {self.lpc_order}")
        if self.family != "source-filter" and self.lpc_order:
            problems.append(f"lpc_order is for the source-filter family, not {self.family!r}")
        if self.pitch_harmonics and self.family != "source-filter":
            problems.append(f"pitch_harmonics is for the source-filter family, not {self.family!r}")
        if self.pitch_predictor not in typing.get_args(PitchPredictorKind):
            problems.append(f"pitch_predictor must be one of {typing.get_args(PitchPredictorKind)}, "
                            f"got {self.pitch_predictor!r}")
        if self.voiced_harmonics < 0 or (self.voiced_harmonics and not self.pitch_harmonics):
            problems.append(f"voiced_harmonics needs pitch conditioning (pitch_harmonics > 0), "
                            f"got {self.voiced_harmonics}")
        if self.symmetric and self.family == "waveglow":
            problems.append("symmetric is for the efficient and source-filter families")
        if self.shift_groups and self.family == "waveglow":
            problems.append("shift_groups is for the efficient and source-filter families")
        if problems:
            raise ValueError("invalid flow config: " + "; ".join(problems))

    def check_mel(self, mel: MelConfig) -> None:
        """Refuse a mel convention this flow cannot be conditioned on."""
        if (self.n_mels, self.hop_length) != (mel.n_mels, mel.hop_length):
            raise ConfigError(f"model expects {self.n_mels} mels / hop {self.hop_length}, "
                              f"mel config gives {mel.n_mels} / {mel.hop_length}")

    @property
    def cond_channels(self) -> int:
        """Conditioning channels each coupling sees at group rate."""
        if self.family == "waveglow":
            return self.n_mels * self.n_group
        return self.n_mels + (self.pitch_channels if self.pitch_harmonics else 0)

    @property
    def groups_per_frame(self) -> int:
        return self.hop_length // self.n_group

    def remaining_channels(self, step: int) -> int:
        """Channels still in the flow at `step` (after the early outputs before it)."""
        return self.n_group - (step // self.n_early_every) * self.n_early_size

    def dilation(self, layer: int) -> int:
        exponent = layer % self.dilation_cycle if self.dilation_cycle else layer
        return 2 ** exponent

    def receptive_field_groups(self) -> int:
        """One-sided receptive field of all flow steps together, in group-rate positions."""
        per_step = sum((self.kernel_size - 1) // 2 * self.dilation(i) for i in range(self.n_layers))
        # A shifted step moves half a group across each boundary: one more group of reach.
        return per_step * self.n_flows + (self.n_flows // 2 if self.shift_groups else 0)

    def receptive_field_frames(self) -> int:
        """One-sided context (mel frames) that chunked inference must overlap by."""
        frames = -(-self.receptive_field_groups() // self.groups_per_frame)
        if self.family == "waveglow":
            frames += -(-(self.upsample_kernel - self.hop_length) // self.hop_length)
        if self.family == "source-filter":
            # The gain network's kernel, plus one frame for per-sample interpolation.
            frames += GAIN_KERNEL_SIZE // 2 + 1
        return frames

    def updated(self, **changes: Any) -> "FlowConfig":
        return replace(self, **changes)


PRESETS: dict[str, FlowConfig] = {
    "waveglow": FlowConfig(
        family="waveglow", n_group=8, n_flows=12, n_early_every=4, n_early_size=2,
        n_layers=8, n_channels=256, kernel_size=3, dilation_cycle=0,
    ),
    "efficient": FlowConfig(),
    "efficient-small": FlowConfig(n_flows=8, n_channels=96, n_layers=4, dilation_cycle=2),
    # 8 steps, not 12: the source-filter front leaves the flow less to do, and 12 steps run
    # below 50x real time on 2 CPU cores. Symmetric couplings leave no buzz at the group rate,
    # and the voiced mean gives them the voice (docs/SOURCE_FILTER_STUDY.md).
    "source-filter": FlowConfig(family="source-filter", n_flows=8, shift_groups=True, lpc_order=24,
                                pitch_harmonics=2, pitch_predictor="classifier", voiced_harmonics=48,
                                symmetric=True),
}


def preset(name: str) -> FlowConfig:
    """Look up a named preset, with a clear error naming the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None
