"""The flow's latents: encode audio exactly into them, change their pitch, speed or
temperature, blend two latents, and decode back to audio. The mel-domain signal processing
lives in `vocoder.mel_transform`; this module keeps the flow latent `z` consistent with it."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from vocoder.errors import AudioError
from vocoder.inference import Vocoder, as_audio_tensor, standard_noise, temper
from vocoder.mel import MelConfig
from vocoder.mel_transform import EditError, check_pitch, check_speed, frame_map, shift_pitch
from vocoder.options import SIGMA

__all__ = ["EditError", "Latent", "decode", "encode", "from_mel", "interpolate", "pitch", "redraw", "speed"]


@dataclass(frozen=True)
class Latent:
    """One clip as the flow sees it: conditioning mel, flow latent and length.

    - `mel`: log-mel `(1, n_mels, T)` in the convention of `config`.
    - `z`: `(1, n_group, T * groups_per_frame)` in the flow's own latent space, where the
      prior is N(0, 1). `decode` inverts it at sigma 1, so an encoded clip comes back
      exactly; a drawn latent holds `sigma * N(0, 1)`, its temperature baked in.
      Column block `[t * groups_per_frame, (t + 1) * groups_per_frame)` belongs to frame t.
    - `length`: the samples `decode` returns, at most `T * hop`.
    - `encoded`: `z` is a recording's own latent (from `encode`), not drawn noise.
    All tensors are float32 on the CPU.
    """

    mel: torch.Tensor
    z: torch.Tensor
    length: int
    config: MelConfig
    encoded: bool = False

    def __post_init__(self) -> None:
        if self.mel.dim() != 3 or self.mel.shape[0] != 1 or self.mel.shape[1] != self.config.n_mels:
            raise EditError(f"latent mel must have shape (1, {self.config.n_mels}, T), got {tuple(self.mel.shape)}")
        frames = self.mel.shape[2]
        if self.z.dim() != 3 or self.z.shape[0] != 1 or not self.z.shape[2] or self.z.shape[2] % frames:
            raise EditError(f"latent z of shape {tuple(self.z.shape)} does not fit a mel of {frames} frames")
        if not 0 < self.length <= frames * self.config.hop_length:
            raise EditError(f"latent length {self.length} is outside 1-{frames * self.config.hop_length} samples")

    @property
    def frames(self) -> int:
        return self.mel.shape[2]

    @property
    def groups_per_frame(self) -> int:
        return self.z.shape[2] // self.frames


# The temperature of the noise that replaces a recording's latent when a pitch-conditioned
# model edits it (the default temperature of synthesis).
EDIT_SIGMA = SIGMA.default


def _noise(shape: torch.Size | tuple[int, ...], sigma: float, seed: int | None) -> torch.Tensor:
    # The same noise as Vocoder.sample_latent, tempered as the batch and stream paths temper it.
    return temper(standard_noise(shape, seed), SIGMA.check(sigma, error=EditError))


@torch.inference_mode()
def encode(model: Vocoder, audio: np.ndarray | torch.Tensor) -> Latent:
    """Mono audio `(L,)` to its exact latent: the model's mel `(1, n_mels, L // hop + 1)` and
    the flow's forward pass of the audio, zero-padded to `T * hop` samples.

    Runs in float32 in one pass (no chunks, no autocast): memory grows with the clip.
    """
    audio = as_audio_tensor(audio)
    if audio.shape[0] != 1:
        raise EditError(f"encode takes one mono clip (L,), got a batch of {audio.shape[0]}")
    length = audio.shape[1]
    config = model.mel.config
    if length < config.min_samples:
        raise AudioError(f"audio too short to encode: {length} samples, need at least {config.min_samples}")
    if not torch.isfinite(audio).all():
        raise AudioError("audio contains NaN or infinite samples")
    mel = model.mel_spectrogram(audio)
    padded = F.pad(audio, (0, mel.shape[2] * config.hop_length - length)).to(model.device)
    z, _ = model.fused(padded, mel)
    return Latent(mel.float().cpu(), z.float().cpu(), length, config, encoded=True)


def from_mel(model: Vocoder, mel: np.ndarray | torch.Tensor, sigma: float = SIGMA.default,
             seed: int | None = None) -> Latent:
    """A latent for a log-mel `(n_mels, T)` or `(1, n_mels, T)` with noise drawn at temperature
    `sigma`; it decodes to `T * hop` samples, as `Vocoder.infer` would with the same seed."""
    mel = model.check_mel(torch.as_tensor(np.asarray(mel) if not torch.is_tensor(mel) else mel))
    if mel.shape[0] != 1:
        raise EditError(f"from_mel takes one mel (n_mels, T), got a batch of {mel.shape[0]}")
    z = _noise(model.flow.latent_shape(1, mel.shape[2]), sigma, seed)
    return Latent(mel.cpu(), z, mel.shape[2] * model.hop_length, model.mel.config)


def redraw(latent: Latent, sigma: float = SIGMA.default, seed: int | None = None) -> Latent:
    """The same mel and length with fresh noise at temperature `sigma` in place of `z`."""
    return Latent(latent.mel, _noise(latent.z.shape, sigma, seed), latent.length, latent.config)


@torch.inference_mode()
def decode(model: Vocoder, latent: Latent) -> np.ndarray:
    """Float32 audio `(latent.length,)` from the inverse pass at sigma 1 (the temperature is in `z`).

    Like `encode`, one float32 pass, so `decode(model, encode(model, x))` is `x` to float precision.
    """
    if latent.config != model.mel.config:
        raise EditError("latent was made with a different mel config than this model's")
    expected = model.flow.latent_shape(1, latent.frames)
    if tuple(latent.z.shape) != expected:
        raise EditError(f"latent z has shape {tuple(latent.z.shape)}, this model needs {expected}")
    audio = model.fused.infer(latent.mel.to(model.device), sigma=1.0, z=latent.z.to(model.device))
    return audio[0, :latent.length].float().cpu().numpy()


def speed(latent: Latent, rate: float) -> Latent:
    """Play `rate` (0.25-4) times faster at the same pitch: `length / rate` samples.

    Mel frames are repeated or dropped by `mel_transform.frame_map`, and each output frame takes
    its source frame's whole block of `z` columns with it. Blending z columns would shrink
    their variance below the N(0, 1) prior; copies keep every column a prior sample and
    keep the encoded detail of the frame it came from.
    """
    check_speed(rate)
    source, length = frame_map(latent.frames, latent.length, rate, latent.config.hop_length)
    per_frame = latent.groups_per_frame
    columns = (torch.from_numpy(source)[:, None] * per_frame + torch.arange(per_frame)).reshape(-1)
    return Latent(latent.mel[:, :, torch.from_numpy(source)], latent.z[:, :, columns], length, latent.config,
                  latent.encoded)


def pitch(latent: Latent, semitones: float) -> Latent:
    """Shift the pitch by `semitones` (-12 to +12) keeping formants and duration.

    The mel is edited by `mel_transform.shift_pitch`; `z` is kept. In a trained flow `z` is
    whitened, nearly independent of the mel, so it stays a valid prior sample under the new
    mel while carrying what the mel does not (noise floor, breath, phase): an encoded clip
    shifted by 0 decodes to itself. `redraw` replaces it when fresh noise is wanted.
    """
    check_pitch(semitones)
    mel = shift_pitch(latent.mel[0].numpy(), semitones, latent.config)
    return Latent(torch.from_numpy(mel)[None], latent.z, latent.length, latent.config, latent.encoded)


def edit_and_decode(model: Vocoder, latent: Latent, semitones: float = 0.0, rate: float = 1.0,
                    denoise: float = 0.0) -> np.ndarray:
    """Pitch shift, then speed change, then decode (and optionally denoise): the steps that
    `vocoder edit` and the service's /v1/edit share. Returns float32 audio `(L,)`.

    A pitch-conditioned model (the source-filter family) builds its voiced excitation from
    the mel's F0, but a recording's own latent still carries that recording's glottal pulses,
    at their old rate and times: an edit of such a latent redraws z (σ `EDIT_SIGMA`, seed 0).
    """
    if model.flow.pitch is not None and latent.encoded and (semitones or rate != 1.0):
        latent = redraw(latent, EDIT_SIGMA, seed=0)
    if semitones:  # a 0 st shift returns the mel unchanged; skip its cost
        latent = pitch(latent, semitones)
    audio = decode(model, speed(latent, rate))
    if denoise > 0:
        with torch.inference_mode():
            audio = model.denoiser()(torch.from_numpy(audio)[None].to(model.device), denoise)[0].cpu().numpy()
    return audio


def interpolate(a: Latent, b: Latent, t: float) -> Latent:
    """Blend two latents of the same frame count: `t` = 0 gives `a`, 1 gives `b`.

    The log-mels mix linearly. The noise mixes as `cos(pi t / 2) a.z + sin(pi t / 2) b.z`,
    which keeps the variance of independent N(0, sigma^2) latents (a linear mix would
    dip to half of it at t = 0.5); identical noise is kept as it is.
    """
    if not 0.0 <= t <= 1.0:
        raise EditError(f"interpolation weight t must be within 0-1, got {t}")
    if a.config != b.config:
        raise EditError("cannot interpolate latents made with different mel configs")
    if a.z.shape != b.z.shape:
        raise EditError(f"interpolation needs latents of the same length: {a.frames} and {b.frames} frames "
                        f"(use speed() to match them)")
    mel = (1.0 - t) * a.mel + t * b.mel
    if torch.equal(a.z, b.z):
        z = a.z
    else:
        angle = 0.5 * math.pi * t
        z = math.cos(angle) * a.z + math.sin(angle) * b.z
    length = round((1.0 - t) * a.length + t * b.length)
    return Latent(mel, z, length, a.config)
