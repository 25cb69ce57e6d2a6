"""Editing over HTTP with a tiny random model: `pitch` and `speed` on POST /v1/vocode (a mel-domain
edit before the batch worker) and POST /v1/edit (exact encode -> edit -> decode of an upload)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
import torch

from test_server import (HOP, PCM_TOLERANCE, assert_error, assert_matches_pcm, client, make_client,  # noqa: F401
                         model, npy_bytes, one_torch_thread, pcm_samples, random_mel, reference, wait_ready)
from vocoder import latents
from vocoder.audio import load_audio
from vocoder.mel import MelConfig
from vocoder.mel_transform import frame_map, shift_pitch

RATE = 22050


def edited(mel: np.ndarray, pitch: float, speed: float) -> np.ndarray:
    """The mel that `latents.from_mel -> pitch -> speed` decodes, straight from the library."""
    source, _ = frame_map(mel.shape[1], mel.shape[1] * HOP, speed, HOP)
    return shift_pitch(mel, pitch, MelConfig())[:, source]


def recording(seconds: float = 0.5, rate: int = RATE) -> np.ndarray:
    """A voiced-ish test signal: a 140 Hz tone with harmonics and a little noise."""
    t = np.arange(round(seconds * rate)) / rate
    tone = sum(0.2 / k * np.sin(2 * np.pi * 140 * k * t) for k in range(1, 6))
    return (tone + 0.01 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


def encoded(audio: np.ndarray, rate: int = RATE, file_format: str = "WAV", subtype: str = "FLOAT") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format=file_format, subtype=subtype)
    return buffer.getvalue()


def library_edit(model, audio: np.ndarray, pitch: float = 0.0, speed: float = 1.0, redraw: bool = False,
                 sigma: float = 0.6, seed: int | None = None) -> np.ndarray:
    latent = latents.encode(model, audio)
    if redraw:
        latent = latents.redraw(latent, sigma, seed)
    return latents.decode(model, latents.speed(latents.pitch(latent, pitch), speed))


# -- pitch and speed on /v1/vocode ---------------------------------------------------------------
@pytest.mark.parametrize("pitch, speed", [(3.0, 1.0), (0.0, 2.0), (-5.0, 0.5), (12.0, 4.0)])
def test_vocode_edits_equal_the_edited_mel_vocoded(client, model, pitch, speed):
    mel = random_mel(40, seed=2)
    response = client.post("/v1/vocode", json={"mel": mel.tolist(), "format": "pcm", "seed": 6,
                                                "pitch": pitch, "speed": speed})
    assert response.status_code == 200, response.text
    expected = edited(mel, pitch, speed)
    assert len(response.content) == 2 * expected.shape[1] * HOP  # speed 2: half the frames
    assert_matches_pcm(response.content, reference(model, expected, seed=6))


def test_vocode_edits_from_the_query_on_npy_and_streamed(model):
    mel = random_mel(50, seed=4)
    expected = reference(model, edited(mel, -2.0, 1.25), seed=3)
    with make_client(model, stream_chunk_frames=16) as client:
        wait_ready(client)
        query = "/v1/vocode?format=pcm&seed=3&pitch=-2&speed=1.25"
        plain = client.post(query, content=npy_bytes(mel), headers={"content-type": "application/x-npy"})
        streamed = client.post(f"{query}&stream=true", json={"mel": mel.tolist()})
    assert plain.status_code == streamed.status_code == 200
    assert_matches_pcm(plain.content, expected)
    assert_matches_pcm(streamed.content, expected)


def test_edited_vocode_same_seed_same_audio(client):
    body = {"mel": random_mel(30).tolist(), "format": "pcm", "pitch": 4, "speed": 0.8}
    first = client.post("/v1/vocode", json={**body, "seed": 1}).content
    assert client.post("/v1/vocode", json={**body, "seed": 1}).content == first
    assert client.post("/v1/vocode", json={**body, "seed": 2}).content != first


@pytest.mark.parametrize("param, value", [("pitch", 12.5), ("pitch", -13), ("speed", 0.2), ("speed", 4.5),
                                          ("speed", 0), ("pitch", "nan")])
def test_vocode_edit_out_of_range(client, param, value):
    mel = random_mel(8).tolist()
    error = assert_error(client.post(f"/v1/vocode?{param}={value}", json={"mel": mel}), 422, "invalid_parameter")
    assert error["param"] == param
    if value != "nan":
        error = assert_error(client.post("/v1/vocode", json={"mel": mel, param: value}), 422, "invalid_parameter")
        assert error["param"] == param


def test_vocode_edit_output_must_fit_the_frame_limits(model):
    with make_client(model, max_frames=64) as client:
        wait_ready(client)
        error = assert_error(client.post("/v1/vocode?speed=0.5", json={"mel": random_mel(40).tolist()}), 413,
                             "mel_too_long")
        assert error["param"] == "speed" and "80 frames" in error["message"] and "64" in error["message"]
        error = assert_error(client.post("/v1/vocode?speed=4", json={"mel": random_mel(4).tolist()}), 422,
                             "mel_too_short")
        assert error["param"] == "speed"
        assert client.post("/v1/vocode?speed=2", json={"mel": random_mel(64).tolist()}).status_code == 200


# -- /v1/edit ------------------------------------------------------------------------------------
def test_edit_without_changes_gives_the_recording_back(client):
    audio = recording()
    response = client.post("/v1/edit?format=pcm", content=encoded(audio), headers={"content-type": "audio/wav"})
    assert response.status_code == 200, response.text
    assert response.headers["x-sample-rate"] == str(RATE) and "x-batch-size" not in response.headers
    # Exact through the flow: only float precision and the 16-bit output differ.
    assert np.abs(pcm_samples(response.content) - audio).max() <= PCM_TOLERANCE


@pytest.mark.parametrize("query, edits", [
    ("pitch=3&speed=1.5", {"pitch": 3.0, "speed": 1.5}),
    ("speed=0.5", {"speed": 0.5}),
    ("pitch=-4&redraw=true&sigma=0.5&seed=9", {"pitch": -4.0, "redraw": True, "sigma": 0.5, "seed": 9}),
])
def test_edit_equals_the_library_edit(client, model, query, edits):
    audio = recording()
    response = client.post(f"/v1/edit?format=pcm&{query}", content=encoded(audio),
                           headers={"content-type": "audio/wav"})
    assert response.status_code == 200, response.text
    assert_matches_pcm(response.content, library_edit(model, audio, **edits))


def test_edit_reads_uploads_at_any_rate_and_format(client, model):
    audio = recording(rate=16000)
    expected = library_edit(model, load_audio(encoded(audio, 16000), RATE), pitch=2.0)
    for file_format, subtype in [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")]:
        body = encoded(audio, 16000, file_format, subtype)
        raw = client.post("/v1/edit?pitch=2&format=pcm", content=body,
                          headers={"content-type": f"audio/{file_format.lower()}"})
        upload = client.post("/v1/edit?pitch=2&format=pcm", files={"file": ("clip", body)})
        assert raw.status_code == upload.status_code == 200, (file_format, raw.text)
        assert raw.content == upload.content
        got = pcm_samples(raw.content)
        assert got.shape == expected.shape  # resampled to the model's rate before encoding
        if file_format == "WAV":  # lossy codecs decode to slightly different samples
            assert np.abs(got - np.clip(expected, -1, 1)).max() <= 2 / 32768 + 1e-4


def test_edit_output_formats_and_rates(client):
    body = encoded(recording())
    response = client.post("/v1/edit?format=flac&sample_rate=16000", content=body,
                           headers={"content-type": "audio/wav"})
    assert response.status_code == 200 and response.headers["content-type"] == "audio/flac"
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 16000 and abs(audio.size - 8000) <= 1


def test_edit_client_errors(client):
    wav = {"content-type": "audio/wav"}
    error = assert_error(client.post("/v1/edit", content=b"not audio at all", headers=wav), 400, "malformed_audio")
    assert "0x" not in error["message"]  # no object addresses from libsndfile's message
    assert_error(client.post("/v1/edit", content=b"", headers=wav), 422, "empty_body")
    assert_error(client.post("/v1/edit", content=b"RIFF", headers={"content-type": "text/plain"}), 415,
                 "unsupported_media_type")
    assert_error(client.post("/v1/edit", data={"x": "1"}, files={"other": ("a.wav", b"x")}), 422, "missing_file")
    assert_error(client.post("/v1/edit", content=encoded(recording(0.01)), headers=wav), 422, "audio_too_short")
    nan = recording()
    nan[10] = np.nan
    assert_error(client.post("/v1/edit", content=encoded(nan), headers=wav), 422, "invalid_audio")
    for query, param in [("pitch=13", "pitch"), ("speed=5", "speed"), ("sigma=2", "sigma"), ("seed=-1", "seed"),
                         ("redraw=maybe", "redraw"), ("sample_rate=100", "sample_rate")]:
        error = assert_error(client.post(f"/v1/edit?{query}", content=encoded(recording()), headers=wav), 422,
                             "invalid_parameter")
        assert error["param"] == param
    error = assert_error(client.post("/v1/edit?format=aiff", content=encoded(recording()), headers=wav), 422,
                         "unsupported_format")
    assert "wav" in error["message"]


def test_edit_duration_is_bounded_by_max_frames(model):
    with make_client(model, max_frames=64) as client:  # 64 frames: 0.74 s at 22050 Hz, hop 256
        wait_ready(client)
        wav = {"content-type": "audio/wav"}
        error = assert_error(client.post("/v1/edit", content=encoded(recording(1.0)), headers=wav), 413,
                             "audio_too_long")
        assert error["param"] == "file" and "64" in error["message"]
        # Compressed audio is measured from its header, at the model's rate, whatever its own rate.
        assert_error(client.post("/v1/edit", content=encoded(recording(1.0, 8000), 8000, "FLAC", "PCM_16"),
                                 headers={"content-type": "audio/flac"}), 413, "audio_too_long")
        error = assert_error(client.post("/v1/edit?speed=0.5", content=encoded(recording(0.5)), headers=wav), 413,
                             "audio_too_long")
        assert error["param"] == "speed"
        assert client.post("/v1/edit?speed=2", content=encoded(recording(0.5)), headers=wav).status_code == 200


def test_edit_timeout_is_504(model):
    with make_client(model, request_timeout=1e-6) as client:
        wait_ready(client)
        assert_error(client.post("/v1/edit", content=encoded(recording()), headers={"content-type": "audio/wav"}),
                     504, "timeout")
        assert client.get("/readyz").status_code == 200


def test_edit_is_in_openapi_and_metrics(client):
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]["/v1/edit"]["post"]["requestBody"]["content"]) == {"audio/*", "multipart/form-data"}
    params = {param["name"] for param in spec["paths"]["/v1/edit"]["post"]["parameters"]}
    assert params == {"pitch", "speed", "redraw", "sigma", "seed", "denoise", "format", "sample_rate"}
    vocode_params = {param["name"] for param in spec["paths"]["/v1/vocode"]["post"]["parameters"]}
    assert {"pitch", "speed"} <= vocode_params
    client.post("/v1/edit", content=encoded(recording()), headers={"content-type": "audio/wav"})
    text = client.get("/metrics").text
    assert 'vocoder_http_requests_total{endpoint="/v1/edit",method="POST",status="200"}' in text


def test_edit_denoise_runs(client, model):
    audio = recording()
    response = client.post("/v1/edit?format=pcm&denoise=0.5", content=encoded(audio),
                           headers={"content-type": "audio/wav"})
    assert response.status_code == 200
    expected = model.denoiser()(torch.from_numpy(library_edit(model, audio))[None], 0.5)[0].numpy()
    assert_matches_pcm(response.content, expected)


def test_limits_report_edit_ranges(client):
    limits = client.get("/v1/models").json()["limits"]
    assert limits["pitch"] == {"min": -12.0, "max": 12.0, "default": 0.0}
    assert limits["speed"] == {"min": 0.25, "max": 4.0, "default": 1.0}
