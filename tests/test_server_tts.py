"""Text to speech over HTTP with a tiny random vocoder and the espeak-ng fallback front-end:
POST /v1/tts, OpenAI's POST /v1/audio/speech, the front-end in GET /v1/models, its loading and
checks at startup, and every client error."""
from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

import server.cli
import server.service
from server.app import create_app
from server.settings import Settings
from test_server import (HOP, assert_error, assert_matches_pcm, client, make_client, model,  # noqa: F401 (fixtures)
                         one_torch_thread, pcm_samples, reference, tiny_vocoder, wait_ready)
from test_tts import TINY
from vocoder.mel import MelConfig
from vocoder.mel_transform import shift_pitch
from vocoder.text import checkpoint as tts_checkpoint
from vocoder.text import espeak
from vocoder.text.frontend import EspeakFrontend
from vocoder.text.model import TextToMel

TEXT = "Hello world."
SPEECH = {"model": "tts-1", "input": TEXT, "voice": "alloy"}


def espeak_mel(text: str = TEXT, length_scale: float = 1.0) -> np.ndarray:
    return EspeakFrontend(MelConfig()).synthesize_mel(text, length_scale=length_scale).numpy()


def startup_outcome(client: TestClient) -> dict:
    """/readyz's body once startup has finished, ready or failed."""
    end = time.monotonic() + 30
    while True:
        body = client.get("/readyz").json()
        message = body.get("error", {}).get("message", "")
        if "loading" not in message and "warming" not in message:
            return body
        assert time.monotonic() < end, "startup did not finish"
        time.sleep(0.02)


def save_tiny_tts(path, mel_config: MelConfig):
    tts_checkpoint.save_model(path, TextToMel(TINY).eval(), mel_config, metadata={"description": "tiny test model"})
    return path


# -- the front-end in /v1/models and at startup --------------------------------------------------
def test_models_names_the_espeak_fallback_and_text_limits(client):
    info = client.get("/v1/models").json()
    frontend = info["text_frontend"]
    assert frontend["name"] == "espeak-ng-fallback" and frontend["trained"] is False
    assert "NOT a trained" in frontend["description"]
    assert info["limits"]["max_text_chars"] == 4096
    assert info["limits"]["noise_scale"] == {"min": 0.0, "max": 2.0, "default": 0.667}


def test_the_espeak_fallback_is_announced_once(model, recwarn):
    frontend = server.service.load_text(Settings(), model)
    assert not frontend.trained
    # The service logs "NO TRAINED TEXT-TO-MEL MODEL" itself; the library's warning is not repeated.
    assert not [w for w in recwarn if "text-to-mel" in str(w.message)]


def test_a_trained_checkpoint_is_served_and_described(model, tmp_path):
    path = save_tiny_tts(tmp_path / "tts", MelConfig())
    with TestClient(create_app(Settings(tts_checkpoint=path), model)) as client:
        wait_ready(client)
        frontend = client.get("/v1/models").json()["text_frontend"]
        assert frontend["name"] == "flow-tts" and frontend["trained"] is True
        assert "tiny test model" in frontend["description"]
        first = client.post("/v1/tts", json={"text": TEXT, "seed": 5, "format": "pcm"})
        assert first.status_code == 200, first.text
        assert client.post("/v1/tts", json={"text": TEXT, "seed": 5, "format": "pcm"}).content == first.content


def test_a_front_end_with_another_mel_config_stops_the_start(model, tmp_path):
    other = MelConfig(fmax=7600.0)
    with TestClient(create_app(Settings(), model, text_frontend=EspeakFrontend(other))) as client:
        error = startup_outcome(client)["error"]
        assert "failed to start" in error["message"] and "text front-end" in error["message"]
        assert_error(client.post("/v1/vocode", json={"mel": [[0.0] * 8] * 80}), 503, "not_ready")
    path = save_tiny_tts(tmp_path / "tts", other)
    with TestClient(create_app(Settings(tts_checkpoint=path), model)) as client:
        assert "7600" in startup_outcome(client)["error"]["message"]


def test_cli_fails_at_once_on_a_bad_or_mismatched_tts_checkpoint(monkeypatch, capsys, model, tmp_path):
    monkeypatch.setattr(server.cli, "load_model", lambda settings: model)
    monkeypatch.setattr(server.cli, "serve_until_stopped", lambda app, settings: pytest.fail("must not serve"))
    assert server.cli.main(["--tts-checkpoint", str(tmp_path / "missing")]) == 2
    path = save_tiny_tts(tmp_path / "tts", MelConfig(fmax=7600.0))
    assert server.cli.main(["--tts-checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("vocoder serve: error:") == 2 and "7600" in err and "Traceback" not in err


def test_missing_espeak_disables_only_the_text_endpoints(model, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with make_client(model) as client:
        wait_ready(client)
        assert client.get("/v1/models").json()["text_frontend"] is None
        for path, body in [("/v1/tts", {"text": TEXT}), ("/v1/audio/speech", SPEECH)]:
            error = assert_error(client.post(path, json=body), 503, "tts_unavailable")
            assert "espeak-ng" in error["message"]
        assert client.post("/v1/vocode", json={"mel": [[-5.0] * 8] * 80}).status_code == 200


def test_espeak_failing_at_request_time_is_503(model):
    frontend = EspeakFrontend(MelConfig())
    with TestClient(create_app(Settings(), model, text_frontend=frontend)) as client:
        wait_ready(client)
        frontend.executable = "/nonexistent/espeak-ng"  # uninstalled after startup
        error = assert_error(client.post("/v1/tts", json={"text": TEXT}), 503, "tts_unavailable")
        assert "install the Debian package espeak-ng" in error["message"]


# -- POST /v1/tts --------------------------------------------------------------------------------
def test_tts_returns_wav_of_the_front_end_mel_vocoded(client, model):
    response = client.post("/v1/tts", json={"text": TEXT, "seed": 3})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav" and response.headers["x-batch-size"] == "1"
    audio, rate = soundfile.read(io.BytesIO(response.content))
    mel = espeak_mel()
    assert rate == 22050 and audio.shape == (mel.shape[1] * HOP,)
    pcm = client.post("/v1/tts", json={"text": TEXT, "seed": 3, "format": "pcm"})
    assert_matches_pcm(pcm.content, reference(model, mel, seed=3))  # the same batch worker as /v1/vocode


def test_tts_controls(client, model):
    base = {"text": TEXT, "seed": 2, "format": "pcm"}
    first = client.post("/v1/tts", json=base).content
    assert client.post("/v1/tts", json=base).content == first
    assert client.post("/v1/tts", json={**base, "seed": 4}).content != first
    shifted = client.post("/v1/tts", json={**base, "pitch": 5, "sigma": 0.3, "denoise": 0.2})
    mel = shift_pitch(espeak_mel(), 5, MelConfig())
    assert_matches_pcm(shifted.content, reference(model, mel, sigma=0.3, seed=2, denoise=0.2))
    fast = client.post("/v1/tts", json={**base, "speed": 2.0})  # length_scale 0.5: espeak-ng reads faster
    assert len(fast.content) == 2 * espeak_mel(length_scale=0.5).shape[1] * HOP < len(first)
    resampled = client.post("/v1/tts", json={**base, "format": "flac", "sample_rate": 16000})
    assert soundfile.read(io.BytesIO(resampled.content))[1] == 16000


def test_tts_text_errors(model):
    with make_client(model, max_text_chars=40, max_frames=200) as client:
        wait_ready(client)
        for text in ["", "   \n"]:
            error = assert_error(client.post("/v1/tts", json={"text": text}), 422, "invalid_text")
            assert error["param"] == "text" and "empty" in error["message"]
        error = assert_error(client.post("/v1/tts", json={"text": "a" * 41}), 422, "invalid_text")
        assert "41" in error["message"] and "40" in error["message"]
        error = assert_error(client.post("/v1/tts", json={"text": "a snowman: \u2603"}), 422, "invalid_text")
        assert "U+2603" in error["message"] and error["param"] == "text"
        # Within max_text_chars, but the speech is longer than max_frames (2.3 s).
        long_speech = "one two three four five six seven eight."
        error = assert_error(client.post("/v1/tts", json={"text": long_speech, "speed": 0.5}), 413, "mel_too_long")
        assert error["param"] == "text" and "the speech for this text" in error["message"]


@pytest.mark.parametrize("field, value", [("noise_scale", 2.5), ("sigma", -1), ("speed", 0.1), ("speed", 5),
                                          ("pitch", 13), ("seed", -1), ("denoise", 2), ("sample_rate", 4000),
                                          ("text", 5), ("voice", "alloy")])
def test_tts_parameter_errors(client, field, value):
    error = assert_error(client.post("/v1/tts", json={"text": TEXT, field: value}), 422, "invalid_parameter")
    assert error["param"] == field


def test_tts_body_errors(client):
    assert_error(client.post("/v1/tts", json={}), 422, "invalid_parameter")
    assert_error(client.post("/v1/tts", content=b"", headers={"content-type": "application/json"}), 422, "empty_body")
    assert_error(client.post("/v1/tts", content=b'{"text": ', headers={"content-type": "application/json"}), 400,
                 "malformed_json")
    assert_error(client.post("/v1/tts", content=TEXT, headers={"content-type": "text/plain"}), 415,
                 "unsupported_media_type")
    error = assert_error(client.post("/v1/tts", json={"text": TEXT, "format": "aiff"}), 422, "unsupported_format")
    assert error["param"] == "format"


# -- bounded work per text request (issue 14, section 2) -----------------------------------------
@pytest.mark.parametrize("speed", [0.25, 1.0, 4.0])
def test_worst_case_text_is_refused_before_any_front_end_work(client, monkeypatch, speed):
    """4096 digits used to make espeak-ng read for 19 to 46 minutes and build that mel before the 413."""
    monkeypatch.setattr(espeak, "render_wav", lambda *args: pytest.fail("espeak-ng ran"))
    started = time.perf_counter()
    for path, body, param in [("/v1/tts", {"text": "9" * 4096, "speed": speed}, "text"),
                              ("/v1/audio/speech", {**SPEECH, "input": "9" * 4096, "speed": speed}, "input")]:
        error = assert_error(client.post(path, json=body), 413, "mel_too_long")
        assert error["param"] == param and "an estimated" in error["message"] and "limit is 5168" in error["message"]
    assert time.perf_counter() - started < 1.0


def queue_depth(client: TestClient) -> float:
    line = next(line for line in client.get("/metrics").text.splitlines() if line.startswith("vocoder_queue_depth "))
    return float(line.split()[1])


def test_the_text_front_end_waits_in_the_vocoding_queue_and_runs_one_call_at_a_time(model):
    """The front-end used to run in Starlette's thread pool, outside the queue and its limits;
    it runs on its own thread, so that a long text does not hold up vocoding."""
    frontend = EspeakFrontend(MelConfig())
    make_mel = frontend.synthesize_mel
    threads, entered, release = [], threading.Event(), threading.Event()

    def held_synthesize(*args):
        threads.append(threading.current_thread().name)
        entered.set()
        release.wait(10)
        return make_mel(*args)

    frontend.synthesize_mel = held_synthesize
    with TestClient(create_app(Settings(queue_size=1), model, text_frontend=frontend)) as client, \
            ThreadPoolExecutor(2) as pool:
        wait_ready(client)
        try:
            running = pool.submit(client.post, "/v1/tts", json={"text": TEXT})
            assert entered.wait(10)
            waiting = pool.submit(client.post, "/v1/tts", json={"text": TEXT})
            end = time.monotonic() + 10
            while queue_depth(client) < 1:  # the second text request holds the one queue slot
                assert time.monotonic() < end, "the text request never entered the queue"
                time.sleep(0.02)
            assert_error(client.post("/v1/vocode", json={"mel": [[-5.0] * 8] * 80}), 503, "queue_full")
            assert_error(client.post("/v1/tts", json={"text": TEXT}), 503, "queue_full")
        finally:
            release.set()
        assert running.result().status_code == 200 and waiting.result().status_code == 200
    assert len(threads) == 2 and all(name.startswith("vocoder-text") for name in threads)


def test_a_short_text_overtakes_long_texts_queued_before_it(model):
    """Eight long texts queued at once used to keep a `Hello world.` behind them for seconds."""
    frontend = EspeakFrontend(MelConfig())
    make_mel = frontend.synthesize_mel
    order, entered, release = [], threading.Event(), threading.Event()

    def recorded_synthesize(text, *args):
        order.append(text)
        entered.set()
        release.wait(10)
        return make_mel(text, *args)

    frontend.synthesize_mel = recorded_synthesize
    # Within the estimate (about 1400 frames), so each would make espeak-ng read up to max_frames.
    long_text = ("Printing, in the only sense with which we are at present concerned, differs from most "
                 "if not from all the arts and crafts represented in the Exhibition. ") * 13
    with TestClient(create_app(Settings(max_frames=2000), model, text_frontend=frontend)) as client, \
            ThreadPoolExecutor(5) as pool:
        wait_ready(client)
        try:
            first = pool.submit(client.post, "/v1/tts", json={"text": "The first."})
            assert entered.wait(10)
            long = [pool.submit(client.post, "/v1/tts", json={"text": long_text}) for _ in range(3)]
            end = time.monotonic() + 10
            while queue_depth(client) < 3:
                assert time.monotonic() < end, "the long texts never entered the queue"
                time.sleep(0.02)
            short = pool.submit(client.post, "/v1/tts", json={"text": TEXT})
            while queue_depth(client) < 4:
                assert time.monotonic() < end, "the short text never entered the queue"
                time.sleep(0.02)
        finally:
            release.set()
        assert first.result().status_code == short.result().status_code == 200
        assert [response.result().status_code for response in long] == [413] * 3
    assert order == ["The first.", TEXT] + [long_text] * 3


def test_vocoding_goes_on_while_a_text_call_runs(model):
    """Text work used to run on the device thread, so one long text stalled every vocoding request."""
    frontend = EspeakFrontend(MelConfig())
    make_mel = frontend.synthesize_mel
    entered, release = threading.Event(), threading.Event()

    def held_synthesize(*args):
        entered.set()
        release.wait(10)
        return make_mel(*args)

    frontend.synthesize_mel = held_synthesize
    with TestClient(create_app(Settings(), model, text_frontend=frontend)) as client, ThreadPoolExecutor(2) as pool:
        wait_ready(client)
        try:
            text = pool.submit(client.post, "/v1/tts", json={"text": TEXT})
            assert entered.wait(10)
            vocode = pool.submit(client.post, "/v1/vocode", json={"mel": [[-5.0] * 8] * 80})
            assert vocode.result(timeout=5).status_code == 200
            assert not text.done()
        finally:
            release.set()
        assert text.result().status_code == 200


# -- POST /v1/audio/speech -----------------------------------------------------------------------
def test_speech_defaults_to_mp3_and_pcm_to_24khz(client):
    mp3 = client.post("/v1/audio/speech", json=SPEECH)
    assert mp3.status_code == 200, mp3.text
    assert mp3.headers["content-type"] == "audio/mpeg"
    assert soundfile.info(io.BytesIO(mp3.content)).format == "MP3"
    pcm = client.post("/v1/audio/speech", json={**SPEECH, "response_format": "pcm"})
    assert pcm.headers["content-type"] == "audio/pcm; rate=24000; channels=1; encoding=s16le"
    assert abs(len(pcm.content) // 2 - round(espeak_mel().shape[1] * HOP * 24000 / 22050)) <= 1
    pcm16 = client.post("/v1/audio/speech", json={**SPEECH, "response_format": "pcm", "sample_rate": 16000})
    assert pcm16.headers["x-sample-rate"] == "16000"
    wav = client.post("/v1/audio/speech", json={**SPEECH, "response_format": "wav"})
    assert soundfile.read(io.BytesIO(wav.content))[1] == 22050  # other formats keep the model's rate


def test_speech_maps_onto_tts(client):
    """Every model and voice is the one voice; instructions are ignored; speed is the speaking rate."""
    tts = client.post("/v1/tts", json={"text": TEXT, "seed": 8, "speed": 1.5, "format": "wav"}).content
    for extra in [{}, {"voice": "nova", "model": "tts-1-hd"}, {"voice": "not-an-openai-voice"},
                  {"voice": {"id": "voice_1234"}}, {"instructions": "Speak like a pirate."},
                  {"stream_format": "audio"}]:
        body = {**SPEECH, "response_format": "wav", "speed": 1.5, "seed": 8, **extra}
        response = client.post("/v1/audio/speech", json=body)
        assert response.status_code == 200, (extra, response.text)
        assert response.content == tts, extra


def test_speech_without_voice_is_accepted(client):
    body = {key: value for key, value in SPEECH.items() if key != "voice"}
    assert client.post("/v1/audio/speech", json={**body, "response_format": "flac"}).status_code == 200


@pytest.mark.parametrize("body, param, code", [
    ({"input": TEXT}, "model", "invalid_parameter"),
    ({"model": "tts-1"}, "input", "invalid_parameter"),
    ({**SPEECH, "response_format": "aac"}, "response_format", "unsupported_format"),
    ({**SPEECH, "speed": 4.5}, "speed", "invalid_parameter"),
    ({**SPEECH, "speed": 0.2}, "speed", "invalid_parameter"),
    ({**SPEECH, "stream_format": "sse"}, "stream_format", "invalid_parameter"),
    ({**SPEECH, "temperature": 1}, "temperature", "invalid_parameter"),
    ({**SPEECH, "input": ""}, "input", "invalid_text"),
    ({**SPEECH, "input": "x" * 4097}, "input", "invalid_text"),
    ({**SPEECH, "input": "\u2603"}, "input", "invalid_text"),
])
def test_speech_errors(client, body, param, code):
    error = assert_error(client.post("/v1/audio/speech", json=body), 422, code)
    assert error["param"] == param


def test_text_endpoints_in_openapi_and_metrics(client):
    spec = client.get("/openapi.json").json()
    for path, required in [("/v1/tts", ["text"]), ("/v1/audio/speech", ["model", "input"])]:
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"]["required"] == required
        assert client.post(path, json=body["example"]).status_code == 200
    text = client.get("/metrics").text
    assert 'vocoder_http_requests_total{endpoint="/v1/audio/speech",method="POST",status="200"}' in text

