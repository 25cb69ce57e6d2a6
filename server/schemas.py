"""What requests and responses look like: the pydantic models behind the OpenAPI document, the
parameter bounds (one definition each, shared by every endpoint), and the limits a mel must meet.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any

import numpy as np
from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from server.errors import APIError
from server.formats import SAMPLE_RATE_RANGE
from vocoder.inference import MAX_SEED, mel_range_message
from vocoder.mel import MelConfig
from vocoder.mel_transform import PITCH_RANGE, SPEED_RANGE

SIGMA_RANGE = (0.0, 1.5)
DEFAULT_SIGMA = 0.6
DENOISE_RANGE = (0.0, 1.0)
NOISE_SCALE_RANGE = (0.0, 2.0)
DEFAULT_NOISE_SCALE = 0.667

# A small valid 80-band mel (8 frames, loud low bands fading to quiet high ones) for the docs.
EXAMPLE_MEL = [[round(-4.0 - 5.0 * band / 79, 2)] * 8 for band in range(80)]
EXAMPLE_REQUEST = {"mel": EXAMPLE_MEL, "sigma": 0.6, "seed": 1234, "format": "wav"}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


PITCH_HELP = "pitch shift in semitones; formants and duration kept"
SPEED_HELP = "tempo factor (2: twice as fast), pitch kept"
SEED_HELP = "same request + same seed = same audio"
SAMPLE_RATE_HELP = "resample the output to this rate"


class VocodeRequest(BaseModel):
    """JSON body of POST /v1/vocode. Parameters left out here fall back to the query string."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_REQUEST]})

    mel: list[list[float]] = Field(description="log-mel, n_mels rows of T frames, in the model's convention")
    sigma: float | None = Field(None, ge=SIGMA_RANGE[0], le=SIGMA_RANGE[1], description="latent temperature")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description=SEED_HELP)
    denoise: float | None = Field(None, ge=DENOISE_RANGE[0], le=DENOISE_RANGE[1], description="denoiser strength")
    format: str | None = Field(None, description="output audio format")
    sample_rate: int | None = Field(None, ge=SAMPLE_RATE_RANGE[0], le=SAMPLE_RATE_RANGE[1],
                                    description=SAMPLE_RATE_HELP)
    stream: bool | None = Field(None, description="send audio in chunks as it is generated (wav or pcm)")
    pitch: float | None = Field(None, ge=PITCH_RANGE[0], le=PITCH_RANGE[1], description=PITCH_HELP)
    speed: float | None = Field(None, ge=SPEED_RANGE[0], le=SPEED_RANGE[1], description=SPEED_HELP)


@dataclass(frozen=True)
class VocodeOptions:
    """Synthesis parameters of one request, after merging query string and JSON body."""

    sigma: float = DEFAULT_SIGMA
    seed: int | None = None
    denoise: float = 0.0
    format: str = "wav"
    sample_rate: int | None = None
    stream: bool = False
    pitch: float = 0.0
    speed: float = 1.0

    def merged(self, body: VocodeRequest) -> "VocodeOptions":
        """These options with every parameter the JSON body sets taking precedence."""
        given = body.model_dump(exclude={"mel"}, exclude_none=True)
        return replace(self, **given)


# Query parameters, each defined once for every endpoint that takes it.
SeedQuery = Annotated[int | None, Query(ge=0, le=MAX_SEED, description=SEED_HELP)]
DenoiseQuery = Annotated[float, Query(ge=DENOISE_RANGE[0], le=DENOISE_RANGE[1], description="denoiser strength")]
FormatQuery = Annotated[str, Query(description="output format: wav, flac, pcm (s16le), opus, mp3; "
                                               "GET /v1/models lists those available")]
SampleRateQuery = Annotated[int | None, Query(ge=SAMPLE_RATE_RANGE[0], le=SAMPLE_RATE_RANGE[1],
                                              description=SAMPLE_RATE_HELP)]
PitchQuery = Annotated[float, Query(ge=PITCH_RANGE[0], le=PITCH_RANGE[1], description=PITCH_HELP)]
SpeedQuery = Annotated[float, Query(ge=SPEED_RANGE[0], le=SPEED_RANGE[1], description=SPEED_HELP)]


def vocode_query(
    sigma: Annotated[float, Query(ge=SIGMA_RANGE[0], le=SIGMA_RANGE[1], description="latent temperature")]
    = DEFAULT_SIGMA,
    seed: SeedQuery = None,
    denoise: DenoiseQuery = 0.0,
    format: FormatQuery = "wav",
    sample_rate: SampleRateQuery = None,
    stream: Annotated[bool, Query(description="send audio in chunks as it is generated (wav or pcm)")] = False,
    pitch: PitchQuery = 0.0,
    speed: SpeedQuery = 1.0,
) -> VocodeOptions:
    """Parameters from the query string (used for every body type; a JSON body may override them)."""
    return VocodeOptions(sigma=sigma, seed=seed, denoise=denoise, format=format, sample_rate=sample_rate,
                         stream=stream, pitch=pitch, speed=speed)


@dataclass(frozen=True)
class EditOptions:
    """Parameters of POST /v1/edit. The recording's own latent is kept unless `redraw`, which
    replaces it with noise at temperature `sigma` drawn from `seed`."""

    pitch: float = 0.0
    speed: float = 1.0
    redraw: bool = False
    sigma: float = DEFAULT_SIGMA
    seed: int | None = None
    denoise: float = 0.0
    format: str = "wav"
    sample_rate: int | None = None


def edit_query(
    pitch: PitchQuery = 0.0,
    speed: SpeedQuery = 1.0,
    redraw: Annotated[bool, Query(description="replace the recording's latent with fresh noise")] = False,
    sigma: Annotated[float, Query(ge=SIGMA_RANGE[0], le=SIGMA_RANGE[1],
                                  description="temperature of the redrawn noise (with redraw=true)")] = DEFAULT_SIGMA,
    seed: Annotated[int | None, Query(ge=0, le=MAX_SEED, description="seed of the redrawn noise (with redraw=true)")]
    = None,
    denoise: DenoiseQuery = 0.0,
    format: FormatQuery = "wav",
    sample_rate: SampleRateQuery = None,
) -> EditOptions:
    """POST /v1/edit's parameters, all in the query string (the body is the audio)."""
    return EditOptions(pitch=pitch, speed=speed, redraw=redraw, sigma=sigma, seed=seed, denoise=denoise,
                       format=format, sample_rate=sample_rate)


class Range(BaseModel):
    min: int | float
    max: int | float
    default: int | float | None = None


class Limits(BaseModel):
    min_frames: int
    max_frames: int
    max_seconds: float
    max_batch: int
    max_body_bytes: int
    queue_size: int
    request_timeout: float
    sigma: Range
    denoise: Range
    sample_rate: Range
    pitch: Range
    speed: Range
    noise_scale: Range
    max_text_chars: int
    formats: list[str]
    stream_formats: list[str]


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
