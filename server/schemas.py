"""What responses look like: the pydantic models behind the OpenAPI document (the request
options' models are derived in server/options.py), and the limits a mel must meet.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from server.errors import APIError
from server.options import Limits
from vocoder.inference import mel_range_message
from vocoder.mel import MelConfig
from vocoder.options import SIGMA

# A small valid 80-band mel (8 frames, loud low bands fading to quiet high ones) for the docs.
EXAMPLE_MEL = [[round(-4.0 - 5.0 * band / 79, 2)] * 8 for band in range(80)]
EXAMPLE_REQUEST = {"mel": EXAMPLE_MEL, "sigma": SIGMA.default, "seed": 1234, "format": "wav"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class FlowSummary(BaseModel):
    family: str
    n_group: int
    n_flows: int
    n_layers: int
    n_channels: int
    parameters: int
    receptive_field_frames: int


class TextFrontendInfo(BaseModel):
    name: str = Field(description='"flow-tts" (trained) or "espeak-ng-fallback" (not a trained model)')
    description: str
    trained: bool


class ModelInfo(BaseModel):
    """GET /v1/models. New capabilities are added as optional fields."""

    checkpoint: str = Field(description='checkpoint directory, "bundled" or "random-init"')
    device: str
    sample_rate: int
    hop_length: int
    mel: dict[str, Any] = Field(description="the mel front-end config a client's mels must match")
    flow: FlowSummary
    limits: Limits
    text_frontend: TextFrontendInfo | None = Field(
        None, description="the text-to-mel front-end of /v1/tts and /v1/audio/speech; null while unavailable")


class Status(BaseModel):
    status: str


@dataclass(frozen=True)
class MelLimits:
    """What a request's mel must satisfy for the loaded model and these settings."""

    n_mels: int
    min_frames: int
    max_frames: int
    seconds_per_frame: float
    mel_config: MelConfig

    def check_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(bands, frames) of a mel shaped [n_mels, T] or [1, n_mels, T], or the matching 4xx."""
        if len(shape) == 3:
            if shape[0] != 1:
                raise APIError(422, f"send one mel per request; got a batch of {shape[0]}",
                               code="invalid_mel_shape", param="mel")
            shape = shape[1:]
        if len(shape) != 2:
            raise APIError(422, f"mel must have shape [n_mels, T] or [1, n_mels, T], got {list(shape)}",
                           code="invalid_mel_shape", param="mel")
        bands, frames = shape
        if bands != self.n_mels:
            raise APIError(422, f"mel has {bands} bands, the model expects {self.n_mels}",
                           code="wrong_mel_bands", param="mel")
        self.check_frames(frames)
        return bands, frames

    def check_frames(self, frames: int, subject: str = "mel", param: str = "mel", code: str = "mel") -> None:
        """A 422 `{code}_too_short` or a 413 `{code}_too_long` unless `frames` is within the limits;
        `subject` names what has that many frames (a mel, an edit's output, uploaded audio)."""
        if frames < self.min_frames:
            raise APIError(422, f"{subject} has {frames} frames, at least {self.min_frames} are needed",
                           code=f"{code}_too_short", param=param)
        if frames > self.max_frames:
            raise self.too_long(frames, subject, param, code)

    def too_long(self, frames: int, subject: str = "mel", param: str = "mel", code: str = "mel",
                 estimated: bool = False) -> APIError:
        """The 413 `{code}_too_long` for `frames` over the limit; `estimated`: `frames` is an
        estimate or a lower bound, made without building all of the mel."""
        amount = f"an estimated {frames} or more" if estimated else str(frames)
        return APIError(413, f"{subject} has {amount} frames ({frames * self.seconds_per_frame:.1f} s); the limit "
                             f"is {self.max_frames} ({self.max_frames * self.seconds_per_frame:.1f} s)",
                        code=f"{code}_too_long", param=param)

    def check(self, mel: np.ndarray) -> np.ndarray:
        """A checked float32 mel `(n_mels, T)`."""
        self.check_shape(mel.shape)
        mel = np.ascontiguousarray(mel.reshape(mel.shape[-2:]), dtype=np.float32)
        if not np.isfinite(mel).all():
            raise APIError(422, "mel contains NaN or infinite values", code="non_finite_mel", param="mel")
        low, high = self.mel_config.value_range
        smallest, largest = float(mel.min()), float(mel.max())
        if smallest < low or largest > high:
            raise APIError(422, mel_range_message(smallest, largest, self.mel_config), code="mel_out_of_range",
                           param="mel")
        return mel
