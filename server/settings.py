"""Service configuration: every setting is a `VOCODER_*` environment variable (pydantic-settings);
`vocoder serve` options override the environment.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# 60 s of audio at the standard 22050 Hz / hop 256 front-end.
DEFAULT_MAX_FRAMES = 5168


class Settings(BaseSettings):
    """Limits and knobs of one service process; see docs/SERVICE.md for each."""

    model_config = SettingsConfigDict(env_prefix="VOCODER_", env_ignore_empty=True, frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    checkpoint: Path | None = Field(None, description="checkpoint directory; unset: the bundled model")
    tts_checkpoint: Path | None = Field(
        None, description="text-to-mel checkpoint directory; unset: the bundled one, else the espeak-ng fallback")
    max_text_chars: int = Field(4096, ge=1, description="longest text accepted by the text endpoints")
    device: str = Field("auto", description="cpu, cuda, cuda:N or auto")
    max_batch: int = Field(8, ge=1, le=256, description="most requests run together in one batch")
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="how long a batch waits to fill up")
    queue_size: int = Field(64, ge=1, le=100_000, description="requests that may wait; more get 503")
    max_frames: int = Field(DEFAULT_MAX_FRAMES, ge=8, description="longest mel accepted; longer gets 413")
    request_timeout: float = Field(30.0, gt=0, description="seconds before a waiting request gets 504")
    body_timeout: float = Field(30.0, gt=0, description="seconds for the whole request body to arrive; "
                                                       "slower gets 408")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest request body; larger gets 413")
    stream_chunk_frames: int = Field(128, ge=8, description="mel frames per chunk of a streamed response")
    torch_threads: int | None = Field(None, ge=1, le=1024,
                                      description="torch intra-op threads (process-wide); unset: torch's default")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS; empty: CORS off")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        # A comma-separated env var is friendlier than the JSON list pydantic-settings expects.
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value
