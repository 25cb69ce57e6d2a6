"""The training objective as one module: NLL plus optional losses on sampled audio.

Everything that touches parameters happens in `FlowObjective.forward`, so wrapping it in
DistributedDataParallel synchronises the gradients of the reverse pass as well.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from training.config import LossConfig
from vocoder.flow import WaveFlow
from vocoder.mel import MelConfig, MelSpectrogram
from vocoder.pitch import PitchTrack, align_phase


def _full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Spectral losses and the conditioning mel stay in float32 even under autocast."""
    return torch.autocast(device.type, enabled=False)


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence plus log-magnitude L1, averaged over STFT resolutions.

    Input: predicted and target audio `(B, L)`. Output: a scalar.
    """

    def __init__(self, resolutions: list[list[int]]) -> None:
        super().__init__()
        self.resolutions = [tuple(r) for r in resolutions]
        for i, (_, _, win) in enumerate(self.resolutions):
            self.register_buffer(f"window{i}", torch.hann_window(win), persistent=False)

    def forward(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = predicted.new_zeros(())
        for i, (n_fft, hop, win) in enumerate(self.resolutions):
            window = getattr(self, f"window{i}")
            spectra = [torch.stft(x.float(), n_fft, hop, win, window, return_complex=True).abs()
                       for x in (predicted, target)]
            # The floor keeps the log and its gradient finite on digital silence.
            pred, true = (s.clamp(min=1e-7) for s in spectra)
            reference = torch.linalg.norm(true, dim=(1, 2)).clamp(min=1e-7)
            convergence = torch.linalg.norm(true - pred, dim=(1, 2)) / reference
            total = total + convergence.mean() + (pred.log() - true.log()).abs().mean()
        return total / len(self.resolutions)


class FlowObjective(nn.Module):
    """Loss terms of one batch.

    Input: audio `(B, L)` and valid lengths `(B,)` in samples (multiples of n_group); with
    `loss.pitch_phase=aligned`, also the recording's F0 (Hz) and voicing at the mel's frames
    `(B, T)`. Output: dict of scalars: `loss` (what is optimised), `nll` (nats per sample, at the
    training sigma) and, when enabled, `stft` and `mel` (on audio from the reverse pass).
    """

    def __init__(self, flow: WaveFlow, mel_config: MelConfig, config: LossConfig) -> None:
        super().__init__()
        self.flow = flow
        self.mel = MelSpectrogram(mel_config)
        self.config = config
        self.stft = MultiResolutionSTFTLoss(config.stft_resolutions) if config.stft_weight > 0 else None

    @property
    def uses_aux(self) -> bool:
        return self.config.stft_weight > 0 or self.config.mel_weight > 0

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor, f0: torch.Tensor | None = None,
                voicing: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        c = self.config
        with torch.no_grad(), _full_precision(audio.device):
            mel = self.mel(audio)
        full = bool((lengths == audio.shape[1]).all())
        valid = None if full else lengths
        pitch = None if f0 is None else self.recorded_pitch(audio, mel, valid, f0, voicing)
        nll = -self.flow.log_likelihood(audio, mel, c.sigma, valid, pitch).mean()
        terms = {"nll": nll}
        loss = nll
        if self.uses_aux:
            # Latents come from the global RNG on the CPU: its state is checkpointed, and the
            # draw does not depend on the device.
            z = torch.randn(self.flow.latent_shape(mel.shape[0], mel.shape[2])).to(audio.device)
            generated = self.flow.infer(mel, c.aux_sigma, z=z, pitch=pitch)[:, : audio.shape[1]]
            with _full_precision(audio.device):
                generated = generated.float()
                if not full:
                    positions = torch.arange(audio.shape[1], device=audio.device)
                    generated = generated * (positions[None, :] < lengths[:, None]).to(generated.dtype)
                if self.stft is not None:
                    terms["stft"] = self.stft(generated, audio)
                    loss = loss + c.stft_weight * terms["stft"]
                if c.mel_weight > 0:
                    terms["mel"] = (self.mel(generated) - mel).abs().mean()
                    loss = loss + c.mel_weight * terms["mel"]
        terms["loss"] = loss
        return terms

    def recorded_pitch(self, audio: torch.Tensor, mel: torch.Tensor, lengths: torch.Tensor | None,
                       f0: torch.Tensor, voicing: torch.Tensor) -> PitchTrack:
        """The recording's pitch track, its phase aligned to the flow's input: the excitation."""
        hop, sample_rate = self.mel.config.hop_length, self.mel.config.sample_rate
        source_filter = self.flow.source_filter
        assert source_filter is not None, "checked by training.config.check_against_model"
        with torch.no_grad(), _full_precision(audio.device):
            excitation, _ = source_filter.whiten(audio.float(), mel, lengths)
            track = PitchTrack.from_f0(f0[:, : mel.shape[2]], voicing[:, : mel.shape[2]].to(mel.dtype), hop,
                                       sample_rate)
            return align_phase(track, excitation, hop, sample_rate)
