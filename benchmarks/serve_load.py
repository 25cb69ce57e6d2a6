"""Load test of `vocoder serve` on this machine: throughput (audio seconds per wall second) and
p50/p95 latency at several concurrency levels, with batching on (max_batch 8) and off (max_batch 1).

Runs the service as a subprocess on 127.0.0.1 with the default model (bundled, or random-init
until one is bundled: same speed) and prints Markdown tables. Usage: python benchmarks/serve_load.py
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RATE, HOP, N_MELS = 22050, 256, 80  # the default model's front-end


@dataclass(frozen=True)
class LevelResult:
    batching: str
    concurrency: int
    requests: int
    audio_seconds: float
    wall_seconds: float
    latencies: list[float]
    batch_sizes: list[int]

    @property
    def throughput(self) -> float:
        return self.audio_seconds / self.wall_seconds

    def latency(self, quantile: float) -> float:
        return float(np.quantile(self.latencies, quantile))


def make_mels(count: int, seed: int, min_seconds: float, max_seconds: float) -> list[bytes]:
    """.npy mels of random length in [min_seconds, max_seconds], log-mel-like values."""
    rng = np.random.default_rng(seed)
    bodies = []
    for seconds in rng.uniform(min_seconds, max_seconds, count):
        frames = int(seconds * SAMPLE_RATE / HOP)
        mel = np.maximum(rng.normal(-6.0, 2.0, (N_MELS, frames)), np.log(1e-5)).astype(np.float32)
        buffer = io.BytesIO()
        np.save(buffer, mel)
        bodies.append(buffer.getvalue())
    return bodies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


@contextlib.contextmanager
def serve(max_batch: int, torch_threads: int, queue_size: int = 512, request_timeout: float = 600) -> Iterator[Server]:
    """`vocoder serve` in a subprocess; yields its URL and process id once /readyz is green."""
    port = free_port()
    env = {**os.environ, "VOCODER_MAX_BATCH": str(max_batch), "VOCODER_QUEUE_SIZE": str(queue_size),
           "VOCODER_REQUEST_TIMEOUT": str(request_timeout), "VOCODER_LOG_LEVEL": "warning",
           "VOCODER_TORCH_THREADS": str(torch_threads)}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen([sys.executable, "-m", "vocoder", "serve", "--port", str(port)],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"server did not start:\n{log.read().decode(errors='replace')}")
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            yield Server(url, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def run_level(url: str, batching: str, concurrency: int, bodies: list[bytes]) -> LevelResult:
    """Send `bodies` with `concurrency` requests in flight at all times."""
    pending = list(bodies)
    latencies, batch_sizes, audio = [], [], 0.0

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal audio
        while pending:
            body = pending.pop()
            started = time.perf_counter()
            response = await client.post("/v1/vocode", params={"format": "wav"}, content=body,
                                         headers={"content-type": "application/x-npy"})
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
            audio += float(response.headers["x-audio-duration"])
            batch_sizes.append(int(response.headers["x-batch-size"]))

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return LevelResult(batching, concurrency, len(bodies), audio, wall, latencies, batch_sizes)


def markdown(results: list[LevelResult]) -> str:
    lines = ["| batching | concurrency | requests | audio s / wall s | p50 latency (s) | p95 latency (s) | "
             "mean batch |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.batching} | {r.concurrency} | {r.requests} | {r.throughput:.1f} | {r.latency(0.5):.2f} | "
                     f"{r.latency(0.95):.2f} | {np.mean(r.batch_sizes):.1f} |")
    lines += ["", "| concurrency | throughput on/off | p50 latency on/off | p95 latency on/off |",
              "|---:|---:|---:|---:|"]
    by_key = {(r.batching, r.concurrency): r for r in results}
    for concurrency in sorted({r.concurrency for r in results}):
        on, off = by_key.get(("on", concurrency)), by_key.get(("off", concurrency))
        if on and off:
            lines.append(f"| {concurrency} | {on.throughput / off.throughput:.2f} | "
                         f"{on.latency(0.5) / off.latency(0.5):.2f} | {on.latency(0.95) / off.latency(0.95):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels (default 1,8,32)")
    parser.add_argument("--requests-per-client", type=float, default=2.0,
                        help="requests per concurrent client at each level (at least 6 per level; default 2)")
    parser.add_argument("--seconds", default="2,6", help="min,max utterance length in seconds (default 2,6)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="VOCODER_TORCH_THREADS for the server (default 1: on a shared CPU, far faster)")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.concurrency.split(",")]
    low, high = (float(value) for value in args.seconds.split(","))

    results = []
    begun = time.perf_counter()
    for batching, max_batch in (("on", 8), ("off", 1)):
        with serve(max_batch, args.torch_threads) as server:
            url = server.url
            asyncio.run(run_level(url, batching, 2, make_mels(2, seed=99, min_seconds=low, max_seconds=high)))
            for level in levels:
                count = max(6, round(level * args.requests_per_client))
                # The same mels for both modes, so the comparison is like for like.
                result = asyncio.run(run_level(url, batching, level, make_mels(count, level, low, high)))
                print(f"batching {batching}, concurrency {level}: {result.throughput:.1f} audio s/s "
                      f"({time.perf_counter() - begun:.0f} s elapsed)", file=sys.stderr)
                results.append(result)
    print(f"Default model (`Vocoder.load_or_random(None)`), utterances {low:g}-{high:g} s, format wav, "
          f"VOCODER_TORCH_THREADS={args.torch_threads}, {os.cpu_count()} CPUs; "
          f"total {time.perf_counter() - begun:.0f} s.\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
