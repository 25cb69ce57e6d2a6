"""The official `openai` client against the service under real uvicorn on 127.0.0.1: speech in
WAV and in OpenAI's 24 kHz pcm, and the service's errors surfacing as the client's exceptions."""
from __future__ import annotations

import io

import numpy as np
import openai
import pytest
import soundfile

from server.settings import Settings
from test_server import HOP, one_torch_thread, tiny_vocoder  # noqa: F401 (fixture)
from test_server_integration import running_server

TEXT = "Hello world."


@pytest.fixture(scope="module")
def client():
    with running_server(Settings(), tiny_vocoder()) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)


def test_speech_as_wav(client):
    response = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav")
    assert response.response.headers["content-type"] == "audio/wav"
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 22050 and audio.ndim == 1
    assert audio.size % HOP == 0 and 0.3 < audio.size / rate < 3.0  # espeak-ng reads two words in about 1 s
    assert np.isfinite(audio).all()


def test_speech_as_pcm_is_24khz_like_openai(client):
    wav = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav")
    pcm = client.audio.speech.create(model="gpt-4o-mini-tts", voice="coral", input=TEXT, response_format="pcm",
                                     instructions="Speak cheerfully.", speed=1.0)
    assert pcm.response.headers["content-type"] == "audio/pcm; rate=24000; channels=1; encoding=s16le"
    samples = len(pcm.content) // 2
    wav_samples = soundfile.info(io.BytesIO(wav.content)).frames
    assert len(pcm.content) % 2 == 0 and abs(samples - round(wav_samples * 24000 / 22050)) <= 1


def test_service_errors_become_client_exceptions(client):
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="aac")
    assert raised.value.code == "unsupported_format" and raised.value.param == "response_format"
    assert "wav" in raised.value.message
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.audio.speech.create(model="tts-1", voice="alloy", input="", response_format="wav")
    assert raised.value.code == "invalid_text"
