"""The service's side of the connection under real uvicorn, driven by raw sockets: clients that
leave mid-upload or after a large upload, and bodies that never finish arriving."""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Iterator

import httpx
import pytest

from server.settings import Settings
from test_server import npy_bytes, one_torch_thread, random_mel  # noqa: F401 (fixture)
from test_server_integration import metric, model, running_server, slow_down  # noqa: F401 (fixture)


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def upload_head(length: int) -> bytes:
    return (f"POST /v1/vocode?format=pcm HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-npy\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


class Records(logging.Handler):
    """Every record of the loggers it is attached to (uvicorn's do not propagate to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("", "uvicorn")]  # "uvicorn" stops propagation
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


def test_abandoned_uploads_are_499_not_server_errors(model, records):
    body = npy_bytes(random_mel(300))
    with running_server(Settings(), model) as url:
        for _ in range(5):
            with connect(url) as sock:
                sock.sendall(upload_head(len(body)) + body[:len(body) // 2])
                time.sleep(0.1)  # the route is reading the body when the client leaves
        time.sleep(0.3)
        metrics = httpx.get(f"{url}/metrics").text
    assert metric(metrics, 'vocoder_http_requests_total{endpoint="/v1/vocode",method="POST",status="499"}') == 5
    assert 'status="500"' not in metrics
    assert not [record.getMessage() for record in records.records if record.levelno >= logging.ERROR]
    assert not [record.getMessage() for record in records.records if record.exc_info]
    assert len([record for record in records.records if "disconnect" in record.getMessage()]) <= 5


@pytest.mark.parametrize("frames", [150, 3000])  # 48 KB and 960 KB: below and above uvicorn's 64 KB read buffer
def test_work_of_a_client_that_left_is_dropped_for_any_body_size(model, monkeypatch, frames):
    slow_down(monkeypatch, model, 1.5)  # long enough for the large uploads to be read and queued
    body = npy_bytes(random_mel(frames, seed=2))
    with running_server(Settings(max_batch=1), model) as url:
        with connect(url) as busy:
            busy.sendall(upload_head(len(body)) + body)  # occupies the worker
            time.sleep(0.2)
            # Several clients, as whether a single upload ends with uvicorn's reading paused depends on timing.
            impatient = [connect(url) for _ in range(3)]
            for sock in impatient:
                sock.sendall(upload_head(len(body)) + body)
            time.sleep(0.6)  # read in full and queued behind the busy request
            for sock in impatient:
                sock.close()
            assert read_response(busy).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)  # the worker reaches the dropped jobs just after the busy one
        metrics = httpx.get(f"{url}/metrics").text
    assert metric(metrics, 'vocoder_dropped_requests_total{reason="disconnected"}') == 3
    assert metric(metrics, "vocoder_batch_size_count") == 2  # warm-up and the busy request only


def test_body_that_never_arrives_gets_408(model):
    with running_server(Settings(body_timeout=0.5), model) as url:
        with connect(url) as sock:
            started = time.monotonic()
            sock.sendall(upload_head(1000) + b"\x93NUMPY\x01\x00v\x00")  # 10 of the 1000 promised bytes
            response = read_response(sock)  # the server answers, then closes the connection
            waited = time.monotonic() - started
        assert httpx.get(f"{url}/healthz").status_code == 200
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), response
    assert json.loads(payload)["error"]["code"] == "body_timeout"
    assert 0.4 < waited < 5


def test_protocol_errors_are_uvicorns_plain_text_400(model):
    """Documented in docs/SERVICE.md: invalid HTTP never reaches the app, so it is not JSON."""
    with running_server(Settings(), model) as url:
        with connect(url) as sock:
            sock.sendall(b"POST /v1/vocode HTTP/1.1\r\nHost: test\r\nContent-Length: ten\r\n\r\n")
            response = read_response(sock)
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"text/plain" in head
    assert payload == b"Invalid HTTP request received."
