"""Unit tests of the HTTP service with a tiny random model: every endpoint, every client-error class,
the batch worker's per-item correctness, streaming, metrics, settings and the CLI."""
from __future__ import annotations

import asyncio
import io
import pickle
import re
import time
import warnings

import numpy as np
import pytest
import soundfile
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient warns about httpx; it works fine here
    from fastapi.testclient import TestClient

import server.cli
from server.app import create_app
from server.batching import OVERTAKE_SECONDS_PER_FRAME, BatchWorker, Call, Job
from server.errors import APIError
from server.metrics import ServiceMetrics
from server.schemas import EXAMPLE_REQUEST
from server.settings import Settings
from tiny import randomise_end_layers
from vocoder.config import FlowConfig
from vocoder.inference import Vocoder

N_MELS = 80
HOP = 256
PCM_SCALE = 32768.0  # libsndfile's float <-> int16 scale
# Batched and direct results agree within 1e-4; int16 output adds at most half a step on top.
PCM_TOLERANCE = 1e-4 + 0.5 / PCM_SCALE


def tiny_vocoder() -> Vocoder:
    """80-band, hop-256 flow small enough for fast tests, with its couplings made non-trivial."""
    model = Vocoder.from_config(FlowConfig(n_group=256, n_flows=2, n_early_every=4, n_layers=2, n_channels=8),
                                seed=0)
    randomise_end_layers(model.flow)
    model.metadata["random_init"] = True
    return model.eval()


def random_mel(frames: int, seed: int = 0, bands: int = N_MELS) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((bands, frames)) - 5.0).astype(np.float32)


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def reference(model: Vocoder, mel: np.ndarray, sigma: float = 0.6, seed: int | None = None,
              denoise: float = 0.0) -> np.ndarray:
    """What the library gives for one mel alone."""
    z = model.sample_latent(mel.shape[1], seed=seed)
    return model.infer(torch.from_numpy(mel)[None], sigma=sigma, z=z, denoise=denoise)[0].numpy()


def pcm_samples(content: bytes) -> np.ndarray:
    return np.frombuffer(content, "<i2").astype(np.float32) / PCM_SCALE


def assert_matches_pcm(content: bytes, expected: np.ndarray) -> None:
    got = pcm_samples(content)
    assert got.shape == expected.shape
    assert np.abs(got - np.clip(expected, -1.0, 32767 / PCM_SCALE)).max() <= PCM_TOLERANCE


def wait_ready(client: TestClient, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < end, "service did not become ready"
        time.sleep(0.02)


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    return error


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Multi-threaded torch ops crawl on a shared, busy CPU; the tiny model needs only one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model() -> Vocoder:
    return tiny_vocoder()


def make_client(model: Vocoder, **settings) -> TestClient:
    return TestClient(create_app(Settings(**settings), model=model))


@pytest.fixture(scope="module")
def client(model):
    with make_client(model) as test_client:
        wait_ready(test_client)
        yield test_client


# -- health, readiness, models, docs -------------------------------------------------------------
def test_healthz_and_readyz_before_startup(model):
    # Without entering the client's context the lifespan never runs: the model is not loaded yet.
    unstarted = make_client(model)
    assert unstarted.get("/healthz").json() == {"status": "ok"}
    assert_error(unstarted.get("/readyz"), 503, "not_ready")
    response = unstarted.post("/v1/vocode", json={"mel": random_mel(8).tolist()})
    assert_error(response, 503, "not_ready")
    assert response.headers["retry-after"] == "1"


def test_a_checkpoint_that_fails_to_load_keeps_readyz_at_503(tmp_path):
    # No model given: the app loads the configured checkpoint in the background.
    with TestClient(create_app(Settings(checkpoint=tmp_path / "missing"))) as client:
        end = time.monotonic() + 30
        while "loading" in client.get("/readyz").json()["error"]["message"]:
            assert time.monotonic() < end
            time.sleep(0.02)
        error = assert_error(client.get("/readyz"), 503, "not_ready")
        assert "failed to start" in error["message"]
        assert client.get("/healthz").status_code == 200
        assert_error(client.post("/v1/vocode", json={"mel": random_mel(8).tolist()}), 503, "not_ready")


def test_healthz_and_readyz_when_ready(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json() == {"status": "ready"}


def test_models_describes_model_and_limits(client, model):
    info = client.get("/v1/models").json()
    assert info["checkpoint"] == "random-init"
    assert info["sample_rate"] == model.sample_rate and info["hop_length"] == HOP
    assert info["mel"]["n_mels"] == N_MELS and info["mel"]["silence_value"] == pytest.approx(np.log(1e-5))
    assert info["flow"]["n_flows"] == 2 and info["flow"]["parameters"] > 0
    limits = info["limits"]
    assert limits["max_frames"] == Settings().max_frames and limits["max_batch"] == 8
    assert limits["sigma"] == {"min": 0.0, "max": 1.5, "default": 0.6}
    assert limits["sample_rate"]["min"] == 8000 and limits["sample_rate"]["max"] == 48000
    assert {"wav", "flac", "pcm"} <= set(limits["formats"])
    assert limits["stream_formats"] == ["wav", "pcm"]


def test_openapi_documents_every_body_type_and_its_example_works(client):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/vocode"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "application/octet-stream", "application/x-npy", "multipart/form-data"}
    example = body["application/json"]["example"]
    assert example == EXAMPLE_REQUEST
    assert client.post("/v1/vocode", json=example).status_code == 200


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_their_assets_from_the_service(client, page):
    """Offline (no CDN), the pages must still render: every script and stylesheet is served here."""
    html = client.get(page)
    assert html.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html.text)
    assert assets
    for asset in assets:
        assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 10_000


# -- vocoding ------------------------------------------------------------------------------------
def test_vocode_json_returns_wav_with_headers(client, model):
    mel = random_mel(40)
    response = client.post("/v1/vocode", json={"mel": mel.tolist(), "seed": 3})
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 22050 and audio.shape == (40 * HOP,)
    assert float(response.headers["x-audio-duration"]) == pytest.approx(40 * HOP / 22050, abs=1e-5)
    assert response.headers["x-sample-rate"] == "22050"
    assert float(response.headers["x-inference-time"]) > 0


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/x-npy"])
@pytest.mark.parametrize("shape_prefix", [(), (1,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_vocode_npy_body(client, model, content_type, shape_prefix, dtype):
    mel = random_mel(24).astype(dtype)
    response = client.post("/v1/vocode?seed=5&format=pcm", content=npy_bytes(mel.reshape(shape_prefix + mel.shape)),
                           headers={"content-type": content_type})
    assert response.status_code == 200
    assert_matches_pcm(response.content, reference(model, mel.astype(np.float32), seed=5))


def test_vocode_multipart_upload(client, model):
    mel = random_mel(30)
    response = client.post("/v1/vocode?seed=2&format=pcm", files={"file": ("mel.npy", npy_bytes(mel))})
    assert response.status_code == 200
    assert_matches_pcm(response.content, reference(model, mel, seed=2))


def test_vocode_matches_library_for_seed_sigma_zero_and_denoise(client, model):
    mel = random_mel(50, seed=1)
    for params, expected in [
        ({"seed": 9, "sigma": 0.8}, reference(model, mel, 0.8, 9)),
        ({"sigma": 0.0}, reference(model, mel, 0.0)),
        ({"seed": 4, "denoise": 0.5}, reference(model, mel, 0.6, 4, denoise=0.5)),
    ]:
        response = client.post("/v1/vocode", json={"mel": mel.tolist(), "format": "pcm", **params})
        assert response.status_code == 200
        assert_matches_pcm(response.content, expected)


def test_same_seed_same_audio_fresh_noise_otherwise(client):
    body = {"mel": random_mel(20).tolist(), "format": "pcm"}
    first = client.post("/v1/vocode", json={**body, "seed": 11}).content
    assert client.post("/v1/vocode", json={**body, "seed": 11}).content == first
    assert client.post("/v1/vocode", json={**body, "seed": 12}).content != first
    assert client.post("/v1/vocode", json=body).content != client.post("/v1/vocode", json=body).content


def test_query_parameters_apply_to_json_and_json_fields_win(client):
    mel = random_mel(20).tolist()
    from_query = client.post("/v1/vocode?seed=7&format=pcm", json={"mel": mel})
    from_body = client.post("/v1/vocode?seed=1&format=wav", json={"mel": mel, "seed": 7, "format": "pcm"})
    assert from_query.status_code == from_body.status_code == 200
    assert from_query.content == from_body.content


def test_every_available_format_decodes(client):
    formats = client.get("/v1/models").json()["limits"]["formats"]
    mel = random_mel(40).tolist()
    for name in formats:
        response = client.post("/v1/vocode", json={"mel": mel, "format": name, "seed": 0})
        assert response.status_code == 200, (name, response.text)
        rate = int(response.headers["x-sample-rate"])
        if name == "pcm":
            assert response.headers["content-type"] == f"audio/pcm; rate={rate}; channels=1; encoding=s16le"
            assert len(response.content) == 2 * 40 * HOP
            continue
        audio, decoded_rate = soundfile.read(io.BytesIO(response.content))
        assert decoded_rate == rate
        # Lossy codecs may pad a little; the duration must still be about right.
        assert abs(audio.shape[0] / rate - 40 * HOP / 22050) < 0.05, name


def test_sample_rate_resamples_and_opus_uses_a_supported_rate(client):
    mel = random_mel(40).tolist()
    response = client.post("/v1/vocode", json={"mel": mel, "format": "pcm", "sample_rate": 16000})
    assert response.headers["x-sample-rate"] == "16000"
    assert abs(len(response.content) // 2 - round(40 * HOP * 16000 / 22050)) <= 1
    if "opus" in client.get("/v1/models").json()["limits"]["formats"]:
        opus = client.post("/v1/vocode", json={"mel": mel, "format": "opus"})
        assert opus.headers["x-sample-rate"] == "24000"  # libopus has no 22050 Hz mode


# -- streaming -----------------------------------------------------------------------------------
def test_stream_pcm_concatenation_equals_whole(model):
    with make_client(model, stream_chunk_frames=16) as client:
        wait_ready(client)
        mel = random_mel(70, seed=3)
        body = npy_bytes(mel)
        headers = {"content-type": "application/octet-stream"}
        whole = client.post("/v1/vocode?seed=8&format=pcm", content=body, headers=headers)
        with client.stream("POST", "/v1/vocode?seed=8&format=pcm&stream=true", content=body,
                           headers=headers) as streamed:
            assert streamed.status_code == 200
            assert "content-length" not in streamed.headers
            pieces = list(streamed.iter_bytes())
        assert pieces and b"".join(pieces)
        streamed_audio = pcm_samples(b"".join(pieces))
        assert streamed_audio.shape == pcm_samples(whole.content).shape
        assert np.abs(streamed_audio - pcm_samples(whole.content)).max() <= PCM_TOLERANCE
        assert_matches_pcm(b"".join(pieces), reference(model, mel, seed=8))


def test_stream_wav_has_open_ended_header_and_decodes(client):
    mel = random_mel(40)
    response = client.post("/v1/vocode?stream=true&format=wav&seed=1", json={"mel": mel.tolist()})
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    assert response.content[4:8] == b"\xff\xff\xff\xff" and response.content[40:44] == b"\xff\xff\xff\xff"
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 22050 and audio.shape == (40 * HOP,)
    pcm = client.post("/v1/vocode?format=pcm&seed=1", json={"mel": mel.tolist()})
    assert np.abs(pcm_samples(response.content[44:]) - pcm_samples(pcm.content)).max() <= PCM_TOLERANCE


def test_stream_with_resampling_and_denoise_and_a_ragged_last_chunk(model):
    with make_client(model, stream_chunk_frames=16) as client:
        wait_ready(client)
        mel = random_mel(33).tolist()  # 16 + 16 + 1: the last chunk would be too short to denoise
        response = client.post("/v1/vocode", json={"mel": mel, "stream": True, "format": "pcm",
                                                    "sample_rate": 16000, "denoise": 0.3})
        assert response.status_code == 200
        assert abs(len(response.content) // 2 - round(33 * HOP * 16000 / 22050)) <= 2


# -- client errors -------------------------------------------------------------------------------
def test_wrong_band_count_names_expected_and_given(client):
    error = assert_error(client.post("/v1/vocode", json={"mel": random_mel(10, bands=64).tolist()}), 422,
                         "wrong_mel_bands")
    assert "64" in error["message"] and "80" in error["message"] and error["param"] == "mel"
    assert_error(client.post("/v1/vocode", content=npy_bytes(random_mel(10, bands=81)),
                             headers={"content-type": "application/x-npy"}), 422, "wrong_mel_bands")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_mel(client, bad):
    mel = random_mel(10)
    mel[3, 4] = bad
    assert_error(client.post("/v1/vocode", content=npy_bytes(mel), headers={"content-type": "application/x-npy"}),
                 422, "non_finite_mel")
    text = '{"mel": [' + ",".join(["[" + ",".join(["-5.0", "NaN" if np.isnan(bad) else "1e999"] * 3) + "]"] * 80) + "]}"
    assert_error(client.post("/v1/vocode", content=text, headers={"content-type": "application/json"}),
                 422, "non_finite_mel")


@pytest.mark.parametrize("value", [1e30, 89.0, -80.0])
def test_mel_outside_the_log_magnitude_range(client, value):
    mel = random_mel(10)
    mel[3, 4] = value  # 1e30 and 89 would vocode to clipped noise; -80 is a dB mel's silence
    response = client.post("/v1/vocode", content=npy_bytes(mel), headers={"content-type": "application/x-npy"})
    error = assert_error(response, 422, "mel_out_of_range")
    assert "natural log of a magnitude mel" in error["message"] and error["param"] == "mel"
    low, high = client.get("/v1/models").json()["mel"]["value_range"]
    assert low < -11.5 and 2.4 < high < 10


def test_empty_and_too_short_input(client):
    npy = {"content-type": "application/octet-stream"}
    assert_error(client.post("/v1/vocode", content=b"", headers=npy), 422, "empty_body")
    assert_error(client.post("/v1/vocode", content=b"", headers={"content-type": "application/json"}), 422,
                 "empty_body")
    assert_error(client.post("/v1/vocode", json={"mel": []}), 422, "invalid_mel_shape")
    assert_error(client.post("/v1/vocode", json={"mel": [[]] * N_MELS}), 422, "mel_too_short")
    assert_error(client.post("/v1/vocode", content=npy_bytes(random_mel(2)), headers=npy), 422, "mel_too_short")
    assert_error(client.post("/v1/vocode", content=npy_bytes(random_mel(1)[:, :0]), headers=npy), 422,
                 "mel_too_short")


def test_bad_shapes(client):
    npy = {"content-type": "application/octet-stream"}
    assert_error(client.post("/v1/vocode", content=npy_bytes(np.zeros((2, N_MELS, 5), np.float32)), headers=npy),
                 422, "invalid_mel_shape")
    assert_error(client.post("/v1/vocode", content=npy_bytes(np.zeros(N_MELS, np.float32)), headers=npy),
                 422, "invalid_mel_shape")
    assert_error(client.post("/v1/vocode", json={"mel": [[1.0, 2.0, 3.0]] * 79 + [[1.0]]}), 422,
                 "invalid_mel_shape")


def test_too_long_is_413(model):
    with make_client(model, max_frames=64) as client:
        wait_ready(client)
        error = assert_error(client.post("/v1/vocode", json={"mel": random_mel(65).tolist()}), 413, "mel_too_long")
        assert "64" in error["message"]
        assert_error(client.post("/v1/vocode", content=npy_bytes(random_mel(65)),
                                 headers={"content-type": "application/x-npy"}), 413, "mel_too_long")
        assert client.post("/v1/vocode", json={"mel": random_mel(64).tolist()}).status_code == 200


def test_malformed_bodies(client):
    npy = {"content-type": "application/octet-stream"}
    assert_error(client.post("/v1/vocode", content=b"not a numpy file", headers=npy), 400, "malformed_npy")
    truncated = npy_bytes(random_mel(10))[:-7]
    assert_error(client.post("/v1/vocode", content=truncated, headers=npy), 400, "malformed_npy")
    assert_error(client.post("/v1/vocode", content=b"{\"mel\": [[1", headers={"content-type": "application/json"}),
                 400, "malformed_json")
    assert_error(client.post("/v1/vocode", json=[1, 2, 3]), 422, "invalid_parameter")
    assert_error(client.post("/v1/vocode", json={"mel": [["a"]]}), 422, "invalid_parameter")
    assert_error(client.post("/v1/vocode", json={"mel": random_mel(5).tolist(), "path": "/etc/passwd"}), 422,
                 "invalid_parameter")
    # An unterminated part: the parser keeps no file from it, so it is reported as missing.
    broken = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.npy\"\r\n\r\nabc"
    assert_error(client.post("/v1/vocode", content=broken,
                             headers={"content-type": "multipart/form-data; boundary=xyz"}), 422, "missing_file")
    assert_error(client.post("/v1/vocode", content=b"x", headers={"content-type": "multipart/form-data"}), 400)
    assert_error(client.post("/v1/vocode", data={"notfile": "1"}, files={"other": ("a.npy", b"x")}), 422,
                 "missing_file")
    assert_error(client.post("/v1/vocode", content=b"hello", headers={"content-type": "text/plain"}), 415,
                 "unsupported_media_type")


def test_pickled_and_wrong_dtype_npy_refused(client):
    npy = {"content-type": "application/x-npy"}
    pickled = npy_bytes(np.array([random_mel(5)], dtype=object), allow_pickle=True)
    assert_error(client.post("/v1/vocode", content=pickled, headers=npy), 422, "pickled_npy")
    assert_error(client.post("/v1/vocode", content=pickle.dumps(random_mel(5)), headers=npy), 400, "malformed_npy")
    error = assert_error(client.post("/v1/vocode", content=npy_bytes(random_mel(5).astype(np.float64)), headers=npy),
                         422, "invalid_mel_dtype")
    assert "float64" in error["message"]
    assert_error(client.post("/v1/vocode", content=npy_bytes(np.zeros((N_MELS, 5), np.int16)), headers=npy), 422,
                 "invalid_mel_dtype")


@pytest.mark.parametrize("query", ["sigma=1.6", "sigma=-0.1", "sigma=nan", "denoise=1.5", "sample_rate=7999",
                                   "sample_rate=48001", "seed=-1", "seed=abc", "stream=maybe"])
def test_out_of_range_query_parameters(client, query):
    error = assert_error(client.post(f"/v1/vocode?{query}", json={"mel": random_mel(5).tolist()}), 422,
                         "invalid_parameter")
    assert error["param"] == query.split("=")[0]


@pytest.mark.parametrize("field, value", [("sigma", 3), ("denoise", -1), ("sample_rate", 100), ("seed", -5)])
def test_out_of_range_json_parameters(client, field, value):
    error = assert_error(client.post("/v1/vocode", json={"mel": random_mel(5).tolist(), field: value}), 422,
                         "invalid_parameter")
    assert error["param"] == field


def test_unknown_or_unstreamable_format(client):
    error = assert_error(client.post("/v1/vocode?format=aiff", json={"mel": random_mel(5).tolist()}), 422,
                         "unsupported_format")
    assert "wav" in error["message"] and "flac" in error["message"] and error["param"] == "format"
    error = assert_error(client.post("/v1/vocode?format=flac&stream=true", json={"mel": random_mel(5).tolist()}),
                         422, "unsupported_format")
    assert "pcm" in error["message"]


def test_oversized_body_by_header_and_while_reading(model):
    with make_client(model, max_body_bytes=4096) as client:
        wait_ready(client)
        body = npy_bytes(random_mel(40))
        assert len(body) > 4096
        assert_error(client.post("/v1/vocode", content=body, headers={"content-type": "application/x-npy"}), 413,
                     "body_too_large")

        def chunked():  # no Content-Length: the limit must be enforced while reading
            for start in range(0, len(body), 1000):
                yield body[start:start + 1000]

        response = client.post("/v1/vocode", content=chunked(), headers={"content-type": "application/x-npy"})
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "body_too_large")
        multipart = client.post("/v1/vocode", files={"file": ("mel.npy", body)})
        assert_error(multipart, 413, "body_too_large")
        assert client.get("/healthz").status_code == 200


def test_unknown_route_and_method_use_the_error_shape(client):
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/vocode"), 405)


def test_timeout_is_504_and_the_service_stays_up(model):
    with make_client(model, request_timeout=1e-6) as client:
        wait_ready(client)
        assert_error(client.post("/v1/vocode", json={"mel": random_mel(10).tolist()}), 504, "timeout")
        assert_error(client.post("/v1/vocode?stream=true&format=pcm", json={"mel": random_mel(10).tolist()}),
                     504, "timeout")
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_cors_off_by_default_and_on_when_configured(client, model):
    response = client.get("/healthz", headers={"origin": "https://example.com"})
    assert "access-control-allow-origin" not in response.headers
    with make_client(model, cors_origins=["https://example.com"]) as cors_client:
        response = cors_client.get("/healthz", headers={"origin": "https://example.com"})
        assert response.headers["access-control-allow-origin"] == "https://example.com"


# -- metrics -------------------------------------------------------------------------------------
def test_metrics_count_requests_batches_and_audio(client):
    client.post("/v1/vocode", json={"mel": random_mel(20).tolist()})
    client.post("/v1/vocode?sigma=9", json={"mel": random_mel(20).tolist()})
    text = client.get("/metrics").text
    assert 'vocoder_http_requests_total{endpoint="/v1/vocode",method="POST",status="200"}' in text
    assert 'vocoder_http_requests_total{endpoint="/v1/vocode",method="POST",status="422"}' in text
    assert 'vocoder_http_request_duration_seconds_bucket{endpoint="/v1/vocode"' in text
    for name in ("vocoder_batch_size_bucket", "vocoder_queue_depth", "vocoder_audio_seconds_total",
                 "vocoder_real_time_factor_bucket"):
        assert name in text


def test_each_app_has_its_own_registry(model):
    first, second = create_app(Settings(), model), create_app(Settings(), model)
    assert first.state.service.metrics.registry is not second.state.service.metrics.registry


# -- the batch worker ----------------------------------------------------------------------------
JOBS = [  # (frames, sigma, seed, denoise): mixed lengths and parameters in one batch
    (37, 0.6, 1, 0.0), (12, 0.0, None, 0.0), (60, 1.0, 2, 0.3), (5, 0.6, 3, 0.0), (60, 0.3, 4, 0.0),
    (23, 0.0, None, 0.7),
]


async def run_jobs(model: Vocoder, max_batch: int, jobs: list[Job]) -> list:
    worker = BatchWorker(model, ServiceMetrics(), max_batch=max_batch, max_wait_ms=50)
    worker.start()
    try:
        return await asyncio.gather(*(worker.submit(job) for job in jobs))
    finally:
        await worker.close()


@pytest.mark.parametrize("max_batch", [1, 8])
def test_batched_requests_equal_each_alone(model, max_batch):
    mels = [random_mel(frames, seed=index) for index, (frames, *_) in enumerate(JOBS)]
    jobs = [Job(mel, sigma, denoise, seed) for mel, (_, sigma, seed, denoise) in zip(mels, JOBS)]
    results = asyncio.run(run_jobs(model, max_batch, jobs))
    assert max(result.batch_size for result in results) == (len(JOBS) if max_batch > 1 else 1)
    for result, mel, (frames, sigma, seed, denoise) in zip(results, mels, JOBS):
        expected = reference(model, mel, sigma, seed, denoise)
        assert result.audio.shape == (frames * HOP,)
        assert np.abs(result.audio - expected).max() < 1e-4


def test_worker_drops_disconnected_and_cancelled_jobs(model):
    async def scenario():
        metrics = ServiceMetrics()
        worker = BatchWorker(model, metrics, max_batch=4, max_wait_ms=20)

        async def gone() -> bool:
            return True

        kept, left, given_up = (Job(random_mel(10), 0.6), Job(random_mel(10), 0.6, is_disconnected=gone),
                                Job(random_mel(10), 0.6))
        futures = [worker.submit(job) for job in (kept, left, given_up)]
        futures[2].cancel()  # its caller timed out before the worker got to it
        worker.start()
        try:
            result = await futures[0]
            with pytest.raises(APIError) as error:
                await futures[1]
            assert error.value.status_code == 499 and error.value.code == "client_disconnected"
            return result, metrics
        finally:
            await worker.close()

    result, metrics = asyncio.run(scenario())
    assert result.batch_size == 1  # only the job still wanted ran
    assert metrics.dropped.labels("disconnected")._value.get() == 1
    assert metrics.dropped.labels("cancelled")._value.get() == 1


def test_worker_takes_shorter_work_first_but_only_within_the_longer_ones_allowance(model):
    """A short request overtakes longer work queued just before it, not work that has already
    waited out its allowance (`OVERTAKE_SECONDS_PER_FRAME` per frame): nothing starves."""
    async def scenario():
        worker = BatchWorker(model, ServiceMetrics())  # not started: the order is set before anything runs
        order = []

        def call(name: str, frames: int) -> Call:
            return Call(lambda: order.append(name), frames)

        allowance = 100 * OVERTAKE_SECONDS_PER_FRAME
        futures = [worker.submit(call("waited out", 100))]
        await asyncio.sleep(2 * allowance)
        futures += [worker.submit(call(name, frames)) for name, frames in [("long", 5000), ("short", 10)]]
        futures.append(worker.submit(Job(random_mel(20), 0.6)))
        worker.start()
        try:
            await asyncio.gather(*futures)
        finally:
            await worker.close()
        return order, futures[-1].result()

    order, result = asyncio.run(scenario())
    assert order == ["waited out", "short", "long"]
    assert result.audio.shape == (20 * HOP,)


def test_full_queue_is_503_with_retry_after(model):
    async def scenario():
        worker = BatchWorker(model, ServiceMetrics(), queue_size=2)  # not started: nothing drains the queue
        worker.submit(Job(random_mel(5), 0.6))
        worker.submit(Job(random_mel(5), 0.6))
        with pytest.raises(APIError) as error:
            worker.submit(Job(random_mel(5), 0.6))
        await worker.close()
        return error.value

    error = asyncio.run(scenario())
    assert error.status_code == 503 and error.headers == {"Retry-After": "1"}


# -- settings and CLI ----------------------------------------------------------------------------
def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("VOCODER_MAX_BATCH", "3")
    monkeypatch.setenv("VOCODER_CHECKPOINT", "")  # empty means unset, not the current directory
    monkeypatch.setenv("VOCODER_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("VOCODER_LOG_LEVEL", "DEBUG")
    settings = Settings()
    assert settings.max_batch == 3 and settings.log_level == "debug" and settings.checkpoint is None
    assert settings.cors_origins == ["https://a.example", "https://b.example"]


def test_cli_options_override_environment(monkeypatch, model):
    calls = {}
    monkeypatch.setenv("VOCODER_PORT", "9999")
    monkeypatch.setenv("VOCODER_MAX_WAIT_MS", "2")
    monkeypatch.setattr(server.cli, "load_model", lambda settings: model)
    monkeypatch.setattr(server.cli, "serve_until_stopped",
                        lambda app, settings: calls.update(app=app, settings=settings) or 0)
    assert server.cli.main(["--port", "8123", "--host", "127.0.0.1"]) == 0
    assert calls["settings"].port == 8123 and calls["settings"].host == "127.0.0.1"
    assert calls["app"].state.service.settings.max_wait_ms == 2


def test_cli_reports_bad_settings_and_checkpoints_in_one_line(monkeypatch, capsys, tmp_path):
    assert server.cli.main(["--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err
    assert server.cli.main(["--checkpoint", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vocoder serve: error:") and "Traceback" not in err
