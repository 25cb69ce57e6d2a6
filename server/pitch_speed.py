"""The service's pitch and speed edits: in the mel domain on a mel about to be batched
(/v1/vocode, /v1/tts), and exactly through the flow's latent on an uploaded recording (/v1/edit).
"""
from __future__ import annotations

import numpy as np
import torch

from server.options import RequestOptions
from server.schemas import MelLimits
from vocoder import latents
from vocoder.inference import Vocoder
from vocoder.mel import MelConfig
from vocoder.mel_transform import frame_map, shift_pitch


def speed_source(frames: int, speed: float, hop_length: int, limits: MelLimits, subject: str,
                 code: str = "mel") -> np.ndarray:
    """The source frame of each output frame at `speed` (`frame_map`, as the latent edit uses);
    the output must fit the service's frame limits."""
    source, _ = frame_map(frames, frames * hop_length, speed, hop_length)
    limits.check_frames(len(source), f"{subject} at speed {speed:g}", "speed", code)
    return source


def edit_mel(mel: np.ndarray, pitch: float, speed: float, config: MelConfig, limits: MelLimits) -> np.ndarray:
    """`mel (n_mels, T)` shifted by `pitch` semitones and played `speed` times faster: the mel
    that `latents.from_mel -> pitch -> speed` would decode. The noise is left to the batch worker,
    which draws it for the new length from the request's seed, so edited requests still batch
    and the same seed still gives the same audio."""
    source = speed_source(mel.shape[1], speed, config.hop_length, limits, "the mel")
    # shift_pitch edits every frame alone: shift each source frame once, then repeat or drop.
    kept, order = np.unique(source, return_inverse=True)
    mel = mel[:, kept]
    if pitch:
        mel = shift_pitch(mel, pitch, config)
    return np.ascontiguousarray(mel[:, order], dtype=np.float32)


@torch.inference_mode()
def edit_audio(model: Vocoder, audio: np.ndarray, options: RequestOptions) -> np.ndarray:
    """Mono audio at the model's rate, encoded exactly, optionally given fresh noise, then pitch-
    and speed-edited and decoded (`vocoder edit`'s steps); runs on the device thread."""
    latent = latents.encode(model, audio)
    if options.redraw:
        latent = latents.redraw(latent, options.sigma, options.seed)
    return latents.edit_and_decode(model, latent, options.pitch, options.speed, options.denoise)
