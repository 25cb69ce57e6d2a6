"""The normalizing flow: squeeze, invertible 1x1 convolutions and affine couplings.

`forward` maps audio to the latent `z` with the exact log-determinant; `infer` runs the
inverse pass from Gaussian noise. Shapes: audio `(B, L)`, mel `(B, n_mels, T)`,
latent `(B, n_group, G)` with `G = L / n_group` group-rate positions.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from vocoder.conditioner import GatedConditioner, SymmetricConditioner
from vocoder.config import FlowConfig
from vocoder.errors import MelError, VocoderError
from vocoder.mel import MelConfig
from vocoder.options import SIGMA
from vocoder.pitch import PitchPredictor, PitchTrack, build_pitch_predictor, harmonic_features
from vocoder.source_filter import SourceFilter


class Invertible1x1Conv(nn.Module):
    """Channel mixing `(B, C, G) -> (B, C, G)` by a learned invertible matrix."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        weight = torch.linalg.qr(torch.randn(channels, channels))[0]
        # A meta-device flow (shapes only: vocoder/checkpoint.py checks weights with one) has no sign to fix.
        if not weight.is_meta and torch.det(weight) < 0:
            weight[:, 0] = -weight[:, 0]
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.weight, x)

    def log_abs_det(self) -> torch.Tensor:
        return torch.linalg.slogdet(self.weight)[1]

    def inverse_weight(self) -> torch.Tensor:
        # Inverting in float64 keeps the round trip exact to float32 precision.
        return torch.linalg.inv(self.weight.double()).to(self.weight.dtype)

    def reverse(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(self.inverse_weight().to(x.dtype), x)


def shift_grid(x: torch.Tensor, group_lengths: torch.Tensor | None, inverse: bool = False) -> torch.Tensor:
    """Move the squeeze grid of `(B, C, G)` by half a group: a permutation, so its log-det is 0.

    The channels are read as the samples of an unsqueezed signal, which is rotated by C/2
    (back by C/2 when `inverse`) within each item's valid groups; padding stays in place.
    """
    batch, channels, groups = x.shape
    offset = -(channels // 2) if inverse else channels // 2
    flat = x.transpose(1, 2).reshape(batch, groups * channels)
    if group_lengths is None:
        flat = torch.roll(flat, offset, dims=1)
    else:
        positions = torch.arange(groups * channels, device=x.device)[None]
        valid = (group_lengths.to(x.device) * channels).clamp(1, groups * channels)[:, None]
        source = torch.where(positions < valid, torch.remainder(positions - offset, valid), positions)
        flat = torch.gather(flat, 1, source.expand(batch, -1))
    return flat.reshape(batch, groups, channels).transpose(1, 2)


def _without_first_column(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The mask of a shifted step: group 0 holds the two half groups at the ends of the
    signal, which that step passes through untouched, so no step reaches round the ends."""
    if mask is None:
        mask = like.new_ones(like.shape[0], 1, like.shape[2])
    return torch.cat([torch.zeros_like(mask[:, :, :1]), mask[:, :, 1:]], dim=2)


def length_mask(lengths: torch.Tensor | None, size: int, like: torch.Tensor) -> torch.Tensor | None:
    """`(B, 1, size)` mask of valid positions, or None when every item is full length."""
    if lengths is None:
        return None
    positions = torch.arange(size, device=like.device)
    return (positions[None, :] < lengths.to(like.device)[:, None]).to(like.dtype).unsqueeze(1)


def sample_mask(lengths: torch.Tensor | None, size: int, like: torch.Tensor) -> torch.Tensor | None:
    """`(B, size)` mask of valid samples, or None when every item is full length."""
    mask = length_mask(lengths, size, like)
    return None if mask is None else mask.squeeze(1)


class WaveFlow(nn.Module):
    """WaveGlow-style flow for every family; parameter names follow NVIDIA's WaveGlow.

    The source-filter family needs the mel front-end's config (`mel_config`) to invert the mel.
    """

    def __init__(self, config: FlowConfig, mel_config: MelConfig | None = None) -> None:
        super().__init__()
        self.config = config
        mel_config = mel_config or MelConfig(n_mels=config.n_mels, hop_length=config.hop_length)
        self.sample_rate = mel_config.sample_rate
        self.source_filter: SourceFilter | None = None
        if config.family == "source-filter":
            self.source_filter = SourceFilter(config.lpc_order, config.gain_channels, mel_config,
                                              config.voiced_harmonics)
        if config.family == "waveglow":
            self.upsample = nn.ConvTranspose1d(config.n_mels, config.n_mels, config.upsample_kernel,
                                               stride=config.hop_length)
        self.pitch: PitchPredictor | None = None
        if config.pitch_harmonics:
            self.pitch = build_pitch_predictor(config.pitch_predictor, mel_config)
            self.pitch_proj = nn.Conv1d(2 * config.pitch_harmonics * config.n_group, config.pitch_channels, 1)
        cond_channels = config.cond_channels
        self.convinv = nn.ModuleList()
        self.WN = nn.ModuleList()
        for step in range(config.n_flows):
            channels = config.remaining_channels(step)
            self.convinv.append(Invertible1x1Conv(channels))
            conditioner = SymmetricConditioner if config.symmetric else GatedConditioner
            self.WN.append(conditioner(channels // 2, cond_channels, config))

    # -- shapes ---------------------------------------------------------------------------
    def squeeze(self, audio: torch.Tensor) -> torch.Tensor:
        """`(B, L)` audio to `(B, n_group, L / n_group)`."""
        batch, samples = audio.shape
        n_group = self.config.n_group
        if samples % n_group:
            raise VocoderError(f"audio length {samples} is not a multiple of n_group {n_group}")
        return audio.reshape(batch, samples // n_group, n_group).transpose(1, 2)

    @staticmethod
    def unsqueeze(x: torch.Tensor) -> torch.Tensor:
        """`(B, n_group, G)` back to `(B, G * n_group)` audio."""
        return x.transpose(1, 2).reshape(x.shape[0], -1)

    def condition(self, mel: torch.Tensor, groups: int, frame_lengths: torch.Tensor | None = None,
                  pitch: PitchTrack | None = None) -> torch.Tensor:
        """Mel `(B, n_mels, T)` to conditioning `(B, C_cond, groups)` at group rate.

        With pitch conditioning, `pitch` is the mel's pitch track (computed here when not given;
        `frame_lengths` marks a padded batch's valid frames for it).
        """
        c = self.config
        if mel.shape[1] != c.n_mels:
            raise MelError(f"mel has {mel.shape[1]} bands, model expects {c.n_mels}")
        if mel.shape[2] * c.groups_per_frame < groups:
            raise MelError(f"mel of {mel.shape[2]} frames is too short for {groups * c.n_group} samples")
        if c.family != "waveglow":
            cond = mel.repeat_interleave(c.groups_per_frame, dim=2)[:, :, :groups]
            if self.pitch is None:
                return cond
            if pitch is None:
                pitch = self.pitch.track(mel, c.hop_length, self.sample_rate, frame_lengths)
            features = harmonic_features(pitch, c.pitch_harmonics, c.hop_length, self.sample_rate, 0,
                                         groups * c.n_group).to(cond.dtype)
            batch, channels = features.shape[:2]
            squeezed = (features.view(batch, channels, groups, c.n_group).transpose(2, 3)
                        .reshape(batch, channels * c.n_group, groups))
            return torch.cat([cond, self.pitch_proj(squeezed)], dim=1)
        return self.upsample_unfolded(mel, groups)

    def upsample_unfolded(self, mel: torch.Tensor, groups: int) -> torch.Tensor:
        """The waveglow family's conditioning: the mel upsampled to audio rate and unfolded into
        `(B, n_mels * n_group, groups)`."""
        c = self.config
        upsampled = self.upsample(mel)[:, :, : groups * c.n_group]
        batch = upsampled.shape[0]
        # Channel order (band, position within group) matches NVIDIA's unfold.
        return (upsampled.reshape(batch, c.n_mels, groups, c.n_group)
                .permute(0, 1, 3, 2).reshape(batch, c.n_mels * c.n_group, groups))

    def _early_slice(self, step: int) -> slice:
        index = step // self.config.n_early_every - 1
        size = self.config.n_early_size
        return slice(index * size, (index + 1) * size)

    def _is_shifted_step(self, step: int) -> bool:
        return self.config.shift_groups and step % 2 == 1

    def _is_early_step(self, step: int) -> bool:
        return step > 0 and step % self.config.n_early_every == 0

    # -- density ----------------------------------------------------------------------------
    def forward(self, audio: torch.Tensor, mel: torch.Tensor, lengths: torch.Tensor | None = None,
                pitch: PitchTrack | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio `(B, L)` and mel `(B, n_mels, T)` to latent `(B, n_group, G)` and log|det J| `(B,)`.

        `lengths` (samples, multiples of n_group) marks valid audio in a padded batch. `pitch`
        replaces the mel's own pitch track (training conditions on the recording's; see
        `training.losses.FlowObjective`).
        """
        c = self.config
        log_det = torch.zeros(audio.shape[0], dtype=audio.dtype, device=audio.device)
        frame_lengths = None if lengths is None else -torch.div(-lengths, c.hop_length, rounding_mode="floor")
        if self.pitch is not None and pitch is None:
            pitch = self.pitch.track(mel, c.hop_length, self.sample_rate, frame_lengths)
        if self.source_filter is not None:
            audio, log_det = self.source_filter.whiten(audio, mel, lengths, pitch)
        x = self.squeeze(audio)
        groups = x.shape[2]
        group_lengths = None if lengths is None else torch.div(lengths, c.n_group, rounding_mode="floor")
        mask = length_mask(group_lengths, groups, x)
        valid = (torch.full((x.shape[0],), groups, device=x.device) if group_lengths is None
                 else group_lengths.to(x.device)).to(x.dtype)
        cond = self.condition(mel, groups, frame_lengths, pitch)
        if mask is not None:
            x = x * mask
        early: list[torch.Tensor] = []
        for step in range(c.n_flows):
            if self._is_early_step(step):
                early.append(x[:, : c.n_early_size])
                x = x[:, c.n_early_size:]
            shifted = self._is_shifted_step(step)
            step_mask, transformed = mask, valid
            if shifted:
                x = shift_grid(x, group_lengths)
                held, step_mask, transformed = x[:, :, :1], _without_first_column(mask, x), valid - 1
            x = self.convinv[step](x)
            if shifted:
                x = torch.cat([held, x[:, :, 1:]], dim=2)
            log_det = log_det + transformed * self.convinv[step].log_abs_det()
            half = x.shape[1] // 2
            x_a, x_b = x[:, :half], x[:, half:]
            out = self.WN[step](x_a, cond, step_mask)
            shift, log_scale = out[:, :half], out[:, half:]
            if step_mask is not None:
                log_scale = log_scale * step_mask
                shift = shift * step_mask
            x = torch.cat([x_a, torch.exp(log_scale) * x_b + shift], dim=1)
            log_det = log_det + log_scale.sum(dim=(1, 2))
            if shifted:
                x = shift_grid(x, group_lengths, inverse=True)
        z = torch.cat(early + [x], dim=1)
        return z, log_det

    def log_likelihood(self, audio: torch.Tensor, mel: torch.Tensor, sigma: float = 1.0,
                       lengths: torch.Tensor | None = None, pitch: PitchTrack | None = None) -> torch.Tensor:
        """log p(audio | mel) per item `(B,)` in nats per audio sample, under N(0, sigma^2) latents
        (given `pitch` in place of the mel's own track, when passed)."""
        z, log_det = self.forward(audio, mel, lengths, pitch)
        samples = (torch.full((audio.shape[0],), audio.shape[1], device=z.device) if lengths is None
                   else lengths.to(z.device)).to(z.dtype)
        prior = -0.5 * (z * z).sum(dim=(1, 2)) / sigma**2 - 0.5 * samples * math.log(2 * math.pi * sigma**2)
        return (prior + log_det) / samples

    # -- sampling ---------------------------------------------------------------------------
    def latent_shape(self, batch: int, frames: int) -> tuple[int, int, int]:
        return batch, self.config.n_group, frames * self.config.groups_per_frame

    def infer(self, mel: torch.Tensor, sigma: float = SIGMA.default, lengths: torch.Tensor | None = None,
              z: torch.Tensor | None = None, generator: torch.Generator | None = None,
              pitch: PitchTrack | None = None) -> torch.Tensor:
        """Mel `(B, n_mels, T)` to audio `(B, T * hop)` by the inverse pass from `sigma * z`.

        `lengths` (frames) marks valid mel frames; the audio beyond each length is silence.
        `z` (standard normal, `(B, n_group, T * hop / n_group)`) is drawn when not given. `pitch`
        replaces the mel's own pitch track.
        """
        if self.pitch is not None and pitch is None:
            pitch = self.pitch.track(mel, self.config.hop_length, self.sample_rate, lengths)
        x = self.infer_flow(mel, sigma, lengths, z, generator, pitch)
        if self.source_filter is None:
            return x
        audio, _ = self.source_filter.colour(x, self.source_filter.frame_filter(mel, lengths), pitch=pitch)
        mask = sample_mask(None if lengths is None else lengths * self.config.hop_length, audio.shape[1], audio)
        return audio if mask is None else audio * mask

    def infer_flow(self, mel: torch.Tensor, sigma: float = SIGMA.default, lengths: torch.Tensor | None = None,
                   z: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   pitch: PitchTrack | None = None) -> torch.Tensor:
        """`infer` up to the flow's output `(B, T * hop)`: the audio, or for the source-filter
        family the excitation that `SourceFilter.colour` turns into audio. A chunk of a longer
        signal passes its frames of the whole signal's `pitch` track."""
        c = self.config
        shape = self.latent_shape(mel.shape[0], mel.shape[2])
        if z is None:
            z = torch.randn(shape, generator=generator, dtype=torch.float32).to(mel.device)
        elif tuple(z.shape) != shape:
            raise VocoderError(f"latent has shape {tuple(z.shape)}, expected {shape} for this mel")
        z = z.to(device=mel.device, dtype=mel.dtype)
        groups = shape[2]
        group_lengths = None if lengths is None else lengths * c.groups_per_frame
        mask = length_mask(group_lengths, groups, mel)
        cond = self.condition(mel, groups, lengths, pitch)
        n_early_total = c.n_group - c.remaining_channels(c.n_flows - 1)
        x = sigma * z[:, n_early_total:]
        for step in reversed(range(c.n_flows)):
            shifted = self._is_shifted_step(step)
            step_mask = mask
            if shifted:
                x = shift_grid(x, group_lengths)
                step_mask = _without_first_column(mask, x)
            half = x.shape[1] // 2
            x_a, x_b = x[:, :half], x[:, half:]
            out = self.WN[step](x_a, cond, step_mask)
            shift, log_scale = out[:, :half], out[:, half:]
            if shifted:
                shift, log_scale = shift * step_mask, log_scale * step_mask
            x = torch.cat([x_a, (x_b - shift) * torch.exp(-log_scale)], dim=1)
            if shifted:
                x = torch.cat([x[:, :, :1], self.convinv[step].reverse(x[:, :, 1:])], dim=2)
                x = shift_grid(x, group_lengths, inverse=True)
            else:
                x = self.convinv[step].reverse(x)
            if self._is_early_step(step):
                x = torch.cat([sigma * z[:, self._early_slice(step)], x], dim=1)
        if mask is not None:
            x = x * mask
        return self.unsqueeze(x)

    # -- weight normalisation ---------------------------------------------------------------
    def apply_weight_norm(self) -> None:
        """Reparametrise conditioner convolutions for training (NVIDIA's setting)."""
        for conditioner in self.WN:
            for conv in conditioner.weight_normed_convs():
                if not parametrize.is_parametrized(conv, "weight"):
                    parametrizations.weight_norm(conv, name="weight")

    def plain_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict (parameters and persistent buffers) with any weight normalisation folded,
        without changing this module."""
        state = {}
        for name, module in self.named_modules():
            persistent_buffers = [(key, buffer) for key, buffer in module.named_buffers(recurse=False)
                                  if key not in module._non_persistent_buffers_set]
            for key, tensor in [*module.named_parameters(recurse=False), *persistent_buffers]:
                state[f"{name}.{key}" if name else key] = tensor.detach()
            if parametrize.is_parametrized(module, "weight"):
                state[f"{name}.weight"] = module.weight.detach()
        return {key: value.clone() for key, value in state.items() if ".parametrizations." not in f".{key}"
                and not key.startswith("parametrizations.")}
