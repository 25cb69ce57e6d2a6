"""The service under real uvicorn on 127.0.0.1 (a random free port, in a thread): concurrent
mixed requests, overload, streaming over the wire and client disconnects."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Iterator

import httpx
import numpy as np
import pytest
import uvicorn

from server.app import create_app
from server.settings import Settings
from test_server import (HOP, assert_matches_pcm, npy_bytes, one_torch_thread,  # noqa: F401 (fixture)
                         random_mel, reference, tiny_vocoder)


@contextlib.contextmanager
def running_server(settings: Settings, model) -> Iterator[str]:
    """Serve `create_app(settings, model)` until the block ends; yields the base URL once ready."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings, model), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "server did not become ready"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="module")
def model():
    return tiny_vocoder()


def slow_down(monkeypatch, model, seconds: float) -> None:
    """Make every inference take `seconds` longer, so that requests really pile up in the queue."""
    infer = model.infer

    def slow_infer(*args, **kwargs):
        time.sleep(seconds)
        return infer(*args, **kwargs)

    monkeypatch.setattr(model, "infer", slow_infer)


def metric(text: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


async def post_mel(client: httpx.AsyncClient, mel: np.ndarray, params: dict, as_json: bool) -> httpx.Response:
    if as_json:
        return await client.post("/v1/vocode", params={"format": "pcm"}, json={"mel": mel.tolist(), **params})
    return await client.post("/v1/vocode", params={"format": "pcm", **params}, content=npy_bytes(mel),
                             headers={"content-type": "application/octet-stream"})


def check_responses(model, mels, params, responses) -> None:
    """Every request got 200 or 503; each 200 carries its own request's audio."""
    assert len(responses) == len(mels)
    for mel, param, response in zip(mels, params, responses):
        assert response.status_code in (200, 503), response.text
        if response.status_code == 503:
            assert response.headers["retry-after"] and response.json()["error"]["code"] == "queue_full"
            continue
        assert len(response.content) == 2 * mel.shape[1] * HOP
        if "seed" in param or param.get("sigma") == 0.0:
            assert_matches_pcm(response.content, reference(model, mel, param.get("sigma", 0.6), param.get("seed")))


async def fire(url: str, mels: list[np.ndarray], params: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(mels))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        requests = [post_mel(client, mel, param, as_json=index % 2 == 0)
                    for index, (mel, param) in enumerate(zip(mels, params))]
        return await asyncio.wait_for(asyncio.gather(*requests), timeout=120)


def test_fifty_concurrent_mixed_requests(model, monkeypatch):
    slow_down(monkeypatch, model, 0.05)
    rng = np.random.default_rng(0)
    mels = [random_mel(int(frames), seed=index) for index, frames in enumerate(rng.integers(5, 300, 50))]
    # A third seeded, a third sigma=0 (deterministic without a seed), a third fresh noise.
    params = [[{"seed": index}, {"sigma": 0.0}, {}][index % 3] for index in range(50)]
    with running_server(Settings(max_batch=8, max_wait_ms=5, queue_size=64), model) as url:
        responses = asyncio.run(fire(url, mels, params))
        metrics = httpx.get(f"{url}/metrics").text
        assert httpx.get(f"{url}/healthz").status_code == 200
    monkeypatch.undo()
    check_responses(model, mels, params, responses)
    assert all(response.status_code == 200 for response in responses)  # the queue holds all 50
    assert max(int(response.headers["x-batch-size"]) for response in responses) > 1
    assert metric(metrics, "vocoder_batch_size_count") < 50  # some requests really shared a batch


def test_small_queue_sheds_load_with_503(model, monkeypatch):
    slow_down(monkeypatch, model, 0.2)
    mels = [random_mel(int(frames), seed=index) for index, frames in enumerate(np.linspace(300, 800, 30))]
    params = [{"seed": index} for index in range(30)]
    with running_server(Settings(max_batch=2, queue_size=2), model) as url:
        responses = asyncio.run(fire(url, mels, params))
        assert httpx.get(f"{url}/readyz").status_code == 200
    monkeypatch.undo()
    check_responses(model, mels, params, responses)
    statuses = [response.status_code for response in responses]
    assert 503 in statuses and 200 in statuses


def test_stream_sends_first_bytes_before_the_end(model):
    mel = random_mel(1500, seed=5)

    async def stream(url: str) -> tuple[list[float], bytes, httpx.Headers]:
        arrivals, data = [], b""
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            async with client.stream("POST", "/v1/vocode", params={"format": "pcm", "stream": "true", "seed": 5},
                                     content=npy_bytes(mel), headers={"content-type": "application/x-npy"}) as response:
                assert response.status_code == 200
                async for piece in response.aiter_raw():
                    arrivals.append(time.perf_counter())
                    data += piece
                return arrivals, data, response.headers

    with running_server(Settings(stream_chunk_frames=64), model) as url:
        arrivals, data, headers = asyncio.run(stream(url))
    assert headers["transfer-encoding"] == "chunked"
    assert len(arrivals) > 1 and arrivals[0] < arrivals[-1]
    assert_matches_pcm(data, reference(model, mel, seed=5))


def test_disconnected_client_work_is_dropped(model, monkeypatch):
    slow_down(monkeypatch, model, 1.0)  # long enough for a queued client to give up

    async def scenario(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            busy = asyncio.create_task(post_mel(client, random_mel(50, seed=1), {}, as_json=False))
            await asyncio.sleep(0.2)
            impatient = asyncio.create_task(post_mel(client, random_mel(50), {}, as_json=False))
            await asyncio.sleep(0.3)
            impatient.cancel()  # closes its connection while its job is still queued
            with contextlib.suppress(asyncio.CancelledError):
                await impatient
            assert (await busy).status_code == 200

    with running_server(Settings(max_batch=1), model) as url:
        asyncio.run(asyncio.wait_for(scenario(url), timeout=60))
        time.sleep(0.2)  # the worker reaches the dropped job just after the busy one
        metrics = httpx.get(f"{url}/metrics").text
        assert httpx.get(f"{url}/healthz").status_code == 200
    assert metric(metrics, 'vocoder_dropped_requests_total{reason="disconnected"}') == 1
    assert metric(metrics, "vocoder_batch_size_count") == 2  # warm-up and the busy request only
