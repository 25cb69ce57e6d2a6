"""Text to speech: POST /v1/tts with this service's parameters and POST /v1/audio/speech with
OpenAI's. Text whose speech would pass max_frames is refused before any work; the text front-end
makes the mel in its turn in the batch worker's queue; from there the mel takes the same path as a
/v1/vocode request (pitch edit, batch worker, encoding).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Literal

from fastapi import Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from server.bodies import json_body
from server.errors import APIError
from server.options import TEXT_SPEED_HELP, get_forms, json_field
from server.service import Service, ServiceDep
from vocoder.options import SAMPLE_RATE, SEED, SPEED
from vocoder.text.espeak import EspeakError
from vocoder.text.limits import SpeechTooLong
from vocoder.text.symbols import TextError, check_text

# OpenAI sends pcm at 24 kHz; clients that play it raw assume that rate.
OPENAI_PCM_RATE = 24000
TTS_EXAMPLE = {"text": "Dr. Smith paid $3.50 at 5 pm.", "seed": 1234, "format": "wav"}
SPEECH_EXAMPLE = {"model": "tts-1", "input": "Hello world.", "voice": "alloy", "response_format": "wav"}


class SpeechRequest(BaseModel):
    """JSON body of POST /v1/audio/speech: OpenAI's fields, plus `sample_rate` and `seed`.
    Every model and voice name is served by the one loaded text front-end and its one voice."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SPEECH_EXAMPLE]})

    model: str = Field(description="any name (tts-1, tts-1-hd, gpt-4o-mini-tts, ...): the loaded model serves all")
    input: str = Field(description="the text; at most max_text_chars (default 4096) characters")
    voice: str | dict[str, str] = Field(
        "alloy", description="any OpenAI voice name (alloy, ash, ballad, coral, echo, fable, onyx, nova, sage, "
                             "shimmer, verse, marin, cedar, or another) or {\"id\": ...}: all are the one voice")
    instructions: str | None = Field(None, description="accepted and ignored: the voice cannot be steered")
    response_format: str = Field("mp3", description="wav, flac, pcm, opus or mp3 (aac is not offered)")
    speed: float = json_field(SPEED, TEXT_SPEED_HELP)
    stream_format: Literal["audio"] | None = Field(None, description='"audio" only; the file is sent whole')
    sample_rate: int | None = json_field(SAMPLE_RATE, f"{SAMPLE_RATE.help}; pcm defaults to {OPENAI_PCM_RATE} as at OpenAI")
    seed: int | None = json_field(SEED)

    def as_tts(self, tts_body: type[BaseModel]) -> BaseModel:
        """The same request as a /v1/tts body (`tts_body`); everything else keeps /v1/tts's defaults."""
        rate = self.sample_rate or (OPENAI_PCM_RATE if self.response_format.lower() == "pcm" else None)
        return tts_body(text=self.input, speed=self.speed, seed=self.seed, format=self.response_format,
                        sample_rate=rate)


async def _speak(request: Request, service: Service, body: Any, text_param: str,
                 format_param: str) -> Response:
    """Text to mel (queued like vocoding, on the text thread), then the shared mel-to-audio path."""
    frontend = service.require_text()
    deadline = service.deadline()
    audio_format = service.formats.get(body.format, param=format_param)
    limits = service.mel_limits
    subject = "the speech for this text"
    length_scale = 1.0 / body.speed
    try:
        check_text(body.text, service.settings.max_text_chars)
        # The estimate normalizes the text (milliseconds of Python): off the event loop, but ahead
        # of the queue, so that text that is surely too long never waits for the device.
        # The estimate also orders the queue, so a short text does not wait behind long ones.
        frames = await run_in_threadpool(frontend.check_length, body.text, length_scale, limits.max_frames)
        mel = await service.queued(request, partial(frontend.synthesize_mel, body.text, body.noise_scale,
                                                    length_scale, body.seed, limits.max_frames), frames, deadline)
    except TextError as error:
        raise APIError(422, str(error), code="invalid_text", param=text_param) from None
    except SpeechTooLong as error:
        raise limits.too_long(error.frames, subject, text_param, estimated=error.estimated) from None
    except EspeakError as error:
        raise APIError(503, f"text-to-speech is unavailable: {error}", code="tts_unavailable") from None
    mel = mel.numpy()
    limits.check_frames(mel.shape[1], subject, text_param)
    options = get_forms(request).synthesis_options(body)
    return await service.synthesize(request, mel, options, audio_format, deadline)


async def tts(request: Request, service: ServiceDep) -> Response:
    """Text to audio, with pitch, speed and sampling controls."""
    body = await json_body(request, get_forms(request).tts_body, '{"text": "..."}')
    return await _speak(request, service, body, "text", "format")


async def speech(request: Request, service: ServiceDep) -> Response:
    """OpenAI-compatible text to speech (`client.audio.speech.create`): raw audio bytes."""
    body = await json_body(request, SpeechRequest, '{"model": "tts-1", "input": "...", "voice": "alloy"}')
    return await _speak(request, service, body.as_tts(get_forms(request).tts_body), "input", "response_format")
