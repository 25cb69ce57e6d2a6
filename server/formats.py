"""The one list of output audio formats for every audio endpoint: which encoders this machine has
(probed by a trial encode at startup), lookup that refuses unknown names with a 422 naming the
available ones, and the plain and streamed audio responses built from float audio.
"""
from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from typing import AsyncIterator, Iterable

import numpy as np
import soundfile
import soxr
from fastapi import Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from server.errors import APIError
from vocoder.audio import resample

logger = logging.getLogger(__name__)

# A RIFF/data size that says "unknown, read to the end": what streaming encoders (ffmpeg, sox) write.
UNKNOWN_SIZE = 0xFFFFFFFF


@dataclass(frozen=True)
class AudioFormat:
    """An output format: the libsndfile container/subtype that encodes it, the rates its encoder
    accepts (None: any), and whether it can be streamed (needs no length up front)."""

    name: str
    media_type: str
    container: str
    subtype: str
    rates: tuple[int, ...] | None = None
    streamable: bool = False

    def output_rate(self, requested: int) -> int:
        """The rate actually encoded: the requested one, or the next one the encoder supports."""
        if self.rates is None or requested in self.rates:
            return requested
        return next((rate for rate in self.rates if rate >= requested), self.rates[-1])

    def content_type(self, rate: int) -> str:
        if self.name == "pcm":
            # Raw samples carry no header, so the type states everything needed to play them.
            return f"{self.media_type}; rate={rate}; channels=1; encoding=s16le"
        return self.media_type

    def encode(self, audio: np.ndarray, rate: int) -> bytes:
        """Mono float audio to this format's bytes; samples beyond [-1, 1] are clipped, not wrapped."""
        buffer = io.BytesIO()
        extra = {"endian": "LITTLE"} if self.container == "RAW" else {}
        soundfile.write(buffer, np.clip(audio, -1.0, 1.0), rate, format=self.container,
                        subtype=self.subtype, **extra)
        return buffer.getvalue()

    def stream_header(self, rate: int) -> bytes:
        """Bytes sent before the first streamed chunk: a WAV header of unknown length, or nothing."""
        if self.name != "wav":
            return b""
        channels, width = 1, 2
        fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * width, channels * width, 8 * width)
        return (b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
                + b"data" + struct.pack("<I", UNKNOWN_SIZE))

    def encode_chunk(self, audio: np.ndarray, rate: int) -> bytes:
        """A streamed chunk: raw s16le samples (also the payload of a streamed WAV)."""
        return PCM.encode(audio, rate)


PCM = AudioFormat("pcm", "audio/pcm", "RAW", "PCM_16", streamable=True)
CANDIDATES = (
    AudioFormat("wav", "audio/wav", "WAV", "PCM_16", streamable=True),
    AudioFormat("flac", "audio/flac", "FLAC", "PCM_16"),
    PCM,
    AudioFormat("opus", "audio/ogg; codecs=opus", "OGG", "OPUS", rates=(8000, 12000, 16000, 24000, 48000)),
    AudioFormat("mp3", "audio/mpeg", "MP3", "MPEG_LAYER_III",
                rates=(8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
)


def _encodes(audio_format: AudioFormat) -> bool:
    rate = audio_format.output_rate(22050)
    tone = 0.1 * np.sin(np.linspace(0.0, 200.0, rate // 10, dtype=np.float32))
    try:
        return len(audio_format.encode(tone, rate)) > 0
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError):
        return False


class FormatRegistry:
    """The formats this process can encode. Endpoints resolve a client's `format` through `get`."""

    def __init__(self, formats: Iterable[AudioFormat]) -> None:
        self.formats = {audio_format.name: audio_format for audio_format in formats}

    @classmethod
    def probe(cls) -> "FormatRegistry":
        """Keep the candidates that libsndfile on this machine really encodes."""
        working = [audio_format for audio_format in CANDIDATES if _encodes(audio_format)]
        missing = sorted({audio_format.name for audio_format in CANDIDATES} - {f.name for f in working})
        if missing:
            logger.warning("audio formats unavailable (libsndfile %s lacks the encoder): %s",
                           soundfile.__libsndfile_version__, ", ".join(missing))
        return cls(working)

    @property
    def names(self) -> list[str]:
        return list(self.formats)

    @property
    def stream_names(self) -> list[str]:
        return [name for name, audio_format in self.formats.items() if audio_format.streamable]

    def get(self, name: str, stream: bool = False, param: str = "format") -> AudioFormat:
        """The format called `name`, or a 422 that lists what is available (`param`: the
        parameter that named it)."""
        audio_format = self.formats.get(name.lower())
        if audio_format is None:
            raise APIError(422, f"format {name!r} is not available; choose one of {', '.join(self.names)}",
                           code="unsupported_format", param=param)
        if stream and not audio_format.streamable:
            raise APIError(422, f"format {name!r} cannot be streamed; with stream=true choose one of "
                                f"{', '.join(self.stream_names)}", code="unsupported_format", param=param)
        return audio_format


def audio_headers(duration: float, rate: int, inference_time: float) -> dict[str, str]:
    return {"X-Audio-Duration": f"{duration:.6f}", "X-Sample-Rate": str(rate),
            "X-Inference-Time": f"{inference_time:.6f}"}


def _render(audio_format: AudioFormat, audio: np.ndarray, source_rate: int, rate: int) -> tuple[bytes, int]:
    audio = resample(audio, source_rate, rate)
    return audio_format.encode(audio, rate), audio.shape[0]


async def audio_response(audio_format: AudioFormat, audio: np.ndarray, source_rate: int,
                         sample_rate: int | None, inference_time: float,
                         headers: dict[str, str] | None = None) -> Response:
    """A complete response for mono float `audio` at `source_rate`, resampled to `sample_rate`
    (None: unchanged) and encoded off the event loop."""
    rate = audio_format.output_rate(sample_rate or source_rate)
    body, samples = await run_in_threadpool(_render, audio_format, audio, source_rate, rate)
    return Response(body, media_type=audio_format.content_type(rate),
                    headers={**audio_headers(samples / rate, rate, inference_time), **(headers or {})})


def streaming_audio_response(audio_format: AudioFormat, chunks: AsyncIterator[np.ndarray], source_rate: int,
                             sample_rate: int | None, duration: float, inference_time: float) -> StreamingResponse:
    """A chunked response of `chunks` (mono float at `source_rate`), resampled on the fly with a
    streaming soxr resampler so chunk borders leave no seams."""
    rate = audio_format.output_rate(sample_rate or source_rate)

    async def body() -> AsyncIterator[bytes]:
        resampler = soxr.ResampleStream(source_rate, rate, 1, dtype="float32", quality="HQ") \
            if rate != source_rate else None
        header = audio_format.stream_header(rate)
        if header:
            yield header
        async for chunk in chunks:
            if resampler is not None:
                chunk = resampler.resample_chunk(chunk)
            yield audio_format.encode_chunk(chunk, rate)
        if resampler is not None:
            yield audio_format.encode_chunk(resampler.resample_chunk(np.zeros(0, np.float32), last=True), rate)

    return StreamingResponse(body(), media_type=audio_format.content_type(rate),
                             headers=audio_headers(duration, rate, inference_time))
