"""`vocoder serve` stopped by a signal exits 0 after its graceful shutdown. The server runs in a child
process that is not PID 1, which is how it runs under an init (tini, compose `init: true`): there a
bare `uvicorn.run` dies of the SIGTERM it re-raises after shutting down, and `docker stop` reads 143.
"""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A bare ASGI app keeps the child light: the signal handling is what is under test, not the service.
CHILD = """
import sys
from server.cli import serve_until_stopped
from server.settings import Settings

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

sys.exit(serve_until_stopped(app, Settings(port=int(sys.argv[1]), log_level="info")))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, child: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            pytest.fail(f"the server exited {child.returncode} before listening:\n{child.communicate()[1]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    child.kill()
    pytest.fail(f"the server did not listen on port {port} within {timeout} s")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_server_gracefully_with_exit_status_0(stop_signal: signal.Signals) -> None:
    port = _free_port()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(port)], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_port(port, child)
        child.send_signal(stop_signal)
        _, log = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert "Finished server process" in log, log  # uvicorn's last line of a graceful shutdown
    assert child.returncode == 0, f"exit status {child.returncode} after {stop_signal.name}:\n{log}"
